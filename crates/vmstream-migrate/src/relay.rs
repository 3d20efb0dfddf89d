//! Relaying one vmstream stream over a channel set: the [`Splitter`] takes the
//! stream's bytes as a writer produces them and sends its `pages` records over
//! the data channels, leaving a `moved` marker on the main channel where each
//! one was; the [`Merger`] reads the channels and gives back the very same
//! bytes, in order. `vmstream relay` carries a running QEMU's migration this
//! way (QEMU's stream converted to vmstream on the source host, converted back
//! on the destination host); the wire format is in `docs/live-migration.md` §7.
//!
//! Every channel is written by a thread of its own behind a bounded queue, and
//! every data channel is read ahead by one, so the channels move in parallel
//! while the stream stays one ordered sequence of records.

use std::io::{self, BufReader, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vmstream::{Limits, RecordKind};

use crate::link::Link;
use crate::Error;

mod return_path;
pub use return_path::{carry_back, send_back, Carried, RETURN_PATH};

/// Record kind of a `moved` marker: the next `pages` record of the stream
/// travels on data channel `id` (body: `u32 id`). Optional, so that nothing
/// but the merger ever needs to know it.
pub const MOVED: RecordKind = RecordKind(0x0201);
const PAGES: u16 = 6;
const OPTIONAL: u16 = 1;
/// Chunks a channel's queue holds before its writer blocks.
const QUEUE: usize = 64;
/// Records a data channel's reader holds for the merger before it waits.
const READ_AHEAD: usize = 8;

/// Record buffers handed back once written or read, so that a relay does
/// not allocate, fault in and zero a megabyte anew for every record.
#[derive(Clone, Default)]
struct Pool(Arc<Mutex<Vec<Vec<u8>>>>);

impl Pool {
    /// Buffers kept; beyond, they are freed.
    const KEEP: usize = READ_AHEAD * 2;

    /// A buffer, with whatever length and bytes it had.
    fn take(&self) -> Vec<u8> {
        self.0
            .lock()
            .ok()
            .and_then(|mut v| v.pop())
            .unwrap_or_default()
    }

    fn give(&self, buf: Vec<u8>) {
        if let Ok(mut v) = self.0.lock() {
            if v.len() < Self::KEEP {
                v.push(buf);
            }
        }
    }
}

/// Bytes of a whole record whose 8-byte header says `body_len`.
fn record_len(body_len: u32) -> usize {
    8 + (body_len as usize + 4).div_ceil(8) * 8
}

/// One framed record: the header, the body, zero padding and the CRC32C.
fn frame(kind: u16, flags: u16, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(record_len(body.len() as u32));
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    out.resize(record_len(body.len() as u32) - 4, 0);
    let crc = vmstream::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// A thread that writes what its queue hands it, flushing whenever the queue
/// runs dry, and counts the bytes.
struct ChannelWriter {
    tx: Option<SyncSender<Vec<u8>>>,
    thread: Option<JoinHandle<io::Result<Box<dyn Link>>>>,
    name: String,
}

impl ChannelWriter {
    fn spawn(
        name: String,
        link: Box<dyn Link>,
        counter: Arc<AtomicU64>,
        pool: Pool,
    ) -> ChannelWriter {
        let (tx, rx) = sync_channel::<Vec<u8>>(QUEUE);
        let thread = std::thread::Builder::new()
            .name(format!("relay-{name}"))
            .spawn(move || write_loop(link, &rx, &counter, &pool))
            .ok();
        ChannelWriter {
            tx: Some(tx),
            thread,
            name,
        }
    }

    fn send(&self, chunk: Vec<u8>) -> Result<(), Error> {
        self.tx
            .as_ref()
            .and_then(|t| t.send(chunk).ok())
            .ok_or_else(|| Error::transport(format!("{}: the channel failed", self.name)))
    }

    /// Ends the queue and waits for the writer; returns the connection.
    fn finish(mut self) -> Result<Box<dyn Link>, Error> {
        drop(self.tx.take());
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(Ok(link))) => Ok(link),
            Some(Ok(Err(e))) => Err(Error::transport(format!("{}: {e}", self.name))),
            _ => Err(Error::internal(format!(
                "{}: writer thread failed",
                self.name
            ))),
        }
    }
}

fn write_loop(
    mut link: Box<dyn Link>,
    rx: &Receiver<Vec<u8>>,
    counter: &AtomicU64,
    pool: &Pool,
) -> io::Result<Box<dyn Link>> {
    let mut pending = false;
    loop {
        let chunk = match rx.try_recv() {
            Ok(c) => c,
            Err(TryRecvError::Empty) => {
                if pending {
                    link.flush()?;
                }
                match rx.recv() {
                    Ok(c) => c,
                    Err(_) => break,
                }
            }
            Err(TryRecvError::Disconnected) => break,
        };
        link.write_all(&chunk)?;
        counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        pool.give(chunk);
        pending = true;
    }
    link.flush()?;
    Ok(link)
}

/// Ends a data channel: its end is the end of the stream for the merger.
fn close(mut link: Box<dyn Link>, name: &str) -> Result<(), Error> {
    link.close_write()
        .map_err(|e| Error::transport(format!("{name}: closing: {e}")))
}

/// Takes a vmstream stream as a writer produces it and sends it over a
/// channel set: `pages` records round-robin over the data channels (to the
/// first whose queue has room), everything else, and a `moved` marker for
/// each page record, on main. With no data channels everything goes on main
/// unchanged. A recording, when given, receives the stream exactly as written.
pub struct Splitter {
    buf: Vec<u8>,
    header_done: bool,
    main: ChannelWriter,
    data: Vec<ChannelWriter>,
    next: usize,
    record: Option<Box<dyn Write + Send>>,
    sent: Arc<AtomicU64>,
    /// Main-channel bytes gathered for the next send.
    out: Vec<u8>,
    pool: Pool,
}

impl std::fmt::Debug for Splitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Splitter")
            .field("data_channels", &self.data.len())
            .finish_non_exhaustive()
    }
}

impl Splitter {
    /// A splitter over `main` and `data`; `sent` counts the bytes put on
    /// the wire.
    pub fn new(
        main: Box<dyn Link>,
        data: Vec<Box<dyn Link>>,
        record: Option<Box<dyn Write + Send>>,
        sent: Arc<AtomicU64>,
    ) -> Splitter {
        let pool = Pool::default();
        Splitter {
            buf: Vec::new(),
            header_done: false,
            main: ChannelWriter::spawn("main".into(), main, sent.clone(), pool.clone()),
            data: data
                .into_iter()
                .enumerate()
                .map(|(k, l)| {
                    let name = format!("data channel {k}");
                    ChannelWriter::spawn(name, l, sent.clone(), pool.clone())
                })
                .collect(),
            next: 0,
            record,
            sent,
            out: Vec::new(),
            pool,
        }
    }

    /// Bytes put on the wire so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    fn send_main(&mut self) -> Result<(), Error> {
        if !self.out.is_empty() {
            let mut next = self.pool.take();
            next.clear();
            let chunk = std::mem::replace(&mut self.out, next);
            self.main.send(chunk)?;
        }
        Ok(())
    }

    /// Moves every whole unit (the header, then records) out of `buf`.
    fn route(&mut self) -> Result<(), Error> {
        let buf = std::mem::take(&mut self.buf);
        let mut at = 0;
        let r = self.route_from(&buf, &mut at);
        self.buf = buf;
        self.buf.drain(..at);
        r
    }

    fn route_from(&mut self, buf: &[u8], at: &mut usize) -> Result<(), Error> {
        loop {
            let rest = &buf[*at..];
            if !self.header_done {
                let Some(len) = rest.get(12..16) else { break };
                let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
                if !(48..=4096).contains(&len) {
                    return Err(Error::internal(format!("stream header of {len} bytes")));
                }
                if rest.len() < len {
                    break;
                }
                self.out.extend_from_slice(&rest[..len]);
                *at += len;
                self.header_done = true;
                continue;
            }
            let Some(h) = rest.get(..8) else { break };
            let kind = u16::from_le_bytes([h[0], h[1]]);
            let len = record_len(u32::from_le_bytes([h[4], h[5], h[6], h[7]]));
            if rest.len() < len {
                break;
            }
            if kind == PAGES && !self.data.is_empty() {
                let k = self.pick();
                self.out
                    .extend_from_slice(&frame(MOVED.0, OPTIONAL, &(k as u32).to_le_bytes()));
                // The marker goes first, so the merger is never left waiting
                // on a data channel for a record whose marker is still here.
                self.send_main()?;
                let mut rec = self.pool.take();
                rec.clear();
                rec.reserve(len.next_power_of_two());
                rec.extend_from_slice(&rest[..len]);
                self.data[k].send(rec)?;
            } else {
                self.out.extend_from_slice(&rest[..len]);
                if self.out.len() >= 1 << 20 {
                    self.send_main()?;
                }
            }
            *at += len;
        }
        Ok(())
    }

    /// The next data channel, round robin.
    fn pick(&mut self) -> usize {
        let k = self.next % self.data.len();
        self.next = self.next.wrapping_add(1);
        k
    }

    /// Sends what is left, waits until every channel has written it and
    /// closes the data channels (their end is the end of the stream for the
    /// merger); returns the main connection, for the answer.
    pub fn finish(mut self) -> Result<Box<dyn Link>, Error> {
        if !self.buf.is_empty() {
            return Err(Error::internal(format!(
                "{} bytes of an unfinished record at the end of the stream",
                self.buf.len()
            )));
        }
        self.send_main()?;
        if let Some(r) = self.record.as_mut() {
            r.flush()
                .map_err(|e| Error::transport(format!("recording: {e}")))?;
        }
        let mut first = None;
        for d in self.data.drain(..) {
            let name = d.name.clone();
            if let Err(e) = d.finish().and_then(|l| close(l, &name)) {
                first.get_or_insert(e);
            }
        }
        let main = self.main.finish();
        match (main, first) {
            (Ok(m), None) => Ok(m),
            (Err(e), _) | (Ok(_), Some(e)) => Err(e),
        }
    }
}

impl Write for Splitter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if let Some(r) = self.record.as_mut() {
            r.write_all(bytes)
                .map_err(|e| io::Error::new(e.kind(), format!("writing the recording: {e}")))?;
        }
        if self.buf.is_empty() {
            // Whole records route straight from the writer's buffer; only a
            // record cut at the end waits for the next write.
            let mut at = 0;
            self.route_from(bytes, &mut at).map_err(sending)?;
            self.buf.extend_from_slice(&bytes[at..]);
        } else {
            self.buf.extend_from_slice(bytes);
            self.route().map_err(sending)?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_main().map_err(sending)
    }
}

/// An error of the channels to the receiving relay, saying so.
fn sending(e: Error) -> io::Error {
    io::Error::other(format!("sending to the receiving relay: {e}"))
}

/// What a data channel's reader hands the merger: a record, or why none.
type Fetched = Result<Option<Vec<u8>>, Error>;

/// Reads one whole record from `r`, whose body may be at most `max_body`
/// bytes, into a buffer of `pool`; `None` at a clean end of stream. The
/// buffer grows as bytes arrive (a megabyte at a time), so a record header
/// that promises more than ever comes costs nothing.
fn read_record<R: Read>(r: &mut R, max_body: u64, what: &str, pool: &Pool) -> Fetched {
    let mut h = [0u8; 8];
    let mut got = 0;
    while got < 8 {
        match r.read(&mut h[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(Error::peer(format!("{what}: ends inside a record header"))),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::transport(format!("{what}: {e}"))),
        }
    }
    let body = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    if u64::from(body) > max_body {
        return Err(Error::peer(format!(
            "{what}: a record of {body} bytes exceeds the limit of {max_body}"
        )));
    }
    let len = record_len(body);
    // a pooled buffer keeps its length: only what it grows by is zeroed
    let mut rec = pool.take();
    if rec.len() < 8 {
        rec.resize(8, 0);
    }
    rec[..8].copy_from_slice(&h);
    let mut got = 8;
    while got < len {
        let room = (got + (1 << 20)).min(len);
        if rec.len() < room {
            // to a power of two, so that a pooled buffer takes the next
            // record of a similar size without moving
            rec.reserve(room.next_power_of_two() - rec.len());
            rec.resize(room, 0);
        }
        match r.read(&mut rec[got..room]) {
            Ok(0) => {
                return Err(Error::peer(format!(
                    "{what}: ends inside a record ({} of {} bytes)",
                    got - 8,
                    len - 8
                )))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::transport(format!("{what}: {e}"))),
        }
    }
    rec.truncate(len);
    Ok(Some(rec))
}

/// Reads a channel set that a [`Splitter`] wrote and gives back the stream's
/// bytes in their original order, checking every `moved` marker and that
/// each data channel carries `pages` records only and ends with the stream.
/// The records themselves are checked by whoever reads the merged stream.
pub struct Merger {
    main: BufReader<Box<dyn Link>>,
    /// The data channels until the stream header is read.
    links: Vec<Box<dyn Link>>,
    data: Vec<Receiver<Fetched>>,
    readers: Vec<JoinHandle<Box<dyn Link>>>,
    /// Largest record body: the limit, or one page of the stream's page size.
    max_body: u64,
    header_done: bool,
    ended: bool,
    pending: Vec<u8>,
    at: usize,
    received: Arc<AtomicU64>,
    pool: Pool,
}

impl std::fmt::Debug for Merger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Merger")
            .field("data_channels", &self.data.len())
            .finish_non_exhaustive()
    }
}

impl Merger {
    /// A merger over `main` and `data`; `received` counts the bytes read.
    pub fn new(
        main: Box<dyn Link>,
        data: Vec<Box<dyn Link>>,
        limits: Limits,
        received: Arc<AtomicU64>,
    ) -> Merger {
        Merger {
            main: BufReader::with_capacity(1 << 20, main),
            links: data,
            data: Vec::new(),
            readers: Vec::new(),
            max_body: u64::from(limits.max_record_size),
            header_done: false,
            ended: false,
            pending: Vec::new(),
            at: 0,
            received,
            pool: Pool::default(),
        }
    }

    /// Starts reading ahead on every data channel.
    fn spawn_readers(&mut self) {
        for (k, mut link) in std::mem::take(&mut self.links).into_iter().enumerate() {
            let (tx, rx) = sync_channel::<Fetched>(READ_AHEAD);
            let received = self.received.clone();
            let max_body = self.max_body;
            let pool = self.pool.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("relay-read-{k}"))
                .spawn(move || {
                    let what = format!("data channel {k}");
                    loop {
                        let r = read_record(&mut link, max_body, &what, &pool);
                        let stop = !matches!(r, Ok(Some(_)));
                        if let Ok(Some(rec)) = &r {
                            received.fetch_add(rec.len() as u64, Ordering::Relaxed);
                        }
                        if tx.send(r).is_err() || stop {
                            return link;
                        }
                    }
                });
            match spawned {
                Ok(h) => self.readers.push(h),
                Err(e) => {
                    let (tx, rx2) = sync_channel::<Fetched>(1);
                    let _ = tx.send(Err(Error::internal(format!("data channel {k}: {e}"))));
                    self.data.push(rx2);
                    continue;
                }
            }
            self.data.push(rx);
        }
    }

    /// The main connection, for the answer. After the stream's end the
    /// data channels' readers have ended and are joined; after a failure they
    /// are left to end with their connections.
    pub fn into_main(self) -> Box<dyn Link> {
        if self.ended {
            for r in self.readers {
                let _ = r.join();
            }
        }
        self.main.into_inner()
    }

    /// The next unit of the merged stream, or `None` after `end`.
    fn next_unit(&mut self) -> Result<Option<Vec<u8>>, Error> {
        if self.ended {
            return Ok(None);
        }
        if !self.header_done {
            let mut h = vec![0u8; 16];
            self.main
                .read_exact(&mut h)
                .map_err(|e| Error::peer(format!("main channel: no stream header: {e}")))?;
            let len = u32::from_le_bytes([h[12], h[13], h[14], h[15]]) as usize;
            if !(48..=4096).contains(&len) {
                return Err(Error::peer(format!(
                    "main channel: a stream header of {len} bytes"
                )));
            }
            h.resize(len, 0);
            self.main
                .read_exact(&mut h[16..])
                .map_err(|e| Error::peer(format!("main channel: stream header: {e}")))?;
            self.received.fetch_add(len as u64, Ordering::Relaxed);
            // A pages record may always hold one page (docs/format.md §3).
            let page = u32::from_le_bytes([h[32], h[33], h[34], h[35]]);
            self.max_body = self.max_body.max(u64::from(page) + 4096);
            self.header_done = true;
            self.spawn_readers();
            return Ok(Some(h));
        }
        let rec = read_record(&mut self.main, self.max_body, "main channel", &self.pool)?
            .ok_or_else(|| Error::peer("main channel: ends before the end record"))?;
        self.received.fetch_add(rec.len() as u64, Ordering::Relaxed);
        let kind = u16::from_le_bytes([rec[0], rec[1]]);
        if kind == MOVED.0 {
            let n = rec.len();
            let crc = u32::from_le_bytes([rec[n - 4], rec[n - 3], rec[n - 2], rec[n - 1]]);
            let body = u32::from_le_bytes([rec[4], rec[5], rec[6], rec[7]]);
            if body != 4 || vmstream::crc32c(&rec[..n - 4]) != crc {
                return Err(Error::peer("main channel: a malformed moved marker"));
            }
            let k = u32::from_le_bytes([rec[8], rec[9], rec[10], rec[11]]) as usize;
            let rx = self.data.get(k).ok_or_else(|| {
                Error::peer(format!("main channel: data channel {k} does not exist"))
            })?;
            let moved = rx
                .recv()
                .map_err(|_| Error::peer(format!("data channel {k}: reader gone")))??
                .ok_or_else(|| Error::peer(format!("data channel {k}: ended early")))?;
            if u16::from_le_bytes([moved[0], moved[1]]) != PAGES {
                return Err(Error::peer(format!(
                    "data channel {k}: a record of kind {:#06x}, expected pages",
                    u16::from_le_bytes([moved[0], moved[1]])
                )));
            }
            return Ok(Some(moved));
        }
        if kind == vmstream::RecordKind::END.0 {
            self.ended = true;
            for (k, rx) in self.data.iter().enumerate() {
                match rx.recv() {
                    Ok(Ok(None)) => {}
                    Ok(Ok(Some(_))) => {
                        return Err(Error::peer(format!(
                            "data channel {k}: records after the stream's end"
                        )))
                    }
                    Ok(Err(e)) => return Err(e),
                    Err(_) => return Err(Error::peer(format!("data channel {k}: reader gone"))),
                }
            }
        }
        Ok(Some(rec))
    }
}

impl Read for Merger {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.at == self.pending.len() {
            match self.next_unit().map_err(io::Error::other)? {
                Some(unit) => {
                    let done = std::mem::replace(&mut self.pending, unit);
                    self.pool.give(done);
                    self.at = 0;
                }
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.pending.len() - self.at);
        out[..n].copy_from_slice(&self.pending[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// A QMP handler that answers `query-migrate` from a
/// [`Stats`](crate::stats::Stats), for a process whose migration is not the
/// engine's: the relay.
#[derive(Debug)]
pub struct QueryMigrate {
    stats: Arc<crate::stats::Stats>,
    page_size: u64,
}

impl QueryMigrate {
    /// Answers from `stats`, counting pages of `page_size` bytes.
    pub fn new(stats: Arc<crate::stats::Stats>, page_size: u64) -> QueryMigrate {
        QueryMigrate { stats, page_size }
    }
}

impl crate::qmp::Handler for QueryMigrate {
    fn commands(&self) -> Vec<String> {
        vec!["query-migrate".into()]
    }

    fn execute(
        &self,
        name: &str,
        args: serde_json::Map<String, serde_json::Value>,
    ) -> Result<serde_json::Value, crate::qmp::QmpError> {
        if let Some(k) = args.keys().next() {
            return Err(crate::qmp::QmpError::unexpected(k));
        }
        match name {
            "query-migrate" => {
                serde_json::to_value(self.stats.snapshot().to_migration_info(self.page_size))
                    .map_err(|e| crate::qmp::QmpError::generic(e.to_string()))
            }
            _ => Err(crate::qmp::QmpError::command_not_found(name)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    /// A stream with devices, pages and an end, written by the format crate.
    fn stream() -> Vec<u8> {
        let header =
            vmstream::Header::new(vmstream::StreamKind::Live, vmstream::Arch::X86_64, 4096);
        let mut w =
            vmstream::StreamWriter::new(Vec::new(), header, vmstream::WriterOptions::default())
                .unwrap();
        w.write_ram_blocks(&[vmstream::RamBlock {
            id: 0,
            name: "ram0".into(),
            size: 64 << 12,
            page_size: 4096,
            flags: 0,
        }])
        .unwrap();
        for round in 0..3u32 {
            for first in (0..64u64).step_by(8) {
                let pages: Vec<Vec<u8>> = (first..first + 8)
                    .map(|i| vec![(i as u8).wrapping_mul(7).wrapping_add(round as u8); 4096])
                    .collect();
                let refs: Vec<(u64, &[u8])> = pages
                    .iter()
                    .enumerate()
                    .map(|(j, p)| (first + j as u64, p.as_slice()))
                    .collect();
                w.write_pages(0, round, &refs).unwrap();
            }
            w.write_epoch(round).unwrap();
        }
        w.finish().unwrap()
    }

    fn relay(bytes: &[u8], channels: usize, piece: usize) -> Vec<u8> {
        let (a, b) = UnixStream::pair().unwrap();
        let mut src: Vec<Box<dyn Link>> = Vec::new();
        let mut dst: Vec<Box<dyn Link>> = Vec::new();
        for _ in 0..channels {
            let (x, y) = UnixStream::pair().unwrap();
            src.push(Box::new(x));
            dst.push(Box::new(y));
        }
        let bytes = bytes.to_vec();
        std::thread::scope(|s| {
            s.spawn(move || {
                let mut sp = Splitter::new(Box::new(a), src, None, Arc::default());
                for c in bytes.chunks(piece) {
                    sp.write_all(c).unwrap();
                }
                sp.finish().unwrap();
            });
            let mut m = Merger::new(Box::new(b), dst, Limits::default(), Arc::default());
            let mut out = Vec::new();
            m.read_to_end(&mut out).unwrap();
            out
        })
    }

    #[test]
    fn the_merged_stream_is_the_written_one() {
        let s = stream();
        for channels in [0, 1, 3] {
            for piece in [1, 7, 4096, 1 << 20] {
                assert_eq!(
                    relay(&s, channels, piece),
                    s,
                    "{channels} channels, {piece}"
                );
            }
        }
        // And the format crate reads it.
        let mut r = vmstream::SliceReader::new(&s, Limits::default()).unwrap();
        while r.next().unwrap().is_some() {}
    }

    #[test]
    fn a_bad_marker_or_a_foreign_record_is_refused() {
        let (a, b) = UnixStream::pair().unwrap();
        let (_x, y) = UnixStream::pair().unwrap();
        let s = stream();
        let header_len = u32::from_le_bytes([s[12], s[13], s[14], s[15]]) as usize;
        let mut a = a;
        a.write_all(&s[..header_len]).unwrap();
        a.write_all(&frame(MOVED.0, OPTIONAL, &7u32.to_le_bytes()))
            .unwrap();
        drop(a);
        let mut m = Merger::new(
            Box::new(b),
            vec![Box::new(y)],
            Limits::default(),
            Arc::default(),
        );
        let e = m.read_to_end(&mut Vec::new()).unwrap_err().to_string();
        assert!(e.contains("data channel 7 does not exist"), "{e}");
        // A data channel that carries something other than pages.
        let (a, b) = UnixStream::pair().unwrap();
        let (mut x, y) = UnixStream::pair().unwrap();
        let mut a = a;
        a.write_all(&s[..header_len]).unwrap();
        a.write_all(&frame(MOVED.0, OPTIONAL, &0u32.to_le_bytes()))
            .unwrap();
        x.write_all(&frame(4, 0, &[0; 16])).unwrap();
        drop((a, x));
        let mut m = Merger::new(
            Box::new(b),
            vec![Box::new(y)],
            Limits::default(),
            Arc::default(),
        );
        let e = m.read_to_end(&mut Vec::new()).unwrap_err().to_string();
        assert!(e.contains("expected pages"), "{e}");
        // A corrupted marker.
        let (a, b) = UnixStream::pair().unwrap();
        let mut a = a;
        a.write_all(&s[..header_len]).unwrap();
        let mut bad = frame(MOVED.0, OPTIONAL, &0u32.to_le_bytes());
        bad[9] ^= 1;
        a.write_all(&bad).unwrap();
        drop(a);
        let (_, y) = UnixStream::pair().unwrap();
        let mut m = Merger::new(
            Box::new(b),
            vec![Box::new(y)],
            Limits::default(),
            Arc::default(),
        );
        let e = m.read_to_end(&mut Vec::new()).unwrap_err().to_string();
        assert!(e.contains("malformed moved marker"), "{e}");
    }
}
