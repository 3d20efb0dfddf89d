//! The destination of a live migration against a hostile source: a plan of
//! records (hello, info, ram-blocks, pages, epochs, devices, control messages,
//! raw records), written with valid checksums and then optionally cut short or
//! with one byte flipped (checksums fixed again or not), is fed as the source's
//! main channel to `destination::incoming` over a synthetic VM.
//!
//! Checks: no panic; the VM runs afterwards exactly when `incoming` succeeded;
//! when it succeeded, its memory is what the plan's pages up to the first
//! `complete` make of zeroed memory.

#![no_main]

use std::io::{Cursor, Read, Write};
use std::sync::Arc;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use vmstream::{Arch, DeviceState, Header, RamBlock, StreamKind, StreamWriter, WriterOptions};
use vmstream_migrate::destination::{incoming, local};
use vmstream_migrate::link::{Cancel, Connections, Cutter, Link};
use vmstream_migrate::proto::{Control, DeviceOffer, Digests, Features, Hello, RegionInfo, CONTROL};
use vmstream_migrate::stats::Stats;
use vmstream_migrate::synthetic::{CpuState, DeviceRegs, Fill, Synthetic};

const MEM: u64 = 2 << 20;
const PAGE: u64 = 4096;

#[derive(Arbitrary, Debug)]
enum Step {
    Hello { data_channels: u8, page_bits: u8, skip_device: bool, version: u8 },
    Info,
    RamBlocks { size_pages: u16 },
    Page { index: u16, byte: u8, zero: bool, epoch: u8 },
    Epoch(u8),
    Device { which: u8, ticks: u64, version: u8 },
    Complete { good: bool, rounds: u8 },
    Go,
    Failed,
    Json(String),
    Raw { kind: u16, optional: bool, body: Vec<u8> },
    End,
}

#[derive(Arbitrary, Debug)]
struct Plan {
    steps: Vec<Step>,
    one_way: bool,
    cut: Option<u16>,
    flip: Option<(u16, u8, bool)>,
}

/// The source's main channel as read, and what the destination answers.
struct Mem(Cursor<Vec<u8>>);

impl Read for Mem {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Mem {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Link for Mem {
    fn cutter(&self) -> Cutter {
        Cutter::new(|| {})
    }
}

fn control(w: &mut StreamWriter<Vec<u8>>, c: &Control) {
    let _ = w.write_raw_record(CONTROL, true, &c.encode());
}

fn devices() -> Vec<(String, String)> {
    vec![
        ("cpu0".into(), "synthetic-cpu".into()),
        ("dev0".into(), "synthetic-regs".into()),
    ]
}

fuzz_target!(|plan: Plan| {
    let header = Header::new(StreamKind::Live, Arch::X86_64, PAGE as u32);
    let Ok(mut w) = StreamWriter::new(Vec::new(), header, WriterOptions::default().with_index(false)) else {
        return;
    };
    let mut shadow = vec![0u8; MEM as usize];
    let mut sent: Vec<DeviceState> = Vec::new();
    // The destination acts on the first `complete`: memory then.
    let mut at_complete: Option<u32> = None;
    for step in plan.steps.iter().take(64) {
        match step {
            Step::Hello { data_channels, page_bits, skip_device, version } => {
                let mut devs: Vec<DeviceOffer> = devices()
                    .into_iter()
                    .map(|(name, type_name)| DeviceOffer { name, type_name, versions: vec![1 + u32::from(*version % 3)] })
                    .collect();
                if *skip_device {
                    devs.pop();
                }
                control(&mut w, &Control::Hello(Hello {
                    protocol: 1,
                    min_protocol: 1,
                    software: "fuzz".into(),
                    page_size: 1 << (10 + u32::from(*page_bits % 8)),
                    regions: vec![RegionInfo { id: 0, name: "ram0".into(), size: MEM }],
                    data_channels: u16::from(*data_channels % 2),
                    features: Features::default(),
                    devices: devs,
                }));
            }
            Step::Info => {
                let _ = w.write_info(&vmstream::Value::Unit);
            }
            Step::RamBlocks { size_pages } => {
                let size = if *size_pages % 4 == 0 { MEM } else { u64::from(*size_pages) * PAGE };
                let _ = w.write_ram_blocks(&[RamBlock { id: 0, name: "ram0".into(), size, page_size: PAGE as u32, flags: 0 }]);
            }
            Step::Page { index, byte, zero, epoch } => {
                let index = u64::from(*index % 600);
                let data = vec![*byte; PAGE as usize];
                let ok = if *zero {
                    w.write_zero_page(0, u32::from(*epoch), index).is_ok()
                } else {
                    w.write_page(0, u32::from(*epoch), index, &data).is_ok()
                };
                if ok && index < MEM / PAGE {
                    let at = (index * PAGE) as usize;
                    shadow[at..at + PAGE as usize].fill(if *zero { 0 } else { *byte });
                }
            }
            Step::Epoch(e) => {
                let _ = w.write_epoch(u32::from(*e));
            }
            Step::Device { which, ticks, version } => {
                let (name, type_name) = devices().swap_remove(usize::from(*which % 2));
                let value = if name == "cpu0" {
                    vmstream::to_value(&CpuState { rate: 0, counter: *ticks, seed: 1 })
                } else {
                    vmstream::to_value(&DeviceRegs { id: 0, regs: vec![1, 2], ticks: *ticks, fifo: vec![] })
                };
                let Ok(value) = value else { continue };
                let d = DeviceState { name, instance_id: 0, type_name, version: 1 + u32::from(*version % 3), value };
                if w.write_device(&d).is_ok() {
                    sent.push(d);
                }
            }
            Step::Complete { good, rounds } => {
                let mut digests = Digests { regions: Default::default(), devices: Default::default(), rounds: u32::from(*rounds) };
                if *good {
                    digests.regions.insert("ram0".into(), vmstream::crc32c(&shadow));
                    for d in &sent {
                        digests.devices.insert(d.name.clone(), vmstream::crc32c(d.value.to_json().to_string().as_bytes()));
                    }
                }
                control(&mut w, &Control::Complete(digests));
                at_complete.get_or_insert(vmstream::crc32c(&shadow));
            }
            Step::Go => control(&mut w, &Control::Go),
            Step::Failed => control(&mut w, &Control::Failed { reason: "x".into() }),
            Step::Json(s) => {
                let _ = w.write_raw_record(CONTROL, true, s.as_bytes());
            }
            Step::Raw { kind, optional, body } => {
                let _ = w.write_raw_record(vmstream::RecordKind(*kind), *optional, body);
            }
            Step::End => break,
        }
    }
    let Ok(mut bytes) = w.finish() else { return };
    if let Some((at, bit, fix)) = plan.flip {
        let at = usize::from(at);
        if at < bytes.len() {
            bytes[at] ^= 1 << (bit % 8);
            if fix {
                vmstream_fuzz::fix_crcs(&mut bytes);
            }
        }
    }
    if let Some(cut) = plan.cut {
        bytes.truncate(usize::from(cut));
    }

    let guest = Arc::new(Synthetic::new(MEM, Fill::Zero, 1, 1));
    let vm = guest.vm();
    let Ok(loc) = local(&vm, 0, &["zstd", "lz4"]) else { return };
    let conns = Connections { main: Box::new(Mem(Cursor::new(bytes))), data: vec![], one_way: plan.one_way };
    let result = incoming(&vm, conns, &loc, &Stats::new(), &Cancel::new());
    assert_eq!(result.is_ok(), !guest.is_paused(), "runs exactly when the migration succeeded: {result:?}");
    if result.is_ok() && plan.flip.is_none() {
        assert_eq!(Some(guest.checksum()), at_complete);
    }
});
