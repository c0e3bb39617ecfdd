//! Examples: pairs of responses that differed, kept (bounded, with their
//! secrets redacted) for people to look at.

use std::borrow::Cow;

use http::{HeaderMap, Method};
use serde::{Deserialize, Serialize};

use super::body::decode_body;
use super::captured::Captured;
use super::difference::Difference;
use super::outcome::Outcome;
use super::redact::Redactor;
use super::render::{prefix_bytes, render_bytes, truncate_chars};

/// Bounds of an [`Example`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExampleLimits {
    /// Body bytes kept per response (decoded).
    pub max_body_bytes: usize,
    /// Headers kept per request or response.
    pub max_headers: usize,
    /// Characters kept per header value.
    pub max_header_value: usize,
    /// Differences kept.
    pub max_differences: usize,
}

impl Default for ExampleLimits {
    fn default() -> Self {
        ExampleLimits {
            max_body_bytes: 4096,
            max_headers: 32,
            max_header_value: 256,
            max_differences: 20,
        }
    }
}

/// The request of an example.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExampleRequest {
    pub method: String,
    pub uri: String,
    /// `[name, value]` pairs; credentials redacted.
    pub headers: Vec<(String, String)>,
}

/// One response of an example.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExampleResponse {
    pub status: u16,
    /// `[name, value]` pairs; credentials redacted.
    pub headers: Vec<(String, String)>,
    /// The decoded body as text (lossy UTF-8), cut at `max_body_bytes`.
    pub body: String,
    /// Length of the body as captured (before decoding).
    pub body_bytes: usize,
    /// `body` is not the whole body.
    pub body_truncated: bool,
}

/// One pair of responses that differed, kept for people to look at.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Example {
    pub request: ExampleRequest,
    pub primary: ExampleResponse,
    pub other: ExampleResponse,
    pub differences: Vec<Difference>,
    /// When it was kept, seconds since the Unix epoch (for retention).
    pub at: u64,
}

impl Example {
    /// Builds a bounded example; secrets are redacted with the default
    /// [`Redactor`] (a [`Tally`](super::Tally) applies its configured one on
    /// top).
    pub fn new(
        method: &Method,
        uri: &str,
        request_headers: &HeaderMap,
        primary: &Captured,
        other: &Captured,
        outcome: &Outcome,
        limits: &ExampleLimits,
    ) -> Example {
        let mut example = Example {
            at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            request: ExampleRequest {
                method: method.as_str().chars().take(32).collect(),
                uri: truncate_chars(uri.to_owned(), 2048),
                headers: header_pairs(request_headers, limits),
            },
            primary: response(primary, limits),
            other: response(other, limits),
            differences: outcome
                .differences
                .iter()
                .take(limits.max_differences)
                .cloned()
                .collect(),
        };
        example.redact(&Redactor::default());
        example
    }

    /// Hides every secret the example holds: the request's query, secret
    /// header values on the request and both responses, and the values of
    /// differences at secret headers.
    pub fn redact(&mut self, redactor: &Redactor) {
        if let Cow::Owned(r) = redactor.uri(&self.request.uri) {
            self.request.uri = r;
        }
        for headers in [
            &mut self.request.headers,
            &mut self.primary.headers,
            &mut self.other.headers,
        ] {
            for (name, value) in headers.iter_mut() {
                let kept = redactor.header_value(name, value).into_owned();
                *value = kept;
            }
        }
        for d in &mut self.differences {
            redactor.difference(d);
        }
    }
}

fn header_pairs(headers: &HeaderMap, limits: &ExampleLimits) -> Vec<(String, String)> {
    headers
        .iter()
        .take(limits.max_headers)
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                render_bytes(value.as_bytes(), limits.max_header_value),
            )
        })
        .collect()
}

fn response(c: &Captured, limits: &ExampleLimits) -> ExampleResponse {
    let max = limits.max_body_bytes;
    let (bytes, mut truncated) = match decode_body(&c.headers, &c.body, max) {
        Ok(d) => (d.bytes, d.truncated),
        Err(_) => (c.body.clone(), false),
    };
    let kept = prefix_bytes(&bytes, max);
    truncated |= c.truncated || kept.len() < bytes.len();
    ExampleResponse {
        status: c.status,
        headers: header_pairs(&c.headers, limits),
        body: String::from_utf8_lossy(kept).into_owned(),
        body_bytes: c.body.len(),
        body_truncated: truncated,
    }
}
