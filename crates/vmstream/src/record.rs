//! Record framing and the typed record bodies (docs/format.md, "Records").
//!
//! ```text
//! u16 kind | u16 flags | u32 body_len | body | zero padding | u32 crc32c
//! ```
//! The padding makes `body_len + padding + 4` a multiple of 8, so every record
//! starts and every body starts 8-byte aligned. The CRC covers header, body and
//! padding.

use std::borrow::Cow;

use crate::cursor::{put_bytes, put_varint, Cursor};
use crate::error::{Error, Result};
use crate::header::{Header, FEATURE_LZ4, FEATURE_ZSTD, VERSION_MINOR};
use crate::value::Value;

/// Length of a record header.
pub const RECORD_HEADER_LEN: usize = 8;
/// Record flag: a reader that does not know this kind skips the record.
pub const FLAG_OPTIONAL: u16 = 0x0001;

/// A record kind code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordKind(pub u16);

impl RecordKind {
    /// Stream information and capabilities (a value).
    pub const INFO: RecordKind = RecordKind(0x0001);
    /// Interned names used by later values.
    pub const NAMES: RecordKind = RecordKind(0x0002);
    /// A device type's schema (optional).
    pub const SCHEMA: RecordKind = RecordKind(0x0003);
    /// One device's state.
    pub const DEVICE: RecordKind = RecordKind(0x0004);
    /// RAM block definitions.
    pub const RAM_BLOCKS: RecordKind = RecordKind(0x0005);
    /// A batch of guest pages.
    pub const PAGES: RecordKind = RecordKind(0x0006);
    /// An epoch barrier.
    pub const EPOCH: RecordKind = RecordKind(0x0007);
    /// The file index (optional).
    pub const INDEX: RecordKind = RecordKind(0x0008);
    /// The end of the stream.
    pub const END: RecordKind = RecordKind(0x00ff);
    /// First code of the range reserved for QEMU conversion records.
    pub const QEMU_FIRST: RecordKind = RecordKind(0x0100);
    /// Last code of the range reserved for QEMU conversion records.
    pub const QEMU_LAST: RecordKind = RecordKind(0x01ff);

    /// A short name for messages and listings.
    pub fn name(self) -> &'static str {
        match self {
            RecordKind::INFO => "info",
            RecordKind::NAMES => "names",
            RecordKind::SCHEMA => "schema",
            RecordKind::DEVICE => "device",
            RecordKind::RAM_BLOCKS => "ram-blocks",
            RecordKind::PAGES => "pages",
            RecordKind::EPOCH => "epoch",
            RecordKind::INDEX => "index",
            RecordKind::END => "end",
            k if k.is_qemu() => "qemu",
            _ => "unknown",
        }
    }

    /// Whether the kind is in the range of the QEMU conversion records, which
    /// only streams with the `qemu-framing` feature carry.
    pub fn is_qemu(self) -> bool {
        (RecordKind::QEMU_FIRST..=RecordKind::QEMU_LAST).contains(&self)
    }
}

/// Total length of a framed record with a body of `body_len` bytes.
pub fn framed_len(body_len: usize) -> usize {
    RECORD_HEADER_LEN + padded_body_len(body_len) + 4
}

/// Body length plus padding.
pub(crate) fn padded_body_len(body_len: usize) -> usize {
    (body_len + 4).div_ceil(8) * 8 - 4
}

/// A framed record as it sits in the stream, checksum verified, body not parsed.
#[derive(Debug, Clone, Copy)]
pub struct RawRecord<'a> {
    /// Zero-based record number.
    pub index: u64,
    /// Stream offset of the record header.
    pub offset: u64,
    /// Kind code.
    pub kind: RecordKind,
    /// Flag bits.
    pub flags: u16,
    /// The body, without padding.
    pub body: &'a [u8],
}

impl RawRecord<'_> {
    /// Whether a reader may skip this record when it does not know its kind.
    pub fn is_optional(&self) -> bool {
        self.flags & FLAG_OPTIONAL != 0
    }

    /// Stream offset of the first body byte.
    pub fn body_offset(&self) -> u64 {
        self.offset + RECORD_HEADER_LEN as u64
    }
}

/// Parses the 8-byte record header: `(kind, flags, body_len)`.
pub(crate) fn parse_record_header(
    b: &[u8; 8],
    offset: u64,
    max_body: u32,
) -> Result<(RecordKind, u16, usize)> {
    let kind = RecordKind(u16::from_le_bytes([b[0], b[1]]));
    let flags = u16::from_le_bytes([b[2], b[3]]);
    let len = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    if kind.0 == 0 {
        return Err(
            Error::malformed("record kind 0 is invalid (zeroed or misaligned data?)")
                .at_offset(offset),
        );
    }
    if flags & !FLAG_OPTIONAL != 0 {
        return Err(Error::unsupported(format!(
            "record {} has unknown flag bits {flags:#06x}",
            kind.name()
        ))
        .at_offset(offset + 2));
    }
    if len > max_body {
        return Err(Error::limit(format!(
            "record {} ({:#06x}) body of {len} bytes exceeds Limits::max_record_size ({max_body})",
            kind.name(),
            kind.0
        ))
        .at_offset(offset + 4));
    }
    Ok((kind, flags, len as usize))
}

/// Verifies padding and CRC of a complete framed record (`framed` starts at the
/// header) and returns its body.
pub(crate) fn check_frame(framed: &[u8], body_len: usize, offset: u64) -> Result<&[u8]> {
    check_frame_with(framed, body_len, offset, true)
}

/// [`check_frame`], recomputing the checksum only if `verify_crc`.
pub(crate) fn check_frame_with(
    framed: &[u8],
    body_len: usize,
    offset: u64,
    verify_crc: bool,
) -> Result<&[u8]> {
    let padded = padded_body_len(body_len);
    let crc_at = RECORD_HEADER_LEN + padded;
    let (covered, crc) = match (framed.get(..crc_at), framed.get(crc_at..crc_at + 4)) {
        (Some(c), Some(r)) => (c, r),
        _ => return Err(Error::truncated("record", crc_at + 4, framed.len()).at_offset(offset)),
    };
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let computed = if verify_crc {
        crate::crc32c(covered)
    } else {
        stored
    };
    if stored != computed {
        return Err(Error::malformed(format!(
            "record checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
        ))
        .at_offset(offset + crc_at as u64));
    }
    let body_end = RECORD_HEADER_LEN + body_len;
    if covered[body_end..].iter().any(|&b| b != 0) {
        return Err(
            Error::malformed("record padding is not zero").at_offset(offset + body_end as u64)
        );
    }
    Ok(&covered[RECORD_HEADER_LEN..body_end])
}

/// Appends a framed record to `out`.
pub(crate) fn frame_into(out: &mut Vec<u8>, kind: RecordKind, flags: u16, body: &[u8]) {
    let start = out.len();
    out.extend_from_slice(&kind.0.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    out.resize(start + RECORD_HEADER_LEN + padded_body_len(body.len()), 0);
    let crc = crate::crc32c(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// One device's saved state.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceState {
    /// Instance name, unique with `instance_id` in a stream (e.g. `0000:00:02.0/e1000e`).
    pub name: String,
    /// Tells apart instances with the same name.
    pub instance_id: u32,
    /// The device type, which keys schemas and compat transforms.
    pub type_name: String,
    /// The version of the type's state layout.
    pub version: u32,
    /// The state.
    pub value: Value,
}

/// A RAM block definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RamBlock {
    /// Id that page batches refer to.
    pub id: u32,
    /// Name, e.g. `pc.ram`.
    pub name: String,
    /// Size in bytes; a multiple of the stream page size.
    pub size: u64,
    /// The host page size backing the block (informational; pages are indexed in
    /// stream page-size units).
    pub page_size: u32,
    /// Flag bits ([`RamBlock::FLAG_READONLY`], [`RamBlock::FLAG_SHARED`]).
    pub flags: u32,
}

impl RamBlock {
    /// The block is read-only for the guest (ROM).
    pub const FLAG_READONLY: u32 = 1 << 0;
    /// The block is shared memory that a destination may already have.
    pub const FLAG_SHARED: u32 = 1 << 1;
    /// Every flag this version defines; the other bits are reserved.
    pub const KNOWN_FLAGS: u32 = RamBlock::FLAG_READONLY | RamBlock::FLAG_SHARED;
}

/// A schema record: a device type's shape, for readers that want to check
/// values without device code.
#[derive(Debug, Clone, PartialEq)]
pub struct SchemaRecord {
    /// Device type.
    pub type_name: String,
    /// Version of the type's state layout.
    pub version: u32,
    /// The type description (see [`crate::schema`]).
    pub schema: Value,
}

/// The names a scalar type description holds (docs/format.md §4.3): the
/// scalar types of §5.1, and `any`.
pub const SCHEMA_SCALARS: [&str; 15] = [
    "bool", "u8", "u16", "u32", "u64", "i8", "i16", "i32", "i64", "f32", "f64", "bytes", "string",
    "unit", "any",
];

/// Checks that `description` follows the grammar of type descriptions
/// (docs/format.md §4.3); the error names the path inside it.
pub(crate) fn check_description(description: &Value) -> Result<()> {
    match description {
        Value::String(t) if SCHEMA_SCALARS.contains(&t.as_str()) => Ok(()),
        Value::String(t) => Err(Error::malformed(format!(
            "schema names the type {t:?}, which is neither a scalar type nor \"any\""
        ))),
        Value::Enum(kind, payload) => match (kind.as_str(), &**payload) {
            ("struct", Value::Struct(fields)) => fields
                .iter()
                .try_for_each(|(name, d)| check_description(d).map_err(|e| e.in_field(name))),
            ("seq" | "option", d) => check_description(d).map_err(|e| e.in_field(kind)),
            ("map", Value::Seq(kv)) if kv.len() == 2 => kv.iter().enumerate().try_for_each(|(i, d)| {
                check_description(d)
                    .map_err(|e| e.in_index(i))
                    .map_err(|e| e.in_field("map"))
            }),
            ("enum", Value::String(any)) if any == "any" => Ok(()),
            (kind, payload) => Err(Error::malformed(format!(
                "schema container {kind:?} with a {} payload is not a type description (expected struct with a struct, seq or option with a description, map with a seq of two, enum with \"any\")",
                payload.type_name()
            ))),
        },
        other => Err(Error::malformed(format!(
            "a {} is not a type description (expected a type name or a container enum)",
            other.type_name()
        ))),
    }
}

/// What one entry of a page batch holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PageKind {
    /// The page is all zeros; no data.
    Zero,
    /// The page's bytes are in the batch's data area.
    Data,
}

impl PageKind {
    pub(crate) fn code(self) -> u64 {
        match self {
            PageKind::Zero => 1,
            PageKind::Data => 2,
        }
    }
}

/// Compression of a page batch's data area.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Compression {
    /// Stored as is.
    #[default]
    None,
    /// Zstandard at the given level.
    Zstd(i32),
    /// LZ4 block format with the uncompressed size known from the batch.
    Lz4,
}

impl Compression {
    pub(crate) fn code(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Zstd(_) => 1,
            Compression::Lz4 => 2,
        }
    }

    /// Name for listings.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Zstd(_) => "zstd",
            Compression::Lz4 => "lz4",
        }
    }
}

/// Most entries in one page batch.
pub const MAX_BATCH_PAGES: u32 = 65_536;
/// Length of the fixed part of a page batch body.
pub(crate) const PAGES_FIXED_LEN: usize = 24;

/// Writers pad a page batch so its data area starts at a multiple of this many
/// bytes from the start of the stream: page data then lands cache-line aligned
/// in any page-aligned buffer, which keeps the copies in and out of it at
/// memory speed. The pad is at most `PAGES_DATA_ALIGN - 1` bytes.
pub const PAGES_DATA_ALIGN: usize = 64;

/// One page of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page<'a> {
    /// Page number within the block, in stream page-size units.
    pub index: u64,
    /// The bytes, or `None` for a zero page.
    pub data: Option<&'a [u8]>,
}

/// A batch of pages of one block, borrowed from the stream (or, when the batch
/// was compressed, from the reader's buffer).
#[derive(Debug, Clone)]
pub struct PageBatch<'a> {
    /// Block id.
    pub block: u32,
    /// Epoch: pages of a higher epoch replace those of a lower one.
    pub epoch: u32,
    /// How the data area was stored.
    pub compression: u8,
    /// Bytes of the stored (possibly compressed) data area.
    pub stored_len: u32,
    entries: &'a [u8],
    data: Cow<'a, [u8]>,
    page_size: usize,
}

impl<'a> PageBatch<'a> {
    /// Number of pages (zero and data).
    pub fn len(&self) -> usize {
        self.entries.len() / 8
    }

    /// Whether the batch has no pages.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The pages in order. Entries were validated when the batch was parsed.
    pub fn pages(&self) -> impl Iterator<Item = Page<'_>> + '_ {
        let mut data_at = 0usize;
        self.entries.chunks_exact(8).map(move |e| {
            let word = u64::from_le_bytes([e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7]]);
            let index = word >> 8;
            let data = if word & 0xff == PageKind::Data.code() {
                let d = self.data.get(data_at..data_at + self.page_size);
                data_at += self.page_size;
                d
            } else {
                None
            };
            Page { index, data }
        })
    }

    /// Bytes of page data after decompression.
    pub fn data_len(&self) -> usize {
        self.data.len()
    }

    /// Parses a page batch body; `block_pages(id)` gives a block's size in pages.
    /// `max_raw` bounds the page data; a compressed data area is inflated into
    /// a buffer of its own, which `max_alloc` bounds too. `required_features`
    /// are the header's: a compression needs its feature bit.
    pub(crate) fn parse(
        body: &'a [u8],
        base: u64,
        page_size: u32,
        max_raw: u32,
        max_alloc: u64,
        required_features: u64,
        block_pages: &dyn Fn(u32) -> Option<u64>,
    ) -> Result<PageBatch<'a>> {
        let mut c = Cursor::new(body, base);
        let block = c.u32("block id")?;
        let epoch = c.u32("epoch")?;
        let at = c.offset();
        let compression = c.u8("compression")?;
        let feature = match compression {
            1 => Some((FEATURE_ZSTD, "zstd")),
            2 => Some((FEATURE_LZ4, "lz4")),
            _ => None,
        };
        if let Some((bit, name)) = feature.filter(|&(bit, _)| required_features & bit == 0) {
            return Err(Error::malformed(format!(
                "page batch uses {name} compression, but the header lacks the required feature {name} ({bit:#x})"
            ))
            .at_offset(at));
        }
        let data_pad = c.u8("data pad")?;
        if usize::from(data_pad) >= PAGES_DATA_ALIGN {
            return Err(Error::malformed(format!(
                "page batch data pad is {data_pad}; expected 0..{PAGES_DATA_ALIGN}"
            ))
            .at_offset(at + 1));
        }
        let reserved = c.array::<2>("reserved")?;
        if reserved != [0; 2] {
            return Err(
                Error::malformed("page batch reserved bytes are not zero").at_offset(at + 2)
            );
        }
        let count = c.u32("page count")?;
        let stored_len = c.u32("data length")?;
        let raw_len = c.u32("raw data length")?;
        let Some(pages_in_block) = block_pages(block) else {
            return Err(Error::malformed(format!(
                "page batch refers to undefined RAM block {block}"
            ))
            .at_offset(base));
        };
        if count == 0 || count > MAX_BATCH_PAGES {
            return Err(Error::malformed(format!(
                "page batch has {count} pages; expected 1..={MAX_BATCH_PAGES}"
            ))
            .at_offset(base + 12));
        }
        let entries = c.bytes(count as usize * 8, "page entries")?;
        let mut data_pages: u64 = 0;
        let mut last: Option<u64> = None;
        for (i, e) in entries.chunks_exact(8).enumerate() {
            let word = u64::from_le_bytes([e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7]]);
            let index = word >> 8;
            let entry_at = base + (PAGES_FIXED_LEN + 8 * i) as u64;
            match word & 0xff {
                1 => {}
                2 => data_pages += 1,
                k => {
                    return Err(Error::malformed(format!(
                        "page entry {i} has kind {k}; expected 1 (zero) or 2 (data)"
                    ))
                    .at_offset(entry_at))
                }
            }
            if index >= pages_in_block {
                return Err(Error::malformed(format!(
                    "page entry {i}: page {index} is beyond block {block} ({pages_in_block} pages)"
                ))
                .at_offset(entry_at));
            }
            if last.is_some_and(|l| index <= l) {
                return Err(Error::malformed(format!(
                    "page entry {i}: page {index} is not above the previous entry"
                ))
                .at_offset(entry_at));
            }
            last = Some(index);
        }
        let want_raw = data_pages * u64::from(page_size);
        if u64::from(raw_len) != want_raw {
            return Err(Error::malformed(format!(
                "page batch raw data length is {raw_len}; {data_pages} data pages need {want_raw}"
            ))
            .at_offset(base + 20));
        }
        if raw_len > max_raw {
            return Err(Error::limit(format!(
                "page batch inflates to {raw_len} bytes, over Limits::max_record_size"
            ))
            .at_offset(base + 20));
        }
        if matches!(compression, 1 | 2) && u64::from(raw_len) > max_alloc {
            return Err(Error::limit(format!(
                "compressed page batch inflates to {raw_len} bytes, over Limits::max_alloc ({max_alloc})"
            ))
            .at_offset(base + 20));
        }
        let pad_at = c.offset();
        if c.bytes(usize::from(data_pad), "data pad")?
            .iter()
            .any(|&b| b != 0)
        {
            return Err(Error::malformed("page batch data pad is not zero").at_offset(pad_at));
        }
        let data_at = c.offset();
        let stored = c.bytes(stored_len as usize, "page data")?;
        c.finish("page data")?;
        let data: Cow<'a, [u8]> = match compression {
            // A batch of zero pages only has an empty data area, whatever its
            // compression: no empty zstd frame or LZ4 block (docs/format.md §6.2).
            0..=2 if raw_len == 0 => {
                if stored_len != 0 {
                    return Err(Error::malformed(format!(
                        "page batch without data pages has a {stored_len}-byte data area; it must be empty (stored length 0), whatever the compression"
                    ))
                    .at_offset(base + 16));
                }
                Cow::Borrowed(stored)
            }
            0 => {
                if stored_len != raw_len {
                    return Err(Error::malformed(
                        "uncompressed page batch: data length differs from raw length",
                    )
                    .at_offset(base + 16));
                }
                Cow::Borrowed(stored)
            }
            1 => {
                let out = zstd::bulk::decompress(stored, raw_len as usize).map_err(|e| {
                    Error::malformed(format!("zstd page data does not decompress: {e}"))
                        .at_offset(data_at)
                })?;
                if out.len() != raw_len as usize {
                    return Err(Error::malformed(format!(
                        "zstd page data inflates to {} bytes, expected {raw_len}",
                        out.len()
                    ))
                    .at_offset(data_at));
                }
                Cow::Owned(out)
            }
            2 => {
                let mut out = vec![0u8; raw_len as usize];
                let n = lz4_flex::block::decompress_into(stored, &mut out).map_err(|e| {
                    Error::malformed(format!("lz4 page data does not decompress: {e}"))
                        .at_offset(data_at)
                })?;
                if n != raw_len as usize {
                    return Err(Error::malformed(format!(
                        "lz4 page data inflates to {n} bytes, expected {raw_len}"
                    ))
                    .at_offset(data_at));
                }
                Cow::Owned(out)
            }
            other => {
                return Err(
                    Error::unsupported(format!("page batch compression {other}")).at_offset(at),
                )
            }
        };
        Ok(PageBatch {
            block,
            epoch,
            compression,
            stored_len,
            entries,
            data,
            page_size: page_size as usize,
        })
    }
}

/// Where one record of interest sits in a file (an entry of the `index` record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// Kind of the indexed record.
    pub kind: RecordKind,
    /// Stream offset of the record.
    pub offset: u64,
    /// Block id for page batches, `u32::MAX` otherwise.
    pub block: u32,
    /// First page of a page batch (0 otherwise).
    pub first_page: u64,
    /// Last page of a page batch (0 otherwise).
    pub last_page: u64,
    /// Device instance name (empty otherwise).
    pub name: String,
}

/// The `end` record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct End {
    /// Number of records before this one.
    pub records: u64,
    /// Offset of the `index` record, if there is one.
    pub index_offset: Option<u64>,
}

/// Length of a framed `end` record: readers of files find it at the very end.
pub const END_FRAMED_LEN: usize = 32;

pub(crate) fn encode_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

pub(crate) fn read_str(c: &mut Cursor<'_>, what: &str) -> Result<String> {
    let at = c.offset();
    let n = c.count(what, 1)?;
    let b = c.bytes(n, what)?;
    String::from_utf8(b.to_vec())
        .map_err(|_| Error::malformed(format!("{what} is not UTF-8")).at_offset(at))
}

pub(crate) fn encode_names(first: u64, names: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    put_varint(&mut out, first);
    put_varint(&mut out, names.len() as u64);
    for n in names {
        encode_str(&mut out, n);
    }
    out
}

pub(crate) fn encode_ram_blocks(blocks: &[RamBlock]) -> Vec<u8> {
    let mut out = Vec::new();
    put_varint(&mut out, blocks.len() as u64);
    for b in blocks {
        out.extend_from_slice(&b.id.to_le_bytes());
        encode_str(&mut out, &b.name);
        out.extend_from_slice(&b.size.to_le_bytes());
        out.extend_from_slice(&b.page_size.to_le_bytes());
        out.extend_from_slice(&b.flags.to_le_bytes());
    }
    out
}

/// Parses a `ram-blocks` body, checking each block on its own (sizes, page
/// sizes, flags); rules across blocks (unique ids and names) are the caller's.
pub(crate) fn parse_ram_blocks(c: &mut Cursor<'_>, header: &Header) -> Result<Vec<RamBlock>> {
    let page_size = header.page_size;
    let n = c.count("block count", 21)?;
    let mut blocks = Vec::with_capacity(n);
    for _ in 0..n {
        let at = c.offset();
        let id = c.u32("block id")?;
        let name = read_str(c, "block name")?;
        let size_at = c.offset();
        let size = c.u64("block size")?;
        let bps = c.u32("block page size")?;
        let flags = c.u32("block flags")?;
        if size % u64::from(page_size) != 0 {
            return Err(Error::malformed(format!(
                "RAM block {name:?} size {size:#x} is not a multiple of the page size {page_size}"
            ))
            .at_offset(at));
        }
        if !bps.is_power_of_two() || !(512..=1 << 30).contains(&bps) {
            return Err(Error::malformed(format!(
                "RAM block {name:?} page size {bps} is not a power of two in 512..=1 GiB"
            ))
            .at_offset(size_at + 8));
        }
        // Later minor versions may define flags that readers ignore (§6.1).
        let reserved = flags & !RamBlock::KNOWN_FLAGS;
        if reserved != 0 && header.version_minor <= VERSION_MINOR {
            return Err(Error::malformed(format!(
                "RAM block {name:?} has reserved flag bits {reserved:#x} set"
            ))
            .at_offset(size_at + 12));
        }
        blocks.push(RamBlock {
            id,
            name,
            size,
            page_size: bps,
            flags,
        });
    }
    c.finish("RAM block list")?;
    Ok(blocks)
}

pub(crate) fn encode_index(entries: &[IndexEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    put_varint(&mut out, entries.len() as u64);
    for e in entries {
        encode_index_entry(&mut out, e);
    }
    out
}

/// Appends one index entry (without the count in front of the list).
pub(crate) fn encode_index_entry(out: &mut Vec<u8>, e: &IndexEntry) {
    out.extend_from_slice(&e.kind.0.to_le_bytes());
    out.extend_from_slice(&e.offset.to_le_bytes());
    out.extend_from_slice(&e.block.to_le_bytes());
    out.extend_from_slice(&e.first_page.to_le_bytes());
    out.extend_from_slice(&e.last_page.to_le_bytes());
    encode_str(out, &e.name);
}

/// Parses one index entry.
pub(crate) fn parse_index_entry(c: &mut Cursor<'_>) -> Result<IndexEntry> {
    Ok(IndexEntry {
        kind: RecordKind(c.u16("index kind")?),
        offset: c.u64("index offset")?,
        block: c.u32("index block")?,
        first_page: c.u64("index first page")?,
        last_page: c.u64("index last page")?,
        name: read_str(c, "index name")?,
    })
}

pub(crate) fn parse_index(c: &mut Cursor<'_>) -> Result<Vec<IndexEntry>> {
    let n = c.count("index entry count", 31)?;
    let mut entries = Vec::with_capacity(n);
    for _ in 0..n {
        entries.push(parse_index_entry(c)?);
    }
    c.finish("index")?;
    Ok(entries)
}

pub(crate) fn encode_end(end: &End) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    out.extend_from_slice(&end.records.to_le_bytes());
    out.extend_from_slice(&end.index_offset.unwrap_or(0).to_le_bytes());
    out
}

pub(crate) fn parse_end(c: &mut Cursor<'_>) -> Result<End> {
    let records = c.u64("record count")?;
    let index = c.u64("index offset")?;
    c.finish("end")?;
    Ok(End {
        records,
        index_offset: (index != 0).then_some(index),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_is_aligned_and_checked() {
        for len in 0..20 {
            let body: Vec<u8> = (0..len as u8).collect();
            let mut out = Vec::new();
            frame_into(&mut out, RecordKind::INFO, 0, &body);
            assert_eq!(out.len(), framed_len(len));
            assert_eq!(out.len() % 8, 0);
            let hdr: [u8; 8] = out[..8].try_into().unwrap();
            let (k, f, l) = parse_record_header(&hdr, 0, 1 << 20).unwrap();
            assert_eq!((k, f, l), (RecordKind::INFO, 0, len));
            assert_eq!(check_frame(&out, l, 0).unwrap(), &body[..]);
        }
        assert_eq!(framed_len(16), END_FRAMED_LEN);
    }
}
