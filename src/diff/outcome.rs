//! The top-level comparison: two captured responses in, an [`Outcome`] out.

use std::borrow::Cow;
use std::fmt::Write as _;

use bytes::Bytes;
use http::HeaderMap;
use serde::{Deserialize, Serialize};

use super::body;
use super::rules::CompareRules;

/// One response as the proxy captured it.
#[derive(Debug, Clone, Default)]
pub struct Captured {
    pub status: u16,
    pub headers: HeaderMap,
    /// The body as received (still content-encoded), up to the capture cap.
    pub body: Bytes,
    /// The body was cut at the capture cap: only status and headers can be
    /// compared.
    pub truncated: bool,
}

/// What kind of difference was found at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiffKind {
    /// Same type, different value.
    ValueChanged,
    /// Different JSON types (e.g. string vs number).
    TypeChanged,
    /// Present in the primary, missing in the other.
    Missing,
    /// Only in the other.
    Extra,
}

/// One difference between the primary and the other response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Difference {
    /// `status`, `header.<name>`, `$.json.path`, `line[N]` or `body`.
    pub path: String,
    pub kind: DiffKind,
    /// Short rendering of the primary's value (bounded length).
    pub primary: Option<String>,
    /// Short rendering of the other's value (bounded length).
    pub other: Option<String>,
}

impl Difference {
    /// The key this difference is aggregated under: the path with JSON
    /// array indices replaced by `[*]` (`$.items[3].price` →
    /// `$.items[*].price`), so that statistics and noise are learned per
    /// field rather than per element. Other paths are returned as they are.
    pub fn field_key(&self) -> Cow<'_, str> {
        field_key(&self.path)
    }
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

/// The result of comparing two responses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// The differences found, in a stable order: status, headers (by name),
    /// then the body. At most `max_differences`.
    pub differences: Vec<Difference>,
    /// More differences existed than are listed.
    pub differences_cut: bool,
    /// A body was cut (at capture or while decoding); only status and
    /// headers were compared.
    pub truncated: bool,
    /// How the bodies were compared.
    pub body: BodyMode,
    /// Why a fallback happened (bad JSON, undecodable body, ...). Bounded.
    pub notes: Vec<String>,
}

impl Outcome {
    /// No differences were found (a truncated outcome may still be equal on
    /// status and headers).
    pub fn is_equal(&self) -> bool {
        self.differences.is_empty()
    }
}

/// Compares `other` (a shadow or the secondary) against `primary`.
///
/// Status, then headers (minus the ignored ones), then bodies: decoded,
/// then compared as JSON, text or digest by the primary's `content-type`
/// (the other's when the primary has none). Never panics, never does I/O;
/// the work is bounded by [`CompareRules::limits`].
pub fn compare(primary: &Captured, other: &Captured, rules: &CompareRules) -> Outcome {
    let limits = rules.limits();
    let mut sink = DiffSink::collect(limits.max_differences, limits.max_value_chars);
    if primary.status != other.status {
        sink.push(|| Difference {
            path: "status".into(),
            kind: DiffKind::ValueChanged,
            primary: Some(primary.status.to_string()),
            other: Some(other.status.to_string()),
        });
    }
    compare_headers(&primary.headers, &other.headers, rules, &mut sink);

    let mut notes = Vec::new();
    let (body, truncated) = if primary.truncated || other.truncated {
        notes.push(format!(
            "{} body cut at the capture limit: body not compared",
            sides(primary.truncated, other.truncated)
        ));
        (BodyMode::NotCompared, true)
    } else {
        let result = body::compare_bodies(primary, other, rules, &mut sink, &mut notes);
        (result.mode, result.truncated)
    };
    Outcome {
        differences: sink.diffs,
        differences_cut: sink.cut,
        truncated,
        body,
        notes,
    }
}

pub(crate) fn sides(primary: bool, other: bool) -> &'static str {
    match (primary, other) {
        (true, true) => "both",
        (true, false) => "primary",
        _ => "other",
    }
}

fn compare_headers(a: &HeaderMap, b: &HeaderMap, rules: &CompareRules, sink: &mut DiffSink) {
    let mut names: Vec<&http::HeaderName> = a
        .keys()
        .chain(b.keys())
        .filter(|n| !rules.ignores_header(n.as_str()))
        .collect();
    names.sort_unstable_by(|x, y| x.as_str().cmp(y.as_str()));
    names.dedup();
    for name in names {
        if sink.full() {
            return;
        }
        let va: Vec<&[u8]> = a.get_all(name).iter().map(|v| v.as_bytes()).collect();
        let vb: Vec<&[u8]> = b.get_all(name).iter().map(|v| v.as_bytes()).collect();
        let kind = match (va.is_empty(), vb.is_empty()) {
            (false, true) => DiffKind::Missing,
            (true, false) => DiffKind::Extra,
            _ if va != vb => DiffKind::ValueChanged,
            _ => continue,
        };
        let max = sink.max_value;
        sink.push(|| Difference {
            path: format!("header.{}", name.as_str()),
            kind,
            primary: (!va.is_empty()).then(|| render_header(&va, max)),
            other: (!vb.is_empty()).then(|| render_header(&vb, max)),
        });
    }
}

fn render_header(values: &[&[u8]], max: usize) -> String {
    let mut out = String::new();
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&String::from_utf8_lossy(prefix_bytes(v, max * 4)));
        if out.len() > max * 4 {
            break;
        }
    }
    truncate_chars(out, max)
}

// ---------------------------------------------------------------------------
// Collecting differences

/// Where walkers put differences: either collecting up to a maximum, or
/// probing (stop at the first one, allocate nothing).
pub(crate) struct DiffSink {
    pub(crate) diffs: Vec<Difference>,
    max: usize,
    pub(crate) max_value: usize,
    pub(crate) cut: bool,
    probe: bool,
    found: bool,
}

impl DiffSink {
    pub(crate) fn collect(max: usize, max_value: usize) -> Self {
        DiffSink {
            diffs: Vec::new(),
            max,
            max_value,
            cut: false,
            probe: false,
            found: false,
        }
    }

    pub(crate) fn probe() -> Self {
        DiffSink {
            diffs: Vec::new(),
            max: 0,
            max_value: 0,
            cut: false,
            probe: true,
            found: false,
        }
    }

    /// Nothing more will be recorded: walkers should stop.
    pub(crate) fn full(&self) -> bool {
        if self.probe {
            self.found
        } else {
            self.cut
        }
    }

    /// Probe mode: a difference was seen.
    pub(crate) fn found(&self) -> bool {
        self.found
    }

    pub(crate) fn push(&mut self, make: impl FnOnce() -> Difference) {
        if self.probe {
            self.found = true;
        } else if self.diffs.len() >= self.max {
            self.cut = true;
        } else {
            self.diffs.push(make());
        }
    }

    /// Marks that differences were left out by a local bound.
    pub(crate) fn mark_cut(&mut self) {
        if self.probe {
            self.found = true;
        } else {
            self.cut = true;
        }
    }
}

// ---------------------------------------------------------------------------
// Bounded renderings and paths

/// The first `max` bytes of `b` (not cut inside a UTF-8 sequence when it
/// can be helped: up to 3 bytes are dropped to reach a boundary).
pub(crate) fn prefix_bytes(b: &[u8], max: usize) -> &[u8] {
    if b.len() <= max {
        return b;
    }
    let mut end = max;
    while end > 0 && end + 3 >= max && (b[end] & 0xC0) == 0x80 {
        end -= 1;
    }
    &b[..end]
}

/// `s` cut to `max` characters, with `…` when cut.
pub(crate) fn truncate_chars(s: String, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s,
        Some((idx, _)) => {
            let mut s = s;
            s.truncate(idx);
            s.push('…');
            s
        }
    }
}

/// Renders raw bytes (a text line, an opaque value) as a bounded string.
pub(crate) fn render_bytes(b: &[u8], max: usize) -> String {
    let lossy = String::from_utf8_lossy(prefix_bytes(b, max * 4 + 4));
    truncate_chars(lossy.into_owned(), max)
}

/// Whether a key can be written `.key` rather than `["key"]`.
pub(crate) fn is_plain_key(k: &str) -> bool {
    let b = k.as_bytes();
    !b.is_empty()
        && !b[0].is_ascii_digit()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-')
}

/// Appends a member step to a path.
pub(crate) fn push_key(path: &mut String, key: &str) {
    if is_plain_key(key) {
        path.push('.');
        path.push_str(key);
    } else {
        path.push('[');
        push_json_string(path, key);
        path.push(']');
    }
}

/// Appends an index step to a path.
pub(crate) fn push_index(path: &mut String, index: usize) {
    // Writing to a String cannot fail.
    let _ = write!(path, "[{index}]");
}

/// Appends `s` as a JSON string literal.
pub(crate) fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        push_escaped_char(out, c);
    }
    out.push('"');
}

pub(crate) fn push_escaped_char(out: &mut String, c: char) {
    match c {
        '"' => out.push_str("\\\""),
        '\\' => out.push_str("\\\\"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if (c as u32) < 0x20 || c == '\u{7f}' => {
            let _ = write!(out, "\\u{:04x}", c as u32);
        }
        c => out.push(c),
    }
}

/// `path` itself when short enough; otherwise its first bytes plus a digest
/// of the whole, so distinct long paths stay distinct.
pub(crate) fn bounded_path(path: &str, max: usize) -> String {
    if path.len() <= max {
        return path.to_owned();
    }
    let mut end = max.saturating_sub(20);
    while end > 0 && !path.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…~{:016x}", &path[..end], body::digest(path.as_bytes()))
}

/// See [`Difference::field_key`].
pub(crate) fn field_key(path: &str) -> Cow<'_, str> {
    if !path.starts_with('$') || !path.contains('[') {
        return Cow::Borrowed(path);
    }
    let b = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    let mut changed = false;
    while i < b.len() {
        if b[i] == b'[' {
            // A quoted key: copy it through, escapes included. The end is
            // always just past an ASCII byte (or the end), so a character
            // boundary.
            if b.get(i + 1) == Some(&b'"') {
                let start = i;
                let mut q = i + 2;
                while q < b.len() && b[q] != b'"' {
                    q += if b[q] == b'\\' { 2 } else { 1 };
                }
                let mut end = (q + 1).min(b.len());
                if b.get(end) == Some(&b']') {
                    end += 1;
                }
                out.push_str(path.get(start..end).unwrap_or(""));
                i = end;
                continue;
            }
            let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
            if digits > 0 && b.get(i + 1 + digits) == Some(&b']') {
                out.push_str("[*]");
                i += digits + 2;
                changed = true;
                continue;
            }
        }
        // Copy one character (`i` is always on a boundary here).
        match path.get(i..).and_then(|rest| rest.chars().next()) {
            Some(c) => {
                out.push(c);
                i += c.len_utf8();
            }
            None => i += 1,
        }
    }
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn captured(status: u16, headers: &[(&str, &str)], body: &str) -> Captured {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        Captured {
            status,
            headers: map,
            body: Bytes::copy_from_slice(body.as_bytes()),
            truncated: false,
        }
    }

    fn d(path: &str, kind: DiffKind, p: Option<&str>, o: Option<&str>) -> Difference {
        Difference {
            path: path.into(),
            kind,
            primary: p.map(Into::into),
            other: o.map(Into::into),
        }
    }

    #[test]
    fn status_headers_and_json_body() {
        let rules = CompareRules::default();
        let a = captured(
            200,
            &[
                ("content-type", "application/json"),
                ("date", "Mon, 01 Jan 2024 00:00:00 GMT"),
                ("x-a", "1"),
                ("vary", "accept"),
                ("vary", "origin"),
            ],
            r#"{"price": 10, "name": "x"}"#,
        );
        let b = captured(
            201,
            &[
                ("content-type", "application/json"),
                ("date", "Tue, 02 Jan 2024 00:00:00 GMT"),
                ("x-b", "2"),
                ("vary", "accept"),
            ],
            r#"{"price": 11, "name": "x"}"#,
        );
        let out = compare(&a, &b, &rules);
        assert_eq!(
            out.differences,
            vec![
                d("status", DiffKind::ValueChanged, Some("200"), Some("201")),
                d(
                    "header.vary",
                    DiffKind::ValueChanged,
                    Some("accept, origin"),
                    Some("accept")
                ),
                d("header.x-a", DiffKind::Missing, Some("1"), None),
                d("header.x-b", DiffKind::Extra, None, Some("2")),
                d("$.price", DiffKind::ValueChanged, Some("10"), Some("11")),
            ]
        );
        assert_eq!(out.body, BodyMode::Json);
        assert!(!out.truncated && !out.differences_cut);
        assert!(out.notes.is_empty());
    }

    #[test]
    fn truncated_capture_compares_status_and_headers_only() {
        let rules = CompareRules::default();
        let a = captured(200, &[("content-type", "application/json")], "{\"a\":1");
        let mut b = captured(200, &[("content-type", "text/plain")], "{\"a\":2");
        b.truncated = true;
        let out = compare(&a, &b, &rules);
        assert_eq!(
            out.differences,
            vec![d(
                "header.content-type",
                DiffKind::ValueChanged,
                Some("application/json"),
                Some("text/plain")
            )]
        );
        assert!(out.truncated);
        assert_eq!(out.body, BodyMode::NotCompared);
        assert_eq!(
            out.notes,
            vec!["other body cut at the capture limit: body not compared"]
        );
    }

    #[test]
    fn equal_responses() {
        let rules = CompareRules::default();
        let a = captured(204, &[("server", "a"), ("x-request-id", "1")], "");
        let b = captured(204, &[("server", "b"), ("x-request-id", "2")], "");
        let out = compare(&a, &b, &rules);
        assert!(out.is_equal(), "{out:?}");
    }

    #[test]
    fn differences_are_capped() {
        let rules = CompareRules::default().with_limits(crate::diff::CompareLimits {
            max_differences: 3,
            ..Default::default()
        });
        let a = captured(200, &[("content-type", "application/json")], "[1,2,3,4,5]");
        let b = captured(200, &[("content-type", "application/json")], "[0,0,0,0,0]");
        let out = compare(&a, &b, &rules);
        assert_eq!(out.differences.len(), 3);
        assert!(out.differences_cut);
        assert_eq!(out.differences[2].path, "$[2]");
    }

    #[test]
    fn field_keys() {
        let cases = [
            ("$.items[3].price", "$.items[*].price"),
            ("$[0][12]", "$[*][*]"),
            ("$.a[\"[1]\"][2]", "$.a[\"[1]\"][*]"),
            ("$.a[\"x\\\"[1]\"]", "$.a[\"x\\\"[1]\"]"),
            ("line[12]", "line[12]"),
            ("header.x-a", "header.x-a"),
            ("$.é[1]", "$.é[*]"),
            ("$[\"a\"é[2]", "$[\"a\"é[*]"),
            ("$[\"unterminated[3]", "$[\"unterminated[3]"),
            ("$[\"a\\é\"][4]", "$[\"a\\é\"][*]"),
        ];
        for (path, want) in cases {
            assert_eq!(field_key(path), want, "{path}");
        }
    }

    #[test]
    fn paths_and_renderings_are_bounded() {
        let long = format!("$.{}", "a".repeat(600));
        let p = bounded_path(&long, 512);
        assert!(p.len() < 520, "{}", p.len());
        assert_ne!(bounded_path(&format!("{long}b"), 512), p);
        assert_eq!(truncate_chars("héllo".into(), 2), "hé…");
        assert_eq!(render_bytes(b"abc\xffdef", 100), "abc\u{fffd}def");
        let mut s = String::new();
        push_key(&mut s, "odd key");
        push_key(&mut s, "ok_key-1");
        push_key(&mut s, "1st");
        push_key(&mut s, "\u{1b}[31m");
        assert_eq!(s, "[\"odd key\"].ok_key-1[\"1st\"][\"\\u001b[31m\"]");
    }
}
