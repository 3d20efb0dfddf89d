//! The switchover digest without reading all memory while the guest is
//! stopped.
//!
//! The engine takes a CRC32C of guest memory on both sides while the guest
//! is stopped, so its time is downtime: about 100 ms per GiB here. The
//! migration itself reads every page it sends (source) and writes every page
//! it receives (destination), with the bytes in hand; this cache keeps the
//! CRC of each page from then, and at switchover combines the page CRCs
//! (one 32x32 GF(2) matrix step per page), reading only pages whose CRC is
//! missing or stale.
//!
//! The cache is valid only while every change to memory reaches it
//! (`tracking`): on a source while KVM's dirty log is on (pages the log
//! reports become stale), on a destination while its vCPUs have not run
//! (the engine's writes refresh them). Each page has a generation: a read
//! records its CRC only if no stale mark came between the generation it saw
//! before reading and the store, so a guest write racing a read leaves the
//! page stale.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crc_fast::CrcAlgorithm;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmstream_migrate::vm::DirtyBitmap;

const PAGE: u64 = 4096;
const VALID: u64 = 1 << 63;
const GEN_MASK: u64 = 0x7fff_ffff;

fn gen(v: u64) -> u64 {
    (v >> 32) & GEN_MASK
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

pub(crate) struct DigestCache {
    /// Per page: `VALID`, a 31-bit generation at bit 32, the CRC below.
    pages: Vec<AtomicU64>,
    tracking: AtomicBool,
    /// Column `i`: bit `i` of a CRC carried over one page of zeros, so
    /// `crc(A ++ B) = shift(crc(A)) ^ crc(B)` for a page `B`.
    shift: [u32; 32],
}

impl DigestCache {
    /// A cache over `size` bytes; `zeroed`: memory is all zeros and nothing
    /// but the engine writes it yet (an incoming guest), so the cache is
    /// valid from the start.
    pub(crate) fn new(size: u64, zeroed: bool) -> DigestCache {
        let zero = u64::from(vmstream::crc32c(&[0u8; PAGE as usize]));
        let init = if zeroed { VALID | zero } else { 0 };
        let mut shift = [0u32; 32];
        for (i, col) in shift.iter_mut().enumerate() {
            *col = crc_fast::checksum_combine(CrcAlgorithm::Crc32Iscsi, 1 << i, 0, PAGE) as u32;
        }
        DigestCache {
            pages: (0..size / PAGE).map(|_| AtomicU64::new(init)).collect(),
            tracking: AtomicBool::new(zeroed),
            shift,
        }
    }

    fn stale(&self, p: usize) {
        let _ = self.pages[p].fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
            Some(((gen(v) + 1) & GEN_MASK) << 32)
        });
    }

    /// Every change is reported from now on: all pages are stale.
    pub(crate) fn track(&self) {
        for p in 0..self.pages.len() {
            self.stale(p);
        }
        self.tracking.store(true, Ordering::SeqCst);
    }

    /// Changes are no longer reported.
    pub(crate) fn untrack(&self) {
        self.tracking.store(false, Ordering::SeqCst);
    }

    /// The pages of `bitmap` were written.
    pub(crate) fn mark_pages(&self, bitmap: &DirtyBitmap) {
        for (first, count) in bitmap.runs() {
            for p in first..(first + count).min(self.pages.len() as u64) {
                self.stale(p as usize);
            }
        }
    }

    /// Generations of the pages from byte `at` covering `len` bytes, taken
    /// before reading them.
    pub(crate) fn before_read(&self, at: u64, len: usize) -> Vec<u64> {
        let first = (at / PAGE) as usize;
        (first..first + len / PAGE as usize)
            .map(|p| {
                self.pages
                    .get(p)
                    .map_or(0, |v| gen(v.load(Ordering::SeqCst)))
            })
            .collect()
    }

    /// `data` was read from byte `at` after [`DigestCache::before_read`]
    /// gave `gens`: records each page's CRC unless it went stale meanwhile.
    pub(crate) fn after_read(&self, at: u64, data: &[u8], gens: &[u64]) {
        let first = (at / PAGE) as usize;
        for (i, (page, &g)) in data.chunks_exact(PAGE as usize).zip(gens).enumerate() {
            let Some(slot) = self.pages.get(first + i) else {
                return;
            };
            let crc = u64::from(vmstream::crc32c(page));
            let _ = slot.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                (gen(v) == g).then_some(VALID | (g << 32) | crc)
            });
        }
    }

    /// `data` was written at byte `at` by the engine (nothing else writes
    /// memory while the cache tracks a destination).
    pub(crate) fn written(&self, at: u64, data: &[u8]) {
        let first = (at / PAGE) as usize;
        for (i, page) in data.chunks_exact(PAGE as usize).enumerate() {
            if let Some(slot) = self.pages.get(first + i) {
                let crc = u64::from(vmstream::crc32c(page));
                let _ = slot.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                    Some(VALID | (gen(v) << 32) | crc)
                });
            }
        }
    }

    fn shifted(&self, crc: u32) -> u32 {
        let mut out = 0;
        let mut v = crc;
        let mut i = 0;
        while v != 0 {
            if v & 1 != 0 {
                out ^= self.shift[i];
            }
            v >>= 1;
            i += 1;
        }
        out
    }

    /// The CRC32C of all memory, reading only pages without a valid CRC;
    /// `None` when the cache is not tracking changes or most pages would have
    /// to be read anyway.
    pub(crate) fn crc(&self, mem: &GuestMemoryMmap) -> Option<Result<u32, String>> {
        if !self.tracking.load(Ordering::SeqCst) {
            return None;
        }
        let missing = self
            .pages
            .iter()
            .filter(|v| v.load(Ordering::SeqCst) & VALID == 0)
            .count();
        if missing > self.pages.len() / 4 {
            return None;
        }
        let mut buf = vec![0u8; PAGE as usize];
        let mut acc: Option<u32> = None;
        for (p, slot) in self.pages.iter().enumerate() {
            let v = slot.load(Ordering::SeqCst);
            let crc = if v & VALID != 0 {
                v as u32
            } else {
                let at = p as u64 * PAGE;
                if let Err(e) = mem.read_slice(&mut buf, GuestAddress(at)) {
                    return Some(Err(format!("reading guest memory at {at:#x}: {e}")));
                }
                let crc = vmstream::crc32c(&buf);
                let g = gen(v);
                let _ = slot.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                    (gen(v) == g).then_some(VALID | (g << 32) | u64::from(crc))
                });
                crc
            };
            acc = Some(match acc {
                None => crc,
                Some(a) => self.shifted(a) ^ crc,
            });
        }
        Some(Ok(acc.unwrap_or_else(|| vmstream::crc32c(&[]))))
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

    #[test]
    fn page_crcs_combine_to_the_whole_crc_and_stale_pages_are_reread() {
        let size = 64 * PAGE;
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap();
        let data: Vec<u8> = (0..size as u32).map(|i| (i % 251) as u8).collect();
        let cache = DigestCache::new(size, true);
        // A destination: the engine writes everything.
        mem.write_slice(&data, GuestAddress(0)).unwrap();
        cache.written(0, &data);
        assert_eq!(cache.crc(&mem).unwrap().unwrap(), vmstream::crc32c(&data));
        // A source: read after tracking starts, then a page changes and the
        // dirty log says so; a page whose read raced a stale mark is reread.
        cache.track();
        let gens = cache.before_read(0, data.len());
        let mut out = vec![0u8; data.len()];
        mem.read_slice(&mut out, GuestAddress(0)).unwrap();
        let mut dirty = DirtyBitmap::new(64);
        dirty.set(5);
        cache.mark_pages(&dirty);
        cache.after_read(0, &out, &gens);
        mem.write_slice(&[9u8; 4096], GuestAddress(5 * PAGE))
            .unwrap();
        let mut now = vec![0u8; data.len()];
        mem.read_slice(&mut now, GuestAddress(0)).unwrap();
        assert_eq!(cache.crc(&mem).unwrap().unwrap(), vmstream::crc32c(&now));
        cache.untrack();
        assert!(cache.crc(&mem).is_none());
    }
}
