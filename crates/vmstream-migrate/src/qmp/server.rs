//! The QMP server on a unix socket: a thread accepting clients, and per client
//! one thread reading and executing requests and one writing responses and
//! events, so that a client that stops reading never blocks anyone else.
//!
//! ```text
//! client ──bytes──> reader thread: Splitter ─> Session ─> Handler
//!                                                 │ responses (wait for room:
//!                                                 v  back-pressure on this client)
//! client <──lines── writer thread <── outbox, bounded in bytes <── Events::emit
//!                                       (no room for an event: the client is dropped)
//! ```
//!
//! Every line sent ends with `\r\n` and is ASCII (non-ASCII characters escaped
//! as `\uXXXX`), as QEMU sends them.

use std::collections::{BTreeMap, VecDeque};
use std::fs;
use std::io::{self, Write};
use std::mem::MaybeUninit;
use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Map, Value};

use super::error::QmpError;
use super::json::{QmpLimits, Splitter};
use super::migration::{migration_event_data, MigrationStatus};
use super::protocol::{error_response, greeting, Event, Handler, Session, MAX_PENDING_FDS};

/// How a [`QmpServer`] treats its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Most clients connected at once (default 16); one more is sent an error
    /// and closed.
    pub max_clients: usize,
    /// Bounds on each input message.
    pub limits: QmpLimits,
    /// Bytes of messages waiting to be written to one client (default 1 MiB;
    /// a single larger message still goes through an empty queue). Responses
    /// wait for room; an event that finds no room disconnects the client,
    /// which has stopped reading.
    pub max_queued: usize,
    /// How long [`QmpServer::shutdown`] waits for client threads to finish
    /// (a command may be running). Default 5 s.
    pub shutdown_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            max_clients: 16,
            limits: QmpLimits::default(),
            max_queued: 1 << 20,
            shutdown_timeout: Duration::from_secs(5),
        }
    }
}

impl ServerConfig {
    /// Sets [`ServerConfig::max_clients`].
    pub fn with_max_clients(mut self, n: usize) -> ServerConfig {
        self.max_clients = n;
        self
    }

    /// Sets [`ServerConfig::limits`].
    pub fn with_limits(mut self, limits: QmpLimits) -> ServerConfig {
        self.limits = limits;
        self
    }

    /// Sets [`ServerConfig::max_queued`].
    pub fn with_max_queued(mut self, bytes: usize) -> ServerConfig {
        self.max_queued = bytes;
        self
    }
}

/// A QMP server listening on a unix socket. Shut it down with
/// [`QmpServer::shutdown`] or by dropping it: either stops accepting, closes
/// every client and removes the socket file.
///
/// ```no_run
/// use std::sync::Arc;
/// use serde_json::{Map, Value};
/// use vmstream_migrate::qmp::{Handler, QmpClient, QmpError, QmpServer};
///
/// struct Hello;
/// impl Handler for Hello {
///     fn commands(&self) -> Vec<String> { vec!["hello".into()] }
///     fn execute(&self, _name: &str, _args: Map<String, Value>) -> Result<Value, QmpError> {
///         Ok("world".into())
///     }
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let server = QmpServer::bind("/tmp/vmstream.qmp", Arc::new(Hello))?;
/// let mut client = QmpClient::connect(server.path())?;
/// client.negotiate()?;
/// assert_eq!(client.execute("hello", None)?, "world");
/// server.events().emit("READY", None);
/// # Ok(()) }
/// ```
pub struct QmpServer {
    path: PathBuf,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
    /// Device and inode of the socket file we made, so we remove only that.
    socket_id: Option<(u64, u64)>,
    stopped: bool,
}

impl std::fmt::Debug for QmpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QmpServer")
            .field("path", &self.path)
            .field("clients", &self.client_count())
            .finish_non_exhaustive()
    }
}

impl QmpServer {
    /// Listens on `path` with the default [`ServerConfig`].
    pub fn bind(path: impl AsRef<Path>, handler: Arc<dyn Handler>) -> io::Result<QmpServer> {
        QmpServer::bind_with(path, handler, ServerConfig::default())
    }

    /// Listens on `path`. A socket file left there by a process that is gone
    /// is replaced; anything else at `path` (a live server, a regular file) is
    /// an error.
    pub fn bind_with(
        path: impl AsRef<Path>,
        handler: Arc<dyn Handler>,
        config: ServerConfig,
    ) -> io::Result<QmpServer> {
        let path = path.as_ref().to_path_buf();
        let listener = match UnixListener::bind(&path) {
            Ok(l) => l,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && is_stale_socket(&path) => {
                fs::remove_file(&path)?;
                UnixListener::bind(&path)?
            }
            Err(e) => return Err(e),
        };
        let socket_id = fs::symlink_metadata(&path).ok().map(|m| (m.dev(), m.ino()));
        let shared = Arc::new(Shared {
            handler,
            config,
            stopping: AtomicBool::new(false),
            clients: Mutex::new(Clients::default()),
            threads: Mutex::new(0),
            threads_done: Condvar::new(),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name("qmp-accept".into())
                .spawn(move || accept_loop(&shared, &listener))?
        };
        Ok(QmpServer {
            path,
            shared,
            acceptor: Some(acceptor),
            socket_id,
            stopped: false,
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A handle for sending events to the clients.
    pub fn events(&self) -> Events {
        Events {
            shared: Arc::downgrade(&self.shared),
        }
    }

    /// Clients connected now.
    pub fn client_count(&self) -> usize {
        lock(&self.shared.clients).live.len()
    }

    /// Stops accepting and reading requests, lets commands still running
    /// finish and queued responses and events go out (for at most a second),
    /// disconnects every client, waits for their threads (up to
    /// [`ServerConfig::shutdown_timeout`] in all) and removes the socket file.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let shared = &self.shared;
        shared.stopping.store(true, Ordering::SeqCst);
        // Wake the acceptor with a connection of our own, if the path is
        // still our socket; otherwise leave it blocked (it holds nothing).
        let ours = self.is_our_socket();
        let woke = ours && UnixStream::connect(&self.path).is_ok();
        if let Some(acceptor) = self.acceptor.take() {
            if woke {
                let _ = acceptor.join();
            }
        }
        // Read no more requests, but let a command still running finish and
        // what is queued go out: the response to the `quit` that made the
        // server stop, among others. Clients that do not read their
        // responses are cut off after a grace period.
        for client in lock(&shared.clients).live.values() {
            let _ = client.stream.shutdown(Shutdown::Read);
        }
        let start = Instant::now();
        let deadline = start + shared.config.shutdown_timeout;
        wait_for_threads(shared, deadline.min(start + SHUTDOWN_GRACE));
        {
            let mut clients = lock(&shared.clients);
            for client in clients.live.values() {
                client.outbox.close();
                let _ = client.stream.shutdown(Shutdown::Both);
            }
            clients.live.clear();
        }
        wait_for_threads(shared, deadline);
        if ours {
            let _ = fs::remove_file(&self.path);
        }
    }

    fn is_our_socket(&self) -> bool {
        let now = fs::symlink_metadata(&self.path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        now.is_some() && now == self.socket_id
    }
}

/// How long [`QmpServer::shutdown`] lets clients take what was queued for
/// them before cutting them off (at most [`ServerConfig::shutdown_timeout`]).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Waits until no client thread is left, or `deadline`.
fn wait_for_threads(shared: &Shared, deadline: Instant) {
    let mut threads = lock(&shared.threads);
    while *threads > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        threads = match shared.threads_done.wait_timeout(threads, left) {
            Ok((guard, _)) => guard,
            Err(poisoned) => poisoned.into_inner().0,
        };
    }
}

impl Drop for QmpServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sends events to every client that has completed capabilities negotiation.
/// Cheap to clone; does nothing once the server is gone.
#[derive(Debug, Clone)]
pub struct Events {
    shared: Weak<Shared>,
}

impl Events {
    /// Sends event `name` with `data`, timestamped now, to every negotiated
    /// client; returns how many it was queued for. A client whose queue is
    /// full has stopped reading and is disconnected.
    pub fn emit(&self, name: &str, data: Option<Map<String, Value>>) -> usize {
        let Some(shared) = self.shared.upgrade() else {
            return 0;
        };
        let line: Arc<str> = Arc::from(to_line(
            &Event::new(name, data, SystemTime::now()).to_json(),
        ));
        let mut clients = lock(&shared.clients);
        let mut sent = 0;
        let mut stalled = Vec::new();
        for (&id, client) in clients.live.iter().filter(|(_, c)| c.negotiated) {
            match client.outbox.try_push(Arc::clone(&line)) {
                Push::Queued => sent += 1,
                Push::Full => stalled.push(id),
                Push::Closed => {}
            }
        }
        for id in stalled {
            if let Some(client) = clients.live.remove(&id) {
                client.outbox.close();
                let _ = client.stream.shutdown(Shutdown::Both);
            }
        }
        sent
    }

    /// A `MIGRATION` event: `{"status": STATUS}`. QEMU sends these only while
    /// the `events` capability is on; that choice is the caller's.
    pub fn emit_migration(&self, status: MigrationStatus) -> usize {
        self.emit("MIGRATION", Some(migration_event_data(status)))
    }

    /// A `MIGRATION_PASS` event: `{"pass": N}`, at the start of each pass
    /// over dirty memory (the first is 1).
    pub fn emit_migration_pass(&self, pass: u64) -> usize {
        let mut data = Map::new();
        data.insert("pass".into(), pass.into());
        self.emit("MIGRATION_PASS", Some(data))
    }
}

struct Shared {
    handler: Arc<dyn Handler>,
    config: ServerConfig,
    stopping: AtomicBool,
    clients: Mutex<Clients>,
    /// Client threads alive.
    threads: Mutex<usize>,
    threads_done: Condvar,
}

#[derive(Default)]
struct Clients {
    next_id: u64,
    live: BTreeMap<u64, Client>,
}

struct Client {
    /// A handle on the connection, to shut it down from outside.
    stream: UnixStream,
    outbox: Arc<Outbox>,
    negotiated: bool,
}

/// What one client is waiting to be sent, bounded in bytes.
struct Outbox {
    state: Mutex<OutState>,
    /// Signalled when lines are added or the outbox is finished or closed.
    ready: Condvar,
    /// Signalled when room is made or the outbox is closed.
    room: Condvar,
    max_bytes: usize,
}

#[derive(Default)]
struct OutState {
    lines: VecDeque<Arc<str>>,
    bytes: usize,
    /// The reader has ended: send what is queued, then stop.
    finished: bool,
    /// The connection is going away: drop everything now.
    closed: bool,
}

enum Push {
    Queued,
    Full,
    Closed,
}

impl Outbox {
    fn new(max_bytes: usize) -> Outbox {
        Outbox {
            state: Mutex::new(OutState::default()),
            ready: Condvar::new(),
            room: Condvar::new(),
            max_bytes,
        }
    }

    fn fits(&self, st: &OutState, len: usize) -> bool {
        st.bytes == 0 || st.bytes.saturating_add(len) <= self.max_bytes
    }

    /// Queues `line` if there is room now (events).
    fn try_push(&self, line: Arc<str>) -> Push {
        let mut st = lock(&self.state);
        if st.closed || st.finished {
            return Push::Closed;
        }
        if !self.fits(&st, line.len()) {
            return Push::Full;
        }
        st.bytes = st.bytes.saturating_add(line.len());
        st.lines.push_back(line);
        self.ready.notify_one();
        Push::Queued
    }

    /// Queues `line`, waiting for room (responses); false if closed.
    fn push(&self, line: Arc<str>) -> bool {
        let mut st = lock(&self.state);
        while !st.closed && !self.fits(&st, line.len()) {
            st = self.room.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        if st.closed {
            return false;
        }
        st.bytes = st.bytes.saturating_add(line.len());
        st.lines.push_back(line);
        self.ready.notify_one();
        true
    }

    /// The next line to write; `None` once finished and drained, or closed.
    fn pop(&self) -> Option<Arc<str>> {
        let mut st = lock(&self.state);
        loop {
            if st.closed {
                return None;
            }
            if let Some(line) = st.lines.pop_front() {
                st.bytes = st.bytes.saturating_sub(line.len());
                if st.lines.is_empty() && st.lines.capacity() > 1024 {
                    // Give back what a burst made the queue grow to.
                    st.lines.shrink_to(64);
                }
                self.room.notify_all();
                return Some(line);
            }
            if st.finished {
                return None;
            }
            st = self.ready.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn finish(&self) {
        lock(&self.state).finished = true;
        self.ready.notify_all();
    }

    fn close(&self) {
        let mut st = lock(&self.state);
        st.closed = true;
        st.lines.clear();
        st.bytes = 0;
        self.ready.notify_all();
        self.room.notify_all();
    }
}

/// Counts a client thread from before it is spawned until it ends, panics
/// included.
struct ThreadGuard(Arc<Shared>);

impl ThreadGuard {
    fn new(shared: &Arc<Shared>) -> ThreadGuard {
        *lock(&shared.threads) += 1;
        ThreadGuard(Arc::clone(shared))
    }
}

impl Drop for ThreadGuard {
    fn drop(&mut self) {
        let mut n = lock(&self.0.threads);
        *n = n.saturating_sub(1);
        self.0.threads_done.notify_all();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn is_stale_socket(path: &Path) -> bool {
    let is_socket = fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
    is_socket
        && matches!(UnixStream::connect(path), Err(e) if e.kind() == io::ErrorKind::ConnectionRefused)
}

fn accept_loop(shared: &Arc<Shared>, listener: &UnixListener) {
    loop {
        let conn = listener.accept();
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        match conn {
            Ok((stream, _)) => admit(shared, stream),
            // Out of descriptors or similar: let it pass rather than spin.
            Err(_) => thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Starts serving a new connection, or refuses it when the server is full.
fn admit(shared: &Arc<Shared>, stream: UnixStream) {
    let mut clients = lock(&shared.clients);
    if shared.stopping.load(Ordering::SeqCst) {
        return;
    }
    if clients.live.len() >= shared.config.max_clients {
        drop(clients);
        refuse(stream, shared.config.max_clients);
        return;
    }
    let (Ok(handle), Ok(writer)) = (stream.try_clone(), stream.try_clone()) else {
        return;
    };
    let outbox = Arc::new(Outbox::new(shared.config.max_queued));
    let id = clients.next_id;
    clients.next_id = clients.next_id.wrapping_add(1);
    clients.live.insert(
        id,
        Client {
            stream: handle,
            outbox: Arc::clone(&outbox),
            negotiated: false,
        },
    );
    drop(clients);

    let guard = ThreadGuard::new(shared);
    let writer_shared = Arc::clone(shared);
    let writer_outbox = Arc::clone(&outbox);
    let spawned_writer = thread::Builder::new()
        .name(format!("qmp-write-{id}"))
        .spawn(move || {
            let _guard = guard;
            write_loop(&writer_shared, id, writer, &writer_outbox);
        });
    let guard = ThreadGuard::new(shared);
    let reader_shared = Arc::clone(shared);
    let spawned_reader = thread::Builder::new()
        .name(format!("qmp-read-{id}"))
        .spawn(move || {
            let _guard = guard;
            read_loop(&reader_shared, id, stream, &outbox);
        });
    if spawned_writer.is_err() || spawned_reader.is_err() {
        if let Some(client) = lock(&shared.clients).live.remove(&id) {
            client.outbox.close();
            let _ = client.stream.shutdown(Shutdown::Both);
        }
    }
}

/// Tells a client over the limit why it is closed.
fn refuse(mut stream: UnixStream, max: usize) {
    let err = QmpError::generic(format!("Too many QMP clients (at most {max})"));
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    let _ = stream.write_all(to_line(&error_response(&err, None)).as_bytes());
    let _ = stream.shutdown(Shutdown::Both);
}

/// Reads requests and queues their responses until the client closes its
/// side or the connection is shut down.
fn read_loop(shared: &Arc<Shared>, id: u64, stream: UnixStream, out: &Outbox) {
    let mut session = Session::new(Arc::clone(&shared.handler));
    let mut splitter = Splitter::new(shared.config.limits);
    let mut buf = vec![0u8; 4096];
    if out.push(Arc::from(to_line(&greeting()))) {
        'conn: loop {
            let n = match read_with_fds(&stream, &mut buf) {
                Ok((0, _)) => break,
                Ok((n, fds)) => {
                    if !fds.is_empty() {
                        session.receive_fds(fds);
                    }
                    n
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            for msg in splitter.messages(buf.get(..n).unwrap_or_default()) {
                let was_negotiated = session.is_negotiated();
                let line: Arc<str> = Arc::from(to_line(&session.handle(msg)));
                let sent = if !was_negotiated && session.is_negotiated() {
                    negotiated(shared, id, out, line)
                } else {
                    out.push(line)
                };
                if !sent {
                    break 'conn;
                }
            }
        }
    }
    // No more events for this client; the writer sends what is queued, then
    // closes the connection.
    out.finish();
}

/// Reads bytes, and the file descriptors sent with them (SCM_RIGHTS, as for
/// QEMU's `getfd`); descriptors beyond [`MAX_PENDING_FDS`] in one message
/// are closed by the kernel.
fn read_with_fds(stream: &UnixStream, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_PENDING_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = recvmsg(
        stream,
        &mut [io::IoSliceMut::new(buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = m {
            fds.extend(received);
        }
    }
    Ok((msg.bytes, fds))
}

/// Queues the response to a successful `qmp_capabilities` and turns events on
/// for the client, under the client table's lock so that no event overtakes the
/// response and every event emitted after the client has seen it reaches it.
/// (When the outbox is full, which only a client flooding us before
/// negotiating achieves, the response is queued first and events turned on
/// after.)
fn negotiated(shared: &Shared, id: u64, out: &Outbox, line: Arc<str>) -> bool {
    let mut clients = lock(&shared.clients);
    match out.try_push(Arc::clone(&line)) {
        Push::Queued => {}
        Push::Closed => return false,
        Push::Full => {
            drop(clients);
            if !out.push(line) {
                return false;
            }
            clients = lock(&shared.clients);
        }
    }
    match clients.live.get_mut(&id) {
        Some(client) => {
            client.negotiated = true;
            true
        }
        None => false,
    }
}

/// Writes queued lines until the reader has ended and the outbox is drained,
/// or writing fails, or the outbox is closed; then closes the connection.
fn write_loop(shared: &Shared, id: u64, mut stream: UnixStream, out: &Outbox) {
    while let Some(line) = out.pop() {
        if stream.write_all(line.as_bytes()).is_err() {
            break;
        }
    }
    out.close();
    let _ = stream.shutdown(Shutdown::Both);
    lock(&shared.clients).live.remove(&id);
}

/// One message as sent: JSON in ASCII (other characters as `\uXXXX`
/// escapes, which only strings can hold) and `\r\n`.
pub(crate) fn to_line(v: &Value) -> String {
    let text = v.to_string();
    let mut line = String::with_capacity(text.len() + 2);
    for c in text.chars() {
        if c.is_ascii() {
            line.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                line.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    line.push_str("\r\n");
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lines_are_ascii_and_read_back() {
        let v = json!({"return": "caf\u{e9} \u{1f600}"});
        let line = to_line(&v);
        assert!(line.is_ascii());
        assert!(line.ends_with("\r\n"));
        assert!(line.contains("\\u00e9") && line.contains("\\ud83d\\ude00"));
        assert_eq!(serde_json::from_str::<Value>(&line).unwrap(), v);
    }
}
