//! Arbitrary bytes into the binary value decoder. What decodes must re-encode
//! to exactly the same bytes (the encoding is canonical), decode again to the
//! same value, survive Value -> JSON -> Value (in memory and as JSON text)
//! bit-exactly, and conform to its own inferred schema. The other views of a
//! value (text, leaves, serde) must not panic.
//!
//! Decoding with a small `max_alloc` must not allocate much more than that
//! budget: the decoder charges for what it builds before building it.
//!
//! Input layout: byte 0 picks how many names of a fixed table are defined
//! (modulo its length + 1); the rest is the encoded value.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vmstream::value::{decode, encode, NameTable};
use vmstream::Value;
use vmstream_fuzz::{canon, limits, offset_of, peak_alloc, VALUE_NAMES as NAMES};

/// The small allocation budget of the accounting check.
const BUDGET: u64 = 16 << 10;

/// Where the decoded bytes pretend to sit in a stream.
const BASE: u64 = 0x1000;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, input)) = data.split_first() else {
        return;
    };
    let mut names = NameTable::new();
    for n in NAMES.iter().take(usize::from(sel) % (NAMES.len() + 1)) {
        names.intern(n);
    }
    // Accounting: heap use stays within a small multiple of the budget (names
    // are cloned into a duplicate check, containers and error paths add a
    // little), whether decoding succeeds or stops at the limit.
    let small = limits().with_max_alloc(BUDGET);
    let (r, peak) = peak_alloc(|| decode(input, BASE, &names, &small).map(drop));
    assert!(
        peak as u64 <= 4 * BUDGET + (64 << 10),
        "decoding with max_alloc {BUDGET} used {peak} bytes ({:?})",
        r.err()
    );

    let lim = limits();
    let v = match decode(input, BASE, &names, &lim) {
        Ok(v) => v,
        Err(e) => {
            let at = offset_of(&e);
            assert!(
                (BASE..=BASE + input.len() as u64).contains(&at),
                "error offset {at:#x} outside the input: {e}"
            );
            return;
        }
    };

    // Binary: canonical and stable.
    let mut table = names.clone();
    let mut out = Vec::new();
    encode(&v, &mut table, &mut out);
    assert_eq!(table.len(), names.len(), "re-encoding interned new names");
    assert_eq!(out, input, "re-encoding differs from the decoded bytes");
    let again = decode(&out, 0, &names, &lim).expect("re-encoded value decodes");
    assert_eq!(canon(&again), canon(&v));

    // JSON in memory: value -> JSON -> value, and JSON -> value -> JSON.
    let j = v.to_json();
    let from = Value::from_json(&j).expect("a value's own JSON parses");
    assert_eq!(canon(&from), canon(&v), "value -> JSON -> value");
    assert_eq!(from.to_json(), j, "JSON -> value -> JSON");

    // JSON as text. serde_json refuses nesting beyond 128 levels when parsing
    // text, and each value level takes two JSON levels.
    let text = serde_json::to_string(&j).expect("JSON serializes");
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(j2) => {
            let v2 = Value::from_json(&j2).expect("JSON text parses back");
            assert_eq!(canon(&v2), canon(&v), "value -> JSON text -> value");
        }
        Err(e) if e.to_string().contains("recursion limit") => {}
        Err(e) => panic!("JSON text does not parse back: {e}"),
    }

    // Schemas: a value conforms to the schema inferred from it.
    let schema = vmstream::schema::of(&v);
    if let Err(e) = vmstream::schema::check(&schema, &v) {
        panic!("value does not conform to its inferred schema: {e}");
    }

    // Views that must merely not panic.
    let _ = v.to_string();
    let _ = v.scalar_text();
    let mut leaves = 0usize;
    v.walk_leaves(&mut |_, _| leaves += 1);
    let _ = vmstream::from_value::<serde_json::Value>(&v);
    let _ = vmstream::from_value::<vmstream_testkit::Uart>(&v);
    let _ = vmstream::from_value::<vmstream_testkit::VirtioNet>(&v);
    let _ = vmstream::from_value::<Option<Vec<(String, u64)>>>(&v);
});
