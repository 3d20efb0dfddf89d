//! A refillable read buffer that knows stream offsets.

use std::io::{ErrorKind as IoKind, Read};

use vmstream::{Error, ErrorKind, Result};

const CHUNK: usize = 1 << 20;

/// Buffered input: `ensure(n)` makes `n` bytes readable at the current position.
#[derive(Debug)]
pub(crate) struct Input<R> {
    inner: R,
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    /// Stream offset of `buf[0]`.
    base: u64,
    eof: bool,
}

impl<R: Read> Input<R> {
    pub(crate) fn new(inner: R) -> Input<R> {
        Input {
            inner,
            buf: vec![0; CHUNK],
            pos: 0,
            end: 0,
            base: 0,
            eof: false,
        }
    }

    /// Stream offset of the next unread byte.
    pub(crate) fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    /// Bytes buffered after the position.
    pub(crate) fn avail(&self) -> &[u8] {
        &self.buf[self.pos..self.end]
    }

    /// Tries to buffer `n` bytes; returns how many are available (less than `n` only at EOF).
    pub(crate) fn fill(&mut self, n: usize) -> Result<usize> {
        if self.end - self.pos >= n || self.eof {
            return Ok(self.end - self.pos);
        }
        if self.pos > 0 {
            self.buf.copy_within(self.pos..self.end, 0);
            self.base += self.pos as u64;
            self.end -= self.pos;
            self.pos = 0;
        }
        while self.end < n {
            if self.end == self.buf.len() {
                // Grow as bytes arrive, never to a declared length up front:
                // doubling, so the buffer is at most twice what was read.
                let target = n.checked_next_multiple_of(CHUNK).unwrap_or(n);
                let grow = self.buf.len().max(CHUNK).min(target - self.buf.len());
                self.buf.resize(self.buf.len() + grow, 0);
            }
            match self.inner.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(k) => self.end += k,
                Err(e) if e.kind() == IoKind::Interrupted => {}
                Err(e) => return Err(Error::from(e).at_offset(self.base + self.end as u64)),
            }
        }
        Ok(self.end - self.pos)
    }

    /// The next `n` bytes, without consuming them; an error names `what` when
    /// the stream ends first.
    pub(crate) fn peek(&mut self, n: usize, what: &str) -> Result<&[u8]> {
        let got = self.fill(n)?;
        if got < n {
            return Err(Error::new(
                ErrorKind::Malformed,
                format!("truncated stream: {what} needs {n} bytes, {got} left"),
            )
            .at_offset(self.offset()));
        }
        Ok(&self.buf[self.pos..self.pos + n])
    }

    /// Consumes `n` bytes already made available by `peek`/`fill`.
    pub(crate) fn advance(&mut self, n: usize) {
        debug_assert!(self.pos + n <= self.end);
        self.pos += n;
    }

    /// Takes the next `n` bytes.
    pub(crate) fn take(&mut self, n: usize, what: &str) -> Result<&[u8]> {
        self.peek(n, what)?;
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub(crate) fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }

    pub(crate) fn u16(&mut self, what: &str) -> Result<u16> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self, what: &str) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A counted string (`u8 len` + bytes), as UTF-8.
    pub(crate) fn cstr(&mut self, what: &str) -> Result<String> {
        let at = self.offset();
        let len = usize::from(self.u8(what)?);
        let b = self.take(len, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| {
            Error::new(ErrorKind::Malformed, format!("{what} is not UTF-8 text")).at_offset(at)
        })
    }

    /// Next byte, if any.
    pub(crate) fn peek_u8(&mut self) -> Result<Option<u8>> {
        Ok((self.fill(1)? > 0).then(|| self.buf[self.pos]))
    }

    /// Reads everything up to EOF into the buffer, failing beyond `limit` bytes.
    pub(crate) fn buffer_rest(&mut self, limit: u64) -> Result<()> {
        let cap = usize::try_from(limit)
            .unwrap_or(usize::MAX)
            .saturating_add(1);
        let got = self.fill(cap)?;
        if got as u64 > limit {
            return Err(Error::new(
                ErrorKind::LimitExceeded,
                format!("the device sections need more than {limit} bytes of buffer (Limits::max_alloc) before the device description arrives"),
            )
            .at_offset(self.offset()));
        }
        Ok(())
    }
}
