//! Schemas from hostile input: arbitrary bytes as a `-dump-vmstate` JSON, a
//! vmdesc JSON and a vmstream stream with `schema` records (the three
//! parsers `vmstream schema` uses), then `schema-diff` of what parsed.
//!
//! Checks: no panic; errors say where ("dump: ...", "vmdesc...", offsets);
//! a schema compared with itself has no changes; rendering works.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmstream::Limits;
use vmstream_compat::{diff, schema, Schema};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default()
        .with_max_alloc(16 << 20)
        .with_max_record_size(1 << 20);
    let mut parsed = Vec::new();
    match Schema::from_dump(data) {
        Ok(s) => parsed.push(s),
        Err(e) => assert!(e.message().starts_with("dump"), "{e}"),
    }
    if let Ok(s) = Schema::from_vmdesc(data, &limits) {
        parsed.push(s);
    }
    if let Ok(s) = Schema::from_vmstream(data, limits) {
        parsed.push(s);
    }
    if let Ok(s) = Schema::from_bytes(data, limits) {
        parsed.push(s);
    }
    for s in &parsed {
        let r = diff::diff(s, s);
        assert_eq!(r.changes(), 0, "{r}");
        let _ = s.to_string();
        let _ = schema::to_json(s);
        for d in &s.devices {
            let desc = d.ty.to_description();
            schema::from_description(&desc).expect("a description we made parses back");
        }
    }
    if parsed.len() >= 2 {
        let r = diff::diff(&parsed[0], &parsed[1]);
        let _ = r.to_string();
        let _ = diff::to_json(&r);
    }
});
