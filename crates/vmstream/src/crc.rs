//! CRC32C (Castagnoli, the iSCSI polynomial), the checksum of every header and
//! record (`docs/format.md` §3).
//!
//! Computed by `crc-fast`, which picks the widest carry-less multiply the CPU
//! has at run time (AVX-512 VPCLMULQDQ, PCLMULQDQ, or Arm PMULL) and falls back
//! to tables elsewhere.

use crc_fast::{CrcAlgorithm, Digest};

/// CRC32C of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    crc_fast::crc32_iscsi(data)
}

/// An incremental CRC32C over data that arrives in pieces: the result equals
/// [`crc32c`] of the pieces joined.
#[derive(Clone)]
pub struct Crc32c(Digest);

impl Crc32c {
    /// An empty checksum.
    pub fn new() -> Crc32c {
        Crc32c(Digest::new(CrcAlgorithm::Crc32Iscsi))
    }

    /// Adds `data`.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The checksum of everything added so far.
    pub fn finish(&self) -> u32 {
        // CRC32C's value fits 32 bits; the digest reports it widened.
        self.0.finalize() as u32
    }
}

impl Default for Crc32c {
    fn default() -> Crc32c {
        Crc32c::new()
    }
}

impl std::fmt::Debug for Crc32c {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Crc32c({:#010x})", self.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_values() {
        // The catalogue check value of CRC-32/ISCSI, and RFC 3720's 32 zero bytes.
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn pieces_equal_whole() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        for split in [0, 1, 7, 64, 4096, 9999, 10_000] {
            let mut c = Crc32c::new();
            c.update(&data[..split]);
            c.update(&data[split..]);
            assert_eq!(c.finish(), crc32c(&data), "split at {split}");
        }
    }
}
