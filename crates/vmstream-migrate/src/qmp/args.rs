//! Reading command arguments the way QEMU's QObject input visitor does: members
//! taken by name and type-checked one by one, then anything left over is
//! "Parameter 'x' is unexpected". Errors name the member by its full path
//! (`channels[0].addr`), in QEMU's wording.

use serde_json::{Map, Value};

use super::error::QmpError;

/// The members of one JSON object being read as arguments.
#[derive(Debug)]
pub(crate) struct Args {
    map: Map<String, Value>,
    path: String,
}

impl Args {
    /// The members of `map`, which sits at `path` (empty for a command's
    /// arguments themselves).
    pub(crate) fn new(map: Map<String, Value>, path: &str) -> Args {
        Args {
            map,
            path: path.to_string(),
        }
    }

    /// Full name of member `key`.
    pub(crate) fn name(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// Takes member `key` as it is.
    pub(crate) fn take(&mut self, key: &str) -> Option<Value> {
        self.map.remove(key)
    }

    /// Takes optional member `key`.
    pub(crate) fn opt<T: FromArg>(&mut self, key: &str) -> Result<Option<T>, QmpError> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => T::from_arg(v, &self.name(key)).map(Some),
        }
    }

    /// Takes mandatory member `key`.
    pub(crate) fn req<T: FromArg>(&mut self, key: &str) -> Result<T, QmpError> {
        match self.opt(key)? {
            Some(v) => Ok(v),
            None => Err(QmpError::missing(&self.name(key))),
        }
    }

    /// Fails on the first member nobody took.
    pub(crate) fn finish(self) -> Result<(), QmpError> {
        match self.map.keys().next() {
            Some(key) => Err(QmpError::unexpected(&self.name(key))),
            None => Ok(()),
        }
    }
}

/// A type an argument member can be read as.
pub(crate) trait FromArg: Sized {
    /// Reads `v`, the member called `name` (its full path).
    fn from_arg(v: Value, name: &str) -> Result<Self, QmpError>;
}

impl FromArg for bool {
    fn from_arg(v: Value, name: &str) -> Result<bool, QmpError> {
        v.as_bool()
            .ok_or_else(|| QmpError::invalid_type(name, "boolean"))
    }
}

impl FromArg for String {
    fn from_arg(v: Value, name: &str) -> Result<String, QmpError> {
        match v {
            Value::String(s) => Ok(s),
            _ => Err(QmpError::invalid_type(name, "string")),
        }
    }
}

impl FromArg for Map<String, Value> {
    fn from_arg(v: Value, name: &str) -> Result<Map<String, Value>, QmpError> {
        match v {
            Value::Object(m) => Ok(m),
            _ => Err(QmpError::invalid_type(name, "object")),
        }
    }
}

impl<T: FromArg> FromArg for Vec<T> {
    fn from_arg(v: Value, name: &str) -> Result<Vec<T>, QmpError> {
        let Value::Array(items) = v else {
            return Err(QmpError::invalid_type(name, "array"));
        };
        items
            .into_iter()
            .enumerate()
            .map(|(i, item)| T::from_arg(item, &format!("{name}[{i}]")))
            .collect()
    }
}

/// An unsigned integer; negative or too large for `max` is out of range,
/// named `ty` (`uint8_t`, `uint64`, ...) as QEMU names it.
fn unsigned(v: &Value, name: &str, max: u64, ty: &str) -> Result<u64, QmpError> {
    let Value::Number(n) = v else {
        return Err(QmpError::invalid_type(name, "integer"));
    };
    match (n.as_u64(), n.is_i64()) {
        (Some(u), _) if u <= max => Ok(u),
        (Some(_), _) | (None, true) => Err(QmpError::invalid_value(name, ty)),
        (None, false) => Err(QmpError::invalid_type(name, "integer")),
    }
}

impl FromArg for u8 {
    fn from_arg(v: Value, name: &str) -> Result<u8, QmpError> {
        let n = unsigned(&v, name, u8::MAX.into(), "uint8_t")?;
        u8::try_from(n).map_err(|_| QmpError::invalid_value(name, "uint8_t"))
    }
}

impl FromArg for u32 {
    fn from_arg(v: Value, name: &str) -> Result<u32, QmpError> {
        let n = unsigned(&v, name, u32::MAX.into(), "uint32_t")?;
        u32::try_from(n).map_err(|_| QmpError::invalid_value(name, "uint32_t"))
    }
}

impl FromArg for u64 {
    fn from_arg(v: Value, name: &str) -> Result<u64, QmpError> {
        unsigned(&v, name, u64::MAX, "uint64")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(v: Value) -> Args {
        Args::new(v.as_object().unwrap().clone(), "")
    }

    #[test]
    fn members_by_type_with_qemu_errors() {
        let mut a = args(json!({"b": true, "s": "x", "n": 7, "l": [1, 2], "extra": 0}));
        assert!(a.req::<bool>("b").unwrap());
        assert_eq!(a.opt::<String>("s").unwrap().as_deref(), Some("x"));
        assert_eq!(a.req::<u8>("n").unwrap(), 7);
        assert_eq!(a.req::<Vec<u64>>("l").unwrap(), vec![1, 2]);
        assert_eq!(a.opt::<u64>("absent").unwrap(), None);
        assert_eq!(
            a.req::<u64>("absent").unwrap_err().desc,
            "Parameter 'absent' is missing"
        );
        assert_eq!(
            a.finish().unwrap_err().desc,
            "Parameter 'extra' is unexpected"
        );
    }

    #[test]
    fn type_and_range_errors() {
        let cases: [(Value, &str); 8] = [
            (
                json!({"x": "1"}),
                "Invalid parameter type for 'x', expected: integer",
            ),
            (
                json!({"x": 1.5}),
                "Invalid parameter type for 'x', expected: integer",
            ),
            (json!({"x": 256}), "Parameter 'x' expects uint8_t"),
            (json!({"x": -1}), "Parameter 'x' expects uint8_t"),
            (
                json!({"x": null}),
                "Invalid parameter type for 'x', expected: integer",
            ),
            (
                json!({"x": [1, "a"]}),
                "Invalid parameter type for 'x[1]', expected: integer",
            ),
            (
                json!({"x": {}}),
                "Invalid parameter type for 'x', expected: array",
            ),
            (json!({"x": [300]}), "Parameter 'x[0]' expects uint8_t"),
        ];
        for (i, (input, desc)) in cases.into_iter().enumerate() {
            let mut a = args(input);
            let err = if i < 5 {
                a.req::<u8>("x").unwrap_err()
            } else {
                a.req::<Vec<u8>>("x").unwrap_err()
            };
            assert_eq!(err.desc, desc);
        }
        let mut a =
            args(json!({"u": 18446744073709551615u64, "big": 18446744073709551616.0, "neg": -5}));
        assert_eq!(a.req::<u64>("u").unwrap(), u64::MAX);
        assert_eq!(
            a.req::<u64>("big").unwrap_err().desc,
            "Invalid parameter type for 'big', expected: integer"
        );
        assert_eq!(
            a.req::<u64>("neg").unwrap_err().desc,
            "Parameter 'neg' expects uint64"
        );
        let mut nested = Args::new(Map::new(), "channels[0].addr");
        assert_eq!(
            nested.req::<String>("host").unwrap_err().desc,
            "Parameter 'channels[0].addr.host' is missing"
        );
    }
}
