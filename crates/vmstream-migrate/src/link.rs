//! The connections of one migration as the driver sees them: byte streams it
//! can read, write, count and cut from another thread.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A connection: a byte stream in both directions that another thread can cut
/// (so cancel unblocks a blocked read or write).
pub trait Link: Read + Write + Send {
    /// A handle that shuts the connection down from any thread.
    fn cutter(&self) -> Cutter;

    /// Whether the connection is TLS with mutual authentication (announced
    /// in the handshake). Plain by default.
    fn is_tls(&self) -> bool {
        false
    }

    /// Ends this side's writing so the peer reads the end of the stream
    /// (TLS `close_notify`, a socket's half-close), leaving reading open.
    /// Flushes by default.
    fn close_write(&mut self) -> io::Result<()> {
        self.flush()
    }
}

/// Shuts a connection down from any thread.
#[derive(Clone)]
pub struct Cutter(Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for Cutter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cutter")
    }
}

impl Cutter {
    /// A cutter that runs `f`.
    pub fn new(f: impl Fn() + Send + Sync + 'static) -> Cutter {
        Cutter(Arc::new(f))
    }

    /// Shuts the connection down.
    pub fn cut(&self) {
        (self.0)()
    }
}

impl Link for std::os::unix::net::UnixStream {
    fn close_write(&mut self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }

    fn cutter(&self) -> Cutter {
        let s = self.try_clone();
        Cutter::new(move || {
            if let Ok(s) = &s {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        })
    }
}

impl Link for std::net::TcpStream {
    fn close_write(&mut self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }

    fn cutter(&self) -> Cutter {
        let s = self.try_clone();
        Cutter::new(move || {
            if let Ok(s) = &s {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        })
    }
}

impl Link for std::fs::File {
    /// File I/O does not block indefinitely; cancel is seen between writes.
    fn cutter(&self) -> Cutter {
        Cutter::new(|| {})
    }
}

/// The connections of one migration: the main channel and the data channels.
pub struct Connections {
    /// The main channel (control, device state; pages too when there are no
    /// data channels).
    pub main: Box<dyn Link>,
    /// Data channels, by channel id.
    pub data: Vec<Box<dyn Link>>,
    /// A one-way transport (`exec`, `file`): the main channel carries the
    /// source's stream only, nothing comes back, and there are no data
    /// channels.
    pub one_way: bool,
}

impl Connections {
    /// Whether every connection is TLS with mutual authentication.
    pub fn is_tls(&self) -> bool {
        self.main.is_tls() && self.data.iter().all(|d| d.is_tls())
    }
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Connections {{ data: {} }}", self.data.len())
    }
}

/// Cancels a migration: sets a flag the driver checks between steps and cuts
/// every connection so blocked I/O returns. A driver tearing down a migration
/// that failed stops it the same way, but that is no cancel: the migration
/// ends `failed`.
#[derive(Clone, Default)]
pub struct Cancel {
    /// Stop now: cancelled, or torn down after a failure.
    stop: Arc<AtomicBool>,
    /// [`Cancel::cancel`] was called.
    requested: Arc<AtomicBool>,
    cutters: Arc<Mutex<Vec<Cutter>>>,
}

impl std::fmt::Debug for Cancel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cancel({})", self.is_cancelled())
    }
}

impl Cancel {
    /// A token not yet cancelled.
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// Cancels: idempotent.
    pub fn cancel(&self) {
        self.requested.store(true, Ordering::SeqCst);
        self.abort();
    }

    /// Whether [`Cancel::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// Stops the migration after a failure: cuts every connection, so every
    /// thread of the driver ends, without making it a cancel.
    pub(crate) fn abort(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Ok(c) = self.cutters.lock() {
            for c in c.iter() {
                c.cut();
            }
        }
    }

    /// Whether the migration is to stop: cancelled or aborted.
    pub(crate) fn is_stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Forgets the registered connections: once a migration is over its
    /// sockets must close when the driver drops them, and the handles kept
    /// here would hold them (and a listener) open.
    pub fn release(&self) {
        if let Ok(mut c) = self.cutters.lock() {
            c.clear();
        }
    }

    /// Registers a connection to cut on cancel (cut at once if already
    /// cancelled or aborted).
    pub fn watch(&self, cutter: Cutter) {
        if let Ok(mut c) = self.cutters.lock() {
            c.push(cutter.clone());
        }
        if self.is_stopped() {
            cutter.cut();
        }
    }
}

/// Aborts a migration (cutting every connection) unless disarmed in time:
/// how a side that waits for its peer's answer gives up on a peer that
/// hangs, or whose stream was corrupted into a record length that leaves the
/// reader waiting for bytes that never come.
pub(crate) struct Watchdog {
    done: Arc<(Mutex<bool>, std::sync::Condvar)>,
    fired: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    /// Aborts `cancel`'s migration after `after`, unless dropped before.
    pub(crate) fn arm(cancel: &Cancel, after: std::time::Duration) -> Watchdog {
        let done = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let fired = Arc::new(AtomicBool::new(false));
        let thread = {
            let (done, fired, cancel) = (done.clone(), fired.clone(), cancel.clone());
            std::thread::Builder::new()
                .name("migration-watchdog".into())
                .spawn(move || {
                    let (lock, cv) = &*done;
                    let Ok(g) = lock.lock() else { return };
                    if let Ok((g, _)) = cv.wait_timeout_while(g, after, |done| !*done) {
                        if !*g {
                            fired.store(true, Ordering::SeqCst);
                            cancel.abort();
                        }
                    }
                })
                .ok()
        };
        Watchdog {
            done,
            fired,
            thread,
        }
    }

    /// Whether the time ran out.
    pub(crate) fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Ok(mut d) = self.done.0.lock() {
            *d = true;
        }
        self.done.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One connection shared by a reader and a writer on the same thread (the
/// main channel carries a stream each way).
pub(crate) struct Shared(Arc<Mutex<Box<dyn Link>>>);

impl Shared {
    /// The writing and the reading end of `link`.
    pub(crate) fn new(link: Box<dyn Link>) -> (Shared, Shared) {
        let a = Arc::new(Mutex::new(link));
        (Shared(a.clone()), Shared(a))
    }
}

fn poisoned() -> io::Error {
    io::Error::other("connection lock poisoned")
}

impl Read for Shared {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.lock().map_err(|_| poisoned())?.read(buf)
    }
}

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().map_err(|_| poisoned())?.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.lock().map_err(|_| poisoned())?.flush()
    }
}

/// A writer that counts what it wrote into a shared counter.
pub(crate) struct Counted<W>(pub(crate) W, pub(crate) Arc<AtomicU64>);

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.0.write(buf)?;
        self.1.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}
