//! The escaper for x86-64 CPUs with AVX2 but not AVX-512 VBMI2 (AMD Zen 1
//! to Zen 3, Intel Haswell to Comet Lake: most of the machines a proxy
//! runs on): 32 bytes are tested at once, and every 8 of them are written
//! with one shuffle, whatever the number of escapes among them.
//!
//! Of each 32 bytes, the quotes, backslashes and control characters are
//! found as a bit mask `e` (three compares); the control characters with a
//! two-byte escape (`\b`, `\f`, `\n`, `\r`, `\t`) are replaced by their
//! escape's letter (a 16-entry table, `vpshufb`). Then each 8 bytes go
//! into a 16-byte register beside 8 backslashes, and one `pshufb` picks
//! the output: each byte, preceded by a backslash where its bit of `e` is
//! set. The 256 shuffles (one per 8-bit mask) are a 4 KiB table built at
//! compile time; each 8 bytes store 16 and advance by `8 + popcount`.
//! As in the AVX-512 path, runs of chunks with nothing to escape are
//! copied with one `memcpy`, and a chunk with a control character written
//! `\u00XX` (or, when only ASCII is wanted, a byte that is not ASCII) goes
//! to the scalar escaper whole. The tail (under 32 bytes: every header
//! value) goes to the scalar escaper too, which takes short strings as one
//! padded word each.
//!
//! Why: a machine without AVX-512 (this project's bench machine was an AMD
//! Zen 3 in session 15) escaped a 4 KiB JSON document with the scalar
//! escaper in 5.7 µs, the largest part of recording such a POST (6.8 µs
//! of escaping per request in `bench/record_profile.py --scenario json`).
//! Figures in docs/benchmarks.md, "Recording, session 15".

use std::arch::x86_64::{
    __m128i, _mm256_blendv_epi8, _mm256_castsi256_si128, _mm256_cmpeq_epi8,
    _mm256_extracti128_si256, _mm256_loadu_si256, _mm256_min_epu8, _mm256_movemask_epi8,
    _mm256_or_si256, _mm256_set1_epi8, _mm256_shuffle_epi8, _mm_loadu_si128, _mm_set1_epi8,
    _mm_shuffle_epi8, _mm_storeu_si128, _mm_unpackhi_epi64, _mm_unpacklo_epi64,
};

use crate::scalar::{self, CHUNK, ESCAPE};
use crate::{room, scalar_chunk, Detected};

static AVAILABLE: Detected = Detected::new();

/// Whether the AVX2 path can run here (looked at once).
#[inline]
pub(crate) fn available() -> bool {
    AVAILABLE.get(|| {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("popcnt")
    })
}

/// As [`scalar::escape_from`], on a CPU where [`available`] is true.
pub(crate) fn escape_from(out: &mut Vec<u8>, bytes: &[u8], ascii_only: bool) -> Option<usize> {
    assert!(available(), "the AVX2 escaper called on a CPU without it");
    // SAFETY: the CPU has every target feature `escape_chunks` enables
    // (checked just above, by `is_x86_feature_detected!`).
    unsafe { escape_chunks(out, bytes, ascii_only) }
}

/// The letter of the two-byte escape of each byte below 0x10 (`ESCAPE`'s
/// first 16 entries), 0 for those written `\u00XX`; twice, once for each
/// 16-byte lane of `vpshufb`.
const LETTERS: [u8; 32] = {
    let mut t = [0u8; 32];
    let mut b = 0;
    while b < 32 {
        let e = ESCAPE[b % 16];
        if e != b'u' {
            t[b] = e;
        }
        b += 1;
    }
    t
};

/// Input bytes written by one shuffle.
const GROUP: usize = 8;

/// Where a shuffle's source register holds a backslash: its upper half.
const BACKSLASH: u8 = GROUP as u8;

/// For each mask of the 8 bytes of a group that need a backslash, the
/// `pshufb` indices that write them: each byte (index 0 to 7), after a
/// backslash (index 8) where its bit is set; the unused end zeroed (0x80).
const SHUFFLES: [[u8; 2 * GROUP]; 256] = {
    let mut t = [[0x80u8; 2 * GROUP]; 256];
    let mut mask = 0;
    while mask < 256 {
        let mut at = 0;
        let mut j = 0;
        while j < GROUP {
            if mask & (1 << j) != 0 {
                t[mask][at] = BACKSLASH;
                at += 1;
            }
            t[mask][at] = j as u8;
            at += 1;
            j += 1;
        }
        mask += 1;
    }
    t
};

/// Output bytes kept free past the end of `out` for every group: a group
/// writes a whole 16-byte register.
const SLACK: usize = 2 * GROUP;

/// # Safety
///
/// The CPU must have the target features enabled here.
#[target_feature(enable = "avx2,popcnt")]
unsafe fn escape_chunks(out: &mut Vec<u8>, bytes: &[u8], ascii_only: bool) -> Option<usize> {
    let quote = _mm256_set1_epi8(b'"' as i8);
    let backslash = _mm256_set1_epi8(b'\\' as i8);
    let last_control = _mm256_set1_epi8(0x1f);
    let last_small = _mm256_set1_epi8(0x0f);
    let zero = _mm256_set1_epi8(0);
    let backslashes = _mm_set1_epi8(b'\\' as i8);
    // SAFETY: reads the 32 bytes of `LETTERS`, an array of 32.
    let letters = unsafe { _mm256_loadu_si256(LETTERS.as_ptr().cast()) };
    room(out, bytes.len(), SLACK);
    // Input from `run` to `i` has nothing to escape and is not written yet
    // (copied in one `memcpy` when something else comes).
    let mut run = 0;
    let mut i = 0;
    while i + CHUNK <= bytes.len() {
        // SAFETY: the 32 bytes at `i` are in `bytes` (the loop's condition).
        let v = unsafe { _mm256_loadu_si256(bytes.as_ptr().add(i).cast()) };
        // Unsigned `v <= 0x1f`: the minimum is `v` itself.
        let control = _mm256_cmpeq_epi8(_mm256_min_epu8(v, last_control), v);
        let escaped = _mm256_or_si256(
            _mm256_or_si256(_mm256_cmpeq_epi8(v, quote), _mm256_cmpeq_epi8(v, backslash)),
            control,
        );
        let mask = _mm256_movemask_epi8(escaped) as u32;
        let high = if ascii_only {
            _mm256_movemask_epi8(v) as u32
        } else {
            0
        };
        if mask | high == 0 {
            i += CHUNK;
            continue;
        }
        if run < i {
            out.extend_from_slice(&bytes[run..i]);
        }
        let controls = _mm256_movemask_epi8(control) as u32;
        let mut v = v;
        if controls | high != 0 {
            // A letter for the bytes below 0x10 that have one (the lookup
            // reads the low nibble; 0 for a byte with its high bit set).
            let letter = _mm256_shuffle_epi8(letters, v);
            let small = _mm256_cmpeq_epi8(_mm256_min_epu8(v, last_small), v);
            let lettered = !(_mm256_movemask_epi8(_mm256_cmpeq_epi8(letter, zero)) as u32)
                & _mm256_movemask_epi8(small) as u32;
            let long = controls & !lettered;
            if long | high != 0 {
                // Left to the scalar escaper, this chunk only.
                if let Some(stop) = scalar_chunk(out, bytes, (i, CHUNK), ascii_only, SLACK) {
                    return Some(stop);
                }
                i += CHUNK;
                run = i;
                continue;
            }
            v = _mm256_blendv_epi8(v, letter, control);
        }
        let halves = [_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v)];
        for (h, half) in halves.into_iter().enumerate() {
            // Each 8 bytes in the low half of a register whose high half
            // is backslashes.
            let groups = [
                _mm_unpacklo_epi64(half, backslashes),
                _mm_unpackhi_epi64(half, backslashes),
            ];
            for (g, group) in groups.into_iter().enumerate() {
                let bits = (mask >> (16 * h + GROUP * g)) & 0xff;
                // SAFETY: reads the 16 bytes of one of `SHUFFLES`' entries
                // (`bits` < 256).
                let shuffle: __m128i =
                    unsafe { _mm_loadu_si128(SHUFFLES[bits as usize].as_ptr().cast()) };
                let written = GROUP + bits.count_ones() as usize;
                // SAFETY: `room` left at least 2 * (bytes.len() - i) +
                // SLACK bytes of capacity past the output of the input
                // before `i`, and this chunk writes at most 2 * 32 bytes,
                // each group's 16-byte store at most 16 past its own
                // output (SLACK); the `written` bytes made part of `out`
                // are initialised by the store (`written` <= 16).
                unsafe {
                    let end = out.as_mut_ptr().add(out.len());
                    _mm_storeu_si128(end.cast(), _mm_shuffle_epi8(group, shuffle));
                    out.set_len(out.len() + written);
                }
            }
        }
        i += CHUNK;
        run = i;
    }
    out.extend_from_slice(&bytes[run..i]);
    // The tail: under 32 bytes.
    scalar::escape_from(out, &bytes[i..], ascii_only).map(|at| i + at)
}
