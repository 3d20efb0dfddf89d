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
}
