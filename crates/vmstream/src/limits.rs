//! Resource limits for decoding untrusted streams.

/// Bounds on what a reader will allocate or accept. The defaults are safe for
/// hostile input; raise them for streams you trust to hold larger records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Largest record body accepted, in bytes (default 64 MiB).
    pub max_record_size: u32,
    /// Most bytes a decoder may hold at once across buffers and decoded values
    /// of one record (default 256 MiB).
    pub max_alloc: u64,
    /// Deepest nesting of sequences, structs, options, enums and maps in a value
    /// (default 128).
    pub max_depth: u32,
    /// Most interned names per stream (default 1 << 20).
    pub max_names: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_record_size: 64 << 20,
            max_alloc: 256 << 20,
            max_depth: 128,
            max_names: 1 << 20,
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
}
