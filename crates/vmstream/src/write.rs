//! Writing streams.

use std::collections::HashMap;
use std::io::Write;

use crate::crc::Crc32c;
use crate::error::{Error, Result};
use crate::header::{Header, FEATURE_INDEX, FEATURE_LZ4, FEATURE_ZSTD};
use crate::index::IndexBuilder;
use crate::record::{
    encode_end, encode_names, encode_ram_blocks, encode_str, frame_into, padded_body_len,
    Compression, DeviceState, End, PageKind, RamBlock, RecordKind, SchemaRecord, FLAG_OPTIONAL,
    MAX_BATCH_PAGES, PAGES_DATA_ALIGN, PAGES_FIXED_LEN, RECORD_HEADER_LEN,
};
use crate::value::{encode, NameTable, Value};

/// How a [`StreamWriter`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct WriterOptions {
    /// Compression of page batch data (announced as a must-understand feature).
    pub compression: Compression,
    /// Send all-zero pages as zero entries without data.
    pub zero_pages: bool,
    /// Write an `index` record before `end` (for files).
    pub index: bool,
    /// Pages per batch for [`StreamWriter::write_page`] (1..=65536).
    pub batch_pages: u32,
}

impl Default for WriterOptions {
    fn default() -> WriterOptions {
        WriterOptions {
            compression: Compression::None,
            zero_pages: true,
            index: true,
            batch_pages: 256,
        }
    }
}

impl WriterOptions {
    /// Sets [`WriterOptions::compression`].
    pub fn with_compression(mut self, compression: Compression) -> WriterOptions {
        self.compression = compression;
        self
    }

    /// Sets [`WriterOptions::zero_pages`].
    pub fn with_zero_pages(mut self, on: bool) -> WriterOptions {
        self.zero_pages = on;
        self
    }

    /// Sets [`WriterOptions::index`].
    pub fn with_index(mut self, on: bool) -> WriterOptions {
        self.index = on;
        self
    }

    /// Sets [`WriterOptions::batch_pages`].
    pub fn with_batch_pages(mut self, pages: u32) -> WriterOptions {
        self.batch_pages = pages;
        self
    }
}

/// Writes a stream to any [`Write`].
///
/// Names used by a value are published in a `names` record right before the
/// record that needs them, so a reader in a pipe decodes each record as it
/// arrives.
#[derive(Debug)]
pub struct StreamWriter<W: Write> {
    out: W,
    header: Header,
    options: WriterOptions,
    names: NameTable,
    blocks: HashMap<u32, u64>,
    offset: u64,
    records: u64,
    index: IndexBuilder,
    pending: PendingBatch,
    scratch: Vec<u8>,
    frame: Vec<u8>,
    finished: bool,
}

#[derive(Debug, Default)]
struct PendingBatch {
    block: u32,
    epoch: u32,
    entries: Vec<(u64, bool)>,
    data: Vec<u8>,
}

impl<W: Write> StreamWriter<W> {
    /// Writes the header. Feature flags for the chosen options are added to it.
    pub fn new(out: W, mut header: Header, options: WriterOptions) -> Result<StreamWriter<W>> {
        if options.batch_pages == 0 || options.batch_pages > MAX_BATCH_PAGES {
            return Err(Error::usage(format!(
                "batch_pages must be in 1..={MAX_BATCH_PAGES}"
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
        let bytes = header.encode()?;
        let mut w = StreamWriter {
            out,
            header,
            options,
            names: NameTable::new(),
            blocks: HashMap::new(),
            offset: 0,
            records: 0,
            index: IndexBuilder::new(options.index),
            pending: PendingBatch::default(),
            scratch: Vec::new(),
            frame: Vec::new(),
            finished: false,
        };
        w.out.write_all(&bytes)?;
        w.offset = bytes.len() as u64;
        Ok(w)
    }

    /// The header as written.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Bytes written so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Writes the stream information / capabilities value.
    pub fn write_info(&mut self, info: &Value) -> Result<()> {
        self.flush_pages()?;
        let mut body = Vec::new();
        encode(info, &mut self.names, &mut body);
        self.publish_names()?;
        self.record(RecordKind::INFO, 0, &body)
    }

    /// Writes a schema record.
    pub fn write_schema(&mut self, schema: &SchemaRecord) -> Result<()> {
        self.flush_pages()?;
        let mut body = Vec::new();
        encode_str(&mut body, &schema.type_name);
        body.extend_from_slice(&schema.version.to_le_bytes());
        encode(&schema.schema, &mut self.names, &mut body);
        self.publish_names()?;
        self.record(RecordKind::SCHEMA, FLAG_OPTIONAL, &body)
    }

    /// Writes one device's state.
    pub fn write_device(&mut self, dev: &DeviceState) -> Result<()> {
        self.flush_pages()?;
        let mut body = Vec::new();
        encode_str(&mut body, &dev.name);
        body.extend_from_slice(&dev.instance_id.to_le_bytes());
        encode_str(&mut body, &dev.type_name);
        body.extend_from_slice(&dev.version.to_le_bytes());
        encode(&dev.value, &mut self.names, &mut body);
        self.publish_names()?;
        self.record(RecordKind::DEVICE, 0, &body)
    }

    /// Serializes `state` with serde and writes it as a device.
    pub fn write_device_serde<T: serde::Serialize + ?Sized>(
        &mut self,
        name: &str,
        instance_id: u32,
        type_name: &str,
        version: u32,
        state: &T,
    ) -> Result<()> {
        let value = crate::to_value(state).map_err(|e| e.in_device(name))?;
        self.write_device(&DeviceState {
            name: name.to_owned(),
            instance_id,
            type_name: type_name.to_owned(),
            version,
            value,
        })
    }

    /// Defines RAM blocks. Ids must be new; sizes multiples of the page size.
    pub fn write_ram_blocks(&mut self, blocks: &[RamBlock]) -> Result<()> {
        self.flush_pages()?;
        let ps = u64::from(self.header.page_size);
        // Check the whole list first: a refused call defines nothing.
        for (i, b) in blocks.iter().enumerate() {
            if b.size % ps != 0 {
                return Err(Error::usage(format!(
                    "RAM block {:?} size {} is not a multiple of the page size",
                    b.name, b.size
                )));
            }
            if self.blocks.contains_key(&b.id) || blocks[..i].iter().any(|o| o.id == b.id) {
                return Err(Error::usage(format!("RAM block id {} defined twice", b.id)));
            }
        }
        self.record(RecordKind::RAM_BLOCKS, 0, &encode_ram_blocks(blocks))?;
        for b in blocks {
            self.blocks.insert(b.id, b.size / ps);
        }
        Ok(())
    }

    /// Adds one page to the current batch; the batch is written when full, or
    /// when the block or epoch changes, or the page index does not rise.
    pub fn write_page(&mut self, block: u32, epoch: u32, index: u64, data: &[u8]) -> Result<()> {
        self.check_page(block, index, Some(data))?;
        let zero = self.options.zero_pages && is_zero(data);
        self.push_page(block, epoch, index, (!zero).then_some(data))
    }

    /// Adds a zero page (an entry with no data) to the current batch, whatever
    /// [`WriterOptions::with_zero_pages`] says: for writers that know a page is
    /// zero without looking at it, or must keep a sender's own zero marks.
    pub fn write_zero_page(&mut self, block: u32, epoch: u32, index: u64) -> Result<()> {
        self.check_page(block, index, None)?;
        self.push_page(block, epoch, index, None)
    }

    fn push_page(&mut self, block: u32, epoch: u32, index: u64, data: Option<&[u8]>) -> Result<()> {
        let p = &self.pending;
        let restart = !p.entries.is_empty()
            && (p.block != block
                || p.epoch != epoch
                || p.entries.last().is_some_and(|&(i, _)| i >= index));
        if restart || self.pending.entries.len() >= self.options.batch_pages as usize {
            self.flush_pages()?;
        }
        self.pending.block = block;
        self.pending.epoch = epoch;
        self.pending.entries.push((index, data.is_some()));
        if let Some(data) = data {
            self.pending.data.extend_from_slice(data);
        }
        Ok(())
    }

    /// Writes one batch straight from the caller's buffers (no copy when
    /// uncompressed). `pages` must have rising indexes, at most 65536 of them.
    pub fn write_pages(&mut self, block: u32, epoch: u32, pages: &[(u64, &[u8])]) -> Result<()> {
        self.flush_pages()?;
        if pages.is_empty() {
            return Ok(());
        }
        if pages.len() > MAX_BATCH_PAGES as usize {
            return Err(Error::usage(format!(
                "at most {MAX_BATCH_PAGES} pages per batch"
            )));
        }
        let mut last = None;
        let mut entries = Vec::with_capacity(pages.len());
        for &(index, data) in pages {
            self.check_page(block, index, Some(data))?;
            if last.is_some_and(|l| index <= l) {
                return Err(Error::usage("page indexes in a batch must rise"));
            }
            last = Some(index);
            entries.push((index, !(self.options.zero_pages && is_zero(data))));
        }
        let data: Vec<&[u8]> = pages
            .iter()
            .zip(&entries)
            .filter(|(_, e)| e.1)
            .map(|(p, _)| p.1)
            .collect();
        self.emit_batch(block, epoch, &entries, &data)
    }

    /// Writes the pending batch, if any.
    pub fn flush_pages(&mut self) -> Result<()> {
        if self.pending.entries.is_empty() {
            return Ok(());
        }
        let p = std::mem::take(&mut self.pending);
        let r = self.emit_batch(p.block, p.epoch, &p.entries, &[&p.data]);
        // keep the allocation for the next batch
        self.pending = PendingBatch {
            entries: p.entries,
            data: p.data,
            ..PendingBatch::default()
        };
        self.pending.entries.clear();
        self.pending.data.clear();
        r
    }

    /// Writes an epoch barrier: every page of `epoch` and older has been sent.
    pub fn write_epoch(&mut self, epoch: u32) -> Result<()> {
        self.flush_pages()?;
        self.record(RecordKind::EPOCH, 0, &epoch.to_le_bytes())
    }

    /// Writes a record of another kind (an extension). Extension kinds must be
    /// optional unless every reader knows them.
    pub fn write_raw_record(
        &mut self,
        kind: RecordKind,
        optional: bool,
        body: &[u8],
    ) -> Result<()> {
        self.flush_pages()?;
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
        self.record(kind, if optional { FLAG_OPTIONAL } else { 0 }, body)
    }

    /// Flushes pages, writes the index (if enabled) and the `end` record, and
    /// returns the inner writer.
    pub fn finish(mut self) -> Result<W> {
        self.flush_pages()?;
        let index_offset = if self.options.index {
            let off = self.offset;
            let body = self.index.encode();
            self.record(RecordKind::INDEX, FLAG_OPTIONAL, &body)?;
            Some(off)
        } else {
            None
        };
        let end = End {
            records: self.records,
            index_offset,
        };
        self.record(RecordKind::END, 0, &encode_end(&end))?;
        self.finished = true;
        self.out.flush()?;
        Ok(self.out)
    }

    fn check_page(&self, block: u32, index: u64, data: Option<&[u8]>) -> Result<()> {
        if self.finished {
            return Err(Error::usage("stream already finished"));
        }
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
        match data {
            Some(d) if d.len() != self.header.page_size as usize => Err(Error::usage(format!(
                "page data is {} bytes; the page size is {}",
                d.len(),
                self.header.page_size
            ))),
            _ => Ok(()),
        }
    }

    fn emit_batch(
        &mut self,
        block: u32,
        epoch: u32,
        entries: &[(u64, bool)],
        data: &[&[u8]],
    ) -> Result<()> {
        let raw_len: usize = data.iter().map(|d| d.len()).sum();
        let table_len = PAGES_FIXED_LEN + entries.len() * 8;
        // Uncompressed data starts on a PAGES_DATA_ALIGN boundary of the stream.
        let data_pad = match self.options.compression {
            Compression::None if raw_len > 0 => {
                let data_at = self.offset + (RECORD_HEADER_LEN + table_len) as u64;
                let align = PAGES_DATA_ALIGN as u64;
                (data_at.next_multiple_of(align) - data_at) as usize
            }
            _ => 0,
        };
        let mut fixed = Vec::with_capacity(table_len + data_pad);
        fixed.extend_from_slice(&block.to_le_bytes());
        fixed.extend_from_slice(&epoch.to_le_bytes());
        fixed.push(self.options.compression.code());
        fixed.extend_from_slice(&[data_pad as u8, 0, 0]);
        fixed.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        let stored_len_at = fixed.len();
        fixed.extend_from_slice(&0u32.to_le_bytes());
        fixed.extend_from_slice(
            &u32::try_from(raw_len)
                .map_err(|_| Error::usage("page batch too large"))?
                .to_le_bytes(),
        );
        for &(index, has_data) in entries {
            let kind = if has_data {
                PageKind::Data
            } else {
                PageKind::Zero
            };
            fixed.extend_from_slice(&((index << 8) | kind.code()).to_le_bytes());
        }
        fixed.resize(table_len + data_pad, 0);
        let compressed: Option<Vec<u8>> = match self.options.compression {
            Compression::None => None,
            _ if raw_len == 0 => Some(Vec::new()),
            Compression::Zstd(level) => {
                self.scratch.clear();
                for d in data {
                    self.scratch.extend_from_slice(d);
                }
                Some(zstd::bulk::compress(&self.scratch, level)?)
            }
            Compression::Lz4 => {
                self.scratch.clear();
                for d in data {
                    self.scratch.extend_from_slice(d);
                }
                Some(lz4_flex::block::compress(&self.scratch))
            }
        };
        let stored_len = compressed.as_ref().map_or(raw_len, Vec::len);
        fixed[stored_len_at..stored_len_at + 4].copy_from_slice(&(stored_len as u32).to_le_bytes());
        match &compressed {
            Some(c) => self.record_parts(RecordKind::PAGES, 0, &[&fixed, c]),
            None => {
                let mut parts: Vec<&[u8]> = Vec::with_capacity(data.len() + 1);
                parts.push(&fixed);
                parts.extend_from_slice(data);
                self.record_parts(RecordKind::PAGES, 0, &parts)
            }
        }
    }

    fn publish_names(&mut self) -> Result<()> {
        let first = self.names.len() - self.names.unpublished_len();
        let names = self.names.take_unpublished();
        if names.is_empty() {
            return Ok(());
        }
        let body = encode_names(first as u64, names);
        self.record(RecordKind::NAMES, 0, &body)
    }

    fn record(&mut self, kind: RecordKind, flags: u16, body: &[u8]) -> Result<()> {
        if self.finished {
            return Err(Error::usage("stream already finished"));
        }
        self.index.note(kind, self.offset, &[body]);
        self.frame.clear();
        frame_into(&mut self.frame, kind, flags, body);
        self.out.write_all(&self.frame)?;
        self.offset += self.frame.len() as u64;
        self.records += 1;
        Ok(())
    }

    /// Writes a record whose body is the concatenation of `parts`, without
    /// joining them.
    fn record_parts(&mut self, kind: RecordKind, flags: u16, parts: &[&[u8]]) -> Result<()> {
        if self.finished {
            return Err(Error::usage("stream already finished"));
        }
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let len32 = u32::try_from(len).map_err(|_| Error::usage("record body exceeds 4 GiB"))?;
        self.index.note(kind, self.offset, parts);
        let mut hdr = [0u8; RECORD_HEADER_LEN];
        hdr[..2].copy_from_slice(&kind.0.to_le_bytes());
        hdr[2..4].copy_from_slice(&flags.to_le_bytes());
        hdr[4..].copy_from_slice(&len32.to_le_bytes());
        let mut crc = Crc32c::new();
        crc.update(&hdr);
        self.out.write_all(&hdr)?;
        for p in parts {
            crc.update(p);
            self.out.write_all(p)?;
        }
        let pad = [0u8; 8];
        let pad = &pad[..padded_body_len(len) - len];
        crc.update(pad);
        self.out.write_all(pad)?;
        self.out.write_all(&crc.finish().to_le_bytes())?;
        self.offset += (RECORD_HEADER_LEN + padded_body_len(len) + 4) as u64;
        self.records += 1;
        Ok(())
    }
}

/// Whether a page is all zeros (word at a time).
pub fn is_zero(data: &[u8]) -> bool {
    let (chunks, rest) = data.split_at(data.len() - data.len() % 16);
    chunks
        .chunks_exact(16)
        .all(|c| u128::from_ne_bytes(c.try_into().unwrap_or([1; 16])) == 0)
        && rest.iter().all(|&b| b == 0)
}
