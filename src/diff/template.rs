//! Endpoint templating: requests are grouped by method and path template
//! (`GET /items/{id}`), so that statistics are per endpoint rather than per
//! URL.
//!
//! Explicit templates (`/users/{id}/orders`; `{name}` matches one
//! non-empty segment) are tried first, in the order given. Otherwise a
//! template is learned: the query string is dropped and every id-like
//! segment becomes `{id}`: all digits, a UUID, 16 or more hex digits, a
//! token of 20 or more URL-safe characters with a run of 16 or more
//! mixing letters and digits (base64, ULIDs...), or any segment longer
//! than 64 bytes. The number of
//! distinct endpoints is capped; past the cap, new ones are reported as
//! `"{METHOD} other"`.

use std::collections::HashMap;
use std::sync::Arc;

use http::Method;

/// Default cap on distinct endpoints per templater.
pub const DEFAULT_MAX_ENDPOINTS: usize = 100;

/// Segments longer than this are taken for ids whatever they contain.
const MAX_LITERAL_SEGMENT: usize = 64;

/// A bad explicit template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad endpoint template {template:?}: {reason}")]
pub struct TemplateError {
    pub template: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(Box<str>),
    Param,
}

#[derive(Debug, Clone)]
struct Template {
    text: Box<str>,
    parts: Vec<Part>,
}

impl Template {
    fn parse(text: &str) -> Result<Self, TemplateError> {
        let bad = |reason: &str| TemplateError {
            template: text.to_owned(),
            reason: reason.to_owned(),
        };
        let rest = text
            .strip_prefix('/')
            .ok_or_else(|| bad("must start with `/`"))?;
        if text.contains(['?', '#']) {
            return Err(bad("must not contain a query or fragment"));
        }
        let mut parts = Vec::new();
        for seg in rest.split('/') {
            if let Some(inner) = seg.strip_prefix('{') {
                let name = inner
                    .strip_suffix('}')
                    .ok_or_else(|| bad("a `{` must close with `}` at the end of its segment"))?;
                if name.is_empty() {
                    return Err(bad("empty parameter name `{}`"));
                }
                if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                    return Err(bad("parameter names are letters, digits and `_`"));
                }
                parts.push(Part::Param);
            } else if seg.contains(['{', '}']) {
                return Err(bad("a parameter must be a whole segment"));
            } else {
                parts.push(Part::Literal(seg.into()));
            }
        }
        Ok(Template {
            text: text.into(),
            parts,
        })
    }

    fn matches(&self, path: &str) -> bool {
        let mut segs = path.strip_prefix('/').unwrap_or(path).split('/');
        for part in &self.parts {
            match (part, segs.next()) {
                (_, None) => return false,
                (Part::Literal(l), Some(s)) if **l == *s => {}
                (Part::Param, Some(s)) if !s.is_empty() => {}
                _ => return false,
            }
        }
        segs.next().is_none()
    }
}

/// Maps requests to endpoint names; cheap per call (one small string built
/// and looked up; an allocation only for a new endpoint).
#[derive(Debug, Clone)]
pub struct EndpointTemplater {
    explicit: Vec<Template>,
    max_endpoints: usize,
    known: HashMap<Box<str>, Arc<str>>,
    other: HashMap<&'static str, Arc<str>>,
}

impl EndpointTemplater {
    /// `explicit`: path templates tried before learning; `max_endpoints`:
    /// distinct endpoints kept before falling back to `"{METHOD} other"`.
    pub fn new(explicit: &[String], max_endpoints: usize) -> Result<Self, TemplateError> {
        let explicit = explicit
            .iter()
            .map(|t| Template::parse(t))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(EndpointTemplater {
            explicit,
            max_endpoints,
            known: HashMap::new(),
            other: HashMap::new(),
        })
    }

    /// How many distinct endpoints have been named (not counting the
    /// `other` buckets).
    pub fn len(&self) -> usize {
        self.known.len()
    }

    /// Whether no endpoint has been named yet.
    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    /// The endpoint of a request: `"GET /items/{id}"`. `path` may carry a
    /// query string (dropped). Methods outside the standard nine are
    /// grouped as `OTHER`, so a client cannot mint endpoints through them.
    pub fn endpoint(&mut self, method: &Method, path: &str) -> Arc<str> {
        let method = method_name(method);
        let path = path.split(['?', '#']).next().unwrap_or("");
        let mut key = String::with_capacity(method.len() + 1 + path.len());
        key.push_str(method);
        key.push(' ');
        match self.explicit.iter().find(|t| t.matches(path)) {
            Some(t) => key.push_str(&t.text),
            None => learn(path, &mut key),
        }
        if let Some(name) = self.known.get(key.as_str()) {
            return Arc::clone(name);
        }
        if self.known.len() >= self.max_endpoints {
            let name = self
                .other
                .entry(method)
                .or_insert_with(|| Arc::from(format!("{method} other")));
            return Arc::clone(name);
        }
        let name: Arc<str> = Arc::from(key.as_str());
        self.known.insert(key.into_boxed_str(), Arc::clone(&name));
        name
    }
}

fn method_name(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

/// Appends the learned template of `path` to `out`.
fn learn(path: &str, out: &mut String) {
    if path.is_empty() {
        out.push('/');
        return;
    }
    for (i, seg) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        if is_id_like(seg) {
            out.push_str("{id}");
        } else {
            out.push_str(seg);
        }
    }
}

/// Whether a path segment looks like an identifier rather than a name.
pub(crate) fn is_id_like(seg: &str) -> bool {
    let b = seg.as_bytes();
    if b.is_empty() {
        return false;
    }
    if b.len() > MAX_LITERAL_SEGMENT {
        return true;
    }
    if b.iter().all(u8::is_ascii_digit) {
        return true;
    }
    if is_uuid(b) {
        return true;
    }
    if b.len() >= 16 && b.iter().all(u8::is_ascii_hexdigit) {
        return true;
    }
    // A token (base64, ULID, ...): long, URL-safe, with a run of at least
    // 16 characters between separators mixing letters and digits. Slugs
    // like `release-notes-2024-q1` have only short runs.
    b.len() >= 20
        && b.iter().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'=' | b'+' | b'.' | b'~')
        })
        && b.split(|c| matches!(c, b'-' | b'_' | b'.' | b'~'))
            .any(|run| {
                run.len() >= 16
                    && run.iter().any(u8::is_ascii_digit)
                    && run.iter().any(u8::is_ascii_alphabetic)
            })
}

fn is_uuid(b: &[u8]) -> bool {
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learned_templates() {
        let mut t = EndpointTemplater::new(&[], 100).expect("valid");
        let cases = [
            (Method::GET, "/items/123", "GET /items/{id}"),
            (Method::GET, "/items/123?x=1&y=2", "GET /items/{id}"),
            (
                Method::GET,
                "/items/9/reviews/77",
                "GET /items/{id}/reviews/{id}",
            ),
            (
                Method::DELETE,
                "/users/3F2504E0-4F89-11D3-9A0C-0305E82C3301",
                "DELETE /users/{id}",
            ),
            (Method::GET, "/blobs/deadbeefcafebabe", "GET /blobs/{id}"),
            (
                Method::GET,
                "/blobs/deadbeefcafebab",
                "GET /blobs/deadbeefcafebab",
            ),
            (Method::GET, "/t/01HZX3K9V7Q8W2M4N6P0R5S1TB", "GET /t/{id}"),
            (Method::GET, "/t/dGhpcyBpcyBhIHRva2VuMTIz", "GET /t/{id}"),
            (
                Method::GET,
                "/t/this-is-a-long-slug-name",
                "GET /t/this-is-a-long-slug-name",
            ),
            (Method::GET, "/v1/health", "GET /v1/health"),
            (Method::POST, "/", "POST /"),
            (Method::GET, "", "GET /"),
            (Method::GET, "/a//b/", "GET /a//b/"),
            (Method::PATCH, "/x#frag", "PATCH /x"),
            (
                Method::from_bytes(b"PURGE").expect("method"),
                "/x/1",
                "OTHER /x/{id}",
            ),
        ];
        for (method, path, want) in cases {
            assert_eq!(&*t.endpoint(&method, path), want, "{method} {path}");
        }
        let long = format!("/files/{}", "a".repeat(65));
        assert_eq!(&*t.endpoint(&Method::GET, &long), "GET /files/{id}");
    }

    #[test]
    fn explicit_templates_take_precedence() {
        let mut t = EndpointTemplater::new(
            &[
                "/users/{id}/orders".into(),
                "/docs/{slug}".into(),
                "/users/me".into(),
            ],
            100,
        )
        .expect("valid");
        assert_eq!(
            &*t.endpoint(&Method::GET, "/users/alice/orders"),
            "GET /users/{id}/orders"
        );
        assert_eq!(
            &*t.endpoint(&Method::GET, "/users/42/orders?page=2"),
            "GET /users/{id}/orders"
        );
        assert_eq!(
            &*t.endpoint(&Method::GET, "/docs/getting-started"),
            "GET /docs/{slug}"
        );
        assert_eq!(&*t.endpoint(&Method::GET, "/users/me"), "GET /users/me");
        // Not matching (segment count, empty parameter): learned instead.
        assert_eq!(
            &*t.endpoint(&Method::GET, "/users/42/orders/7"),
            "GET /users/{id}/orders/{id}"
        );
        assert_eq!(&*t.endpoint(&Method::GET, "/docs/"), "GET /docs/");
        assert_eq!(&*t.endpoint(&Method::GET, "/users/bob"), "GET /users/bob");
    }

    #[test]
    fn bad_templates() {
        let cases = [
            ("users/{id}", "must start with `/`"),
            (
                "/users/{id",
                "a `{` must close with `}` at the end of its segment",
            ),
            ("/users/{}", "empty parameter name `{}`"),
            ("/users/x{id}", "a parameter must be a whole segment"),
            (
                "/users/{a-b}",
                "parameter names are letters, digits and `_`",
            ),
            ("/users?x=1", "must not contain a query or fragment"),
        ];
        for (text, reason) in cases {
            let err = EndpointTemplater::new(&[text.to_string()], 10).expect_err(text);
            assert_eq!(
                err,
                TemplateError {
                    template: text.into(),
                    reason: reason.into()
                }
            );
        }
        assert_eq!(
            EndpointTemplater::new(&["/a/{b".into()], 10)
                .expect_err("bad")
                .to_string(),
            "bad endpoint template \"/a/{b\": a `{` must close with `}` at the end of its segment"
        );
    }

    #[test]
    fn endpoints_are_capped() {
        let mut t = EndpointTemplater::new(&[], 3).expect("valid");
        assert_eq!(&*t.endpoint(&Method::GET, "/a"), "GET /a");
        assert_eq!(&*t.endpoint(&Method::GET, "/b"), "GET /b");
        assert_eq!(&*t.endpoint(&Method::POST, "/a"), "POST /a");
        assert_eq!(&*t.endpoint(&Method::GET, "/c"), "GET other");
        assert_eq!(&*t.endpoint(&Method::PUT, "/c"), "PUT other");
        // Known ones still resolve.
        assert_eq!(&*t.endpoint(&Method::GET, "/b?q"), "GET /b");
        assert_eq!(t.len(), 3);
        for i in 0..1000 {
            let _ = t.endpoint(&Method::GET, &format!("/slug-{i}"));
        }
        assert_eq!(t.len(), 3);
        // The same Arc comes back for a known endpoint.
        let x = t.endpoint(&Method::GET, "/a");
        let y = t.endpoint(&Method::GET, "/a");
        assert!(Arc::ptr_eq(&x, &y));
    }

    #[test]
    fn id_like_segments() {
        for seg in [
            "0",
            "123456",
            "550e8400-e29b-41d4-a716-446655440000",
            "0123456789abcdef",
            "AbCdEfGh12345678ijKL",
            "tok_live-AbCdEfGh12345678ijKL",
        ] {
            assert!(is_id_like(seg), "{seg}");
        }
        for seg in [
            "",
            "items",
            "v2",
            "abc-def",
            "0123456789abcde",
            "550e8400-e29b-41d4-a716",
            "abcdefghijklmnopqrstu",
            "release-notes-2024-q1",
        ] {
            assert!(!is_id_like(seg), "{seg}");
        }
    }
}
