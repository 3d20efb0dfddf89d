//! `vmstream schema`, `schema-diff` and `transform` as a user runs them.

use std::path::Path;
use std::process::{Command, Output};

fn vmstream(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmstream"))
        .args(args)
        .output()
        .expect("vmstream runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn dump(dir: &Path, name: &str, esp_version: u32, drq: bool) -> String {
    let mut fields =
        vec![r#"{"field": "lun", "version_id": 0, "field_exists": true, "size": 1}"#.to_owned()];
    if drq {
        fields.push(
            r#"{"field": "drq_state", "version_id": 0, "field_exists": false, "size": 1}"#.into(),
        );
    }
    let json = format!(
        r#"{{"vmschkmachine": {{"Name": "pc-i440fx-7.2"}},
            "am53c974": {{"Name": "am53c974", "version_id": 2, "minimum_version_id": 1,
              "Description": {{"name": "pciespscsi", "version_id": 2, "minimum_version_id": 1,
                "Fields": [{{"field": "esp", "version_id": 0, "field_exists": false, "size": 2,
                  "Description": {{"name": "esp", "version_id": {esp_version}, "minimum_version_id": 3,
                    "Fields": [{}]}}}}]}}}}}}"#,
        fields.join(",")
    );
    let p = dir.join(name);
    std::fs::write(&p, json).expect("write");
    p.display().to_string()
}

#[test]
fn schema_and_schema_diff() {
    let dir = tempfile::tempdir().expect("tempdir");
    let old = dump(dir.path(), "old.json", 6, false);
    let new = dump(dir.path(), "new.json", 7, true);
    let o = vmstream(&["schema", &old]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("device am53c974 (vmstate pciespscsi)"),
        "{}",
        text(&o)
    );
    let o = vmstream(&["schema", "--json", &new]);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(j["machine"], "pc-i440fx-7.2");

    let o = vmstream(&["schema-diff", &old, &new]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("am53c974 (vmstate pciespscsi)"), "{t}");
    assert!(
        t.contains(
            "esp.drq_state: field added: raw, 1 bytes  [old -> new breaks; new -> old breaks]"
        ),
        "{t}"
    );
    let o = vmstream(&["schema-diff", "--json", &old, &new]);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(j["breaks"]["old_to_new"], "breaks");

    let o = vmstream(&["schema-diff", &old, &old]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"am53c974\": {\"version_id\": -1}}").expect("write");
    let o = vmstream(&["schema-diff", &old, &bad.display().to_string()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("am53c974.version_id: expected a non-negative integer"),
        "{}",
        text(&o)
    );
}

#[test]
fn transform_rules_errors_name_line_and_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("r.toml");
    std::fs::write(&rules, "[[type]]\nname = \"t\"\n[[type.step]]\nfrom = 1\nto = 2\nup = [ { op = \"rename\", field = \"a\" } ]\n").expect("write");
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/good/sample.vms");
    let out = dir.path().join("out.vms");
    let o = vmstream(&[
        "transform",
        "--rules",
        &rules.display().to_string(),
        &sample.display().to_string(),
        &out.display().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("r.toml:6:"), "{}", text(&o));
    assert!(text(&o).contains("missing field `to`"), "{}", text(&o));
    assert!(!out.exists());
}

#[test]
fn transform_a_vmstream_stream_and_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("uart.toml");
    std::fs::write(
        &rules,
        r#"
[[type]]
name = "uart-16550"
[[type.step]]
from = 1
to = 2
up = [
  { op = "width", field = "divisor", from = "u16", to = "u32" },
  { op = "add", field = "scr", type = "u8", default = 0, after = "mcr" },
]
"#,
    )
    .expect("write");
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/good/sample.vms");
    let v2 = dir.path().join("v2.vms");
    let back = dir.path().join("v1.vms");
    let r = rules.display().to_string();
    let o = vmstream(&[
        "transform",
        "--rules",
        &r,
        &sample.display().to_string(),
        &v2.display().to_string(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("uart-16550): version 1 -> 2"),
        "{}",
        text(&o)
    );
    let o = vmstream(&["schema", &v2.display().to_string()]);
    let t = text(&o);
    assert!(t.contains("device uart-16550\n  version 2"), "{t}");
    assert!(t.contains("divisor: u32") && t.contains("scr: u8"), "{t}");
    let o = vmstream(&[
        "transform",
        "--rules",
        &r,
        "--device-version",
        "uart-16550=1",
        &v2.display().to_string(),
        &back.display().to_string(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    // the devices come back as they were
    let o = vmstream(&[
        "diff",
        &sample.display().to_string(),
        &back.display().to_string(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
}
