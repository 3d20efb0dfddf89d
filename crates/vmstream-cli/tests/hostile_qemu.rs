//! Small hostile QEMU streams through every command that reads QEMU input, as
//! a file and through a pipe: each must exit 1 within a second, with one line
//! that says where, without more than 64 MiB of data memory (`ulimit -d`,
//! which counts what the process writes to, not what it reserves).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn be32(v: u32) -> [u8; 4] {
    v.to_be_bytes()
}

fn header() -> Vec<u8> {
    let mut b = b"QEVM".to_vec();
    b.extend(be32(3));
    b
}

/// A FULL section of device `d` (instance 0, version 1) without a footer,
/// EOF, and a trailer with `json`.
fn device_stream(body: &[u8], json: &str) -> Vec<u8> {
    let mut b = header();
    b.extend([0x04]);
    b.extend(be32(0));
    b.extend([1, b'd']);
    b.extend(be32(0));
    b.extend(be32(1));
    b.extend(body);
    b.extend([0x00, 0x06]);
    b.extend(be32(json.len() as u32));
    b.extend(json.as_bytes());
    b
}

fn desc(fields: &str) -> String {
    format!(
        r#"{{"page_size": 4096, "devices": [{{"name": "d", "instance_id": 0, "vmsd_name": "d", "version": 1, "fields": [{fields}]}}]}}"#
    )
}

/// A configuration with `page_bits` and a RAM block of one page, then one
/// page record of `flags` with `payload`.
fn page_stream(page_bits: u32, flags: u64, payload: &[u8]) -> Vec<u8> {
    let mut b = header();
    let sub = b"configuration/target-page-bits";
    b.extend([0x07]);
    b.extend(be32(2));
    b.extend(b"pc");
    b.extend([0x05, sub.len() as u8]);
    b.extend(sub);
    b.extend(be32(1));
    b.extend(be32(page_bits));
    b.extend([0x01]);
    b.extend(be32(0));
    b.extend([3]);
    b.extend(b"ram");
    b.extend(be32(0));
    b.extend(be32(4));
    b.extend(((1u64 << page_bits) | 0x04).to_be_bytes());
    b.extend([6]);
    b.extend(b"pc.ram");
    b.extend((1u64 << page_bits).to_be_bytes());
    b.extend(flags.to_be_bytes());
    b.extend([6]);
    b.extend(b"pc.ram");
    b.extend(payload);
    b
}

/// The hostile inputs: name, bytes, and what the error must say.
fn cases() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let mut deep = String::new();
    for _ in 0..10_000 {
        deep.push_str(
            r#"{"name": "s", "type": "struct", "size": 1, "struct": {"vmsd_name": "s", "version": 1, "fields": ["#,
        );
    }
    let mut trailer = header();
    trailer.extend([0x00, 0x06]);
    trailer.extend(be32(256 << 20));
    trailer.push(b'{');
    vec![
        (
            "zero-size array of 2^60",
            device_stream(
                b"",
                &desc(
                    r#"{"name": "a", "type": "uint8", "size": 0, "array_len": 1152921504606846976}"#,
                ),
            ),
            "elements of 0 bytes each",
        ),
        (
            "element count overflow",
            device_stream(
                &[0; 3],
                &desc(
                    r#"{"name": "a", "type": "uint8", "size": 1, "array_len": 18446744073709551615},
                       {"name": "a", "type": "uint8", "size": 1, "array_len": 2}"#,
                ),
            ),
            "number more than 2^64",
        ),
        (
            "deep vmdesc",
            device_stream(&[0], &desc(&deep)),
            "recursion limit exceeded",
        ),
        (
            "target-page-bits 30",
            page_stream(30, 0x08, &[0; 16]),
            "target page bits 30 out of range",
        ),
        (
            "compressed page of 2 GiB",
            page_stream(16, 0x100, &be32(2 << 30)),
            "larger than any page compresses to",
        ),
        (
            "vmdesc trailer length",
            trailer,
            "vmdesc of 268435456 bytes",
        ),
    ]
}

/// Runs the binary with `args` (and `stdin`), its data memory limited to 64 MiB.
fn run(dir: &Path, args: &[&str], stdin: Option<&[u8]>) -> (Output, Duration) {
    let t = Instant::now();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -d 65536 && exec "$0" "$@""#)
        .arg(env!("CARGO_BIN_EXE_vmstream"))
        .args(args)
        .current_dir(dir)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vmstream");
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // The command may stop reading at the error: a broken pipe is fine.
        let _ = pipe.write_all(data);
    }
    let out = child.wait_with_output().expect("wait for vmstream");
    (out, t.elapsed())
}

#[test]
fn hostile_qemu_input_fails_fast_in_one_line_from_every_command() {
    for (name, bytes, says) in cases() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("in.mig");
        std::fs::write(&file, &bytes).expect("write input");
        let runs: [(&[&str], bool); 9] = [
            (&["dump", "in.mig"], false),
            (&["dump", "-"], true),
            (&["inspect", "in.mig"], false),
            (&["inspect", "-"], true),
            (&["verify", "in.mig"], false),
            (&["extract", "-o", "x", "in.mig"], false),
            (&["extract", "-o", "y", "-"], true),
            (&["convert", "in.mig", "out.vms"], false),
            (&["convert", "-", "-"], true),
        ];
        for (args, piped) in runs {
            let (out, took) = run(dir.path(), args, piped.then_some(&bytes[..]));
            let err = String::from_utf8_lossy(&out.stderr);
            let what = format!("{name}: vmstream {}: {err}", args.join(" "));
            assert_eq!(out.status.code(), Some(1), "{what}");
            assert_eq!(err.trim_end().lines().count(), 1, "{what}");
            assert!(err.contains(says), "{what}");
            assert!(err.contains("(at offset 0x"), "{what}");
            assert!(took < Duration::from_secs(1), "{what}: took {took:?}");
        }
    }
}
