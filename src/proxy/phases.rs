//! The request path, as named phases called in order from `handle`:
//!
//! 1. `request_filter`  — reject malformed requests (never reach a backend)
//! 2. `select_route`    — first matching route, or 404
//! 3. `upstream_head`   — hop-by-hop removed, forwarding fields, request id
//! 4. `admit_mirrors`   — sampling and bounds per mirror (no I/O)
//! 5. `tee_body`        — the body streams on; each chunk goes to the copies' queues
//! 6. `dispatch`        — mirrors spawned; never awaited from here
//! 7. `forward`         — the primary exchange, with timeout and retry
//! 8. `response_filter` — hop-by-hop removed; body observed for the log
//!
//! Per-request state lives in one `RequestContext` (`context`).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::context::{ConnInfo, RequestContext};
use super::error::ProxyError;
use super::tunnel;
use crate::body::{BoxError, ClientBody, ProxyBody, UpstreamBody};
use crate::compare::capture::{Capturer, PrimaryCapturer};
use crate::mirror::{self, tee::TeeBody, CompareLink, MirrorBody, MirrorHead, RequestView};
use crate::protocol::grpc;
use crate::protocol::headers::{
    join_cookies, response_framing, split_host_port, strip_hop_by_hop, trace_id,
};
use crate::runtime::{Route, Runtime, Shared};
use crate::telemetry::{TargetMetrics, Telemetry};
use crate::upstream::{Backend, ResponseBody};

static X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// Serves one client request.
pub async fn handle(
    shared: Arc<Shared>,
    conn: ConnInfo,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let runtime = shared.runtime.load_full();
    let telemetry = &shared.telemetry;
    let request_id = req
        .headers()
        .get(&X_REQUEST_ID)
        .filter(|v| !v.is_empty() && v.len() <= 200)
        .cloned()
        .unwrap_or_else(new_request_id);

    // 1. request filter
    let authority = match request_filter(&req) {
        Ok(a) => a,
        Err(e) => return e.to_response(Some(&request_id)),
    };
    let mut req = req;
    if runtime.config.normalize_path {
        super::path::normalize_uri(req.uri_mut());
    }
    let mut ctx = RequestContext {
        started: Instant::now(),
        request_id,
        method: req.method().clone(),
        uri: req.uri().clone(),
        authority,
        peer: conn.peer,
        trusted_peer: runtime.config.is_trusted_proxy(conn.peer.ip()),
        trace_id: trace_id(req.headers()).map(str::to_string),
        upstream: None,
    };

    // 2. route
    let Some(route) = select_route(&runtime, &ctx, &req) else {
        let none = crate::telemetry::Metrics::UNROUTED;
        let resp = ProxyError::NoRoute.to_response(Some(&ctx.request_id));
        let status = resp.status().as_u16();
        let record = ctx.access_record(none, none, status, 0, Some("no_route"));
        telemetry.unrouted(&record);
        return resp;
    };
    let (backend, target) = route.answerer();

    // CORS: an allowed preflight is answered here (no backend, no mirror).
    let cors = route.config.cors.as_ref().and_then(|policy| {
        super::cors::allowed_origin(policy, req.headers()).map(|origin| (policy, origin))
    });
    if let Some((policy, origin)) = &cors {
        if super::cors::is_preflight(&ctx.method, req.headers()) {
            log_primary(
                telemetry,
                target,
                route,
                backend,
                &ctx,
                200,
                0,
                Some("cors_preflight"),
            );
            return super::cors::preflight(policy, origin.clone());
        }
    }

    // Upgrade and CONNECT go to the primary over a dedicated connection and
    // are never mirrored.
    if tunnel::is_tunnel(&req) {
        return tunnel::forward(req, &ctx, conn, backend, target, route, telemetry).await;
    }

    // 3. upstream head
    let (mut parts, body) = req.into_parts();
    upstream_head(&mut parts, &mut ctx, conn, route, backend);
    if shared.egress.is_some() && ctx.trace_id.is_none() {
        ctx.trace_id = add_traceparent(&mut parts.headers);
    }

    // The route's body limit: a declared length over it is refused before
    // anything is sent anywhere; a streamed body is cut by `ClientBody`.
    let content_length = declared_length(&parts.headers, &body);
    let body_limit = route.config.max_body_bytes;
    if let (Some(limit), Some(len)) = (body_limit, content_length) {
        if len > limit {
            let e = ProxyError::PayloadTooLarge { limit };
            log_primary(
                telemetry,
                target,
                route,
                backend,
                &ctx,
                413,
                0,
                Some("body_too_large"),
            );
            return e.to_response(Some(&ctx.request_id));
        }
    }
    let body = ClientBody::new(body, body_limit);

    // 4. mirrors: admission (sampling, methods, size, in-flight bound)
    let view = RequestView {
        method: &parts.method,
        uri: &ctx.uri,
        headers: &parts.headers,
        request_id: &ctx.request_id,
    };
    let jobs = if route.mirrors.is_empty() {
        Vec::new()
    } else {
        mirror::admit(
            route.shadows(),
            backend.name(),
            view,
            content_length,
            telemetry,
        )
    };

    if let Some(egress) = &shared.egress {
        register_egress(egress, route, &jobs, &ctx);
    }

    // Recording (`routes[].record`): sampled here; bounded copies of both
    // bodies, handed to the writer's queue when the answer ends.
    let mut recording = route.config.record.as_ref().and_then(|config| {
        let head = crate::record::RequestHead {
            route: &route.name,
            method: &parts.method,
            uri: &ctx.uri,
            headers: &parts.headers,
            request_id: &ctx.request_id,
            trace_id: ctx.trace_id.as_deref(),
        };
        shared
            .recorder
            .admit(config, head, &runtime.config, &route.memory)
    });
    // With `egress:` on, a recorded request also gathers its outbound calls.
    if let (Some(pending), Some(egress)) = (recording.as_mut(), &shared.egress) {
        egress.expect_calls(pending, &parts.headers);
    }

    // 5. body: each chunk also goes to the copies' bounded queues as it streams to the primary
    let (upstream_body, mirror_body) = tee_body(body, &jobs, content_length);
    let upstream_body = match recording.as_mut() {
        Some(pending) => pending.tap_request(upstream_body),
        None => upstream_body,
    };

    // Comparison: the primary's answer will be captured for the compared copies.
    let (capture, compare_link) = compare_link(route, &jobs, &shared);

    // 6. dispatch: spawned and bounded; nothing below waits for it
    if !jobs.is_empty() {
        // `Trailer` stays: a copy framed chunked announces the trailers
        // it may carry (`mirror::dispatch::copy_request`).
        let headers = parts.headers.clone();
        let rewritten = route.config.rewrite.is_some();
        let head = MirrorHead {
            method: parts.method.clone(),
            uri: ctx.uri.clone(),
            sent_uri: rewritten.then(|| parts.uri.clone()),
            authority: match route
                .config
                .rewrite
                .as_ref()
                .and_then(|r| r.authority.as_ref())
            {
                Some(a) => a.to_str().unwrap_or_default().to_string(),
                None => ctx.authority.clone(),
            },
            headers,
            request_id: ctx.request_id.clone(),
            compare: compare_link,
        };
        mirror::dispatch(telemetry.clone(), jobs, head, mirror_body);
    }

    // 7. forward to the primary (retried under the route's `retries` when
    // the request declares a body of at most 64 KiB, read whole first;
    // mirrors get one copy, never a retry)
    let retry_head = retry_copy(backend, &parts, content_length);
    let sent = match route.config.retries.as_ref() {
        Some(policy) if super::retry::replayable(content_length) && policy.attempts > 0 => {
            let retried = |reason: &str| {
                telemetry
                    .metrics
                    .retried(&route.name, backend.name(), reason)
            };
            super::retry::send(backend, parts, upstream_body, policy, retry_head, &retried).await
        }
        _ => {
            let req = Request::from_parts(parts, upstream_body);
            backend.send(req, backend.config.timeout, retry_head).await
        }
    };
    let resp = match sent {
        Ok(resp) => {
            ctx.upstream = resp
                .extensions()
                .get::<crate::upstream::AnsweredBy>()
                .map(|a| a.0.clone());
            resp
        }
        Err(e) => {
            ctx.upstream = e.endpoint().map(str::to_string);
            let e = match body_limit {
                Some(limit) if crate::body::is_body_too_large(&e) => {
                    ProxyError::PayloadTooLarge { limit }
                }
                _ => ProxyError::from(e),
            };
            return primary_failed(e, &ctx, route, backend, target, telemetry);
        }
    };

    // The primary's framing: Transfer-Encoding wins over Content-Length;
    // a transfer coding other than chunked is not passed on.
    let mut resp = resp;
    if let Err(why) = response_framing(resp.headers_mut()) {
        let e = ProxyError::Upstream(crate::upstream::UpstreamError::Exchange {
            backend: backend.name().to_string(),
            endpoint: "primary".to_string(),
            source: why.into(),
        });
        return primary_failed(e, &ctx, route, backend, target, telemetry);
    }

    // 8. response filter
    let mut resp = response_filter(
        resp,
        ctx,
        route,
        backend,
        target,
        telemetry.clone(),
        capture,
    );
    if let Some((policy, origin)) = cors {
        super::cors::decorate(policy, origin, resp.headers_mut());
    }
    match recording {
        Some(pending) => pending.tap_response(resp),
        None => resp,
    }
}

use crate::compare::capture::CaptureSender;

/// When an admitted copy is compared, a channel on which the primary's
/// captured answer will be published, and the link the copies wait on.
fn compare_link(
    route: &Route,
    jobs: &[mirror::MirrorJob],
    shared: &Arc<Shared>,
) -> (Option<(CaptureSender, usize)>, Option<CompareLink>) {
    let Some(comparison) = &route.comparison else {
        return (None, None);
    };
    let cap = jobs
        .iter()
        .filter(|j| j.mirror.config.compare)
        .map(|j| j.mirror.config.compare_max_body_bytes)
        .max();
    let Some(cap) = cap else {
        return (None, None);
    };
    let (tx, rx) = crate::compare::capture::channel();
    let link = CompareLink {
        route: comparison.clone(),
        primary: rx,
        engine: shared.comparison.clone(),
    };
    (
        Some((tx, usize::try_from(cap).unwrap_or(usize::MAX))),
        Some(link),
    )
}

/// Phase 1: requests a proxy must refuse. Returns the authority addressed.
fn request_filter(req: &Request<Incoming>) -> Result<String, ProxyError> {
    let host_header = match req.headers().get_all(header::HOST).iter().count() {
        0 => None,
        1 => Some(
            req.headers()[header::HOST]
                .to_str()
                .map_err(|_| ProxyError::BadRequest("invalid Host header"))?,
        ),
        _ => return Err(ProxyError::BadRequest("more than one Host header")),
    };
    let uri_authority = req.uri().authority().map(|a| a.as_str());
    let authority = match (uri_authority, host_header) {
        (Some(u), Some(h)) if req.method() != Method::CONNECT => {
            let (uh, up) = split_host_port(u);
            let (hh, hp) = split_host_port(h);
            if !uh.eq_ignore_ascii_case(hh) || up != hp {
                return Err(ProxyError::BadRequest(
                    "request target authority and Host header differ",
                ));
            }
            u
        }
        (Some(u), _) => u,
        (None, Some(h)) => h,
        (None, None) if req.version() == Version::HTTP_11 => {
            return Err(ProxyError::BadRequest(
                "HTTP/1.1 request without Host header",
            ))
        }
        (None, None) => "",
    };
    if authority.is_empty() && req.version() >= Version::HTTP_11 {
        return Err(ProxyError::BadRequest("empty Host header"));
    }
    if authority
        .bytes()
        .any(|b| b <= b' ' || b == b'/' || b == b'\\' || b == b'@' || b >= 0x7f)
    {
        return Err(ProxyError::BadRequest("invalid Host header"));
    }
    Ok(authority.to_string())
}

/// Phase 2.
fn select_route<'r>(
    runtime: &'r Runtime,
    ctx: &RequestContext,
    req: &Request<Incoming>,
) -> Option<&'r Route> {
    let (host, _) = split_host_port(&ctx.authority);
    let host = host.strip_suffix('.').unwrap_or(host);
    runtime.select(
        host,
        ctx.uri.path(),
        ctx.uri.query(),
        &ctx.method,
        req.headers(),
    )
}

/// Phase 3: the head sent upstream (and copied to the mirrors). The
/// route's request header changes are made here, the answering backend's
/// (a split share's) first and then the route's, so that mirrors get them
/// too, as Envoy applies route-level request headers before mirroring.
fn upstream_head(
    parts: &mut http::request::Parts,
    ctx: &mut RequestContext,
    conn: ConnInfo,
    route: &Route,
    backend: &Backend,
) {
    let trailer = trailer_field(&parts.headers);
    strip_hop_by_hop(&mut parts.headers, false);
    restore_trailer_field(&mut parts.headers, trailer);
    join_cookies(&mut parts.headers);
    ctx.add_forwarded(&mut parts.headers, conn, parts.version);
    parts
        .headers
        .insert(X_REQUEST_ID.clone(), ctx.request_id.clone());
    if let Ok(v) = HeaderValue::from_str(&ctx.authority) {
        parts.headers.insert(header::HOST, v);
    }
    if let Some(h) = route.config.backend_headers.get(backend.name()) {
        h.request.apply(&mut parts.headers);
    }
    route.config.headers.request.apply(&mut parts.headers);
    // Origin-form upstream; the backend fills in the endpoint (HTTP/1.1)
    // or `:authority` from Host (HTTP/2), and sets the version to match the
    // connection it picks.
    // A route's rewrite: the path (query kept) and the Host sent upstream.
    let rewrite = route.config.rewrite.as_ref();
    if let Some(a) = rewrite.and_then(|r| r.authority.as_ref()) {
        parts.headers.insert(header::HOST, a.clone());
    }
    if let Some(pq) = ctx.uri.path_and_query() {
        let mut p = http::uri::Parts::default();
        let rewritten = rewrite.and_then(|r| super::rewrite::path_and_query(r, pq));
        p.path_and_query = Some(rewritten.unwrap_or_else(|| pq.clone()));
        if let Ok(u) = Uri::from_parts(p) {
            parts.uri = u;
        }
    }
}

/// The `Trailer` field(s) of a head, unless `Connection` names it.
///
/// `Trailer` announces the trailer fields that follow a body; it describes
/// the message, not the connection (RFC 9110 §6.6.2), and hyper's HTTP/1.1
/// encoder sends only the trailer fields a head announces there. Removed
/// with the hop-by-hop fields (as RFC 2616 had it), request trailers never
/// reached the primary and response trailers never reached HTTP/1.1
/// clients that sent `TE: trailers`.
fn trailer_field(headers: &http::HeaderMap) -> Vec<HeaderValue> {
    let named_by_connection = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailer"));
    if named_by_connection {
        return Vec::new();
    }
    headers.get_all(header::TRAILER).iter().cloned().collect()
}

fn restore_trailer_field(headers: &mut http::HeaderMap, values: Vec<HeaderValue>) {
    for v in values {
        headers.append(header::TRAILER, v);
    }
}

/// The body length, when known up front.
fn declared_length(headers: &http::HeaderMap, body: &impl Body) -> Option<u64> {
    if body.is_end_stream() {
        return Some(0);
    }
    body.size_hint().exact().or_else(|| {
        headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    })
}

/// Phase 5: with copies admitted and a body, the tee hands each chunk to
/// every copy's queue as the primary reads it.
fn tee_body(
    body: ClientBody,
    jobs: &[mirror::MirrorJob],
    content_length: Option<u64>,
) -> (UpstreamBody, MirrorBody) {
    let Some(first) = jobs.first().filter(|_| content_length != Some(0)) else {
        return (UpstreamBody::Streamed { inner: body }, MirrorBody::Empty);
    };
    let caps = jobs.iter().map(|j| j.mirror.config.max_body_bytes);
    let (tee, copies) = TeeBody::new(body, caps, &first.mirror.memory);
    (
        UpstreamBody::teed(tee),
        MirrorBody::Streamed {
            copies,
            length: content_length,
        },
    )
}

/// A copy of the head for one retry on another endpoint, only when a retry
/// is possible: idempotent method, no body, several endpoints.
fn retry_copy(
    backend: &Backend,
    parts: &http::request::Parts,
    content_length: Option<u64>,
) -> Option<http::request::Parts> {
    let idempotent = matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    );
    if !backend.config.retry
        || !idempotent
        || content_length != Some(0)
        || backend.config.endpoints.len() < 2
    {
        return None;
    }
    let mut copy = Request::new(());
    *copy.method_mut() = parts.method.clone();
    *copy.uri_mut() = parts.uri.clone();
    *copy.version_mut() = parts.version;
    *copy.headers_mut() = parts.headers.clone();
    Some(copy.into_parts().0)
}

/// Phase 8: the primary's response goes back untouched but for hop-by-hop
/// fields and the route's response header changes; its body streams
/// through an observer that logs at its end.
fn response_filter(
    resp: Response<ResponseBody>,
    ctx: RequestContext,
    route: &Route,
    backend: &Arc<Backend>,
    target: &Arc<TargetMetrics>,
    telemetry: Arc<Telemetry>,
    capture: Option<(CaptureSender, usize)>,
) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    let trailer = trailer_field(&parts.headers);
    strip_hop_by_hop(&mut parts.headers, false);
    restore_trailer_field(&mut parts.headers, trailer);
    // Captured for comparison as the backend answered, before the route's
    // response header changes (the shadow's answer gets none).
    let capture = capture.map(|(tx, cap)| {
        let capturer = Capturer::new(parts.status, parts.headers.clone(), cap, &route.memory);
        PrimaryCapturer::new(capturer, tx)
    });
    if let Some(h) = route.config.backend_headers.get(backend.name()) {
        h.response.apply(&mut parts.headers);
    }
    route.config.headers.response.apply(&mut parts.headers);
    let observed = ObservedBody {
        inner: body,
        bytes: 0,
        capture,
        log: Some(PrimaryLog {
            telemetry,
            target: target.clone(),
            route: route.name.clone(),
            backend: backend.clone(),
            status: parts.status.as_u16(),
            // A trailers-only gRPC answer carries its status in the head.
            grpc_status: grpc::status(&parts.headers),
            ctx,
        }),
    };
    Response::from_parts(parts, observed.boxed())
}

/// The primary's exchange failed: the client gets the error's response,
/// logged and counted as the primary's answer (reason from its status).
fn primary_failed(
    e: ProxyError,
    ctx: &RequestContext,
    route: &Route,
    backend: &Backend,
    target: &TargetMetrics,
    telemetry: &Telemetry,
) -> Response<ProxyBody> {
    tracing::warn!(route = %route.name, request_id = ctx.request_id.to_str().unwrap_or("-"), error = %e, "primary failed");
    let resp = e.to_response(Some(&ctx.request_id));
    log_primary(
        telemetry,
        target,
        route,
        backend,
        ctx,
        resp.status().as_u16(),
        0,
        Some(e.status_reason()),
    );
    resp
}

#[allow(clippy::too_many_arguments)]
fn log_primary(
    telemetry: &Telemetry,
    target: &TargetMetrics,
    route: &Route,
    backend: &Backend,
    ctx: &RequestContext,
    status: u16,
    bytes: u64,
    reason: Option<&str>,
) {
    telemetry.answered(
        target,
        &ctx.access_record(&route.name, backend.name(), status, bytes, reason),
    );
}

impl ProxyError {
    fn status_reason(&self) -> &'static str {
        match self.status().as_u16() {
            504 => "upstream_timeout",
            413 => "body_too_large",
            _ => "upstream_failed",
        }
    }
}

/// With `egress` configured, a request without a valid `traceparent`
/// gets one, so the primary and its copies share a W3C trace id (their
/// outbound calls are tied to the request by it, or by `x-request-id`).
fn add_traceparent(headers: &mut http::HeaderMap) -> Option<String> {
    let trace = format!("{:032x}", fastrand::u128(1..));
    let value = format!("00-{trace}-{:016x}-01", fastrand::u64(1..));
    let value = HeaderValue::from_str(&value).ok()?;
    headers.insert(http::HeaderName::from_static("traceparent"), value);
    Some(trace)
}

/// Tells the egress that this request was mirrored: its outbound calls are
/// counted under this route and its compared mirror. Only a short lock.
fn register_egress(
    egress: &crate::egress::Egress,
    route: &Route,
    jobs: &[mirror::MirrorJob],
    ctx: &RequestContext,
) {
    let candidate = jobs
        .iter()
        .filter(|j| j.mirror.metrics.labels.role == crate::telemetry::Role::mirror)
        .max_by_key(|j| j.mirror.config.compare);
    let Some(job) = candidate else {
        return;
    };
    let inbound = crate::egress::Inbound {
        route: route.name.clone(),
        mirror: std::sync::Arc::from(job.mirror.config.backend.as_str()),
        window: job.mirror.metrics.window.clone(),
        rules: route.comparison.clone(),
    };
    let id = ctx.request_id.to_str().unwrap_or("");
    let trace = ctx.trace_id.as_deref().unwrap_or("");
    egress.registry.register(&[id, trace], &inbound);
}

/// A fresh request id: 128 random bits in hex.
fn new_request_id() -> HeaderValue {
    let id = format!("{:032x}", fastrand::u128(..));
    HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

struct PrimaryLog {
    telemetry: Arc<Telemetry>,
    target: Arc<TargetMetrics>,
    route: Arc<str>,
    backend: Arc<Backend>,
    status: u16,
    /// `grpc-status` seen in the head or the trailers.
    grpc_status: Option<u16>,
    ctx: RequestContext,
}

impl PrimaryLog {
    fn emit(self, bytes: u64, reason: Option<&str>) {
        let ctx = &self.ctx;
        let failed_call = self.grpc_status.filter(|c| *c != 0);
        let grpc_reason = failed_call.map(grpc::reason);
        let record = ctx.access_record(
            &self.route,
            self.backend.name(),
            self.status,
            bytes,
            reason.or(grpc_reason.as_deref()),
        );
        match failed_call {
            Some(code) => self.telemetry.grpc_failed(&self.target, code, &record),
            None => self.telemetry.answered(&self.target, &record),
        }
    }
}

pin_project_lite::pin_project! {
    /// The primary's response body on its way to the client: counted, and
    /// logged once when it ends (or when the client goes away).
    struct ObservedBody {
        #[pin]
        inner: ResponseBody,
        bytes: u64,
        log: Option<PrimaryLog>,
        // A copy for comparison, published when the body has ended.
        capture: Option<PrimaryCapturer>,
    }

    impl PinnedDrop for ObservedBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            let complete = this.inner.is_end_stream();
            if let Some(log) = this.log.take() {
                // An empty body may never be polled: that is a complete answer.
                let reason = (!complete).then_some("client_gone");
                log.emit(*this.bytes, reason);
            }
            if let Some(capture) = this.capture.take() {
                if complete {
                    capture.publish();
                }
            }
        }
    }
}

impl Body for ObservedBody {
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
                if let Some(d) = frame.data_ref() {
                    *this.bytes += d.len() as u64;
                    if let Some(c) = this.capture.as_mut() {
                        c.capturer.data(d);
                    }
                } else if let (Some(t), Some(log)) = (frame.trailers_ref(), this.log.as_mut()) {
                    if let Some(code) = grpc::status(t) {
                        log.grpc_status = Some(code);
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(log) = this.log.take() {
                    log.emit(*this.bytes, Some("upstream_body_error"));
                }
            }
            Poll::Ready(None) => {
                if let Some(log) = this.log.take() {
                    log.emit(*this.bytes, None);
                }
                if let Some(c) = this.capture.take() {
                    c.publish();
                }
            }
            Poll::Pending => {}
        }
        if this.inner.is_end_stream() {
            if let Some(log) = this.log.take() {
                log.emit(*this.bytes, None);
            }
            if let Some(c) = this.capture.take() {
                c.publish();
            }
        }
        polled.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
