//! The `mapped-ram` layout (QEMU 9.0+, `file:` migrations): each RAM block's
//! entry in the block list is followed by a fixed header, the block's bitmap
//! of present pages, and, from a page-aligned file offset on, one page slot
//! per page of the block. The stream goes on after the last slot.
//!
//! ```text
//! entry (name, used length, ...) | header (28 bytes) | bitmap | hole | slot 0 | slot 1 | ... | next entry
//!                                 bitmap_offset ----^          pages_offset ---^
//! ```
//!
//! Every offset is absolute in the file (the stream starts at offset 0). The
//! bitmap is an array of 64-bit words in the byte order of the writing host
//! (little-endian here): page `i` is bit `i % 8` of byte `i / 8`. Absent
//! pages (bit clear) are zero pages or pages never sent; their slots are not
//! read by QEMU.

use vmstream::{Error, ErrorKind, Result};

/// The capability name in the configuration section.
pub const CAPABILITY: &str = "mapped-ram";
/// Bytes of a [`MappedRamHeader`] on the wire.
pub const HEADER_LEN: usize = 28;
/// The only header version QEMU writes (and the highest it reads).
pub const HEADER_VERSION: u32 = 1;
/// The alignment QEMU gives `pages_offset` (it only requires page alignment on load).
pub const PAGES_ALIGNMENT: u64 = 1 << 20;

/// A block's mapped-ram header, as on the wire (all fields big-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MappedRamHeader {
    /// Header version (1).
    pub version: u32,
    /// The target page size: the size of one page slot and of one bitmap bit's page.
    pub page_size: u64,
    /// File offset of the bitmap.
    pub bitmap_offset: u64,
    /// File offset of page slot 0.
    pub pages_offset: u64,
}

impl MappedRamHeader {
    /// Parses the 28 wire bytes (no checks beyond the length: see [`MappedRamHeader::check`]).
    pub fn parse(b: &[u8]) -> Option<MappedRamHeader> {
        let b: &[u8; HEADER_LEN] = b.try_into().ok()?;
        let u64_at = |p: usize| {
            let mut w = [0; 8];
            w.copy_from_slice(&b[p..p + 8]);
            u64::from_be_bytes(w)
        };
        Some(MappedRamHeader {
            version: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            page_size: u64_at(4),
            bitmap_offset: u64_at(12),
            pages_offset: u64_at(20),
        })
    }

    /// The 28 wire bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0; HEADER_LEN];
        b[..4].copy_from_slice(&self.version.to_be_bytes());
        b[4..12].copy_from_slice(&self.page_size.to_be_bytes());
        b[12..20].copy_from_slice(&self.bitmap_offset.to_be_bytes());
        b[20..28].copy_from_slice(&self.pages_offset.to_be_bytes());
        b
    }

    /// Checks the header of a block of `size` bytes that stands at stream
    /// offset `at`, in a stream whose target page size is `page_size`, and
    /// returns the block's [`Layout`]. What QEMU writes is required:
    /// version 1, the stream's page size, the bitmap right after the header,
    /// page slots from a page-aligned offset at or after the bitmap's end.
    /// Errors name the field and its offset.
    pub fn check(&self, block: &str, at: u64, size: u64, page_size: u64) -> Result<Layout> {
        let field = |off: u64, name: &str, msg: String| {
            Error::new(
                ErrorKind::Malformed,
                format!("mapped-ram header of RAM block {block:?}, field {name}: {msg}"),
            )
            .at_offset(at.saturating_add(off))
        };
        if self.version != HEADER_VERSION {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "mapped-ram header of RAM block {block:?}, field version: {} (only version {HEADER_VERSION} is read)",
                    self.version
                ),
            )
            .at_offset(at));
        }
        if self.page_size != page_size {
            return Err(field(
                4,
                "page_size",
                format!(
                    "{} differs from the stream's target page size {page_size}",
                    self.page_size
                ),
            ));
        }
        let after = at.saturating_add(HEADER_LEN as u64);
        if self.bitmap_offset != after {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "mapped-ram header of RAM block {block:?}, field bitmap_offset: {:#x}, but QEMU puts the bitmap right after the header, at {after:#x}",
                    self.bitmap_offset
                ),
            )
            .at_offset(at + 12));
        }
        if page_size == 0 || !size.is_multiple_of(page_size) {
            return Err(field(
                4,
                "page_size",
                format!("the block's {size:#x} bytes are not whole pages of {page_size}"),
            ));
        }
        let pages = size / page_size;
        let bitmap_len = bitmap_len(pages);
        let bitmap_end = self.bitmap_offset.checked_add(bitmap_len);
        let end = self.pages_offset.checked_add(size);
        match (bitmap_end, end) {
            (Some(b), Some(end)) if self.pages_offset >= b && self.pages_offset.is_multiple_of(page_size) => {
                Ok(Layout {
                    pages,
                    bitmap_len,
                    pages_offset: self.pages_offset,
                    end,
                })
            }
            _ => Err(field(
                20,
                "pages_offset",
                format!(
                    "{:#x} must be a multiple of the page size {page_size}, at or after the bitmap's end ({} bytes from {:#x}), and leave room for the block's {size:#x} bytes",
                    self.pages_offset, bitmap_len, self.bitmap_offset
                ),
            )),
        }
    }
}

/// Where a block's parts lie in the file, from a checked [`MappedRamHeader`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Pages of the block (bits of the bitmap that count).
    pub pages: u64,
    /// Bytes of the bitmap: whole 64-bit words.
    pub bitmap_len: u64,
    /// File offset of page slot 0.
    pub pages_offset: u64,
    /// File offset after the last slot, where the stream goes on.
    pub end: u64,
}

impl Layout {
    /// File offset of page `index`'s slot (`index < pages`, so it does not overflow).
    pub fn slot(&self, index: u64, page_size: u64) -> u64 {
        self.pages_offset + index * page_size
    }
}

/// Bytes of the bitmap of `pages` pages: QEMU's `BITS_TO_LONGS(pages) * sizeof(long)`.
pub fn bitmap_len(pages: u64) -> u64 {
    pages.div_ceil(64) * 8
}

/// Whether page `index` is present in `bitmap`.
pub fn present(bitmap: &[u8], index: u64) -> bool {
    usize::try_from(index / 8)
        .ok()
        .and_then(|i| bitmap.get(i))
        .is_some_and(|b| b >> (index % 8) & 1 == 1)
}

/// The present pages of `bitmap` below `pages`, in ascending order, as runs
/// `(first, count)`.
pub fn runs(bitmap: &[u8], pages: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
    let mut i = 0u64;
    std::iter::from_fn(move || {
        // skip absent pages a byte at a time where the byte is empty
        while i < pages {
            let byte = bitmap.get((i / 8) as usize).copied().unwrap_or(0);
            if i.is_multiple_of(8) && byte == 0 {
                i += 8;
            } else if present(bitmap, i) {
                break;
            } else {
                i += 1;
            }
        }
        if i >= pages {
            return None;
        }
        let first = i;
        while i < pages && present(bitmap, i) {
            i += 1;
        }
        Some((first, i - first))
    })
}

/// Present pages of `bitmap` below `pages`.
pub fn count(bitmap: &[u8], pages: u64) -> u64 {
    runs(bitmap, pages).map(|(_, n)| n).sum()
}

/// Whether a configuration section body (as in [`crate::Event::Configuration`])
/// lists the `mapped-ram` capability.
pub fn in_configuration(raw: &[u8]) -> bool {
    let pat = b"\x05\x1aconfiguration/capabilities";
    let Some(p) = raw.windows(pat.len()).position(|w| w == pat) else {
        return false;
    };
    // subsection version, then the count and the names
    let mut p = p + pat.len() + 4;
    let Some(n) = raw.get(p..p + 4) else {
        return false;
    };
    let n = u32::from_be_bytes([n[0], n[1], n[2], n[3]]);
    p += 4;
    for _ in 0..n.min(64) {
        let Some(&len) = raw.get(p) else { return false };
        let Some(name) = raw.get(p + 1..p + 1 + usize::from(len)) else {
            return false;
        };
        if name == CAPABILITY.as_bytes() {
            return true;
        }
        p += 1 + usize::from(len);
    }
    false
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn hdr(at: u64, pages_offset: u64) -> MappedRamHeader {
        MappedRamHeader {
            version: 1,
            page_size: 4096,
            bitmap_offset: at + 28,
            pages_offset,
        }
    }

    #[test]
    fn header_round_trips_and_checks_what_qemu_writes() {
        // block pc.ram of QEMU 10.0, 32 MiB: header at 0x6f, bitmap at 0x8b
        let h = hdr(0x6f, 0x100000);
        let b = h.to_bytes();
        assert_eq!(&b[..4], &[0, 0, 0, 1]);
        assert_eq!(MappedRamHeader::parse(&b), Some(h));
        assert_eq!(MappedRamHeader::parse(&b[..27]), None);
        let l = h.check("pc.ram", 0x6f, 32 << 20, 4096).unwrap();
        assert_eq!(l.pages, 8192);
        assert_eq!(l.bitmap_len, 1024);
        assert_eq!(l.end, 0x2100000);
        assert_eq!(l.slot(3, 4096), 0x103000);
    }

    #[test]
    fn hostile_headers_name_the_field_and_offset() {
        let at = 0x6f;
        let cases = [
            (
                MappedRamHeader {
                    version: 2,
                    ..hdr(at, 0x100000)
                },
                ErrorKind::Unsupported,
                "version",
                at,
            ),
            (
                MappedRamHeader {
                    page_size: 65536,
                    ..hdr(at, 0x100000)
                },
                ErrorKind::Malformed,
                "page_size",
                at + 4,
            ),
            (
                MappedRamHeader {
                    bitmap_offset: 0,
                    ..hdr(at, 0x100000)
                },
                ErrorKind::Unsupported,
                "bitmap_offset",
                at + 12,
            ),
            // not page-aligned
            (
                hdr(at, 0x100800),
                ErrorKind::Malformed,
                "pages_offset",
                at + 20,
            ),
            // inside the bitmap
            (hdr(at, 0), ErrorKind::Malformed, "pages_offset", at + 20),
            // the block would end past 2^64
            (
                hdr(at, u64::MAX - 4095),
                ErrorKind::Malformed,
                "pages_offset",
                at + 20,
            ),
        ];
        for (h, kind, field, off) in cases {
            let e = h.check("pc.ram", at, 32 << 20, 4096).unwrap_err();
            assert_eq!(e.kind(), kind, "{e}");
            assert!(e.message().contains(field), "{e}");
            assert_eq!(e.location().offset, Some(off), "{e}");
        }
    }

    #[test]
    fn bitmap_bits_are_little_endian_words() {
        assert_eq!(bitmap_len(0), 0);
        assert_eq!(bitmap_len(1), 8);
        assert_eq!(bitmap_len(64), 8);
        assert_eq!(bitmap_len(65), 16);
        let mut bm = vec![0u8; 16];
        for i in [0u64, 1, 2, 9, 63, 64, 100] {
            bm[(i / 8) as usize] |= 1 << (i % 8);
        }
        assert!(present(&bm, 9) && !present(&bm, 8) && !present(&bm, 1 << 40));
        let r: Vec<_> = runs(&bm, 101).collect();
        assert_eq!(r, [(0, 3), (9, 1), (63, 2), (100, 1)]);
        // bits past the block's pages do not count
        assert_eq!(count(&bm, 100), 6);
        assert_eq!(runs(&[0xff; 8], 0).count(), 0);
    }

    #[test]
    fn capability_is_found_in_the_configuration() {
        let mut raw = vec![0, 0, 0, 11];
        raw.extend_from_slice(b"pc-q35-10.0");
        raw.extend_from_slice(b"\x05\x1aconfiguration/capabilities");
        raw.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2]);
        raw.extend_from_slice(b"\x0fx-ignore-shared\x0amapped-ram");
        assert!(in_configuration(&raw));
        raw.truncate(raw.len() - 3);
        assert!(!in_configuration(&raw));
        assert!(!in_configuration(b"\x00\x00\x00\x02pc"));
    }
}
