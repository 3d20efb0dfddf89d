//! Structured round trip: a plan built with `arbitrary` (header, writer options,
//! devices with arbitrary values and serde devices, RAM blocks, single pages,
//! zero pages and page batches, epoch barriers, extension records) is written
//! with `StreamWriter`, then read back with `SliceReader`, `StreamReader` and the
//! push `Decoder`. Everything written must come back exactly, in order.
//!
//! The plan may also ask for calls the writer must refuse (undefined or
//! redefined blocks, block names twice, bad block page sizes or flags, pages
//! beyond a block, falling page indexes, known or QEMU kinds as extension
//! records, schemas outside the grammar, a bad header); a model predicts those,
//! and a refused call must leave the stream as if it had not been made.

#![no_main]

use std::collections::HashMap;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use vmstream::record::{IndexEntry, RecordKind, SchemaRecord};
use vmstream::write::is_zero;
use vmstream::{
    Arch, Compression, DeviceState, ErrorKind, Header, RamBlock, Record, SliceReader, StreamKind,
    StreamWriter, Value, WriterOptions,
};
use vmstream_fuzz::{canon, digest, limits, read_push, read_slice, read_stream, Dribble};
use vmstream_testkit::{Link, Queue, Uart, VirtioNet};

/// Deepest value the plan builds (the reader allows 128).
const MAX_DEPTH: usize = 24;
/// Most pages one plan writes, to keep executions fast.
const MAX_PAGES: usize = 512;

#[derive(Arbitrary, Debug)]
enum AValue {
    Bool(bool),
    U8(u8),
    U16(u16),
    U32(u32),
    U64(u64),
    I8(i8),
    I16(i16),
    I32(i32),
    I64(i64),
    F32(u32),
    F64(u64),
    Bytes(Vec<u8>),
    String(String),
    Seq(Vec<AValue>),
    Struct(Vec<(String, AValue)>),
    None,
    Some(Box<AValue>),
    Enum(String, Box<AValue>),
    Unit,
    Map(Vec<(AValue, AValue)>),
}

impl AValue {
    fn to_value(&self, depth: usize) -> Value {
        if depth >= MAX_DEPTH {
            return Value::Unit;
        }
        let d = depth + 1;
        match self {
            AValue::Bool(v) => Value::Bool(*v),
            AValue::U8(v) => Value::U8(*v),
            AValue::U16(v) => Value::U16(*v),
            AValue::U32(v) => Value::U32(*v),
            AValue::U64(v) => Value::U64(*v),
            AValue::I8(v) => Value::I8(*v),
            AValue::I16(v) => Value::I16(*v),
            AValue::I32(v) => Value::I32(*v),
            AValue::I64(v) => Value::I64(*v),
            AValue::F32(b) => Value::F32(f32::from_bits(*b)),
            AValue::F64(b) => Value::F64(f64::from_bits(*b)),
            AValue::Bytes(b) => Value::Bytes(b.clone()),
            AValue::String(s) => Value::String(s.clone()),
            AValue::Seq(items) => Value::Seq(items.iter().map(|i| i.to_value(d)).collect()),
            AValue::Struct(fields) => {
                // Field names are unique within a struct: keep the first.
                let mut out: Vec<(String, Value)> = Vec::new();
                for (n, v) in fields {
                    if !out.iter().any(|(m, _)| m == n) {
                        out.push((n.clone(), v.to_value(d)));
                    }
                }
                Value::Struct(out)
            }
            AValue::None => Value::Option(None),
            AValue::Some(v) => Value::Option(Some(Box::new(v.to_value(d)))),
            AValue::Enum(n, v) => Value::Enum(n.clone(), Box::new(v.to_value(d))),
            AValue::Unit => Value::Unit,
            AValue::Map(entries) => Value::Map(
                entries
                    .iter()
                    .map(|(k, v)| (k.to_value(d), v.to_value(d)))
                    .collect(),
            ),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Comp {
    None,
    Zstd(i8),
    Lz4,
}

#[derive(Arbitrary, Debug)]
enum Fill {
    Zero,
    Byte(u8),
    Pattern(u64),
    /// Repeated to fill the page.
    Bytes(Vec<u8>),
    /// Zero but for one byte.
    Sparse(u16, u8),
}

impl Fill {
    fn page(&self, size: usize) -> Vec<u8> {
        let mut p = vec![0u8; size];
        match self {
            Fill::Zero => {}
            Fill::Byte(b) => p.fill(*b),
            Fill::Pattern(seed) => vmstream_testkit::fill_pattern(&mut p, *seed),
            Fill::Bytes(b) if b.is_empty() => {}
            Fill::Bytes(b) => {
                for (d, s) in p.iter_mut().zip(b.iter().cycle()) {
                    *d = *s;
                }
            }
            Fill::Sparse(at, b) => p[usize::from(*at) % size] = *b,
        }
        p
    }
}

#[derive(Arbitrary, Debug)]
struct BlockSpec {
    id: u8,
    name: String,
    pages: u8,
    /// 1 makes the size a non-multiple of the page size.
    odd: u8,
    host_page_size: u32,
    flags: u32,
}

/// Which block and page a page operation names: mostly a valid one, sometimes
/// a raw (possibly invalid) one.
#[derive(Arbitrary, Debug, Clone, Copy)]
struct Target {
    block: u8,
    index: u16,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Device {
        name: String,
        instance_id: u32,
        type_name: String,
        version: u32,
        value: AValue,
    },
    Uart {
        ier: u8,
        lcr: u8,
        mcr: u8,
        divisor: u16,
        rx_fifo: Vec<u8>,
    },
    Net {
        mac: [u8; 6],
        status: u8,
        down: Option<String>,
        queues: Vec<(u16, u64, u16, bool)>,
        mtu: Option<u16>,
        credit: i32,
    },
    Schema {
        type_name: String,
        version: u32,
        value: AValue,
        inferred: bool,
    },
    Blocks(Vec<BlockSpec>),
    Page {
        at: Target,
        epoch: u8,
        fill: Fill,
    },
    ZeroPage {
        at: Target,
        epoch: u8,
    },
    Pages {
        at: Target,
        epoch: u8,
        /// Gap to the previous index (0 repeats it, which the writer refuses), and the data.
        pages: Vec<(u8, Fill)>,
    },
    Epoch(u8),
    Raw {
        kind: u16,
        optional: bool,
        body: Vec<u8>,
    },
    Flush,
}

#[derive(Arbitrary, Debug)]
struct Plan {
    /// Page size 512 << (shift % 4); 0xff asks for an invalid page size.
    page_shift: u8,
    arch: u16,
    kind: u8,
    writer: String,
    compression: Comp,
    zero_pages: bool,
    index: bool,
    /// Batch size 1 + (n % 64); 0xff asks for 0 (refused).
    batch_pages: u8,
    /// Chunk size for the short-read stream reader and the push decoder.
    chunk: u16,
    info: Option<AValue>,
    ops: Vec<Op>,
}

/// What the reader must give back, in order.
#[derive(Debug)]
enum Expect {
    Info(Vec<u8>),
    Schema(String, u32, Vec<u8>),
    Device(String, u32, String, u32, Vec<u8>),
    Uart(String, Uart),
    Net(String, VirtioNet),
    Blocks(Vec<RamBlock>),
    /// block, epoch, index, data digest or `None` for a zero page.
    Page(u32, u32, u64, Option<String>),
    Epoch(u32),
    Other(u16, u16, String),
}

struct Model {
    page_size: usize,
    zero_pages: bool,
    /// Defined blocks: id -> pages, and their names.
    blocks: HashMap<u32, u64>,
    block_names: std::collections::HashSet<String>,
    order: Vec<u32>,
    barrier: Option<u32>,
    pages_written: usize,
    expect: Vec<Expect>,
    devices: u32,
}

impl Model {
    fn min_epoch(&self) -> u32 {
        self.barrier.map_or(0, |b| b + 1)
    }

    /// Resolves a target to (block, index) and whether the writer must accept it.
    fn resolve(&self, t: Target) -> (u32, u64, bool) {
        let (block, pages) = if t.block < 0xf0 && !self.order.is_empty() {
            let id = self.order[usize::from(t.block) % self.order.len()];
            (id, self.blocks[&id])
        } else {
            let id = u32::from(t.block.wrapping_sub(0xf0));
            (id, self.blocks.get(&id).copied().unwrap_or(0))
        };
        let raw = u64::from(t.index);
        let index = if raw & 0x8000 == 0 && pages > 0 {
            raw % pages
        } else {
            raw & 0x7fff
        };
        let valid = self.blocks.contains_key(&block) && index < pages;
        (block, index, valid)
    }

    fn page(&mut self, block: u32, epoch: u32, index: u64, data: Option<&[u8]>) {
        let stored = data.filter(|d| !(self.zero_pages && is_zero(d)));
        self.expect
            .push(Expect::Page(block, epoch, index, stored.map(digest)));
        self.pages_written += 1;
    }
}

fn expect_ok<T>(r: vmstream::Result<T>, what: &str) -> T {
    match r {
        Ok(t) => t,
        Err(e) => panic!("writer refused a valid {what}: {e}"),
    }
}

fn expect_refused<T>(r: vmstream::Result<T>, what: &str) {
    match r {
        Ok(_) => panic!("writer accepted an invalid {what}"),
        Err(e) => assert_eq!(e.kind(), ErrorKind::Usage, "{what}: {e}"),
    }
}

fn run(plan: &Plan) {
    let page_size: u32 = if plan.page_shift == 0xff {
        3000
    } else {
        512 << (plan.page_shift % 4)
    };
    let kind = StreamKind::from_code(plan.kind.max(1)).expect("nonzero stream kind");
    let mut header = Header::new(kind, Arch::from_code(plan.arch), page_size);
    header.writer = plan.writer.clone();
    let compression = match plan.compression {
        Comp::None => Compression::None,
        Comp::Zstd(l) => Compression::Zstd(i32::from(l) % 23),
        Comp::Lz4 => Compression::Lz4,
    };
    let batch_pages = if plan.batch_pages == 0xff {
        0
    } else {
        1 + u32::from(plan.batch_pages) % 64
    };
    let options = WriterOptions::default()
        .with_compression(compression)
        .with_zero_pages(plan.zero_pages)
        .with_index(plan.index)
        .with_batch_pages(batch_pages)
        // written for the readers below: batches split to fit their record size
        .with_limits(limits());
    let w = StreamWriter::new(Vec::new(), header.clone(), options);
    if page_size == 3000 || plan.writer.len() > 255 || batch_pages == 0 {
        assert!(w.is_err(), "writer accepted a bad header or options");
        return;
    }
    let mut w = expect_ok(w, "header");

    let mut m = Model {
        page_size: page_size as usize,
        zero_pages: plan.zero_pages,
        blocks: HashMap::new(),
        block_names: std::collections::HashSet::new(),
        order: Vec::new(),
        barrier: None,
        pages_written: 0,
        expect: Vec::new(),
        devices: 0,
    };
    // An unknown mandatory record the reader must refuse: where it sits.
    let mut mandatory_at: Option<usize> = None;

    if let Some(info) = &plan.info {
        let v = info.to_value(0);
        expect_ok(w.write_info(&v), "info");
        m.expect.push(Expect::Info(canon(&v)));
    }

    for op in &plan.ops {
        match op {
            Op::Device {
                name,
                instance_id,
                type_name,
                version,
                value,
            } => {
                let value = value.to_value(0);
                let c = canon(&value);
                let dev = DeviceState {
                    name: name.clone(),
                    instance_id: *instance_id,
                    type_name: type_name.clone(),
                    version: *version,
                    value,
                };
                expect_ok(w.write_device(&dev), "device");
                m.expect.push(Expect::Device(
                    name.clone(),
                    *instance_id,
                    type_name.clone(),
                    *version,
                    c,
                ));
            }
            Op::Uart {
                ier,
                lcr,
                mcr,
                divisor,
                rx_fifo,
            } => {
                let uart = Uart {
                    ier: *ier,
                    lcr: *lcr,
                    mcr: *mcr,
                    divisor: *divisor,
                    rx_fifo: rx_fifo.clone(),
                };
                let name = format!("serial{}", m.devices);
                m.devices += 1;
                expect_ok(
                    w.write_device_serde(&name, 0, "uart-16550", 1, &uart),
                    "serde device",
                );
                m.expect.push(Expect::Uart(name, uart));
            }
            Op::Net {
                mac,
                status,
                down,
                queues,
                mtu,
                credit,
            } => {
                let net = VirtioNet {
                    mac: *mac,
                    status: *status,
                    link: match down {
                        None => Link::Up,
                        Some(reason) => Link::Down {
                            reason: reason.clone(),
                        },
                    },
                    queues: queues
                        .iter()
                        .map(|&(size, desc_addr, last_avail, enabled)| Queue {
                            size,
                            desc_addr,
                            last_avail,
                            enabled,
                        })
                        .collect(),
                    mtu: *mtu,
                    credit: *credit,
                };
                let name = format!("net{}", m.devices);
                m.devices += 1;
                expect_ok(
                    w.write_device_serde(&name, 7, "virtio-net", 2, &net),
                    "serde device",
                );
                m.expect.push(Expect::Net(name, net));
            }
            Op::Schema {
                type_name,
                version,
                value,
                inferred,
            } => {
                let v = value.to_value(0);
                let schema = if *inferred {
                    vmstream::schema::of(&v)
                } else {
                    v
                };
                let c = canon(&schema);
                let rec = SchemaRecord {
                    type_name: type_name.clone(),
                    version: *version,
                    schema,
                };
                // An inferred description is one; an arbitrary value rarely
                // is, and the writer refuses it (docs/format.md §4.3).
                match w.write_schema(&rec) {
                    Ok(()) => m
                        .expect
                        .push(Expect::Schema(type_name.clone(), *version, c)),
                    Err(e) if !*inferred && e.kind() == ErrorKind::Usage => {}
                    Err(e) => panic!("writer refused a schema: {e}"),
                }
            }
            Op::Blocks(specs) => {
                let blocks: Vec<RamBlock> = specs
                    .iter()
                    .map(|s| RamBlock {
                        id: u32::from(s.id),
                        name: s.name.clone(),
                        size: u64::from(s.pages) * u64::from(page_size) + u64::from(s.odd == 1),
                        // Mostly valid (a power of two in 512..=1 GiB), and
                        // known flags: a refused list defines no blocks.
                        page_size: match s.host_page_size {
                            n if n & 0xf != 0 => 512 << ((n >> 4) % 22),
                            n => n >> 4,
                        },
                        flags: match s.flags {
                            f if f & 0x100 == 0 => f & RamBlock::KNOWN_FLAGS,
                            f => f,
                        },
                    })
                    .collect();
                let mut ids = std::collections::HashSet::new();
                let mut names = std::collections::HashSet::new();
                let valid = blocks.iter().all(|b| {
                    b.size % u64::from(page_size) == 0
                        && !m.blocks.contains_key(&b.id)
                        && ids.insert(b.id)
                        && !m.block_names.contains(&b.name)
                        && names.insert(b.name.clone())
                        && b.page_size.is_power_of_two()
                        && (512..=1 << 30).contains(&b.page_size)
                        && b.flags & !RamBlock::KNOWN_FLAGS == 0
                });
                let r = w.write_ram_blocks(&blocks);
                if valid {
                    expect_ok(r, "RAM block list");
                    for b in &blocks {
                        m.blocks.insert(b.id, b.size / u64::from(page_size));
                        m.block_names.insert(b.name.clone());
                        m.order.push(b.id);
                    }
                    m.expect.push(Expect::Blocks(blocks));
                } else {
                    expect_refused(r, "RAM block list");
                }
            }
            Op::Page { at, epoch, fill } => {
                if m.pages_written >= MAX_PAGES {
                    continue;
                }
                let (block, index, valid) = m.resolve(*at);
                let epoch = m.min_epoch() + u32::from(epoch % 4);
                let data = fill.page(m.page_size);
                let r = w.write_page(block, epoch, index, &data);
                if valid {
                    expect_ok(r, "page");
                    m.page(block, epoch, index, Some(&data));
                } else {
                    expect_refused(r, "page");
                }
            }
            Op::ZeroPage { at, epoch } => {
                if m.pages_written >= MAX_PAGES {
                    continue;
                }
                let (block, index, valid) = m.resolve(*at);
                let epoch = m.min_epoch() + u32::from(epoch % 4);
                let r = w.write_zero_page(block, epoch, index);
                if valid {
                    expect_ok(r, "zero page");
                    m.page(block, epoch, index, None);
                } else {
                    expect_refused(r, "zero page");
                }
            }
            Op::Pages { at, epoch, pages } => {
                if m.pages_written + pages.len() > MAX_PAGES {
                    continue;
                }
                let (block, first, mut valid) = m.resolve(*at);
                let epoch = m.min_epoch() + u32::from(epoch % 4);
                let pages_in_block = m.blocks.get(&block).copied().unwrap_or(0);
                let mut list: Vec<(u64, Vec<u8>)> = Vec::with_capacity(pages.len());
                let mut index = first;
                for (i, (gap, fill)) in pages.iter().enumerate() {
                    if i > 0 {
                        index += u64::from(*gap);
                        valid &= *gap > 0;
                    }
                    valid &= index < pages_in_block;
                    list.push((index, fill.page(m.page_size)));
                }
                let refs: Vec<(u64, &[u8])> = list.iter().map(|(i, d)| (*i, &d[..])).collect();
                let r = w.write_pages(block, epoch, &refs);
                if list.is_empty() {
                    expect_ok(r, "empty page batch");
                } else if valid {
                    expect_ok(r, "page batch");
                    for (i, d) in &list {
                        m.page(block, epoch, *i, Some(d));
                    }
                } else {
                    expect_refused(r, "page batch");
                }
            }
            Op::Epoch(e) => {
                let e = m.min_epoch() + u32::from(e % 4);
                expect_ok(w.write_epoch(e), "epoch barrier");
                m.barrier = Some(e);
                m.expect.push(Expect::Epoch(e));
            }
            Op::Raw {
                kind,
                optional,
                body,
            } => {
                let k = RecordKind(*kind);
                // Known kinds, and QEMU kinds in a stream without qemu-framing.
                let known = *kind == 0 || *kind <= 8 || *kind == 0xff || k.is_qemu();
                let r = w.write_raw_record(k, *optional, body);
                if known {
                    expect_refused(r, "extension record of a known kind");
                    continue;
                }
                expect_ok(r, "extension record");
                m.expect
                    .push(Expect::Other(*kind, u16::from(*optional), digest(body)));
                if !optional {
                    // Readers refuse it; nothing after it can be read.
                    mandatory_at = Some(m.expect.len() - 1);
                    break;
                }
            }
            Op::Flush => expect_ok(w.flush_pages(), "flush"),
        }
    }
    let bytes = expect_ok(w.finish(), "finish");

    // The readers agree with each other.
    let lim = limits();
    let chunk = usize::from(plan.chunk).max(1);
    let slice = read_slice(&bytes, lim);
    slice.assert_agrees(
        &read_stream(std::io::Cursor::new(&bytes[..]), lim),
        "StreamReader",
    );
    slice.assert_agrees(
        &read_stream(
            Dribble {
                data: &bytes,
                n: chunk,
            },
            lim,
        ),
        "StreamReader, short reads",
    );
    slice.assert_agrees(&read_push(&bytes, &[usize::MAX], lim), "Decoder, whole");
    slice.assert_agrees(&read_push(&bytes, &[chunk, 1, 8], lim), "Decoder, split");

    // And give back what was written.
    let mut r = match SliceReader::new(&bytes, lim) {
        Ok(r) => r,
        Err(e) => panic!("the written header does not read back: {e}"),
    };
    let h = r.state().header().clone();
    assert_eq!(h.page_size, page_size);
    assert_eq!(h.arch, header.arch);
    assert_eq!(h.kind, header.kind);
    assert_eq!(h.writer, header.writer);
    let req = match compression {
        Compression::None => 0,
        Compression::Zstd(_) => vmstream::header::FEATURE_ZSTD,
        _ => vmstream::header::FEATURE_LZ4,
    };
    assert_eq!(h.required_features, req);
    assert_eq!(
        h.optional_features,
        if plan.index {
            vmstream::header::FEATURE_INDEX
        } else {
            0
        }
    );

    // What was read: the logical items (devices kept whole, for serde).
    let mut got: Vec<(Expect, Option<DeviceState>)> = Vec::new();
    let mut offsets: Vec<(u64, RecordKind)> = Vec::new();
    let mut index: Option<(u64, Vec<IndexEntry>)> = None;
    let mut expected_index: Vec<IndexEntry> = Vec::new();
    let mut end = None;
    let mut failure = None;
    loop {
        let item = match r.next() {
            Ok(Some(item)) => item,
            Ok(None) => break,
            Err(e) => {
                failure = Some(e);
                break;
            }
        };
        offsets.push((item.offset, item.kind));
        let at = item.offset;
        match item.record {
            Record::Info(v) => got.push((Expect::Info(canon(&v)), None)),
            Record::Names { first, count } => expected_index.push(IndexEntry {
                kind: RecordKind::NAMES,
                offset: at,
                block: u32::MAX,
                first_page: first,
                last_page: count as u64,
                name: String::new(),
            }),
            Record::Schema(s) => got.push((
                Expect::Schema(s.type_name, s.version, canon(&s.schema)),
                None,
            )),
            Record::Device(d) => {
                expected_index.push(IndexEntry {
                    kind: RecordKind::DEVICE,
                    offset: at,
                    block: u32::MAX,
                    first_page: 0,
                    last_page: 0,
                    name: d.name.clone(),
                });
                let e = Expect::Device(
                    d.name.clone(),
                    d.instance_id,
                    d.type_name.clone(),
                    d.version,
                    canon(&d.value),
                );
                got.push((e, Some(d)));
            }
            Record::RamBlocks(b) => {
                expected_index.push(IndexEntry {
                    kind: RecordKind::RAM_BLOCKS,
                    offset: at,
                    block: u32::MAX,
                    first_page: 0,
                    last_page: 0,
                    name: String::new(),
                });
                got.push((Expect::Blocks(b), None))
            }
            Record::Pages(b) => {
                let pages: Vec<_> = b.pages().collect();
                if let (Some(f), Some(l)) = (pages.first(), pages.last()) {
                    expected_index.push(IndexEntry {
                        kind: RecordKind::PAGES,
                        offset: at,
                        block: b.block,
                        first_page: f.index,
                        last_page: l.index,
                        name: String::new(),
                    });
                }
                let want_comp = match compression {
                    Compression::None => 0,
                    Compression::Zstd(_) => 1,
                    _ => 2,
                };
                assert_eq!(b.compression, want_comp, "batch compression");
                for p in pages {
                    got.push((
                        Expect::Page(b.block, b.epoch, p.index, p.data.map(digest)),
                        None,
                    ));
                }
            }
            Record::Epoch(e) => got.push((Expect::Epoch(e), None)),
            Record::Index(entries) => index = Some((at, entries)),
            Record::End(e) => end = Some(e),
            Record::Other(raw) => {
                got.push((Expect::Other(raw.kind.0, raw.flags, digest(raw.body)), None))
            }
            other => panic!("unexpected record {other:?}"),
        }
    }

    // Everything written, in order.
    let got_len = got.len();
    for (i, ((g, dev), e)) in got.iter().zip(&m.expect).enumerate() {
        let same = match (g, e) {
            (Expect::Device(name, id, ty, ver, value), Expect::Uart(n, u)) => {
                let dev = dev.as_ref().expect("device kept");
                let back: Uart = match vmstream::from_device(dev) {
                    Ok(b) => b,
                    Err(e) => panic!("serde device does not deserialize: {e}"),
                };
                let v = expect_ok(vmstream::to_value(u), "serde value");
                (name, *id, ty.as_str(), *ver, value) == (n, 0, "uart-16550", 1, &canon(&v))
                    && back == *u
            }
            (Expect::Device(name, id, ty, ver, value), Expect::Net(n, net)) => {
                let dev = dev.as_ref().expect("device kept");
                let back: VirtioNet = match vmstream::from_device(dev) {
                    Ok(b) => b,
                    Err(e) => panic!("serde device does not deserialize: {e}"),
                };
                let v = expect_ok(vmstream::to_value(net), "serde value");
                (name, *id, ty.as_str(), *ver, value) == (n, 7, "virtio-net", 2, &canon(&v))
                    && back == *net
            }
            (Expect::Info(a), Expect::Info(b)) => a == b,
            (Expect::Schema(a1, a2, a3), Expect::Schema(b1, b2, b3)) => {
                (a1, a2, a3) == (b1, b2, b3)
            }
            (Expect::Device(a1, a2, a3, a4, a5), Expect::Device(b1, b2, b3, b4, b5)) => {
                (a1, a2, a3, a4, a5) == (b1, b2, b3, b4, b5)
            }
            (Expect::Blocks(a), Expect::Blocks(b)) => a == b,
            (Expect::Page(a1, a2, a3, a4), Expect::Page(b1, b2, b3, b4)) => {
                (a1, a2, a3, a4) == (b1, b2, b3, b4)
            }
            (Expect::Epoch(a), Expect::Epoch(b)) => a == b,
            (Expect::Other(a1, a2, a3), Expect::Other(b1, b2, b3)) => (a1, a2, a3) == (b1, b2, b3),
            _ => false,
        };
        assert!(same, "item {i}: read {g:?}, wrote {e:?}");
    }

    if let Some(at) = mandatory_at {
        // Read up to the unknown mandatory record, which is refused.
        let e = failure.expect("an unknown mandatory record is refused");
        assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
        assert_eq!(got_len, at, "records before the unknown mandatory record");
        return;
    }
    if let Some(e) = failure {
        panic!("a written stream does not read back: {e}");
    }
    assert_eq!(got_len, m.expect.len(), "records read vs written");
    assert!(r.trailing().is_empty(), "bytes after the end record");

    let end = end.expect("an end record");
    assert_eq!(end.records, offsets.len() as u64 - 1);
    match (plan.index, index) {
        (true, Some((at, entries))) => {
            assert_eq!(end.index_offset, Some(at));
            assert_eq!(entries, expected_index, "index entries");
            for e in &entries {
                assert!(
                    offsets.contains(&(e.offset, e.kind)),
                    "index entry {e:?} points at no such record"
                );
            }
        }
        (false, None) => assert_eq!(end.index_offset, None),
        (on, got) => panic!("index option {on}, index record {got:?}"),
    }
}

fuzz_target!(|plan: Plan| run(&plan));
