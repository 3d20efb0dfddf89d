//! Channel sets: one main connection plus up to [`MAX_DATA_CHANNELS`] data
//! connections to the same address, each of which announces itself first.
//!
//! Every connection starts with a fixed-size [`Preamble`] (`docs/format.md`,
//! "Live migration channels"): its role, its channel id, the number of data
//! channels in the set and a random 128-bit migration id, CRC32C-checked.
//! The acceptor waits for the main connection, which says how many data
//! connections to expect and which migration they belong to, then takes
//! exactly that many whose preambles match. Anything else (bad magic or
//! checksum, another migration's id, a duplicate or out-of-range channel, a
//! second main connection, silence past the deadline) is closed and listed
//! in [`ChannelSet::refused`].
//!
//! ```text
//!  source                                   destination
//!  connect_set(addr, 2, id)                 accept_set(listener, timeout)
//!    main   ---- [preamble main  n=2 id] -->  main: expect 2 data with id
//!    data 0 ---- [preamble data0 n=2 id] -->  slot 0
//!    data 1 ---- [preamble data1 n=2 id] -->  slot 1 -> ChannelSet
//! ```
//!
//! The preamble parser ([`Preamble::parse`]) and the set logic
//! ([`SetAssembler`]) are pure, so both are fuzzed; [`accept_set`] adds the
//! sockets, threads and clock.

#![forbid(unsafe_code)]

use std::fmt;
use std::io::{Read, Write};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::address::MigrationAddress;
use crate::conn::{connect, Connection, Listener, ShutdownHandle, Socket};
use crate::error::{Error, ErrorKind, Result};
use crate::tls::{TlsClient, TlsServer};

/// Length of a preamble in bytes.
pub const PREAMBLE_LEN: usize = 40;
/// The preamble's first 8 bytes.
pub const PREAMBLE_MAGIC: [u8; 8] = *b"VMSCHAN\x01";
/// The preamble version this crate writes and reads.
pub const PREAMBLE_VERSION: u16 = 1;
/// The most data channels one set may have.
pub const MAX_DATA_CHANNELS: u16 = 64;

const ROLE_MAIN: u8 = 0x01;
const ROLE_DATA: u8 = 0x02;

/// How often [`accept_set`] looks for new connections while it waits.
const POLL: Duration = Duration::from_millis(5);
/// Connections whose preamble [`accept_set`] may be waiting for at once;
/// more are refused at once.
const MAX_PENDING: usize = 2 * MAX_DATA_CHANNELS as usize + 2;

/// A migration's identity: 16 random bytes, the same in every preamble of
/// its channel set. Never all zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MigrationId([u8; 16]);

impl MigrationId {
    /// A fresh id from the operating system's random source.
    pub fn random() -> Result<MigrationId> {
        let mut bytes = [0u8; 16];
        loop {
            getrandom::fill(&mut bytes).map_err(|e| {
                Error::new(
                    ErrorKind::Io,
                    format!("migration id: the system's random source failed: {e}"),
                )
            })?;
            if bytes != [0; 16] {
                return Ok(MigrationId(bytes));
            }
        }
    }

    /// The id with these bytes; `None` for all zero, which no preamble may
    /// carry.
    pub fn from_bytes(bytes: [u8; 16]) -> Option<MigrationId> {
        (bytes != [0; 16]).then_some(MigrationId(bytes))
    }

    /// The id's bytes.
    pub fn to_bytes(self) -> [u8; 16] {
        self.0
    }
}

/// Lower-case hex, 32 digits.
impl fmt::Display for MigrationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for MigrationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MigrationId({self})")
    }
}

/// What a connection is for in its set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The main channel: control and the stream.
    Main,
    /// Data channel `id`, below the set's channel count.
    Data(u16),
}

/// The first bytes of every connection of a channel set. Holds only valid
/// combinations: a data channel's id is below the count, the count at most
/// [`MAX_DATA_CHANNELS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Preamble {
    role: Role,
    data_channels: u16,
    migration_id: MigrationId,
}

/// Why preamble bytes were refused. The parser checks in this order:
/// length, magic, checksum, version, then the fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PreambleError {
    /// Not exactly [`PREAMBLE_LEN`] bytes.
    #[error("preamble is {0} bytes, not 40")]
    Length(usize),
    /// The first 8 bytes are not [`PREAMBLE_MAGIC`]: not a vmstream channel.
    #[error("bad magic: not a vmstream channel")]
    Magic,
    /// The CRC32C does not match.
    #[error("checksum {found:#010x} does not match the bytes ({computed:#010x})")]
    Checksum {
        /// The checksum in the preamble.
        found: u32,
        /// The checksum of its bytes.
        computed: u32,
    },
    /// A version this crate does not read.
    #[error("preamble version {0} is not supported (expected 1)")]
    Version(u16),
    /// A role byte other than main (1) or data (2).
    #[error("unknown role {0}")]
    Role(u8),
    /// A reserved byte is not zero.
    #[error("reserved byte at offset {0} is not zero")]
    Reserved(usize),
    /// More data channels than [`MAX_DATA_CHANNELS`].
    #[error("{0} data channels is more than the limit of 64")]
    TooManyChannels(u16),
    /// The main channel's id is not 0.
    #[error("main channel with channel id {0} (must be 0)")]
    MainChannelId(u16),
    /// A data channel's id is not below the channel count.
    #[error("data channel id {id} is out of range for {count} data channels")]
    ChannelOutOfRange {
        /// The channel id.
        id: u16,
        /// The channel count.
        count: u16,
    },
    /// The migration id is all zero.
    #[error("migration id is all zero")]
    ZeroMigrationId,
}

impl Preamble {
    /// The main channel's preamble for a set of `data_channels`.
    pub fn main(migration_id: MigrationId, data_channels: u16) -> Result<Preamble, PreambleError> {
        Preamble::new(Role::Main, data_channels, migration_id)
    }

    /// Data channel `id`'s preamble in a set of `data_channels`.
    pub fn data(
        migration_id: MigrationId,
        data_channels: u16,
        id: u16,
    ) -> Result<Preamble, PreambleError> {
        Preamble::new(Role::Data(id), data_channels, migration_id)
    }

    fn new(
        role: Role,
        data_channels: u16,
        migration_id: MigrationId,
    ) -> Result<Preamble, PreambleError> {
        if data_channels > MAX_DATA_CHANNELS {
            return Err(PreambleError::TooManyChannels(data_channels));
        }
        if let Role::Data(id) = role {
            if id >= data_channels {
                return Err(PreambleError::ChannelOutOfRange {
                    id,
                    count: data_channels,
                });
            }
        }
        Ok(Preamble {
            role,
            data_channels,
            migration_id,
        })
    }

    /// The connection's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// How many data channels the set has.
    pub fn data_channels(&self) -> u16 {
        self.data_channels
    }

    /// The migration the connection belongs to.
    pub fn migration_id(&self) -> MigrationId {
        self.migration_id
    }

    /// The wire form.
    pub fn encode(&self) -> [u8; PREAMBLE_LEN] {
        let (role, channel) = match self.role {
            Role::Main => (ROLE_MAIN, 0),
            Role::Data(id) => (ROLE_DATA, id),
        };
        let mut b = [0u8; PREAMBLE_LEN];
        b[0..8].copy_from_slice(&PREAMBLE_MAGIC);
        b[8..10].copy_from_slice(&PREAMBLE_VERSION.to_le_bytes());
        b[10] = role;
        // b[11]: reserved, zero.
        b[12..14].copy_from_slice(&channel.to_le_bytes());
        b[14..16].copy_from_slice(&self.data_channels.to_le_bytes());
        b[16..32].copy_from_slice(&self.migration_id.0);
        // b[32..36]: reserved, zero.
        let crc = vmstream::crc32c(&b[..CRC_AT]);
        b[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses exactly [`PREAMBLE_LEN`] bytes. Pure: any input gives a
    /// preamble or an error, never a panic.
    pub fn parse(bytes: &[u8]) -> Result<Preamble, PreambleError> {
        let b: &[u8; PREAMBLE_LEN] = bytes
            .try_into()
            .map_err(|_| PreambleError::Length(bytes.len()))?;
        let (body, crc) = b.split_at(CRC_AT);
        if body[0..8] != PREAMBLE_MAGIC {
            return Err(PreambleError::Magic);
        }
        let found = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        let computed = vmstream::crc32c(body);
        if found != computed {
            return Err(PreambleError::Checksum { found, computed });
        }
        let version = u16::from_le_bytes([body[8], body[9]]);
        if version != PREAMBLE_VERSION {
            return Err(PreambleError::Version(version));
        }
        if body[11] != 0 {
            return Err(PreambleError::Reserved(11));
        }
        if let Some(i) = (32..CRC_AT).find(|&i| body[i] != 0) {
            return Err(PreambleError::Reserved(i));
        }
        let channel = u16::from_le_bytes([body[12], body[13]]);
        let data_channels = u16::from_le_bytes([body[14], body[15]]);
        let mut id = [0u8; 16];
        id.copy_from_slice(&body[16..32]);
        let migration_id = MigrationId::from_bytes(id).ok_or(PreambleError::ZeroMigrationId)?;
        let role = match body[10] {
            ROLE_MAIN if channel != 0 => return Err(PreambleError::MainChannelId(channel)),
            ROLE_MAIN => Role::Main,
            ROLE_DATA => Role::Data(channel),
            other => return Err(PreambleError::Role(other)),
        };
        Preamble::new(role, data_channels, migration_id)
    }
}

/// Offset of the CRC32C, which covers every byte before it.
const CRC_AT: usize = 36;

impl From<PreambleError> for Error {
    fn from(e: PreambleError) -> Error {
        let kind = match e {
            PreambleError::Version(_) => ErrorKind::Unsupported,
            _ => ErrorKind::Malformed,
        };
        Error::with_source(kind, "channel preamble", e)
    }
}

/// Why [`SetAssembler`] turned a well-formed connection away.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// A main channel arrived after the set already had one.
    #[error("a second main channel")]
    SecondMain,
    /// The connection belongs to another migration.
    #[error("migration id {found} is not this set's {expected}")]
    WrongMigration {
        /// This set's id.
        expected: MigrationId,
        /// The connection's id.
        found: MigrationId,
    },
    /// The connection counts a different number of data channels.
    #[error("says {found} data channels, the main channel {expected}")]
    WrongChannelCount {
        /// The main channel's count.
        expected: u16,
        /// The connection's count.
        found: u16,
    },
    /// The channel id is already taken in this set.
    #[error("data channel {0} is already connected")]
    Duplicate(u16),
    /// Data channels arrived before the main one, more than a set can use.
    #[error("more than 64 data channels waiting for a main channel")]
    TooManyWaiting,
    /// The set is complete.
    #[error("the channel set is already complete")]
    Complete,
}

/// The I/O-free core of [`accept_set`]: takes each arriving connection's
/// preamble and decides whether it joins the set. `T` is whatever stands
/// for the connection (a [`Connection`], or an index in tests).
///
/// Data channels arriving before the main one are held, at most
/// [`MAX_DATA_CHANNELS`] of them, and judged when it arrives. The first main
/// channel defines the set; the first data channel for each id wins.
#[derive(Debug)]
pub struct SetAssembler<T> {
    main: Option<(Preamble, T)>,
    held: Vec<(Preamble, T)>,
    slots: Vec<Option<T>>,
    filled: usize,
}

impl<T> Default for SetAssembler<T> {
    fn default() -> Self {
        SetAssembler::new()
    }
}

impl<T> SetAssembler<T> {
    /// An empty set.
    pub fn new() -> SetAssembler<T> {
        SetAssembler {
            main: None,
            held: Vec::new(),
            slots: Vec::new(),
            filled: 0,
        }
    }

    /// Offers a connection; returns the ones refused by this step (the
    /// connection itself, or data channels held until this main one came).
    pub fn offer(&mut self, preamble: Preamble, conn: T) -> Vec<(T, Refusal)> {
        let mut refused = Vec::new();
        if self.is_complete() {
            refused.push((conn, Refusal::Complete));
            return refused;
        }
        let main = self.main.as_ref().map(|(p, _)| *p);
        match (main, preamble.role) {
            (Some(_), Role::Main) => refused.push((conn, Refusal::SecondMain)),
            (None, Role::Main) => {
                self.slots = (0..preamble.data_channels).map(|_| None).collect();
                self.main = Some((preamble, conn));
                for (p, c) in std::mem::take(&mut self.held) {
                    match self.place(&preamble, p) {
                        Ok(()) => self.fill(p, c),
                        Err(r) => refused.push((c, r)),
                    }
                }
            }
            (None, Role::Data(_)) => {
                if self.held.len() >= usize::from(MAX_DATA_CHANNELS) {
                    refused.push((conn, Refusal::TooManyWaiting));
                } else {
                    self.held.push((preamble, conn));
                }
            }
            (Some(main), Role::Data(_)) => match self.place(&main, preamble) {
                Ok(()) => self.fill(preamble, conn),
                Err(r) => refused.push((conn, r)),
            },
        }
        refused
    }

    /// Whether the main channel and all its data channels are in.
    pub fn is_complete(&self) -> bool {
        self.main.is_some() && self.filled == self.slots.len()
    }

    /// The main channel's preamble, once it has arrived.
    pub fn main(&self) -> Option<&Preamble> {
        self.main.as_ref().map(|(p, _)| p)
    }

    /// Data channels in so far, and held ones waiting for a main channel.
    pub fn counts(&self) -> (usize, usize) {
        (self.filled, self.held.len())
    }

    /// The main channel's preamble and connection and the data connections
    /// by channel id, if the set is complete; else the assembler back.
    #[allow(clippy::type_complexity)]
    pub fn finish(self) -> std::result::Result<(Preamble, T, Vec<T>), SetAssembler<T>> {
        match self.main {
            Some((preamble, main)) if self.filled == self.slots.len() => {
                // Every slot is filled: `filled` counts the filled ones.
                let data = self.slots.into_iter().flatten().collect();
                Ok((preamble, main, data))
            }
            _ => Err(self),
        }
    }

    /// Whether a data channel with preamble `p` may join the set `main` opened.
    fn place(&self, main: &Preamble, p: Preamble) -> Result<(), Refusal> {
        if p.migration_id != main.migration_id {
            return Err(Refusal::WrongMigration {
                expected: main.migration_id,
                found: p.migration_id,
            });
        }
        if p.data_channels != main.data_channels {
            return Err(Refusal::WrongChannelCount {
                expected: main.data_channels,
                found: p.data_channels,
            });
        }
        match p.role {
            Role::Data(id) => match self.slots.get(usize::from(id)) {
                Some(None) => Ok(()),
                Some(Some(_)) => Err(Refusal::Duplicate(id)),
                // The preamble's own check keeps id below the count, which
                // is the number of slots.
                None => Err(Refusal::WrongChannelCount {
                    expected: main.data_channels,
                    found: p.data_channels,
                }),
            },
            Role::Main => Err(Refusal::SecondMain),
        }
    }

    /// Puts a data channel that [`place`](Self::place) accepted in its slot.
    fn fill(&mut self, p: Preamble, conn: T) {
        if let Role::Data(id) = p.role {
            if let Some(slot @ None) = self.slots.get_mut(usize::from(id)) {
                *slot = Some(conn);
                self.filled = self.filled.saturating_add(1);
            }
        }
    }
}

/// The connections of one migration.
#[derive(Debug)]
#[non_exhaustive]
pub struct ChannelSet {
    /// The main channel.
    pub main: Connection,
    /// The data channels, by channel id.
    pub data: Vec<Connection>,
    /// The migration they belong to.
    pub migration_id: MigrationId,
    /// Connections that [`accept_set`] turned away while forming the set
    /// (always empty from [`connect_set`]).
    pub refused: Vec<Refused>,
}

/// A connection [`accept_set`] closed instead of taking it into the set.
#[derive(Debug)]
pub struct Refused {
    /// Who it came from.
    pub peer: String,
    /// Why: a TLS, preamble or timeout error, or a [`Refusal`] as the source
    /// of an [`ErrorKind::Refused`] error.
    pub error: Error,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.peer, self.error.chain())
    }
}

/// Opens a channel set to a socket address: the main connection, then
/// `data_channels` data connections, each sending its preamble first. The
/// set is complete on the destination once its [`accept_set`] returns; this
/// side does not wait for that.
pub fn connect_set(
    addr: &MigrationAddress,
    data_channels: u16,
    migration_id: MigrationId,
    tls: Option<&TlsClient>,
) -> Result<ChannelSet> {
    if addr.is_one_way() {
        return Err(Error::usage(format!(
            "{addr}: a one-way channel carries only the main channel, and no preamble; \
             open it with open_source"
        )));
    }
    if data_channels > MAX_DATA_CHANNELS {
        return Err(Error::usage(format!(
            "connect_set: {data_channels} data channels is more than the limit of {MAX_DATA_CHANNELS}"
        )));
    }
    let main_preamble = Preamble::main(migration_id, data_channels)?;
    let mut main = connect(addr, tls)?;
    announce(&mut main, &main_preamble)?;
    let mut data = Vec::with_capacity(usize::from(data_channels));
    for id in 0..data_channels {
        let mut conn = connect(addr, tls)?;
        announce(&mut conn, &Preamble::data(migration_id, data_channels, id)?)?;
        data.push(conn);
    }
    Ok(ChannelSet {
        main,
        data,
        migration_id,
        refused: Vec::new(),
    })
}

fn announce(conn: &mut Connection, p: &Preamble) -> Result<()> {
    conn.write_all(&p.encode())
        .and_then(|()| conn.flush())
        .map_err(|e| Error::io(format!("{}: send the channel preamble", conn.peer()), e))
}

/// Forms a channel set from connections to `listener`: waits for a main
/// connection, then for exactly the data connections it announced, running
/// the TLS handshake first if `tls` is given. Every connection must finish
/// its handshake and preamble, and the whole set must form, within
/// `timeout`. Connections that do not belong are closed and listed in
/// [`ChannelSet::refused`]; the set forms regardless.
///
/// Fails with [`ErrorKind::Timeout`] if the set is not complete in time
/// (the message counts what arrived and what was refused), and with
/// [`ErrorKind::Cancelled`] if the listener is shut down.
pub fn accept_set(
    listener: &Listener,
    tls: Option<&TlsServer>,
    timeout: Duration,
) -> Result<ChannelSet> {
    let deadline = Instant::now()
        .checked_add(timeout)
        .ok_or_else(|| Error::usage("accept_set: the timeout is too long to compute a deadline"))?;
    listener.set_nonblocking(true)?;
    let mut waiting = Waiting::default();
    let result = accept_loop(listener, tls, deadline, timeout, &mut waiting);
    // Connections still in their handshake or preamble are closed: their
    // threads wake, fail and end.
    for handle in waiting.handles.drain(..).flatten() {
        handle.shutdown();
    }
    let restored = listener.set_nonblocking(false);
    let set = result?;
    restored?;
    Ok(set)
}

/// Connections whose preamble is still awaited, by thread.
#[derive(Default)]
struct Waiting {
    handles: Vec<Option<ShutdownHandle>>,
}

type Arrival = (usize, String, Result<(Preamble, Connection)>);

fn accept_loop(
    listener: &Listener,
    tls: Option<&TlsServer>,
    deadline: Instant,
    timeout: Duration,
    waiting: &mut Waiting,
) -> Result<ChannelSet> {
    let (tx, rx) = mpsc::channel::<Arrival>();
    let mut assembler = SetAssembler::new();
    let mut refused = Vec::new();
    let mut in_flight = 0usize;
    loop {
        if listener.is_shut_down() {
            return Err(listener.cancelled());
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(timed_out(&assembler, &refused, timeout));
        }
        loop {
            let (sock, peer) = match listener.accept_socket() {
                Ok(s) => s,
                Err(e) if e.io_kind() == Some(std::io::ErrorKind::WouldBlock) => break,
                Err(e) if e.kind() == ErrorKind::Cancelled => return Err(e),
                Err(e) if is_transient(&e) => continue,
                Err(e) => return Err(e),
            };
            if in_flight >= MAX_PENDING {
                refused.push(Refused {
                    peer,
                    error: Error::new(
                        ErrorKind::Refused,
                        format!("more than {MAX_PENDING} connections waiting for their preamble"),
                    ),
                });
                continue;
            }
            let handle = waiting.handles.len();
            let tls = tls.cloned();
            let tx = tx.clone();
            match sock_shutdown(&sock) {
                Ok(h) => waiting.handles.push(Some(h)),
                Err(e) => {
                    refused.push(Refused { peer, error: e });
                    continue;
                }
            }
            in_flight = in_flight.saturating_add(1);
            let spawned = thread::Builder::new()
                .name("vmstream-accept".into())
                .spawn(move || {
                    let r = receive_preamble(sock, peer.clone(), tls.as_ref(), deadline);
                    let _ = tx.send((handle, peer, r));
                });
            if let Err(e) = spawned {
                return Err(Error::io("accept_set: start a thread", e));
            }
        }
        let wait = deadline.saturating_duration_since(Instant::now()).min(POLL);
        match rx.recv_timeout(wait) {
            Ok((handle, _, Ok((preamble, conn)))) => {
                in_flight = in_flight.saturating_sub(1);
                if let Some(h) = waiting.handles.get_mut(handle) {
                    *h = None;
                }
                for (conn, why) in assembler.offer(preamble, conn) {
                    refused.push(Refused {
                        peer: conn.peer().to_string(),
                        error: Error::with_source(
                            ErrorKind::Refused,
                            "not in the channel set",
                            why,
                        ),
                    });
                }
                if assembler.is_complete() {
                    match assembler.finish() {
                        Ok((preamble, main, data)) => {
                            return Ok(ChannelSet {
                                main,
                                data,
                                migration_id: preamble.migration_id(),
                                refused,
                            })
                        }
                        Err(a) => assembler = a,
                    }
                }
            }
            Ok((handle, peer, Err(error))) => {
                in_flight = in_flight.saturating_sub(1);
                if let Some(h) = waiting.handles.get_mut(handle) {
                    *h = None;
                }
                refused.push(Refused { peer, error });
            }
            Err(_) => {}
        }
    }
}

/// TLS handshake and preamble of one accepted connection, by `deadline`.
fn receive_preamble(
    sock: Socket,
    peer: String,
    tls: Option<&TlsServer>,
    deadline: Instant,
) -> Result<(Preamble, Connection)> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(Error::new(
            ErrorKind::Timeout,
            format!("{peer}: no time left"),
        ));
    }
    let mut conn = Connection::accepted(sock, peer, tls, left)?;
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    conn.set_timeouts(Some(left), Some(left))?;
    let mut bytes = [0u8; PREAMBLE_LEN];
    conn.read_exact(&mut bytes)
        .map_err(|e| Error::io(format!("{}: read the channel preamble", conn.peer()), e))?;
    let preamble = Preamble::parse(&bytes)?;
    conn.set_timeouts(None, None)?;
    Ok((preamble, conn))
}

fn sock_shutdown(sock: &Socket) -> Result<ShutdownHandle> {
    ShutdownHandle::for_socket(sock)
}

/// Accept errors that concern one connection only.
fn is_transient(e: &Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        e.io_kind(),
        Some(K::ConnectionAborted | K::ConnectionReset | K::Interrupted)
    )
}

fn timed_out<T>(a: &SetAssembler<T>, refused: &[Refused], timeout: Duration) -> Error {
    let (filled, held) = a.counts();
    let mut msg = match a.main() {
        None => format!(
            "accept_set: no main channel within {timeout:?} ({held} data channels waiting for one)"
        ),
        Some(p) => format!(
            "accept_set: {filled} of {} data channels within {timeout:?}",
            p.data_channels()
        ),
    };
    if !refused.is_empty() {
        msg.push_str(&format!("; {} connections refused", refused.len()));
        for r in refused.iter().take(4) {
            msg.push_str(&format!(" [{r}]"));
        }
    }
    Error::new(ErrorKind::Timeout, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> MigrationId {
        MigrationId::from_bytes([n; 16]).unwrap()
    }

    #[test]
    fn layout() {
        let p = Preamble::data(id(0xab), 4, 3).unwrap();
        let b = p.encode();
        assert_eq!(&b[0..8], b"VMSCHAN\x01");
        assert_eq!(&b[8..16], &[1, 0, 2, 0, 3, 0, 4, 0]);
        assert_eq!(&b[16..32], &[0xab; 16]);
        assert_eq!(&b[32..36], &[0; 4]);
        assert_eq!(
            u32::from_le_bytes(b[36..40].try_into().unwrap()),
            vmstream::crc32c(&b[..36])
        );
        assert_eq!(Preamble::parse(&b), Ok(p));
    }

    #[test]
    fn assembler_holds_early_data() {
        let mut a = SetAssembler::new();
        assert!(a
            .offer(Preamble::data(id(1), 2, 1).unwrap(), "d1")
            .is_empty());
        assert!(a
            .offer(Preamble::data(id(2), 2, 0).unwrap(), "stray")
            .is_empty());
        let refused = a.offer(Preamble::main(id(1), 2).unwrap(), "main");
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].0, "stray");
        assert!(!a.is_complete());
        assert!(a
            .offer(Preamble::data(id(1), 2, 0).unwrap(), "d0")
            .is_empty());
        assert!(a.is_complete());
        let (p, main, data) = a.finish().unwrap();
        assert_eq!(p, Preamble::main(id(1), 2).unwrap());
        assert_eq!((main, data), ("main", vec!["d0", "d1"]));
    }
}
