//! How an exchange with a backend fails (`UpstreamError`), and what the
//! request path and the mirrors ask of a failure (whose fault it was,
//! whether it ever reached the backend).

use std::time::Duration;

use crate::body::BoxError;

/// Why an upstream exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("backend `{backend}`: cannot connect to {endpoint}: {source}")]
    Connect {
        backend: String,
        endpoint: String,
        source: BoxError,
    },
    #[error("backend `{backend}`: no answer from {endpoint} within {timeout:?}")]
    Timeout {
        backend: String,
        endpoint: String,
        timeout: Duration,
    },
    #[error("backend `{backend}`: exchange with {endpoint} failed: {source}")]
    Exchange {
        backend: String,
        endpoint: String,
        source: BoxError,
    },
    #[error("backend `{backend}`: tunnel to {endpoint} failed: {reason}")]
    Tunnel {
        backend: String,
        endpoint: String,
        reason: String,
    },
    #[error("backend `{backend}`: invalid request URI: {reason}")]
    Uri { backend: String, reason: String },
}

/// The endpoint (`host:port`) that answered, in a response's extensions.
#[derive(Debug, Clone)]
pub struct AnsweredBy(pub String);

impl UpstreamError {
    /// The endpoint the failed exchange was with, when one was picked.
    pub fn endpoint(&self) -> Option<&str> {
        match self {
            UpstreamError::Connect { endpoint, .. }
            | UpstreamError::Timeout { endpoint, .. }
            | UpstreamError::Exchange { endpoint, .. }
            | UpstreamError::Tunnel { endpoint, .. } => Some(endpoint),
            UpstreamError::Uri { .. } => None,
        }
    }

    /// True when the request never reached the backend.
    pub fn is_connect(&self) -> bool {
        matches!(self, UpstreamError::Connect { .. })
    }

    pub fn is_timeout(&self) -> bool {
        matches!(self, UpstreamError::Timeout { .. })
    }

    /// Why the endpoint itself is to blame for a failed exchange (it took
    /// the request, then reset, closed, answered garbage or timed out);
    /// `None` for connect failures (ejected where they happen) and for
    /// failures of our side, such as the client's request body failing.
    pub fn endpoint_fault(&self) -> Option<&'static str> {
        match self {
            UpstreamError::Timeout { .. } => Some("no answer in time"),
            UpstreamError::Exchange { .. } => match self.hyper_error() {
                Some(h) if h.is_user() || h.is_canceled() || h.is_body_write_aborted() => None,
                Some(h) if h.is_parse() || h.is_parse_status() || h.is_parse_too_large() => {
                    Some("invalid response")
                }
                _ if self.request_body_failed() => None,
                _ => Some("exchange failed"),
            },
            _ => None,
        }
    }

    /// True when the request body sent upstream failed (the client's side).
    pub fn request_body_failed(&self) -> bool {
        let UpstreamError::Exchange { source, .. } = self else {
            return false;
        };
        let mut next: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
        while let Some(e) = next {
            if e.is::<crate::body::BodyTooLarge>() {
                return true;
            }
            if let Some(h) = e.downcast_ref::<hyper::Error>() {
                if h.is_user() {
                    return true;
                }
            }
            next = e.source();
        }
        false
    }

    /// The hyper error behind a failed exchange, if there is one.
    pub fn hyper_error(&self) -> Option<&hyper::Error> {
        let UpstreamError::Exchange { source, .. } = self else {
            return None;
        };
        let mut next: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
        while let Some(e) = next {
            if let Some(h) = e.downcast_ref::<hyper::Error>() {
                return Some(h);
            }
            next = e.source();
        }
        None
    }
}
