//! The error half of a QMP response: `{"error": {"class": ..., "desc": ...}}`.

use std::fmt;

use serde::Serialize;

/// QEMU's error classes (`QapiErrorClass` in `qapi/error.json`). Clients branch on
/// the class; the description is for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[non_exhaustive]
pub enum ErrorClass {
    /// Everything without a more specific class, bad arguments included.
    GenericError,
    /// The command does not exist, or may not run now (before capabilities
    /// negotiation, only `qmp_capabilities` exists).
    CommandNotFound,
    /// A device exists but is not active.
    DeviceNotActive,
    /// A device does not exist.
    DeviceNotFound,
    /// The KVM capability a command needs is missing.
    #[serde(rename = "KVMMissingCap")]
    KvmMissingCap,
}

impl ErrorClass {
    /// The class as QMP spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::GenericError => "GenericError",
            ErrorClass::CommandNotFound => "CommandNotFound",
            ErrorClass::DeviceNotActive => "DeviceNotActive",
            ErrorClass::DeviceNotFound => "DeviceNotFound",
            ErrorClass::KvmMissingCap => "KVMMissingCap",
        }
    }

    /// The class named `name`; an unknown name (from a newer server) reads as
    /// [`ErrorClass::GenericError`], as QMP's compatibility rules allow.
    pub fn from_name(name: &str) -> ErrorClass {
        match name {
            "CommandNotFound" => ErrorClass::CommandNotFound,
            "DeviceNotActive" => ErrorClass::DeviceNotActive,
            "DeviceNotFound" => ErrorClass::DeviceNotFound,
            "KVMMissingCap" => ErrorClass::KvmMissingCap,
            _ => ErrorClass::GenericError,
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A command's failure as QMP reports it: a class and a human-readable description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QmpError {
    /// What kind of failure.
    pub class: ErrorClass,
    /// What went wrong, for people; clients must not parse it.
    pub desc: String,
}

impl QmpError {
    /// An error of `class`.
    pub fn new(class: ErrorClass, desc: impl Into<String>) -> QmpError {
        QmpError {
            class,
            desc: desc.into(),
        }
    }

    /// A `GenericError`.
    pub fn generic(desc: impl Into<String>) -> QmpError {
        QmpError::new(ErrorClass::GenericError, desc)
    }

    /// A `CommandNotFound` error for `command`, worded as QEMU words it.
    pub fn command_not_found(command: &str) -> QmpError {
        QmpError::new(
            ErrorClass::CommandNotFound,
            format!("The command {command} has not been found"),
        )
    }

    /// "Parameter 'NAME' is missing".
    pub fn missing(name: &str) -> QmpError {
        QmpError::generic(format!("Parameter '{name}' is missing"))
    }

    /// "Parameter 'NAME' is unexpected": a member the command does not know.
    pub fn unexpected(name: &str) -> QmpError {
        QmpError::generic(format!("Parameter '{name}' is unexpected"))
    }

    /// "Invalid parameter type for 'NAME', expected: TYPE" (`integer`, `string`,
    /// `boolean`, `number`, `object`, `array`).
    pub fn invalid_type(name: &str, expected: &str) -> QmpError {
        QmpError::generic(format!(
            "Invalid parameter type for '{name}', expected: {expected}"
        ))
    }

    /// "Parameter 'NAME' expects WHAT": a value of the right JSON type outside
    /// what the parameter takes.
    pub fn invalid_value(name: &str, expects: &str) -> QmpError {
        QmpError::generic(format!("Parameter '{name}' expects {expects}"))
    }

    /// The `{"class": ..., "desc": ...}` object of an error response.
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("class".into(), self.class.as_str().into());
        m.insert("desc".into(), self.desc.clone().into());
        serde_json::Value::Object(m)
    }

    /// Reads the `{"class": ..., "desc": ...}` object of an error response;
    /// `None` if it does not have that shape.
    pub fn from_json(v: &serde_json::Value) -> Option<QmpError> {
        let class = v.get("class")?.as_str()?;
        let desc = v.get("desc")?.as_str()?;
        Some(QmpError::new(ErrorClass::from_name(class), desc))
    }
}

impl fmt::Display for QmpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.class, self.desc)
    }
}

impl std::error::Error for QmpError {}
