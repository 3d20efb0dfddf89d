//! The tagged JSON form of a [`Value`]: lossless, documented in docs/format.md.
//!
//! Every value is a one-key object whose key is the type: `{"u16": 7}`,
//! `{"bytes": "0a0b"}`, `{"struct": {"a": {"bool": true}}}`, `{"seq": [...]}`,
//! `{"none": null}`, `{"some": v}`, `{"enum": {"Variant": v}}`, `{"unit": null}`,
//! `{"map": [[k, v], ...]}`. Floats are JSON numbers when finite, otherwise the
//! hex of their bits as a string (`{"f64": "0x7ff8000000000000"}`).

use serde_json::{json, Map, Value as Json};

use super::Value;
use crate::error::{Error, Result};

impl Value {
    /// The tagged JSON form.
    pub fn to_json(&self) -> Json {
        match self {
            Value::Bool(v) => json!({ "bool": v }),
            Value::U8(v) => json!({ "u8": v }),
            Value::U16(v) => json!({ "u16": v }),
            Value::U32(v) => json!({ "u32": v }),
            Value::U64(v) => json!({ "u64": v }),
            Value::I8(v) => json!({ "i8": v }),
            Value::I16(v) => json!({ "i16": v }),
            Value::I32(v) => json!({ "i32": v }),
            Value::I64(v) => json!({ "i64": v }),
            Value::F32(v) if v.is_finite() => json!({ "f32": v }),
            Value::F32(v) => json!({ "f32": format!("{:#010x}", v.to_bits()) }),
            Value::F64(v) if v.is_finite() => json!({ "f64": v }),
            Value::F64(v) => json!({ "f64": format!("{:#018x}", v.to_bits()) }),
            Value::Bytes(b) => json!({ "bytes": hex(b) }),
            Value::String(s) => json!({ "string": s }),
            Value::Seq(items) => {
                json!({ "seq": items.iter().map(Value::to_json).collect::<Vec<_>>() })
            }
            Value::Struct(fields) => {
                let mut m = Map::new();
                for (name, v) in fields {
                    m.insert(name.clone(), v.to_json());
                }
                json!({ "struct": m })
            }
            Value::Option(None) => json!({ "none": null }),
            Value::Option(Some(v)) => json!({ "some": v.to_json() }),
            Value::Enum(name, payload) => {
                let mut m = Map::new();
                m.insert(name.clone(), payload.to_json());
                json!({ "enum": m })
            }
            Value::Unit => json!({ "unit": null }),
            Value::Map(entries) => json!({
                "map": entries.iter().map(|(k, v)| json!([k.to_json(), v.to_json()])).collect::<Vec<_>>()
            }),
        }
    }

    /// Parses the tagged JSON form. Errors name the path of the bad element.
    pub fn from_json(json: &Json) -> Result<Value> {
        let obj = json
            .as_object()
            .filter(|o| o.len() == 1)
            .ok_or_else(|| bad("a one-key object such as {\"u8\": 1}", json))?;
        let Some((tag, body)) = obj.iter().next() else {
            return Err(bad("a one-key object", json));
        };
        Ok(match tag.as_str() {
            "bool" => Value::Bool(body.as_bool().ok_or_else(|| bad("true or false", body))?),
            "u8" => Value::U8(uint(body)?),
            "u16" => Value::U16(uint(body)?),
            "u32" => Value::U32(uint(body)?),
            "u64" => Value::U64(uint(body)?),
            "i8" => Value::I8(int(body)?),
            "i16" => Value::I16(int(body)?),
            "i32" => Value::I32(int(body)?),
            "i64" => Value::I64(int(body)?),
            "f32" => Value::F32(match body.as_str() {
                Some(s) => f32::from_bits(
                    parse_hex_u64(s)?
                        .try_into()
                        .map_err(|_| bad("32-bit hex", body))?,
                ),
                // JSON holds the f32 widened to f64; narrowing back is exact.
                None => body.as_f64().ok_or_else(|| bad("a number", body))? as f32,
            }),
            "f64" => Value::F64(match body.as_str() {
                Some(s) => f64::from_bits(parse_hex_u64(s)?),
                None => body.as_f64().ok_or_else(|| bad("a number", body))?,
            }),
            "bytes" => Value::Bytes(unhex(
                body.as_str().ok_or_else(|| bad("a hex string", body))?,
            )?),
            "string" => Value::String(
                body.as_str()
                    .ok_or_else(|| bad("a string", body))?
                    .to_owned(),
            ),
            "seq" => Value::Seq(
                body.as_array()
                    .ok_or_else(|| bad("an array", body))?
                    .iter()
                    .enumerate()
                    .map(|(i, v)| Value::from_json(v).map_err(|e| e.in_index(i)))
                    .collect::<Result<_>>()?,
            ),
            "struct" => Value::Struct(
                body.as_object()
                    .ok_or_else(|| bad("an object", body))?
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), Value::from_json(v).map_err(|e| e.in_field(k))?)))
                    .collect::<Result<_>>()?,
            ),
            "none" => Value::Option(None),
            "some" => Value::Option(Some(Box::new(Value::from_json(body)?))),
            "enum" => {
                let m = body
                    .as_object()
                    .filter(|m| m.len() == 1)
                    .ok_or_else(|| bad("a one-key object {\"Variant\": value}", body))?;
                let Some((name, payload)) = m.iter().next() else {
                    return Err(bad("a one-key object", body));
                };
                Value::Enum(
                    name.clone(),
                    Box::new(Value::from_json(payload).map_err(|e| e.in_field(name))?),
                )
            }
            "unit" => Value::Unit,
            "map" => Value::Map(
                body.as_array()
                    .ok_or_else(|| bad("an array of [key, value] pairs", body))?
                    .iter()
                    .enumerate()
                    .map(|(i, pair)| match pair.as_array().map(Vec::as_slice) {
                        Some([k, v]) => Ok((
                            Value::from_json(k).map_err(|e| e.in_index(i))?,
                            Value::from_json(v).map_err(|e| e.in_index(i))?,
                        )),
                        _ => Err(bad("a [key, value] pair", pair).in_index(i)),
                    })
                    .collect::<Result<_>>()?,
            ),
            other => {
                return Err(Error::malformed(format!(
                    "unknown value type {other:?} in JSON"
                )))
            }
        })
    }
}

/// The tagged JSON form of a [`Value`] as a [`serde::Serialize`]: serialized,
/// it writes exactly what serializing [`Value::to_json`] writes, without
/// building the `serde_json` tree first (one small map per value), so large
/// device states print several times faster.
#[derive(Debug, Clone, Copy)]
pub struct TaggedJson<'a>(pub &'a Value);

impl serde::Serialize for TaggedJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        fn one<S: serde::Serializer, T: serde::Serialize + ?Sized>(
            s: S,
            tag: &str,
            v: &T,
        ) -> std::result::Result<S::Ok, S::Error> {
            let mut m = s.serialize_map(Some(1))?;
            m.serialize_entry(tag, v)?;
            m.end()
        }
        /// `[k, v]` of a map entry.
        struct Pair<'a>(&'a Value, &'a Value);
        impl serde::Serialize for Pair<'_> {
            fn serialize<S: serde::Serializer>(
                &self,
                s: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                let mut q = s.serialize_seq(Some(2))?;
                q.serialize_element(&TaggedJson(self.0))?;
                q.serialize_element(&TaggedJson(self.1))?;
                q.end()
            }
        }
        struct Items<'a>(&'a [Value]);
        impl serde::Serialize for Items<'_> {
            fn serialize<S: serde::Serializer>(
                &self,
                s: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                s.collect_seq(self.0.iter().map(TaggedJson))
            }
        }
        struct Entries<'a>(&'a [(Value, Value)]);
        impl serde::Serialize for Entries<'_> {
            fn serialize<S: serde::Serializer>(
                &self,
                s: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                s.collect_seq(self.0.iter().map(|(k, v)| Pair(k, v)))
            }
        }
        /// Struct fields as `to_json`'s map holds them: a name given twice
        /// keeps its first place and its last value.
        struct Fields<'a>(&'a [(String, Value)]);
        impl serde::Serialize for Fields<'_> {
            fn serialize<S: serde::Serializer>(
                &self,
                s: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                let f = self.0;
                let mut seen = std::collections::HashSet::new();
                let unique = f.iter().all(|(n, _)| seen.insert(n.as_str()));
                let mut m = s.serialize_map(None)?;
                if unique {
                    for (name, v) in f {
                        m.serialize_entry(name, &TaggedJson(v))?;
                    }
                } else {
                    let mut last = std::collections::HashMap::new();
                    for (name, v) in f {
                        last.insert(name.as_str(), v);
                    }
                    let mut done = std::collections::HashSet::new();
                    for (name, _) in f {
                        if done.insert(name.as_str()) {
                            if let Some(v) = last.get(name.as_str()) {
                                m.serialize_entry(name, &TaggedJson(v))?;
                            }
                        }
                    }
                }
                m.end()
            }
        }
        struct Variant<'a>(&'a str, &'a Value);
        impl serde::Serialize for Variant<'_> {
            fn serialize<S: serde::Serializer>(
                &self,
                s: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                one(s, self.0, &TaggedJson(self.1))
            }
        }
        match self.0 {
            Value::Bool(v) => one(s, "bool", v),
            Value::U8(v) => one(s, "u8", v),
            Value::U16(v) => one(s, "u16", v),
            Value::U32(v) => one(s, "u32", v),
            Value::U64(v) => one(s, "u64", v),
            Value::I8(v) => one(s, "i8", v),
            Value::I16(v) => one(s, "i16", v),
            Value::I32(v) => one(s, "i32", v),
            Value::I64(v) => one(s, "i64", v),
            // `to_json` holds an f32 as the f64 it widens to
            Value::F32(v) if v.is_finite() => one(s, "f32", &f64::from(*v)),
            Value::F32(v) => one(s, "f32", &format!("{:#010x}", v.to_bits())),
            Value::F64(v) if v.is_finite() => one(s, "f64", v),
            Value::F64(v) => one(s, "f64", &format!("{:#018x}", v.to_bits())),
            Value::Bytes(b) => one(s, "bytes", &hex(b)),
            Value::String(v) => one(s, "string", v),
            Value::Seq(items) => one(s, "seq", &Items(items)),
            Value::Struct(fields) => one(s, "struct", &Fields(fields)),
            Value::Option(None) => one(s, "none", &()),
            Value::Option(Some(v)) => one(s, "some", &TaggedJson(v)),
            Value::Enum(name, payload) => one(s, "enum", &Variant(name, payload)),
            Value::Unit => one(s, "unit", &()),
            Value::Map(entries) => one(s, "map", &Entries(entries)),
        }
    }
}

fn bad(expected: &str, found: &Json) -> Error {
    let mut text = found.to_string();
    if text.len() > 60 {
        text.truncate(57);
        text.push_str("...");
    }
    Error::malformed(format!("JSON value: expected {expected}, found {text}"))
}

fn uint<T: TryFrom<u64>>(j: &Json) -> Result<T> {
    j.as_u64().and_then(|v| T::try_from(v).ok()).ok_or_else(|| {
        bad(
            &format!(
                "an unsigned integer of {} bits",
                8 * std::mem::size_of::<T>()
            ),
            j,
        )
    })
}

fn int<T: TryFrom<i64>>(j: &Json) -> Result<T> {
    j.as_i64().and_then(|v| T::try_from(v).ok()).ok_or_else(|| {
        bad(
            &format!("a signed integer of {} bits", 8 * std::mem::size_of::<T>()),
            j,
        )
    })
}

fn parse_hex_u64(s: &str) -> Result<u64> {
    let digits = s.strip_prefix("0x").unwrap_or(s);
    u64::from_str_radix(digits, 16)
        .map_err(|_| Error::malformed(format!("JSON value: expected hex float bits, found {s:?}")))
}

/// Lower-case hex of `b`.
pub fn hex(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &byte in b {
        s.push(char::from(DIGITS[usize::from(byte >> 4)]));
        s.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    s
}

/// Parses hex (either case) into bytes.
pub fn unhex(s: &str) -> Result<Vec<u8>> {
    let err = || Error::malformed("JSON value: bytes must be an even-length hex string");
    if !s.len().is_multiple_of(2) {
        return Err(err());
    }
    s.as_bytes()
        .chunks_exact(2)
        .map(|pair| {
            let hi = (pair[0] as char).to_digit(16).ok_or_else(err)?;
            let lo = (pair[1] as char).to_digit(16).ok_or_else(err)?;
            Ok((hi * 16 + lo) as u8)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_keeps_types() {
        let v = Value::Struct(vec![
            ("a".into(), Value::U16(7)),
            ("b".into(), Value::I16(7)),
            (
                "nan".into(),
                Value::F64(f64::from_bits(0x7ff8_0000_0000_0001)),
            ),
            ("f".into(), Value::F32(0.1)),
            ("blob".into(), Value::Bytes(vec![0, 0xff])),
            ("e".into(), Value::Enum("X".into(), Box::new(Value::Unit))),
        ]);
        let j = v.to_json();
        assert_eq!(j["struct"]["a"], json!({"u16": 7}));
        let back = Value::from_json(&j).unwrap();
        // NaN != NaN, so compare the encodings
        assert_eq!(format!("{back:?}"), format!("{v:?}"));
        let e = Value::from_json(&json!({"struct": {"x": {"u8": 300}}})).unwrap_err();
        assert_eq!(e.location().field.as_deref(), Some("x"));
    }

    #[test]
    fn tagged_json_writes_what_to_json_writes() {
        let v = Value::Struct(vec![
            ("a".into(), Value::U16(7)),
            ("b".into(), Value::I64(-7)),
            ("x".into(), Value::Bool(true)),
            ("nan".into(), Value::F64(f64::NAN)),
            ("inf".into(), Value::F32(f32::INFINITY)),
            ("f".into(), Value::F32(0.1)),
            ("g".into(), Value::F64(1e300)),
            ("blob".into(), Value::Bytes(vec![0, 0xff, 0x10])),
            ("s".into(), Value::String("q\"\n\u{1}é".into())),
            // a name given twice: first place, last value
            ("a".into(), Value::U8(9)),
            (
                "seq".into(),
                Value::Seq(vec![Value::U32(1), Value::Option(None), Value::Unit]),
            ),
            ("empty".into(), Value::Seq(vec![])),
            ("none".into(), Value::Struct(vec![])),
            ("opt".into(), Value::Option(Some(Box::new(Value::I8(-1))))),
            ("e".into(), Value::Enum("X".into(), Box::new(Value::Unit))),
            (
                "m".into(),
                Value::Map(vec![(Value::String("k".into()), Value::U64(u64::MAX))]),
            ),
        ]);
        let want = serde_json::to_string_pretty(&v.to_json()).unwrap();
        let got = serde_json::to_string_pretty(&TaggedJson(&v)).unwrap();
        assert_eq!(got, want);
        let want = serde_json::to_string(&v.to_json()).unwrap();
        assert_eq!(serde_json::to_string(&TaggedJson(&v)).unwrap(), want);
    }
}
