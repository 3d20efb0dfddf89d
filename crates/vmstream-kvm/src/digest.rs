//! The switchover digest without reading all memory while the guest is
//! stopped.
//!
//! The engine takes a CRC32C of guest memory on both sides while the guest
//! is stopped, so its time is downtime: about 100 ms per GiB here. This
//! cache keeps one CRC per 2 MiB chunk and a stale flag, recomputed by a
//! background thread while the migration runs; at switchover only the
//! chunks written since are read, and the chunk CRCs are combined.
//!
//! The cache is valid only while every change to memory reaches it
//! (`tracking`): on a source while KVM's dirty log is on (pages the log
//! reports mark their chunks stale), on a destination while its vCPUs have
//! not run (the engine's writes mark them). A chunk is marked stale after a
//! write and recomputed under its lock, so a write racing a recomputation
//! leaves it stale.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crc_fast::CrcAlgorithm;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmstream_migrate::vm::DirtyBitmap;

/// Bytes per chunk (guest memory is a multiple of it).
pub(crate) const CHUNK: u64 = 2 << 20;
const PAGE: u64 = 4096;

#[derive(Debug, Clone, Copy)]
struct Chunk {
    stale: bool,
    crc: u32,
    /// Bumped by every mark: the background thread waits for a chunk to be
    /// quiet for one pass, so chunks still being filled are read once.
    writes: u64,
}

pub(crate) struct DigestCache {
    mem: Arc<GuestMemoryMmap>,
    chunks: Vec<Mutex<Chunk>>,
    tracking: AtomicBool,
    quit: AtomicBool,
}

/// CRC32C of `len` bytes of guest memory from `at`.
pub(crate) fn crc_range(mem: &GuestMemoryMmap, at: u64, len: u64) -> Result<u32, String> {
    let mut buf = vec![0u8; (1 << 20).min(len) as usize];
    let mut crc = vmstream::Crc32c::new();
    let mut done = 0;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        mem.read_slice(&mut buf[..n], GuestAddress(at + done))
            .map_err(|e| format!("reading guest memory at {:#x}: {e}", at + done))?;
        crc.update(&buf[..n]);
        done += n as u64;
    }
    Ok(crc.finish())
}

/// CRC32C of the pieces' concatenation, from the pieces' CRCs and lengths.
pub(crate) fn combine(pieces: impl IntoIterator<Item = (u32, u64)>) -> u32 {
    let mut it = pieces.into_iter();
    let Some((first, _)) = it.next() else {
        return vmstream::crc32c(&[]);
    };
    it.fold(u64::from(first), |crc, (c, len)| {
        crc_fast::checksum_combine(CrcAlgorithm::Crc32Iscsi, crc, u64::from(c), len)
    }) as u32
}

impl DigestCache {
    /// A cache over `size` bytes; `zeroed`: memory is known to be all zeros
    /// and nothing else writes it yet (an incoming guest), so the cache is
    /// valid from the start.
    pub(crate) fn new(mem: Arc<GuestMemoryMmap>, size: u64, zeroed: bool) -> DigestCache {
        let zero = vmstream::crc32c(&vec![0u8; CHUNK as usize]);
        let chunks = (0..size / CHUNK)
            .map(|_| {
                Mutex::new(Chunk {
                    stale: !zeroed,
                    crc: zero,
                    writes: 0,
                })
            })
            .collect();
        DigestCache {
            mem,
            chunks,
            tracking: AtomicBool::new(zeroed),
            quit: AtomicBool::new(false),
        }
    }

    /// Every change is reported from now on: all chunks are stale.
    pub(crate) fn track(&self) {
        self.mark_all();
        self.tracking.store(true, Ordering::SeqCst);
    }

    /// Changes are no longer reported.
    pub(crate) fn untrack(&self) {
        self.tracking.store(false, Ordering::SeqCst);
    }

    fn mark_all(&self) {
        for c in &self.chunks {
            if let Ok(mut c) = c.lock() {
                c.stale = true;
                c.writes += 1;
            }
        }
    }

    /// Bytes `at..at + len` were written.
    pub(crate) fn mark(&self, at: u64, len: u64) {
        if len == 0 {
            return;
        }
        let (first, last) = (at / CHUNK, (at + len - 1) / CHUNK);
        for c in self
            .chunks
            .iter()
            .take(last as usize + 1)
            .skip(first as usize)
        {
            if let Ok(mut c) = c.lock() {
                c.stale = true;
            }
        }
    }

    /// The pages of `bitmap` were written.
    pub(crate) fn mark_pages(&self, bitmap: &DirtyBitmap) {
        for (first, count) in bitmap.runs() {
            self.mark(first * PAGE, count * PAGE);
        }
    }

    /// Chunk `i`'s CRC, recomputed if stale (or only if also quiet since
    /// `seen` writes, when given).
    fn refresh(&self, i: usize, seen: Option<&mut u64>) -> Result<u32, String> {
        let mut c = self.chunks[i].lock().map_err(|_| "digest lock poisoned")?;
        if let Some(seen) = seen {
            let quiet = *seen == c.writes;
            *seen = c.writes;
            if !quiet {
                return Ok(c.crc);
            }
        }
        if c.stale {
            c.crc = crc_range(&self.mem, i as u64 * CHUNK, CHUNK)?;
            c.stale = false;
        }
        Ok(c.crc)
    }

    /// The CRC32C of all memory, reading only stale chunks; `None` when the
    /// cache is not tracking changes.
    pub(crate) fn crc(&self) -> Option<Result<u32, String>> {
        if !self.tracking.load(Ordering::SeqCst) {
            return None;
        }
        // The stale chunks in one piece per core.
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per = self.chunks.len().div_ceil(threads).max(1);
        let crcs = std::thread::scope(|s| {
            let handles: Vec<_> = (0..self.chunks.len())
                .step_by(per)
                .map(|first| {
                    s.spawn(move || {
                        (first..(first + per).min(self.chunks.len()))
                            .map(|i| self.refresh(i, None))
                            .collect::<Result<Vec<u32>, String>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .map_err(|_| "a checksum thread panicked".to_owned())?
                })
                .collect::<Result<Vec<Vec<u32>>, String>>()
        });
        Some(crcs.map(|v| combine(v.into_iter().flatten().map(|c| (c, CHUNK)))))
    }

    /// The background thread: recomputes stale chunks that were quiet for
    /// a pass, while tracking, at the idle scheduling class so that it takes
    /// only CPU time the migration leaves.
    pub(crate) fn run(self: Arc<Self>) {
        crate::sys::idle_priority();
        let mut seen = vec![0u64; self.chunks.len()];
        while !self.quit.load(Ordering::SeqCst) {
            if self.tracking.load(Ordering::SeqCst) {
                for (i, seen) in seen.iter_mut().enumerate() {
                    if self.quit.load(Ordering::SeqCst) || !self.tracking.load(Ordering::SeqCst) {
                        break;
                    }
                    let _ = self.refresh(i, Some(seen));
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops [`DigestCache::run`].
    pub(crate) fn stop(&self) {
        self.quit.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combined_pieces_are_the_whole_crc() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let whole = vmstream::crc32c(&data);
        let pieces = [0..1, 1..4096, 4096..9000, 9000..10_000];
        let got = combine(
            pieces
                .iter()
                .map(|r| (vmstream::crc32c(&data[r.clone()]), r.len() as u64)),
        );
        assert_eq!(got, whole);
    }
}
