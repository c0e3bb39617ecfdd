//! The framing guard on arbitrary client bytes: never a panic, the same
//! verdict however the bytes are split into reads, and nothing let through
//! that the guard itself would refuse (`guard::check_split_properties`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    shadowgate::proxy::guard::check_split_properties(data);
});
