//! The structural JSON differ.
//!
//! Bodies are parsed into a small tree of our own, capped in depth: a
//! container nested deeper than `max_json_depth` is not built but kept as
//! its length and a digest of its text (whitespace outside strings
//! skipped), read by `serde_json` without recursion. So neither parsing,
//! walking nor dropping a hostile document can exhaust the stack. Rules
//! cannot look inside such a digest: paths below the cap are neither
//! ignored nor unordered.
//!
//! Differences are reported with paths in the syntax of the rules'
//! patterns: `$.items[3].price`, `$.user["odd key"]`.

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::hash::Hasher;

use fnv::FnvHasher;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::difference::{DiffKind, DiffSink, Difference};
use super::digest::digest;
use super::render::{bounded_path, push_escaped_char, push_index, push_key};
use super::rules::{CompareRules, MatchStack, Seg};

/// A parsed JSON value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum JsonNode {
    Null,
    Bool(bool),
    Num(Num),
    Str(Box<str>),
    Arr(Vec<JsonNode>),
    /// Members in document order, as written (a repeated name is kept
    /// twice; lookups resolve to the last one).
    Obj(Vec<(Box<str>, JsonNode)>),
    /// A container past the depth cap.
    Deep {
        digest: u64,
        len: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Num {
    U(u64),
    I(i64),
    F(f64),
}

impl Num {
    fn as_f64(self) -> f64 {
        match self {
            Num::U(u) => u as f64,
            Num::I(i) => i as f64,
            Num::F(f) => f,
        }
    }

    fn as_int(self) -> Option<i128> {
        match self {
            Num::U(u) => Some(i128::from(u)),
            Num::I(i) => Some(i128::from(i)),
            Num::F(_) => None,
        }
    }
}

/// Why a document was not turned into a tree.
#[derive(Debug)]
pub(crate) enum ParseError {
    /// Not JSON (or more than `max_values` values).
    Json(serde_json::Error),
    /// The tree would take more than the bytes allowed.
    Memory,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Json(e) => e.fmt(f),
            ParseError::Memory => f.write_str("its tree needs more memory than allowed"),
        }
    }
}

/// What one heap allocation costs beyond its bytes (the allocator's
/// header and rounding), counted so the meter errs on the high side.
const ALLOC_OVERHEAD: usize = 16;

/// The heap bytes a tree may still take, shared by the documents of one
/// comparison. Counts what the tree allocates: each string's bytes and
/// each array's and object's capacity (grown by doubling, as `Vec` does,
/// but only after the growth is counted).
#[derive(Debug)]
pub(crate) struct TreeMeter {
    left: Cell<usize>,
    refused: Cell<bool>,
}

impl TreeMeter {
    pub(crate) fn new(bytes: usize) -> Self {
        TreeMeter {
            left: Cell::new(bytes),
            refused: Cell::new(false),
        }
    }

    /// Counts `bytes` more; false (and marked refused) when they do not fit.
    fn charge(&self, bytes: usize) -> bool {
        match self.left.get().checked_sub(bytes) {
            Some(left) => {
                self.left.set(left);
                true
            }
            None => {
                self.refused.set(true);
                false
            }
        }
    }

    /// Counts `bytes` allocated outside the tree (e.g. a decoded body),
    /// down to nothing left.
    pub(crate) fn count(&self, bytes: usize) {
        self.left.set(self.left.get().saturating_sub(bytes));
    }

    /// Bytes still allowed.
    pub(crate) fn left(&self) -> usize {
        self.left.get()
    }

    /// Counts a string of `len` bytes (an empty one allocates nothing).
    fn charge_str<E: serde::de::Error>(&self, len: usize) -> Result<(), E> {
        if len == 0 || self.charge(len + ALLOC_OVERHEAD) {
            Ok(())
        } else {
            Err(E::custom("tree over its memory allowance"))
        }
    }

    /// Makes room for one more element in `items`, counting the growth
    /// before it is allocated.
    fn grow<T, E: serde::de::Error>(&self, items: &mut Vec<T>) -> Result<(), E> {
        if items.len() < items.capacity() {
            return Ok(());
        }
        let old = items.capacity();
        let new = (old * 2).max(4);
        let bytes = (new - old) * std::mem::size_of::<T>() + ALLOC_OVERHEAD;
        if !self.charge(bytes) {
            return Err(E::custom("tree over its memory allowance"));
        }
        items.reserve_exact(new - items.len());
        Ok(())
    }
}

/// Parses a JSON document; containers at depth `max_depth` (the root is at
/// depth 0) become [`JsonNode::Deep`]. `max_depth` must stay below 128, the
/// nesting `serde_json` allows. A document with more than `max_values`
/// values (of any kind) is refused, and so is one whose tree would take
/// more heap than `meter` has left (what it took is counted there).
pub(crate) fn parse(
    bytes: &[u8],
    max_depth: usize,
    max_values: usize,
    meter: &TreeMeter,
) -> Result<JsonNode, ParseError> {
    let budget = Cell::new(max_values);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = NodeSeed {
        depth: 0,
        max_depth,
        budget: &budget,
        meter,
    }
    .deserialize(&mut de)
    .and_then(|node| de.end().map(|()| node));
    match parsed {
        Ok(node) => Ok(node),
        Err(_) if meter.refused.get() => Err(ParseError::Memory),
        Err(e) => Err(ParseError::Json(e)),
    }
}

#[derive(Clone, Copy)]
struct NodeSeed<'b> {
    depth: usize,
    max_depth: usize,
    /// Values that may still be built.
    budget: &'b Cell<usize>,
    /// Heap bytes the tree may still take.
    meter: &'b TreeMeter,
}

impl NodeSeed<'_> {
    fn child(self) -> Self {
        NodeSeed {
            depth: self.depth + 1,
            ..self
        }
    }
}

impl<'de> DeserializeSeed<'de> for NodeSeed<'_> {
    type Value = JsonNode;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<JsonNode, D::Error> {
        match self.budget.get().checked_sub(1) {
            Some(left) => self.budget.set(left),
            None => return Err(serde::de::Error::custom("too many values to compare")),
        }
        if self.depth < self.max_depth {
            return deserializer.deserialize_any(NodeVisitor(self));
        }
        // At the cap: take the raw text (serde_json skips it iteratively).
        let raw = <&RawValue>::deserialize(deserializer)?;
        let text = raw.get();
        if text.starts_with(['[', '{']) {
            let (digest, len) = compact_digest(text);
            Ok(JsonNode::Deep { digest, len })
        } else {
            // A scalar: parse it for real (cannot nest).
            let budget = Cell::new(1);
            let mut de = serde_json::Deserializer::from_str(text);
            NodeSeed {
                depth: 0,
                max_depth: 1,
                budget: &budget,
                meter: self.meter,
            }
            .deserialize(&mut de)
            .map_err(serde::de::Error::custom)
        }
    }
}

struct NodeVisitor<'b>(NodeSeed<'b>);

impl<'de> Visitor<'de> for NodeVisitor<'_> {
    type Value = JsonNode;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<JsonNode, E> {
        Ok(JsonNode::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<JsonNode, E> {
        Ok(JsonNode::Bool(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<JsonNode, E> {
        Ok(JsonNode::Num(Num::U(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<JsonNode, E> {
        Ok(JsonNode::Num(Num::I(v)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<JsonNode, E> {
        Ok(JsonNode::Num(Num::F(v)))
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<JsonNode, E> {
        self.0.meter.charge_str(v.len())?;
        Ok(JsonNode::Str(v.into()))
    }
    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<JsonNode, E> {
        self.0.meter.charge_str(v.len())?;
        Ok(JsonNode::Str(v.into_boxed_str()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<JsonNode, A::Error> {
        let child = self.0.child();
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(child)? {
            self.0.meter.grow(&mut items)?;
            items.push(item);
        }
        Ok(JsonNode::Arr(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JsonNode, A::Error> {
        let child = self.0.child();
        let mut members = Vec::new();
        while let Some(key) = map.next_key_seed(KeySeed(self.0.meter))? {
            let value = map.next_value_seed(child)?;
            self.0.meter.grow(&mut members)?;
            members.push((key, value));
        }
        Ok(JsonNode::Obj(members))
    }
}

/// Reads a member name straight into a `Box<str>`, counted by the meter.
struct KeySeed<'b>(&'b TreeMeter);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Box<str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Box<str>, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for KeySeed<'_> {
    type Value = Box<str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Box<str>, E> {
        self.0.charge_str(v.len())?;
        Ok(v.into())
    }
    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Box<str>, E> {
        self.0.charge_str(v.len())?;
        Ok(v.into_boxed_str())
    }
}

/// FNV-1a over the text with whitespace outside strings skipped, and its
/// length as written.
fn compact_digest(text: &str) -> (u64, usize) {
    let mut h = FnvHasher::default();
    let mut in_string = false;
    let mut escaped = false;
    for &b in text.as_bytes() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        } else if matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
            continue;
        }
        h.write_u8(b);
    }
    (h.finish(), text.len())
}

// ---------------------------------------------------------------------------
// Diffing

/// Diffs `a` (primary) against `b` (other) into `sink`.
pub(crate) fn diff(a: &JsonNode, b: &JsonNode, rules: &CompareRules, sink: &mut DiffSink) {
    let mut w = Walker {
        rules,
        m: MatchStack::new(rules.patterns()),
        segs: Vec::new(),
        checks_left: rules.limits().max_unordered_checks,
    };
    if w.m.ignored() {
        return;
    }
    w.walk(a, b, sink);
}

struct Walker<'r, 'n> {
    rules: &'r CompareRules,
    m: MatchStack<'r>,
    /// The current path; turned into a string only when a difference is
    /// reported.
    segs: Vec<Seg<'n>>,
    /// Equality checks left for matching leftovers of unordered arrays, for
    /// the whole document (nested unordered arrays share it).
    checks_left: usize,
}

/// Unordered arrays up to this length are matched pair by pair.
const SMALL_UNORDERED: usize = 16;

/// Objects with more members than this get a hash index for lookups;
/// smaller ones are searched linearly.
const INDEX_MEMBERS: usize = 16;

/// Name lookup in an object's members; a repeated name resolves to its
/// last occurrence, as in most JSON parsers.
struct Members<'n> {
    entries: &'n [(Box<str>, JsonNode)],
    index: Option<HashMap<&'n str, usize>>,
}

impl<'n> Members<'n> {
    fn new(entries: &'n [(Box<str>, JsonNode)]) -> Self {
        let index = (entries.len() > INDEX_MEMBERS).then(|| {
            entries
                .iter()
                .enumerate()
                .map(|(i, (k, _))| (&**k, i))
                .collect::<HashMap<_, _>>()
        });
        Members { entries, index }
    }

    fn lookup(&self, key: &str) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(key).copied(),
            None => self.entries.iter().rposition(|(k, _)| **k == *key),
        }
    }

    /// Entry `i` is the one its name resolves to.
    fn is_last(&self, i: usize) -> bool {
        self.lookup(&self.entries[i].0) == Some(i)
    }
}

impl<'n> Walker<'_, 'n> {
    fn walk(&mut self, a: &'n JsonNode, b: &'n JsonNode, sink: &mut DiffSink) {
        match (a, b) {
            (JsonNode::Obj(x), JsonNode::Obj(y)) => self.objects(x, y, sink),
            (JsonNode::Arr(x), JsonNode::Arr(y)) => {
                if self.m.unordered() {
                    self.unordered(x, y, sink)
                } else {
                    self.ordered(x, y, sink)
                }
            }
            _ => {
                if let Some(kind) = self.scalar_diff(a, b) {
                    self.emit(kind, Some(a), Some(b), sink);
                }
            }
        }
    }

    /// Runs `f` one level down, unless that path is ignored.
    fn child(
        &mut self,
        seg: Seg<'n>,
        sink: &mut DiffSink,
        f: impl FnOnce(&mut Self, &mut DiffSink),
    ) {
        self.segs.push(seg);
        self.m.push(seg);
        if !self.m.ignored() {
            f(self, sink);
        }
        self.m.pop();
        self.segs.pop();
    }

    fn path(&self) -> String {
        let mut path = String::from("$");
        for seg in &self.segs {
            match seg {
                Seg::Key(k) => push_key(&mut path, k),
                Seg::Index(i) => push_index(&mut path, *i),
            }
        }
        bounded_path(&path, self.rules.limits().max_path_bytes)
    }

    fn emit(
        &self,
        kind: DiffKind,
        a: Option<&JsonNode>,
        b: Option<&JsonNode>,
        sink: &mut DiffSink,
    ) {
        let max_value = sink.max_value;
        sink.push(|| Difference {
            path: self.path(),
            kind,
            primary: a.map(|n| render(n, max_value)),
            other: b.map(|n| render(n, max_value)),
        });
    }

    /// Members are matched by name. When both sides list the same names in
    /// the same order (the usual case: same serializer) they are paired in
    /// place without any lookup; a name repeated within one object is then
    /// compared occurrence by occurrence.
    fn objects(
        &mut self,
        x: &'n [(Box<str>, JsonNode)],
        y: &'n [(Box<str>, JsonNode)],
        sink: &mut DiffSink,
    ) {
        if x.len() == y.len() && x.iter().zip(y).all(|((ka, _), (kb, _))| ka == kb) {
            for ((k, va), (_, vb)) in x.iter().zip(y) {
                if sink.full() {
                    return;
                }
                self.child(Seg::Key(k), sink, |w, s| w.walk(va, vb, s));
            }
            return;
        }
        let (mx, my) = (Members::new(x), Members::new(y));
        for (i, (k, va)) in x.iter().enumerate() {
            if sink.full() {
                return;
            }
            if !mx.is_last(i) {
                continue;
            }
            self.child(Seg::Key(k), sink, |w, s| match my.lookup(k) {
                Some(j) => w.walk(va, &y[j].1, s),
                None => w.emit(DiffKind::Missing, Some(va), None, s),
            });
        }
        for (j, (k, vb)) in y.iter().enumerate() {
            if sink.full() {
                return;
            }
            if my.is_last(j) && mx.lookup(k).is_none() {
                self.child(Seg::Key(k), sink, |w, s| {
                    w.emit(DiffKind::Extra, None, Some(vb), s)
                });
            }
        }
    }

    fn ordered(&mut self, x: &'n [JsonNode], y: &'n [JsonNode], sink: &mut DiffSink) {
        for i in 0..x.len().max(y.len()) {
            if sink.full() {
                return;
            }
            self.child(Seg::Index(i), sink, |w, s| match (x.get(i), y.get(i)) {
                (Some(va), Some(vb)) => w.walk(va, vb, s),
                (Some(va), None) => w.emit(DiffKind::Missing, Some(va), None, s),
                (None, Some(vb)) => w.emit(DiffKind::Extra, None, Some(vb), s),
                (None, None) => {}
            });
        }
    }

    /// Multiset comparison. Arrays already in the same order cost one walk;
    /// small ones are matched pair by pair; larger ones by a rules-aware
    /// hash (each match confirmed by a walk), then leftovers pair by pair
    /// within a budget (tolerance can make unequal hashes equal).
    /// Unmatched elements are reported as missing (primary index) or extra
    /// (other index).
    fn unordered(&mut self, x: &'n [JsonNode], y: &'n [JsonNode], sink: &mut DiffSink) {
        // Already in the same order: nothing to match.
        if x.len() == y.len() && (0..x.len()).all(|i| self.equal_at(i, &x[i], &y[i])) {
            return;
        }
        let mut used = vec![false; y.len()];
        let mut matched = vec![false; x.len()];
        if x.len().max(y.len()) <= SMALL_UNORDERED {
            // Small arrays: every pair, no hashing (bounded by the size).
            for (i, va) in x.iter().enumerate() {
                for (j, vb) in y.iter().enumerate() {
                    if !used[j] && self.equal_at(i, va, vb) {
                        used[j] = true;
                        matched[i] = true;
                        break;
                    }
                }
            }
        } else {
            self.match_by_hash(x, y, &mut matched, &mut used);
        }
        for (i, va) in x.iter().enumerate() {
            if sink.full() {
                return;
            }
            if !matched[i] {
                self.child(Seg::Index(i), sink, |w, s| {
                    w.emit(DiffKind::Missing, Some(va), None, s)
                });
            }
        }
        for (j, vb) in y.iter().enumerate() {
            if sink.full() {
                return;
            }
            if !used[j] {
                self.child(Seg::Index(j), sink, |w, s| {
                    w.emit(DiffKind::Extra, None, Some(vb), s)
                });
            }
        }
    }

    /// Matching for larger unordered arrays: exact-hash buckets first,
    /// then leftovers pair by pair within the document's budget.
    fn match_by_hash(
        &mut self,
        x: &'n [JsonNode],
        y: &'n [JsonNode],
        matched: &mut [bool],
        used: &mut [bool],
    ) {
        let mut buckets: HashMap<u64, Vec<usize>> = HashMap::new();
        for (j, vb) in y.iter().enumerate() {
            let h = self.hash_at(j, vb);
            buckets.entry(h).or_default().push(j);
        }
        for (i, va) in x.iter().enumerate() {
            let h = self.hash_at(i, va);
            let Some(candidates) = buckets.get_mut(&h) else {
                continue;
            };
            let mut hit = None;
            for (pos, &j) in candidates.iter().enumerate() {
                if self.equal_at(i, va, &y[j]) {
                    hit = Some(pos);
                    break;
                }
            }
            if let Some(pos) = hit {
                let j = candidates.swap_remove(pos);
                used[j] = true;
                matched[i] = true;
            }
        }
        let mut free: Vec<usize> = (0..y.len()).filter(|&j| !used[j]).collect();
        'leftovers: for (i, va) in x.iter().enumerate() {
            if matched[i] {
                continue;
            }
            for pos in 0..free.len() {
                if self.checks_left == 0 {
                    break 'leftovers;
                }
                self.checks_left -= 1;
                let j = free[pos];
                if self.equal_at(i, va, &y[j]) {
                    used[j] = true;
                    matched[i] = true;
                    free.swap_remove(pos);
                    break;
                }
            }
        }
    }

    /// Whether two elements at index `i` are equal under the rules.
    fn equal_at(&mut self, i: usize, a: &'n JsonNode, b: &'n JsonNode) -> bool {
        let mut probe = DiffSink::probe();
        self.child(Seg::Index(i), &mut probe, |w, s| w.walk(a, b, s));
        !probe.found()
    }

    fn hash_at(&mut self, i: usize, v: &JsonNode) -> u64 {
        self.m.push(Seg::Index(i));
        let h = if self.m.ignored() { 0 } else { self.hash(v) };
        self.m.pop();
        h
    }

    /// A hash consistent with rules-aware equality (without tolerance):
    /// ignored members are left out, object members and unordered arrays
    /// are combined order-independently, integral numbers hash alike
    /// whatever their spelling. (Only an accelerator: every match is
    /// confirmed by a walk, and a miss falls back to pairwise checks.)
    fn hash(&mut self, v: &JsonNode) -> u64 {
        match v {
            JsonNode::Null => mix(1, 0),
            JsonNode::Bool(b) => mix(2, u64::from(*b)),
            JsonNode::Num(n) => mix(3, num_hash(*n)),
            JsonNode::Str(s) => mix(4, digest(s.as_bytes())),
            JsonNode::Deep { digest, .. } => mix(5, *digest),
            JsonNode::Arr(items) => {
                let unordered = self.m.unordered();
                let mut acc = mix(6, items.len() as u64);
                for (i, item) in items.iter().enumerate() {
                    self.m.push(Seg::Index(i));
                    if !self.m.ignored() {
                        let h = self.hash(item);
                        acc = if unordered {
                            acc.wrapping_add(mix(h, 7))
                        } else {
                            mix(acc, h)
                        };
                    }
                    self.m.pop();
                }
                acc
            }
            JsonNode::Obj(members) => {
                let mut acc = 0u64;
                for (k, item) in members {
                    self.m.push(Seg::Key(k));
                    if !self.m.ignored() {
                        acc = acc.wrapping_add(mix(digest(k.as_bytes()), self.hash(item)));
                    }
                    self.m.pop();
                }
                mix(8, acc)
            }
        }
    }

    fn scalar_diff(&self, a: &JsonNode, b: &JsonNode) -> Option<DiffKind> {
        let equal = match (a, b) {
            (JsonNode::Null, JsonNode::Null) => true,
            (JsonNode::Bool(x), JsonNode::Bool(y)) => x == y,
            (JsonNode::Str(x), JsonNode::Str(y)) => x == y,
            (JsonNode::Num(x), JsonNode::Num(y)) => num_eq(*x, *y, self.rules.numeric_tolerance()),
            (JsonNode::Deep { digest: x, .. }, JsonNode::Deep { digest: y, .. }) => x == y,
            _ => return Some(DiffKind::TypeChanged),
        };
        (!equal).then_some(DiffKind::ValueChanged)
    }
}

fn mix(a: u64, b: u64) -> u64 {
    // splitmix64's finaliser over a combination of both.
    let mut z = a.rotate_left(17) ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn num_hash(n: Num) -> u64 {
    match n {
        Num::U(u) => u,
        Num::I(i) => i as u64,
        Num::F(f) if f.fract() == 0.0 && f.abs() < 9.2e18 => (f as i64) as u64,
        Num::F(f) => f.to_bits(),
    }
}

fn num_eq(a: Num, b: Num, tolerance: Option<f64>) -> bool {
    let exact = match (a.as_int(), b.as_int()) {
        (Some(x), Some(y)) => x == y,
        _ => a.as_f64() == b.as_f64(),
    };
    if exact {
        return true;
    }
    match tolerance {
        Some(t) => {
            let (x, y) = (a.as_f64(), b.as_f64());
            (x - y).abs() <= t * x.abs().max(y.abs())
        }
        None => false,
    }
}

// ---------------------------------------------------------------------------
// Rendering

/// Compact JSON of `node`, cut at about `max` characters.
pub(crate) fn render(node: &JsonNode, max: usize) -> String {
    let mut r = Renderer {
        out: String::new(),
        max,
        chars: 0,
        full: false,
    };
    r.node(node);
    if r.full {
        r.out.push('…');
    }
    r.out
}

struct Renderer {
    out: String,
    max: usize,
    chars: usize,
    full: bool,
}

impl Renderer {
    fn put(&mut self, s: &str) {
        for c in s.chars() {
            self.put_char(c);
        }
    }

    fn put_char(&mut self, c: char) {
        if self.full {
            return;
        }
        if self.chars >= self.max {
            self.full = true;
            return;
        }
        self.out.push(c);
        self.chars += 1;
    }

    fn string(&mut self, s: &str) {
        self.put_char('"');
        let mut buf = String::with_capacity(8);
        for c in s.chars() {
            if self.full {
                return;
            }
            buf.clear();
            push_escaped_char(&mut buf, c);
            for e in buf.chars() {
                self.put_char(e);
            }
        }
        self.put_char('"');
    }

    fn node(&mut self, node: &JsonNode) {
        if self.full {
            return;
        }
        match node {
            JsonNode::Null => self.put("null"),
            JsonNode::Bool(b) => self.put(if *b { "true" } else { "false" }),
            JsonNode::Num(Num::U(u)) => self.put(&u.to_string()),
            JsonNode::Num(Num::I(i)) => self.put(&i.to_string()),
            JsonNode::Num(Num::F(f)) => match serde_json::Number::from_f64(*f) {
                Some(n) => self.put(&n.to_string()),
                None => self.put("null"),
            },
            JsonNode::Str(s) => self.string(s),
            JsonNode::Deep { digest, len } => {
                self.put(&format!("<nested JSON, {len} bytes, fnv1a {digest:016x}>"))
            }
            JsonNode::Arr(items) => {
                self.put_char('[');
                for (i, item) in items.iter().enumerate() {
                    if self.full {
                        return;
                    }
                    if i > 0 {
                        self.put_char(',');
                    }
                    self.node(item);
                }
                self.put_char(']');
            }
            JsonNode::Obj(members) => {
                self.put_char('{');
                for (i, (k, item)) in members.iter().enumerate() {
                    if self.full {
                        return;
                    }
                    if i > 0 {
                        self.put_char(',');
                    }
                    self.string(k);
                    self.put_char(':');
                    self.node(item);
                }
                self.put_char('}');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::{CompareLimits, RulesConfig};

    #[derive(Default)]
    struct Case {
        name: &'static str,
        a: &'static str,
        b: &'static str,
        ignore: &'static [&'static str],
        unordered: &'static [&'static str],
        tolerance: Option<f64>,
        want: &'static [(
            &'static str,
            DiffKind,
            Option<&'static str>,
            Option<&'static str>,
        )],
    }

    use DiffKind::{Extra as E, Missing as M, TypeChanged as T, ValueChanged as V};

    fn run(a: &str, b: &str, rules: &CompareRules) -> (Vec<Difference>, bool) {
        let depth = rules.limits().max_json_depth;
        let x =
            parse(a.as_bytes(), depth, 1_000_000, &TreeMeter::new(usize::MAX)).expect("a parses");
        let y =
            parse(b.as_bytes(), depth, 1_000_000, &TreeMeter::new(usize::MAX)).expect("b parses");
        let mut sink = DiffSink::collect(
            rules.limits().max_differences,
            rules.limits().max_value_chars,
        );
        diff(&x, &y, rules, &mut sink);
        (sink.diffs, sink.cut)
    }

    fn rules_for(c: &Case) -> CompareRules {
        CompareRules::new(&RulesConfig {
            ignore_paths: c.ignore.iter().map(|s| s.to_string()).collect(),
            unordered_paths: c.unordered.iter().map(|s| s.to_string()).collect(),
            numeric_tolerance: c.tolerance,
            ..RulesConfig::default()
        })
        .expect("valid rules")
    }

    #[test]
    fn differ_table() {
        let cases = [
            Case {
                name: "equal, member order irrelevant",
                a: r#"{"a":1,"b":[1,2],"c":{"d":null}}"#,
                b: r#"{"c":{"d":null},"b":[1,2],"a":1}"#,
                ..Case::default()
            },
            Case {
                name: "value changed",
                a: r#"{"items":[{"price":1},{"price":2}]}"#,
                b: r#"{"items":[{"price":1},{"price":3}]}"#,
                want: &[("$.items[1].price", V, Some("2"), Some("3"))],
                ..Case::default()
            },
            Case {
                name: "type changed",
                a: r#"{"id":1,"ok":true,"x":null}"#,
                b: r#"{"id":"1","ok":"true","x":{}}"#,
                want: &[
                    ("$.id", T, Some("1"), Some("\"1\"")),
                    ("$.ok", T, Some("true"), Some("\"true\"")),
                    ("$.x", T, Some("null"), Some("{}")),
                ],
                ..Case::default()
            },
            Case {
                name: "missing and extra members",
                a: r#"{"a":1,"b":{"c":[1]}}"#,
                b: r#"{"a":1,"d":"new"}"#,
                want: &[
                    ("$.b", M, Some("{\"c\":[1]}"), None),
                    ("$.d", E, None, Some("\"new\"")),
                ],
                ..Case::default()
            },
            Case {
                name: "odd keys are quoted",
                a: r#"{"user":{"odd key":1,"0":2,"é":3,"a\"b":4}}"#,
                b: r#"{"user":{"odd key":2,"0":3,"é":4,"a\"b":5}}"#,
                want: &[
                    ("$.user[\"odd key\"]", V, Some("1"), Some("2")),
                    ("$.user[\"0\"]", V, Some("2"), Some("3")),
                    ("$.user[\"é\"]", V, Some("3"), Some("4")),
                    ("$.user[\"a\\\"b\"]", V, Some("4"), Some("5")),
                ],
                ..Case::default()
            },
            Case {
                name: "nested arrays, ordered, different lengths",
                a: r#"[[1,2],[3,4,5]]"#,
                b: r#"[[1,2,9],[3,5]]"#,
                want: &[
                    ("$[0][2]", E, None, Some("9")),
                    ("$[1][1]", V, Some("4"), Some("5")),
                    ("$[1][2]", M, Some("5"), None),
                ],
                ..Case::default()
            },
            Case {
                name: "ordered array reordered",
                a: r#"{"tags":["a","b"]}"#,
                b: r#"{"tags":["b","a"]}"#,
                want: &[
                    ("$.tags[0]", V, Some("\"a\""), Some("\"b\"")),
                    ("$.tags[1]", V, Some("\"b\""), Some("\"a\"")),
                ],
                ..Case::default()
            },
            Case {
                name: "unordered array reordered",
                a: r#"{"tags":["a","b","b"]}"#,
                b: r#"{"tags":["b","a","b"]}"#,
                unordered: &["$.tags"],
                ..Case::default()
            },
            Case {
                name: "unordered multiset counts matter",
                a: r#"{"tags":["a","b","b"]}"#,
                b: r#"{"tags":["b","a","a","c"]}"#,
                unordered: &["$.tags"],
                want: &[
                    ("$.tags[2]", M, Some("\"b\""), None),
                    ("$.tags[2]", E, None, Some("\"a\"")),
                    ("$.tags[3]", E, None, Some("\"c\"")),
                ],
                ..Case::default()
            },
            Case {
                name: "unordered objects with ignored ids",
                a: r#"{"items":[{"id":1,"n":"x"},{"id":2,"n":"y"}]}"#,
                b: r#"{"items":[{"id":9,"n":"y"},{"id":8,"n":"x"}]}"#,
                unordered: &["$.items"],
                ignore: &["$.items[*].id"],
                ..Case::default()
            },
            Case {
                name: "nested unordered via recursive pattern",
                a: r#"{"a":{"s":[[1,2],[3]]}}"#,
                b: r#"{"a":{"s":[[3],[2,1]]}}"#,
                unordered: &["$..s", "$..s[*]"],
                ..Case::default()
            },
            Case {
                name: "unordered with tolerance matches leftovers",
                a: r#"{"v":[1.0, 100.0]}"#,
                b: r#"{"v":[100.05, 1.0005]}"#,
                unordered: &["$.v"],
                tolerance: Some(0.001),
                ..Case::default()
            },
            Case {
                name: "numeric tolerance",
                a: r#"{"p":100.0,"q":100,"r":0,"s":-5}"#,
                b: r#"{"p":100.09,"q":101,"r":0.0,"s":-5.004}"#,
                tolerance: Some(0.001),
                want: &[("$.q", V, Some("100"), Some("101"))],
                ..Case::default()
            },
            Case {
                name: "no tolerance: 1 == 1.0 but 0.1 != 0.10001",
                a: r#"{"a":1,"b":0.1,"c":-0}"#,
                b: r#"{"a":1.0,"b":0.10001,"c":0}"#,
                want: &[("$.b", V, Some("0.1"), Some("0.10001"))],
                ..Case::default()
            },
            Case {
                name: "ignore exact, recursive and wildcard paths",
                a: r#"{"meta":{"timestamp":1,"v":1},"etag":"a","x":{"y":[{"etag":"b","id":1,"k":1}]},"items":[{"id":1,"p":1}]}"#,
                b: r#"{"meta":{"timestamp":2,"v":1},"etag":"c","x":{"y":[{"etag":"d","id":2,"k":2}]},"items":[{"id":5,"p":2}]}"#,
                ignore: &[
                    "$.meta.timestamp",
                    "$..etag",
                    "$.items[*].id",
                    "$.x.y[0].id",
                ],
                want: &[
                    ("$.x.y[0].k", V, Some("1"), Some("2")),
                    ("$.items[0].p", V, Some("1"), Some("2")),
                ],
                ..Case::default()
            },
            Case {
                name: "ignored missing members are not reported",
                a: r#"{"a":1,"ts":5}"#,
                b: r#"{"a":1,"extra_ts":6}"#,
                ignore: &["$.ts", "$.extra_ts"],
                ..Case::default()
            },
            Case {
                name: "ignore everything",
                a: r#"{"a":1}"#,
                b: r#"[2]"#,
                ignore: &["$"],
                ..Case::default()
            },
            Case {
                name: "root type change",
                a: r#"{"a":1}"#,
                b: r#"[1]"#,
                want: &[("$", T, Some("{\"a\":1}"), Some("[1]"))],
                ..Case::default()
            },
            Case {
                name: "duplicate keys: last wins",
                a: r#"{"a":1,"a":2}"#,
                b: r#"{"a":2}"#,
                ..Case::default()
            },
        ];
        for c in &cases {
            let (got, cut) = run(c.a, c.b, &rules_for(c));
            let want: Vec<Difference> = c
                .want
                .iter()
                .map(|(p, k, x, y)| Difference {
                    path: p.to_string(),
                    kind: *k,
                    primary: x.map(str::to_string),
                    other: y.map(str::to_string),
                })
                .collect();
            assert_eq!(got, want, "case: {}", c.name);
            assert!(!cut, "case: {}", c.name);
        }
    }

    #[test]
    fn large_unordered_arrays_and_objects() {
        let rules = CompareRules::new(&RulesConfig {
            unordered_paths: vec!["$.v".into(), "$.o".into()],
            ignore_paths: vec!["$.o[*].ts".into()],
            ..RulesConfig::default()
        })
        .expect("valid");
        // 40 numbers, reversed, one changed: matched by hash.
        let a: Vec<u32> = (0..40).collect();
        let mut b: Vec<u32> = (0..40).rev().collect();
        b[0] = 1000; // was 39
        let objs = |ids: &[u32], ts: u32| -> Vec<serde_json::Value> {
            ids.iter()
                .map(|i| serde_json::json!({"id": i, "ts": ts}))
                .collect()
        };
        let ids: Vec<u32> = (0..20).collect();
        let rev: Vec<u32> = (0..20).rev().collect();
        let x = serde_json::json!({"v": a, "o": objs(&ids, 1)}).to_string();
        let y = serde_json::json!({"v": b, "o": objs(&rev, 2)}).to_string();
        let (got, cut) = run(&x, &y, &rules);
        assert_eq!(
            got,
            vec![
                Difference {
                    path: "$.v[39]".into(),
                    kind: M,
                    primary: Some("39".into()),
                    other: None
                },
                Difference {
                    path: "$.v[0]".into(),
                    kind: E,
                    primary: None,
                    other: Some("1000".into())
                },
            ]
        );
        assert!(!cut);
        // With a tolerance, leftovers are matched pair by pair.
        let rules = CompareRules::new(&RulesConfig {
            unordered_paths: vec!["$".into()],
            numeric_tolerance: Some(0.01),
            ..RulesConfig::default()
        })
        .expect("valid");
        let a: Vec<f64> = (1..=30).map(f64::from).collect();
        let b: Vec<f64> = (1..=30).rev().map(|v| f64::from(v) * 1.001).collect();
        let (got, _) = run(
            &serde_json::to_string(&a).expect("json"),
            &serde_json::to_string(&b).expect("json"),
            &rules,
        );
        assert!(got.is_empty(), "{got:?}");
        // ... but not beyond the budget: then leftovers are reported.
        let tight = rules.clone().with_limits(CompareLimits {
            max_unordered_checks: 10,
            ..CompareLimits::default()
        });
        let (got, _) = run(
            &serde_json::to_string(&a).expect("json"),
            &serde_json::to_string(&b).expect("json"),
            &tight,
        );
        assert!(!got.is_empty());
    }

    #[test]
    fn big_objects_in_another_order() {
        // Built by hand: serde_json's map would sort the names.
        let a: Vec<String> = (0..30).map(|i| format!("\"k{i}\":1")).collect();
        let b: Vec<String> = (0..30)
            .rev()
            .filter(|&i| i != 3)
            .map(|i| format!("\"k{i}\":{}", if i == 7 { 2 } else { 1 }))
            .chain(std::iter::once("\"new\":0".to_string()))
            .collect();
        let (got, _) = run(
            &format!("{{{}}}", a.join(",")),
            &format!("{{{}}}", b.join(",")),
            &CompareRules::default(),
        );
        let paths: Vec<(&str, DiffKind)> = got.iter().map(|d| (d.path.as_str(), d.kind)).collect();
        assert_eq!(paths, vec![("$.k3", M), ("$.k7", V), ("$.new", E)]);
        // Repeated names in the same layout are compared occurrence by
        // occurrence; in another layout the last one counts.
        let (got, _) = run(
            r#"{"a":1,"a":2}"#,
            r#"{"a":3,"a":2}"#,
            &CompareRules::default(),
        );
        assert_eq!(got.len(), 1);
        let (got, _) = run(
            r#"{"a":1,"a":2,"b":0}"#,
            r#"{"b":0,"a":2}"#,
            &CompareRules::default(),
        );
        assert!(got.is_empty());
    }

    #[test]
    fn cut_off_at_the_max_count() {
        let rules = CompareRules::default().with_limits(CompareLimits {
            max_differences: 100,
            ..CompareLimits::default()
        });
        let a: Vec<u32> = (0..500).collect();
        let b: Vec<u32> = (1..501).collect();
        let (got, cut) = run(
            &serde_json::to_string(&a).expect("json"),
            &serde_json::to_string(&b).expect("json"),
            &rules,
        );
        assert_eq!(got.len(), 100);
        assert!(cut);
        assert_eq!(got[99].path, "$[99]");
        // Exactly at the max is not cut.
        let (got, cut) = run(
            "[1,2]",
            "[3,4]",
            &CompareRules::default().with_limits(CompareLimits {
                max_differences: 2,
                ..CompareLimits::default()
            }),
        );
        assert_eq!(got.len(), 2);
        assert!(!cut);
    }

    fn nested(depth: usize, leaf: &str) -> String {
        format!("{}{}{}", "[".repeat(depth), leaf, "]".repeat(depth))
    }

    #[test]
    fn depth_cap_reports_deeper_parts_by_digest() {
        let rules = CompareRules::default().with_limits(CompareLimits {
            max_json_depth: 3,
            ..CompareLimits::default()
        });
        let a = format!("{{\"a\":{{\"b\":{}}}}}", nested(4, "1"));
        let b = format!("{{\"a\":{{\"b\":{}}}}}", nested(4, "2"));
        let (got, _) = run(&a, &b, &rules);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].path, "$.a.b[0]");
        assert_eq!(got[0].kind, DiffKind::ValueChanged);
        let (d1, _) = compact_digest("[[[1]]]");
        assert_eq!(
            got[0].primary.as_deref(),
            Some(format!("<nested JSON, 7 bytes, fnv1a {d1:016x}>").as_str())
        );
        // Whitespace inside the capped part does not matter; string content does.
        let (got, _) = run(
            r#"{"a":{"b":[[ [ 1 , "x y" ] ]]}}"#,
            r#"{"a":{"b":[[[1,"x y"]]]}}"#,
            &rules,
        );
        assert!(got.is_empty(), "{got:?}");
        let (got, _) = run(r#"[[[[" a"]]]]"#, r#"[[[["a"]]]]"#, &rules);
        assert_eq!(got.len(), 1);
        // Scalars at the cap are still compared as values.
        let (got, _) = run("[[[1]]]", "[[[2]]]", &rules);
        assert_eq!(got[0].path, "$[0][0][0]");
        assert_eq!(got[0].primary.as_deref(), Some("1"));
    }

    #[test]
    fn very_deep_documents_do_not_blow_the_stack() {
        let depth = 200_000;
        let a = nested(depth, "1");
        let b = nested(depth, "2");
        let rules = CompareRules::default();
        let (got, _) = run(&a, &b, &rules);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].path, format!("${}", "[0]".repeat(100)));
        let objects = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
        let node = parse(
            objects.as_bytes(),
            100,
            1_000_000,
            &TreeMeter::new(usize::MAX),
        )
        .expect("parses");
        drop(node);
        // Unbalanced deep garbage is an error, not a crash.
        assert!(parse(
            "[".repeat(depth).as_bytes(),
            100,
            1_000_000,
            &TreeMeter::new(usize::MAX)
        )
        .is_err());
    }

    #[test]
    fn renderings_are_bounded() {
        let long = format!("{{\"s\":\"{}\"}}", "x".repeat(1000));
        let node = parse(long.as_bytes(), 10, 100, &TreeMeter::new(usize::MAX)).expect("parses");
        let r = render(&node, 20);
        assert_eq!(r, "{\"s\":\"xxxxxxxxxxxxxx…");
        assert_eq!(
            render(&JsonNode::Str("a\nb\u{1}".into()), 50),
            "\"a\\nb\\u0001\""
        );
        assert_eq!(render(&JsonNode::Num(Num::F(1e300)), 50), "1e+300");
        assert_eq!(render(&JsonNode::Num(Num::I(-3)), 50), "-3");
    }

    #[test]
    fn parse_errors_and_trailing_garbage() {
        assert!(parse(b"{\"a\":1} x", 10, 100, &TreeMeter::new(usize::MAX)).is_err());
        assert!(parse(b"", 10, 100, &TreeMeter::new(usize::MAX)).is_err());
        assert!(parse(b"  {\"a\":1}  \n", 10, 100, &TreeMeter::new(usize::MAX)).is_ok());
        // The value budget: the root and its members all count.
        assert!(parse(b"[1,2,3]", 10, 4, &TreeMeter::new(usize::MAX)).is_ok());
        let err = parse(b"[1,2,3,4]", 10, 4, &TreeMeter::new(usize::MAX)).expect_err("too many");
        assert_eq!(
            err.to_string(),
            "too many values to compare at line 1 column 7"
        );
    }

    #[test]
    fn the_tree_meter_counts_what_the_tree_allocates_and_refuses_past_it() {
        // 1,000 objects of three members, as an API answers a list.
        let doc = format!(
            "[{}]",
            (0..1000)
                .map(|i| format!(r#"{{"id":{i},"name":"item-{i}","tags":["a","b"]}}"#))
                .collect::<Vec<_>>()
                .join(",")
        );
        let meter = TreeMeter::new(usize::MAX);
        parse(doc.as_bytes(), 100, 1_000_000, &meter).expect("parses");
        let used = usize::MAX - meter.left();
        // At least the nodes themselves: 1,000 items, 3,000 members, 2,000
        // tag strings, and every name and string's bytes.
        let floor =
            1000 * size_of::<JsonNode>() + 3000 * size_of::<(Box<str>, JsonNode)>() + 2000 * 32;
        assert!(used > floor, "counted {used} bytes, floor {floor}");
        assert!(used > 4 * doc.len(), "a tree costs several times its text");
        // Just under what it needs: refused for memory, not as bad JSON;
        // and the meter is shared, so a second document gets only the rest.
        let meter = TreeMeter::new(used - 1);
        assert!(matches!(
            parse(doc.as_bytes(), 100, 1_000_000, &meter),
            Err(ParseError::Memory)
        ));
        let meter = TreeMeter::new(used + used / 2);
        parse(doc.as_bytes(), 100, 1_000_000, &meter).expect("fits once");
        assert!(matches!(
            parse(doc.as_bytes(), 100, 1_000_000, &meter),
            Err(ParseError::Memory)
        ));
        // Bad JSON stays a JSON error.
        assert!(matches!(
            parse(b"[1,", 100, 100, &TreeMeter::new(usize::MAX)),
            Err(ParseError::Json(_))
        ));
    }
}
