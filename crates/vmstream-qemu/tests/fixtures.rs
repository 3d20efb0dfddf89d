//! The committed real QEMU 7.2 streams (`testdata/qemu/`): byte-exact round
//! trips however the input is split, typed device state with known values,
//! streams without a description, compaction, and errors that say where for
//! every truncation and for corruption.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns read known-good fixtures

use std::io::Read;
use std::path::PathBuf;

use vmstream::{ErrorKind, Limits, Record, SliceReader, Value};
use vmstream_qemu::{
    qemu_to_qemu, qemu_to_vmstream, vmstream_to_qemu, ConvertOptions, Event, QemuReader, Sink,
};

fn fixture(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/qemu")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn opts() -> ConvertOptions {
    ConvertOptions::default()
}

fn twin_opts() -> ConvertOptions {
    ConvertOptions {
        vmdesc: Some((fixture("i440fx-2.2.vmdesc.json"), false)),
        ..opts()
    }
}

/// A reader that hands out at most `n` bytes per call.
struct Trickle<'a>(&'a [u8], usize);

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.0.len().min(self.1).min(buf.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

#[test]
fn every_fixture_round_trips_byte_for_byte() {
    for (name, o) in [
        ("q35-7.2.mig", opts()),
        ("i440fx-2.3.mig", opts()),
        ("i440fx-2.2.mig", twin_opts()),
    ] {
        let src = fixture(name);
        let (vms, summary) = qemu_to_vmstream(&src[..], Vec::new(), &o).unwrap();
        assert!(
            summary.raw_devices.is_empty(),
            "{name}: {:?}",
            summary.raw_devices
        );
        assert!(summary.typed_devices > 20, "{name}");
        let back = vmstream_to_qemu(&vms[..], Vec::new(), &o).unwrap();
        assert!(back == src, "{name}: round trip differs");
        // QEMU -> QEMU through the reader and writer alone
        assert!(
            qemu_to_qemu(&src[..], Vec::new(), &o).unwrap().0 == src,
            "{name}"
        );
        // split independence: the same vmstream bytes however the input arrives
        for chunk in [1, 7, 4096, 4105] {
            let (v2, _) = qemu_to_vmstream(Trickle(&src, chunk), Vec::new(), &o).unwrap();
            assert!(
                v2 == vms,
                "{name}: output differs when read {chunk} bytes at a time"
            );
        }
        let back = vmstream_to_qemu(Trickle(&vms, 5), Vec::new(), &o).unwrap();
        assert!(back == src, "{name}");
    }
}

#[test]
fn the_file_path_reads_the_trailer_first_and_gives_the_same_result() {
    let src = fixture("q35-7.2.mig");
    let json = vmstream_qemu::read_trailer(&mut std::io::Cursor::new(&src))
        .unwrap()
        .unwrap();
    let ahead = ConvertOptions {
        vmdesc: Some((json, true)),
        ..opts()
    };
    let a = qemu_to_vmstream(&src[..], Vec::new(), &opts()).unwrap().0;
    let b = qemu_to_vmstream(&src[..], Vec::new(), &ahead).unwrap().0;
    assert!(a == b);
}

fn devices(vms: &[u8]) -> Vec<vmstream::DeviceState> {
    let mut r = SliceReader::new(vms, Limits::default()).unwrap();
    let mut out = Vec::new();
    while let Some(item) = r.next().unwrap() {
        if let Record::Device(d) = item.record {
            out.push(d);
        }
    }
    out
}

#[test]
fn device_state_is_typed_with_known_values() {
    let (vms, _) = qemu_to_vmstream(&fixture("q35-7.2.mig")[..], Vec::new(), &opts()).unwrap();
    let devs = devices(&vms);
    let get = |name: &str| {
        devs.iter()
            .find(|d| d.name == name)
            .unwrap_or_else(|| panic!("{name}"))
    };
    let gs = get("globalstate");
    assert_eq!(gs.value.field("size"), Some(&Value::U32(10)));
    match gs.value.field("runstate") {
        Some(Value::Bytes(b)) => assert!(b.starts_with(b"prelaunch\0") && b.len() == 100),
        other => panic!("runstate {other:?}"),
    }
    let apic = get("apic");
    assert_eq!(apic.type_name, "apic");
    assert_eq!(apic.value.field("apicbase"), Some(&Value::U32(0xfee0_0900)));
    assert_eq!(apic.value.field("timer_expiry"), Some(&Value::I64(-1)));
    let cpu = get("cpu");
    // the reset vector: CS selector 0xf000, EIP 0xfff0
    assert_eq!(cpu.value.field("env.eip"), Some(&Value::U64(0xfff0)));
    // QEMU field names may contain dots: "env.segs" is one field, a sequence
    let Some(Value::Seq(segs)) = cpu.value.field("env.segs") else {
        panic!("env.segs")
    };
    assert_eq!(segs[1].field("selector"), Some(&Value::U32(0xf000)));
    // the vmdesc's device order is kept
    assert_eq!(devs.first().map(|d| d.name.as_str()), Some("timer"));
    assert_eq!(devs.last().map(|d| d.name.as_str()), Some("globalstate"));
}

/// Collects the final memory image from events.
#[derive(Default)]
struct Image {
    blocks: Vec<(String, Vec<u8>)>,
    pages: usize,
}

impl Sink for Image {
    fn event(&mut self, ev: &Event<'_>) -> vmstream::Result<()> {
        match ev {
            Event::RamBlocks { blocks, .. } => {
                self.blocks = blocks
                    .iter()
                    .map(|b| (b.name.clone(), vec![0; b.size as usize]))
                    .collect();
            }
            Event::Page { block, index, data } => {
                self.pages += 1;
                let mem = &mut self.blocks[*block as usize].1;
                let at = *index as usize * 4096;
                match data {
                    Some(d) => mem[at..at + 4096].copy_from_slice(d),
                    None => mem[at..at + 4096].fill(0),
                }
            }
            _ => {}
        }
        Ok(())
    }
}

#[test]
fn guest_memory_holds_the_blob_and_compaction_keeps_it() {
    let src = fixture("q35-7.2.mig");
    let blob = fixture("blob.bin");
    let mut image = Image::default();
    QemuReader::new(&src[..], Limits::default())
        .run(&mut image)
        .unwrap();
    let ram = &image.blocks.iter().find(|b| b.0 == "pc.ram").unwrap().1;
    assert!(
        ram[0x100000..0x100000 + blob.len()] == blob[..],
        "blob not at 0x100000 of pc.ram"
    );

    let compact = ConvertOptions {
        compact: true,
        ..opts()
    };
    let (cvms, _) = qemu_to_vmstream(&src[..], Vec::new(), &compact).unwrap();
    let cmig = vmstream_to_qemu(&cvms[..], Vec::new(), &opts()).unwrap();
    let mut cimage = Image::default();
    QemuReader::new(&cmig[..], Limits::default())
        .run(&mut cimage)
        .unwrap();
    assert_eq!(cimage.blocks, image.blocks);
    assert!(cimage.pages <= image.pages);
    // device state is untouched by compaction
    let (vms, _) = qemu_to_vmstream(&src[..], Vec::new(), &opts()).unwrap();
    assert_eq!(devices(&cvms), devices(&vms));
}

#[test]
fn no_vmdesc_is_unsupported_unless_a_twin_describes_it() {
    let src = fixture("i440fx-2.2.mig");
    let e = qemu_to_vmstream(&src[..], Vec::new(), &opts()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    assert!(
        e.to_string()
            .starts_with("unsupported: no device description ("),
        "{e}"
    );
    assert_eq!(e.location().device.as_deref(), Some("timer"), "{e}");
    assert!(e.location().offset.is_some());
    // the twin's description is not the stream's own, so it is not written back
    let (vms, _) = qemu_to_vmstream(&src[..], Vec::new(), &twin_opts()).unwrap();
    assert!(vmstream_to_qemu(&vms[..], Vec::new(), &opts()).unwrap() == src);
}

#[test]
fn every_truncation_is_an_error_with_an_offset() {
    let src = fixture("i440fx-2.3.mig");
    let trailer = vmstream_qemu::vmdesc::find_trailer(&src).unwrap();
    // every offset of the header, every 7th through the device sections and
    // the trailer, a spread through the RAM
    let devices = trailer - 40_000;
    let cuts: Vec<usize> = (0..src.len())
        .filter(|&n| n < 64 || (n >= devices && n % 7 == 0) || n % 4001 == 0)
        .collect();
    for &n in &cuts {
        let e = match qemu_to_vmstream(&src[..n], Vec::new(), &opts()) {
            Err(e) => e,
            Ok(_) => panic!("truncation at {n} of {} was accepted", src.len()),
        };
        assert!(
            e.location().offset.is_some() || e.kind() == ErrorKind::Unsupported,
            "cut {n}: {e}"
        );
    }
    assert!(cuts.len() > 10_000, "{}", cuts.len());
}

#[test]
fn corruption_never_panics_and_errors_say_where() {
    let src = fixture("q35-7.2.mig");
    let start_devices = vmstream_qemu::vmdesc::find_trailer(&src).unwrap() - 40_000;
    let mut errors = 0;
    for i in (0..src.len()).filter(|i| i % 4001 == 0 || (*i >= start_devices && i % 17 == 0)) {
        let mut bad = src.clone();
        bad[i] ^= 0x5a;
        match qemu_to_vmstream(&bad[..], Vec::new(), &opts()) {
            Err(e) => {
                errors += 1;
                assert!(
                    e.location().offset.is_some() || e.location().device.is_some(),
                    "flip at {i}: {e}"
                );
            }
            // page data and many field values are free-form: a flip there is a
            // different valid stream, and it must still round-trip exactly
            Ok((vms, _)) => {
                let back = vmstream_to_qemu(&vms[..], Vec::new(), &opts()).unwrap();
                assert!(back == bad, "flip at {i} accepted but not reproduced");
            }
        }
    }
    assert!(errors > 500, "{errors}");
}

#[test]
fn converted_streams_that_are_not_from_qemu_are_refused() {
    let vms = vmstream_testkit::sample_stream();
    let e = vmstream_to_qemu(&vms[..], Vec::new(), &opts()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
}

/// A live migration's socket: the bytes in chunks of `n`, then a read that
/// never returns (here: fails loudly), as when a source QEMU with a return
/// path keeps its connection open until the destination answers.
struct OpenSocket<'a>(Trickle<'a>);

impl Read for OpenSocket<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.0.read(buf)? {
            0 => Err(std::io::Error::other("read past the end of a live stream")),
            n => Ok(n),
        }
    }
}

#[test]
fn a_live_stream_ends_at_its_trailer_without_waiting_for_the_sender_to_close() {
    for name in ["q35-7.2.mig", "i440fx-2.3.mig"] {
        let data = fixture(name);
        for chunk in [1, 7, 4096, 1 << 20] {
            let mut out = vmstream_qemu::QemuWriter::new(Vec::new(), 4096);
            QemuReader::new(OpenSocket(Trickle(&data, chunk)), Limits::default())
                .live()
                .run(&mut out)
                .unwrap_or_else(|e| panic!("{name} in chunks of {chunk}: {e} {:?}", e.location()));
            assert_eq!(out.finish().unwrap(), data, "{name}");
            // Read as a file, the same stream waits for the end of the input.
            let e = QemuReader::new(OpenSocket(Trickle(&data, chunk)), Limits::default())
                .run(&mut vmstream_qemu::QemuWriter::new(Vec::new(), 4096))
                .unwrap_err();
            assert!(e.to_string().contains("read past the end"), "{e}");
        }
    }
}
