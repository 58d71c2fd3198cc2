//! FNV-1a-64 (Fowler–Noll–Vo), the one implementation: the device's CHECKSUM job, the guest
//! programs that check it on the CPU, and the image builder's content hash.

/// The FNV-1a-64 offset basis: the hash of no bytes.
pub const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
/// The FNV-1a-64 prime.
pub const PRIME: u64 = 0x0100_0000_01b3;

/// Continues the hash `hash` over `bytes` (start from [`OFFSET_BASIS`]).
pub fn update(hash: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(hash, |h, b| (h ^ u64::from(*b)).wrapping_mul(PRIME))
}

/// The FNV-1a-64 hash of `bytes`.
pub fn hash(bytes: &[u8]) -> u64 {
    update(OFFSET_BASIS, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_vectors() {
        // From the FNV reference test suite.
        assert_eq!(hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(hash(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn updating_in_pieces_is_hashing_the_whole() {
        assert_eq!(update(hash(b"foo"), b"bar"), hash(b"foobar"));
    }
}
