//! The worked example: a device type that evolves over three versions, and
//! snapshots saved by each version loaded by every version.
//!
//! ```text
//! uart v1: ctrl: u16 (mode in the low byte, irq_mask in the high), rbr, lsr
//! uart v2: ctrl split into mode: u8 and irq_mask: u8; fifo_depth: u8 added (default 1)
//! uart v3: timer added, a subsection (Option<Timer>), absent unless armed
//! ```
//!
//! The steps are declared once in Rust (the registration API a VMM calls at
//! start) and once in a rules file (`tests/uart.toml`); both give the same
//! registry. Older versions read newer snapshots as long as the newer state
//! is representable: fifo_depth at its default, no timer armed; anything
//! else is an error naming device, field and both versions.

#![allow(clippy::unwrap_used)] // test helpers

use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use vmstream::{Header, Record, StreamReader, StreamWriter, Value, WriterOptions};
use vmstream_compat::stream::{transform_vmstream, Targets};
use vmstream_compat::transform::{DevicePart, DeviceSplit, Part};
use vmstream_compat::{rules, Op, Registry, Scalar, Schema, Step, StructTy};

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
struct UartV1 {
    ctrl: u16,
    rbr: u8,
    lsr: u8,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
struct UartV2 {
    mode: u8,
    irq_mask: u8,
    rbr: u8,
    lsr: u8,
    fifo_depth: u8,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
struct Timer {
    period: u32,
    armed: bool,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
struct UartV3 {
    mode: u8,
    irq_mask: u8,
    rbr: u8,
    lsr: u8,
    fifo_depth: u8,
    timer: Option<Timer>,
}

/// The registration a VMM does at start.
fn registry() -> Registry {
    let mut reg = Registry::new();
    reg.step(
        "uart",
        Step::invertible(
            1,
            2,
            vec![
                Op::Split {
                    field: "ctrl".into(),
                    ty: Scalar::U16,
                    into: vec![
                        Part {
                            field: "mode".into(),
                            ty: Scalar::U8,
                            bits: 8,
                        },
                        Part {
                            field: "irq_mask".into(),
                            ty: Scalar::U8,
                            bits: 8,
                        },
                    ],
                },
                Op::Add {
                    field: "fifo_depth".into(),
                    ty: Scalar::U8,
                    default: Value::U8(1),
                    after: Some("lsr".into()),
                },
            ],
        )
        .unwrap(),
    )
    .unwrap()
    .step(
        "uart",
        Step::invertible(
            2,
            3,
            vec![Op::AddSubsection {
                field: "timer".into(),
            }],
        )
        .unwrap(),
    )
    .unwrap();
    reg
}

/// One snapshot of `value` as `uart` version `version`, with its schema record.
fn snapshot<T: Serialize>(version: u32, value: &T) -> Vec<u8> {
    let header = Header::new(vmstream::StreamKind::Snapshot, vmstream::Arch::X86_64, 4096);
    let mut w = StreamWriter::new(Vec::new(), header, WriterOptions::default()).unwrap();
    w.write_schema(
        &StructTy::of("uart", version, value)
            .unwrap()
            .to_record("uart"),
    )
    .unwrap();
    w.write_device_serde("serial0", 0, "uart", version, value)
        .unwrap();
    w.finish().unwrap()
}

fn read_device(stream: &[u8]) -> vmstream::DeviceState {
    let mut r = StreamReader::new(stream, vmstream::Limits::default()).unwrap();
    while let Some(item) = r.next().unwrap() {
        if let Record::Device(d) = item.record {
            return d;
        }
    }
    panic!("no device");
}

fn load(reg: &Registry, stream: &[u8], to: u32) -> vmstream::Result<vmstream::DeviceState> {
    let targets = Targets(vec![("uart".into(), to)]);
    let (out, _) = transform_vmstream(
        stream,
        Vec::new(),
        reg,
        &targets,
        vmstream::Limits::default(),
    )?;
    let d = read_device(&out);
    assert_eq!(d.version, to);
    Ok(d)
}

fn v1() -> UartV1 {
    UartV1 {
        ctrl: 0xa503,
        rbr: 0x41,
        lsr: 0x60,
    }
}
fn v2() -> UartV2 {
    UartV2 {
        mode: 0x03,
        irq_mask: 0xa5,
        rbr: 0x41,
        lsr: 0x60,
        fifo_depth: 1,
    }
}
fn v3() -> UartV3 {
    UartV3 {
        mode: 0x03,
        irq_mask: 0xa5,
        rbr: 0x41,
        lsr: 0x60,
        fifo_depth: 1,
        timer: None,
    }
}

#[test]
fn every_version_reads_every_other() {
    let code = registry();
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/uart.toml")).unwrap();
    let file = rules::parse(&text, "uart.toml").unwrap();
    assert_eq!(
        code, file,
        "the rules file says what the Rust registration says"
    );
    let snaps = [snapshot(1, &v1()), snapshot(2, &v2()), snapshot(3, &v3())];
    for reg in [&code, &file] {
        for (i, s) in snaps.iter().enumerate() {
            let from = i as u32 + 1;
            // what each version loads fits that version's schema
            let schemas = [
                StructTy::of("uart", 1, &v1()).unwrap(),
                StructTy::of("uart", 2, &v2()).unwrap(),
                StructTy::of("uart", 3, &v3()).unwrap(),
            ];
            for (k, st) in schemas.iter().enumerate() {
                st.check(&load(reg, s, k as u32 + 1).unwrap().value)
                    .unwrap();
            }
            let d1: UartV1 = vmstream::from_device(&load(reg, s, 1).unwrap()).unwrap();
            assert_eq!(d1, v1(), "v{from} -> v1");
            let d2: UartV2 = vmstream::from_device(&load(reg, s, 2).unwrap()).unwrap();
            assert_eq!(d2, v2(), "v{from} -> v2");
            let d3: UartV3 = vmstream::from_device(&load(reg, s, 3).unwrap()).unwrap();
            assert_eq!(d3, v3(), "v{from} -> v3");
        }
    }
    // the schema records: each snapshot says its version's layout
    let s = Schema::from_vmstream(&snaps[2][..], vmstream::Limits::default()).unwrap();
    let uart = s.device("uart").unwrap();
    assert_eq!(uart.ty.version, 3);
    assert_eq!(
        uart.ty
            .fields
            .iter()
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>(),
        ["mode", "irq_mask", "rbr", "lsr", "fifo_depth", "timer"]
    );
}

#[test]
fn what_an_older_version_cannot_hold_is_an_error() {
    let reg = registry();
    let armed = UartV3 {
        timer: Some(Timer {
            period: 1000,
            armed: true,
        }),
        ..v3()
    };
    let e = load(&reg, &snapshot(3, &armed), 1).unwrap_err();
    assert!(
        e.message().contains(
            "device \"serial0\", field \"timer\", version 3 -> 2: the subsection is present"
        ),
        "{e}"
    );
    let deep = UartV2 {
        fifo_depth: 16,
        ..v2()
    };
    let e = load(&reg, &snapshot(2, &deep), 1).unwrap_err();
    assert!(
        e.message()
            .contains("device \"serial0\", field \"fifo_depth\", version 2 -> 1"),
        "{e}"
    );
    assert!(e.message().contains("not its default"), "{e}");
    // and a version no step reaches
    let e = load(&reg, &snapshot(1, &v1()), 4).unwrap_err();
    assert!(
        e.message().contains("no transform from version 3 toward 4"),
        "{e}"
    );
}

#[test]
fn one_device_becomes_two_and_two_become_one() {
    let mut reg = registry();
    let split = DeviceSplit {
        ty: "uart".into(),
        version: 3,
        parts: vec![
            DevicePart {
                ty: "uart-core".into(),
                version: 1,
                suffix: String::new(),
                fields: vec![
                    "mode".into(),
                    "irq_mask".into(),
                    "rbr".into(),
                    "lsr".into(),
                    "fifo_depth".into(),
                ],
            },
            DevicePart {
                ty: "uart-timer".into(),
                version: 1,
                suffix: "/timer".into(),
                fields: vec!["timer".into()],
            },
        ],
    };
    let merge = split.inverse();
    reg.split(split);
    let targets = Targets(vec![("uart".into(), 3)]);
    let (out, notes) = transform_vmstream(
        &snapshot(1, &v1())[..],
        Vec::new(),
        &reg,
        &targets,
        Default::default(),
    )
    .unwrap();
    assert_eq!(notes.len(), 3, "{notes:?}");
    let mut r = StreamReader::new(&out[..], Default::default()).unwrap();
    let mut names = Vec::new();
    while let Some(item) = r.next().unwrap() {
        if let Record::Device(d) = item.record {
            names.push((d.name, d.type_name));
        }
    }
    assert_eq!(
        names,
        [
            ("serial0".to_string(), "uart-core".to_string()),
            ("serial0/timer".into(), "uart-timer".into())
        ]
    );
    // and back: the two merge into one uart v3 again
    let mut back = Registry::new();
    back.merge(merge);
    let (joined, _) = transform_vmstream(
        &out[..],
        Vec::new(),
        &back,
        &Targets::default(),
        Default::default(),
    )
    .unwrap();
    let d = read_device(&joined);
    assert_eq!(
        (d.name.as_str(), d.type_name.as_str(), d.version),
        ("serial0", "uart", 3)
    );
    assert_eq!(vmstream::from_device::<UartV3>(&d).unwrap(), v3());
}

proptest! {
    /// v1 -> v3 in one chain equals v1 -> v2 -> v3 in two, and down after up
    /// is the identity (every v1 value is representable in v3).
    #[test]
    fn chains_compose_and_round_trip(ctrl: u16, rbr: u8, lsr: u8) {
        let reg = registry();
        let start = vmstream::to_value(&UartV1 { ctrl, rbr, lsr }).unwrap();
        let mut direct = start.clone();
        reg.transform("serial0", "uart", 1, 3, &mut direct).unwrap();
        let mut stepped = start.clone();
        reg.transform("serial0", "uart", 1, 2, &mut stepped).unwrap();
        reg.transform("serial0", "uart", 2, 3, &mut stepped).unwrap();
        prop_assert_eq!(&direct, &stepped);
        let mut back = direct.clone();
        reg.transform("serial0", "uart", 3, 1, &mut back).unwrap();
        prop_assert_eq!(back, start);
    }

    /// Lossless ops: width up and back, split and merge, rename, nest.
    #[test]
    fn lossless_ops_round_trip(a: u8, b: u32, c: u16) {
        let ops = vec![
            Op::Width { field: "a".into(), from: Scalar::U8, to: Scalar::U64 },
            Op::Rename { field: "b".into(), to: "bb".into() },
            Op::Split { field: "c".into(), ty: Scalar::U16, into: vec![
                Part { field: "c_lo".into(), ty: Scalar::U8, bits: 4 },
                Part { field: "c_hi".into(), ty: Scalar::U16, bits: 12 },
            ] },
            Op::Nest { fields: vec!["a".into(), "bb".into()], into: "n".into() },
        ];
        let mut reg = Registry::new();
        reg.step("t", Step::invertible(4, 5, ops).unwrap()).unwrap();
        let start = Value::Struct(vec![("a".into(), Value::U8(a)), ("b".into(), Value::U32(b)), ("c".into(), Value::U16(c))]);
        let mut v = start.clone();
        reg.transform("d", "t", 4, 5, &mut v).unwrap();
        reg.transform("d", "t", 5, 4, &mut v).unwrap();
        prop_assert_eq!(v, start);
    }
}
