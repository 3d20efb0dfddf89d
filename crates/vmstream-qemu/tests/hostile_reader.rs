//! Small hostile QEMU streams on the reading side (stream, vmdesc walk, input
//! buffers), built here byte by byte: every length, count and size the input
//! declares (in the stream or in its vmdesc JSON) is checked before it sizes
//! a buffer, a loop or a sum. Each must end in a clear
//! error that says where, quickly, in files (description read ahead) and in
//! pipes (any split), with the heap measured by a counting allocator.
//!
//! The tests run one at a time (see `serial`) because they measure the heap
//! of the whole process.

#![allow(unsafe_code)]
#![allow(clippy::unwrap_used)] // builders and drivers of known-good inputs

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Cursor, Read};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vmstream::{Error, ErrorKind, Limits, Value};
use vmstream_qemu::vmdesc::{self, Vmdesc};
use vmstream_qemu::{
    qemu_to_qemu, qemu_to_vmstream, read_qemu, read_trailer, vmstream_to_qemu, ConvertOptions,
    Event, Sink, Summary, VmstreamSink,
};

// ---------------------------------------------------------------------------
// A counting allocator.

struct CountingAlloc;

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

/// Serialises the tests of this file.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `f`; returns its result and the most heap bytes live during the call
/// beyond those live before it.
fn peak<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let r = f();
    (r, PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

const MIB: usize = 1 << 20;

/// What a rejected input may cost: the reader's first 1 MiB read buffer and
/// change, whatever the input declares and whatever the limits allow.
const SMALL: usize = 4 * MIB;

// ---------------------------------------------------------------------------
// Building streams.

fn be32(v: u32) -> [u8; 4] {
    v.to_be_bytes()
}

fn be64(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

/// A QEMU stream, record by record.
#[derive(Default)]
struct Qemu(Vec<u8>);

impl Qemu {
    fn new() -> Qemu {
        let mut b = b"QEVM".to_vec();
        b.extend(be32(3));
        Qemu(b)
    }

    fn bytes(&mut self, b: &[u8]) -> &mut Qemu {
        self.0.extend_from_slice(b);
        self
    }

    /// The configuration section with the target page bits.
    fn config(&mut self, page_bits: u32) -> &mut Qemu {
        let sub = b"configuration/target-page-bits";
        self.bytes(&[0x07]).bytes(&be32(2)).bytes(b"pc");
        self.bytes(&[0x05, sub.len() as u8]).bytes(sub);
        self.bytes(&be32(1)).bytes(&be32(page_bits))
    }

    /// A RAM section-start with a block list.
    fn ram_start(&mut self, blocks: &[(&str, u64)]) -> &mut Qemu {
        self.bytes(&[0x01])
            .bytes(&be32(0))
            .bytes(&[3])
            .bytes(b"ram");
        self.bytes(&be32(0)).bytes(&be32(4));
        let total: u64 = blocks.iter().map(|b| b.1).sum();
        self.bytes(&be64(total | 0x04));
        for (name, size) in blocks {
            self.bytes(&[name.len() as u8])
                .bytes(name.as_bytes())
                .bytes(&be64(*size));
        }
        self
    }

    /// A RAM page-carrying record header naming its block.
    fn page(&mut self, flags: u64, block: &str) -> &mut Qemu {
        self.bytes(&be64(flags))
            .bytes(&[block.len() as u8])
            .bytes(block.as_bytes())
    }

    /// A FULL device section.
    fn full(&mut self, id: u32, name: &str, body: &[u8], footer: bool) -> &mut Qemu {
        self.bytes(&[0x04]).bytes(&be32(id));
        self.bytes(&[name.len() as u8]).bytes(name.as_bytes());
        self.bytes(&be32(0)).bytes(&be32(1)).bytes(body);
        if footer {
            self.bytes(&[0x7e]).bytes(&be32(id));
        }
        self
    }

    /// EOF and the vmdesc trailer.
    fn end(&mut self, json: &str) -> Vec<u8> {
        self.bytes(&[0x00, 0x06])
            .bytes(&be32(json.len() as u32))
            .bytes(json.as_bytes());
        std::mem::take(&mut self.0)
    }
}

/// A vmdesc with one device `d` (instance 0, version 1) and these fields.
fn desc(fields: &str) -> String {
    format!(
        r#"{{"page_size": 4096, "devices": [{{"name": "d", "instance_id": 0, "vmsd_name": "d", "version": 1, "fields": [{fields}]}}]}}"#
    )
}

/// Offset of the body of the first FULL section of `d` in a stream without
/// configuration: header 8, section header 1 + 4 + 2 + 4 + 4.
const D_BODY: u64 = 8 + 15;

// ---------------------------------------------------------------------------
// Reading them.

/// A sink that keeps nothing.
struct Null;

impl Sink for Null {
    fn event(&mut self, _: &Event<'_>) -> vmstream::Result<()> {
        Ok(())
    }
}

/// A reader that hands out at most `n` bytes per call, like a pipe.
struct Trickle<'a>(&'a [u8], usize);

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.0.len().min(self.1).min(buf.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

fn opts(limits: Limits) -> ConvertOptions {
    ConvertOptions {
        limits,
        ..ConvertOptions::default()
    }
}

/// Reads `s` as a file is read (trailer read ahead) and as a pipe (7 bytes at
/// a time, trailer found at the end); both must give the same outcome within
/// `max_heap` bytes and a second. Returns that outcome.
fn read_both(s: &[u8], limits: Limits, max_heap: usize) -> vmstream::Result<Summary> {
    let t = Instant::now();
    let ((file, pipe), heap) = peak(|| {
        let mut o = opts(limits);
        o.vmdesc = read_trailer(&mut Cursor::new(s))
            .unwrap()
            .map(|json| (json, true));
        let file = read_qemu(s, &mut Null, &o);
        let pipe = read_qemu(Trickle(s, 7), &mut Null, &opts(limits));
        (file, pipe)
    });
    let took = t.elapsed();
    assert!(
        heap <= max_heap,
        "{heap} bytes of heap (at most {max_heap})"
    );
    assert!(took < Duration::from_secs(1), "took {took:?}");
    match (&file, &pipe) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.typed_devices, b.typed_devices);
            assert_eq!(a.raw_devices, b.raw_devices);
        }
        (Err(a), Err(b)) => {
            assert_eq!(a.kind(), b.kind(), "file: {a}\npipe: {b}");
            assert_eq!(a.message(), b.message(), "file: {a}\npipe: {b}");
            assert_eq!(a.location(), b.location(), "file: {a}\npipe: {b}");
        }
        _ => panic!("file: {file:?}\npipe: {pipe:?}"),
    }
    file
}

/// The error of reading `s`, checked to be of `kind`, to say `says`, and to
/// carry `offset`.
fn fails(s: &[u8], limits: Limits, kind: ErrorKind, says: &str, offset: u64) -> Error {
    let e = read_both(s, limits, SMALL).expect_err("a hostile stream is refused");
    assert_eq!(e.kind(), kind, "{e}");
    assert!(e.to_string().contains(says), "{e}");
    assert_eq!(e.location().offset, Some(offset), "{e}");
    assert!(!e.to_string().contains('\n'), "one line: {e}");
    e
}

/// Limits that allow what no default would: only the bytes present bound
/// what a reader may hold.
fn generous() -> Limits {
    Limits::default()
        .with_max_record_size(u32::MAX)
        .with_max_alloc(16 << 30)
}

// ---------------------------------------------------------------------------
// The vmdesc walk.

#[test]
fn zero_size_array_of_2_pow_60_is_refused() {
    let _s = serial();
    let json =
        desc(r#"{"name": "a", "type": "uint8", "size": 0, "array_len": 1152921504606846976}"#);
    let s = Qemu::new().full(0, "d", b"", false).end(&json);
    assert!(s.len() < 226, "{} bytes", s.len());
    for limits in [Limits::default(), generous()] {
        let e = fails(
            &s,
            limits,
            ErrorKind::Malformed,
            "1152921504606846976 elements of 0 bytes each",
            D_BODY,
        );
        assert_eq!(e.location().device.as_deref(), Some("d"), "{e}");
        assert!(e.to_string().contains("field a"), "{e}");
    }
    // With a footer the body is found anyway and kept as bytes, unchanged.
    let s = Qemu::new().full(0, "d", b"xyz", true).end(&json);
    let summary = read_both(&s, Limits::default(), SMALL).unwrap();
    assert_eq!(summary.raw_devices, ["d"]);
    let (out, _) = qemu_to_qemu(&s[..], Vec::new(), &ConvertOptions::default()).unwrap();
    assert!(out == s);
}

#[test]
fn array_counts_are_checked_against_the_bytes_present() {
    let _s = serial();
    let json = desc(r#"{"name": "a", "type": "uint8", "size": 1, "array_len": 1099511627776}"#);
    let s = Qemu::new().full(0, "d", &[0; 10], false).end(&json);
    let e = fails(
        &s,
        generous(),
        ErrorKind::Malformed,
        "1099511627776 elements of 1 bytes each do not fit the",
        D_BODY,
    );
    assert!(e.to_string().contains("field a"), "{e}");
    // size × count overflowing is the same error, not a wrapped product
    let json =
        desc(r#"{"name": "a", "type": "buffer", "size": 4294967296, "array_len": 4294967297}"#);
    let s = Qemu::new().full(0, "d", &[0; 10], false).end(&json);
    fails(
        &s,
        generous(),
        ErrorKind::Malformed,
        "do not fit the",
        D_BODY,
    );
}

#[test]
fn element_counts_that_overflow_are_refused() {
    let _s = serial();
    let json = desc(
        r#"{"name": "a", "type": "uint8", "size": 1, "array_len": 18446744073709551615},
           {"name": "a", "type": "uint8", "size": 1, "array_len": 2}"#,
    );
    let s = Qemu::new().full(0, "d", &[0; 3], false).end(&json);
    let trailer = vmdesc::find_trailer(&s).unwrap() as u64;
    fails(
        &s,
        Limits::default(),
        ErrorKind::Malformed,
        "number more than 2^64",
        trailer + 5,
    );
}

#[test]
fn decoded_values_are_charged_to_max_alloc() {
    let _s = serial();
    // 300 000 one-byte elements: 300 kB of body, some 10 MB as values.
    let n = 300_000;
    let json = desc(&format!(
        r#"{{"name": "a", "type": "uint8", "size": 1, "array_len": {n}}}"#
    ));
    let s = Qemu::new().full(0, "d", &vec![7; n], true).end(&json);
    let small = Limits::default().with_max_alloc(2 << 20);
    let summary = read_both(&s, small, SMALL + 2 * MIB).unwrap();
    assert_eq!(summary.raw_devices, ["d"], "kept as bytes within 2 MiB");
    let summary = read_both(&s, Limits::default(), 64 * MIB).unwrap();
    assert_eq!(summary.typed_devices, 1, "typed with the default limits");
    assert!(summary.raw_devices.is_empty());
}

/// The quickest of three round trips of a device with `n` distinct fields
/// and `n` entries of one name.
fn lookup_round_trip(n: usize) -> Duration {
    let mut fields = String::new();
    for i in 0..n {
        fields.push_str(&format!(
            r#"{{"name": "f{i}", "type": "uint8", "size": 1}}, {{"name": "r", "index": {i}, "type": "uint8", "size": 1}},"#
        ));
    }
    fields.push_str(r#"{"name": "last", "type": "uint8", "size": 1}"#);
    let json = desc(&fields);
    let body: Vec<u8> = (0..2 * n + 1).map(|i| i as u8).collect();
    let s = Qemu::new().full(0, "d", &body, false).end(&json);
    (0..3)
        .map(|_| {
            let t = Instant::now();
            let (vms, summary) =
                qemu_to_vmstream(&s[..], Vec::new(), &ConvertOptions::default()).unwrap();
            assert_eq!(summary.typed_devices, 1);
            let back = vmstream_to_qemu(&vms[..], Vec::new(), &ConvertOptions::default()).unwrap();
            assert!(back == s);
            t.elapsed()
        })
        .min()
        .unwrap()
}

#[test]
fn lookups_do_not_cost_fields_times_elements() {
    let _s = serial();
    // Four times the fields: about four times the work if lookups are
    // constant time, sixteen if each costs the number of fields. A ratio of
    // the same machine's times, so a loaded machine does not fail it.
    let (small, large) = (lookup_round_trip(12_500), lookup_round_trip(50_000));
    let ratio = large.as_secs_f64() / small.as_secs_f64().max(1e-6);
    assert!(
        ratio < 9.0,
        "4x the fields took {ratio:.1}x the time ({small:?} -> {large:?})"
    );
}

#[test]
fn vmdesc_memory_is_charged_while_parsing() {
    let _s = serial();
    let mut fields = String::new();
    for i in 0..20_000 {
        fields.push_str(&format!(
            r#"{{"name": "f{i}", "type": "uint8", "size": 1}},"#
        ));
    }
    fields.push_str(r#"{"name": "x", "type": "uint8", "size": 1}"#);
    let json = desc(&fields);
    let tight = Limits::default().with_max_alloc(2 * json.len() as u64 + 100_000);
    let (r, heap) = peak(|| Vmdesc::parse_limited(json.as_bytes(), &tight));
    let e = r.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::LimitExceeded, "{e}");
    assert!(e.to_string().contains("Limits::max_alloc"), "{e}");
    assert!(heap < 2 * json.len() + 200_000, "{heap} bytes of heap");
    let d = Vmdesc::parse_limited(json.as_bytes(), &Limits::default()).unwrap();
    assert_eq!(d.devices[0].vmsd.as_ref().unwrap().fields.len(), 20_001);
    // text longer than half of max_alloc is refused before parsing
    let e = Vmdesc::parse_limited(json.as_bytes(), &Limits::default().with_max_alloc(1000))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::LimitExceeded, "{e}");
}

#[test]
fn deep_json_is_refused() {
    let _s = serial();
    // descriptions nested deeper than Limits::max_depth
    let mut fields = String::new();
    for _ in 0..20 {
        fields.push_str(
            r#"{"name": "s", "type": "struct", "size": 1, "struct": {"vmsd_name": "s", "version": 1, "fields": ["#,
        );
    }
    fields.push_str(r#"{"name": "x", "type": "uint8", "size": 1}"#);
    fields.push_str(&"]}}".repeat(20));
    let s = Qemu::new().full(0, "d", &[0], false).end(&desc(&fields));
    let json_at = vmdesc::find_trailer(&s).unwrap() as u64 + 5;
    let e = fails(
        &s,
        Limits::default().with_max_depth(16),
        ErrorKind::LimitExceeded,
        "nest more than 16 levels",
        json_at,
    );
    assert!(e.to_string().contains("device entry 0"), "{e}");
    assert!(
        e.location().field.as_deref().unwrap().starts_with("s.s.s"),
        "{e}"
    );
    // JSON nested 100 000 levels deep where a description is expected
    for inner in ["[".repeat(100_000), r#"{"a":"#.repeat(100_000)] {
        let fields = format!(
            r#"{{"name": "s", "type": "struct", "size": 1, "struct": {{"vmsd_name": "s", "version": 1, "fields": [{inner}"#
        );
        let s = Qemu::new().full(0, "d", &[0], false).end(&desc(&fields));
        let json_at = vmdesc::find_trailer(&s).unwrap() as u64 + 5;
        fails(
            &s,
            Limits::default(),
            ErrorKind::Malformed,
            "vmdesc: device entry 0",
            json_at,
        );
    }
    // descriptions nested until serde_json's recursion limit (128) stops them
    let open = r#"{"name": "s", "type": "struct", "size": 1, "struct": {"vmsd_name": "s", "version": 1, "fields": ["#;
    let s = Qemu::new()
        .full(0, "d", &[0], false)
        .end(&desc(&open.repeat(10_000)));
    let json_at = vmdesc::find_trailer(&s).unwrap() as u64 + 5;
    fails(
        &s,
        Limits::default(),
        ErrorKind::Malformed,
        "recursion limit exceeded",
        json_at,
    );
    // ... and where none is: skipped without recursion, within the text's size
    let junk = format!(r#"{}0{}"#, "[".repeat(100_000), "]".repeat(100_000));
    let json = format!(r#"{{"junk": {junk}, "page_size": 4096, "devices": []}}"#);
    let (d, heap) = peak(|| Vmdesc::parse_limited(json.as_bytes(), &Limits::default()));
    assert!(d.unwrap().devices.is_empty());
    assert!(heap < 2 * json.len(), "{heap} bytes of heap");
}

#[test]
fn subsection_and_field_names_that_clash_are_not_typed() {
    let _s = serial();
    let json = r#"{"page_size": 4096, "devices": [{"name": "d", "instance_id": 0, "vmsd_name": "d", "version": 1,
        "fields": [{"name": "x", "type": "uint8", "size": 1}],
        "subsections": [{"vmsd_name": "x", "version": 1, "fields": []}]}]}"#;
    let mut body = vec![1, 5, 1, b'x'];
    body.extend(be32(1));
    let s = Qemu::new().full(0, "d", &body, true).end(json);
    let summary = read_both(&s, Limits::default(), SMALL).unwrap();
    assert_eq!(summary.raw_devices, ["d"]);
    // a subsection name a header cannot carry
    let long = "n".repeat(256);
    let json = format!(
        r#"{{"page_size": 4096, "devices": [{{"name": "d", "instance_id": 0, "vmsd_name": "d", "version": 1,
        "fields": [], "subsections": [{{"vmsd_name": "{long}", "version": 1, "fields": []}}]}}]}}"#
    );
    let e = Vmdesc::parse_limited(json.as_bytes(), &Limits::default()).unwrap_err();
    assert!(e.to_string().contains("at most 255"), "{e}");
}

#[test]
fn encoding_through_a_hostile_description_is_bounded() {
    let _s = serial();
    let d = Vmdesc::parse(
        desc(r#"{"name": "a", "type": "buffer", "size": 0, "array_len": 1152921504606846976}"#)
            .as_bytes(),
        64,
    )
    .unwrap();
    let obj = d.devices[0].vmsd.as_ref().unwrap();
    let v = Value::Struct(vec![("a".into(), Value::Seq(vec![Value::Bytes(vec![])]))]);
    let mut out = Vec::new();
    let e = vmdesc::encode(obj, &v, &mut out).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Usage, "{e}");
    assert!(out.is_empty());
    // more elements than described are refused rather than dropped
    let d = Vmdesc::parse(
        desc(r#"{"name": "a", "type": "uint8", "size": 1, "array_len": 2}"#).as_bytes(),
        64,
    )
    .unwrap();
    let obj = d.devices[0].vmsd.as_ref().unwrap();
    let three = Value::Struct(vec![(
        "a".into(),
        Value::Seq(vec![Value::U8(1), Value::U8(2), Value::U8(3)]),
    )]);
    let e = vmdesc::encode(obj, &three, &mut Vec::new()).unwrap_err();
    assert!(e.to_string().contains("sequence has 3 elements"), "{e}");
}

// ---------------------------------------------------------------------------
// Lengths that size buffers before the bytes arrive.

#[test]
fn page_sizes_are_bounded_before_a_page_is_read() {
    let _s = serial();
    let stream = |bits: u32, block: u64| {
        let mut q = Qemu::new();
        q.config(bits).ram_start(&[("pc.ram", block)]);
        q.page(0x08, "pc.ram").bytes(&[0; 16]);
        std::mem::take(&mut q.0)
    };
    // 1 GiB pages in 126 bytes: not a QEMU target page size, whatever the limits
    let s = stream(30, 1 << 30);
    assert!(s.len() <= 130, "{} bytes", s.len());
    for limits in [Limits::default(), generous()] {
        fails(
            &s,
            limits,
            ErrorKind::Malformed,
            "target page bits 30 out of range",
            8 + 7, // the page bits subsection, after the machine name
        );
    }
    // a QEMU page size, but larger than a record may be
    fails(
        &stream(16, 1 << 16),
        Limits::default().with_max_record_size(32 << 10),
        ErrorKind::LimitExceeded,
        "target page size of 65536 bytes",
        8 + 7,
    );
    // a page that is not all there: the buffer grows only with what arrives
    let e = read_both(&stream(16, 1 << 16), Limits::default(), SMALL).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Malformed, "{e}");
    assert!(e.to_string().contains("truncated"), "{e}");
}

#[test]
fn huge_compressed_page_lengths_are_refused() {
    let _s = serial();
    let record = |len: u32| {
        let mut q = Qemu::new();
        q.config(16).ram_start(&[("pc.ram", 1 << 16)]);
        q.page(0x100, "pc.ram").bytes(&be32(len)).bytes(&[0; 16]);
        std::mem::take(&mut q.0)
    };
    // header 8, configuration 47, RAM section 17 + block list 23
    let at = 8 + 47 + 17 + 23;
    // 2 GiB declared in 130 bytes
    for limits in [Limits::default(), generous()] {
        fails(
            &record(2 << 30),
            limits,
            ErrorKind::Malformed,
            "compressed page of 2147483648 bytes is larger than any page compresses to",
            at,
        );
    }
    // beyond max_record_size
    fails(
        &record(100_000),
        Limits::default().with_max_record_size(65_536),
        ErrorKind::LimitExceeded,
        "compressed page of 100000 bytes exceeds Limits::max_record_size",
        at,
    );
}

#[test]
fn huge_vmdesc_trailer_length_is_refused_and_never_sized() {
    let _s = serial();
    let mut s = Qemu::new().bytes(&[0x00, 0x06]).0.clone();
    s.extend(be32(256 << 20));
    s.push(b'{');
    assert_eq!(s.len(), 15);
    fails(
        &s,
        Limits::default(),
        ErrorKind::LimitExceeded,
        "vmdesc of 268435456 bytes",
        9,
    );
    // allowed by the limits, the bytes must still arrive first
    let e = read_both(&s, generous(), SMALL).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Malformed, "{e}");
    assert!(e.to_string().contains("truncated"), "{e}");
}

#[test]
fn declared_device_sizes_never_size_a_buffer() {
    let _s = serial();
    // a legacy device of 4 GiB - 1 bytes, with 3 present
    let json =
        r#"{"page_size": 4096, "devices": [{"name": "d", "instance_id": 0, "size": 4294967295}]}"#;
    let s = Qemu::new().full(0, "d", b"abc", false).end(json);
    fails(
        &s,
        Limits::default(),
        ErrorKind::LimitExceeded,
        "device body of 4294967295 bytes exceeds Limits::max_record_size",
        8,
    );
    let e = read_both(&s, generous(), SMALL).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Malformed, "{e}");
    // a typed device whose description predicts 1 TiB
    let json = desc(r#"{"name": "a", "type": "buffer", "size": 1099511627776}"#);
    let s = Qemu::new().full(0, "d", b"abc", false).end(&json);
    let e = read_both(&s, generous(), SMALL).unwrap_err();
    assert!(
        e.to_string().contains("does not describe this section"),
        "{e}"
    );
}

#[test]
fn sections_and_packages_are_bounded() {
    let _s = serial();
    let mut q = Qemu::new();
    for id in 0..5 {
        q.full(id, &format!("d{id}"), b"", true);
    }
    let s = q.bytes(&[0x00]).0.clone();
    let limits = Limits::default().with_max_names(4);
    let at = 8 + 4 * (1 + 4 + 3 + 8 + 5);
    fails(
        &s,
        limits,
        ErrorKind::LimitExceeded,
        "more than 4 sections",
        at,
    );
    // RAM blocks, by their own limit
    let names: Vec<String> = (0..5).map(|i| format!("b{i}")).collect();
    let blocks: Vec<(&str, u64)> = names.iter().map(|n| (n.as_str(), 4096)).collect();
    let s = Qemu::new().ram_start(&blocks).bytes(&[0; 8]).0.clone();
    let at = 8 + 17 + 8 + 4 * (1 + 2 + 8);
    fails(
        &s,
        Limits::default().with_max_ram_blocks(4),
        ErrorKind::LimitExceeded,
        "more than 4 RAM blocks",
        at,
    );
    // a postcopy package that claims to end beyond the one holding it
    let mut q = Qemu::new();
    q.bytes(&[0x08])
        .bytes(&7u16.to_be_bytes())
        .bytes(&4u16.to_be_bytes());
    q.bytes(&be32(9));
    q.bytes(&[0x08])
        .bytes(&7u16.to_be_bytes())
        .bytes(&4u16.to_be_bytes());
    q.bytes(&be32(100));
    let s = q.bytes(&[0x00]).0.clone();
    fails(
        &s,
        Limits::default(),
        ErrorKind::Malformed,
        "inside one ending at",
        17,
    );
}

#[test]
fn page_bits_from_a_converted_stream_are_checked() {
    let _s = serial();
    let mut raw = be32(2).to_vec();
    raw.extend(b"pc");
    let sub = b"configuration/target-page-bits";
    raw.extend([0x05, sub.len() as u8]);
    raw.extend(sub);
    raw.extend(be32(1));
    raw.extend(be32(40));
    let mut sink = VmstreamSink::new(Vec::new(), Default::default());
    sink.event(&Event::Header { version: 3 }).unwrap();
    let e = sink
        .event(&Event::Configuration {
            raw: &raw,
            machine: "pc",
        })
        .unwrap_err();
    assert!(e.to_string().contains("target page bits 40"), "{e}");
}

#[test]
fn xbzrle_runs_are_added_with_checks() {
    let _s = serial();
    let mut page = vec![0u8; 4096];
    // zero runs of 2^28 - 1 bytes, again and again
    let delta: Vec<u8> = [0xff, 0xff, 0xff, 0x7f].repeat(64);
    let e = vmstream_qemu::ram::xbzrle_decode(&delta, &mut page).unwrap_err();
    assert!(e.to_string().contains("past the page end"), "{e}");
    let e = vmstream_qemu::ram::page_update(0x40, &[1, 0, 0], 0).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Usage, "{e}");
}

// ---------------------------------------------------------------------------
// Iterative sections other than RAM.

/// A stream with one START section of `idstr` (id 1) whose body is `body`,
/// then EOF and an empty vmdesc; and the offset of that body.
fn iterative(idstr: &str, body: &[u8]) -> (Vec<u8>, u64) {
    let mut q = Qemu::new();
    q.bytes(&[0x01]).bytes(&be32(1));
    q.bytes(&[idstr.len() as u8]).bytes(idstr.as_bytes());
    q.bytes(&be32(0)).bytes(&be32(1)).bytes(body);
    let at = 8 + 14 + idstr.len() as u64;
    (q.end(r#"{"page_size": 4096, "devices": []}"#), at)
}

#[test]
fn iterative_sections_round_trip() {
    let _g = serial();
    let mut htab = be32(0).to_vec();
    htab.extend(be32(8));
    htab.extend([0, 1, 0, 2]);
    htab.extend([0x5a; 16]);
    htab.extend([0; 8]);
    let mut stattr = be64(0x3000 | 2).to_vec();
    stattr.extend(be64(2));
    stattr.extend([7, 9]);
    stattr.extend(be64(8));
    stattr.extend(be64(1));
    let mut block = be64((8 << 9) | 1 | 8).to_vec();
    block.extend(b"\x02hd");
    block.extend(be64(2));
    let bitmap = [
        0x10 | 0x08 | 0x04,
        1,
        b'n',
        1,
        b'b',
        0,
        0,
        1,
        0,
        0,
        0x20,
        0x01,
    ];
    for (idstr, body) in [
        ("spapr/htab", &htab[..]),
        ("s390-storage_attributes", &stattr[..]),
        ("block", &block[..]),
        ("dirty-bitmap", &bitmap[..]),
    ] {
        let (s, _) = iterative(idstr, body);
        read_both(&s, Limits::default(), SMALL).unwrap();
        let (back, _) = qemu_to_qemu(&s[..], Vec::new(), &opts(Limits::default())).unwrap();
        assert!(back == s, "{idstr}: QEMU -> QEMU differs");
        let (vms, _) = qemu_to_vmstream(&s[..], Vec::new(), &opts(Limits::default())).unwrap();
        let back = vmstream_to_qemu(&vms[..], Vec::new(), &opts(Limits::default())).unwrap();
        assert!(back == s, "{idstr}: through vmstream differs");
    }
}

#[test]
fn iterative_units_are_bounded_before_they_are_read() {
    let _g = serial();
    // 2^63 storage attributes in one unit.
    let mut b = be64(0x1000 | 2).to_vec();
    b.extend(be64(1 << 63));
    let (s, at) = iterative("s390-storage_attributes", &b);
    fails(
        &s,
        generous(),
        ErrorKind::LimitExceeded,
        "storage attributes",
        at,
    );
    // A 1 MiB block migration unit over a 64 KiB record limit.
    let mut b = be64(1).to_vec();
    b.extend(b"\x02hd");
    let (s, at) = iterative("block", &b);
    let small = Limits::default().with_max_record_size(64 << 10);
    fails(&s, small, ErrorKind::LimitExceeded, "max_record_size", at);
    // A dirty bitmap chunk QEMU would refuse.
    let mut b = vec![0x40];
    b.extend([0; 12]);
    b.extend(be64((10 << 20) + 1));
    let (s, at) = iterative("dirty-bitmap", &b);
    fails(
        &s,
        generous(),
        ErrorKind::Malformed,
        "dirty bitmap chunk",
        at,
    );
}

#[test]
fn iterative_sections_that_lie_are_refused_where_they_lie() {
    let _g = serial();
    // The source says its storage attributes are incomplete.
    let (s, at) = iterative("s390-storage_attributes", &be64(4));
    fails(
        &s,
        Limits::default(),
        ErrorKind::Malformed,
        "ERROR flag",
        at,
    );
    // Unknown block migration flags.
    let (s, at) = iterative("block", &be64(0x10));
    fails(
        &s,
        Limits::default(),
        ErrorKind::Malformed,
        "block migration record with flags 0x10",
        at,
    );
    // A hashed page table chunk of 65535 entries with none of them there.
    let mut b = be32(0).to_vec();
    b.extend(be32(0));
    b.extend([0xff, 0xff, 0, 0]);
    let (s, at) = iterative("spapr/htab", &b);
    fails(
        &s,
        Limits::default(),
        ErrorKind::Malformed,
        "truncated",
        at + 4,
    );
    // A section-part of an iterative section nobody opened.
    let mut q = Qemu::new();
    q.bytes(&[0x02]).bytes(&be32(9)).bytes(&be32(0));
    let s = q.end(r#"{"page_size": 4096, "devices": []}"#);
    fails(
        &s,
        Limits::default(),
        ErrorKind::Malformed,
        "no iterative section-start opened",
        8,
    );
    // An iterative handler that is not read.
    let (s, _) = iterative("vfio", &[0; 8]);
    let e = read_both(&s, Limits::default(), SMALL).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
}
