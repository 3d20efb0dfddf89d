//! Live migration over vmstream channels: an I/O-free protocol core
//! ([`proto`]), drivers that own threads and sockets ([`source`],
//! [`destination`]), the embedding API a VMM implements ([`vm`]), and a
//! QMP-shaped control server.

#![forbid(unsafe_code)]

pub mod control;
pub mod destination;
pub mod link;
mod out;
pub mod proto;
pub mod qmp;
pub mod relay;
pub mod source;
pub mod stats;
pub mod synthetic;
pub mod vm;

use std::fmt;

/// What went wrong in a migration, and on which side of the blame line.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

/// Who is to blame for an [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// `migrate_cancel` (or the embedder) cancelled it.
    Cancelled,
    /// The destination refused what the source offered.
    Refused,
    /// The peer broke the protocol or sent something that does not check.
    Peer,
    /// A stream or connection failed (I/O, framing, checksums).
    Stream,
    /// The VMM's hooks failed.
    Vm,
    /// The request cannot be carried out as given.
    Usage,
    /// A bug or a poisoned lock.
    Internal,
}

impl Error {
    fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
        }
    }
    pub(crate) fn cancelled() -> Error {
        Error::new(ErrorKind::Cancelled, "migration cancelled")
    }
    pub(crate) fn refused(m: impl Into<String>) -> Error {
        Error::new(ErrorKind::Refused, m)
    }
    pub(crate) fn peer(m: impl Into<String>) -> Error {
        Error::new(ErrorKind::Peer, m)
    }
    pub(crate) fn vm(m: impl Into<String>) -> Error {
        Error::new(ErrorKind::Vm, m)
    }
    pub(crate) fn usage(m: impl Into<String>) -> Error {
        Error::new(ErrorKind::Usage, m)
    }
    pub(crate) fn transport(m: impl Into<String>) -> Error {
        Error::new(ErrorKind::Stream, m)
    }
    pub(crate) fn internal(m: impl Into<String>) -> Error {
        Error::new(ErrorKind::Internal, m)
    }

    /// Who is to blame.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether the migration was cancelled.
    pub fn is_cancel(&self) -> bool {
        self.kind == ErrorKind::Cancelled
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<vmstream::Error> for Error {
    fn from(e: vmstream::Error) -> Error {
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            let s_text = s.to_string();
            if !message.contains(&s_text) {
                message = format!("{message}: {s_text}");
            }
            source = s.source();
        }
        Error::new(ErrorKind::Stream, message)
    }
}
