//! `dump --device` and `extract --range` on files seek through the index and
//! give exactly what reading the whole stream (through a pipe) gives; they
//! touch nothing else of the file, and fall back to reading the stream, with
//! a warning, when the index lies.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use vmstream::record::IndexEntry;
use vmstream::{
    Arch, Compression, Header, Limits, RamBlock, Record, RecordKind, SliceReader, StreamKind,
    StreamWriter, WriterOptions,
};
use vmstream_testkit::{fill_pattern, frame, sample_devices, sample_stream_with, PAGE};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmstream"))
        .args(args)
        .current_dir(root())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vmstream");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        // the command may stop reading early; a broken pipe is its answer
        let _ = pipe.write_all(input);
    }
    child.wait_with_output().expect("wait")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(out: Output) -> Vec<u8> {
    assert!(
        out.status.success(),
        "exit {:?}\nstderr:\n{}",
        out.status.code(),
        text(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "no warning expected: {}",
        text(&out.stderr)
    );
    out.stdout
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The same command on the file and on its bytes through standard input
/// (`FILE` in `args` stands for either).
fn file_and_pipe(file: &Path, args: &[&str]) -> (Output, Output) {
    let bytes = fs::read(file).expect("read");
    let with = |f: &'static str| -> Vec<String> {
        args.iter()
            .map(|a| if *a == "FILE" { f } else { a }.to_owned())
            .collect()
    };
    let by_file: Vec<String> = args
        .iter()
        .map(|a| if *a == "FILE" { s(file) } else { a }.to_owned())
        .collect();
    let by_pipe = with("-");
    let file_args: Vec<&str> = by_file.iter().map(String::as_str).collect();
    let pipe_args: Vec<&str> = by_pipe.iter().map(String::as_str).collect();
    (run(&file_args, None), run(&pipe_args, Some(&bytes)))
}

/// Streams to try: the sample as written now, compressed, without an index,
/// and as the format 1.0 writer wrote it.
fn samples(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![
        root().join("testdata/good/sample.vms"),
        root().join("testdata/good/sample-1.0.vms"),
    ];
    for (name, options) in [
        (
            "zstd.vms",
            WriterOptions::default().with_compression(Compression::Zstd(3)),
        ),
        (
            "lz4.vms",
            WriterOptions::default().with_compression(Compression::Lz4),
        ),
        ("no-index.vms", WriterOptions::default().with_index(false)),
    ] {
        let p = dir.join(name);
        fs::write(&p, sample_stream_with(options)).expect("write");
        out.push(p);
    }
    out
}

#[test]
fn dump_device_of_a_file_is_what_the_pipe_gives() {
    let dir = tempfile::tempdir().expect("tempdir");
    for file in samples(dir.path()) {
        for device in ["serial0", "0000:00:03.0/virtio-net", "serial0:0"] {
            for json in [false, true] {
                let mut args = vec!["dump", "FILE", "--device", device];
                if json {
                    args.push("--json");
                }
                let (a, b) = file_and_pipe(&file, &args);
                let (a, b) = (ok(a), ok(b));
                assert!(!a.is_empty());
                assert_eq!(text(&a), text(&b), "{} {device}", file.display());
            }
        }
        for device in ["nope", "serial0:1", "serial0:x"] {
            let (a, b) = file_and_pipe(&file, &["dump", "FILE", "--device", device]);
            assert_eq!(a.status.code(), Some(1));
            assert_eq!(
                text(&a.stderr).replace(s(&file), "-"),
                text(&b.stderr),
                "{device}"
            );
            assert!(text(&a.stderr).contains("no device named"));
        }
    }
}

/// A file with `pages` pages of RAM in block `pc.ram`, every 5th page data,
/// a second round re-sending some pages, and devices after the RAM.
fn ram_file(path: &Path, pages: u64) {
    let header = Header::new(StreamKind::Snapshot, Arch::X86_64, PAGE as u32);
    let mut w = StreamWriter::new(Vec::new(), header, WriterOptions::default()).expect("writer");
    w.write_ram_blocks(&[
        RamBlock {
            id: 3,
            name: "pc.ram".into(),
            size: pages * PAGE as u64,
            page_size: PAGE as u32,
            flags: 0,
        },
        RamBlock {
            id: 4,
            name: "0000:00:02.0/vga.rom".into(),
            size: 4 * PAGE as u64,
            page_size: PAGE as u32,
            flags: RamBlock::FLAG_READONLY,
        },
    ])
    .expect("blocks");
    let mut page = vec![0u8; PAGE];
    for i in 0..pages {
        fill_pattern(&mut page, i);
        if i % 5 == 0 {
            w.write_page(3, 0, i, &page).expect("page");
        } else {
            w.write_zero_page(3, 0, i).expect("page");
        }
    }
    for i in 0..4 {
        fill_pattern(&mut page, 1000 + i);
        w.write_page(4, 0, i, &page).expect("page");
    }
    w.write_epoch(0).expect("epoch");
    for i in (0..pages).step_by(37) {
        if i % 2 == 0 {
            w.write_zero_page(3, 1, i).expect("page");
        } else {
            fill_pattern(&mut page, 1 << 32 | i);
            w.write_page(3, 1, i, &page).expect("page");
        }
    }
    let (uart, net) = sample_devices();
    w.write_device_serde("serial0", 0, "uart-16550", 1, &uart)
        .expect("device");
    w.write_device_serde("net0", 0, "virtio-net", 2, &net)
        .expect("device");
    fs::write(path, w.finish().expect("finish")).expect("write");
}

/// Each block's final contents, from a full `extract`.
fn extract_all(file: &Path, dir: &Path) -> Vec<(String, Vec<u8>)> {
    let out = ok(run(&["extract", s(file), "--out", s(dir)], None));
    text(&out)
        .lines()
        .map(|l| {
            let mut f = l.split('\t');
            let file_name = f.next().expect("file");
            let name = f.next().expect("name").to_owned();
            (name, fs::read(dir.join(file_name)).expect("block file"))
        })
        .collect()
}

#[test]
fn extract_range_of_a_file_is_what_the_pipe_gives_and_a_full_extract_holds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("ram.vms");
    ram_file(&file, 3000);
    let ps = PAGE as u64;
    let all = extract_all(&file, &dir.path().join("all"));
    let ram = &all.iter().find(|(n, _)| n == "pc.ram").expect("pc.ram").1;
    let rom = &all
        .iter()
        .find(|(n, _)| n == "0000:00:02.0/vga.rom")
        .expect("rom")
        .1;
    let ranges: Vec<(&str, u64, u64, &Vec<u8>)> = vec![
        ("pc.ram", 0, 1, ram),
        ("pc.ram", 37 * ps - 5, 10, ram),
        ("pc.ram", 1000 * ps + 17, 300 * ps, ram),
        ("pc.ram", 2999 * ps, ps, ram),
        ("pc.ram", 0, 3000 * ps, ram),
        ("0000:00:02.0/vga.rom", ps + 1, 2 * ps, rom),
    ];
    for (i, (block, offset, len, image)) in ranges.into_iter().enumerate() {
        let range = format!("{block}:{offset:#x}:{len}");
        let want = &image[offset as usize..(offset + len) as usize];
        // to standard output, from the file and from a pipe
        let (a, b) = file_and_pipe(&file, &["extract", "FILE", "--range", &range, "--out", "-"]);
        let (a, b) = (ok(a), ok(b));
        assert!(a == want, "{range}: file");
        assert!(b == want, "{range}: pipe");
        // to a file
        let out = dir.path().join(format!("range{i}.bin"));
        ok(run(
            &["extract", s(&file), "--range", &range, "--out", s(&out)],
            None,
        ));
        assert!(fs::read(&out).expect("out") == want, "{range}: to a file");
    }

    // requests a sound file cannot answer
    for (range, msg) in [
        ("pc.ram:0:12289M", "beyond RAM block"),
        ("pc.ram:0x100:0xffffffff", "beyond RAM block"),
        ("nope:0:1", "no RAM block named"),
    ] {
        let (a, b) = file_and_pipe(&file, &["extract", "FILE", "--range", range, "--out", "-"]);
        for out in [a, b] {
            assert_eq!(out.status.code(), Some(1), "{range}");
            assert!(
                text(&out.stderr).contains(msg),
                "{range}: {}",
                text(&out.stderr)
            );
            assert!(
                !text(&out.stderr).contains("warning"),
                "{}",
                text(&out.stderr)
            );
        }
    }
}

#[test]
fn extract_range_of_qemu_streams_matches_the_blob_qemu_loaded() {
    // testdata/qemu/README.md: blob.bin sits at guest-physical 0x100000
    let blob = fs::read(root().join("testdata/qemu/blob.bin")).expect("blob");
    let dir = tempfile::tempdir().expect("tempdir");
    let mig = root().join("testdata/qemu/q35-7.2.mig");
    let converted = dir.path().join("q35.vms");
    ok(run(&["convert", s(&mig), s(&converted)], None));
    let range = format!("pc.ram:0x100000:{}", blob.len());
    for file in [&mig, &converted] {
        let (a, b) = file_and_pipe(file, &["extract", "FILE", "--range", &range, "--out", "-"]);
        assert!(ok(a) == blob, "{}", file.display());
        assert!(ok(b) == blob, "{} through a pipe", file.display());
    }
}

/// The offset and framed length of every record of `bytes`, and its index.
fn records(bytes: &[u8]) -> (Vec<(u64, usize, RecordKind)>, Vec<IndexEntry>, u64) {
    let mut r = SliceReader::new(bytes, Limits::default()).expect("reader");
    let (mut out, mut index, mut total) = (Vec::new(), Vec::new(), 0);
    while let Some(item) = r.next().expect("record") {
        out.push((item.offset, item.framed_len, item.kind));
        match item.record {
            Record::Index(e) => index = e,
            Record::End(e) => total = e.records,
            _ => {}
        }
    }
    (out, index, total)
}

#[test]
fn seeking_touches_only_what_it_needs() {
    // break the checksum of every page batch a range does not need: the pipe
    // fails, the file still gives its devices and the range
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("ram.vms");
    ram_file(&file, 2048);
    let mut bytes = fs::read(&file).expect("read");
    let (recs, index, _) = records(&bytes);
    // the batches that may hold pages 600 and 601: the first round's, and the
    // second round's, which spans the whole block
    let keep: Vec<u64> = index
        .iter()
        .filter(|e| e.kind == RecordKind::PAGES && e.first_page <= 601 && e.last_page >= 600)
        .map(|e| e.offset)
        .collect();
    assert_eq!(keep.len(), 2);
    for &(at, len, kind) in &recs {
        if kind == RecordKind::PAGES && !keep.contains(&at) {
            bytes[at as usize + len - 1] ^= 0x80;
        }
    }
    let broken = dir.path().join("broken.vms");
    fs::write(&broken, &bytes).expect("write");

    let (a, b) = file_and_pipe(&broken, &["dump", "FILE", "--device", "net0"]);
    assert!(text(&ok(a)).contains("device net0"));
    assert_eq!(b.status.code(), Some(1));
    assert!(text(&b.stderr).contains("checksum"), "{}", text(&b.stderr));

    let ps = PAGE as u64;
    let range = format!("pc.ram:{}:{}", 600 * ps, 2 * ps);
    let all = extract_all(&file, &dir.path().join("all"));
    let ram = &all.iter().find(|(n, _)| n == "pc.ram").expect("pc.ram").1;
    let want = &ram[600 * PAGE..602 * PAGE];
    let (a, b) = file_and_pipe(
        &broken,
        &["extract", "FILE", "--range", &range, "--out", "-"],
    );
    assert!(ok(a) == want);
    assert_eq!(b.status.code(), Some(1));
}

#[test]
fn an_index_that_lies_falls_back_to_reading_the_stream() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("ram.vms");
    ram_file(&file, 700);
    let good = fs::read(&file).expect("read");
    let (recs, mut index, total) = records(&good);
    let (index_at, _, _) = *recs
        .iter()
        .find(|r| r.2 == RecordKind::INDEX)
        .expect("index");
    // net0's entry points at serial0's record; a batch's at another batch
    let serial = index
        .iter()
        .find(|e| e.name == "serial0")
        .expect("serial0")
        .offset;
    index
        .iter_mut()
        .find(|e| e.name == "net0")
        .expect("net0")
        .offset = serial;
    index.retain(|e| e.name != "serial0");
    let batches: Vec<u64> = index
        .iter()
        .filter(|e| e.kind == RecordKind::PAGES && e.block == 3)
        .map(|e| e.offset)
        .collect();
    index.retain(|e| e.offset != batches[1]);
    index
        .iter_mut()
        .find(|e| e.offset == batches[0])
        .expect("batch")
        .offset = batches[1];
    let mut body = Vec::new();
    varint(&mut body, index.len() as u64);
    for e in &index {
        body.extend_from_slice(&e.kind.0.to_le_bytes());
        body.extend_from_slice(&e.offset.to_le_bytes());
        body.extend_from_slice(&e.block.to_le_bytes());
        body.extend_from_slice(&e.first_page.to_le_bytes());
        body.extend_from_slice(&e.last_page.to_le_bytes());
        varint(&mut body, e.name.len() as u64);
        body.extend_from_slice(e.name.as_bytes());
    }
    let mut lying = good[..index_at as usize].to_vec();
    lying.extend_from_slice(&frame(RecordKind::INDEX.0, 1, &body));
    let mut end = total.to_le_bytes().to_vec();
    end.extend_from_slice(&index_at.to_le_bytes());
    lying.extend_from_slice(&frame(RecordKind::END.0, 0, &end));
    let path = dir.path().join("lying.vms");
    fs::write(&path, &lying).expect("write");

    // Reading the whole stream then finds the lie too (docs/format.md §7: a
    // whole-stream reader checks the index against the records it read).
    let out = run(&["dump", s(&path), "--device", "net0"], None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("warning") && err.contains("cannot seek") && err.contains("\"net0\""),
        "{err}"
    );
    assert!(err.contains("index entry"), "{err}");

    let range = format!("pc.ram:0:{}", 700 * PAGE);
    let out = run(
        &["extract", s(&path), "--range", &range, "--out", "-"],
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot seek") && err.contains("index entry"),
        "{err}"
    );
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}
