//! The mirror copies' HTTP/1.1 client (`mirror::wire`) reading arbitrary
//! server bytes: never a panic; the same outcome, body, fields and trailers
//! whether the answer arrives in large reads or in small pieces; a body
//! never longer than what arrived (`wire::check_split_properties`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    shadowgate::mirror::wire::check_split_properties(data);
});
