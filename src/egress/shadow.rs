//! The shadow side: v2's outbound calls. `replay` (the default) answers
//! with v1's kept answer to the matching call, waiting up to the service's
//! `wait` when v1's call has not been answered yet, and the fallback
//! (503 `{"error":"no_recorded_call"}`) when there is none; nothing
//! leaves. `forward` sends the call on (read-only dependencies); `deny`
//! answers 403. Calls to unlisted hosts follow `shadow_default`.

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use super::keep::{Sig, Slot};
use super::sidefx::{ShadowCall, Work};
use super::{answer, live, Call, Egress, Outcome, Service};
use crate::body::{full, ProxyBody};
use crate::config::ShadowMode;

/// One call from the shadow side.
pub(super) async fn call(
    eg: &Egress,
    call: Call,
    service: Option<&Service>,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let Some(service) = service else {
        return live::unlisted(eg, call, req, eg.config.shadow_default).await;
    };
    match service.config.shadow {
        ShadowMode::Deny => {
            eg.done(&call, &service.name, Outcome::Denied, 403, 0, None);
            answer(StatusCode::FORBIDDEN, "egress_denied")
        }
        ShadowMode::Forward => live::forward(eg, call, service, req).await,
        ShadowMode::Replay => replay(eg, call, service, req).await,
    }
}

fn fallback() -> Response<ProxyBody> {
    answer(StatusCode::SERVICE_UNAVAILABLE, "no_recorded_call")
}

async fn replay(
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
    // A call without an id belongs to no inbound request: unmatched.
    let Some(id) = call.id.clone() else {
        eg.done(&call, &service.name, Outcome::Unmatched, 503, 0, None);
        return fallback();
    };
    let sig = Sig {
        id: id.clone(),
        service: service.name.clone(),
        method: parts.method.clone(),
        path: call.target.path().to_string(),
    };
    let (ordinal, mut rx, orphans) = eg.kept.shadow(&sig);
    eg.sidefx.orphans(orphans);
    let waited = tokio::time::timeout(
        service.config.wait,
        rx.wait_for(|s| !matches!(s, Slot::Pending)),
    )
    .await;
    let slot = match waited {
        Ok(Ok(slot)) => slot.clone(),
        _ => Slot::Pending,
    };
    let inbound = eg.registry.get(&id).filter(|_| service.config.compare);
    let route = inbound.as_ref().map(|i| i.route.clone());
    let shadow_call = || ShadowCall {
        method: parts.method.clone(),
        uri: http::Uri::from(call.target.path_and_query.clone()),
        headers: live::outbound_headers(&parts.headers),
        body: body.clone(),
    };
    match slot {
        Slot::Kept(e) if e.replayable => {
            if let Some(inbound) = inbound {
                eg.sidefx.submit(Work::Pair {
                    inbound,
                    service: service.name.clone(),
                    live: e.clone(),
                    shadow: shadow_call(),
                });
            }
            eg.done(
                &call,
                &service.name,
                Outcome::Replayed,
                e.status.as_u16(),
                e.response_body.len() as u64,
                route.as_deref(),
            );
            let mut resp = Response::new(full(e.response_body.clone()));
            *resp.status_mut() = e.status;
            *resp.headers_mut() = e.response_headers.clone();
            crate::protocol::headers::strip_hop_by_hop(resp.headers_mut(), false);
            resp
        }
        Slot::Kept(e) => {
            // Kept without its body (over `max_body_bytes`): compared, not replayed.
            if let Some(inbound) = inbound {
                eg.sidefx.submit(Work::Pair {
                    inbound,
                    service: service.name.clone(),
                    live: e,
                    shadow: shadow_call(),
                });
            }
            eg.done(
                &call,
                &service.name,
                Outcome::Unmatched,
                503,
                0,
                route.as_deref(),
            );
            answer(StatusCode::SERVICE_UNAVAILABLE, "recorded_answer_too_large")
        }
        Slot::Failed => {
            eg.done(
                &call,
                &service.name,
                Outcome::Unmatched,
                502,
                0,
                route.as_deref(),
            );
            answer(StatusCode::BAD_GATEWAY, "recorded_call_failed")
        }
        Slot::Pending => {
            // v1's call still in flight is no call "only in shadow".
            let live_seen = eg.kept.live_seen(&sig, ordinal);
            if let Some(inbound) = inbound.filter(|_| !live_seen) {
                eg.sidefx.submit(Work::OnlyShadow {
                    inbound,
                    service: service.name.clone(),
                    shadow: shadow_call(),
                });
            }
            eg.done(
                &call,
                &service.name,
                Outcome::Unmatched,
                503,
                0,
                route.as_deref(),
            );
            fallback()
        }
    }
}
