//! Bounded renderings of values (bytes, text) and of difference paths
//! (`$.items[3]["odd key"]`), shared by every walker.

use std::fmt::Write as _;

use super::digest::digest;

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
    format!("{}…~{:016x}", &path[..end], digest(path.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

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
