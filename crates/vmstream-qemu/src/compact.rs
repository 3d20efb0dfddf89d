//! Folding a stream's RAM rounds into its final memory image.

use std::fs::File;
use std::os::unix::fs::FileExt;

use vmstream::{Error, ErrorKind, Result};

use crate::event::{Event, QemuRamBlock, SectionKind, Sink};
use crate::ram;

const UNSENT: u8 = 0;
const ZERO: u8 = 1;
const DATA: u8 = 2;

/// Most bytes of image read back at once when the final image is emitted.
const EMIT_RUN_BYTES: u64 = 1 << 20;

fn malformed(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Malformed, msg.into())
}

/// A [`Sink`] filter that drops superseded RAM rounds: every page record of
/// the RAM section-start and section-parts is applied to a memory image (a
/// sparse temporary file, so memory stays bounded), the parts are left out,
/// and the RAM section-end carries the final image, one record per sent page
/// (ZERO or PAGE). XBZRLE and compressed pages are decoded on the way, so the
/// result has only plain pages. Everything else passes through unchanged.
///
/// Every count and offset derived from the block list is checked arithmetic:
/// a hostile list (sizes that add up past 2^64, more pages than
/// `max_alloc` allows) is an error, never a wrapped index.
#[derive(Debug)]
pub struct Compactor<S: Sink> {
    inner: S,
    page_size: u64,
    max_alloc: u64,
    blocks: Vec<QemuRamBlock>,
    /// Per block: the slot of its first page and its page count.
    layout: Vec<(u64, u64)>,
    state: Vec<u8>,
    image: Option<File>,
    ram_id: Option<u32>,
    current: Option<(SectionKind, bool)>,
    last_block: Option<u32>,
    emitted: bool,
    buf: Vec<u8>,
}

impl<S: Sink> Compactor<S> {
    /// Wraps `inner`; the image bookkeeping may use up to `max_alloc` bytes of memory.
    pub fn new(inner: S, page_size: u64, max_alloc: u64) -> Compactor<S> {
        Compactor {
            inner,
            page_size,
            max_alloc,
            blocks: Vec::new(),
            layout: Vec::new(),
            state: Vec::new(),
            image: None,
            ram_id: None,
            current: None,
            last_block: None,
            emitted: false,
            buf: Vec::new(),
        }
    }

    /// The wrapped sink.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// Sets up the image for a block list: one state byte per page (charged to
    /// `max_alloc`) and a sparse file of the whole RAM.
    fn layout(&mut self, blocks: &[QemuRamBlock]) -> Result<()> {
        if self.image.is_some() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "cannot compact a stream with a second RAM block list",
            ));
        }
        if self.page_size == 0 || !self.page_size.is_power_of_two() {
            return Err(Error::new(
                ErrorKind::Usage,
                format!("page size {} is not a power of two", self.page_size),
            ));
        }
        let mut layout = Vec::with_capacity(blocks.len());
        let mut total: u64 = 0;
        for b in blocks {
            let pages = b.size / self.page_size;
            layout.push((total, pages));
            total = total
                .checked_add(pages)
                .filter(|&t| t <= self.max_alloc)
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::LimitExceeded,
                        format!(
                            "compacting RAM blocks of more than {} pages in all needs more than Limits::max_alloc ({} bytes) of page state",
                            self.max_alloc, self.max_alloc
                        ),
                    )
                })?;
        }
        let bytes = total.checked_mul(self.page_size).ok_or_else(|| {
            Error::new(
                ErrorKind::LimitExceeded,
                format!("a memory image of {total} pages does not fit 64 bits"),
            )
        })?;
        let len = usize::try_from(total).map_err(|_| {
            Error::new(
                ErrorKind::LimitExceeded,
                format!("{total} pages of state do not fit this machine's memory"),
            )
        })?;
        let file = tempfile::tempfile()?;
        file.set_len(bytes)?;
        self.state = vec![UNSENT; len];
        self.layout = layout;
        self.image = Some(file);
        self.blocks = blocks.to_vec();
        Ok(())
    }

    /// The state slot of page `index` of `block`.
    fn slot(&self, block: u32, index: u64) -> Result<usize> {
        let (b, &(first, pages)) = self
            .blocks
            .get(block as usize)
            .zip(self.layout.get(block as usize))
            .ok_or_else(|| malformed(format!("page of unknown RAM block {block}")))?;
        if index >= pages {
            return Err(malformed(format!(
                "page {index} is beyond RAM block {:?} ({pages} pages)",
                b.name
            )));
        }
        // first + index < total, which fits the state vector's length
        usize::try_from(first + index).map_err(|_| malformed("page slot out of range"))
    }

    /// Byte offset of a slot in the image file (below its length, so no overflow).
    fn at(&self, slot: usize) -> u64 {
        slot as u64 * self.page_size
    }

    fn image(&self) -> Result<&File> {
        self.image
            .as_ref()
            .ok_or_else(|| malformed("RAM pages before the RAM block list"))
    }

    fn store(&mut self, block: u32, index: u64, data: Option<&[u8]>) -> Result<()> {
        let slot = self.slot(block, index)?;
        match data {
            Some(d) => {
                if d.len() as u64 != self.page_size {
                    return Err(malformed(format!(
                        "page of {} bytes; the page size is {}",
                        d.len(),
                        self.page_size
                    )));
                }
                self.image()?.write_all_at(d, self.at(slot))?;
                self.state[slot] = DATA;
            }
            None => self.state[slot] = ZERO,
        }
        Ok(())
    }

    fn update(&mut self, header: u64, name: Option<&[u8]>, payload: &[u8]) -> Result<()> {
        let Some(update) = ram::page_update(header, payload, self.page_size)? else {
            return Ok(());
        };
        let block = match name {
            Some(n) => self
                .blocks
                .iter()
                .position(|b| b.name.as_bytes() == n)
                .and_then(|i| u32::try_from(i).ok()),
            None => self.last_block,
        }
        .ok_or_else(|| malformed("encoded page of an unknown RAM block"))?;
        self.last_block = Some(block);
        let slot = self.slot(block, (header & !(self.page_size - 1)) / self.page_size)?;
        let mut page = std::mem::take(&mut self.buf);
        page.clear();
        page.resize(self.page_size as usize, 0);
        if self.state[slot] == DATA {
            self.image()?.read_exact_at(&mut page, self.at(slot))?;
        }
        let r = ram::apply(update, &mut page).and_then(|()| {
            self.image()?.write_all_at(&page, self.at(slot))?;
            Ok(())
        });
        self.state[slot] = DATA;
        self.buf = page;
        r
    }

    fn emit_image(&mut self) -> Result<()> {
        self.emitted = true;
        let ps = self.page_size as usize;
        // pages read back at once: at least one, at most EMIT_RUN_BYTES worth
        let run = (EMIT_RUN_BYTES / self.page_size).max(1) as usize;
        for bi in 0..self.blocks.len() {
            let (first, pages) = self.layout[bi];
            let first = first as usize;
            // pages < state.len() - first, so it fits usize
            let pages = pages as usize;
            let block = u32::try_from(bi).map_err(|_| malformed("too many RAM blocks"))?;
            let mut i = 0usize;
            while i < pages {
                let states = &self.state[first + i..first + pages];
                // skip pages never sent in one sweep
                let Some(skip) = states.iter().position(|&s| s != UNSENT) else {
                    break;
                };
                i += skip;
                if self.state[first + i] == ZERO {
                    self.inner.event(&Event::Page {
                        block,
                        index: i as u64,
                        data: None,
                    })?;
                    i += 1;
                    continue;
                }
                let n = self.state[first + i..first + pages]
                    .iter()
                    .take(run)
                    .take_while(|&&s| s == DATA)
                    .count();
                self.buf.resize(n * ps, 0);
                let at = self.at(first + i);
                let file = self.image.as_ref().ok_or_else(|| malformed("no image"))?;
                file.read_exact_at(&mut self.buf[..n * ps], at)?;
                for k in 0..n {
                    self.inner.event(&Event::Page {
                        block,
                        index: (i + k) as u64,
                        data: Some(&self.buf[k * ps..(k + 1) * ps]),
                    })?;
                }
                i += n;
            }
        }
        Ok(())
    }
}

impl<S: Sink> Sink for Compactor<S> {
    fn event(&mut self, ev: &Event<'_>) -> Result<()> {
        match ev {
            Event::Section { kind, id, header } => {
                let ram = match header {
                    Some(h) => h.idstr == "ram" && *kind == SectionKind::Start,
                    None => self.ram_id == Some(*id),
                };
                if ram && *kind == SectionKind::Start {
                    self.ram_id = Some(*id);
                }
                let drop = ram && *kind == SectionKind::Part;
                self.current = Some((*kind, ram));
                if !drop {
                    self.inner.event(ev)?;
                }
                Ok(())
            }
            Event::RamBlocks { blocks, .. } => {
                self.layout(blocks)?;
                self.inner.event(ev)
            }
            Event::Page { block, index, data } => {
                self.last_block = Some(*block);
                self.store(*block, *index, *data)
            }
            Event::Forget => Ok(()),
            Event::RamRecord {
                header,
                name,
                payload,
            } => self.update(*header, *name, payload),
            Event::SectionEnd { .. } => {
                let cur = self.current.take();
                match cur {
                    Some((SectionKind::Part, true)) => return Ok(()),
                    Some((SectionKind::End, true)) if !self.emitted => self.emit_image()?,
                    _ => {}
                }
                self.inner.event(ev)
            }
            Event::Eof => {
                if self.image.is_some() && !self.emitted {
                    return Err(Error::new(
                        ErrorKind::Unsupported,
                        "cannot compact a stream whose RAM has no section-end",
                    ));
                }
                self.inner.event(ev)
            }
            _ => self.inner.event(ev),
        }
    }
}
