//! A small client for the admin API, used by the `status`, `diffs`,
//! `promote` and `rollback` commands.

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;

/// Talking to the admin server failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminClientError {
    #[error("invalid admin URL `{0}`")]
    Url(String),
    #[error("cannot reach the admin server at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{url} answered {status}: {body}")]
    Status {
        url: String,
        status: StatusCode,
        body: String,
    },
    #[error("{url} answered something that is not the expected JSON: {reason}")]
    Json { url: String, reason: String },
}

/// Calls `method path` on the admin server at `base` (e.g. `http://127.0.0.1:9901`)
/// and parses the JSON answer.
pub async fn call<T: DeserializeOwned>(
    base: &str,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<T, AdminClientError> {
    let base = base.trim_end_matches('/');
    let base = if base.contains("://") {
        base.to_string()
    } else {
        format!("http://{base}")
    };
    let url = format!("{base}{path}");
    let uri: http::Uri = url
        .parse()
        .map_err(|_| AdminClientError::Url(url.clone()))?;
    let mut req = Request::builder().method(method.clone()).uri(uri);
    if let Some(t) = token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    // The admin server refuses state-changing requests without a JSON
    // content type (CSRF): say it on every one, with a body or not.
    if body.is_some() || !matches!(method, Method::GET | Method::HEAD) {
        req = req.header(http::header::CONTENT_TYPE, "application/json");
    }
    let payload = match body {
        Some(v) => Bytes::from(v.to_string()),
        None => Bytes::new(),
    };
    let req = req
        .body(Full::new(payload))
        .map_err(|_| AdminClientError::Url(url.clone()))?;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let unreachable = |reason: String| AdminClientError::Unreachable {
        url: url.clone(),
        reason,
    };
    let resp = tokio::time::timeout(std::time::Duration::from_secs(10), client.request(req))
        .await
        .map_err(|_| unreachable("no answer within 10s".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| unreachable(e.to_string()))?
        .to_bytes();
    if !status.is_success() {
        return Err(AdminClientError::Status {
            url,
            status,
            body: String::from_utf8_lossy(&bytes).trim().to_string(),
        });
    }
    serde_json::from_slice(&bytes).map_err(|e| AdminClientError::Json {
        url,
        reason: e.to_string(),
    })
}
