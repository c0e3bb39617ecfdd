//! The record escaper (crates/escape, the AVX-512 path on a CPU that has
//! it) on arbitrary bytes: as a body, exactly serde_json's string contents
//! when the bytes are UTF-8, and nothing written when they are not; as a
//! string, the UTF-8 prefix the same way. Never a panic, never a read or
//! write out of bounds (run under AddressSanitizer).
#![no_main]

use libfuzzer_sys::fuzz_target;

fn contents(s: &str) -> Vec<u8> {
    let quoted = serde_json::to_string(s).unwrap();
    quoted.as_bytes()[1..quoted.len() - 1].to_vec()
}

fuzz_target!(|data: &[u8]| {
    let mut body = b"x".to_vec();
    let kept = shadowgate_escape::escape_utf8(&mut body, data);
    match std::str::from_utf8(data) {
        Ok(s) => {
            assert!(kept);
            assert_eq!(body[1..], contents(s)[..]);
        }
        Err(e) => {
            assert!(!kept);
            assert_eq!(body, b"x");
            let prefix = std::str::from_utf8(&data[..e.valid_up_to()]).unwrap();
            let mut out = Vec::new();
            shadowgate_escape::escape_str(&mut out, prefix);
            assert_eq!(out, contents(prefix));
        }
    }
});
