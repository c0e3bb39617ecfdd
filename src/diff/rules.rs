//! Comparison rules, built once from configuration strings: which headers
//! to skip, which JSON fields to skip, which JSON arrays are multisets, the
//! numeric tolerance, and the limits that keep one comparison bounded.
//!
//! JSON path patterns are a small JSONPath subset:
//!
//! | pattern            | matches                                         |
//! |--------------------|-------------------------------------------------|
//! | `$`                | the whole document                              |
//! | `$.meta.timestamp` | member `timestamp` of member `meta`             |
//! | `$.user["odd key"]`| a member whose name needs quoting (JSON string) |
//! | `$.user['odd key']`| the same, single-quoted (`\'` and `\\` escapes)  |
//! | `$.items[3]`       | element 3 of an array                           |
//! | `$.items[*].id`    | `id` of every element (`[*]`/`.*`: any child)   |
//! | `$..etag`          | member `etag` at any depth (recursive descent)  |
//!
//! The paths the differ reports use the same syntax, so a reported path can
//! be pasted into `ignore_paths` as it is.

use std::collections::HashSet;

use http::HeaderName;
use serde::{Deserialize, Serialize};

/// Headers never compared, on top of the configured ones. A trailing `*`
/// makes the entry a prefix.
pub const DEFAULT_IGNORED_HEADERS: &[&str] = &[
    "date",
    "server",
    "content-length",
    // hop-by-hop
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    // per-request identifiers and tracing
    "x-request-id",
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-*",
    "x-amzn-trace-id",
    "x-cloud-trace-context",
    "uber-trace-id",
    // added by proxies and caches on the way
    "via",
    "age",
    "x-envoy-*",
];

/// Most steps a path pattern may have (its state set must fit in a `u64`).
const MAX_PATTERN_STEPS: usize = 32;

/// Highest JSON nesting that is compared structurally; `serde_json` refuses
/// nesting deeper than 128 and the subtrees past the cap are read without
/// recursion, so the cap has to stay below that.
const HARD_MAX_JSON_DEPTH: usize = 120;

/// The comparison part of the configuration, as written by a person.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RulesConfig {
    /// Header names (case-insensitive) not compared, added to
    /// [`DEFAULT_IGNORED_HEADERS`]; a trailing `*` makes a prefix.
    pub ignore_headers: Vec<String>,
    /// JSON path patterns whose values (and everything below) are skipped.
    pub ignore_paths: Vec<String>,
    /// JSON path patterns of arrays compared as multisets.
    pub unordered_paths: Vec<String>,
    /// Relative tolerance for numbers: `0.001` accepts 0.1 % apart.
    pub numeric_tolerance: Option<f64>,
}

/// Bounds on one comparison. Everything a comparison allocates or reports
/// is bounded by these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CompareLimits {
    /// Most differences listed in one [`Outcome`](super::Outcome); more set
    /// `differences_cut`.
    pub max_differences: usize,
    /// Most differing lines reported for a text body.
    pub max_text_lines: usize,
    /// JSON nesting compared structurally (at most 120); deeper subtrees are
    /// compared by digest.
    pub max_json_depth: usize,
    /// Most JSON values (of any kind) built per body; a larger document is
    /// compared as text. Bounds the memory of a comparison.
    pub max_json_values: usize,
    /// Most bytes a body may decode to; a longer one is cut there and the
    /// outcome is marked truncated (decompression bombs).
    pub max_decoded_bytes: usize,
    /// Longest rendering of one value in a [`Difference`](super::Difference),
    /// in characters.
    pub max_value_chars: usize,
    /// Longest reported path, in bytes; a longer one is shortened and made
    /// unique with a digest.
    pub max_path_bytes: usize,
    /// Most element-by-element equality checks spent matching leftovers of
    /// one unordered array (after the exact-hash pass).
    pub max_unordered_checks: usize,
}

impl Default for CompareLimits {
    fn default() -> Self {
        CompareLimits {
            max_differences: 100,
            max_text_lines: 20,
            max_json_depth: 100,
            max_json_values: 500_000,
            max_decoded_bytes: 8 * 1024 * 1024,
            max_value_chars: 120,
            max_path_bytes: 512,
            max_unordered_checks: 10_000,
        }
    }
}

/// A configuration value that cannot be turned into rules.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RulesError {
    /// A JSON path pattern does not parse.
    #[error("{list}: bad pattern {pattern:?} at byte {offset}: {reason}")]
    BadPath {
        /// `ignore_paths` or `unordered_paths`.
        list: &'static str,
        pattern: String,
        offset: usize,
        reason: String,
    },
    /// An `ignore_headers` entry is not a header name (or prefix).
    #[error("ignore_headers: bad header name {pattern:?}: {reason}")]
    BadHeader { pattern: String, reason: String },
    /// `numeric_tolerance` is out of range.
    #[error("numeric_tolerance: {value} is not allowed: {reason}")]
    BadTolerance { value: f64, reason: String },
}

/// Validated comparison rules; cheap to share (`Arc`) between workers.
#[derive(Debug, Clone)]
pub struct CompareRules {
    header_names: HashSet<String>,
    header_prefixes: Vec<String>,
    patterns: PatternSet,
    numeric_tolerance: Option<f64>,
    limits: CompareLimits,
}

impl Default for CompareRules {
    /// The default header list, no path rules, exact numbers, default limits.
    fn default() -> Self {
        // The defaults are valid by construction.
        let mut rules = CompareRules {
            header_names: HashSet::new(),
            header_prefixes: Vec::new(),
            patterns: PatternSet::default(),
            numeric_tolerance: None,
            limits: CompareLimits::default(),
        };
        for name in DEFAULT_IGNORED_HEADERS {
            rules.add_header_unchecked(name);
        }
        rules
    }
}

impl CompareRules {
    /// Builds the rules; every bad entry is an error naming it.
    pub fn new(config: &RulesConfig) -> Result<Self, RulesError> {
        let mut rules = CompareRules::default();
        for pattern in &config.ignore_headers {
            rules.add_header(pattern)?;
        }
        for text in &config.ignore_paths {
            let steps = parse_pattern(text).map_err(|(offset, reason)| RulesError::BadPath {
                list: "ignore_paths",
                pattern: text.clone(),
                offset,
                reason,
            })?;
            rules.patterns.push(steps, PatternKind::Ignore);
        }
        for text in &config.unordered_paths {
            let steps = parse_pattern(text).map_err(|(offset, reason)| RulesError::BadPath {
                list: "unordered_paths",
                pattern: text.clone(),
                offset,
                reason,
            })?;
            rules.patterns.push(steps, PatternKind::Unordered);
        }
        if let Some(value) = config.numeric_tolerance {
            if !value.is_finite() || !(0.0..=1.0).contains(&value) {
                return Err(RulesError::BadTolerance {
                    value,
                    reason: "a relative tolerance must be between 0 and 1 (0.001 = 0.1 %)".into(),
                });
            }
            rules.numeric_tolerance = Some(value);
        }
        Ok(rules)
    }

    /// Replaces the limits; `max_json_depth` is clamped to 1..=120 and the
    /// counts to at least 1.
    pub fn with_limits(mut self, limits: CompareLimits) -> Self {
        let mut limits = limits;
        limits.max_json_depth = limits.max_json_depth.clamp(1, HARD_MAX_JSON_DEPTH);
        limits.max_differences = limits.max_differences.max(1);
        limits.max_text_lines = limits.max_text_lines.max(1);
        limits.max_value_chars = limits.max_value_chars.max(8);
        limits.max_path_bytes = limits.max_path_bytes.max(32);
        self.limits = limits;
        self
    }

    /// The limits in force.
    pub fn limits(&self) -> &CompareLimits {
        &self.limits
    }

    /// The relative numeric tolerance, if any.
    pub fn numeric_tolerance(&self) -> Option<f64> {
        self.numeric_tolerance
    }

    /// Whether a header (lower-case name, as `http` stores it) is skipped.
    pub fn ignores_header(&self, name: &str) -> bool {
        self.header_names.contains(name)
            || self
                .header_prefixes
                .iter()
                .any(|p| name.starts_with(p.as_str()))
    }

    pub(crate) fn patterns(&self) -> &PatternSet {
        &self.patterns
    }

    fn add_header(&mut self, pattern: &str) -> Result<(), RulesError> {
        let lower = pattern.trim().to_ascii_lowercase();
        let bad = |reason: &str| RulesError::BadHeader {
            pattern: pattern.to_owned(),
            reason: reason.to_owned(),
        };
        let (stem, prefix) = match lower.strip_suffix('*') {
            Some(stem) => (stem, true),
            None => (lower.as_str(), false),
        };
        if stem.contains('*') {
            return Err(bad("`*` is only allowed at the end"));
        }
        if stem.is_empty() {
            if !prefix {
                return Err(bad("empty name"));
            }
        } else if HeaderName::from_bytes(stem.as_bytes()).is_err() {
            return Err(bad("contains characters not allowed in a header name"));
        }
        self.add_header_unchecked(&lower);
        Ok(())
    }

    fn add_header_unchecked(&mut self, lower: &str) {
        match lower.strip_suffix('*') {
            Some(stem) => self.header_prefixes.push(stem.to_owned()),
            None => {
                self.header_names.insert(lower.to_owned());
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Path patterns

#[derive(Debug, Clone, PartialEq)]
enum Selector {
    Key(Box<str>),
    Index(usize),
    Any,
}

#[derive(Debug, Clone, PartialEq)]
struct Step {
    /// `..`: any number of levels may be skipped before this step matches.
    recursive: bool,
    selector: Selector,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PatternKind {
    Ignore,
    Unordered,
}

#[derive(Debug, Clone)]
struct Pattern {
    steps: Vec<Step>,
    kind: PatternKind,
}

/// One step of a concrete path, as the differ walks it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

/// The compiled patterns of a rule set.
#[derive(Debug, Clone, Default)]
pub(crate) struct PatternSet {
    patterns: Vec<Pattern>,
}

impl PatternSet {
    fn push(&mut self, steps: Vec<Step>, kind: PatternKind) {
        self.patterns.push(Pattern { steps, kind });
    }
}

/// Matches the path being walked against every pattern at once.
///
/// Each pattern is a tiny NFA whose state set (bit `i`: the first `i` steps
/// have matched) fits in a `u64`. The stack holds one frame of state sets
/// per level of the walk, so descending and returning cost no allocation
/// once the stack has grown to the document's depth.
pub(crate) struct MatchStack<'a> {
    set: &'a PatternSet,
    states: Vec<u64>,
}

impl<'a> MatchStack<'a> {
    pub(crate) fn new(set: &'a PatternSet) -> Self {
        let mut states = Vec::with_capacity(set.patterns.len() * 8);
        states.resize(set.patterns.len(), 1);
        MatchStack { set, states }
    }

    fn top(&self) -> &[u64] {
        let n = self.set.patterns.len();
        &self.states[self.states.len() - n..]
    }

    pub(crate) fn push(&mut self, seg: Seg<'_>) {
        let n = self.set.patterns.len();
        let base = self.states.len() - n;
        for p in 0..n {
            let state = self.states[base + p];
            let next = if state == 0 {
                0
            } else {
                advance(&self.set.patterns[p].steps, state, seg)
            };
            self.states.push(next);
        }
    }

    pub(crate) fn pop(&mut self) {
        let n = self.set.patterns.len();
        // The root frame is never popped.
        if self.states.len() >= 2 * n {
            self.states.truncate(self.states.len() - n);
        }
    }

    fn accepts(&self, kind: PatternKind) -> bool {
        self.top()
            .iter()
            .zip(&self.set.patterns)
            .any(|(state, p)| p.kind == kind && state & (1u64 << p.steps.len()) != 0)
    }

    /// The current path matches an `ignore_paths` pattern.
    pub(crate) fn ignored(&self) -> bool {
        !self.set.patterns.is_empty() && self.accepts(PatternKind::Ignore)
    }

    /// The current path matches an `unordered_paths` pattern.
    pub(crate) fn unordered(&self) -> bool {
        !self.set.patterns.is_empty() && self.accepts(PatternKind::Unordered)
    }
}

fn advance(steps: &[Step], state: u64, seg: Seg<'_>) -> u64 {
    let mut next = 0u64;
    for (i, step) in steps.iter().enumerate() {
        if state & (1u64 << i) == 0 {
            continue;
        }
        if step.recursive {
            next |= 1u64 << i;
        }
        let hit = match (&step.selector, seg) {
            (Selector::Any, _) => true,
            (Selector::Key(k), Seg::Key(s)) => **k == *s,
            (Selector::Index(n), Seg::Index(m)) => *n == m,
            _ => false,
        };
        if hit {
            next |= 1u64 << (i + 1);
        }
    }
    next
}

/// Characters allowed in a dotted name (`$.name`); anything else needs the
/// bracket form. Non-ASCII bytes are allowed so UTF-8 names work.
pub(crate) fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b >= 0x80
}

type ParseError = (usize, String);

fn parse_pattern(text: &str) -> Result<Vec<Step>, ParseError> {
    let b = text.as_bytes();
    if b.first() != Some(&b'$') {
        return Err((0, "a pattern starts with `$`".into()));
    }
    let mut steps = Vec::new();
    let mut i = 1;
    while i < b.len() {
        match b[i] {
            b'.' => {
                let recursive = b.get(i + 1) == Some(&b'.');
                i += if recursive { 2 } else { 1 };
                match b.get(i) {
                    None => return Err((i, "expected a name, `*` or `[` after `.`".into())),
                    Some(b'*') => {
                        steps.push(Step {
                            recursive,
                            selector: Selector::Any,
                        });
                        i += 1;
                    }
                    Some(b'[') if recursive => {
                        let (selector, next) = parse_bracket(text, i)?;
                        steps.push(Step {
                            recursive,
                            selector,
                        });
                        i = next;
                    }
                    Some(_) => {
                        let start = i;
                        while i < b.len() && is_name_byte(b[i]) {
                            i += 1;
                        }
                        if i == start {
                            return Err((
                                i,
                                format!("unexpected {:?} in a name", char_at(text, i)),
                            ));
                        }
                        steps.push(Step {
                            recursive,
                            selector: Selector::Key(text[start..i].into()),
                        });
                    }
                }
            }
            b'[' => {
                let (selector, next) = parse_bracket(text, i)?;
                steps.push(Step {
                    recursive: false,
                    selector,
                });
                i = next;
            }
            _ => {
                return Err((
                    i,
                    format!("unexpected {:?}; expected `.` or `[`", char_at(text, i)),
                ))
            }
        }
        if steps.len() > MAX_PATTERN_STEPS {
            return Err((i, format!("more than {MAX_PATTERN_STEPS} steps")));
        }
    }
    Ok(steps)
}

fn char_at(text: &str, i: usize) -> char {
    text.get(i..).and_then(|s| s.chars().next()).unwrap_or('?')
}

/// Parses `[...]` starting at the `[`; returns the selector and the index
/// just past the `]`.
fn parse_bracket(text: &str, open: usize) -> Result<(Selector, usize), ParseError> {
    let b = text.as_bytes();
    let mut i = open + 1;
    let selector = match b.get(i) {
        Some(b'*') => {
            i += 1;
            Selector::Any
        }
        Some(c) if c.is_ascii_digit() => {
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            let n = text[start..i]
                .parse::<usize>()
                .map_err(|_| (start, "index too large".to_string()))?;
            Selector::Index(n)
        }
        Some(b'"') => {
            let start = i;
            i += 1;
            loop {
                match b.get(i) {
                    None => return Err((start, "unterminated string".into())),
                    Some(b'\\') => i += 2,
                    Some(b'"') => break,
                    Some(_) => i += 1,
                }
            }
            i += 1;
            let key: String = serde_json::from_str(&text[start..i])
                .map_err(|e| (start, format!("bad JSON string: {e}")))?;
            Selector::Key(key.into())
        }
        Some(b'\'') => {
            let start = i;
            i += 1;
            let mut key = String::new();
            loop {
                let rest = text.get(i..).unwrap_or("");
                let mut chars = rest.chars();
                match chars.next() {
                    None => return Err((start, "unterminated string".into())),
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some('\\') => match chars.next() {
                        Some(c @ ('\'' | '\\')) => {
                            key.push(c);
                            i += 2;
                        }
                        _ => return Err((i, "only \\' and \\\\ are escapes here".into())),
                    },
                    Some(c) => {
                        key.push(c);
                        i += c.len_utf8();
                    }
                }
            }
            Selector::Key(key.into())
        }
        Some(_) => {
            return Err((
                i,
                "expected an index, `*` or a quoted name after `[`".into(),
            ))
        }
        None => return Err((i, "unterminated `[`".into())),
    };
    if b.get(i) != Some(&b']') {
        return Err((i, "expected `]`".into()));
    }
    Ok((selector, i + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(ignore: &[&str], unordered: &[&str]) -> CompareRules {
        CompareRules::new(&RulesConfig {
            ignore_paths: ignore.iter().map(|s| s.to_string()).collect(),
            unordered_paths: unordered.iter().map(|s| s.to_string()).collect(),
            ..RulesConfig::default()
        })
        .expect("valid rules")
    }

    /// Walks `path` (a list of segments) and says whether it ends ignored.
    fn ignored_at(r: &CompareRules, path: &[Seg<'_>]) -> bool {
        let mut m = MatchStack::new(r.patterns());
        for seg in path {
            m.push(*seg);
        }
        m.ignored()
    }

    #[test]
    fn pattern_matching_table() {
        use Seg::{Index as I, Key as K};
        let cases: &[(&str, &[Seg<'_>], bool)] = &[
            ("$.meta.timestamp", &[K("meta"), K("timestamp")], true),
            ("$.meta.timestamp", &[K("meta")], false),
            ("$.meta.timestamp", &[K("meta"), K("time")], false),
            ("$..etag", &[K("etag")], true),
            ("$..etag", &[K("a"), I(3), K("b"), K("etag")], true),
            ("$..etag", &[K("a"), K("etagx")], false),
            ("$.items[*].id", &[K("items"), I(7), K("id")], true),
            ("$.items[*].id", &[K("items"), K("x"), K("id")], true),
            ("$.items[*].id", &[K("items"), I(7), K("name")], false),
            ("$.items[2]", &[K("items"), I(2)], true),
            ("$.items[2]", &[K("items"), I(3)], false),
            ("$.user[\"odd key\"]", &[K("user"), K("odd key")], true),
            ("$.user['it\\'s']", &[K("user"), K("it's")], true),
            ("$.*.id", &[K("a"), K("id")], true),
            ("$..[*].v", &[K("a"), I(1), K("v")], true),
            ("$", &[], true),
            ("$.a", &[], false),
        ];
        for (pattern, path, want) in cases {
            let r = rules(&[pattern], &[]);
            assert_eq!(ignored_at(&r, path), *want, "{pattern} on {path:?}");
        }
    }

    #[test]
    fn unordered_and_ignore_are_separate() {
        let r = rules(&["$.a"], &["$.b"]);
        let mut m = MatchStack::new(r.patterns());
        m.push(Seg::Key("b"));
        assert!(m.unordered());
        assert!(!m.ignored());
        m.pop();
        m.push(Seg::Key("a"));
        assert!(m.ignored());
        assert!(!m.unordered());
        m.pop();
        m.pop(); // popping the root is a no-op
        assert!(!m.ignored());
    }

    #[test]
    fn bad_patterns_say_which_and_why() {
        let cases: &[(&str, usize, &str)] = &[
            ("meta.ts", 0, "a pattern starts with `$`"),
            ("$.", 2, "expected a name, `*` or `[` after `.`"),
            ("$.a[", 4, "unterminated `[`"),
            ("$.a[1", 5, "expected `]`"),
            (
                "$.a[x]",
                4,
                "expected an index, `*` or a quoted name after `[`",
            ),
            ("$.a[\"x]", 4, "unterminated string"),
            ("$.a b", 3, "unexpected ' '; expected `.` or `[`"),
            ("$..", 3, "expected a name, `*` or `[` after `.`"),
            ("$.a.[1]", 4, "unexpected '[' in a name"),
        ];
        for (pattern, offset, reason) in cases {
            let err = CompareRules::new(&RulesConfig {
                ignore_paths: vec![pattern.to_string()],
                ..RulesConfig::default()
            })
            .expect_err(pattern);
            assert_eq!(
                err,
                RulesError::BadPath {
                    list: "ignore_paths",
                    pattern: pattern.to_string(),
                    offset: *offset,
                    reason: reason.to_string(),
                },
                "{pattern}"
            );
        }
        let err = CompareRules::new(&RulesConfig {
            unordered_paths: vec!["$.x[".into()],
            ..RulesConfig::default()
        })
        .expect_err("bad");
        assert_eq!(
            err.to_string(),
            "unordered_paths: bad pattern \"$.x[\" at byte 4: unterminated `[`"
        );
    }

    #[test]
    fn too_many_steps_is_an_error() {
        let pattern = format!("${}", ".a".repeat(MAX_PATTERN_STEPS + 1));
        let err = CompareRules::new(&RulesConfig {
            ignore_paths: vec![pattern],
            ..RulesConfig::default()
        })
        .expect_err("too long");
        assert!(err.to_string().contains("more than 32 steps"), "{err}");
    }

    #[test]
    fn headers_defaults_config_and_prefixes() {
        let r = CompareRules::new(&RulesConfig {
            ignore_headers: vec!["X-Cache".into(), "x-debug-*".into()],
            ..RulesConfig::default()
        })
        .expect("valid");
        for name in [
            "date",
            "server",
            "content-length",
            "transfer-encoding",
            "x-request-id",
            "traceparent",
            "x-b3-traceid",
            "x-envoy-upstream-service-time",
            "x-cache",
            "x-debug-host",
        ] {
            assert!(r.ignores_header(name), "{name}");
        }
        for name in ["content-type", "etag", "x-b3", "x-debug", "cache-control"] {
            assert!(!r.ignores_header(name), "{name}");
        }
    }

    #[test]
    fn bad_headers_and_tolerances() {
        let header = |h: &str| {
            CompareRules::new(&RulesConfig {
                ignore_headers: vec![h.into()],
                ..RulesConfig::default()
            })
            .map(|_| ())
        };
        assert_eq!(
            header("x-*-id"),
            Err(RulesError::BadHeader {
                pattern: "x-*-id".into(),
                reason: "`*` is only allowed at the end".into()
            })
        );
        assert_eq!(
            header("bad header"),
            Err(RulesError::BadHeader {
                pattern: "bad header".into(),
                reason: "contains characters not allowed in a header name".into()
            })
        );
        assert_eq!(
            header(""),
            Err(RulesError::BadHeader {
                pattern: "".into(),
                reason: "empty name".into()
            })
        );
        assert_eq!(header("*"), Ok(()));
        for bad in [-0.1, 1.5, f64::NAN, f64::INFINITY] {
            let r = CompareRules::new(&RulesConfig {
                numeric_tolerance: Some(bad),
                ..RulesConfig::default()
            });
            assert!(matches!(r, Err(RulesError::BadTolerance { .. })), "{bad}");
        }
        let ok = CompareRules::new(&RulesConfig {
            numeric_tolerance: Some(0.001),
            ..RulesConfig::default()
        })
        .expect("valid");
        assert_eq!(ok.numeric_tolerance(), Some(0.001));
    }

    #[test]
    fn limits_are_clamped() {
        let r = CompareRules::default().with_limits(CompareLimits {
            max_json_depth: 10_000,
            max_differences: 0,
            ..CompareLimits::default()
        });
        assert_eq!(r.limits().max_json_depth, 120);
        assert_eq!(r.limits().max_differences, 1);
    }
}
