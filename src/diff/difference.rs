//! What a difference is ([`Difference`], [`DiffKind`]), the field it is
//! counted under, and the [`DiffSink`] the walkers (headers, JSON, text,
//! digest) put differences in, bounded.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

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
}
