//! Input files read through a memory mapping: the CLI's only `unsafe` code.
//!
//! Reading a file in the page cache through `read(2)` copies every byte into
//! a buffer first; through a mapping, the parsers read the page cache itself
//! (vmstream files: no copy at all, [`vmstream::SliceReader`]; QEMU streams:
//! one copy into the QEMU reader's buffer instead of two). Everything here is
//! behind a safe API: [`Mapped`] hands out `&[u8]`, and the parsers keep
//! `#![forbid(unsafe_code)]`.
//!
//! A mapping of the whole file would count every page read in the process's
//! resident set, so pages more than [`WINDOW`] behind the reader leave the
//! mapping as it goes ([`Mapped::passed`]); they stay in the page cache.
//! Pages ahead are read in a window at a time ([`Mapped::passed`] asks the
//! kernel to populate them), so the reader takes few page faults.
//!
//! **A file truncated while it is mapped**: the pages past its new end are
//! gone, and touching one kills the process with `SIGBUS` (exit by signal,
//! no error message, no partial output flushed). A file changed in place
//! while it is read gives the parsers bytes that may differ from one look to
//! the next; they treat every byte as hostile, so that ends in an error or
//! in output about a mix of old and new contents, never in unsafety of their
//! own. Commands read from standard input (`-`) when a file may change under
//! them: pipes and other non-regular files are never mapped.

#![allow(unsafe_code)]

use std::cell::Cell;
use std::fs::File;

use memmap2::{Advice, Mmap, MmapOptions, UncheckedAdvice};

/// Bytes kept mapped behind the reader and read ahead of it.
pub(crate) const WINDOW: usize = 8 << 20;

/// A regular file mapped read-only.
pub(crate) struct Mapped {
    map: Mmap,
    /// Bytes from the start released from the mapping (a multiple of the
    /// page size).
    released: Cell<usize>,
    /// Bytes from the start asked to be read in.
    populated: Cell<usize>,
}

impl Mapped {
    /// Maps `file` when it is a non-empty regular file; `None` otherwise (or
    /// if mapping fails: the caller reads it instead).
    pub(crate) fn open(file: &File) -> Option<Mapped> {
        let meta = file.metadata().ok()?;
        if !meta.is_file() || meta.len() == 0 || usize::try_from(meta.len()).is_err() {
            return None;
        }
        // SAFETY: a read-only shared mapping of a regular file. The bytes
        // behind it can change only if another process writes or truncates
        // the file while we read it; the module docs say what happens then
        // (changed bytes are parsed as the hostile input every byte already
        // is; a truncation ends the process with SIGBUS) and the README tells
        // users to read such files from standard input. The mapping lives as
        // long as `Mapped`, and every slice handed out borrows it.
        let map = unsafe { MmapOptions::new().map(file) }.ok()?;
        let _ = map.advise(Advice::Sequential);
        Some(Mapped {
            map,
            released: Cell::new(0),
            populated: Cell::new(0),
        })
    }

    /// The file's bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// Tells the mapping the reader is at `offset`: the next window is read
    /// in, and pages more than a window behind leave this process's page
    /// tables (not the page cache), so the resident set stays within a few
    /// windows whatever the file's size.
    pub(crate) fn passed(&self, offset: u64) {
        let len = self.map.len();
        let at = usize::try_from(offset).unwrap_or(len).min(len);
        let populated = self.populated.get();
        if at + WINDOW / 2 >= populated && populated < len {
            let end = (at + WINDOW).min(len);
            let from = populated.max(at & !(page_size() - 1));
            // Only a hint: a kernel without MADV_POPULATE_READ faults the
            // pages in as they are touched.
            let _ = self
                .map
                .advise_range(Advice::PopulateRead, from, end.saturating_sub(from));
            self.populated.set(end);
        }
        let upto = at.saturating_sub(WINDOW) & !(page_size() - 1);
        let released = self.released.get();
        if upto >= released + WINDOW {
            // SAFETY: MADV_DONTNEED on a read-only shared file mapping only
            // drops these pages from this process's page tables: touching
            // them again faults the same file contents back in from the page
            // cache, so no byte any slice of `bytes()` refers to changes.
            let _ = unsafe {
                self.map.unchecked_advise_range(
                    UncheckedAdvice::DontNeed,
                    released,
                    upto - released,
                )
            };
            self.released.set(upto);
        }
    }
}

fn page_size() -> usize {
    // Every page size Linux uses divides 64 KiB, so ranges aligned to it are
    // page-aligned whatever the machine's.
    64 << 10
}
