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

use serde_json::Value as Json;
use vmstream::{Error, ErrorKind, Result, Value};

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
}

fn bad(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Malformed, msg.into())
}

fn get_u64(o: &serde_json::Map<String, Json>, key: &str, ctx: &str) -> Result<u64> {
    o.get(key)
        .and_then(Json::as_u64)
        .ok_or_else(|| bad(format!("vmdesc: {ctx} has no unsigned integer {key:?}")))
}

fn get_str<'j>(o: &'j serde_json::Map<String, Json>, key: &str, ctx: &str) -> Result<&'j str> {
    o.get(key)
        .and_then(Json::as_str)
        .ok_or_else(|| bad(format!("vmdesc: {ctx} has no string {key:?}")))
}

/// Types whose contents repeat description keys per element; read by size.
const OPAQUE_CONTAINERS: [&str; 3] = ["qtailq", "qlist", "gtree"];

impl Vmdesc {
    /// Parses the JSON text, nesting at most `max_depth` levels.
    pub fn parse(json: &[u8], max_depth: u32) -> Result<Vmdesc> {
        // serde_json's own recursion limit (128) bounds the parse itself.
        let root: Json = serde_json::from_slice(json)
            .map_err(|e| bad(format!("vmdesc is not valid JSON: {e}")))?;
        let root = root
            .as_object()
            .ok_or_else(|| bad("vmdesc is not a JSON object"))?;
        let page_size = get_u64(root, "page_size", "the vmdesc")?;
        if !page_size.is_power_of_two() || !(512..=1 << 30).contains(&page_size) {
            return Err(bad(format!(
                "vmdesc page_size {page_size} is not a power of two in 512..=1 GiB"
            )));
        }
        let list = root
            .get("devices")
            .and_then(Json::as_array)
            .ok_or_else(|| bad("vmdesc has no \"devices\" array"))?;
        let mut devices = Vec::with_capacity(list.len());
        for (i, d) in list.iter().enumerate() {
            let ctx = format!("device entry {i}");
            let o = d
                .as_object()
                .ok_or_else(|| bad(format!("vmdesc: {ctx} is not an object")))?;
            let name = get_str(o, "name", &ctx)?.to_owned();
            let instance_id = u32::try_from(get_u64(o, "instance_id", &ctx)?)
                .map_err(|_| bad(format!("vmdesc: {ctx} instance_id is out of range")))?;
            let (vmsd, size) = if o.contains_key("vmsd_name") {
                (Some(Obj::parse(o, &name, max_depth)?), 0)
            } else {
                (None, get_u64(o, "size", &ctx)?)
            };
            devices.push(DeviceDesc {
                name,
                instance_id,
                vmsd,
                size,
            });
        }
        Ok(Vmdesc { page_size, devices })
    }
}

impl Obj {
    fn parse(o: &serde_json::Map<String, Json>, ctx: &str, depth: u32) -> Result<Obj> {
        if depth == 0 {
            return Err(Error::new(
                ErrorKind::LimitExceeded,
                format!("vmdesc: {ctx} nests too deeply"),
            ));
        }
        let vmsd_name = get_str(o, "vmsd_name", ctx)?.to_owned();
        let version = u32::try_from(get_u64(o, "version", ctx)?)
            .map_err(|_| bad(format!("vmdesc: {ctx} version is out of range")))?;
        let mut fields = Vec::new();
        let list = o
            .get("fields")
            .and_then(Json::as_array)
            .ok_or_else(|| bad(format!("vmdesc: {ctx} has no fields array")))?;
        for f in list {
            let f = f
                .as_object()
                .ok_or_else(|| bad(format!("vmdesc: a field of {ctx} is not an object")))?;
            let name = get_str(f, "name", ctx)?.to_owned();
            let fctx = format!("{ctx}.{name}");
            let ty = get_str(f, "type", &fctx)?.to_owned();
            let size = get_u64(f, "size", &fctx)?;
            let count = match f.get("array_len") {
                Some(n) => n
                    .as_u64()
                    .ok_or_else(|| bad(format!("vmdesc: {fctx} array_len is not an integer")))?,
                None => 1,
            };
            let nested = if OPAQUE_CONTAINERS.contains(&ty.as_str()) {
                None
            } else if ty == "struct" {
                let s = f.get("struct").and_then(Json::as_object);
                s.filter(|s| s.contains_key("fields"))
                    .map(|s| Obj::parse(s, &fctx, depth - 1))
                    .transpose()?
            } else if f.contains_key("fields") && f.contains_key("vmsd_name") {
                Some(Obj::parse(f, &fctx, depth - 1)?)
            } else {
                None
            };
            fields.push(Field {
                name,
                count,
                ty,
                nested,
                size,
            });
        }
        let mut subsections = Vec::new();
        if let Some(subs) = o.get("subsections") {
            let subs = subs
                .as_array()
                .ok_or_else(|| bad(format!("vmdesc: {ctx} subsections is not an array")))?;
            for s in subs {
                let s = s.as_object().ok_or_else(|| {
                    bad(format!("vmdesc: a subsection of {ctx} is not an object"))
                })?;
                subsections.push(Obj::parse(s, ctx, depth - 1)?);
            }
        }
        Ok(Obj {
            vmsd_name,
            version,
            fields,
            subsections,
        })
    }

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

    /// How many times each field name occurs (after expanding arrays); names
    /// seen more than once become sequences.
    fn name_counts(&self) -> Vec<(&str, u64)> {
        let mut counts: Vec<(&str, u64)> = Vec::new();
        for f in &self.fields {
            match counts.iter_mut().find(|(n, _)| *n == f.name) {
                Some(c) => c.1 += f.count,
                None => counts.push((&f.name, f.count)),
            }
        }
        counts
    }
}

/// Finds the vmdesc trailer at the end of `data` (a whole stream, or its tail):
/// a `0x06` byte at `p` with `p + 5 + be32(p + 1) == data.len()` and `{` at
/// `p + 5`. Returns `p`.
pub fn find_trailer(data: &[u8]) -> Option<usize> {
    let end = data.len();
    (0..end.saturating_sub(6)).rev().find(|&p| {
        data[p] == 0x06
            && data[p + 5] == b'{'
            && u32::from_be_bytes([data[p + 1], data[p + 2], data[p + 3], data[p + 4]]) as usize
                == end - p - 5
    })
}

/// Reads bytes described by a vmdesc, with the position for messages.
struct Walker<'a> {
    data: &'a [u8],
    pos: usize,
    depth: u32,
}

impl<'a> Walker<'a> {
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        let avail = self.data.len() - self.pos;
        if n > avail {
            return Err(bad(format!(
                "{what} needs {n} bytes, {avail} left in the section"
            ))
            .at_offset(self.pos as u64));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn obj(&mut self, obj: &Obj) -> Result<Value> {
        if self.depth == 0 {
            return Err(Error::new(
                ErrorKind::LimitExceeded,
                "device state nests too deeply",
            ));
        }
        self.depth -= 1;
        let counts = obj.name_counts();
        let mut out: Vec<(String, Value)> =
            Vec::with_capacity(counts.len() + obj.subsections.len());
        for f in &obj.fields {
            let many = counts.iter().any(|&(n, c)| n == f.name && c > 1);
            for _ in 0..f.count {
                let start = self.pos;
                let k = match out.iter().find(|(n, _)| *n == f.name) {
                    Some((_, Value::Seq(items))) => items.len(),
                    _ => 0,
                };
                let path = |e: Error| {
                    if many {
                        e.in_index(k).in_field(&f.name)
                    } else {
                        e.in_field(&f.name)
                    }
                };
                let v = self.element(f).map_err(path)?;
                if (self.pos - start) as u64 != f.size {
                    return Err(path(
                        bad(format!(
                            "described as {} bytes, but its contents took {}",
                            f.size,
                            self.pos - start
                        ))
                        .at_offset(start as u64),
                    ));
                }
                match out.iter_mut().find(|(n, _)| *n == f.name) {
                    Some((_, Value::Seq(items))) if many => items.push(v),
                    _ if many => out.push((f.name.clone(), Value::Seq(vec![v]))),
                    _ => out.push((f.name.clone(), v)),
                }
            }
        }
        for s in &obj.subsections {
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
            if out.iter().any(|(n, _)| *n == s.vmsd_name) {
                return Err(bad(format!(
                    "subsection {:?} has the name of a field",
                    s.vmsd_name
                ))
                .at_offset(at));
            }
            let v = self.obj(s).map_err(|e| e.in_field(&s.vmsd_name))?;
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

/// Decodes a device section body with its description. `body` must be the
/// whole body; the description must account for every byte.
pub fn decode(obj: &Obj, body: &[u8], max_depth: u32) -> Result<Value> {
    let mut w = Walker {
        data: body,
        pos: 0,
        depth: max_depth,
    };
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

/// Decodes a device section from the front of `data`, returning the value and
/// the body length.
pub fn decode_prefix(obj: &Obj, data: &[u8], max_depth: u32) -> Result<(Value, usize)> {
    let mut w = Walker {
        data,
        pos: 0,
        depth: max_depth,
    };
    let v = w.obj(obj)?;
    Ok((v, w.pos))
}

/// Encodes `value` as the body `obj` describes.
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
    let counts = obj.name_counts();
    let mut used: Vec<u64> = vec![0; counts.len()];
    for f in &obj.fields {
        let slot = counts
            .iter()
            .position(|&(n, _)| n == f.name)
            .unwrap_or_default();
        let many = counts[slot].1 > 1;
        let v = fields
            .iter()
            .find(|(n, _)| *n == f.name)
            .map(|(_, v)| v)
            .ok_or_else(|| Error::new(ErrorKind::Usage, "missing field").in_field(&f.name))?;
        for _ in 0..f.count {
            let k = used[slot];
            used[slot] += 1;
            let item = if many {
                match v {
                    Value::Seq(items) => items.get(k as usize).ok_or_else(|| {
                        Error::new(
                            ErrorKind::Usage,
                            format!(
                                "sequence has {} elements, the description {}",
                                items.len(),
                                counts[slot].1
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
                    e.in_index(k as usize).in_field(&f.name)
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
    for s in &obj.subsections {
        let v = fields
            .iter()
            .find(|(n, _)| *n == s.vmsd_name)
            .map(|(_, v)| v)
            .ok_or_else(|| {
                Error::new(ErrorKind::Usage, "missing subsection").in_field(&s.vmsd_name)
            })?;
        out.push(0x05);
        out.push(s.vmsd_name.len() as u8);
        out.extend_from_slice(s.vmsd_name.as_bytes());
        out.extend_from_slice(&s.version.to_be_bytes());
        encode(s, v, out).map_err(|e| e.in_field(&s.vmsd_name))?;
    }
    let known = counts.len() + obj.subsections.len();
    if fields.len() != known {
        let extra = fields
            .iter()
            .find(|(n, _)| {
                !counts.iter().any(|(c, _)| c == n)
                    && !obj.subsections.iter().any(|s| s.vmsd_name == *n)
            })
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
        let v = decode(obj, &b, 64).unwrap();
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
        let e = decode(obj, &b, 64).unwrap_err();
        assert!(e.to_string().contains("hpet/rtc"), "{e}");
        let e = decode(obj, &body()[..12], 64).unwrap_err();
        assert_eq!(e.location().field.as_deref(), Some("timer[0].cmp"), "{e}");
        let mut long = body();
        long.push(0);
        assert!(decode(obj, &long, 64).is_err());
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
