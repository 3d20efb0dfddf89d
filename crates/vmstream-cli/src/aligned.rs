//! A buffered reader whose reads land where the kernel copies fastest.
//!
//! Copying from the page cache into a user buffer (`read(2)`) runs at a
//! fraction of its speed when the buffer is not at the same offset within a
//! cache line as the file data: on this project's test machine a 1 GiB file
//! reads in 0.11 s into a cache-line-aligned buffer and in 0.5 s into one 16
//! bytes off, which is where the allocator puts a 1 MiB `Vec` (and so where
//! `std::io::BufReader` reads). Here every refill lands at an address
//! congruent, modulo 64, with the number of bytes read so far, i.e. with the
//! file offset of a file read from its start. (`write(2)` showed no such
//! difference.)

use std::io::{BufRead, Read, Result};

const LINE: usize = 64;

/// Like [`std::io::BufReader`], with aligned refills.
pub(crate) struct AlignedReader<R> {
    inner: R,
    /// `capacity` bytes plus room to start anywhere in a cache line; it never
    /// grows, so its address stays put.
    buf: Vec<u8>,
    capacity: usize,
    pos: usize,
    filled: usize,
    /// Bytes read from `inner` so far.
    read: u64,
}

impl<R: Read> AlignedReader<R> {
    pub(crate) fn with_capacity(capacity: usize, inner: R) -> AlignedReader<R> {
        AlignedReader {
            inner,
            buf: vec![0; capacity + 2 * LINE],
            capacity,
            pos: 0,
            filled: 0,
            read: 0,
        }
    }
}

impl<R: Read> Read for AlignedReader<R> {
    fn read(&mut self, out: &mut [u8]) -> Result<usize> {
        let n = {
            let avail = self.fill_buf()?;
            let n = avail.len().min(out.len());
            out[..n].copy_from_slice(&avail[..n]);
            n
        };
        self.consume(n);
        Ok(n)
    }
}

impl<R: Read> BufRead for AlignedReader<R> {
    fn fill_buf(&mut self) -> Result<&[u8]> {
        if self.pos == self.filled {
            let start = self.buf.as_ptr().align_offset(LINE) + (self.read % LINE as u64) as usize;
            let end = start + self.capacity;
            let n = loop {
                match self.inner.read(&mut self.buf[start..end]) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    r => break r?,
                }
            };
            self.read += n as u64;
            (self.pos, self.filled) = (start, start + n);
        }
        Ok(&self.buf[self.pos..self.filled])
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.filled);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_everything_in_order_and_lands_aligned() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 31 % 251) as u8).collect();
        // an inner reader that hands out odd-sized pieces
        struct Odd<'a>(&'a [u8]);
        impl Read for Odd<'_> {
            fn read(&mut self, out: &mut [u8]) -> Result<usize> {
                let n = out.len().min(self.0.len()).min(333);
                out[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut r = AlignedReader::with_capacity(1000, Odd(&data));
        let mut got = Vec::new();
        let mut seen = 0u64;
        loop {
            let buf = r.fill_buf().unwrap();
            if buf.is_empty() {
                break;
            }
            assert_eq!(buf.as_ptr() as u64 % LINE as u64, seen % LINE as u64);
            let n = buf.len().min(77);
            got.extend_from_slice(&buf[..n]);
            r.consume(n);
            seen += n as u64;
        }
        assert_eq!(got, data);
        let mut r = AlignedReader::with_capacity(64, &data[..]);
        let mut all = Vec::new();
        r.read_to_end(&mut all).unwrap();
        assert_eq!(all, data);
    }
}
