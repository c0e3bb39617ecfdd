//! Retries of the primary request (a route's `retries`, Istio's
//! `HTTPRetry`, the Gateway API's `retry`), with Envoy's conditions. Only
//! the primary is retried: the mirrors were sent their copy before the
//! first try and never see a retry. Only a request without a body is
//! retried (there is nothing to replay); the route's deadline (the
//! backend's `timeout`) covers every try together.

use bytes::Bytes;
use http::{Request, Response};
use tokio::time::Instant;

use crate::body::UpstreamBody;
use crate::config::{RetryOn, RetryPolicy};
use crate::protocol::grpc;
use crate::upstream::{Backend, ResponseBody, UpstreamError};

type Answer = Result<Response<ResponseBody>, UpstreamError>;

/// Sends the primary request, retrying it under `policy`. `retry_head`
/// (the backend's own retry on another endpoint after a refused
/// connection) is copied for each try.
pub async fn send(
    backend: &Backend,
    parts: http::request::Parts,
    body: UpstreamBody,
    policy: &RetryPolicy,
    retry_head: Option<http::request::Parts>,
) -> Answer {
    let deadline = Instant::now() + backend.config.timeout;
    let mut body = Some(body);
    let mut tries = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let per_try = policy.per_try_timeout.map_or(left, |t| t.min(left));
        let head = copy_head(&parts);
        let body = body
            .take()
            .unwrap_or_else(|| UpstreamBody::buffered(Bytes::new()));
        let answer = backend
            .send(Request::from_parts(head, body), per_try, retry_head.clone())
            .await;
        let left = deadline.saturating_duration_since(Instant::now());
        if tries >= policy.attempts || left <= policy.backoff || !retriable(policy, &answer) {
            return answer;
        }
        tries += 1;
        tracing::debug!(
            backend = %backend.name(),
            retry = tries,
            outcome = %describe(&answer),
            "retrying the primary request"
        );
        drop(answer);
        tokio::time::sleep(policy.backoff).await;
    }
}

fn copy_head(parts: &http::request::Parts) -> http::request::Parts {
    let mut copy = Request::new(());
    *copy.method_mut() = parts.method.clone();
    *copy.uri_mut() = parts.uri.clone();
    *copy.version_mut() = parts.version;
    *copy.headers_mut() = parts.headers.clone();
    copy.into_parts().0
}

fn describe(answer: &Answer) -> String {
    match answer {
        Ok(r) => r.status().as_str().to_string(),
        Err(e) => e.to_string(),
    }
}

/// Whether a try's outcome meets one of the policy's conditions.
pub fn retriable(policy: &RetryPolicy, answer: &Answer) -> bool {
    match answer {
        Err(e) => {
            let connect = e.is_connect();
            // Our own side failing (the client's body) is never retried.
            let no_answer = !connect && (e.is_timeout() || e.endpoint_fault().is_some());
            let refused = no_answer && refused_stream(e);
            policy.on.iter().any(|c| match c {
                RetryOn::FiveXx | RetryOn::GatewayError => connect || no_answer,
                RetryOn::ConnectFailure => connect,
                RetryOn::Reset => no_answer,
                RetryOn::RefusedStream => refused,
                _ => false,
            })
        }
        Ok(resp) => {
            let status = resp.status().as_u16();
            policy.on.iter().any(|c| match c {
                RetryOn::FiveXx => (500..600).contains(&status),
                RetryOn::GatewayError => matches!(status, 502..=504),
                RetryOn::StatusCodes => policy.statuses.contains(&status),
                RetryOn::Retriable4xx => status == 409,
                RetryOn::Grpc(code) => grpc::status(resp.headers()) == Some(*code),
                _ => false,
            })
        }
    }
}

/// An HTTP/2 stream the backend refused (`REFUSED_STREAM`): it was not
/// processed, so it is safe to send again.
fn refused_stream(e: &UpstreamError) -> bool {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        if err.to_string().contains("refused stream") {
            return true;
        }
        next = err.source();
    }
    false
}
