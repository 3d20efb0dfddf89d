//! The binary value encoding (docs/format.md, "Value encoding").

use std::collections::{HashMap, HashSet};

use super::Value;
use crate::cursor::{put_bytes, put_varint, Cursor};
use crate::error::{Error, Result};
use crate::limits::Limits;

const TAG_BOOL: u8 = 0x01;
const TAG_U8: u8 = 0x02;
const TAG_U16: u8 = 0x03;
const TAG_U32: u8 = 0x04;
const TAG_U64: u8 = 0x05;
const TAG_I8: u8 = 0x06;
const TAG_I16: u8 = 0x07;
const TAG_I32: u8 = 0x08;
const TAG_I64: u8 = 0x09;
const TAG_F32: u8 = 0x0a;
const TAG_F64: u8 = 0x0b;
const TAG_BYTES: u8 = 0x0c;
const TAG_STRING: u8 = 0x0d;
const TAG_SEQ: u8 = 0x0e;
const TAG_STRUCT: u8 = 0x0f;
const TAG_NONE: u8 = 0x10;
const TAG_SOME: u8 = 0x11;
const TAG_ENUM: u8 = 0x12;
const TAG_UNIT: u8 = 0x13;
const TAG_MAP: u8 = 0x14;

/// The per-stream table of interned names (struct field and enum variant names).
///
/// Writers intern names as they encode and publish the new ones in a `names`
/// record before the record that uses them; readers append each `names` record.
#[derive(Debug, Default, Clone)]
pub struct NameTable {
    names: Vec<String>,
    ids: HashMap<String, u64>,
    published: usize,
    bytes: u64,
}

impl NameTable {
    /// An empty table.
    pub fn new() -> NameTable {
        NameTable::default()
    }

    /// Number of names.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The name with id `id`.
    pub fn get(&self, id: u64) -> Option<&str> {
        usize::try_from(id)
            .ok()
            .and_then(|i| self.names.get(i))
            .map(String::as_str)
    }

    /// The id of `name`, adding it if new.
    pub fn intern(&mut self, name: &str) -> u64 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = self.names.len() as u64;
        self.names.push(name.to_owned());
        self.ids.insert(name.to_owned(), id);
        id
    }

    /// How many names have not been published yet.
    pub fn unpublished_len(&self) -> usize {
        self.names.len() - self.published
    }

    /// Names added since the last call, to be published in a `names` record.
    pub fn take_unpublished(&mut self) -> &[String] {
        let start = self.published;
        self.published = self.names.len();
        self.names.get(start..).unwrap_or_default()
    }

    /// Forgets the names interned after the first `len` that are not
    /// published yet (writer side: the record that needed them was refused).
    pub(crate) fn truncate_unpublished(&mut self, len: usize) {
        let keep = len.max(self.published).min(self.names.len());
        for name in self.names.drain(keep..) {
            self.ids.remove(&name);
        }
    }

    /// Adds a published name (reader side), enforcing the limits.
    pub(crate) fn push_published(&mut self, name: String, limits: &Limits) -> Result<()> {
        if self.names.len() >= limits.max_names as usize {
            return Err(Error::limit(format!(
                "more than {} interned names",
                limits.max_names
            )));
        }
        self.bytes = self.bytes.saturating_add(name.len() as u64 + 32);
        if self.bytes > limits.max_alloc {
            return Err(Error::limit(format!(
                "interned names take more than {} bytes",
                limits.max_alloc
            )));
        }
        self.names.push(name);
        self.published = self.names.len();
        Ok(())
    }
}

/// Appends the encoding of `value` to `out`, interning names in `names`.
pub fn encode(value: &Value, names: &mut NameTable, out: &mut Vec<u8>) {
    match value {
        Value::Bool(v) => out.extend_from_slice(&[TAG_BOOL, u8::from(*v)]),
        Value::U8(v) => out.extend_from_slice(&[TAG_U8, *v]),
        Value::U16(v) => tagged(out, TAG_U16, &v.to_le_bytes()),
        Value::U32(v) => tagged(out, TAG_U32, &v.to_le_bytes()),
        Value::U64(v) => tagged(out, TAG_U64, &v.to_le_bytes()),
        Value::I8(v) => tagged(out, TAG_I8, &v.to_le_bytes()),
        Value::I16(v) => tagged(out, TAG_I16, &v.to_le_bytes()),
        Value::I32(v) => tagged(out, TAG_I32, &v.to_le_bytes()),
        Value::I64(v) => tagged(out, TAG_I64, &v.to_le_bytes()),
        Value::F32(v) => tagged(out, TAG_F32, &v.to_bits().to_le_bytes()),
        Value::F64(v) => tagged(out, TAG_F64, &v.to_bits().to_le_bytes()),
        Value::Bytes(b) => {
            out.push(TAG_BYTES);
            put_bytes(out, b);
        }
        Value::String(s) => {
            out.push(TAG_STRING);
            put_bytes(out, s.as_bytes());
        }
        Value::Seq(items) => {
            out.push(TAG_SEQ);
            put_varint(out, items.len() as u64);
            for item in items {
                encode(item, names, out);
            }
        }
        Value::Struct(fields) => {
            out.push(TAG_STRUCT);
            put_varint(out, fields.len() as u64);
            for (name, item) in fields {
                put_varint(out, names.intern(name));
                encode(item, names, out);
            }
        }
        Value::Option(None) => out.push(TAG_NONE),
        Value::Option(Some(inner)) => {
            out.push(TAG_SOME);
            encode(inner, names, out);
        }
        Value::Enum(variant, payload) => {
            out.push(TAG_ENUM);
            put_varint(out, names.intern(variant));
            encode(payload, names, out);
        }
        Value::Unit => out.push(TAG_UNIT),
        Value::Map(entries) => {
            out.push(TAG_MAP);
            put_varint(out, entries.len() as u64);
            for (k, v) in entries {
                encode(k, names, out);
                encode(v, names, out);
            }
        }
    }
}

fn tagged(out: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
    out.push(tag);
    out.extend_from_slice(bytes);
}

/// Decodes exactly one value from `input` (whose first byte is at stream offset
/// `base`), resolving names in `names` and charging allocations to `limits`.
/// Trailing bytes are an error.
pub fn decode(input: &[u8], base: u64, names: &NameTable, limits: &Limits) -> Result<Value> {
    let mut cur = Cursor::new(input, base);
    let v = decode_from(&mut cur, names, limits)?;
    cur.finish("value")?;
    Ok(v)
}

/// Decodes one value from the cursor, leaving the rest.
pub(crate) fn decode_from(
    cur: &mut Cursor<'_>,
    names: &NameTable,
    limits: &Limits,
) -> Result<Value> {
    let mut d = Decoder {
        names,
        depth_left: limits.max_depth,
        budget: limits.max_alloc,
        max_alloc: limits.max_alloc,
    };
    d.value(cur)
}

struct Decoder<'n> {
    names: &'n NameTable,
    depth_left: u32,
    budget: u64,
    max_alloc: u64,
}

const VALUE_SIZE: u64 = std::mem::size_of::<Value>() as u64;
const FIELD_SIZE: u64 = std::mem::size_of::<(String, Value)>() as u64;

impl Decoder<'_> {
    fn charge(&mut self, bytes: u64, at: u64) -> Result<()> {
        match self.budget.checked_sub(bytes) {
            Some(left) => {
                self.budget = left;
                Ok(())
            }
            None => Err(Error::limit(format!(
                "decoded value needs more than {} bytes (Limits::max_alloc)",
                self.max_alloc
            ))
            .at_offset(at)),
        }
    }

    fn name(&mut self, cur: &mut Cursor<'_>, what: &str) -> Result<String> {
        let at = cur.offset();
        let id = cur.varint(what)?;
        let name = self.names.get(id).ok_or_else(|| {
            Error::malformed(format!(
                "{what} refers to name id {id}, but only {} names are defined",
                self.names.len()
            ))
            .at_offset(at)
        })?;
        self.charge(name.len() as u64, at)?;
        Ok(name.to_owned())
    }

    fn value(&mut self, cur: &mut Cursor<'_>) -> Result<Value> {
        let at = cur.offset();
        let tag = cur.u8("value tag")?;
        Ok(match tag {
            TAG_BOOL => match cur.u8("bool")? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => {
                    return Err(
                        Error::malformed(format!("bool must be 0 or 1, found {b}")).at_offset(at)
                    )
                }
            },
            TAG_U8 => Value::U8(cur.u8("u8")?),
            TAG_U16 => Value::U16(cur.u16("u16")?),
            TAG_U32 => Value::U32(cur.u32("u32")?),
            TAG_U64 => Value::U64(cur.u64("u64")?),
            TAG_I8 => Value::I8(i8::from_le_bytes(cur.array("i8")?)),
            TAG_I16 => Value::I16(i16::from_le_bytes(cur.array("i16")?)),
            TAG_I32 => Value::I32(i32::from_le_bytes(cur.array("i32")?)),
            TAG_I64 => Value::I64(i64::from_le_bytes(cur.array("i64")?)),
            TAG_F32 => Value::F32(f32::from_bits(cur.u32("f32")?)),
            TAG_F64 => Value::F64(f64::from_bits(cur.u64("f64")?)),
            TAG_BYTES => {
                let n = cur.count("bytes length", 1)?;
                self.charge(n as u64, at)?;
                Value::Bytes(cur.bytes(n, "bytes")?.to_vec())
            }
            TAG_STRING => {
                let n = cur.count("string length", 1)?;
                self.charge(n as u64, at)?;
                let b = cur.bytes(n, "string")?;
                let s = std::str::from_utf8(b).map_err(|e| {
                    Error::malformed(format!("string is not UTF-8: {e}")).at_offset(at)
                })?;
                Value::String(s.to_owned())
            }
            TAG_SEQ => {
                let n = cur.count("sequence length", 1)?;
                self.charge(n as u64 * VALUE_SIZE, at)?;
                self.enter(at)?;
                let mut items = Vec::with_capacity(n);
                for i in 0..n {
                    items.push(self.value(cur).map_err(|e| e.in_index(i))?);
                }
                self.depth_left += 1;
                Value::Seq(items)
            }
            TAG_STRUCT => {
                let n = cur.count("field count", 2)?;
                self.charge(n as u64 * FIELD_SIZE, at)?;
                self.enter(at)?;
                let mut fields: Vec<(String, Value)> = Vec::with_capacity(n);
                let mut seen = HashSet::new();
                for _ in 0..n {
                    let name_at = cur.offset();
                    let name = self.name(cur, "field name")?;
                    if !seen.insert(name.clone()) {
                        return Err(Error::malformed(format!(
                            "field {name:?} appears twice in one struct"
                        ))
                        .at_offset(name_at));
                    }
                    let v = self.value(cur).map_err(|e| e.in_field(&name))?;
                    fields.push((name, v));
                }
                self.depth_left += 1;
                Value::Struct(fields)
            }
            TAG_NONE => Value::Option(None),
            TAG_SOME => {
                self.charge(VALUE_SIZE, at)?;
                self.enter(at)?;
                let inner = self.value(cur)?;
                self.depth_left += 1;
                Value::Option(Some(Box::new(inner)))
            }
            TAG_ENUM => {
                let name = self.name(cur, "variant name")?;
                self.charge(VALUE_SIZE, at)?;
                self.enter(at)?;
                let payload = self.value(cur).map_err(|e| e.in_field(&name))?;
                self.depth_left += 1;
                Value::Enum(name, Box::new(payload))
            }
            TAG_UNIT => Value::Unit,
            TAG_MAP => {
                let n = cur.count("map length", 2)?;
                self.charge(n as u64 * 2 * VALUE_SIZE, at)?;
                self.enter(at)?;
                let mut entries = Vec::with_capacity(n);
                for i in 0..n {
                    let k = self.value(cur).map_err(|e| e.in_index(i))?;
                    let v = self.value(cur).map_err(|e| e.in_index(i))?;
                    entries.push((k, v));
                }
                self.depth_left += 1;
                Value::Map(entries)
            }
            other => {
                return Err(Error::malformed(format!(
                    "unknown value tag {other:#04x} (expected 0x01..=0x14)"
                ))
                .at_offset(at))
            }
        })
    }

    fn enter(&mut self, at: u64) -> Result<()> {
        match self.depth_left.checked_sub(1) {
            Some(d) => {
                self.depth_left = d;
                Ok(())
            }
            None => Err(Error::limit("value nests deeper than Limits::max_depth").at_offset(at)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    pub(crate) fn sample() -> Value {
        Value::Struct(vec![
            ("flag".into(), Value::Bool(true)),
            ("n".into(), Value::U16(0xbeef)),
            ("neg".into(), Value::I64(-5)),
            ("f".into(), Value::F64(1.5)),
            ("blob".into(), Value::Bytes(vec![1, 2, 3])),
            ("s".into(), Value::String("hé".into())),
            (
                "list".into(),
                Value::Seq(vec![Value::U8(1), Value::Option(None), Value::Unit]),
            ),
            (
                "e".into(),
                Value::Enum(
                    "V".into(),
                    Box::new(Value::Option(Some(Box::new(Value::I8(-1))))),
                ),
            ),
            (
                "m".into(),
                Value::Map(vec![(Value::String("k".into()), Value::U32(9))]),
            ),
        ])
    }

    #[test]
    fn round_trip() {
        let v = sample();
        let mut names = NameTable::new();
        let mut out = Vec::new();
        encode(&v, &mut names, &mut out);
        let mut reader_names = NameTable::new();
        for n in names.take_unpublished().to_vec() {
            reader_names.push_published(n, &Limits::default()).unwrap();
        }
        assert_eq!(
            decode(&out, 0, &reader_names, &Limits::default()).unwrap(),
            v
        );
    }

    #[test]
    fn depth_limit() {
        let mut v = Value::Unit;
        for _ in 0..10 {
            v = Value::Seq(vec![v]);
        }
        let mut names = NameTable::new();
        let mut out = Vec::new();
        encode(&v, &mut names, &mut out);
        let lim = Limits::default().with_max_depth(5);
        assert_eq!(
            decode(&out, 0, &names, &lim).unwrap_err().kind(),
            ErrorKind::LimitExceeded
        );
        assert!(decode(&out, 0, &names, &Limits::default()).is_ok());
    }

    #[test]
    fn lying_lengths_and_unknown_names() {
        let names = NameTable::new();
        let lim = Limits::default();
        // sequence claims 2^40 elements in 3 bytes
        let e = decode(&[TAG_SEQ, 0x80, 0x80, 0x80, 0x80, 0x20], 0, &names, &lim).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Malformed);
        let e = decode(&[TAG_STRUCT, 1, 5, TAG_UNIT], 0, &names, &lim).unwrap_err();
        assert!(e.message().contains("name id 5"), "{e}");
        let e = decode(&[0x7f], 0, &names, &lim).unwrap_err();
        assert!(e.message().contains("unknown value tag"), "{e}");
    }

    #[test]
    fn name_amplification_is_charged() {
        let mut names = NameTable::new();
        let long = "x".repeat(10_000);
        names.intern(&long);
        // a sequence of 1000 enums all referencing the long name
        let mut out = vec![TAG_SEQ];
        put_varint(&mut out, 1000);
        for _ in 0..1000 {
            out.extend_from_slice(&[TAG_ENUM, 0, TAG_UNIT]);
        }
        let lim = Limits::default().with_max_alloc(1 << 20);
        let e = decode(&out, 0, &names, &lim).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::LimitExceeded);
    }
}
