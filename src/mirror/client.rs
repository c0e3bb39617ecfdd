//! The copy's own client: sends one mirror copy (`CopyRequest`: the head,
//! then the body streamed from the copy's queue as the tee fills it) to a
//! backend endpoint and reads the whole answer into a [`Sink`]. Backends
//! that speak plain HTTP/1.1 get the copy over `wire`, on a connection the
//! copy's task owns for the exchange (idle ones wait in the endpoint's list
//! between copies): the connection is made at once, the head goes out with
//! the body's first piece (and whatever else is queued by then), then each
//! chunk as it comes (those queued meanwhile in one vectored write). HTTP/2 and `auto` over TLS go through the
//! backend's own clients with a body fed from the same queue. Only a
//! refused connection passes an endpoint over, and there is no retry on
//! another endpoint (a failed copy is counted, not repeated).
//!
//! A copy the tee abandons mid-body ([`TeeFailure`]: slow shadow, over its
//! cap, client's body failed, memory) ends with its connection closed and
//! never reused: with a `Content-Length` the shadow sees a short body and
//! the close; chunked, no last chunk. It is reported as
//! [`CopyError::Abandoned`], not as the shadow's failure.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;

use super::tee::{CopyStream, FailureWatch, Held, Next, TeeFailure, Trailers};
use super::wire::{self, Answered, Segments, Sink, WireError};
use crate::body::{BoxError, UpstreamBody};
use crate::upstream::{Backend, Picked, UpstreamError};

/// The body of a copy.
#[derive(Debug)]
pub enum CopyBody {
    /// The request has no body.
    Empty,
    /// The client's body as the tee hands it on; `length` is the declared
    /// one (then sent with `Content-Length`), `None` sends it chunked.
    Streamed {
        pieces: CopyStream,
        length: Option<u64>,
    },
}

/// A mirror copy: the request head and its streamed body.
#[derive(Debug)]
pub struct CopyRequest {
    pub method: http::Method,
    /// Origin-form (or absolute) target; only path and query are sent.
    pub uri: Uri,
    /// Every field to send, `Host` and the framing (`Content-Length`, or
    /// `Transfer-Encoding: chunked` and `Trailer`) included.
    pub headers: http::HeaderMap,
    pub body: CopyBody,
}

/// Why a copy got no answer.
#[derive(Debug)]
pub enum CopyError {
    /// The exchange with the shadow failed.
    Upstream(UpstreamError),
    /// The tee abandoned the copy mid-body.
    Abandoned(TeeFailure),
}

impl From<UpstreamError> for CopyError {
    fn from(e: UpstreamError) -> Self {
        CopyError::Upstream(e)
    }
}

/// A copy's body for hyper's client, fed from the copy's queue: data
/// frames as they come, the trailers last; an abandoned copy fails the
/// body, which aborts the request (HTTP/1.1: connection closed before the
/// end; HTTP/2: stream reset).
struct QueuedBody {
    pieces: CopyStream,
    remaining: Option<u64>,
    /// The chunk hyper is writing now (its bytes stay budgeted); dropped
    /// at the next poll.
    current: Option<Held>,
    ended: bool,
}

impl http_body::Body for QueuedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        this.current = None;
        if this.ended {
            return Poll::Ready(None);
        }
        let next = std::task::ready!(this.pieces.poll_next(cx));
        Poll::Ready(match next {
            Next::Data(chunk) => {
                let data = chunk.bytes().clone();
                if let Some(n) = this.remaining.as_mut() {
                    *n = n.saturating_sub(data.len() as u64);
                }
                this.current = Some(chunk);
                Some(Ok(Frame::data(data)))
            }
            Next::End(trailers) => {
                this.ended = true;
                trailers.map(|t| Ok(Frame::trailers(t.fields().clone())))
            }
            Next::Failed(why) => {
                this.ended = true;
                Some(Err(why.into()))
            }
        })
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::new(),
        }
    }
}

/// Sends a mirror copy to `backend` and reads its whole answer into `sink`
/// (the caller bounds it in time). Only a refused connection passes the
/// endpoint over; there is no retry on another endpoint.
pub async fn send_copy(
    backend: &Backend,
    copy: CopyRequest,
    timeout: Duration,
    sink: &mut (dyn Sink + Send),
) -> Result<Answered, CopyError> {
    let endpoint = backend.pick_endpoint()?;
    if backend.speaks_plain_http1() {
        return copy_over_wire(endpoint, copy, sink).await;
    }
    let CopyRequest {
        method,
        uri,
        mut headers,
        body,
    } = copy;
    // hyper frames the body itself (from its size hint).
    headers.remove(http::header::TRANSFER_ENCODING);
    let (body, watch) = match body {
        CopyBody::Empty => (UpstreamBody::buffered(Bytes::new()), None),
        CopyBody::Streamed { pieces, length } => {
            let watch = pieces.watch();
            let body = QueuedBody {
                pieces,
                remaining: length,
                current: None,
                ended: false,
            };
            (UpstreamBody::teed(body), Some(watch))
        }
    };
    let abandoned = || watch.as_ref().and_then(|w| w.failure());
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    let exchange = endpoint.exchange(req, timeout);
    // hyper polls the body only when it can write: a copy abandoned while
    // its shadow does not read is dropped here (the request cancelled).
    let sent = match &watch {
        Some(w) => tokio::select! {
            biased;
            sent = exchange => sent,
            why = w.abandoned() => return Err(CopyError::Abandoned(why)),
        },
        None => exchange.await,
    };
    let resp = match sent {
        Ok(resp) => resp,
        Err(e) => return Err(abandoned().map_or(CopyError::Upstream(e), CopyError::Abandoned)),
    };
    let status = resp.status();
    sink.head(status, resp.headers());
    let mut body = resp.into_body();
    let mut body_bytes = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| endpoint.exchange_error(e))?;
        match frame.into_data() {
            Ok(data) => {
                body_bytes += data.len() as u64;
                sink.data(&data);
            }
            Err(frame) => {
                if let Some(t) = frame.trailers_ref() {
                    sink.trailers(t);
                }
            }
        }
    }
    // The shadow answered before the copy's body was abandoned: it saw an
    // incomplete request, and the answer is not the copy's.
    if let Some(why) = abandoned() {
        return Err(CopyError::Abandoned(why));
    }
    Ok(Answered {
        status,
        body_bytes,
        reusable: true,
    })
}

/// How writing a copy's request stopped.
enum WriteError {
    Wire(WireError),
    Abandoned(TeeFailure),
}

/// Takes whatever of the body is queued now into `out` (with its framing);
/// `Ok(true)` once the body's end is in. The chunks are kept in `held`
/// until written.
fn take_queued(
    pieces: &mut CopyStream,
    chunked: bool,
    out: &mut Segments,
    held: &mut Vec<Held>,
) -> Result<bool, TeeFailure> {
    while let Some(next) = pieces.try_next() {
        if put(next, chunked, out, held)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Adds one piece to `out`; `Ok(true)` at the body's end.
fn put(
    next: Next,
    chunked: bool,
    out: &mut Segments,
    held: &mut Vec<Held>,
) -> Result<bool, TeeFailure> {
    match next {
        Next::Data(chunk) => {
            out.body(chunk.bytes(), chunked);
            held.push(chunk);
            Ok(false)
        }
        Next::End(trailers) => {
            if chunked {
                out.last_chunk(trailers.as_deref().map(Trailers::fields));
            } else if trailers.is_some() {
                // Sent with its declared length (the head went out before
                // the trailers arrived): they cannot follow.
                tracing::debug!("request trailers not sent to a copy framed by Content-Length");
            }
            Ok(true)
        }
        Next::Failed(why) => Err(why),
    }
}

/// Writes `out`; a copy abandoned meanwhile stops the write (its shadow
/// may not be reading at all).
async fn write_or_abandon(
    stream: &mut crate::upstream::UpstreamStream,
    out: &mut Segments,
    watch: Option<&FailureWatch>,
) -> Result<(), WriteError> {
    match watch {
        None => wire::write(stream, out).await.map_err(WriteError::Wire),
        Some(w) => tokio::select! {
            biased;
            written = wire::write(stream, out) => written.map_err(WriteError::Wire),
            why = w.abandoned() => Err(WriteError::Abandoned(why)),
        },
    }
}

/// Writes the rest of a streamed body as it comes: each wait for a chunk
/// is followed by taking whatever else is queued, in one write.
async fn stream_rest(
    stream: &mut crate::upstream::UpstreamStream,
    pieces: &mut CopyStream,
    chunked: bool,
) -> Result<(), WriteError> {
    let watch = pieces.watch();
    loop {
        let mut out = Segments::default();
        let mut held = Vec::new();
        let first = pieces.next().await;
        let ended = put(first, chunked, &mut out, &mut held).map_err(WriteError::Abandoned)?
            || take_queued(pieces, chunked, &mut out, &mut held).map_err(WriteError::Abandoned)?;
        write_or_abandon(stream, &mut out, Some(&watch)).await?;
        drop(held);
        if ended {
            return Ok(());
        }
    }
}

/// A copy over HTTP/1.1 on a connection of its own (see `wire`): the
/// connection made (or taken idle) at once, the head with the body's first
/// piece and what else is queued by then, the rest as it comes, then the
/// answer. A reused connection that ends before any answer (the server
/// closed it while idle) is replaced by a fresh one once, for idempotent
/// methods, and only when the whole request was still in hand (no body, or
/// all of it was queued before the first write): a chunk written is gone.
async fn copy_over_wire(
    endpoint: Picked<'_>,
    copy: CopyRequest,
    sink: &mut (dyn Sink + Send),
) -> Result<Answered, CopyError> {
    let CopyRequest {
        method,
        uri,
        headers,
        body,
    } = copy;
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut first = Segments::default();
    first.push(Bytes::from(wire::request_head(&method, target, &headers)));
    let mut held = Vec::new();
    let (mut pieces, chunked) = match body {
        CopyBody::Empty => (None, false),
        CopyBody::Streamed { pieces, length } => (Some(pieces), length.is_none()),
    };
    let (mut stream, mut reused) = match endpoint.take_idle() {
        Some(s) => (s, true),
        None => (endpoint.connect().await?, false),
    };
    // The connection is ready: the head goes out with the body's first
    // piece (and whatever else is queued by then) in one write.
    let whole = match pieces.as_mut() {
        None => true,
        Some(p) => {
            let next = p.next().await;
            put(next, chunked, &mut first, &mut held).map_err(CopyError::Abandoned)?
                || take_queued(p, chunked, &mut first, &mut held).map_err(CopyError::Abandoned)?
        }
    };
    // Only a request wholly in hand can be sent again; otherwise its
    // first write's bytes are let go once written (they are no longer
    // counted in the budget once `held` is cleared: kept for the whole
    // exchange, a copy to a shadow that never answers held ~0.5 MiB each,
    // uncounted: `bench/memory.py --rows post` peaked at 533 MiB RSS).
    let retry = whole && method.is_idempotent();
    // Abandonment can only come while the body is still streaming.
    let watch = pieces.as_ref().filter(|_| !whole).map(CopyStream::watch);
    loop {
        let mut out = if retry {
            first.clone()
        } else {
            std::mem::take(&mut first)
        };
        let wrote = write_or_abandon(&mut stream, &mut out, watch.as_ref()).await;
        drop(out);
        let written = match wrote {
            Err(e) => Err(e),
            Ok(()) => match pieces.as_mut().filter(|_| !whole) {
                Some(p) => {
                    held.clear();
                    stream_rest(&mut stream, p, chunked).await
                }
                None => Ok(()),
            },
        };
        let answered = match written {
            Ok(()) => wire::read_answer(&mut stream, &method, sink).await,
            Err(WriteError::Wire(e)) => Err(e),
            // The connection is dropped (closed) here: never reused.
            Err(WriteError::Abandoned(why)) => return Err(CopyError::Abandoned(why)),
        };
        match answered {
            Ok(answered) => {
                if answered.reusable {
                    endpoint.keep_idle(stream);
                }
                return Ok(answered);
            }
            Err(e) if reused && e.nothing_received() && retry => {
                tracing::debug!(backend = %endpoint.backend().name(), error = %e, "idle connection was closed; sending the copy on a new one");
                stream = endpoint.connect().await?;
                reused = false;
            }
            Err(e) => return Err(CopyError::Upstream(endpoint.exchange_error(e))),
        }
    }
}

/// True when the endpoint answered a copy something that is not HTTP
/// (hyper's parse errors, or the copy client's own).
pub fn is_protocol(e: &UpstreamError) -> bool {
    if let Some(h) = e.hyper_error() {
        return h.is_parse() || h.is_parse_status() || h.is_parse_too_large();
    }
    matches!(wire_error(e), Some(WireError::Protocol(_)))
}

/// The error of a copy's HTTP/1.1 exchange, if that is what failed.
pub fn wire_error(e: &UpstreamError) -> Option<&WireError> {
    match e {
        UpstreamError::Exchange { source, .. } => source.downcast_ref::<WireError>(),
        _ => None,
    }
}
