//! One record as one JSON line (`docs/replay.md`, "Recording"): secrets
//! hidden as in stored diffs (`diff::Redactor`), a body as UTF-8 text
//! (`body`) or, when it is not, base64 (`body_b64`).

use base64::Engine as _;
use http::HeaderMap;
use serde::Serialize;

use super::calls::OutboundCall;
use super::{CapturedBody, Record};
use crate::diff::Redactor;

/// Format version of a line.
pub const VERSION: u32 = 1;

#[derive(Serialize)]
struct Line<'a> {
    v: u32,
    time: String,
    route: &'a str,
    request_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<&'a str>,
    request: Message<'a>,
    response: Message<'a>,
    duration_ms: f64,
    /// The outbound calls made while answering (with `egress:` on).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    calls: Vec<CallLine<'a>>,
    /// Calls left out of `calls` (over `max_calls` or the memory budget).
    #[serde(skip_serializing_if = "is_zero")]
    calls_cut: u32,
}

#[derive(Serialize)]
struct CallLine<'a> {
    service: &'a str,
    request: Message<'a>,
    response: Message<'a>,
    duration_ms: f64,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn millis(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

#[derive(Serialize)]
struct Message<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    uri: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    headers: Headers<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body_b64: Option<String>,
    body_truncated: bool,
}

/// A header map as `[name, value]` pairs, secrets redacted, written
/// straight from the map (no pair of `String`s per field).
struct Headers<'a>(&'a Redactor, &'a HeaderMap);

impl serde::Serialize for Headers<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.1.len()))?;
        for (k, v) in self.1 {
            let value = String::from_utf8_lossy(v.as_bytes());
            let value = self.0.header_value(k.as_str(), &value);
            seq.serialize_element(&(k.as_str(), value.as_ref()))?;
        }
        seq.end()
    }
}

fn headers<'a>(redact: &'a Redactor, map: &'a HeaderMap) -> Headers<'a> {
    Headers(redact, map)
}

fn body(b: &CapturedBody) -> (Option<&str>, Option<String>) {
    match std::str::from_utf8(&b.bytes) {
        Ok(text) => (Some(text), None),
        Err(_) => (
            None,
            Some(base64::engine::general_purpose::STANDARD.encode(&b.bytes)),
        ),
    }
}

/// One outbound call, redacted like the record around it.
fn call<'a>(redact: &'a Redactor, c: &'a OutboundCall) -> CallLine<'a> {
    let (req_body, req_b64) = body(&c.request_body);
    let (resp_body, resp_b64) = body(&c.response_body);
    CallLine {
        service: &c.service,
        request: Message {
            method: Some(c.method.as_str()),
            uri: Some(redact.uri(&c.uri.to_string()).into_owned()),
            status: None,
            headers: headers(redact, &c.request_headers),
            body: req_body,
            body_b64: req_b64,
            body_truncated: c.request_body.truncated,
        },
        response: Message {
            method: None,
            uri: None,
            status: Some(c.status),
            headers: headers(redact, &c.response_headers),
            body: resp_body,
            body_b64: resp_b64,
            body_truncated: c.response_body.truncated,
        },
        duration_ms: millis(c.duration),
    }
}

/// `record` as one line, newline included.
pub fn encode(record: &Record) -> Vec<u8> {
    let redact = &record.settings.redact;
    let (req_body, req_b64) = body(&record.request_body);
    let (resp_body, resp_b64) = body(&record.response_body);
    let uri = record.uri.to_string();
    let line = Line {
        v: VERSION,
        time: humantime::format_rfc3339_millis(record.time).to_string(),
        route: &record.route,
        request_id: record.request_id.to_str().unwrap_or(""),
        trace_id: record.trace_id.as_deref(),
        request: Message {
            method: Some(record.method.as_str()),
            uri: Some(redact.uri(&uri).into_owned()),
            status: None,
            headers: headers(redact, &record.request_headers),
            body: req_body,
            body_b64: req_b64,
            body_truncated: record.request_body.truncated,
        },
        response: Message {
            method: None,
            uri: None,
            status: Some(record.status),
            headers: headers(redact, &record.response_headers),
            body: resp_body,
            body_b64: resp_b64,
            body_truncated: record.response_body.truncated,
        },
        duration_ms: millis(record.duration),
        calls: record.calls.list.iter().map(|c| call(redact, c)).collect(),
        calls_cut: record.calls.cut,
    };
    let mut out = serde_json::to_vec(&line).unwrap_or_default();
    out.push(b'\n');
    out
}
