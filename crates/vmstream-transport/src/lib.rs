//! # vmstream-transport: migration channels
//!
//! Where a migration's bytes go, and how the connections of one migration
//! find each other. This crate moves bytes and never interprets them.
//!
//! ## API structure
//!
//! - Addresses ([`address`]): [`MigrationChannel`] and [`MigrationAddress`]
//!   in the JSON shape of QMP's `MigrationChannel` (`socket` `inet`/`unix`/`fd`,
//!   `exec`, `file`), with errors that name the field;
//!   [`MigrationAddress::from_uri`] for legacy URIs.
//! - Connections ([`conn`]): [`connect`], [`Listener`] for sockets;
//!   [`open_source`], [`open_destination`] for one-way `exec` and `file`
//!   channels; each gives a [`Connection`] (`Read + Write + Send`) whose
//!   [`ShutdownHandle`] cancels it from another thread.
//! - Channel sets ([`channel`]): [`connect_set`] and [`accept_set`] form one
//!   main plus N data connections, each announced by a CRC32C-checked
//!   [`Preamble`]; strays are refused.
//! - TLS ([`tls`]): mutual authentication with [`TlsServer`] and
//!   [`TlsClient`], credentials from a QEMU-style directory ([`TlsCreds`]).
//! - Errors: one [`Error`] with an [`ErrorKind`] saying who is to blame.
//!
//! ## Example
//!
//! ```
//! use std::io::{Read, Write};
//! use std::time::Duration;
//! use vmstream_transport::{accept_set, connect_set, Listener, MigrationAddress, MigrationId};
//!
//! # fn main() -> vmstream_transport::Result<()> {
//! let addr = MigrationAddress::from_uri("tcp:127.0.0.1:0")?;
//! let listener = Listener::bind(&addr)?;
//! let target = listener.local_address().clone();
//!
//! let source = std::thread::spawn(move || -> vmstream_transport::Result<()> {
//!     let mut set = connect_set(&target, 2, MigrationId::random()?, None)?;
//!     set.main.write_all(b"hello").unwrap();
//!     set.data[1].write_all(b"pages").unwrap();
//!     Ok(())
//! });
//! let mut set = accept_set(&listener, None, Duration::from_secs(5))?;
//! let mut buf = [0u8; 5];
//! set.main.read_exact(&mut buf).unwrap();
//! assert_eq!(&buf, b"hello");
//! set.data[1].read_exact(&mut buf).unwrap();
//! assert_eq!(&buf, b"pages");
//! source.join().unwrap()?;
//! # Ok(()) }
//! ```

#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod address;
pub mod channel;
pub mod conn;
mod error;
pub mod tls;

pub use address::{ChannelType, MigrationAddress, MigrationChannel, SocketAddress};
pub use channel::{
    accept_set, connect_set, ChannelSet, MigrationId, Preamble, PreambleError, Refusal, Refused,
    Role, SetAssembler, MAX_DATA_CHANNELS,
};
pub use conn::{
    connect, open_destination, open_source, register_fd, unregister_fd, Connection, Listener,
    ShutdownHandle,
};
pub use error::{Error, ErrorKind, Result};
pub use tls::{Endpoint, TlsClient, TlsCreds, TlsServer};
