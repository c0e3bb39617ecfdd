//! The two bounded copies a recorded request makes on the request path:
//! the request body as the primary reads it, and the answer's body as the
//! client reads it (appended to the record's line parts, so an answer
//! costs no buffer and no reservation of its own). Neither ever waits: a
//! chunk that does not fit the cap marks the body truncated, one that does
//! not fit the shadow memory budget drops the record (`over_budget`).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::calls::{Expecting, Open};
use super::line::BodyBytes;
use super::{line, with_scratch, Recorder, RequestHead};
use crate::body::{BoxError, ProxyBody, UpstreamBody};
use crate::config::record::RecordConfig;
use crate::config::Config;
use crate::memory::{BoundedBuf, BufRefused, MemoryBudget};

/// The request body being copied up to a cap.
#[derive(Debug)]
struct Copy {
    buf: BoundedBuf,
    truncated: bool,
    over_budget: bool,
    /// The body was read to its end.
    ended: bool,
}

impl Copy {
    fn new(memory: &Arc<MemoryBudget>, cap: usize) -> Self {
        Copy {
            buf: BoundedBuf::empty(memory, cap),
            truncated: false,
            over_budget: false,
            ended: false,
        }
    }

    fn data(&mut self, data: &[u8]) {
        if self.truncated || self.over_budget {
            return;
        }
        match self.buf.extend(data) {
            Ok(()) => {}
            Err(BufRefused::TooLarge) => {
                self.truncated = true;
                drop(self.buf.take());
            }
            Err(BufRefused::Memory) => {
                self.over_budget = true;
                drop(self.buf.take());
            }
        }
    }

    /// The copy, or `None` when it did not fit the memory budget; marked
    /// truncated (kept out) when the primary answered before reading the
    /// body to its end.
    fn body(&mut self) -> Option<BodyBytes<'_>> {
        if self.over_budget {
            return None;
        }
        if !self.ended {
            self.truncated = true;
            drop(self.buf.take());
        }
        Some(BodyBytes {
            bytes: self.buf.as_slice(),
            truncated: self.truncated,
        })
    }
}

/// A request admitted for recording, until its answer has ended.
pub struct Pending {
    recorder: Arc<Recorder>,
    started: Instant,
    route: Arc<str>,
    config: Arc<RecordConfig>,
    /// The configuration in force: its `redact:` is what is hidden.
    settings: Arc<Config>,
    /// The line so far, held from the memory budget: `line::request_part`,
    /// from `response_at` `line::response_part`, and from `body_at` the
    /// answer's body as the client has read it (up to the cap).
    parts: BoundedBuf,
    response_at: usize,
    body_at: usize,
    /// The answer's body passed the cap: its copy was let go.
    response_truncated: bool,
    request: RequestCopy,
    /// With `egress:` on: where its outbound calls are gathered.
    calls: Option<Expecting>,
}

impl Pending {
    /// The request's part of the line written; `None` (counted) when the
    /// memory budget cannot hold it.
    pub(super) fn new(
        recorder: Arc<Recorder>,
        config: Arc<RecordConfig>,
        head: RequestHead<'_>,
        settings: &Arc<Config>,
        memory: &Arc<MemoryBudget>,
    ) -> Option<Self> {
        let time = SystemTime::now();
        let parts = with_scratch(|part| {
            line::request_part(part, &head, time, &settings.redact);
            // Room for the answer's part too, reserved before allocated.
            let mut parts = BoundedBuf::new(memory, usize::MAX, part.len().max(PARTS_CAPACITY))?;
            parts.extend(part).ok()?;
            Some(parts)
        });
        let Some(parts) = parts else {
            recorder.dropped(head.route, "over_budget");
            return None;
        };
        Some(Pending {
            recorder,
            started: Instant::now(),
            route: head.route.clone(),
            config,
            settings: settings.clone(),
            response_at: parts.len(),
            body_at: parts.len(),
            response_truncated: false,
            parts,
            request: RequestCopy::Untapped,
            calls: None,
        })
    }

    /// Gathers the outbound calls that name one of `ids` (the correlation
    /// ids the egress reads) until the answer ends.
    pub fn expect_calls(&mut self, open: &Arc<Open>, ids: &[&str]) {
        let config = &self.config;
        self.calls = Expecting::new(
            open,
            ids,
            self.parts.budget(),
            config.max_body_bytes,
            config.max_calls,
        );
    }

    /// Wraps the request body: copied as the primary reads it. An empty
    /// body (a GET) is passed on as it is: nothing to copy.
    pub fn tap_request(&mut self, body: UpstreamBody) -> UpstreamBody {
        let RequestCopy::Untapped = self.request else {
            return body;
        };
        if body.is_end_stream() {
            self.request = RequestCopy::Empty;
            return body;
        }
        let cap = self.config.max_body_bytes;
        let mut copy = Copy::new(self.parts.budget(), cap);
        presize(&mut copy.buf, body.size_hint(), cap);
        let copy = Arc::new(Mutex::new(copy));
        self.request = RequestCopy::Tapped(copy.clone());
        UpstreamBody::teed(RequestTap { inner: body, copy })
    }

    /// Wraps the answer's body: copied as the client reads it; the record
    /// is sent when it ends.
    pub fn tap_response(mut self, resp: http::Response<ProxyBody>) -> http::Response<ProxyBody> {
        let (parts, body) = resp.into_parts();
        self.response_at = self.parts.len();
        let added = with_scratch(|part| {
            let status = parts.status.as_u16();
            line::response_part(part, status, &parts.headers, &self.settings.redact);
            self.parts.extend(part)
        });
        if added.is_err() {
            self.recorder.dropped(&self.route, "over_budget");
            return http::Response::from_parts(parts, body);
        }
        self.body_at = self.parts.len();
        presize(
            &mut self.parts,
            body.size_hint(),
            self.config.max_body_bytes,
        );
        let tap = ResponseTap {
            inner: body,
            pending: Some(self),
        };
        http::Response::from_parts(parts, tap.boxed())
    }

    /// Appends a chunk of the answer's body to the parts, up to the cap
    /// (past it, the copy is let go and marked truncated). False when the
    /// memory budget refuses it: the record is dropped.
    fn answer_data(&mut self, data: &[u8]) -> bool {
        if self.response_truncated {
            return true;
        }
        let copied = self.parts.len() - self.body_at;
        if copied.saturating_add(data.len()) > self.config.max_body_bytes {
            self.response_truncated = true;
            self.parts.truncate(self.body_at);
            return true;
        }
        self.parts.extend(data).is_ok()
    }

    /// The answer has ended: the line is finished on this thread and
    /// queued for the writer.
    fn complete(mut self) {
        let calls = self.calls.take().map(Expecting::close).unwrap_or_default();
        if calls.cut > 0 {
            self.recorder.calls_cut(&self.route, calls.cut);
        }
        // The request's copy is read under its lock: its tap is done by
        // now, unless the primary answered before reading the body, and
        // then the copy is only marked truncated.
        let mut tapped = match &self.request {
            RequestCopy::Tapped(copy) => Some(copy.lock()),
            _ => None,
        };
        let request = match (&self.request, tapped.as_deref_mut()) {
            (_, Some(copy)) => copy.body(),
            (RequestCopy::Empty, None) => Some(BodyBytes::default()),
            // Never read: kept out, as a body cut short.
            _ => Some(BodyBytes {
                bytes: &[],
                truncated: true,
            }),
        };
        let Some(request_body) = request else {
            self.recorder.dropped(&self.route, "over_budget");
            return;
        };
        let Pending {
            recorder,
            started,
            route,
            config,
            settings,
            parts,
            response_at,
            body_at,
            response_truncated,
            ..
        } = self;
        with_scratch(|out| {
            // `response_at <= body_at <= len` (the answer's body is only
            // ever cut back to `body_at`).
            let (heads, body) = parts.as_slice().split_at(body_at);
            let (request, response) = heads.split_at(response_at);
            let end = line::Ending {
                request_body,
                response_body: BodyBytes {
                    bytes: body,
                    truncated: response_truncated,
                },
                duration: started.elapsed(),
                calls: &calls,
            };
            line::finish_into(out, request, response, &end, &settings.redact);
            // The line takes over the parts' reservation.
            recorder.queue_line(out, &route, &config, parts.into_reservation());
        });
    }
}

/// Room for a body of declared length up to the cap, made before its
/// first chunk: it is then copied once, not again at each doubling. A
/// refusal here is left to the chunks' own (`over_budget`).
fn presize(buf: &mut BoundedBuf, hint: SizeHint, cap: usize) {
    if let Some(len) = hint.exact().and_then(|n| usize::try_from(n).ok()) {
        if len <= cap {
            let _ = buf.reserve(len);
        }
    }
}

/// Bytes a record's line parts start with room for: a request's and an
/// answer's usual heads (the bench's GET line is 650 bytes in all).
const PARTS_CAPACITY: usize = 1024;

/// Where a recorded request's body copy stands.
enum RequestCopy {
    /// Not tapped yet.
    Untapped,
    /// The body was empty.
    Empty,
    /// Copied as the primary reads it.
    Tapped(Arc<Mutex<Copy>>),
}

pin_project_lite::pin_project! {
    /// The request body on its way to the primary, copied up to the cap.
    struct RequestTap {
        #[pin]
        inner: UpstreamBody,
        copy: Arc<Mutex<Copy>>,
    }
}

impl Body for RequestTap {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                let mut copy = this.copy.lock();
                if let Some(d) = frame.data_ref() {
                    copy.data(d);
                }
                if this.inner.is_end_stream() {
                    copy.ended = true;
                }
            }
            Poll::Ready(None) => this.copy.lock().ended = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let end = self.inner.is_end_stream();
        if end {
            self.copy.lock().ended = true;
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// The answer's body on its way to the client, copied up to the cap;
    /// the record is sent when it ends.
    struct ResponseTap {
        #[pin]
        inner: ProxyBody,
        pending: Option<Pending>,
    }

    impl PinnedDrop for ResponseTap {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(pending) = this.pending.take() {
                // An empty body may never be polled: that is a complete answer.
                if this.inner.is_end_stream() {
                    pending.complete();
                } else {
                    pending.recorder.dropped(&pending.route, "incomplete");
                }
            }
        }
    }
}

impl Body for ResponseTap {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                let data = frame.data_ref();
                if let (Some(pending), Some(d)) = (this.pending.as_mut(), data) {
                    if !pending.answer_data(d) {
                        if let Some(pending) = this.pending.take() {
                            pending.recorder.dropped(&pending.route, "over_budget");
                        }
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(pending) = this.pending.take() {
                    pending.recorder.dropped(&pending.route, "incomplete");
                }
            }
            Poll::Ready(None) => {}
            Poll::Pending => {}
        }
        let ended = matches!(polled, Poll::Ready(None)) || this.inner.is_end_stream();
        if ended {
            if let Some(pending) = this.pending.take() {
                pending.complete();
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
