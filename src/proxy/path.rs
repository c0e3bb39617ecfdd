//! Path normalisation before routing, as Envoy's `normalize_path` and
//! `merge_slashes` do: what is routed is what is served.
//!
//! In order:
//! 1. percent-encoded unreserved characters (RFC 3986 §2.3: `A-Z a-z 0-9
//!    - . _ ~`) are decoded (`/%61dmin` → `/admin`); every other escape is
//!    kept, with its hex digits upper-cased (`%2f` → `%2F`, never a `/`);
//! 2. runs of slashes are merged (`//admin` → `/admin`);
//! 3. dot segments are removed (RFC 3986 §5.2.4): `/./a` → `/a`,
//!    `/a/../b` → `/b`; a `..` above the root stays at the root
//!    (`/../x` → `/x`), as Envoy does.
//!
//! The query is not touched. A request target that is not a path (`*`,
//! an authority) is left alone.

use std::borrow::Cow;

/// The normalised form of `path` (no query), borrowed when unchanged.
pub fn normalize(path: &str) -> Cow<'_, str> {
    if !path.starts_with('/') || !needs_work(path.as_bytes()) {
        return Cow::Borrowed(path);
    }
    let decoded = decode_unreserved(path);
    let merged = merge_slashes(&decoded);
    let out = remove_dot_segments(&merged);
    if out == path {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(out)
    }
}

/// The normalised form of a request's path and query: the path part
/// normalised, `?query` kept as sent. `None` when nothing changes.
pub fn normalize_path_and_query(pq: &str) -> Option<String> {
    let (path, query) = match pq.find('?') {
        Some(i) => pq.split_at(i),
        None => (pq, ""),
    };
    match normalize(path) {
        Cow::Borrowed(_) => None,
        Cow::Owned(mut p) => {
            p.push_str(query);
            Some(p)
        }
    }
}

/// Normalises the path of `uri` in place (scheme, authority and query kept).
pub fn normalize_uri(uri: &mut http::Uri) {
    let Some(pq) = uri.path_and_query() else {
        return;
    };
    let Some(normal) = normalize_path_and_query(pq.as_str()) else {
        return;
    };
    let Ok(pq) = http::uri::PathAndQuery::try_from(normal) else {
        return;
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(pq);
    if let Ok(u) = http::Uri::from_parts(parts) {
        *uri = u;
    }
}

/// Whether any step could change `path`: a `%`, `//`, or a `.` segment.
fn needs_work(path: &[u8]) -> bool {
    path.windows(2).any(|w| w == b"//" || w == b"/.") || path.contains(&b'%')
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn decode_unreserved(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                let v = h * 16 + l;
                if is_unreserved(v) {
                    out.push(char::from(v));
                } else {
                    out.push('%');
                    out.push(char::from(bytes[i + 1].to_ascii_uppercase()));
                    out.push(char::from(bytes[i + 2].to_ascii_uppercase()));
                }
                i += 3;
                continue;
            }
        }
        // Paths hyper accepted are ASCII; anything else is copied as is.
        let ch = path[i..].chars().next().unwrap_or('\u{fffd}');
        out.push(ch);
        i += ch.len_utf8().max(1);
    }
    out
}

fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut last_slash = false;
    for c in path.chars() {
        if c == '/' {
            if last_slash {
                continue;
            }
            last_slash = true;
        } else {
            last_slash = false;
        }
        out.push(c);
    }
    out
}

/// RFC 3986 §5.2.4 for an absolute path (starts with `/`).
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    // The part after the leading `/`, split into segments; a trailing
    // `.` or `..` leaves a trailing slash, as the RFC's algorithm does.
    let rest = &path[1..];
    let parts: Vec<&str> = rest.split('/').collect();
    let last = parts.len() - 1;
    let mut trailing_slash = false;
    for (i, seg) in parts.iter().enumerate() {
        match *seg {
            "." => trailing_slash = i == last,
            ".." => {
                segments.pop();
                trailing_slash = i == last;
            }
            s => {
                segments.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_table() {
        let cases = [
            ("/", "/"),
            ("/admin/x", "/admin/x"),
            ("/api/../admin/x", "/admin/x"),
            ("/%61dmin/x", "/admin/x"),
            ("//admin/x", "/admin/x"),
            ("/./admin/x", "/admin/x"),
            ("/../x", "/x"),
            ("/../../x/..", "/"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/a/./b/../c/", "/a/c/"),
            ("/%2e%2e/admin", "/admin"),
            ("/a%2Fb", "/a%2Fb"),
            ("/a%2fb", "/a%2Fb"),
            ("/a%2f..%2fb", "/a%2F..%2Fb"),
            ("/%7euser", "/~user"),
            ("/a%20b", "/a%20b"),
            ("/bad%zz", "/bad%zz"),
            ("/trunc%6", "/trunc%6"),
            ("/end%", "/end%"),
            ("/a//b///c", "/a/b/c"),
            ("/.hidden/..x", "/.hidden/..x"),
            ("*", "*"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input), want, "{input}");
        }
    }

    #[test]
    fn query_is_kept() {
        assert_eq!(
            normalize_path_and_query("/a/../b?x=/../%61").as_deref(),
            Some("/b?x=/../%61")
        );
        assert_eq!(normalize_path_and_query("/b?x=/../"), None);
    }
}
