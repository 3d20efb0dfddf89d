//! serde: any `Serialize` type to a [`Value`].

use serde::ser::{self, Serialize};

use crate::error::{Error, Result};
use crate::value::Value;

/// Serializes `v` into the typed value model. Integer widths are kept exactly;
/// `char` becomes a one-character string; maps keep their iteration order.
pub fn to_value<T: Serialize + ?Sized>(v: &T) -> Result<Value> {
    v.serialize(ValueSerializer)
}

/// The serializer behind [`to_value`].
#[derive(Debug, Clone, Copy)]
pub struct ValueSerializer;

impl ser::Serializer for ValueSerializer {
    type Ok = Value;
    type Error = Error;
    type SerializeSeq = SeqSer;
    type SerializeTuple = SeqSer;
    type SerializeTupleStruct = SeqSer;
    type SerializeTupleVariant = VariantSer<SeqSer>;
    type SerializeMap = MapSer;
    type SerializeStruct = StructSer;
    type SerializeStructVariant = VariantSer<StructSer>;

    fn serialize_bool(self, v: bool) -> Result<Value> {
        Ok(Value::Bool(v))
    }
    fn serialize_i8(self, v: i8) -> Result<Value> {
        Ok(Value::I8(v))
    }
    fn serialize_i16(self, v: i16) -> Result<Value> {
        Ok(Value::I16(v))
    }
    fn serialize_i32(self, v: i32) -> Result<Value> {
        Ok(Value::I32(v))
    }
    fn serialize_i64(self, v: i64) -> Result<Value> {
        Ok(Value::I64(v))
    }
    fn serialize_u8(self, v: u8) -> Result<Value> {
        Ok(Value::U8(v))
    }
    fn serialize_u16(self, v: u16) -> Result<Value> {
        Ok(Value::U16(v))
    }
    fn serialize_u32(self, v: u32) -> Result<Value> {
        Ok(Value::U32(v))
    }
    fn serialize_u64(self, v: u64) -> Result<Value> {
        Ok(Value::U64(v))
    }
    fn serialize_f32(self, v: f32) -> Result<Value> {
        Ok(Value::F32(v))
    }
    fn serialize_f64(self, v: f64) -> Result<Value> {
        Ok(Value::F64(v))
    }
    fn serialize_char(self, v: char) -> Result<Value> {
        Ok(Value::String(v.to_string()))
    }
    fn serialize_str(self, v: &str) -> Result<Value> {
        Ok(Value::String(v.to_owned()))
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<Value> {
        Ok(Value::Bytes(v.to_vec()))
    }
    fn serialize_none(self) -> Result<Value> {
        Ok(Value::Option(None))
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<Value> {
        Ok(Value::Option(Some(Box::new(v.serialize(self)?))))
    }
    fn serialize_unit(self) -> Result<Value> {
        Ok(Value::Unit)
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<Value> {
        Ok(Value::Unit)
    }
    fn serialize_unit_variant(
        self,
        _n: &'static str,
        _i: u32,
        variant: &'static str,
    ) -> Result<Value> {
        Ok(Value::Enum(variant.to_owned(), Box::new(Value::Unit)))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        v: &T,
    ) -> Result<Value> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _n: &'static str,
        _i: u32,
        variant: &'static str,
        v: &T,
    ) -> Result<Value> {
        Ok(Value::Enum(
            variant.to_owned(),
            Box::new(v.serialize(self)?),
        ))
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<SeqSer> {
        Ok(SeqSer(Vec::with_capacity(len.unwrap_or(0).min(4096))))
    }
    fn serialize_tuple(self, len: usize) -> Result<SeqSer> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _n: &'static str, len: usize) -> Result<SeqSer> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _n: &'static str,
        _i: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<VariantSer<SeqSer>> {
        Ok(VariantSer {
            variant,
            inner: self.serialize_seq(Some(len))?,
        })
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<MapSer> {
        Ok(MapSer {
            entries: Vec::new(),
            key: None,
        })
    }
    fn serialize_struct(self, _n: &'static str, len: usize) -> Result<StructSer> {
        Ok(StructSer(Vec::with_capacity(len)))
    }
    fn serialize_struct_variant(
        self,
        _n: &'static str,
        _i: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<VariantSer<StructSer>> {
        Ok(VariantSer {
            variant,
            inner: StructSer(Vec::with_capacity(len)),
        })
    }
}

/// Builds a [`Value::Seq`].
#[derive(Debug)]
pub struct SeqSer(Vec<Value>);

impl ser::SerializeSeq for SeqSer {
    type Ok = Value;
    type Error = Error;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<()> {
        let i = self.0.len();
        self.0
            .push(v.serialize(ValueSerializer).map_err(|e| e.in_index(i))?);
        Ok(())
    }
    fn end(self) -> Result<Value> {
        Ok(Value::Seq(self.0))
    }
}

impl ser::SerializeTuple for SeqSer {
    type Ok = Value;
    type Error = Error;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<()> {
        ser::SerializeSeq::serialize_element(self, v)
    }
    fn end(self) -> Result<Value> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeTupleStruct for SeqSer {
    type Ok = Value;
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<()> {
        ser::SerializeSeq::serialize_element(self, v)
    }
    fn end(self) -> Result<Value> {
        ser::SerializeSeq::end(self)
    }
}

/// Builds a [`Value::Struct`].
#[derive(Debug)]
pub struct StructSer(Vec<(String, Value)>);

impl ser::SerializeStruct for StructSer {
    type Ok = Value;
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, v: &T) -> Result<()> {
        self.0.push((
            key.to_owned(),
            v.serialize(ValueSerializer).map_err(|e| e.in_field(key))?,
        ));
        Ok(())
    }
    fn skip_field(&mut self, _key: &'static str) -> Result<()> {
        Ok(())
    }
    fn end(self) -> Result<Value> {
        Ok(Value::Struct(self.0))
    }
}

/// Builds a [`Value::Map`].
#[derive(Debug)]
pub struct MapSer {
    entries: Vec<(Value, Value)>,
    key: Option<Value>,
}

impl ser::SerializeMap for MapSer {
    type Ok = Value;
    type Error = Error;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> Result<()> {
        self.key = Some(k.serialize(ValueSerializer)?);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<()> {
        let key = self
            .key
            .take()
            .ok_or_else(|| Error::usage("map value without a key"))?;
        let v = v.serialize(ValueSerializer)?;
        self.entries.push((key, v));
        Ok(())
    }
    fn end(self) -> Result<Value> {
        Ok(Value::Map(self.entries))
    }
}

/// Wraps a tuple or struct variant.
#[derive(Debug)]
pub struct VariantSer<S> {
    variant: &'static str,
    inner: S,
}

impl ser::SerializeTupleVariant for VariantSer<SeqSer> {
    type Ok = Value;
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<()> {
        ser::SerializeSeq::serialize_element(&mut self.inner, v)
    }
    fn end(self) -> Result<Value> {
        Ok(Value::Enum(
            self.variant.to_owned(),
            Box::new(Value::Seq(self.inner.0)),
        ))
    }
}

impl ser::SerializeStructVariant for VariantSer<StructSer> {
    type Ok = Value;
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, v: &T) -> Result<()> {
        ser::SerializeStruct::serialize_field(&mut self.inner, key, v)
    }
    fn end(self) -> Result<Value> {
        Ok(Value::Enum(
            self.variant.to_owned(),
            Box::new(Value::Struct(self.inner.0)),
        ))
    }
}
