//! The escaper for every x86-64 and other CPUs: 8 bytes at a time as one
//! word (SWAR), no `unsafe`. Used whole where the CPU lacks AVX-512 VBMI2,
//! and for the chunks the AVX-512 path does not take (a control character
//! written `\u00XX`, or the first byte that is not ASCII).

/// How a byte is written in a JSON string (RFC 8259 §7), as serde_json
/// writes it: 0 as it is; otherwise the letter after the backslash
/// (`\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`), or `u` for the other
/// control characters (`\u00XX`).
pub(crate) const ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = b'u';
        i += 1;
    }
    t[0x08] = b'b';
    t[0x0c] = b'f';
    t[b'\n' as usize] = b'n';
    t[b'\r' as usize] = b'r';
    t[b'\t' as usize] = b't';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
};

/// Bytes checked together for anything to escape.
const WORD: usize = 8;

/// Bytes checked before one branch: four words, whose tests LLVM runs side
/// by side. 0.35 µs per 4 KiB against 0.85 µs for a branch per word
/// (a standalone loop over 4 KiB of plain text, `rustc -O`).
pub(crate) const CHUNK: usize = 32;

/// The high bit of each byte in a word whose bytes must be escaped (or,
/// with `high` set to every byte's high bit, that is not ASCII), by the
/// "has a byte less than n / equal to c" bit tricks (exact as a yes or no
/// for n <= 128). 0 when there is none.
fn word_flags(x: u64, high: u64) -> u64 {
    const ONES: u64 = u64::from_ne_bytes([1; WORD]);
    const HIGH: u64 = ONES << 7;
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let control = x.wrapping_sub(ONES * 0x20) & !x & HIGH;
    control
        | has_zero(x ^ (ONES * u64::from(b'"')))
        | has_zero(x ^ (ONES * u64::from(b'\\')))
        | (x & high)
}

/// Whether any byte of `chunk` must be looked at (`word_flags`), with no
/// branch between its words.
fn chunk_flags(chunk: &[u8; CHUNK], high: u64) -> bool {
    let mut acc = 0;
    for word in chunk.chunks_exact(WORD) {
        if let Ok(word) = <[u8; WORD]>::try_from(word) {
            acc |= word_flags(u64::from_ne_bytes(word), high);
        }
    }
    acc != 0
}

/// Appends `bytes[from..to]`. A short run, the usual one between two
/// escapes in a JSON body, is one fixed-size 16-byte copy cut back rather
/// than a `memcpy` call of its length.
#[inline(always)]
fn run(out: &mut Vec<u8>, bytes: &[u8], from: usize, to: usize) {
    if to - from < 16 {
        if let Some(Ok(block)) = bytes.get(from..from + 16).map(<&[u8; 16]>::try_from) {
            out.extend_from_slice(block);
            out.truncate(out.len() - (16 - (to - from)));
            return;
        }
    }
    out.extend_from_slice(&bytes[from..to]);
}

/// Writes `bytes` escaped into `out`. With `ascii_only`, stops at the
/// first byte that is not ASCII and returns its index (all before it
/// written); otherwise such bytes are copied as they are.
///
/// Chunks with nothing to escape are skipped whole and copied later in one
/// run; in a chunk that has something, each word's flagged bytes are
/// visited through its flag bits (no loop over its other bytes), and the
/// runs between them are copied by `run`. A 4 KiB JSON document (a quote
/// every 7 bytes) is escaped in 0.9–1.25 ns a byte against 1.6–2.8 for a
/// byte loop over each flagged word, which this replaced, and 1.1–1.6 for
/// serde_json; plain text stays at 0.09–0.15 (a standalone loop, `rustc
/// -O`, docs/benchmarks.md "Recording, session 13"). The AVX-512 path
/// ([`crate::avx512`]) hands it the chunks it does not take.
#[inline(always)]
pub(crate) fn escape_from(out: &mut Vec<u8>, bytes: &[u8], ascii_only: bool) -> Option<usize> {
    // The word's high bits are looked at only for `ascii_only`.
    let high = if ascii_only {
        u64::from_ne_bytes([0x80; WORD])
    } else {
        0
    };
    out.reserve(bytes.len());
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        // Skip whole chunks with nothing to look at.
        if let Some(Ok(chunk)) = bytes.get(i..i + CHUNK).map(<&[u8; CHUNK]>::try_from) {
            if !chunk_flags(chunk, high) {
                i += CHUNK;
                continue;
            }
        }
        // Something in the next chunk, or less than a chunk left: word by
        // word through it. The last word of a string shorter than a word
        // is padded with spaces (nothing to escape), so a short string is
        // one test, not a byte loop.
        let stop = (i + CHUNK).min(bytes.len());
        while i < stop {
            let (word, len) = match bytes.get(i..i + WORD).map(<[u8; WORD]>::try_from) {
                Some(Ok(word)) => (word, WORD),
                _ => {
                    let rest = &bytes[i..];
                    let mut word = [b' '; WORD];
                    word[..rest.len()].copy_from_slice(rest);
                    (word, rest.len())
                }
            };
            // The flag bits (`word_flags`), in the order of the bytes; none
            // for the padding (a borrow from a control character before it
            // could flag a space there).
            let mut flags =
                u64::from_le_bytes(word_flags(u64::from_ne_bytes(word), high).to_ne_bytes());
            if len < WORD {
                flags &= (1u64 << (8 * len)) - 1;
            }
            while flags != 0 {
                let pos = i + (flags.trailing_zeros() / 8) as usize;
                flags &= flags - 1;
                let b = bytes[pos];
                if ascii_only && !b.is_ascii() {
                    run(out, bytes, start, pos);
                    return Some(pos);
                }
                // The flags may also mark a byte next to one that needs
                // escaping (the bit tricks are exact per word, not per
                // byte): the table decides.
                let e = ESCAPE[usize::from(b)];
                if e != 0 {
                    run(out, bytes, start, pos);
                    if e == b'u' {
                        escape_byte(out, b);
                    } else {
                        out.extend_from_slice(&[b'\\', e]);
                    }
                    start = pos + 1;
                }
            }
            i += len;
        }
    }
    run(out, bytes, start, bytes.len());
    None
}

/// The escape of one byte, as serde_json writes it.
fn escape_byte(out: &mut Vec<u8>, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let short = match b {
        b'"' => b'"',
        b'\\' => b'\\',
        0x08 => b'b',
        0x0c => b'f',
        b'\n' => b'n',
        b'\r' => b'r',
        b'\t' => b't',
        _ => {
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]);
            return;
        }
    };
    out.extend_from_slice(&[b'\\', short]);
}
