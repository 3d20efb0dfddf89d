//! The typed, self-describing value model for device state.
//!
//! A [`Value`] keeps exact integer widths and signedness, so a device field written
//! as `u16` reads back as `u16` in any tool, without the device's code. It is the
//! meeting point of three encodings: the binary one in records
//! ([`encode`]/[`decode`]), the tagged
//! JSON form ([`Value::to_json`], [`Value::from_json`]), and serde
//! ([`to_value`](crate::to_value), [`from_value`](crate::from_value)).

mod codec;
mod json;

pub use codec::{decode, encode, NameTable};
pub use json::{hex, unhex, TaggedJson};

/// Decodes one value that fills the rest of the cursor.
pub(crate) fn codec_decode_rest(
    c: &mut crate::cursor::Cursor<'_>,
    names: &NameTable,
    limits: &crate::Limits,
) -> crate::Result<Value> {
    let v = codec::decode_from(c, names, limits)?;
    c.finish("value")?;
    Ok(v)
}

use std::fmt;

/// One typed value.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Value {
    /// `true` or `false`.
    Bool(bool),
    /// Unsigned 8-bit integer.
    U8(u8),
    /// Unsigned 16-bit integer.
    U16(u16),
    /// Unsigned 32-bit integer.
    U32(u32),
    /// Unsigned 64-bit integer.
    U64(u64),
    /// Signed 8-bit integer.
    I8(i8),
    /// Signed 16-bit integer.
    I16(i16),
    /// Signed 32-bit integer.
    I32(i32),
    /// Signed 64-bit integer.
    I64(i64),
    /// IEEE 754 single precision, kept bit-exact.
    F32(f32),
    /// IEEE 754 double precision, kept bit-exact.
    F64(f64),
    /// A byte string.
    Bytes(Vec<u8>),
    /// A UTF-8 string.
    String(String),
    /// A sequence of values (not necessarily of one type).
    Seq(Vec<Value>),
    /// A struct: named fields in order. Names are unique within one struct.
    Struct(Vec<(String, Value)>),
    /// An optional value.
    Option(Option<Box<Value>>),
    /// An enum variant by name, with its payload ([`Value::Unit`] for a unit variant).
    Enum(String, Box<Value>),
    /// The unit value `()`.
    Unit,
    /// A map with keys in order.
    Map(Vec<(Value, Value)>),
}

impl Value {
    /// The type name used in text and JSON output: `u32`, `struct`, ...
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Bool(_) => "bool",
            Value::U8(_) => "u8",
            Value::U16(_) => "u16",
            Value::U32(_) => "u32",
            Value::U64(_) => "u64",
            Value::I8(_) => "i8",
            Value::I16(_) => "i16",
            Value::I32(_) => "i32",
            Value::I64(_) => "i64",
            Value::F32(_) => "f32",
            Value::F64(_) => "f64",
            Value::Bytes(_) => "bytes",
            Value::String(_) => "string",
            Value::Seq(_) => "seq",
            Value::Struct(_) => "struct",
            Value::Option(_) => "option",
            Value::Enum(..) => "enum",
            Value::Unit => "unit",
            Value::Map(_) => "map",
        }
    }

    /// How deeply containers nest: 0 for a scalar, 1 for a struct of scalars.
    /// A reader accepts the value when this is at most [`crate::Limits::max_depth`].
    pub fn depth(&self) -> u32 {
        let max =
            |vals: &mut dyn Iterator<Item = &Value>| vals.map(Value::depth).max().unwrap_or(0);
        match self {
            Value::Seq(items) => 1 + max(&mut items.iter()),
            Value::Struct(fields) => 1 + max(&mut fields.iter().map(|(_, v)| v)),
            Value::Option(Some(v)) | Value::Enum(_, v) => 1 + v.depth(),
            Value::Map(entries) => 1 + max(&mut entries.iter().flat_map(|(k, v)| [k, v])),
            _ => 0,
        }
    }

    /// The field `name` of a struct value.
    pub fn field(&self, name: &str) -> Option<&Value> {
        match self {
            Value::Struct(fields) => fields.iter().find(|(n, _)| n == name).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Follows a dotted path with `[i]` indexes, e.g. `regs.rax` or `queues[1].head`.
    pub fn at_path(&self, path: &str) -> Option<&Value> {
        let mut cur = self;
        for seg in path.split('.').filter(|s| !s.is_empty()) {
            let (name, rest) = match seg.find('[') {
                Some(i) => seg.split_at(i),
                None => (seg, ""),
            };
            if !name.is_empty() {
                cur = cur.field(name)?;
            }
            let mut rest = rest;
            while let Some(stripped) = rest.strip_prefix('[') {
                let end = stripped.find(']')?;
                let idx: usize = stripped.get(..end)?.parse().ok()?;
                cur = match cur {
                    Value::Seq(items) => items.get(idx)?,
                    _ => return None,
                };
                rest = stripped.get(end + 1..)?;
            }
        }
        Some(cur)
    }

    /// The value as an unsigned integer, if it is an integer that fits.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Calls `f` for every leaf (non-container) value with its path, in order.
    /// Containers that are empty are reported as leaves so nothing is hidden.
    pub fn walk_leaves<'a>(&'a self, f: &mut dyn FnMut(&str, &'a Value)) {
        let mut path = String::new();
        walk(self, &mut path, f);
    }

    /// Writes the value as a one-line scalar, or `None` for containers.
    pub fn scalar_text(&self) -> Option<String> {
        self.is_scalar().then(|| Scalar(self).to_string())
    }

    /// Whether the value prints on one line: not a non-empty struct, map, enum
    /// or `Some`, nor a sequence of anything but bytes.
    fn is_scalar(&self) -> bool {
        match self {
            Value::Seq(v) => v.iter().all(|i| matches!(i, Value::U8(_))),
            Value::Struct(v) => v.is_empty(),
            Value::Map(v) => v.is_empty(),
            Value::Option(Some(_)) | Value::Enum(..) => false,
            _ => true,
        }
    }

    /// The [`Display`](fmt::Display) text with every line prefixed by `indent`.
    pub fn display_indented<'a>(&'a self, indent: &'a str) -> impl fmt::Display + 'a {
        Lines {
            value: self,
            indent,
        }
    }
}

/// A scalar's text (nothing for containers).
struct Scalar<'a>(&'a Value);

impl fmt::Display for Scalar<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Value::Bool(v) => write!(f, "{v}"),
            Value::U8(v) => write_hex(f, u64::from(*v), 2),
            Value::U16(v) => write_hex(f, u64::from(*v), 4),
            Value::U32(v) => write_hex(f, u64::from(*v), 8),
            Value::U64(v) => write_hex(f, *v, 16),
            Value::I8(v) => write!(f, "{v}"),
            Value::I16(v) => write!(f, "{v}"),
            Value::I32(v) => write!(f, "{v}"),
            Value::I64(v) => write!(f, "{v}"),
            Value::F32(v) => write!(f, "{v:?}"),
            Value::F64(v) => write!(f, "{v:?}"),
            Value::Bytes(b) => write_bytes(f, b.len(), b.iter().copied()),
            Value::String(s) => write!(f, "{s:?}"),
            Value::Unit => f.write_str("()"),
            Value::Option(None) => f.write_str("none"),
            Value::Seq(v) if v.is_empty() => f.write_str("[]"),
            Value::Seq(v) if self.0.is_scalar() => {
                write!(f, "[u8; {}] ", v.len())?;
                let bytes = v.iter().map(|i| match i {
                    Value::U8(b) => *b,
                    _ => 0,
                });
                write_bytes(f, v.len(), bytes)
            }
            Value::Struct(v) if v.is_empty() => f.write_str("{}"),
            Value::Map(v) if v.is_empty() => f.write_str("{}"),
            _ => Ok(()),
        }
    }
}

fn walk<'a>(v: &'a Value, path: &mut String, f: &mut dyn FnMut(&str, &'a Value)) {
    use std::fmt::Write;
    let len = path.len();
    match v {
        Value::Struct(fields) if !fields.is_empty() => {
            for (name, child) in fields {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(name);
                walk(child, path, f);
                path.truncate(len);
            }
        }
        Value::Seq(items) if !v.is_scalar() => {
            for (i, child) in items.iter().enumerate() {
                let _ = write!(path, "[{i}]");
                walk(child, path, f);
                path.truncate(len);
            }
        }
        Value::Map(entries) if !entries.is_empty() => {
            for (k, child) in entries {
                // writing to a String cannot fail
                let _ = if k.is_scalar() {
                    write!(path, "[{}]", Scalar(k))
                } else {
                    path.write_str("[?]")
                };
                walk(child, path, f);
                path.truncate(len);
            }
        }
        Value::Option(Some(inner)) => walk(inner, path, f),
        Value::Enum(name, payload) => {
            path.push_str("::");
            path.push_str(name);
            walk(payload, path, f);
            path.truncate(len);
        }
        leaf => f(path, leaf),
    }
}

/// `0x` and `digits` hex digits, zero-padded: what `{v:#0N$x}` prints, in one
/// `write_str` (the formatter pads one `write_char` at a time, which showed in
/// `dump` profiles).
fn write_hex(f: &mut fmt::Formatter<'_>, v: u64, digits: usize) -> fmt::Result {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = *b"0x0000000000000000";
    for (i, c) in text[2..2 + digits].iter_mut().enumerate() {
        *c = HEX[((v >> (4 * (digits - 1 - i))) & 15) as usize];
    }
    f.write_str(std::str::from_utf8(&text[..2 + digits]).map_err(|_| fmt::Error)?)
}

/// Short text for a byte string: hex, cut after 32 bytes with the total length.
fn write_bytes(
    f: &mut fmt::Formatter<'_>,
    len: usize,
    bytes: impl Iterator<Item = u8>,
) -> fmt::Result {
    const SHOWN: usize = 32;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = [0u8; 2 * SHOWN];
    let mut n = 0;
    for byte in bytes.take(SHOWN) {
        text[n] = HEX[usize::from(byte >> 4)];
        text[n + 1] = HEX[usize::from(byte & 15)];
        n += 2;
    }
    f.write_str(std::str::from_utf8(&text[..n]).map_err(|_| fmt::Error)?)?;
    if len > SHOWN {
        write!(f, "... ({len} bytes)")
    } else if len == 0 {
        f.write_str("(0 bytes)")
    } else {
        Ok(())
    }
}

/// One `path = type value` line per leaf, each after an indent.
struct Lines<'a> {
    value: &'a Value,
    indent: &'a str,
}

impl fmt::Display for Lines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut result = Ok(());
        self.value.walk_leaves(&mut |path, leaf| {
            if result.is_ok() {
                let path = if path.is_empty() { "." } else { path };
                result = writeln!(
                    f,
                    "{}{path} = {} {}",
                    self.indent,
                    leaf.type_name(),
                    Scalar(leaf)
                );
            }
        });
        result
    }
}

impl fmt::Display for Value {
    /// One `path = type value` line per leaf.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.display_indented("").fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_lookup() {
        let v = Value::Struct(vec![
            ("a".into(), Value::U8(1)),
            (
                "q".into(),
                Value::Seq(vec![
                    Value::Struct(vec![("h".into(), Value::U16(7))]),
                    Value::Struct(vec![("h".into(), Value::U16(9))]),
                ]),
            ),
        ]);
        assert_eq!(v.at_path("q[1].h"), Some(&Value::U16(9)));
        assert_eq!(v.at_path("a"), Some(&Value::U8(1)));
        assert_eq!(v.at_path("q[2].h"), None);
        assert_eq!(
            v.to_string(),
            "a = u8 0x01\nq[0].h = u16 0x0007\nq[1].h = u16 0x0009\n"
        );
    }

    #[test]
    fn scalar_texts() {
        let long: Vec<u8> = (0..40).collect();
        let text = Value::Bytes(long).scalar_text().unwrap();
        assert_eq!(
            text,
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f... (40 bytes)"
        );
        assert_eq!(Value::Bytes(vec![]).scalar_text().unwrap(), "(0 bytes)");
        for v in [0, 1, 0xfe, 0x1234_5678_9abc_def0, u64::MAX] {
            let texts = [
                (Value::U8(v as u8), format!("{:#04x}", v as u8)),
                (Value::U16(v as u16), format!("{:#06x}", v as u16)),
                (Value::U32(v as u32), format!("{:#010x}", v as u32)),
                (Value::U64(v), format!("{v:#018x}")),
            ];
            for (value, want) in texts {
                assert_eq!(value.scalar_text().unwrap(), want);
            }
        }
        let seq = Value::Seq(vec![Value::U8(0xab), Value::U8(1)]);
        assert_eq!(seq.scalar_text().unwrap(), "[u8; 2] ab01");
        assert_eq!(Value::Seq(vec![]).scalar_text().unwrap(), "[]");
        assert_eq!(Value::Seq(vec![Value::U16(1)]).scalar_text(), None);
        let map = Value::Map(vec![(Value::String("k".into()), Value::I8(-3))]);
        assert_eq!(
            map.display_indented("> ").to_string(),
            "> [\"k\"] = i8 -3\n"
        );
    }
}
