//! # vmstream: a self-describing, record-framed migration stream format
//!
//! A vmstream stream carries a virtual machine's state — device state as typed,
//! self-describing values and guest RAM as binary page batches — in checksummed
//! records that any tool can read without the device code that wrote them.
//! The normative specification is `docs/format.md`.
//!
//! ## API structure
//!
//! - Writing: [`StreamWriter`] over any `Write`, configured by [`WriterOptions`],
//!   built on the sans-IO [`FrameEncoder`], which hands out each call's records as
//!   [`Frames`] for callers that do their own I/O (one encoder per stream).
//! - Reading: [`SliceReader`] (zero-copy over `&[u8]`), [`StreamReader`] (any
//!   `Read`), and the push [`Decoder`] for sockets. All yield [`Item`]s holding
//!   a [`Record`]; all share [`StreamState`] and obey [`Limits`].
//! - Seeking: [`SeekReader`] over a `Read + Seek` file reads one device or one
//!   RAM range through the file's index, touching only the records it needs.
//! - Values: [`Value`] with its binary, JSON ([`Value::to_json`]) and serde
//!   ([`to_value`], [`from_value`], [`from_device`]) forms.
//! - Errors: one [`Error`] with an [`ErrorKind`] saying who is to blame and a
//!   [`Location`] saying where.
//!
//! ## Example
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use vmstream::{Arch, Header, Limits, Record, SliceReader, StreamKind, StreamWriter, WriterOptions, RamBlock};
//!
//! #[derive(Serialize, Deserialize, PartialEq, Debug)]
//! struct Uart { ier: u8, lcr: u8, fifo: Vec<u8> }
//!
//! # fn main() -> vmstream::Result<()> {
//! let header = Header::new(StreamKind::Snapshot, Arch::X86_64, 4096);
//! let mut w = StreamWriter::new(Vec::new(), header, WriterOptions::default())?;
//! w.write_device_serde("serial0", 0, "uart-16550", 1, &Uart { ier: 1, lcr: 3, fifo: vec![0x41] })?;
//! w.write_ram_blocks(&[RamBlock { id: 0, name: "ram".into(), size: 2 * 4096, page_size: 4096, flags: 0 }])?;
//! w.write_page(0, 0, 1, &[0xaa; 4096])?;
//! let bytes = w.finish()?;
//!
//! let mut r = SliceReader::new(&bytes, Limits::default())?;
//! while let Some(item) = r.next()? {
//!     match item.record {
//!         Record::Device(dev) => {
//!             let uart: Uart = vmstream::from_device(&dev)?;
//!             assert_eq!(uart.lcr, 3);
//!         }
//!         Record::Pages(batch) => assert_eq!(batch.pages().next().unwrap().index, 1),
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod crc;
mod cursor;
mod de;
mod encode;
mod error;
pub mod header;
pub mod index;
mod limits;
pub mod read;
pub mod record;
pub mod schema;
pub mod seek;
mod ser;
pub mod value;
pub mod write;

pub use crc::{crc32c, Crc32c};
pub use de::{from_device, from_value};
pub use encode::{FrameEncoder, Frames};
pub use error::{Error, ErrorKind, Location, Result};
pub use header::{Arch, Header, StreamKind};
pub use limits::Limits;
pub use read::{Decoder, Event, Item, Record, SliceReader, StreamReader, StreamState};
pub use record::{Compression, DeviceState, Page, PageBatch, RamBlock, RecordKind};
pub use seek::{MapSource, SeekReader};
pub use ser::{to_value, ValueSerializer};
pub use value::Value;
pub use write::{StreamWriter, WriterOptions};

/// The README's examples are compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
