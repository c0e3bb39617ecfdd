//! Shadow dispatch: admit a copy per mirror (sampling, method, body size,
//! in-flight bound), then send the admitted copies from a spawned task.
//! Each copy starts at once (its connection made while the body arrives):
//! its head goes to the shadow with the body's first piece, and the rest
//! follows chunk by chunk from the copy's queue (`tee`), framed as the client framed it (`Content-Length` kept;
//! otherwise chunked, the trailers after the last chunk). A copy the tee
//! abandons mid-body (slow shadow, over `max_body_bytes`, the client's
//! body failed, memory) is counted as dropped with that reason, its
//! connection closed. The shadow's response is read to its end and
//! discarded so the connection goes back to the pool; it never reaches
//! the client.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use tokio::time::Instant;

use super::bound::InFlightPermit;
use super::client::{self, CopyBody, CopyError, CopyRequest};
use super::sample::sampled;
use super::target::{Mirror, RouteShadows};
use super::tee::{may_be_trailer, CopyStream, TeeFailure, QUEUE_BYTES};
use super::wire::Sink;
use crate::compare::capture::Capturer;
use crate::compare::{Engine, Job, PrimaryAnswer, PrimaryCapture, RouteComparison, Side};
use crate::protocol::grpc;
use crate::protocol::headers::suffixed_authority;
use crate::telemetry::Role;
use crate::telemetry::{AccessRecord, DropReason, MirrorErrorKind, Telemetry};
use crate::upstream::UpstreamError;

/// A copy admitted for one mirror; holds its in-flight permit.
#[derive(Debug)]
pub struct MirrorJob {
    pub mirror: Arc<Mirror>,
    _permit: InFlightPermit,
}

/// What every copy of one request shares.
#[derive(Debug, Clone)]
pub struct MirrorHead {
    pub method: Method,
    pub uri: Uri,
    /// The upstream request's headers (hop-by-hop removed, forwarding and
    /// request id added), before the mirror's own header rules.
    pub headers: HeaderMap,
    /// The authority the client addressed (`Host` / `:authority`), or the
    /// route's rewrite of it.
    pub authority: String,
    /// The path and query copies are sent with when the route rewrote
    /// them; `uri` stays the client's (logs, comparison templates).
    pub sent_uri: Option<Uri>,
    pub request_id: HeaderValue,
    /// Set when copies are compared with the primary's answer.
    pub compare: Option<CompareLink>,
}

/// What a compared copy needs: the route's rules, the primary's capture
/// (published when its body ends), and the engine to submit the pair to.
#[derive(Debug, Clone)]
pub struct CompareLink {
    pub route: Arc<RouteComparison>,
    pub primary: PrimaryCapture,
    pub engine: Arc<Engine>,
}

/// A borrowed look at the request, for admission and logging.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    pub request_id: &'a HeaderValue,
}

impl MirrorHead {
    fn view(&self) -> RequestView<'_> {
        RequestView {
            method: &self.method,
            uri: &self.uri,
            headers: &self.headers,
            request_id: &self.request_id,
        }
    }
}

/// The body the copies will carry.
#[derive(Debug)]
pub enum MirrorBody {
    /// The request has no body.
    Empty,
    /// The body is streaming to the primary; each admitted copy gets it
    /// from its own queue (`copies`, in the order of the jobs). `length` is
    /// the declared one.
    Streamed {
        copies: Vec<CopyStream>,
        length: Option<u64>,
    },
}

fn log_record<'a>(
    mirror: &'a Mirror,
    head: RequestView<'a>,
    status: Option<u16>,
    bytes: u64,
    started: Instant,
    reason: Option<&'a str>,
) -> AccessRecord<'a> {
    AccessRecord {
        route: &mirror.route,
        backend: mirror.backend.name(),
        role: "mirror",
        method: head.method.as_str(),
        path: head.uri.path(),
        status,
        bytes,
        duration_ms: started.elapsed().as_secs_f64() * 1000.0,
        request_id: head.request_id.to_str().unwrap_or("-"),
        reason,
        authority: None,
        trace_id: None,
        client: None,
        upstream: None,
    }
}

/// Counts and logs a copy that is not sent, and why.
fn dropped(
    telemetry: &Telemetry,
    mirror: &Mirror,
    head: RequestView<'_>,
    started: Instant,
    reason: DropReason,
) {
    let rec = log_record(mirror, head, None, 0, started, Some(reason.as_str()));
    telemetry.mirror_dropped(&mirror.metrics, reason, &rec);
}

/// Decides, for each mirror of a route (`shadows`), whether this request is copied.
/// Copies refused for a reason (method, body size, memory, overload) are
/// counted and logged here; requests merely not sampled are not. A body
/// the shadow memory budget cannot hold now (its declared length up to a
/// full queue, or any body when the budget is spent) is refused here; the
/// tee reserves the bytes themselves as they arrive.
pub fn admit(
    shadows: RouteShadows<'_>,
    answerer: &str,
    head: RequestView<'_>,
    content_length: Option<u64>,
    telemetry: &Telemetry,
) -> Vec<MirrorJob> {
    let mut jobs = Vec::new();
    for mirror in shadows.mirrors {
        // While a split gives the candidate live traffic, the requests it
        // answers itself are not copied to it again.
        if shadows.splits && mirror.backend.name() == answerer {
            continue;
        }
        let cfg = &mirror.config;
        if !sampled(cfg.percent, cfg.sample_key.as_deref(), head.headers) {
            continue;
        }
        let refused = if cfg
            .methods
            .as_ref()
            .is_some_and(|ms| !ms.contains(head.method))
        {
            Some(DropReason::Method)
        } else if content_length.is_some_and(|n| n > cfg.max_body_bytes) {
            Some(DropReason::BodyTooLarge)
        } else if body_over_budget(mirror, content_length) {
            Some(DropReason::Memory)
        } else {
            None
        };
        let permit = match refused {
            Some(_) => None,
            None => mirror.in_flight.try_acquire(),
        };
        match permit {
            Some(permit) => jobs.push(MirrorJob {
                mirror: mirror.clone(),
                _permit: permit,
            }),
            None => {
                let reason = refused.unwrap_or(DropReason::Overload);
                dropped(telemetry, mirror, head, Instant::now(), reason);
            }
        }
    }
    // The secondary (noise learning) gets what a compared mirror gets.
    if let Some(secondary) = shadows.secondary {
        if jobs.iter().any(|j| j.mirror.config.compare) {
            let permit = if body_over_budget(secondary, content_length) {
                Err(DropReason::Memory)
            } else {
                secondary
                    .in_flight
                    .try_acquire()
                    .ok_or(DropReason::Overload)
            };
            match permit {
                Ok(permit) => jobs.push(MirrorJob {
                    mirror: secondary.clone(),
                    _permit: permit,
                }),
                Err(reason) => dropped(telemetry, secondary, head, Instant::now(), reason),
            }
        }
    }
    jobs
}

/// Whether the part of the request's body a copy may hold at once (its
/// declared length, at most a full queue: copies stream, they never hold
/// the whole of a longer body; unknown length: when the budget is spent)
/// cannot fit in the shadow memory budget now.
fn body_over_budget(mirror: &Mirror, content_length: Option<u64>) -> bool {
    let available = mirror.memory.available() as u64;
    match content_length {
        Some(0) => false,
        Some(n) => n.min(QUEUE_BYTES as u64) > available,
        None => available == 0,
    }
}

/// Sends the admitted copies from a spawned task.
///
/// INVARIANT: this returns at once. The primary request path never waits
/// for a shadow: the task below is detached, bounded by the permits held
/// in `jobs` (max_in_flight per mirror), and each copy is bounded in time
/// by its mirror's `timeout`, counted from here: waiting for the client's
/// body to arrive is part of it. The tee never waits for a copy either (a
/// full queue abandons the copy).
pub fn dispatch(
    telemetry: Arc<Telemetry>,
    jobs: Vec<MirrorJob>,
    head: MirrorHead,
    body: MirrorBody,
) {
    if jobs.is_empty() {
        return;
    }
    let dispatched = Instant::now();
    let bodies: Vec<CopyBody> = match body {
        MirrorBody::Empty => jobs.iter().map(|_| CopyBody::Empty).collect(),
        MirrorBody::Streamed { copies, length } => copies
            .into_iter()
            .map(|pieces| CopyBody::Streamed { pieces, length })
            .collect(),
    };
    tokio::spawn(async move {
        let mut copies: Vec<(MirrorJob, CopyBody)> = jobs.into_iter().zip(bodies).collect();
        let last = copies.pop();
        let head = Arc::new(head);
        for (job, body) in copies {
            let (t, h) = (telemetry.clone(), head.clone());
            tokio::spawn(async move { send_copy(&t, job, &h, body, dispatched).await });
        }
        if let Some((job, body)) = last {
            send_copy(&telemetry, job, &head, body, dispatched).await;
        }
    });
}

/// The drop reason of a copy the tee abandoned.
fn abandoned(why: TeeFailure) -> DropReason {
    match why {
        TeeFailure::TooLarge => DropReason::BodyTooLarge,
        TeeFailure::Memory => DropReason::Memory,
        TeeFailure::ClientError => DropReason::BodyIncomplete,
        TeeFailure::Slow => DropReason::ShadowSlow,
    }
}

/// Sends one copy (its body streamed as it arrives) and reads the shadow's
/// answer to its end, all within the mirror's `timeout` from `dispatched`.
async fn send_copy(
    telemetry: &Telemetry,
    job: MirrorJob,
    head: &MirrorHead,
    body: CopyBody,
    dispatched: Instant,
) {
    let mirror = &*job.mirror;
    let cfg = &mirror.config;
    let started = dispatched;
    let deadline = dispatched + cfg.timeout;
    let view = head.view();
    // A backend whose every endpoint refused connections lately is skipped
    // (counted) until its ejection lapses; then one copy probes it again.
    if mirror.backend.all_ejected() {
        dropped(telemetry, mirror, view, started, DropReason::Unhealthy);
        return;
    }
    let copy = copy_request(mirror, head, body);
    if let Some(g) = &mirror.metrics.in_flight {
        g.inc();
    }
    let compared = head.compare.as_ref().filter(|_| cfg.compare);
    let mut sink = CopySink {
        capture_cap: compared
            .map(|_| usize::try_from(cfg.compare_max_body_bytes).unwrap_or(usize::MAX)),
        memory: mirror.memory.clone(),
        capture: None,
        grpc_status: None,
    };
    let remaining = deadline.saturating_duration_since(Instant::now());
    let outcome = tokio::time::timeout_at(
        deadline,
        client::send_copy(&mirror.backend, copy, remaining, &mut sink),
    )
    .await
    .map_err(|_| Err(MirrorErrorKind::Timeout))
    .and_then(|sent| {
        sent.map_err(|e| match e {
            CopyError::Upstream(e) => Err(classify_upstream(e)),
            CopyError::Abandoned(why) => Ok(abandoned(why)),
        })
    })
    .map(|a| (a.status.as_u16(), a.body_bytes, sink.grpc_status));
    if let Some(g) = &mirror.metrics.in_flight {
        g.dec();
    }
    let answered = outcome.is_ok();
    match outcome {
        Ok((status, bytes, Some(code))) if code != 0 && status < 500 => {
            let reason = grpc::reason(code);
            let rec = log_record(mirror, view, Some(status), bytes, started, Some(&reason));
            telemetry.grpc_failed(&mirror.metrics, code, &rec);
        }
        Ok((status, bytes, _)) if status >= 500 => {
            let rec = log_record(
                mirror,
                view,
                Some(status),
                bytes,
                started,
                Some("status_5xx"),
            );
            telemetry.mirror_failed(&mirror.metrics, MirrorErrorKind::Status5xx, &rec);
        }
        Ok((status, bytes, _)) => {
            let rec = log_record(mirror, view, Some(status), bytes, started, None);
            telemetry.answered(&mirror.metrics, &rec);
        }
        Err(Ok(reason)) => dropped(telemetry, mirror, view, started, reason),
        Err(Err(kind)) => {
            let rec = log_record(mirror, view, None, 0, started, Some(kind.as_str()));
            telemetry.mirror_failed(&mirror.metrics, kind, &rec);
        }
    }
    if let (Some(link), Some(capture)) = (compared, sink.capture.filter(|_| answered)) {
        match capture.finish() {
            Ok(captured) => submit_comparison(link, mirror, head, captured).await,
            Err(_) => link
                .engine
                .count(&link.route.route, mirror.backend.name(), "memory"),
        }
    }
}

/// What a copy keeps of the shadow's answer: the capture for comparison
/// (when compared) and a gRPC status (head or trailers).
struct CopySink {
    /// `Some(cap)` when the answer is compared.
    capture_cap: Option<usize>,
    memory: Arc<crate::memory::MemoryBudget>,
    capture: Option<Capturer>,
    grpc_status: Option<u16>,
}

impl Sink for CopySink {
    fn wants_headers(&self) -> bool {
        self.capture_cap.is_some()
    }

    fn head(&mut self, status: StatusCode, headers: &HeaderMap) {
        if let Some(cap) = self.capture_cap {
            self.capture = Some(Capturer::new(status, headers.clone(), cap, &self.memory));
        }
        // gRPC: a trailers-only answer carries its status in the head.
        self.grpc_status = grpc::status(headers);
    }

    fn data(&mut self, chunk: &[u8]) {
        if let Some(c) = self.capture.as_mut() {
            c.data_slice(chunk);
        }
    }

    fn trailers(&mut self, trailers: &HeaderMap) {
        if let Some(code) = grpc::status(trailers) {
            self.grpc_status = Some(code);
        }
    }
}

/// The shadow's request: same method, path, query, headers and body, with
/// the mirror's header rules applied and the Host suffixed. A declared
/// length is kept (`Content-Length`; the body must then be exactly that
/// long); a body of unknown length, or one whose trailers the client
/// announced (`Trailer`), is sent chunked, its trailers after the last
/// chunk and announced as the client announced them (fields that may be
/// trailers only).
fn copy_request(mirror: &Mirror, head: &MirrorHead, body: CopyBody) -> CopyRequest {
    let cfg = &mirror.config;
    let mut headers = head.headers.clone();
    for name in &cfg.remove_headers {
        headers.remove(name);
    }
    for (name, value) in &cfg.set_headers {
        headers.insert(name.clone(), value.clone());
    }
    let authority = suffixed_authority(&head.authority, &cfg.host_suffix);
    if let Ok(v) = HeaderValue::from_str(&authority) {
        headers.insert(http::header::HOST, v);
    }
    let announced = announced_trailers(&headers);
    headers.remove(http::header::TRAILER);
    headers.remove(http::header::TRANSFER_ENCODING);
    let body = match body {
        CopyBody::Streamed {
            pieces,
            length: Some(n),
        } if announced.is_none() => {
            headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(n));
            CopyBody::Streamed {
                pieces,
                length: Some(n),
            }
        }
        CopyBody::Streamed { pieces, .. } => {
            headers.remove(http::header::CONTENT_LENGTH);
            headers.insert(
                http::header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
            if let Some(names) = announced {
                headers.insert(http::header::TRAILER, names);
            }
            CopyBody::Streamed {
                pieces,
                length: None,
            }
        }
        CopyBody::Empty => CopyBody::Empty,
    };
    CopyRequest {
        method: head.method.clone(),
        uri: head.sent_uri.clone().unwrap_or_else(|| head.uri.clone()),
        headers,
        body,
    }
}

/// The trailer fields the client announced (`Trailer`) that a copy may
/// carry, as one `Trailer` value; `None` when there are none.
fn announced_trailers(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut names: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(http::header::TRAILER) {
        let Ok(value) = value.to_str() else { continue };
        for name in value.split(',').map(str::trim) {
            if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
                if may_be_trailer(&name) && !names.contains(&name) {
                    names.push(name);
                }
            }
        }
    }
    if names.is_empty() {
        return None;
    }
    let joined: Vec<&str> = names.iter().map(HeaderName::as_str).collect();
    HeaderValue::from_str(&joined.join(", ")).ok()
}

fn classify_upstream(e: UpstreamError) -> MirrorErrorKind {
    match &e {
        UpstreamError::Connect { .. } => MirrorErrorKind::Connect,
        UpstreamError::Timeout { .. } => MirrorErrorKind::Timeout,
        UpstreamError::Uri { .. } | UpstreamError::Tunnel { .. } => MirrorErrorKind::Protocol,
        UpstreamError::Exchange { .. } if client::is_protocol(&e) => MirrorErrorKind::Protocol,
        UpstreamError::Exchange { .. } if e.hyper_error().is_some_and(|h| h.is_timeout()) => {
            MirrorErrorKind::Timeout
        }
        UpstreamError::Exchange { .. } => MirrorErrorKind::Reset,
    }
}

/// Waits (bounded by the mirror's timeout) for the primary's capture, then
/// queues the pair. The copy's in-flight permit is held meanwhile, so the
/// waiting is bounded too.
async fn submit_comparison(
    link: &CompareLink,
    mirror: &Mirror,
    head: &MirrorHead,
    other: crate::diff::Captured,
) {
    let backend = mirror.backend.name();
    let mut primary = link.primary.clone();
    let waited =
        tokio::time::timeout(mirror.config.timeout, primary.wait_for(|p| p.is_some())).await;
    let primary = match waited {
        Ok(Ok(p)) => p.clone(),
        _ => None,
    };
    let primary = match primary {
        Some(PrimaryAnswer::Captured(p)) => p,
        Some(PrimaryAnswer::OverBudget) => {
            link.engine.count(&link.route.route, backend, "memory");
            return;
        }
        None => {
            link.engine
                .count(&link.route.route, backend, "primary_failed");
            return;
        }
    };
    let side = if mirror.metrics.labels.role == Role::secondary {
        Side::Secondary
    } else {
        Side::Shadow {
            mirror: backend.to_string(),
            window: mirror.metrics.window.clone(),
        }
    };
    link.engine.submit(Job {
        route: link.route.clone(),
        side,
        method: head.method.clone(),
        uri: head.uri.clone(),
        request_headers: head.headers.clone(),
        primary,
        other,
    });
}
