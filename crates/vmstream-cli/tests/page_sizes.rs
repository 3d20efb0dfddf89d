//! `decode` then `encode` then `decode` gives back the same directory at every
//! page size the format allows, up to 1 GiB pages (docs/format.md §2, §6.2).

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use vmstream::{Arch, Header, RamBlock, StreamKind, StreamWriter, WriterOptions};

fn vmstream(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmstream"))
        .args(args)
        .output()
        .expect("run vmstream")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn s(p: &Path) -> String {
    p.to_str().expect("utf8 path").to_owned()
}

/// A stream of one block of `pages` pages: data pages at `data` (each filled
/// from its index, a few bytes at each end, zeros between), a zero page after
/// the last of them, the rest never sent. One page per batch, so the input is
/// readable whatever the writer's batch size.
fn stream(path: &Path, page_size: usize, pages: u64, data: &[u64]) {
    let header = Header::new(StreamKind::Snapshot, Arch::X86_64, page_size as u32);
    let out = std::io::BufWriter::new(File::create(path).expect("create"));
    let mut w = StreamWriter::new(out, header, WriterOptions::default()).expect("writer");
    w.write_ram_blocks(&[RamBlock {
        id: 0,
        name: "pc.ram".into(),
        size: pages * page_size as u64,
        page_size: page_size as u32,
        flags: 0,
    }])
    .expect("blocks");
    let mut page = vec![0u8; page_size];
    for &i in data {
        page[..64].fill((i as u8).wrapping_add(1));
        page[page_size - 64..].fill(!(i as u8));
        w.write_page(0, 0, i, &page).expect("page");
        w.flush_pages().expect("flush");
    }
    let last = data.iter().max().copied().unwrap_or(0);
    if last + 1 < pages {
        w.write_zero_page(0, 0, last + 1).expect("zero page");
    }
    w.finish().expect("finish");
}

/// Whether two files hold the same bytes, read a chunk at a time.
fn same_file(a: &Path, b: &Path) -> bool {
    let (mut fa, mut fb) = (File::open(a).expect("open"), File::open(b).expect("open"));
    if fa.metadata().expect("len").len() != fb.metadata().expect("len").len() {
        return false;
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = fa.read(&mut ba).expect("read");
        if n == 0 {
            return true;
        }
        fb.read_exact(&mut bb[..n]).expect("read");
        if ba[..n] != bb[..n] {
            return false;
        }
    }
}

fn names(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .collect();
    v.sort();
    v
}

/// The same files with the same bytes.
fn assert_same_dirs(a: &Path, b: &Path) {
    let (na, nb) = (names(a), names(b));
    let rel = |v: &[PathBuf]| -> Vec<String> {
        v.iter()
            .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
            .collect()
    };
    assert_eq!(rel(&na), rel(&nb));
    for (x, y) in na.iter().zip(&nb) {
        assert!(
            same_file(x, y),
            "{} differs from {}",
            x.display(),
            y.display()
        );
    }
}

fn round_trip(page_size: usize, pages: u64, data: &[u64], batches: u64) {
    // a memory file system when there is one: the 1 GiB case moves a few GiB
    let shm = Path::new("/dev/shm");
    let t = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .expect("tempdir");
    let p = |n: &str| t.path().join(n);
    stream(&p("in.vms"), page_size, pages, data);
    ok(vmstream(&[
        "decode",
        &s(&p("in.vms")),
        "--out",
        &s(&p("d1")),
    ]));
    ok(vmstream(&[
        "encode",
        &s(&p("d1")),
        "--out",
        &s(&p("re.vms")),
    ]));
    ok(vmstream(&[
        "decode",
        &s(&p("re.vms")),
        "--out",
        &s(&p("d2")),
    ]));
    assert_same_dirs(&p("d1"), &p("d2"));
    // the pages are really there: each data page's first bytes
    let mut ram = File::open(p("d2").join("pc.ram.bin")).expect("ram file");
    let mut head = [0u8; 64];
    for &i in data {
        std::io::Seek::seek(&mut ram, std::io::SeekFrom::Start(i * page_size as u64))
            .expect("seek");
        ram.read_exact(&mut head).expect("read");
        assert_eq!(
            head,
            [(i as u8).wrapping_add(1); 64],
            "page {i} of {page_size}-byte pages"
        );
    }
    // the re-encoded stream reads back (inspect reads every record), and encode
    // made as few batches as the default record limit allows
    let info = ok(vmstream(&["inspect", "--json", &s(&p("re.vms"))]));
    let doc: serde_json::Value = serde_json::from_str(&info).expect("inspect json");
    assert_eq!(doc["page_size"], page_size as u64, "{info}");
    assert_eq!(doc["records"]["pages"], batches, "{info}");
}

#[test]
fn four_kib_pages() {
    round_trip(4 << 10, 600, &[0, 1, 2, 300, 511, 512, 513], 1);
}

#[test]
fn sixty_four_kib_pages() {
    round_trip(64 << 10, 300, &[3, 4, 5, 260, 261], 1);
}

/// 33 data pages of 2 MiB do not fit one 64 MiB record: `encode` must split
/// them (it used to write no page at all above 1 MiB pages, and exit 0).
#[test]
fn two_mib_pages() {
    let data: Vec<u64> = (2..35).collect();
    round_trip(2 << 20, 40, &data, 2);
}

/// 1 GiB pages, one to a batch, in a sparse two-page block: a data page and
/// a zero page.
#[test]
fn one_gib_pages() {
    round_trip(1 << 30, 2, &[0], 1);
}
