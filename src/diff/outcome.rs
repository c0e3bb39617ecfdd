//! The top-level comparison: two captured responses in, an [`Outcome`] out.

use http::HeaderMap;
use serde::{Deserialize, Serialize};

use super::body::{self, sides, BodyMode};
use super::captured::Captured;
use super::difference::{DiffKind, DiffSink, Difference};
use super::render::{prefix_bytes, truncate_chars};
use super::rules::CompareRules;

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
    compare_within(primary, other, rules, usize::MAX)
}

/// [`compare`] with at most `work_bytes` of memory allocated beyond the
/// two bodies (decoded copies, JSON trees); bodies that would need more are
/// compared by digest, with a note saying so.
pub fn compare_within(
    primary: &Captured,
    other: &Captured,
    rules: &CompareRules,
    work_bytes: usize,
) -> Outcome {
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
        let meter = super::json::TreeMeter::new(work_bytes);
        let result = body::compare_bodies(primary, other, rules, &mut sink, &mut notes, &meter);
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

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
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
}
