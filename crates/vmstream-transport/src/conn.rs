//! Connections, listeners and one-way channels over every transport.
//!
//! A [`Connection`] is `Read + Write + Send` over a TCP or Unix socket (either
//! possibly in TLS), a registered file descriptor, a child's standard input or
//! output, or a file at an offset. Its [`ShutdownHandle`] unblocks a read or
//! write blocked in another thread, which is how a migration is cancelled.
//!
//! | Transport | Opened by | Directions | TLS | Timeouts |
//! | --- | --- | --- | --- | --- |
//! | `socket` `inet`, `unix` | [`connect`], [`Listener::bind`] + [`Listener::accept`] | both | yes | yes |
//! | `socket` `fd` (a socket) | the same | both | yes | yes |
//! | `socket` `fd` (a pipe or file) | [`connect`] | as opened | no | no |
//! | `exec` | [`open_source`] (writes the child's stdin), [`open_destination`] (reads its stdout) | one | no | no |
//! | `file` | [`open_source`] (writes from the offset), [`open_destination`] (reads from it) | one | no | no |
//!
//! One-way transports carry the main channel only: data channels need
//! sockets.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs,
};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rustls::{ClientConnection, ServerConnection, StreamOwned};

use crate::address::{InetAddress, MigrationAddress, SocketAddress, UnixAddress};
use crate::error::{Error, ErrorKind, Result};
use crate::tls::{TlsClient, TlsServer};

/// How long a TLS handshake may take in [`connect`] and [`Listener::accept`].
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Connections a listening socket may queue.
const BACKLOG: i32 = 128;

/// A byte channel to the peer: `Read + Write + Send`. Reads and writes are
/// passed straight through; nothing is interpreted.
pub struct Connection {
    io: Io,
    mode: Mode,
    peer: String,
    shutdown: ShutdownHandle,
}

/// Which ways a [`Connection`] carries bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Both,
    ReadOnly,
    WriteOnly,
}

enum Io {
    Plain(Socket),
    TlsClient(Box<StreamOwned<ClientConnection, Socket>>),
    TlsServer(Box<StreamOwned<ServerConnection, Socket>>),
    File(File),
    ChildIn(ChildStdin, ChildProc),
    ChildOut(ChildStdout, ChildProc),
    Closed,
}

impl Connection {
    /// Who is at the other end, for messages: `tcp:127.0.0.1:4444`,
    /// `unix:/run/mig.sock`, `exec:cat (pid 42)`, `file:/tmp/x,offset=4096`.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Whether the bytes travel in TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self.io, Io::TlsClient(_) | Io::TlsServer(_))
    }

    /// A handle that shuts this connection down from any thread: blocked
    /// and later reads and writes fail with `ConnectionAborted` (a child
    /// process is killed). A blocked read on a pipe or file named by an `fd`
    /// address is not woken; later calls fail.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Sets read and write timeouts (`None`: block for ever); a read or
    /// write that times out fails with `WouldBlock` or `TimedOut`. Returns
    /// whether the transport has timeouts (sockets do; pipes and files do
    /// not, and are left unchanged).
    pub fn set_timeouts(&self, read: Option<Duration>, write: Option<Duration>) -> Result<bool> {
        let sock = match &self.io {
            Io::Plain(s) => s,
            Io::TlsClient(s) => &s.sock,
            Io::TlsServer(s) => &s.sock,
            _ => return Ok(false),
        };
        sock.set_timeouts(read, write)
            .map_err(|e| Error::io(format!("{}: set timeouts", self.peer), e))?;
        Ok(true)
    }

    /// Ends this side's writing in order, keeping the connection open for
    /// reading: flushes, sends TLS `close_notify` and half-closes a socket,
    /// so the peer reads the end of the stream. Other transports are left as
    /// they are (see [`Connection::finish`]).
    pub fn close_write(&mut self) -> Result<()> {
        let peer = self.peer.clone();
        let flush_err = |e| Error::io(format!("{peer}: close"), e);
        match &mut self.io {
            Io::Plain(s) => {
                s.flush().map_err(flush_err)?;
                s.half_close().map_err(flush_err)
            }
            Io::TlsClient(s) => {
                s.conn.send_close_notify();
                s.flush().map_err(flush_err)?;
                s.sock.half_close().map_err(flush_err)
            }
            Io::TlsServer(s) => {
                s.conn.send_close_notify();
                s.flush().map_err(flush_err)?;
                s.sock.half_close().map_err(flush_err)
            }
            _ => Ok(()),
        }
    }

    /// Ends the connection in order: flushes, sends TLS `close_notify`,
    /// half-closes a socket so the peer reads the end of the stream, closes
    /// a child's input and waits for it to exit (a failure status is an
    /// error). Dropping a connection instead just closes it, and kills a
    /// child that is still running.
    pub fn finish(mut self) -> Result<()> {
        let peer = std::mem::take(&mut self.peer);
        let flush_err = |e| Error::io(format!("{peer}: finish"), e);
        match std::mem::replace(&mut self.io, Io::Closed) {
            Io::Plain(mut s) => {
                s.flush().map_err(flush_err)?;
                s.half_close().map_err(flush_err)
            }
            Io::TlsClient(mut s) => {
                s.conn.send_close_notify();
                s.flush().map_err(flush_err)?;
                s.sock.half_close().map_err(flush_err)
            }
            Io::TlsServer(mut s) => {
                s.conn.send_close_notify();
                s.flush().map_err(flush_err)?;
                s.sock.half_close().map_err(flush_err)
            }
            Io::File(mut f) => f.flush().map_err(flush_err),
            Io::ChildIn(mut stdin, mut child) => {
                let flushed = stdin.flush();
                drop(stdin);
                child.wait(&peer)?;
                flushed.map_err(flush_err)
            }
            Io::ChildOut(stdout, mut child) => {
                drop(stdout);
                child.wait(&peer)
            }
            Io::Closed => Ok(()),
        }
    }

    /// A second handle on a plain socket, for reading in one thread while
    /// another writes (QEMU's return path travels back on its migration
    /// socket). Both share one [`ShutdownHandle`]: dropping one handle does
    /// not close the socket, shutting it down ends both. TLS, pipes, files
    /// and children cannot be cloned.
    pub fn try_clone(&self) -> Result<Connection> {
        let Io::Plain(sock) = &self.io else {
            return Err(Error::unsupported(format!(
                "{}: only a plain socket can be read and written from two threads",
                self.peer
            )));
        };
        let sock = sock
            .try_clone()
            .map_err(|e| Error::io(format!("{}: clone socket", self.peer), e))?;
        Ok(Connection {
            io: Io::Plain(sock),
            mode: self.mode,
            peer: self.peer.clone(),
            shutdown: self.shutdown.clone(),
        })
    }

    fn new(io: Io, mode: Mode, peer: String, target: Target) -> Connection {
        Connection {
            io,
            mode,
            peer,
            shutdown: ShutdownHandle::new(target),
        }
    }

    /// Wraps an accepted socket, running the server side of TLS if asked.
    pub(crate) fn accepted(
        sock: Socket,
        peer: String,
        tls: Option<&TlsServer>,
        handshake_timeout: Duration,
    ) -> Result<Connection> {
        let target = Target::Socket(
            sock.try_clone()
                .map_err(|e| Error::io(format!("{peer}: clone socket"), e))?,
        );
        let io = match tls {
            None => Io::Plain(sock),
            Some(tls) => {
                let conn = tls.connection()?;
                Io::TlsServer(Box::new(handshake(conn, sock, &peer, handshake_timeout)?))
            }
        };
        Ok(Connection::new(io, Mode::Both, peer, target))
    }

    fn connected(
        sock: Socket,
        peer: String,
        tls: Option<(&TlsClient, Option<&str>, &str)>,
    ) -> Result<Connection> {
        let target = Target::Socket(
            sock.try_clone()
                .map_err(|e| Error::io(format!("{peer}: clone socket"), e))?,
        );
        let io = match tls {
            None => Io::Plain(sock),
            Some((tls, host, what)) => {
                let conn = tls.connection(host, what)?;
                Io::TlsClient(Box::new(handshake(conn, sock, &peer, HANDSHAKE_TIMEOUT)?))
            }
        };
        Ok(Connection::new(io, Mode::Both, peer, target))
    }

    fn aborted() -> io::Error {
        io::Error::new(io::ErrorKind::ConnectionAborted, "channel shut down")
    }

    fn wrong_way(&self, what: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::Unsupported,
            format!("{}: this channel is {what}", self.peer),
        )
    }
}

impl Read for Connection {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.shutdown.is_shut_down() {
            return Err(Connection::aborted());
        }
        if self.mode == Mode::WriteOnly {
            return Err(self.wrong_way("write-only"));
        }
        let r = match &mut self.io {
            Io::Plain(s) => s.read(buf),
            Io::TlsClient(s) => s.read(buf),
            Io::TlsServer(s) => s.read(buf),
            Io::File(f) => f.read(buf),
            Io::ChildOut(out, _) => out.read(buf),
            Io::ChildIn(..) | Io::Closed => Err(Connection::aborted()),
        };
        // A shutdown from another thread shows up here as an end of stream
        // or an error: report it as what it is.
        match r {
            Ok(0) if !buf.is_empty() && self.shutdown.is_shut_down() => Err(Connection::aborted()),
            Err(_) if self.shutdown.is_shut_down() => Err(Connection::aborted()),
            r => r,
        }
    }
}

impl Write for Connection {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.shutdown.is_shut_down() {
            return Err(Connection::aborted());
        }
        if self.mode == Mode::ReadOnly {
            return Err(self.wrong_way("read-only"));
        }
        let r = match &mut self.io {
            Io::Plain(s) => s.write(buf),
            Io::TlsClient(s) => s.write(buf),
            Io::TlsServer(s) => s.write(buf),
            Io::File(f) => f.write(buf),
            Io::ChildIn(input, _) => input.write(buf),
            Io::ChildOut(..) | Io::Closed => Err(Connection::aborted()),
        };
        match r {
            Err(_) if self.shutdown.is_shut_down() => Err(Connection::aborted()),
            r => r,
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.shutdown.is_shut_down() {
            return Err(Connection::aborted());
        }
        match &mut self.io {
            Io::Plain(s) => s.flush(),
            Io::TlsClient(s) => s.flush(),
            Io::TlsServer(s) => s.flush(),
            Io::File(f) => f.flush(),
            Io::ChildIn(input, _) => input.flush(),
            Io::ChildOut(..) | Io::Closed => Ok(()),
        }
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.peer)
            .field("tls", &self.is_tls())
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// Shuts a [`Connection`] or [`Listener`] down from any thread. Cheap to
/// clone; shutting down twice is harmless.
#[derive(Clone)]
pub struct ShutdownHandle {
    state: Arc<ShutdownState>,
}

struct ShutdownState {
    done: AtomicBool,
    target: Target,
}

enum Target {
    Socket(Socket),
    Tcp(TcpListener),
    Unix(UnixListener),
    Child(Arc<Mutex<Child>>),
    Nothing,
}

impl ShutdownHandle {
    fn new(target: Target) -> ShutdownHandle {
        ShutdownHandle {
            state: Arc::new(ShutdownState {
                done: AtomicBool::new(false),
                target,
            }),
        }
    }

    /// A handle for an accepted socket before it becomes a [`Connection`].
    pub(crate) fn for_socket(sock: &Socket) -> Result<ShutdownHandle> {
        let clone = sock
            .try_clone()
            .map_err(|e| Error::io("clone an accepted socket", e))?;
        Ok(ShutdownHandle::new(Target::Socket(clone)))
    }

    /// Shuts down: wakes blocked reads, writes and accepts, and makes every
    /// later one fail.
    pub fn shutdown(&self) {
        self.state.done.store(true, Ordering::SeqCst);
        // Errors are ignored: the socket may already be closed by the peer,
        // the child may already have exited.
        match &self.state.target {
            Target::Socket(s) => {
                let _ = s.shutdown(Shutdown::Both);
            }
            Target::Tcp(l) => {
                let _ = socket2::SockRef::from(l).shutdown(Shutdown::Both);
            }
            Target::Unix(l) => {
                let _ = socket2::SockRef::from(l).shutdown(Shutdown::Both);
            }
            Target::Child(child) => {
                let _ = lock(child).kill();
            }
            Target::Nothing => {}
        }
    }

    /// Whether [`shutdown`](Self::shutdown) was called.
    pub fn is_shut_down(&self) -> bool {
        self.state.done.load(Ordering::SeqCst)
    }
}

impl fmt::Debug for ShutdownHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShutdownHandle")
            .field("shut_down", &self.is_shut_down())
            .finish_non_exhaustive()
    }
}

/// A listening socket: TCP, Unix, or a registered listening descriptor.
pub struct Listener {
    socket: ListenSocket,
    local: MigrationAddress,
    name: String,
    inet: Option<InetAddress>,
    unlink: Option<(PathBuf, u64, u64)>,
    accepted: AtomicU64,
    shutdown: ShutdownHandle,
}

enum ListenSocket {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    /// Listens on a socket address. TCP port 0 (or a `to` range) picks the
    /// port: [`local_address`](Self::local_address) tells which. A Unix
    /// socket file left by an earlier listener is replaced (any other file
    /// at the path is an error) and removed again when the listener is
    /// dropped. `exec` and `file` are refused: see [`open_destination`].
    pub fn bind(addr: &MigrationAddress) -> Result<Listener> {
        let sock = match addr {
            MigrationAddress::Socket(s) => s,
            other => return Err(one_way(other, "open_destination")),
        };
        let what = addr.to_string();
        let (socket, local, inet, unlink) = match sock {
            SocketAddress::Inet(a) => {
                let l = bind_tcp(a)?;
                let bound = l
                    .local_addr()
                    .map_err(|e| Error::io(format!("{what}: local address"), e))?;
                let mut local = a.clone();
                if local.host.is_empty() {
                    local.host = bound.ip().to_string();
                }
                local.port = bound.port();
                local.to = None;
                let local = MigrationAddress::Socket(SocketAddress::Inet(local));
                (ListenSocket::Tcp(l), local, Some(a.clone()), None)
            }
            SocketAddress::Unix(u) => {
                let (l, unlink) = bind_unix(u)?;
                (ListenSocket::Unix(l), addr.clone(), None, unlink)
            }
            SocketAddress::Fd(d) => {
                let fd = take_fd(&d.str)?;
                let s = socket2::Socket::from(fd);
                let listening = s.is_listener().unwrap_or(false);
                if !listening {
                    return Err(Error::usage(format!(
                        "fd:{}: not a listening socket",
                        d.str
                    )));
                }
                let domain = s
                    .domain()
                    .map_err(|e| Error::io(format!("fd:{}: socket domain", d.str), e))?;
                if domain == socket2::Domain::UNIX {
                    let l = UnixListener::from(OwnedFd::from(s));
                    (ListenSocket::Unix(l), addr.clone(), None, None)
                } else {
                    let l = TcpListener::from(OwnedFd::from(s));
                    (ListenSocket::Tcp(l), addr.clone(), None, None)
                }
            }
        };
        let target = match &socket {
            ListenSocket::Tcp(l) => l.try_clone().map(Target::Tcp),
            ListenSocket::Unix(l) => l.try_clone().map(Target::Unix),
        }
        .map_err(|e| Error::io(format!("{what}: clone socket"), e))?;
        Ok(Listener {
            socket,
            name: local.to_string(),
            local,
            inet,
            unlink,
            accepted: AtomicU64::new(0),
            shutdown: ShutdownHandle::new(target),
        })
    }

    /// The address peers connect to: for TCP, with the port actually bound.
    pub fn local_address(&self) -> &MigrationAddress {
        &self.local
    }

    /// Waits for a connection and, given `tls`, runs the server side of a
    /// mutually authenticated handshake (bounded by [`HANDSHAKE_TIMEOUT`]).
    pub fn accept(&self, tls: Option<&TlsServer>) -> Result<Connection> {
        let (sock, peer) = self.accept_socket()?;
        Connection::accepted(sock, peer, tls, HANDSHAKE_TIMEOUT)
    }

    /// A handle whose `shutdown` wakes a blocked [`accept`](Self::accept)
    /// and makes later ones fail with [`ErrorKind::Cancelled`].
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Accepts one socket, blocking or not as the listener is set. The
    /// socket itself is always blocking.
    pub(crate) fn accept_socket(&self) -> Result<(Socket, String)> {
        if self.shutdown.is_shut_down() {
            return Err(self.cancelled());
        }
        let r = match &self.socket {
            ListenSocket::Tcp(l) => l.accept().and_then(|(s, from)| {
                s.set_nonblocking(false)?;
                s.set_nodelay(true)?;
                if let Some(a) = &self.inet {
                    keep_alive(&s, a)?;
                }
                Ok((Socket::Tcp(s), format!("tcp:{from}")))
            }),
            ListenSocket::Unix(l) => l.accept().and_then(|(s, _)| {
                s.set_nonblocking(false)?;
                let n = self
                    .accepted
                    .fetch_add(1, Ordering::Relaxed)
                    .saturating_add(1);
                Ok((Socket::Unix(s), format!("{} (connection {n})", self.name)))
            }),
        };
        match r {
            Err(_) if self.shutdown.is_shut_down() => Err(self.cancelled()),
            Err(e) => Err(Error::io(format!("{}: accept", self.name), e)),
            Ok(r) => Ok(r),
        }
    }

    pub(crate) fn set_nonblocking(&self, on: bool) -> Result<()> {
        match &self.socket {
            ListenSocket::Tcp(l) => l.set_nonblocking(on),
            ListenSocket::Unix(l) => l.set_nonblocking(on),
        }
        .map_err(|e| Error::io(format!("{}: set non-blocking", self.name), e))
    }

    pub(crate) fn is_shut_down(&self) -> bool {
        self.shutdown.is_shut_down()
    }

    pub(crate) fn cancelled(&self) -> Error {
        Error::new(
            ErrorKind::Cancelled,
            format!("{}: listener shut down", self.name),
        )
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Remove the socket file only if it is still the one bound here.
        if let Some((path, dev, ino)) = &self.unlink {
            if let Ok(m) = std::fs::symlink_metadata(path) {
                if m.file_type().is_socket() && m.dev() == *dev && m.ino() == *ino {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
    }
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("local", &self.name)
            .finish_non_exhaustive()
    }
}

/// Connects to a socket address and, given `tls`, runs the client side of
/// a mutually authenticated handshake. The server certificate is checked
/// against the client's host name override, or else the TCP host; Unix
/// sockets and descriptors need the override. `exec` and `file` are
/// refused: see [`open_source`].
pub fn connect(addr: &MigrationAddress, tls: Option<&TlsClient>) -> Result<Connection> {
    let sock = match addr {
        MigrationAddress::Socket(s) => s,
        other => return Err(one_way(other, "open_source")),
    };
    match sock {
        SocketAddress::Inet(a) => {
            let s = connect_tcp(a)?;
            let peer = match s.peer_addr() {
                Ok(p) => format!("tcp:{p}"),
                Err(_) => addr.to_string(),
            };
            Connection::connected(
                Socket::Tcp(s),
                peer,
                tls.map(|t| (t, Some(a.host.as_str()), "TCP")),
            )
        }
        SocketAddress::Unix(u) => {
            let s = connect_unix(u)?;
            Connection::connected(
                Socket::Unix(s),
                addr.to_string(),
                tls.map(|t| (t, None, "a Unix socket")),
            )
        }
        SocketAddress::Fd(d) => {
            let peer = addr.to_string();
            let fd = take_fd(&d.str)?;
            let s = socket2::Socket::from(fd);
            match s.domain() {
                Ok(domain) => {
                    let fd = OwnedFd::from(s);
                    let sock = if domain == socket2::Domain::UNIX {
                        Socket::Unix(UnixStream::from(fd))
                    } else {
                        Socket::Tcp(TcpStream::from(fd))
                    };
                    Connection::connected(sock, peer, tls.map(|t| (t, None, "a file descriptor")))
                }
                Err(_) => {
                    // Not a socket: a pipe or a file, used as it was opened.
                    if tls.is_some() {
                        return Err(Error::usage(format!(
                            "{peer}: TLS needs a socket; this descriptor is not one"
                        )));
                    }
                    let f = File::from(OwnedFd::from(s));
                    Ok(Connection::new(
                        Io::File(f),
                        Mode::Both,
                        peer,
                        Target::Nothing,
                    ))
                }
            }
        }
    }
}

/// Opens the sending end of a one-way channel: runs an `exec` command with
/// its standard input as the channel (its standard output goes to
/// `/dev/null`, its standard error is inherited), or creates or opens a
/// `file`, cuts it at the offset and writes from there. Socket addresses
/// are refused: see [`connect`].
pub fn open_source(addr: &MigrationAddress) -> Result<Connection> {
    match addr {
        MigrationAddress::Exec(e) => {
            let mut cmd = command(&e.args)?;
            cmd.stdin(Stdio::piped()).stdout(Stdio::null());
            let (mut child, peer) = spawn(cmd, &e.args)?;
            let stdin = child
                .stdin
                .take()
                .ok_or_else(|| Error::new(ErrorKind::Io, format!("{peer}: no standard input")))?;
            let (proc, target) = ChildProc::new(child);
            Ok(Connection::new(
                Io::ChildIn(stdin, proc),
                Mode::WriteOnly,
                peer,
                target,
            ))
        }
        MigrationAddress::File(t) => {
            let peer = addr.to_string();
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&t.filename)
                .map_err(|e| Error::io(format!("{peer}: open"), e))?;
            // What was before the offset stays; what was after goes.
            f.set_len(t.offset)
                .map_err(|e| Error::io(format!("{peer}: cut at the offset"), e))?;
            f.seek(SeekFrom::Start(t.offset))
                .map_err(|e| Error::io(format!("{peer}: seek to the offset"), e))?;
            Ok(Connection::new(
                Io::File(f),
                Mode::WriteOnly,
                peer,
                Target::Nothing,
            ))
        }
        MigrationAddress::Socket(_) => Err(Error::usage(format!(
            "{addr}: a socket channel is opened with connect, not open_source"
        ))),
    }
}

/// Opens the receiving end of a one-way channel: runs an `exec` command
/// with its standard output as the channel (standard input from
/// `/dev/null`), or opens a `file` and reads from the offset. Socket
/// addresses are refused: see [`Listener`].
pub fn open_destination(addr: &MigrationAddress) -> Result<Connection> {
    match addr {
        MigrationAddress::Exec(e) => {
            let mut cmd = command(&e.args)?;
            cmd.stdin(Stdio::null()).stdout(Stdio::piped());
            let (mut child, peer) = spawn(cmd, &e.args)?;
            let stdout = child
                .stdout
                .take()
                .ok_or_else(|| Error::new(ErrorKind::Io, format!("{peer}: no standard output")))?;
            let (proc, target) = ChildProc::new(child);
            Ok(Connection::new(
                Io::ChildOut(stdout, proc),
                Mode::ReadOnly,
                peer,
                target,
            ))
        }
        MigrationAddress::File(t) => {
            let peer = addr.to_string();
            let mut f =
                File::open(&t.filename).map_err(|e| Error::io(format!("{peer}: open"), e))?;
            f.seek(SeekFrom::Start(t.offset))
                .map_err(|e| Error::io(format!("{peer}: seek to the offset"), e))?;
            Ok(Connection::new(
                Io::File(f),
                Mode::ReadOnly,
                peer,
                Target::Nothing,
            ))
        }
        MigrationAddress::Socket(_) => Err(Error::usage(format!(
            "{addr}: a socket channel is opened with Listener::bind, not open_destination"
        ))),
    }
}

/// Hands a file descriptor to this crate under `name`, for `fd` addresses
/// (QEMU's `getfd`). The first [`connect`] or [`Listener::bind`] that names
/// it takes it. A descriptor already registered under the name is closed.
///
/// This crate never turns a bare number into a descriptor: taking over one
/// that the process inherited is for the program's entry point to do.
pub fn register_fd(name: &str, fd: OwnedFd) -> Result<()> {
    if name.is_empty() {
        return Err(Error::address("fd name", "is empty"));
    }
    lock(&FDS).insert(name.to_string(), fd);
    Ok(())
}

/// Closes the descriptor registered under `name` (QEMU's `closefd`); false
/// when there is none.
pub fn unregister_fd(name: &str) -> bool {
    lock(&FDS).remove(name).is_some()
}

static FDS: Mutex<BTreeMap<String, OwnedFd>> = Mutex::new(BTreeMap::new());

fn take_fd(name: &str) -> Result<OwnedFd> {
    lock(&FDS).remove(name).ok_or_else(|| {
        Error::usage(format!(
            "fd:{name}: no file descriptor registered under that name (register_fd)"
        ))
    })
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data behind these locks stays consistent across a panic: a map
    // insert or remove, a child handle.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn one_way(addr: &MigrationAddress, instead: &str) -> Error {
    Error::usage(format!(
        "{addr}: a one-way channel carries only the main channel; open it with {instead}"
    ))
}

/// A connected stream socket.
pub(crate) enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Socket {
    fn try_clone(&self) -> io::Result<Socket> {
        Ok(match self {
            Socket::Tcp(s) => Socket::Tcp(s.try_clone()?),
            Socket::Unix(s) => Socket::Unix(s.try_clone()?),
        })
    }

    pub(crate) fn set_timeouts(
        &self,
        read: Option<Duration>,
        write: Option<Duration>,
    ) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => {
                s.set_read_timeout(read)?;
                s.set_write_timeout(write)
            }
            Socket::Unix(s) => {
                s.set_read_timeout(read)?;
                s.set_write_timeout(write)
            }
        }
    }

    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => s.shutdown(how),
            Socket::Unix(s) => s.shutdown(how),
        }
    }

    /// Half-closes: the peer reads the end of the stream. A peer that has
    /// already gone is not an error here.
    fn half_close(&self) -> io::Result<()> {
        match self.shutdown(Shutdown::Write) {
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            r => r,
        }
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.read(buf),
            Socket::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.write(buf),
            Socket::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => s.flush(),
            Socket::Unix(s) => s.flush(),
        }
    }
}

/// Runs a TLS handshake to completion within `timeout`.
fn handshake<C, S>(
    mut conn: C,
    mut sock: Socket,
    peer: &str,
    timeout: Duration,
) -> Result<StreamOwned<C, Socket>>
where
    C: std::ops::DerefMut<Target = rustls::ConnectionCommon<S>>,
    S: rustls::SideData,
{
    let what = format!("{peer}: TLS handshake");
    sock.set_timeouts(Some(timeout), Some(timeout))
        .map_err(|e| Error::io(what.clone(), e))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)
            .map_err(|e| Error::io(what.clone(), e))?;
    }
    // The server's last flight (and, in TLS 1.3, a refusal of the client's
    // certificate) may still be buffered: send it.
    while conn.wants_write() {
        conn.write_tls(&mut sock)
            .map_err(|e| Error::io(what.clone(), e))?;
    }
    sock.set_timeouts(None, None)
        .map_err(|e| Error::io(what, e))?;
    Ok(StreamOwned::new(conn, sock))
}

fn bind_tcp(a: &InetAddress) -> Result<TcpListener> {
    if a.mptcp == Some(true) {
        return Err(Error::unsupported(
            "addr.mptcp: multipath TCP is not supported",
        ));
    }
    let what = format!(
        "bind {}",
        MigrationAddress::Socket(SocketAddress::Inet(a.clone()))
    );
    let (v4, v6) = a.families();
    let ips: Vec<IpAddr> = if a.host.is_empty() {
        let mut any = Vec::new();
        if v6 {
            any.push(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        }
        if v4 {
            any.push(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        }
        any
    } else {
        resolve(a)?.into_iter().map(|s| s.ip()).collect()
    };
    let last = a.to.unwrap_or(a.port).max(a.port);
    let mut error = None;
    for port in a.port..=last {
        for ip in &ips {
            match listen_tcp(SocketAddr::new(*ip, port), v4, v6) {
                Ok(l) => return Ok(l),
                Err(e) => error = Some(e),
            }
        }
    }
    Err(match error {
        Some(e) => Error::io(what, e),
        None => Error::address(
            "addr.host",
            format_args!("`{}` has no address to bind", a.host),
        ),
    })
}

fn listen_tcp(at: SocketAddr, v4: bool, v6: bool) -> io::Result<TcpListener> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(at),
        socket2::Type::STREAM,
        None,
    )?;
    s.set_reuse_address(true)?;
    if at.is_ipv6() {
        // Only matters for the wildcard address: dual-stack unless IPv4 is off.
        s.set_only_v6(v6 && !v4)?;
    }
    s.bind(&at.into())?;
    s.listen(BACKLOG)?;
    Ok(s.into())
}

fn connect_tcp(a: &InetAddress) -> Result<TcpStream> {
    if a.mptcp == Some(true) {
        return Err(Error::unsupported(
            "addr.mptcp: multipath TCP is not supported",
        ));
    }
    if a.host.is_empty() {
        return Err(Error::address(
            "addr.host",
            "is empty: give the host to connect to",
        ));
    }
    let what = format!(
        "connect to {}",
        MigrationAddress::Socket(SocketAddress::Inet(a.clone()))
    );
    let mut error = None;
    for at in resolve(a)? {
        match TcpStream::connect(at) {
            Ok(s) => {
                let setup = s.set_nodelay(true).and_then(|()| keep_alive(&s, a));
                return setup.map(|()| s).map_err(|e| Error::io(what, e));
            }
            Err(e) => error = Some(e),
        }
    }
    Err(match error {
        Some(e) => Error::io(what, e),
        None => Error::address(
            "addr.host",
            format_args!("`{}` has no address to connect to", a.host),
        ),
    })
}

/// The host's addresses in the families the options allow.
fn resolve(a: &InetAddress) -> Result<Vec<SocketAddr>> {
    let (v4, v6) = a.families();
    let all: Vec<SocketAddr> = match a.ip() {
        Some(ip) => vec![SocketAddr::new(ip, a.port)],
        None if a.numeric == Some(true) => {
            return Err(Error::address(
                "addr.host",
                format_args!("`{}` is not a numeric address (numeric is set)", a.host),
            ))
        }
        None => (a.host.as_str(), a.port)
            .to_socket_addrs()
            .map_err(|e| {
                Error::with_source(
                    ErrorKind::Address,
                    format!("addr.host: cannot resolve `{}`", a.host),
                    e,
                )
            })?
            .collect(),
    };
    let wanted: Vec<SocketAddr> = all
        .into_iter()
        .filter(|s| if s.is_ipv4() { v4 } else { v6 })
        .collect();
    if wanted.is_empty() {
        return Err(Error::address(
            "addr.host",
            format_args!(
                "`{}` has no address in the families allowed (ipv4, ipv6)",
                a.host
            ),
        ));
    }
    Ok(wanted)
}

fn keep_alive(s: &TcpStream, a: &InetAddress) -> io::Result<()> {
    if a.keep_alive != Some(true) {
        return Ok(());
    }
    let mut ka = socket2::TcpKeepalive::new();
    if let Some(idle) = a.keep_alive_idle.filter(|&v| v > 0) {
        ka = ka.with_time(Duration::from_secs(idle.into()));
    }
    if let Some(interval) = a.keep_alive_interval.filter(|&v| v > 0) {
        ka = ka.with_interval(Duration::from_secs(interval.into()));
    }
    if let Some(count) = a.keep_alive_count.filter(|&v| v > 0) {
        ka = ka.with_retries(count);
    }
    let s = socket2::SockRef::from(s);
    s.set_keepalive(true)?;
    s.set_tcp_keepalive(&ka)
}

fn unix_address(u: &UnixAddress) -> Result<std::os::unix::net::SocketAddr> {
    if u.tight == Some(false) {
        return Err(Error::unsupported(
            "addr.tight: padded abstract socket names are not supported",
        ));
    }
    if u.r#abstract == Some(true) {
        abstract_address(&u.path)
    } else {
        std::os::unix::net::SocketAddr::from_pathname(&u.path)
            .map_err(|e| Error::with_source(ErrorKind::Address, "addr.path: not a socket path", e))
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn abstract_address(name: &str) -> Result<std::os::unix::net::SocketAddr> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).map_err(|e| {
        Error::with_source(
            ErrorKind::Address,
            "addr.path: not an abstract socket name",
            e,
        )
    })
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn abstract_address(_name: &str) -> Result<std::os::unix::net::SocketAddr> {
    Err(Error::unsupported(
        "addr.abstract: abstract sockets exist only on Linux",
    ))
}

type Unlink = Option<(PathBuf, u64, u64)>;

fn bind_unix(u: &UnixAddress) -> Result<(UnixListener, Unlink)> {
    let at = unix_address(u)?;
    let what = format!(
        "bind {}",
        MigrationAddress::Socket(SocketAddress::Unix(u.clone()))
    );
    let Some(path) = at.as_pathname().map(PathBuf::from) else {
        let l = UnixListener::bind_addr(&at).map_err(|e| Error::io(what, e))?;
        return Ok((l, None));
    };
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.file_type().is_socket() => {
            std::fs::remove_file(&path)
                .map_err(|e| Error::io(format!("{what}: remove the old socket"), e))?;
        }
        Ok(_) => {
            return Err(Error::usage(format!(
                "addr.path: {} exists and is not a socket",
                path.display()
            )))
        }
        Err(_) => {}
    }
    let l = UnixListener::bind_addr(&at).map_err(|e| Error::io(what.clone(), e))?;
    let m = std::fs::symlink_metadata(&path).map_err(|e| Error::io(what, e))?;
    Ok((l, Some((path, m.dev(), m.ino()))))
}

fn connect_unix(u: &UnixAddress) -> Result<UnixStream> {
    let at = unix_address(u)?;
    UnixStream::connect_addr(&at).map_err(|e| {
        Error::io(
            format!(
                "connect to {}",
                MigrationAddress::Socket(SocketAddress::Unix(u.clone()))
            ),
            e,
        )
    })
}

fn command(args: &[String]) -> Result<Command> {
    let (program, rest) = args
        .split_first()
        .ok_or_else(|| Error::address("addr.args", "needs at least the program to run"))?;
    let mut cmd = Command::new(program);
    cmd.args(rest).stderr(Stdio::inherit());
    Ok(cmd)
}

fn spawn(mut cmd: Command, args: &[String]) -> Result<(Child, String)> {
    let program = args.first().map(String::as_str).unwrap_or_default();
    let child = cmd
        .spawn()
        .map_err(|e| Error::io(format!("exec:{program}: cannot run it"), e))?;
    let peer = format!("exec:{program} (pid {})", child.id());
    Ok((child, peer))
}

/// A child process behind an `exec` channel. Dropped before it was waited
/// for, it is killed and reaped.
struct ChildProc {
    child: Arc<Mutex<Child>>,
    reaped: bool,
}

impl ChildProc {
    fn new(child: Child) -> (ChildProc, Target) {
        let child = Arc::new(Mutex::new(child));
        let target = Target::Child(child.clone());
        (
            ChildProc {
                child,
                reaped: false,
            },
            target,
        )
    }

    /// Waits for the child to exit; a failure status is an error. Polls, so
    /// that a [`ShutdownHandle`] can kill a child that does not exit.
    fn wait(&mut self, peer: &str) -> Result<()> {
        let status = loop {
            let polled = lock(&self.child).try_wait();
            match polled {
                Ok(Some(status)) => break status,
                Ok(None) => std::thread::sleep(CHILD_POLL),
                Err(e) => return Err(Error::io(format!("{peer}: wait"), e)),
            }
        };
        self.reaped = true;
        if status.success() {
            Ok(())
        } else {
            Err(Error::new(ErrorKind::Io, format!("{peer}: {status}")))
        }
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        if !self.reaped {
            let mut child = lock(&self.child);
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

const CHILD_POLL: Duration = Duration::from_millis(5);
