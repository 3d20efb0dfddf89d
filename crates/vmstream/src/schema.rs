//! Type descriptions (schemas) for device state, carried in optional `schema`
//! records so that a reader can check a device's value without its code.
//!
//! A schema is itself a [`Value`]: a scalar type is `String("u32")` (any name from
//! [`Value::type_name`], or `"any"`); containers are enum values:
//! `Enum("struct", Struct[(field, schema)...])`, `Enum("seq", schema)`,
//! `Enum("option", schema)`, `Enum("map", Seq[key, value])`, `Enum("enum", String("any"))`.

use crate::error::{Error, ErrorKind, Result};
use crate::value::Value;

/// The schema that `value` conforms to. Sequences take the schema of their first
/// element (`any` when empty or when elements differ).
pub fn of(value: &Value) -> Value {
    match value {
        Value::Struct(fields) => Value::Enum(
            "struct".into(),
            Box::new(Value::Struct(
                fields.iter().map(|(n, v)| (n.clone(), of(v))).collect(),
            )),
        ),
        Value::Seq(items) => {
            let first = items.first().map(of);
            let elem = match first {
                Some(s) if items.iter().skip(1).all(|i| of(i) == s) => s,
                _ => any(),
            };
            Value::Enum("seq".into(), Box::new(elem))
        }
        Value::Option(inner) => Value::Enum(
            "option".into(),
            Box::new(inner.as_deref().map_or_else(any, of)),
        ),
        Value::Map(_) => Value::Enum("map".into(), Box::new(Value::Seq(vec![any(), any()]))),
        Value::Enum(..) => Value::Enum("enum".into(), Box::new(any())),
        scalar => Value::String(scalar.type_name().into()),
    }
}

fn any() -> Value {
    Value::String("any".into())
}

/// Checks that `value` conforms to `schema`; the error names the field path.
pub fn check(schema: &Value, value: &Value) -> Result<()> {
    let mismatch = |expected: &str| {
        Error::new(
            ErrorKind::Incompatible,
            format!(
                "value does not match its schema: expected {expected}, found {}",
                value.type_name()
            ),
        )
    };
    match (schema, value) {
        (Value::String(t), _) if t == "any" => Ok(()),
        (Value::String(t), v)
            if v.type_name() == t && !matches!(v, Value::Struct(_) | Value::Seq(_)) =>
        {
            Ok(())
        }
        (Value::String(t), _) => Err(mismatch(t)),
        (Value::Enum(kind, inner), v) => match (kind.as_str(), &**inner, v) {
            ("struct", Value::Struct(fs), Value::Struct(vs)) => {
                if fs.len() != vs.len() {
                    return Err(Error::new(
                        ErrorKind::Incompatible,
                        format!(
                            "struct has {} fields; its schema has {}",
                            vs.len(),
                            fs.len()
                        ),
                    ));
                }
                for ((sn, ss), (vn, vv)) in fs.iter().zip(vs) {
                    if sn != vn {
                        return Err(Error::new(
                            ErrorKind::Incompatible,
                            format!("field {vn:?} where the schema has {sn:?}"),
                        ));
                    }
                    check(ss, vv).map_err(|e| e.in_field(vn))?;
                }
                Ok(())
            }
            ("seq", elem, Value::Seq(items)) => items
                .iter()
                .enumerate()
                .try_for_each(|(i, it)| check(elem, it).map_err(|e| e.in_index(i))),
            ("option", _, Value::Option(None)) => Ok(()),
            ("option", elem, Value::Option(Some(v))) => check(elem, v),
            ("map", _, Value::Map(_)) | ("enum", _, Value::Enum(..)) => Ok(()),
            (k, _, _) => Err(mismatch(k)),
        },
        _ => Err(Error::malformed("schema is not a valid type description")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inferred_schema_checks_its_value() {
        let v = Value::Struct(vec![
            ("a".into(), Value::U8(1)),
            ("q".into(), Value::Seq(vec![Value::U16(1), Value::U16(2)])),
            ("o".into(), Value::Option(None)),
        ]);
        let s = of(&v);
        check(&s, &v).unwrap();
        let bad = Value::Struct(vec![
            ("a".into(), Value::U8(1)),
            ("q".into(), Value::Seq(vec![Value::U16(1), Value::U32(2)])),
            ("o".into(), Value::Option(None)),
        ]);
        let e = check(&s, &bad).unwrap_err();
        assert_eq!(e.location().field.as_deref(), Some("q[1]"));
    }
}
