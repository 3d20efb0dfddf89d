//! QEMU multifd input of the sending relay: the source QEMU's main channel
//! and its multifd channels, each taken off its connection by a thread of its
//! own as its bytes arrive, so that QEMU never waits on a connection the
//! relay is not reading (its main thread waits for the channels' writes, and
//! the conversion reads the main channel).
//!
//! The threads hand their bytes to one queue; the conversion reads them
//! through one [`Port`] per connection, in one thread. A port that has no
//! bytes takes the next ones off the queue, whichever connection they belong
//! to, and keeps the others' for their ports, so reading one connection
//! never holds up another. What waits in the ports is bounded by `cap`: QEMU
//! writes to its main channel at least every iteration of its RAM loop (50
//! ms), and the merger takes every channel's arrived packets at each event of
//! the main channel, so in practice it holds tens of megabytes.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, Read};
use std::rc::Rc;
use std::sync::mpsc::{sync_channel, Receiver, TryRecvError};

use vmstream_qemu::multifd::Arrived;

/// Bytes a thread reads at once.
const CHUNK: usize = 256 << 10;

/// What the threads hand over: connection index and bytes (empty at the
/// end), or the read's error.
type Message = (usize, io::Result<Vec<u8>>);

#[derive(Default)]
struct Queue {
    chunks: VecDeque<Vec<u8>>,
    /// Read offset into the first chunk.
    at: usize,
    bytes: usize,
    ended: Option<io::Result<()>>,
}

struct Shared {
    rx: Receiver<Message>,
    queues: Vec<Queue>,
    held: usize,
    cap: usize,
    names: Vec<String>,
    /// Over the cap: every read fails with this from then on.
    failed: Option<String>,
}

impl Shared {
    fn take(&mut self, (i, m): Message) -> io::Result<()> {
        let q = &mut self.queues[i];
        match m {
            Ok(b) if b.is_empty() => q.ended = Some(Ok(())),
            Ok(b) => {
                q.bytes += b.len();
                self.held += b.len();
                q.chunks.push_back(b);
                if self.held > self.cap {
                    let why = format!(
                        "{} is more than {} MiB ahead of the conversion (a multifd channel far ahead of the main channel)",
                        self.names[i],
                        self.cap >> 20
                    );
                    self.failed = Some(why.clone());
                    return Err(io::Error::other(why));
                }
            }
            Err(e) => q.ended = Some(Err(e)),
        }
        Ok(())
    }

    /// Takes the messages that are there, without waiting.
    fn take_ready(&mut self) -> io::Result<()> {
        loop {
            match self.rx.try_recv() {
                Ok(m) => self.take(m)?,
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return Ok(()),
            }
        }
    }

    /// Waits for the next message.
    fn take_next(&mut self) -> io::Result<()> {
        match self.rx.recv() {
            Ok(m) => self.take(m),
            // every thread has ended, each after sending its end
            Err(_) => Err(io::Error::other("the relay's input threads have ended")),
        }
    }
}

/// One connection's bytes, as they arrive.
pub(crate) struct Port {
    shared: Rc<RefCell<Shared>>,
    index: usize,
}

/// A port per input, in order, each input read by a thread named for it;
/// at most `cap` bytes wait in the ports together.
pub(crate) fn ports(
    inputs: Vec<(String, Box<dyn Read + Send>)>,
    cap: usize,
) -> io::Result<Vec<Port>> {
    // a few chunks in flight per thread; beyond, they wait in the ports
    let (tx, rx) = sync_channel::<Message>(4 * inputs.len().max(1));
    let mut names = Vec::new();
    for (i, (name, mut input)) in inputs.into_iter().enumerate() {
        let tx = tx.clone();
        names.push(name.clone());
        std::thread::Builder::new()
            .name(format!("relay-in-{i}"))
            .spawn(move || loop {
                let mut buf = vec![0u8; CHUNK];
                let m = match input.read(&mut buf) {
                    Ok(n) => {
                        buf.truncate(n);
                        Ok(buf)
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => Err(io::Error::new(e.kind(), format!("{name}: {e}"))),
                };
                let last = !matches!(&m, Ok(b) if !b.is_empty());
                if tx.send((i, m)).is_err() || last {
                    return;
                }
            })?;
    }
    let n = names.len();
    let shared = Rc::new(RefCell::new(Shared {
        rx,
        queues: (0..n).map(|_| Queue::default()).collect(),
        held: 0,
        cap,
        names,
        failed: None,
    }));
    Ok((0..n)
        .map(|index| Port {
            shared: shared.clone(),
            index,
        })
        .collect())
}

impl Read for Port {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut s = self.shared.borrow_mut();
        loop {
            let s = &mut *s;
            if let Some(why) = &s.failed {
                return Err(io::Error::other(why.clone()));
            }
            let q = &mut s.queues[self.index];
            if let Some(first) = q.chunks.front() {
                let n = (first.len() - q.at).min(buf.len());
                buf[..n].copy_from_slice(&first[q.at..q.at + n]);
                q.at += n;
                q.bytes -= n;
                s.held -= n;
                if q.at == first.len() {
                    q.chunks.pop_front();
                    q.at = 0;
                }
                return Ok(n);
            }
            match &q.ended {
                Some(Ok(())) => return Ok(0),
                Some(Err(e)) => return Err(io::Error::new(e.kind(), e.to_string())),
                None => s.take_next()?,
            }
        }
    }
}

impl Arrived for Port {
    fn arrived(&mut self) -> usize {
        let mut s = self.shared.borrow_mut();
        if s.take_ready().is_err() || s.failed.is_some() {
            // over the cap: the next read says so
            return usize::MAX;
        }
        let q = &s.queues[self.index];
        match (q.bytes, &q.ended) {
            (0, Some(_)) => usize::MAX,
            (n, _) => n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that gives its bytes only once `gate` says so.
    struct Gated(std::sync::mpsc::Receiver<Vec<u8>>);

    impl Read for Gated {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.0.recv() {
                Ok(b) => {
                    buf[..b.len()].copy_from_slice(&b);
                    Ok(b.len())
                }
                Err(_) => Ok(0),
            }
        }
    }

    #[test]
    fn a_port_reads_its_bytes_while_another_input_waits() {
        let (main_tx, main_rx) = std::sync::mpsc::channel();
        let (chan_tx, chan_rx) = std::sync::mpsc::channel();
        let mut p = ports(
            vec![
                ("main".into(), Box::new(Gated(main_rx))),
                ("channel 0".into(), Box::new(Gated(chan_rx))),
            ],
            1 << 20,
        )
        .unwrap();
        let mut chan = p.pop().unwrap();
        let mut main = p.pop().unwrap();
        chan_tx.send(b"abc".to_vec()).unwrap();
        let mut buf = [0u8; 8];
        // main has nothing yet: its read takes channel 0's bytes off the
        // queue for channel 0's port and waits on
        main_tx.send(b"M".to_vec()).unwrap();
        assert_eq!(main.read(&mut buf).unwrap(), 1);
        assert_eq!(&buf[..1], b"M");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while chan.arrived() < 3 {
            assert!(
                std::time::Instant::now() < deadline,
                "channel bytes never arrived"
            );
            std::thread::yield_now();
        }
        assert_eq!(chan.read(&mut buf).unwrap(), 3);
        assert_eq!(&buf[..3], b"abc");
        assert_eq!(chan.arrived(), 0);
        drop(chan_tx);
        while chan.arrived() != usize::MAX {
            assert!(
                std::time::Instant::now() < deadline,
                "the end never arrived"
            );
            std::thread::yield_now();
        }
        assert_eq!(chan.read(&mut buf).unwrap(), 0);
        drop(main_tx);
        assert_eq!(main.read(&mut buf).unwrap(), 0);
    }

    #[test]
    fn bytes_beyond_the_cap_fail_every_later_read() {
        let (main_tx, main_rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let mut p = ports(
            vec![
                ("main".into(), Box::new(Gated(main_rx))),
                ("multifd channel 0".into(), Box::new(&[7u8; 4096][..])),
            ],
            1000,
        )
        .unwrap();
        let mut chan = p.pop().unwrap();
        let mut main = p.pop().unwrap();
        // the channel's port takes the bytes over the cap: its read fails,
        // and so does every read after it, on any port
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while chan.arrived() != usize::MAX {
            assert!(
                std::time::Instant::now() < deadline,
                "the bytes never arrived"
            );
            std::thread::yield_now();
        }
        for port in [&mut chan, &mut main] {
            let e = port.read(&mut [0u8; 8]).unwrap_err();
            assert!(
                e.to_string().contains("multifd channel 0 is more than"),
                "{e}"
            );
        }
        drop(main_tx);
    }
}
