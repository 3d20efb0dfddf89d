//! Regenerates the committed seed corpora in `fuzz/seeds/<target>/` from the
//! test vectors in `testdata/` and the test kit's sample streams:
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --example make_seeds
//! ```
//!
//! Deterministic: running it again gives the same files.

use std::fs;
use std::path::{Path, PathBuf};

use vmstream::value::{encode, NameTable};
use vmstream::{
    Arch, Compression, Header, Limits, RamBlock, Record, SliceReader, StreamKind, StreamWriter,
    Value, WriterOptions,
};
use vmstream_fuzz::{fix_crcs, VALUE_NAMES};

/// Bad vectors larger than this are near-copies of the sample and add nothing.
const MAX_BAD: u64 = 8 << 10;

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::write(dir.join(name), bytes).unwrap_or_else(|e| panic!("write {name}: {e}"));
}

fn fresh_dir(root: &Path, target: &str) -> PathBuf {
    let dir = root.join(target);
    if dir.exists() {
        fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("clear {}: {e}", dir.display()));
    }
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// The values in a stream (info, schemas, devices), encoded against the
/// `value_decode` target's name table.
fn values_of(stream: &[u8]) -> Vec<Value> {
    let mut r = SliceReader::new(stream, Limits::default()).expect("sample header");
    let mut out = Vec::new();
    while let Some(item) = r.next().expect("sample record") {
        match item.record {
            Record::Info(v) => out.push(v),
            Record::Schema(s) => out.push(s.schema),
            Record::Device(d) => out.push(d.value),
            _ => {}
        }
    }
    out
}

/// `stream` with the body of every `epoch` record set to 0, checksums fixed:
/// the second barrier then does not rise.
fn falling_barriers(stream: &[u8]) -> Vec<u8> {
    let mut out = stream.to_vec();
    let le32 = |b: &[u8], at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let mut off = le32(&out, 12) as usize;
    while off + 8 <= out.len() {
        let kind = u16::from_le_bytes([out[off], out[off + 1]]);
        let len = le32(&out, off + 4) as usize;
        if kind == 0x0007 && len == 4 {
            out[off + 8..off + 12].fill(0);
        }
        off += vmstream::record::framed_len(len);
    }
    fix_crcs(&mut out);
    out
}

/// A stream with 2 MiB pages and only zero pages: a mutation to a data page
/// reaches the check of the inflated size against the record size limit.
fn huge_pages() -> Vec<u8> {
    const PAGE: u32 = 2 << 20;
    let header = Header::new(StreamKind::Live, Arch::Aarch64, PAGE);
    let mut w = StreamWriter::new(Vec::new(), header, WriterOptions::default()).expect("header");
    w.write_ram_blocks(&[RamBlock {
        id: 0,
        name: "ram".into(),
        size: 4 * u64::from(PAGE),
        page_size: PAGE,
        flags: 0,
    }])
    .expect("blocks");
    w.write_zero_page(0, 0, 1).expect("zero page");
    w.write_zero_page(0, 0, 3).expect("zero page");
    w.finish().expect("finish")
}

/// One value of every type.
fn every_type() -> Value {
    Value::Struct(vec![
        ("a".into(), Value::Bool(true)),
        (
            "regs".into(),
            Value::Seq(vec![
                Value::U8(1),
                Value::U16(2),
                Value::U32(3),
                Value::U64(4),
            ]),
        ),
        (
            "rax".into(),
            Value::Seq(vec![
                Value::I8(-1),
                Value::I16(-2),
                Value::I32(-3),
                Value::I64(-4),
            ]),
        ),
        (
            "".into(),
            Value::Seq(vec![
                Value::F32(f32::from_bits(0x7fc0_0001)),
                Value::F64(-0.0),
                Value::F64(f64::INFINITY),
                Value::F32(0.1),
            ]),
        ),
        ("queues".into(), Value::Bytes(vec![0, 1, 0xff])),
        ("reason".into(), Value::String("h\u{e9}".into())),
        (
            "Down".into(),
            Value::Option(Some(Box::new(Value::Option(None)))),
        ),
        (
            "Up".into(),
            Value::Enum("Down".into(), Box::new(Value::Unit)),
        ),
        (
            "map".into(),
            Value::Map(vec![
                (Value::String("k".into()), Value::Struct(vec![])),
                (Value::Unit, Value::Seq(vec![])),
            ]),
        ),
    ])
}

fn nested(depth: usize) -> Value {
    let mut v = Value::Unit;
    for i in 0..depth {
        v = match i % 4 {
            0 => Value::Seq(vec![v]),
            1 => Value::Option(Some(Box::new(v))),
            2 => Value::Enum("Up".into(), Box::new(v)),
            _ => Value::Map(vec![(Value::U8(0), v)]),
        };
    }
    v
}

/// Deterministic pseudo-random bytes.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn main() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let seeds = repo.join("fuzz/seeds");
    let sample = fs::read(repo.join("testdata/good/sample.vms")).expect("testdata/good/sample.vms");
    let zstd = vmstream_testkit::sample_compressed(Compression::Zstd(3));
    let lz4 = vmstream_testkit::sample_compressed(Compression::Lz4);
    let mut bad: Vec<(String, Vec<u8>)> = Vec::new();
    let mut entries: Vec<_> = fs::read_dir(repo.join("testdata/bad"))
        .expect("testdata/bad")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "vms"))
        .collect();
    entries.sort();
    for p in entries {
        if fs::metadata(&p).map(|m| m.len()).unwrap_or(u64::MAX) <= MAX_BAD {
            let name = p
                .file_name()
                .expect("file name")
                .to_string_lossy()
                .into_owned();
            bad.push((name, fs::read(&p).expect("bad vector")));
        }
    }

    // record_reader: whole streams.
    let dir = fresh_dir(&seeds, "record_reader");
    write(&dir, "good-sample.vms", &sample);
    write(&dir, "good-sample-zstd.vms", &zstd);
    write(&dir, "good-sample-lz4.vms", &lz4);
    for (name, b) in &bad {
        write(&dir, &format!("bad-{name}"), b);
    }
    write(
        &dir,
        "bad-barrier-not-rising.vms",
        &falling_barriers(&sample),
    );
    write(&dir, "good-huge-pages.vms", &huge_pages());

    // push_decoder_split: a control byte and chunk sizes, then the stream.
    let dir = fresh_dir(&seeds, "push_decoder_split");
    let splits: [(&str, Vec<u8>); 3] = [
        ("bytewise", vec![0x00]),
        ("chunks-7", vec![0x01, 7, 0]),
        ("mixed", vec![0x04, 13, 0, 0, 0, 0x00, 0x10, 0x30, 0]),
    ];
    for (i, (split, prefix)) in splits.iter().enumerate() {
        let stream = [&sample, &zstd, &lz4][i];
        let kind = ["plain", "zstd", "lz4"][i];
        write(
            &dir,
            &format!("{split}-{kind}.bin"),
            &[&prefix[..], stream].concat(),
        );
    }
    for (name, b) in bad.iter().step_by(3) {
        write(
            &dir,
            &format!("chunks-5-{name}"),
            &[&[0x81, 5, 0][..], b].concat(),
        );
    }

    // value_decode: a name-count byte (all names), then one value.
    let dir = fresh_dir(&seeds, "value_decode");
    let mut values = values_of(&sample);
    values.push(every_type());
    values.push(nested(40));
    values.push(nested(130));
    for (i, v) in values.iter().enumerate() {
        let mut names = NameTable::new();
        for n in VALUE_NAMES {
            names.intern(n);
        }
        let mut out = vec![VALUE_NAMES.len() as u8];
        encode(v, &mut names, &mut out);
        assert_eq!(
            names.len(),
            VALUE_NAMES.len(),
            "seed value {i} uses a name outside VALUE_NAMES"
        );
        write(&dir, &format!("value-{i}.bin"), &out);
    }

    // roundtrip: `arbitrary` has no inverse; noise of a few sizes is a start.
    let dir = fresh_dir(&seeds, "roundtrip");
    for (i, n) in [64usize, 256, 1024, 4096].into_iter().enumerate() {
        write(&dir, &format!("noise-{n}.bin"), &noise(n, i as u64 + 1));
    }

    // seek_reader: files with a format 1.1 index, a 1.0 index, and none.
    let dir = fresh_dir(&seeds, "seek_reader");
    write(&dir, "sample.vms", &sample);
    let old = fs::read(repo.join("testdata/good/sample-1.0.vms")).expect("sample-1.0.vms");
    write(&dir, "sample-1.0.vms", &old);
    write(&dir, "sample-lz4.vms", &lz4);
    let no_index = vmstream_testkit::sample_stream_with(WriterOptions::default().with_index(false));
    write(&dir, "sample-no-index.vms", &no_index);

    // qemu_vmdesc: an `arbitrary` plan too.
    let dir = fresh_dir(&seeds, "qemu_vmdesc");
    for (i, n) in [64usize, 256, 1024, 4096].into_iter().enumerate() {
        write(&dir, &format!("noise-{n}.bin"), &noise(n, i as u64 + 11));
    }
    println!("seeds written to fuzz/seeds/");
}
