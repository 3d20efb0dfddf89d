//! The seeking reader: one device or one RAM range of a file, read through the
//! index while touching only what it needs (counted by a wrapping reader), with
//! the same result as reading the whole stream; old and index-less files still
//! seek; an index that lies is refused, never trusted.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns build known-good fixtures

use std::collections::BTreeMap;
use std::io::{Cursor, Read, Seek, SeekFrom};

use vmstream::record::IndexEntry;
use vmstream::{
    Arch, Compression, DeviceState, ErrorKind, Header, Limits, MapSource, RamBlock, Record,
    RecordKind, SeekReader, SliceReader, StreamKind, StreamWriter, WriterOptions,
};
use vmstream_testkit::{fill_pattern, frame, sample_devices, sample_stream_with, PAGE};

/// A `Read + Seek` that counts the bytes read and remembers every read.
struct Counting<R> {
    inner: R,
    pos: u64,
    bytes: u64,
    reads: Vec<(u64, usize)>,
}

impl<R> Counting<R> {
    fn new(inner: R) -> Counting<R> {
        Counting {
            inner,
            pos: 0,
            bytes: 0,
            reads: Vec::new(),
        }
    }
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.reads.push((self.pos, n));
        self.pos += n as u64;
        self.bytes += n as u64;
        Ok(n)
    }
}

impl<R: Seek> Seek for Counting<R> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        self.pos = self.inner.seek(to)?;
        Ok(self.pos)
    }
}

fn seek_reader(bytes: &[u8]) -> vmstream::Result<SeekReader<Counting<Cursor<&[u8]>>>> {
    SeekReader::open(Counting::new(Cursor::new(bytes)), Limits::default())
}

/// Pages of the big block in [`big_file`].
const BIG_PAGES: u64 = (1 << 30) / PAGE as u64;

/// What a full read finds: devices in order, each block's final contents
/// (page → data, `None` for zero), and where each record sits.
#[derive(Default)]
struct Truth {
    devices: Vec<(u64, DeviceState)>,
    blocks: Vec<RamBlock>,
    pages: BTreeMap<(u32, u64), Option<Vec<u8>>>,
    /// Every version of each page sent, in stream order.
    history: BTreeMap<(u32, u64), Vec<Option<Vec<u8>>>>,
    /// (offset, framed length, kind, block, first page, last page)
    records: Vec<(u64, u64, RecordKind, u32, u64, u64)>,
    index: Option<(u64, Vec<IndexEntry>)>,
    records_total: u64,
}

impl Truth {
    fn of(bytes: &[u8]) -> Truth {
        let mut t = Truth::default();
        let mut r = SliceReader::new(bytes, Limits::default()).unwrap();
        while let Some(item) = r.next().unwrap() {
            let (mut block, mut first, mut last) = (u32::MAX, 0, 0);
            match item.record {
                Record::Device(d) => t.devices.push((item.offset, d)),
                Record::RamBlocks(b) => t.blocks.extend(b),
                Record::Pages(b) => {
                    block = b.block;
                    for (i, p) in b.pages().enumerate() {
                        if i == 0 {
                            first = p.index;
                        }
                        last = p.index;
                        let data = p.data.map(<[u8]>::to_vec);
                        t.history
                            .entry((b.block, p.index))
                            .or_default()
                            .push(data.clone());
                        t.pages.insert((b.block, p.index), data);
                    }
                }
                Record::Index(e) => t.index = Some((item.offset, e)),
                Record::End(e) => t.records_total = e.records,
                _ => {}
            }
            t.records.push((
                item.offset,
                item.framed_len as u64,
                item.kind,
                block,
                first,
                last,
            ));
        }
        t
    }

    /// The final contents of `len` bytes of `block` at `offset`.
    fn ram(&self, block: u32, offset: u64, len: usize) -> Vec<u8> {
        let ps = PAGE as u64;
        let mut out = vec![0u8; len];
        for (i, b) in out.iter_mut().enumerate() {
            let at = offset + i as u64;
            if let Some(Some(d)) = self.pages.get(&(block, at / ps)) {
                *b = d[(at % ps) as usize];
            }
        }
        out
    }
}

/// A 1 GiB RAM block sent mostly as zero pages plus every 97th page as data,
/// then a second round re-sending a few pages (data over data, zero over
/// data), with devices before and after the RAM and a small second block.
fn big_file(options: WriterOptions) -> Vec<u8> {
    let header = Header::new(StreamKind::Snapshot, Arch::X86_64, PAGE as u32);
    let mut w = StreamWriter::new(Vec::new(), header, options).unwrap();
    let (uart, net) = sample_devices();
    w.write_device_serde("serial0", 0, "uart-16550", 1, &uart)
        .unwrap();
    w.write_ram_blocks(&[
        RamBlock {
            id: 0,
            name: "pc.ram".into(),
            size: BIG_PAGES * PAGE as u64,
            page_size: PAGE as u32,
            flags: 0,
        },
        RamBlock {
            id: 7,
            name: "vga.vram".into(),
            size: 64 * PAGE as u64,
            page_size: PAGE as u32,
            flags: 0,
        },
    ])
    .unwrap();
    let mut page = vec![0u8; PAGE];
    for i in 0..BIG_PAGES {
        if i % 97 == 0 {
            fill_pattern(&mut page, i);
            w.write_page(0, 0, i, &page).unwrap();
        } else {
            w.write_zero_page(0, 0, i).unwrap();
        }
    }
    for i in 0..64 {
        fill_pattern(&mut page, 1 << 40 | i);
        w.write_page(7, 0, i, &page).unwrap();
    }
    w.write_epoch(0).unwrap();
    for i in [1010, 1067, 1080, 5000] {
        if i == 1067 {
            w.write_zero_page(0, 1, i).unwrap();
        } else {
            fill_pattern(&mut page, 1 << 20 | i);
            w.write_page(0, 1, i, &page).unwrap();
        }
    }
    w.flush_pages().unwrap();
    fill_pattern(&mut page, 99);
    w.write_page(0, 1, 200_000, &page).unwrap();
    w.write_epoch(1).unwrap();
    w.write_device_serde("0000:00:03.0/virtio-net", 0, "virtio-net", 2, &net)
        .unwrap();
    for i in 0..40u32 {
        // new field names in each, so names records are spread through the file
        let v = vmstream::Value::Struct(vec![
            (format!("reg{i}"), vmstream::Value::U32(i)),
            ("common".into(), vmstream::Value::Bool(i % 2 == 0)),
        ]);
        w.write_device(&DeviceState {
            name: format!("dev{i}"),
            instance_id: i,
            type_name: "misc".into(),
            version: 1,
            value: v,
        })
        .unwrap();
    }
    w.write_device_serde("serial0", 1, "uart-16550", 1, &uart)
        .unwrap();
    w.finish().unwrap()
}

#[test]
fn one_device_of_a_1gib_file_reads_under_1mib() {
    let bytes = big_file(WriterOptions::default());
    let truth = Truth::of(&bytes);
    assert!(
        bytes.len() > 10 << 20,
        "the file holds the RAM's data pages"
    );

    for name in ["0000:00:03.0/virtio-net", "dev39", "serial0"] {
        let mut r = seek_reader(&bytes).unwrap();
        assert_eq!(r.source(), MapSource::Index);
        let got = r.device(name).unwrap();
        let want: Vec<&DeviceState> = truth
            .devices
            .iter()
            .map(|(_, d)| d)
            .filter(|d| d.name == name)
            .collect();
        assert_eq!(got.iter().collect::<Vec<_>>(), want, "{name}");
        let read = r.into_inner().bytes;
        eprintln!(
            "{name}: read {read} of {} bytes (a 1 GiB RAM block)",
            bytes.len()
        );
        assert!(read < 1 << 20, "{name}: read {read} bytes");
    }
}

#[test]
fn a_range_reads_only_the_overlapping_batches() {
    let bytes = big_file(WriterOptions::default());
    let truth = Truth::of(&bytes);
    let ps = PAGE as u64;
    // pages 1000..=1100, from the middle of a page to the middle of another;
    // 1010, 1067 and 1080 were sent again in the second round
    let (offset, len) = (1000 * ps + 123, 100 * ps);
    let mut r = seek_reader(&bytes).unwrap();
    let mut buf = vec![0xeeu8; len as usize];
    r.read_ram(0, offset, &mut buf).unwrap();
    assert!(buf == truth.ram(0, offset, len as usize), "range contents");
    // the later round won: page 1067 is zero again, 1010 holds its new data
    let at = |page: u64, i: u64| buf[(page * ps + i - offset) as usize];
    assert_eq!(at(1067, 0), 0);
    assert_eq!(
        at(1010, 0),
        truth.pages[&(0, 1010)].as_ref().unwrap()[0],
        "second round"
    );

    let counting = r.into_inner();
    let (first, last) = (offset / ps, (offset + len - 1) / ps);
    let mut overlapping = 0;
    for &(at, framed, kind, block, f, l) in &truth.records {
        if kind != RecordKind::PAGES {
            continue;
        }
        let overlaps = block == 0 && f <= last && l >= first;
        let touched = counting
            .reads
            .iter()
            .any(|&(o, n)| n > 0 && o < at + framed && o + n as u64 > at);
        assert_eq!(
            touched, overlaps,
            "batch at {at:#x} of block {block}, pages {f}..={l}"
        );
        overlapping += u64::from(overlaps);
    }
    // one batch of the first round per 256 pages, and the second round's batch
    assert_eq!(overlapping, 2 + 1);
    assert!(
        counting.bytes < 2 << 20,
        "read {} bytes for {len}",
        counting.bytes
    );
}

/// Reads every device and every block through a `SeekReader` and compares
/// with a full read.
fn check_against_full_read(bytes: &[u8], source: MapSource) {
    let truth = Truth::of(bytes);
    let mut r = seek_reader(bytes).unwrap();
    assert_eq!(r.source(), source);
    let offsets: Vec<u64> = r.devices().map(|e| e.offset).collect();
    assert_eq!(
        offsets,
        truth.devices.iter().map(|d| d.0).collect::<Vec<_>>()
    );
    // in reverse order too: the names table only grows
    for (at, want) in truth.devices.iter().rev() {
        assert_eq!(&r.device_at(*at).unwrap(), want);
    }
    assert_eq!(r.ram_blocks().unwrap(), truth.blocks.as_slice());
    for b in &truth.blocks {
        let mut all = vec![0u8; b.size as usize];
        r.read_ram(b.id, 0, &mut all).unwrap();
        assert!(all == truth.ram(b.id, 0, all.len()), "block {}", b.name);
        for (offset, len) in [
            (1, 1),
            (PAGE as u64 - 3, 7),
            (3 * PAGE as u64 + 5, 2 * PAGE),
        ] {
            if offset + len as u64 <= b.size {
                let mut part = vec![1u8; len];
                r.read_ram(b.id, offset, &mut part).unwrap();
                assert_eq!(part, truth.ram(b.id, offset, len), "{} at {offset}", b.name);
            }
        }
        let mut over = [0u8; 2];
        let e = r.read_ram(b.id, b.size - 1, &mut over).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Usage);
    }
}

#[test]
fn indexed_old_and_index_less_files_read_the_same_as_a_full_read() {
    check_against_full_read(
        &sample_stream_with(WriterOptions::default()),
        MapSource::Index,
    );
    for c in [Compression::Zstd(3), Compression::Lz4] {
        let s = sample_stream_with(WriterOptions::default().with_compression(c));
        check_against_full_read(&s, MapSource::Index);
    }
    check_against_full_read(
        &sample_stream_with(WriterOptions::default().with_index(false)),
        MapSource::Walk,
    );
    // made by the format 1.0 writer: its index lists devices and batches only
    let old = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/good/sample-1.0.vms"),
    )
    .unwrap();
    assert_eq!(u16::from_le_bytes([old[10], old[11]]), 0, "a 1.0 header");
    check_against_full_read(&old, MapSource::IndexAndWalk);
}

#[test]
fn walking_an_old_file_reads_record_headers_not_bodies() {
    let bytes = big_file(WriterOptions::default().with_index(false));
    let mut r = seek_reader(&bytes).unwrap();
    assert_eq!(r.source(), MapSource::Walk);
    assert_eq!(r.device("dev7").unwrap().len(), 1);
    let read = r.into_inner().bytes;
    // 8 bytes per record, and first and last entries of each batch
    assert!(read < 1 << 20, "read {read} bytes");
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn index_body(entries: &[IndexEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    put_varint(&mut out, entries.len() as u64);
    for e in entries {
        out.extend_from_slice(&e.kind.0.to_le_bytes());
        out.extend_from_slice(&e.offset.to_le_bytes());
        out.extend_from_slice(&e.block.to_le_bytes());
        out.extend_from_slice(&e.first_page.to_le_bytes());
        out.extend_from_slice(&e.last_page.to_le_bytes());
        put_varint(&mut out, e.name.len() as u64);
        out.extend_from_slice(e.name.as_bytes());
    }
    out
}

/// `bytes` with its index record replaced by one with `body`, and an `end`
/// record pointing at it.
fn with_index_body(bytes: &[u8], body: &[u8]) -> Vec<u8> {
    let truth = Truth::of(bytes);
    let (at, _) = truth.index.unwrap();
    let mut out = bytes[..at as usize].to_vec();
    out.extend_from_slice(&frame(RecordKind::INDEX.0, 1, body));
    let mut end = truth.records_total.to_le_bytes().to_vec();
    end.extend_from_slice(&at.to_le_bytes());
    out.extend_from_slice(&frame(RecordKind::END.0, 0, &end));
    out
}

fn with_entries(bytes: &[u8], edit: impl FnOnce(&mut Vec<IndexEntry>)) -> Vec<u8> {
    let mut entries = Truth::of(bytes).index.unwrap().1;
    edit(&mut entries);
    with_index_body(bytes, &index_body(&entries))
}

fn malformed<T>(r: vmstream::Result<T>, what: &str) -> vmstream::Error {
    let Err(e) = r else {
        panic!("{what}: accepted");
    };
    assert_eq!(e.kind(), ErrorKind::Malformed, "{what}: {e}");
    assert!(e.location().offset.is_some(), "{what}: {e} has no offset");
    e
}

#[test]
fn an_index_that_lies_is_refused() {
    let good = sample_stream_with(WriterOptions::default());
    let truth = Truth::of(&good);
    let entries = truth.index.clone().unwrap().1;
    let serial = truth.devices[0].0;
    let batch = entries
        .iter()
        .find(|e| e.kind == RecordKind::PAGES)
        .unwrap()
        .clone();
    let ps = PAGE as u64;

    // the rebuilt index is read like the written one
    let same = with_entries(&good, |_| {});
    assert_eq!(same, good);

    // a device entry naming another device
    let f = with_entries(&good, |es| {
        es.iter_mut().find(|e| e.offset == serial).unwrap().name = "other".into();
    });
    let mut r = seek_reader(&f).unwrap();
    assert!(r.device("serial0").unwrap().is_empty());
    let e = malformed(r.device("other"), "renamed device");
    assert!(e.to_string().contains("\"serial0\""), "{e}");

    // a device entry pointing at a page batch
    let f = with_entries(&good, |es| {
        es.iter_mut().find(|e| e.offset == serial).unwrap().offset = batch.offset;
        es.retain(|e| e.kind != RecordKind::PAGES || e.offset != batch.offset);
    });
    malformed(
        seek_reader(&f).unwrap().device("serial0"),
        "device at a batch",
    );

    // a batch entry with the wrong pages, and one pointing at a device
    let f = with_entries(&good, |es| {
        es.iter_mut()
            .find(|e| e.offset == batch.offset)
            .unwrap()
            .last_page += 1;
    });
    let mut buf = vec![0u8; PAGE];
    malformed(
        seek_reader(&f).unwrap().read_ram(batch.block, 0, &mut buf),
        "batch pages",
    );
    let f = with_entries(&good, |es| {
        es.retain(|e| e.offset != serial);
        let b = es.iter_mut().find(|e| e.offset == batch.offset).unwrap();
        b.offset = serial;
    });
    malformed(
        seek_reader(&f)
            .unwrap()
            .read_ram(batch.block, batch.first_page * ps, &mut buf),
        "batch at a device",
    );

    // a names record missing from the index: the next one does not continue
    let f = with_entries(&good, |es| {
        let i = es.iter().position(|e| e.kind == RecordKind::NAMES).unwrap();
        es.remove(i);
    });
    let e = malformed(seek_reader(&f).unwrap().device("serial0"), "names gap");
    assert!(e.to_string().contains("names"), "{e}");
    // ... and a names entry with the wrong count
    let f = with_entries(&good, |es| {
        es.iter_mut()
            .find(|e| e.kind == RecordKind::NAMES)
            .unwrap()
            .last_page += 1;
    });
    malformed(seek_reader(&f).unwrap().device("serial0"), "names count");

    // offsets outside the records, unaligned, or twice
    let index_at = truth.index.as_ref().unwrap().0;
    for bad in [0, 8, serial + 4, index_at, index_at + 8, u64::MAX - 7] {
        let f = with_entries(&good, |es| es[0].offset = bad);
        malformed(seek_reader(&f), "entry offset");
    }
    let f = with_entries(&good, |es| es[1].offset = es[0].offset);
    malformed(seek_reader(&f), "two entries at one offset");

    // a count the body cannot hold, and trailing garbage after the entries
    let mut body = index_body(&entries);
    body[0] = 0xff;
    body.insert(1, 0x7f);
    malformed(seek_reader(&with_index_body(&good, &body)), "huge count");
    let mut body = index_body(&entries);
    body.push(0);
    malformed(
        seek_reader(&with_index_body(&good, &body)),
        "trailing bytes",
    );

    // entries of a kind from a later version are skipped
    let f = with_entries(&good, |es| {
        es.push(IndexEntry {
            kind: RecordKind(0x0042),
            offset: 7,
            block: 1,
            first_page: 2,
            last_page: 3,
            name: "later".into(),
        })
    });
    assert_eq!(seek_reader(&f).unwrap().device("serial0").unwrap().len(), 1);
}

#[test]
fn a_file_without_a_sound_tail_is_refused() {
    let good = sample_stream_with(WriterOptions::default());
    // truncated, and with bytes after the end record
    for f in [
        good[..good.len() - 8].to_vec(),
        good[..good.len() - 32].to_vec(),
        [good.as_slice(), &[0u8; 8]].concat(),
        good[..100].to_vec(),
    ] {
        malformed(seek_reader(&f), "tail");
    }
    // the end record's index offset pointing at another record
    let truth = Truth::of(&good);
    let (index_at, entries) = truth.index.clone().unwrap();
    let mut f = good[..index_at as usize].to_vec();
    f.extend_from_slice(&frame(RecordKind::INDEX.0, 1, &index_body(&entries)));
    let mut end = truth.records_total.to_le_bytes().to_vec();
    end.extend_from_slice(&truth.devices[0].0.to_le_bytes());
    f.extend_from_slice(&frame(RecordKind::END.0, 0, &end));
    malformed(seek_reader(&f), "index offset at a device");
    // a header that is not one
    let mut f = good.clone();
    f[0] = b'X';
    malformed(seek_reader(&f), "magic");
}

#[test]
fn the_map_is_bounded_by_limits() {
    let bytes = big_file(WriterOptions::default());
    let index_less = big_file(WriterOptions::default().with_index(false));
    // a thousand batches take some 60 KiB of map
    let tight = Limits::default().with_max_alloc(32 << 10);
    for f in [&bytes, &index_less] {
        match SeekReader::open(Cursor::new(f), tight) {
            Ok(_) => panic!("a map over Limits::max_alloc"),
            Err(e) => assert_eq!(e.kind(), ErrorKind::LimitExceeded, "{e}"),
        }
        assert!(SeekReader::open(Cursor::new(f), Limits::default()).is_ok());
    }
}

#[test]
fn every_changed_index_byte_is_an_error_or_a_checked_answer() {
    let good = sample_stream_with(WriterOptions::default());
    let truth = Truth::of(&good);
    let body = index_body(&truth.index.as_ref().unwrap().1);
    for i in 0..body.len() {
        for flip in [0x01, 0x80, 0xff] {
            let mut b = body.clone();
            b[i] ^= flip;
            let f = with_index_body(&good, &b);
            let Ok(mut r) = seek_reader(&f) else {
                continue;
            };
            // whatever the index claims, what comes back was checked against
            // the records themselves
            let offsets: Vec<u64> = r.devices().map(|e| e.offset).collect();
            for at in offsets {
                if let Ok(d) = r.device_at(at) {
                    assert!(truth.devices.contains(&(at, d)), "byte {i} ^ {flip:#x}");
                }
            }
            let blocks = r.ram_blocks().map(<[RamBlock]>::to_vec);
            for b in blocks.unwrap_or_default() {
                let mut all = vec![0u8; b.size as usize];
                if r.read_ram(b.id, 0, &mut all).is_ok() {
                    // a batch left out of the index leaves its pages as an
                    // earlier batch sent them, or unsent: never other data
                    for (p, page) in all.chunks(PAGE).enumerate() {
                        let sent = truth.history.get(&(b.id, p as u64));
                        let ok = page.iter().all(|&x| x == 0)
                            || sent.is_some_and(|h| h.iter().flatten().any(|d| d == page));
                        assert!(ok, "byte {i} ^ {flip:#x}: block {} page {p}", b.name);
                    }
                }
            }
        }
    }
}
