//! The framing guard on arbitrary client bytes: never a panic, the same
//! verdict however the bytes are split into reads, and nothing let through
//! that the guard itself would refuse.
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
        assert_eq!(split.refused, whole.refused, "step {step}");
        if whole.refused {
            // Streamed, a chunked body's checked chunks go on before a later
            // bad one cuts the stream (by design: bodies are not held back).
            // Given at once, the bad chunk is seen first. Never less.
            assert!(split.released >= whole.released, "step {step}");
        } else {
            assert_eq!(split, whole, "step {step}");
        }
        // Whatever was let through is itself acceptable.
        let prefix = &bytes[..split.released];
        assert!(!inspect(prefix, prefix.len().max(1)).refused, "step {step}");
    }
});
