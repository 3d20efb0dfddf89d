//! Folding a stream's RAM rounds into its final memory image.

use std::sync::Arc;

use vmstream::{Error, ErrorKind, Result};

use crate::event::{Event, QemuRamBlock, SectionKind, Sink};
use crate::image::{ImageBlock, MemoryImage, PageState};

/// Most bytes of image read back at once when the final image is emitted.
const EMIT_RUN_BYTES: u64 = 1 << 20;

fn malformed(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Malformed, msg.into())
}

/// A [`Sink`] filter that drops superseded RAM rounds: every page record of
/// the RAM section-start and section-parts is applied to a memory image (a
/// sparse temporary file, so memory stays bounded: a [`MemoryImage`]), the parts are left out,
/// and the RAM section-end carries the final image, one record per sent page
/// (ZERO or PAGE). XBZRLE and compressed pages are decoded on the way, so the
/// result has only plain pages. Everything else passes through unchanged.
/// A `mapped-ram` stream, which has one slot per page, passes through whole.
///
/// Every count and offset derived from the block list is checked arithmetic:
/// a hostile list (sizes that add up past 2^64, more pages than
/// `max_alloc` allows) is an error, never a wrapped index.
#[derive(Debug)]
pub struct Compactor<S: Sink> {
    inner: S,
    page_size: u64,
    max_alloc: u64,
    /// Pages per block, in block order.
    pages: Vec<u64>,
    image: Option<MemoryImage>,
    ram_id: Option<u32>,
    current: Option<(SectionKind, bool)>,
    emitted: bool,
    /// A mapped-ram stream: passed through as it is.
    mapped_ram: bool,
    buf: Vec<u8>,
}

impl<S: Sink> Compactor<S> {
    /// Wraps `inner`; the image bookkeeping may use up to `max_alloc` bytes of memory.
    pub fn new(inner: S, page_size: u64, max_alloc: u64) -> Compactor<S> {
        Compactor {
            inner,
            page_size,
            max_alloc,
            pages: Vec::new(),
            image: None,
            ram_id: None,
            current: None,
            emitted: false,
            mapped_ram: false,
            buf: Vec::new(),
        }
    }

    /// The wrapped sink.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// Sets up the image for a block list: one state byte per page (charged to
    /// `max_alloc`) and a sparse file of the whole RAM, each block after the
    /// one before.
    fn layout(&mut self, blocks: &[QemuRamBlock]) -> Result<()> {
        if self.image.is_some() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "cannot compact a stream with a second RAM block list",
            ));
        }
        let mut image = MemoryImage::new(self.page_size, self.max_alloc)?;
        let mut firsts = Vec::with_capacity(blocks.len());
        let mut total: u64 = 0;
        for b in blocks {
            let pages = b.size / self.page_size;
            firsts.push(total);
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
        let file = Arc::new(tempfile::tempfile()?);
        file.set_len(bytes)?;
        let list = blocks
            .iter()
            .zip(&firsts)
            .enumerate()
            .map(|(i, (b, &first))| {
                Ok(ImageBlock {
                    id: u32::try_from(i).map_err(|_| malformed("too many RAM blocks"))?,
                    name: b.name.clone(),
                    size: b.size,
                    // first * page_size <= bytes, which did not overflow
                    file: Some((file.clone(), first * self.page_size)),
                    keep: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        image.add_blocks(list)?;
        self.pages = blocks.iter().map(|b| b.size / self.page_size).collect();
        self.image = Some(image);
        Ok(())
    }

    fn image(&mut self) -> Result<&mut MemoryImage> {
        self.image
            .as_mut()
            .ok_or_else(|| malformed("RAM pages before the RAM block list"))
    }

    fn emit_image(&mut self) -> Result<()> {
        self.emitted = true;
        let ps = self.page_size as usize;
        // pages read back at once: at least one, at most EMIT_RUN_BYTES worth
        let run = (EMIT_RUN_BYTES / self.page_size).max(1) as usize;
        let Some(image) = self.image.as_mut() else {
            return Ok(());
        };
        for (bi, &pages) in self.pages.iter().enumerate() {
            let block = u32::try_from(bi).map_err(|_| malformed("too many RAM blocks"))?;
            let mut i = 0u64;
            while i < pages {
                // skip pages never sent in one sweep
                let Some(next) = image.next_sent(block, i) else {
                    break;
                };
                i = next;
                if image.state(block, i) == PageState::Zero {
                    self.inner.event(&Event::Page {
                        block,
                        index: i,
                        data: None,
                    })?;
                    i += 1;
                    continue;
                }
                let n = image.data_run(block, i, run);
                self.buf.resize(n * ps, 0);
                image.read(block, i, &mut self.buf[..n * ps])?;
                for k in 0..n {
                    self.inner.event(&Event::Page {
                        block,
                        index: i + k as u64,
                        data: Some(&self.buf[k * ps..(k + 1) * ps]),
                    })?;
                }
                i += n as u64;
            }
        }
        Ok(())
    }
}

impl<S: Sink> Sink for Compactor<S> {
    fn event(&mut self, ev: &Event<'_>) -> Result<()> {
        if let Event::Configuration { raw, .. } = ev {
            self.mapped_ram = crate::mapped_ram::in_configuration(raw);
        }
        if self.mapped_ram {
            // every page has one slot, written once: already compact
            return self.inner.event(ev);
        }
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
            Event::Target { page_size, .. } => {
                if self.image.is_some() {
                    return Err(Error::new(
                        ErrorKind::Usage,
                        "the target page size changed after the RAM block list",
                    ));
                }
                self.page_size = *page_size;
                self.inner.event(ev)
            }
            Event::RamBlocks { blocks, .. } => {
                self.layout(blocks)?;
                self.inner.event(ev)
            }
            Event::Page { block, index, data } => self.image()?.page(*block, *index, *data),
            Event::Forget => Ok(()),
            // the pages of multifd packets follow as page events and go into
            // the image: the compacted stream is one plain stream
            Event::MultifdInit { .. } | Event::MultifdPacket { .. } => Ok(()),
            Event::RamRecord {
                header,
                name,
                payload,
            } => self.image()?.update(*header, *name, payload),
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
