//! The one place where request-path failures become responses ("rescue"):
//! malformed requests → 400, no route → 404, unreachable or failing
//! upstream → 502, upstream timeout → 504, each with a short JSON body.

use http::{header, HeaderValue, Response, StatusCode};

use crate::body::{full, ProxyBody};
use crate::upstream::UpstreamError;

/// A request-path failure.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("no route matches this request")]
    NoRoute,
    #[error("request body larger than {limit} bytes")]
    PayloadTooLarge { limit: u64 },
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::Upstream(e) if e.is_timeout() => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::NoRoute => "no_route",
            ProxyError::PayloadTooLarge { .. } => "body_too_large",
            ProxyError::Upstream(e) if e.is_timeout() => "upstream_timeout",
            ProxyError::Upstream(e) if e.is_connect() => "upstream_unreachable",
            ProxyError::Upstream(_) => "upstream_failed",
        }
    }

    fn message(&self) -> String {
        match self {
            ProxyError::BadRequest(why) => (*why).to_string(),
            ProxyError::NoRoute => "no route matches this request".to_string(),
            ProxyError::PayloadTooLarge { limit } => {
                format!("request body larger than this route allows ({limit} bytes)")
            }
            ProxyError::Upstream(UpstreamError::Timeout { backend, .. }) => {
                format!("backend {backend} did not answer in time")
            }
            ProxyError::Upstream(UpstreamError::Connect { backend, .. }) => {
                format!("backend {backend} is unreachable")
            }
            ProxyError::Upstream(
                UpstreamError::Exchange { backend, .. }
                | UpstreamError::Uri { backend, .. }
                | UpstreamError::Tunnel { backend, .. },
            ) => format!("backend {backend} failed"),
        }
    }

    /// The response the client gets.
    pub fn to_response(&self, request_id: Option<&HeaderValue>) -> Response<ProxyBody> {
        let body = serde_json::json!({
            "error": self.code(),
            "message": self.message(),
            "request_id": request_id.and_then(|v| v.to_str().ok()),
        });
        let mut resp = Response::new(full(body.to_string()));
        *resp.status_mut() = self.status();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if matches!(
            self,
            ProxyError::BadRequest(_) | ProxyError::PayloadTooLarge { .. }
        ) {
            // After a malformed request the connection's framing can't be
            // trusted; after a refused body, the rest of it is not read.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(id) = request_id {
            resp.headers_mut().insert("x-request-id", id.clone());
        }
        resp
    }
}
