//! The event model every reader produces and every writer consumes.
//!
//! A QEMU stream is a sequence of [`Event`]s. [`crate::QemuReader`] and
//! [`crate::VmstreamSource`] produce them; [`crate::QemuWriter`],
//! [`crate::VmstreamSink`] and [`crate::Compactor`] consume them through
//! [`Sink`]. Page data is borrowed from the producer's buffer, never copied
//! into the event.

use vmstream::{DeviceState, Result};

/// The kind of a QEMU section record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SectionKind {
    /// `0x01`: the first section of an iterative handler, with a header.
    Start,
    /// `0x02`: a middle section of an iterative handler.
    Part,
    /// `0x03`: the last section of an iterative handler.
    End,
    /// `0x04`: a complete device section, with a header.
    Full,
}

impl SectionKind {
    /// The type byte on the wire.
    pub fn code(self) -> u8 {
        match self {
            SectionKind::Start => 0x01,
            SectionKind::Part => 0x02,
            SectionKind::End => 0x03,
            SectionKind::Full => 0x04,
        }
    }

    /// From the type byte.
    pub fn from_code(code: u8) -> Option<SectionKind> {
        Some(match code {
            0x01 => SectionKind::Start,
            0x02 => SectionKind::Part,
            0x03 => SectionKind::End,
            0x04 => SectionKind::Full,
            _ => return None,
        })
    }

    /// Name for messages (`section-start`, ...).
    pub fn name(self) -> &'static str {
        match self {
            SectionKind::Start => "section-start",
            SectionKind::Part => "section-part",
            SectionKind::End => "section-end",
            SectionKind::Full => "section-full",
        }
    }

    /// Whether the section carries an idstr/instance/version header.
    pub fn has_header(self) -> bool {
        matches!(self, SectionKind::Start | SectionKind::Full)
    }
}

/// The header of a START or FULL section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectionHeader {
    /// Handler name, e.g. `ram` or `0000:00:02.0/e1000e`.
    pub idstr: String,
    /// Instance id.
    pub instance_id: u32,
    /// Version of the section's format.
    pub version_id: u32,
}

/// One entry of the RAM block list (the MEM_SIZE record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuRamBlock {
    /// Block idstr, e.g. `pc.ram`.
    pub name: String,
    /// Used length in bytes.
    pub size: u64,
    /// The block's own page size, when the stream carries one (postcopy with huge pages).
    pub page_size: Option<u64>,
    /// Guest-physical address, when the stream carries one (`x-ignore-shared`).
    pub addr: Option<u64>,
}

/// One step of a QEMU migration stream.
#[derive(Debug)]
pub enum Event<'a> {
    /// The `QEVM` header.
    Header {
        /// Stream version (3).
        version: u32,
    },
    /// The configuration section: its body as on the wire (after the `0x07` byte).
    Configuration {
        /// Raw body.
        raw: &'a [u8],
        /// Machine type, e.g. `pc-q35-7.2`.
        machine: &'a str,
    },
    /// A section begins.
    Section {
        /// START, PART, END or FULL.
        kind: SectionKind,
        /// Section id.
        id: u32,
        /// For START and FULL.
        header: Option<&'a SectionHeader>,
    },
    /// The RAM block list (MEM_SIZE record) of the current RAM section.
    RamBlocks {
        /// The record as on the wire, from its `u64` header on.
        raw: &'a [u8],
        /// The parsed list; page events refer to blocks by index into it.
        blocks: &'a [QemuRamBlock],
    },
    /// A ZERO (fill 0) or PAGE record. Its block name is on the wire unless the
    /// previous page record was of the same block (CONTINUE).
    Page {
        /// Index into the block list.
        block: u32,
        /// Page number within the block.
        index: u64,
        /// The page bytes; `None` for a zero page.
        data: Option<&'a [u8]>,
    },
    /// The sender forgot its last block here: the next page record names its
    /// block even if it is the same as the previous one.
    Forget,
    /// Any other RAM record, kept as it came: XBZRLE, COMPRESS_PAGE, MULTIFD_FLUSH,
    /// and a ZERO record with a non-zero fill byte.
    RamRecord {
        /// The `u64` record header (offset and flags).
        header: u64,
        /// The block name, when on the wire.
        name: Option<&'a [u8]>,
        /// Everything after the header and name.
        payload: &'a [u8],
    },
    /// The state of the current FULL section's device. A [`vmstream::Value::Struct`]
    /// value was decoded through the vmdesc and is encoded back through it; a
    /// [`vmstream::Value::Bytes`] value is the section body as it came.
    Device(&'a DeviceState),
    /// The current section ends.
    SectionEnd {
        /// Whether the section footer (`0x7e`, section id) follows.
        footer: bool,
    },
    /// A COMMAND record. For PACKAGED, the nested records follow as events.
    Command {
        /// Command number.
        cmd: u16,
        /// Payload.
        payload: &'a [u8],
    },
    /// The EOF byte.
    Eof,
    /// The vmdesc JSON, the device description.
    Vmdesc {
        /// The JSON text exactly as QEMU wrote it.
        json: &'a [u8],
        /// Whether it is the stream's own trailer (`false`: supplied from elsewhere,
        /// used only to decode device sections).
        in_stream: bool,
    },
}

/// A consumer of events.
pub trait Sink {
    /// Takes one event.
    fn event(&mut self, event: &Event<'_>) -> Result<()>;
}

impl<S: Sink + ?Sized> Sink for &mut S {
    fn event(&mut self, event: &Event<'_>) -> Result<()> {
        (**self).event(event)
    }
}
