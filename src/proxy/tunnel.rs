//! Upgrades (WebSocket and other `Connection: upgrade` requests) and
//! CONNECT: forwarded to the primary over a dedicated HTTP/1.1 connection,
//! then bytes are copied both ways once the primary agrees (101, or 2xx
//! for CONNECT). Never mirrored: a tunnel has side effects and no
//! request/response pair to compare.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::context::{ConnInfo, RequestContext};
use super::error::ProxyError;
use crate::body::{ProxyBody, UpstreamBody};
use crate::protocol::headers::{response_framing, strip_hop_by_hop};
use crate::runtime::Route;
use crate::telemetry::{TargetMetrics, Telemetry};
use crate::upstream::{Backend, UpstreamError};

/// Whether the request asks for a tunnel.
pub fn is_tunnel<B>(req: &Request<B>) -> bool {
    if req.method() == Method::CONNECT {
        return true;
    }
    let upgrade_token = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
    upgrade_token && req.headers().contains_key(header::UPGRADE)
}

/// Forwards a tunnel request to the primary and, if it agrees, joins the two connections.
pub async fn forward(
    mut req: Request<Incoming>,
    ctx: &RequestContext,
    conn: ConnInfo,
    backend: &Arc<Backend>,
    target: &TargetMetrics,
    route: &Route,
    telemetry: &Telemetry,
) -> Response<ProxyBody> {
    let client_upgrade = hyper::upgrade::on(&mut req);
    let is_connect = req.method() == Method::CONNECT;
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers, !is_connect);
    ctx.add_forwarded(&mut parts.headers, conn, parts.version);
    parts.headers.insert("x-request-id", ctx.request_id.clone());
    if let Ok(v) = HeaderValue::from_str(&ctx.authority) {
        parts.headers.insert(header::HOST, v);
    }
    parts.version = http::Version::HTTP_11;

    let log = |status: u16, reason: Option<&str>| {
        telemetry.answered(
            target,
            &ctx.access_record(&route.name, backend.name(), status, 0, reason),
        )
    };

    // The route's body limit holds here as on the plain path: a declared
    // length over it is refused before anything is sent, a streamed body
    // is cut by `ClientBody` (before, an upgrade request's body went to the
    // primary whole, whatever the limit).
    let body_limit = route.config.max_body_bytes;
    if let Some(limit) = body_limit {
        let declared = body.size_hint().exact().or_else(|| {
            parts
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
        });
        if declared.is_some_and(|n| n > limit) {
            let resp = ProxyError::PayloadTooLarge { limit }.to_response(Some(&ctx.request_id));
            log(413, Some("body_too_large"));
            return resp;
        }
    }
    let upstream_req = Request::from_parts(
        parts,
        UpstreamBody::Streamed {
            inner: crate::body::ClientBody::new(body, body_limit),
        },
    );

    let resp = match open(backend, upstream_req).await {
        Ok(r) => r,
        Err(e) => {
            let e = match body_limit {
                Some(limit) if crate::body::is_body_too_large(&e) => {
                    ProxyError::PayloadTooLarge { limit }
                }
                _ => ProxyError::from(e),
            };
            let resp = e.to_response(Some(&ctx.request_id));
            log(resp.status().as_u16(), Some("tunnel_failed"));
            return resp;
        }
    };
    let agreed = if is_connect {
        resp.status().is_success()
    } else {
        resp.status() == StatusCode::SWITCHING_PROTOCOLS
    };
    log(resp.status().as_u16(), agreed.then_some("tunnel"));
    if !agreed {
        let (mut parts, body) = resp.into_parts();
        if response_framing(&mut parts.headers).is_err() {
            let e = ProxyError::from(UpstreamError::Tunnel {
                backend: backend.name().to_string(),
                endpoint: "primary".to_string(),
                reason: "response with a transfer coding other than chunked".to_string(),
            });
            return e.to_response(Some(&ctx.request_id));
        }
        strip_hop_by_hop(&mut parts.headers, false);
        return Response::from_parts(parts, body.map_err(Into::into).boxed());
    }
    let mut resp = resp;
    let upstream_upgrade = hyper::upgrade::on(&mut resp);
    let route_name = route.name.clone();
    tokio::spawn(async move {
        let (client, upstream) = match tokio::try_join!(client_upgrade, upstream_upgrade) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(route = %route_name, error = %e, "tunnel upgrade failed");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            tracing::debug!(route = %route_name, error = %e, "tunnel closed with error");
        }
    });
    let (mut parts, _) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, !is_connect);
    Response::from_parts(parts, crate::body::empty())
}

/// Opens a dedicated connection to an endpoint and sends the request.
async fn open(
    backend: &Backend,
    req: Request<UpstreamBody>,
) -> Result<Response<Incoming>, UpstreamError> {
    let name = backend.name().to_string();
    let authority = backend.pick_authority().ok_or_else(|| UpstreamError::Uri {
        backend: name.clone(),
        reason: "no endpoints".into(),
    })?;
    let timeout = backend.config.connect_timeout;
    let connect_err = |reason: String| UpstreamError::Tunnel {
        backend: name.clone(),
        endpoint: authority.to_string(),
        reason,
    };
    // TCP, or TLS (ALPN http/1.1) for https:// backends.
    let stream = match tokio::time::timeout(timeout, backend.connect_dedicated(&authority)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(connect_err(format!("connect: {e}"))),
        Err(_) => return Err(connect_err("connect timed out".into())),
    };
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| connect_err(format!("handshake: {e}")))?;
    tokio::spawn(async move {
        let _ = connection.with_upgrades().await;
    });
    match tokio::time::timeout(backend.config.timeout, sender.send_request(req)).await {
        Ok(Ok(r)) => Ok(r),
        // The client's body went over the route's limit: kept as the
        // cause, so the client gets 413 rather than 502.
        Ok(Err(e)) if crate::body::is_body_too_large(&e) => Err(UpstreamError::Exchange {
            backend: name.clone(),
            endpoint: authority.to_string(),
            source: Box::new(e),
        }),
        Ok(Err(e)) => Err(connect_err(e.to_string())),
        Err(_) => Err(UpstreamError::Timeout {
            backend: name.clone(),
            endpoint: authority.to_string(),
            timeout: backend.config.timeout,
        }),
    }
}
