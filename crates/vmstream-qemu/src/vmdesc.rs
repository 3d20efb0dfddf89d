//! The vmdesc JSON trailer: parsing it, finding it, and walking device sections
//! with it into typed values and back.
//!
//! Decoding follows the description field by field: integers by width and
//! signedness, structs, `tmp`/`vstruct` contents and subsections as nested
//! structs, everything else as bytes of the described size. A field that occurs
//! more than once (arrays, `index` entries) becomes a sequence. Encoding walks
//! the same description and takes values in the same order, so
//! `encode(decode(bytes)) == bytes` whenever decoding succeeds; callers check
//! that and keep the body as bytes when it does not hold.
//!
//! The description is as hostile as the stream. It is parsed straight into
//! [`Vmdesc`] (no JSON tree in between), and everything built from it, while
//! parsing and while decoding a section, is charged to [`Limits::max_alloc`].
//! Element counts are checked against the bytes left in the section before a
//! loop runs, a repeated field of zero bytes is refused (it would repeat
//! without consuming input), and counts are added with checks.

use std::collections::HashMap;
use std::fmt;
use std::io::{Read, Seek};
use std::mem::size_of;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use vmstream::{Error, ErrorKind, Limits, Result, Value};

/// The parsed vmdesc.
#[derive(Debug, Clone)]
pub struct Vmdesc {
    /// Target page size.
    pub page_size: u64,
    /// One entry per FULL section, in stream order.
    pub devices: Vec<DeviceDesc>,
}

/// One device entry.
#[derive(Debug, Clone)]
pub struct DeviceDesc {
    /// Section idstr.
    pub name: String,
    /// Instance id.
    pub instance_id: u32,
    /// The vmsd description; `None` for a legacy handler (opaque body).
    pub vmsd: Option<Obj>,
    /// Body size of a legacy handler.
    pub size: u64,
}

/// A vmsd-object: a struct's fields and subsections.
#[derive(Debug, Clone)]
pub struct Obj {
    /// vmsd name.
    pub vmsd_name: String,
    /// Version written.
    pub version: u32,
    /// Fields in order.
    pub fields: Vec<Field>,
    /// Subsections in stream order.
    pub subsections: Vec<Obj>,
    /// Per distinct field name, in order of first appearance: the first field
    /// with that name and how many elements all fields with it hold.
    slots: Vec<Slot>,
    /// The first subsection whose name is already taken by a field or an
    /// earlier subsection (such a description cannot be decoded).
    clash: Option<usize>,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    field: usize,
    total: u64,
}

impl Slot {
    /// Whether the name becomes a sequence (it holds other than one element).
    fn many(self) -> bool {
        self.total != 1
    }
}

/// One field entry.
#[derive(Debug, Clone)]
pub struct Field {
    /// Field name (with any `[k]` suffix).
    pub name: String,
    /// Element count (1 unless a compressed array).
    pub count: u64,
    /// Type name.
    pub ty: String,
    /// Nested description (`struct`, or inline for `tmp`/`vstruct`).
    pub nested: Option<Obj>,
    /// Bytes per element.
    pub size: u64,
    /// Index into the owning [`Obj`]'s slots.
    slot: usize,
}

fn bad(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Malformed, msg.into())
}

/// Types whose contents repeat description keys per element; read by size.
const OPAQUE_CONTAINERS: [&str; 3] = ["qtailq", "qlist", "gtree"];

/// Longest vmsd name a subsection header can carry (a `u8` length).
const MAX_SUBSECTION_NAME: usize = 0xff;

const VALUE_SIZE: u64 = size_of::<Value>() as u64;
const ENTRY_SIZE: u64 = size_of::<(String, Value)>() as u64;

impl Vmdesc {
    /// Parses the JSON text, nesting at most `max_depth` levels, with the
    /// default [`Limits::max_alloc`] for what the description may take.
    pub fn parse(json: &[u8], max_depth: u32) -> Result<Vmdesc> {
        Vmdesc::parse_limited(json, &Limits::default().with_max_depth(max_depth))
    }

    /// Parses the JSON text within `limits`: the text, the parser's scratch
    /// space (up to the text's length again) and every entry built are charged
    /// to `max_alloc`; descriptions nest at most `max_depth` levels.
    pub fn parse_limited(json: &[u8], limits: &Limits) -> Result<Vmdesc> {
        let text = (json.len() as u64).saturating_mul(2);
        let Some(left) = limits.max_alloc.checked_sub(text) else {
            return Err(Error::new(
                ErrorKind::LimitExceeded,
                format!(
                    "the vmdesc is {} bytes; parsing it needs more than Limits::max_alloc ({} bytes)",
                    json.len(),
                    limits.max_alloc
                ),
            ));
        };
        let mut p = Parse {
            left,
            max_alloc: limits.max_alloc,
            max_depth: limits.max_depth,
            err: None,
        };
        let mut de = serde_json::Deserializer::from_slice(json);
        // serde_json's own recursion limit (128 levels) bounds the stack.
        let r = RootSeed(&mut p)
            .deserialize(&mut de)
            .and_then(|v| de.end().map(|()| v));
        match r {
            Ok(v) => Ok(v),
            Err(e) => Err(match p.err.take() {
                Some(err) => reword(err, "vmdesc: "),
                None => bad(format!("vmdesc: {e}")),
            }),
        }
    }
}

impl Obj {
    /// Body length this description predicts (exact when every element of a
    /// compressed array has the size of the first).
    pub fn body_len(&self) -> u64 {
        let fields = self.fields.iter().map(|f| f.size.saturating_mul(f.count));
        let subs = self
            .subsections
            .iter()
            .map(|s| (6 + s.vmsd_name.len() as u64).saturating_add(s.body_len()));
        fields.chain(subs).fold(0, u64::saturating_add)
    }
}

/// Finds the vmdesc trailer at the end of `data` (a whole stream, or its tail):
/// a `0x06` byte at `p` with `p + 5 + be32(p + 1) == data.len()` and `{` at
/// `p + 5`. Returns `p`.
pub fn find_trailer(data: &[u8]) -> Option<usize> {
    let end = data.len();
    (0..end.saturating_sub(6)).rev().find(|&p| {
        data[p] == crate::wire::VMDESC
            && data[p + 5] == b'{'
            && u32::from_be_bytes([data[p + 1], data[p + 2], data[p + 3], data[p + 4]]) as usize
                == end - p - 5
    })
}

/// The vmdesc JSON of `data`: either a QEMU stream with a trailer, or the JSON itself.
pub fn vmdesc_from(data: &[u8]) -> Result<Vec<u8>> {
    if data.starts_with(&crate::MAGIC) {
        let p = find_trailer(data).ok_or_else(|| {
            Error::new(
                ErrorKind::Unsupported,
                "the twin stream has no vmdesc trailer either",
            )
        })?;
        Ok(data[p + 5..].to_vec())
    } else if data.first() == Some(&b'{') {
        Ok(data.to_vec())
    } else {
        Err(Error::new(
            ErrorKind::Usage,
            "a device description must be a QEMU stream with a vmdesc trailer, or its JSON",
        ))
    }
}

/// Reads the vmdesc trailer from the end of a seekable QEMU stream, if it has one.
pub fn read_trailer<F: Read + Seek>(file: &mut F) -> Result<Option<Vec<u8>>> {
    use std::io::SeekFrom;
    let len = file.seek(SeekFrom::End(0))?;
    let tail = len.min(16 << 20);
    file.seek(SeekFrom::Start(len - tail))?;
    let mut buf = Vec::with_capacity(tail as usize);
    file.by_ref().take(tail).read_to_end(&mut buf)?;
    file.seek(SeekFrom::Start(0))?;
    Ok(find_trailer(&buf).map(|p| buf[p + 5..].to_vec()))
}

/// Watches a buffer that grows at its end for the moment it ends with a
/// complete vmdesc trailer (`0x06`, a `u32` length, then that many bytes of
/// JSON text starting with `{`), looking at each byte once: every place that
/// could start a trailer gives the offset where it would end, and the buffer
/// is complete when it ends at one of them. At most [`TrailerWatch::MAX`]
/// such ends are kept; a hostile stream that makes more only loses the early
/// stop (the reader then reads to the end of its input, as it would anyway).
#[derive(Debug, Default)]
pub(crate) struct TrailerWatch {
    seen: usize,
    ends: std::collections::BinaryHeap<std::cmp::Reverse<usize>>,
}

impl TrailerWatch {
    const MAX: usize = 4096;

    /// Whether `data` (the buffer so far, `data[..]` unchanged since the last
    /// call) ends exactly with a trailer.
    pub(crate) fn complete(&mut self, data: &[u8]) -> bool {
        use std::cmp::Reverse;
        for p in self.seen.saturating_sub(5)..data.len().saturating_sub(5) {
            if data[p] == crate::wire::VMDESC && data[p + 5] == b'{' {
                let len = u32::from_be_bytes([data[p + 1], data[p + 2], data[p + 3], data[p + 4]]);
                let end = p + 5 + len as usize;
                if end >= data.len() && self.ends.len() < Self::MAX {
                    self.ends.push(Reverse(end));
                }
            }
        }
        self.seen = data.len();
        while self.ends.peek().is_some_and(|Reverse(e)| *e < data.len()) {
            self.ends.pop();
        }
        // QEMU's JSON text ends with its closing brace: a candidate that
        // happens to end at a read boundary elsewhere is 256 times rarer.
        self.ends.peek() == Some(&Reverse(data.len())) && data.last() == Some(&b'}')
    }
}

// ---------------------------------------------------------------------------
// Parsing: serde seeds that build the description directly and charge it.

/// State shared by every seed of one parse: what may still be allocated, and
/// the first error of ours (serde's error type cannot carry a kind or a field
/// path, so the seeds keep the real error here and hand serde a stand-in).
struct Parse {
    left: u64,
    max_alloc: u64,
    max_depth: u32,
    err: Option<Error>,
}

impl Parse {
    /// Records `e` (unless an error is already recorded) and returns serde's stand-in.
    fn fail<E: de::Error>(&mut self, e: Error) -> E {
        self.err.get_or_insert(e);
        E::custom("vmdesc")
    }

    /// Adds context to the recorded error as it unwinds through a seed;
    /// records serde's own error first if it is the cause.
    fn wrap<E: de::Error + fmt::Display>(&mut self, e: E, f: impl FnOnce(Error) -> Error) -> E {
        let err = self.err.take().unwrap_or_else(|| bad(e.to_string()));
        self.err = Some(f(err));
        e
    }

    fn charge<E: de::Error>(&mut self, bytes: u64) -> Result<(), E> {
        match self.left.checked_sub(bytes) {
            Some(left) => {
                self.left = left;
                Ok(())
            }
            None => {
                let max = self.max_alloc;
                Err(self.fail(Error::new(
                    ErrorKind::LimitExceeded,
                    format!(
                        "the description needs more than {max} bytes of memory (Limits::max_alloc)"
                    ),
                )))
            }
        }
    }

    fn string<E: de::Error>(&mut self, s: &str) -> Result<String, E> {
        self.charge(s.len() as u64)?;
        Ok(s.to_owned())
    }

    /// Pushes onto `v`, charging for the capacity before it grows.
    fn push<T, E: de::Error>(&mut self, v: &mut Vec<T>, x: T) -> Result<(), E> {
        if v.len() == v.capacity() {
            let add = v.capacity().max(4);
            self.charge((add as u64).saturating_mul(size_of::<T>() as u64))?;
            v.reserve_exact(add);
        }
        v.push(x);
        Ok(())
    }

    fn too_deep<E: de::Error>(&mut self) -> E {
        let max = self.max_depth;
        self.fail(Error::new(
            ErrorKind::LimitExceeded,
            format!("descriptions nest more than {max} levels deep (Limits::max_depth)"),
        ))
    }
}

/// The keys any description object may have; the rest are skipped unread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    PageSize,
    Devices,
    Name,
    InstanceId,
    VmsdName,
    Version,
    Fields,
    Subsections,
    Size,
    Type,
    ArrayLen,
    Struct,
    Other,
}

struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_identifier(self)
    }
}

impl Visitor<'_> for KeySeed {
    type Value = Key;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Key, E> {
        Ok(match s {
            "page_size" => Key::PageSize,
            "devices" => Key::Devices,
            "name" => Key::Name,
            "instance_id" => Key::InstanceId,
            "vmsd_name" => Key::VmsdName,
            "version" => Key::Version,
            "fields" => Key::Fields,
            "subsections" => Key::Subsections,
            "size" => Key::Size,
            "type" => Key::Type,
            "array_len" => Key::ArrayLen,
            "struct" => Key::Struct,
            _ => Key::Other,
        })
    }
}

/// A string, charged.
struct StrSeed<'p>(&'p mut Parse);

impl<'de> DeserializeSeed<'de> for StrSeed<'_> {
    type Value = String;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for StrSeed<'_> {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<String, E> {
        self.0.string(s)
    }
}

/// The top-level object.
struct RootSeed<'p>(&'p mut Parse);

impl<'de> DeserializeSeed<'de> for RootSeed<'_> {
    type Value = Vmdesc;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Vmdesc, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RootSeed<'_> {
    type Value = Vmdesc;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the vmdesc object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vmdesc, A::Error> {
        let p = self.0;
        let (mut page_size, mut devices) = (None, None);
        while let Some(key) = map.next_key_seed(KeySeed)? {
            match key {
                Key::PageSize => page_size = Some(map.next_value::<u64>()?),
                Key::Devices => {
                    let d = map
                        .next_value_seed(DevicesSeed(&mut *p))
                        .map_err(|e| p.wrap(e, |e| e))?;
                    devices = Some(d);
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let Some(page_size) = page_size else {
            return Err(p.fail(bad("no unsigned integer \"page_size\"")));
        };
        if !page_size.is_power_of_two() || !(512..=1 << 30).contains(&page_size) {
            return Err(p.fail(bad(format!(
                "page_size {page_size} is not a power of two in 512..=1 GiB"
            ))));
        }
        let Some(devices) = devices else {
            return Err(p.fail(bad("no \"devices\" array")));
        };
        Ok(Vmdesc { page_size, devices })
    }
}

/// The `devices` array.
struct DevicesSeed<'p>(&'p mut Parse);

impl<'de> DeserializeSeed<'de> for DevicesSeed<'_> {
    type Value = Vec<DeviceDesc>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for DevicesSeed<'_> {
    type Value = Vec<DeviceDesc>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the devices array")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let p = self.0;
        let mut out = Vec::new();
        for i in 0.. {
            let depth = p.max_depth;
            let seed = EntrySeed {
                p: &mut *p,
                role: Role::Device,
                depth,
            };
            let entry = seq
                .next_element_seed(seed)
                .map_err(|e| p.wrap(e, |e| reword(e, &format!("device entry {i}: "))))?;
            match entry {
                Some(Entry::Device(d)) => p.push(&mut out, d)?,
                Some(_) => return Err(p.fail(bad("a device entry is not a device"))),
                None => break,
            }
        }
        Ok(out)
    }
}

/// What kind of object an [`EntrySeed`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// An element of `devices`.
    Device,
    /// An element of a `fields` array.
    Field,
    /// A `struct` value or a subsection: a vmsd-object.
    Obj,
}

#[derive(Debug)]
enum Entry {
    Device(DeviceDesc),
    Field(Field),
    /// A vmsd-object; `None` for a `struct` value without fields (not used).
    Obj(Option<Obj>),
}

/// One JSON object of the description, read in any key order. `depth` is how
/// many levels of vmsd-objects may still nest: for a device or a vmsd-object,
/// counting itself; for a field, counting the object it belongs to.
struct EntrySeed<'p> {
    p: &'p mut Parse,
    role: Role,
    depth: u32,
}

impl<'de> DeserializeSeed<'de> for EntrySeed<'_> {
    type Value = Entry;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Entry, D::Error> {
        if self.role == Role::Obj {
            // A `struct` key of another shape is not a description: skipped.
            d.deserialize_any(self)
        } else {
            d.deserialize_map(self)
        }
    }
}

/// The keys of one object seen so far.
#[derive(Default)]
struct Parts {
    name: Option<String>,
    instance_id: Option<u64>,
    vmsd_name: Option<String>,
    version: Option<u64>,
    fields: Option<Vec<Field>>,
    subsections: Option<Vec<Obj>>,
    size: Option<u64>,
    ty: Option<String>,
    count: Option<u64>,
    structure: Option<Option<Obj>>,
}

/// How a field's nested keys are to be read, given its type (if seen yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Nested {
    /// The type is not known yet: read both kinds.
    Unknown,
    /// `struct`: only the `struct` key.
    Struct,
    /// Any other type: only the inline vmsd-object keys (`tmp`, `vstruct`).
    Inline,
    /// A container whose contents repeat keys per element: nothing.
    Opaque,
}

fn nested_kind(ty: Option<&str>) -> Nested {
    match ty {
        None => Nested::Unknown,
        Some(t) if OPAQUE_CONTAINERS.contains(&t) => Nested::Opaque,
        Some("struct") => Nested::Struct,
        Some(_) => Nested::Inline,
    }
}

impl<'de> Visitor<'de> for EntrySeed<'_> {
    type Value = Entry;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a description object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entry, A::Error> {
        let EntrySeed { p, role, depth } = self;
        // Levels the vmsd-object keys of this entry are read at.
        let (obj_depth, inner_depth) = match role {
            Role::Device | Role::Obj => (depth, depth.saturating_sub(1)),
            Role::Field => (depth.saturating_sub(1), depth.saturating_sub(2)),
        };
        let mut x = Parts::default();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let nested = nested_kind(x.ty.as_deref());
            let inline_keys = match role {
                Role::Field => matches!(nested, Nested::Unknown | Nested::Inline),
                Role::Device | Role::Obj => true,
            };
            match key {
                Key::Name if role != Role::Obj => {
                    x.name = Some(map.next_value_seed(StrSeed(&mut *p))?);
                }
                Key::Type if role == Role::Field => {
                    x.ty = Some(map.next_value_seed(StrSeed(&mut *p))?);
                }
                Key::InstanceId if role == Role::Device => {
                    x.instance_id = Some(map.next_value::<u64>()?);
                }
                Key::Size if role != Role::Obj => x.size = Some(map.next_value::<u64>()?),
                Key::ArrayLen if role == Role::Field => {
                    x.count =
                        Some(map.next_value::<u64>().map_err(|e| {
                            p.wrap(e, |_| bad("array_len is not an unsigned integer"))
                        })?);
                }
                Key::VmsdName if inline_keys => {
                    x.vmsd_name = Some(map.next_value_seed(StrSeed(&mut *p))?);
                }
                Key::Version if inline_keys => x.version = Some(map.next_value::<u64>()?),
                Key::Fields if inline_keys => {
                    if obj_depth == 0 {
                        return Err(p.too_deep());
                    }
                    let seed = FieldsSeed {
                        p: &mut *p,
                        depth: obj_depth,
                    };
                    let f = map
                        .next_value_seed(seed)
                        .map_err(|e| p.wrap(e, |e| in_entry(e, role, &x.name)))?;
                    x.fields = Some(f);
                }
                Key::Subsections if inline_keys => {
                    if inner_depth == 0 {
                        return Err(p.too_deep());
                    }
                    let seed = SubsectionsSeed {
                        p: &mut *p,
                        depth: inner_depth,
                    };
                    let s = map
                        .next_value_seed(seed)
                        .map_err(|e| p.wrap(e, |e| in_entry(e, role, &x.name)))?;
                    x.subsections = Some(s);
                }
                Key::Struct
                    if role == Role::Field
                        && matches!(nested, Nested::Unknown | Nested::Struct) =>
                {
                    if obj_depth == 0 {
                        return Err(p.too_deep());
                    }
                    let seed = EntrySeed {
                        p: &mut *p,
                        role: Role::Obj,
                        depth: obj_depth,
                    };
                    let s = map
                        .next_value_seed(seed)
                        .map_err(|e| p.wrap(e, |e| in_entry(e, role, &x.name)))?;
                    x.structure = Some(match s {
                        Entry::Obj(o) => o,
                        _ => None,
                    });
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        match role {
            Role::Device => {
                let name = x
                    .name
                    .take()
                    .ok_or_else(|| p.fail(bad("no string \"name\"")))?;
                let instance_id = x
                    .instance_id
                    .and_then(|i| u32::try_from(i).ok())
                    .ok_or_else(|| {
                        p.fail(bad(format!("{name:?} has no instance_id of 32 bits")))
                    })?;
                let (vmsd, size) = if x.vmsd_name.is_some() {
                    (Some(finish_obj(p, &mut x)?), 0)
                } else {
                    let size = x.size.ok_or_else(|| {
                        p.fail(bad(format!(
                            "legacy device {name:?} has no unsigned integer \"size\""
                        )))
                    })?;
                    (None, size)
                };
                Ok(Entry::Device(DeviceDesc {
                    name,
                    instance_id,
                    vmsd,
                    size,
                }))
            }
            Role::Obj if x.fields.is_none() => Ok(Entry::Obj(None)),
            Role::Obj => Ok(Entry::Obj(Some(finish_obj(p, &mut x)?))),
            Role::Field => {
                let name = x
                    .name
                    .take()
                    .ok_or_else(|| p.fail(bad("a field has no string \"name\"")))?;
                let ty =
                    x.ty.take()
                        .ok_or_else(|| p.fail(bad("no string \"type\"").in_field(&name)))?;
                let size = x
                    .size
                    .ok_or_else(|| p.fail(bad("no unsigned integer \"size\"").in_field(&name)))?;
                let nested = match nested_kind(Some(&ty)) {
                    Nested::Struct => x.structure.take().flatten(),
                    Nested::Inline if x.fields.is_some() && x.vmsd_name.is_some() => {
                        Some(finish_obj(p, &mut x).map_err(|e| p.wrap(e, |e| e.in_field(&name)))?)
                    }
                    _ => None,
                };
                Ok(Entry::Field(Field {
                    name,
                    count: x.count.unwrap_or(1),
                    ty,
                    nested,
                    size,
                    slot: 0,
                }))
            }
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Entry, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Entry::Obj(None))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Entry, E> {
        Ok(Entry::Obj(None))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Entry, E> {
        Ok(Entry::Obj(None))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Entry, E> {
        Ok(Entry::Obj(None))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Entry, E> {
        Ok(Entry::Obj(None))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Entry, E> {
        Ok(Entry::Obj(None))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Entry, E> {
        Ok(Entry::Obj(None))
    }
}

/// Names the field an error inside it came from (devices are named by the
/// entry number instead).
fn in_entry(e: Error, role: Role, name: &Option<String>) -> Error {
    match (role, name) {
        (Role::Field, Some(n)) => e.in_field(n),
        (Role::Field, None) => e.in_field("?"),
        _ => e,
    }
}

/// `e` with `prefix` before its message (parse errors carry no location but
/// a field path).
fn reword(e: Error, prefix: &str) -> Error {
    let mut out = Error::new(e.kind(), format!("{prefix}{}", e.message()));
    if let Some(f) = &e.location().field {
        out = out.in_field(f);
    }
    out
}

/// Builds the vmsd-object from the keys read: its name, version and fields
/// must be there. Numbers the distinct field names and finds name clashes.
fn finish_obj<E: de::Error>(p: &mut Parse, x: &mut Parts) -> Result<Obj, E> {
    let vmsd_name = x
        .vmsd_name
        .take()
        .ok_or_else(|| p.fail(bad("no string \"vmsd_name\"")))?;
    let version = x
        .version
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| p.fail(bad(format!("{vmsd_name:?} has no version of 32 bits"))))?;
    let mut fields = x
        .fields
        .take()
        .ok_or_else(|| p.fail(bad(format!("{vmsd_name:?} has no \"fields\" array"))))?;
    let subsections = x.subsections.take().unwrap_or_default();
    // The name index lives only while this runs; it is charged, then given back.
    let names = fields.len() + subsections.len();
    let index_cost = (names as u64).saturating_mul(3 * size_of::<(&str, usize)>() as u64);
    p.charge(index_cost)?;
    let mut slots: Vec<Slot> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(names);
    for (i, f) in fields.iter_mut().enumerate() {
        let next = slots.len();
        let slot = *index.entry(f.name.as_str()).or_insert(next);
        if slot == next {
            p.push(&mut slots, Slot { field: i, total: 0 })?;
        }
        let s = &mut slots[slot];
        s.total = s.total.checked_add(f.count).ok_or_else(|| {
            p.fail(bad(format!(
                "the elements of field {:?} of {vmsd_name:?} number more than 2^64",
                f.name
            )))
        })?;
        f.slot = slot;
    }
    let mut clash = None;
    for (i, s) in subsections.iter().enumerate() {
        if s.vmsd_name.len() > MAX_SUBSECTION_NAME {
            return Err(p.fail(bad(format!(
                "subsection name of {} bytes in {vmsd_name:?} (at most 255)",
                s.vmsd_name.len()
            ))));
        }
        if index.insert(s.vmsd_name.as_str(), usize::MAX).is_some() && clash.is_none() {
            clash = Some(i);
        }
    }
    drop(index);
    p.left = p.left.saturating_add(index_cost);
    Ok(Obj {
        vmsd_name,
        version,
        fields,
        subsections,
        slots,
        clash,
    })
}

/// A `fields` array; `depth` is the level of the object it belongs to.
struct FieldsSeed<'p> {
    p: &'p mut Parse,
    depth: u32,
}

impl<'de> DeserializeSeed<'de> for FieldsSeed<'_> {
    type Value = Vec<Field>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for FieldsSeed<'_> {
    type Value = Vec<Field>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a fields array")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let FieldsSeed { p, depth } = self;
        let mut out: Vec<Field> = Vec::new();
        loop {
            let seed = EntrySeed {
                p: &mut *p,
                role: Role::Field,
                depth,
            };
            let at = out.len();
            match seq.next_element_seed(seed) {
                Ok(Some(Entry::Field(f))) => p.push(&mut out, f)?,
                Ok(Some(_)) => return Err(p.fail(bad("a field is not a field"))),
                Ok(None) => break,
                Err(e) => {
                    // Name the field by the one before it when its own name is unknown.
                    return Err(p.wrap(e, |e| match e.location().field {
                        Some(_) => e,
                        None => e.in_field(&format!("fields[{at}]")),
                    }));
                }
            }
        }
        Ok(out)
    }
}

/// A `subsections` array; `depth` is the level of the subsections themselves.
struct SubsectionsSeed<'p> {
    p: &'p mut Parse,
    depth: u32,
}

impl<'de> DeserializeSeed<'de> for SubsectionsSeed<'_> {
    type Value = Vec<Obj>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for SubsectionsSeed<'_> {
    type Value = Vec<Obj>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a subsections array")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let SubsectionsSeed { p, depth } = self;
        let mut out: Vec<Obj> = Vec::new();
        loop {
            let seed = SubsectionSeed { p: &mut *p, depth };
            let at = out.len();
            match seq.next_element_seed(seed) {
                Ok(Some(o)) => p.push(&mut out, o)?,
                Ok(None) => break,
                Err(e) => {
                    return Err(p.wrap(e, |e| e.in_field(&format!("subsections[{at}]"))));
                }
            }
        }
        Ok(out)
    }
}

/// One subsection: a vmsd-object that must be complete.
struct SubsectionSeed<'p> {
    p: &'p mut Parse,
    depth: u32,
}

impl<'de> DeserializeSeed<'de> for SubsectionSeed<'_> {
    type Value = Obj;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Obj, D::Error> {
        let SubsectionSeed { p, depth } = self;
        let seed = EntrySeed {
            p: &mut *p,
            role: Role::Obj,
            depth,
        };
        match seed.deserialize(d)? {
            Entry::Obj(Some(o)) => Ok(o),
            _ => Err(p.fail(bad("a subsection is not an object with a \"fields\" array"))),
        }
    }
}

// ---------------------------------------------------------------------------
// Decoding and encoding section bodies.

/// Reads bytes described by a vmdesc, with the position for messages, and
/// charges the values it builds.
struct Walker<'a> {
    data: &'a [u8],
    pos: usize,
    depth: u32,
    left: u64,
    max_alloc: u64,
}

impl<'a> Walker<'a> {
    fn new(data: &'a [u8], limits: &Limits) -> Walker<'a> {
        Walker {
            data,
            pos: 0,
            depth: limits.max_depth,
            left: limits.max_alloc,
            max_alloc: limits.max_alloc,
        }
    }

    fn charge(&mut self, bytes: u64) -> Result<()> {
        match self.left.checked_sub(bytes) {
            Some(left) => {
                self.left = left;
                Ok(())
            }
            None => Err(Error::new(
                ErrorKind::LimitExceeded,
                format!(
                    "the device state needs more than {} bytes of memory (Limits::max_alloc)",
                    self.max_alloc
                ),
            )
            .at_offset(self.pos as u64)),
        }
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let avail = self.data.len() - self.pos;
        let n = match usize::try_from(n) {
            Ok(n) if n <= avail => n,
            _ => {
                return Err(bad(format!(
                    "{what} needs {n} bytes, {avail} left in the section"
                ))
                .at_offset(self.pos as u64))
            }
        };
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn obj(&mut self, obj: &Obj) -> Result<Value> {
        if self.depth == 0 {
            return Err(
                Error::new(ErrorKind::LimitExceeded, "device state nests too deeply")
                    .at_offset(self.pos as u64),
            );
        }
        self.depth -= 1;
        let entries = obj.slots.len() + obj.subsections.len();
        self.charge((entries as u64).saturating_mul(ENTRY_SIZE))?;
        let mut out: Vec<(String, Value)> = Vec::with_capacity(entries);
        for s in &obj.slots {
            let name = &obj.fields[s.field].name;
            self.charge(name.len() as u64)?;
            let empty = if s.many() {
                Value::Seq(Vec::new())
            } else {
                Value::Unit
            };
            out.push((name.clone(), empty));
        }
        for f in &obj.fields {
            let many = obj.slots[f.slot].many();
            let path = |e: Error, k: usize| {
                if many {
                    e.in_index(k).in_field(&f.name)
                } else {
                    e.in_field(&f.name)
                }
            };
            let first = match &out[f.slot].1 {
                Value::Seq(items) => items.len(),
                _ => 0,
            };
            // Before the loop: every element takes `size` bytes of what is left.
            let left = (self.data.len() - self.pos) as u64;
            if f.count > 1 && f.size == 0 {
                return Err(bad(format!(
                    "{} elements of 0 bytes each (a repeated field must take bytes)",
                    f.count
                ))
                .at_offset(self.pos as u64)
                .in_field(&f.name));
            }
            if f.size.checked_mul(f.count).is_none_or(|n| n > left) {
                return Err(bad(format!(
                    "{} elements of {} bytes each do not fit the {left} bytes left in the section",
                    f.count, f.size
                ))
                .at_offset(self.pos as u64)
                .in_field(&f.name));
            }
            for i in 0..f.count {
                let k = first.saturating_add(usize::try_from(i).unwrap_or(usize::MAX));
                let start = self.pos;
                let v = self.element(f).map_err(|e| path(e, k))?;
                if (self.pos - start) as u64 != f.size {
                    return Err(path(
                        bad(format!(
                            "described as {} bytes, but its contents took {}",
                            f.size,
                            self.pos - start
                        ))
                        .at_offset(start as u64),
                        k,
                    ));
                }
                match &mut out[f.slot].1 {
                    Value::Seq(items) if many => {
                        if items.len() == items.capacity() {
                            let add = items.capacity().max(4);
                            self.charge((add as u64).saturating_mul(VALUE_SIZE))?;
                            items.reserve_exact(add);
                        }
                        items.push(v);
                    }
                    slot => *slot = v,
                }
            }
        }
        for (i, s) in obj.subsections.iter().enumerate() {
            let at = self.pos as u64;
            let hdr = self.take(6 + s.vmsd_name.len() as u64, "subsection header")?;
            let name = hdr.get(2..2 + s.vmsd_name.len()).unwrap_or_default();
            let version = hdr
                .get(2 + s.vmsd_name.len()..)
                .map(|v| u32::from_be_bytes(v.try_into().unwrap_or_default()));
            if hdr[0] != 0x05
                || usize::from(hdr[1]) != s.vmsd_name.len()
                || name != s.vmsd_name.as_bytes()
                || version != Some(s.version)
            {
                return Err(bad(format!(
                    "expected subsection {:?} version {} here",
                    s.vmsd_name, s.version
                ))
                .at_offset(at));
            }
            if obj.clash == Some(i) {
                return Err(bad(format!(
                    "subsection {:?} has the name of a field or of another subsection",
                    s.vmsd_name
                ))
                .at_offset(at));
            }
            let v = self.obj(s).map_err(|e| e.in_field(&s.vmsd_name))?;
            self.charge(s.vmsd_name.len() as u64)?;
            out.push((s.vmsd_name.clone(), v));
        }
        self.depth += 1;
        Ok(Value::Struct(out))
    }

    fn element(&mut self, f: &Field) -> Result<Value> {
        if let Some(n) = &f.nested {
            return self.obj(n);
        }
        let b = self.take(f.size, "field")?;
        self.charge(b.len() as u64)?;
        Ok(leaf(&f.ty, b))
    }
}

fn leaf(ty: &str, b: &[u8]) -> Value {
    macro_rules! int {
        ($t:ty, $v:ident) => {
            match b.try_into() {
                Ok(a) => Value::$v(<$t>::from_be_bytes(a)),
                Err(_) => Value::Bytes(b.to_vec()),
            }
        };
    }
    match ty {
        "bool" if b == [0] || b == [1] => Value::Bool(b[0] == 1),
        "int8" => int!(i8, I8),
        "int16" => int!(i16, I16),
        "int32" | "int32 equal" | "int32 le" => int!(i32, I32),
        "int64" | "timer" => int!(i64, I64),
        "uint8" | "uint8 equal" => int!(u8, U8),
        "uint16" | "uint16 equal" => int!(u16, U16),
        "uint32" | "uint32 equal" => int!(u32, U32),
        "uint64" | "int64 equal" | "CPU_Double_U" => int!(u64, U64),
        "nullptr" if b == b"0" => Value::Unit,
        _ => Value::Bytes(b.to_vec()),
    }
}

/// Decodes a device section body with its description, within `limits`
/// (`max_depth` levels, values charged to `max_alloc`). `body` must be the
/// whole body; the description must account for every byte.
pub fn decode(obj: &Obj, body: &[u8], limits: &Limits) -> Result<Value> {
    let mut w = Walker::new(body, limits);
    let v = w.obj(obj)?;
    if w.pos != body.len() {
        return Err(bad(format!(
            "the description covers {} of the body's {} bytes",
            w.pos,
            body.len()
        ))
        .at_offset(w.pos as u64));
    }
    Ok(v)
}

/// Decodes a device section from the front of `data` within `limits`,
/// returning the value and the body length. `base` is the stream offset of
/// `data`, for errors.
pub fn decode_prefix(obj: &Obj, data: &[u8], base: u64, limits: &Limits) -> Result<(Value, usize)> {
    let mut w = Walker::new(data, limits);
    let v = w.obj(obj).map_err(|e| match e.location().offset {
        Some(off) => {
            let mut moved = Error::new(e.kind(), e.message()).at_offset(base.saturating_add(off));
            if let Some(f) = &e.location().field {
                moved = moved.in_field(f);
            }
            moved
        }
        None => e.at_offset(base),
    })?;
    Ok((v, w.pos))
}

/// A struct value's fields by name (the first of each), looked up at the
/// position decoding puts them first; the index is built only when a field
/// is not there.
struct Lookup<'v> {
    fields: &'v [(String, Value)],
    by_name: Option<HashMap<&'v str, &'v Value>>,
}

impl<'v> Lookup<'v> {
    fn get(&mut self, name: &str, pos: usize) -> Option<&'v Value> {
        let fields = self.fields;
        match fields.get(pos) {
            Some((n, v)) if n == name => Some(v),
            _ => {
                let map = self.by_name.get_or_insert_with(|| {
                    let mut m = HashMap::with_capacity(fields.len());
                    for (n, v) in fields {
                        m.entry(n.as_str()).or_insert(v);
                    }
                    m
                });
                map.get(name).copied()
            }
        }
    }
}

/// Encodes `value` as the body `obj` describes. Each sequence must hold
/// exactly the elements the description counts.
pub fn encode(obj: &Obj, value: &Value, out: &mut Vec<u8>) -> Result<()> {
    let Value::Struct(fields) = value else {
        return Err(Error::new(
            ErrorKind::Usage,
            format!(
                "expected a struct for {:?}, found {}",
                obj.vmsd_name,
                value.type_name()
            ),
        ));
    };
    if let Some(i) = obj.clash {
        return Err(Error::new(
            ErrorKind::Usage,
            format!(
                "the description of {:?} gives subsection {:?} the name of another entry",
                obj.vmsd_name, obj.subsections[i].vmsd_name
            ),
        ));
    }
    let mut find = Lookup {
        fields,
        by_name: None,
    };
    let mut used: Vec<u64> = vec![0; obj.slots.len()];
    for f in &obj.fields {
        let slot = obj.slots[f.slot];
        let many = slot.many();
        if f.count > 1 && f.size == 0 {
            return Err(Error::new(
                ErrorKind::Usage,
                format!("the description repeats a 0-byte field {} times", f.count),
            )
            .in_field(&f.name));
        }
        let v = find
            .get(&f.name, f.slot)
            .ok_or_else(|| Error::new(ErrorKind::Usage, "missing field").in_field(&f.name))?;
        for _ in 0..f.count {
            let k = used[f.slot];
            used[f.slot] += 1;
            let k = usize::try_from(k).unwrap_or(usize::MAX);
            let item = if many {
                match v {
                    Value::Seq(items) => items.get(k).ok_or_else(|| {
                        Error::new(
                            ErrorKind::Usage,
                            format!(
                                "sequence has {} elements, the description {}",
                                items.len(),
                                slot.total
                            ),
                        )
                        .in_field(&f.name)
                    })?,
                    other => {
                        return Err(Error::new(
                            ErrorKind::Usage,
                            format!("expected a sequence, found {}", other.type_name()),
                        )
                        .in_field(&f.name))
                    }
                }
            } else {
                v
            };
            let start = out.len();
            match &f.nested {
                Some(n) => encode(n, item, out),
                None => encode_leaf(item, out),
            }
            .map_err(|e| {
                if many {
                    e.in_index(k).in_field(&f.name)
                } else {
                    e.in_field(&f.name)
                }
            })?;
            if (out.len() - start) as u64 != f.size {
                return Err(Error::new(
                    ErrorKind::Usage,
                    format!(
                        "encodes to {} bytes, the description says {}",
                        out.len() - start,
                        f.size
                    ),
                )
                .in_field(&f.name));
            }
        }
    }
    for (i, s) in obj.slots.iter().enumerate() {
        let name = &obj.fields[s.field].name;
        if let (true, Some(Value::Seq(items))) = (s.many(), find.get(name, i)) {
            if items.len() as u64 != s.total {
                return Err(Error::new(
                    ErrorKind::Usage,
                    format!(
                        "sequence has {} elements, the description {}",
                        items.len(),
                        s.total
                    ),
                )
                .in_field(name));
            }
        }
    }
    for (i, s) in obj.subsections.iter().enumerate() {
        let v = find.get(&s.vmsd_name, obj.slots.len() + i).ok_or_else(|| {
            Error::new(ErrorKind::Usage, "missing subsection").in_field(&s.vmsd_name)
        })?;
        let len = u8::try_from(s.vmsd_name.len()).map_err(|_| {
            Error::new(ErrorKind::Usage, "subsection name longer than 255 bytes")
                .in_field(&s.vmsd_name)
        })?;
        out.push(0x05);
        out.push(len);
        out.extend_from_slice(s.vmsd_name.as_bytes());
        out.extend_from_slice(&s.version.to_be_bytes());
        encode(s, v, out).map_err(|e| e.in_field(&s.vmsd_name))?;
    }
    if fields.len() != obj.slots.len() + obj.subsections.len() {
        let described: std::collections::HashSet<&str> = obj
            .slots
            .iter()
            .map(|s| obj.fields[s.field].name.as_str())
            .chain(obj.subsections.iter().map(|s| s.vmsd_name.as_str()))
            .collect();
        let extra = fields
            .iter()
            .find(|(n, _)| !described.contains(n.as_str()))
            .map_or("?", |(n, _)| n.as_str());
        return Err(Error::new(
            ErrorKind::Usage,
            format!(
                "field {extra:?} is not in the description of {:?}",
                obj.vmsd_name
            ),
        ));
    }
    Ok(())
}

fn encode_leaf(v: &Value, out: &mut Vec<u8>) -> Result<()> {
    match v {
        Value::Bool(b) => out.push(u8::from(*b)),
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.extend_from_slice(&x.to_be_bytes()),
        Value::U16(x) => out.extend_from_slice(&x.to_be_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_be_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_be_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_be_bytes()),
        Value::U64(x) => out.extend_from_slice(&x.to_be_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_be_bytes()),
        Value::Bytes(b) => out.extend_from_slice(b),
        Value::Unit => out.push(b'0'),
        other => {
            return Err(Error::new(
                ErrorKind::Usage,
                format!("a {} cannot stand for a QEMU field", other.type_name()),
            ))
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim() -> Limits {
        Limits::default().with_max_depth(64)
    }

    const DESC: &str = r#"{"page_size": 4096, "devices": [
        {"name": "slirp", "instance_id": 0, "size": 3, "fields": [{"name": "data", "size": 3, "type": "buffer"}]},
        {"name": "hpet", "instance_id": 0, "vmsd_name": "hpet", "version": 2, "fields": [
            {"name": "config", "type": "uint64", "size": 8},
            {"name": "flag", "type": "bool", "size": 1},
            {"name": "timer", "array_len": 2, "type": "struct", "struct": {"vmsd_name": "hpet_timer", "version": 1, "fields": [
                {"name": "tn", "type": "uint8", "size": 1}, {"name": "cmp", "type": "int32", "size": 4}]}, "size": 5},
            {"name": "regs", "index": 0, "type": "uint16", "size": 2},
            {"name": "regs", "index": 1, "type": "uint16", "size": 2},
            {"name": "blob", "type": "buffer", "size": 3}
        ], "subsections": [{"vmsd_name": "hpet/rtc", "version": 1, "fields": [{"name": "irq", "type": "int8", "size": 1}]}]}
    ]}"#;

    fn body() -> Vec<u8> {
        let mut b = vec![0, 0, 0, 0, 0, 0, 1, 2, 1];
        b.extend_from_slice(&[7, 0xff, 0xff, 0xff, 0xfe, 8, 0, 0, 0, 3]);
        b.extend_from_slice(&[0x12, 0x34, 0xab, 0xcd, b'x', b'y', b'z']);
        b.extend_from_slice(&[5, 8]);
        b.extend_from_slice(b"hpet/rtc");
        b.extend_from_slice(&[0, 0, 0, 1, 0xfb]);
        b
    }

    #[test]
    fn decode_names_fields_and_encode_gives_the_bytes_back() {
        let d = Vmdesc::parse(DESC.as_bytes(), 64).unwrap();
        assert_eq!(d.devices.len(), 2);
        assert!(d.devices[0].vmsd.is_none());
        let obj = d.devices[1].vmsd.as_ref().unwrap();
        let b = body();
        assert_eq!(obj.body_len(), b.len() as u64);
        let v = decode(obj, &b, &lim()).unwrap();
        assert_eq!(v.field("config"), Some(&Value::U64(0x102)));
        assert_eq!(v.field("flag"), Some(&Value::Bool(true)));
        assert_eq!(v.at_path("timer[1].cmp"), Some(&Value::I32(3)));
        assert_eq!(v.at_path("timer[0].cmp"), Some(&Value::I32(-2)));
        assert_eq!(v.at_path("regs[1]"), Some(&Value::U16(0xabcd)));
        assert_eq!(
            v.field("hpet/rtc").and_then(|s| s.field("irq")),
            Some(&Value::I8(-5))
        );
        let mut out = Vec::new();
        encode(obj, &v, &mut out).unwrap();
        assert_eq!(out, b);
    }

    #[test]
    fn wrong_bodies_name_the_field() {
        let d = Vmdesc::parse(DESC.as_bytes(), 64).unwrap();
        let obj = d.devices[1].vmsd.as_ref().unwrap();
        let mut b = body();
        let n = b.len();
        b[n - 6] = b'X'; // subsection name
        let e = decode(obj, &b, &lim()).unwrap_err();
        assert!(e.to_string().contains("hpet/rtc"), "{e}");
        // cut inside the array: its elements do not fit what is left
        let e = decode(obj, &body()[..12], &lim()).unwrap_err();
        assert_eq!(e.location().field.as_deref(), Some("timer"), "{e}");
        assert_eq!(e.location().offset, Some(9), "{e}");
        // a wrong subsection version is named with its offset
        let mut b = body();
        let n = b.len();
        b[n - 2] = 2;
        let e = decode(obj, &b, &lim()).unwrap_err();
        assert_eq!(e.location().offset, Some(n as u64 - 15), "{e}");
        let mut long = body();
        long.push(0);
        assert!(decode(obj, &long, &lim()).is_err());
    }

    #[test]
    fn trailer_is_found_exactly() {
        let mut s = b"QEVM\0\0\0\x03junk\x00".to_vec();
        let json = br#"{"page_size": 4096, "devices": []}"#;
        let p = s.len();
        s.push(6);
        s.extend_from_slice(&(json.len() as u32).to_be_bytes());
        s.extend_from_slice(json);
        assert_eq!(find_trailer(&s), Some(p));
        assert_eq!(find_trailer(&s[..s.len() - 1]), None);
    }

    #[test]
    fn hostile_descriptions_are_errors() {
        for j in [
            "[]",
            "{}",
            r#"{"page_size": 3, "devices": []}"#,
            r#"{"page_size": 4096, "devices": [{"name": 1}]}"#,
            r#"{"page_size": 4096, "devices": [{"name": "a", "instance_id": 0, "vmsd_name": "a", "version": 1}]}"#,
        ] {
            assert!(Vmdesc::parse(j.as_bytes(), 64).is_err(), "{j}");
        }
        let mut deep = String::from(
            r#"{"page_size": 4096, "devices": [{"name": "a", "instance_id": 0, "vmsd_name": "a", "version": 1, "fields": ["#,
        );
        for _ in 0..40 {
            deep.push_str(r#"{"name": "s", "type": "struct", "size": 0, "struct": {"vmsd_name": "s", "version": 1, "fields": ["#);
        }
        for _ in 0..40 {
            deep.push_str("]}}");
        }
        deep.push_str("]}]}");
        assert!(Vmdesc::parse(deep.as_bytes(), 16).is_err());
        assert!(Vmdesc::parse(deep.as_bytes(), 64).is_ok());
    }
}
