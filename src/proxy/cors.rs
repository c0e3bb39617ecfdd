//! A route's CORS policy (`routes[].cors`, Istio's `corsPolicy`), as
//! Envoy's CORS filter applies it: a preflight from an allowed origin is
//! answered here and reaches no backend (so no mirror either); the
//! primary's answers to an allowed origin get the CORS response headers;
//! a request without `Origin`, or from another origin, passes untouched.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};

use crate::body::{empty, ProxyBody};
use crate::config::{CorsPolicy, ValueMatch};

/// The request's `Origin` when the policy allows it.
pub fn allowed_origin(policy: &CorsPolicy, headers: &HeaderMap) -> Option<HeaderValue> {
    let origin = headers.get(header::ORIGIN)?;
    let text = origin.to_str().ok()?;
    let ok = policy.origins.iter().any(|m| match m {
        None => true,
        Some(ValueMatch::Exact(e)) => text == e,
        Some(ValueMatch::Regex(r)) => r.is_match(text),
    });
    ok.then(|| origin.clone())
}

/// A CORS preflight: `OPTIONS` with `Access-Control-Request-Method`.
pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The proxy's own answer to an allowed preflight: 200, no body.
pub fn preflight(policy: &CorsPolicy, origin: HeaderValue) -> Response<ProxyBody> {
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    for (name, value) in [
        (header::ACCESS_CONTROL_ALLOW_METHODS, &policy.allow_methods),
        (header::ACCESS_CONTROL_ALLOW_HEADERS, &policy.allow_headers),
        (header::ACCESS_CONTROL_MAX_AGE, &policy.max_age),
    ] {
        if let Some(v) = value {
            h.insert(name, v.clone());
        }
    }
    credentials(policy, h);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    resp
}

/// The CORS headers of an answer to an allowed origin.
pub fn decorate(policy: &CorsPolicy, origin: HeaderValue, h: &mut HeaderMap) {
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    if let Some(v) = &policy.expose_headers {
        h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
    }
    credentials(policy, h);
}

fn credentials(policy: &CorsPolicy, h: &mut HeaderMap) {
    if policy.allow_credentials {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
}
