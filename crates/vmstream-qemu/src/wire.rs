//! The constants of QEMU's stream framing, shared by the reader and the writer.

/// The stream magic, `QEVM`.
pub const MAGIC: [u8; 4] = *b"QEVM";
/// The only stream version read and written.
pub const VERSION: u32 = 3;

/// Top-level record type bytes (sections are `0x01..=0x04`, see
/// [`crate::SectionKind`]).
pub(crate) const EOF: u8 = 0x00;
pub(crate) const SUBSECTION: u8 = 0x05;
pub(crate) const VMDESC: u8 = 0x06;
pub(crate) const CONFIGURATION: u8 = 0x07;
pub(crate) const COMMAND: u8 = 0x08;
pub(crate) const FOOTER: u8 = 0x7e;

/// Command numbers the reader acts on.
pub(crate) const CMD_POSTCOPY_ADVISE: u16 = 3;
pub(crate) const CMD_PACKAGED: u16 = 7;

/// Command names by number (`""` for numbers QEMU does not define).
pub const COMMAND_NAMES: [&str; 12] = [
    "INVALID",
    "OPEN_RETURN_PATH",
    "PING",
    "POSTCOPY_ADVISE",
    "POSTCOPY_LISTEN",
    "POSTCOPY_RUN",
    "POSTCOPY_RAM_DISCARD",
    "PACKAGED",
    "ENABLE_COLO",
    "POSTCOPY_RESUME",
    "RECV_BITMAP",
    "SWITCHOVER_START",
];
