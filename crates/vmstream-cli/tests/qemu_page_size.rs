//! QEMU streams whose target page size is not 4 KiB, written from the QEMU stream
//! reference by `scripts/qemu_vectors.py` (no QEMU 7.2–10.x system target has 64 KiB
//! target pages, so no QEMU can make them): the page size flows from the stream
//! through every path.
//!
//! * `64k-pages.mig`: 64 KiB pages from the configuration's target-page-bits;
//! * `8k-pages.mig`: alpha's 8 KiB pages, which its configuration does not carry (the
//!   vmdesc's `page_size` and the architecture say them).
//!
//! For each: `inspect` shows the page size; QEMU → vmstream → QEMU and QEMU → QEMU
//! are byte-identical; `extract` puts page i at i × page size (the script's image);
//! the `--compact` stream, converted back, extracts to the same image.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn vmstream(args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_vmstream"))
        .args(args)
        .output()
        .expect("run vmstream");
    assert!(
        o.status.success(),
        "vmstream {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn vectors(dir: &Path) {
    let o = Command::new("python3")
        .arg(root().join("scripts/qemu_vectors.py"))
        .arg(dir)
        .output()
        .expect("python3 runs scripts/qemu_vectors.py");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn check(dir: &Path, name: &str, page_size: u64, arch: &str) {
    let p = |s: &str| dir.join(s).to_str().unwrap().to_owned();
    let src = p(name);
    let info: serde_json::Value =
        serde_json::from_str(&vmstream(&["inspect", "--json", &src])).unwrap();
    assert_eq!(info["page_size"], page_size, "{name}");
    assert_eq!(info["arch"], arch, "{name}");
    let want = fs::read(dir.join(format!("{name}.ram"))).unwrap();
    let original = fs::read(&src).unwrap();

    vmstream(&["convert", &src, &p("a.vms")]);
    vmstream(&["convert", &p("a.vms"), &p("a.mig"), "--to", "qemu"]);
    assert!(
        fs::read(p("a.mig")).unwrap() == original,
        "{name}: round trip differs"
    );
    vmstream(&["convert", &src, &p("q.mig"), "--to", "qemu"]);
    assert!(
        fs::read(p("q.mig")).unwrap() == original,
        "{name}: QEMU -> QEMU differs"
    );

    let extracted = |stream: &str, out: &str| {
        let _ = fs::remove_dir_all(p(out));
        vmstream(&["extract", stream, "--out", &p(out)]);
        fs::read(dir.join(out).join("test.ram.bin")).unwrap()
    };
    let got = extracted(&src, "x");
    assert_eq!(got.len(), want.len(), "{name}");
    let ps = page_size as usize;
    assert!(
        got[ps..2 * ps] == want[ps..2 * ps],
        "{name}: page 1 is not at {ps:#x}"
    );
    assert!(
        got == want,
        "{name}: extract differs from the written image"
    );
    // The same from the converted stream.
    assert!(
        extracted(&p("a.vms"), "xv") == want,
        "{name}: extract of vmstream"
    );

    vmstream(&["convert", &src, &p("c.vms"), "--compact"]);
    vmstream(&["convert", &p("c.vms"), &p("c.mig"), "--to", "qemu"]);
    let compacted = fs::read(p("c.mig")).unwrap();
    assert!(
        compacted.len() < original.len(),
        "{name}: compaction dropped nothing"
    );
    assert!(
        extracted(&p("c.mig"), "xc") == want,
        "{name}: compacted image differs"
    );
}

#[test]
fn page_size_64k() {
    let dir = tempfile::tempdir().unwrap();
    vectors(dir.path());
    check(dir.path(), "64k-pages.mig", 65536, "unknown");
}

#[test]
fn page_size_8k_from_vmdesc_and_arch() {
    let dir = tempfile::tempdir().unwrap();
    vectors(dir.path());
    check(dir.path(), "8k-pages.mig", 8192, "alpha");
}
