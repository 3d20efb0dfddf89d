//! The file index (docs/format.md §7): which records a writer lists, and what
//! an entry says about the record it points at.
//!
//! One function, `entry_for`, turns a record into its entry. The writer
//! calls it on every record it frames (through `IndexBuilder`); the seeking
//! reader calls it on records it walks when a file has no index, or an index
//! from format 1.0 that does not list the `names` and `ram-blocks` records.

use crate::cursor::Cursor;
use crate::error::{Error, Result};
use crate::record::{encode_index, IndexEntry, RecordKind, PAGES_FIXED_LEN};

/// The `block` field of entries that are not page batches.
pub const NO_BLOCK: u32 = u32::MAX;

/// Record kinds the index lists: `names` (first id and count in the page
/// fields), `device` (its instance name), `ram-blocks`, and `pages` (block,
/// first and last page).
pub const INDEXED_KINDS: [RecordKind; 4] = [
    RecordKind::NAMES,
    RecordKind::DEVICE,
    RecordKind::RAM_BLOCKS,
    RecordKind::PAGES,
];

/// Most bytes of a `names` body needed for its entry: two varints.
const NAMES_PREFIX: usize = 20;
/// Most bytes of a varint.
const VARINT_MAX: usize = 10;

/// The index entry for a record of `kind` at `offset` with a body of
/// `body_len` bytes, or `None` for kinds the index does not list. `read(at,
/// buf)` fills `buf` with the body bytes starting at `at` (callers keep `at +
/// buf.len()` within `body_len`). Fails if the body is too short or its
/// encodings are malformed; nothing is allocated beyond the body's length.
pub(crate) fn entry_for(
    kind: RecordKind,
    offset: u64,
    body_len: usize,
    read: &mut dyn FnMut(usize, &mut [u8]) -> Result<()>,
) -> Result<Option<IndexEntry>> {
    let base = offset + crate::record::RECORD_HEADER_LEN as u64;
    let entry = |block, first_page, last_page, name| IndexEntry {
        kind,
        offset,
        block,
        first_page,
        last_page,
        name,
    };
    Ok(Some(match kind {
        RecordKind::NAMES => {
            let mut prefix = [0u8; NAMES_PREFIX];
            let prefix = &mut prefix[..body_len.min(NAMES_PREFIX)];
            read(0, prefix)?;
            let mut c = Cursor::new(prefix, base);
            let first = c.varint("first name id")?;
            let count = c.varint("name count")?;
            entry(NO_BLOCK, first, count, String::new())
        }
        RecordKind::DEVICE => {
            let mut prefix = [0u8; VARINT_MAX];
            let prefix = &mut prefix[..body_len.min(VARINT_MAX)];
            read(0, prefix)?;
            let mut c = Cursor::new(prefix, base);
            let len = c.varint("device name")?;
            let at = prefix.len() - c.remaining();
            let fits = usize::try_from(len)
                .ok()
                .filter(|&n| at.checked_add(n).is_some_and(|end| end <= body_len));
            let Some(len) = fits else {
                return Err(Error::truncated("device name", len as usize, body_len - at)
                    .at_offset(base + at as u64));
            };
            let mut name = vec![0u8; len];
            read(at, &mut name)?;
            let name = String::from_utf8(name).map_err(|_| {
                Error::malformed("device name is not UTF-8").at_offset(base + at as u64)
            })?;
            entry(NO_BLOCK, 0, 0, name)
        }
        RecordKind::RAM_BLOCKS => entry(NO_BLOCK, 0, 0, String::new()),
        RecordKind::PAGES => {
            if body_len < PAGES_FIXED_LEN + 8 {
                return Err(
                    Error::truncated("page batch", PAGES_FIXED_LEN + 8, body_len).at_offset(base),
                );
            }
            let mut fixed = [0u8; PAGES_FIXED_LEN + 8];
            read(0, &mut fixed)?;
            let mut c = Cursor::new(&fixed, base);
            let block = c.u32("block id")?;
            c.bytes(8, "batch fields")?;
            let count = c.u32("page count")?;
            c.bytes(8, "batch lengths")?;
            let first = c.u64("page entry")? >> 8;
            let last_at = u64::from(count)
                .checked_sub(1)
                .and_then(|n| n.checked_mul(8))
                .and_then(|n| n.checked_add(PAGES_FIXED_LEN as u64))
                .and_then(|n| usize::try_from(n).ok())
                .filter(|&n| n.checked_add(8).is_some_and(|end| end <= body_len));
            let Some(last_at) = last_at else {
                return Err(Error::malformed(format!(
                    "page batch of {count} entries does not fit its {body_len}-byte body"
                ))
                .at_offset(base + 12));
            };
            let mut last = [0u8; 8];
            read(last_at, &mut last)?;
            entry(block, first, u64::from_le_bytes(last) >> 8, String::new())
        }
        _ => return Ok(None),
    }))
}

/// Collects the index entries of the records a writer frames.
#[derive(Debug, Default)]
pub(crate) struct IndexBuilder {
    /// `None` when the writer writes no index.
    entries: Option<Vec<IndexEntry>>,
}

impl IndexBuilder {
    /// A builder that collects entries only when `enabled`.
    pub(crate) fn new(enabled: bool) -> IndexBuilder {
        IndexBuilder {
            entries: enabled.then(Vec::new),
        }
    }

    /// Notes a record of `kind` framed at `offset`, whose body is the
    /// concatenation of `parts`.
    pub(crate) fn note(&mut self, kind: RecordKind, offset: u64, parts: &[&[u8]]) {
        let Some(entries) = self.entries.as_mut() else {
            return;
        };
        if !INDEXED_KINDS.contains(&kind) {
            return;
        }
        let body_len = parts.iter().map(|p| p.len()).sum();
        let mut read = |at: usize, buf: &mut [u8]| read_parts(parts, at, buf);
        // The writer framed these bodies itself, so they parse.
        if let Ok(Some(e)) = entry_for(kind, offset, body_len, &mut read) {
            entries.push(e);
        }
    }

    /// The body of the `index` record.
    pub(crate) fn encode(&self) -> Vec<u8> {
        encode_index(self.entries.as_deref().unwrap_or_default())
    }
}

/// Copies the bytes at `at..at + buf.len()` of the concatenation of `parts`.
fn read_parts(parts: &[&[u8]], mut at: usize, mut buf: &mut [u8]) -> Result<()> {
    for p in parts {
        if buf.is_empty() {
            break;
        }
        if at >= p.len() {
            at -= p.len();
            continue;
        }
        let n = (p.len() - at).min(buf.len());
        let (head, rest) = buf.split_at_mut(n);
        head.copy_from_slice(&p[at..at + n]);
        buf = rest;
        at = 0;
    }
    if buf.is_empty() {
        Ok(())
    } else {
        Err(Error::usage("index: body shorter than its parts"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_parts_spans_parts() {
        let parts: [&[u8]; 3] = [b"abc", b"", b"defg"];
        let mut buf = [0u8; 4];
        read_parts(&parts, 2, &mut buf).unwrap();
        assert_eq!(&buf, b"cdef");
        assert!(read_parts(&parts, 5, &mut buf).is_err());
    }

    #[test]
    fn entries_from_bodies() {
        let mut names = Vec::new();
        crate::cursor::put_varint(&mut names, 300);
        crate::cursor::put_varint(&mut names, 2);
        let e = entry_for(RecordKind::NAMES, 64, names.len(), &mut |at, b| {
            read_parts(&[&names], at, b)
        })
        .unwrap()
        .unwrap();
        assert_eq!((e.first_page, e.last_page, e.block), (300, 2, NO_BLOCK));

        // a device name longer than its body is refused, not allocated
        let dev = [0xff, 0xff, 0x03, b'x'];
        let r = entry_for(RecordKind::DEVICE, 0, dev.len(), &mut |at, b| {
            read_parts(&[&dev], at, b)
        });
        assert!(r.is_err());

        // a batch whose count points past its body is refused
        let mut batch = vec![0u8; PAGES_FIXED_LEN + 8];
        batch[12..16].copy_from_slice(&2u32.to_le_bytes());
        let r = entry_for(RecordKind::PAGES, 0, batch.len(), &mut |at, b| {
            read_parts(&[&batch], at, b)
        });
        assert!(r.is_err());
        batch[12..16].copy_from_slice(&1u32.to_le_bytes());
        batch[24..32].copy_from_slice(&((7u64 << 8) | 1).to_le_bytes());
        let e = entry_for(RecordKind::PAGES, 0, batch.len(), &mut |at, b| {
            read_parts(&[&batch], at, b)
        })
        .unwrap()
        .unwrap();
        assert_eq!((e.first_page, e.last_page), (7, 7));
    }
}
