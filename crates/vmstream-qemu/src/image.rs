//! A memory image that pages are applied to: the one place that does it.
//!
//! [`MemoryImage`] takes RAM pages in stream order — data pages, zero pages,
//! and QEMU's RAM records that update a page in place (XBZRLE, compressed
//! pages, a non-zero fill) — and keeps each block's latest contents in a file
//! the caller chooses (a sparse temporary file for [`crate::Compactor`], one
//! output file per block for `vmstream extract` and `decode`), together with
//! the state of every page: never sent, zero, or data. A later page replaces
//! an earlier one; a zero page over data writes zeros; pages never written
//! stay holes. Consecutive data pages are gathered into writes of up to
//! 1 MiB.
//!
//! Memory stays bounded: one state byte per page, charged to
//! `Limits::max_alloc` before anything is allocated, with checked arithmetic
//! over the whole block list.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use vmstream::{Error, ErrorKind, Result};

use crate::ram;

/// Most bytes gathered into one write.
const MAX_RUN: usize = 1 << 20;

/// What the image holds for a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageState {
    /// Never sent.
    Unsent,
    /// Sent as a zero page (or zero fill).
    Zero,
    /// Sent with data (or updated in place).
    Data,
}

const UNSENT: u8 = 0;
const ZERO: u8 = 1;
const DATA: u8 = 2;

fn malformed(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Malformed, msg.into())
}

/// One RAM block of an image, as the caller defines it.
#[derive(Debug)]
pub struct ImageBlock {
    /// Block id, as page events and records name it.
    pub id: u32,
    /// Block name, as QEMU RAM records name it.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Where the kept pages go: the file and the byte offset of the first
    /// kept page in it. `None` keeps no page (every page is passed over,
    /// though still checked against the block's size).
    pub file: Option<(Arc<File>, u64)>,
    /// The pages kept; `None` keeps them all.
    pub keep: Option<Range<u64>>,
}

#[derive(Debug)]
struct Block {
    name: String,
    /// Pages in the block.
    pages: u64,
    file: Option<Arc<File>>,
    /// File offset of page `first`.
    at: u64,
    /// Kept pages: `first .. first + state.len()`.
    first: u64,
    state: Vec<u8>,
}

impl Block {
    /// The state slot of page `index`, if the image keeps it.
    fn slot(&self, index: u64) -> Option<usize> {
        let i = index.checked_sub(self.first)?;
        (i < self.state.len() as u64).then_some(i as usize)
    }
}

/// Consecutive data pages of one block, written together.
#[derive(Debug, Default)]
struct Run {
    block: u32,
    /// File offset of the first page.
    start: u64,
    data: Vec<u8>,
}

/// RAM blocks' latest contents, applied page by page (see the module docs).
#[derive(Debug)]
pub struct MemoryImage {
    page_size: u64,
    /// What is left of `Limits::max_alloc` for page state.
    budget: u64,
    blocks: HashMap<u32, Block>,
    /// Block ids by name, for QEMU RAM records that name their block.
    by_name: HashMap<String, u32>,
    /// Block of the last page, for QEMU records that leave their block out.
    last_block: Option<u32>,
    run: Run,
    zeros: Vec<u8>,
    scratch: Vec<u8>,
}

impl MemoryImage {
    /// An empty image of pages of `page_size` bytes (a power of two), whose
    /// page state may take up to `max_alloc` bytes.
    pub fn new(page_size: u64, max_alloc: u64) -> Result<MemoryImage> {
        if !page_size.is_power_of_two() || usize::try_from(page_size).is_err() {
            return Err(Error::new(
                ErrorKind::Usage,
                format!("page size {page_size} is not a power of two"),
            ));
        }
        Ok(MemoryImage {
            page_size,
            budget: max_alloc,
            blocks: HashMap::new(),
            by_name: HashMap::new(),
            last_block: None,
            run: Run::default(),
            zeros: Vec::new(),
            scratch: Vec::new(),
        })
    }

    /// The page size.
    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// Sets the page size of an image that has no blocks yet (a QEMU stream
    /// says its target page size, [`crate::Event::Target`], before its block
    /// list).
    pub fn set_page_size(&mut self, page_size: u64) -> Result<()> {
        if !page_size.is_power_of_two() || usize::try_from(page_size).is_err() {
            return Err(Error::new(
                ErrorKind::Usage,
                format!("page size {page_size} is not a power of two"),
            ));
        }
        if !self.blocks.is_empty() {
            return Err(Error::new(
                ErrorKind::Usage,
                "the page size changed after RAM blocks were defined",
            ));
        }
        self.page_size = page_size;
        self.zeros.clear();
        Ok(())
    }

    /// Defines blocks. The whole list is checked first (new ids, kept ranges
    /// inside their blocks, page state within what is left of `max_alloc`,
    /// summed with checked arithmetic), so a refused list defines nothing.
    pub fn add_blocks(&mut self, list: Vec<ImageBlock>) -> Result<()> {
        let ps = self.page_size;
        let mut need: u64 = 0;
        for b in &list {
            if self.blocks.contains_key(&b.id) {
                return Err(malformed(format!("RAM block id {} defined twice", b.id)));
            }
            let pages = b.size / ps;
            let kept = match (&b.file, &b.keep) {
                (None, _) => 0,
                (Some(_), None) => pages,
                (Some(_), Some(r)) if r.start <= r.end && r.end <= pages => r.end - r.start,
                (Some(_), Some(r)) => {
                    return Err(Error::new(
                        ErrorKind::Usage,
                        format!(
                            "pages {}..{} are beyond RAM block {:?} of {pages} pages",
                            r.start, r.end, b.name
                        ),
                    ))
                }
            };
            need = need
                .checked_add(kept)
                .filter(|&n| n <= self.budget)
                .ok_or_else(|| self.no_room(&b.name, b.size))?;
        }
        for b in list {
            let pages = b.size / ps;
            let (file, at) = match b.file {
                Some((f, at)) => (Some(f), at),
                None => (None, 0),
            };
            let keep = match (&file, b.keep) {
                (None, _) => 0..0,
                (Some(_), None) => 0..pages,
                (Some(_), Some(r)) => r,
            };
            let len = usize::try_from(keep.end - keep.start).map_err(|_| {
                Error::new(
                    ErrorKind::LimitExceeded,
                    "page state does not fit this machine's memory",
                )
            })?;
            self.budget -= len as u64;
            self.by_name.entry(b.name.clone()).or_insert(b.id);
            self.blocks.insert(
                b.id,
                Block {
                    name: b.name,
                    pages,
                    file,
                    at,
                    first: keep.start,
                    state: vec![UNSENT; len],
                },
            );
        }
        Ok(())
    }

    /// Checks that keeping `pages` pages of a block `name` of `size` bytes
    /// fits what is left of `max_alloc`: for callers that create the block's
    /// file first.
    pub fn check_room(&self, name: &str, size: u64, pages: u64) -> Result<()> {
        if pages > self.budget {
            return Err(self.no_room(name, size));
        }
        Ok(())
    }

    fn no_room(&self, name: &str, size: u64) -> Error {
        Error::new(
            ErrorKind::LimitExceeded,
            format!(
                "RAM block {name:?} of {size} bytes: tracking its pages needs more than Limits::max_alloc ({} bytes left)",
                self.budget
            ),
        )
    }

    fn block(&self, id: u32) -> Result<&Block> {
        self.blocks
            .get(&id)
            .ok_or_else(|| malformed(format!("page of unknown RAM block {id}")))
    }

    /// The kept slot of page `index` of `block`, after checking the page is in
    /// the block.
    fn locate(&self, block: u32, index: u64) -> Result<Option<usize>> {
        let b = self.block(block)?;
        if index >= b.pages {
            return Err(malformed(format!(
                "page {index} is beyond RAM block {:?} ({} pages)",
                b.name, b.pages
            )));
        }
        Ok(b.slot(index))
    }

    /// Applies one page (`None`: a zero page).
    pub fn page(&mut self, block: u32, index: u64, data: Option<&[u8]>) -> Result<()> {
        self.last_block = Some(block);
        if let Some(d) = data {
            if d.len() as u64 != self.page_size {
                return Err(malformed(format!(
                    "page of {} bytes; the page size is {}",
                    d.len(),
                    self.page_size
                )));
            }
        }
        let Some(slot) = self.locate(block, index)? else {
            return Ok(());
        };
        let ps = self.page_size;
        let b = &self.blocks[&block];
        let at = b.at + slot as u64 * ps;
        let run = &self.run;
        if !run.data.is_empty()
            && (run.block != block
                || run.start + run.data.len() as u64 != at
                || data.is_none()
                || run.data.len() >= MAX_RUN)
        {
            self.flush()?;
        }
        let b = self
            .blocks
            .get_mut(&block)
            .ok_or_else(|| malformed("no block"))?;
        match data {
            Some(d) => {
                if self.run.data.is_empty() {
                    (self.run.block, self.run.start) = (block, at);
                }
                self.run.data.extend_from_slice(d);
                b.state[slot] = DATA;
            }
            None => {
                if b.state[slot] == DATA {
                    self.zeros.resize(ps as usize, 0);
                    let file = b.file.as_ref().ok_or_else(|| malformed("no file"))?;
                    file.write_all_at(&self.zeros, at)?;
                }
                b.state[slot] = ZERO;
            }
        }
        Ok(())
    }

    /// Applies a QEMU RAM record that updates a page in place (XBZRLE,
    /// compressed page, non-zero fill) to the page as applied so far; other
    /// records change nothing. `name` is the block name when the record
    /// carries one; otherwise the block of the last page.
    pub fn update(&mut self, header: u64, name: Option<&[u8]>, payload: &[u8]) -> Result<()> {
        let ps = self.page_size;
        let Some(update) = ram::page_update(header, payload, ps)? else {
            return Ok(());
        };
        let block = match name {
            Some(n) => std::str::from_utf8(n)
                .ok()
                .and_then(|n| self.by_name.get(n).copied()),
            None => self.last_block,
        }
        .ok_or_else(|| malformed("encoded page of an unknown RAM block"))?;
        self.last_block = Some(block);
        let Some(slot) = self.locate(block, (header & !(ps - 1)) / ps)? else {
            return Ok(());
        };
        self.flush()?;
        let b = &self.blocks[&block];
        let at = b.at + slot as u64 * ps;
        let file = b.file.as_ref().ok_or_else(|| malformed("no file"))?;
        let mut page = std::mem::take(&mut self.scratch);
        page.clear();
        page.resize(ps as usize, 0);
        let r = (|| {
            if b.state[slot] == DATA {
                file.read_exact_at(&mut page, at)?;
            }
            ram::apply(update, &mut page)?;
            file.write_all_at(&page, at)?;
            Ok(())
        })();
        self.scratch = page;
        if let Some(b) = self.blocks.get_mut(&block) {
            b.state[slot] = DATA;
        }
        r
    }

    /// Writes the data pages gathered so far.
    pub fn flush(&mut self) -> Result<()> {
        if !self.run.data.is_empty() {
            let b = self.block(self.run.block)?;
            let file = b.file.as_ref().ok_or_else(|| malformed("no file"))?;
            file.write_all_at(&self.run.data, self.run.start)?;
            self.run.data.clear();
        }
        Ok(())
    }

    /// What the image holds for page `index` of `block` (`Unsent` for a page
    /// it does not keep).
    pub fn state(&self, block: u32, index: u64) -> PageState {
        let s = self
            .blocks
            .get(&block)
            .and_then(|b| b.slot(index).map(|i| b.state[i]));
        match s {
            Some(DATA) => PageState::Data,
            Some(ZERO) => PageState::Zero,
            _ => PageState::Unsent,
        }
    }

    /// How many pages from `index` on, up to `max`, hold data.
    pub fn data_run(&self, block: u32, index: u64, max: usize) -> usize {
        self.blocks
            .get(&block)
            .and_then(|b| b.slot(index).map(|i| &b.state[i..]))
            .map_or(0, |s| {
                s.iter().take(max).take_while(|&&s| s == DATA).count()
            })
    }

    /// The first page from `index` on that was sent (zero or data), if any.
    pub fn next_sent(&self, block: u32, index: u64) -> Option<u64> {
        let b = self.blocks.get(&block)?;
        let i = b.slot(index)?;
        let skip = b.state[i..].iter().position(|&s| s != UNSENT)?;
        Some(index + skip as u64)
    }

    /// Reads the contents of pages `index..` of `block` into `buf` (a whole
    /// number of pages), after writing what is gathered.
    pub fn read(&mut self, block: u32, index: u64, buf: &mut [u8]) -> Result<()> {
        self.flush()?;
        let b = self.block(block)?;
        let slot = b
            .slot(index)
            .ok_or_else(|| malformed(format!("page {index} is not in the image")))?;
        let file = b.file.as_ref().ok_or_else(|| malformed("no file"))?;
        file.read_exact_at(buf, b.at + slot as u64 * self.page_size)?;
        Ok(())
    }

    /// The file of `block`, if it keeps pages.
    pub fn file(&self, block: u32) -> Option<&File> {
        self.blocks.get(&block)?.file.as_deref()
    }
}
