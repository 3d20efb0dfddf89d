//! Page-batch throughput against `memcpy` of the same bytes.
//!
//! Writes `VMSTREAM_BENCH_MIB` (default 1024) MiB of random 4 KiB pages as
//! checksummed page batches into memory, reads them back (CRC verified, page data
//! handed out by reference), and copies the same bytes with `copy_from_slice`,
//! all on one core in one run. It also times CRC32C of the same bytes: each byte
//! is checksummed on write (while it is copied) and again on read.
//! `scripts/bench-pages.sh` prints the ratios.

#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vmstream::{
    Arch, Compression, Header, Limits, RamBlock, Record, SliceReader, StreamKind, StreamWriter,
    WriterOptions,
};

const PAGE: usize = 4096;
const BATCH: usize = 256;

fn mib() -> usize {
    std::env::var("VMSTREAM_BENCH_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1024)
}

fn random_bytes(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

fn write_stream(ram: &[u8], out: Vec<u8>, compression: Compression) -> Vec<u8> {
    let header = Header::new(StreamKind::Snapshot, Arch::X86_64, PAGE as u32);
    let options = WriterOptions::default()
        .with_compression(compression)
        .with_index(false);
    let mut w = StreamWriter::new(out, header, options).expect("header");
    w.write_ram_blocks(&[RamBlock {
        id: 0,
        name: "ram".into(),
        size: ram.len() as u64,
        page_size: 4096,
        flags: 0,
    }])
    .expect("blocks");
    let mut batch: Vec<(u64, &[u8])> = Vec::with_capacity(BATCH);
    for (chunk_no, chunk) in ram.chunks(BATCH * PAGE).enumerate() {
        batch.clear();
        let first = (chunk_no * BATCH) as u64;
        batch.extend(
            chunk
                .chunks_exact(PAGE)
                .enumerate()
                .map(|(i, p)| (first + i as u64, p)),
        );
        w.write_pages(0, 0, &batch).expect("pages");
    }
    w.finish().expect("finish")
}

fn read_stream(stream: &[u8]) -> u64 {
    let mut r = SliceReader::new(stream, Limits::default()).expect("header");
    let mut pages = 0u64;
    while let Some(item) = r.next().expect("record") {
        if let Record::Pages(b) = item.record {
            for p in b.pages() {
                black_box(p.data);
                pages += 1;
            }
        }
    }
    pages
}

fn bench(c: &mut Criterion) {
    let len = mib() << 20;
    let ram = random_bytes(len);
    let mut dst = vec![0u8; len];
    let mut stream = write_stream(&ram, Vec::with_capacity(len + len / 64), Compression::None);

    let mut g = c.benchmark_group("pages");
    g.throughput(Throughput::Bytes(len as u64));
    // At 1 GiB the first samples of a function ran up to 1.5x slower than the
    // rest on the test machine: warm up past them, and take more samples.
    let big = len >= 1 << 30;
    g.sample_size(if big { 15 } else { 10 });
    g.warm_up_time(Duration::from_secs(if big { 5 } else { 1 }));
    g.measurement_time(Duration::from_secs(if big { 25 } else { 5 }));

    g.bench_function("memcpy", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&ram));
            black_box(&dst);
        })
    });
    // The checksum alone, which is all a read does to the page data.
    g.bench_function("crc32c", |b| {
        b.iter(|| black_box(vmstream::crc32c(black_box(&ram))))
    });
    g.bench_function("write", |b| {
        b.iter(|| {
            stream.clear();
            stream = write_stream(&ram, std::mem::take(&mut stream), Compression::None);
        })
    });
    g.bench_function("read", |b| b.iter(|| black_box(read_stream(&stream))));
    g.bench_function("write+read", |b| {
        b.iter(|| {
            stream.clear();
            stream = write_stream(&ram, std::mem::take(&mut stream), Compression::None);
            black_box(read_stream(&stream))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
