//! Channel addresses: arbitrary text as a legacy URI and as QMP JSON.
//!
//! Neither parser panics, every error names its field or part, and what
//! parses survives its own round trip: an address from a URI displays as a
//! URI that parses back to it; an address or channel from JSON serializes to
//! JSON that parses back to it, and through serde the same way.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vmstream_transport::{MigrationAddress, MigrationChannel};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    uri(text);
    json(text);
});

fn uri(text: &str) {
    match MigrationAddress::from_uri(text) {
        Ok(a) => {
            let shown = a.to_string();
            let back = MigrationAddress::from_uri(&shown)
                .unwrap_or_else(|e| panic!("{text:?} -> {shown:?}: {e}"));
            assert_eq!(back, a, "{text:?} -> {shown:?}");
            json_round_trip(&a);
        }
        Err(e) => assert!(e.to_string().starts_with("uri: "), "{e}"),
    }
}

fn json(text: &str) {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
        return;
    };
    match MigrationChannel::from_json(&v) {
        Ok(c) => {
            let back = MigrationChannel::from_json(&c.to_json()).unwrap();
            assert_eq!(back, c);
            let _ = c.to_string();
            let via_serde: MigrationChannel = serde_json::from_value(v.clone()).unwrap();
            assert_eq!(via_serde, c);
        }
        Err(e) => {
            let msg = e.to_string();
            let (field, _) = msg.split_once(": ").unwrap_or_else(|| panic!("{msg}"));
            assert!(!field.is_empty(), "{msg}");
            assert!(serde_json::from_value::<MigrationChannel>(v.clone()).is_err());
        }
    }
    match MigrationAddress::from_json(&v) {
        Ok(a) => json_round_trip(&a),
        Err(e) => assert!(e.to_string().contains(": "), "{e}"),
    }
}

fn json_round_trip(a: &MigrationAddress) {
    let j = a.to_json();
    let back = MigrationAddress::from_json(&j).unwrap_or_else(|e| panic!("{j}: {e}"));
    assert_eq!(&back, a, "{j}");
    let text = serde_json::to_string(&MigrationChannel::main(a.clone())).unwrap();
    assert_eq!(MigrationChannel::from_json_str(&text).unwrap().addr, *a);
    let _ = a.to_string();
}
