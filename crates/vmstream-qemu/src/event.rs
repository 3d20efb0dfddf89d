//! The event model every reader produces and every writer consumes.
//!
//! A QEMU stream is a sequence of [`Event`]s. [`crate::QemuReader`] and
//! [`crate::VmstreamSource`] produce them; [`crate::QemuWriter`],
//! [`crate::VmstreamSink`] and [`crate::Compactor`] consume them through
//! [`Sink`]. Page data is borrowed from the producer's buffer, never copied
//! into the event.

use vmstream::{Arch, DeviceState, Result};

use crate::mapped_ram::MappedRamHeader;

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
    /// What the stream says about its target before its first section: the
    /// guest architecture (`Unknown` where nothing decides it yet) and the
    /// target page size every page record and offset of the stream uses.
    Target {
        /// The architecture.
        arch: Arch,
        /// The target page size in bytes.
        page_size: u64,
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
    /// A block of a `mapped-ram` stream ([`crate::mapped_ram`]): its entry in
    /// the block list, its header and its bitmap. The list's MEM_SIZE header
    /// came first as an [`Event::RamBlocks`] with no blocks; each block then
    /// comes as one of these, followed by its present pages as
    /// [`Event::Page`]s with data, in ascending order. The stream goes on
    /// after the block's last page slot.
    MappedBlock {
        /// The block's index in the list (0, 1, ... in order).
        index: u32,
        /// The block.
        block: &'a QemuRamBlock,
        /// The block's entry in the list as on the wire: name, used length,
        /// and the optional fields.
        entry: &'a [u8],
        /// The header after the entry.
        header: &'a MappedRamHeader,
        /// The bitmap of present pages, as on the wire.
        bitmap: &'a [u8],
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
    /// One unit of an iterative section other than RAM (`spapr/htab`,
    /// `s390-storage_attributes`, `block`, `dirty-bitmap`), exactly as on the
    /// wire: a header, a chunk, an end marker (see [`crate::iterative`]).
    SectionData {
        /// The bytes.
        raw: &'a [u8],
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
    /// A multifd channel joins the migration: its `MultiFDInit` header.
    MultifdInit {
        /// The channel id (byte 24 of the header).
        channel: u8,
        /// The 64 header bytes as on the wire.
        raw: &'a [u8],
    },
    /// A packet of multifd channel `channel`. One [`Event::Page`] per page
    /// the packet lists follows it, its normal pages in packet order (their
    /// data decompressed) and then its zero pages: they are the packet's
    /// pages, not records of the main channel. A writer writes
    /// `packet.header`, then the data of those pages if the packet is
    /// [`plain`](crate::multifd::Packet::plain), else
    /// [`kept_payload`](crate::multifd::Packet::kept_payload).
    MultifdPacket {
        /// The channel id.
        channel: u8,
        /// The packet.
        packet: crate::multifd::Packet<'a>,
    },
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
