//! Hostile streams on the command line: every command fails with exit code 1
//! and one line that says where, in files and in pipes, quickly.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use vmstream_testkit::qemu::ram_stream;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// Runs `vmstream args`, with `stdin` on standard input if given.
fn run(args: &[&str], stdin: Option<&[u8]>) -> (Output, Duration) {
    let t0 = Instant::now();
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
        // the command may stop reading at the error: a broken pipe is fine
        let _ = pipe.write_all(input);
    }
    let out = child.wait_with_output().expect("wait");
    (out, t0.elapsed())
}

/// Exit 1, one line on stderr naming an offset and a record, no panic.
fn assert_one_line_error(what: &str, out: &Output, took: Duration) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{what}: {err}");
    assert_eq!(err.lines().count(), 1, "{what}: {err}");
    assert!(!err.contains("panicked"), "{what}: {err}");
    assert!(err.contains("offset 0x"), "{what}: {err}");
    assert!(err.contains("record "), "{what}: {err}");
    // the goal is well under a second; the bound leaves room for a busy machine
    assert!(took < Duration::from_secs(10), "{what} took {took:?}");
    err
}

/// A converted QEMU stream that `verify` accepts, whose 2000 blocks of 2^54
/// pages add up past 2^64 pages: compaction used to wrap the sum and index out
/// of bounds.
fn overflowing_blocks() -> Vec<u8> {
    let huge: u64 = !0x3ff;
    let names: Vec<String> = (0..2000).map(|i| format!("b{i}")).collect();
    let blocks: Vec<(&str, u64)> = names.iter().map(|n| (n.as_str(), huge)).collect();
    ram_stream(1024, &blocks, &[(0, 1, Some(1)), (1999, 7, Some(2))])
}

#[test]
fn convert_compact_of_a_hostile_stream_fails_with_one_line() {
    let t = tempfile::tempdir().expect("tempdir");
    let input = t.path().join("x.vms");
    let bytes = overflowing_blocks();
    std::fs::write(&input, &bytes).expect("write");
    let (i, o) = (
        input.to_str().expect("utf8"),
        t.path().join("o.mig").to_str().expect("utf8").to_owned(),
    );
    let (out, _) = run(&["verify", i], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (out, took) = run(&["convert", i, &o, "--to", "qemu", "--compact"], None);
    let err = assert_one_line_error("convert file", &out, took);
    assert!(err.contains("Limits::max_alloc"), "{err}");
    assert!(!Path::new(&o).exists(), "a failed conversion left {o}");
    // in a pipe, and to vmstream too
    for args in [
        &["convert", "-", "-", "--to", "qemu", "--compact"][..],
        &["convert", "-", "-", "--to", "vmstream", "--compact"],
    ] {
        let (out, took) = run(args, Some(&bytes));
        assert_one_line_error(&format!("{args:?}"), &out, took);
    }
}

/// Every bad vector fails every command that reads it, with one line.
#[test]
fn every_bad_vector_fails_every_command_with_one_line() {
    let dir = root().join("testdata/bad");
    let t = tempfile::tempdir().expect("tempdir");
    let mut n = 0;
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .expect("testdata/bad")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "vms"))
        .collect();
    entries.sort();
    for path in entries {
        n += 1;
        let p = path.to_str().expect("utf8");
        let bytes = std::fs::read(&path).expect("read");
        let (d, x) = (
            t.path().join(format!("d{n}")),
            t.path().join(format!("x{n}")),
        );
        let (d, x) = (d.to_str().expect("utf8"), x.to_str().expect("utf8"));
        let mig = t.path().join(format!("o{n}.mig"));
        let mig = mig.to_str().expect("utf8");
        let all: &[&[&str]] = &[
            &["verify", p],
            &["inspect", p],
            &["dump", p],
            &["diff", p, "testdata/good/sample.vms"],
            &["decode", p, "--out", d],
            &["extract", p, "--out", x],
            &["convert", p, mig, "--to", "qemu", "--compact"],
            &["convert", p, mig, "--to", "qemu"],
        ];
        // Bytes after the end record: format.md §8 says readers SHOULD report
        // them, and only `verify` (and the conversion) does.
        let trailing = path.ends_with("record-after-end.vms");
        for &args in all {
            if trailing && matches!(args[0], "inspect" | "dump" | "diff" | "decode" | "extract") {
                continue;
            }
            let (out, took) = run(args, None);
            let what = format!("{args:?}");
            // the header's own errors have an offset but no record
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            if err.contains("record ") {
                assert_one_line_error(&what, &out, took);
            } else {
                assert_eq!(out.status.code(), Some(1), "{what}: {err}");
                assert_eq!(err.lines().count(), 1, "{what}: {err}");
                assert!(
                    err.contains("offset") || err.contains("magic") || err.contains("version"),
                    "{what}: {err}"
                );
            }
        }
        let (out, took) = run(
            &["convert", "-", "-", "--to", "qemu", "--compact"],
            Some(&bytes),
        );
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{p} in a pipe: {err}");
        assert_eq!(err.lines().count(), 1, "{p} in a pipe: {err}");
        assert!(took < Duration::from_secs(10));
    }
    assert!(n >= 30, "only {n} bad vectors");
}
