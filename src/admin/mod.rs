//! The admin server: health, readiness, metrics and the JSON API. It has
//! its own socket and is never reachable through the proxy listeners.
//! With `admin_token` set, every endpoint but `/healthz` and `/readyz`
//! wants `Authorization: Bearer <token>`. `metrics.listen` serves
//! `/metrics` alone on an address of its own without the token
//! ([`metrics_router`]), for Prometheus.
//!
//! Browsers: every endpoint but `/healthz` and `/readyz` answers only to a
//! `Host` that is an IP address, `localhost` (or `*.localhost`) or a name
//! listed in `admin_hosts`, so a DNS-rebinding page (whose `Host` is its own
//! domain) cannot read the API. A state-changing request (`POST`, `PUT`,
//! `PATCH`, `DELETE`) needs `Content-Type: application/json` and is refused
//! when it comes from another origin (`Origin`, `Sec-Fetch-Site`), so a
//! cross-site form or `fetch` cannot promote or roll back.

pub mod api;
pub mod client;
pub mod dashboard;
pub mod diffs;
pub mod fleet;
pub mod promotion;
pub mod serve;
pub mod status;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use subtle::ConstantTimeEq;

use crate::runtime::Shared;

/// The admin routes.
pub fn router(shared: Arc<Shared>) -> Router {
    let protected = Router::new()
        .route("/metrics", get(metrics))
        .route("/api/v1/status", get(api::get_status))
        .route("/api/v1/routes", get(api::get_routes))
        .route("/api/v1/stats", get(api::get_stats))
        .route("/api/v1/fleet", get(fleet::get_fleet))
        .route("/api/v1/diffs", get(diffs::get_totals))
        .route("/api/v1/diffs/{route}", get(diffs::get_route))
        .route("/api/v1/diffs/{route}/examples", get(diffs::get_examples))
        .route(
            "/api/v1/routes/{route}/promotion",
            get(promotion::get_promotion),
        )
        .route(
            "/api/v1/routes/{route}/promote",
            axum::routing::post(promotion::post_promote),
        )
        .route(
            "/api/v1/routes/{route}/rollback",
            axum::routing::post(promotion::post_rollback),
        )
        .route_layer(middleware::from_fn_with_state(
            shared.clone(),
            require_token,
        ));
    let browser_checked = Router::new()
        .merge(protected)
        .merge(dashboard::router(shared.clone()))
        .route_layer(middleware::from_fn_with_state(
            shared.clone(),
            same_origin_only,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(browser_checked)
        .with_state(shared)
}

/// The metrics listener's routes (`metrics.listen`): `/metrics` without
/// the token, behind the same host check as the admin server.
pub fn metrics_router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(
            shared.clone(),
            same_origin_only,
        ))
        .with_state(shared)
}

/// A short JSON refusal.
fn refuse(status: StatusCode, error: &str, message: String) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "error": error, "message": message })),
    )
        .into_response()
}

/// The host part of a `Host` value (no port, no brackets), lower case.
fn host_name(host: &str) -> String {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        }
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Whether the admin server answers to `host`: an IP address (a rebinding
/// page always has a name of its own), `localhost`, `*.localhost`, or a
/// name in `admin_hosts`.
pub fn host_allowed(host: &str, admin_hosts: &[String]) -> bool {
    let name = host_name(host);
    name.parse::<std::net::IpAddr>().is_ok()
        || name == "localhost"
        || name.ends_with(".localhost")
        || admin_hosts.contains(&name)
}

/// Refuses foreign `Host` values (DNS rebinding) and cross-site or
/// non-JSON state-changing requests (CSRF).
async fn same_origin_only(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    if let Some(host) = &host {
        let allowed = {
            let rt = shared.runtime.load();
            host_allowed(host, &rt.config.admin_hosts)
        };
        if !allowed {
            return refuse(
                StatusCode::MISDIRECTED_REQUEST,
                "misdirected_request",
                format!(
                    "the admin server does not answer to host `{}`; use its IP address or localhost, or list the name in admin_hosts",
                    host_name(host)
                ),
            );
        }
    }
    let changes_state = !matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    );
    if changes_state {
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "state-changing admin requests need Content-Type: application/json".into(),
            );
        }
        let site = headers
            .get("sec-fetch-site")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none");
        if !site.eq_ignore_ascii_case("same-origin") && !site.eq_ignore_ascii_case("none") {
            return refuse(
                StatusCode::FORBIDDEN,
                "cross_site_request",
                format!("refused a {site} request to the admin API"),
            );
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("null");
            let same = host.as_deref().is_some_and(|h| {
                let h = h.trim();
                origin.eq_ignore_ascii_case(&format!("http://{h}"))
                    || origin.eq_ignore_ascii_case(&format!("https://{h}"))
            });
            if !same {
                return refuse(
                    StatusCode::FORBIDDEN,
                    "cross_origin_request",
                    "refused a request from another origin to the admin API".into(),
                );
            }
        }
    }
    next.run(req).await
}

/// Checks the bearer token when one is configured.
async fn require_token(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let expected = shared.runtime.load().config.admin_token.clone();
    if let Some(token) = expected {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !constant_time_eq(given.as_bytes(), token.as_bytes()) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "admin token required\n",
            )
                .into_response();
        }
    }
    next.run(req).await
}

/// Equal tokens, compared in constant time (`subtle`); tokens of different
/// lengths are unequal (only the length is not hidden).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

async fn readyz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    if shared.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.telemetry.metrics.encode(),
    )
}
