//! Whole-stream tests: the three readers agree, any split of the input gives the
//! same events, every corruption and truncation is an error, hostile inputs hit
//! limits instead of memory, and the bad-input vectors give their documented errors.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns build known-good fixtures

use std::io::Read;

use proptest::prelude::*;
use vmstream::record::PAGES_DATA_ALIGN;
use vmstream::{
    Arch, Compression, Decoder, ErrorKind, Event, Header, Item, Limits, RamBlock, Record,
    SliceReader, StreamKind, StreamReader, StreamWriter, Value, WriterOptions,
};
use vmstream_testkit::{end_record, frame, header_bytes, sample_stream, PAGE};

/// One line per record, for comparing readers.
fn render(item: &Item<'_>) -> String {
    let body = match &item.record {
        Record::Info(v) => format!("info {:?}", v),
        Record::Names { first, count } => format!("names {first}+{count}"),
        Record::Schema(s) => format!("schema {} v{} {:?}", s.type_name, s.version, s.schema),
        Record::Device(d) => format!(
            "device {} {} {} {} {:?}",
            d.name, d.instance_id, d.type_name, d.version, d.value
        ),
        Record::RamBlocks(b) => format!("blocks {b:?}"),
        Record::Pages(b) => {
            let pages: Vec<String> = b
                .pages()
                .map(|p| format!("{}:{}", p.index, p.data.map_or(0, vmstream_testkit::crc32c)))
                .collect();
            format!("pages {} e{} [{}]", b.block, b.epoch, pages.join(" "))
        }
        Record::Epoch(e) => format!("epoch {e}"),
        Record::Index(i) => format!("index {i:?}"),
        Record::End(e) => format!("end {e:?}"),
        Record::Other(r) => format!("other {:#x} {:?}", r.kind.0, r.body),
        other => format!("{other:?}"),
    };
    format!("#{} @{:#x} {}", item.index, item.offset, body)
}

fn read_slice(bytes: &[u8], limits: Limits) -> vmstream::Result<Vec<String>> {
    let mut r = SliceReader::new(bytes, limits)?;
    let mut out = Vec::new();
    while let Some(item) = r.next()? {
        out.push(render(&item));
    }
    if !r.trailing().is_empty() {
        return Err(vmstream::Error::new(
            ErrorKind::Malformed,
            "data after the end record",
        ));
    }
    Ok(out)
}

/// A reader that hands out at most `n` bytes per call.
struct Dribble<'a> {
    data: &'a [u8],
    n: usize,
}

impl Read for Dribble<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.n.min(buf.len()).min(self.data.len());
        buf[..k].copy_from_slice(&self.data[..k]);
        self.data = &self.data[k..];
        Ok(k)
    }
}

fn read_stream(bytes: &[u8], per_read: usize, limits: Limits) -> vmstream::Result<Vec<String>> {
    let mut r = StreamReader::new(
        Dribble {
            data: bytes,
            n: per_read,
        },
        limits,
    )?;
    let mut out = Vec::new();
    while let Some(item) = r.next()? {
        out.push(render(&item));
    }
    if !r.at_eof()? {
        return Err(vmstream::Error::new(
            ErrorKind::Malformed,
            "data after the end record",
        ));
    }
    Ok(out)
}

/// Feeds `bytes` to the push decoder in chunks given by `sizes` (cycled).
fn read_push(bytes: &[u8], sizes: &[usize], limits: Limits) -> vmstream::Result<Vec<String>> {
    read_push_with(Decoder::new(limits), bytes, sizes)
}

fn read_push_with(mut d: Decoder, bytes: &[u8], sizes: &[usize]) -> vmstream::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut pos = 0;
    let mut i = 0;
    while pos < bytes.len() {
        let n = sizes[i % sizes.len()].max(1);
        i += 1;
        let mut chunk = &bytes[pos..(pos + n).min(bytes.len())];
        pos += chunk.len();
        while !chunk.is_empty() {
            let (used, ev) = d.feed(chunk)?;
            if let Some(Event::Record(item)) = ev {
                out.push(render(&item));
            }
            chunk = &chunk[used..];
        }
    }
    d.finish()?;
    Ok(out)
}

fn all_readers_agree(bytes: &[u8]) -> Vec<String> {
    let lim = Limits::default();
    let a = read_slice(bytes, lim).expect("slice reader");
    assert_eq!(
        read_stream(bytes, usize::MAX, lim).expect("stream reader"),
        a
    );
    assert_eq!(
        read_stream(bytes, 1, lim).expect("stream reader, 1 byte per read"),
        a
    );
    assert_eq!(
        read_push(bytes, &[usize::MAX], lim).expect("push, whole"),
        a
    );
    assert_eq!(read_push(bytes, &[1], lim).expect("push, 1 byte"), a);
    assert_eq!(
        read_push(bytes, &[7, 1, 4096, 3, 100_000], lim).expect("push, mixed"),
        a
    );
    a
}

/// A decoder of the process's own frames reads the same records, and leaves
/// only the checksum to the encoder: framing and contents are still checked.
#[test]
fn own_frames_decode_the_same_and_skip_only_the_checksum() {
    let lim = Limits::default();
    let bytes = sample_stream();
    let own = read_push_with(Decoder::of_own_frames(lim), &bytes, &[usize::MAX]).unwrap();
    assert_eq!(own, all_readers_agree(&bytes));
    // a flipped checksum byte of the last record (end): the checking decoder
    // refuses it, the trusting one does not
    let mut bad = bytes.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    assert!(read_push(&bad, &[usize::MAX], lim).is_err());
    assert!(read_push_with(Decoder::of_own_frames(lim), &bad, &[usize::MAX]).is_ok());
    // a truncated stream is refused either way
    let short = &bytes[..bytes.len() - 3];
    assert!(read_push_with(Decoder::of_own_frames(lim), short, &[usize::MAX]).is_err());
}

#[test]
fn sample_reads_the_same_with_every_reader_and_split() {
    let records = all_readers_agree(&sample_stream());
    assert_eq!(records.len(), 15);
    for c in [Compression::Zstd(3), Compression::Lz4] {
        let compressed = vmstream_testkit::sample_compressed(c);
        let got = all_readers_agree(&compressed);
        // Same content; only offsets and the pages' stored form differ.
        let strip = |v: &[String]| {
            v.iter()
                .map(|l| {
                    l.split_once(' ')
                        .map(|x| x.1)
                        .unwrap_or("")
                        .split_once(' ')
                        .map(|x| x.1.to_owned())
                        .unwrap_or_default()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(strip(&got)[..13], strip(&records)[..13]);
    }
}

#[test]
fn sample_devices_deserialize_back() {
    let bytes = sample_stream();
    let mut r = SliceReader::new(&bytes, Limits::default()).unwrap();
    let (uart, net) = vmstream_testkit::sample_devices();
    let mut seen = 0;
    while let Some(item) = r.next().unwrap() {
        if let Record::Device(d) = item.record {
            seen += 1;
            match d.type_name.as_str() {
                "uart-16550" => assert_eq!(
                    vmstream::from_device::<vmstream_testkit::Uart>(&d).unwrap(),
                    uart
                ),
                "virtio-net" => assert_eq!(
                    vmstream::from_device::<vmstream_testkit::VirtioNet>(&d).unwrap(),
                    net
                ),
                other => panic!("unexpected {other}"),
            }
        }
    }
    assert_eq!(seen, 2);
}

#[test]
fn corruption_sweep_every_byte() {
    let bytes = sample_stream();
    let mut flips = 0;
    for i in 0..bytes.len() {
        for mask in [0x01u8, 0xff] {
            let mut m = bytes.clone();
            m[i] ^= mask;
            flips += 1;
            let r = read_slice(&m, Limits::default());
            assert!(r.is_err(), "flip {mask:#x} at {i} was accepted");
            // the push decoder fed one record-sized chunk at a time agrees
            assert!(
                read_push(&m, &[4096], Limits::default()).is_err(),
                "push accepted flip at {i}"
            );
        }
    }
    assert_eq!(flips, 2 * bytes.len());
    eprintln!(
        "corruption sweep: {flips} flips over {} bytes, all rejected",
        bytes.len()
    );
}

#[test]
fn truncation_sweep_every_offset() {
    let bytes = sample_stream();
    for cut in 0..bytes.len() {
        let t = &bytes[..cut];
        let e = read_slice(t, Limits::default()).expect_err("truncated stream accepted");
        assert_eq!(e.kind(), ErrorKind::Malformed, "cut at {cut}: {e}");
        assert!(
            e.location().offset.is_some_and(|o| o <= cut as u64),
            "cut at {cut}: {e}"
        );
        let e =
            read_stream(t, 977, Limits::default()).expect_err("stream reader accepted truncation");
        assert_eq!(e.kind(), ErrorKind::Malformed, "cut at {cut}: {e}");
        assert!(read_push(t, &[333], Limits::default()).is_err());
    }
    eprintln!("truncation sweep: {} cut points, all rejected", bytes.len());
}

#[test]
fn poisoned_after_error() {
    let mut bytes = sample_stream();
    let n = bytes.len();
    bytes[n / 2] ^= 1;
    let mut r = SliceReader::new(&bytes, Limits::default()).unwrap();
    let mut err = None;
    while err.is_none() {
        match r.next() {
            Ok(Some(_)) => {}
            Ok(None) => panic!("corrupt stream read to the end"),
            Err(e) => err = Some(e),
        }
    }
    assert_eq!(r.next().unwrap_err().kind(), ErrorKind::Usage);
}

/// A reader that fails for good once `left` bytes have been handed out.
struct FailAfter<'a> {
    data: &'a [u8],
    left: usize,
}

impl Read for FailAfter<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Err(std::io::Error::other("device gone"));
        }
        let n = buf.len().min(self.left).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        self.left -= n;
        Ok(n)
    }
}

#[test]
fn io_errors_say_where() {
    let bytes = sample_stream();
    for cut in [10, bytes.len() / 2, bytes.len() - 3] {
        let input = FailAfter {
            data: &bytes,
            left: cut,
        };
        let err = match StreamReader::new(input, Limits::default()) {
            Err(e) => e,
            Ok(mut r) => loop {
                match r.next() {
                    Ok(Some(_)) => {}
                    Ok(None) => panic!("read past a failing reader"),
                    Err(e) => break e,
                }
            },
        };
        assert_eq!(err.kind(), ErrorKind::Io, "{err}");
        let at = err.location().offset.expect("an offset");
        assert!(at <= cut as u64, "{err}");
        if cut > 100 {
            assert!(err.location().record.is_some(), "{err}");
        }
    }
}

// ---- hand-made hostile streams --------------------------------------------------

fn stream_of(records: &[Vec<u8>]) -> Vec<u8> {
    let mut s = header_bytes();
    for r in records {
        s.extend_from_slice(r);
    }
    s
}

fn blocks_body(blocks: &[RamBlock]) -> Vec<u8> {
    let mut w = StreamWriter::new(
        Vec::new(),
        Header::new(StreamKind::Snapshot, Arch::X86_64, 4096),
        WriterOptions::default().with_index(false),
    )
    .unwrap();
    w.write_ram_blocks(blocks).unwrap();
    let bytes = w.finish().unwrap();
    let start = header_bytes().len();
    let len = u32::from_le_bytes(bytes[start + 4..start + 8].try_into().unwrap()) as usize;
    bytes[start + 8..start + 8 + len].to_vec()
}

/// A `ram-blocks` body as docs/format.md §6.1 lays it out, whatever the blocks
/// (the writer refuses repeated ids).
fn blocks_body_unchecked(blocks: &[RamBlock]) -> Vec<u8> {
    let mut b = Vec::new();
    let mut n = blocks.len() as u64;
    while n >= 0x80 {
        b.push(n as u8 | 0x80);
        n >>= 7;
    }
    b.push(n as u8);
    for r in blocks {
        b.extend_from_slice(&r.id.to_le_bytes());
        b.push(r.name.len() as u8);
        b.extend_from_slice(r.name.as_bytes());
        b.extend_from_slice(&r.size.to_le_bytes());
        b.extend_from_slice(&r.page_size.to_le_bytes());
        b.extend_from_slice(&r.flags.to_le_bytes());
    }
    b
}

fn one_block() -> Vec<u8> {
    frame(
        5,
        0,
        &blocks_body(&[RamBlock {
            id: 0,
            name: "ram".into(),
            size: 16 * 4096,
            page_size: 4096,
            flags: 0,
        }]),
    )
}

fn pages_body(
    block: u32,
    epoch: u32,
    entries: &[(u64, u8)],
    data: &[u8],
    compression: u8,
    raw_len: Option<u32>,
) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&block.to_le_bytes());
    b.extend_from_slice(&epoch.to_le_bytes());
    b.push(compression);
    b.extend_from_slice(&[0, 0, 0]);
    b.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    b.extend_from_slice(&(data.len() as u32).to_le_bytes());
    let ndata = entries.iter().filter(|e| e.1 == 2).count() as u32;
    b.extend_from_slice(&raw_len.unwrap_or(ndata * 4096).to_le_bytes());
    for &(i, k) in entries {
        b.extend_from_slice(&((i << 8) | u64::from(k)).to_le_bytes());
    }
    b.extend_from_slice(data);
    b
}

/// A `pages` record of page 0, all 0x5a, behind a data pad of `pad` bytes of `fill`.
fn padded_page(pad: u8, fill: u8) -> Vec<u8> {
    let mut body = pages_body(0, 0, &[(0, 2)], &[], 0, None);
    body[9] = pad;
    body[16..20].copy_from_slice(&4096u32.to_le_bytes());
    body.resize(body.len() + usize::from(pad), fill);
    body.extend_from_slice(&[0x5a; 4096]);
    frame(6, 0, &body)
}

/// (file name, bytes, expected kind, message substring). Each is a vector in
/// `testdata/bad/`.
fn bad_vectors() -> Vec<(&'static str, Vec<u8>, ErrorKind, &'static str)> {
    let sample = sample_stream();
    let hdr = header_bytes();
    let mut v = Vec::new();
    let mut flipped = sample.clone();
    let mid = hdr.len() + 20;
    flipped[mid] ^= 0x04;
    v.push((
        "crc-mismatch.vms",
        flipped,
        ErrorKind::Malformed,
        "checksum mismatch",
    ));
    v.push((
        "truncated.vms",
        sample[..sample.len() - 40].to_vec(),
        ErrorKind::Malformed,
        "truncated",
    ));
    let mut magic = sample.clone();
    magic[4] = b'\n';
    v.push((
        "text-mode-magic.vms",
        magic,
        ErrorKind::Malformed,
        "bad magic",
    ));
    let mut major = Header::new(StreamKind::Snapshot, Arch::X86_64, 4096);
    major.version_major = 2;
    v.push((
        "future-major-version.vms",
        stream_of_raw(major.encode().unwrap(), &[]),
        ErrorKind::Unsupported,
        "format version 2",
    ));
    let mut req = Header::new(StreamKind::Snapshot, Arch::X86_64, 4096);
    req.required_features = 1 << 40;
    v.push((
        "unknown-required-feature.vms",
        stream_of_raw(req.encode().unwrap(), &[]),
        ErrorKind::Unsupported,
        "must-understand",
    ));
    v.push((
        "unknown-mandatory-record.vms",
        stream_of(&[frame(0x7777, 0, b"future"), end_record(1)]),
        ErrorKind::Unsupported,
        "unknown mandatory record kind 0x7777",
    ));
    let mut huge = 0x0004u16.to_le_bytes().to_vec();
    huge.extend_from_slice(&0u16.to_le_bytes());
    huge.extend_from_slice(&u32::MAX.to_le_bytes());
    v.push((
        "lying-record-length.vms",
        stream_of(&[huge]),
        ErrorKind::LimitExceeded,
        "exceeds Limits::max_record_size",
    ));
    let mut deep = vec![0x11; 200]; // some(some(...))
    deep.push(0x13);
    v.push((
        "deep-nesting.vms",
        stream_of(&[frame(1, 0, &deep), end_record(1)]),
        ErrorKind::LimitExceeded,
        "nests deeper",
    ));
    v.push((
        "undefined-name.vms",
        stream_of(&[frame(1, 0, &[0x0f, 1, 9, 0x13]), end_record(1)]),
        ErrorKind::Malformed,
        "name id 9",
    ));
    v.push((
        "names-gap.vms",
        stream_of(&[frame(2, 0, &[3, 1, 1, b'x']), end_record(1)]),
        ErrorKind::Malformed,
        "starts at id 3",
    ));
    v.push((
        "page-beyond-block.vms",
        stream_of(&[
            one_block(),
            frame(6, 0, &pages_body(0, 0, &[(16, 1)], &[], 0, None)),
            end_record(2),
        ]),
        ErrorKind::Malformed,
        "beyond block",
    ));
    v.push((
        "pages-not-rising.vms",
        stream_of(&[
            one_block(),
            frame(6, 0, &pages_body(0, 0, &[(3, 1), (3, 1)], &[], 0, None)),
            end_record(2),
        ]),
        ErrorKind::Malformed,
        "not above",
    ));
    v.push((
        "pages-undefined-block.vms",
        stream_of(&[
            frame(6, 0, &pages_body(7, 0, &[(0, 1)], &[], 0, None)),
            end_record(1),
        ]),
        ErrorKind::Malformed,
        "undefined RAM block 7",
    ));
    v.push((
        "pages-raw-length-lies.vms",
        stream_of(&[
            one_block(),
            frame(
                6,
                0,
                &pages_body(0, 0, &[(0, 2)], &[0; 4096], 0, Some(8192)),
            ),
            end_record(2),
        ]),
        ErrorKind::Malformed,
        "raw data length",
    ));
    let padded = |pad, fill| stream_of(&[one_block(), padded_page(pad, fill), end_record(2)]);
    v.push((
        "pages-data-pad-too-large.vms",
        padded(64, 0),
        ErrorKind::Malformed,
        "data pad is 64",
    ));
    v.push((
        "pages-data-pad-not-zero.vms",
        padded(8, 0xff),
        ErrorKind::Malformed,
        "data pad is not zero",
    ));
    let zstd_header = header_with(|h| h.required_features = vmstream::header::FEATURE_ZSTD);
    v.push((
        "zstd-garbage.vms",
        stream_of_raw(
            zstd_header,
            &[
                one_block(),
                frame(
                    6,
                    0,
                    &pages_body(0, 0, &[(0, 2)], b"not zstd at all", 1, None),
                ),
                end_record(2),
            ],
        ),
        ErrorKind::Malformed,
        "zstd page data does not decompress",
    ));
    let zstd_page = zstd::bulk::compress(&[0x5a; 4096], 3).unwrap();
    v.push((
        "pages-compression-without-feature.vms",
        stream_of(&[
            one_block(),
            frame(6, 0, &pages_body(0, 0, &[(0, 2)], &zstd_page, 1, None)),
            end_record(2),
        ]),
        ErrorKind::Malformed,
        "uses zstd compression, but the header lacks the required feature zstd",
    ));
    v.push((
        "epoch-after-barrier.vms",
        stream_of(&[
            one_block(),
            frame(7, 0, &5u32.to_le_bytes()),
            frame(6, 0, &pages_body(0, 5, &[(0, 1)], &[], 0, None)),
            end_record(3),
        ]),
        ErrorKind::Malformed,
        "after the barrier",
    ));
    v.push((
        "end-count-wrong.vms",
        stream_of(&[one_block(), end_record(7)]),
        ErrorKind::Malformed,
        "records lost or added",
    ));
    v.push((
        "missing-end.vms",
        stream_of(&[one_block()]),
        ErrorKind::Malformed,
        "without an end record",
    ));
    v.push((
        "reserved-flag.vms",
        stream_of(&[frame(1, 0x8000, &[0x13]), end_record(1)]),
        ErrorKind::Unsupported,
        "unknown flag bits",
    ));
    v.push((
        "kind-zero.vms",
        stream_of(&[frame(0, 0, &[]), end_record(1)]),
        ErrorKind::Malformed,
        "kind 0 is invalid",
    ));
    let mut pad = frame(1, 0, &[0x13]);
    pad[9] = 1;
    let crc = vmstream_testkit::crc32c(&pad[..pad.len() - 4]);
    let n = pad.len();
    pad[n - 4..].copy_from_slice(&crc.to_le_bytes());
    v.push((
        "nonzero-padding.vms",
        stream_of(&[pad, end_record(1)]),
        ErrorKind::Malformed,
        "padding is not zero",
    ));
    v.push((
        "bad-utf8-string.vms",
        stream_of(&[frame(1, 0, &[0x0d, 2, 0xff, 0xfe]), end_record(1)]),
        ErrorKind::Malformed,
        "not UTF-8",
    ));
    v.push((
        "bool-out-of-range.vms",
        stream_of(&[frame(1, 0, &[0x01, 2]), end_record(1)]),
        ErrorKind::Malformed,
        "bool must be 0 or 1",
    ));
    v.push((
        "overlong-varint.vms",
        stream_of(&[frame(1, 0, &[0x0c, 0x80, 0x00]), end_record(1)]),
        ErrorKind::Malformed,
        "shortest form",
    ));
    let block = |id: u32| RamBlock {
        id,
        name: format!("ram{id}"),
        size: 4096,
        page_size: 4096,
        flags: 0,
    };
    v.push((
        "ram-blocks-duplicate-id.vms",
        stream_of(&[
            frame(5, 0, &blocks_body_unchecked(&[block(3), block(3)])),
            end_record(1),
        ]),
        ErrorKind::Malformed,
        "RAM block id 3 is defined twice in one record",
    ));
    // empty names keep the file small
    let too_many: Vec<RamBlock> = (0..=Limits::default().max_ram_blocks)
        .map(|id| RamBlock {
            name: String::new(),
            ..block(id)
        })
        .collect();
    v.push((
        "too-many-ram-blocks.vms",
        stream_of(&[
            frame(5, 0, &blocks_body_unchecked(&too_many)),
            end_record(1),
        ]),
        ErrorKind::LimitExceeded,
        "exceed Limits::max_ram_blocks",
    ));
    let device = frame(4, 0, &[1, b'd', 0, 0, 0, 0, 1, b't', 0, 0, 0, 0, 0x13]);
    v.push((
        "info-twice.vms",
        stream_of(&[frame(1, 0, &[0x13]), frame(1, 0, &[0x13]), end_record(2)]),
        ErrorKind::Malformed,
        "second info record",
    ));
    v.push((
        "info-after-device.vms",
        stream_of(&[device, frame(1, 0, &[0x13]), end_record(2)]),
        ErrorKind::Malformed,
        "info must come before any device",
    ));
    let mut trailing = sample.clone();
    trailing.extend_from_slice(&frame(1, 0, &[0x13]));
    v.push((
        "record-after-end.vms",
        trailing,
        ErrorKind::Malformed,
        "after the end record",
    ));
    // the rules format 1.1 states for 1.0 and 1.1 streams alike (docs/format.md §10.1)
    let indexed = header_with(|h| h.optional_features = vmstream::header::FEATURE_INDEX);
    let d0 = indexed.len() as u64;
    let dev = unit_device("d");
    let at = d0 + dev.len() as u64;
    let idx = index_record(&[device_entry(d0, "d")]);
    v.push((
        "index-without-feature.vms",
        stream_of(&[dev.clone(), idx.clone(), end_with_index(2, at)]),
        ErrorKind::Malformed,
        "index record in a stream without the index feature",
    ));
    v.push((
        "record-after-index.vms",
        stream_of_raw(
            indexed.clone(),
            &[
                dev.clone(),
                idx.clone(),
                unit_device("e"),
                end_with_index(3, at),
            ],
        ),
        ErrorKind::Malformed,
        "device record after the index record",
    ));
    v.push((
        "end-index-offset-not-the-index.vms",
        stream_of_raw(indexed.clone(), &[dev.clone(), idx, end_with_index(2, d0)]),
        ErrorKind::Malformed,
        "end record gives the index at",
    ));
    v.push((
        "index-incomplete.vms",
        stream_of_raw(
            indexed,
            &[
                dev.clone(),
                unit_device("e"),
                index_record(&[device_entry(d0, "d")]),
                end_with_index(3, at + unit_device("e").len() as u64),
            ],
        ),
        ErrorKind::Malformed,
        "is missing",
    ));
    v.push((
        "qemu-record-without-framing.vms",
        stream_of(&[frame(0x0104, 1, &[0; 9]), end_record(1)]),
        ErrorKind::Malformed,
        "without the qemu-framing feature",
    ));
    v.push((
        "schema-not-a-description.vms",
        stream_of(&[
            frame(3, 1, b"\x01t\x01\x00\x00\x00\x0d\x08nonsense"),
            end_record(1),
        ]),
        ErrorKind::Malformed,
        "schema names the type \"nonsense\"",
    ));
    v.push((
        "name-published-twice.vms",
        stream_of(&[
            frame(2, 0, &[0, 1, 1, b'x']),
            frame(2, 0, &[1, 1, 1, b'x']),
            end_record(2),
        ]),
        ErrorKind::Malformed,
        "published again",
    ));
    let bad_block = |page_size, flags, second: &str| {
        let b = |id: u32, name: &str| RamBlock {
            id,
            name: name.into(),
            size: 4096,
            page_size,
            flags,
        };
        frame(5, 0, &blocks_body_unchecked(&[b(0, "ram"), b(1, second)]))
    };
    v.push((
        "ram-block-page-size.vms",
        stream_of(&[bad_block(3000, 0, "rom"), end_record(1)]),
        ErrorKind::Malformed,
        "page size 3000 is not a power of two",
    ));
    v.push((
        "ram-block-name-twice.vms",
        stream_of(&[bad_block(4096, 0, "ram"), end_record(1)]),
        ErrorKind::Malformed,
        "RAM block name \"ram\" is defined twice",
    ));
    v.push((
        "ram-block-reserved-flag.vms",
        stream_of(&[bad_block(4096, 1 << 8, "rom"), end_record(1)]),
        ErrorKind::Malformed,
        "reserved flag bits 0x100 set",
    ));
    v
}

fn stream_of_raw(header: Vec<u8>, records: &[Vec<u8>]) -> Vec<u8> {
    let mut s = header;
    for r in records {
        s.extend_from_slice(r);
    }
    s
}

#[test]
fn bad_vectors_give_their_errors() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/bad");
    let bless = std::env::var_os("VMSTREAM_BLESS").is_some();
    let mut table = String::from(
        "# Bad-input vectors\n\nEach file is a malformed stream; every reader must fail with the error kind below and a\n\
         message containing the text shown (checked by `crates/vmstream/tests/stream.rs`, which also\n\
         regenerates these files with `VMSTREAM_BLESS=1`).\n\n| file | kind | message contains |\n| --- | --- | --- |\n",
    );
    for (name, bytes, kind, needle) in bad_vectors() {
        for e in [
            read_slice(&bytes, Limits::default()).expect_err(name),
            read_stream(&bytes, 3, Limits::default()).expect_err(name),
            read_push(&bytes, &[5], Limits::default()).expect_err(name),
        ] {
            assert_eq!(e.kind(), kind, "{name}: {e}");
            assert!(
                e.to_string().contains(needle),
                "{name}: {e:?} lacks {needle:?}"
            );
        }
        table.push_str(&format!("| `{name}` | {kind} | {needle} |\n"));
        let path = dir.join(name);
        if bless {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        } else {
            assert_eq!(
                std::fs::read(&path).unwrap_or_else(|_| panic!("missing {}", path.display())),
                bytes,
                "{name} is stale; bless"
            );
        }
    }
    if bless {
        std::fs::write(dir.join("README.md"), table).unwrap();
    }
}

/// A `pages` record may hold one page whatever `max_record_size` says, and no
/// more; other records keep the plain limit (docs/format.md §6.2).
#[test]
fn a_pages_record_always_holds_one_page() {
    let page = 2usize << 20;
    let limits = Limits::default().with_max_record_size(1 << 20);
    let header = Header::new(StreamKind::Snapshot, Arch::X86_64, page as u32)
        .encode()
        .unwrap();
    let blocks = frame(
        5,
        0,
        &blocks_body_unchecked(&[RamBlock {
            id: 0,
            name: "ram".into(),
            size: 4 * page as u64,
            page_size: page as u32,
            flags: 0,
        }]),
    );
    let batch = |pages: &[u64]| {
        let mut b = pages_body(0, 0, &[], &[], 0, Some((pages.len() * page) as u32));
        b[12..16].copy_from_slice(&(pages.len() as u32).to_le_bytes());
        b[16..20].copy_from_slice(&((pages.len() * page) as u32).to_le_bytes());
        for &i in pages {
            b.extend_from_slice(&((i << 8) | 2).to_le_bytes());
        }
        for &i in pages {
            b.extend(std::iter::repeat_n(i as u8 + 1, page));
        }
        frame(6, 0, &b)
    };
    let one = stream_of_raw(
        header.clone(),
        &[blocks.clone(), batch(&[2]), end_record(2)],
    );
    for got in [
        read_slice(&one, limits).unwrap(),
        read_stream(&one, 4099, limits).unwrap(),
        read_push(&one, &[65536, 7], limits).unwrap(),
    ] {
        assert_eq!(got.len(), 3);
        assert!(got[1].contains("pages 0 e0 [2:"), "{got:?}");
    }
    let two = stream_of_raw(header.clone(), &[blocks, batch(&[0, 1]), end_record(2)]);
    let big_info = stream_of_raw(header, &[frame(1, 0, &[0; (1 << 20) + 8]), end_record(1)]);
    for bytes in [two, big_info] {
        for e in [
            read_slice(&bytes, limits).unwrap_err(),
            read_stream(&bytes, 4099, limits).unwrap_err(),
            read_push(&bytes, &[65536], limits).unwrap_err(),
        ] {
            assert_eq!(e.kind(), ErrorKind::LimitExceeded, "{e}");
            assert!(
                e.to_string().contains("exceeds Limits::max_record_size"),
                "{e}"
            );
            assert!(e.location().offset.is_some(), "{e}");
        }
    }
}

#[test]
fn unknown_optional_record_is_skipped() {
    let s = stream_of(&[frame(0x4242, 1, b"later"), end_record(1)]);
    let recs = all_readers_agree(&s);
    assert!(recs[0].contains("other 0x4242"), "{recs:?}");
}

#[test]
fn small_limits_refuse_before_allocating() {
    let bytes = sample_stream();
    let tiny = Limits::default().with_max_record_size(1024);
    let e = read_slice(&bytes, tiny).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::LimitExceeded);
    // a seq claiming many elements with few bytes
    let mut body = vec![0x0e];
    body.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    body.extend_from_slice(&[0x13; 64]);
    let s = stream_of(&[frame(1, 0, &body), end_record(1)]);
    let e = read_slice(&s, Limits::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Malformed);
    assert!(e.message().contains("exceeds"), "{e}");
}

// ---- property tests -------------------------------------------------------------

fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        any::<bool>().prop_map(Value::Bool),
        any::<u8>().prop_map(Value::U8),
        any::<u16>().prop_map(Value::U16),
        any::<u32>().prop_map(Value::U32),
        any::<u64>().prop_map(Value::U64),
        any::<i8>().prop_map(Value::I8),
        any::<i16>().prop_map(Value::I16),
        any::<i32>().prop_map(Value::I32),
        any::<i64>().prop_map(Value::I64),
        any::<u32>().prop_map(|b| Value::F32(f32::from_bits(b))),
        any::<u64>().prop_map(|b| Value::F64(f64::from_bits(b))),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Bytes),
        ".{0,12}".prop_map(Value::String),
        Just(Value::Unit),
        Just(Value::Option(None)),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Seq),
            proptest::collection::btree_map("[a-z_]{1,8}", inner.clone(), 0..6)
                .prop_map(|m| Value::Struct(m.into_iter().collect())),
            inner.clone().prop_map(|v| Value::Option(Some(Box::new(v)))),
            ("[A-Z][a-z]{0,6}", inner.clone()).prop_map(|(n, v)| Value::Enum(n, Box::new(v))),
            proptest::collection::vec((inner.clone(), inner), 0..4).prop_map(Value::Map),
        ]
    })
}

/// Bit-exact comparison (NaN-safe).
fn same(a: &Value, b: &Value) -> bool {
    format!("{a:?}") == format!("{b:?}") && a.to_json() == b.to_json()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn value_binary_round_trip(v in arb_value()) {
        let mut names = vmstream::value::NameTable::new();
        let mut out = Vec::new();
        vmstream::value::encode(&v, &mut names, &mut out);
        let back = vmstream::value::decode(&out, 0, &names, &Limits::default()).unwrap();
        prop_assert!(same(&v, &back));
    }

    #[test]
    fn value_json_round_trip(v in arb_value()) {
        let j = v.to_json();
        let back = Value::from_json(&j).unwrap();
        prop_assert!(same(&v, &back));
        let text = serde_json::to_string(&j).unwrap();
        let reparsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(Value::from_json(&reparsed).unwrap().to_json(), j);
    }

    #[test]
    fn whole_streams_round_trip(
        devices in proptest::collection::vec(arb_value(), 0..4),
        pages in proptest::collection::vec((0u64..32, 0u8..3, any::<u8>()), 0..40),
        compression in 0u8..3,
        index in any::<bool>(),
        batch in 1u32..8,
    ) {
        let c = [Compression::None, Compression::Zstd(1), Compression::Lz4][compression as usize];
        let options = WriterOptions::default().with_compression(c).with_index(index).with_batch_pages(batch);
        let mut w = StreamWriter::new(Vec::new(), Header::new(StreamKind::Live, Arch::Aarch64, 4096), options).unwrap();
        w.write_ram_blocks(&[RamBlock { id: 3, name: "ram".into(), size: 32 * 4096, page_size: 4096, flags: 0 }]).unwrap();
        let mut expect = vec![None::<Vec<u8>>; 32];
        for (i, &(idx, kind, fill)) in pages.iter().enumerate() {
            let data = if kind == 0 { vec![0u8; PAGE] } else { vec![fill | 1; PAGE] };
            w.write_page(3, (i / 10) as u32, idx, &data).unwrap();
            expect[idx as usize] = Some(data);
        }
        for (i, d) in devices.iter().enumerate() {
            w.write_device(&vmstream::DeviceState { name: format!("dev{i}"), instance_id: i as u32, type_name: "t".into(), version: 1, value: d.clone() }).unwrap();
        }
        let bytes = w.finish().unwrap();
        let recs = all_readers_agree(&bytes);
        // replay pages and devices from the slice reader
        let mut r = SliceReader::new(&bytes, Limits::default()).unwrap();
        let mut got = vec![None::<Vec<u8>>; 32];
        let mut devs = Vec::new();
        while let Some(item) = r.next().unwrap() {
            match item.record {
                Record::Pages(b) => for p in b.pages() { got[p.index as usize] = Some(p.data.map_or_else(|| vec![0; PAGE], <[u8]>::to_vec)); },
                Record::Device(d) => devs.push(d.value),
                _ => {}
            }
        }
        prop_assert_eq!(got, expect);
        prop_assert_eq!(devs.len(), devices.len());
        for (a, b) in devs.iter().zip(&devices) { prop_assert!(same(a, b)); }
        prop_assert!(!recs.is_empty());
    }

    #[test]
    fn push_decoder_any_split(sizes in proptest::collection::vec(1usize..5000, 1..20)) {
        let bytes = sample_stream();
        let whole = read_push(&bytes, &[usize::MAX], Limits::default()).unwrap();
        prop_assert_eq!(read_push(&bytes, &sizes, Limits::default()).unwrap(), whole);
    }

    #[test]
    fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512), cut in 0usize..75_000, flip in any::<u8>()) {
        let _ = read_slice(&data, Limits::default());
        let mut s = sample_stream();
        let i = cut % s.len();
        s[i] = s[i].wrapping_add(flip);
        let _ = read_push(&s, &[97], Limits::default());
    }
}

#[test]
fn writer_is_canonical() {
    assert_eq!(sample_stream(), sample_stream());
}

/// The writer starts every uncompressed data area on a 64-byte boundary of the
/// stream, whatever precedes it; compressed batches carry no pad.
#[test]
fn page_data_is_cache_line_aligned() {
    for compression in [Compression::None, Compression::Lz4] {
        let header = Header::new(StreamKind::Snapshot, Arch::X86_64, PAGE as u32);
        let options = WriterOptions::default().with_compression(compression);
        let mut w = StreamWriter::new(Vec::new(), header, options).unwrap();
        w.write_ram_blocks(&[RamBlock {
            id: 0,
            name: "ram".into(),
            size: 64 * PAGE as u64,
            page_size: PAGE as u32,
            flags: 0,
        }])
        .unwrap();
        let mut page = vec![0u8; PAGE];
        // batches of 1..=7 pages, some zero, with odd-sized records between them
        let mut index = 0;
        for n in 1..=7u64 {
            let odd = "x".repeat(n as usize * 3);
            w.write_raw_record(vmstream::RecordKind(0x4242), true, odd.as_bytes())
                .unwrap();
            for i in 0..n {
                page.fill(if i == 1 { 0 } else { n as u8 });
                w.write_page(0, 0, index, &page).unwrap();
                index += 1;
            }
            w.flush_pages().unwrap();
        }
        let bytes = w.finish().unwrap();
        let mut r = SliceReader::new(&bytes, Limits::default()).unwrap();
        let mut seen = 0;
        while let Some(item) = r.next().unwrap() {
            if let Record::Pages(b) = &item.record {
                for data in b.pages().filter_map(|p| p.data) {
                    seen += 1;
                    if compression == Compression::None {
                        let at = data.as_ptr() as usize - bytes.as_ptr() as usize;
                        assert_eq!(at % PAGES_DATA_ALIGN, 0, "page at stream offset {at}");
                    }
                }
            }
        }
        assert_eq!(seen, 28 - 6, "{compression:?}");
    }
}

/// Readers take any data pad of 0..=63 zero bytes, not only the writer's choice.
#[test]
fn any_data_pad_is_read() {
    for pad in [0u8, 1, 8, 63] {
        let bytes = stream_of(&[one_block(), padded_page(pad, 0), end_record(2)]);
        let lines = read_slice(&bytes, Limits::default()).unwrap();
        let want = format!("0:{}", vmstream_testkit::crc32c(&[0x5a; 4096]));
        assert!(
            lines.iter().any(|l| l.contains(&want)),
            "pad {pad}: {lines:?}"
        );
    }
}

// ---- rules docs/format.md 1.1 states for 1.0 and 1.1 streams alike ------------

/// A header as `Header::new` makes it (format 1.1, no features), changed by `f`.
fn header_with(f: impl FnOnce(&mut Header)) -> Vec<u8> {
    let mut h = Header::new(StreamKind::Snapshot, Arch::X86_64, PAGE as u32);
    f(&mut h);
    h.encode().unwrap()
}

/// Every reader refuses `bytes` with an error of `kind` whose message holds `needle`.
fn refused_as(bytes: &[u8], kind: ErrorKind, needle: &str) {
    let lim = Limits::default();
    for e in [
        read_slice(bytes, lim).expect_err(needle),
        read_stream(bytes, 5, lim).expect_err(needle),
        read_push(bytes, &[3, 4096], lim).expect_err(needle),
    ] {
        assert_eq!(e.kind(), kind, "{e}");
        assert!(e.message().contains(needle), "{e} lacks {needle:?}");
        assert!(e.location().offset.is_some(), "{e}");
    }
}

fn refused(bytes: &[u8], needle: &str) {
    refused_as(bytes, ErrorKind::Malformed, needle);
}

/// A `device` record with a unit state, which needs no names.
fn unit_device(name: &str) -> Vec<u8> {
    let mut b = vec![name.len() as u8];
    b.extend_from_slice(name.as_bytes());
    b.extend_from_slice(&[0, 0, 0, 0, 1, b't', 1, 0, 0, 0, 0x13]);
    frame(4, 0, &b)
}

/// One index entry (docs/format.md §7).
fn index_entry(kind: u16, offset: u64, block: u32, first: u64, last: u64, name: &str) -> Vec<u8> {
    let mut b = kind.to_le_bytes().to_vec();
    b.extend_from_slice(&offset.to_le_bytes());
    b.extend_from_slice(&block.to_le_bytes());
    b.extend_from_slice(&first.to_le_bytes());
    b.extend_from_slice(&last.to_le_bytes());
    b.push(name.len() as u8);
    b.extend_from_slice(name.as_bytes());
    b
}

fn index_record(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut b = vec![entries.len() as u8];
    for e in entries {
        b.extend_from_slice(e);
    }
    frame(8, 1, &b)
}

fn end_with_index(records: u64, index_offset: u64) -> Vec<u8> {
    let mut body = records.to_le_bytes().to_vec();
    body.extend_from_slice(&index_offset.to_le_bytes());
    frame(0xff, 0, &body)
}

fn device_entry(offset: u64, name: &str) -> Vec<u8> {
    index_entry(4, offset, u32::MAX, 0, 0, name)
}

/// A header of format 1.`minor` with writer "w" whose `header_len` is `len`, the
/// bytes after the writer string being `trailing` (zero-filled to fit).
fn long_header(minor: u16, len: usize, trailing: &[u8]) -> Vec<u8> {
    let mut h = header_with(|h| {
        h.version_minor = minor;
        h.writer = "w".into();
    });
    h.truncate(41);
    h[12..16].copy_from_slice(&(len as u32).to_le_bytes());
    h.extend_from_slice(trailing);
    h.resize(len - 4, 0);
    let crc = vmstream_testkit::crc32c(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    h
}

/// §2: a later minor version may make the header longer (trailing fields that
/// readers skip); up to 1.1 the header is exactly the writer string and padding;
/// the bound of 4096 and the minimum hold in every version.
#[test]
fn headers_of_later_minor_versions_may_be_longer() {
    let records = [unit_device("d"), end_record(1)];
    for len in [64, 4096] {
        let s = stream_of_raw(long_header(2, len, b"trailing fields"), &records);
        let got = all_readers_agree(&s);
        assert!(
            got[0].starts_with(&format!("#0 @{len:#x} device d")),
            "{got:?}"
        );
        let r = SliceReader::new(&s, Limits::default()).unwrap();
        assert_eq!(r.state().header().version_minor, 2);
        assert_eq!(r.state().header().writer, "w");
    }
    for minor in [0, 1] {
        let s = stream_of_raw(long_header(minor, 64, &[]), &records);
        refused(&s, "does not fit a writer string of 1 bytes (expected 48)");
    }
    let s = stream_of_raw(long_header(1, 48, b"\0\0\x01"), &records);
    refused(&s, "header padding is not zero");
    let s = stream_of_raw(long_header(2, 4104, &[]), &records);
    refused(&s, "in 48..=4096");
    // a 1.2 header shorter than its writer string needs: cut, with a right CRC
    let mut short = header_with(|h| {
        h.version_minor = 2;
        h.writer = "twelve chars".into();
    });
    short.truncate(44);
    short[12..16].copy_from_slice(&48u32.to_le_bytes());
    let crc = vmstream_testkit::crc32c(&short);
    short.extend_from_slice(&crc.to_le_bytes());
    refused(&stream_of_raw(short, &records), "expected at least 56");
}

/// §2: unknown arch and kind values read in a stream of any minor version; the
/// writer string must be UTF-8.
#[test]
fn informational_header_fields() {
    for minor in [0, 1, 7] {
        let h = header_with(|h| {
            h.version_minor = minor;
            h.arch = Arch::Other(0x1234);
            h.kind = StreamKind::Other(0xfe);
        });
        let s = stream_of_raw(h, &[end_record(0)]);
        all_readers_agree(&s);
        let r = SliceReader::new(&s, Limits::default()).unwrap();
        assert_eq!(r.state().header().arch, Arch::Other(0x1234));
    }
    let mut h = header_with(|h| h.writer = "ab".into());
    h[41] = 0xff;
    let n = h.len() - 4;
    let crc = vmstream_testkit::crc32c(&h[..n]);
    h[n..].copy_from_slice(&crc.to_le_bytes());
    refused(
        &stream_of_raw(h, &[end_record(0)]),
        "writer string is not UTF-8",
    );
}

/// §2.1, §6.2: a compression needs its required feature bit, also in a batch
/// without data pages, whose data area is empty whatever its compression.
#[test]
fn compression_needs_its_feature_bit() {
    let zero_only = |compression| frame(6, 0, &pages_body(0, 0, &[(0, 1)], &[], compression, None));
    let with = |features| header_with(|h| h.required_features = features);
    use vmstream::header::{FEATURE_LZ4, FEATURE_ZSTD};
    for (c, bit, name) in [(1, FEATURE_ZSTD, "zstd"), (2, FEATURE_LZ4, "lz4")] {
        let records = [one_block(), zero_only(c), end_record(2)];
        all_readers_agree(&stream_of_raw(with(bit), &records));
        let other = FEATURE_ZSTD ^ FEATURE_LZ4 ^ bit;
        for features in [0, other] {
            refused(
                &stream_of_raw(with(features), &records),
                &format!("lacks the required feature {name}"),
            );
        }
    }
    // an empty zstd frame where the data area must be empty
    let empty_frame = zstd::bulk::compress(&[], 1).unwrap();
    let mut body = pages_body(0, 0, &[(0, 1)], &empty_frame, 1, None);
    body[20..24].copy_from_slice(&0u32.to_le_bytes());
    let s = stream_of_raw(
        with(FEATURE_ZSTD),
        &[one_block(), frame(6, 0, &body), end_record(2)],
    );
    refused(&s, "must be empty (stored length 0)");
    // what the writer makes of zero pages under compression reads back
    for c in [Compression::Zstd(1), Compression::Lz4] {
        let mut w = StreamWriter::new(
            Vec::new(),
            Header::new(StreamKind::Snapshot, Arch::X86_64, 4096),
            WriterOptions::default().with_compression(c),
        )
        .unwrap();
        w.write_ram_blocks(&[RamBlock {
            id: 0,
            name: "ram".into(),
            size: 4 * 4096,
            page_size: 4096,
            flags: 0,
        }])
        .unwrap();
        w.write_page(0, 0, 1, &[0; 4096]).unwrap();
        let got = all_readers_agree(&w.finish().unwrap());
        assert!(got[1].contains("pages 0 e0 [1:0]"), "{got:?}");
    }
}

/// §2.1, §7, §8: an index needs the index bit, is alone, right before `end`,
/// where `end` says, and lists exactly the records it must.
#[test]
fn the_index_is_checked_against_the_records() {
    use vmstream::header::FEATURE_INDEX;
    let h = header_with(|h| h.optional_features = FEATURE_INDEX);
    let d0 = h.len() as u64;
    let dev = unit_device("d");
    let at = d0 + dev.len() as u64;
    let stream = |h: &[u8], records: &[Vec<u8>]| stream_of_raw(h.to_vec(), records);
    let good = [
        dev.clone(),
        index_record(&[device_entry(d0, "d")]),
        end_with_index(2, at),
    ];
    let lines = all_readers_agree(&stream(&h, &good));
    assert!(lines[1].contains("index"), "{lines:?}");
    // entries of kinds the reader does not know are ignored
    let unknown = index_entry(0x77, 1 << 40, 9, 9, 9, "x");
    all_readers_agree(&stream(
        &h,
        &[
            dev.clone(),
            index_record(&[unknown.clone(), device_entry(d0, "d"), unknown]),
            end_with_index(2, at),
        ],
    ));
    // the bit may be set without an index
    all_readers_agree(&stream(&h, &[dev.clone(), end_record(1)]));

    refused(
        &stream(&header_bytes(), &good),
        "index record in a stream without the index feature",
    );
    let idx = index_record(&[device_entry(d0, "d")]);
    refused(
        &stream(
            &h,
            &[
                dev.clone(),
                idx.clone(),
                unit_device("e"),
                end_with_index(3, at),
            ],
        ),
        "device record after the index record",
    );
    refused(
        &stream(
            &h,
            &[dev.clone(), idx.clone(), idx.clone(), end_with_index(3, at)],
        ),
        "index record after the index record",
    );
    refused(
        &stream(&h, &[dev.clone(), idx.clone(), end_with_index(2, 0)]),
        "end record gives no index (0), but the stream has its index record at",
    );
    refused(
        &stream(&h, &[dev.clone(), idx.clone(), end_with_index(2, d0)]),
        &format!(
            "end record gives the index at {d0:#x}, but the stream has its index record at {at:#x}"
        ),
    );
    refused(
        &stream(&h, &[dev.clone(), end_with_index(1, d0)]),
        "but the stream has no index record",
    );
    for (entries, needle) in [
        (
            vec![],
            "the index lists 0 of the stream's 1 records it must list",
        ),
        (
            vec![device_entry(d0, "x")],
            "index entry 0 lists a device record",
        ),
        (
            vec![device_entry(d0 + 8, "d")],
            "index entry 0 lists a device record",
        ),
        (
            vec![index_entry(4, d0, 0, 0, 0, "d")],
            "where the stream has a device record",
        ),
        (
            vec![device_entry(d0, "d"), device_entry(d0, "d")],
            "index entry 1 lists a device record",
        ),
    ] {
        refused(
            &stream(
                &h,
                &[dev.clone(), index_record(&entries), end_with_index(2, at)],
            ),
            needle,
        );
    }
    // format 1.0 indexes list devices and pages only; 1.1 also names and ram-blocks
    let names = frame(2, 0, &[0, 1, 1, b'a']);
    let dev_at = d0 + names.len() as u64;
    let at = dev_at + dev.len() as u64;
    let records = [
        names,
        dev.clone(),
        index_record(&[device_entry(dev_at, "d")]),
        end_with_index(3, at),
    ];
    let h10 = header_with(|h| {
        h.optional_features = FEATURE_INDEX;
        h.version_minor = 0;
    });
    all_readers_agree(&stream(&h10, &records));
    refused(&stream(&h, &records), "a names record at offset");
}

/// §5.3: checking the index costs at most one index record's worth of entries;
/// past that a stream can have no complete index. The writer leaves such an
/// index out, and its stream reads.
#[test]
fn index_check_is_bounded_by_the_record_limit() {
    use vmstream::header::FEATURE_INDEX;
    let limits = Limits::default().with_max_record_size(256);
    let h = header_with(|h| h.optional_features = FEATURE_INDEX);
    let mut records = Vec::new();
    let mut at = h.len() as u64;
    let name = "n".repeat(40);
    for _ in 0..4 {
        let d = unit_device(&name);
        at += d.len() as u64;
        records.push(d);
    }
    records.push(index_record(&[]));
    records.push(end_with_index(5, at));
    let s = stream_of_raw(h, &records);
    for e in [
        read_slice(&s, limits).unwrap_err(),
        read_push(&s, &[7], limits).unwrap_err(),
    ] {
        assert_eq!(e.kind(), ErrorKind::Malformed, "{e}");
        assert!(e.message().contains("more than an index record"), "{e}");
    }
    let mut w = StreamWriter::new(
        Vec::new(),
        Header::new(StreamKind::Snapshot, Arch::X86_64, 4096),
        WriterOptions::default().with_limits(limits),
    )
    .unwrap();
    for i in 0..8 {
        w.write_device(&vmstream::DeviceState {
            name: format!("{name}{i}"),
            instance_id: 0,
            type_name: "t".into(),
            version: 1,
            value: Value::Unit,
        })
        .unwrap();
    }
    let bytes = w.finish().unwrap();
    assert_eq!(
        read_slice(&bytes, limits).unwrap().len(),
        9,
        "no index, an end"
    );
}

/// §2.1: QEMU conversion records only in streams with qemu-framing.
#[test]
fn qemu_records_need_qemu_framing() {
    use vmstream::header::FEATURE_QEMU_FRAMING;
    let records = [frame(0x0105, 1, &[]), end_record(1)];
    refused(
        &stream_of(&records),
        "QEMU conversion record 0x0105 in a stream without the qemu-framing feature",
    );
    let h = header_with(|h| h.optional_features = FEATURE_QEMU_FRAMING);
    let got = all_readers_agree(&stream_of_raw(h, &records));
    assert!(got[0].contains("other 0x105"), "{got:?}");
    // other unknown optional kinds need no feature
    all_readers_agree(&stream_of(&[frame(0x0200, 1, &[]), end_record(1)]));
}

/// §3: a reader reads the kinds it knows whatever their OPTIONAL bit says.
#[test]
fn known_kinds_read_whatever_their_optional_flag() {
    let with_flags = |mut rec: Vec<u8>, flags: u16| {
        rec[2..4].copy_from_slice(&flags.to_le_bytes());
        let n = rec.len() - 4;
        let crc = vmstream_testkit::crc32c(&rec[..n]);
        rec[n..].copy_from_slice(&crc.to_le_bytes());
        rec
    };
    let schema = frame(3, 0, &[1, b't', 1, 0, 0, 0, 0x0d, 2, b'u', b'8']);
    let got = all_readers_agree(&stream_of(&[
        with_flags(unit_device("d"), 1),
        schema,
        with_flags(end_record(2), 1),
    ]));
    assert!(
        got[0].contains("device d") && got[1].contains("schema t"),
        "{got:?}"
    );
}

/// §5.2: a name is published once.
#[test]
fn names_are_published_once() {
    all_readers_agree(&stream_of(&[
        frame(2, 0, &[0, 2, 1, b'a', 1, b'b']),
        frame(2, 0, &[2, 0]),
        frame(2, 0, &[2, 1, 1, b'c']),
        end_record(3),
    ]));
    refused(
        &stream_of(&[frame(2, 0, &[0, 2, 1, b'a', 1, b'a']), end_record(1)]),
        "name \"a\" is published again (it has id 0",
    );
    refused(
        &stream_of(&[
            frame(2, 0, &[0, 2, 1, b'a', 1, b'b']),
            frame(2, 0, &[2, 2, 1, b'c', 1, b'b']),
            end_record(2),
        ]),
        "name \"b\" is published again (it has id 1",
    );
    // many names: first id 0, 1024 names, then one of them again
    let mut body = vec![0, 0x80, 0x08];
    for i in 0..1024u32 {
        let s = format!("{i}");
        body.push(s.len() as u8);
        body.extend_from_slice(s.as_bytes());
    }
    all_readers_agree(&stream_of(&[frame(2, 0, &body), end_record(1)]));
    body.extend_from_slice(&[3, b'5', b'1', b'2']);
    body[1..3].copy_from_slice(&[0x81, 0x08]);
    refused(
        &stream_of(&[frame(2, 0, &body), end_record(1)]),
        "name \"512\" is published again (it has id 512",
    );
}

/// §4.3: a schema description follows the grammar; a reader that decodes
/// schemas refuses one that does not.
#[test]
fn schema_descriptions_follow_the_grammar() {
    // names: 0 struct, 1 seq, 2 map, 3 enum, 4 option, 5 a, 6 tuple
    let names = frame(
        2,
        0,
        b"\x00\x07\x06struct\x03seq\x03map\x04enum\x06option\x01a\x05tuple",
    );
    let schema = |desc: &[u8]| {
        let mut b = vec![1, b't', 1, 0, 0, 0];
        b.extend_from_slice(desc);
        frame(3, 1, &b)
    };
    let string = |s: &str| {
        let mut b = vec![0x0d, s.len() as u8];
        b.extend_from_slice(s.as_bytes());
        b
    };
    let en = |variant: u8, payload: &[u8]| [&[0x12, variant][..], payload].concat();
    for scalar in vmstream::record::SCHEMA_SCALARS {
        all_readers_agree(&stream_of(&[
            names.clone(),
            schema(&string(scalar)),
            end_record(2),
        ]));
    }
    let u8_ = string("u8");
    let good = [
        en(0, &[&[0x0f, 1, 5][..], &u8_].concat()),
        en(1, &en(4, &u8_)),
        en(2, &[&[0x0e, 2][..], &u8_, &string("any")].concat()),
        en(3, &string("any")),
        en(0, &[0x0f, 0]),
    ];
    for desc in &good {
        all_readers_agree(&stream_of(&[names.clone(), schema(desc), end_record(2)]));
    }
    let bad: [(Vec<u8>, &str); 8] = [
        (string("nonsense"), "schema names the type \"nonsense\""),
        (string("option"), "schema names the type \"option\""),
        (vec![0x02, 1], "a u8 is not a type description"),
        (
            en(2, &[&[0x0e, 1][..], &u8_].concat()),
            "\"map\" with a seq payload",
        ),
        (en(3, &u8_), "\"enum\" with a string payload"),
        (
            en(0, &[&[0x0e, 1][..], &u8_].concat()),
            "\"struct\" with a seq payload",
        ),
        (en(6, &u8_), "\"tuple\" with a string payload"),
        (
            en(0, &[&[0x0f, 1, 5][..], &en(1, &string("u128"))].concat()),
            "\"u128\"",
        ),
    ];
    for (desc, needle) in bad {
        refused(
            &stream_of(&[names.clone(), schema(&desc), end_record(2)]),
            needle,
        );
    }
    let e = read_slice(
        &stream_of(&[
            names.clone(),
            schema(&en(
                0,
                &[&[0x0f, 1, 5][..], &en(1, &string("u128"))].concat(),
            )),
            end_record(2),
        ]),
        Limits::default(),
    )
    .unwrap_err();
    assert_eq!(e.location().field.as_deref(), Some("a.seq"), "{e}");
}

/// §6.1: block names are unique, block page sizes are powers of two in
/// 512..=1 GiB, sizes may be 0, reserved flags are zero up to 1.1 and ignored
/// in later minor versions.
#[test]
fn ram_block_rules() {
    let block = |id: u32, name: &str, size: u64, page_size: u32, flags: u32| RamBlock {
        id,
        name: name.into(),
        size,
        page_size,
        flags,
    };
    let blocks = |b: &[RamBlock]| frame(5, 0, &blocks_body_unchecked(b));
    all_readers_agree(&stream_of(&[
        blocks(&[
            block(0, "", 0, 512, 0),
            block(1, "huge", 3 * 4096, 1 << 30, 3),
            block(2, "small", 4096, 1024, 0),
        ]),
        end_record(1),
    ]));
    for bad in [0, 256, 3000, 1 << 31] {
        refused(
            &stream_of(&[blocks(&[block(0, "ram", 4096, bad, 0)]), end_record(1)]),
            &format!("page size {bad} is not a power of two"),
        );
    }
    refused(
        &stream_of(&[
            blocks(&[
                block(0, "ram", 4096, 4096, 0),
                block(1, "ram", 4096, 4096, 0),
            ]),
            end_record(1),
        ]),
        "RAM block name \"ram\" is defined twice",
    );
    refused(
        &stream_of(&[
            blocks(&[block(0, "ram", 4096, 4096, 0)]),
            blocks(&[block(1, "ram", 4096, 4096, 0)]),
            end_record(2),
        ]),
        "RAM block name \"ram\" is defined twice",
    );
    let flagged = [
        blocks(&[block(0, "ram", 4096, 4096, 1 << 5 | 1)]),
        end_record(1),
    ];
    for minor in [0, 1] {
        refused(
            &stream_of_raw(header_with(|h| h.version_minor = minor), &flagged),
            "reserved flag bits 0x20 set",
        );
    }
    let s = stream_of_raw(header_with(|h| h.version_minor = 2), &flagged);
    all_readers_agree(&s);
    let mut r = SliceReader::new(&s, Limits::default()).unwrap();
    r.next().unwrap();
    assert_eq!(
        r.state().block(0).unwrap().flags,
        1 << 5 | 1,
        "kept as read"
    );
}

/// §5.3: depth counts containers, an empty one as 1; 128 is read, 129 is not.
#[test]
fn value_depth_counts_containers() {
    let info = |somes: usize| {
        let mut v = vec![0x11; somes];
        v.extend_from_slice(&[0x0e, 0]); // an empty seq: depth 1
        frame(1, 0, &v)
    };
    all_readers_agree(&stream_of(&[info(127), end_record(1)]));
    refused_as(
        &stream_of(&[info(128), end_record(1)]),
        ErrorKind::LimitExceeded,
        "nests deeper than Limits::max_depth",
    );
}
