//! Retries of the primary request (a route's `retries`, Istio's
//! `HTTPRetry`, the Gateway API's `retry`), with Envoy's conditions. Only
//! the primary is retried: the mirrors were sent their copy before the
//! first try and never see a retry. A request with a body is retried when
//! it declares a length of at most [`RETRY_BUFFER`] bytes: the body is read
//! whole first (as Envoy's retry buffer holds it; the mirrors' copy is
//! taken as it is read) and sent again from memory; a larger or chunked
//! body is sent once. The route's deadline (the backend's `timeout`)
//! covers every try together.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use tokio::time::Instant;

use crate::body::UpstreamBody;
use crate::config::{RetryOn, RetryPolicy};
use crate::protocol::grpc;
use crate::upstream::{Backend, ResponseBody, UpstreamError};

type Answer = Result<Response<ResponseBody>, UpstreamError>;

/// Largest request body kept for retries (Envoy's default retry buffer).
pub const RETRY_BUFFER: u64 = 64 * 1024;

/// Whether a request whose body declares `length` can be retried.
pub fn replayable(length: Option<u64>) -> bool {
    length.is_some_and(|l| l <= RETRY_BUFFER)
}

/// A request body read whole, to send once per try.
enum Replay {
    Data(Bytes),
    WithTrailers(Bytes, http::HeaderMap),
}

impl Replay {
    fn body(&self) -> UpstreamBody {
        match self {
            Replay::Data(d) => UpstreamBody::buffered(d.clone()),
            Replay::WithTrailers(d, t) => UpstreamBody::WithTrailers {
                data: Some(d.clone()),
                trailers: Some(t.clone()),
            },
        }
    }
}

/// Reads the client's body (through the mirrors' tee), bounded by the
/// backend's timeout.
async fn read_whole(backend: &Backend, body: UpstreamBody) -> Result<Replay, UpstreamError> {
    let failed = |source: crate::body::BoxError| UpstreamError::Exchange {
        backend: backend.name().to_string(),
        endpoint: "primary".to_string(),
        source,
    };
    let collected = tokio::time::timeout(backend.config.timeout, body.collect())
        .await
        .map_err(|_| failed("timed out reading the request body for a retry".into()))?
        .map_err(failed)?;
    let trailers = collected.trailers().cloned();
    let data = collected.to_bytes();
    Ok(match trailers {
        Some(t) => Replay::WithTrailers(data, t),
        None => Replay::Data(data),
    })
}

/// Sends the primary request, retrying it under `policy`. `retry_head`
/// (the backend's own retry on another endpoint after a refused
/// connection) is copied for each try. `retried` is told the outcome of
/// each try that is retried (`503`, `connect_failure`, `timeout`, `reset`).
pub async fn send(
    backend: &Backend,
    parts: http::request::Parts,
    body: UpstreamBody,
    policy: &RetryPolicy,
    retry_head: Option<http::request::Parts>,
    retried: &(dyn Fn(&str) + Send + Sync),
) -> Answer {
    // A body is read whole first; a bodyless request is sent as it is.
    let replay = if http_body::Body::is_end_stream(&body) {
        None
    } else {
        Some(read_whole(backend, body).await?)
    };
    let deadline = Instant::now() + backend.config.timeout;
    let mut tries = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let per_try = policy.per_try_timeout.map_or(left, |t| t.min(left));
        let head = copy_head(&parts);
        let body = replay
            .as_ref()
            .map_or_else(|| UpstreamBody::buffered(Bytes::new()), Replay::body);
        let answer = backend
            .send(Request::from_parts(head, body), per_try, retry_head.clone())
            .await;
        let left = deadline.saturating_duration_since(Instant::now());
        if tries >= policy.attempts || left <= policy.backoff || !retriable(policy, &answer) {
            return answer;
        }
        tries += 1;
        retried(&reason(&answer));
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

/// The metric label of a retried try's outcome.
fn reason(answer: &Answer) -> String {
    match answer {
        Ok(r) => r.status().as_str().to_string(),
        Err(e) if e.is_connect() => "connect_failure".to_string(),
        Err(e) if e.is_timeout() => "timeout".to_string(),
        Err(_) => "reset".to_string(),
    }
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
