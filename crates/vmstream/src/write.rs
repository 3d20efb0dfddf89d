//! Writing streams: [`StreamWriter`] feeds a [`FrameEncoder`] and writes what
//! it produces to any [`Write`].

use std::io::Write;

use crate::encode::{FrameEncoder, Frames};
use crate::error::{Error, Result};
use crate::header::Header;
use crate::limits::Limits;
use crate::record::{Compression, DeviceState, RamBlock, RecordKind, SchemaRecord};
use crate::value::Value;

/// How a [`StreamWriter`] or a [`FrameEncoder`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct WriterOptions {
    /// Compression of page batch data (announced as a must-understand feature).
    pub compression: Compression,
    /// Send all-zero pages as zero entries without data.
    pub zero_pages: bool,
    /// Write an `index` record before `end` (for files).
    pub index: bool,
    /// Pages per batch for [`StreamWriter::write_page`] (1..=65536); fewer
    /// when the record size limit calls for it.
    pub batch_pages: u32,
    /// The limits of the readers the stream is for (default
    /// [`Limits::default`]): the writer refuses, or splits, whatever such a
    /// reader would refuse.
    pub limits: Limits,
}

impl Default for WriterOptions {
    fn default() -> WriterOptions {
        WriterOptions {
            compression: Compression::None,
            zero_pages: true,
            index: true,
            batch_pages: 256,
            limits: Limits::default(),
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

    /// Sets [`WriterOptions::limits`].
    pub fn with_limits(mut self, limits: Limits) -> WriterOptions {
        self.limits = limits;
        self
    }
}

/// Writes a stream to any [`Write`].
///
/// Names used by a value are published in a `names` record right before the
/// record that needs them, so a reader in a pipe decodes each record as it
/// arrives. A call the writer refuses writes nothing and leaves the writer as
/// it was. After the [`Write`] fails, the stream is torn: the writer answers
/// every later call with an error saying so.
#[derive(Debug)]
pub struct StreamWriter<W: Write> {
    out: W,
    enc: FrameEncoder,
}

impl<W: Write> StreamWriter<W> {
    /// Writes the header. Feature flags for the chosen options are added to it.
    pub fn new(mut out: W, header: Header, options: WriterOptions) -> Result<StreamWriter<W>> {
        let enc = FrameEncoder::new(header, options)?;
        out.write_all(enc.header_bytes())
            .map_err(|e| Error::from(e).at_offset(0))?;
        Ok(StreamWriter { out, enc })
    }

    /// The header as written.
    pub fn header(&self) -> &Header {
        self.enc.header()
    }

    /// Bytes written so far.
    pub fn offset(&self) -> u64 {
        self.enc.offset()
    }

    /// The encoder that decides what is written.
    pub fn encoder(&self) -> &FrameEncoder {
        &self.enc
    }

    /// Writes the stream information / capabilities value.
    pub fn write_info(&mut self, info: &Value) -> Result<()> {
        let sent = send(&mut self.out, self.enc.info(info));
        self.settle(sent)
    }

    /// Writes a schema record.
    pub fn write_schema(&mut self, schema: &SchemaRecord) -> Result<()> {
        let sent = send(&mut self.out, self.enc.schema(schema));
        self.settle(sent)
    }

    /// Writes one device's state.
    pub fn write_device(&mut self, dev: &DeviceState) -> Result<()> {
        let sent = send(&mut self.out, self.enc.device(dev));
        self.settle(sent)
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
        let frames = self
            .enc
            .device_serde(name, instance_id, type_name, version, state);
        let sent = send(&mut self.out, frames);
        self.settle(sent)
    }

    /// Defines RAM blocks. Ids must be new; sizes multiples of the page size.
    pub fn write_ram_blocks(&mut self, blocks: &[RamBlock]) -> Result<()> {
        let sent = send(&mut self.out, self.enc.ram_blocks(blocks));
        self.settle(sent)
    }

    /// Adds one page to the current batch; the batch is written when full, or
    /// when the block or epoch changes, or the page index does not rise.
    pub fn write_page(&mut self, block: u32, epoch: u32, index: u64, data: &[u8]) -> Result<()> {
        let sent = send(&mut self.out, self.enc.page(block, epoch, index, data));
        self.settle(sent)
    }

    /// Adds a zero page (an entry with no data) to the current batch, whatever
    /// [`WriterOptions::with_zero_pages`] says: for writers that know a page is
    /// zero without looking at it, or must keep a sender's own zero marks.
    pub fn write_zero_page(&mut self, block: u32, epoch: u32, index: u64) -> Result<()> {
        let sent = send(&mut self.out, self.enc.zero_page(block, epoch, index));
        self.settle(sent)
    }

    /// Writes pages straight from the caller's buffers (no copy when
    /// uncompressed), after any pending batch. `pages` must have rising
    /// indexes; they go out in one batch, or in several when one would exceed
    /// the record size limit or 65536 pages.
    pub fn write_pages(&mut self, block: u32, epoch: u32, pages: &[(u64, &[u8])]) -> Result<()> {
        let sent = send(&mut self.out, self.enc.pages(block, epoch, pages));
        self.settle(sent)
    }

    /// Writes the pending batch, if any.
    pub fn flush_pages(&mut self) -> Result<()> {
        let sent = send(&mut self.out, self.enc.flush_pages());
        self.settle(sent)
    }

    /// Writes an epoch barrier: every page of `epoch` and older has been sent.
    pub fn write_epoch(&mut self, epoch: u32) -> Result<()> {
        let sent = send(&mut self.out, self.enc.epoch(epoch));
        self.settle(sent)
    }

    /// Writes a record of another kind (an extension). Extension kinds must be
    /// optional unless every reader knows them.
    pub fn write_raw_record(
        &mut self,
        kind: RecordKind,
        optional: bool,
        body: &[u8],
    ) -> Result<()> {
        let sent = send(&mut self.out, self.enc.raw_record(kind, optional, body));
        self.settle(sent)
    }

    /// Flushes pages, writes the index (if enabled) and the `end` record, and
    /// returns the inner writer.
    pub fn finish(mut self) -> Result<W> {
        let sent = send(&mut self.out, self.enc.finish());
        self.settle(sent)?;
        let at = self.enc.offset();
        self.out.flush().map_err(|e| Error::from(e).at_offset(at))?;
        Ok(self.out)
    }

    /// Passes a refusal on; after a failed write, fails the encoder too.
    fn settle(&mut self, sent: Result<(), Sent>) -> Result<()> {
        match sent {
            Ok(()) => Ok(()),
            Err(Sent::Refused(e)) => Err(e),
            Err(Sent::Torn(e)) => {
                let why = match std::error::Error::source(&e) {
                    Some(cause) => format!("{e}: {cause}"),
                    None => e.to_string(),
                };
                self.enc.fail(why);
                Err(e)
            }
        }
    }
}

/// Why [`send`] did not send.
enum Sent {
    /// The encoder refused the call; nothing was produced.
    Refused(Error),
    /// The [`Write`] failed part way: the stream is torn.
    Torn(Error),
}

/// Writes what the encoder produced.
fn send<W: Write>(out: &mut W, frames: Result<Frames<'_>>) -> Result<(), Sent> {
    let frames = frames.map_err(Sent::Refused)?;
    let mut at = frames.offset();
    frames.try_for_each(|s| {
        out.write_all(s)
            .map_err(|e| Sent::Torn(Error::from(e).at_offset(at)))?;
        at += s.len() as u64;
        Ok(())
    })
}

/// Whether a page is all zeros (word at a time).
pub fn is_zero(data: &[u8]) -> bool {
    let (chunks, rest) = data.split_at(data.len() - data.len() % 16);
    chunks
        .chunks_exact(16)
        .all(|c| u128::from_ne_bytes(c.try_into().unwrap_or([1; 16])) == 0)
        && rest.iter().all(|&b| b == 0)
}
