//! The schema model: what a device type's state looks like at one version.
//!
//! A [`Schema`] is a set of [`DeviceSchema`]s, each a [`StructTy`]: the
//! version written, the oldest version the type still loads, and the fields
//! in wire order, each with its [`Ty`], its size where known, the version that
//! added it, whether it is conditional, and its default. Subsections (QEMU's
//! optional trailing parts) are kept apart from the fields, so a subsection
//! and a field may share a name.
//!
//! Schemas come from QEMU's `-dump-vmstate` JSON ([`Schema::from_dump`]), a
//! stream's vmdesc ([`Schema::from_vmdesc`]), a vmstream stream's `schema` and
//! `device` records ([`Schema::from_vmstream`]) and Rust device types
//! ([`StructTy::of_value`]). All input is hostile: errors name where and what
//! was expected, nesting is bounded before any recursion, and nothing is sized
//! from a declared count.

use std::fmt;

use serde_json::Value as Json;
use vmstream::{Error, ErrorKind, Limits, Result, Value};

/// Most levels of nesting an imported description may have.
pub const MAX_DEPTH: u32 = 64;

/// Largest dump or vmdesc text accepted, in bytes.
pub const MAX_JSON: usize = 64 << 20;

/// A field's type.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Ty {
    /// `true`/`false` (one byte in QEMU streams).
    Bool,
    /// An integer of this width (8, 16, 32, 64) and signedness.
    Int {
        /// Width in bits.
        bits: u8,
        /// Signed (two's complement).
        signed: bool,
    },
    /// IEEE 754 single precision.
    F32,
    /// IEEE 754 double precision.
    F64,
    /// A byte string; `Some(n)` when its length is fixed.
    Bytes(Option<u64>),
    /// A UTF-8 string.
    String,
    /// The unit value.
    Unit,
    /// A field known only by its size on the wire (a `-dump-vmstate` field
    /// without a nested description, or a QEMU type kept as bytes), with
    /// QEMU's type name when known.
    Raw(Option<String>),
    /// A nested struct.
    Struct(Box<StructTy>),
    /// A sequence; `Some(n)` when its length is fixed.
    Seq(Box<Ty>, Option<u64>),
    /// An optional value.
    Option(Box<Ty>),
    /// An enum with these variants (empty: not known).
    Enum(Vec<String>),
    /// A map.
    Map(Box<Ty>, Box<Ty>),
    /// Anything.
    Any,
}

/// One field of a struct.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// Its name (QEMU names may hold `.` and `[k]`: a name is one path segment).
    pub name: String,
    /// Its type.
    pub ty: Ty,
    /// Bytes on the wire, where known (QEMU: size × count).
    pub size: Option<u64>,
    /// The version of the enclosing struct that added it (QEMU's field
    /// `version_id`): a stream of an older version does not hold it.
    pub since: u32,
    /// Present only when a runtime test says so (QEMU's `field_exists`).
    pub conditional: bool,
    /// The value a stream without the field stands for.
    pub default: Option<Value>,
}

/// A struct: a version and fields in wire order, then optional subsections.
#[derive(Debug, Clone, PartialEq)]
pub struct StructTy {
    /// QEMU's vmsd name, or the Rust type's name; `None` for anonymous structs.
    pub name: Option<String>,
    /// The version written.
    pub version: u32,
    /// The oldest version that loads (QEMU's `minimum_version_id`).
    pub minimum_version: u32,
    /// Fields in wire order (names may repeat in QEMU descriptions).
    pub fields: Vec<Field>,
    /// Subsections, each sent only when needed.
    pub subsections: Vec<StructTy>,
}

/// One device type's schema.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceSchema {
    /// The key devices are matched by: the dump's section name (QOM type),
    /// the stream's device type, or the vmdesc's idstr.
    pub key: String,
    /// The instance (vmdesc: idstr and instance id), when known.
    pub instance: Option<String>,
    /// The description.
    pub ty: StructTy,
}

/// Where a schema came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Source {
    /// QEMU's `-dump-vmstate` JSON.
    Dump,
    /// A QEMU stream's vmdesc (or its JSON).
    Vmdesc,
    /// A vmstream stream.
    Vmstream,
    /// Built in Rust.
    Rust,
}

impl Source {
    /// Name for output.
    pub fn name(self) -> &'static str {
        match self {
            Source::Dump => "qemu-dump-vmstate",
            Source::Vmdesc => "qemu-vmdesc",
            Source::Vmstream => "vmstream",
            Source::Rust => "rust",
        }
    }
}

/// A set of device schemas.
#[derive(Debug, Clone, PartialEq)]
pub struct Schema {
    /// Where it came from.
    pub source: Source,
    /// The machine type (dumps), when known.
    pub machine: Option<String>,
    /// Devices in input order.
    pub devices: Vec<DeviceSchema>,
    /// Whether array fields say their element count. QEMU 7.2's dumps do not
    /// (a field's size is one element's), so sizes compared with such a dump
    /// are element sizes.
    pub array_counts: bool,
}

fn bad(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Malformed, msg.into())
}

/// A path for messages: segments joined with `.`, a segment that holds `.`,
/// `[`, `]`, `"` or spaces quoted, so `core.itr_guest_value` (one QEMU name)
/// and `core` → `itr_guest_value` (two levels) read differently.
pub fn path_text(segments: &[String]) -> String {
    let mut out = String::new();
    for (i, s) in segments.iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        push_segment(&mut out, s);
    }
    out
}

pub(crate) fn push_segment(out: &mut String, s: &str) {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '/' | ':'));
    if plain {
        out.push_str(s);
    } else {
        out.push('"');
        for c in s.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    }
}

/// Refuses JSON text nested deeper than `max` (arrays and objects), before a
/// recursive parser sees it.
pub(crate) fn check_json_depth(text: &[u8], max: u32, what: &str) -> Result<()> {
    let (mut depth, mut in_str, mut esc) = (0u32, false, false);
    for (i, &b) in text.iter().enumerate() {
        if in_str {
            if esc {
                esc = false;
            } else if b == b'\\' {
                esc = true;
            } else if b == b'"' {
                in_str = false;
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return Err(Error::new(
                        ErrorKind::LimitExceeded,
                        format!("{what}: nested more than {max} levels deep at byte {i}"),
                    ));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

fn parse_json(text: &[u8], what: &str) -> Result<Json> {
    if text.len() > MAX_JSON {
        return Err(Error::new(
            ErrorKind::LimitExceeded,
            format!("{what}: {} bytes; at most {MAX_JSON} are read", text.len()),
        ));
    }
    // objects nest two levels per description level (Fields, the field)
    check_json_depth(text, 2 * MAX_DEPTH + 4, what)?;
    serde_json::from_slice(text).map_err(|e| bad(format!("{what}: not JSON: {e}")))
}

/// Walks a JSON tree naming where it is, for errors.
struct At<'a> {
    json: &'a Json,
    path: String,
}

impl<'a> At<'a> {
    fn key(&self, k: &str) -> String {
        let mut p = self.path.clone();
        p.push('.');
        push_segment(&mut p, k);
        p
    }
    fn get(&self, k: &str) -> Result<At<'a>> {
        self.opt(k)?
            .ok_or_else(|| bad(format!("{}: expected a member {k:?}", self.path)))
    }
    fn opt(&self, k: &str) -> Result<Option<At<'a>>> {
        let Json::Object(m) = self.json else {
            return Err(bad(format!("{}: expected an object", self.path)));
        };
        Ok(m.get(k).map(|json| At {
            json,
            path: self.key(k),
        }))
    }
    fn str(&self) -> Result<&'a str> {
        self.json
            .as_str()
            .ok_or_else(|| bad(format!("{}: expected a string", self.path)))
    }
    fn u64(&self) -> Result<u64> {
        self.json.as_u64().ok_or_else(|| {
            bad(format!(
                "{}: expected a non-negative integer, found {}",
                self.path,
                kind(self.json)
            ))
        })
    }
    fn u32(&self) -> Result<u32> {
        let v = self.u64()?;
        u32::try_from(v).map_err(|_| bad(format!("{}: {v} is beyond u32", self.path)))
    }
    fn bool(&self) -> Result<bool> {
        self.json
            .as_bool()
            .ok_or_else(|| bad(format!("{}: expected true or false", self.path)))
    }
    fn array(&self) -> Result<Vec<At<'a>>> {
        let Json::Array(a) = self.json else {
            return Err(bad(format!(
                "{}: expected an array, found {}",
                self.path,
                kind(self.json)
            )));
        };
        Ok(a.iter()
            .enumerate()
            .map(|(i, json)| At {
                json,
                path: format!("{}[{i}]", self.path),
            })
            .collect())
    }
}

fn kind(j: &Json) -> &'static str {
    match j {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

impl Schema {
    /// Imports QEMU's `qemu-system-* -dump-vmstate FILE` JSON (QEMU 7.2 to 10.x).
    pub fn from_dump(text: &[u8]) -> Result<Schema> {
        let json = parse_json(text, "dump")?;
        let Json::Object(top) = &json else {
            return Err(bad("dump: expected an object of sections at the top"));
        };
        let mut schema = Schema {
            source: Source::Dump,
            machine: None,
            devices: Vec::new(),
            array_counts: false,
        };
        for (key, entry) in top {
            let at = At {
                json: entry,
                path: {
                    let mut p = String::from("dump: ");
                    push_segment(&mut p, key);
                    p
                },
            };
            if key == "vmschkmachine" {
                schema.machine = Some(at.get("Name")?.str()?.to_owned());
                continue;
            }
            let version = at.get("version_id")?.u32()?;
            let minimum = match at.opt("minimum_version_id")? {
                Some(m) => m.u32()?,
                None => 0,
            };
            let mut ty = match at.opt("Description")? {
                Some(d) => dump_struct(&d, 1)?,
                None => StructTy {
                    name: None,
                    version,
                    minimum_version: minimum,
                    fields: Vec::new(),
                    subsections: Vec::new(),
                },
            };
            ty.version = version;
            ty.minimum_version = minimum;
            schema.array_counts |= has_num(&ty);
            schema.devices.push(DeviceSchema {
                key: key.clone(),
                instance: None,
                ty,
            });
        }
        Ok(schema)
    }

    /// Imports a vmdesc: the JSON text, or a whole QEMU stream ending in one.
    pub fn from_vmdesc(data: &[u8], limits: &Limits) -> Result<Schema> {
        let json = if data.starts_with(&vmstream_qemu::MAGIC) {
            vmstream_qemu::vmdesc_from(data)?
        } else {
            data.to_vec()
        };
        let limits = limits.with_max_depth(limits.max_depth.min(2 * MAX_DEPTH));
        let desc = vmstream_qemu::vmdesc::Vmdesc::parse_limited(&json, &limits)?;
        let devices = desc
            .devices
            .iter()
            .map(|d| DeviceSchema {
                key: d.name.clone(),
                instance: Some(format!("{} instance {}", d.name, d.instance_id)),
                ty: match &d.vmsd {
                    Some(o) => vmdesc_struct(o),
                    None => StructTy {
                        name: None,
                        version: 0,
                        minimum_version: 0,
                        fields: vec![Field {
                            name: "(legacy body)".into(),
                            ty: Ty::Bytes(Some(d.size)),
                            size: Some(d.size),
                            since: 0,
                            conditional: false,
                            default: None,
                        }],
                        subsections: Vec::new(),
                    },
                },
            })
            .collect();
        Ok(Schema {
            source: Source::Vmdesc,
            machine: None,
            devices,
            array_counts: true,
        })
    }

    /// The schema of a vmstream stream: its `schema` records, and for device
    /// types without one, the shape of their first `device` record. A stream
    /// converted from QEMU gives its vmdesc's schema.
    pub fn from_vmstream<R: std::io::Read>(input: R, limits: Limits) -> Result<Schema> {
        use vmstream::Record;
        let mut r = vmstream::StreamReader::new(input, limits)?;
        let mut devices: Vec<DeviceSchema> = Vec::new();
        let mut declared: Vec<(String, u32)> = Vec::new();
        while let Some(item) = r.next()? {
            match item.record {
                Record::Schema(s) => {
                    let ty = from_description(&s.schema).map_err(|e| {
                        bad(format!("schema of {:?}: {}", s.type_name, e.message()))
                    })?;
                    let mut st = match ty {
                        Ty::Struct(st) => *st,
                        other => StructTy {
                            name: None,
                            version: 0,
                            minimum_version: 0,
                            fields: vec![Field::new("value", other)],
                            subsections: Vec::new(),
                        },
                    };
                    st.name = Some(s.type_name.clone());
                    st.version = s.version;
                    declared.push((s.type_name.clone(), s.version));
                    devices.retain(|d| !(d.key == s.type_name && d.ty.version == s.version));
                    devices.push(DeviceSchema {
                        key: s.type_name,
                        instance: None,
                        ty: st,
                    });
                }
                Record::Device(d) => {
                    let known = declared
                        .iter()
                        .any(|(t, v)| *t == d.type_name && *v == d.version)
                        || devices
                            .iter()
                            .any(|x| x.key == d.type_name && x.ty.version == d.version);
                    if !known {
                        let mut st = StructTy::of_value(&d.value);
                        st.name = Some(d.type_name.clone());
                        st.version = d.version;
                        devices.push(DeviceSchema {
                            key: d.type_name,
                            instance: Some(format!("{} instance {}", d.name, d.instance_id)),
                            ty: st,
                        });
                    }
                }
                Record::Other(raw) if raw.kind == vmstream_qemu::mapping::kinds::VMDESC => {
                    let mut s = Schema::from_vmdesc(raw.body, &limits)?;
                    s.devices.extend(devices);
                    return Ok(s);
                }
                _ => {}
            }
        }
        Ok(Schema {
            source: Source::Vmstream,
            machine: None,
            devices,
            array_counts: true,
        })
    }

    /// Reads any of the three: a vmstream stream, a QEMU stream (its vmdesc),
    /// a `-dump-vmstate` JSON or a vmdesc JSON (told apart by their contents).
    pub fn from_bytes(data: &[u8], limits: Limits) -> Result<Schema> {
        if data.starts_with(&vmstream_qemu::MAGIC) {
            return Schema::from_vmdesc(data, &limits);
        }
        if data.starts_with(&vmstream::header::MAGIC) {
            return Schema::from_vmstream(data, limits);
        }
        let text = data.trim_ascii_start();
        if !text.starts_with(b"{") {
            return Err(bad(
                "neither a vmstream stream, a QEMU stream, a -dump-vmstate JSON nor a vmdesc JSON",
            ));
        }
        // a vmdesc has "page_size" and "devices" at the top; a dump has sections
        check_json_depth(text, 2 * MAX_DEPTH + 4, "input")?;
        let looks_vmdesc = serde_json::from_slice::<Json>(text)
            .ok()
            .is_some_and(|j| j.get("devices").is_some_and(Json::is_array));
        if looks_vmdesc {
            Schema::from_vmdesc(text, &limits)
        } else {
            Schema::from_dump(text)
        }
    }

    /// The device with this key.
    pub fn device(&self, key: &str) -> Option<&DeviceSchema> {
        self.devices.iter().find(|d| d.key == key)
    }
}

fn has_num(s: &StructTy) -> bool {
    s.fields.iter().any(|f| match &f.ty {
        Ty::Seq(..) => true,
        Ty::Struct(n) => has_num(n),
        _ => false,
    }) || s.subsections.iter().any(has_num)
}

fn dump_struct(at: &At<'_>, depth: u32) -> Result<StructTy> {
    if depth > MAX_DEPTH {
        return Err(Error::new(
            ErrorKind::LimitExceeded,
            format!(
                "{}: descriptions nest more than {MAX_DEPTH} levels",
                at.path
            ),
        ));
    }
    let name = at.get("name")?.str()?.to_owned();
    let version = at.get("version_id")?.u32()?;
    let minimum_version = match at.opt("minimum_version_id")? {
        Some(m) => m.u32()?,
        None => 0,
    };
    let mut fields = Vec::new();
    if let Some(fs) = at.opt("Fields")? {
        for f in fs.array()? {
            let fname = f.get("field")?.str()?.to_owned();
            let since = f.get("version_id")?.u32()?;
            let conditional = match f.opt("field_exists")? {
                Some(e) => e.bool()?,
                None => false,
            };
            let elem = f.get("size")?.u64()?;
            // QEMU 10.x says how many elements an array has; 7.2 gives the
            // element size alone
            let num = match f.opt("num")? {
                Some(n) => Some(n.u64()?),
                None => None,
            };
            let size = elem.saturating_mul(num.unwrap_or(1));
            let one = match f.opt("Description")? {
                Some(d) => Ty::Struct(Box::new(dump_struct(&d, depth + 1)?)),
                None => Ty::Raw(None),
            };
            let ty = match num {
                Some(n) if n != 1 => Ty::Seq(Box::new(one), Some(n)),
                _ => one,
            };
            fields.push(Field {
                name: fname,
                ty,
                size: Some(size),
                since,
                conditional,
                default: None,
            });
        }
    }
    let mut subsections = Vec::new();
    if let Some(ss) = at.opt("Subsections")? {
        for s in ss.array()? {
            subsections.push(dump_struct(&s, depth + 1)?);
        }
    }
    Ok(StructTy {
        name: Some(name),
        version,
        minimum_version,
        fields,
        subsections,
    })
}

/// The type a QEMU vmdesc type name stands for.
pub fn qemu_leaf_ty(ty: &str, size: u64) -> Ty {
    let int = |bits, signed| Ty::Int { bits, signed };
    match ty {
        "bool" => Ty::Bool,
        "uint8" | "uint8 equal" => int(8, false),
        "uint16" | "uint16 equal" => int(16, false),
        "uint32" | "uint32 equal" => int(32, false),
        "uint64" | "int64 equal" | "CPU_Double_U" => int(64, false),
        "int8" => int(8, true),
        "int16" => int(16, true),
        "int32" | "int32 equal" | "int32 le" => int(32, true),
        "int64" => int(64, true),
        "buffer" | "uint8 buffer" => Ty::Bytes(Some(size)),
        "nullptr" => Ty::Unit,
        other => Ty::Raw(Some(other.to_owned())),
    }
}

fn vmdesc_struct(o: &vmstream_qemu::vmdesc::Obj) -> StructTy {
    StructTy {
        name: Some(o.vmsd_name.clone()),
        version: o.version,
        minimum_version: 0,
        fields: o
            .fields
            .iter()
            .map(|f| {
                let one = match &f.nested {
                    Some(n) => Ty::Struct(Box::new(vmdesc_struct(n))),
                    None => qemu_leaf_ty(&f.ty, f.size),
                };
                let ty = if f.count > 1 {
                    Ty::Seq(Box::new(one), Some(f.count))
                } else {
                    one
                };
                Field {
                    name: f.name.clone(),
                    ty,
                    size: Some(f.size.saturating_mul(f.count)),
                    since: 0,
                    conditional: false,
                    default: None,
                }
            })
            .collect(),
        subsections: o.subsections.iter().map(vmdesc_struct).collect(),
    }
}

impl Field {
    /// A field of this type, there since version 0, with no default.
    pub fn new(name: impl Into<String>, ty: Ty) -> Field {
        let size = ty.fixed_size();
        Field {
            name: name.into(),
            ty,
            size,
            since: 0,
            conditional: false,
            default: None,
        }
    }

    /// Added in `version`.
    pub fn since(mut self, version: u32) -> Field {
        self.since = version;
        self
    }

    /// Stands for `value` where absent.
    pub fn default(mut self, value: Value) -> Field {
        self.default = Some(value);
        self
    }
}

impl Ty {
    /// The type of one scalar value (containers give their shape).
    pub fn of_value(v: &Value) -> Ty {
        let int = |bits, signed| Ty::Int { bits, signed };
        match v {
            Value::Bool(_) => Ty::Bool,
            Value::U8(_) => int(8, false),
            Value::U16(_) => int(16, false),
            Value::U32(_) => int(32, false),
            Value::U64(_) => int(64, false),
            Value::I8(_) => int(8, true),
            Value::I16(_) => int(16, true),
            Value::I32(_) => int(32, true),
            Value::I64(_) => int(64, true),
            Value::F32(_) => Ty::F32,
            Value::F64(_) => Ty::F64,
            Value::Bytes(_) => Ty::Bytes(None),
            Value::String(_) => Ty::String,
            Value::Unit => Ty::Unit,
            Value::Struct(_) => Ty::Struct(Box::new(StructTy::of_value(v))),
            Value::Seq(items) => {
                let first = items.first().map(Ty::of_value);
                let elem = match first {
                    Some(t) if items.iter().skip(1).all(|i| Ty::of_value(i) == t) => t,
                    _ => Ty::Any,
                };
                Ty::Seq(Box::new(elem), None)
            }
            Value::Option(inner) => {
                Ty::Option(Box::new(inner.as_deref().map_or(Ty::Any, Ty::of_value)))
            }
            Value::Enum(..) => Ty::Enum(Vec::new()),
            Value::Map(_) => Ty::Map(Box::new(Ty::Any), Box::new(Ty::Any)),
            _ => Ty::Any,
        }
    }

    /// Bytes on a QEMU wire, when fixed.
    pub fn fixed_size(&self) -> Option<u64> {
        match self {
            Ty::Bool => Some(1),
            Ty::Int { bits, .. } => Some(u64::from(*bits / 8)),
            Ty::F32 => Some(4),
            Ty::F64 => Some(8),
            Ty::Bytes(n) => *n,
            Ty::Unit => Some(0),
            Ty::Struct(s) => s
                .fields
                .iter()
                .try_fold(0u64, |a, f| Some(a.saturating_add(f.size?))),
            Ty::Seq(e, Some(n)) => e.fixed_size().map(|s| s.saturating_mul(*n)),
            _ => None,
        }
    }

    /// The type's name in text output: `u32`, `bytes[16]`, `struct Fifo8`, ...
    pub fn label(&self) -> String {
        match self {
            Ty::Bool => "bool".into(),
            Ty::Int { bits, signed } => format!("{}{bits}", if *signed { 'i' } else { 'u' }),
            Ty::F32 => "f32".into(),
            Ty::F64 => "f64".into(),
            Ty::Bytes(Some(n)) => format!("bytes[{n}]"),
            Ty::Bytes(None) => "bytes".into(),
            Ty::String => "string".into(),
            Ty::Unit => "unit".into(),
            Ty::Raw(Some(t)) => t.clone(),
            Ty::Raw(None) => "raw".into(),
            Ty::Struct(s) => match &s.name {
                Some(n) => format!("struct {n}"),
                None => "struct".into(),
            },
            Ty::Seq(e, Some(n)) => format!("[{}; {n}]", e.label()),
            Ty::Seq(e, None) => format!("[{}]", e.label()),
            Ty::Option(e) => format!("option<{}>", e.label()),
            Ty::Enum(v) if v.is_empty() => "enum".into(),
            Ty::Enum(v) => format!("enum {{{}}}", v.join(", ")),
            Ty::Map(k, v) => format!("map<{}, {}>", k.label(), v.label()),
            Ty::Any => "any".into(),
        }
    }

    /// Whether a type is known (not `raw` or `any`), so two types can be compared.
    pub fn known(&self) -> bool {
        match self {
            Ty::Raw(None) | Ty::Any => false,
            Ty::Seq(e, _) | Ty::Option(e) => e.known(),
            _ => true,
        }
    }
}

impl StructTy {
    /// The shape of a value (a Rust device type's state through serde, e.g.
    /// `vmstream::to_value(&State::default())`): field names and types in
    /// order, version 0. Sequences take their first element's type, `None`
    /// gives `option<any>`; declare those by hand where it matters.
    pub fn of_value(v: &Value) -> StructTy {
        let fields = match v {
            Value::Struct(fs) => fs
                .iter()
                .map(|(n, v)| Field::new(n.clone(), Ty::of_value(v)))
                .collect(),
            other => vec![Field::new("value", Ty::of_value(other))],
        };
        StructTy {
            name: None,
            version: 0,
            minimum_version: 0,
            fields,
            subsections: Vec::new(),
        }
    }

    /// The schema of a Rust device type at `version`, traced from a
    /// representative value through serde (`Default::default()` is usual):
    /// field names and exact integer widths in order. An empty sequence or a
    /// `None` gives `any` for its element; declare those with [`Field`] where
    /// it matters.
    pub fn of<T: serde::Serialize>(name: &str, version: u32, sample: &T) -> Result<StructTy> {
        let mut st = StructTy::of_value(&vmstream::to_value(sample)?);
        st.name = Some(name.to_owned());
        st.version = version;
        Ok(st)
    }

    /// The `schema` record of this struct as device type `type_name`.
    pub fn to_record(&self, type_name: &str) -> vmstream::record::SchemaRecord {
        vmstream::record::SchemaRecord {
            type_name: type_name.to_owned(),
            version: self.version,
            schema: self.to_description(),
        }
    }

    /// Checks that a state value fits this schema: fields by name, in any
    /// order; a field may be missing when it has a default, is conditional or
    /// came after this version; a field the schema does not know is refused;
    /// subsections are optional fields named by the subsection. The error
    /// names the field path (QEMU names with `.` or `[` quoted).
    pub fn check(&self, v: &Value) -> Result<()> {
        let mut path = Vec::new();
        self.check_at(v, &mut path, 0)
    }

    fn check_at(&self, v: &Value, path: &mut Vec<String>, depth: u32) -> Result<()> {
        let fail = |path: &[String], msg: String| {
            Error::new(
                ErrorKind::Incompatible,
                if path.is_empty() {
                    msg
                } else {
                    format!("{}: {msg}", path_text(path))
                },
            )
        };
        if depth > 2 * MAX_DEPTH {
            return Err(fail(path, "nested too deeply".into()));
        }
        let Value::Struct(fs) = v else {
            return Err(fail(
                path,
                format!("expected a struct, found {}", v.type_name()),
            ));
        };
        for (name, val) in fs {
            path.push(name.clone());
            if let Some(f) = self.fields.iter().find(|f| f.name == *name) {
                check_ty(&f.ty, val, path, depth + 1)?;
            } else if let Some(sub) = self
                .subsections
                .iter()
                .find(|s| s.name.as_deref() == Some(name.as_str()))
            {
                match val {
                    Value::Option(None) => {}
                    Value::Option(Some(inner)) => sub.check_at(inner, path, depth + 1)?,
                    other => sub.check_at(other, path, depth + 1)?,
                }
            } else {
                return Err(fail(
                    path,
                    format!("not a field of version {} of this type", self.version),
                ));
            }
            path.pop();
        }
        for f in &self.fields {
            let present = fs.iter().any(|(n, _)| *n == f.name);
            if !present && f.default.is_none() && !f.conditional && f.since <= self.version {
                path.push(f.name.clone());
                return Err(fail(
                    path,
                    format!(
                        "missing: version {} has it since {} and no default",
                        self.version, f.since
                    ),
                ));
            }
        }
        Ok(())
    }

    /// A struct of these fields at `version`.
    pub fn new(name: impl Into<String>, version: u32, fields: Vec<Field>) -> StructTy {
        StructTy {
            name: Some(name.into()),
            version,
            minimum_version: 0,
            fields,
            subsections: Vec::new(),
        }
    }

    /// The format's schema-record description of this struct (docs/format.md
    /// §4.3): the layout of the version written. Subsections become
    /// `option` fields named by the subsection.
    pub fn to_description(&self) -> Value {
        let mut fs: Vec<(String, Value)> = Vec::new();
        for f in &self.fields {
            if fs.iter().any(|(n, _)| *n == f.name) {
                continue; // QEMU repeats names; the value model folds them into one
            }
            fs.push((f.name.clone(), f.ty.to_description()));
        }
        for s in &self.subsections {
            let name = s.name.clone().unwrap_or_default();
            if fs.iter().any(|(n, _)| *n == name) {
                continue;
            }
            fs.push((
                name,
                Value::Enum(
                    "option".into(),
                    Box::new(Ty::Struct(Box::new(s.clone())).to_description()),
                ),
            ));
        }
        Value::Enum("struct".into(), Box::new(Value::Struct(fs)))
    }
}

impl Ty {
    /// The format's description of this type (docs/format.md §4.3).
    pub fn to_description(&self) -> Value {
        let s = |t: &str| Value::String(t.into());
        let e = |k: &str, v: Value| Value::Enum(k.into(), Box::new(v));
        match self {
            Ty::Bool => s("bool"),
            Ty::Int { .. } => s(&self.label()),
            Ty::F32 => s("f32"),
            Ty::F64 => s("f64"),
            Ty::Bytes(_) => s("bytes"),
            Ty::String => s("string"),
            Ty::Unit => s("unit"),
            Ty::Raw(_) | Ty::Any => s("any"),
            Ty::Struct(st) => st.to_description(),
            Ty::Seq(el, _) => e("seq", el.to_description()),
            Ty::Option(el) => e("option", el.to_description()),
            Ty::Enum(_) => e("enum", s("any")),
            Ty::Map(k, v) => e(
                "map",
                Value::Seq(vec![k.to_description(), v.to_description()]),
            ),
        }
    }
}

fn check_ty(t: &Ty, v: &Value, path: &mut Vec<String>, depth: u32) -> Result<()> {
    let fail = |path: &[String], expected: &str| {
        Error::new(
            ErrorKind::Incompatible,
            format!(
                "{}: expected {expected}, found {}",
                path_text(path),
                v.type_name()
            ),
        )
    };
    match (t, v) {
        (Ty::Any | Ty::Raw(_), _) => Ok(()),
        (Ty::Struct(st), _) => st.check_at(v, path, depth),
        (Ty::Seq(el, n), Value::Seq(items)) => {
            if let Some(n) = n {
                if items.len() as u64 != *n {
                    return Err(fail(path, &format!("{n} elements ({} here)", items.len())));
                }
            }
            for (i, it) in items.iter().enumerate() {
                if let Some(last) = path.last_mut() {
                    let base = last.split('[').next().unwrap_or_default().to_owned();
                    *last = format!("{base}[{i}]");
                }
                check_ty(el, it, path, depth + 1)?;
            }
            Ok(())
        }
        (Ty::Bytes(_), Value::Bytes(_)) | (Ty::Bytes(_), Value::Seq(_)) => Ok(()),
        (Ty::Option(_), Value::Option(None)) => Ok(()),
        (Ty::Option(el), Value::Option(Some(inner))) => check_ty(el, inner, path, depth + 1),
        (Ty::Enum(_), Value::Enum(..)) | (Ty::Map(..), Value::Map(_)) => Ok(()),
        _ => {
            if Ty::of_value(v) == *t {
                Ok(())
            } else {
                Err(fail(path, &t.label()))
            }
        }
    }
}

/// A schema-record description (docs/format.md §4.3) as a type.
pub fn from_description(d: &Value) -> Result<Ty> {
    from_description_at(d, 0)
}

fn from_description_at(d: &Value, depth: u32) -> Result<Ty> {
    if depth > 2 * MAX_DEPTH {
        return Err(Error::new(
            ErrorKind::LimitExceeded,
            "description nests too deeply",
        ));
    }
    let int = |bits, signed| Ty::Int { bits, signed };
    Ok(match d {
        Value::String(t) => match t.as_str() {
            "bool" => Ty::Bool,
            "u8" => int(8, false),
            "u16" => int(16, false),
            "u32" => int(32, false),
            "u64" => int(64, false),
            "i8" => int(8, true),
            "i16" => int(16, true),
            "i32" => int(32, true),
            "i64" => int(64, true),
            "f32" => Ty::F32,
            "f64" => Ty::F64,
            "bytes" => Ty::Bytes(None),
            "string" => Ty::String,
            "unit" => Ty::Unit,
            "any" => Ty::Any,
            other => return Err(bad(format!("unknown scalar type {other:?}"))),
        },
        Value::Enum(k, inner) => match (k.as_str(), &**inner) {
            ("struct", Value::Struct(fs)) => {
                let mut fields = Vec::with_capacity(fs.len());
                for (n, v) in fs {
                    let ty = from_description_at(v, depth + 1)
                        .map_err(|e| bad(format!("field {n:?}: {}", e.message())))?;
                    fields.push(Field::new(n.clone(), ty));
                }
                Ty::Struct(Box::new(StructTy {
                    name: None,
                    version: 0,
                    minimum_version: 0,
                    fields,
                    subsections: Vec::new(),
                }))
            }
            ("seq", el) => Ty::Seq(Box::new(from_description_at(el, depth + 1)?), None),
            ("option", el) => Ty::Option(Box::new(from_description_at(el, depth + 1)?)),
            ("enum", _) => Ty::Enum(Vec::new()),
            ("map", Value::Seq(kv)) if kv.len() == 2 => Ty::Map(
                Box::new(from_description_at(&kv[0], depth + 1)?),
                Box::new(from_description_at(&kv[1], depth + 1)?),
            ),
            (k, _) => return Err(bad(format!("{k:?} is not a type description"))),
        },
        other => {
            return Err(bad(format!(
                "a {} is not a type description",
                other.type_name()
            )))
        }
    })
}

/// Text rendering: one line per field, nested structs indented.
impl fmt::Display for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "schema from {}", self.source.name())?;
        if let Some(m) = &self.machine {
            write!(f, ", machine {m}")?;
        }
        writeln!(f, ", {} device(s)", self.devices.len())?;
        for d in &self.devices {
            let mut key = String::new();
            push_segment(&mut key, &d.key);
            write!(f, "device {key}")?;
            if let Some(n) = &d.ty.name {
                if *n != d.key {
                    write!(f, " (vmstate {n})")?;
                }
            }
            if let Some(i) = &d.instance {
                write!(f, " [{i}]")?;
            }
            writeln!(f)?;
            write_struct(f, &d.ty, 1)?;
        }
        Ok(())
    }
}

fn write_struct(f: &mut fmt::Formatter<'_>, s: &StructTy, level: usize) -> fmt::Result {
    let pad = "  ".repeat(level);
    writeln!(
        f,
        "{pad}version {}, minimum version {}",
        s.version, s.minimum_version
    )?;
    for fl in &s.fields {
        let mut name = String::new();
        push_segment(&mut name, &fl.name);
        write!(f, "{pad}{name}: {}", fl.ty.label())?;
        if let Some(sz) = fl.size {
            write!(f, ", {sz} bytes")?;
        }
        if fl.since > 0 {
            write!(f, ", since version {}", fl.since)?;
        }
        if fl.conditional {
            write!(f, ", conditional")?;
        }
        if let Some(d) = &fl.default {
            if let Some(t) = d.scalar_text() {
                write!(f, ", default {t}")?;
            }
        }
        writeln!(f)?;
        let inner = match &fl.ty {
            Ty::Struct(st) => Some(&**st),
            Ty::Seq(e, _) => match &**e {
                Ty::Struct(st) => Some(&**st),
                _ => None,
            },
            _ => None,
        };
        if let Some(st) = inner {
            write_struct(f, st, level + 1)?;
        }
    }
    for sub in &s.subsections {
        writeln!(f, "{pad}subsection {}:", sub.name.as_deref().unwrap_or("?"))?;
        write_struct(f, sub, level + 1)?;
    }
    Ok(())
}

/// JSON rendering (`vmstream schema --json`).
pub fn to_json(s: &Schema) -> Json {
    serde_json::json!({
        "source": s.source.name(),
        "machine": s.machine,
        "devices": s.devices.iter().map(|d| serde_json::json!({
            "key": d.key,
            "instance": d.instance,
            "type": struct_json(&d.ty),
        })).collect::<Vec<_>>(),
    })
}

fn struct_json(s: &StructTy) -> Json {
    serde_json::json!({
        "name": s.name,
        "version": s.version,
        "minimum_version": s.minimum_version,
        "fields": s.fields.iter().map(|f| {
            let mut j = serde_json::json!({
                "name": f.name,
                "type": f.ty.label(),
                "size": f.size,
                "since": f.since,
                "conditional": f.conditional,
            });
            if let Some(d) = &f.default {
                j["default"] = d.to_json();
            }
            match &f.ty {
                Ty::Struct(st) => j["struct"] = struct_json(st),
                Ty::Seq(e, _) => if let Ty::Struct(st) = &**e { j["struct"] = struct_json(st) },
                _ => {}
            }
            j
        }).collect::<Vec<_>>(),
        "subsections": s.subsections.iter().map(struct_json).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_import_and_errors() {
        let j = br#"{"vmschkmachine":{"Name":"pc-q35-7.2"},
          "dev":{"Name":"dev","version_id":2,"minimum_version_id":1,
            "Description":{"name":"dev","version_id":2,"minimum_version_id":1,
              "Fields":[{"field":"a.b","version_id":0,"field_exists":false,"size":4},
                        {"field":"c","version_id":2,"field_exists":true,"size":1}],
              "Subsections":[{"name":"dev/x","version_id":1,"minimum_version_id":1,"Fields":[]}]}}}"#;
        let s = Schema::from_dump(j).unwrap();
        assert_eq!(s.machine.as_deref(), Some("pc-q35-7.2"));
        let d = s.device("dev").unwrap();
        assert_eq!(d.ty.minimum_version, 1);
        assert_eq!(d.ty.fields[1].since, 2);
        assert!(d.ty.fields[1].conditional);
        assert_eq!(d.ty.subsections[0].name.as_deref(), Some("dev/x"));
        assert!(s.to_string().contains("\"a.b\": raw, 4 bytes"));
        let e = Schema::from_dump(br#"{"dev":{"version_id":"x"}}"#).unwrap_err();
        assert!(e
            .message()
            .contains("dev.version_id: expected a non-negative integer"));
        let deep = format!("{}{}", "[".repeat(1000), "]".repeat(1000));
        assert!(Schema::from_dump(deep.as_bytes()).is_err());
        let e = Schema::from_dump(b"{\n  \"a\": }").unwrap_err();
        assert!(e.message().contains("line 2"), "{e}");
    }

    #[test]
    fn check_by_name_with_versions_and_defaults() {
        let st = StructTy::new(
            "t",
            2,
            vec![
                Field::new(
                    "a",
                    Ty::Int {
                        bits: 16,
                        signed: false,
                    },
                ),
                Field::new("b.c", Ty::Bool)
                    .since(2)
                    .default(Value::Bool(false)),
                Field::new("late", Ty::Bool).since(3),
            ],
        );
        // any order, the defaulted and the later field absent
        st.check(&Value::Struct(vec![("a".into(), Value::U16(1))]))
            .unwrap();
        st.check(&Value::Struct(vec![
            ("b.c".into(), Value::Bool(true)),
            ("a".into(), Value::U16(1)),
        ]))
        .unwrap();
        let e = st
            .check(&Value::Struct(vec![
                ("a".into(), Value::U16(1)),
                ("b.c".into(), Value::U8(1)),
            ]))
            .unwrap_err();
        assert!(
            e.message().starts_with("\"b.c\": expected bool, found u8"),
            "{e}"
        );
        let e = st
            .check(&Value::Struct(vec![("x".into(), Value::U8(1))]))
            .unwrap_err();
        assert!(e.message().contains("x: not a field of version 2"), "{e}");
        let e = st.check(&Value::Struct(vec![])).unwrap_err();
        assert!(e.message().contains("a: missing"), "{e}");
    }

    #[test]
    fn descriptions_round_trip() {
        let st = StructTy::new(
            "t",
            3,
            vec![
                Field::new(
                    "a",
                    Ty::Int {
                        bits: 16,
                        signed: false,
                    },
                ),
                Field::new("b", Ty::Seq(Box::new(Ty::Bool), None)),
            ],
        );
        let d = st.to_description();
        let back = from_description(&d).unwrap();
        let Ty::Struct(b) = back else { panic!() };
        assert_eq!(b.fields, st.fields);
        assert!(from_description(&Value::String("nonsense".into())).is_err());
    }
}
