//! Hostile vmstream input on its way back to QEMU, structure-aware: a plan
//! built with `arbitrary` makes a vmstream stream in the layout of a converted
//! QEMU stream (docs/qemu-mapping.md) — the QEMU records 0x0100..0x01ff
//! (stream, sections, section ends, RAM records of every flag, commands,
//! forget, EOF, vmdesc, and raw bodies of any QEMU kind), `ram-blocks` records
//! (repeated or out-of-order ids, sizes in part pages or near 2^64), `pages`
//! batches, device records and epochs — with valid CRCs throughout, so every
//! input gets past the framing into the conversion. Then it converts the
//! stream back to QEMU and to vmstream, with and without compaction.
//!
//! Checks: no panic (overflow included: the targets build with debug
//! assertions); every error says where (an offset); the heap stays within
//! `Limits::max_alloc` plus a small multiple of the input; and a compacted
//! stream written as vmstream converts back to exactly the QEMU stream that
//! compaction wrote directly.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use vmstream::Limits;
use vmstream_fuzz::{limits, peak_alloc};
use vmstream_qemu::{vmstream_to_qemu, vmstream_to_vmstream, ConvertOptions};
use vmstream_testkit::qemu::{kinds, QemuFramed};

/// Most page entries one batch gets, to keep executions fast.
const MAX_BATCH: usize = 64;

/// A sound converted stream (the skeleton: stream record, a RAM section-start
/// with the block list, RAM rounds in section-parts and the section-end,
/// device sections, EOF, vmdesc) with hostile records spliced in anywhere.
#[derive(Arbitrary, Debug)]
struct Plan {
    /// Page size `1 << (10 + n % 7)` (1 KiB to 64 KiB); 0xff and 0xfe ask for
    /// sizes QEMU cannot have (512 bytes, 2 MiB).
    page: u8,
    /// QEMU stream version (3 unless the plan says otherwise).
    version: Option<u32>,
    configuration: Option<Vec<u8>>,
    blocks: Vec<BlockDef>,
    /// RAM rounds: the first in the section-start, the last in the section-end.
    rounds: Vec<Vec<RamOp>>,
    devices: Vec<(Name, u32, Vec<u8>)>,
    vmdesc: bool,
    /// Records spliced into the skeleton: (position, record).
    extra: Vec<(u8, Op)>,
    /// How the stream ends.
    end: End,
    /// Page state for compaction: `max_alloc` of 1 KiB << (n % 16).
    alloc_shift: u8,
}

/// What a RAM round of the skeleton sends.
#[derive(Arbitrary, Debug, Clone)]
enum RamOp {
    Pages {
        block: u8,
        first: u16,
        entries: Vec<(u8, Option<u8>)>,
    },
    Record {
        index: u16,
        flags: RamFlags,
        /// The name of block n, or none.
        block: Option<u8>,
        payload: Payload,
    },
    Forget,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum End {
    /// The right `end` record.
    Proper,
    /// An `end` record with another count.
    Count(u8),
    /// None at all.
    Missing,
}

#[derive(Arbitrary, Debug, Clone)]
enum Name {
    /// `b<n>`: names that repeat between blocks and RAM records.
    Short(u8),
    /// Any name (possibly longer than QEMU's 255 bytes).
    Long(u16, u8),
    Any(String),
}

impl Name {
    fn text(&self) -> String {
        match self {
            Name::Short(n) => format!("b{}", n % 8),
            Name::Long(len, c) => char::from(b'a' + c % 26)
                .to_string()
                .repeat(usize::from(*len) % 600),
            Name::Any(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug, Clone)]
enum Size {
    /// This many pages.
    Pages(u8),
    /// Pages, plus some bytes (not a whole number of pages).
    Ragged(u8, u16),
    /// Near 2^64: `u64::MAX` rounded down to pages, less this many pages.
    Huge(u16),
    Any(u64),
}

impl Size {
    fn bytes(&self, ps: u64) -> u64 {
        match self {
            Size::Pages(n) => u64::from(*n) * ps,
            Size::Ragged(n, extra) => u64::from(*n) * ps + u64::from(*extra),
            Size::Huge(less) => (u64::MAX & !(ps - 1)) - u64::from(*less) * ps,
            Size::Any(v) => *v,
        }
    }
}

#[derive(Arbitrary, Debug, Clone)]
struct BlockDef {
    /// `None`: the next id in order (what a sound stream has).
    id: Option<u32>,
    name: Name,
    size: Size,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum RamFlags {
    Zero,
    Page,
    Xbzrle,
    ContinueXbzrle,
    Compress,
    MultifdFlush,
    MemSize,
    Eos,
    Any(u16),
}

impl RamFlags {
    fn bits(self, ps: u64) -> u64 {
        match self {
            RamFlags::Zero => 0x002,
            RamFlags::Page => 0x008,
            RamFlags::Xbzrle => 0x040,
            RamFlags::ContinueXbzrle => 0x060,
            RamFlags::Compress => 0x100,
            RamFlags::MultifdFlush => 0x200,
            RamFlags::MemSize => 0x004,
            RamFlags::Eos => 0x010,
            RamFlags::Any(b) => u64::from(b) & (ps - 1),
        }
    }
}

#[derive(Arbitrary, Debug, Clone)]
enum Payload {
    /// A zero-fill record's fill byte.
    Fill(u8),
    /// An XBZRLE delta: (unchanged run, new bytes) pairs, with its 3-byte header.
    Xbzrle(Vec<(u16, Vec<u8>)>),
    Any(Vec<u8>),
}

impl Payload {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Payload::Fill(b) => vec![*b],
            Payload::Xbzrle(runs) => {
                let mut d = Vec::new();
                for (skip, new) in runs {
                    uleb(&mut d, u64::from(*skip));
                    uleb(&mut d, new.len() as u64);
                    d.extend_from_slice(new);
                }
                let mut p = vec![1];
                p.extend_from_slice(&(d.len() as u16).to_be_bytes());
                p.extend_from_slice(&d);
                p
            }
            Payload::Any(b) => b.clone(),
        }
    }
}

fn uleb(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[derive(Arbitrary, Debug, Clone)]
enum Op {
    /// `qemu-stream` again (a sound stream has it first, once).
    Stream,
    /// `qemu-section`: 1 START, 2 PART, 3 END, 4 FULL (others are refused).
    Section {
        kind: u8,
        id: u8,
        ram: bool,
        instance: u32,
        version: u32,
    },
    SectionEnd(bool),
    /// A standard `ram-blocks` record.
    Blocks(Vec<BlockDef>),
    /// QEMU's block list record for every block defined so far.
    MemSize,
    /// A page batch: gaps between rising indexes (0 repeats one), data fill or zero.
    Pages {
        block: u8,
        epoch: u8,
        first: u16,
        entries: Vec<(u8, Option<u8>)>,
    },
    /// A `qemu-ram-record`: page index, flags, block name or none, payload.
    RamRecord {
        index: u32,
        flags: RamFlags,
        name: Option<Name>,
        payload: Payload,
    },
    /// A FULL section's device state, kept as bytes.
    Device {
        name: Name,
        instance: u32,
        version: u32,
        body: Vec<u8>,
    },
    /// A device record with any body.
    DeviceRaw(Vec<u8>),
    Command(u16, Vec<u8>),
    Forget,
    Eof,
    /// `qemu-vmdesc`: a tiny description, or any text.
    Vmdesc {
        in_stream: bool,
        json: Option<String>,
    },
    /// Any body for a kind of the QEMU range.
    Raw(u8, Vec<u8>),
    Epoch(u32),
}

/// The records of the plan in order: the sound skeleton, with the extra
/// records spliced in.
fn skeleton(plan: &Plan) -> Vec<Op> {
    let mut steps = vec![
        Op::Stream,
        Op::Section {
            kind: 0,
            id: 2,
            ram: true,
            instance: 0,
            version: 4,
        },
        Op::Blocks(plan.blocks.iter().take(8).cloned().collect()),
        Op::MemSize,
    ];
    let names: Vec<Name> = plan.blocks.iter().map(|b| b.name.clone()).collect();
    let rounds = plan.rounds.len().clamp(1, 6);
    for r in 0..rounds {
        if r > 0 {
            // a section-part, or the section-end for the last round
            let kind = if r + 1 == rounds { 2 } else { 1 };
            steps.push(Op::Section {
                kind,
                id: 2,
                ram: true,
                instance: 0,
                version: 4,
            });
        }
        for op in plan.rounds.get(r).into_iter().flatten().take(16) {
            steps.push(match op {
                RamOp::Pages {
                    block,
                    first,
                    entries,
                } => Op::Pages {
                    block: *block,
                    epoch: r as u8,
                    first: *first,
                    entries: entries.clone(),
                },
                RamOp::Record {
                    index,
                    flags,
                    block,
                    payload,
                } => Op::RamRecord {
                    index: u32::from(*index),
                    flags: *flags,
                    name: block
                        .and_then(|b| names.get(usize::from(b) % names.len().max(1)).cloned()),
                    payload: payload.clone(),
                },
                RamOp::Forget => Op::Forget,
            });
        }
        steps.push(Op::SectionEnd(false));
    }
    if rounds == 1 {
        steps.push(Op::Section {
            kind: 2,
            id: 2,
            ram: true,
            instance: 0,
            version: 4,
        });
        steps.push(Op::SectionEnd(false));
    }
    for (i, (name, version, body)) in plan.devices.iter().take(4).enumerate() {
        steps.push(Op::Section {
            kind: 3,
            id: 3 + i as u8,
            ram: false,
            instance: 0,
            version: *version,
        });
        steps.push(Op::Device {
            name: name.clone(),
            instance: 0,
            version: *version,
            body: body.clone(),
        });
        steps.push(Op::SectionEnd(true));
    }
    steps.push(Op::Eof);
    if plan.vmdesc {
        steps.push(Op::Vmdesc {
            in_stream: true,
            json: None,
        });
    }
    for (at, op) in plan.extra.iter().take(16) {
        let at = usize::from(*at) % (steps.len() + 1);
        steps.insert(at, op.clone());
    }
    steps
}

fn build(plan: &Plan) -> (Vec<u8>, u64) {
    let ps: u64 = match plan.page {
        0xff => 512,
        0xfe => 2 << 20,
        n => 1 << (10 + u32::from(n % 7)),
    };
    let steps = skeleton(plan);
    let mut s = QemuFramed::new(ps as u32);
    // Page data the built stream may hold in all (it is one allocation).
    let mut data_budget: u64 = 24 << 20;
    // names and count of the blocks defined so far, for MEM_SIZE and ids
    let mut blocks: Vec<(String, u64)> = Vec::new();
    for op in &steps {
        match op {
            Op::Stream => {
                s.stream(plan.version.unwrap_or(3), plan.configuration.as_deref());
            }
            Op::Section {
                kind,
                id,
                ram,
                instance,
                version,
            } => {
                let k = 1 + kind % 5; // 5 is not a section type
                let idstr = if *ram { "ram" } else { "dev" };
                let header = matches!(k, 1 | 4).then_some((idstr, *instance, *version));
                s.section(k, u32::from(*id % 8), header);
            }
            Op::SectionEnd(footer) => {
                s.section_end(*footer);
            }
            Op::Blocks(defs) => {
                let mut list = Vec::new();
                for d in defs.iter().take(32) {
                    let id = d.id.unwrap_or(blocks.len() as u32);
                    let (name, size) = (d.name.text(), d.size.bytes(ps));
                    blocks.push((name.clone(), size));
                    list.push((id, name, size));
                }
                let list: Vec<(u32, &str, u64)> =
                    list.iter().map(|(i, n, z)| (*i, n.as_str(), *z)).collect();
                s.ram_blocks(&list);
            }
            Op::MemSize => {
                let list: Vec<(&str, u64)> = blocks.iter().map(|(n, z)| (n.as_str(), *z)).collect();
                s.mem_size(&list);
            }
            Op::Pages {
                block,
                epoch,
                first,
                entries,
            } => {
                let mut index = u64::from(*first);
                let mut list = Vec::new();
                for (i, &(gap, mut fill)) in entries.iter().take(MAX_BATCH).enumerate() {
                    if i > 0 {
                        index += u64::from(gap);
                    }
                    // The input itself stays within the malloc limit: past
                    // the budget, data pages become zero pages.
                    if fill.is_some() {
                        if data_budget < ps {
                            fill = None;
                        } else {
                            data_budget -= ps;
                        }
                    }
                    list.push((index, fill));
                }
                if list.is_empty() {
                    list.push((index, None));
                }
                s.pages(
                    u32::from(*block % 8),
                    u32::from(*epoch % 4),
                    ps as usize,
                    &list,
                );
            }
            Op::RamRecord {
                index,
                flags,
                name,
                payload,
            } => {
                let header = u64::from(*index) * ps | flags.bits(ps);
                let name = name.as_ref().map(Name::text);
                s.ram_record(header, name.as_deref().map(str::as_bytes), &payload.bytes());
            }
            Op::Device {
                name,
                instance,
                version,
                body,
            } => {
                let n = name.text();
                s.device_bytes(&n, *instance, &n, *version, body);
            }
            Op::DeviceRaw(body) => {
                s.record(4, 0, body);
            }
            Op::Command(cmd, payload) => {
                s.command(*cmd % 16, payload);
            }
            Op::Forget => {
                s.forget();
            }
            Op::Eof => {
                s.eof();
            }
            Op::Vmdesc { in_stream, json } => {
                let text = json
                    .clone()
                    .unwrap_or_else(|| format!(r#"{{"page_size": {ps}, "devices": []}}"#));
                s.vmdesc(*in_stream, text.as_bytes());
            }
            Op::Raw(kind, body) => {
                s.qemu(kinds::STREAM + u16::from(*kind), body);
            }
            Op::Epoch(e) => {
                s.record(7, 0, &e.to_le_bytes());
            }
        }
    }
    let bytes = match plan.end {
        End::Proper => s.finish(),
        End::Count(n) => {
            let mut b = s.unfinished();
            b.extend_from_slice(&vmstream_testkit::end_record(
                s.records() ^ u64::from(n | 1),
            ));
            b
        }
        End::Missing => s.unfinished(),
    };
    (bytes, ps)
}

fn check(e: &vmstream::Error, what: &str) {
    assert!(
        e.location().offset.is_some(),
        "{what}: error without an offset: {e}"
    );
}

fuzz_target!(|plan: Plan| {
    let (bytes, _) = build(&plan);
    let max_alloc = 1u64 << (10 + plan.alloc_shift % 16);
    let lim: Limits = limits().with_max_alloc(max_alloc);
    for compact in [false, true] {
        let opts = ConvertOptions {
            limits: lim,
            compact,
            ..ConvertOptions::default()
        };
        let (qemu, peak) = peak_alloc(|| vmstream_to_qemu(&bytes[..], Vec::new(), &opts));
        // reading holds one record (at most 1 MiB here), the page state is
        // charged to max_alloc, and the output is no larger than the input
        // plus a header per page
        let bound = 4 * bytes.len() + 2 * max_alloc as usize + (8 << 20);
        assert!(
            peak <= bound,
            "compact {compact}: {peak} bytes at peak, bound {bound}"
        );
        let qemu = match qemu {
            Ok(q) => q,
            Err(e) => {
                check(&e, "to QEMU");
                continue;
            }
        };
        if !compact {
            continue;
        }
        match vmstream_to_vmstream(&bytes[..], Vec::new(), &opts) {
            Ok(vms) => {
                let plain = ConvertOptions {
                    limits: lim,
                    ..ConvertOptions::default()
                };
                let back = vmstream_to_qemu(&vms[..], Vec::new(), &plain)
                    .unwrap_or_else(|e| panic!("compacted vmstream does not convert back: {e}"));
                assert!(
                    back == qemu,
                    "compacted vmstream converts to other QEMU bytes"
                );
            }
            Err(e) => check(&e, "to vmstream"),
        }
    }
});
