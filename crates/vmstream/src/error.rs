//! The one error type of the `vmstream` crate.
//!
//! [`Error`] is small and opaque: callers branch on [`Error::kind`], which says who
//! is to blame, and read [`Error::location`] for where in the stream it happened.

use std::fmt;

/// Who is to blame for an [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The underlying reader or writer failed.
    Io,
    /// The stream breaks the format: bad magic, checksum, length, encoding.
    Malformed,
    /// The stream is valid but uses something this reader does not implement
    /// (a newer major version, a must-understand feature, an unknown mandatory record).
    Unsupported,
    /// Decoding would exceed a configured [`Limits`](crate::Limits) value.
    LimitExceeded,
    /// The stream is sound but its contents do not fit what the caller asked for
    /// (a serde type whose fields do not match a device's value).
    Incompatible,
    /// The API was used wrongly (e.g. polled after a fatal error, writing after finish).
    Usage,
}

impl ErrorKind {
    /// A short lower-case name, as used in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Io => "i/o error",
            ErrorKind::Malformed => "malformed stream",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::LimitExceeded => "limit exceeded",
            ErrorKind::Incompatible => "incompatible",
            ErrorKind::Usage => "usage error",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where in a stream an error was found. Every part is optional; the more is known
/// the more is filled in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Location {
    /// Byte offset from the start of the stream.
    pub offset: Option<u64>,
    /// Zero-based index of the record (the header is not a record).
    pub record: Option<u64>,
    /// Record kind name, e.g. `device`.
    pub record_kind: Option<&'static str>,
    /// Device instance name.
    pub device: Option<String>,
    /// Path of the field inside the device's value, e.g. `regs.rax` or `queues[2].head`.
    pub field: Option<String>,
}

impl Location {
    fn is_empty(&self) -> bool {
        self == &Location::default()
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        if let Some(off) = self.offset {
            write!(f, "offset {off:#x}")?;
            sep = ", ";
        }
        if let Some(rec) = self.record {
            write!(f, "{sep}record {rec}")?;
            sep = ", ";
        }
        if let Some(kind) = self.record_kind {
            write!(f, " ({kind})")?;
            sep = ", ";
        }
        if let Some(dev) = &self.device {
            write!(f, "{sep}device {dev:?}")?;
            sep = ", ";
        }
        if let Some(field) = &self.field {
            write!(f, "{sep}field {field}")?;
        }
        Ok(())
    }
}

/// The error type of the `vmstream` crate.
pub struct Error {
    inner: Box<Inner>,
}

struct Inner {
    kind: ErrorKind,
    message: String,
    location: Location,
    source: Option<std::io::Error>,
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind` with a message saying what was expected and what was found.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            inner: Box::new(Inner {
                kind,
                message: message.into(),
                location: Location::default(),
                source: None,
            }),
        }
    }

    pub(crate) fn malformed(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Malformed, message)
    }

    pub(crate) fn unsupported(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Unsupported, message)
    }

    pub(crate) fn limit(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::LimitExceeded, message)
    }

    pub(crate) fn usage(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Usage, message)
    }

    /// An unexpected end of input while `what` needed `needed` more bytes.
    pub(crate) fn truncated(what: &str, needed: usize, available: usize) -> Error {
        Error::malformed(format!(
            "truncated {what}: needed {needed} bytes, {available} available"
        ))
    }

    /// Who is to blame.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// What went wrong, without the location.
    pub fn message(&self) -> &str {
        &self.inner.message
    }

    /// Where it went wrong.
    pub fn location(&self) -> &Location {
        &self.inner.location
    }

    /// Sets the byte offset unless one is already known.
    pub fn at_offset(mut self, offset: u64) -> Error {
        self.inner.location.offset.get_or_insert(offset);
        self
    }

    /// Sets the record index and kind unless already known.
    pub fn in_record(mut self, index: u64, kind: &'static str) -> Error {
        self = self.at_record(index);
        let loc = &mut self.inner.location;
        if loc.record == Some(index) && loc.record_kind.is_none() {
            loc.record_kind = Some(kind);
        }
        self
    }

    /// Sets the record index (its kind not known yet: a record whose header
    /// did not parse) unless a record is already named.
    pub fn at_record(mut self, index: u64) -> Error {
        let loc = &mut self.inner.location;
        if loc.record.is_none() {
            loc.record = Some(index);
        }
        self
    }

    /// Sets the device name unless already known.
    pub fn in_device(mut self, device: &str) -> Error {
        self.inner
            .location
            .device
            .get_or_insert_with(|| device.to_owned());
        self
    }

    /// Prepends a path segment to the field path (`seg` then `.` then the old path).
    pub fn in_field(mut self, seg: &str) -> Error {
        let loc = &mut self.inner.location;
        loc.field = Some(match loc.field.take() {
            None => seg.to_owned(),
            Some(rest) if rest.starts_with('[') => format!("{seg}{rest}"),
            Some(rest) => format!("{seg}.{rest}"),
        });
        self
    }

    /// Prepends an index segment (`[i]`) to the field path.
    pub fn in_index(mut self, index: usize) -> Error {
        let loc = &mut self.inner.location;
        loc.field = Some(match loc.field.take() {
            None => format!("[{index}]"),
            Some(rest) if rest.starts_with('[') => format!("[{index}]{rest}"),
            Some(rest) => format!("[{index}].{rest}"),
        });
        self
    }
}

impl From<std::io::Error> for Error {
    fn from(err: std::io::Error) -> Error {
        let kind = if err.kind() == std::io::ErrorKind::UnexpectedEof {
            ErrorKind::Malformed
        } else {
            ErrorKind::Io
        };
        let message = if kind == ErrorKind::Malformed {
            "unexpected end of stream".to_owned()
        } else {
            // The cause belongs in the one line a command prints.
            format!("i/o failed: {err}")
        };
        Error {
            inner: Box::new(Inner {
                kind,
                message,
                location: Location::default(),
                source: Some(err),
            }),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.inner.kind)
            .field("message", &self.inner.message)
            .field("location", &self.inner.location)
            .field("source", &self.inner.source)
            .finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.inner.kind, self.inner.message)?;
        if !self.inner.location.is_empty() {
            write!(f, " (at {})", self.inner.location)?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner
            .source
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl serde::ser::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Error {
        Error::new(ErrorKind::Usage, msg.to_string())
    }
}

impl serde::de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Error {
        Error::new(ErrorKind::Incompatible, msg.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_stays_one_pointer() {
        assert_eq!(std::mem::size_of::<Error>(), std::mem::size_of::<usize>());
    }

    #[test]
    fn field_paths_compose() {
        let e = Error::malformed("x")
            .in_field("head")
            .in_index(2)
            .in_field("queues")
            .in_device("virtio-net")
            .at_offset(0x40)
            .in_record(3, "device");
        assert_eq!(e.location().field.as_deref(), Some("queues[2].head"));
        assert_eq!(
            e.to_string(),
            "malformed stream: x (at offset 0x40, record 3 (device), device \"virtio-net\", field queues[2].head)"
        );
    }
}
