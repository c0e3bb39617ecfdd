//! The escaper for CPUs with AVX-512 VBMI2 (Intel Ice Lake and later, AMD
//! Zen 4 and later): 32 bytes at a time, whatever the number of escapes
//! among them, with no branch per escape.
//!
//! Of each 32 bytes, the quotes, backslashes and control characters with a
//! two-byte escape (`\b`, `\f`, `\n`, `\r`, `\t`) are found as a bit mask
//! `e`; the control characters are replaced by their escape's letter (a
//! 32-entry table, `vpermb`); then the 32 bytes are spread over
//! `32 + popcount(e)` bytes of a 64-byte register (`vpexpandb`), a gap
//! left before each escaped one, and the gaps are filled with backslashes.
//! The spreading mask comes from `e` by two BMI2 instructions: `pdep` puts
//! each byte's "needs a backslash" bit next to a "the byte itself" bit,
//! and `pext` keeps the slots in use. Chunks with nothing to escape are
//! not stored one by one: a run of them is copied with one `memcpy` when
//! the next chunk with an escape comes or the input ends (register stores
//! of a 4 KiB run of letters into a record's cold buffer cost more in the
//! proxy than `memcpy`'s `rep movsb`). A chunk with a control character
//! written `\u00XX`, or, when only ASCII is wanted, a byte that is not
//! ASCII, goes to the scalar escaper whole (32 bytes). The tail (under 32
//! bytes) is loaded with a mask (no byte past the input is read) and
//! escaped the same way.
//!
//! 0.5 µs for a 4 KiB JSON document against 4.5 µs for the scalar
//! escaper; 0.5–0.8 against 1.8–2.2 µs for text with a newline every 58
//! bytes; no slower on text with nothing to escape (a standalone loop,
//! docs/benchmarks.md "Recording, session 14").

use std::arch::x86_64::{
    __m256i, _mm256_cmpeq_epi8_mask, _mm256_cmplt_epu8_mask, _mm256_loadu_si256,
    _mm256_mask_mov_epi8, _mm256_maskz_loadu_epi8, _mm256_movepi8_mask, _mm256_permutexvar_epi8,
    _mm256_set1_epi8, _mm512_castsi256_si512, _mm512_mask_mov_epi8, _mm512_maskz_expand_epi8,
    _mm512_set1_epi8, _mm512_storeu_si512, _pdep_u64, _pext_u64,
};

use crate::scalar::{CHUNK, ESCAPE};
use crate::{room, scalar_chunk, Detected};

static AVAILABLE: Detected = Detected::new();

/// Whether the AVX-512 path can run here (looked at once).
#[inline]
pub(crate) fn available() -> bool {
    AVAILABLE.get(|| {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512vbmi")
            && std::arch::is_x86_feature_detected!("avx512vbmi2")
            && std::arch::is_x86_feature_detected!("bmi2")
            && std::arch::is_x86_feature_detected!("popcnt")
    })
}

/// As [`scalar::escape_from`], on a CPU where [`available`] is true.
pub(crate) fn escape_from(out: &mut Vec<u8>, bytes: &[u8], ascii_only: bool) -> Option<usize> {
    assert!(
        available(),
        "the AVX-512 escaper called on a CPU without it"
    );
    // SAFETY: the CPU has every target feature `escape_chunks` enables
    // (checked just above, by `is_x86_feature_detected!`).
    unsafe { escape_chunks(out, bytes, ascii_only) }
}

/// The letter of each control character's two-byte escape (`ESCAPE`'s
/// first 32 entries), 0 for those written `\u00XX`: a constant, so the
/// register is loaded, not built, on each call.
const LETTERS: [i8; CHUNK] = {
    let mut t = [0i8; CHUNK];
    let mut b = 0;
    while b < CHUNK {
        if ESCAPE[b] != b'u' {
            t[b] = ESCAPE[b] as i8;
        }
        b += 1;
    }
    t
};

/// Output bytes kept free past the end of `out` for every chunk: a chunk
/// writes a whole 64-byte register, of which up to 64 bytes are its own.
const SLACK: usize = 64;

/// # Safety
///
/// The CPU must have the target features enabled here.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi,avx512vbmi2,bmi2,popcnt")]
unsafe fn escape_chunks(out: &mut Vec<u8>, bytes: &[u8], ascii_only: bool) -> Option<usize> {
    /// A byte's slot for its backslash (even bits) and for itself (odd).
    const SELF: u64 = 0xAAAA_AAAA_AAAA_AAAA;
    const GAPS: u64 = 0x5555_5555_5555_5555;
    let quote = _mm256_set1_epi8(b'"' as i8);
    let backslash = _mm256_set1_epi8(b'\\' as i8);
    let space = _mm256_set1_epi8(0x20);
    let fill = _mm512_set1_epi8(b'\\' as i8);
    // SAFETY: reads the 32 bytes of `LETTERS`, an array of 32.
    let letters = unsafe { _mm256_loadu_si256(LETTERS.as_ptr().cast()) };
    let zero = _mm256_set1_epi8(0);
    room(out, bytes.len(), SLACK);
    // Input from `run` to `i` has nothing to escape and is not written yet:
    // it is copied in one `memcpy` when something else comes (whose
    // `rep movsb` writes a long run faster than registers stored one by
    // one, and without reading the cold lines it overwrites first).
    let mut run = 0;
    let mut i = 0;
    while i < bytes.len() {
        let len = (bytes.len() - i).min(CHUNK);
        // The bytes of this chunk that exist: a mask, so the tail reads
        // nothing past the input.
        let live: u32 = if len == CHUNK {
            u32::MAX
        } else {
            (1u32 << len) - 1
        };
        // SAFETY: the bytes at `i..i + len` are in `bytes`, and the masked
        // load reads no other (masked-off bytes are not accessed, and
        // cannot fault).
        let v: __m256i = unsafe { _mm256_maskz_loadu_epi8(live, bytes.as_ptr().add(i).cast()) };
        let control = _mm256_cmplt_epu8_mask(v, space) & live;
        let escaped =
            _mm256_cmpeq_epi8_mask(v, quote) | _mm256_cmpeq_epi8_mask(v, backslash) | control;
        let high = if ascii_only {
            _mm256_movepi8_mask(v)
        } else {
            0
        };
        if escaped | high == 0 {
            i += len;
            continue;
        }
        if run < i {
            out.extend_from_slice(&bytes[run..i]);
        }
        let mut v = v;
        if control | high != 0 {
            let letter = _mm256_permutexvar_epi8(v, letters);
            let long = control & _mm256_cmpeq_epi8_mask(letter, zero);
            if long | high != 0 {
                // Left to the scalar escaper, this chunk only.
                if let Some(stop) = scalar_chunk(out, bytes, (i, len), ascii_only, SLACK) {
                    return Some(stop);
                }
                i += len;
                run = i;
                continue;
            }
            v = _mm256_mask_mov_epi8(v, control, letter);
        }
        // Bit j of `keep` is set where output byte j is an input byte, clear
        // where it is a backslash.
        let slots = _pdep_u64(u64::from(escaped), GAPS) | (SELF & slot_mask(len));
        let keep = _pext_u64(SELF, slots);
        let spread = _mm512_maskz_expand_epi8(keep, _mm512_castsi256_si512(v));
        let spread = _mm512_mask_mov_epi8(spread, !keep, fill);
        let written = len + escaped.count_ones() as usize;
        // SAFETY: `room` left at least 2 * (bytes.len() - i) + SLACK bytes
        // of capacity past `out.len()` (the run copied since wrote no more
        // than the input it consumed), and this chunk's 64-byte store
        // needs SLACK; the `written` bytes made part of `out` are
        // initialised by it (`written` <= 2 * len <= 64).
        unsafe {
            let end = out.as_mut_ptr().add(out.len());
            _mm512_storeu_si512(end.cast(), spread);
            out.set_len(out.len() + written);
        }
        i += len;
        run = i;
    }
    out.extend_from_slice(&bytes[run..]);
    None
}

/// The slots of the first `len` bytes (two bits each).
#[inline(always)]
fn slot_mask(len: usize) -> u64 {
    if len >= 32 {
        u64::MAX
    } else {
        (1u64 << (2 * len)) - 1
    }
}
