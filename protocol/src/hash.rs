//! The one non-cryptographic hash of the project: 64-bit FNV-1a. Stable
//! across versions and platforms, so anything placed by it (partitions over
//! servers and disks, keys over partitions) lands in the same place every
//! run.

const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a over `bytes`.
pub fn fnv1a64(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes
        .into_iter()
        .fold(OFFSET_BASIS, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

#[cfg(test)]
mod tests {
    #[test]
    fn matches_the_published_test_vectors() {
        // From the FNV reference (draft-eastlake-fnv).
        assert_eq!(super::fnv1a64(*b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(super::fnv1a64(*b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(super::fnv1a64(*b"foobar"), 0x8594_4171_f739_67e8);
    }
}
