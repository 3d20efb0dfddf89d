//! Iterative sections other than RAM (`spapr/htab`, `s390-storage_attributes`,
//! `block`, `dirty-bitmap`): the first byte picks the handler, the rest is
//! section bodies. The framer never panics, never asks for bytes it already
//! has, refuses units above its limit before reading them, and cuts a body into
//! units that add up to it. The same bodies wrapped in a QEMU stream (a START
//! section of that handler, then PART sections) are read without panic, every
//! error says where, and what is accepted the writer gives back byte for byte.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmstream::Limits;
use vmstream_qemu::iterative::{describe, Framer, Handler, Step};
use vmstream_qemu::{qemu_to_qemu, qemu_to_vmstream, vmstream_to_qemu, ConvertOptions};

const HANDLERS: [Handler; 4] = [
    Handler::Htab,
    Handler::StorageAttributes,
    Handler::Block,
    Handler::DirtyBitmap,
];
const MAX_UNIT: u64 = 2 << 20;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let handler = HANDLERS[usize::from(sel) % HANDLERS.len()];

    // The framer over the bytes as one body after another.
    let mut at = 0usize;
    let mut framer = Framer::new(handler, 4096, MAX_UNIT);
    let mut units = 0;
    while at < body.len() && units < 10_000 {
        let rest = &body[at..];
        match framer.step(rest) {
            Ok(Step::Need(n)) => {
                assert!(n > rest.len(), "asked for {n} bytes with {} at hand", rest.len());
                break;
            }
            Ok(Step::Unit { len, last }) => {
                assert!(len > 0 && len as u64 <= MAX_UNIT);
                if len > rest.len() {
                    break;
                }
                let _ = describe(handler, &rest[..len], units == 0, 4096);
                at += len;
                units += 1;
                if last {
                    framer = Framer::new(handler, 4096, MAX_UNIT);
                }
            }
            Err(_) => break,
        }
    }

    // The same bytes as a QEMU stream: one START section of the handler, then
    // PART sections of it, each body up to where its footer is looked for.
    let mut input = b"QEVM\0\0\0\x03".to_vec();
    input.push(0x01);
    input.extend_from_slice(&5u32.to_be_bytes());
    input.push(handler.idstr().len() as u8);
    input.extend_from_slice(handler.idstr().as_bytes());
    input.extend_from_slice(&0u32.to_be_bytes());
    input.extend_from_slice(&1u32.to_be_bytes());
    input.extend_from_slice(body);
    input.push(0x00);
    let opts = ConvertOptions {
        limits: Limits::default()
            .with_max_record_size(1 << 20)
            .with_max_alloc(16 << 20),
        ..ConvertOptions::default()
    };
    match qemu_to_qemu(&input[..], Vec::new(), &opts) {
        Ok((out, _)) => {
            assert!(out == input, "accepted stream not reproduced");
            let (vms, _) = qemu_to_vmstream(&input[..], Vec::new(), &opts).expect("converts");
            let back = vmstream_to_qemu(&vms[..], Vec::new(), &opts).expect("converts back");
            assert!(back == input, "vmstream round trip differs");
        }
        Err(e) => assert!(
            e.location().offset.is_some() || e.kind() == vmstream::ErrorKind::Unsupported,
            "error without a location: {e}"
        ),
    }
});
