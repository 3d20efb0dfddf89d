//! A bounds-checked little-endian reader over a byte slice.
//!
//! Every read checks the remaining length first and reports the absolute stream
//! offset of a short read, so a lying length can never panic or over-read.

use crate::error::{Error, Result};

/// A position in a byte slice that knows its absolute offset in the stream.
#[derive(Debug, Clone)]
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    base: u64,
}

impl<'a> Cursor<'a> {
    /// A cursor over `buf`, whose first byte sits at stream offset `base`.
    pub(crate) fn new(buf: &'a [u8], base: u64) -> Cursor<'a> {
        Cursor { buf, pos: 0, base }
    }

    /// Absolute stream offset of the next byte.
    pub(crate) fn offset(&self) -> u64 {
        self.base.saturating_add(self.pos as u64)
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// Takes the next `n` bytes.
    pub(crate) fn bytes(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n);
        match end.and_then(|end| self.buf.get(self.pos..end)) {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => Err(Error::truncated(what, n, self.remaining()).at_offset(self.offset())),
        }
    }

    /// Takes the rest of the input.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let s = self.buf.get(self.pos..).unwrap_or_default();
        self.pos = self.buf.len();
        s
    }

    pub(crate) fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.bytes(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    pub(crate) fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }

    pub(crate) fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// An unsigned LEB128 integer of at most 10 bytes, in its shortest form.
    pub(crate) fn varint(&mut self, what: &str) -> Result<u64> {
        let start = self.offset();
        let mut value: u64 = 0;
        for i in 0..10u32 {
            let byte = self.u8(what)?;
            let low = u64::from(byte & 0x7f);
            if i == 9 && byte > 1 {
                return Err(
                    Error::malformed(format!("{what}: varint overflows 64 bits")).at_offset(start),
                );
            }
            value |= low << (7 * i);
            if byte & 0x80 == 0 {
                if byte == 0 && i > 0 {
                    return Err(Error::malformed(format!(
                        "{what}: varint is not in its shortest form"
                    ))
                    .at_offset(start));
                }
                return Ok(value);
            }
        }
        Err(Error::malformed(format!("{what}: varint longer than 10 bytes")).at_offset(start))
    }

    /// A varint that must fit in `usize` and in the remaining input when each unit
    /// takes at least `unit` bytes.
    pub(crate) fn count(&mut self, what: &str, unit: usize) -> Result<usize> {
        let start = self.offset();
        let n = self.varint(what)?;
        let max = self.remaining() / unit.max(1);
        match usize::try_from(n) {
            Ok(n) if n <= max => Ok(n),
            _ => Err(Error::malformed(format!(
                "{what}: count {n} exceeds the {} bytes left in the record",
                self.remaining()
            ))
            .at_offset(start)),
        }
    }

    /// Fails unless every byte has been consumed.
    pub(crate) fn finish(&self, what: &str) -> Result<()> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(
                Error::malformed(format!("{} trailing bytes after {what}", self.remaining()))
                    .at_offset(self.offset()),
            )
        }
    }
}

/// Appends `v` as an unsigned LEB128 integer.
pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Appends a varint length followed by the bytes.
pub(crate) fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_round_trip_and_rejects() {
        for v in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            let mut c = Cursor::new(&b, 0);
            assert_eq!(c.varint("v").unwrap(), v);
            assert!(c.is_empty());
        }
        assert!(Cursor::new(&[0x80, 0x00], 0).varint("v").is_err());
        assert!(Cursor::new(&[0xff; 11], 0).varint("v").is_err());
        assert!(Cursor::new(
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02],
            0
        )
        .varint("v")
        .is_err());
        let e = Cursor::new(&[1, 2], 100).u32("x").unwrap_err();
        assert_eq!(e.location().offset, Some(100));
    }
}
