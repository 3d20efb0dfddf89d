//! Folding a stream's RAM rounds into its final memory image.

use std::fs::File;
use std::os::unix::fs::FileExt;

use vmstream::{Error, ErrorKind, Result};

use crate::event::{Event, QemuRamBlock, SectionKind, Sink};
use crate::ram;

const UNSENT: u8 = 0;
const ZERO: u8 = 1;
const DATA: u8 = 2;

/// A [`Sink`] filter that drops superseded RAM rounds: every page record of
/// the RAM section-start and section-parts is applied to a memory image (a
/// sparse temporary file, so memory stays bounded), the parts are left out,
/// and the RAM section-end carries the final image, one record per sent page
/// (ZERO or PAGE). XBZRLE and compressed pages are decoded on the way, so the
/// result has only plain pages. Everything else passes through unchanged.
#[derive(Debug)]
pub struct Compactor<S: Sink> {
    inner: S,
    page_size: u64,
    max_alloc: u64,
    blocks: Vec<QemuRamBlock>,
    first_page: Vec<u64>,
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
            first_page: Vec::new(),
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

    fn slot(&self, block: u32, index: u64) -> Result<u64> {
        let b = self.blocks.get(block as usize).ok_or_else(|| {
            Error::new(
                ErrorKind::Malformed,
                format!("page of unknown RAM block {block}"),
            )
        })?;
        if index >= b.size / self.page_size {
            return Err(Error::new(
                ErrorKind::Malformed,
                format!("page {index} is beyond RAM block {:?}", b.name),
            ));
        }
        Ok(self.first_page[block as usize] + index)
    }

    fn image(&self) -> Result<&File> {
        self.image
            .as_ref()
            .ok_or_else(|| Error::new(ErrorKind::Malformed, "RAM pages before the RAM block list"))
    }

    fn store(&mut self, block: u32, index: u64, data: Option<&[u8]>) -> Result<()> {
        let slot = self.slot(block, index)?;
        match data {
            Some(d) => {
                self.image()?.write_all_at(d, slot * self.page_size)?;
                self.state[slot as usize] = DATA;
            }
            None => self.state[slot as usize] = ZERO,
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
                .map(|i| i as u32),
            None => self.last_block,
        }
        .ok_or_else(|| Error::new(ErrorKind::Malformed, "encoded page of an unknown RAM block"))?;
        self.last_block = Some(block);
        let slot = self.slot(block, (header & !(self.page_size - 1)) / self.page_size)?;
        let mut page = std::mem::take(&mut self.buf);
        page.clear();
        page.resize(self.page_size as usize, 0);
        if self.state[slot as usize] == DATA {
            self.image()?
                .read_exact_at(&mut page, slot * self.page_size)?;
        }
        let r = ram::apply(update, &mut page).and_then(|()| {
            self.image()?.write_all_at(&page, slot * self.page_size)?;
            Ok(())
        });
        self.state[slot as usize] = DATA;
        self.buf = page;
        r
    }

    fn emit_image(&mut self) -> Result<()> {
        self.emitted = true;
        let ps = self.page_size as usize;
        const RUN: usize = 256;
        for (bi, b) in self.blocks.iter().enumerate() {
            let first = self.first_page[bi];
            let pages = b.size / self.page_size;
            let mut i = 0u64;
            while i < pages {
                let s = self.state[(first + i) as usize];
                match s {
                    UNSENT => i += 1,
                    ZERO => {
                        self.inner.event(&Event::Page {
                            block: bi as u32,
                            index: i,
                            data: None,
                        })?;
                        i += 1;
                    }
                    _ => {
                        let mut n = 1;
                        while n < RUN
                            && i + (n as u64) < pages
                            && self.state[(first + i) as usize + n] == DATA
                        {
                            n += 1;
                        }
                        self.buf.resize(n * ps, 0);
                        let file = self
                            .image
                            .as_ref()
                            .ok_or_else(|| Error::new(ErrorKind::Malformed, "no image"))?;
                        file.read_exact_at(&mut self.buf[..n * ps], (first + i) * self.page_size)?;
                        for k in 0..n {
                            let data = &self.buf[k * ps..(k + 1) * ps];
                            self.inner.event(&Event::Page {
                                block: bi as u32,
                                index: i + k as u64,
                                data: Some(data),
                            })?;
                        }
                        i += n as u64;
                    }
                }
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
                let total_pages: u64 = blocks.iter().map(|b| b.size / self.page_size).sum();
                if total_pages > self.max_alloc {
                    return Err(Error::new(ErrorKind::LimitExceeded, format!("compacting {total_pages} pages needs more than Limits::max_alloc bytes of page state")));
                }
                let mut next = 0;
                self.first_page = blocks
                    .iter()
                    .map(|b| {
                        let f = next;
                        next += b.size / self.page_size;
                        f
                    })
                    .collect();
                self.state = vec![UNSENT; total_pages as usize];
                let file = tempfile::tempfile()?;
                file.set_len(total_pages * self.page_size)?;
                self.image = Some(file);
                self.blocks = blocks.to_vec();
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
