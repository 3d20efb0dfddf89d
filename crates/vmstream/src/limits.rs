//! Resource limits for decoding untrusted streams.

use crate::record::{RecordKind, PAGES_DATA_ALIGN, PAGES_FIXED_LEN};

/// What a `pages` record holds besides its page data when it has one entry:
/// the fixed part, one entry and the largest data pad.
pub(crate) const PAGES_ONE_ENTRY_OVERHEAD: u32 =
    (PAGES_FIXED_LEN + 8 + PAGES_DATA_ALIGN - 1) as u32;

/// Bounds on what a reader will allocate or accept. The defaults are safe for
/// hostile input; raise them for streams you trust to hold larger records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Largest record body accepted, in bytes (default 64 MiB). A `pages`
    /// record may always hold one page, however large the page size: see
    /// [`Limits::max_body`].
    pub max_record_size: u32,
    /// Most bytes a decoder may hold at once across buffers and decoded values
    /// of one record (default 256 MiB).
    pub max_alloc: u64,
    /// Deepest nesting of sequences, structs, options, enums and maps in a value
    /// (default 128).
    pub max_depth: u32,
    /// Most interned names per stream (default 1 << 20).
    pub max_names: u32,
    /// Most RAM blocks per stream (default 4096; a QEMU guest has a few dozen).
    pub max_ram_blocks: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_record_size: 64 << 20,
            max_alloc: 256 << 20,
            max_depth: 128,
            max_names: 1 << 20,
            max_ram_blocks: 1 << 12,
        }
    }
}

impl Limits {
    /// Sets [`Limits::max_record_size`].
    pub fn with_max_record_size(mut self, bytes: u32) -> Limits {
        self.max_record_size = bytes;
        self
    }

    /// Sets [`Limits::max_alloc`].
    pub fn with_max_alloc(mut self, bytes: u64) -> Limits {
        self.max_alloc = bytes;
        self
    }

    /// Sets [`Limits::max_depth`].
    pub fn with_max_depth(mut self, depth: u32) -> Limits {
        self.max_depth = depth;
        self
    }

    /// Sets [`Limits::max_names`].
    pub fn with_max_names(mut self, names: u32) -> Limits {
        self.max_names = names;
        self
    }

    /// Sets [`Limits::max_ram_blocks`].
    pub fn with_max_ram_blocks(mut self, blocks: u32) -> Limits {
        self.max_ram_blocks = blocks;
        self
    }

    /// Largest body accepted for a record of `kind` in a stream of `page_size`
    /// pages: [`Limits::max_record_size`], except that a `pages` record may
    /// always hold one page with its entry and data pad (docs/format.md §6.2),
    /// so streams of pages larger than the record limit (1 GiB pages) stay
    /// readable. Readers never size a buffer from a declared length, so a
    /// hostile length costs only the bytes that really arrive.
    pub fn max_body(&self, kind: RecordKind, page_size: u32) -> u32 {
        if kind == RecordKind::PAGES {
            self.max_record_size
                .max(page_size.saturating_add(PAGES_ONE_ENTRY_OVERHEAD))
        } else {
            self.max_record_size
        }
    }

    /// Most bytes of page data (after decompression) one `pages` record may
    /// carry: [`Limits::max_record_size`], or one page if that is more.
    pub fn max_page_data(&self, page_size: u32) -> u32 {
        self.max_record_size.max(page_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pages_record_always_holds_one_page() {
        let l = Limits::default();
        assert_eq!(l.max_body(RecordKind::PAGES, 4096), 64 << 20);
        assert_eq!(l.max_body(RecordKind::DEVICE, 1 << 30), 64 << 20);
        assert_eq!(
            l.max_body(RecordKind::PAGES, 1 << 30),
            (1 << 30) + 24 + 8 + 63
        );
        assert_eq!(l.max_page_data(1 << 30), 1 << 30);
        assert_eq!(l.max_page_data(2 << 20), 64 << 20);
        let small = l.with_max_record_size(1 << 20);
        assert_eq!(small.max_body(RecordKind::PAGES, 2 << 20), (2 << 20) + 95);
        assert_eq!(small.max_body(RecordKind::INFO, 2 << 20), 1 << 20);
    }
}
