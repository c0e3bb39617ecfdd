//! One record as one JSON line (`docs/replay.md`, "Recording"): secrets
//! hidden as in stored diffs (`diff::Redactor`), a body as UTF-8 text
//! (`body`) or, when it is not, base64 (`body_b64`).
//!
//! Written by hand into the serving thread's buffer rather than through
//! serde_json, for one measured reason: serde_json escapes strings a byte
//! at a time, and for recorded bodies that was 3% of the proxy's CPU at
//! `percent: 100` with 4 KiB POST bodies (`perf`, `bench/record.py`; 5 µs
//! per record). `escaped` checks 8 bytes at a time as one word and copies
//! runs that need no escape whole. The output is the JSON serde_json would write
//! (the unit tests compare the two); the reader (`read`) parses it with
//! serde.

use std::io::Write as _;

use base64::Engine as _;
use http::HeaderMap;

use super::calls::OutboundCall;
use super::{CapturedBody, Record};
use crate::diff::Redactor;

/// Format version of a line.
pub const VERSION: u32 = 1;

/// Whether `b` must be escaped in a JSON string (RFC 8259 §7: quotation
/// mark, reverse solidus, control characters).
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// Bytes checked together for anything to escape.
const WORD: usize = 8;

/// Whether any of the 8 bytes must be escaped, checked on the word at once
/// (the "has a byte less than n / equal to c" bit tricks; exact as a yes or
/// no for n <= 128). 0.5 µs per 4 KiB here, against 3.3 µs for a byte
/// loop (which LLVM does not vectorise) and serde_json's.
fn word_needs_escape(word: [u8; WORD]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([1; WORD]);
    const HIGH: u64 = ONES << 7;
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let x = u64::from_ne_bytes(word);
    let control = x.wrapping_sub(ONES * 0x20) & !x & HIGH;
    (control | has_zero(x ^ (ONES * u64::from(b'"'))) | has_zero(x ^ (ONES * u64::from(b'\\'))))
        != 0
}

/// `s`'s characters as JSON string contents.
fn escaped(out: &mut Vec<u8>, s: &str) {
    escape_from(out, s.as_bytes(), false);
}

/// Writes `bytes` escaped into `out`. With `ascii_only`, stops at the
/// first byte that is not ASCII and returns its index (all before it
/// written); otherwise such bytes are copied as they are.
#[inline(always)]
fn escape_from(out: &mut Vec<u8>, bytes: &[u8], ascii_only: bool) -> Option<usize> {
    // The word's high bits are looked at only for `ascii_only`.
    let high = if ascii_only {
        u64::from_ne_bytes([0x80; WORD])
    } else {
        0
    };
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        // Skip whole words with nothing to escape; copy runs at once.
        if let Some(Ok(word)) = bytes.get(i..i + WORD).map(<[u8; WORD]>::try_from) {
            if u64::from_ne_bytes(word) & high == 0 && !word_needs_escape(word) {
                i += WORD;
                continue;
            }
        }
        let end = (i + WORD).min(bytes.len());
        while i < end {
            let b = bytes[i];
            if ascii_only && !b.is_ascii() {
                out.extend_from_slice(&bytes[start..i]);
                return Some(i);
            }
            if needs_escape(b) {
                out.extend_from_slice(&bytes[start..i]);
                escape_byte(out, b);
                start = i + 1;
            }
            i += 1;
        }
    }
    out.extend_from_slice(&bytes[start..]);
    None
}

/// `bytes` as JSON string contents when they are UTF-8 (true); when they
/// are not, false and `out` as it was. One pass for the usual ASCII body:
/// the word test for escapes also looks at the high bits, and only from
/// the first byte that is not ASCII on is the rest checked as UTF-8 (a
/// separate `from_utf8` pass over a 4 KiB body was 0.6 µs a record,
/// `perf`, `bench/record.py`).
fn escaped_utf8(out: &mut Vec<u8>, bytes: &[u8]) -> bool {
    let mark = out.len();
    let Some(at) = escape_from(out, bytes, true) else {
        return true;
    };
    // All before `at` is ASCII: the whole is UTF-8 when the rest is.
    match std::str::from_utf8(&bytes[at..]) {
        Ok(rest) => {
            escaped(out, rest);
            true
        }
        Err(_) => {
            out.truncate(mark);
            false
        }
    }
}

/// The escape of one byte, as serde_json writes it.
fn escape_byte(out: &mut Vec<u8>, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let short = match b {
        b'"' => b'"',
        b'\\' => b'\\',
        0x08 => b'b',
        0x0c => b'f',
        b'\n' => b'n',
        b'\r' => b'r',
        b'\t' => b't',
        _ => {
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]);
            return;
        }
    };
    out.extend_from_slice(&[b'\\', short]);
}

/// A JSON object being written: `,` between members.
struct Object<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> Object<'a> {
    fn open(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Object { out, first: true }
    }

    fn key(&mut self, key: &str) -> &mut Vec<u8> {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
        self.out
    }

    fn str(&mut self, key: &str, value: &str) {
        let out = self.key(key);
        string(out, value);
    }

    fn num(&mut self, key: &str, value: impl std::fmt::Display) {
        let out = self.key(key);
        let _ = write!(out, "{value}");
    }

    fn close(self) {
        self.out.push(b'}');
    }
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    escaped(out, s);
    out.push(b'"');
}

/// A duration in milliseconds to the microsecond, written as serde_json
/// writes that `f64` (`2.5`, `3.0`), from integers (formatting the float
/// itself was 0.4 µs a record).
fn millis(out: &mut Vec<u8>, d: std::time::Duration) {
    // In u64 (585,000 years of microseconds): u128 formatting is slow.
    let micros = u64::try_from((d.as_nanos() + 500) / 1000).unwrap_or(u64::MAX);
    let (whole, frac) = (micros / 1000, micros % 1000);
    let _ = if frac == 0 {
        write!(out, "{whole}.0")
    } else if frac % 100 == 0 {
        write!(out, "{whole}.{}", frac / 100)
    } else if frac % 10 == 0 {
        write!(out, "{whole}.{:02}", frac / 10)
    } else {
        write!(out, "{whole}.{frac:03}")
    };
}

/// One side of an exchange.
struct Message<'a> {
    method: Option<&'a str>,
    uri: Option<&'a str>,
    status: Option<u16>,
    headers: &'a HeaderMap,
    body: &'a CapturedBody,
}

impl<'a> Message<'a> {
    fn request(
        method: &'a http::Method,
        uri: &'a str,
        headers: &'a HeaderMap,
        body: &'a CapturedBody,
    ) -> Self {
        Message {
            method: Some(method.as_str()),
            uri: Some(uri),
            status: None,
            headers,
            body,
        }
    }

    fn response(status: u16, headers: &'a HeaderMap, body: &'a CapturedBody) -> Self {
        Message {
            method: None,
            uri: None,
            status: Some(status),
            headers,
            body,
        }
    }

    fn write(&self, out: &mut Vec<u8>, redact: &Redactor) {
        let mut o = Object::open(out);
        if let Some(m) = self.method {
            o.str("method", m);
        }
        if let Some(u) = self.uri {
            o.str("uri", &redact.uri(u));
        }
        if let Some(s) = self.status {
            o.num("status", s);
        }
        headers(o.key("headers"), redact, self.headers);
        // Text (`body`) when it is UTF-8; otherwise the member is taken
        // back and written as base64 (`body_b64`).
        let mark = o.out.len();
        let out = o.key("body");
        out.push(b'"');
        if escaped_utf8(out, &self.body.bytes) {
            out.push(b'"');
        } else {
            o.out.truncate(mark);
            let b64 = base64::engine::general_purpose::STANDARD.encode(&self.body.bytes);
            o.str("body_b64", &b64);
        }
        o.key("body_truncated")
            .extend_from_slice(if self.body.truncated {
                b"true"
            } else {
                b"false"
            });
        o.close();
    }
}

/// A header map as `[name, value]` pairs, secrets redacted.
fn headers(out: &mut Vec<u8>, redact: &Redactor, map: &HeaderMap) {
    out.push(b'[');
    for (i, (k, v)) in map.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Visible ASCII (the usual value) needs no UTF-8 repair.
        let value = match v.to_str() {
            Ok(text) => std::borrow::Cow::Borrowed(text),
            Err(_) => String::from_utf8_lossy(v.as_bytes()),
        };
        let value = redact.header_value(k.as_str(), &value);
        out.extend_from_slice(b"[\"");
        escaped(out, k.as_str());
        out.extend_from_slice(b"\",");
        string(out, &value);
        out.push(b']');
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

/// An exchange's `request`, `response` and `duration_ms` members (of a
/// record, and of each of its outbound calls).
fn exchange(
    o: &mut Object<'_>,
    redact: &Redactor,
    request: Message<'_>,
    response: Message<'_>,
    took: std::time::Duration,
) {
    request.write(o.key("request"), redact);
    response.write(o.key("response"), redact);
    millis(o.key("duration_ms"), took);
}

/// One outbound call, redacted like the record around it.
fn call(out: &mut Vec<u8>, redact: &Redactor, c: &OutboundCall) {
    let mut o = Object::open(out);
    o.str("service", &c.service);
    let uri = text(&c.uri);
    exchange(
        &mut o,
        redact,
        Message::request(&c.method, &uri, &c.request_headers, &c.request_body),
        Message::response(c.status, &c.response_headers, &c.response_body),
        c.duration,
    );
    o.close();
}

/// `record` as one line, newline included, appended to `out`.
pub fn encode_into(record: &Record, out: &mut Vec<u8>) {
    let redact = &record.settings.redact;
    let mut o = Object::open(out);
    o.num("v", VERSION);
    // RFC 3339 text needs no escaping: written in place.
    let _ = write!(
        o.key("time"),
        "\"{}\"",
        humantime::format_rfc3339_millis(record.time)
    );
    o.str("route", &record.route);
    o.str("request_id", record.request_id.to_str().unwrap_or(""));
    if let Some(t) = &record.trace_id {
        o.str("trace_id", t);
    }
    let uri = text(&record.uri);
    exchange(
        &mut o,
        redact,
        Message::request(
            &record.method,
            &uri,
            &record.request_headers,
            &record.request_body,
        ),
        Message::response(
            record.status,
            &record.response_headers,
            &record.response_body,
        ),
        record.duration,
    );
    if !record.calls.list.is_empty() {
        let out = o.key("calls");
        out.push(b'[');
        for (i, c) in record.calls.list.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            call(out, redact, c);
        }
        out.push(b']');
    }
    if record.calls.cut > 0 {
        o.num("calls_cut", record.calls.cut);
    }
    o.close();
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let mut cases: Vec<String> = vec![
            String::new(),
            "plain".into(),
            "quote \" and \\ back".into(),
            "é ü 漢字 🦀 \u{7f} \u{2028}".into(),
            (0u8..0x20).map(char::from).collect(),
        ];
        // Each escape (and the bytes next to the escaped ones) at every
        // position around the 8-byte words.
        for c in [
            '"', '\\', '\n', '\u{1}', '\u{1f}', ' ', '!', '#', '[', ']', '\u{7f}', 'é',
        ] {
            for at in 0..70 {
                let mut s: String = "a".repeat(70);
                s.replace_range(at..at + 1, &c.to_string());
                cases.push(s);
            }
        }
        for s in cases {
            let mut out = Vec::new();
            string(&mut out, &s);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(&s).unwrap(),
                "{s:?}"
            );
            // A body: the same contents, in one pass.
            let mut body = b"x".to_vec();
            assert!(escaped_utf8(&mut body, s.as_bytes()), "{s:?}");
            let quoted = serde_json::to_string(&s).unwrap();
            assert_eq!(body[1..], quoted.as_bytes()[1..quoted.len() - 1], "{s:?}");
        }
    }

    #[test]
    fn a_body_that_is_not_utf8_writes_nothing() {
        // A bad byte, a cut sequence and a lone continuation byte at every
        // position around the words, after ASCII and after good UTF-8.
        for bad in [&[0xffu8][..], &[0xe6, 0xbc], &[0x80]] {
            for lead in ["", "é"] {
                for at in 0..40 {
                    let mut bytes = lead.as_bytes().to_vec();
                    bytes.extend_from_slice("a\"b".repeat(14).as_bytes());
                    bytes.splice(at + lead.len()..at + lead.len(), bad.iter().copied());
                    assert!(std::str::from_utf8(&bytes).is_err());
                    let mut out = b"kept".to_vec();
                    assert!(!escaped_utf8(&mut out, &bytes), "{bytes:?}");
                    assert_eq!(out, b"kept");
                }
            }
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
        let record = Record {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            route: "r".into(),
            request_id: "id-1".parse().unwrap(),
            trace_id: Some("abc".into()),
            method: http::Method::POST,
            uri: "/items?token=t0p&x=1".parse().unwrap(),
            request_headers,
            request_body: CapturedBody {
                bytes: "{\"a\":\"line\\nbreak\"}".into(),
                truncated: false,
            },
            status: 201,
            response_headers: HeaderMap::new(),
            response_body: CapturedBody {
                bytes: vec![0xff, 0x00, 0x10].into(),
                truncated: true,
            },
            duration: Duration::from_micros(2_500),
            calls: Default::default(),
            config: Arc::new(crate::config::record::RecordConfig::for_tests("r.jsonl")),
            settings,
        };
        let mut out = b"earlier\n".to_vec();
        encode_into(&record, &mut out);
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
                    "headers": [["authorization", "<redacted>"], ["x-note", "say \"hi\""]],
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
