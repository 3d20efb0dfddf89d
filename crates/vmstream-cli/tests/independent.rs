//! The vectors of `testdata/independent/`, written from `docs/format.md` alone by
//! `scripts/vectors.py` (an encoder sharing no code with this repository), read back
//! by the `vmstream` binary.
//!
//! * The committed files are exactly what the script makes.
//! * Every good stream verifies, and `inspect --json`, `dump --json` and `extract` find
//!   what the manifest says the script wrote: records, devices and their values, RAM
//!   blocks, the final content of every page.
//! * Every bad stream fails `verify` with one error line of the kind the manifest names
//!   (section 9 of the spec), and its control (the same stream keeping the rule) verifies.
//!   A vector marked `pending` breaks a rule the reader does not enforce yet: it is
//!   reported, not failed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value as Json;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn vectors() -> PathBuf {
    root().join("testdata/independent")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `scripts/vectors.py OUT [--controls DIR]`.
fn run_script(out: &Path, controls: Option<&Path>) {
    let mut cmd = Command::new("python3");
    cmd.arg(root().join("scripts/vectors.py")).arg(out);
    if let Some(c) = controls {
        cmd.arg("--controls").arg(c);
    }
    let o = cmd.output().expect("python3 runs scripts/vectors.py");
    assert!(
        o.status.success(),
        "scripts/vectors.py failed: {}",
        text(&o.stderr)
    );
}

/// Runs the binary in `dir`, so error lines name the file without its directory.
fn vmstream(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmstream"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run vmstream")
}

fn ok_json(dir: &Path, args: &[&str]) -> Result<Json, String> {
    let out = vmstream(dir, args);
    if !out.status.success() {
        return Err(format!(
            "`vmstream {}` exited {:?}: {}",
            args.join(" "),
            out.status.code(),
            text(&out.stderr).trim()
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("`{}`: {e}", args.join(" ")))
}

/// `cmd`, then the vector's `args`, then its file.
fn command<'a>(cmd: &[&'a str], args: &'a [String], file: &'a str) -> Vec<&'a str> {
    let mut a = cmd.to_vec();
    a.extend(args.iter().map(String::as_str));
    a.push(file);
    a
}

fn manifest() -> Vec<Json> {
    let doc: Json = serde_json::from_slice(
        &fs::read(vectors().join("manifest.json")).expect("testdata/independent/manifest.json"),
    )
    .expect("manifest is JSON");
    doc["vectors"].as_array().expect("vectors").clone()
}

fn strings(v: &Json) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|s| s.as_str().expect("string").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
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
fn committed_vectors_are_what_the_script_makes() {
    let t = tempfile::tempdir().expect("tempdir");
    run_script(t.path(), None);
    let (made, committed) = (files(t.path()), files(&vectors()));
    let names = |v: &[(String, Vec<u8>)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&made),
        names(&committed),
        "run scripts/vectors.py testdata/independent"
    );
    for ((name, a), (_, b)) in made.iter().zip(&committed) {
        assert!(
            a == b,
            "testdata/independent/{name} differs from what scripts/vectors.py makes"
        );
    }
    let total: usize = committed.iter().map(|(_, b)| b.len()).sum();
    assert!(
        total < 320 << 10,
        "testdata/independent holds {total} bytes"
    );
}

#[test]
fn good_vectors_read_as_written() {
    let dir = vectors();
    let mut failures = Vec::new();
    let mut n = 0;
    for v in manifest().iter().filter(|v| v["good"] == true) {
        n += 1;
        let file = v["file"].as_str().expect("file");
        if let Err(e) = check_good(&dir, file, &strings(&v["args"]), &v["expect"]) {
            failures.push(format!("{file}: {e}"));
        }
    }
    assert!(n >= 10, "only {n} good vectors");
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn bad_vectors_fail_with_their_kind_and_controls_pass() {
    let t = tempfile::tempdir().expect("tempdir");
    let (out, controls) = (t.path().join("out"), t.path().join("controls"));
    run_script(&out, Some(&controls));
    let dir = vectors();
    let mut failures = Vec::new();
    let mut n = 0;
    for v in manifest().iter().filter(|v| v["good"] == false) {
        n += 1;
        let file = v["file"].as_str().expect("file");
        let args = strings(&v["args"]);
        let control_args = if v.get("control_args").is_some() {
            strings(&v["control_args"])
        } else {
            args.clone()
        };
        let result = check_bad(&dir, file, v, &args);
        match (v.get("pending").and_then(Json::as_str), result) {
            (Some(why), Err(e)) => eprintln!("pending {file} ({why}): {e}"),
            (Some(why), Ok(())) => {
                eprintln!("pending {file} is refused now ({why}): drop its pending mark")
            }
            (None, Err(e)) => failures.push(format!("{file}: {e}")),
            (None, Ok(())) => {}
        }
        // the control keeps the rule: it must read cleanly
        let out = vmstream(&controls, &command(&["verify"], &control_args, file));
        if !out.status.success() {
            failures.push(format!(
                "{file}: its control fails: {}",
                text(&out.stderr).trim()
            ));
        }
    }
    assert!(n >= 50, "only {n} bad vectors");
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

fn check_bad(dir: &Path, file: &str, v: &Json, args: &[String]) -> Result<(), String> {
    let out = vmstream(dir, &command(&["verify"], args, file));
    let err = text(&out.stderr);
    if out.status.code() != Some(1) {
        return Err(format!(
            "verify exited {:?}, expected 1: {}{}",
            out.status.code(),
            text(&out.stdout).trim(),
            err.trim()
        ));
    }
    if err.lines().count() != 1 || err.contains("panicked") {
        return Err(format!("not one error line: {err}"));
    }
    // the first kind named on the line is the error's own
    let labels = [
        ("malformed", "malformed stream: "),
        ("unsupported", "unsupported: "),
        ("limit exceeded", "limit exceeded: "),
    ];
    let found = labels
        .iter()
        .filter_map(|(kind, label)| err.find(label).map(|at| (at, *kind)))
        .min()
        .map(|(_, kind)| kind);
    let expected = v["kind"].as_str().expect("kind");
    if found != Some(expected) {
        return Err(format!("expected a {expected} error, got: {}", err.trim()));
    }
    let any = strings(&v["message_any"]);
    if !any.is_empty() && !any.iter().any(|m| err.contains(m.as_str())) {
        return Err(format!("the error names none of {any:?}: {}", err.trim()));
    }
    Ok(())
}

fn check_good(dir: &Path, file: &str, args: &[String], want: &Json) -> Result<(), String> {
    // every command reads the file with the vector's own limits
    let with = |cmd: &[&'static str]| command(cmd, args, file);
    let verify = ok_json(dir, &with(&["verify", "--json"]))?;
    expect_eq("verify records", &verify["records"], &want["total_records"])?;
    let devices = want["devices"].as_array().expect("devices");
    expect_eq(
        "verify devices",
        &verify["devices"],
        &Json::from(devices.len()),
    )?;

    let inspect = ok_json(dir, &with(&["inspect", "--json"]))?;
    for key in ["page_size", "writer", "epoch_barriers"] {
        expect_eq(key, &inspect[key], &want[key])?;
    }
    for (set, known) in [
        ("required", &["zstd", "lz4"][..]),
        ("optional", &["index", "qemu-framing"]),
    ] {
        let have = strings(&inspect["features"][set]);
        let expected = strings(&want[format!("{set}_features").as_str()]);
        for name in known {
            if have.iter().any(|h| h == name) != expected.iter().any(|e| e == name) {
                return Err(format!(
                    "{set} features {have:?}, the stream sets {expected:?}"
                ));
            }
        }
    }
    let (have, expected) = (&inspect["records"], &want["records"]);
    let kinds = |v: &Json| {
        v.as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    for kind in kinds(have).into_iter().chain(kinds(expected)) {
        let count = |v: &Json| v.get(&kind).and_then(Json::as_u64).unwrap_or(0);
        if count(have) != count(expected) {
            return Err(format!("records {have}, the stream has {expected}"));
        }
    }
    json_eq("info", &want["info"], &inspect["info"])?;
    let listed = inspect["devices"].as_array().ok_or("inspect: no devices")?;
    if listed.len() != devices.len() {
        return Err(format!(
            "inspect lists {} devices, the stream has {}",
            listed.len(),
            devices.len()
        ));
    }
    for (have, d) in listed.iter().zip(devices) {
        for key in ["name", "instance_id", "type", "version"] {
            expect_eq(&format!("inspect device {key}"), &have[key], &d[key])?;
        }
    }
    let blocks = want["ram_blocks"].as_array().expect("ram_blocks");
    let listed = inspect["ram_blocks"]
        .as_array()
        .ok_or("inspect: no ram_blocks")?;
    if listed.len() != blocks.len() {
        return Err(format!(
            "inspect lists {} RAM blocks, the stream has {}",
            listed.len(),
            blocks.len()
        ));
    }
    // the spec orders no listing of blocks: match them by id
    for b in blocks {
        let have = listed
            .iter()
            .find(|h| h["id"] == b["id"])
            .ok_or_else(|| format!("inspect lists no RAM block {}", b["id"]))?;
        for key in ["id", "name", "size", "page_size", "flags", "final", "sent"] {
            expect_eq(&format!("inspect block {key}"), &have[key], &b[key])?;
        }
        let pages = b["size"].as_u64().expect("size") / want["page_size"].as_u64().expect("ps");
        expect_eq("inspect block pages", &have["pages"], &Json::from(pages))?;
    }

    let dump = ok_json(dir, &with(&["dump", "--json"]))?;
    let dumped = dump["devices"].as_array().ok_or("dump: no devices")?;
    if dumped.len() != devices.len() {
        return Err(format!("dump shows {} devices", dumped.len()));
    }
    for (have, d) in dumped.iter().zip(devices) {
        for key in ["name", "instance_id", "type", "version"] {
            expect_eq(&format!("dump device {key}"), &have[key], &d[key])?;
        }
        let name = d["name"].as_str().expect("name");
        json_eq(&format!("device {name}"), &d["value"], &have["value"])?;
    }
    let dumped = dump["ram_blocks"].as_array().ok_or("dump: no ram_blocks")?;
    if dumped.len() != blocks.len() {
        return Err(format!("dump shows {} RAM blocks", dumped.len()));
    }
    for b in blocks {
        let have = dumped
            .iter()
            .find(|h| h["name"] == b["name"])
            .ok_or_else(|| format!("dump shows no RAM block {}", b["name"]))?;
        expect_eq("dump block size", &have["size"], &b["size"])?;
    }

    let t = tempfile::tempdir().expect("tempdir");
    let out_dir = t.path().join("x");
    let out = vmstream(
        dir,
        &command(
            &["extract", "--out", out_dir.to_str().expect("utf8")],
            args,
            file,
        ),
    );
    if !out.status.success() {
        return Err(format!("extract: {}", text(&out.stderr).trim()));
    }
    check_extract(&out_dir, &text(&out.stdout), want)
}

/// `extract` wrote each block's final contents into `out_dir` and listed them; every
/// page must be what the stream last sent for it (zero when it sent a zero entry or
/// nothing).
fn check_extract(out_dir: &Path, listing: &str, want: &Json) -> Result<(), String> {
    let page_size = usize::try_from(want["page_size"].as_u64().expect("page_size")).expect("usize");
    for b in want["ram_blocks"].as_array().expect("ram_blocks") {
        let name = b["name"].as_str().expect("name");
        let line = listing
            .lines()
            .find(|l| l.split('\t').nth(1) == Some(name))
            .ok_or_else(|| format!("extract lists no block {name}: {listing}"))?;
        let path = out_dir.join(line.split('\t').next().expect("file name"));
        let image = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let size = usize::try_from(b["size"].as_u64().expect("size")).expect("usize");
        if image.len() != size {
            return Err(format!(
                "block {name}: extracted {} bytes, size is {size}",
                image.len()
            ));
        }
        let mut data = std::collections::BTreeMap::new();
        for p in b["data_pages"].as_array().expect("data_pages") {
            let index = usize::try_from(p[0].as_u64().expect("index")).expect("usize");
            data.insert(index, page(&p[1], page_size));
        }
        for (index, got) in image.chunks(page_size).enumerate() {
            let ok = match data.get(&index) {
                Some(expected) => got == expected.as_slice(),
                None => got.iter().all(|&b| b == 0),
            };
            if !ok {
                return Err(format!(
                    "block {name} page {index}: extracted content differs from what the stream sent"
                ));
            }
        }
    }
    Ok(())
}

/// A page as the manifest describes it: `prefix`, then `repeat` over and over.
fn page(desc: &Json, size: usize) -> Vec<u8> {
    let hex = |key: &str| -> Vec<u8> {
        let s = desc[key].as_str().expect("hex");
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
            .collect()
    };
    let (mut out, repeat) = (hex("prefix"), hex("repeat"));
    out.extend(repeat.iter().cycle().take(size.saturating_sub(out.len())));
    out.truncate(size);
    out
}

fn expect_eq(what: &str, have: &Json, want: &Json) -> Result<(), String> {
    if have == want {
        Ok(())
    } else {
        Err(format!("{what}: {have}, the stream has {want}"))
    }
}

/// Equality of two JSON-form values (section 5.4) that also checks the order of struct
/// fields, and compares finite floats by their bits at their own width (the decimal
/// spelling of a float is not fixed, only that it reads back to the same bits).
fn json_eq(path: &str, want: &Json, have: &Json) -> Result<(), String> {
    let differ = || format!("{path}: {have}, the stream has {want}");
    match (want, have) {
        (Json::Object(w), Json::Object(h)) => {
            if !w.keys().eq(h.keys()) {
                return Err(differ());
            }
            if w.len() == 1 {
                let (key, wv) = w.iter().next().expect("one key");
                let hv = &h[key];
                if let (Some(a), Some(b), true) = (wv.as_f64(), hv.as_f64(), wv.is_number()) {
                    let same = match key.as_str() {
                        // JSON numbers of an f32 are its value: narrowing is exact
                        "f32" => (a as f32).to_bits() == (b as f32).to_bits(),
                        "f64" => a.to_bits() == b.to_bits(),
                        _ => wv == hv,
                    };
                    return if same { Ok(()) } else { Err(differ()) };
                }
            }
            for (key, wv) in w {
                json_eq(&format!("{path}.{key}"), wv, &h[key])?;
            }
            Ok(())
        }
        (Json::Array(w), Json::Array(h)) => {
            if w.len() != h.len() {
                return Err(differ());
            }
            for (i, (wv, hv)) in w.iter().zip(h).enumerate() {
                json_eq(&format!("{path}[{i}]"), wv, hv)?;
            }
            Ok(())
        }
        _ if want == have => Ok(()),
        _ => Err(differ()),
    }
}
