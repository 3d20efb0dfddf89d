//! QEMU -> vmstream -> QEMU on mutated real streams: whatever converts must come
//! back byte for byte, and the vmstream in between must read cleanly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmstream::Limits;
use vmstream_qemu::{qemu_to_vmstream, vmstream_to_qemu, ConvertOptions};

fuzz_target!(|data: &[u8]| {
    let opts = ConvertOptions {
        limits: Limits::default()
            .with_max_record_size(1 << 20)
            .with_max_alloc(16 << 20),
        ..ConvertOptions::default()
    };
    if let Ok((vms, _)) = qemu_to_vmstream(data, Vec::new(), &opts) {
        let back =
            vmstream_to_qemu(&vms[..], Vec::new(), &opts).expect("converted stream reads back");
        assert!(back == data, "round trip differs");
    }
});
