//! Redaction: which header values and query parameter values are secrets,
//! and how they are hidden in everything the proxy stores or serves
//! (comparison examples and their differences, in the store and on the
//! admin API).
//!
//! This is the one list of secrets in the crate: the access log writes the
//! request path only (never the query, never a header value), and any
//! other place that keeps a URI or header values must go through a
//! [`Redactor`].
//!
//! A redacted difference is still reported: its path (`header.set-cookie`)
//! and kind stay, and its values become [`REDACTED`] (and
//! [`REDACTED_DIFFERENT`] on the other side when both had a value).

use std::borrow::Cow;

use percent_encoding::percent_decode_str;

use super::difference::{DiffKind, Difference};

/// Header names (lowercase) whose values are always redacted.
pub const DEFAULT_REDACTED_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "x-auth-token",
    "x-csrf-token",
    "x-xsrf-token",
];

/// Query parameter names (compared case-insensitively, after percent-decoding)
/// whose values are always redacted.
pub const DEFAULT_REDACTED_QUERY_PARAMS: &[&str] = &[
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "key",
    "api_key",
    "apikey",
    "password",
    "passwd",
    "secret",
    "client_secret",
    "signature",
    "sig",
    "code",
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "x-goog-signature",
    "x-goog-credential",
];

/// What a redacted value is replaced with.
pub const REDACTED: &str = "<redacted>";

/// The other side's value of a redacted difference whose both sides had a
/// value: the values differ, what they are is not shown.
pub const REDACTED_DIFFERENT: &str = "values differ (redacted)";

/// Headers whose values are URLs: their query strings are redacted like the
/// request's.
const URL_HEADERS: &[&str] = &["location", "content-location", "referer"];

/// A header name's bit in `Redactor::header_bits`, from its length and
/// its last letter (case-blind, as names are compared): of 37 common
/// request and answer headers, 6 share a bit with the defaults (the
/// length alone: 20).
fn name_bit(name: &str) -> u64 {
    let last = name.as_bytes().last().map_or(0, u8::to_ascii_lowercase);
    1 << ((name.len() + 5 * usize::from(last)) & 63)
}

/// Decides what is secret and hides it. The defaults
/// ([`DEFAULT_REDACTED_HEADERS`], [`DEFAULT_REDACTED_QUERY_PARAMS`]) are
/// always included; configuration only adds names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redactor {
    /// Lowercase header names.
    headers: Vec<String>,
    /// The `name_bit`s of the secret headers and of `URL_HEADERS`: a
    /// header whose bit is not among them is passed as it is without
    /// comparing names, which is most headers of each record (the name
    /// loops were 1k instructions a recorded GET, callgrind).
    header_bits: u64,
    /// Lowercase query parameter names.
    query_params: Vec<String>,
}

impl Default for Redactor {
    fn default() -> Self {
        Redactor::new(&[], &[])
    }
}

impl Redactor {
    /// The defaults plus `headers` and `query_params` (any case).
    pub fn new(headers: &[String], query_params: &[String]) -> Self {
        let merge = |defaults: &[&str], extra: &[String]| {
            let mut all: Vec<String> = defaults
                .iter()
                .map(|s| s.to_string())
                .chain(extra.iter().map(|s| s.trim().to_ascii_lowercase()))
                .filter(|s| !s.is_empty())
                .collect();
            all.sort_unstable();
            all.dedup();
            all
        };
        let headers = merge(DEFAULT_REDACTED_HEADERS, headers);
        let header_bits = headers
            .iter()
            .map(String::as_str)
            .chain(URL_HEADERS.iter().copied())
            .fold(0, |bits, name| bits | name_bit(name));
        Redactor {
            headers,
            header_bits,
            query_params: merge(DEFAULT_REDACTED_QUERY_PARAMS, query_params),
        }
    }

    /// Whether the values of header `name` are secret.
    pub fn is_secret_header(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|h| h.as_str().eq_ignore_ascii_case(name))
    }

    /// Whether the values of query parameter `name` (as written, possibly
    /// percent-encoded) are secret.
    pub fn is_secret_param(&self, name: &str) -> bool {
        let decoded = percent_decode_str(&name.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned();
        let decoded = decoded.trim();
        self.query_params
            .iter()
            .any(|p| p.as_str().eq_ignore_ascii_case(decoded))
    }

    /// `uri` (a path with a query, or an absolute URL) with the values of
    /// secret query parameters replaced by [`REDACTED`]. Everything else,
    /// including the order of parameters, is kept as written.
    pub fn uri<'a>(&self, uri: &'a str) -> Cow<'a, str> {
        let Some((head, rest)) = uri.split_once('?') else {
            return Cow::Borrowed(uri);
        };
        let (query, fragment) = match rest.split_once('#') {
            Some((q, f)) => (q, Some(f)),
            None => (rest, None),
        };
        let mut changed = false;
        let parts: Vec<Cow<'_, str>> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, value)) if !value.is_empty() && self.is_secret_param(name) => {
                    changed = true;
                    Cow::Owned(format!("{name}={REDACTED}"))
                }
                _ => Cow::Borrowed(pair),
            })
            .collect();
        if !changed {
            return Cow::Borrowed(uri);
        }
        let mut out = String::with_capacity(uri.len());
        out.push_str(head);
        out.push('?');
        out.push_str(&parts.join("&"));
        if let Some(f) = fragment {
            out.push('#');
            out.push_str(f);
        }
        Cow::Owned(out)
    }

    /// False when `header_value` surely keeps the values of header `name`
    /// as they are (most headers), without comparing names.
    pub fn may_change_header(&self, name: &str) -> bool {
        self.header_bits & name_bit(name) != 0
    }

    /// A header value as it may be kept: [`REDACTED`] for a secret header,
    /// the URL with its secret parameters redacted for a URL header,
    /// otherwise as it is.
    pub fn header_value<'a>(&self, name: &str, value: &'a str) -> Cow<'a, str> {
        if !self.may_change_header(name) {
            Cow::Borrowed(value)
        } else if self.is_secret_header(name) {
            Cow::Borrowed(REDACTED)
        } else if URL_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name)) {
            self.uri(value)
        } else {
            Cow::Borrowed(value)
        }
    }

    /// Hides the values of a difference at a secret header (the difference
    /// itself, its path and kind are kept).
    pub fn difference(&self, d: &mut Difference) {
        let Some(name) = d.path.strip_prefix("header.") else {
            return;
        };
        if self.is_secret_header(name) {
            let both = d.primary.is_some() && d.other.is_some();
            if d.primary.is_some() {
                d.primary = Some(REDACTED.to_owned());
            }
            if d.other.is_some() {
                d.other = Some(
                    if both && d.kind == DiffKind::ValueChanged {
                        REDACTED_DIFFERENT
                    } else {
                        REDACTED
                    }
                    .to_owned(),
                );
            }
        } else if URL_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name)) {
            for v in [&mut d.primary, &mut d.other].into_iter().flatten() {
                if let Cow::Owned(r) = self.uri(v) {
                    *v = r;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_of_secret_params_are_redacted() {
        let r = Redactor::new(&[], &["Session".to_string()]);
        assert_eq!(r.uri("/a?x=1&b=2"), "/a?x=1&b=2");
        assert_eq!(
            r.uri("/a?x=1&token=abc&API_KEY=k&session=s&sig=&y#frag"),
            "/a?x=1&token=<redacted>&API_KEY=<redacted>&session=<redacted>&sig=&y#frag"
        );
        // Percent-encoded names are decoded before matching.
        assert_eq!(
            r.uri("/a?acc%65ss_token=zz"),
            "/a?acc%65ss_token=<redacted>"
        );
        assert_eq!(r.uri("/plain"), "/plain");
    }

    #[test]
    fn secret_header_differences_keep_path_and_kind() {
        let r = Redactor::default();
        let mut d = Difference {
            path: "header.set-cookie".into(),
            kind: DiffKind::ValueChanged,
            primary: Some("sid=one".into()),
            other: Some("sid=two".into()),
        };
        r.difference(&mut d);
        assert_eq!(d.path, "header.set-cookie");
        assert_eq!(d.kind, DiffKind::ValueChanged);
        assert_eq!(d.primary.as_deref(), Some(REDACTED));
        assert_eq!(d.other.as_deref(), Some(REDACTED_DIFFERENT));
        let mut d = Difference {
            path: "header.authorization".into(),
            kind: DiffKind::Missing,
            primary: Some("Bearer x".into()),
            other: None,
        };
        r.difference(&mut d);
        assert_eq!(d.primary.as_deref(), Some(REDACTED));
        assert_eq!(d.other, None);
        let mut d = Difference {
            path: "header.location".into(),
            kind: DiffKind::ValueChanged,
            primary: Some("/next?token=a".into()),
            other: Some("/next?token=b".into()),
        };
        r.difference(&mut d);
        assert_eq!(d.primary.as_deref(), Some("/next?token=<redacted>"));
        assert_eq!(d.other.as_deref(), Some("/next?token=<redacted>"));
        let mut d = Difference {
            path: "header.x-other".into(),
            kind: DiffKind::ValueChanged,
            primary: Some("a".into()),
            other: Some("b".into()),
        };
        r.difference(&mut d);
        assert_eq!(d.primary.as_deref(), Some("a"));
    }

    #[test]
    fn header_values_are_hidden_by_name_whatever_its_length() {
        let long = "x-".repeat(40);
        let r = Redactor::new(&[long.clone(), "X-Mine".into()], &[]);
        for secret in ["authorization", "cookie", "x-mine", "X-MINE", long.as_str()] {
            assert_eq!(r.header_value(secret, "v"), REDACTED, "{secret}");
        }
        assert_eq!(
            r.header_value("location", "/a?token=t"),
            "/a?token=<redacted>"
        );
        // Other names, sharing a bit with a secret one or not, long or short.
        let other_long = "y-".repeat(40);
        for plain in [
            "x-yours",
            "tracestate",
            "keep-alive",
            "accept",
            "content-type",
            "x",
            other_long.as_str(),
            &"z".repeat(200),
        ] {
            assert_eq!(r.header_value(plain, "/a?token=t"), "/a?token=t", "{plain}");
        }
        // A name of 63 bytes or more is compared in full.
        let r = Redactor::new(&["k".repeat(100)], &[]);
        assert_eq!(r.header_value(&"k".repeat(100), "v"), REDACTED);
        assert_eq!(r.header_value(&"k".repeat(99), "v"), "v");
    }
}
