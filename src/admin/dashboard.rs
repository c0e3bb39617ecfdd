//! The web dashboard on the admin server: `GET /` (the page) and
//! `GET /assets/{file}` (its stylesheet and scripts), all compiled into the
//! binary from `assets/dashboard/`. Nothing is fetched from elsewhere.
//!
//! With `admin_token` set, these routes sit behind the same check as the
//! JSON API (`admin::require_token`). A browser cannot put a header on the
//! address it navigates to, so the dashboard routes also take the token once
//! as `?token=`. The page keeps it in `sessionStorage`, removes it from the
//! address bar, and sends `Authorization: Bearer` on every request it makes,
//! its own assets included (it fetches them and loads them as `blob:`).
//! A page load without a token gets a small 401 page that either resends the
//! token the tab already holds or asks for one.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::runtime::Shared;

/// A file served under `/assets/`.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every asset, in the order the page loads the scripts.
const ASSETS: &[Asset] = &[
    Asset {
        name: "dashboard.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../assets/dashboard/dashboard.css"),
    },
    Asset {
        name: "dom.js",
        content_type: JS,
        body: include_bytes!("../../assets/dashboard/dom.js"),
    },
    Asset {
        name: "chart.js",
        content_type: JS,
        body: include_bytes!("../../assets/dashboard/chart.js"),
    },
    Asset {
        name: "jsonview.js",
        content_type: JS,
        body: include_bytes!("../../assets/dashboard/jsonview.js"),
    },
    Asset {
        name: "diffs.js",
        content_type: JS,
        body: include_bytes!("../../assets/dashboard/diffs.js"),
    },
    Asset {
        name: "dashboard.js",
        content_type: JS,
        body: include_bytes!("../../assets/dashboard/dashboard.js"),
    },
];

const INDEX_HTML: &str = include_str!("../../assets/dashboard/index.html");
const LOGIN_HTML: &str = include_str!("../../assets/dashboard/login.html");
/// Replaced by a fresh value in every page answer.
const NONCE_SLOT: &str = "{{nonce}}";

/// The dashboard routes behind the admin token check; merged into the admin
/// router.
pub fn router(shared: Arc<Shared>) -> Router<Arc<Shared>> {
    pages().route_layer(middleware::from_fn_with_state(shared, guard))
}

/// The dashboard routes without any access check, for embedding behind
/// another one (and for tests that serve the page beside a stand-in API).
pub fn pages<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/assets/{file}", get(asset))
}

/// The content type of an asset, if there is one by that name.
pub fn asset_content_type(name: &str) -> Option<&'static str> {
    ASSETS
        .iter()
        .find(|a| a.name == name)
        .map(|a| a.content_type)
}

/// Accepts `?token=` in place of the header, then applies the admin API's
/// own token check. A refused page load gets the token page instead of
/// plain text.
async fn guard(State(shared): State<Arc<Shared>>, mut req: Request, next: Next) -> Response {
    if !req.headers().contains_key(header::AUTHORIZATION) {
        let token = Query::<HashMap<String, String>>::try_from_uri(req.uri())
            .ok()
            .and_then(|q| q.0.get("token").cloned());
        if let Some(value) = token.and_then(|t| HeaderValue::from_str(&format!("Bearer {t}")).ok())
        {
            req.headers_mut().insert(header::AUTHORIZATION, value);
        }
    }
    let page = req.uri().path() == "/" && req.method() == Method::GET;
    let resp = super::require_token(State(shared), req, next).await;
    if page && resp.status() == StatusCode::UNAUTHORIZED {
        let mut login = html_page(LOGIN_HTML, StatusCode::UNAUTHORIZED);
        login
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return login;
    }
    resp
}

async fn index() -> Response {
    html_page(INDEX_HTML, StatusCode::OK)
}

async fn asset(Path(file): Path<String>) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == file) else {
        return (StatusCode::NOT_FOUND, "no such asset\n").into_response();
    };
    let mut headers = common_headers();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    (StatusCode::OK, headers, asset.body).into_response()
}

fn common_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h
}

/// An HTML page with a fresh script nonce and a policy that allows only
/// the page's own inline script and what it loads from `blob:` URLs.
fn html_page(template: &str, status: StatusCode) -> Response {
    // The nonce only has to be unguessable for a page that never renders
    // outside markup; fastrand's seed is random per process.
    let nonce = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
    let body = template.replace(NONCE_SLOT, &nonce);
    let policy = format!(
        "default-src 'none'; script-src 'nonce-{nonce}' blob:; style-src 'nonce-{nonce}' blob:; \
         img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; form-action 'self'; \
         frame-ancestors 'none'"
    );
    let mut headers = common_headers();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(&policy) {
        headers.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    (status, headers, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_the_page_loads_is_served() {
        // The boot script in index.html lists the files it fetches.
        for asset in ASSETS {
            if asset.name.ends_with(".js") || asset.name.ends_with(".css") {
                assert!(
                    INDEX_HTML.contains(&format!("'{}'", asset.name)),
                    "index.html does not load {}",
                    asset.name
                );
            }
        }
        assert!(INDEX_HTML.contains(NONCE_SLOT));
        assert!(LOGIN_HTML.contains(NONCE_SLOT));
    }

    #[test]
    fn no_markup_from_elsewhere() {
        for text in [INDEX_HTML, LOGIN_HTML].into_iter().chain(
            ASSETS
                .iter()
                .filter_map(|a| std::str::from_utf8(a.body).ok()),
        ) {
            for scheme in ["http://", "https://"] {
                let outside = text
                    .match_indices(scheme)
                    .any(|(i, _)| !text[i..].starts_with("http://www.w3.org/2000/svg"));
                assert!(!outside, "an asset names an outside address");
            }
        }
    }
}
