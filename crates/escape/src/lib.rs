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
//! That needs `unsafe` (the intrinsics load and store through pointers),
//! which shadowgate's own crate forbids; it is kept here, in one module,
//! with the tests that hold both paths to serde_json's output.
//!
//! The AVX-512 path is chosen at run time, once, when the CPU has it
//! (`is_x86_feature_detected!`); elsewhere the scalar escaper runs, so one
//! binary serves every x86-64 and other architectures.

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

#[cfg(test)]
mod tests;
