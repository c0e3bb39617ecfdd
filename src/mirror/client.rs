//! The copy's own client: sends one mirror copy (`CopyRequest`, the whole
//! body in memory) to a backend endpoint and reads the whole answer into a
//! [`Sink`]. Backends that speak plain HTTP/1.1 get the copy over `wire`, on
//! a connection the copy's task owns for the exchange (idle ones wait in the
//! endpoint's list between copies); HTTP/2 and `auto` over TLS go through
//! the backend's own clients. Only a refused connection passes an endpoint
//! over, and there is no retry on another endpoint (a failed copy is
//! counted, not repeated).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::BodyExt;

use super::tee::Trailers;
use super::wire::{self, Answered, Sink, WireError};
use crate::body::UpstreamBody;
use crate::upstream::{Backend, Picked, UpstreamError};

/// A mirror copy: the whole request, body in memory.
#[derive(Debug, Clone)]
pub struct CopyRequest {
    pub method: http::Method,
    /// Origin-form (or absolute) target; only path and query are sent.
    pub uri: Uri,
    /// Every field to send, `Host` and `Content-Length` included.
    pub headers: http::HeaderMap,
    pub body: Bytes,
    /// The request's trailer fields, sent after the body (then chunked
    /// over HTTP/1.1); `Trailer` in `headers` names them.
    pub trailers: Option<Arc<Trailers>>,
}

impl CopyRequest {
    fn into_request(self) -> Request<UpstreamBody> {
        let body = match &self.trailers {
            Some(t) => UpstreamBody::with_trailers(self.body, t.fields().clone()),
            None => UpstreamBody::buffered(self.body),
        };
        let mut req = Request::new(body);
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        *req.headers_mut() = self.headers;
        req
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
) -> Result<Answered, UpstreamError> {
    let endpoint = backend.pick_endpoint()?;
    if backend.speaks_plain_http1() {
        return copy_over_wire(endpoint, copy, sink).await;
    }
    let resp = endpoint.exchange(copy.into_request(), timeout).await?;
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
    Ok(Answered {
        status,
        body_bytes,
        reusable: true,
    })
}

/// A copy over HTTP/1.1 on a connection of its own (see `wire`). A
/// reused connection that ends before any answer (the server closed it
/// while idle) is replaced by a fresh one once, for idempotent methods.
async fn copy_over_wire(
    endpoint: Picked<'_>,
    copy: CopyRequest,
    sink: &mut (dyn Sink + Send),
) -> Result<Answered, UpstreamError> {
    let target = copy.uri.path_and_query().map_or("/", |p| p.as_str());
    let (head, tail) = match &copy.trailers {
        Some(t) => wire::chunked_request(
            &copy.method,
            target,
            &copy.headers,
            copy.body.len(),
            t.fields(),
        ),
        None => (
            wire::request_head(&copy.method, target, &copy.headers),
            Vec::new(),
        ),
    };
    let (mut stream, mut reused) = match endpoint.take_idle() {
        Some(s) => (s, true),
        None => (endpoint.connect().await?, false),
    };
    loop {
        match wire::exchange(&mut stream, &head, &copy.body, &tail, &copy.method, sink).await {
            Ok(answered) => {
                if answered.reusable {
                    endpoint.keep_idle(stream);
                }
                return Ok(answered);
            }
            Err(e) if reused && e.nothing_received() && copy.method.is_idempotent() => {
                tracing::debug!(backend = %endpoint.backend().name(), error = %e, "idle connection was closed; sending the copy on a new one");
                stream = endpoint.connect().await?;
                reused = false;
            }
            Err(e) => return Err(endpoint.exchange_error(e)),
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
