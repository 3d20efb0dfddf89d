//! Reading one device or one RAM range of a file without reading the rest
//! (docs/format.md §7.1).
//!
//! [`SeekReader`] opens a file at its tail: the `end` record in the last 32
//! bytes points at the `index` record, whose entries say where every `names`,
//! `device`, `ram-blocks` and `pages` record starts. Reading one device then
//! takes the `names` records before it and the device record; reading a RAM
//! range takes the `ram-blocks` records and the page batches that overlap the
//! range. A file without an index, or with a format 1.0 index that does not
//! list `names` and `ram-blocks` records, is mapped by walking the record
//! headers instead (8 bytes a record, bodies skipped).
//!
//! The index is a hint and as hostile as the rest of the file: every record
//! read through it is checked (framing, checksum, kind, and that it agrees with
//! its entry), every offset is checked against the file before it is used, and
//! nothing is allocated by a declared count before the bytes behind it are
//! known to be there.

use std::io::{Read, Seek, SeekFrom};
use std::ops::RangeInclusive;

use crate::cursor::Cursor;
use crate::error::{Error, Result};
use crate::header::{Header, FIXED_LEN};
use crate::index::{entry_for, INDEXED_KINDS};
use crate::limits::Limits;
use crate::record::{
    check_frame, framed_len, parse_end, parse_index, parse_ram_blocks, parse_record_header,
    read_str, DeviceState, End, IndexEntry, PageBatch, RamBlock, RecordKind, END_FRAMED_LEN,
    RECORD_HEADER_LEN,
};
use crate::value::{self, NameTable};

/// Where a [`SeekReader`]'s map of the file came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MapSource {
    /// The file's index lists every record the reader needs (format 1.1 and later).
    Index,
    /// The index lists devices and page batches only (format 1.0); the `names`
    /// and `ram-blocks` records were found by walking the record headers.
    IndexAndWalk,
    /// The file has no index; every record was found by walking the record headers.
    Walk,
}

/// Reads single devices and RAM ranges of a vmstream file through its index.
pub struct SeekReader<R> {
    inner: R,
    header: Header,
    limits: Limits,
    /// Offset of the first record (the header's length).
    first_record: u64,
    /// Records the map points at lie below this offset (the index's, or `end`'s).
    records_end: u64,
    end: End,
    /// Known entries, by rising offset.
    map: Vec<IndexEntry>,
    source: MapSource,
    /// Names as the `names` records applied so far left them.
    names: NameTable,
    /// How many `names` entries of the map have been applied.
    names_applied: usize,
    /// A `names` record failed half-way: the table is torn.
    names_torn: bool,
    blocks: Option<Vec<RamBlock>>,
    /// The record read last, framing included.
    buf: Vec<u8>,
}

impl<R> std::fmt::Debug for SeekReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeekReader")
            .field("header", &self.header)
            .field("end", &self.end)
            .field("source", &self.source)
            .field("entries", &self.map.len())
            .field("names", &self.names.len())
            .finish_non_exhaustive()
    }
}

impl<R: Read + Seek> SeekReader<R> {
    /// Reads the header, the `end` record at the tail and the index, and maps
    /// the file (walking the record headers where the index does not say enough).
    pub fn open(mut inner: R, limits: Limits) -> Result<SeekReader<R>> {
        let mut fixed = [0u8; FIXED_LEN];
        read_at(&mut inner, 0, &mut fixed, "header")?;
        let header_len = Header::total_len(&fixed)?;
        let mut hbuf = vec![0u8; header_len];
        read_at(&mut inner, 0, &mut hbuf, "header")?;
        let header = Header::decode(&hbuf)?;
        let first_record = header_len as u64;

        let len = inner.seek(SeekFrom::End(0)).map_err(Error::from)?;
        let end_offset = len
            .checked_sub(END_FRAMED_LEN as u64)
            .filter(|&at| at >= first_record && at.is_multiple_of(8))
            .ok_or_else(|| {
                Error::malformed(format!(
                    "a file of {len} bytes does not end with a 32-byte end record after its {header_len}-byte header (truncated, or bytes after the end?)"
                ))
                .at_offset(len)
            })?;
        let mut tail = [0u8; END_FRAMED_LEN];
        read_at(&mut inner, end_offset, &mut tail, "end record")?;
        let end = parse_tail(&tail, end_offset, limits.max_record_size)?;

        let mut reader = SeekReader {
            inner,
            header,
            limits,
            first_record,
            records_end: end_offset,
            end,
            map: Vec::new(),
            source: MapSource::Walk,
            names: NameTable::new(),
            names_applied: 0,
            names_torn: false,
            blocks: None,
            buf: Vec::new(),
        };
        let mut budget = limits.max_alloc;
        match end.index_offset {
            Some(at) => {
                reader.read_index(at, end_offset, &mut budget)?;
                reader.records_end = at;
                let listed = reader.header.version_minor >= 1
                    || reader
                        .map
                        .iter()
                        .any(|e| matches!(e.kind, RecordKind::NAMES | RecordKind::RAM_BLOCKS));
                if listed {
                    reader.source = MapSource::Index;
                } else {
                    reader.walk(&[RecordKind::NAMES, RecordKind::RAM_BLOCKS], &mut budget)?;
                    reader.source = MapSource::IndexAndWalk;
                }
            }
            None => reader.walk(&INDEXED_KINDS, &mut budget)?,
        }
        Ok(reader)
    }

    /// The stream header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The `end` record.
    pub fn end(&self) -> &End {
        &self.end
    }

    /// Where the map came from.
    pub fn source(&self) -> MapSource {
        self.source
    }

    /// The map of the file: an entry for every `names`, `device`, `ram-blocks`
    /// and `pages` record, by rising offset. These are hints until read.
    pub fn entries(&self) -> &[IndexEntry] {
        &self.map
    }

    /// The entries of `device` records, in stream order.
    pub fn devices(&self) -> impl Iterator<Item = &IndexEntry> + '_ {
        self.map.iter().filter(|e| e.kind == RecordKind::DEVICE)
    }

    /// Every device record with this instance name, in stream order (empty if
    /// there is none).
    pub fn device(&mut self, name: &str) -> Result<Vec<DeviceState>> {
        let offsets: Vec<u64> = self
            .devices()
            .filter(|e| e.name == name)
            .map(|e| e.offset)
            .collect();
        offsets.into_iter().map(|at| self.device_at(at)).collect()
    }

    /// Reads the device record at `offset`, an offset of one of
    /// [`SeekReader::devices`], with the names the records before it publish.
    pub fn device_at(&mut self, offset: u64) -> Result<DeviceState> {
        let i = self
            .map
            .binary_search_by_key(&offset, |e| e.offset)
            .ok()
            .filter(|&i| self.map[i].kind == RecordKind::DEVICE)
            .ok_or_else(|| {
                Error::usage(format!("no device record is mapped at offset {offset:#x}"))
            })?;
        self.apply_names_before(offset)?;
        let body_len = self.read_record(offset, RecordKind::DEVICE)?;
        let base = offset + RECORD_HEADER_LEN as u64;
        let body = &self.buf[RECORD_HEADER_LEN..RECORD_HEADER_LEN + body_len];
        let mut c = Cursor::new(body, base);
        let name = read_str(&mut c, "device name")?;
        let want = &self.map[i].name;
        if name != *want {
            return Err(Error::malformed(format!(
                "the index says the device record at offset {offset:#x} is {want:?}, but it holds {name:?}"
            ))
            .at_offset(base));
        }
        let instance_id = c.u32("instance id")?;
        let type_name = read_str(&mut c, "type name")?;
        let version = c.u32("version")?;
        let value = value::codec_decode_rest(&mut c, &self.names, &self.limits)
            .map_err(|e| e.in_device(&name).at_offset(offset))?;
        Ok(DeviceState {
            name,
            instance_id,
            type_name,
            version,
            value,
        })
    }

    /// The RAM blocks the file defines, in definition order (read on first use).
    pub fn ram_blocks(&mut self) -> Result<&[RamBlock]> {
        if self.blocks.is_none() {
            let offsets: Vec<u64> = self
                .map
                .iter()
                .filter(|e| e.kind == RecordKind::RAM_BLOCKS)
                .map(|e| e.offset)
                .collect();
            let mut all: Vec<RamBlock> = Vec::new();
            for at in offsets {
                let body_len = self.read_record(at, RecordKind::RAM_BLOCKS)?;
                let body = &self.buf[RECORD_HEADER_LEN..RECORD_HEADER_LEN + body_len];
                let mut c = Cursor::new(body, at + RECORD_HEADER_LEN as u64);
                let blocks = parse_ram_blocks(&mut c, &self.header).map_err(|e| e.at_offset(at))?;
                for b in blocks {
                    if all.iter().any(|o| o.id == b.id) {
                        return Err(Error::malformed(format!(
                            "RAM block id {} is defined twice",
                            b.id
                        ))
                        .at_offset(at));
                    }
                    if all.len() >= self.limits.max_ram_blocks as usize {
                        return Err(Error::limit(format!(
                            "more than Limits::max_ram_blocks ({}) RAM blocks",
                            self.limits.max_ram_blocks
                        ))
                        .at_offset(at));
                    }
                    all.push(b);
                }
            }
            self.blocks = Some(all);
        }
        Ok(self.blocks.as_deref().unwrap_or_default())
    }

    /// Calls `f` with every page batch of `block` whose pages may fall in
    /// `pages` (page indexes), in stream order, so that applying them in turn
    /// leaves each page as the stream last sent it. Batches that do not
    /// overlap are not read.
    pub fn for_each_batch(
        &mut self,
        block: u32,
        pages: RangeInclusive<u64>,
        f: &mut dyn FnMut(&PageBatch<'_>) -> Result<()>,
    ) -> Result<()> {
        let page_size = self.header.page_size;
        let blocks: Vec<(u32, u64)> = self
            .ram_blocks()?
            .iter()
            .map(|b| (b.id, b.size / u64::from(page_size)))
            .collect();
        if !blocks.iter().any(|&(id, _)| id == block) {
            return Err(Error::usage(format!(
                "the file defines no RAM block {block}"
            )));
        }
        let wanted: Vec<(u64, u64, u64)> = self
            .map
            .iter()
            .filter(|e| {
                e.kind == RecordKind::PAGES
                    && e.block == block
                    && e.first_page <= *pages.end()
                    && e.last_page >= *pages.start()
            })
            .map(|e| (e.offset, e.first_page, e.last_page))
            .collect();
        let lookup = |id: u32| blocks.iter().find(|b| b.0 == id).map(|b| b.1);
        for (at, first, last) in wanted {
            let body_len = self.read_record(at, RecordKind::PAGES)?;
            let base = at + RECORD_HEADER_LEN as u64;
            let body = &self.buf[RECORD_HEADER_LEN..RECORD_HEADER_LEN + body_len];
            let batch = PageBatch::parse(
                body,
                base,
                page_size,
                self.limits.max_page_data(page_size),
                self.limits.max_alloc,
                self.header.required_features,
                &lookup,
            )
            .map_err(|e| e.at_offset(at))?;
            let mut it = batch.pages();
            let got_first = it.next().map(|p| p.index);
            let got_last = it.last().map(|p| p.index).or(got_first);
            if batch.block != block || got_first != Some(first) || got_last != Some(last) {
                return Err(Error::malformed(format!(
                    "the index says the page batch at offset {at:#x} holds pages {first}..={last} of block {block}, but it holds {} of block {}",
                    match (got_first, got_last) {
                        (Some(a), Some(b)) => format!("pages {a}..={b}"),
                        _ => "no pages".to_owned(),
                    },
                    batch.block
                ))
                .at_offset(base));
            }
            f(&batch)?;
        }
        Ok(())
    }

    /// Fills `buf` with the final contents of block `block` from byte `offset`
    /// on: the last data each page was sent with, zeros for zero pages and for
    /// pages never sent. Reads only the batches that overlap the range.
    pub fn read_ram(&mut self, block: u32, offset: u64, buf: &mut [u8]) -> Result<()> {
        let size = self
            .ram_blocks()?
            .iter()
            .find(|b| b.id == block)
            .map(|b| b.size)
            .ok_or_else(|| Error::usage(format!("the file defines no RAM block {block}")))?;
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&end| end <= size)
            .ok_or_else(|| {
                Error::usage(format!(
                    "{} bytes at offset {offset:#x} do not fit RAM block {block} of {size:#x} bytes",
                    buf.len()
                ))
            })?;
        buf.fill(0);
        if buf.is_empty() {
            return Ok(());
        }
        let ps = u64::from(self.header.page_size);
        let pages = offset / ps..=(end - 1) / ps;
        self.for_each_batch(block, pages.clone(), &mut |batch| {
            for p in batch.pages().filter(|p| pages.contains(&p.index)) {
                let start = p.index * ps;
                let (from, to) = (start.max(offset), (start + ps).min(end));
                let out = &mut buf[(from - offset) as usize..(to - offset) as usize];
                match p.data {
                    Some(d) => {
                        out.copy_from_slice(&d[(from - start) as usize..(to - start) as usize])
                    }
                    None => out.fill(0),
                }
            }
            Ok(())
        })
    }

    /// Gives back the inner reader.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Applies the `names` records that lie before `offset` and are not
    /// applied yet, checking that each continues the table.
    fn apply_names_before(&mut self, offset: u64) -> Result<()> {
        if self.names_torn {
            return Err(Error::usage(
                "a names record failed earlier: this reader cannot decode values any more",
            ));
        }
        let r = self.apply_names_inner(offset);
        self.names_torn = r.is_err();
        r
    }

    fn apply_names_inner(&mut self, offset: u64) -> Result<()> {
        let pending: Vec<(u64, u64, u64)> = self
            .map
            .iter()
            .filter(|e| e.kind == RecordKind::NAMES && e.offset < offset)
            .skip(self.names_applied)
            .map(|e| (e.offset, e.first_page, e.last_page))
            .collect();
        for (at, first_hint, count_hint) in pending {
            let body_len = self.read_record(at, RecordKind::NAMES)?;
            let base = at + RECORD_HEADER_LEN as u64;
            let body = &self.buf[RECORD_HEADER_LEN..RECORD_HEADER_LEN + body_len];
            let mut c = Cursor::new(body, base);
            let first = c.varint("first name id")?;
            let count = c.count("name count", 1)?;
            if (first, count as u64) != (first_hint, count_hint) {
                return Err(Error::malformed(format!(
                    "the index says the names record at offset {at:#x} defines {count_hint} names from id {first_hint}, but it defines {count} from id {first}"
                ))
                .at_offset(base));
            }
            if first != self.names.len() as u64 {
                return Err(Error::malformed(format!(
                    "the names record at offset {at:#x} starts at id {first}, but the names records before it define {} (one is missing from the index, or repeated)",
                    self.names.len()
                ))
                .at_offset(base));
            }
            for _ in 0..count {
                let name = read_str(&mut c, "name")?;
                self.names
                    .push_published(name, &self.limits)
                    .map_err(|e| e.at_offset(at))?;
            }
            c.finish("names")?;
            self.names_applied += 1;
        }
        Ok(())
    }

    /// Reads the whole record at `offset` into `buf`, checks that it is of
    /// kind `want` and sound, and returns its body length.
    fn read_record(&mut self, offset: u64, want: RecordKind) -> Result<usize> {
        let (kind, len) = self.record_header(offset)?;
        if kind != want {
            return Err(Error::malformed(format!(
                "the index says a {} record starts at offset {offset:#x}, but a {} record does",
                want.name(),
                kind.name()
            ))
            .at_offset(offset));
        }
        let total = framed_len(len);
        self.buf.clear();
        self.buf.resize(total, 0);
        read_at(&mut self.inner, offset, &mut self.buf, want.name())?;
        check_frame(&self.buf, len, offset)?;
        Ok(len)
    }

    /// Reads and checks the header of the record at `offset`, which must lie
    /// wholly among the mapped records.
    fn record_header(&mut self, offset: u64) -> Result<(RecordKind, usize)> {
        if offset < self.first_record || !offset.is_multiple_of(8) || offset >= self.records_end {
            return Err(Error::malformed(format!(
                "offset {offset:#x} is not a record offset between the header and {:#x}",
                self.records_end
            ))
            .at_offset(offset));
        }
        let mut hdr = [0u8; RECORD_HEADER_LEN];
        read_at(&mut self.inner, offset, &mut hdr, "record header")?;
        let kind = RecordKind(u16::from_le_bytes([hdr[0], hdr[1]]));
        let max = self.limits.max_body(kind, self.header.page_size);
        let (kind, _, len) = parse_record_header(&hdr, offset, max)?;
        let fits = offset
            .checked_add(framed_len(len) as u64)
            .is_some_and(|end| end <= self.records_end);
        if !fits {
            return Err(Error::malformed(format!(
                "the {} record at offset {offset:#x} ({len}-byte body) runs past {:#x}, where the {} record starts",
                kind.name(),
                self.records_end,
                if self.end.index_offset.is_some() { "index" } else { "end" }
            ))
            .at_offset(offset + 4));
        }
        Ok((kind, len))
    }

    /// Reads and checks the index record at `at`, which must end where the
    /// `end` record starts, into the map.
    fn read_index(&mut self, at: u64, end_offset: u64, budget: &mut u64) -> Result<()> {
        self.records_end = end_offset;
        let (kind, len) = self.record_header(at)?;
        if kind != RecordKind::INDEX || at + framed_len(len) as u64 != end_offset {
            return Err(Error::malformed(format!(
                "the end record's index offset {at:#x} points at a {} record that does not end where the end record starts ({end_offset:#x})",
                kind.name()
            ))
            .at_offset(end_offset + RECORD_HEADER_LEN as u64 + 8));
        }
        self.buf.clear();
        self.buf.resize(framed_len(len), 0);
        read_at(&mut self.inner, at, &mut self.buf, "index")?;
        let body = check_frame(&self.buf, len, at)?;
        let base = at + RECORD_HEADER_LEN as u64;
        // The count is bounded by the bytes (31 per entry); bound the map by
        // Limits::max_alloc too before parsing allocates it.
        let declared = Cursor::new(body, base).count("index entry count", 31)?;
        charge(
            budget,
            (declared as u64).saturating_mul(ENTRY_COST),
            base,
            "the index",
        )?;
        let mut entries = parse_index(&mut Cursor::new(body, base))?;
        entries.retain(|e| INDEXED_KINDS.contains(&e.kind));
        entries.sort_by_key(|e| e.offset);
        for (i, e) in entries.iter().enumerate() {
            charge(budget, e.name.len() as u64, base, "the index")?;
            if e.offset < self.first_record || !e.offset.is_multiple_of(8) || e.offset >= at {
                return Err(Error::malformed(format!(
                    "index entry for a {} record points at offset {:#x}, not a record offset between the header and the index ({at:#x})",
                    e.kind.name(),
                    e.offset
                ))
                .at_offset(base));
            }
            if i > 0 && entries[i - 1].offset == e.offset {
                return Err(Error::malformed(format!(
                    "two index entries point at offset {:#x}",
                    e.offset
                ))
                .at_offset(base));
            }
            if e.kind == RecordKind::PAGES && e.first_page > e.last_page {
                return Err(Error::malformed(format!(
                    "index entry for the page batch at offset {:#x} has first page {} above last page {}",
                    e.offset, e.first_page, e.last_page
                ))
                .at_offset(base));
            }
        }
        self.map = entries;
        Ok(())
    }

    /// Walks the record headers from the first record to the index (or `end`)
    /// and maps the records of `kinds`, reading only the few body bytes their
    /// entries need.
    fn walk(&mut self, kinds: &[RecordKind], budget: &mut u64) -> Result<()> {
        let mut found = Vec::new();
        let mut offset = self.first_record;
        let mut records: u64 = 0;
        while offset < self.records_end {
            let (kind, len) = self.record_header(offset)?;
            if matches!(kind, RecordKind::END | RecordKind::INDEX) {
                return Err(Error::malformed(format!(
                    "{} record at offset {offset:#x}, before the end of the stream",
                    kind.name()
                ))
                .at_offset(offset));
            }
            if kinds.contains(&kind) {
                let body_at = offset + RECORD_HEADER_LEN as u64;
                let inner = &mut self.inner;
                let mut read = |at: usize, buf: &mut [u8]| {
                    read_at(inner, body_at + at as u64, buf, kind.name())
                };
                if let Some(e) = entry_for(kind, offset, len, &mut read)? {
                    charge(
                        budget,
                        ENTRY_COST.saturating_add(e.name.len() as u64),
                        offset,
                        "the map of records",
                    )?;
                    found.push(e);
                }
            }
            records += 1;
            offset += framed_len(len) as u64;
        }
        if records + u64::from(self.end.index_offset.is_some()) != self.end.records {
            return Err(Error::malformed(format!(
                "the end record counts {} records, but {records} come before {}",
                self.end.records,
                if self.end.index_offset.is_some() {
                    "the index"
                } else {
                    "it"
                }
            ))
            .at_offset(self.records_end));
        }
        // Merge with what the index listed, keeping offset order.
        found.extend(std::mem::take(&mut self.map));
        found.sort_by_key(|e| e.offset);
        found.dedup_by_key(|e| e.offset);
        self.map = found;
        Ok(())
    }
}

/// What one map entry costs in memory, its name aside.
const ENTRY_COST: u64 = std::mem::size_of::<IndexEntry>() as u64;

fn charge(budget: &mut u64, bytes: u64, at: u64, what: &str) -> Result<()> {
    *budget = budget.checked_sub(bytes).ok_or_else(|| {
        Error::limit(format!("{what} takes more than Limits::max_alloc")).at_offset(at)
    })?;
    Ok(())
}

/// Parses the final 32 bytes of a file as its `end` record.
fn parse_tail(tail: &[u8; END_FRAMED_LEN], offset: u64, max_body: u32) -> Result<End> {
    let not_end = |e: Error| {
        Error::malformed(format!(
            "the last 32 bytes are not an end record ({}): truncated, or bytes after the end?",
            e.message()
        ))
        .at_offset(offset)
    };
    let hdr: [u8; 8] = [
        tail[0], tail[1], tail[2], tail[3], tail[4], tail[5], tail[6], tail[7],
    ];
    let (kind, _, len) = parse_record_header(&hdr, offset, max_body).map_err(not_end)?;
    if kind != RecordKind::END || framed_len(len) != END_FRAMED_LEN {
        return Err(not_end(Error::malformed(format!(
            "a {} record with a {len}-byte body",
            kind.name()
        ))));
    }
    let body = check_frame(tail, len, offset).map_err(not_end)?;
    parse_end(&mut Cursor::new(body, offset + RECORD_HEADER_LEN as u64))
}

/// Reads exactly `buf.len()` bytes at `offset`; a short file is *malformed*.
fn read_at<R: Read + Seek>(r: &mut R, offset: u64, buf: &mut [u8], what: &str) -> Result<()> {
    r.seek(SeekFrom::Start(offset))
        .map_err(|e| Error::from(e).at_offset(offset))?;
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => return Err(Error::truncated(what, buf.len(), n).at_offset(offset + n as u64)),
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::from(e).at_offset(offset + n as u64)),
        }
    }
    Ok(())
}
