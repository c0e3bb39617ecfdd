//! Every escaper this CPU can run (scalar; AVX2 and AVX-512 where it has
//! them) held to serde_json's output.

use super::{utf8_with, Escaper};

/// The escapers this CPU can run, by name.
fn escapers() -> Vec<(&'static str, Escaper)> {
    super::paths()
        .into_iter()
        .map(|p| (p.name, p.escape))
        .collect()
}

/// `s` escaped by every escaper, as a string and as a body, is what
/// serde_json writes between the quotes.
fn same_as_serde_json(s: &str) {
    let quoted = serde_json::to_string(s).unwrap();
    let want = &quoted.as_bytes()[1..quoted.len() - 1];
    for (name, escape) in escapers() {
        // After something already written, as in a record's line.
        let mut out = b"x".to_vec();
        assert_eq!(escape(&mut out, s.as_bytes(), false), None, "{name} {s:?}");
        assert_eq!(&out[1..], want, "{name}, as a string: {s:?}");
        let mut body = b"x".to_vec();
        assert!(utf8_with(escape, &mut body, s.as_bytes()), "{name} {s:?}");
        assert_eq!(&body[1..], want, "{name}, as a body: {s:?}");
    }
}

/// The characters whose escapes and neighbours are tested: each kind of
/// escape (two bytes, `\u00XX`), the bytes next to them in value, and
/// characters that are not ASCII (two, three and four bytes).
const SPECIALS: [char; 17] = [
    '"', '\\', '\n', '\t', '\r', '\u{8}', '\u{c}', '\u{1}', '\u{0}', '\u{1f}', ' ', '!', '#',
    '\u{7f}', 'é', '漢', '🦀',
];

#[test]
fn every_byte_alone_and_every_kind_of_string() {
    let mut cases: Vec<String> = vec![
        String::new(),
        "plain".into(),
        "quote \" and \\ back".into(),
        "é ü 漢字 🦀 \u{7f} \u{2028}".into(),
        (0u8..0x80).map(char::from).collect(),
        (0u8..0x80)
            .rev()
            .map(char::from)
            .collect::<String>()
            .repeat(5),
        "\"".repeat(200),
        "\\".repeat(77),
        "\n".repeat(65),
        "\u{1}".repeat(40),
    ];
    for c in SPECIALS {
        // Lengths: under a word, under a chunk, a chunk, a chunk and a
        // tail, several chunks.
        for len in [1, 9, 31, 32, 33, 70, 130] {
            for at in 0..len {
                let mut s: Vec<char> = "a".repeat(len).chars().collect();
                s[at] = c;
                cases.push(s.into_iter().collect());
            }
        }
    }
    for s in cases {
        same_as_serde_json(&s);
    }
}

#[test]
fn dense_escapes_are_written_as_serde_json_writes_them() {
    // Two specials side by side and one apart, at every position around
    // the words, the 32-byte chunks and the tail.
    for a in SPECIALS {
        for b in SPECIALS {
            for gap in 0..2 {
                for len in [3, 11, 40, 66] {
                    for at in 0..len - 1 - gap {
                        let mut s: Vec<char> = "a".repeat(len).chars().collect();
                        s[at] = a;
                        s[at + 1 + gap] = b;
                        same_as_serde_json(&s.iter().collect::<String>());
                    }
                }
            }
        }
    }
}

/// A fixed sequence of pseudo-random numbers (xorshift): the same
/// strings every run.
fn numbers(mut x: u64) -> impl FnMut() -> u64 {
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

#[test]
fn random_strings_are_written_as_serde_json_writes_them() {
    let mut next = numbers(0x9e37_79b9_7f4a_7c15);
    for round in 0..20_000 {
        // Mostly short; every tenth up to 400 characters (many chunks).
        let len = (next() % if round % 10 == 0 { 400 } else { 70 }) as usize;
        // Each string its own density of specials, from none to all.
        let density = next() % 5;
        let s: String = (0..len)
            .map(|_| match next() % 4 < density {
                true => SPECIALS[(next() % SPECIALS.len() as u64) as usize],
                false => 'a',
            })
            .collect();
        same_as_serde_json(&s);
    }
}

#[test]
fn a_json_document_is_written_as_serde_json_writes_it() {
    // A quote every few bytes, escaped quotes, newlines and tabs inside
    // its strings, as JSON text has them; then with raw ones and other
    // characters around it.
    let doc: String = (0..200)
        .map(|i| {
            format!(
                "{{\"id\":{i},\"name\":\"item \\\"{i}\\\"\\n\",\"price\":{i}.5,\"tags\":[\"a\",\"b\\t\"]}},"
            )
        })
        .collect();
    same_as_serde_json(&doc);
    same_as_serde_json(&format!("{doc}é\n\t{doc}\u{2028}\u{3}{doc}"));
}

#[test]
fn a_body_that_is_not_utf8_writes_nothing() {
    // A bad byte, a cut sequence and a lone continuation byte at every
    // position around the words and chunks, after ASCII and after good
    // UTF-8, with escapes around.
    for (name, escape) in escapers() {
        for bad in [&[0xffu8][..], &[0xe6, 0xbc], &[0x80], &[0xf0, 0x9f, 0xa6]] {
            for lead in ["", "é"] {
                for at in 0..70 {
                    let mut bytes = lead.as_bytes().to_vec();
                    bytes.extend_from_slice("a\"b\n".repeat(20).as_bytes());
                    bytes.splice(at + lead.len()..at + lead.len(), bad.iter().copied());
                    assert!(std::str::from_utf8(&bytes).is_err());
                    let mut out = b"kept".to_vec();
                    assert!(!utf8_with(escape, &mut out, &bytes), "{name} {bytes:?}");
                    assert_eq!(out, b"kept", "{name}");
                }
            }
        }
    }
}

#[test]
fn ascii_only_stops_at_the_first_byte_that_is_not_ascii() {
    for (name, escape) in escapers() {
        for at in 0..100 {
            let mut s = "\"a\\b\n".repeat(20);
            s.insert(at.min(s.len()), 'é');
            let stop = s.find('é').unwrap();
            let mut out = Vec::new();
            assert_eq!(
                escape(&mut out, s.as_bytes(), true),
                Some(stop),
                "{name} {s:?}"
            );
            let quoted = serde_json::to_string(&s[..stop]).unwrap();
            assert_eq!(out, &quoted.as_bytes()[1..quoted.len() - 1], "{name} {s:?}");
        }
    }
}

#[test]
fn the_public_functions_use_this_cpus_escaper() {
    let mut out = Vec::new();
    super::escape_str(&mut out, "a\"b");
    assert!(super::escape_utf8(&mut out, "\n\u{1}é".as_bytes()));
    assert!(!super::escape_utf8(&mut out, b"\xff"));
    assert_eq!(out, b"a\\\"b\\n\\u0001\xc3\xa9");
    // The CPUs this project builds and tests on have AVX2 (AMD Zen 3) or
    // AVX-512 VBMI2 (Zen 4); where one has it, its path must be the one
    // that can be chosen.
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512vbmi2")
            && std::arch::is_x86_feature_detected!("bmi2")
        {
            assert!(super::avx512::available());
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            assert!(super::avx2::available());
        }
    }
}
