//! Shared helpers for the vmstream fuzz targets: small limits, a CRC fixer that
//! lets mutated inputs get past the checksums, one canonical rendering of the
//! records every reader yields, and drivers for the three readers.
//!
//! Every driver returns an [`Outcome`]: the records read (as rendered text) and
//! how the read ended, so targets can compare readers with `assert_eq!`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};

use vmstream::record::framed_len;
use vmstream::value::NameTable;
use vmstream::{
    Decoder, Error, ErrorKind, Event, Item, Limits, Record, SliceReader, StreamReader, Value,
};

/// Largest record body the targets accept (1 MiB).
pub const MAX_RECORD: u32 = 1 << 20;
/// Allocation budget per record (16 MiB).
pub const MAX_ALLOC: u64 = 16 << 20;

/// Limits small enough that no input can make a target use much memory.
pub fn limits() -> Limits {
    Limits::default()
        .with_max_record_size(MAX_RECORD)
        .with_max_alloc(MAX_ALLOC)
}

/// [`limits`] with so few names and RAM blocks allowed (256 each) that a
/// mutated stream can reach those limits too. Not for streams a writer built
/// from a plan, which may use more names.
pub fn reader_limits() -> Limits {
    limits().with_max_names(256).with_max_ram_blocks(256)
}

/// The name table of the `value_decode` target: distinct names (so that
/// interning gives back the same ids), covering every name the sample stream's
/// values use.
pub const VALUE_NAMES: &[&str] = &[
    "a",
    "regs",
    "rax",
    "",
    "queues",
    "Down",
    "reason",
    "\u{e9}",
    "Up",
    "x.y",
    "[0]",
    "ier",
    "lcr",
    "mcr",
    "divisor",
    "rx_fifo",
    "mac",
    "status",
    "link",
    "mtu",
    "credit",
    "size",
    "desc_addr",
    "last_avail",
    "enabled",
    "vmm",
    "vcpus",
    "capabilities",
    "struct",
    "seq",
    "option",
    "map",
    "enum",
];

/// The system allocator, counting live bytes and their peak, so targets can
/// check that decoding costs what the `Limits` charge for.
pub struct CountingAlloc;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let now = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is passed on to `System` unchanged; only counters are added.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller upholds `GlobalAlloc::dealloc`'s contract.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// Runs `f` and returns its result with the most heap bytes that were live
/// during the call beyond those live before it (what `f` returns included).
pub fn peak_alloc<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let r = f();
    (r, PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

/// Length of the fixed part of the stream header (before the writer string).
pub const HEADER_FIXED_LEN: usize = 40;

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn put_crc(b: &mut [u8], covered: std::ops::Range<usize>) {
    let crc = vmstream::crc32c(&b[covered.clone()]);
    b[covered.end..covered.end + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Rewrites the header CRC and the CRC of every complete record so that a
/// mutated stream fails (if at all) on what was mutated rather than on its
/// checksum. Returns whether anything changed. Lengths are taken as they are:
/// a frame that does not fit in `data` ends the walk.
pub fn fix_crcs(data: &mut [u8]) -> bool {
    let before = vmstream::crc32c(data);
    let Some(hlen) = le_u32(data, 12) else {
        return false;
    };
    let hlen = hlen as usize;
    if !(HEADER_FIXED_LEN + 8..=4096).contains(&hlen) || hlen > data.len() {
        return false;
    }
    put_crc(data, 0..hlen - 4);
    let mut off = hlen;
    while let Some(len) = le_u32(data, off + 4) {
        let total = match usize::try_from(len) {
            Ok(l) if l <= MAX_RECORD as usize => framed_len(l),
            _ => break,
        };
        if data.len() - off < total {
            break;
        }
        put_crc(data, off..off + total - 4);
        off += total;
    }
    vmstream::crc32c(data) != before
}

/// A short stable fingerprint of some bytes.
pub fn digest(b: &[u8]) -> String {
    format!("{}b/{:08x}", b.len(), vmstream::crc32c(b))
}

/// The canonical binary form of a value, encoded with a fresh name table: two
/// values are the same (bit-exact, NaN payloads included) exactly when their
/// canonical forms are equal.
pub fn canon(v: &Value) -> Vec<u8> {
    let mut names = NameTable::new();
    let mut out = Vec::new();
    vmstream::value::encode(v, &mut names, &mut out);
    for n in names.take_unpublished() {
        out.extend_from_slice(&(n.len() as u64).to_le_bytes());
        out.extend_from_slice(n.as_bytes());
    }
    out
}

/// One line per record, the same for every reader. Page data and raw bodies
/// are fingerprinted rather than printed.
pub fn render(item: &Item<'_>) -> String {
    let body = match &item.record {
        Record::Info(v) => format!("info {}", digest(&canon(v))),
        Record::Names { first, count } => format!("names {first}+{count}"),
        Record::Schema(s) => format!(
            "schema {:?} v{} {}",
            s.type_name,
            s.version,
            digest(&canon(&s.schema))
        ),
        Record::Device(d) => format!(
            "device {:?} {} {:?} v{} {}",
            d.name,
            d.instance_id,
            d.type_name,
            d.version,
            digest(&canon(&d.value))
        ),
        Record::RamBlocks(b) => format!("blocks {b:?}"),
        Record::Pages(b) => {
            let pages: Vec<String> = b
                .pages()
                .map(|p| {
                    format!(
                        "{}:{}",
                        p.index,
                        p.data.map_or_else(|| "zero".to_owned(), digest)
                    )
                })
                .collect();
            format!(
                "pages block {} epoch {} comp {} stored {} raw {} [{}]",
                b.block,
                b.epoch,
                b.compression,
                b.stored_len,
                b.data_len(),
                pages.join(" ")
            )
        }
        Record::Epoch(e) => format!("epoch {e}"),
        Record::Index(i) => format!("index {i:?}"),
        Record::End(e) => format!("end {e:?}"),
        Record::Other(r) => format!(
            "other {:#06x} flags {:#x} {}",
            r.kind.0,
            r.flags,
            digest(r.body)
        ),
        other => format!("{other:?}"),
    };
    format!(
        "#{} @{:#x} kind {:#06x} framed {} {}",
        item.index, item.offset, item.kind.0, item.framed_len, body
    )
}

/// Checks what holds for every record a reader hands out, whatever the input.
pub fn check_item(item: &Item<'_>, expect_index: u64, expect_offset: u64, page_size: u32) {
    assert_eq!(item.index, expect_index, "record index");
    assert_eq!(item.offset, expect_offset, "record offset");
    assert_eq!(item.framed_len % 8, 0, "framed length is a multiple of 8");
    assert!(
        item.framed_len >= 16,
        "framed length includes header and CRC"
    );
    match &item.record {
        Record::Pages(b) => {
            assert!(!b.is_empty() && b.len() <= 65_536, "batch size {}", b.len());
            let mut data_pages = 0usize;
            let mut last = None;
            for p in b.pages() {
                if let Some(d) = p.data {
                    assert_eq!(d.len(), page_size as usize, "data page length");
                    data_pages += 1;
                }
                assert!(last.is_none_or(|l| p.index > l), "page indexes rise");
                last = Some(p.index);
            }
            assert_eq!(
                b.data_len(),
                data_pages * page_size as usize,
                "batch data length"
            );
        }
        Record::End(e) => assert_eq!(e.records, item.index, "end record count"),
        _ => {}
    }
}

/// How a read ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The stream was read to its `end` record with nothing after it.
    Ok,
    /// The header could not be read.
    HeaderError(ErrorKind),
    /// A record (or the data after `end`) failed, at this offset.
    Error(ErrorKind, u64),
}

/// The records a reader read and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Rendered records, in order.
    pub records: Vec<String>,
    /// How the read ended.
    pub end: End,
    /// The full text of the error, if any (messages differ between reader
    /// kinds, so only readers of one kind compare it).
    pub message: Option<String>,
}

impl Outcome {
    fn ok(records: Vec<String>) -> Outcome {
        Outcome {
            records,
            end: End::Ok,
            message: None,
        }
    }

    fn failed(records: Vec<String>, end: End, e: &Error) -> Outcome {
        Outcome {
            records,
            end,
            message: Some(e.to_string()),
        }
    }

    fn trailing(records: Vec<String>, offset: u64) -> Outcome {
        Outcome {
            records,
            end: End::Error(ErrorKind::Malformed, offset),
            message: Some("data after the end record".to_owned()),
        }
    }

    /// Asserts that two readers read the same records and ended the same way.
    /// Errors in the header compare by kind only: the readers look at a short
    /// header in different orders and so report different offsets.
    pub fn assert_agrees(&self, other: &Outcome, what: &str) {
        assert_eq!(self.records, other.records, "{what}: records differ");
        match (&self.end, &other.end) {
            (End::HeaderError(a), End::HeaderError(b)) => {
                assert_eq!(
                    a, b,
                    "{what}: header error kind differs ({:?} vs {:?})",
                    self.message, other.message
                )
            }
            (a, b) => assert_eq!(
                a, b,
                "{what}: end differs ({:?} vs {:?})",
                self.message, other.message
            ),
        }
    }
}

/// Every error a reader reports must say where it happened.
pub fn offset_of(e: &Error) -> u64 {
    match e.location().offset {
        Some(o) => o,
        None => panic!("error without an offset: {e}"),
    }
}

fn header_error(e: &Error) -> End {
    offset_of(e);
    End::HeaderError(e.kind())
}

/// Reads `data` with [`SliceReader`]; bytes after `end` are an error.
pub fn read_slice(data: &[u8], limits: Limits) -> Outcome {
    let mut records = Vec::new();
    let mut r = match SliceReader::new(data, limits) {
        Ok(r) => r,
        Err(e) => return Outcome::failed(records, header_error(&e), &e),
    };
    let page_size = r.state().header().page_size;
    let mut offset = r.state().offset();
    loop {
        match r.next() {
            Ok(Some(item)) => {
                check_item(&item, records.len() as u64, offset, page_size);
                offset += item.framed_len as u64;
                records.push(render(&item));
            }
            Ok(None) => break,
            Err(e) => {
                let end = End::Error(e.kind(), offset_of(&e));
                let again = r.next().expect_err("a failed reader stays failed");
                assert_eq!(again.kind(), ErrorKind::Usage, "poisoned reader: {again}");
                return Outcome::failed(records, end, &e);
            }
        }
    }
    assert!(r.state().ended());
    assert_eq!(r.state().offset(), offset);
    if r.trailing().is_empty() {
        assert_eq!(offset, data.len() as u64);
        Outcome::ok(records)
    } else {
        Outcome::trailing(records, offset)
    }
}

/// A reader that hands out at most `n` bytes per call.
pub struct Dribble<'a> {
    /// What is left.
    pub data: &'a [u8],
    /// Most bytes per read.
    pub n: usize,
}

impl Read for Dribble<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.n.min(buf.len()).min(self.data.len());
        buf[..k].copy_from_slice(&self.data[..k]);
        self.data = &self.data[k..];
        Ok(k)
    }
}

/// A reader that answers every third call with `Interrupted` (which readers
/// must retry), hands out at most `n` bytes per call, and fails for good once
/// `fail_at` bytes have been read.
pub struct Flaky<'a> {
    data: &'a [u8],
    pos: usize,
    n: usize,
    fail_at: usize,
    calls: u32,
}

impl<'a> Flaky<'a> {
    /// A reader over `data` failing at `fail_at`.
    pub fn new(data: &'a [u8], n: usize, fail_at: usize) -> Flaky<'a> {
        Flaky {
            data,
            pos: 0,
            n: n.max(1),
            fail_at,
            calls: 0,
        }
    }
}

impl Read for Flaky<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.calls += 1;
        if self.calls.is_multiple_of(3) {
            return Err(std::io::ErrorKind::Interrupted.into());
        }
        if self.pos >= self.fail_at {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "injected failure",
            ));
        }
        let end = self.data.len().min(self.fail_at).min(self.pos + self.n);
        let k = buf.len().min(end - self.pos);
        buf[..k].copy_from_slice(&self.data[self.pos..self.pos + k]);
        self.pos += k;
        Ok(k)
    }
}

/// Reads `data` with [`StreamReader`] over a [`Flaky`] reader that fails at
/// `fail_at`, and checks it against `expect` (what [`read_slice`] read): the
/// same records up to the failure; then either the same end or an I/O error,
/// which like every error must say where it happened.
pub fn check_stream_failing(
    data: &[u8],
    fail_at: usize,
    n: usize,
    limits: Limits,
    expect: &Outcome,
) {
    let got = read_stream_failing(data, fail_at, n, limits);
    assert!(
        expect.records.starts_with(&got.records),
        "records before an I/O failure differ from the slice reader's"
    );
    match got.end {
        End::HeaderError(ErrorKind::Io) => {}
        End::Error(ErrorKind::Io, at) => assert!(
            at <= fail_at as u64,
            "I/O error reported at {at}, failure injected at {fail_at}"
        ),
        _ => expect.assert_agrees(&got, "StreamReader over a failing reader"),
    }
}

fn read_stream_failing(data: &[u8], fail_at: usize, n: usize, limits: Limits) -> Outcome {
    let mut records = Vec::new();
    let mut r = match StreamReader::new(Flaky::new(data, n, fail_at), limits) {
        Ok(r) => r,
        Err(e) => return Outcome::failed(records, header_error(&e), &e),
    };
    loop {
        match r.next() {
            Ok(Some(item)) => records.push(render(&item)),
            Ok(None) => break,
            Err(e) => {
                let end = End::Error(e.kind(), offset_of(&e));
                return Outcome::failed(records, end, &e);
            }
        }
    }
    let offset = r.state().offset();
    match r.at_eof() {
        Ok(true) => Outcome::ok(records),
        Ok(false) => Outcome::trailing(records, offset),
        Err(e) => {
            let end = End::Error(e.kind(), offset_of(&e));
            Outcome::failed(records, end, &e)
        }
    }
}

/// Reads with [`StreamReader`] from any `Read`; bytes after `end` are an error.
pub fn read_stream<R: Read>(inner: R, limits: Limits) -> Outcome {
    let mut records = Vec::new();
    let mut r = match StreamReader::new(inner, limits) {
        Ok(r) => r,
        Err(e) => return Outcome::failed(records, header_error(&e), &e),
    };
    let page_size = r.header().page_size;
    let mut offset = r.state().offset();
    loop {
        match r.next() {
            Ok(Some(item)) => {
                check_item(&item, records.len() as u64, offset, page_size);
                offset += item.framed_len as u64;
                records.push(render(&item));
            }
            Ok(None) => break,
            Err(e) => {
                let end = End::Error(e.kind(), offset_of(&e));
                let again = r.next().expect_err("a failed reader stays failed");
                assert_eq!(again.kind(), ErrorKind::Usage, "poisoned reader: {again}");
                return Outcome::failed(records, end, &e);
            }
        }
    }
    assert!(r.state().ended());
    match r.at_eof() {
        Ok(true) => Outcome::ok(records),
        Ok(false) => Outcome::trailing(records, offset),
        Err(e) => panic!("reading from memory failed: {e}"),
    }
}

/// Feeds `data` to the push [`Decoder`] in chunks of the given sizes (cycled;
/// a size of 0 feeds an empty slice), then calls `finish`.
pub fn read_push(data: &[u8], sizes: &[usize], limits: Limits) -> Outcome {
    let mut d = Decoder::new(limits);
    let mut records = Vec::new();
    let mut page_size = 0;
    let mut offset = 0;
    let mut header_done = false;
    let fail = |d: &mut Decoder, records: Vec<String>, e: Error, header_done: bool| {
        let end = if header_done {
            End::Error(e.kind(), offset_of(&e))
        } else {
            header_error(&e)
        };
        let again = d.feed(&[0]).expect_err("a failed decoder stays failed");
        assert_eq!(again.kind(), ErrorKind::Usage, "poisoned decoder: {again}");
        Outcome::failed(records, end, &e)
    };
    let sizes = if sizes.iter().all(|&s| s == 0) {
        &[usize::MAX][..]
    } else {
        sizes
    };
    let mut pos = 0;
    for &n in sizes.iter().cycle() {
        if pos >= data.len() {
            break;
        }
        let mut chunk = &data[pos..pos.saturating_add(n).min(data.len())];
        pos += chunk.len();
        let mut idle = 0;
        loop {
            let buffered_before = d.buffered();
            let r = d.feed(chunk);
            let (used, ev) = match r {
                Ok((used, ev)) => (
                    used,
                    ev.map(|ev| match ev {
                        Event::Header(h) => Err(h),
                        Event::Record(item) => {
                            check_item(&item, records.len() as u64, offset, page_size);
                            Ok((render(&item), item.framed_len))
                        }
                        other => panic!("unexpected event {other:?}"),
                    }),
                ),
                Err(e) => return fail(&mut d, records, e, header_done),
            };
            assert!(
                used <= chunk.len(),
                "feed took {used} of {} bytes",
                chunk.len()
            );
            match ev {
                Some(Err(h)) => {
                    assert!(!header_done, "second header event");
                    header_done = true;
                    page_size = h.page_size;
                    offset = d
                        .state()
                        .map(|s| s.offset())
                        .expect("state after the header");
                    assert_eq!(offset, (buffered_before + used) as u64, "header length");
                }
                Some(Ok((line, framed))) => {
                    assert!(header_done, "record before the header");
                    offset += framed as u64;
                    records.push(line);
                }
                None => {}
            }
            chunk = &chunk[used..];
            if used == 0 && !chunk.is_empty() {
                idle += 1;
                assert!(idle < 3, "decoder makes no progress");
            } else {
                idle = 0;
            }
            if chunk.is_empty() {
                break;
            }
        }
    }
    match d.finish() {
        Ok(()) => {
            assert!(d.is_done());
            assert!(
                matches!(d.feed(&[]), Ok((0, None))),
                "an empty feed after the end"
            );
            assert_eq!(d.state().map(|s| s.offset()), Some(data.len() as u64));
            Outcome::ok(records)
        }
        Err(e) => {
            assert!(!d.is_done());
            let end = if header_done {
                End::Error(e.kind(), offset_of(&e))
            } else {
                header_error(&e)
            };
            Outcome::failed(records, end, &e)
        }
    }
}

/// Reads `data` with every reader without keeping anything, for measuring
/// what reading costs (`peak_alloc`): `SliceReader`, `StreamReader` over a
/// cursor, and the push `Decoder` fed `chunk` bytes at a time.
pub fn drain_all(data: &[u8], limits: Limits, chunk: usize) {
    if let Ok(mut r) = SliceReader::new(data, limits) {
        while let Ok(Some(_)) = r.next() {}
    }
    if let Ok(mut r) = StreamReader::new(std::io::Cursor::new(data), limits) {
        while let Ok(Some(_)) = r.next() {}
    }
    let mut d = Decoder::new(limits);
    for mut piece in data.chunks(chunk.max(1)) {
        while !piece.is_empty() {
            match d.feed(piece) {
                Ok((0, None)) | Err(_) => return,
                Ok((used, _)) => piece = &piece[used..],
            }
        }
    }
}
