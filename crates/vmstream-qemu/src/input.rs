//! A refillable read buffer that knows stream offsets.

use std::io::{ErrorKind as IoKind, Read, Seek, SeekFrom};

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
    /// For a seekable input: how to move it to an absolute position, where
    /// the stream began, and the stream's length.
    seek: Option<fn(&mut R, u64) -> std::io::Result<u64>>,
    origin: u64,
    len: Option<u64>,
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
            seek: None,
            origin: 0,
            len: None,
        }
    }

    /// Input from a seekable `inner`, whose stream starts at its current
    /// position: forward skips seek instead of reading, and are checked
    /// against the length.
    pub(crate) fn seekable(mut inner: R) -> std::io::Result<Input<R>>
    where
        R: Seek,
    {
        let origin = inner.stream_position()?;
        let end = inner.seek(SeekFrom::End(0))?;
        inner.seek(SeekFrom::Start(origin))?;
        let mut input = Input::new(inner);
        input.seek = Some(|r, pos| r.seek(SeekFrom::Start(pos)));
        input.origin = origin;
        input.len = Some(end.saturating_sub(origin));
        Ok(input)
    }

    /// The inner reader (before anything was read).
    pub(crate) fn into_inner(self) -> R {
        self.inner
    }

    /// The stream's length, when the input is seekable.
    pub(crate) fn len(&self) -> Option<u64> {
        self.len
    }

    /// Moves forward to stream offset `target` (at or after [`Input::offset`]):
    /// over buffered bytes, then by seeking where the input can, else by
    /// reading and dropping what lies between. `what` names the target for
    /// errors.
    pub(crate) fn skip_to(&mut self, target: u64, what: &str) -> Result<()> {
        let at = self.offset();
        if target < at {
            return Err(Error::new(
                ErrorKind::Malformed,
                format!("{what} at {target:#x} lies before the read position"),
            )
            .at_offset(at));
        }
        let avail = (self.end - self.pos) as u64;
        if target - at <= avail {
            self.pos += (target - at) as usize;
            return Ok(());
        }
        if let Some(len) = self.len {
            if target > len {
                return Err(Error::new(
                    ErrorKind::Malformed,
                    format!(
                        "truncated stream: {what} at {target:#x} lies past its end at {len:#x}"
                    ),
                )
                .at_offset(at));
            }
        }
        // drop the buffer: the inner reader stands at `base + end`
        self.base += self.end as u64;
        self.pos = 0;
        self.end = 0;
        if let Some(seek) = self.seek {
            let pos = self.origin.saturating_add(target);
            seek(&mut self.inner, pos).map_err(|e| Error::from(e).at_offset(at))?;
            self.base = target;
            return Ok(());
        }
        while self.base < target {
            let k = usize::try_from(target - self.base)
                .unwrap_or(usize::MAX)
                .min(self.buf.len());
            match self.inner.read(&mut self.buf[..k]) {
                Ok(0) => {
                    self.eof = true;
                    return Err(Error::new(
                        ErrorKind::Malformed,
                        format!(
                            "truncated stream: it ends at {:#x}, before {what} at {target:#x}",
                            self.base
                        ),
                    )
                    .at_offset(at));
                }
                Ok(n) => self.base += n as u64,
                Err(e) if e.kind() == IoKind::Interrupted => {}
                Err(e) => return Err(Error::from(e).at_offset(self.base)),
            }
        }
        Ok(())
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

    /// Reads everything up to EOF into the buffer, or until `done` says the
    /// bytes buffered after the position are the whole rest of the stream (it
    /// is asked after every read; nothing is read after it says so), failing
    /// beyond `limit` bytes.
    pub(crate) fn buffer_rest(
        &mut self,
        limit: u64,
        mut done: impl FnMut(&[u8]) -> bool,
    ) -> Result<()> {
        let cap = usize::try_from(limit)
            .unwrap_or(usize::MAX)
            .saturating_add(1);
        let mut got = self.end - self.pos;
        while !self.eof && got < cap {
            if done(self.avail()) {
                // The stream ends here, whether or not the sender closes.
                self.eof = true;
                break;
            }
            // One read at a time, so `done` sees every step.
            got = self.fill(got + 1)?;
        }
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
