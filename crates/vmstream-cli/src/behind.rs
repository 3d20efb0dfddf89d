//! `WriteBehind`: an output written by a thread of its own, so that the
//! conversion goes on with the next megabyte while the kernel copies the last
//! one (a `write(2)` into the page cache costs about as much as converting
//! the bytes, and a machine has more than one core).

use std::io::{self, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

/// Bytes gathered before they are handed to the thread.
const CHUNK: usize = 1 << 20;
/// Chunks handed over and not yet written, at most.
const QUEUED: usize = 2;

/// A buffered writer whose writes to the inner writer happen on a thread:
/// at most `(QUEUED + 2) x 1 MiB` held. An error of the inner writer comes
/// back from a later `write`, `flush` or [`WriteBehind::finish`].
pub(crate) struct WriteBehind {
    buf: Vec<u8>,
    to_thread: Option<SyncSender<Vec<u8>>>,
    /// Written chunks coming back to be filled again (and the count of
    /// chunks out).
    back: Receiver<Vec<u8>>,
    out: usize,
    thread: Option<JoinHandle<io::Result<()>>>,
    failed: Option<io::ErrorKind>,
}

impl WriteBehind {
    pub(crate) fn new(mut inner: Box<dyn Write + Send>) -> io::Result<WriteBehind> {
        let (to_thread, rx) = sync_channel::<Vec<u8>>(QUEUED);
        let (done, back) = sync_channel::<Vec<u8>>(QUEUED + 2);
        let thread = std::thread::Builder::new()
            .name("write-behind".into())
            .spawn(move || {
                for mut chunk in rx {
                    inner.write_all(&chunk)?;
                    inner.flush()?;
                    chunk.clear();
                    // the writer may be gone (it failed or finished): fine
                    let _ = done.send(chunk);
                }
                inner.flush()
            })?;
        Ok(WriteBehind {
            buf: Vec::with_capacity(CHUNK),
            to_thread: Some(to_thread),
            back,
            out: 0,
            thread: Some(thread),
            failed: None,
        })
    }

    /// The thread's error, once it has stopped.
    fn thread_error(&mut self) -> io::Error {
        self.to_thread = None;
        let e = match self.thread.take().map(JoinHandle::join) {
            Some(Ok(Err(e))) => e,
            Some(Err(_)) => io::Error::other("the output thread panicked"),
            _ => io::Error::new(
                self.failed.unwrap_or(io::ErrorKind::Other),
                "the output failed before",
            ),
        };
        self.failed = Some(e.kind());
        e
    }

    /// Hands the gathered bytes to the thread, taking an empty chunk back.
    fn ship(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let next = if self.out >= QUEUED {
            // wait for a chunk to come back: the thread is that far behind
            match self.back.recv() {
                Ok(c) => {
                    self.out -= 1;
                    c
                }
                Err(_) => return Err(self.thread_error()),
            }
        } else {
            Vec::with_capacity(CHUNK)
        };
        let full = std::mem::replace(&mut self.buf, next);
        let sent = self.to_thread.as_ref().map(|t| t.send(full));
        match sent {
            Some(Ok(())) => {
                self.out += 1;
                Ok(())
            }
            _ => Err(self.thread_error()),
        }
    }

    /// Writes what is left, waits for the thread, and says how it went.
    pub(crate) fn finish(mut self) -> io::Result<()> {
        self.ship()?;
        self.to_thread = None;
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(io::Error::other("the output thread panicked")),
            None => Err(self.thread_error()),
        }
    }
}

impl Write for WriteBehind {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if self.failed.is_some() {
            return Err(self.thread_error());
        }
        let n = bytes.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&bytes[..n]);
        if self.buf.len() == CHUNK {
            self.ship()?;
        }
        Ok(n)
    }

    /// Hands what is gathered on and waits until the thread has written
    /// every chunk.
    fn flush(&mut self) -> io::Result<()> {
        self.ship()?;
        while self.out > 0 {
            match self.back.recv() {
                Ok(_) => self.out -= 1,
                Err(_) => return Err(self.thread_error()),
            }
        }
        Ok(())
    }
}

impl Drop for WriteBehind {
    fn drop(&mut self) {
        // whatever is left is written; errors were for finish() to report
        let _ = self.ship();
        self.to_thread = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Collects bytes; fails every write after `fail_after` bytes.
    struct Sink(Arc<Mutex<Vec<u8>>>, usize);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let mut v = self.0.lock().unwrap();
            if v.len() + b.len() > self.1 {
                return Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"));
            }
            v.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_byte_arrives_in_order() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let mut w = WriteBehind::new(Box::new(Sink(got.clone(), usize::MAX))).unwrap();
        let data: Vec<u8> = (0..5 * CHUNK + 12345).map(|i| (i % 251) as u8).collect();
        for piece in data.chunks(70_001) {
            w.write_all(piece).unwrap();
        }
        w.flush().unwrap();
        assert_eq!(
            got.lock().unwrap().len(),
            data.len(),
            "flush waits for the thread"
        );
        w.write_all(b"tail").unwrap();
        w.finish().unwrap();
        let got = got.lock().unwrap();
        assert!(got[..data.len()] == data[..] && got[data.len()..] == *b"tail");
    }

    #[test]
    fn the_inner_writers_error_comes_back() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let mut w = WriteBehind::new(Box::new(Sink(got, 3 * CHUNK))).unwrap();
        let data = vec![7u8; 10 * CHUNK];
        let e = w.write_all(&data).and_then(|()| w.flush()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull, "{e}");
        // and stays
        assert!(w.write_all(b"x").is_err());
        assert!(w.finish().is_err());
    }
}
