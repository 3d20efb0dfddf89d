//! The QEMU stream reader: bytes to [`Event`]s.

use std::collections::HashMap;
use std::io::Read;

use vmstream::{DeviceState, Error, ErrorKind, Limits, Result, Value};

use crate::event::{Event, QemuRamBlock, SectionHeader, SectionKind, Sink};
use crate::input::Input;
use crate::mapping::QEMU_PAGE_SIZES;
use crate::ram::*;
use crate::vmdesc::{self, Vmdesc};
use crate::{COMMAND_NAMES, MAGIC, VERSION};

/// Top-level record type bytes.
const EOF: u8 = 0x00;
const SUBSECTION: u8 = 0x05;
const VMDESC: u8 = 0x06;
const CONFIGURATION: u8 = 0x07;
const COMMAND: u8 = 0x08;
const FOOTER: u8 = 0x7e;
const CMD_PACKAGED: u16 = 7;
const CMD_POSTCOPY_ADVISE: u16 = 3;

/// What the reader learned about a stream.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Machine type from the configuration section.
    pub machine: Option<String>,
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
    ignore_shared: bool,
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
            ignore_shared: false,
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
            devices: 0,
            summary: Summary::default(),
            scratch: Vec::new(),
        }
    }

    /// Supplies the device description. `own` says it is the stream's own
    /// trailer (read ahead from a file); otherwise it comes from a twin stream
    /// and is used only when the stream has none.
    pub fn with_vmdesc(mut self, json: Vec<u8>, own: bool) -> QemuReader<R> {
        self.supplied = Some((json, own));
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
        Ok(self.summary)
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

    fn configuration(&mut self, sink: &mut dyn Sink) -> Result<()> {
        let start = self.input.offset() + 1;
        let mut raw = Vec::new();
        self.input.advance(1);
        let len = self.input.u32("configuration machine name length")?;
        if len > 256 {
            return Err(malformed(
                format!("configuration machine name is {len} bytes long (at most 256)"),
                start,
            ));
        }
        raw.extend_from_slice(&len.to_be_bytes());
        let name = self
            .input
            .take(len as usize, "configuration machine name")?;
        raw.extend_from_slice(name);
        let machine = String::from_utf8(name.to_vec())
            .map_err(|_| malformed("configuration machine name is not UTF-8", start + 4))?;
        loop {
            let at = self.input.offset();
            let next = self.input.peek(2, "configuration").map(|b| (b[0], b[1]));
            let Ok((SUBSECTION, n)) = next else { break };
            let head = self
                .input
                .peek(2 + usize::from(n), "configuration subsection name")?;
            if !head[2..].starts_with(b"configuration") {
                break;
            }
            let name = String::from_utf8_lossy(&head[2..]).into_owned();
            let head_len = head.len();
            raw.extend_from_slice(head);
            self.input.advance(head_len);
            let version = self.input.u32("configuration subsection version")?;
            raw.extend_from_slice(&version.to_be_bytes());
            match name.as_str() {
                "configuration/target-page-bits" => {
                    let bits = self.input.u32("target page bits")?;
                    raw.extend_from_slice(&bits.to_be_bytes());
                    let size = 1u32
                        .checked_shl(bits)
                        .filter(|s| QEMU_PAGE_SIZES.contains(s));
                    let Some(size) = size.map(u64::from) else {
                        return Err(malformed(
                            format!(
                                "target page bits {bits} out of range (QEMU's target pages are {} to {} bytes)",
                                QEMU_PAGE_SIZES.start(),
                                QEMU_PAGE_SIZES.end()
                            ),
                            at,
                        ));
                    };
                    // A page is held whole in the input buffer and in a record.
                    let max = u64::from(self.limits.max_record_size).min(self.limits.max_alloc);
                    if size > max {
                        return Err(Error::new(
                            ErrorKind::LimitExceeded,
                            format!("target page size of {size} bytes (page bits {bits}) exceeds Limits::max_record_size or max_alloc ({max} bytes)"),
                        )
                        .at_offset(at));
                    }
                    self.page_size = size;
                }
                "configuration/capabilities" => {
                    let count = self.input.u32("capability count")?;
                    raw.extend_from_slice(&count.to_be_bytes());
                    if count > 64 {
                        return Err(malformed(format!("{count} capabilities (at most 64)"), at));
                    }
                    for _ in 0..count {
                        let cap = self.input.cstr("capability name")?;
                        raw.push(cap.len() as u8);
                        raw.extend_from_slice(cap.as_bytes());
                        match cap.as_str() {
                            "x-ignore-shared" => self.ignore_shared = true,
                            "mapped-ram" => {
                                return Err(Error::new(
                                    ErrorKind::Unsupported,
                                    "mapped-ram streams (pages at fixed file offsets) are not read",
                                )
                                .at_offset(at))
                            }
                            _ => {}
                        }
                    }
                }
                "configuration/uuid" => {
                    raw.extend_from_slice(self.input.take(16, "configuration uuid")?)
                }
                other => {
                    return Err(Error::new(
                        ErrorKind::Unsupported,
                        format!("unknown configuration subsection {other:?}"),
                    )
                    .at_offset(at))
                }
            }
        }
        self.summary.machine = Some(machine.clone());
        sink.event(&Event::Configuration {
            raw: &raw,
            machine: &machine,
        })
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
        let ram = match (&header, self.sections.get(&id)) {
            (Some(h), None) => h.idstr == "ram" && kind == SectionKind::Start,
            (Some(h), Some(_)) => {
                return Err(malformed(
                    format!("section id {id} ({:?}) is used twice", h.idstr),
                    at,
                ))
            }
            (None, Some(s)) if s.ram => true,
            (None, _) => {
                return Err(malformed(
                    format!(
                        "{} of section id {id}, which no RAM section-start opened",
                        kind.name()
                    ),
                    at,
                ))
            }
        };
        if let Some(h) = &header {
            if kind == SectionKind::Start && !ram {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!("iterative section {:?} (only \"ram\" is read)", h.idstr),
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
            self.sections.insert(id, SectionInfo { ram });
        }
        let r = if ram {
            self.ram_section(kind, id, header.as_ref(), sink)
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

    fn ram_section(
        &mut self,
        kind: SectionKind,
        id: u32,
        header: Option<&SectionHeader>,
        sink: &mut dyn Sink,
    ) -> Result<()> {
        sink.event(&Event::Section { kind, id, header })?;
        let ps = self.page_size;
        loop {
            let at = self.input.offset();
            let hb = self.input.peek(8, "RAM record header")?;
            let hdr = u64::from_be_bytes(hb.try_into().unwrap_or_default());
            let flags = hdr & (ps - 1);
            let addr = hdr & !(ps - 1);
            let kind = flags & !FLAG_CONTINUE;
            match kind {
                FLAG_EOS => {
                    if hdr != FLAG_EOS {
                        return Err(malformed(
                            format!("EOS record with extra bits {hdr:#x}"),
                            at,
                        ));
                    }
                    self.input.advance(8);
                    return Ok(());
                }
                FLAG_MEM_SIZE if flags == kind => self.mem_size(hdr, at, sink)?,
                FLAG_MULTIFD_FLUSH if hdr == FLAG_MULTIFD_FLUSH => {
                    self.input.advance(8);
                    sink.event(&Event::RamRecord {
                        header: hdr,
                        name: None,
                        payload: &[],
                    })?;
                }
                FLAG_ZERO | FLAG_PAGE | FLAG_XBZRLE | FLAG_COMPRESS_PAGE => {
                    self.page_record(hdr, kind, addr, flags & FLAG_CONTINUE != 0, at, sink)?
                }
                FLAG_HOOK => {
                    return Err(Error::new(
                        ErrorKind::Unsupported,
                        "RDMA hook record in a RAM section",
                    )
                    .at_offset(at))
                }
                _ => {
                    return Err(malformed(
                        format!(
                        "RAM record with unknown flag combination {flags:#x} (header {hdr:#018x})"
                    ),
                        at,
                    ))
                }
            }
        }
    }

    fn mem_size(&mut self, hdr: u64, at: u64, sink: &mut dyn Sink) -> Result<()> {
        if !self.blocks.is_empty() {
            return Err(
                Error::new(ErrorKind::Unsupported, "a second RAM block list").at_offset(at),
            );
        }
        if self.postcopy_huge {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "postcopy stream with huge-page RAM blocks (the per-block page size fields cannot be told apart)",
            )
            .at_offset(at));
        }
        self.input.advance(8);
        let mut raw = hdr.to_be_bytes().to_vec();
        let total = hdr & !(self.page_size - 1);
        let mut left = total;
        let mut blocks = Vec::new();
        while left > 0 {
            let bat = self.input.offset();
            if blocks.len() >= self.limits.max_ram_blocks as usize {
                return Err(Error::new(
                    ErrorKind::LimitExceeded,
                    format!(
                        "more than {} RAM blocks (Limits::max_ram_blocks)",
                        blocks.len()
                    ),
                )
                .at_offset(bat));
            }
            let name = self.input.cstr("RAM block name")?;
            let b = self.input.take(8, "RAM block length")?;
            let size = u64::from_be_bytes(b.try_into().unwrap_or_default());
            raw.push(name.len() as u8);
            raw.extend_from_slice(name.as_bytes());
            raw.extend_from_slice(&size.to_be_bytes());
            if size > left || size % self.page_size != 0 || name.is_empty() {
                return Err(malformed(
                    format!("RAM block {name:?} of {size:#x} bytes does not fit the list total {total:#x} ({left:#x} left) in whole pages"),
                    bat,
                ));
            }
            left -= size;
            let addr = if self.ignore_shared {
                let b = self.input.take(8, "RAM block address")?;
                raw.extend_from_slice(b);
                Some(u64::from_be_bytes(b.try_into().unwrap_or_default()))
            } else {
                None
            };
            blocks.push(QemuRamBlock {
                name,
                size,
                page_size: None,
                addr,
            });
        }
        self.blocks = blocks;
        sink.event(&Event::RamBlocks {
            raw: &raw,
            blocks: &self.blocks,
        })
    }

    fn page_record(
        &mut self,
        hdr: u64,
        kind: u64,
        addr: u64,
        cont: bool,
        at: u64,
        sink: &mut dyn Sink,
    ) -> Result<()> {
        let ps = self.page_size as usize;
        let name_len = if cont {
            0
        } else {
            1 + usize::from(self.input.peek(9, "RAM block name")?[8])
        };
        let fixed = 8 + name_len;
        let payload_len = match kind {
            FLAG_ZERO => 1,
            FLAG_PAGE => ps,
            FLAG_XBZRLE => {
                let b = self.input.peek(fixed + 3, "XBZRLE header")?;
                if b[fixed] != 1 {
                    return Err(malformed(
                        format!("XBZRLE marker {:#04x} (expected 0x01)", b[fixed]),
                        at,
                    ));
                }
                let len = usize::from(u16::from_be_bytes([b[fixed + 1], b[fixed + 2]]));
                if len > ps {
                    return Err(malformed(
                        format!("XBZRLE delta of {len} bytes exceeds the page size"),
                        at,
                    ));
                }
                3 + len
            }
            _ => {
                let b = self.input.peek(fixed + 4, "compressed page length")?;
                let len = u32::from_be_bytes([b[fixed], b[fixed + 1], b[fixed + 2], b[fixed + 3]])
                    as usize;
                if len > ps.saturating_mul(2).saturating_add(1024) {
                    return Err(malformed(
                        format!(
                            "compressed page of {len} bytes is larger than any page compresses to"
                        ),
                        at,
                    ));
                }
                if len > self.limits.max_record_size as usize {
                    return Err(Error::new(
                        ErrorKind::LimitExceeded,
                        format!("compressed page of {len} bytes exceeds Limits::max_record_size"),
                    )
                    .at_offset(at));
                }
                4 + len
            }
        };
        let rec = self.input.peek(fixed + payload_len, "RAM record")?;
        let name = (!cont).then(|| &rec[9..fixed]);
        let payload = &rec[fixed..];
        let block = match name {
            None => self.last_block.ok_or_else(|| {
                malformed(
                    "RAM page record continues a block, but no block was named before",
                    at,
                )
            })?,
            Some(n) => {
                let found = match self.last_block {
                    Some(b) if self.blocks[b as usize].name.as_bytes() == n => Some(b),
                    _ => self
                        .blocks
                        .iter()
                        .position(|b| b.name.as_bytes() == n)
                        .map(|i| i as u32),
                };
                found.ok_or_else(|| {
                    malformed(
                        format!("RAM page of unknown block {:?}", String::from_utf8_lossy(n)),
                        at,
                    )
                })?
            }
        };
        let blk = &self.blocks[block as usize];
        let index = addr / self.page_size;
        if addr >= blk.size {
            return Err(malformed(
                format!(
                    "RAM page at offset {addr:#x} is beyond block {:?} ({:#x} bytes)",
                    blk.name, blk.size
                ),
                at,
            ));
        }
        let forget = name.is_some() && self.last_block == Some(block);
        let plain = kind == FLAG_PAGE || (kind == FLAG_ZERO && payload[0] == 0);
        if plain && forget {
            sink.event(&Event::Forget)?;
        }
        let ev = match kind {
            FLAG_PAGE => Event::Page {
                block,
                index,
                data: Some(payload),
            },
            FLAG_ZERO if payload[0] == 0 => Event::Page {
                block,
                index,
                data: None,
            },
            _ => Event::RamRecord {
                header: hdr,
                name,
                payload,
            },
        };
        sink.event(&ev)?;
        self.last_block = Some(block);
        self.input.advance(fixed + payload_len);
        Ok(())
    }

    /// Parses and keeps a description; `at` is the stream offset of its JSON
    /// text, for errors (`None` when it is not where the stream is now).
    fn set_vmdesc(&mut self, json: Vec<u8>, in_stream: bool, at: Option<u64>) -> Result<()> {
        let locate = |e: Error| match at {
            Some(at) => e.at_offset(at),
            None => e,
        };
        let d = Vmdesc::parse_limited(&json, &self.limits).map_err(locate)?;
        if d.page_size != self.page_size {
            return Err(locate(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "vmdesc page size {} differs from the stream's {}",
                    d.page_size, self.page_size
                ),
            )));
        }
        self.vmdesc = Some(d);
        self.vmdesc_json = Some((json, in_stream));
        Ok(())
    }

    fn emit_vmdesc(&mut self, sink: &mut dyn Sink) -> Result<()> {
        if let (false, Some((json, in_stream))) = (self.vmdesc_emitted, &self.vmdesc_json) {
            self.vmdesc_emitted = true;
            sink.event(&Event::Vmdesc {
                json,
                in_stream: *in_stream,
            })?;
        }
        Ok(())
    }

    /// Makes sure a description is known if the stream or the caller has one.
    fn find_vmdesc(&mut self) -> Result<()> {
        if self.vmdesc.is_some() || self.rest_buffered {
            return Ok(());
        }
        self.input.buffer_rest(self.limits.max_alloc)?;
        self.rest_buffered = true;
        let base = self.input.offset();
        if let Some(p) = vmdesc::find_trailer(self.input.avail()) {
            let json = self.input.avail()[p + 5..].to_vec();
            self.trailer_at = Some(base + p as u64);
            return self.set_vmdesc(json, true, Some(base + p as u64 + 5));
        }
        if let Some((json, _)) = self.supplied.take() {
            // A twin stream's description: an error is placed at the section
            // that needed it.
            self.set_vmdesc(json, false, None)?;
        }
        Ok(())
    }

    fn device_section(&mut self, id: u32, h: &SectionHeader, sink: &mut dyn Sink) -> Result<()> {
        self.find_vmdesc()?;
        self.emit_vmdesc(sink)?;
        let ordinal = self.devices;
        self.devices += 1;
        let desc = match &self.vmdesc {
            Some(d) => {
                let e = d.devices.get(ordinal).ok_or_else(|| {
                    Error::new(
                        ErrorKind::Incompatible,
                        format!(
                            "the vmdesc describes {} devices; this is device section {}",
                            d.devices.len(),
                            ordinal + 1
                        ),
                    )
                })?;
                if e.name != h.idstr || e.instance_id != h.instance_id {
                    return Err(Error::new(
                        ErrorKind::Incompatible,
                        format!(
                            "vmdesc device entry {ordinal} describes {:?} instance {}, but the section is {:?} instance {}",
                            e.name, e.instance_id, h.idstr, h.instance_id
                        ),
                    ));
                }
                Some(e)
            }
            None => None,
        };
        let described = desc.is_some();
        let type_name = match desc.and_then(|d| d.vmsd.as_ref()) {
            Some(o) => o.vmsd_name.clone(),
            None => h.idstr.clone(),
        };
        let max = self.limits.max_record_size as usize;
        let body_at = self.input.offset();
        let mut value = None;
        let mut why = String::new();
        if let Some(d) = desc {
            match &d.vmsd {
                Some(obj) if obj.version == h.version_id => {
                    let want = usize::try_from(obj.body_len())
                        .unwrap_or(usize::MAX)
                        .min(max);
                    self.input.fill(want)?;
                    // A typed body is bounded like a kept one: by max_record_size.
                    let avail = self.input.avail();
                    let data = &avail[..avail.len().min(max)];
                    match vmdesc::decode_prefix(obj, data, body_at, &self.limits) {
                        Ok((v, len)) => {
                            self.scratch.clear();
                            match vmdesc::encode(obj, &v, &mut self.scratch) {
                                Ok(()) if self.scratch[..] == data[..len] => {
                                    self.input.advance(len);
                                    value = Some(v);
                                }
                                Ok(()) => {
                                    why = "its typed values do not encode back to the same bytes"
                                        .into()
                                }
                                Err(e) => why = format!("{} ({})", e.message(), e.location()),
                            }
                        }
                        Err(e) => why = format!("{} at {}", e.message(), e.location()),
                    }
                }
                Some(obj) => {
                    why = format!(
                        "the vmdesc has version {}, the section {}",
                        obj.version, h.version_id
                    )
                }
                None => {
                    let n = usize::try_from(d.size).unwrap_or(usize::MAX);
                    if n > max {
                        return Err(Error::new(
                            ErrorKind::LimitExceeded,
                            format!("device body of {n} bytes exceeds Limits::max_record_size"),
                        ));
                    }
                    value = Some(Value::Bytes(
                        self.input.take(n, "device section body")?.to_vec(),
                    ));
                }
            }
        } else {
            why = "the stream has no vmdesc trailer".into();
        }
        let typed = matches!(value, Some(Value::Struct(_)));
        let value = match value {
            Some(v) => v,
            None => {
                let len = self.footer_scan(id)?.ok_or_else(|| {
                    if described {
                        Error::new(
                            ErrorKind::Malformed,
                            format!("the vmdesc does not describe this section ({why}), and without a section footer its end cannot be found"),
                        )
                    } else {
                        Error::new(
                            ErrorKind::Unsupported,
                            format!("no device description ({why}, and the section has no footer to delimit it; pass --vmdesc with a twin stream)"),
                        )
                    }
                    .at_offset(body_at)
                })?;
                if len > max {
                    return Err(Error::new(
                        ErrorKind::LimitExceeded,
                        format!("device body of {len} bytes exceeds Limits::max_record_size"),
                    ));
                }
                Value::Bytes(self.input.take(len, "device section body")?.to_vec())
            }
        };
        if typed {
            self.summary.typed_devices += 1;
        } else {
            self.summary.raw_devices.push(h.idstr.clone());
        }
        sink.event(&Event::Section {
            kind: SectionKind::Full,
            id,
            header: Some(h),
        })?;
        let state = DeviceState {
            name: h.idstr.clone(),
            instance_id: h.instance_id,
            type_name,
            version: h.version_id,
            value,
        };
        sink.event(&Event::Device(&state))
    }

    /// Finds the end of a device body by its footer: the first `0x7e` + section
    /// id that is followed by a well-formed record start. Needs footers.
    fn footer_scan(&mut self, id: u32) -> Result<Option<usize>> {
        if !self.rest_buffered {
            self.input.buffer_rest(self.limits.max_alloc)?;
            self.rest_buffered = true;
        }
        let data = self.input.avail();
        let idb = id.to_be_bytes();
        let known = |sid: u32| self.sections.get(&sid);
        let plausible = |rest: &[u8]| -> bool {
            let be32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
            match rest.first() {
                Some(&EOF) => rest.len() == 1 || rest[1] == VMDESC,
                Some(&(0x01 | 0x04)) if rest.len() >= 6 => {
                    let n = usize::from(rest[5]);
                    n > 0
                        && rest.len() >= 14 + n
                        && known(be32(&rest[1..])).is_none()
                        && rest[6..6 + n].iter().all(|c| (0x20..0x7f).contains(c))
                }
                Some(&(0x02 | 0x03)) if rest.len() >= 5 => {
                    known(be32(&rest[1..])).is_some_and(|s| s.ram)
                }
                Some(&COMMAND) if rest.len() >= 5 => {
                    let cmd = usize::from(u16::from_be_bytes([rest[1], rest[2]]));
                    (1..COMMAND_NAMES.len()).contains(&cmd)
                }
                _ => false,
            }
        };
        Ok((0..data.len().saturating_sub(5))
            .find(|&p| data[p] == FOOTER && data[p + 1..p + 5] == idb && plausible(&data[p + 5..])))
    }

    fn trailer(&mut self, sink: &mut dyn Sink) -> Result<()> {
        let at = self.input.offset();
        if let Some(t) = self.trailer_at {
            if t != at {
                return Err(malformed(
                    format!(
                        "the stream ends (EOF) at {at:#x}, but its vmdesc trailer starts at {t:#x}"
                    ),
                    at,
                ));
            }
        }
        match self.input.peek_u8()? {
            None => {
                if self.vmdesc_json.as_ref().is_some_and(|(_, own)| *own) {
                    return Err(malformed("the vmdesc trailer is missing after EOF", at));
                }
            }
            Some(VMDESC) => {
                self.input.advance(1);
                let len = u64::from(self.input.u32("vmdesc length")?);
                // Checked before any byte is read: parsing takes the text twice.
                if len.saturating_mul(2) > self.limits.max_alloc {
                    return Err(Error::new(
                        ErrorKind::LimitExceeded,
                        format!(
                            "vmdesc of {len} bytes: parsing it needs more than Limits::max_alloc ({} bytes)",
                            self.limits.max_alloc
                        ),
                    )
                    .at_offset(at));
                }
                let json = self.input.take(len as usize, "vmdesc")?.to_vec();
                match &self.vmdesc_json {
                    Some((own, true)) if *own != json => {
                        return Err(malformed(
                            "the vmdesc trailer differs from the one read ahead",
                            at,
                        ))
                    }
                    Some((_, true)) => {}
                    _ => {
                        self.vmdesc_emitted = false;
                        self.set_vmdesc(json, true, Some(at + 5))?;
                    }
                }
            }
            Some(b) => {
                return Err(malformed(
                    format!("byte {b:#04x} after EOF (expected the vmdesc trailer or the end)"),
                    at,
                ))
            }
        }
        self.emit_vmdesc(sink)?;
        if self.input.fill(1)? > 0 {
            return Err(malformed(
                "data after the end of the stream",
                self.input.offset(),
            ));
        }
        Ok(())
    }
}

fn unreachable_header(id: u32) -> SectionHeader {
    SectionHeader {
        idstr: format!("section {id}"),
        instance_id: 0,
        version_id: 0,
    }
}
