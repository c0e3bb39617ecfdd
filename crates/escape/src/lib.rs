//! JSON string escaping (RFC 8259 §7) for shadowgate's records: the bytes
//! between a string's quotes, exactly as serde_json writes them (`\"`,
//! `\\`, `\b`, `\f`, `\n`, `\r`, `\t`, `\u00XX` for the other control
//! characters; everything else as it is).
//!
//! Why a crate of our own, and why apart from shadowgate's: a recorded
//! request's body is escaped on the serving thread, and for a JSON body
//! (a quote every 7 bytes or so) that was the largest part of recording's
//! cost: 5.9 µs per 4 KiB POST in the proxy's profile with the word-at-a-
//! time escaper of [`scalar`]. Neither serde_json (4.4–7.3 µs for that
//! document) nor `json-escape-simd` (3.9 µs; it takes each escape in turn)
//! does better, as each pays per escape. With AVX-512 VBMI2 the escapes of
//! 32 bytes are written at once, whatever their number ([`avx512`]): 0.5 µs
//! for the same document (docs/benchmarks.md, "Recording, session 14").
//! Without it, with AVX2 (AMD Zen 1–3, Intel before Ice Lake), each 8
//! bytes are written by one shuffle ([`avx2`]): 0.94 µs against the scalar
//! escaper's 5.7 on a Zen 3 ("Recording, session 15").
//! That needs `unsafe` (the intrinsics load and store through pointers),
//! which shadowgate's own crate forbids; it is kept here, one module per
//! instruction set, with the tests that hold every path to serde_json's
//! output.
//!
//! The path is chosen at run time, once, by what the CPU has
//! (`is_x86_feature_detected!`): AVX-512 VBMI2, else AVX2, else the scalar
//! escaper, so one binary serves every x86-64 and other architectures.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod scalar;

/// Appends `s`'s characters as JSON string contents (no quotes).
pub fn escape_str(out: &mut Vec<u8>, s: &str) {
    escape_from(out, s.as_bytes(), false);
}

/// Appends `bytes` as JSON string contents when they are UTF-8 (true);
/// when they are not, returns false and leaves `out` as it was. One pass
/// for the usual ASCII body: the test for escapes also looks at the high
/// bits, and only from the first byte that is not ASCII on is the rest
/// checked as UTF-8 (a separate `from_utf8` pass over a 4 KiB body was
/// 0.6 µs a record, `perf`, shadowgate's `bench/record.py`).
pub fn escape_utf8(out: &mut Vec<u8>, bytes: &[u8]) -> bool {
    utf8_with(escape_from, out, bytes)
}

/// Whether the CPU has what a vector path needs, looked at once: 0 not
/// yet, 1 no, 2 yes.
#[cfg(target_arch = "x86_64")]
struct Detected(std::sync::atomic::AtomicU8);

#[cfg(target_arch = "x86_64")]
impl Detected {
    const fn new() -> Self {
        Detected(std::sync::atomic::AtomicU8::new(0))
    }

    /// `detect()`'s answer, asked on the first call only.
    #[inline]
    fn get(&self, detect: fn() -> bool) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        match self.0.load(Relaxed) {
            0 => {
                let yes = detect();
                self.0.store(if yes { 2 } else { 1 }, Relaxed);
                yes
            }
            n => n == 2,
        }
    }
}

/// Makes room in `out` for `rest` more input bytes at two output bytes
/// each (the most a vector path writes for a chunk it takes) and `slack`
/// bytes past them (its last register store).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn room(out: &mut Vec<u8>, rest: usize, slack: usize) {
    out.reserve(2 * rest + slack);
}

/// A chunk a vector path leaves to the scalar escaper (a control
/// character written `\u00XX`, or a byte that is not ASCII):
/// `bytes[at..at + len]` escaped, then room made again for the rest.
/// `Some` index where it stopped, as [`escape_from`] returns.
#[cfg(target_arch = "x86_64")]
fn scalar_chunk(
    out: &mut Vec<u8>,
    bytes: &[u8],
    (at, len): (usize, usize),
    ascii_only: bool,
    slack: usize,
) -> Option<usize> {
    if let Some(stop) = scalar::escape_from(out, &bytes[at..at + len], ascii_only) {
        return Some(at + stop);
    }
    room(out, bytes.len() - at - len, slack);
    None
}

/// An escaper: [`escape_from`]'s signature.
type Escaper = fn(&mut Vec<u8>, &[u8], bool) -> Option<usize>;

/// [`escape_utf8`] by the escaper `escape`.
#[inline(always)]
fn utf8_with(escape: Escaper, out: &mut Vec<u8>, bytes: &[u8]) -> bool {
    let mark = out.len();
    let Some(at) = escape(out, bytes, true) else {
        return true;
    };
    // All before `at` is ASCII: the whole is UTF-8 when the rest is.
    match std::str::from_utf8(&bytes[at..]) {
        Ok(rest) => {
            escape(out, rest.as_bytes(), false);
            true
        }
        Err(_) => {
            out.truncate(mark);
            false
        }
    }
}

/// Writes `bytes` escaped into `out`, by the fastest path this CPU has.
/// With `ascii_only`, stops at the first byte that is not ASCII and
/// returns its index (all before it written); otherwise such bytes are
/// copied as they are.
#[inline]
fn escape_from(out: &mut Vec<u8>, bytes: &[u8], ascii_only: bool) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    if avx512::available() {
        return avx512::escape_from(out, bytes, ascii_only);
    }
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        return avx2::escape_from(out, bytes, ascii_only);
    }
    scalar::escape_from(out, bytes, ascii_only)
}

/// One of the escapers this CPU can run, for benches that compare them
/// (the `speed` example); shadowgate itself calls [`escape_utf8`], which
/// picks the fastest.
#[doc(hidden)]
#[derive(Clone, Copy)]
pub struct Path {
    /// `scalar`, `avx2` or `avx512`.
    pub name: &'static str,
    escape: Escaper,
}

impl Path {
    /// [`escape_utf8`] by this escaper.
    pub fn escape_utf8(&self, out: &mut Vec<u8>, bytes: &[u8]) -> bool {
        utf8_with(self.escape, out, bytes)
    }
}

/// The escapers this CPU can run, the scalar one first.
#[doc(hidden)]
pub fn paths() -> Vec<Path> {
    let path = |name, escape| Path { name, escape };
    let mut all = vec![path("scalar", scalar::escape_from as Escaper)];
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        all.push(path("avx2", avx2::escape_from));
    }
    #[cfg(target_arch = "x86_64")]
    if avx512::available() {
        all.push(path("avx512", avx512::escape_from));
    }
    all
}

#[cfg(test)]
mod tests;
