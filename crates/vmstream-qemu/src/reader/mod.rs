//! The QEMU stream reader: bytes to [`Event`]s.
//!
//! One module per job: this one frames the stream (header, sections, commands,
//! footers, postcopy packages) and dispatches; `configuration` reads the
//! configuration section, `ram_section` the RAM records, `device` decodes a
//! device section through the vmdesc and checks it encodes back, `description`
//! finds the vmdesc (read ahead, buffered, or a twin's) and reads the trailer,
//! and `footer_scan` delimits undescribed sections by their footers.

mod configuration;
mod description;
mod device;
mod footer_scan;
mod iterative_section;
mod ram_section;

use std::collections::HashMap;
use std::io::Read;

use vmstream::{Arch, Error, ErrorKind, Limits, Result};

use crate::arch;
use crate::event::{Event, QemuRamBlock, SectionHeader, SectionKind, Sink};
use crate::input::Input;
use crate::iterative::Handler;
use crate::vmdesc::Vmdesc;
use crate::wire::{
    CMD_PACKAGED, CMD_POSTCOPY_ADVISE, COMMAND, COMMAND_NAMES, CONFIGURATION, EOF, FOOTER, MAGIC,
    SUBSECTION, VERSION,
};

/// What the reader learned about a stream.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Machine type from the configuration section.
    pub machine: Option<String>,
    /// The guest architecture: what [`Event::Target`] said, or what the vCPU
    /// state showed later where that was undecided (`Unknown` where nothing
    /// decides it).
    pub arch: Option<Arch>,
    /// The target page size.
    pub page_size: u64,
    /// Device sections decoded into typed values through the vmdesc.
    pub typed_devices: u64,
    /// Device sections kept as bytes (no usable description), by name.
    pub raw_devices: Vec<String>,
    /// Bytes read.
    pub bytes: u64,
}

#[derive(Debug)]
struct SectionInfo {
    ram: bool,
    iterative: Option<Handler>,
}

/// Reads a QEMU migration stream and hands its events to a [`Sink`].
///
/// Device sections are delimited with the stream's vmdesc trailer. In a pipe
/// that trailer comes last, so at the first device section the rest of the
/// stream (device state only, in a normal precopy stream) is buffered, up to
/// [`Limits::max_alloc`]. A description supplied with
/// [`QemuReader::with_vmdesc`] (a seekable file's own trailer, read first, or a
/// twin stream's) avoids that buffering when it is the stream's own.
#[derive(Debug)]
pub struct QemuReader<R> {
    input: Input<R>,
    limits: Limits,
    page_size: u64,
    page_bits_given: bool,
    arch: Option<Arch>,
    arch_candidates: &'static [Arch],
    target_sent: bool,
    /// Whether sections have footers, once the first section told.
    footers: Option<bool>,
    ignore_shared: bool,
    mapped_ram: bool,
    postcopy_huge: bool,
    blocks: Vec<QemuRamBlock>,
    last_block: Option<u32>,
    sections: HashMap<u32, SectionInfo>,
    packages: Vec<u64>,
    supplied: Option<(Vec<u8>, bool)>,
    vmdesc: Option<Vmdesc>,
    vmdesc_json: Option<(Vec<u8>, bool)>,
    vmdesc_emitted: bool,
    trailer_at: Option<u64>,
    rest_buffered: bool,
    live: bool,
    devices: usize,
    summary: Summary,
    scratch: Vec<u8>,
}

fn malformed(msg: impl Into<String>, at: u64) -> Error {
    Error::new(ErrorKind::Malformed, msg.into()).at_offset(at)
}

impl<R: Read> QemuReader<R> {
    /// A reader over `inner`.
    pub fn new(inner: R, limits: Limits) -> QemuReader<R> {
        QemuReader {
            input: Input::new(inner),
            limits,
            page_size: 4096,
            page_bits_given: false,
            arch: None,
            arch_candidates: &[],
            target_sent: false,
            footers: None,
            ignore_shared: false,
            mapped_ram: false,
            postcopy_huge: false,
            blocks: Vec::new(),
            last_block: None,
            sections: HashMap::new(),
            packages: Vec::new(),
            supplied: None,
            vmdesc: None,
            vmdesc_json: None,
            vmdesc_emitted: false,
            trailer_at: None,
            rest_buffered: false,
            live: false,
            devices: 0,
            summary: Summary::default(),
            scratch: Vec::new(),
        }
    }

    /// A reader over a seekable `inner` (a file), whose stream starts at its
    /// current position: the holes of a `mapped-ram` stream (absent pages,
    /// padding) are skipped by seeking instead of reading, and its offsets
    /// are checked against the length before any seek.
    pub fn seekable(inner: R, limits: Limits) -> Result<QemuReader<R>>
    where
        R: std::io::Seek,
    {
        let mut r = QemuReader::new(inner, limits);
        r.input = Input::seekable(r.input.into_inner())?;
        Ok(r)
    }

    /// Supplies the device description. `own` says it is the stream's own
    /// trailer (read ahead from a file); otherwise it comes from a twin stream
    /// and is used only when the stream has none.
    pub fn with_vmdesc(mut self, json: Vec<u8>, own: bool) -> QemuReader<R> {
        self.supplied = Some((json, own));
        self
    }

    /// Reads a live migration's stream: it ends with its vmdesc trailer, and
    /// the reader returns there instead of waiting for the sender to close
    /// the connection, which a source QEMU with a return path keeps open
    /// until the destination has answered. A stream without a trailer still
    /// ends at the end of the input.
    pub fn live(mut self) -> QemuReader<R> {
        self.live = true;
        self
    }

    /// Says the guest architecture, where the stream does not (`--arch`): it
    /// is taken over whatever the stream shows, and gives the target page
    /// size where the stream has no configuration section that does.
    pub fn with_arch(mut self, arch: Arch) -> QemuReader<R> {
        self.arch = Some(arch);
        self
    }

    /// Reads the whole stream, handing every event to `sink`.
    pub fn run(mut self, sink: &mut dyn Sink) -> Result<Summary> {
        self.header(sink)?;
        if let Some((json, true)) = self.supplied.take_if(|(_, own)| *own) {
            // The trailer read ahead from a file. If it does not parse, the
            // same bytes fail again where the stream carries them, and that
            // error can say at which offset.
            if self.set_vmdesc(json, true, None).is_err() {
                self.vmdesc = None;
                self.vmdesc_json = None;
            }
        }
        self.target(sink)?;
        loop {
            let at = self.input.offset();
            if let Some(&end) = self.packages.last() {
                if at == end {
                    self.packages.pop();
                    continue;
                }
            }
            let ty = self.input.u8("record type")?;
            match ty {
                EOF => {
                    if !self.packages.is_empty() {
                        return Err(malformed("EOF inside a postcopy package", at));
                    }
                    sink.event(&Event::Eof)?;
                    break;
                }
                0x01..=0x04 => {
                    let kind = SectionKind::from_code(ty).unwrap_or(SectionKind::Full);
                    self.section(kind, at, sink)?;
                }
                COMMAND => self.command(at, sink)?,
                SUBSECTION => return Err(malformed("subsection outside a device section", at)),
                FOOTER => return Err(malformed("section footer with no section before it", at)),
                other => {
                    return Err(malformed(
                        format!("unknown record type byte {other:#04x} (expected a section, command or EOF)"),
                        at,
                    ))
                }
            }
            if let Some(&end) = self.packages.last() {
                if self.input.offset() > end {
                    return Err(malformed(
                        format!("a record runs past the end of the postcopy package at {end:#x}"),
                        at,
                    ));
                }
            }
        }
        self.trailer(sink)?;
        self.summary.bytes = self.input.offset();
        self.summary.page_size = self.page_size;
        Ok(self.summary)
    }

    /// Decides the architecture and the page size from what is known before
    /// the first section (the configuration, a description read ahead, the
    /// caller's word) and says them.
    fn target(&mut self, sink: &mut dyn Sink) -> Result<()> {
        // A twin's description (used for devices only if the stream has
        // none) can still tell the architecture of a stream with no
        // configuration section.
        let twin = match (&self.vmdesc, &self.supplied) {
            (None, Some((json, false))) => Vmdesc::parse_limited(json, &self.limits).ok(),
            _ => None,
        };
        let arch = self.arch.or_else(|| match self.arch_candidates {
            [one] => Some(*one),
            cands => self
                .vmdesc
                .as_ref()
                .or(twin.as_ref())
                .and_then(|d| arch::from_description(cands, d)),
        });
        if !self.page_bits_given {
            let from_desc = self.vmdesc.as_ref().map(|d| d.page_size);
            if let Some(ps) = from_desc.or_else(|| arch.and_then(arch::default_page_size)) {
                self.page_size = ps;
            }
        }
        self.summary.arch = arch;
        self.target_sent = true;
        sink.event(&Event::Target {
            arch: arch.unwrap_or(Arch::Unknown),
            page_size: self.page_size,
        })
    }

    fn header(&mut self, sink: &mut dyn Sink) -> Result<()> {
        let h = self.input.take(8, "QEMU stream header")?;
        if h[..4] != MAGIC {
            return Err(malformed(
                format!(
                    "not a QEMU migration stream (magic {:02x?}, expected \"QEVM\")",
                    &h[..4]
                ),
                0,
            ));
        }
        let version = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        if version != VERSION {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("QEMU stream version {version}; only version 3 is read (version 2 is the refused compat format)"),
            )
            .at_offset(4));
        }
        sink.event(&Event::Header { version })?;
        if self.input.peek_u8()? == Some(CONFIGURATION) {
            self.configuration(sink)?;
        }
        Ok(())
    }

    fn command(&mut self, at: u64, sink: &mut dyn Sink) -> Result<()> {
        let cmd = self.input.u16("command number")?;
        let len = self.input.u16("command length")?;
        let name = COMMAND_NAMES.get(usize::from(cmd)).copied().unwrap_or("");
        if name.is_empty() || name == "INVALID" {
            return Err(malformed(
                format!("unknown command {cmd} (length {len})"),
                at,
            ));
        }
        let end = self.input.offset() + u64::from(len);
        let payload = self.input.take(usize::from(len), "command payload")?;
        if cmd == CMD_PACKAGED {
            let n = payload.try_into().map(u32::from_be_bytes).map_err(|_| {
                malformed(
                    format!("PACKAGED command with a {len}-byte payload (expected 4)"),
                    at,
                )
            })?;
            let pkg_end = end + u64::from(n);
            if let Some(&outer) = self.packages.last() {
                if pkg_end > outer {
                    return Err(malformed(
                        format!("a postcopy package ending at {pkg_end:#x} inside one ending at {outer:#x}"),
                        at,
                    ));
                }
            }
            if self.packages.len() >= self.limits.max_depth as usize {
                return Err(Error::new(
                    ErrorKind::LimitExceeded,
                    "postcopy packages nest deeper than Limits::max_depth",
                )
                .at_offset(at));
            }
            self.packages.push(pkg_end);
        }
        if cmd == CMD_POSTCOPY_ADVISE && len == 16 {
            let or_sizes = u64::from_be_bytes(payload[..8].try_into().unwrap_or_default());
            self.postcopy_huge = or_sizes != self.page_size;
        }
        sink.event(&Event::Command { cmd, payload })
    }

    fn section(&mut self, kind: SectionKind, at: u64, sink: &mut dyn Sink) -> Result<()> {
        let id = self.input.u32("section id")?;
        let header = if kind.has_header() {
            let idstr = self.input.cstr("section idstr")?;
            let instance_id = self.input.u32("instance id")?;
            let version_id = self.input.u32("version id")?;
            Some(SectionHeader {
                idstr,
                instance_id,
                version_id,
            })
        } else {
            None
        };
        let (ram, iterative) = match (&header, self.sections.get(&id)) {
            (Some(h), None) if kind == SectionKind::Start => {
                (h.idstr == "ram", Handler::of(&h.idstr))
            }
            (Some(_), None) => (false, None),
            (Some(h), Some(_)) => {
                return Err(malformed(
                    format!("section id {id} ({:?}) is used twice", h.idstr),
                    at,
                ))
            }
            (None, Some(s)) if s.ram || s.iterative.is_some() => (s.ram, s.iterative),
            (None, _) => {
                return Err(malformed(
                    format!(
                        "{} of section id {id}, which no iterative section-start opened",
                        kind.name()
                    ),
                    at,
                ))
            }
        };
        if let Some(h) = &header {
            if kind == SectionKind::Start && !ram && iterative.is_none() {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "iterative section {:?} (read are \"ram\", \"spapr/htab\", \"s390-storage_attributes\", \"block\" and \"dirty-bitmap\")",
                        h.idstr
                    ),
                )
                .at_offset(at));
            }
            if self.sections.len() >= self.limits.max_names as usize {
                return Err(Error::new(
                    ErrorKind::LimitExceeded,
                    format!(
                        "more than {} sections (Limits::max_names)",
                        self.sections.len()
                    ),
                )
                .at_offset(at));
            }
            self.sections.insert(id, SectionInfo { ram, iterative });
        }
        let r = if ram {
            self.ram_section(kind, id, header.as_ref(), sink)
        } else if let Some(handler) = iterative {
            self.iterative_section(kind, id, header.as_ref(), handler, sink)
        } else {
            let h = header.unwrap_or_else(|| unreachable_header(id));
            self.device_section(id, &h, sink)
                .map_err(|e| e.in_device(&h.idstr))
        };
        r.map_err(|e| e.at_offset(at))?;
        self.footer(id, sink)
    }

    fn footer(&mut self, id: u32, sink: &mut dyn Sink) -> Result<()> {
        let footer = self.input.peek_u8()? == Some(FOOTER);
        self.footers.get_or_insert(footer);
        if footer {
            let at = self.input.offset();
            let b = self.input.take(5, "section footer")?;
            let got = u32::from_be_bytes([b[1], b[2], b[3], b[4]]);
            if got != id {
                return Err(malformed(
                    format!("section footer names section {got}, expected {id}"),
                    at,
                ));
            }
        }
        sink.event(&Event::SectionEnd { footer })
    }
}

fn unreachable_header(id: u32) -> SectionHeader {
    SectionHeader {
        idstr: format!("section {id}"),
        instance_id: 0,
        version_id: 0,
    }
}
