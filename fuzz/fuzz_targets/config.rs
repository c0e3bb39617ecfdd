//! The configuration parser and validator on arbitrary text: errors, never
//! a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(raw) = shadowgate::config::parse_text("fuzz.yaml", text) {
        let _ = shadowgate::config::validate(vec![("fuzz.yaml".to_string(), raw)]);
    }
});
