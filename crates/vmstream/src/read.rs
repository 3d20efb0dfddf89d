//! Reading streams: from a slice, from any [`Read`], or pushed in pieces.
//!
//! All three entry points share [`StreamState`], which turns framed records into
//! typed [`Record`]s and keeps what later records depend on (names, RAM blocks).
//! After a fatal error each reader is poisoned: it answers every later call with
//! a usage error rather than continue from a torn state.

use std::collections::hash_map::{Entry, RandomState};
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::io::Read;

use crate::cursor::Cursor;
use crate::error::{Error, Result};
use crate::header::{Header, FEATURE_INDEX, FEATURE_QEMU_FRAMING, FIXED_LEN};
use crate::index::{entry_for, INDEXED_KINDS};
use crate::limits::Limits;
use crate::record::{
    check_description, check_frame_with, encode_index_entry, framed_len, parse_end, parse_index,
    parse_index_entry, parse_ram_blocks, parse_record_header, read_str, DeviceState, End,
    IndexEntry, PageBatch, RamBlock, RawRecord, RecordKind, SchemaRecord, RECORD_HEADER_LEN,
};
use crate::value::{self, NameTable, Value};

/// A typed record.
#[derive(Debug)]
#[non_exhaustive]
pub enum Record<'a> {
    /// Stream information and capabilities.
    Info(Value),
    /// Names were added to the stream's name table.
    Names {
        /// Id of the first new name.
        first: u64,
        /// How many names were added.
        count: usize,
    },
    /// A device type schema.
    Schema(SchemaRecord),
    /// One device's state.
    Device(DeviceState),
    /// RAM block definitions.
    RamBlocks(Vec<RamBlock>),
    /// A batch of pages.
    Pages(PageBatch<'a>),
    /// Epoch barrier: every page of this epoch and older has been sent.
    Epoch(u32),
    /// The file index.
    Index(Vec<IndexEntry>),
    /// The end of the stream.
    End(End),
    /// An optional record of a kind this reader does not interpret (including the
    /// QEMU conversion records), handed over as it is.
    Other(RawRecord<'a>),
}

/// A record together with where it sits.
#[derive(Debug)]
pub struct Item<'a> {
    /// Zero-based record number.
    pub index: u64,
    /// Stream offset of the record header.
    pub offset: u64,
    /// Kind code.
    pub kind: RecordKind,
    /// Length of the record on the wire, framing included.
    pub framed_len: usize,
    /// The typed record.
    pub record: Record<'a>,
}

/// What a reader knows about the stream so far.
#[derive(Debug)]
pub struct StreamState {
    header: Header,
    limits: Limits,
    names: NameTable,
    blocks: HashMap<u32, RamBlock>,
    block_order: Vec<u32>,
    records: u64,
    offset: u64,
    ended: bool,
    barrier: Option<u32>,
    /// Offset of the `info` record, once read.
    info_at: Option<u64>,
    /// Offset of the first `device` record, once read.
    device_at: Option<u64>,
    /// Offset of the `index` record, once read.
    index_at: Option<u64>,
    /// What the index must list, when the header announces one.
    index_check: Option<IndexCheck>,
    /// Published names, to refuse one published twice.
    name_ids: NameIds,
    /// Names of the RAM blocks defined so far.
    block_names: HashSet<String>,
    /// Whether record checksums are recomputed ([`Decoder::of_own_frames`]
    /// leaves them to the encoder that just wrote them).
    verify_crc: bool,
}

/// The entries a stream's index must hold (docs/format.md §7): one per record
/// of the kinds its version indexes, in stream order, encoded as the index
/// encodes them. Kept only while they fit one index record.
#[derive(Debug)]
struct IndexCheck {
    /// The kinds the index lists: `device` and `pages` in format 1.0, also
    /// `names` and `ram-blocks` from 1.1 on.
    kinds: &'static [RecordKind],
    /// The encoded entries, or `None` once they outgrew `cap`.
    entries: Option<Vec<u8>>,
    /// How many entries the index must hold.
    count: u64,
    /// Most bytes an index record may have.
    cap: usize,
}

impl IndexCheck {
    fn note(&mut self, entry: &IndexEntry) {
        self.count += 1;
        let Some(buf) = self.entries.as_mut() else {
            return;
        };
        let at = buf.len();
        encode_index_entry(buf, entry);
        if buf.len() > self.cap {
            // No index within the record size limit can list them all: a
            // stream with an index is then refused at its index record.
            buf.truncate(at);
            self.entries = None;
        }
    }

    /// Checks the `entries` of the index record against the records read.
    fn check(&self, entries: &[IndexEntry]) -> Result<()> {
        let Some(expected) = self.entries.as_deref() else {
            return Err(Error::malformed(format!(
                "the index must list {} records, more than an index record within Limits::max_record_size can hold",
                self.count
            )));
        };
        let mut want = Cursor::new(expected, 0);
        let mut n: u64 = 0;
        for (i, e) in entries.iter().enumerate() {
            if !self.kinds.contains(&e.kind) {
                continue; // kinds this version does not index are ignored
            }
            if want.remaining() == 0 {
                return Err(Error::malformed(format!(
                    "index entry {i} lists {}, but the stream has only {} records the index lists",
                    describe(e),
                    self.count
                )));
            }
            let w = parse_index_entry(&mut want)?;
            if w != *e {
                return Err(Error::malformed(format!(
                    "index entry {i} lists {}, where the stream has {}",
                    describe(e),
                    describe(&w)
                )));
            }
            n += 1;
        }
        if want.remaining() > 0 {
            let w = parse_index_entry(&mut want)?;
            return Err(Error::malformed(format!(
                "the index lists {n} of the stream's {} records it must list: {} is missing",
                self.count,
                describe(&w)
            )));
        }
        Ok(())
    }
}

/// An index entry in words, for messages.
fn describe(e: &IndexEntry) -> String {
    format!(
        "a {} record at offset {:#x} (block {:#x}, first {}, last {}, name {:?})",
        e.kind.name(),
        e.offset,
        e.block,
        e.first_page,
        e.last_page,
        e.name
    )
}

/// The names published so far, by a hash of each, so that a name published
/// twice is found without a second copy of every name.
#[derive(Debug, Default)]
struct NameIds {
    hasher: RandomState,
    /// Hash to the id of the first name with that hash.
    first: HashMap<u64, u64>,
    /// Ids of names whose hash an earlier, different name had.
    collided: Vec<u64>,
}

impl NameIds {
    /// The id of the published name equal to `name`, if there is one.
    fn find(&self, name: &str, table: &NameTable) -> Option<u64> {
        let &id = self.first.get(&self.hasher.hash_one(name))?;
        if table.get(id) == Some(name) {
            return Some(id);
        }
        self.collided
            .iter()
            .copied()
            .find(|&i| table.get(i) == Some(name))
    }

    fn insert(&mut self, name: &str, id: u64) {
        match self.first.entry(self.hasher.hash_one(name)) {
            Entry::Vacant(v) => {
                v.insert(id);
            }
            Entry::Occupied(_) => self.collided.push(id),
        }
    }
}

impl StreamState {
    /// State for a stream with this header (which took `header_len` bytes).
    pub fn new(header: Header, header_len: usize, limits: Limits) -> StreamState {
        StreamState {
            limits,
            names: NameTable::new(),
            blocks: HashMap::new(),
            block_order: Vec::new(),
            records: 0,
            offset: header_len as u64,
            ended: false,
            barrier: None,
            info_at: None,
            device_at: None,
            index_at: None,
            index_check: (header.optional_features & FEATURE_INDEX != 0).then(|| IndexCheck {
                kinds: if header.version_minor == 0 {
                    &[RecordKind::DEVICE, RecordKind::PAGES]
                } else {
                    &INDEXED_KINDS
                },
                entries: Some(Vec::new()),
                count: 0,
                cap: limits.max_body(RecordKind::INDEX, header.page_size) as usize,
            }),
            name_ids: NameIds::default(),
            block_names: HashSet::new(),
            verify_crc: true,
            header,
        }
    }

    /// The stream header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// RAM blocks defined so far, in definition order.
    pub fn blocks(&self) -> impl Iterator<Item = &RamBlock> {
        self.block_order.iter().filter_map(|id| self.blocks.get(id))
    }

    /// A RAM block by id.
    pub fn block(&self, id: u32) -> Option<&RamBlock> {
        self.blocks.get(&id)
    }

    /// Stream offset of the next record.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Records read so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Whether the `end` record has been read.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Parses a record header at the current offset: `(kind, flags, body_len)`.
    /// The body limit depends on the kind ([`Limits::max_body`]).
    fn record_header(&self, hdr: &[u8; RECORD_HEADER_LEN]) -> Result<(RecordKind, u16, usize)> {
        let kind = RecordKind(u16::from_le_bytes([hdr[0], hdr[1]]));
        let max = self.limits.max_body(kind, self.header.page_size);
        parse_record_header(hdr, self.offset, max).map_err(|e| e.at_record(self.records))
    }

    /// Parses one framed record (header + padded body + CRC) that starts at the
    /// current offset.
    pub fn parse<'a>(&mut self, framed: &'a [u8]) -> Result<Item<'a>> {
        let offset = self.offset;
        let index = self.records;
        let result = self.parse_inner(framed, offset, index);
        result.map_err(|e| e.at_offset(offset))
    }

    fn parse_inner<'a>(&mut self, framed: &'a [u8], offset: u64, index: u64) -> Result<Item<'a>> {
        if self.ended {
            return Err(Error::malformed("data after the end record").at_offset(offset));
        }
        let hdr: [u8; 8] = framed
            .get(..RECORD_HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| Error::truncated("record header", RECORD_HEADER_LEN, framed.len()))?;
        let (kind, flags, len) = self.record_header(&hdr)?;
        let body = check_frame_with(framed, len, offset, self.verify_crc)
            .map_err(|e| e.in_record(index, kind.name()))?;
        let raw = RawRecord {
            index,
            offset,
            kind,
            flags,
            body,
        };
        let record = self
            .typed(raw)
            .map_err(|e| e.in_record(index, kind.name()))?;
        if let Some(check) = self
            .index_check
            .as_mut()
            .filter(|c| c.kinds.contains(&kind))
        {
            let mut read = |at: usize, buf: &mut [u8]| {
                let src = at
                    .checked_add(buf.len())
                    .and_then(|end| body.get(at..end))
                    .ok_or_else(|| Error::truncated(kind.name(), buf.len(), body.len()))?;
                buf.copy_from_slice(src);
                Ok(())
            };
            let entry = entry_for(kind, offset, body.len(), &mut read)
                .map_err(|e| e.at_offset(offset).in_record(index, kind.name()))?;
            if let Some(entry) = entry {
                check.note(&entry);
            }
        }
        self.records += 1;
        self.offset += framed_len(len) as u64;
        Ok(Item {
            index,
            offset,
            kind,
            framed_len: framed_len(len),
            record,
        })
    }

    /// The rules of a record's kind that hold before its body is parsed:
    /// QEMU records only with QEMU framing, nothing but `end` after the index.
    fn check_kind(&self, raw: &RawRecord<'_>) -> Result<()> {
        let name = raw.kind.name();
        if raw.kind.is_qemu() && self.header.optional_features & FEATURE_QEMU_FRAMING == 0 {
            return Err(Error::malformed(format!(
                "QEMU conversion record {:#06x} in a stream without the qemu-framing feature",
                raw.kind.0
            ))
            .at_offset(raw.offset));
        }
        if let Some(at) = self.index_at.filter(|_| raw.kind != RecordKind::END) {
            return Err(Error::malformed(format!(
                "{name} record after the index record at offset {at:#x} (the index is the last record before end)"
            ))
            .at_offset(raw.offset));
        }
        Ok(())
    }

    fn typed<'a>(&mut self, raw: RawRecord<'a>) -> Result<Record<'a>> {
        self.check_kind(&raw)?;
        let base = raw.body_offset();
        let mut c = Cursor::new(raw.body, base);
        let limits = self.limits;
        Ok(match raw.kind {
            RecordKind::INFO => {
                if let Some(first) = self.info_at {
                    return Err(Error::malformed(format!(
                        "second info record (the first is at offset {first:#x}; a stream has at most one)"
                    ))
                    .at_offset(raw.offset));
                }
                if let Some(dev) = self.device_at {
                    return Err(Error::malformed(format!(
                        "info record after the device record at offset {dev:#x} (info must come before any device)"
                    ))
                    .at_offset(raw.offset));
                }
                let info = value::decode(raw.body, base, &self.names, &limits)?;
                self.info_at = Some(raw.offset);
                Record::Info(info)
            }
            RecordKind::NAMES => {
                let at = c.offset();
                let first = c.varint("first name id")?;
                if first != self.names.len() as u64 {
                    return Err(Error::malformed(format!(
                        "names record starts at id {first}, but {} names are defined (a names record is missing or repeated)",
                        self.names.len()
                    ))
                    .at_offset(at));
                }
                let count = c.count("name count", 1)?;
                for _ in 0..count {
                    let at = c.offset();
                    let name = read_str(&mut c, "name")?;
                    if let Some(id) = self.name_ids.find(&name, &self.names) {
                        return Err(Error::malformed(format!(
                            "name {name:?} is published again (it has id {id}; a name is published once)"
                        ))
                        .at_offset(at));
                    }
                    let id = self.names.len() as u64;
                    self.names.push_published(name, &limits)?;
                    if let Some(name) = self.names.get(id) {
                        self.name_ids.insert(name, id);
                    }
                }
                c.finish("names")?;
                Record::Names { first, count }
            }
            RecordKind::SCHEMA => {
                let type_name = read_str(&mut c, "type name")?;
                let version = c.u32("version")?;
                let at = c.offset();
                let schema = value::codec_decode_rest(&mut c, &self.names, &limits)?;
                check_description(&schema).map_err(|e| e.at_offset(at))?;
                Record::Schema(SchemaRecord {
                    type_name,
                    version,
                    schema,
                })
            }
            RecordKind::DEVICE => {
                let name = read_str(&mut c, "device name")?;
                let instance_id = c.u32("instance id")?;
                let type_name = read_str(&mut c, "type name")?;
                let version = c.u32("version")?;
                let value = value::codec_decode_rest(&mut c, &self.names, &limits)
                    .map_err(|e| e.in_device(&name))?;
                self.device_at.get_or_insert(raw.offset);
                Record::Device(DeviceState {
                    name,
                    instance_id,
                    type_name,
                    version,
                    value,
                })
            }
            RecordKind::RAM_BLOCKS => {
                let blocks = parse_ram_blocks(&mut c, &self.header)?;
                let total = self.blocks.len().saturating_add(blocks.len());
                if total > limits.max_ram_blocks as usize {
                    return Err(Error::limit(format!(
                        "{total} RAM blocks exceed Limits::max_ram_blocks ({})",
                        limits.max_ram_blocks
                    ))
                    .at_offset(base));
                }
                for (i, b) in blocks.iter().enumerate() {
                    let earlier = blocks[..i].iter().any(|o| o.id == b.id);
                    if earlier || self.blocks.contains_key(&b.id) {
                        return Err(Error::malformed(format!(
                            "RAM block id {} is defined twice{} (ids are unique in a stream)",
                            b.id,
                            if earlier { " in one record" } else { "" }
                        ))
                        .at_offset(base));
                    }
                }
                let mut here = HashSet::new();
                for b in &blocks {
                    if self.block_names.contains(&b.name) || !here.insert(b.name.as_str()) {
                        return Err(Error::malformed(format!(
                            "RAM block name {:?} is defined twice (names are unique in a stream)",
                            b.name
                        ))
                        .at_offset(base));
                    }
                }
                for b in &blocks {
                    self.block_order.push(b.id);
                    self.blocks.insert(b.id, b.clone());
                    self.block_names.insert(b.name.clone());
                }
                Record::RamBlocks(blocks)
            }
            RecordKind::PAGES => {
                let page_size = self.header.page_size;
                let blocks = &self.blocks;
                let lookup = |id: u32| blocks.get(&id).map(|b| b.size / u64::from(page_size));
                let batch = PageBatch::parse(
                    raw.body,
                    base,
                    page_size,
                    limits.max_page_data(page_size),
                    limits.max_alloc,
                    self.header.required_features,
                    &lookup,
                )?;
                if let Some(b) = self.barrier.filter(|&b| batch.epoch <= b) {
                    return Err(Error::malformed(format!(
                        "page batch of epoch {} after the barrier for epoch {b} (epochs at or below a barrier are complete)",
                        batch.epoch
                    ))
                    .at_offset(base + 4));
                }
                Record::Pages(batch)
            }
            RecordKind::EPOCH => {
                let e = c.u32("epoch")?;
                c.finish("epoch")?;
                if let Some(b) = self.barrier.filter(|&b| e <= b) {
                    return Err(Error::malformed(format!(
                        "epoch barrier {e} does not rise above the previous barrier {b}"
                    ))
                    .at_offset(base));
                }
                self.barrier = Some(e);
                Record::Epoch(e)
            }
            RecordKind::INDEX => {
                if self.header.optional_features & FEATURE_INDEX == 0 {
                    return Err(Error::malformed(
                        "index record in a stream without the index feature",
                    )
                    .at_offset(raw.offset));
                }
                let entries = parse_index(&mut c)?;
                if let Some(check) = &self.index_check {
                    check.check(&entries).map_err(|e| e.at_offset(base))?;
                }
                self.index_at = Some(raw.offset);
                Record::Index(entries)
            }
            RecordKind::END => {
                let end = parse_end(&mut c)?;
                if end.records != raw.index {
                    return Err(Error::malformed(format!(
                        "end record counts {} records, but {} came before it (records lost or added)",
                        end.records, raw.index
                    ))
                    .at_offset(base));
                }
                if end.index_offset != self.index_at {
                    let says = end.index_offset.map_or_else(
                        || "no index (0)".to_owned(),
                        |o| format!("the index at {o:#x}"),
                    );
                    let is = self.index_at.map_or_else(
                        || "has no index record".to_owned(),
                        |o| format!("has its index record at {o:#x}"),
                    );
                    return Err(Error::malformed(format!(
                        "end record gives {says}, but the stream {is}"
                    ))
                    .at_offset(base + 8));
                }
                self.ended = true;
                Record::End(end)
            }
            _ if raw.is_optional() => Record::Other(raw),
            kind => {
                return Err(Error::unsupported(format!(
                "unknown mandatory record kind {:#06x} ({} bytes); a newer writer made this stream",
                kind.0,
                raw.body.len()
            )))
            }
        })
    }
}

/// Reads a stream from a byte slice without copying page data.
#[derive(Debug)]
pub struct SliceReader<'a> {
    data: &'a [u8],
    state: StreamState,
    poisoned: bool,
}

impl<'a> SliceReader<'a> {
    /// Parses the header.
    pub fn new(data: &'a [u8], limits: Limits) -> Result<SliceReader<'a>> {
        let prefix = data
            .get(..FIXED_LEN)
            .ok_or_else(|| Error::truncated("header", FIXED_LEN, data.len()).at_offset(0))?;
        let len = Header::total_len(prefix)?;
        let header = Header::decode(data)?;
        Ok(SliceReader {
            data,
            state: StreamState::new(header, len, limits),
            poisoned: false,
        })
    }

    /// The stream state (header, blocks).
    pub fn state(&self) -> &StreamState {
        &self.state
    }

    /// The next record, or `None` after the `end` record.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Item<'a>>> {
        if self.poisoned {
            return Err(Error::usage("reader polled again after a fatal error"));
        }
        if self.state.ended {
            return Ok(None);
        }
        let at = self.state.offset as usize;
        let rest = self.data.get(at..).unwrap_or_default();
        if rest.is_empty() {
            self.poisoned = true;
            return Err(Error::malformed("stream ends without an end record")
                .at_offset(at as u64)
                .at_record(self.state.records));
        }
        match self.state.parse(rest) {
            Ok(item) => Ok(Some(item)),
            Err(e) => {
                self.poisoned = true;
                Err(e)
            }
        }
    }

    /// Bytes after the `end` record (a sound stream has none).
    pub fn trailing(&self) -> &'a [u8] {
        self.data
            .get(self.state.offset as usize..)
            .unwrap_or_default()
    }
}

/// Reads a stream from any [`Read`], one record at a time, into a reused buffer.
#[derive(Debug)]
pub struct StreamReader<R> {
    inner: R,
    state: StreamState,
    buf: Vec<u8>,
    poisoned: bool,
}

impl<R: Read> StreamReader<R> {
    /// Reads and checks the header.
    pub fn new(mut inner: R, limits: Limits) -> Result<StreamReader<R>> {
        let mut buf = vec![0u8; FIXED_LEN];
        read_exact_at(&mut inner, &mut buf, 0, "header")?;
        let len = Header::total_len(&buf)?;
        buf.resize(len, 0);
        read_exact_at(
            &mut inner,
            &mut buf[FIXED_LEN..],
            FIXED_LEN as u64,
            "header",
        )?;
        let header = Header::decode(&buf)?;
        Ok(StreamReader {
            inner,
            state: StreamState::new(header, len, limits),
            buf,
            poisoned: false,
        })
    }

    /// The stream state.
    pub fn state(&self) -> &StreamState {
        &self.state
    }

    /// The stream header.
    pub fn header(&self) -> &Header {
        self.state.header()
    }

    /// The next record, or `None` after the `end` record.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Item<'_>>> {
        if self.poisoned {
            return Err(Error::usage("reader polled again after a fatal error"));
        }
        if self.state.ended {
            return Ok(None);
        }
        if let Err(e) = self.fill() {
            self.poisoned = true;
            return Err(e);
        }
        match self.state.parse(&self.buf) {
            Ok(item) => Ok(Some(item)),
            Err(e) => {
                self.poisoned = true;
                Err(e)
            }
        }
    }

    fn fill(&mut self) -> Result<()> {
        let offset = self.state.offset;
        let index = self.state.records;
        let mut hdr = [0u8; RECORD_HEADER_LEN];
        let n = read_full(&mut self.inner, &mut hdr)
            .map_err(|e| e.at_offset(offset).at_record(index))?;
        if n == 0 {
            return Err(Error::malformed("stream ends without an end record")
                .at_offset(offset)
                .at_record(index));
        }
        if n < hdr.len() {
            return Err(Error::truncated("record header", RECORD_HEADER_LEN, n)
                .at_offset(offset)
                .at_record(index));
        }
        let (kind, _, len) = self.state.record_header(&hdr)?;
        let total = framed_len(len);
        self.buf.clear();
        self.buf.extend_from_slice(&hdr);
        // Grow as the bytes arrive, not by the declared length: a lying length on
        // a short input then costs nothing.
        let want = (total - RECORD_HEADER_LEN) as u64;
        let got = (&mut self.inner)
            .take(want)
            .read_to_end(&mut self.buf)
            .map_err(|e| {
                Error::from(e)
                    .at_offset(offset + RECORD_HEADER_LEN as u64)
                    .in_record(index, kind.name())
            })?;
        if (got as u64) < want {
            return Err(Error::truncated("record", total, got + RECORD_HEADER_LEN)
                .at_offset(offset)
                .in_record(index, kind.name()));
        }
        Ok(())
    }

    /// Reads one more byte to check the stream really ended; `Ok(true)` if it did.
    pub fn at_eof(&mut self) -> Result<bool> {
        let mut b = [0u8; 1];
        let n = read_full(&mut self.inner, &mut b).map_err(|e| e.at_offset(self.state.offset))?;
        Ok(n == 0)
    }

    /// Gives back the inner reader.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(n)
}

fn read_exact_at<R: Read>(r: &mut R, buf: &mut [u8], offset: u64, what: &str) -> Result<()> {
    let n = read_full(r, buf).map_err(|e| e.at_offset(offset))?;
    if n < buf.len() {
        return Err(Error::truncated(what, buf.len(), n).at_offset(offset + n as u64));
    }
    Ok(())
}

/// What the push [`Decoder`] produced.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<'a> {
    /// The header was complete.
    Header(Header),
    /// A record was complete.
    Record(Item<'a>),
}

/// A push decoder for sockets: feed it bytes as they arrive, in any split.
///
/// [`Decoder::feed`] consumes some of the input and may return an event; call
/// it again with the unconsumed rest. The events are the same however the input
/// is split.
#[derive(Debug)]
pub struct Decoder {
    core: Core,
    poisoned: bool,
}

#[derive(Debug)]
struct Core {
    limits: Limits,
    /// Recompute record checksums (false: [`Decoder::of_own_frames`]).
    verify_crc: bool,
    state: Option<StreamState>,
    buf: Vec<u8>,
    need: usize,
    /// The buffer holds a record already handed out; clear it before reuse.
    consumed: bool,
}

impl Decoder {
    /// A decoder waiting for the header.
    pub fn new(limits: Limits) -> Decoder {
        Decoder {
            core: Core {
                limits,
                verify_crc: true,
                state: None,
                buf: Vec::new(),
                need: FIXED_LEN,
                consumed: false,
            },
            poisoned: false,
        }
    }

    /// A decoder for the frames this process's own [`crate::FrameEncoder`]
    /// (or [`crate::StreamWriter`]) has just produced, e.g. a conversion read
    /// back in the same process: it checks and parses everything
    /// [`Decoder::new`]'s does except that it does not recompute record
    /// checksums, which the encoder computed a moment ago. Never for bytes
    /// that came from outside the process.
    pub fn of_own_frames(limits: Limits) -> Decoder {
        let mut d = Decoder::new(limits);
        d.core.verify_crc = false;
        d
    }

    /// The stream state, once the header has been decoded.
    pub fn state(&self) -> Option<&StreamState> {
        self.core.state.as_ref()
    }

    /// Whether the `end` record has been decoded.
    pub fn is_done(&self) -> bool {
        self.core.is_done()
    }

    /// Bytes that are buffered, waiting for the rest of a header or record.
    pub fn buffered(&self) -> usize {
        if self.core.consumed {
            0
        } else {
            self.core.buf.len()
        }
    }

    /// Consumes a prefix of `input`; returns how many bytes it took and, when a
    /// header or record became complete, the event.
    pub fn feed<'s>(&'s mut self, input: &'s [u8]) -> Result<(usize, Option<Event<'s>>)> {
        if self.poisoned {
            return Err(Error::usage("decoder fed again after a fatal error"));
        }
        let r = self.core.feed(input);
        if r.is_err() {
            self.poisoned = true;
        }
        r
    }

    /// Checks that the input ended at a clean point: after the `end` record.
    pub fn finish(&self) -> Result<()> {
        self.core.finish()
    }
}

impl Core {
    fn is_done(&self) -> bool {
        self.state.as_ref().is_some_and(StreamState::ended)
    }

    fn feed<'s>(&'s mut self, input: &'s [u8]) -> Result<(usize, Option<Event<'s>>)> {
        if self.consumed {
            self.buf.clear();
            self.consumed = false;
        }
        if self.is_done() {
            if input.is_empty() {
                return Ok((0, None));
            }
            let off = self.state.as_ref().map_or(0, StreamState::offset);
            return Err(Error::malformed("data after the end record").at_offset(off));
        }
        // Fast path: a whole record in the input and nothing buffered: parse in place.
        if self.buf.is_empty() {
            if let Some(state) = self.state.as_mut() {
                if let Some(hdr) = input.get(..RECORD_HEADER_LEN) {
                    let hdr: [u8; 8] = hdr.try_into().map_err(|_| Error::usage("short header"))?;
                    let (_, _, len) = state.record_header(&hdr)?;
                    let total = framed_len(len);
                    if input.len() >= total {
                        let item = state.parse(&input[..total])?;
                        return Ok((total, Some(Event::Record(item))));
                    }
                }
            }
        }
        let take = self.need.saturating_sub(self.buf.len()).min(input.len());
        self.buf.extend_from_slice(&input[..take]);
        if self.buf.len() < self.need {
            return Ok((take, None));
        }
        match self.state.as_mut() {
            None => {
                let len = Header::total_len(&self.buf)?;
                if self.need < len {
                    self.need = len;
                    return Ok((take, None));
                }
                let header = Header::decode(&self.buf)?;
                let mut state = StreamState::new(header.clone(), len, self.limits);
                state.verify_crc = self.verify_crc;
                self.state = Some(state);
                self.buf.clear();
                self.need = RECORD_HEADER_LEN;
                Ok((take, Some(Event::Header(header))))
            }
            Some(state) => {
                if self.need == RECORD_HEADER_LEN {
                    let hdr: [u8; 8] = self.buf[..RECORD_HEADER_LEN]
                        .try_into()
                        .map_err(|_| Error::usage("short header"))?;
                    let (_, _, len) = state.record_header(&hdr)?;
                    self.need = framed_len(len);
                    if self.buf.len() < self.need {
                        return Ok((take, None));
                    }
                }
                self.need = RECORD_HEADER_LEN;
                self.consumed = true;
                let item = state.parse(&self.buf)?;
                Ok((take, Some(Event::Record(item))))
            }
        }
    }

    fn finish(&self) -> Result<()> {
        if self.is_done() {
            return Ok(());
        }
        let off = self.state.as_ref().map_or(0, StreamState::offset);
        Err(Error::malformed(format!(
            "truncated stream: it ends without an end record ({} bytes of an incomplete {} buffered)",
            if self.consumed { 0 } else { self.buf.len() },
            if self.state.is_some() {
                "record"
            } else {
                "header"
            }
        ))
        .at_offset(off))
    }
}
