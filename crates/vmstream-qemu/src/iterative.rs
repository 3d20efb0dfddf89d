//! The iterative sections other than RAM that QEMU 7.2–10.x writes: their
//! wire grammar, to find where each unit and each section body ends (they are
//! not in the vmdesc and carry no lengths of their own), and what a unit says.
//!
//! | idstr | Handler | Units of a section body |
//! | --- | --- | --- |
//! | `spapr/htab` | ppc64 `pseries` hashed page table (`hw/ppc/spapr.c`) | `u32` header: `0xffffffff` (no table) or the table's size bits end the body; `0` is followed by chunks (`u32 index`, `u16 n_valid`, `u16 n_invalid`, `n_valid` × 16 bytes of PTEs) up to the end marker, a chunk of three zeros |
//! | `s390-storage_attributes` | s390x CMMA storage attributes (`hw/s390x/s390-stattrib.c`) | `u64` header: page address \| flags in its low 12 bits; MORE (`0x02`) is followed by `u64 count` and `count` attribute bytes; DONE (`0x08`); EOS (`0x01`) ends the body; ERROR (`0x04`) is refused, as QEMU's loader does |
//! | `block` | block migration, QEMU ≤ 9.0 (`migration/block.c`) | `u64` header: sector << 9 \| flags in its low 9 bits; DEVICE_BLOCK (`0x01`) is followed by a counted device name and, unless ZERO_BLOCK (`0x08`), 1 MiB of data; PROGRESS (`0x04`); EOS (`0x02`) ends the body |
//! | `dirty-bitmap` | block dirty bitmaps (`migration/block-dirty-bitmap.c`) | flags in 1, 2 or 4 bytes (a set high bit says more follow; QEMU keeps the last byte read); DEVICE_NAME (`0x08`) and BITMAP_NAME (`0x04`) add a counted name each; then START (`0x10`): `u32 granularity`, `u8 flags`; or COMPLETE (`0x20`); or BITS (`0x40`): `u64 first sector`, `u32 sectors` and, unless ZEROES (`0x02`), `u64 size` and `size` bytes (at most 10 MiB); EOS (`0x01`) ends the body |
//!
//! A [`Framer`] reads one section body a unit at a time from whatever bytes
//! are at hand and says how many more it needs; it never allocates, and a
//! unit larger than the caller's limit is refused before its bytes are read.

use vmstream::{Error, ErrorKind, Result};

/// An iterative handler whose sections are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handler {
    /// `spapr/htab`.
    Htab,
    /// `s390-storage_attributes`.
    StorageAttributes,
    /// `block`.
    Block,
    /// `dirty-bitmap`.
    DirtyBitmap,
}

impl Handler {
    /// The handler of a section idstr.
    pub fn of(idstr: &str) -> Option<Handler> {
        Some(match idstr {
            "spapr/htab" => Handler::Htab,
            "s390-storage_attributes" => Handler::StorageAttributes,
            "block" => Handler::Block,
            "dirty-bitmap" => Handler::DirtyBitmap,
            _ => return None,
        })
    }

    /// The section idstr.
    pub fn idstr(self) -> &'static str {
        match self {
            Handler::Htab => "spapr/htab",
            Handler::StorageAttributes => "s390-storage_attributes",
            Handler::Block => "block",
            Handler::DirtyBitmap => "dirty-bitmap",
        }
    }
}

/// What [`Framer::step`] found at the front of the bytes it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The next unit needs at least this many bytes from its start.
    Need(usize),
    /// The next unit is this many bytes; `last` says it ends the section body.
    Unit {
        /// Its length.
        len: usize,
        /// Whether the section body ends with it.
        last: bool,
    },
}

/// Finds the units of one section body.
#[derive(Debug, Clone)]
pub struct Framer {
    handler: Handler,
    page_size: u64,
    max_unit: u64,
    first: bool,
}

/// Bytes of one hashed page table entry.
const HPTE_SIZE: usize = 16;
/// Bytes of data in a block migration unit.
const BLOCK_SIZE: usize = 1 << 20;
/// The largest bitmap chunk QEMU's loader takes (10 × its 1 MiB chunk).
const MAX_BITMAP_CHUNK: u64 = 10 << 20;

const STATTR_EOS: u64 = 0x01;
const STATTR_MORE: u64 = 0x02;
const STATTR_ERROR: u64 = 0x04;
const STATTR_DONE: u64 = 0x08;

const BLK_DEVICE_BLOCK: u64 = 0x01;
const BLK_EOS: u64 = 0x02;
const BLK_PROGRESS: u64 = 0x04;
const BLK_ZERO_BLOCK: u64 = 0x08;

const DBM_EOS: u8 = 0x01;
const DBM_ZEROES: u8 = 0x02;
const DBM_BITMAP_NAME: u8 = 0x04;
const DBM_DEVICE_NAME: u8 = 0x08;
const DBM_START: u8 = 0x10;
const DBM_COMPLETE: u8 = 0x20;
const DBM_BITS: u8 = 0x40;
const DBM_EXTRA: u8 = 0x80;

fn malformed(msg: String) -> Error {
    Error::new(ErrorKind::Malformed, msg)
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

impl Framer {
    /// A framer for one section body of `handler`, in a stream whose target
    /// page size is `page_size`, refusing units above `max_unit` bytes.
    pub fn new(handler: Handler, page_size: u64, max_unit: u64) -> Framer {
        Framer {
            handler,
            page_size,
            max_unit,
            first: true,
        }
    }

    /// Looks at the front of `data` (the bytes at hand from the start of the
    /// next unit): how long that unit is, or how many bytes it takes to tell.
    /// Errors name the problem; the caller places them at the unit's offset.
    pub fn step(&mut self, data: &[u8]) -> Result<Step> {
        let step = match self.handler {
            Handler::Htab => self.htab(data)?,
            Handler::StorageAttributes => self.stattr(data)?,
            Handler::Block => block(data)?,
            Handler::DirtyBitmap => dirty_bitmap(data)?,
        };
        let size = match step {
            Step::Need(n) | Step::Unit { len: n, .. } => n,
        };
        if size as u64 > self.max_unit {
            return Err(Error::new(
                ErrorKind::LimitExceeded,
                format!(
                    "a {} unit of {size} bytes exceeds Limits::max_record_size ({} bytes)",
                    self.handler.idstr(),
                    self.max_unit
                ),
            ));
        }
        if let Step::Unit { .. } = step {
            self.first = false;
        }
        Ok(step)
    }

    fn htab(&self, data: &[u8]) -> Result<Step> {
        if self.first {
            if data.len() < 4 {
                return Ok(Step::Need(4));
            }
            // 0: chunks follow; anything else (the size bits, or all ones for
            // "no table") is the whole body.
            return Ok(Step::Unit {
                len: 4,
                last: be32(data, 0) != 0,
            });
        }
        if data.len() < 8 {
            return Ok(Step::Need(8));
        }
        let (index, valid, invalid) = (be32(data, 0), be16(data, 4), be16(data, 6));
        if (index, valid, invalid) == (0, 0, 0) {
            return Ok(Step::Unit { len: 8, last: true });
        }
        Ok(Step::Unit {
            len: 8 + usize::from(valid) * HPTE_SIZE,
            last: false,
        })
    }

    fn stattr(&self, data: &[u8]) -> Result<Step> {
        if data.len() < 8 {
            return Ok(Step::Need(8));
        }
        let flags = be64(data, 0) & (self.page_size - 1);
        match flags {
            STATTR_MORE => {
                if data.len() < 16 {
                    return Ok(Step::Need(16));
                }
                let count = be64(data, 8);
                let len = count
                    .checked_add(16)
                    .filter(|&l| l <= self.max_unit)
                    .and_then(|l| usize::try_from(l).ok())
                    .ok_or_else(|| {
                        Error::new(
                            ErrorKind::LimitExceeded,
                            format!(
                                "{count} storage attributes in one unit exceed Limits::max_record_size ({} bytes)",
                                self.max_unit
                            ),
                        )
                    })?;
                Ok(Step::Unit { len, last: false })
            }
            STATTR_DONE => Ok(Step::Unit {
                len: 8,
                last: false,
            }),
            STATTR_EOS => Ok(Step::Unit { len: 8, last: true }),
            STATTR_ERROR => Err(malformed(
                "storage attributes ERROR flag: the source says its data is incomplete (QEMU refuses such a stream)".into(),
            )),
            f => Err(malformed(format!(
                "storage attributes record with flags {f:#x} (expected MORE 0x02, DONE 0x08 or EOS 0x01)"
            ))),
        }
    }
}

fn block(data: &[u8]) -> Result<Step> {
    if data.len() < 8 {
        return Ok(Step::Need(8));
    }
    let flags = be64(data, 0) & 0x1ff;
    let last = flags & BLK_EOS != 0;
    if flags & BLK_DEVICE_BLOCK != 0 {
        if data.len() < 9 {
            return Ok(Step::Need(9));
        }
        let mut len = 9 + usize::from(data[8]);
        if flags & BLK_ZERO_BLOCK == 0 {
            len += BLOCK_SIZE;
        }
        return Ok(Step::Unit { len, last });
    }
    if flags & BLK_PROGRESS != 0 || last {
        return Ok(Step::Unit { len: 8, last });
    }
    Err(malformed(format!(
        "block migration record with flags {flags:#x} (expected DEVICE_BLOCK 0x01, PROGRESS 0x04 or EOS 0x02)"
    )))
}

/// The flags of a dirty-bitmap unit and how many bytes they take, or how many
/// bytes it takes to tell.
fn bitmap_flags(data: &[u8]) -> std::result::Result<(u8, usize), usize> {
    let b0 = *data.first().ok_or(1usize)?;
    if b0 & DBM_EXTRA == 0 {
        return Ok((b0, 1));
    }
    let b1 = *data.get(1).ok_or(2usize)?;
    if b1 & DBM_EXTRA == 0 {
        return Ok((b1, 2));
    }
    // QEMU reads a big-endian u16 and keeps its low byte.
    let b3 = *data.get(3).ok_or(4usize)?;
    Ok((b3, 4))
}

fn dirty_bitmap(data: &[u8]) -> Result<Step> {
    let (flags, mut len) = match bitmap_flags(data) {
        Ok(f) => f,
        Err(need) => return Ok(Step::Need(need)),
    };
    for name in [DBM_DEVICE_NAME, DBM_BITMAP_NAME] {
        if flags & name != 0 {
            let Some(&n) = data.get(len) else {
                return Ok(Step::Need(len + 1));
            };
            len += 1 + usize::from(n);
        }
    }
    if flags & DBM_START != 0 {
        len += 5;
    } else if flags & DBM_COMPLETE != 0 {
    } else if flags & DBM_BITS != 0 {
        len += 12;
        if flags & DBM_ZEROES == 0 {
            if data.len() < len + 8 {
                return Ok(Step::Need(len + 8));
            }
            let size = be64(data, len);
            if size > MAX_BITMAP_CHUNK {
                return Err(malformed(format!(
                    "dirty bitmap chunk of {size} bytes (QEMU takes at most {MAX_BITMAP_CHUNK})"
                )));
            }
            len += 8 + size as usize;
        }
    }
    Ok(Step::Unit {
        len,
        last: flags & DBM_EOS != 0,
    })
}

/// What one unit says, for people (`dump`): e.g. `chunk at PTE 0x40: 3 valid, 1 invalid`.
/// `first` says it is the first unit of its section body.
pub fn describe(handler: Handler, raw: &[u8], first: bool, page_size: u64) -> String {
    let ps = page_size.max(2);
    match handler {
        Handler::Htab if raw.len() == 4 && first => match be32(raw, 0) {
            0 => "chunks follow".into(),
            u32::MAX => "no hashed page table".into(),
            bits => format!("hashed page table of 2^{bits} bytes"),
        },
        Handler::Htab if raw.len() >= 8 => {
            let (index, valid, invalid) = (be32(raw, 0), be16(raw, 4), be16(raw, 6));
            if (index, valid, invalid) == (0, 0, 0) {
                "end of chunks".into()
            } else {
                format!("chunk at PTE {index:#x}: {valid} valid, {invalid} invalid")
            }
        }
        Handler::StorageAttributes if raw.len() >= 8 => {
            let h = be64(raw, 0);
            match h & (ps - 1) {
                STATTR_MORE if raw.len() >= 16 => format!(
                    "{} attributes from page frame {:#x}",
                    be64(raw, 8),
                    (h & !(ps - 1)) / ps
                ),
                STATTR_DONE => "done".into(),
                STATTR_EOS => "end of section".into(),
                f => format!("flags {f:#x}"),
            }
        }
        Handler::Block if raw.len() >= 8 => {
            let h = be64(raw, 0);
            let (flags, sector) = (h & 0x1ff, h >> 9);
            if flags & BLK_DEVICE_BLOCK != 0 && raw.len() >= 9 {
                let n = usize::from(raw[8]);
                let name = String::from_utf8_lossy(raw.get(9..9 + n).unwrap_or_default());
                let what = if flags & BLK_ZERO_BLOCK != 0 {
                    "zero block"
                } else {
                    "1 MiB block"
                };
                format!("{what} of {name:?} at sector {sector:#x}")
            } else if flags & BLK_PROGRESS != 0 {
                format!("progress {sector}%")
            } else {
                "end of section".into()
            }
        }
        Handler::DirtyBitmap => match bitmap_flags(raw) {
            Ok((flags, _)) => {
                let what = if flags & DBM_START != 0 {
                    "start"
                } else if flags & DBM_COMPLETE != 0 {
                    "complete"
                } else if flags & DBM_BITS != 0 && flags & DBM_ZEROES != 0 {
                    "zero bits"
                } else if flags & DBM_BITS != 0 {
                    "bits"
                } else if flags & DBM_EOS != 0 {
                    "end of section"
                } else {
                    "names"
                };
                format!("{what} (flags {flags:#04x})")
            }
            Err(_) => "empty".into(),
        },
        _ => format!("{} bytes", raw.len()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Splits `body` into units, as a reader would; the units' lengths.
    fn units(handler: Handler, body: &[u8]) -> Result<Vec<usize>> {
        let mut f = Framer::new(handler, 4096, 64 << 20);
        let mut at = 0;
        let mut out = Vec::new();
        loop {
            match f.step(&body[at..])? {
                Step::Need(n) => {
                    assert!(
                        n > body.len() - at,
                        "asked for {n} with {} at hand",
                        body.len() - at
                    );
                    return Err(malformed("truncated".into()));
                }
                Step::Unit { len, last } => {
                    if len > body.len() - at {
                        return Err(malformed("truncated".into()));
                    }
                    out.push(len);
                    at += len;
                    if last {
                        assert_eq!(at, body.len());
                        return Ok(out);
                    }
                }
            }
        }
    }

    #[test]
    fn htab() {
        assert_eq!(units(Handler::Htab, &[0, 0, 0, 21]).unwrap(), [4]);
        assert_eq!(units(Handler::Htab, &[0xff; 4]).unwrap(), [4]);
        let mut b = vec![0, 0, 0, 0];
        b.extend_from_slice(&[0, 0, 0, 0, 0, 2, 0, 1]);
        b.extend_from_slice(&[0xaa; 32]);
        b.extend_from_slice(&[0, 0, 0, 8, 0, 0, 0, 3]);
        b.extend_from_slice(&[0; 8]);
        assert_eq!(units(Handler::Htab, &b).unwrap(), [4, 40, 8, 8]);
        assert!(units(Handler::Htab, &b[..20]).is_err());
        assert_eq!(
            describe(Handler::Htab, &b[4..44], false, 4096),
            "chunk at PTE 0x0: 2 valid, 1 invalid"
        );
    }

    #[test]
    fn storage_attributes() {
        let mut b = Vec::new();
        b.extend_from_slice(&(0x5000u64 | 2).to_be_bytes());
        b.extend_from_slice(&3u64.to_be_bytes());
        b.extend_from_slice(&[1, 2, 3]);
        b.extend_from_slice(&8u64.to_be_bytes());
        b.extend_from_slice(&1u64.to_be_bytes());
        assert_eq!(units(Handler::StorageAttributes, &b).unwrap(), [19, 8, 8]);
        assert_eq!(
            describe(Handler::StorageAttributes, &b[..19], true, 4096),
            "3 attributes from page frame 0x5"
        );
        let err = units(Handler::StorageAttributes, &4u64.to_be_bytes()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Malformed);
        let err = units(Handler::StorageAttributes, &3u64.to_be_bytes()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Malformed);
        let mut huge = 2u64.to_be_bytes().to_vec();
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        let err = units(Handler::StorageAttributes, &huge).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::LimitExceeded);
    }

    #[test]
    fn block() {
        let mut b = Vec::new();
        b.extend_from_slice(&((16u64 << 9) | 1 | 8).to_be_bytes());
        b.extend_from_slice(b"\x04hd00");
        b.extend_from_slice(&((32u64 << 9) | 1).to_be_bytes());
        b.extend_from_slice(b"\x04hd00");
        b.extend_from_slice(&vec![7; BLOCK_SIZE]);
        b.extend_from_slice(&((100u64 << 9) | 4).to_be_bytes());
        b.extend_from_slice(&2u64.to_be_bytes());
        assert_eq!(
            units(Handler::Block, &b).unwrap(),
            [13, 13 + BLOCK_SIZE, 8, 8]
        );
        assert_eq!(
            describe(Handler::Block, &b[..13], true, 4096),
            "zero block of \"hd00\" at sector 0x10"
        );
        assert!(units(Handler::Block, &0x10u64.to_be_bytes()).is_err());
    }

    #[test]
    fn dirty_bitmap() {
        let mut b = vec![
            DBM_DEVICE_NAME | DBM_BITMAP_NAME | DBM_START,
            2,
            b'd',
            b'0',
            1,
            b'b',
        ];
        b.extend_from_slice(&[0, 1, 0, 0, 1]);
        b.push(DBM_BITS | DBM_ZEROES);
        b.extend_from_slice(&[0; 12]);
        b.push(DBM_BITS);
        b.extend_from_slice(&[0; 12]);
        b.extend_from_slice(&4u64.to_be_bytes());
        b.extend_from_slice(&[0xf0; 4]);
        b.extend_from_slice(&[0x80, 0x80, 0x00, DBM_COMPLETE]);
        b.push(DBM_EOS);
        assert_eq!(units(Handler::DirtyBitmap, &b).unwrap(), [11, 13, 25, 4, 1]);
        let mut big = vec![DBM_BITS];
        big.extend_from_slice(&[0; 12]);
        big.extend_from_slice(&(MAX_BITMAP_CHUNK + 1).to_be_bytes());
        assert!(units(Handler::DirtyBitmap, &big).is_err());
    }

    #[test]
    fn every_prefix_asks_for_more_or_fails() {
        // Whatever is cut off, the framer asks for more bytes than it has, or
        // names a unit longer than what it has: it never reads past them.
        let bodies: [(Handler, Vec<u8>); 2] = [
            (Handler::DirtyBitmap, vec![0x80, 0x80, 0x00, DBM_BITS, 0, 0]),
            (Handler::Block, vec![0, 0, 0, 0, 0, 0, 0, 1, 3]),
        ];
        for (h, b) in bodies {
            for n in 0..b.len() {
                let mut f = Framer::new(h, 4096, 64 << 20);
                match f.step(&b[..n]).unwrap() {
                    Step::Need(k) => assert!(k > n),
                    Step::Unit { len, .. } => assert!(len > n || n == b.len()),
                }
            }
        }
    }
}
