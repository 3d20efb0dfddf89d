//! Arbitrary bytes as a QEMU migration stream: the reader never panics, and
//! every error says where. Whatever it accepts, the writer gives back exactly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmstream::Limits;
use vmstream_qemu::{qemu_to_qemu, ConvertOptions};

fuzz_target!(|data: &[u8]| {
    let mut input = b"QEVM\0\0\0\x03".to_vec();
    input.extend_from_slice(data);
    let opts = ConvertOptions {
        limits: Limits::default()
            .with_max_record_size(1 << 20)
            .with_max_alloc(16 << 20),
        ..ConvertOptions::default()
    };
    match qemu_to_qemu(&input[..], Vec::new(), &opts) {
        Ok((out, _)) => assert!(out == input, "accepted stream not reproduced"),
        Err(e) => assert!(
            e.location().offset.is_some()
                || e.location().device.is_some()
                || e.kind() == vmstream::ErrorKind::Unsupported,
            "error without a location: {e}"
        ),
    }
});
