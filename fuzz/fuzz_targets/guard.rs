//! The framing guard on arbitrary client bytes: never a panic, and the
//! verdict (bytes let through, refused or not) does not depend on how the
//! bytes were split into reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shadowgate::proxy::guard::inspect;

fuzz_target!(|data: &[u8]| {
    let Some((&step, bytes)) = data.split_first() else {
        return;
    };
    let whole = inspect(bytes, bytes.len().max(1));
    assert!(whole.released <= bytes.len());
    for step in [1, usize::from(step % 61) + 2] {
        let split = inspect(bytes, step);
        assert_eq!(split, whole, "step {step}");
    }
});
