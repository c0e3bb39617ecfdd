//! The one digest of the differ: 64-bit FNV-1a (the `fnv` crate), a fast,
//! non-cryptographic digest for reports and equality shortcuts (never for
//! security). Its values are shown in stored differences and must not
//! change.

use std::hash::Hasher;

use fnv::FnvHasher;

/// 64-bit FNV-1a of `bytes`.
pub fn digest(bytes: &[u8]) -> u64 {
    let mut hasher = FnvHasher::default();
    hasher.write(bytes);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_known_values() {
        assert_eq!(digest(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(digest(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(digest(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
