//! The live side: v1's outbound calls are forwarded (to the service's
//! backend, `https://` endpoints meaning TLS origination; unlisted hosts to
//! the host they name, when `live_default: forward`) and, when they carry a
//! correlation id, kept for replay. CONNECT is tunnelled when forwarding is
//! allowed. Also the forwarding used by the shadow side's `forward` mode.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::keep::{Exchange, Sig};
use super::{answer, Call, Egress, Outcome, Service, Side, UNLISTED};
use crate::body::{BoxError, ProxyBody, UpstreamBody};
use crate::config::Unlisted;
use crate::protocol::headers::strip_hop_by_hop;
use crate::record::calls::{capped, OutboundCall};
use crate::upstream::ResponseBody;

/// Time an unlisted host (forwarded) has to answer, and a CONNECT to connect.
const UNLISTED_TIMEOUT: Duration = Duration::from_secs(30);

/// The head of a call as sent on: hop-by-hop fields and proxy credentials
/// removed.
pub(super) fn outbound_headers(headers: &HeaderMap) -> HeaderMap {
    let mut h = headers.clone();
    strip_hop_by_hop(&mut h, false);
    h.remove(header::PROXY_AUTHORIZATION);
    h
}

/// A request to the service's backend: origin-form, `Host` the backend's
/// endpoint (so TLS origination reaches the real provider's name).
fn to_backend(
    service: &Service,
    parts: &Parts,
    pq: &PathAndQuery,
    body: Bytes,
) -> Request<UpstreamBody> {
    let mut req = Request::new(UpstreamBody::buffered(body));
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = Uri::from(pq.clone());
    *req.headers_mut() = outbound_headers(&parts.headers);
    if let Some(ep) = service.backend.config.endpoints.first() {
        if let Ok(v) = HeaderValue::from_str(&ep.authority) {
            req.headers_mut().insert(header::HOST, v);
        }
    }
    req
}

/// A response body that gives `prefix` (already read) and then the rest.
struct Prefixed {
    prefix: Option<Bytes>,
    rest: ResponseBody,
}

impl Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(p) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(p))));
        }
        Pin::new(&mut self.rest)
            .poll_frame(cx)
            .map_err(|e| -> BoxError { Box::new(e) })
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// Reads a response body up to `cap` bytes: the whole of it (`None` rest),
/// or the part read and the rest when it is longer.
async fn read_prefix(
    mut body: ResponseBody,
    cap: usize,
) -> Result<(Bytes, Option<ResponseBody>), hyper::Error> {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            buf.extend_from_slice(&data);
            if buf.len() > cap {
                return Ok((buf.freeze(), Some(body)));
            }
        }
    }
    Ok((buf.freeze(), None))
}

fn reply(status: StatusCode, mut headers: HeaderMap, body: ProxyBody) -> Response<ProxyBody> {
    strip_hop_by_hop(&mut headers, false);
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

/// One call from the live side.
pub(super) async fn call(
    eg: &Egress,
    call: Call,
    service: Option<&Service>,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let Some(service) = service else {
        return unlisted(eg, call, req, eg.config.live_default).await;
    };
    let (parts, body) = req.into_parts();
    let body = match eg.call_body(&call, &service.name, body).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let pq = call.target.path_and_query.clone();
    let inbound = call.id.as_deref().and_then(|id| eg.registry.get(id));
    let route = inbound.as_ref().map(|i| i.route.clone());
    let ticket = call.id.as_ref().map(|id| {
        let sig = Sig {
            id: id.clone(),
            service: service.name.clone(),
            method: parts.method.clone(),
            path: pq.path().to_string(),
        };
        let compared = inbound.filter(|_| service.config.compare);
        let (ticket, orphans) = eg.kept.begin_live(&sig, compared);
        eg.sidefx.orphans(orphans);
        (sig, ticket)
    });
    // A recorded request's call: its place in the order made.
    let recorded = call
        .id
        .as_deref()
        .and_then(|id| eg.recording.get(id))
        .map(|log| {
            let order = log.begin();
            (log, order)
        });
    let req = to_backend(service, &parts, &pq, body.clone());
    let sent = service
        .backend
        .send(req, service.backend.config.timeout, None)
        .await;
    let read = match sent {
        Ok(resp) => {
            let (rparts, rbody) = resp.into_parts();
            read_prefix(rbody, eg.config.max_body_bytes)
                .await
                .map(|r| (rparts, r))
                .map_err(|e| e.to_string())
        }
        Err(e) => Err(if e.is_timeout() {
            String::new()
        } else {
            e.to_string()
        }),
    };
    // The call as its recorded request keeps it: what v1 got.
    let keep_call = |status: StatusCode, headers: HeaderMap, answer: &Bytes, whole: bool| {
        if let Some((log, order)) = &recorded {
            let cap = log.max_body();
            log.add(
                *order,
                OutboundCall {
                    service: service.name.clone(),
                    method: parts.method.clone(),
                    uri: Uri::from(pq.clone()),
                    request_headers: outbound_headers(&parts.headers),
                    request_body: capped(&body, true, cap),
                    status: status.as_u16(),
                    response_headers: headers,
                    response_body: capped(answer, whole, cap),
                    duration: call.started.elapsed(),
                },
            );
        }
    };
    match read {
        Ok((rparts, (prefix, rest))) => {
            let whole = rest.is_none();
            keep_call(rparts.status, rparts.headers.clone(), &prefix, whole);
            if let Some((sig, ticket)) = ticket {
                let exchange = Exchange {
                    method: parts.method.clone(),
                    uri: Uri::from(pq.clone()),
                    request_headers: outbound_headers(&parts.headers),
                    request_body: body,
                    status: rparts.status,
                    response_headers: rparts.headers.clone(),
                    response_body: if whole { prefix.clone() } else { Bytes::new() },
                    replayable: whole,
                };
                eg.kept.finish_live(&sig, ticket, Some(Arc::new(exchange)));
            }
            let bytes = prefix.len() as u64;
            eg.done(
                &call,
                &service.name,
                Outcome::Forwarded,
                rparts.status.as_u16(),
                bytes,
                route.as_deref(),
            );
            let body = match rest {
                None => crate::body::full(prefix),
                Some(rest) => Prefixed {
                    prefix: Some(prefix),
                    rest,
                }
                .boxed(),
            };
            reply(rparts.status, rparts.headers, body)
        }
        Err(why) => {
            if let Some((sig, ticket)) = ticket {
                eg.kept.finish_live(&sig, ticket, None);
            }
            let (status, error) = if why.is_empty() {
                (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout")
            } else {
                (StatusCode::BAD_GATEWAY, "upstream_failed")
            };
            tracing::warn!(service = %service.name, error = %why, "egress call failed");
            if recorded.is_some() {
                // What v1 got: the egress's own answer.
                let text = serde_json::json!({ "error": error }).to_string();
                let mut headers = HeaderMap::new();
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                keep_call(status, headers, &Bytes::from(text), true);
            }
            eg.done(
                &call,
                &service.name,
                Outcome::Failed,
                status.as_u16(),
                0,
                route.as_deref(),
            );
            answer(status, error)
        }
    }
}

/// A call to a service sent on without keeping it (shadow side `forward`).
pub(super) async fn forward(
    eg: &Egress,
    call: Call,
    service: &Service,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let (parts, body) = req.into_parts();
    let body = match eg.call_body(&call, &service.name, body).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let req = to_backend(service, &parts, &call.target.path_and_query, body);
    match service
        .backend
        .send(req, service.backend.config.timeout, None)
        .await
    {
        Ok(resp) => forwarded(eg, &call, &service.name, resp),
        Err(e) => {
            let status = if e.is_timeout() {
                StatusCode::GATEWAY_TIMEOUT
            } else {
                StatusCode::BAD_GATEWAY
            };
            eg.done(
                &call,
                &service.name,
                Outcome::Failed,
                status.as_u16(),
                0,
                None,
            );
            answer(status, "upstream_failed")
        }
    }
}

/// A call to a host no service lists: sent to that host (plain HTTP) or
/// refused, by the side's default.
pub(super) async fn unlisted(
    eg: &Egress,
    call: Call,
    req: Request<Incoming>,
    action: Unlisted,
) -> Response<ProxyBody> {
    if action == Unlisted::Deny {
        eg.done(&call, UNLISTED, Outcome::Denied, 403, 0, None);
        return answer(StatusCode::FORBIDDEN, "egress_denied");
    }
    let (parts, body) = req.into_parts();
    let body = match eg.call_body(&call, UNLISTED, body).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let uri = format!(
        "http://{}{}",
        call.target.authority, call.target.path_and_query
    );
    let Ok(uri) = uri.parse::<Uri>() else {
        eg.done(&call, UNLISTED, Outcome::Failed, 400, 0, None);
        return answer(StatusCode::BAD_REQUEST, "bad_target");
    };
    let mut out = Request::new(Full::new(body));
    *out.method_mut() = parts.method.clone();
    *out.uri_mut() = uri;
    *out.headers_mut() = outbound_headers(&parts.headers);
    match tokio::time::timeout(UNLISTED_TIMEOUT, eg.plain.request(out)).await {
        Ok(Ok(resp)) => forwarded(eg, &call, UNLISTED, resp),
        _ => {
            eg.done(&call, UNLISTED, Outcome::Failed, 502, 0, None);
            answer(StatusCode::BAD_GATEWAY, "upstream_failed")
        }
    }
}

/// CONNECT: tunnelled from the live side when forwarding to that host is
/// allowed; refused from the shadow side (an encrypted call cannot be
/// replayed).
pub(super) async fn connect(
    eg: &Egress,
    call: Call,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let service = eg.service(&call.target, &call.method, req.headers());
    let name = service.map_or(UNLISTED, |s| &*s.name).to_string();
    let allowed = call.side == Side::Live
        && (service.is_some() || eg.config.live_default == Unlisted::Forward);
    if !allowed {
        eg.done(&call, &name, Outcome::Denied, 403, 0, None);
        let why = if call.side == Side::Shadow {
            "connect_refused_on_shadow_side"
        } else {
            "egress_denied"
        };
        return answer(StatusCode::FORBIDDEN, why);
    }
    let connected = tokio::time::timeout(
        UNLISTED_TIMEOUT,
        tokio::net::TcpStream::connect(call.target.authority.as_str()),
    )
    .await;
    let Ok(Ok(mut upstream)) = connected else {
        eg.done(&call, &name, Outcome::Failed, 502, 0, None);
        return answer(StatusCode::BAD_GATEWAY, "connect_failed");
    };
    tokio::spawn(async move {
        if let Ok(upgraded) = hyper::upgrade::on(req).await {
            let mut client = TokioIo::new(upgraded);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        }
    });
    eg.done(&call, &name, Outcome::Forwarded, 200, 0, None);
    Response::new(crate::body::empty())
}

/// The answer of a call sent on, passed back as it came; counted
/// `forwarded` for `service`.
fn forwarded<B>(eg: &Egress, call: &Call, service: &str, resp: Response<B>) -> Response<ProxyBody>
where
    B: Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    let status = resp.status();
    eg.done(call, service, Outcome::Forwarded, status.as_u16(), 0, None);
    let (parts, body) = resp.into_parts();
    reply(status, parts.headers, body.map_err(Into::into).boxed())
}
