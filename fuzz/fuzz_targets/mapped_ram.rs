//! Arbitrary bytes as the rest of a mapped-ram QEMU stream (after a header and
//! a configuration section with the capability and 1 KiB pages): the reader
//! never panics and every error says where; a pipe and a seekable file accept
//! the same streams with the same events; what is accepted is written back to
//! the same length, identically through vmstream and directly, and reading that
//! again gives it back unchanged (the bytes of absent page slots and padding
//! are not carried, so the first write is the fixed point, not the input).
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use vmstream_qemu::{
    qemu_to_vmstream, read_qemu, read_qemu_seekable, vmstream_to_qemu_seekable, ConvertOptions,
    Event, QemuWriter, Sink,
};

/// `QEVM` v3, configuration: machine "pc", target page bits 10, capabilities [mapped-ram].
fn prefix() -> Vec<u8> {
    let mut v = b"QEVM\0\0\0\x03\x07\0\0\0\x02pc".to_vec();
    v.extend_from_slice(b"\x05\x1econfiguration/target-page-bits\0\0\0\x01\0\0\0\x0a");
    v.extend_from_slice(b"\x05\x1aconfiguration/capabilities\0\0\0\x01\0\0\0\x01\x0amapped-ram");
    v
}

/// The events, rendered: what a reader handed out.
#[derive(Default, PartialEq, Debug)]
struct Log(Vec<String>);

impl Sink for Log {
    fn event(&mut self, ev: &Event<'_>) -> vmstream::Result<()> {
        let s = match ev {
            Event::MappedBlock { index, block, header, bitmap, .. } => {
                format!("block {index} {:?} {} {header:?} {bitmap:02x?}", block.name, block.size)
            }
            Event::Page { block, index, data } => format!("page {block} {index} {data:02x?}"),
            Event::Device(d) => format!("device {d:?}"),
            other => format!("{other:?}"),
        };
        self.0.push(s);
        Ok(())
    }
}

fn opts() -> ConvertOptions {
    ConvertOptions {
        limits: vmstream_fuzz::limits(),
        ..ConvertOptions::default()
    }
}

fn write_back(input: &[u8]) -> vmstream::Result<Vec<u8>> {
    let mut w = QemuWriter::seekable(Cursor::new(Vec::new()), 1024);
    read_qemu_seekable(Cursor::new(input), &mut w, &opts())?;
    Ok(w.finish()?.into_inner())
}

fuzz_target!(|data: &[u8]| {
    let mut input = prefix();
    input.extend_from_slice(data);
    let o = opts();
    let mut pipe = Log::default();
    let mut file = Log::default();
    let p = read_qemu(&input[..], &mut pipe, &o);
    let f = read_qemu_seekable(Cursor::new(&input), &mut file, &o);
    for e in [&p, &f].into_iter().filter_map(|r| r.as_ref().err()) {
        assert!(
            e.location().offset.is_some()
                || e.location().device.is_some()
                || e.kind() == vmstream::ErrorKind::Unsupported,
            "error without a location: {e}"
        );
    }
    assert_eq!(p.is_ok(), f.is_ok(), "pipe {p:?}, file {f:?}");
    if p.is_err() {
        return;
    }
    assert_eq!(pipe, file);
    let direct = write_back(&input).expect("an accepted stream is written back");
    assert_eq!(direct.len(), input.len());
    let (vms, _) = qemu_to_vmstream(&input[..], Vec::new(), &o).expect("converts");
    let via = vmstream_to_qemu_seekable(&vms[..], Cursor::new(Vec::new()), &o)
        .expect("converts back")
        .into_inner();
    assert!(via == direct, "through vmstream differs from the direct write");
    let again = write_back(&direct).expect("the written stream reads again");
    assert!(again == direct, "the written stream is not a fixed point");
});
