//! serde: a [`Value`] to any `Deserialize` type, resolving struct fields by name.
//!
//! Unknown fields in the value are skipped (unless the type says
//! `deny_unknown_fields`), missing fields marked `#[serde(default)]` (and missing
//! `Option` fields) take their defaults. A mismatch names the field path, the
//! expected type and the type found.

use serde::de::{self, DeserializeOwned, IntoDeserializer, Visitor};

use crate::error::{Error, ErrorKind, Result};
use crate::record::DeviceState;
use crate::value::Value;

/// Deserializes `T` from a value.
pub fn from_value<T: DeserializeOwned>(v: &Value) -> Result<T> {
    T::deserialize(v).map_err(incompatible)
}

/// Deserializes `T` from a device's state; errors name the device.
pub fn from_device<T: DeserializeOwned>(dev: &DeviceState) -> Result<T> {
    from_value(&dev.value).map_err(|e| e.in_device(&dev.name))
}

fn incompatible(e: Error) -> Error {
    if e.kind() == ErrorKind::Incompatible {
        e
    } else {
        Error::new(ErrorKind::Incompatible, e.message().to_owned())
    }
}

fn unexpected(v: &Value) -> de::Unexpected<'_> {
    match v {
        Value::Bool(b) => de::Unexpected::Bool(*b),
        Value::U8(_) | Value::U16(_) | Value::U32(_) | Value::U64(_) => {
            de::Unexpected::Unsigned(v.as_u64().unwrap_or_default())
        }
        Value::I8(x) => de::Unexpected::Signed((*x).into()),
        Value::I16(x) => de::Unexpected::Signed((*x).into()),
        Value::I32(x) => de::Unexpected::Signed((*x).into()),
        Value::I64(x) => de::Unexpected::Signed(*x),
        Value::F32(x) => de::Unexpected::Float((*x).into()),
        Value::F64(x) => de::Unexpected::Float(*x),
        Value::Bytes(b) => de::Unexpected::Bytes(b),
        Value::String(s) => de::Unexpected::Str(s),
        Value::Seq(_) => de::Unexpected::Seq,
        Value::Struct(_) | Value::Map(_) => de::Unexpected::Map,
        Value::Option(_) => de::Unexpected::Option,
        Value::Enum(..) => de::Unexpected::Enum,
        Value::Unit => de::Unexpected::Unit,
    }
}

impl<'de> de::Deserializer<'de> for &'de Value {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self {
            Value::Bool(v) => visitor.visit_bool(*v),
            Value::U8(v) => visitor.visit_u8(*v),
            Value::U16(v) => visitor.visit_u16(*v),
            Value::U32(v) => visitor.visit_u32(*v),
            Value::U64(v) => visitor.visit_u64(*v),
            Value::I8(v) => visitor.visit_i8(*v),
            Value::I16(v) => visitor.visit_i16(*v),
            Value::I32(v) => visitor.visit_i32(*v),
            Value::I64(v) => visitor.visit_i64(*v),
            Value::F32(v) => visitor.visit_f32(*v),
            Value::F64(v) => visitor.visit_f64(*v),
            Value::Bytes(b) => visitor.visit_borrowed_bytes(b),
            Value::String(s) => visitor.visit_borrowed_str(s),
            Value::Seq(items) => visitor.visit_seq(SeqAccess {
                iter: items.iter(),
                index: 0,
            }),
            Value::Struct(fields) => visitor.visit_map(StructAccess {
                iter: fields.iter(),
                current: None,
            }),
            Value::Map(entries) => visitor.visit_map(MapAccess {
                iter: entries.iter(),
                current: None,
                index: 0,
            }),
            Value::Option(None) | Value::Unit => visitor.visit_unit(),
            Value::Option(Some(v)) => visitor.visit_some(&**v),
            Value::Enum(..) => visitor.visit_enum(EnumAccess(self)),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self {
            Value::Option(None) | Value::Unit => visitor.visit_none(),
            Value::Option(Some(v)) => visitor.visit_some(&**v),
            other => visitor.visit_some(other),
        }
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self {
            Value::Bytes(b) => visitor.visit_seq(BytesAccess { iter: b.iter() }),
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        match self {
            Value::Enum(..) => visitor.visit_enum(EnumAccess(self)),
            Value::String(s) => visitor.visit_enum(s.as_str().into_deserializer()),
            other => Err(de::Error::invalid_type(
                unexpected(other),
                &"an enum variant",
            )),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self {
            Value::Unit | Value::Option(None) => visitor.visit_unit(),
            other => Err(de::Error::invalid_type(unexpected(other), &"unit")),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit_struct tuple_struct map struct identifier
    }
}

struct SeqAccess<'de> {
    iter: std::slice::Iter<'de, Value>,
    index: usize,
}

impl<'de> de::SeqAccess<'de> for SeqAccess<'de> {
    type Error = Error;
    fn next_element_seed<T: de::DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>> {
        match self.iter.next() {
            Some(v) => {
                let i = self.index;
                self.index += 1;
                seed.deserialize(v).map(Some).map_err(|e| e.in_index(i))
            }
            None => Ok(None),
        }
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

struct BytesAccess<'de> {
    iter: std::slice::Iter<'de, u8>,
}

impl<'de> de::SeqAccess<'de> for BytesAccess<'de> {
    type Error = Error;
    fn next_element_seed<T: de::DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>> {
        match self.iter.next() {
            Some(b) => seed.deserialize((*b).into_deserializer()).map(Some),
            None => Ok(None),
        }
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

struct StructAccess<'de> {
    iter: std::slice::Iter<'de, (String, Value)>,
    current: Option<&'de (String, Value)>,
}

impl<'de> de::MapAccess<'de> for StructAccess<'de> {
    type Error = Error;
    fn next_key_seed<K: de::DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        match self.iter.next() {
            Some(entry) => {
                self.current = Some(entry);
                let key: de::value::BorrowedStrDeserializer<'de, Error> =
                    de::value::BorrowedStrDeserializer::new(&entry.0);
                seed.deserialize(key).map(Some)
            }
            None => Ok(None),
        }
    }
    fn next_value_seed<V: de::DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        let (name, v) = self
            .current
            .take()
            .ok_or_else(|| Error::usage("value before key"))?;
        seed.deserialize(v).map_err(|e| e.in_field(name))
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

struct MapAccess<'de> {
    iter: std::slice::Iter<'de, (Value, Value)>,
    current: Option<&'de Value>,
    index: usize,
}

impl<'de> de::MapAccess<'de> for MapAccess<'de> {
    type Error = Error;
    fn next_key_seed<K: de::DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        match self.iter.next() {
            Some((k, v)) => {
                self.current = Some(v);
                self.index += 1;
                seed.deserialize(k).map(Some)
            }
            None => Ok(None),
        }
    }
    fn next_value_seed<V: de::DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        let v = self
            .current
            .take()
            .ok_or_else(|| Error::usage("value before key"))?;
        let i = self.index.saturating_sub(1);
        seed.deserialize(v).map_err(|e| e.in_index(i))
    }
}

struct EnumAccess<'de>(&'de Value);

impl<'de> de::EnumAccess<'de> for EnumAccess<'de> {
    type Error = Error;
    type Variant = VariantAccess<'de>;
    fn variant_seed<V: de::DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, VariantAccess<'de>)> {
        let Value::Enum(name, payload) = self.0 else {
            return Err(de::Error::invalid_type(
                unexpected(self.0),
                &"an enum variant",
            ));
        };
        let key: de::value::BorrowedStrDeserializer<'de, Error> =
            de::value::BorrowedStrDeserializer::new(name);
        let v = seed.deserialize(key)?;
        Ok((v, VariantAccess { name, payload }))
    }
}

struct VariantAccess<'de> {
    name: &'de str,
    payload: &'de Value,
}

impl<'de> de::VariantAccess<'de> for VariantAccess<'de> {
    type Error = Error;
    fn unit_variant(self) -> Result<()> {
        match self.payload {
            Value::Unit => Ok(()),
            other => Err(de::Error::invalid_type(
                unexpected(other),
                &"a unit variant",
            )),
        }
    }
    fn newtype_variant_seed<T: de::DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value> {
        seed.deserialize(self.payload)
            .map_err(|e| e.in_field(self.name))
    }
    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value> {
        de::Deserializer::deserialize_seq(self.payload, visitor).map_err(|e| e.in_field(self.name))
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        de::Deserializer::deserialize_any(self.payload, visitor).map_err(|e| e.in_field(self.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::to_value;
    use serde::{Deserialize, Serialize};
    use std::collections::BTreeMap;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Mode {
        Off,
        Level(u8),
        Pair(u16, i16),
        Named { a: u32 },
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Dev {
        id: u32,
        name: String,
        regs: [u64; 3],
        fifo: Vec<u8>,
        mode: Mode,
        modes: Vec<Mode>,
        opt: Option<i8>,
        map: BTreeMap<String, u16>,
        c: char,
        t: (bool, f64),
        unit: (),
    }

    fn dev() -> Dev {
        Dev {
            id: 7,
            name: "uart".into(),
            regs: [1, 2, 3],
            fifo: vec![1, 2],
            mode: Mode::Named { a: 1 },
            modes: vec![Mode::Off, Mode::Level(3), Mode::Pair(1, -1)],
            opt: Some(-3),
            map: [("x".to_owned(), 5)].into_iter().collect(),
            c: 'é',
            t: (true, 2.5),
            unit: (),
        }
    }

    #[test]
    fn serde_round_trip() {
        let v = to_value(&dev()).unwrap();
        assert_eq!(v.field("id"), Some(&Value::U32(7)));
        assert_eq!(from_value::<Dev>(&v).unwrap(), dev());
    }

    #[derive(Debug, PartialEq, Deserialize)]
    struct DevV2 {
        id: u32,
        #[serde(default)]
        added: u16,
        opt: Option<i8>,
        missing_opt: Option<u8>,
    }

    #[test]
    fn name_based_resolution() {
        let v = to_value(&dev()).unwrap();
        let v2: DevV2 = from_value(&v).unwrap();
        assert_eq!(
            v2,
            DevV2 {
                id: 7,
                added: 0,
                opt: Some(-3),
                missing_opt: None
            }
        );
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Wrong {
        modes: Vec<Mode>,
        name: u32,
    }

    #[test]
    fn mismatch_names_field_expected_and_found() {
        let dev_state = DeviceState {
            name: "serial0".into(),
            instance_id: 0,
            type_name: "uart".into(),
            version: 1,
            value: to_value(&dev()).unwrap(),
        };
        let e = from_device::<Wrong>(&dev_state).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Incompatible);
        assert_eq!(e.location().field.as_deref(), Some("name"));
        assert_eq!(e.location().device.as_deref(), Some("serial0"));
        assert!(e.message().contains("expected u32"), "{e}");
        assert!(e.message().contains("string"), "{e}");
    }
}
