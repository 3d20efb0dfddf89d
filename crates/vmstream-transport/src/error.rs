//! The one error type of the transport crate.
//!
//! [`Error`] is small and opaque: callers branch on [`Error::kind`], which says
//! who is to blame; the message names the field, file or peer concerned, and
//! the underlying I/O or TLS error, if any, is the [`source`](std::error::Error::source).

use std::fmt;
use std::io;

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Who is to blame for an [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A channel address or legacy URI is malformed: the message names the field.
    Address,
    /// Valid, but not something this implementation does (`rdma`, `vsock`,
    /// multipath TCP, a preamble version from the future).
    Unsupported,
    /// The API was used wrongly: data channels over a one-way transport, an
    /// `fd` name that was never registered, a write on a read-only channel.
    Usage,
    /// The operating system failed an operation: connect, bind, read, spawn.
    Io,
    /// TLS credentials could not be loaded, or a handshake failed (unknown CA,
    /// wrong host name, missing client certificate).
    Tls,
    /// A peer's channel preamble is malformed: bad magic, checksum or field.
    Malformed,
    /// A well-formed connection was refused: it does not belong to the
    /// channel set being formed (wrong migration id, duplicate channel, a
    /// second main channel, too many connections).
    Refused,
    /// A deadline passed: a silent peer, or a channel set that did not form.
    Timeout,
    /// The operation was cancelled through a [`ShutdownHandle`](crate::ShutdownHandle).
    Cancelled,
}

impl ErrorKind {
    /// A short lower-case name, as used in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Address => "bad address",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Usage => "usage error",
            ErrorKind::Io => "i/o error",
            ErrorKind::Tls => "tls error",
            ErrorKind::Malformed => "malformed preamble",
            ErrorKind::Refused => "refused",
            ErrorKind::Timeout => "timed out",
            ErrorKind::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

type BoxedSource = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error from this crate: a kind, a message naming what was wrong, and
/// the lower-level error that caused it, if any.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
    #[source]
    source: Option<BoxedSource>,
}

impl Error {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// An error of `kind` with `message`, caused by `source`.
    pub fn with_source(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl Into<BoxedSource>,
    ) -> Error {
        Error {
            kind,
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// Who is to blame.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message alone, without the source.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The kind of the underlying I/O error, if this error wraps one.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        self.source
            .as_deref()
            .and_then(|s| s.downcast_ref::<io::Error>())
            .map(io::Error::kind)
    }

    /// The message followed by every source in the chain, `: `-separated.
    pub fn chain(&self) -> String {
        let mut out = self.message.clone();
        let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(self);
        while let Some(e) = cur {
            out.push_str(": ");
            out.push_str(&e.to_string());
            cur = e.source();
        }
        out
    }

    pub(crate) fn address(field: impl fmt::Display, message: impl fmt::Display) -> Error {
        Error::new(ErrorKind::Address, format!("{field}: {message}"))
    }

    pub(crate) fn usage(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Usage, message)
    }

    pub(crate) fn unsupported(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Unsupported, message)
    }

    /// An I/O failure while doing `what`. Timeouts and cancellation get
    /// their own kinds, and an I/O error that carries a TLS error becomes a
    /// TLS error.
    pub(crate) fn io(what: impl Into<String>, err: io::Error) -> Error {
        let kind = match err.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ErrorKind::Timeout,
            _ if err
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>()) =>
            {
                ErrorKind::Tls
            }
            _ => ErrorKind::Io,
        };
        Error::with_source(kind, what, err)
    }
}
