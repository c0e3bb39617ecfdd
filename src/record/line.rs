//! One record as one JSON line (`docs/replay.md`, "Recording"): secrets
//! hidden as in stored diffs (`diff::Redactor`), a body as UTF-8 text
//! (`body`) or, when it is not, base64 (`body_b64`).
//!
//! Written by hand into the serving thread's buffer rather than through
//! serde_json, for one measured reason: serde_json escapes strings a byte
//! at a time, and for recorded bodies that was 3% of the proxy's CPU at
//! `percent: 100` with 4 KiB POST bodies (`perf`, `bench/record.py`; 5 µs
//! per record). Strings are escaped by `shadowgate-escape` (crates/escape:
//! 32 bytes at a time with AVX-512, a word of 8 bytes elsewhere). The
//! output is the JSON serde_json would write (the unit tests here and
//! there compare the two); the reader (`read`) parses it with serde.

use base64::Engine as _;
use http::HeaderMap;
use shadowgate_escape::{escape_str as escaped, escape_utf8 as escaped_utf8};

use std::time::{Duration, SystemTime};

use super::calls::{OutboundCall, RecordedCalls};
use super::{CapturedBody, RequestHead};
use crate::diff::Redactor;

/// Format version of a line.
pub const VERSION: u32 = 1;

fn string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    escaped(out, s);
    out.push(b'"');
}

/// An integer, as JSON writes it (`itoa`: `write!` through `fmt` was
/// most of a number's cost).
fn number(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// `n` (below 1000) as three digits.
fn three_digits(n: u64) -> [u8; 3] {
    [n / 100, n / 10 % 10, n % 10].map(|d| b'0' + d.to_le_bytes()[0])
}

/// A duration in milliseconds to the microsecond, written as serde_json
/// writes that `f64` (`2.5`, `3.0`), from integers (formatting the float
/// itself was 0.4 µs a record).
fn millis(out: &mut Vec<u8>, d: Duration) {
    // In u64 (585,000 years of microseconds): u128 formatting is slow.
    let micros = u64::try_from((d.as_nanos() + 500) / 1000).unwrap_or(u64::MAX);
    let (whole, frac) = (micros / 1000, micros % 1000);
    number(out, whole);
    out.push(b'.');
    // The fraction without its trailing zeros (but one digit).
    let keep = if frac % 100 == 0 {
        1
    } else if frac % 10 == 0 {
        2
    } else {
        3
    };
    out.extend_from_slice(&three_digits(frac)[..keep]);
}

thread_local! {
    /// The last second written as RFC 3339 on this thread, and its text
    /// without the `Z` (`2026-11-30T12:59:47`): records come many a
    /// second, and formatting the date was 0.6k instructions a record
    /// (callgrind).
    static SECOND: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
}

/// `time` as RFC 3339 in UTC to the millisecond (`2026-11-30T12:59:47.211Z`),
/// as `humantime::format_rfc3339_millis` writes it.
fn rfc3339_millis(out: &mut Vec<u8>, time: SystemTime) {
    let since = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            let second = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
            let text = humantime::format_rfc3339_seconds(second).to_string();
            *cached = (secs, text.trim_end_matches('Z').to_string());
        }
        out.extend_from_slice(cached.1.as_bytes());
    });
    out.push(b'.');
    out.extend_from_slice(&three_digits(u64::from(since.subsec_millis())));
    out.push(b'Z');
}

/// How a message begins: a request's method and target, or an answer's status.
enum Start<'a> {
    Request { method: &'a str, uri: &'a str },
    Response(u16),
}

/// A message up to its body, `{"method":…,"uri":…,"headers":[…]` or
/// `{"status":…,"headers":[…]`, its object left open for [`message_end`].
fn message_head(out: &mut Vec<u8>, start: Start<'_>, headers: &HeaderMap, redact: &Redactor) {
    match start {
        Start::Request { method, uri } => {
            out.extend_from_slice(b"{\"method\":");
            string(out, method);
            out.extend_from_slice(b",\"uri\":");
            string(out, &redact.uri(uri));
        }
        Start::Response(status) => {
            out.extend_from_slice(b"{\"status\":");
            number(out, status);
        }
    }
    out.extend_from_slice(b",\"headers\":");
    header_list(out, redact, headers);
}

/// A body as a line writes it: its bytes (up to the cap) and whether
/// more were cut off. Borrowed where the copy was made (no handing over
/// to a `Bytes`: freezing a copy allocated its owner, and that was freed
/// again at once).
#[derive(Debug, Clone, Copy, Default)]
pub struct BodyBytes<'a> {
    pub bytes: &'a [u8],
    pub truncated: bool,
    /// `bytes` are already a JSON string's contents (the body was UTF-8
    /// and escaped as it streamed, `tap`): copied as they are.
    pub escaped: bool,
}

impl CapturedBody {
    pub fn as_body(&self) -> BodyBytes<'_> {
        BodyBytes {
            bytes: &self.bytes,
            truncated: self.truncated,
            escaped: false,
        }
    }
}

/// A message's body and its object's end: `,"body":…,"body_truncated":…}`.
/// Text (`body`) when it is UTF-8; otherwise the member is taken back and
/// written as base64 (`body_b64`).
fn message_end(out: &mut Vec<u8>, body: BodyBytes<'_>) {
    let mark = out.len();
    out.extend_from_slice(b",\"body\":\"");
    if body.escaped {
        out.extend_from_slice(body.bytes);
    } else if !escaped_utf8(out, body.bytes) {
        out.truncate(mark);
        out.extend_from_slice(b",\"body_b64\":\"");
        let b64 = base64::engine::general_purpose::STANDARD.encode(body.bytes);
        out.extend_from_slice(b64.as_bytes());
    }
    out.extend_from_slice(if body.truncated {
        b"\",\"body_truncated\":true}"
    } else {
        b"\",\"body_truncated\":false}"
    });
}

/// A header map as `[name, value]` pairs, secrets redacted.
fn header_list(out: &mut Vec<u8>, redact: &Redactor, map: &HeaderMap) {
    out.push(b'[');
    for (i, (k, v)) in map.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // A header name is a lowercase token (`http` refuses any other):
        // nothing in it to escape.
        out.extend_from_slice(b"[\"");
        out.extend_from_slice(k.as_str().as_bytes());
        out.extend_from_slice(b"\",\"");
        // A value the redactor surely keeps (most) is escaped straight
        // from its bytes when they are UTF-8, in one pass.
        let kept = !redact.may_change_header(k.as_str()) && escaped_utf8(out, v.as_bytes());
        if !kept {
            let value = String::from_utf8_lossy(v.as_bytes());
            escaped(out, &redact.header_value(k.as_str(), &value));
        }
        out.extend_from_slice(b"\"]");
    }
    out.push(b']');
}

/// A request target as text: an origin-form one (the usual case) without
/// a copy.
fn text(uri: &http::Uri) -> std::borrow::Cow<'_, str> {
    match uri.path_and_query() {
        Some(pq) if uri.scheme().is_none() && uri.authority().is_none() => pq.as_str().into(),
        _ => uri.to_string().into(),
    }
}

/// One outbound call, redacted like the record around it.
fn call(out: &mut Vec<u8>, redact: &Redactor, c: &OutboundCall) {
    out.extend_from_slice(b"{\"service\":");
    string(out, &c.service);
    out.extend_from_slice(b",\"request\":");
    let uri = text(&c.uri);
    let start = Start::Request {
        method: c.method.as_str(),
        uri: &uri,
    };
    message_head(out, start, &c.request_headers, redact);
    message_end(out, c.request_body.as_body());
    out.extend_from_slice(b",\"response\":");
    message_head(out, Start::Response(c.status), &c.response_headers, redact);
    message_end(out, c.response_body.as_body());
    out.extend_from_slice(b",\"duration_ms\":");
    millis(out, c.duration);
    out.push(b'}');
}

/// A record's line begins with its request, up to the request's body:
/// `{"v":1,"time":…,"route":…,"request_id":…,"request":{"method":…,…,"headers":[…]`.
/// Written when the request is admitted, so that its headers need not be
/// kept (cloning the two header maps and dropping them later was 3.3k
/// instructions a record, callgrind).
pub fn request_part(
    out: &mut Vec<u8>,
    head: &RequestHead<'_>,
    time: SystemTime,
    redact: &Redactor,
) {
    out.extend_from_slice(b"{\"v\":");
    number(out, VERSION);
    // RFC 3339 text needs no escaping: written in place.
    out.extend_from_slice(b",\"time\":\"");
    rfc3339_millis(out, time);
    out.extend_from_slice(b"\",\"route\":");
    string(out, head.route);
    out.extend_from_slice(b",\"request_id\":");
    string(out, head.request_id.to_str().unwrap_or(""));
    if let Some(t) = head.trace_id {
        out.extend_from_slice(b",\"trace_id\":");
        string(out, t);
    }
    out.extend_from_slice(b",\"request\":");
    let uri = text(head.uri);
    let start = Start::Request {
        method: head.method.as_str(),
        uri: &uri,
    };
    message_head(out, start, head.headers, redact);
}

/// The answer's part, up to its body: `,"response":{"status":…,"headers":[…]`.
/// Written when the answer's head is known.
pub fn response_part(out: &mut Vec<u8>, status: u16, headers: &HeaderMap, redact: &Redactor) {
    out.extend_from_slice(b",\"response\":");
    message_head(out, Start::Response(status), headers, redact);
}

/// What a record's line needs once the answer has ended.
pub struct Ending<'a> {
    pub request_body: BodyBytes<'a>,
    pub response_body: BodyBytes<'a>,
    pub duration: Duration,
    pub calls: &'a RecordedCalls,
}

/// A record's whole line, newline included, appended to `out`, from what
/// [`request_part`] and [`response_part`] wrote.
pub fn finish_into(
    out: &mut Vec<u8>,
    request: &[u8],
    response: &[u8],
    end: &Ending<'_>,
    redact: &Redactor,
) {
    out.extend_from_slice(request);
    message_end(out, end.request_body);
    out.extend_from_slice(response);
    message_end(out, end.response_body);
    out.extend_from_slice(b",\"duration_ms\":");
    millis(out, end.duration);
    if !end.calls.list.is_empty() {
        out.extend_from_slice(b",\"calls\":[");
        for (i, c) in end.calls.list.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            call(out, redact, c);
        }
        out.push(b']');
    }
    if end.calls.cut > 0 {
        out.extend_from_slice(b",\"calls_cut\":");
        number(out, end.calls.cut);
    }
    out.extend_from_slice(b"}\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// The escaping itself is tested in crates/escape (both escapers,
    /// against serde_json); here, that a string is quoted around it and a
    /// body is kept or refused as a whole.
    #[test]
    fn strings_are_quoted_and_bodies_escaped_as_serde_json_writes_them() {
        for s in [
            "",
            "plain",
            "quote \" and \\ back\n",
            "é 漢字 🦀 \u{1}\u{7f}",
        ] {
            let mut out = Vec::new();
            string(&mut out, s);
            let quoted = serde_json::to_string(s).unwrap();
            assert_eq!(String::from_utf8(out).unwrap(), quoted, "{s:?}");
            let mut body = b"x".to_vec();
            assert!(escaped_utf8(&mut body, s.as_bytes()), "{s:?}");
            assert_eq!(body[1..], quoted.as_bytes()[1..quoted.len() - 1], "{s:?}");
        }
        let mut body = b"kept".to_vec();
        assert!(!escaped_utf8(&mut body, b"ok \xff"));
        assert_eq!(body, b"kept");
    }

    #[test]
    fn times_are_written_as_humantime_writes_them() {
        let base = 1_700_000_000_000u64;
        // Within one second (the cached date), across seconds, days and
        // years, and back to an earlier second.
        for ms in [
            0,
            1,
            9,
            10,
            99,
            100,
            999,
            1_000,
            1_001,
            86_399_999,
            86_400_000,
            400 * 86_400_000,
            5,
        ] {
            let t = SystemTime::UNIX_EPOCH + Duration::from_millis(base + ms);
            let mut out = b"x".to_vec();
            rfc3339_millis(&mut out, t);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                format!("x{}", humantime::format_rfc3339_millis(t)),
                "{ms}"
            );
        }
    }

    #[test]
    fn durations_are_written_as_serde_json_writes_them() {
        for nanos in [
            0,
            499,
            500,
            1_000,
            10_000,
            100_000,
            1_234_000,
            2_050_400,
            2_500_000,
            3_000_000,
            12_345_678_900,
            86_400_000_000_001,
        ] {
            let d = Duration::from_nanos(nanos);
            let mut out = Vec::new();
            millis(&mut out, d);
            // What the serde version wrote: the f64 rounded to the microsecond.
            let ms = (d.as_secs_f64() * 1e6).round() / 1e3;
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(&ms).unwrap(),
                "{nanos} ns"
            );
        }
    }

    #[test]
    fn a_line_is_one_json_object_with_secrets_hidden() {
        let settings = Arc::new(
            crate::config::from_yaml(
                "t.yaml",
                "backends: { v1: { endpoints: [\"127.0.0.1:1\"] } }\nroutes: [{ name: r, backend: v1 }]\n",
            )
            .unwrap(),
        );
        let mut request_headers = HeaderMap::new();
        request_headers.insert("authorization", "Bearer s3cret".parse().unwrap());
        request_headers.append("x-note", "say \"hi\"".parse().unwrap());
        // Not visible ASCII: UTF-8 kept, other bytes replaced, a tab escaped.
        for value in [&b"caf\xc3\xa9"[..], b"a\xffb", b"tab\there"] {
            request_headers.append("x-raw", http::HeaderValue::from_bytes(value).unwrap());
        }
        let route: Arc<str> = "r".into();
        let request_id = "id-1".parse().unwrap();
        let head = RequestHead {
            route: &route,
            method: &http::Method::POST,
            uri: &"/items?token=t0p&x=1".parse().unwrap(),
            headers: &request_headers,
            request_id: &request_id,
            trace_id: Some("abc"),
        };
        let redact = &settings.redact;
        let time = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let mut request = Vec::new();
        request_part(&mut request, &head, time, redact);
        let mut response = Vec::new();
        response_part(&mut response, 201, &HeaderMap::new(), redact);
        // The request's body as the tap leaves it (escaped as it came),
        // the answer's as raw bytes that are not UTF-8.
        let text = serde_json::to_string("{\"a\":\"line\\nbreak\"}").unwrap();
        let end = Ending {
            request_body: BodyBytes {
                bytes: &text.as_bytes()[1..text.len() - 1],
                truncated: false,
                escaped: true,
            },
            response_body: BodyBytes {
                bytes: &[0xff, 0x00, 0x10],
                truncated: true,
                escaped: false,
            },
            duration: Duration::from_micros(2_500),
            calls: &Default::default(),
        };
        let mut out = b"earlier\n".to_vec();
        finish_into(&mut out, &request, &response, &end, redact);
        let line = out.strip_prefix(b"earlier\n").unwrap();
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
        let v: serde_json::Value = serde_json::from_slice(line).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "v": 1,
                "time": "2023-11-14T22:13:20.123Z",
                "route": "r",
                "request_id": "id-1",
                "trace_id": "abc",
                "request": {
                    "method": "POST",
                    "uri": "/items?token=<redacted>&x=1",
                    "headers": [["authorization", "<redacted>"], ["x-note", "say \"hi\""],
                                ["x-raw", "café"], ["x-raw", "a\u{fffd}b"], ["x-raw", "tab\there"]],
                    "body": "{\"a\":\"line\\nbreak\"}",
                    "body_truncated": false
                },
                "response": {
                    "status": 201,
                    "headers": [],
                    "body_b64": "/wAQ",
                    "body_truncated": true
                },
                "duration_ms": 2.5
            })
        );
    }
}
