//! The writer: the sans-IO `FrameEncoder` gives exactly `StreamWriter`'s bytes
//! however its output is buffered; a writer whose `Write` failed stays failed;
//! refused calls leave no trace; and whatever the page size and limits, the
//! writer never produces a record a reader with the same limits refuses.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns build known-good fixtures

use std::io::Write;

use proptest::prelude::*;
use vmstream::record::RecordKind;
use vmstream::{
    Arch, Compression, Decoder, DeviceState, ErrorKind, Event, FrameEncoder, Frames, Header,
    Limits, RamBlock, Record, SliceReader, StreamKind, StreamWriter, Value, WriterOptions,
};
use vmstream_testkit::fill_pattern;

/// Page size of the scripted streams: small, so scripts stay fast.
const PS: usize = 512;

/// One writer call.
#[derive(Debug, Clone)]
enum Op {
    Info(Value),
    Device(String, Value),
    /// Block ids and sizes in pages (a size of `u64::MAX` is not a multiple of
    /// the page size: refused).
    Blocks(Vec<(u32, u64)>),
    /// A data page filled from `seed` (0: all zeros).
    Page(u32, u32, u64, u64),
    ZeroPage(u32, u32, u64),
    /// `n` pages from `first` with a stride, filled from `seed`.
    Pages(u32, u32, u64, u64, usize, u64),
    Flush,
    Epoch(u32),
    Raw(u16, bool, Vec<u8>),
}

fn page(seed: u64) -> Vec<u8> {
    let mut p = vec![0u8; PS];
    if seed != 0 {
        fill_pattern(&mut p, seed);
    }
    p
}

fn blocks(list: &[(u32, u64)]) -> Vec<RamBlock> {
    list.iter()
        .map(|&(id, pages)| RamBlock {
            id,
            name: format!("block{id}"),
            size: pages.saturating_mul(PS as u64) | u64::from(pages == u64::MAX),
            page_size: PS as u32,
            flags: 0,
        })
        .collect()
}

fn device(name: &str, value: &Value) -> DeviceState {
    DeviceState {
        name: name.to_owned(),
        instance_id: 0,
        type_name: "test".into(),
        version: 1,
        value: value.clone(),
    }
}

fn header() -> Header {
    let mut h = Header::new(StreamKind::Live, Arch::X86_64, PS as u32);
    h.writer = "writer tests".into();
    h
}

/// Pages of one `Op::Pages`: indexes and data.
fn page_list(first: u64, stride: u64, n: usize, seed: u64) -> Vec<(u64, Vec<u8>)> {
    (0..n as u64)
        .map(|i| {
            let s = if seed == 0 { 0 } else { seed + i };
            (first + i * stride, page(s))
        })
        .collect()
}

fn apply_writer<W: Write>(w: &mut StreamWriter<W>, op: &Op) -> vmstream::Result<()> {
    match op {
        Op::Info(v) => w.write_info(v),
        Op::Device(n, v) => w.write_device(&device(n, v)),
        Op::Blocks(b) => w.write_ram_blocks(&blocks(b)),
        Op::Page(b, e, i, s) => w.write_page(*b, *e, *i, &page(*s)),
        Op::ZeroPage(b, e, i) => w.write_zero_page(*b, *e, *i),
        Op::Pages(b, e, first, stride, n, s) => {
            let list = page_list(*first, *stride, *n, *s);
            let refs: Vec<(u64, &[u8])> = list.iter().map(|(i, d)| (*i, &d[..])).collect();
            w.write_pages(*b, *e, &refs)
        }
        Op::Flush => w.flush_pages(),
        Op::Epoch(e) => w.write_epoch(*e),
        Op::Raw(k, o, body) => w.write_raw_record(RecordKind(*k), *o, body),
    }
}

/// Applies `op` to an encoder and hands its frames to `sink`.
fn apply_encoder(
    enc: &mut FrameEncoder,
    op: &Op,
    sink: &mut dyn FnMut(Frames<'_>),
) -> vmstream::Result<()> {
    let frames = match op {
        Op::Info(v) => enc.info(v)?,
        Op::Device(n, v) => enc.device(&device(n, v))?,
        Op::Blocks(b) => enc.ram_blocks(&blocks(b))?,
        Op::Page(b, e, i, s) => enc.page(*b, *e, *i, &page(*s))?,
        Op::ZeroPage(b, e, i) => enc.zero_page(*b, *e, *i)?,
        Op::Pages(b, e, first, stride, n, s) => {
            let list = page_list(*first, *stride, *n, *s);
            let refs: Vec<(u64, &[u8])> = list.iter().map(|(i, d)| (*i, &d[..])).collect();
            let frames = enc.pages(*b, *e, &refs)?;
            sink(frames);
            return Ok(());
        }
        Op::Flush => enc.flush_pages()?,
        Op::Epoch(e) => enc.epoch(*e)?,
        Op::Raw(k, o, body) => enc.raw_record(RecordKind(*k), *o, body)?,
    };
    sink(frames);
    Ok(())
}

/// Runs a script through a `StreamWriter` over a `Vec`: the bytes, and each
/// call's result (error kinds).
fn write_script(options: WriterOptions, ops: &[Op]) -> (Vec<u8>, Vec<Result<(), ErrorKind>>) {
    let mut w = StreamWriter::new(Vec::new(), header(), options).unwrap();
    let results = ops
        .iter()
        .map(|op| apply_writer(&mut w, op).map_err(|e| e.kind()))
        .collect();
    (w.finish().unwrap(), results)
}

fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        any::<u32>().prop_map(Value::U32),
        any::<i8>().prop_map(Value::I8),
        proptest::collection::vec(any::<u8>(), 0..24).prop_map(Value::Bytes),
        "[a-z]{0,6}".prop_map(Value::String),
        Just(Value::Unit),
        Just(Value::Option(None)),
    ];
    leaf.prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Seq),
            proptest::collection::btree_map("[a-f]{1,3}", inner.clone(), 0..5)
                .prop_map(|m| Value::Struct(m.into_iter().collect())),
            inner.clone().prop_map(|v| Value::Option(Some(Box::new(v)))),
            ("[A-C][a-z]{0,3}", inner.clone()).prop_map(|(n, v)| Value::Enum(n, Box::new(v))),
            proptest::collection::vec((inner.clone(), inner), 0..3).prop_map(Value::Map),
        ]
    })
}

/// Scripts that are mostly valid: blocks 0..3 of 16 pages, epochs 0..4,
/// with some calls the writer refuses (undefined blocks, pages beyond a
/// block, falling epochs, known kinds as extensions, a second info).
fn arb_op() -> impl Strategy<Value = Op> {
    let block = 0u32..4;
    let epoch = 0u32..5;
    let index = 0u64..18;
    let seed = prop_oneof![Just(0u64), 1u64..1000];
    prop_oneof![
        1 => arb_value().prop_map(Op::Info),
        3 => ("[a-z]{1,8}", arb_value()).prop_map(|(n, v)| Op::Device(n, v)),
        2 => proptest::collection::vec(
            (0u32..4, prop_oneof![4 => Just(16u64), 1 => Just(u64::MAX)]),
            0..3
        )
        .prop_map(Op::Blocks),
        8 => (block.clone(), epoch.clone(), index.clone(), seed.clone())
            .prop_map(|(b, e, i, s)| Op::Page(b, e, i, s)),
        2 => (block.clone(), epoch.clone(), index.clone()).prop_map(|(b, e, i)| Op::ZeroPage(b, e, i)),
        3 => (block, epoch.clone(), index, 0u64..3, 0usize..9, seed)
            .prop_map(|(b, e, f, st, n, s)| Op::Pages(b, e, f, st, n, s)),
        1 => Just(Op::Flush),
        2 => epoch.prop_map(Op::Epoch),
        // Extensions are optional (a mandatory one ends what a reader reads);
        // kinds 0x0100..=0x01ff only go in streams with qemu-framing (refused here).
        1 => (prop_oneof![Just(4u16), Just(0x4242), Just(0x300), Just(0x100)],
              proptest::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(k, b)| Op::Raw(k, true, b)),
    ]
}

fn arb_options() -> impl Strategy<Value = WriterOptions> {
    (
        prop_oneof![
            Just(Compression::None),
            Just(Compression::Lz4),
            Just(Compression::Zstd(1))
        ],
        any::<bool>(),
        any::<bool>(),
        1u32..6,
    )
        .prop_map(|(c, z, i, b)| {
            WriterOptions::default()
                .with_compression(c)
                .with_zero_pages(z)
                .with_index(i)
                .with_batch_pages(b)
        })
}

/// Reads a whole stream with `limits`; the records rendered briefly.
fn read_all(bytes: &[u8], limits: Limits) -> vmstream::Result<Vec<String>> {
    let mut r = SliceReader::new(bytes, limits)?;
    let mut out = Vec::new();
    while let Some(item) = r.next()? {
        out.push(format!("{:?} @{}", item.kind, item.offset));
    }
    assert!(r.trailing().is_empty());
    Ok(out)
}

/// A `Write` that fails on its `fail_at`-th call (counting from 0) and takes
/// at most `max` bytes per call before that.
#[derive(Debug)]
struct Flaky {
    out: Vec<u8>,
    calls: usize,
    fail_at: usize,
    max: usize,
}

impl Write for Flaky {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let call = self.calls;
        self.calls += 1;
        if call == self.fail_at {
            return Err(std::io::Error::other("disk on fire"));
        }
        let n = buf.len().min(self.max);
        self.out.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// The encoder's frames, appended to one small buffer per call or cut into
    /// small sends through a bounded window, are exactly the writer's bytes.
    #[test]
    fn encoder_gives_the_writers_bytes(
        options in arb_options(),
        ops in proptest::collection::vec(arb_op(), 0..40),
        window in 1usize..300,
    ) {
        let (written, results) = write_script(options, &ops);

        let mut enc = FrameEncoder::new(header(), options).unwrap();
        let mut per_call: Vec<Vec<u8>> = vec![enc.header_bytes().to_vec()];
        // A non-blocking socket that takes at most `window` bytes per send.
        let mut wire: Vec<u8> = enc.header_bytes().to_vec();
        let mut expect_offset = enc.offset();
        for (op, want) in ops.iter().zip(&results) {
            let mut sink = |f: Frames<'_>| {
                assert_eq!(f.offset(), expect_offset, "frames start where the last ended");
                let buf = f.to_vec();
                assert_eq!(buf.len(), f.len());
                assert_eq!(f.is_empty(), buf.is_empty());
                expect_offset += buf.len() as u64;
                per_call.push(buf);
                let r: Result<(), ()> = f.try_for_each(|s| {
                    for piece in s.chunks(window) {
                        wire.extend_from_slice(piece);
                    }
                    Ok(())
                });
                r.unwrap();
            };
            let got = apply_encoder(&mut enc, op, &mut sink).map_err(|e| e.kind());
            prop_assert_eq!(&got, want, "{:?}", op);
            prop_assert_eq!(enc.offset(), expect_offset);
        }
        let f = enc.finish().unwrap();
        let mut last = Vec::new();
        f.append_to(&mut last);
        wire.extend_from_slice(&last);
        per_call.push(last);
        prop_assert!(enc.is_finished());
        prop_assert_eq!(per_call.concat(), written.clone());
        prop_assert_eq!(wire, written.clone());
        prop_assert_eq!(enc.offset(), written.len() as u64);
        // and what the writer wrote reads back with the limits it was written for
        read_all(&written, options.limits).unwrap();
    }

    /// A refused call leaves no trace: the stream is the one written without it.
    #[test]
    fn refused_calls_leave_no_trace(
        options in arb_options(),
        ops in proptest::collection::vec(arb_op(), 0..40),
    ) {
        let (written, results) = write_script(options, &ops);
        let accepted: Vec<Op> = ops
            .iter()
            .zip(&results)
            .filter(|(_, r)| r.is_ok())
            .map(|(op, _)| op.clone())
            .collect();
        for (op, r) in ops.iter().zip(&results) {
            if let Err(kind) = r {
                prop_assert!(
                    matches!(kind, ErrorKind::Usage | ErrorKind::LimitExceeded),
                    "{:?} refused as {:?}", op, kind
                );
            }
        }
        let (again, results) = write_script(options, &accepted);
        prop_assert!(results.iter().all(Result::is_ok));
        prop_assert_eq!(again, written);
    }

    /// A writer whose `Write` fails, at any call, and whether or not the
    /// `Write` takes whole buffers, stays failed: every later call is an error
    /// saying so, and what reached the `Write` is a prefix of the stream.
    #[test]
    fn failed_write_poisons_the_writer(
        options in arb_options(),
        ops in proptest::collection::vec(arb_op(), 1..30),
        max in prop_oneof![Just(usize::MAX), 1usize..700],
    ) {
        let (good, _) = write_script(options, &ops);
        // How many `write` calls the whole stream takes.
        let mut probe = Flaky { out: Vec::new(), calls: 0, fail_at: usize::MAX, max };
        {
            let mut w = StreamWriter::new(&mut probe, header(), options).unwrap();
            for op in &ops {
                let _ = apply_writer(&mut w, op);
            }
            w.finish().unwrap();
        }
        prop_assert_eq!(&probe.out, &good);
        for fail_at in 0..probe.calls {
            let mut sink = Flaky { out: Vec::new(), calls: 0, fail_at, max };
            let mut failed = false;
            match StreamWriter::new(&mut sink, header(), options) {
                Err(e) => {
                    prop_assert_eq!(e.kind(), ErrorKind::Io);
                    prop_assert_eq!(e.location().offset, Some(0));
                }
                Ok(mut w) => {
                    for op in &ops {
                        match apply_writer(&mut w, op) {
                            Err(e) if !failed && e.kind() == ErrorKind::Io => failed = true,
                            Err(e) if failed => {
                                prop_assert_eq!(e.kind(), ErrorKind::Usage);
                                prop_assert!(e.message().contains("failed earlier"), "{}", e);
                                prop_assert!(e.message().contains("disk on fire"), "{}", e);
                            }
                            r => prop_assert!(!failed, "call after the failure: {:?}", r),
                        }
                    }
                    let end = w.finish();
                    if failed {
                        let e = end.unwrap_err();
                        prop_assert_eq!(e.kind(), ErrorKind::Usage);
                    } else {
                        prop_assert_eq!(end.unwrap_err().kind(), ErrorKind::Io);
                    }
                }
            }
            prop_assert!(good.starts_with(&sink.out), "written bytes are a prefix");
            prop_assert!(sink.out.len() < good.len());
        }
    }
}

/// Feeds everything written to a push decoder with `limits`, holding at most
/// one record: streams of huge pages are checked without keeping them.
struct Check {
    d: Decoder,
    pages: u64,
    largest: usize,
    compressed: u64,
}

impl Check {
    fn new(limits: Limits) -> Check {
        Check {
            d: Decoder::new(limits),
            pages: 0,
            largest: 0,
            compressed: 0,
        }
    }
}

impl Write for Check {
    fn write(&mut self, mut buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len();
        while !buf.is_empty() {
            let (used, ev) = self
                .d
                .feed(buf)
                .unwrap_or_else(|e| panic!("reader refused: {e}"));
            if let Some(Event::Record(item)) = ev {
                self.largest = self.largest.max(item.framed_len);
                if let Record::Pages(b) = &item.record {
                    self.pages += b.len() as u64;
                    self.compressed += u64::from(b.compression != 0);
                }
            }
            buf = &buf[used..];
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writes `n` data pages of `page_size` (one batch through `write_page`, the
/// rest through `write_pages`) into a reader with `reader` limits.
fn pages_through_reader(
    page_size: u32,
    n: u64,
    options: WriterOptions,
    reader: Limits,
    fill: impl Fn(&mut [u8], u64),
) -> Check {
    let header = Header::new(StreamKind::Snapshot, Arch::X86_64, page_size);
    let mut w = StreamWriter::new(Check::new(reader), header, options).unwrap();
    w.write_ram_blocks(&[RamBlock {
        id: 7,
        name: "ram".into(),
        size: n * u64::from(page_size),
        page_size,
        flags: 0,
    }])
    .unwrap();
    let mut data = vec![0u8; page_size as usize];
    fill(&mut data, 0);
    w.write_page(7, 0, 0, &data).unwrap();
    if n > 1 {
        w.write_page(7, 0, 1, &data).unwrap();
    }
    fill(&mut data, 1);
    let rest: Vec<(u64, &[u8])> = (2..n).map(|i| (i, &data[..])).collect();
    w.write_pages(7, 0, &rest).unwrap();
    let check = w.finish().unwrap();
    check.d.finish().unwrap();
    assert_eq!(check.pages, n, "pages read back");
    check
}

/// Page sizes from 4 KiB to 1 GiB never make a record the default reader
/// refuses: batches shrink to what fits `Limits::max_record_size`, down to one
/// page when one page is larger.
#[test]
fn page_sizes_4k_to_1g_read_with_default_limits() {
    let lim = Limits::default();
    for shift in 12..=30u32 {
        let ps = 1u32 << shift;
        let enc = FrameEncoder::new(
            Header::new(StreamKind::Snapshot, Arch::X86_64, ps),
            WriterOptions::default(),
        )
        .unwrap();
        let batch = enc.batch_pages();
        assert!(batch >= 1);
        if shift <= 17 {
            assert_eq!(batch, 256, "{ps}: the default batch where it fits");
        }
        // Enough pages for two full batches and a partial one, at most 3 GiB
        // of stream; huge pages come from one buffer, so this takes ~2 pages of memory.
        let n = (u64::from(batch) * 2 + 1).min((3u64 << 30) >> shift).max(3);
        let c = pages_through_reader(ps, n, WriterOptions::default(), lim, |p, seed| {
            // distinct, not all zero, cheap to fill
            p.iter_mut()
                .step_by(4096)
                .for_each(|b| *b = 0x5a ^ seed as u8);
        });
        let max_body = lim.max_body(RecordKind::PAGES, ps) as usize;
        assert!(c.largest <= max_body + 12, "{ps}: record of {}", c.largest);
    }
}

/// With compression, a batch whose compressed data would exceed what the
/// reader takes, or inflate beyond `Limits::max_alloc`, is stored uncompressed.
#[test]
fn compression_falls_back_when_a_batch_would_not_fit() {
    let reader = Limits::default()
        .with_max_record_size(64 << 10)
        .with_max_alloc(200 << 10);
    for compression in [Compression::Lz4, Compression::Zstd(3)] {
        let options = WriterOptions::default()
            .with_compression(compression)
            .with_limits(reader);
        // Incompressible 128 KiB pages: one page per batch, which LZ4 makes
        // larger than one page with its overhead (zstd stores them in raw
        // blocks, which fit).
        let c = pages_through_reader(128 << 10, 5, options, reader, |p, seed| {
            fill_pattern(p, seed + 1)
        });
        if compression == Compression::Lz4 {
            assert_eq!(c.compressed, 0, "{compression:?}");
        }
        // Compressible ones stay compressed.
        let c = pages_through_reader(128 << 10, 5, options, reader, |p, seed| {
            p.fill(seed as u8 + 1)
        });
        assert!(c.compressed > 0, "{compression:?}");
        // 256 KiB pages inflate beyond max_alloc: stored as they are.
        let c = pages_through_reader(256 << 10, 3, options, reader, |p, seed| {
            p.fill(seed as u8 + 1)
        });
        assert_eq!(c.compressed, 0, "{compression:?}");
    }
}

#[test]
fn batch_pages_follow_the_record_limit() {
    let batch = |ps: u32, limits: Limits, want: u32| {
        let h = Header::new(StreamKind::Snapshot, Arch::X86_64, ps);
        let o = WriterOptions::default()
            .with_limits(limits)
            .with_batch_pages(65_536);
        let enc = FrameEncoder::new(h, o).unwrap();
        assert_eq!(enc.batch_pages(), want, "{ps} bytes, {limits:?}");
        let h = Header::new(StreamKind::Snapshot, Arch::X86_64, ps);
        let enc = FrameEncoder::new(h, WriterOptions::default().with_limits(limits)).unwrap();
        assert_eq!(enc.batch_pages(), want.min(256));
    };
    let lim = Limits::default();
    // (64 MiB - 87) / (2 MiB + 8): 31 pages, not the 32 that would need 64 MiB of data alone
    batch(2 << 20, lim, 31);
    batch(64 << 20, lim, 1);
    batch(1 << 30, lim, 1);
    batch(4096, lim, 16_352);
    batch(512, lim, 65_536);
    batch(4096, lim.with_max_record_size(4096 + 8 + 87), 1);
    batch(4096, lim.with_max_record_size(2 * 4104 + 87), 2);
}

#[test]
fn write_pages_splits_what_one_batch_cannot_hold() {
    // 65537 zero pages: two batches of at most 65536 entries.
    let h = Header::new(StreamKind::Snapshot, Arch::X86_64, 512);
    let mut w = StreamWriter::new(Vec::new(), h, WriterOptions::default()).unwrap();
    let n = 65_537u64;
    w.write_ram_blocks(&blocks_of(0, n * 512)).unwrap();
    let zero = [0u8; 512];
    let pages: Vec<(u64, &[u8])> = (0..n).map(|i| (i, &zero[..])).collect();
    w.write_pages(0, 0, &pages).unwrap();
    let bytes = w.finish().unwrap();
    let mut r = SliceReader::new(&bytes, Limits::default()).unwrap();
    let mut sizes = Vec::new();
    while let Some(item) = r.next().unwrap() {
        if let Record::Pages(b) = item.record {
            sizes.push(b.len());
        }
    }
    assert_eq!(sizes, [65_536, 1]);

    // Data pages against a 64 KiB record limit: (65536 - 87) / (512 + 8) = 125
    // pages of 512 bytes per batch.
    let lim = Limits::default().with_max_record_size(64 << 10);
    let h = Header::new(StreamKind::Snapshot, Arch::X86_64, 512);
    let mut w =
        StreamWriter::new(Vec::new(), h, WriterOptions::default().with_limits(lim)).unwrap();
    w.write_ram_blocks(&blocks_of(0, 300 * 512)).unwrap();
    let data = [0xa5u8; 512];
    let pages: Vec<(u64, &[u8])> = (0..300).map(|i| (i, &data[..])).collect();
    w.write_pages(0, 0, &pages).unwrap();
    let bytes = w.finish().unwrap();
    let mut r = SliceReader::new(&bytes, lim).unwrap();
    let mut sizes = Vec::new();
    while let Some(item) = r.next().unwrap() {
        if let Record::Pages(b) = item.record {
            sizes.push(b.len());
        }
    }
    assert_eq!(sizes, [125, 125, 50]);
}

fn blocks_of(id: u32, size: u64) -> Vec<RamBlock> {
    vec![RamBlock {
        id,
        name: "ram".into(),
        size,
        page_size: 4096,
        flags: 0,
    }]
}

/// A writer for limit tests: a RAM block 0 of 4 pages is defined.
fn limited(limits: Limits) -> StreamWriter<Vec<u8>> {
    let o = WriterOptions::default().with_limits(limits);
    StreamWriter::new(Vec::new(), header(), o).unwrap()
}

/// Writes `value` as a device with writer limits `limits`; with the writer's
/// limits lifted when `force`, so the reader's verdict can be seen.
fn device_stream(value: &Value, limits: Limits, force: bool) -> vmstream::Result<Vec<u8>> {
    let wl = if force {
        Limits::default()
            .with_max_alloc(u64::MAX)
            .with_max_depth(u32::MAX)
    } else {
        limits
    };
    let mut w = limited(wl);
    w.write_device(&device("dev", value))?;
    w.finish()
}

fn nest(depth: usize) -> Value {
    let mut v = Value::U8(1);
    for i in 0..depth {
        v = match i % 5 {
            0 => Value::Seq(vec![v]),
            1 => Value::Struct(vec![("f".into(), v)]),
            2 => Value::Option(Some(Box::new(v))),
            3 => Value::Enum("E".into(), Box::new(v)),
            _ => Value::Map(vec![(Value::Unit, v)]),
        };
    }
    v
}

#[test]
fn values_are_held_to_the_readers_depth_limit() {
    let lim = Limits::default().with_max_depth(12);
    let ok = device_stream(&nest(12), lim, false).unwrap();
    read_all(&ok, lim).unwrap();
    let mut w = limited(lim);
    let e = w.write_device(&device("dev", &nest(13))).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::LimitExceeded, "{e}");
    assert!(e.message().contains("max_depth"), "{e}");
    assert_eq!(e.location().device.as_deref(), Some("dev"));
    // what the writer refuses, the reader refuses
    let forced = device_stream(&nest(13), lim, true).unwrap();
    assert_eq!(
        read_all(&forced, lim).unwrap_err().kind(),
        ErrorKind::LimitExceeded
    );
    // a value far deeper than the limit is refused without walking all of it
    let mut w = limited(Limits::default());
    let e = w.write_info(&nest(2_000)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::LimitExceeded);
    w.write_info(&Value::Unit).unwrap();
}

/// The smallest `max_alloc` at which the writer takes `v`.
fn writer_alloc_threshold(v: &Value) -> u64 {
    let fits = |a: u64| {
        let lim = Limits::default().with_max_alloc(a);
        FrameEncoder::new(header(), WriterOptions::default().with_limits(lim))
            .unwrap()
            .info(v)
            .is_ok()
    };
    let (mut lo, mut hi) = (0u64, 1u64 << 40);
    assert!(fits(hi));
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if fits(mid) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// The schema `schema::of` infers is one the writer writes and readers read.
    #[test]
    fn inferred_schemas_are_written(v in arb_value()) {
        let mut w = limited(Limits::default());
        w.write_schema(&vmstream::record::SchemaRecord {
            type_name: "t".into(),
            version: 1,
            schema: vmstream::schema::of(&v),
        }).unwrap();
        prop_assert!(read_all(&w.finish().unwrap(), Limits::default()).is_ok());
    }

    /// The writer charges a value and its names exactly what the reader
    /// does: at the smallest `max_alloc` the writer accepts, the reader reads
    /// the stream; one byte less, and the reader refuses it too.
    #[test]
    fn value_cost_matches_the_reader(v in arb_value()) {
        let t = writer_alloc_threshold(&v);
        let lim = Limits::default().with_max_alloc(t);
        let mut w = StreamWriter::new(Vec::new(), header(), WriterOptions::default().with_limits(lim)).unwrap();
        w.write_info(&v).unwrap();
        let bytes = w.finish().unwrap();
        prop_assert!(read_all(&bytes, lim).is_ok());
        if t > 0 {
            let e = read_all(&bytes, lim.with_max_alloc(t - 1)).unwrap_err();
            prop_assert_eq!(e.kind(), ErrorKind::LimitExceeded);
        }
    }
}

/// A struct value with `n` fields named from `prefix`.
fn fields(prefix: &str, n: usize) -> Value {
    Value::Struct(
        (0..n)
            .map(|i| (format!("{prefix}{i}"), Value::Unit))
            .collect(),
    )
}

#[test]
fn names_are_held_to_the_readers_limits() {
    // max_names: a value that needs one name too many is refused, and its
    // names are not published by the next record.
    let lim = Limits::default().with_max_names(10);
    let mut w = limited(lim);
    w.write_device(&device("a", &fields("x", 6))).unwrap();
    let e = w.write_device(&device("b", &fields("y", 5))).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::LimitExceeded, "{e}");
    assert!(e.message().contains("max_names"), "{e}");
    w.write_device(&device("c", &fields("z", 4))).unwrap();
    let bytes = w.finish().unwrap();
    read_all(&bytes, lim).unwrap();
    let mut names = 0;
    let mut r = SliceReader::new(&bytes, lim).unwrap();
    while let Some(item) = r.next().unwrap() {
        if let Record::Names { count, .. } = item.record {
            names += count;
        }
    }
    assert_eq!(names, 10);

    // Names that do not fit one record go out in several, each within the
    // limit: 9 names of 102 bytes fit 1024 bytes with the first id and count.
    let lim = Limits::default().with_max_record_size(1024);
    let mut w = limited(lim);
    let long: Vec<(String, Value)> = (0..40)
        .map(|i| (format!("{i:02}{}", "n".repeat(100)), Value::U8(i)))
        .collect();
    w.write_device(&device("d", &Value::Struct(long))).unwrap();
    let bytes = w.finish().unwrap();
    let mut r = SliceReader::new(&bytes, lim).unwrap();
    let mut names = Vec::new();
    while let Some(item) = r.next().unwrap() {
        if let Record::Names { first, count } = item.record {
            names.push((first, count));
        }
    }
    assert_eq!(names, [(0, 9), (9, 9), (18, 9), (27, 9), (36, 4)]);
    let lim = Limits::default().with_max_record_size(512);
    let mut w = limited(lim);
    let long: Vec<(String, Value)> = (0..8)
        .map(|i| (format!("{i:02}{}", "n".repeat(100)), Value::U8(i)))
        .collect();
    w.write_info(&Value::Struct(long)).unwrap();
    let bytes = w.finish().unwrap();
    let mut r = SliceReader::new(&bytes, lim).unwrap();
    let mut names = Vec::new();
    while let Some(item) = r.next().unwrap() {
        if let Record::Names { first, count } = item.record {
            names.push((first, count));
        }
    }
    assert_eq!(names, [(0, 4), (4, 4)]);
    // A name that no names record can hold is refused.
    let mut w = limited(lim);
    let e = w.write_info(&fields(&"n".repeat(600), 1)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::LimitExceeded, "{e}");
}

#[test]
fn records_are_held_to_the_record_size_limit() {
    let lim = Limits::default().with_max_record_size(100);
    let mut w = limited(lim);
    w.write_raw_record(RecordKind(0x4242), true, &[7; 100])
        .unwrap();
    let e = w
        .write_raw_record(RecordKind(0x4242), true, &[7; 101])
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::LimitExceeded, "{e}");
    let e = w.write_info(&Value::Bytes(vec![1; 100])).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::LimitExceeded, "{e}");
    w.write_info(&Value::Bytes(vec![1; 97])).unwrap();
    let bytes = w.finish().unwrap();
    read_all(&bytes, lim).unwrap();
    // and the reader refuses a body of 101 bytes at that limit
    let mut w = limited(Limits::default());
    w.write_raw_record(RecordKind(0x4242), true, &[7; 101])
        .unwrap();
    let bytes = w.finish().unwrap();
    assert_eq!(
        read_all(&bytes, lim).unwrap_err().kind(),
        ErrorKind::LimitExceeded
    );
}

#[test]
fn ram_blocks_are_held_to_the_readers_limit() {
    let lim = Limits::default().with_max_ram_blocks(3);
    let mut w = limited(lim);
    w.write_ram_blocks(&blocks(&[(0, 1), (1, 1)])).unwrap();
    let e = w.write_ram_blocks(&blocks(&[(2, 1), (3, 1)])).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::LimitExceeded, "{e}");
    w.write_ram_blocks(&blocks(&[(2, 1)])).unwrap();
    read_all(&w.finish().unwrap(), lim).unwrap();
}

#[test]
fn an_index_too_large_for_the_limit_is_left_out() {
    let run = |max: u32| {
        let lim = Limits::default().with_max_record_size(max);
        let mut w = limited(lim);
        for i in 0..20 {
            w.write_device(&device(&format!("device-{i:02}"), &Value::Unit))
                .unwrap();
        }
        let bytes = w.finish().unwrap();
        let mut r = SliceReader::new(&bytes, lim).unwrap();
        let mut index = None;
        let mut end = None;
        while let Some(item) = r.next().unwrap() {
            match item.record {
                Record::Index(i) => index = Some(i.len()),
                Record::End(e) => end = Some(e),
                _ => {}
            }
        }
        (index, end.unwrap().index_offset.is_some())
    };
    // the count, and 20 entries of 30 bytes and a 9-byte name with its length
    assert_eq!(run(801), (Some(20), true));
    assert_eq!(run(800), (None, false));
}

#[test]
fn order_the_reader_checks_is_kept() {
    let mut w = limited(Limits::default());
    w.write_ram_blocks(&blocks(&[(0, 4)])).unwrap();
    w.write_page(0, 3, 0, &page(1)).unwrap();
    w.write_epoch(3).unwrap();
    // barriers rise, and pages come after their epoch's barrier
    assert_eq!(w.write_epoch(3).unwrap_err().kind(), ErrorKind::Usage);
    assert_eq!(w.write_epoch(2).unwrap_err().kind(), ErrorKind::Usage);
    assert_eq!(
        w.write_page(0, 3, 1, &page(1)).unwrap_err().kind(),
        ErrorKind::Usage
    );
    assert_eq!(
        w.write_zero_page(0, 1, 1).unwrap_err().kind(),
        ErrorKind::Usage
    );
    let p = page(2);
    assert_eq!(
        w.write_pages(0, 3, &[(1, &p[..])]).unwrap_err().kind(),
        ErrorKind::Usage
    );
    w.write_page(0, 4, 1, &page(1)).unwrap();
    // one info record, before any device
    w.write_info(&Value::Unit).unwrap();
    let e = w.write_info(&Value::Unit).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Usage);
    w.write_device(&device("d", &Value::Unit)).unwrap();
    // struct fields are unique, in small structs and large ones
    for n in [2, 40] {
        let mut f: Vec<(String, Value)> = (0..n).map(|i| (format!("f{i}"), Value::Unit)).collect();
        f.push(("f1".into(), Value::U8(1)));
        let v = Value::Seq(vec![Value::Struct(f)]);
        let e = w.write_device(&device("dup", &v)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Usage, "{e}");
        assert!(e.message().contains("\"f1\" appears twice"), "{e}");
        assert_eq!(e.location().field.as_deref(), Some("[0]"));
        assert_eq!(e.location().device.as_deref(), Some("dup"));
    }
    let bytes = w.finish().unwrap();
    read_all(&bytes, Limits::default()).unwrap();

    let mut w = limited(Limits::default());
    w.write_device(&device("d", &Value::Unit)).unwrap();
    let e = w.write_info(&Value::Unit).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Usage);
}

#[test]
fn ram_blocks_follow_the_format() {
    let block = |id: u32, name: &str, page_size: u32, flags: u32| RamBlock {
        id,
        name: name.into(),
        size: 4 * PS as u64,
        page_size,
        flags,
    };
    let mut w = limited(Limits::default());
    w.write_ram_blocks(&[block(0, "ram", 2 << 20, RamBlock::FLAG_READONLY)])
        .unwrap();
    for (bad, what) in [
        (vec![block(1, "ram", 4096, 0)], "name \"ram\" defined twice"),
        (
            vec![block(1, "a", 4096, 0), block(2, "a", 4096, 0)],
            "name \"a\" defined twice",
        ),
        (vec![block(1, "b", 3000, 0)], "page size 3000"),
        (vec![block(1, "b", 256, 0)], "page size 256"),
        (vec![block(1, "b", 2 << 30, 0)], "page size"),
        (vec![block(1, "b", 4096, 1 << 7)], "reserved flag bits 0x80"),
    ] {
        let e = w.write_ram_blocks(&bad).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Usage, "{e}");
        assert!(e.message().contains(what), "{e} lacks {what:?}");
    }
    // a block of size 0 is a block
    w.write_ram_blocks(&[RamBlock {
        size: 0,
        ..block(1, "", 512, RamBlock::FLAG_SHARED)
    }])
    .unwrap();
    read_all(&w.finish().unwrap(), Limits::default()).unwrap();
}

#[test]
fn qemu_records_need_qemu_framing() {
    let mut w = limited(Limits::default());
    let e = w
        .write_raw_record(RecordKind(0x0105), true, b"x")
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Usage);
    assert!(e.message().contains("qemu-framing"), "{e}");
    let mut h = header();
    h.optional_features |= vmstream::header::FEATURE_QEMU_FRAMING;
    let mut w = StreamWriter::new(Vec::new(), h, WriterOptions::default()).unwrap();
    let e = w
        .write_raw_record(RecordKind(0x0105), false, b"x")
        .unwrap_err();
    assert!(e.message().contains("must be optional"), "{e}");
    w.write_raw_record(RecordKind(0x0105), true, b"x").unwrap();
    read_all(&w.finish().unwrap(), Limits::default()).unwrap();
}

#[test]
fn schemas_follow_the_grammar() {
    let mut w = limited(Limits::default());
    let schema = |v: Value| vmstream::record::SchemaRecord {
        type_name: "t".into(),
        version: 1,
        schema: v,
    };
    let bad = Value::Enum(
        "struct".into(),
        Box::new(Value::Struct(vec![(
            "regs".into(),
            Value::String("nonsense".into()),
        )])),
    );
    let e = w.write_schema(&schema(bad)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Usage, "{e}");
    assert!(e.message().contains("nonsense"), "{e}");
    assert_eq!(e.location().field.as_deref(), Some("regs"));
    let e = w.write_schema(&schema(Value::U8(1))).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Usage, "{e}");
    w.write_schema(&schema(Value::String("any".into())))
        .unwrap();
    read_all(&w.finish().unwrap(), Limits::default()).unwrap();
}

#[test]
fn no_value_deeper_than_128_whatever_the_limits() {
    let lim = Limits::default().with_max_depth(1000);
    let mut w = limited(lim);
    w.write_info(&nest(128)).unwrap();
    let e = w.write_device(&device("d", &nest(129))).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::LimitExceeded, "{e}");
    read_all(&w.finish().unwrap(), Limits::default()).unwrap();
}

#[test]
fn an_encoder_told_it_failed_refuses_everything() {
    let mut enc = FrameEncoder::new(header(), WriterOptions::default()).unwrap();
    enc.ram_blocks(&blocks(&[(0, 4)])).unwrap();
    enc.page(0, 0, 0, &page(3)).unwrap();
    assert_eq!(enc.pending_pages(), 1);
    assert!(enc.failure().is_none());
    enc.fail("socket closed");
    assert_eq!(enc.failure(), Some("socket closed"));
    for e in [
        enc.flush_pages().unwrap_err(),
        enc.epoch(0).unwrap_err(),
        enc.info(&Value::Unit).unwrap_err(),
        enc.finish().unwrap_err(),
    ] {
        assert_eq!(e.kind(), ErrorKind::Usage);
        assert!(e.message().contains("failed earlier"), "{e}");
        assert!(e.message().contains("socket closed"), "{e}");
    }
    // a finished encoder refuses too
    let mut enc = FrameEncoder::new(header(), WriterOptions::default()).unwrap();
    let end = enc.finish().unwrap().to_vec();
    assert!(enc.is_finished());
    assert_eq!(
        end.len(),
        16 + 32,
        "an empty index record and the end record"
    );
    assert_eq!(enc.epoch(0).unwrap_err().kind(), ErrorKind::Usage);
}
