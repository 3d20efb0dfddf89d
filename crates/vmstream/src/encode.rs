//! The sans-IO frame encoder: writer calls in, framed records out.
//!
//! [`FrameEncoder`] makes every decision a writer makes — the header's feature
//! bits, name interning, page batching, record counting, offsets, the index,
//! the limits a reader will apply — and hands back the bytes of each call as
//! [`Frames`]: slices to send in order, or to append to a buffer. It does no
//! I/O, so one encoder can drive each channel of a live migration over a
//! non-blocking socket; [`StreamWriter`](crate::StreamWriter) is a thin layer
//! that feeds one and writes its output to any `Write`.

use std::collections::{HashMap, HashSet};

use crate::crc::Crc32c;
use crate::error::{Error, Result};
use crate::header::{Header, FEATURE_INDEX, FEATURE_LZ4, FEATURE_QEMU_FRAMING, FEATURE_ZSTD};
use crate::index::IndexBuilder;
use crate::limits::Limits;
use crate::record::{
    check_description, encode_end, encode_names, encode_ram_blocks, encode_str, frame_into,
    padded_body_len, Compression, DeviceState, End, PageKind, RamBlock, RecordKind, SchemaRecord,
    FLAG_OPTIONAL, MAX_BATCH_PAGES, PAGES_DATA_ALIGN, PAGES_FIXED_LEN, RECORD_HEADER_LEN,
};
use crate::value::{encode, NameTable, Value};
use crate::write::{is_zero, WriterOptions};

/// Turns writer calls into the framed records of one stream, without I/O.
///
/// The stream starts with [`FrameEncoder::header_bytes`]; every call then
/// returns the [`Frames`] it produced (possibly none: single pages collect in
/// a batch until it is full or flushed). The caller must send every byte of
/// every `Frames`, in order: offsets, page data alignment and the index
/// assume it. If it cannot, it calls [`FrameEncoder::fail`], and the encoder
/// refuses everything after.
///
/// A call the encoder refuses (a usage error, or a record the reader's
/// [`Limits`] in [`WriterOptions`] would refuse) produces nothing and changes
/// nothing: the stream goes on as if it had not been made.
///
/// Each stream has its own name table, so a migration channel that is its own
/// stream needs its own encoder.
#[derive(Debug)]
pub struct FrameEncoder {
    header: Header,
    header_bytes: Vec<u8>,
    options: WriterOptions,
    /// Pages per batch from the options and the record size limit.
    batch_pages: u32,
    names: NameTable,
    /// What the published names cost a reader (`Limits::max_alloc`).
    names_cost: u64,
    /// Defined blocks: id → pages, and their names.
    blocks: HashMap<u32, u64>,
    block_names: HashSet<String>,
    barrier: Option<u32>,
    pending: PendingBatch,
    /// Value bodies, and page data gathered for compression.
    scratch: Vec<u8>,
    out: Output,
    /// Whether an `info` or a `device` record was written (a reader takes
    /// one `info` record, before any device).
    info_written: bool,
    device_written: bool,
    state: State,
}

/// The bytes one [`FrameEncoder`] call produced: whole records, in order, as
/// byte slices that borrow the encoder's buffers and the caller's page data.
#[derive(Clone, Copy)]
pub struct Frames<'a> {
    offset: u64,
    len: usize,
    buf: &'a [u8],
    /// The encoder's pending batch data, where a flushed batch's data is.
    pending: &'a [u8],
    segs: &'a [Seg],
    pages: &'a [(u64, &'a [u8])],
}

impl<'a> Frames<'a> {
    /// Stream offset of the first byte.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the call produced no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Hands the bytes to `f` in order, slice by slice, and stops at the
    /// first error. Slices borrow the encoder's buffers and the caller's
    /// page data; the checksum of an uncompressed page batch is computed
    /// here, each page just before `f` gets it (while it is in the cache).
    pub fn try_for_each<E>(&self, mut f: impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        // The checksum of the uncompressed page batch being handed out.
        let mut crc: Option<Crc32c> = None;
        for seg in self.segs {
            match *seg {
                Seg::Own(a, b) => f(self.buf.get(a..b).unwrap_or_default())?,
                Seg::BatchHead(a, b) => {
                    let head = self.buf.get(a..b).unwrap_or_default();
                    crc.insert(Crc32c::new()).update(head);
                    f(head)?;
                }
                Seg::Flushed(a, b) => {
                    let data = self.pending.get(a..b).unwrap_or_default();
                    crc.get_or_insert_with(Crc32c::new).update(data);
                    f(data)?;
                }
                Seg::Page(i) => {
                    let data = self.pages.get(i).map_or(&[][..], |p| p.1);
                    crc.get_or_insert_with(Crc32c::new).update(data);
                    f(data)?;
                }
                Seg::BatchTail(pad) => {
                    let crc = crc.get_or_insert_with(Crc32c::new);
                    let mut tail = [0u8; 12];
                    let pad = usize::from(pad);
                    crc.update(&tail[..pad]);
                    tail[pad..pad + 4].copy_from_slice(&crc.finish().to_le_bytes());
                    f(&tail[..pad + 4])?;
                }
            }
        }
        Ok(())
    }

    /// Appends the bytes to `out`.
    pub fn append_to(&self, out: &mut Vec<u8>) {
        out.reserve(self.len);
        let r: Result<(), std::convert::Infallible> = self.try_for_each(|s| {
            out.extend_from_slice(s);
            Ok(())
        });
        let Ok(()) = r;
    }

    /// The bytes in one new buffer.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.append_to(&mut v);
        v
    }
}

impl std::fmt::Debug for Frames<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frames")
            .field("offset", &self.offset)
            .field("len", &self.len)
            .field("slices", &self.segs.len())
            .finish()
    }
}

/// Where a piece of a [`Frames`] lives.
#[derive(Debug, Clone, Copy)]
enum Seg {
    /// A range of the encoder's output buffer: whole records, or parts of
    /// compressed page batches, checksums included.
    Own(usize, usize),
    /// A range of the output buffer that starts an uncompressed page batch
    /// (record header, entries, data pad): its checksum starts here.
    BatchHead(usize, usize),
    /// A range of the pending batch data that was flushed in this call.
    Flushed(usize, usize),
    /// The data of the caller's page number `i` in this call.
    Page(usize),
    /// The end of an uncompressed page batch: this many zero bytes of
    /// padding, then the checksum.
    BatchTail(u8),
}

#[derive(Debug)]
enum State {
    Open,
    Finished,
    Failed(String),
}

/// A page batch collected by [`FrameEncoder::page`], not yet framed.
#[derive(Debug, Default)]
struct PendingBatch {
    block: u32,
    epoch: u32,
    entries: Vec<(u64, bool)>,
    /// The data pages: first those of a batch framed in this call, which the
    /// frames still borrow, then those of the pending batch. One buffer is
    /// reused, so batches are gathered in memory that is still in the cache.
    data: Vec<u8>,
    /// Bytes at the start of `data` that belong to a framed batch.
    flushed: usize,
}

/// The output of the current call, the stream position, and the index of
/// what was framed.
#[derive(Debug, Default)]
struct Output {
    buf: Vec<u8>,
    segs: Vec<Seg>,
    /// Stream offset of the next byte.
    offset: u64,
    /// Stream offset of the current call's first byte.
    start: u64,
    /// Records produced so far.
    records: u64,
    index: IndexBuilder,
}

impl Output {
    fn clear(&mut self) {
        self.buf.clear();
        self.segs.clear();
        self.start = self.offset;
    }

    fn push(&mut self, seg: Seg) {
        if let (Some(Seg::Own(_, end)), Seg::Own(a, b)) = (self.segs.last_mut(), seg) {
            if *end == a {
                *end = b;
                return;
            }
        }
        self.segs.push(seg);
    }

    /// Frames a record whose body is at hand.
    fn record(&mut self, kind: RecordKind, flags: u16, body: &[u8]) {
        self.index.note(kind, self.offset, &[body]);
        let start = self.buf.len();
        frame_into(&mut self.buf, kind, flags, body);
        let end = self.buf.len();
        self.push(Seg::Own(start, end));
        self.offset += (end - start) as u64;
        self.records += 1;
    }
}

impl FrameEncoder {
    /// An encoder for a stream with this header; feature flags for the chosen
    /// options are added to it. Fails on a header [`Header::encode`] refuses,
    /// or options out of range.
    pub fn new(mut header: Header, options: WriterOptions) -> Result<FrameEncoder> {
        if options.batch_pages == 0 || options.batch_pages > MAX_BATCH_PAGES {
            return Err(Error::usage(format!(
                "batch_pages must be in 1..={MAX_BATCH_PAGES}"
            )));
        }
        if (options.limits.max_record_size as usize) < END_BODY_LEN {
            return Err(Error::usage(format!(
                "Limits::max_record_size must be at least {END_BODY_LEN} (the end record)"
            )));
        }
        match options.compression {
            Compression::Zstd(_) => header.required_features |= FEATURE_ZSTD,
            Compression::Lz4 => header.required_features |= FEATURE_LZ4,
            Compression::None => {}
        }
        if options.index {
            header.optional_features |= FEATURE_INDEX;
        }
        let header_bytes = header.encode()?;
        let batch_pages = options
            .batch_pages
            .min(batch_capacity(&options.limits, header.page_size));
        Ok(FrameEncoder {
            out: Output {
                offset: header_bytes.len() as u64,
                start: header_bytes.len() as u64,
                index: IndexBuilder::new(options.index),
                ..Output::default()
            },
            header,
            header_bytes,
            options,
            batch_pages,
            names: NameTable::new(),
            names_cost: 0,
            blocks: HashMap::new(),
            block_names: HashSet::new(),
            barrier: None,
            pending: PendingBatch::default(),
            scratch: Vec::new(),
            info_written: false,
            device_written: false,
            state: State::Open,
        })
    }

    /// The header as encoded: the first bytes of the stream.
    pub fn header_bytes(&self) -> &[u8] {
        &self.header_bytes
    }

    /// The header, with the feature flags the options added.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The options in force.
    pub fn options(&self) -> &WriterOptions {
        &self.options
    }

    /// Stream offset of the next byte: the bytes produced so far, header included.
    pub fn offset(&self) -> u64 {
        self.out.offset
    }

    /// Records produced so far.
    pub fn records(&self) -> u64 {
        self.out.records
    }

    /// Pages a batch of [`FrameEncoder::page`] holds at most:
    /// [`WriterOptions::batch_pages`], lowered so that a batch stays within
    /// the record size limit, but at least one.
    pub fn batch_pages(&self) -> u32 {
        self.batch_pages
    }

    /// Pages collected and not yet framed.
    pub fn pending_pages(&self) -> usize {
        self.pending.entries.len()
    }

    /// Whether [`FrameEncoder::finish`] has produced the `end` record.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Finished)
    }

    /// Why the encoder refuses every call, if it does.
    pub fn failure(&self) -> Option<&str> {
        match &self.state {
            State::Failed(why) => Some(why),
            _ => None,
        }
    }

    /// Marks the stream torn (frames the encoder produced were not all sent):
    /// every later call is refused with a usage error that names `why`.
    pub fn fail(&mut self, why: impl Into<String>) {
        self.state = State::Failed(why.into());
    }

    /// Encodes the stream information / capabilities value.
    /// A stream has at most one, before any device.
    pub fn info(&mut self, info: &Value) -> Result<Frames<'_>> {
        self.begin()?;
        if self.info_written {
            return Err(Error::usage("a stream has one info record; it was written"));
        }
        if self.device_written {
            return Err(Error::usage("the info record must come before any device"));
        }
        check_value(info, &self.options.limits)?;
        self.scratch.clear();
        self.encode_value(RecordKind::INFO, info)?;
        self.commit(|e| {
            e.flush_pending()?;
            e.publish_names();
            e.out.record(RecordKind::INFO, 0, &e.scratch);
            Ok(())
        })?;
        self.info_written = true;
        Ok(self.frames(&[]))
    }

    /// Encodes a schema record; its description must follow the grammar of
    /// docs/format.md §4.3 ([`crate::schema::of`] makes one).
    pub fn schema(&mut self, schema: &SchemaRecord) -> Result<Frames<'_>> {
        self.begin()?;
        check_value(&schema.schema, &self.options.limits)?;
        check_description(&schema.schema).map_err(|e| {
            let refused =
                Error::usage(format!("schema of {:?}: {}", schema.type_name, e.message()));
            match &e.location().field {
                Some(path) => refused.in_field(path),
                None => refused,
            }
        })?;
        self.scratch.clear();
        encode_str(&mut self.scratch, &schema.type_name);
        self.scratch
            .extend_from_slice(&schema.version.to_le_bytes());
        self.encode_value(RecordKind::SCHEMA, &schema.schema)?;
        self.commit(|e| {
            e.flush_pending()?;
            e.publish_names();
            e.out.record(RecordKind::SCHEMA, FLAG_OPTIONAL, &e.scratch);
            Ok(())
        })?;
        Ok(self.frames(&[]))
    }

    /// Encodes one device's state.
    pub fn device(&mut self, dev: &DeviceState) -> Result<Frames<'_>> {
        self.begin()?;
        check_value(&dev.value, &self.options.limits).map_err(|e| e.in_device(&dev.name))?;
        self.scratch.clear();
        encode_str(&mut self.scratch, &dev.name);
        self.scratch
            .extend_from_slice(&dev.instance_id.to_le_bytes());
        encode_str(&mut self.scratch, &dev.type_name);
        self.scratch.extend_from_slice(&dev.version.to_le_bytes());
        self.encode_value(RecordKind::DEVICE, &dev.value)
            .map_err(|e| e.in_device(&dev.name))?;
        self.commit(|e| {
            e.flush_pending()?;
            e.publish_names();
            e.out.record(RecordKind::DEVICE, 0, &e.scratch);
            Ok(())
        })?;
        self.device_written = true;
        Ok(self.frames(&[]))
    }

    /// Serializes `state` with serde and encodes it as a device.
    pub fn device_serde<T: serde::Serialize + ?Sized>(
        &mut self,
        name: &str,
        instance_id: u32,
        type_name: &str,
        version: u32,
        state: &T,
    ) -> Result<Frames<'_>> {
        self.begin()?;
        let value = crate::to_value(state).map_err(|e| e.in_device(name))?;
        self.device(&DeviceState {
            name: name.to_owned(),
            instance_id,
            type_name: type_name.to_owned(),
            version,
            value,
        })
    }

    /// Defines RAM blocks. Ids must be new; sizes multiples of the page size.
    pub fn ram_blocks(&mut self, blocks: &[RamBlock]) -> Result<Frames<'_>> {
        self.begin()?;
        let ps = u64::from(self.header.page_size);
        // Check the whole list first: a refused call defines nothing.
        let mut ids = HashSet::new();
        let mut names = HashSet::new();
        for b in blocks {
            if b.size % ps != 0 {
                return Err(Error::usage(format!(
                    "RAM block {:?} size {} is not a multiple of the page size",
                    b.name, b.size
                )));
            }
            if self.blocks.contains_key(&b.id) || !ids.insert(b.id) {
                return Err(Error::usage(format!("RAM block id {} defined twice", b.id)));
            }
            if self.block_names.contains(&b.name) || !names.insert(b.name.as_str()) {
                return Err(Error::usage(format!(
                    "RAM block name {:?} defined twice",
                    b.name
                )));
            }
            if !b.page_size.is_power_of_two() || !(512..=1 << 30).contains(&b.page_size) {
                return Err(Error::usage(format!(
                    "RAM block {:?} page size {} is not a power of two in 512..=1 GiB",
                    b.name, b.page_size
                )));
            }
            let reserved = b.flags & !RamBlock::KNOWN_FLAGS;
            if reserved != 0 {
                return Err(Error::usage(format!(
                    "RAM block {:?} has reserved flag bits {reserved:#x} set",
                    b.name
                )));
            }
        }
        let max_blocks = self.options.limits.max_ram_blocks as usize;
        if self.blocks.len() + blocks.len() > max_blocks {
            return Err(Error::limit(format!(
                "{} RAM blocks would exceed the reader's Limits::max_ram_blocks ({max_blocks})",
                self.blocks.len() + blocks.len()
            )));
        }
        let body = encode_ram_blocks(blocks);
        self.check_body(RecordKind::RAM_BLOCKS, body.len())?;
        self.commit(|e| {
            e.flush_pending()?;
            e.out.record(RecordKind::RAM_BLOCKS, 0, &body);
            Ok(())
        })?;
        for b in blocks {
            self.blocks.insert(b.id, b.size / ps);
            self.block_names.insert(b.name.clone());
        }
        Ok(self.frames(&[]))
    }

    /// Adds one page to the current batch; the batch is framed when full, or
    /// when the block or epoch changes, or the page index does not rise. An
    /// all-zero page becomes a zero entry when [`WriterOptions::zero_pages`]
    /// is on.
    pub fn page(&mut self, block: u32, epoch: u32, index: u64, data: &[u8]) -> Result<Frames<'_>> {
        self.begin()?;
        self.check_page(block, epoch, index, Some(data))?;
        let zero = self.options.zero_pages && is_zero(data);
        self.push_page(block, epoch, index, (!zero).then_some(data))?;
        Ok(self.frames(&[]))
    }

    /// Adds a zero page (an entry with no data) to the current batch, whatever
    /// [`WriterOptions::zero_pages`] says.
    pub fn zero_page(&mut self, block: u32, epoch: u32, index: u64) -> Result<Frames<'_>> {
        self.begin()?;
        self.check_page(block, epoch, index, None)?;
        self.push_page(block, epoch, index, None)?;
        Ok(self.frames(&[]))
    }

    /// Frames pages of one block and epoch straight from the caller's buffers
    /// (uncompressed data is not copied: the frames borrow it). `pages` must
    /// have rising indexes; they go out in batches of as many pages as the
    /// record size limit allows (at most 65536), after any pending batch.
    pub fn pages<'a>(
        &'a mut self,
        block: u32,
        epoch: u32,
        pages: &'a [(u64, &'a [u8])],
    ) -> Result<Frames<'a>> {
        self.begin()?;
        let mut last = None;
        for &(index, data) in pages {
            self.check_page(block, epoch, index, Some(data))?;
            if last.is_some_and(|l| index <= l) {
                return Err(Error::usage("page indexes in a batch must rise"));
            }
            last = Some(index);
        }
        let cap = batch_capacity(&self.options.limits, self.header.page_size) as usize;
        let zero_pages = self.options.zero_pages;
        self.commit(|e| {
            e.flush_pending()?;
            let mut entries = Vec::with_capacity(pages.len().min(cap));
            for (n, chunk) in pages.chunks(cap).enumerate() {
                let base = n * cap;
                entries.clear();
                entries.extend(
                    chunk
                        .iter()
                        .map(|&(index, d)| (index, !(zero_pages && is_zero(d)))),
                );
                let data = chunk
                    .iter()
                    .zip(&entries)
                    .enumerate()
                    .filter(|(_, (_, e))| e.1)
                    .map(|(i, (p, _))| (Seg::Page(base + i), p.1));
                e.emit_batch(block, epoch, &entries, data)?;
            }
            Ok(())
        })?;
        Ok(self.frames(pages))
    }

    /// Frames the pending batch, if any.
    pub fn flush_pages(&mut self) -> Result<Frames<'_>> {
        self.begin()?;
        self.commit(FrameEncoder::flush_pending)?;
        Ok(self.frames(&[]))
    }

    /// Encodes an epoch barrier: every page of `epoch` and older has been
    /// sent. Barriers must rise.
    pub fn epoch(&mut self, epoch: u32) -> Result<Frames<'_>> {
        self.begin()?;
        if let Some(b) = self.barrier.filter(|&b| epoch <= b) {
            return Err(Error::usage(format!(
                "epoch barrier {epoch} does not rise above the previous barrier {b}"
            )));
        }
        self.commit(|e| {
            e.flush_pending()?;
            e.out.record(RecordKind::EPOCH, 0, &epoch.to_le_bytes());
            Ok(())
        })?;
        self.barrier = Some(epoch);
        Ok(self.frames(&[]))
    }

    /// Encodes a record of another kind (an extension). Extension kinds must
    /// be optional unless every reader knows them; QEMU conversion kinds
    /// (`0x0100..=0x01ff`) are optional, and only go in streams whose header
    /// has the `qemu-framing` feature.
    pub fn raw_record(
        &mut self,
        kind: RecordKind,
        optional: bool,
        body: &[u8],
    ) -> Result<Frames<'_>> {
        self.begin()?;
        let known = [
            RecordKind::INFO,
            RecordKind::NAMES,
            RecordKind::SCHEMA,
            RecordKind::DEVICE,
            RecordKind::RAM_BLOCKS,
            RecordKind::PAGES,
            RecordKind::EPOCH,
            RecordKind::INDEX,
            RecordKind::END,
        ];
        if kind.0 == 0 || known.contains(&kind) {
            return Err(Error::usage(format!(
                "kind {:#06x} is not an extension kind",
                kind.0
            )));
        }
        if kind.is_qemu() {
            if self.header.optional_features & FEATURE_QEMU_FRAMING == 0 {
                return Err(Error::usage(format!(
                    "QEMU conversion record {:#06x} in a stream without the qemu-framing feature",
                    kind.0
                )));
            }
            if !optional {
                return Err(Error::usage(format!(
                    "QEMU conversion record {:#06x} must be optional",
                    kind.0
                )));
            }
        }
        self.check_body(kind, body.len())?;
        self.commit(|e| {
            e.flush_pending()?;
            let flags = if optional { FLAG_OPTIONAL } else { 0 };
            e.out.record(kind, flags, body);
            Ok(())
        })?;
        Ok(self.frames(&[]))
    }

    /// Frames the pending batch, the index (if enabled, and if it fits in the
    /// record size limit; otherwise the stream has none) and the `end` record.
    /// Every later call is refused.
    pub fn finish(&mut self) -> Result<Frames<'_>> {
        self.begin()?;
        self.commit(|e| {
            e.flush_pending()?;
            let index_offset = match e.index_body() {
                Some(body) => {
                    let at = e.out.offset;
                    e.out.record(RecordKind::INDEX, FLAG_OPTIONAL, &body);
                    Some(at)
                }
                None => None,
            };
            let end = End {
                records: e.out.records,
                index_offset,
            };
            e.out.record(RecordKind::END, 0, &encode_end(&end));
            Ok(())
        })?;
        self.state = State::Finished;
        Ok(self.frames(&[]))
    }

    /// The `index` record body, unless the options turn the index off or it
    /// would exceed the record size limit (the stream then has none).
    fn index_body(&self) -> Option<Vec<u8>> {
        let max = self
            .options
            .limits
            .max_body(RecordKind::INDEX, self.header.page_size);
        let body = self.options.index.then(|| self.out.index.encode())?;
        (body.len() <= max as usize).then_some(body)
    }

    /// Refuses calls on a finished or failed encoder; clears the output.
    fn begin(&mut self) -> Result<()> {
        match &self.state {
            State::Open => {
                self.out.clear();
                // The frames of the last call are gone: drop the data they sent.
                let p = &mut self.pending;
                p.data.drain(..std::mem::take(&mut p.flushed));
                Ok(())
            }
            State::Finished => Err(Error::usage("stream already finished")),
            State::Failed(why) => Err(Error::usage(format!(
                "the writer failed earlier and the stream is torn ({why})"
            ))),
        }
    }

    /// Runs the part of a call that produces output; an error there leaves
    /// the stream torn, so the encoder fails.
    fn commit(&mut self, f: impl FnOnce(&mut FrameEncoder) -> Result<()>) -> Result<()> {
        let r = f(self);
        if let Err(e) = &r {
            self.fail(e.to_string());
        }
        r
    }

    /// Appends a checked value to the record body in `scratch`, interning
    /// its names, and checks the body and the new names against the limits.
    /// A refused value leaves no names behind.
    fn encode_value(&mut self, kind: RecordKind, value: &Value) -> Result<()> {
        let mark = self.names.len();
        encode(value, &mut self.names, &mut self.scratch);
        let checked = self.check_names_and_body(kind, self.scratch.len());
        if checked.is_err() {
            self.names.truncate_unpublished(mark);
        }
        checked
    }

    fn frames<'a>(&'a self, pages: &'a [(u64, &'a [u8])]) -> Frames<'a> {
        Frames {
            offset: self.out.start,
            len: (self.out.offset - self.out.start) as usize,
            buf: &self.out.buf,
            pending: &self.pending.data,
            segs: &self.out.segs,
            pages,
        }
    }

    fn check_body(&self, kind: RecordKind, len: usize) -> Result<()> {
        let max = self.options.limits.max_record_size;
        if len > max as usize {
            return Err(Error::limit(format!(
                "{} record body of {len} bytes would exceed the reader's Limits::max_record_size ({max})",
                kind.name()
            )));
        }
        Ok(())
    }

    /// Checks a value record's body and the names its value added.
    fn check_names_and_body(&self, kind: RecordKind, body_len: usize) -> Result<()> {
        self.check_body(kind, body_len)?;
        let limits = &self.options.limits;
        if self.names.len() > limits.max_names as usize {
            return Err(Error::limit(format!(
                "{} interned names would exceed the reader's Limits::max_names ({})",
                self.names.len(),
                limits.max_names
            )));
        }
        let mut cost = self.names_cost;
        let published = self.names.len() - self.names.unpublished_len();
        for id in published..self.names.len() {
            let name = self.names.get(id as u64).unwrap_or_default();
            if names_body_len(id as u64, &[name.len()]) > limits.max_record_size as usize {
                return Err(Error::limit(format!(
                    "name of {} bytes does not fit in a names record within Limits::max_record_size ({})",
                    name.len(),
                    limits.max_record_size
                )));
            }
            cost = cost.saturating_add(name_cost(name));
        }
        if cost > limits.max_alloc {
            return Err(Error::limit(format!(
                "interned names would take a reader more than Limits::max_alloc ({} bytes)",
                limits.max_alloc
            )));
        }
        Ok(())
    }

    /// Frames the names a checked value added: one `names` record, or several
    /// when one would exceed the record size limit.
    fn publish_names(&mut self) {
        let max = self.options.limits.max_record_size as usize;
        let first = (self.names.len() - self.names.unpublished_len()) as u64;
        let names = self.names.take_unpublished();
        let mut start = 0;
        while start < names.len() {
            // the body: first id, count, then each name with its length
            let mut entries = 0;
            let mut end = start;
            while end < names.len() {
                entries += varint_len(names[end].len() as u64) + names[end].len();
                let count = (end - start + 1) as u64;
                let len = varint_len(first + start as u64) + varint_len(count) + entries;
                if end > start && len > max {
                    break;
                }
                end += 1;
            }
            let body = encode_names(first + start as u64, &names[start..end]);
            self.out.record(RecordKind::NAMES, 0, &body);
            self.names_cost = names[start..end]
                .iter()
                .fold(self.names_cost, |c, n| c.saturating_add(name_cost(n)));
            start = end;
        }
    }

    fn check_page(&self, block: u32, epoch: u32, index: u64, data: Option<&[u8]>) -> Result<()> {
        let Some(&pages) = self.blocks.get(&block) else {
            return Err(Error::usage(format!(
                "page for undefined RAM block {block}"
            )));
        };
        if index >= pages {
            return Err(Error::usage(format!(
                "page {index} is beyond block {block} ({pages} pages)"
            )));
        }
        if index >= 1 << 56 {
            return Err(Error::usage("page index needs more than 56 bits"));
        }
        if let Some(b) = self.barrier.filter(|&b| epoch <= b) {
            return Err(Error::usage(format!(
                "page of epoch {epoch} after the barrier for epoch {b}"
            )));
        }
        match data {
            Some(d) if d.len() != self.header.page_size as usize => Err(Error::usage(format!(
                "page data is {} bytes; the page size is {}",
                d.len(),
                self.header.page_size
            ))),
            _ => Ok(()),
        }
    }

    fn push_page(&mut self, block: u32, epoch: u32, index: u64, data: Option<&[u8]>) -> Result<()> {
        let p = &self.pending;
        let restart = !p.entries.is_empty()
            && (p.block != block
                || p.epoch != epoch
                || p.entries.last().is_some_and(|&(i, _)| i >= index));
        if restart || self.pending.entries.len() >= self.batch_pages as usize {
            self.commit(FrameEncoder::flush_pending)?;
        }
        self.pending.block = block;
        self.pending.epoch = epoch;
        self.pending.entries.push((index, data.is_some()));
        if let Some(data) = data {
            self.pending.data.extend_from_slice(data);
        }
        Ok(())
    }

    /// Frames the pending batch. Its data stays where it is, for the frames,
    /// until the next call; the pending batch starts empty.
    fn flush_pending(&mut self) -> Result<()> {
        if self.pending.entries.is_empty() {
            return Ok(());
        }
        let entries = std::mem::take(&mut self.pending.entries);
        let data = std::mem::take(&mut self.pending.data);
        let (a, b) = (self.pending.flushed, data.len());
        let part = (a < b).then(|| (Seg::Flushed(a, b), &data[a..b]));
        let r = self.emit_batch(
            self.pending.block,
            self.pending.epoch,
            &entries,
            part.into_iter(),
        );
        self.pending.data = data;
        self.pending.flushed = b;
        // keep the allocation for the next batch
        self.pending.entries = entries;
        self.pending.entries.clear();
        r
    }

    /// Frames one page batch; `data` gives the data pages in entry order and
    /// where each lives. The data area of an uncompressed batch starts on a
    /// [`PAGES_DATA_ALIGN`] boundary of the stream.
    fn emit_batch<'p>(
        &mut self,
        block: u32,
        epoch: u32,
        entries: &[(u64, bool)],
        data: impl Iterator<Item = (Seg, &'p [u8])> + Clone,
    ) -> Result<()> {
        let raw_len: usize = data.clone().map(|(_, d)| d.len()).sum();
        let raw_len32 = u32::try_from(raw_len).map_err(|_| Error::usage("page batch too large"))?;
        let table_len = PAGES_FIXED_LEN + entries.len() * 8;
        let limits = &self.options.limits;
        let max_body = limits.max_body(RecordKind::PAGES, self.header.page_size) as usize;
        // A reader inflates a compressed batch into a buffer of its own.
        let max_inflated = limits.max_alloc;
        let record_at = self.out.offset;
        let head_at = self.out.buf.len();
        // A compressed batch: its head (no pad) goes in front of the data,
        // compressed into the output buffer. One whose compressed data would
        // not fit the limit is stored as it is.
        let mut compression = self.options.compression;
        let mut compressed: Option<usize> = None;
        if compression != Compression::None && raw_len as u64 > max_inflated {
            compression = Compression::None;
        }
        if compression != Compression::None {
            self.out
                .buf
                .resize(head_at + RECORD_HEADER_LEN + table_len, 0);
            if raw_len == 0 {
                compressed = Some(0);
            } else {
                let mut parts = data.clone();
                let input: &[u8] = match (parts.next(), parts.next()) {
                    (Some((_, one)), None) => one,
                    _ => {
                        self.scratch.clear();
                        for (_, d) in data.clone() {
                            self.scratch.extend_from_slice(d);
                        }
                        &self.scratch
                    }
                };
                let c = match compression {
                    Compression::Zstd(level) => zstd::bulk::compress(input, level)?,
                    _ => lz4_flex::block::compress(input),
                };
                if table_len + c.len() <= max_body {
                    self.out.buf.extend_from_slice(&c);
                    compressed = Some(c.len());
                } else {
                    self.out.buf.truncate(head_at);
                    compression = Compression::None;
                }
            }
        }
        let stored_len = compressed.unwrap_or(raw_len);
        let data_pad = match compressed {
            None if raw_len > 0 => {
                let data_at = record_at + (RECORD_HEADER_LEN + table_len) as u64;
                let align = PAGES_DATA_ALIGN as u64;
                (data_at.next_multiple_of(align) - data_at) as usize
            }
            _ => 0,
        };
        let body_len = table_len + data_pad + stored_len;
        if body_len > max_body {
            return Err(Error::usage(format!(
                "page batch body of {body_len} bytes exceeds the record size limit"
            )));
        }
        let body_len32 =
            u32::try_from(body_len).map_err(|_| Error::usage("page batch too large"))?;
        let mut head = Vec::with_capacity(RECORD_HEADER_LEN + table_len + data_pad);
        head.extend_from_slice(&RecordKind::PAGES.0.to_le_bytes());
        head.extend_from_slice(&0u16.to_le_bytes());
        head.extend_from_slice(&body_len32.to_le_bytes());
        head.extend_from_slice(&block.to_le_bytes());
        head.extend_from_slice(&epoch.to_le_bytes());
        head.push(compression.code());
        head.extend_from_slice(&[data_pad as u8, 0, 0]);
        head.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        head.extend_from_slice(&(stored_len as u32).to_le_bytes());
        head.extend_from_slice(&raw_len32.to_le_bytes());
        for &(index, has_data) in entries {
            let kind = if has_data {
                PageKind::Data
            } else {
                PageKind::Zero
            };
            head.extend_from_slice(&((index << 8) | kind.code()).to_le_bytes());
        }
        head.resize(RECORD_HEADER_LEN + table_len + data_pad, 0);
        let pad = padded_body_len(body_len) - body_len;
        let out = &mut self.out;
        match compressed {
            Some(n) => {
                out.buf[head_at..head_at + head.len()].copy_from_slice(&head);
                let body = &out.buf[head_at + RECORD_HEADER_LEN..head_at + head.len() + n];
                out.index.note(RecordKind::PAGES, record_at, &[body]);
                out.buf.resize(out.buf.len() + pad, 0);
                let crc = crate::crc32c(&out.buf[head_at..]);
                out.buf.extend_from_slice(&crc.to_le_bytes());
                out.push(Seg::Own(head_at, out.buf.len()));
            }
            None => {
                if self.options.index {
                    let mut parts = vec![&head[RECORD_HEADER_LEN..]];
                    parts.extend(data.clone().map(|(_, d)| d));
                    out.index.note(RecordKind::PAGES, record_at, &parts);
                }
                // The checksum is computed as the frames are handed out
                // (`Frames::try_for_each`), each page while it is in the cache.
                out.buf.extend_from_slice(&head);
                out.segs.push(Seg::BatchHead(head_at, out.buf.len()));
                out.segs.extend(data.map(|(seg, _)| seg));
                out.segs.push(Seg::BatchTail(pad as u8));
            }
        }
        out.offset += (RECORD_HEADER_LEN + padded_body_len(body_len) + 4) as u64;
        out.records += 1;
        Ok(())
    }
}

/// Most pages one batch may hold so that its body stays within
/// `Limits::max_record_size` whatever the pages hold (every page a data page,
/// stored uncompressed after the largest pad), but at least one: a `pages`
/// record may always carry one page (docs/format.md §6.2).
pub(crate) fn batch_capacity(limits: &Limits, page_size: u32) -> u32 {
    let fixed = (PAGES_FIXED_LEN + PAGES_DATA_ALIGN - 1) as u64;
    let per_page = u64::from(page_size) + 8;
    let n = u64::from(limits.max_record_size).saturating_sub(fixed) / per_page;
    n.clamp(1, u64::from(MAX_BATCH_PAGES)) as u32
}

/// Writers write no value deeper than this (docs/format.md §5.3), whatever
/// the limits.
const MAX_DEPTH: u32 = 128;

/// Length of an `end` record body.
const END_BODY_LEN: usize = 16;

/// The size of a decoded value's parts, as the reader charges them.
const VALUE_SIZE: u64 = std::mem::size_of::<Value>() as u64;
const FIELD_SIZE: u64 = std::mem::size_of::<(String, Value)>() as u64;

/// What one published name costs a reader.
fn name_cost(name: &str) -> u64 {
    name.len() as u64 + 32
}

fn varint_len(v: u64) -> usize {
    (64 - v.leading_zeros() as usize).max(1).div_ceil(7)
}

/// Length of a `names` record body from id `first` whose names have these lengths.
fn names_body_len(first: u64, lens: &[usize]) -> usize {
    varint_len(first)
        + varint_len(lens.len() as u64)
        + lens
            .iter()
            .map(|&l| varint_len(l as u64) + l)
            .sum::<usize>()
}

/// Checks that a reader with `limits` decodes `v`: nesting within
/// `max_depth` (and never deeper than 128), cost within `max_alloc`
/// (charged as docs/format.md §5.3 says), and struct field names unique.
fn check_value(v: &Value, limits: &Limits) -> Result<()> {
    let mut budget = Budget {
        left: limits.max_alloc,
        max: limits.max_alloc,
    };
    walk(v, limits.max_depth.min(MAX_DEPTH), &mut budget)
}

struct Budget {
    left: u64,
    max: u64,
}

impl Budget {
    fn charge(&mut self, bytes: u64) -> Result<()> {
        match self.left.checked_sub(bytes) {
            Some(left) => {
                self.left = left;
                Ok(())
            }
            None => Err(Error::limit(format!(
                "value would take a reader more than Limits::max_alloc ({} bytes) to decode",
                self.max
            ))),
        }
    }
}

fn walk(v: &Value, depth_left: u32, budget: &mut Budget) -> Result<()> {
    let enter = || {
        depth_left
            .checked_sub(1)
            .ok_or_else(|| Error::limit("value nests deeper than the reader's Limits::max_depth"))
    };
    match v {
        Value::Bytes(b) => budget.charge(b.len() as u64),
        Value::String(s) => budget.charge(s.len() as u64),
        Value::Seq(items) => {
            budget.charge(items.len() as u64 * VALUE_SIZE)?;
            let d = enter()?;
            for (i, item) in items.iter().enumerate() {
                walk(item, d, budget).map_err(|e| e.in_index(i))?;
            }
            Ok(())
        }
        Value::Struct(fields) => {
            budget.charge(fields.len() as u64 * FIELD_SIZE)?;
            let d = enter()?;
            let mut seen = HashSet::new();
            for (i, (name, item)) in fields.iter().enumerate() {
                // Small structs are checked pairwise, without a set.
                let twice = if fields.len() <= 16 {
                    fields[..i].iter().any(|(n, _)| n == name)
                } else {
                    !seen.insert(name.as_str())
                };
                if twice {
                    return Err(Error::usage(format!(
                        "field {name:?} appears twice in one struct"
                    )));
                }
                budget.charge(name.len() as u64)?;
                walk(item, d, budget).map_err(|e| e.in_field(name))?;
            }
            Ok(())
        }
        Value::Option(Some(inner)) => {
            budget.charge(VALUE_SIZE)?;
            walk(inner, enter()?, budget)
        }
        Value::Enum(name, payload) => {
            budget.charge(name.len() as u64)?;
            budget.charge(VALUE_SIZE)?;
            walk(payload, enter()?, budget).map_err(|e| e.in_field(name))
        }
        Value::Map(entries) => {
            budget.charge(entries.len() as u64 * 2 * VALUE_SIZE)?;
            let d = enter()?;
            for (i, (k, v)) in entries.iter().enumerate() {
                walk(k, d, budget).map_err(|e| e.in_index(i))?;
                walk(v, d, budget).map_err(|e| e.in_index(i))?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}
