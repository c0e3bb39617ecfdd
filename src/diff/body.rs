//! Bodies: content-encoding decoding (with an output cap against
//! decompression bombs), dispatch by content type, and the text and digest
//! comparisons. JSON goes to [`super::json`].

use std::io::Read;

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_TYPE};
use http::HeaderMap;
use serde::{Deserialize, Serialize};

use super::captured::Captured;
use super::difference::{DiffKind, DiffSink, Difference};
use super::digest::digest;
use super::json::{self, ParseError, TreeMeter};
use super::render::render_bytes;
use super::rules::CompareRules;

/// Most content-codings decoded for one body (`gzip, br` is two).
pub const MAX_CODINGS: usize = 4;

/// Largest zstd window accepted (2^24 = 16 MiB): bigger windows need that
/// much memory per decoder and are refused as undecodable.
const ZSTD_WINDOW_LOG_MAX: u32 = 24;

/// Most notes one outcome carries.
const MAX_NOTES: usize = 4;

/// How a body is compared, chosen from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyKind {
    /// `application/json`, `text/json`, `*/*+json`.
    Json,
    /// `text/*`, `application/xml`, `*/*+xml`, form data, JavaScript,
    /// NDJSON, YAML.
    Text,
    /// Anything else: length and digest.
    Opaque,
}

/// Classifies a `content-type` value (parameters and case ignored).
pub fn body_kind(content_type: &str) -> BodyKind {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let (top, sub) = essence.split_once('/').unwrap_or((essence.as_str(), ""));
    if matches!(essence.as_str(), "application/json" | "text/json") || sub.ends_with("+json") {
        return BodyKind::Json;
    }
    if top == "text"
        || sub.ends_with("+xml")
        || matches!(
            essence.as_str(),
            "application/xml"
                | "application/x-www-form-urlencoded"
                | "application/javascript"
                | "application/ecmascript"
                | "application/x-ndjson"
                | "application/yaml"
                | "application/x-yaml"
        )
    {
        return BodyKind::Text;
    }
    BodyKind::Opaque
}

fn kind_of(headers: &HeaderMap) -> Option<BodyKind> {
    let value = headers.get(CONTENT_TYPE)?;
    Some(body_kind(&String::from_utf8_lossy(value.as_bytes())))
}

/// A decoded body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub bytes: Bytes,
    /// Decoding stopped at the output cap.
    pub truncated: bool,
}

/// A body that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot decode content-encoding {coding:?}: {reason}")]
pub struct DecodeError {
    pub coding: String,
    pub reason: String,
}

/// Decodes a body by its `content-encoding` header(s), last coding first.
/// Output is capped at `limit` bytes at every stage; past it the result is
/// cut and marked truncated. `identity` and an empty body are passed
/// through.
pub fn decode_body(
    headers: &HeaderMap,
    body: &Bytes,
    limit: usize,
) -> Result<Decoded, DecodeError> {
    let mut codings: Vec<String> = Vec::new();
    for value in headers.get_all(CONTENT_ENCODING) {
        for coding in String::from_utf8_lossy(value.as_bytes()).split(',') {
            let coding = coding.trim().to_ascii_lowercase();
            if !coding.is_empty() && coding != "identity" {
                codings.push(coding);
            }
        }
    }
    if codings.is_empty() || body.is_empty() {
        return Ok(Decoded {
            bytes: body.clone(),
            truncated: false,
        });
    }
    if codings.len() > MAX_CODINGS {
        return Err(DecodeError {
            coding: codings.join(", "),
            reason: format!("more than {MAX_CODINGS} codings"),
        });
    }
    let mut current = body.clone();
    for coding in codings.iter().rev() {
        let (out, truncated) =
            decode_one(coding, &current, limit).map_err(|reason| DecodeError {
                coding: coding.clone(),
                reason,
            })?;
        current = Bytes::from(out);
        if truncated {
            return Ok(Decoded {
                bytes: current,
                truncated: true,
            });
        }
    }
    Ok(Decoded {
        bytes: current,
        truncated: false,
    })
}

fn decode_one(coding: &str, data: &[u8], limit: usize) -> Result<(Vec<u8>, bool), String> {
    let result = match coding {
        "gzip" | "x-gzip" => read_capped(flate2::read::MultiGzDecoder::new(data), limit),
        "deflate" => {
            // HTTP says zlib, but raw deflate is common in the wild: a zlib
            // stream starts with CM = 8 and a header checksum.
            let zlib = data.len() >= 2
                && data[0] & 0x0f == 8
                && (u16::from(data[0]) << 8 | u16::from(data[1])) % 31 == 0;
            if zlib {
                read_capped(flate2::read::ZlibDecoder::new(data), limit)
            } else {
                read_capped(flate2::read::DeflateDecoder::new(data), limit)
            }
        }
        "br" => read_capped(brotli::Decompressor::new(data, 4096), limit),
        "zstd" => {
            let mut decoder =
                zstd::stream::read::Decoder::with_buffer(data).map_err(|e| e.to_string())?;
            decoder
                .window_log_max(ZSTD_WINDOW_LOG_MAX)
                .map_err(|e| e.to_string())?;
            read_capped(decoder, limit)
        }
        other => return Err(format!("unsupported coding {other:?}")),
    };
    result.map_err(|e| e.to_string())
}

fn read_capped(reader: impl Read, limit: usize) -> std::io::Result<(Vec<u8>, bool)> {
    let mut out = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    reader.take(cap).read_to_end(&mut out)?;
    let truncated = out.len() > limit;
    out.truncate(limit);
    Ok((out, truncated))
}

/// How the bodies were compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyMode {
    /// Structurally, as JSON.
    Json,
    /// Line by line.
    Text,
    /// By length and digest.
    Digest,
    /// Declared JSON but at least one side did not parse: compared as text.
    InvalidJsonAsText,
    /// Declared JSON but at least one side did not parse, and it is not
    /// UTF-8 text: compared by digest.
    InvalidJsonAsDigest,
    /// Not compared (a body was cut at the capture or decoding cap).
    NotCompared,
}

pub(crate) struct BodyResult {
    pub(crate) mode: BodyMode,
    pub(crate) truncated: bool,
}

pub(crate) fn sides(primary: bool, other: bool) -> &'static str {
    match (primary, other) {
        (true, true) => "both",
        (true, false) => "primary",
        _ => "other",
    }
}

fn note(notes: &mut Vec<String>, text: String) {
    if notes.len() < MAX_NOTES {
        notes.push(text);
    }
}

/// Compares two (complete) bodies into `sink`. What the comparison
/// allocates beyond the bodies themselves (decoded copies, JSON trees) is
/// counted by `meter`; past it, the bodies are compared by digest.
pub(crate) fn compare_bodies(
    primary: &Captured,
    other: &Captured,
    rules: &CompareRules,
    sink: &mut DiffSink,
    notes: &mut Vec<String>,
    meter: &TreeMeter,
) -> BodyResult {
    let kind = kind_of(&primary.headers)
        .or_else(|| kind_of(&other.headers))
        .unwrap_or(BodyKind::Opaque);
    let mode_for = |kind| match kind {
        BodyKind::Json => BodyMode::Json,
        BodyKind::Text => BodyMode::Text,
        BodyKind::Opaque => BodyMode::Digest,
    };
    // Same bytes under the same encoding: equal whatever they contain.
    let same_encoding = primary
        .headers
        .get_all(CONTENT_ENCODING)
        .iter()
        .eq(other.headers.get_all(CONTENT_ENCODING).iter());
    if same_encoding && primary.body == other.body {
        return BodyResult {
            mode: mode_for(kind),
            truncated: false,
        };
    }

    // A decoded copy is new memory: at most what the meter has left.
    let limit = rules.limits().max_decoded_bytes.min(meter.left());
    let a = decode_body(&primary.headers, &primary.body, limit);
    let b = decode_body(&other.headers, &other.body, limit);
    for (decoded, raw) in [(&a, &primary.body), (&b, &other.body)] {
        if let Ok(d) = decoded {
            if d.bytes.as_ptr() != raw.as_ptr() {
                meter.count(d.bytes.len());
            }
        }
    }
    let (a, b) = match (a, b) {
        (Ok(a), Ok(b)) => (a, b),
        (a, b) => {
            for (side, result) in [("primary", &a), ("other", &b)] {
                if let Err(e) = result {
                    note(
                        notes,
                        format!("{side} body: {e}; compared as received, by digest"),
                    );
                }
            }
            digest_diff(&primary.body, &other.body, sink);
            return BodyResult {
                mode: BodyMode::Digest,
                truncated: false,
            };
        }
    };
    if a.truncated || b.truncated {
        note(
            notes,
            format!(
                "{} body decodes to more than {limit} bytes: body not compared",
                sides(a.truncated, b.truncated)
            ),
        );
        return BodyResult {
            mode: BodyMode::NotCompared,
            truncated: true,
        };
    }
    if a.bytes == b.bytes {
        return BodyResult {
            mode: mode_for(kind),
            truncated: false,
        };
    }

    let mode = match kind {
        BodyKind::Json => {
            let (depth, values) = (
                rules.limits().max_json_depth,
                rules.limits().max_json_values,
            );
            match (
                json::parse(&a.bytes, depth, values, meter),
                json::parse(&b.bytes, depth, values, meter),
            ) {
                (Ok(x), Ok(y)) => {
                    json::diff(&x, &y, rules, sink);
                    BodyMode::Json
                }
                (Err(ParseError::Memory), _) | (_, Err(ParseError::Memory)) => {
                    note(
                        notes,
                        "the JSON trees need more memory than the comparison workers' \
                         share of limits.shadow_memory; compared by digest"
                            .to_string(),
                    );
                    digest_diff(&a.bytes, &b.bytes, sink);
                    BodyMode::Digest
                }
                (x, y) => {
                    let text = std::str::from_utf8(&a.bytes).is_ok()
                        && std::str::from_utf8(&b.bytes).is_ok();
                    let how = if text { "as text" } else { "by digest" };
                    for (side, result) in [("primary", x.err()), ("other", y.err())] {
                        if let Some(e) = result {
                            note(
                                notes,
                                format!("{side} body is not valid JSON ({e}); compared {how}"),
                            );
                        }
                    }
                    if text {
                        text_diff(&a.bytes, &b.bytes, rules.limits().max_text_lines, sink);
                        BodyMode::InvalidJsonAsText
                    } else {
                        digest_diff(&a.bytes, &b.bytes, sink);
                        BodyMode::InvalidJsonAsDigest
                    }
                }
            }
        }
        BodyKind::Text => {
            text_diff(&a.bytes, &b.bytes, rules.limits().max_text_lines, sink);
            BodyMode::Text
        }
        BodyKind::Opaque => {
            digest_diff(&a.bytes, &b.bytes, sink);
            BodyMode::Digest
        }
    };
    BodyResult {
        mode,
        truncated: false,
    }
}

fn describe(bytes: &[u8]) -> String {
    format!("{} bytes, fnv1a {:016x}", bytes.len(), digest(bytes))
}

fn digest_diff(a: &[u8], b: &[u8], sink: &mut DiffSink) {
    if a != b {
        sink.push(|| Difference {
            path: "body".into(),
            kind: DiffKind::ValueChanged,
            primary: Some(describe(a)),
            other: Some(describe(b)),
        });
    }
}

/// Lines looked ahead to re-align after an inserted or removed line.
const RESYNC_WINDOW: usize = 32;

/// Line-by-line comparison. The common first and last lines are skipped;
/// in between, the lines are walked in step, and at a mismatch the next
/// few lines on each side are searched to tell an inserted or removed line
/// from a changed one. Reported as `line[N]` (1-based; changed and missing
/// lines numbered as in the primary, extra lines as in the other), at most
/// `max_lines` of them.
fn text_diff(a: &[u8], b: &[u8], max_lines: usize, sink: &mut DiffSink) {
    let la: Vec<&[u8]> = a.split(|&c| c == b'\n').collect();
    let lb: Vec<&[u8]> = b.split(|&c| c == b'\n').collect();
    let prefix = la.iter().zip(&lb).take_while(|(x, y)| x == y).count();
    let room = la.len().min(lb.len()) - prefix;
    let suffix = la
        .iter()
        .rev()
        .zip(lb.iter().rev())
        .take(room)
        .take_while(|(x, y)| x == y)
        .count();
    let ma = &la[prefix..la.len() - suffix];
    let mb = &lb[prefix..lb.len() - suffix];
    let max_value = sink.max_value;
    let (mut i, mut j, mut reported) = (0, 0, 0);
    while i < ma.len() || j < mb.len() {
        if i < ma.len() && j < mb.len() && ma[i] == mb[j] {
            i += 1;
            j += 1;
            continue;
        }
        if sink.full() {
            return;
        }
        if reported >= max_lines {
            sink.mark_cut();
            return;
        }
        reported += 1;
        let kind = if i >= ma.len() {
            DiffKind::Extra
        } else if j >= mb.len() {
            DiffKind::Missing
        } else {
            let inserted = (1..=RESYNC_WINDOW).find(|&d| mb.get(j + d) == Some(&ma[i]));
            let removed = (1..=RESYNC_WINDOW).find(|&d| ma.get(i + d) == Some(&mb[j]));
            match (inserted, removed) {
                (Some(x), Some(y)) if x <= y => DiffKind::Extra,
                (Some(_), None) => DiffKind::Extra,
                (_, Some(_)) => DiffKind::Missing,
                (None, None) => DiffKind::ValueChanged,
            }
        };
        let (line, x, y) = match kind {
            DiffKind::Extra => (prefix + j + 1, None, Some(mb[j])),
            DiffKind::Missing => (prefix + i + 1, Some(ma[i]), None),
            _ => (prefix + i + 1, Some(ma[i]), Some(mb[j])),
        };
        sink.push(|| Difference {
            path: format!("line[{line}]"),
            kind,
            primary: x.map(|l| render_bytes(l, max_value)),
            other: y.map(|l| render_bytes(l, max_value)),
        });
        match kind {
            DiffKind::Extra => j += 1,
            DiffKind::Missing => i += 1,
            _ => {
                i += 1;
                j += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::{compare, CompareLimits, Outcome};
    use http::HeaderValue;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).expect("write");
        e.finish().expect("finish")
    }
    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).expect("write");
        e.finish().expect("finish")
    }
    fn raw_deflate(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).expect("write");
        e.finish().expect("finish")
    }
    fn br(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
            w.write_all(data).expect("write");
        }
        out
    }
    fn zstd_enc(data: &[u8]) -> Vec<u8> {
        zstd::stream::encode_all(data, 3).expect("zstd")
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        map
    }

    fn dec(encoding: &str, body: Vec<u8>, limit: usize) -> Result<Decoded, DecodeError> {
        decode_body(
            &headers(&[("content-encoding", encoding)]),
            &Bytes::from(body),
            limit,
        )
    }

    const TEXT: &[u8] = b"{\"hello\": \"world\", \"n\": [1, 2, 3]}\n";

    #[test]
    fn decodes_every_coding() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("gzip", gzip(TEXT)),
            ("x-gzip", gzip(TEXT)),
            ("GZIP", gzip(TEXT)),
            ("deflate", zlib(TEXT)),
            ("deflate", raw_deflate(TEXT)),
            ("br", br(TEXT)),
            ("zstd", zstd_enc(TEXT)),
            ("identity", TEXT.to_vec()),
            ("gzip, br", br(&gzip(TEXT))),
            ("zstd, identity, gzip", gzip(&zstd_enc(TEXT))),
        ];
        for (coding, body) in cases {
            let got = dec(coding, body, 1 << 20).unwrap_or_else(|e| panic!("{coding}: {e}"));
            assert_eq!(
                got,
                Decoded {
                    bytes: Bytes::from_static(TEXT),
                    truncated: false
                },
                "{coding}"
            );
        }
        // Two header lines form one chain, applied in order.
        let h = headers(&[("content-encoding", "gzip"), ("content-encoding", "br")]);
        let got = decode_body(&h, &Bytes::from(br(&gzip(TEXT))), 1 << 20).expect("chain");
        assert_eq!(got.bytes, Bytes::from_static(TEXT));
    }

    #[test]
    fn decompression_bombs_stop_at_the_cap() {
        let big = vec![b'a'; 1 << 20];
        for (coding, body) in [
            ("gzip", gzip(&big)),
            ("br", br(&big)),
            ("zstd", zstd_enc(&big)),
            ("deflate", zlib(&big)),
        ] {
            assert!(body.len() < 10_000, "{coding} compresses well");
            let got = dec(coding, body, 1000).expect(coding);
            assert!(got.truncated, "{coding}");
            assert_eq!(got.bytes.len(), 1000, "{coding}");
        }
        // Exactly at the cap is not truncated.
        let got = dec("gzip", gzip(&big[..1000]), 1000).expect("gzip");
        assert!(!got.truncated);
    }

    #[test]
    fn undecodable_bodies_are_errors() {
        assert_eq!(
            dec("gzip", b"not gzip".to_vec(), 100).map(|_| ()),
            Err(DecodeError {
                coding: "gzip".into(),
                reason: "unexpected end of file".into()
            })
        );
        assert_eq!(
            dec("compress", b"x".to_vec(), 100).map(|_| ()),
            Err(DecodeError {
                coding: "compress".into(),
                reason: "unsupported coding \"compress\"".into()
            })
        );
        assert!(dec("br", b"\xff\xff\xff\xff".to_vec(), 100).is_err());
        assert!(dec("zstd", b"\x28\xb5\x2f\xfdgarbage".to_vec(), 100).is_err());
        let err = dec("gzip, gzip, gzip, gzip, gzip", b"x".to_vec(), 100).expect_err("chain");
        assert_eq!(err.reason, "more than 4 codings");
        // An empty body with an encoding is just empty.
        assert_eq!(dec("gzip", Vec::new(), 100).expect("empty").bytes.len(), 0);
    }

    #[test]
    fn content_type_dispatch() {
        let cases = [
            ("application/json", BodyKind::Json),
            ("application/json; charset=utf-8", BodyKind::Json),
            ("Application/JSON", BodyKind::Json),
            ("application/problem+json", BodyKind::Json),
            ("application/vnd.api+json;v=2", BodyKind::Json),
            ("text/json", BodyKind::Json),
            ("text/html; charset=utf-8", BodyKind::Text),
            ("text/plain", BodyKind::Text),
            ("application/xml", BodyKind::Text),
            ("application/atom+xml", BodyKind::Text),
            ("application/x-www-form-urlencoded", BodyKind::Text),
            ("application/javascript", BodyKind::Text),
            ("application/octet-stream", BodyKind::Opaque),
            ("image/png", BodyKind::Opaque),
            ("application/jsonx", BodyKind::Opaque),
            ("", BodyKind::Opaque),
            ("garbage", BodyKind::Opaque),
        ];
        for (ct, want) in cases {
            assert_eq!(body_kind(ct), want, "{ct:?}");
        }
    }

    fn cap(ct: &str, encoding: Option<&str>, body: Vec<u8>) -> Captured {
        let mut h = vec![("content-type", ct)];
        if let Some(e) = encoding {
            h.push(("content-encoding", e));
        }
        Captured {
            status: 200,
            headers: headers(&h),
            body: Bytes::from(body),
            truncated: false,
        }
    }

    fn paths(out: &Outcome) -> Vec<(String, DiffKind, Option<String>, Option<String>)> {
        out.differences
            .iter()
            .map(|d| (d.path.clone(), d.kind, d.primary.clone(), d.other.clone()))
            .collect()
    }

    fn s(x: &str) -> Option<String> {
        Some(x.to_string())
    }

    #[test]
    fn compressed_json_is_compared_structurally() {
        let rules = CompareRules::default();
        let a = cap("application/json", Some("gzip"), gzip(br#"{"a":1,"b":2}"#));
        let b = cap("application/json", Some("br"), br(br#"{"b":2,"a":3}"#));
        let out = compare(&a, &b, &rules);
        assert_eq!(out.body, BodyMode::Json);
        assert_eq!(
            paths(&out),
            vec![
                (
                    "header.content-encoding".into(),
                    DiffKind::ValueChanged,
                    s("gzip"),
                    s("br")
                ),
                ("$.a".into(), DiffKind::ValueChanged, s("1"), s("3")),
            ]
        );
    }

    #[test]
    fn text_bodies_line_by_line() {
        let rules = CompareRules::default();
        let a = cap("text/plain", None, b"one\ntwo\nthree\nfour\n".to_vec());
        let b = cap(
            "text/plain",
            None,
            b"one\nTWO\nthree\nfour\nfive\n".to_vec(),
        );
        let out = compare(&a, &b, &rules);
        assert_eq!(out.body, BodyMode::Text);
        assert_eq!(
            paths(&out),
            vec![
                ("line[2]".into(), DiffKind::ValueChanged, s("two"), s("TWO")),
                ("line[5]".into(), DiffKind::Extra, None, s("five")),
            ]
        );
        // An inserted line does not make every following line differ.
        let a = cap("text/html", None, b"a\nb\nc\nd".to_vec());
        let b = cap("text/html", None, b"a\nX\nb\nc\nd".to_vec());
        assert_eq!(
            paths(&compare(&a, &b, &rules)),
            vec![("line[2]".into(), DiffKind::Extra, None, s("X"))]
        );
        let a = cap("text/html", None, b"a\nb\nc".to_vec());
        let b = cap("text/html", None, b"a\nc".to_vec());
        assert_eq!(
            paths(&compare(&a, &b, &rules)),
            vec![("line[2]".into(), DiffKind::Missing, s("b"), None)]
        );
    }

    #[test]
    fn text_lines_are_bounded() {
        let rules = CompareRules::default().with_limits(CompareLimits {
            max_text_lines: 3,
            ..CompareLimits::default()
        });
        let a = cap("text/plain", None, b"1\n2\n3\n4\n5\n6".to_vec());
        let b = cap("text/plain", None, b"a\nb\nc\nd\ne\nf".to_vec());
        let out = compare(&a, &b, &rules);
        let got: Vec<String> = out.differences.iter().map(|d| d.path.clone()).collect();
        assert_eq!(got, vec!["line[1]", "line[2]", "line[3]"]);
        assert!(out.differences_cut);
    }

    #[test]
    fn opaque_bodies_by_digest() {
        let rules = CompareRules::default();
        let a = cap("image/png", None, vec![1, 2, 3]);
        let b = cap("image/png", None, vec![1, 2, 4]);
        let out = compare(&a, &b, &rules);
        assert_eq!(out.body, BodyMode::Digest);
        assert_eq!(
            paths(&out),
            vec![(
                "body".into(),
                DiffKind::ValueChanged,
                s(&format!("3 bytes, fnv1a {:016x}", digest(&[1, 2, 3]))),
                s(&format!("3 bytes, fnv1a {:016x}", digest(&[1, 2, 4]))),
            )]
        );
        // No content type at all is opaque too.
        let mut a = a;
        let mut b = b;
        a.headers.clear();
        b.headers.clear();
        assert_eq!(compare(&a, &b, &rules).body, BodyMode::Digest);
    }

    #[test]
    fn invalid_json_falls_back_to_text_and_says_so() {
        let rules = CompareRules::default();
        let a = cap("application/json", None, b"{\"a\":1}".to_vec());
        let b = cap("application/json", None, b"<html>oops</html>".to_vec());
        let out = compare(&a, &b, &rules);
        assert_eq!(out.body, BodyMode::InvalidJsonAsText);
        assert_eq!(
            paths(&out),
            vec![(
                "line[1]".into(),
                DiffKind::ValueChanged,
                s("{\"a\":1}"),
                s("<html>oops</html>")
            )]
        );
        assert_eq!(
            out.notes,
            vec!["other body is not valid JSON (expected value at line 1 column 1); compared as text"]
        );
        let b = cap("application/json", None, b"\xff\xfe{".to_vec());
        let out = compare(&a, &b, &rules);
        assert_eq!(out.body, BodyMode::InvalidJsonAsDigest);
        assert_eq!(out.differences[0].path, "body");
    }

    #[test]
    fn undecodable_body_is_compared_raw_by_digest() {
        let rules = CompareRules::default();
        let a = cap("application/json", Some("gzip"), gzip(b"{}"));
        let b = cap(
            "application/json",
            Some("gzip"),
            b"broken, not gzip".to_vec(),
        );
        let out = compare(&a, &b, &rules);
        assert_eq!(out.body, BodyMode::Digest);
        assert_eq!(out.differences.len(), 1);
        assert_eq!(out.differences[0].path, "body");
        assert_eq!(
            out.notes,
            vec!["other body: cannot decode content-encoding \"gzip\": invalid gzip header; compared as received, by digest"]
        );
    }

    #[test]
    fn bomb_in_a_response_marks_the_outcome_truncated() {
        let rules = CompareRules::default().with_limits(CompareLimits {
            max_decoded_bytes: 4096,
            ..CompareLimits::default()
        });
        let a = cap("application/json", Some("gzip"), gzip(&vec![b' '; 100_000]));
        let b = cap("application/json", Some("gzip"), gzip(b"{}"));
        let out = compare(&a, &b, &rules);
        assert!(out.truncated);
        assert_eq!(out.body, BodyMode::NotCompared);
        assert!(out.differences.is_empty());
        assert_eq!(
            out.notes,
            vec!["primary body decodes to more than 4096 bytes: body not compared"]
        );
    }

    #[test]
    fn same_bytes_short_circuit() {
        let rules = CompareRules::default();
        let a = cap("application/json", Some("gzip"), b"not even gzip".to_vec());
        let out = compare(&a, &a.clone(), &rules);
        assert!(out.is_equal());
        assert_eq!(out.body, BodyMode::Json);
    }
}
