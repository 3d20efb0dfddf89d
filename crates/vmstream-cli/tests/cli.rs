//! End-to-end tests of the `vmstream` binary, as a user runs it.
//!
//! Golden outputs live in `tests/golden/`; run with `VMSTREAM_BLESS=1` to rewrite
//! them after an intended change, and review the diff.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn sample() -> PathBuf {
    root().join("testdata/good/sample.vms")
}

fn vmstream(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmstream"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("run vmstream")
}

fn vmstream_stdin(args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmstream"))
        .args(args)
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vmstream");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write stdin");
    child.wait_with_output().expect("wait")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("VMSTREAM_BLESS").is_some() {
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(&path, actual).expect("bless");
        return;
    }
    let expected = fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "missing golden file {}; run with VMSTREAM_BLESS=1",
            path.display()
        )
    });
    assert_eq!(actual, expected, "output differs from {}", path.display());
}

#[test]
fn inspect_golden() {
    golden(
        "sample.inspect.txt",
        &ok(&vmstream(&["inspect", "testdata/good/sample.vms"])),
    );
    golden(
        "sample.inspect.json",
        &ok(&vmstream(&[
            "inspect",
            "--json",
            "testdata/good/sample.vms",
        ])),
    );
}

#[test]
fn dump_golden() {
    golden(
        "sample.dump.txt",
        &ok(&vmstream(&["dump", "testdata/good/sample.vms"])),
    );
    golden(
        "sample.dump.json",
        &ok(&vmstream(&["dump", "--json", "testdata/good/sample.vms"])),
    );
}

#[test]
fn dump_one_device_and_unknown_device() {
    let all = ok(&vmstream(&["dump", "--json", "testdata/good/sample.vms"]));
    let doc: serde_json::Value = serde_json::from_str(&all).expect("json");
    let first = doc["devices"][0]["name"]
        .as_str()
        .expect("a device")
        .to_owned();
    let one = ok(&vmstream(&[
        "dump",
        "--json",
        "--device",
        &first,
        "testdata/good/sample.vms",
    ]));
    let one: serde_json::Value = serde_json::from_str(&one).expect("json");
    assert!(one["devices"]
        .as_array()
        .expect("array")
        .iter()
        .all(|d| d["name"] == first.as_str()));
    let out = vmstream(&[
        "dump",
        "--device",
        "no-such-device",
        "testdata/good/sample.vms",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no device named"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn stdin_is_dash() {
    let bytes = fs::read(sample()).expect("sample");
    let a = ok(&vmstream_stdin(&["inspect", "--json", "-"], &bytes));
    let b = ok(&vmstream(&[
        "inspect",
        "--json",
        "testdata/good/sample.vms",
    ]));
    assert_eq!(a, b);
}

#[test]
fn verify_sound_and_corrupt() {
    let out = ok(&vmstream(&["verify", "testdata/good/sample.vms"]));
    assert!(out.starts_with("ok: vmstream stream"), "{out}");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut bytes = fs::read(sample()).expect("sample");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    let bad = dir.path().join("bad.vms");
    fs::write(&bad, &bytes).expect("write");
    let out = vmstream(&["verify", bad.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one error line: {err}");
    assert!(
        err.contains("offset 0x") && err.contains("record "),
        "{err}"
    );
    // truncated
    let short = dir.path().join("short.vms");
    fs::write(&short, &bytes[..mid]).expect("write");
    let out = vmstream(&["verify", short.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(1));
    // trailing garbage after end
    let mut long = fs::read(sample()).expect("sample");
    long.extend_from_slice(b"junk");
    let trailing = dir.path().join("trailing.vms");
    fs::write(&trailing, &long).expect("write");
    let out = vmstream(&["verify", trailing.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("after the end record"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn every_bad_vector_fails_verify_with_one_line() {
    let dir = root().join("testdata/bad");
    let mut n = 0;
    for entry in fs::read_dir(&dir).expect("testdata/bad") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "vms") {
            continue;
        }
        n += 1;
        let out = vmstream(&["verify", path.to_str().expect("utf8")]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{}: {}",
            path.display(),
            text(&out.stdout)
        );
        let err = text(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{}: {err}", path.display());
        assert!(!err.contains("panicked"), "{err}");
    }
    assert!(n >= 10, "only {n} bad vectors");
}

fn dir_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .expect("dir")
        .map(|e| {
            let p = e.expect("entry").path();
            (
                p.file_name().expect("name").to_string_lossy().into_owned(),
                fs::read(&p).expect("read"),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn decode_encode_decode_is_identical() {
    let t = tempfile::tempdir().expect("tempdir");
    let (d1, d2, re) = (
        t.path().join("d1"),
        t.path().join("d2"),
        t.path().join("re.vms"),
    );
    let s = |p: &Path| p.to_str().expect("utf8").to_owned();
    ok(&vmstream(&[
        "decode",
        "testdata/good/sample.vms",
        "--out",
        &s(&d1),
    ]));
    ok(&vmstream(&["encode", &s(&d1), "--out", &s(&re)]));
    ok(&vmstream(&["decode", &s(&re), "--out", &s(&d2)]));
    assert_eq!(dir_files(&d1), dir_files(&d2));
    ok(&vmstream(&["verify", &s(&re)]));
    // compressed encode decodes the same too
    let (re_z, d3) = (t.path().join("z.vms"), t.path().join("d3"));
    ok(&vmstream(&[
        "encode",
        &s(&d1),
        "--out",
        &s(&re_z),
        "--compression",
        "zstd",
    ]));
    ok(&vmstream(&["decode", &s(&re_z), "--out", &s(&d3)]));
    assert_eq!(dir_files(&d1), dir_files(&d3));
    // a non-empty output directory is refused
    let out = vmstream(&["decode", "testdata/good/sample.vms", "--out", &s(&d1)]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn extract_matches_decode_and_diff_finds_edits() {
    let t = tempfile::tempdir().expect("tempdir");
    let s = |p: &Path| p.to_str().expect("utf8").to_owned();
    let (x, d) = (t.path().join("x"), t.path().join("d"));
    ok(&vmstream(&[
        "extract",
        "testdata/good/sample.vms",
        "--out",
        &s(&x),
    ]));
    ok(&vmstream(&[
        "decode",
        "testdata/good/sample.vms",
        "--out",
        &s(&d),
    ]));
    let raw: Vec<_> = dir_files(&d)
        .into_iter()
        .filter(|(n, _)| n.ends_with(".bin"))
        .collect();
    assert!(!raw.is_empty());
    assert_eq!(dir_files(&x), raw);

    // equal streams
    let same = vmstream(&[
        "diff",
        "testdata/good/sample.vms",
        "testdata/good/sample.vms",
    ]);
    assert_eq!(same.status.code(), Some(0), "{}", text(&same.stderr));

    // edit one device field and one RAM page, re-encode, diff
    let json_path = d.join("stream.json");
    let mut doc: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&json_path).expect("read")).expect("json");
    let dev = &mut doc["devices"][0];
    let name = dev["name"].as_str().expect("name").to_owned();
    let fields = dev["value"]["struct"]
        .as_object_mut()
        .expect("struct device");
    let (field, slot) = fields
        .iter_mut()
        .find(|(_, v)| v.get("u8").is_some())
        .expect("a u8 field");
    let field = field.clone();
    *slot = serde_json::json!({"u8": 0xee});
    fs::write(&json_path, serde_json::to_string(&doc).expect("json")).expect("write");
    let (bin_name, _) = &raw[0];
    let mut bin = fs::read(d.join(bin_name)).expect("bin");
    bin[4096 * 2 + 5] ^= 0xff;
    fs::write(d.join(bin_name), &bin).expect("write");
    let edited = t.path().join("edited.vms");
    ok(&vmstream(&["encode", &s(&d), "--out", &s(&edited)]));
    let out = vmstream(&["diff", "testdata/good/sample.vms", &s(&edited)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!("device {name}"))
            && stdout.contains(&field)
            && stdout.contains("-> u8 0xee"),
        "{stdout}"
    );
    assert!(stdout.contains("1 pages differ"), "{stdout}");
    let out = vmstream(&["diff", "--json", "testdata/good/sample.vms", &s(&edited)]);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(j["equal"], false);
    assert_eq!(
        j["devices"][0]["fields"][0]["new"],
        serde_json::json!({"u8": 0xee})
    );
}

#[test]
fn missing_file_is_a_clear_error() {
    let out = vmstream(&["inspect", "no/such/file.vms"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot open no/such/file.vms"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn convert_round_trips_qemu_and_never_replaces_what_it_cannot_finish() {
    let dir = tempfile::tempdir().unwrap();
    let qemu = root().join("testdata/qemu/q35-7.2.mig");
    let vms = dir.path().join("vm.vms");
    let back = dir.path().join("vm.mig");
    ok(&vmstream(&[
        "convert",
        qemu.to_str().unwrap(),
        vms.to_str().unwrap(),
    ]));
    ok(&vmstream(&[
        "convert",
        vms.to_str().unwrap(),
        back.to_str().unwrap(),
    ]));
    assert!(fs::read(&back).unwrap() == fs::read(&qemu).unwrap());
    // a failed conversion leaves no output file behind, and an old one intact
    let nodesc = root().join("testdata/qemu/i440fx-2.2.mig");
    let out = vmstream(&["convert", nodesc.to_str().unwrap(), back.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("unsupported: no device description"),
        "{}",
        text(&out.stderr)
    );
    assert!(fs::read(&back).unwrap() == fs::read(&qemu).unwrap());
    // a device is written to, not replaced by a file
    ok(&vmstream(&["convert", qemu.to_str().unwrap(), "/dev/null"]));
    use std::os::unix::fs::FileTypeExt;
    assert!(fs::metadata("/dev/null")
        .unwrap()
        .file_type()
        .is_char_device());
}

#[test]
fn extract_and_dump_of_qemu_stream_match_its_conversion() {
    let t = tempfile::tempdir().unwrap();
    let s = |p: &Path| p.to_str().expect("utf8").to_owned();
    let vms = t.path().join("vm.vms");
    let (direct, converted) = (t.path().join("direct"), t.path().join("converted"));
    ok(&vmstream(&[
        "convert",
        "testdata/qemu/q35-7.2.mig",
        &s(&vms),
    ]));
    let vms_path = s(&vms);
    let listing = ok(&vmstream(&[
        "extract",
        "testdata/qemu/q35-7.2.mig",
        "--out",
        &s(&direct),
    ]));
    assert!(
        listing.contains("pc.ram.bin\tpc.ram\t16777216"),
        "{listing}"
    );
    ok(&vmstream(&["extract", &s(&vms), "--out", &s(&converted)]));
    assert_eq!(dir_files(&direct), dir_files(&converted));
    // the random blob the fixture loaded at guest-physical 0x100000
    let ram = fs::read(direct.join("pc.ram.bin")).unwrap();
    let blob = fs::read(root().join("testdata/qemu/blob.bin")).unwrap();
    assert!(ram[0x100000..0x100000 + blob.len()] == blob[..]);
    // from stdin too
    let input = fs::read(root().join("testdata/qemu/q35-7.2.mig")).unwrap();
    let piped = t.path().join("piped");
    ok(&vmstream_stdin(
        &["extract", "-", "--out", &s(&piped)],
        &input,
    ));
    assert_eq!(dir_files(&direct), dir_files(&piped));
    // dump reads the QEMU stream directly, and agrees with the converted one
    for extra in [&[][..], &["--json"][..], &["--device", "apic"][..]] {
        let mut a = vec!["dump", "testdata/qemu/q35-7.2.mig"];
        a.extend_from_slice(extra);
        let direct = ok(&vmstream(&a));
        a[1] = &vms_path;
        assert_eq!(direct, ok(&vmstream(&a)), "dump {extra:?}");
    }
    let direct = ok(&vmstream(&["dump", "testdata/qemu/q35-7.2.mig"]));
    assert!(direct.contains("apicbase = u32 0xfee00900"), "{direct}");
}

#[test]
fn values_as_deep_as_the_limit_survive_decode_and_encode() {
    let t = tempfile::tempdir().unwrap();
    let s = |p: &Path| p.to_str().expect("utf8").to_owned();
    let d = t.path().join("d");
    ok(&vmstream(&[
        "decode",
        "testdata/good/sample.vms",
        "--out",
        &s(&d),
    ]));
    let mut doc: serde_json::Value =
        serde_json::from_slice(&fs::read(d.join("stream.json")).unwrap()).unwrap();
    // the new value does not follow the device's schema
    doc["schemas"] = serde_json::json!([]);
    // nested sequences and maps, `depth` containers deep (the default limit is 128)
    let nested = |depth: usize| {
        let mut v = String::from(r#"{"u8": 7}"#);
        for i in 0..depth {
            v = if i % 2 == 0 {
                format!(r#"{{"seq": [{v}]}}"#)
            } else {
                format!(r#"{{"map": [[{{"u8": 1}}, {v}]]}}"#)
            };
        }
        v
    };
    for (depth, readable) in [(128, true), (129, false)] {
        let dir = t.path().join(format!("deep{depth}"));
        fs::create_dir(&dir).unwrap();
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
        }
        let devices = doc["devices"].as_array().unwrap();
        let first = serde_json::to_string(&devices[0]).unwrap();
        let deep = first.replacen(
            &serde_json::to_string(&devices[0]["value"]).unwrap(),
            &nested(depth),
            1,
        );
        let json = serde_json::to_string(&doc)
            .unwrap()
            .replacen(&first, &deep, 1);
        fs::write(dir.join("stream.json"), json).unwrap();
        let out_file = t.path().join(format!("deep{depth}.vms"));
        let out = vmstream(&["encode", &s(&dir), "--out", &s(&out_file)]);
        if readable {
            ok(&out);
            ok(&vmstream(&["verify", &s(&out_file)]));
            let again = t.path().join(format!("again{depth}"));
            ok(&vmstream(&["decode", &s(&out_file), "--out", &s(&again)]));
            let back = t.path().join(format!("back{depth}.vms"));
            ok(&vmstream(&["encode", &s(&again), "--out", &s(&back)]));
            assert!(fs::read(&back).unwrap() == fs::read(&out_file).unwrap());
        } else {
            assert_eq!(out.status.code(), Some(1));
            assert!(
                text(&out.stderr).contains("more than Limits::max_depth"),
                "{}",
                text(&out.stderr)
            );
        }
    }
}

#[test]
fn a_ram_block_beyond_the_limits_is_refused_by_every_command() {
    // QEVM v3, section-start "ram" v4, a block list claiming a 4 PiB block
    let size: u64 = 1 << 52;
    let mut mig = b"QEVM\0\0\0\x03\x01\0\0\0\x02\x03ram\0\0\0\0\0\0\0\x04".to_vec();
    mig.extend_from_slice(&(size | 0x04).to_be_bytes());
    mig.extend_from_slice(b"\x06pc.ram");
    mig.extend_from_slice(&size.to_be_bytes());
    mig.extend_from_slice(&0x10u64.to_be_bytes());
    let t = tempfile::tempdir().unwrap();
    let out_dir = t.path().join("x");
    let out_dir = out_dir.to_str().unwrap();
    for args in [
        &["extract", "-", "--out", out_dir][..],
        &["decode", "-", "--out", out_dir],
        &["inspect", "-"],
        &["diff", "-", "testdata/qemu/q35-7.2.mig"],
    ] {
        let out = vmstream_stdin(args, &mig);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = text(&out.stderr);
        assert!(err.contains("Limits::max_alloc"), "{args:?}: {err}");
        assert!(dir_files(Path::new(out_dir)).is_empty());
    }
}

/// A multifd channel set made by hand: a main channel with one 16-page RAM
/// block and MULTIFD_FLUSH records, and two channels, the second re-sending a
/// page of the first in a later round.
fn multifd_set(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    fn init(id: u8) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        b[..8].copy_from_slice(b"\x11\x22\x33\x44\0\0\0\x01");
        b[24] = id;
        b
    }
    fn packet(flags: u32, num: u64, normal: &[u64], payload: &[u8]) -> Vec<u8> {
        let mut h = vec![0u8; 320 + 8 * 128];
        h[..8].copy_from_slice(b"\x11\x22\x33\x44\0\0\0\x01");
        h[8..12].copy_from_slice(&flags.to_be_bytes());
        h[12..16].copy_from_slice(&128u32.to_be_bytes());
        h[16..20].copy_from_slice(&(normal.len() as u32).to_be_bytes());
        h[24..32].copy_from_slice(&num.to_be_bytes());
        h[64..70].copy_from_slice(b"pc.ram");
        for (i, o) in normal.iter().enumerate() {
            h[320 + 8 * i..328 + 8 * i].copy_from_slice(&o.to_be_bytes());
        }
        h.extend_from_slice(payload);
        h
    }
    let mut m = b"QEVM\0\0\0\x03\x01\0\0\0\x01\x03ram\0\0\0\0\0\0\0\x04".to_vec();
    m.extend(((16 * 4096u64) | 0x04).to_be_bytes());
    m.push(6);
    m.extend(b"pc.ram");
    m.extend((16 * 4096u64).to_be_bytes());
    m.extend(0x200u64.to_be_bytes());
    m.extend(0x10u64.to_be_bytes());
    m.extend(b"\x03\0\0\0\x01");
    m.extend(0x200u64.to_be_bytes());
    m.extend(0x10u64.to_be_bytes());
    m.push(0);
    let mut c0 = init(0);
    c0.extend(packet(1, 0, &[0x1000], &[0xaa; 4096]));
    c0.extend(packet(1, 2, &[], &[]));
    let mut c1 = init(1);
    c1.extend(packet(1, 1, &[], &[]));
    c1.extend(packet(
        1,
        3,
        &[0x1000, 0x3000],
        &[[0xbb; 4096], [0xcc; 4096]].concat(),
    ));
    let main = dir.join("vm.mig");
    fs::write(&main, m).expect("multifd test");
    fs::write(dir.join("vm.mig.multifd0"), c0).expect("multifd test");
    fs::write(dir.join("vm.mig.multifd1"), c1).expect("multifd test");
    (
        main,
        dir.join("vm.mig.multifd0"),
        dir.join("vm.mig.multifd1"),
    )
}

#[test]
fn r8_multifd_channel_sets() {
    let t = tempfile::tempdir().expect("tempdir");
    let (main, c0, c1) = multifd_set(t.path());
    let p = |x: &Path| x.to_str().expect("multifd test").to_owned();
    let (main, c0, c1) = (p(&main), p(&c0), p(&c1));
    // alone: inspect says where the pages are, extract and --compact refuse
    let out = ok(&vmstream(&["inspect", &main]));
    assert!(
        out.contains("multifd:") && out.contains("MULTIFD_FLUSH"),
        "{out}"
    );
    let x = p(&t.path().join("x"));
    let out = vmstream(&["extract", &main, "-o", &x]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--channel"),
        "{}",
        text(&out.stderr)
    );
    let cmig = p(&t.path().join("c.mig"));
    assert!(
        !vmstream(&["convert", &main, &cmig, "--to", "qemu", "--compact"])
            .status
            .success()
    );
    // with its channels, in any order: one migration, and back byte for byte
    let vms = p(&t.path().join("set.vms"));
    ok(&vmstream(&[
        "convert",
        &main,
        &vms,
        "--channel",
        &c1,
        "--channel",
        &c0,
    ]));
    assert!(ok(&vmstream(&["inspect", &vms])).contains("2 multifd channels"));
    ok(&vmstream(&[
        "verify",
        &main,
        "--channel",
        &c0,
        "--channel",
        &c1,
    ]));
    let back = p(&t.path().join("back.mig"));
    ok(&vmstream(&["convert", &vms, &back, "--to", "qemu"]));
    assert_eq!(
        fs::read(&back).expect("multifd test"),
        fs::read(&main).expect("multifd test")
    );
    assert_eq!(
        fs::read(format!("{back}.multifd0")).expect("multifd test"),
        fs::read(&c0).expect("multifd test")
    );
    assert_eq!(
        fs::read(format!("{back}.multifd1")).expect("multifd test"),
        fs::read(&c1).expect("multifd test")
    );
    // the later round's copy of page 1 wins
    let x2 = p(&t.path().join("x2"));
    ok(&vmstream(&[
        "extract",
        &main,
        "-o",
        &x2,
        "--channel",
        &c0,
        "--channel",
        &c1,
    ]));
    let ram = fs::read(t.path().join("x2/pc.ram.bin")).expect("multifd test");
    assert!(ram[0x1000..0x2000].iter().all(|&b| b == 0xbb));
    assert!(ram[0x3000..0x4000].iter().all(|&b| b == 0xcc));
    // a channel missing: refused, saying so
    let out = vmstream(&[
        "extract",
        &main,
        "-o",
        &p(&t.path().join("x3")),
        "--channel",
        &c0,
    ]);
    assert!(
        text(&out.stderr).contains("incomplete"),
        "{}",
        text(&out.stderr)
    );
    // a channel cut short: the error names the channel and where
    let cut = p(&t.path().join("cut"));
    let bytes = fs::read(&c1).expect("multifd test");
    fs::write(&cut, &bytes[..bytes.len() - 100]).expect("multifd test");
    let out = vmstream(&["verify", &main, "--channel", &c0, "--channel", &cut]);
    let err = text(&out.stderr);
    assert!(
        !out.status.success() && err.contains("multifd channel 1") && err.contains("offset"),
        "{err}"
    );
    // compacted with its channels: one plain stream with the same memory
    ok(&vmstream(&[
        "convert",
        &main,
        &cmig,
        "--to",
        "qemu",
        "--compact",
        "--channel",
        &c0,
        "--channel",
        &c1,
    ]));
    let x4 = p(&t.path().join("x4"));
    ok(&vmstream(&["extract", &cmig, "-o", &x4]));
    assert_eq!(
        fs::read(t.path().join("x4/pc.ram.bin")).expect("multifd test"),
        ram
    );
}

#[test]
fn relay_send_tells_a_multifd_source_from_a_plain_one() {
    // exec: (standard input) cannot carry multifd
    let out = vmstream(&[
        "relay",
        "send",
        "--from",
        "-",
        "--to",
        "tcp:127.0.0.1:9",
        "--multifd-channels",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("--multifd-channels needs a socket --from"));
    // a source QEMU whose first connection is a multifd channel, without
    // --multifd-channels: one line saying what to give
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("src.mig");
    let from = format!("unix:{}", sock.display());
    let relay = Command::new(env!("CARGO_BIN_EXE_vmstream"))
        .args(["relay", "send", "--from", &from, "--to", "tcp:127.0.0.1:9"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut qemu = loop {
        match std::os::unix::net::UnixStream::connect(&sock) {
            Ok(s) => break s,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            Err(e) => panic!("the relay never listened: {e}"),
        }
    };
    std::io::Write::write_all(&mut qemu, &0x1122_3344u32.to_be_bytes()).unwrap();
    let out = relay.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("opened a multifd channel") && err.contains("--multifd-channels"),
        "{err}"
    );
}
