//! Hostile vmdesc JSON, structure-aware: a plan built with `arbitrary` makes a
//! description tree (devices; fields with name, size, array_len, type, nested
//! `struct` or inline contents; subsections; keys in any order, unknown keys,
//! repeated keys) and the section bytes, wraps them in a minimal QEMU stream
//! (header, optional configuration, FULL sections with or without footers,
//! EOF, trailer), and reads it as a file does (trailer read ahead), as a pipe
//! does (any split, trailer found at the end), and with a twin's description.
//!
//! Checks: no panic; every error says where; the same outcome however the
//! input is split; what is accepted is rewritten byte for byte, directly and
//! through vmstream; and the heap stays within what the `Limits` allow plus a
//! small multiple of the input (counted by the global allocator), whatever
//! the description declares.
#![no_main]

use std::io::Read;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value as Json};
use vmstream::{Error, ErrorKind, Limits};
use vmstream_fuzz::{limits, peak_alloc};
use vmstream_qemu::{qemu_to_qemu, qemu_to_vmstream, vmstream_to_qemu, ConvertOptions};

/// Deepest description the plan builds before it stops nesting (unless it
/// asks for a deep chain).
const MAX_NEST: usize = 6;
/// Most body bytes generated from a description.
const MAX_BODY: usize = 64 << 10;

#[derive(Arbitrary, Debug)]
struct Plan {
    /// Target page bits in a configuration section (none: no configuration).
    page_bits: Option<u8>,
    devices: Vec<Device>,
    /// How the description reaches the reader.
    source: Source,
    /// Chunk size of the pipe read.
    split: u8,
    /// Small limits instead of the fuzzing defaults.
    tight: bool,
    /// A chain of nested structs this deep around the first field.
    deep: u8,
    /// Bytes of the JSON text to overwrite: (position, byte).
    tweaks: Vec<(u16, u8)>,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Source {
    /// The trailer, found at the end of the stream.
    InStream,
    /// The trailer, also read ahead as from a seekable file.
    ReadAhead,
    /// No trailer; the description comes from a twin stream.
    Twin,
}

#[derive(Arbitrary, Debug)]
struct Device {
    name: Name,
    instance_id: u8,
    version: u8,
    /// A legacy handler of this size instead of a vmsd.
    legacy: Option<u16>,
    obj: Obj,
    /// The section body: generated from the description, or these bytes.
    body: Body,
    footer: bool,
    /// Describe the section under another name (a mismatch).
    misnamed: bool,
    order: u8,
}

#[derive(Arbitrary, Debug)]
enum Body {
    Described,
    DescribedThen(Vec<u8>),
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Obj {
    vmsd_name: Name,
    version: u8,
    fields: Vec<Field>,
    subsections: Vec<Obj>,
    order: u8,
}

#[derive(Arbitrary, Debug)]
struct Field {
    name: Name,
    ty: Type,
    size: Size,
    count: Option<Count>,
    /// Contents: for `struct` under the `struct` key, otherwise inline.
    nested: Option<Box<Obj>>,
    /// An unknown key, a repeated key, or a key of the wrong type.
    oddity: Option<Oddity>,
    order: u8,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Name {
    A,
    B,
    Indexed(u8),
    Long(u16),
    Empty,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Type {
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int32,
    Int64,
    Bool,
    Buffer,
    Struct,
    Qtailq,
    Nullptr,
    Vstruct,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Size {
    /// What the type or contents take.
    Natural,
    Zero,
    Small(u8),
    Huge(u64),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Count {
    Small(u8),
    PowerOfTwo(u8),
    Max,
    Any(u64),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Oddity {
    Unknown,
    RepeatedType,
    StringSize,
    NegativeArrayLen,
    Index(u8),
}

impl Name {
    fn text(self) -> String {
        match self {
            Name::A => "a".into(),
            Name::B => "b".into(),
            Name::Indexed(i) => format!("f{}", i % 8),
            Name::Long(n) => "n".repeat(usize::from(n % 300) + 1),
            Name::Empty => String::new(),
        }
    }
}

impl Type {
    fn text(self) -> &'static str {
        match self {
            Type::Uint8 => "uint8",
            Type::Uint16 => "uint16",
            Type::Uint32 => "uint32",
            Type::Uint64 => "uint64",
            Type::Int32 => "int32",
            Type::Int64 => "int64",
            Type::Bool => "bool",
            Type::Buffer => "buffer",
            Type::Struct => "struct",
            Type::Qtailq => "qtailq",
            Type::Nullptr => "nullptr",
            Type::Vstruct => "vstruct",
        }
    }

    fn width(self) -> u64 {
        match self {
            Type::Uint8 | Type::Bool | Type::Nullptr => 1,
            Type::Uint16 => 2,
            Type::Uint32 | Type::Int32 => 4,
            Type::Uint64 | Type::Int64 => 8,
            Type::Buffer | Type::Qtailq => 3,
            Type::Struct | Type::Vstruct => 0,
        }
    }
}

impl Count {
    fn value(self) -> u64 {
        match self {
            Count::Small(n) => u64::from(n % 8),
            Count::PowerOfTwo(k) => 1u64 << (k % 64),
            Count::Max => u64::MAX,
            Count::Any(n) => n,
        }
    }
}

/// Puts the entries in an order chosen by `order` (a rotation).
fn object(mut entries: Vec<(String, Json)>, order: u8) -> Json {
    if !entries.is_empty() {
        let k = usize::from(order) % entries.len();
        entries.rotate_left(k);
    }
    // A map keeps one value per key: repeated keys are spliced in as text later.
    let mut m = Map::new();
    for (k, v) in entries {
        m.insert(k, v);
    }
    Json::Object(m)
}

/// Renders a description and the body it describes (as far as `MAX_BODY` allows).
struct Render {
    body: Vec<u8>,
}

impl Render {
    fn room(&self) -> usize {
        MAX_BODY - self.body.len().min(MAX_BODY)
    }

    fn fill(&mut self, n: u64, byte: u8) {
        let n = n.min(self.room() as u64) as usize;
        self.body.extend(std::iter::repeat_n(byte, n));
    }

    fn extend(&mut self, b: &[u8]) {
        let n = b.len().min(self.room());
        self.body.extend_from_slice(&b[..n]);
    }

    /// The vmsd-object as JSON entries, its body appended; returns its body length.
    fn obj(&mut self, o: &Obj, depth: usize) -> (Vec<(String, Json)>, u64) {
        let start = self.body.len();
        let mut fields = Vec::new();
        for (i, f) in o.fields.iter().enumerate() {
            fields.push(self.field(f, depth, i as u8));
        }
        let mut subs = Vec::new();
        for s in &o.subsections {
            if depth >= MAX_NEST {
                break;
            }
            let name = s.vmsd_name.text();
            self.extend(&[0x05, name.len() as u8]);
            self.extend(name.as_bytes());
            self.extend(&u32::from(s.version).to_be_bytes());
            let (entries, _) = self.obj(s, depth + 1);
            subs.push(object(entries, s.order));
        }
        let mut e = vec![
            ("vmsd_name".to_owned(), Json::from(o.vmsd_name.text())),
            ("version".to_owned(), Json::from(o.version)),
            ("fields".to_owned(), Json::Array(fields)),
        ];
        if !subs.is_empty() {
            e.push(("subsections".to_owned(), Json::Array(subs)));
        }
        (e, (self.body.len() - start) as u64)
    }

    fn field(&mut self, f: &Field, depth: usize, i: u8) -> Json {
        let count = f.count.map_or(1, Count::value);
        let mut e = vec![
            ("name".to_owned(), Json::from(f.name.text())),
            ("type".to_owned(), Json::from(f.ty.text())),
        ];
        if let Some(c) = f.count {
            e.push(("array_len".to_owned(), Json::from(c.value())));
        }
        let nested = f.nested.as_deref().filter(|_| depth < MAX_NEST);
        let (element, contents) = match nested {
            Some(o) if matches!(f.ty, Type::Struct | Type::Vstruct) => {
                // One element's body, repeated for the rest.
                let start = self.body.len();
                let (entries, len) = self.obj(o, depth + 1);
                let one = self.body[start..].to_vec();
                for _ in 1..count.min(16) {
                    self.extend(&one);
                }
                self.fill(len.saturating_mul(count.saturating_sub(16)), 0);
                (len, Some(entries))
            }
            _ => {
                let w = match f.size {
                    Size::Small(n) => u64::from(n % 16),
                    _ => f.ty.width(),
                };
                self.fill(w.saturating_mul(count), i);
                (w, None)
            }
        };
        let size = match f.size {
            Size::Natural | Size::Small(_) => element,
            Size::Zero => 0,
            Size::Huge(n) => n,
        };
        e.push(("size".to_owned(), Json::from(size)));
        match (contents, f.ty) {
            (Some(c), Type::Struct) => e.push(("struct".to_owned(), object(c, f.order))),
            (Some(c), _) => e.extend(c),
            (None, _) => {}
        }
        match f.oddity {
            Some(Oddity::Unknown) => e.push(("data".to_owned(), Json::from(vec![1, 2, 3]))),
            Some(Oddity::StringSize) => e.push(("size".to_owned(), Json::from("8"))),
            Some(Oddity::NegativeArrayLen) => e.push(("array_len".to_owned(), Json::from(-1))),
            Some(Oddity::Index(k)) => e.push(("index".to_owned(), Json::from(k))),
            Some(Oddity::RepeatedType) | None => {}
        }
        let mut j = object(e, f.order);
        if let (Some(Oddity::RepeatedType), Json::Object(m)) = (f.oddity, &mut j) {
            // serde_json maps keep one value per key; mark it for the text pass.
            m.insert("\u{1}repeat".to_owned(), Json::from("qtailq"));
        }
        j
    }
}

/// The stream, the JSON text, and the options to read it with.
fn build(plan: &Plan) -> (Vec<u8>, Vec<u8>, Limits) {
    let mut s = b"QEVM\0\0\0\x03".to_vec();
    // 9 is refused (QEMU pages are 1 KiB to 64 KiB); the rest are read.
    let page_bits = plan.page_bits.map(|b| u32::from(b % 8) + 9);
    if let Some(bits) = page_bits {
        let sub = b"configuration/target-page-bits";
        s.push(0x07);
        s.extend_from_slice(&2u32.to_be_bytes());
        s.extend_from_slice(b"pc");
        s.extend_from_slice(&[0x05, sub.len() as u8]);
        s.extend_from_slice(sub);
        s.extend_from_slice(&1u32.to_be_bytes());
        s.extend_from_slice(&bits.to_be_bytes());
    }
    let mut devices = Vec::new();
    for (id, d) in plan.devices.iter().take(8).enumerate() {
        let name = d.name.text();
        let mut r = Render { body: Vec::new() };
        let mut e = vec![
            (
                "name".to_owned(),
                Json::from(if d.misnamed { "other".to_owned() } else { name.clone() }),
            ),
            ("instance_id".to_owned(), Json::from(d.instance_id)),
        ];
        match d.legacy {
            Some(size) => {
                e.push(("size".to_owned(), Json::from(size)));
                r.fill(u64::from(size), 0xaa);
            }
            None => {
                let (mut entries, _) = r.obj(&d.obj, 0);
                if id == 0 && plan.deep > 0 {
                    entries = deep_chain(entries, usize::from(plan.deep));
                }
                e.extend(entries);
            }
        }
        devices.push(object(e, d.order));
        let body = match &d.body {
            Body::Described => r.body,
            Body::DescribedThen(extra) => [r.body, extra.clone()].concat(),
            Body::Raw(b) => b.clone(),
        };
        s.push(0x04);
        s.extend_from_slice(&(id as u32).to_be_bytes());
        s.push(name.len().min(255) as u8);
        s.extend_from_slice(&name.as_bytes()[..name.len().min(255)]);
        s.extend_from_slice(&u32::from(d.instance_id).to_be_bytes());
        s.extend_from_slice(&u32::from(d.version).to_be_bytes());
        s.extend_from_slice(&body);
        if d.footer {
            s.push(0x7e);
            s.extend_from_slice(&(id as u32).to_be_bytes());
        }
    }
    let page_size = 1u64 << page_bits.unwrap_or(12);
    let root = object(
        vec![
            ("page_size".to_owned(), Json::from(page_size)),
            ("devices".to_owned(), Json::Array(devices)),
        ],
        0,
    );
    let mut json = serde_json::to_vec(&root).expect("JSON renders");
    // Repeated keys: the marker becomes a second "type" key.
    let text = String::from_utf8_lossy(&json).replace("\"\\u0001repeat\"", "\"type\"");
    json = text.into_bytes();
    for &(at, b) in plan.tweaks.iter().take(4) {
        if !json.is_empty() {
            let i = usize::from(at) % json.len();
            json[i] = b;
        }
    }
    s.push(0x00);
    if !matches!(plan.source, Source::Twin) {
        s.push(0x06);
        s.extend_from_slice(&(json.len() as u32).to_be_bytes());
        s.extend_from_slice(&json);
    }
    let lim = if plan.tight {
        limits().with_max_alloc(64 << 10).with_max_depth(16)
    } else {
        limits()
    };
    (s, json, lim)
}

/// Wraps the first field list in `levels` structs, each one element of a
/// one-field struct: `{"fields": [{"type": "struct", "struct": {...}}]}`.
fn deep_chain(mut entries: Vec<(String, Json)>, levels: usize) -> Vec<(String, Json)> {
    for _ in 0..levels {
        let inner = object(std::mem::take(&mut entries), 0);
        let field = object(
            vec![
                ("name".to_owned(), Json::from("deep")),
                ("type".to_owned(), Json::from("struct")),
                ("size".to_owned(), Json::from(0)),
                ("struct".to_owned(), inner),
            ],
            0,
        );
        entries = vec![
            ("vmsd_name".to_owned(), Json::from("deep")),
            ("version".to_owned(), Json::from(1)),
            ("fields".to_owned(), Json::Array(vec![field])),
        ];
    }
    entries
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

fn located(e: &Error) -> bool {
    e.location().offset.is_some()
        || e.location().device.is_some()
        || e.kind() == ErrorKind::Unsupported
}

fuzz_target!(|plan: Plan| {
    let (stream, json, lim) = build(&plan);
    let opts = ConvertOptions {
        limits: lim,
        vmdesc: match plan.source {
            Source::InStream => None,
            Source::ReadAhead => Some((json.clone(), true)),
            Source::Twin => Some((json.clone(), false)),
        },
        ..ConvertOptions::default()
    };
    let (whole, heap) = peak_alloc(|| qemu_to_qemu(&stream[..], Vec::new(), &opts));
    // The reader's first buffer (1 MiB), what the limits allow the description
    // and the decoded values, and a small multiple of what is in the input.
    let bound = (1 << 20) + 2 * lim.max_alloc as usize + 256 * (stream.len() + json.len());
    assert!(heap <= bound, "{heap} bytes of heap, bound {bound}");
    let split = usize::from(plan.split).max(1);
    let piped = qemu_to_qemu(Trickle(&stream, split), Vec::new(), &opts);
    match (&whole, &piped) {
        (Ok((a, _)), Ok((b, _))) => {
            assert!(a == &stream, "accepted stream not reproduced");
            assert!(a == b, "split changed the output");
            let (vms, _) =
                qemu_to_vmstream(&stream[..], Vec::new(), &opts).expect("converts to vmstream");
            let back = vmstream_to_qemu(&vms[..], Vec::new(), &opts).expect("converts back");
            assert!(back == stream, "round trip through vmstream differs");
        }
        (Err(a), Err(b)) => {
            assert!(located(a), "error without a location: {a}");
            assert_eq!(a.to_string(), b.to_string(), "split changed the error");
        }
        _ => panic!(
            "split changed the outcome: {:?} vs {:?}",
            whole.as_ref().err(),
            piped.as_ref().err()
        ),
    }
});
