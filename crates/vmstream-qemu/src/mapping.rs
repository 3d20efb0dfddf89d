//! QEMU events to vmstream records and back (see `docs/qemu-mapping.md`).
//!
//! Guest memory and device state use the standard records (`ram-blocks`,
//! `pages`, `device`), so any vmstream reader sees them. What only a QEMU
//! writer needs (section framing, commands, encoded page payloads, the vmdesc
//! text) goes into optional records of the QEMU range, in stream order.

use std::io::{Read, Write};

use vmstream::header::FEATURE_QEMU_FRAMING;
use vmstream::record::END_FRAMED_LEN;
use vmstream::{
    Arch, Error, ErrorKind, Header, Limits, RamBlock, Record, RecordKind, Result, StreamKind,
    StreamReader, StreamWriter, Value, WriterOptions,
};

use crate::event::{Event, QemuRamBlock, SectionHeader, SectionKind, Sink};
use crate::mapped_ram::{MappedRamHeader, HEADER_LEN};
use crate::ram::FLAG_MEM_SIZE;

/// Record kinds of the QEMU range, all optional.
pub mod kinds {
    use vmstream::RecordKind;
    /// Stream version and the configuration section.
    pub const STREAM: RecordKind = RecordKind(0x0100);
    /// A section begins: type, id, and for START/FULL its header.
    pub const SECTION: RecordKind = RecordKind(0x0101);
    /// The current section ends; whether a footer follows.
    pub const SECTION_END: RecordKind = RecordKind(0x0102);
    /// A command record.
    pub const COMMAND: RecordKind = RecordKind(0x0103);
    /// A RAM record kept as it came (block list, XBZRLE, compressed page, ...).
    pub const RAM_RECORD: RecordKind = RecordKind(0x0104);
    /// The sender forgot its last block (the next page names its block).
    pub const FORGET: RecordKind = RecordKind(0x0105);
    /// The EOF byte.
    pub const EOF: RecordKind = RecordKind(0x0106);
    /// The vmdesc JSON.
    pub const VMDESC: RecordKind = RecordKind(0x0107);
    /// A mapped-ram block: its block list entry, header and bitmap.
    pub const MAPPED_RAM: RecordKind = RecordKind(0x0108);
    /// A multifd channel's init header.
    pub const MULTIFD_INIT: RecordKind = RecordKind(0x0109);
    /// A multifd packet's header and kept payload.
    pub const MULTIFD_PACKET: RecordKind = RecordKind(0x010a);
    /// A unit of an iterative section other than RAM, as on the wire.
    pub const SECTION_DATA: RecordKind = RecordKind(0x010b);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// Writes events as a vmstream stream.
#[derive(Debug)]
pub struct VmstreamSink<W: Write> {
    out: Option<W>,
    options: WriterOptions,
    page_size: u32,
    arch: Arch,
    writer: Option<StreamWriter<W>>,
    version: u32,
    config: Option<(Vec<u8>, String)>,
    epoch: u32,
    ram_sections: u32,
    body: Vec<u8>,
}

impl<W: Write> VmstreamSink<W> {
    /// A sink writing to `out` with `options` (zero-page detection is turned off:
    /// a QEMU data page that happens to be zero stays a data page).
    pub fn new(out: W, options: WriterOptions) -> VmstreamSink<W> {
        VmstreamSink {
            out: Some(out),
            options: options.with_zero_pages(false),
            page_size: 4096,
            arch: Arch::Unknown,
            writer: None,
            version: 3,
            config: None,
            epoch: 0,
            ram_sections: 0,
            body: Vec::new(),
        }
    }

    /// Sets the page size of the stream header for a QEMU stream whose
    /// configuration section does not name one (default 4096): the page size
    /// of a converted stream that is rewritten.
    pub fn with_page_size(mut self, page_size: u32) -> VmstreamSink<W> {
        self.page_size = page_size;
        self
    }

    fn writer(&mut self) -> Result<&mut StreamWriter<W>> {
        if self.writer.is_none() {
            let out = self
                .out
                .take()
                .ok_or_else(|| Error::new(ErrorKind::Usage, "sink used after finish"))?;
            let mut header = Header::new(StreamKind::ConvertedFromQemu, self.arch, self.page_size);
            header.optional_features |= FEATURE_QEMU_FRAMING;
            let mut w = StreamWriter::new(out, header, self.options)?;
            let mut info = vec![
                ("vmm".to_owned(), Value::String("qemu".into())),
                (
                    "source".to_owned(),
                    Value::String(format!("QEVM version {}", self.version)),
                ),
            ];
            if let Some((_, m)) = &self.config {
                info.push(("machine".into(), Value::String(m.clone())));
            }
            w.write_info(&Value::Struct(info))?;
            let mut body = self.version.to_le_bytes().to_vec();
            match &self.config {
                Some((raw, _)) => {
                    body.push(1);
                    put_bytes(&mut body, raw);
                }
                None => body.push(0),
            }
            w.write_raw_record(kinds::STREAM, true, &body)?;
            self.writer = Some(w);
        }
        self.writer
            .as_mut()
            .ok_or_else(|| Error::new(ErrorKind::Usage, "no writer"))
    }

    fn raw(&mut self, kind: RecordKind) -> Result<()> {
        let body = std::mem::take(&mut self.body);
        let r = self.writer()?.write_raw_record(kind, true, &body);
        self.body = body;
        self.body.clear();
        r
    }

    /// Finishes the vmstream stream and returns the inner writer.
    pub fn finish(mut self) -> Result<W> {
        self.writer()?;
        match self.writer.take() {
            Some(w) => w.finish(),
            None => Err(Error::new(ErrorKind::Usage, "no writer")),
        }
    }
}

impl<W: Write> Sink for VmstreamSink<W> {
    fn event(&mut self, ev: &Event<'_>) -> Result<()> {
        self.body.clear();
        match ev {
            Event::Header { version } => self.version = *version,
            Event::Configuration { raw, machine } => {
                if let Some(bits) = page_bits(raw) {
                    let size = 1u32
                        .checked_shl(bits)
                        .filter(|s| QEMU_PAGE_SIZES.contains(s));
                    self.page_size = size.ok_or_else(|| {
                        Error::new(
                            ErrorKind::Malformed,
                            format!("configuration with target page bits {bits} (QEMU's target pages are {} to {} bytes)", QEMU_PAGE_SIZES.start(), QEMU_PAGE_SIZES.end()),
                        )
                    })?;
                }
                self.config = Some((raw.to_vec(), (*machine).to_owned()));
            }
            Event::Target { arch, page_size } => {
                if self.writer.is_some() {
                    return Err(Error::new(
                        ErrorKind::Usage,
                        "the target came after the stream's first section",
                    ));
                }
                self.arch = *arch;
                self.page_size = u32::try_from(*page_size)
                    .ok()
                    .filter(|s| QEMU_PAGE_SIZES.contains(s))
                    .ok_or_else(|| {
                        Error::new(
                            ErrorKind::Malformed,
                            format!("target page size {page_size} (QEMU's target pages are {} to {} bytes)", QEMU_PAGE_SIZES.start(), QEMU_PAGE_SIZES.end()),
                        )
                    })?;
            }
            Event::SectionData { raw } => {
                self.body.extend_from_slice(raw);
                self.raw(kinds::SECTION_DATA)?;
            }
            Event::Section { kind, id, header } => {
                self.body.push(kind.code());
                self.body.extend_from_slice(&id.to_le_bytes());
                if let Some(h) = header {
                    put_bytes(&mut self.body, h.idstr.as_bytes());
                    self.body.extend_from_slice(&h.instance_id.to_le_bytes());
                    self.body.extend_from_slice(&h.version_id.to_le_bytes());
                }
                if *kind != SectionKind::Full {
                    self.epoch = self.ram_sections;
                    self.ram_sections += 1;
                }
                self.raw(kinds::SECTION)?;
            }
            Event::RamBlocks { raw, blocks } => {
                let ps = self.page_size;
                let list = vmstream_blocks(blocks, ps);
                // a mapped-ram list has its blocks one by one (MappedBlock)
                if !list.is_empty() {
                    self.writer()?.write_ram_blocks(&list)?;
                }
                let (header, list) = raw.split_at(8.min(raw.len()));
                self.body.extend_from_slice(header);
                self.body.push(0);
                self.body.extend_from_slice(list);
                self.raw(kinds::RAM_RECORD)?;
            }
            Event::Page { block, index, data } => {
                let epoch = self.epoch;
                let w = self.writer()?;
                match data {
                    Some(d) => w.write_page(*block, epoch, *index, d)?,
                    None => w.write_zero_page(*block, epoch, *index)?,
                }
            }
            Event::MappedBlock {
                index,
                block,
                entry,
                header,
                bitmap,
            } => {
                let ps = self.page_size;
                let b = RamBlock {
                    id: *index,
                    name: block.name.clone(),
                    size: block.size,
                    page_size: ps,
                    flags: 0,
                };
                self.writer()?.write_ram_blocks(&[b])?;
                put_bytes(&mut self.body, entry);
                self.body.extend_from_slice(&header.to_bytes());
                self.body.extend_from_slice(bitmap);
                self.raw(kinds::MAPPED_RAM)?;
            }
            Event::Forget => self.raw(kinds::FORGET)?,
            Event::RamRecord {
                header,
                name,
                payload,
            } => {
                self.body.extend_from_slice(&header.to_be_bytes());
                match name {
                    Some(n) => {
                        self.body.push(1);
                        self.body.push(n.len() as u8);
                        self.body.extend_from_slice(n);
                    }
                    None => self.body.push(0),
                }
                self.body.extend_from_slice(payload);
                self.raw(kinds::RAM_RECORD)?;
            }
            Event::Device(state) => self.writer()?.write_device(state)?,
            Event::SectionEnd { footer } => {
                self.body.push(u8::from(*footer));
                self.raw(kinds::SECTION_END)?;
            }
            Event::Command { cmd, payload } => {
                self.body.extend_from_slice(&cmd.to_le_bytes());
                self.body.extend_from_slice(payload);
                self.raw(kinds::COMMAND)?;
            }
            Event::Eof => self.raw(kinds::EOF)?,
            Event::Vmdesc { json, in_stream } => {
                self.body.push(u8::from(*in_stream));
                self.body.extend_from_slice(json);
                self.raw(kinds::VMDESC)?;
            }
            Event::MultifdInit { channel, raw } => {
                self.body.push(*channel);
                self.body.extend_from_slice(raw);
                self.raw(kinds::MULTIFD_INIT)?;
            }
            Event::MultifdPacket { channel, packet } => {
                self.body.push(*channel);
                put_bytes(&mut self.body, packet.header);
                self.body.extend_from_slice(packet.kept_payload());
                self.raw(kinds::MULTIFD_PACKET)?;
            }
        }
        Ok(())
    }
}

/// The target page bits from a raw configuration body, if it has them.
pub(crate) fn page_bits(raw: &[u8]) -> Option<u32> {
    let pat = b"\x05\x1econfiguration/target-page-bits";
    let p = raw.windows(pat.len()).position(|w| w == pat)? + pat.len() + 4;
    raw.get(p..p + 4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Reads a vmstream stream converted from QEMU and produces its events.
#[derive(Debug)]
pub struct VmstreamSource<R> {
    reader: StreamReader<R>,
}

struct Body<'a> {
    b: &'a [u8],
    at: u64,
}

impl<'a> Body<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if self.b.len() < n {
            return Err(Error::new(
                ErrorKind::Malformed,
                format!("QEMU record too short for its {what}"),
            )
            .at_offset(self.at));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        self.at += n as u64;
        Ok(h)
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().unwrap_or_default(),
        ))
    }
    fn bytes(&mut self, what: &str) -> Result<&'a [u8]> {
        let n = self.u32(what)? as usize;
        self.take(n, what)
    }
    fn done(&self, what: &str) -> Result<()> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::Malformed,
                format!("{} bytes after the {what}", self.b.len()),
            )
            .at_offset(self.at))
        }
    }
}

/// The target page sizes a QEMU stream can have: QEMU's `TARGET_PAGE_BITS` is 10
/// to 16 on every target (RAM record flags take the low 10 bits).
pub const QEMU_PAGE_SIZES: std::ops::RangeInclusive<u32> = 1 << 10..=1 << 16;

/// The QEMU block list for the RAM blocks a reader has validated so far: the
/// blocks in definition order, whose ids must count from 0 (a page event's
/// block is an index into the list) and whose names must fit QEMU's one-byte
/// length.
fn qemu_blocks(state: &vmstream::StreamState) -> Result<Vec<QemuRamBlock>> {
    state
        .blocks()
        .enumerate()
        .map(|(i, b)| {
            if u32::try_from(i).ok() != Some(b.id) {
                return Err(Error::new(
                    ErrorKind::Malformed,
                    format!(
                        "RAM block {:?} has id {}; the blocks of a converted QEMU stream count from 0 in order (expected {i})",
                        b.name, b.id
                    ),
                ));
            }
            if b.name.len() > 255 {
                return Err(Error::new(
                    ErrorKind::Malformed,
                    format!("RAM block name of {} bytes; QEMU names have at most 255", b.name.len()),
                ));
            }
            Ok(QemuRamBlock {
                name: b.name.clone(),
                size: b.size,
                page_size: None,
                addr: None,
            })
        })
        .collect()
}

impl<R: Read> VmstreamSource<R> {
    /// Opens a vmstream stream; it must carry QEMU framing and a QEMU target
    /// page size ([`QEMU_PAGE_SIZES`]).
    pub fn new(input: R, limits: Limits) -> Result<VmstreamSource<R>> {
        let reader = StreamReader::new(input, limits)?;
        if reader.header().optional_features & FEATURE_QEMU_FRAMING == 0 {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "this vmstream stream was not converted from QEMU (no qemu-framing feature), so it has no QEMU stream to give back",
            )
            .at_offset(24));
        }
        let ps = reader.header().page_size;
        if !QEMU_PAGE_SIZES.contains(&ps) {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "page size {ps} is not a QEMU target page size ({} to {} bytes), so this stream has no QEMU stream to give back",
                    QEMU_PAGE_SIZES.start(),
                    QEMU_PAGE_SIZES.end()
                ),
            )
            .at_offset(32));
        }
        Ok(VmstreamSource { reader })
    }

    /// The stream's page size.
    pub fn page_size(&self) -> u64 {
        u64::from(self.reader.header().page_size)
    }

    /// Reads every record and hands the QEMU events to `sink`.
    pub fn run(mut self, sink: &mut dyn Sink) -> Result<()> {
        let mut blocks: Vec<QemuRamBlock> = Vec::new();
        let mut header = SectionHeader {
            idstr: String::new(),
            instance_id: 0,
            version_id: 0,
        };
        // How many blocks the QEMU block list handed to the sink has: pages
        // may only refer to those.
        let mut announced: Option<usize> = None;
        // mapped-ram blocks handed to the sink
        let mut mapped = 0usize;
        let mut started = false;
        let mut eof = false;
        // where the next packet of each multifd channel starts, for messages
        let mut channel_at: std::collections::HashMap<u8, u64> = std::collections::HashMap::new();
        let page_size = self.page_size();
        let arch = self.reader.header().arch;
        while let Some(item) = self.reader.next()? {
            let (at, index, kind) = (item.offset, item.index, item.kind);
            // The QEMU stream record comes once, before every record that
            // becomes QEMU bytes: the header is the first thing QEMU wrote.
            let qemu_bytes = matches!(kind, RecordKind::PAGES | RecordKind::DEVICE)
                || (RecordKind::QEMU_FIRST..=RecordKind::QEMU_LAST).contains(&kind);
            let misplaced = match kind {
                kinds::STREAM if started => Some("a second QEMU stream record"),
                kinds::STREAM => None,
                _ if !started && qemu_bytes => Some("QEMU records before the QEMU stream record"),
                _ => None,
            };
            if let Some(msg) = misplaced {
                return Err(Error::new(ErrorKind::Malformed, msg)
                    .at_offset(at)
                    .in_record(index, kind.name()));
            }
            let r: Result<()> = (|| {
                match &item.record {
                    Record::Pages(batch) => {
                        if announced.is_none_or(|n| batch.block as usize >= n) {
                            return Err(Error::new(
                                ErrorKind::Malformed,
                                format!(
                                    "page batch of RAM block {} before a QEMU RAM block list that has it",
                                    batch.block
                                ),
                            ));
                        }
                        for p in batch.pages() {
                            sink.event(&Event::Page {
                                block: batch.block,
                                index: p.index,
                                data: p.data,
                            })?;
                        }
                    }
                    Record::Device(d) => sink.event(&Event::Device(d))?,
                    Record::Other(raw) => {
                        let mut b = Body {
                            b: raw.body,
                            at: raw.body_offset(),
                        };
                        match raw.kind {
                            kinds::STREAM => {
                                let version = b.u32("version")?;
                                sink.event(&Event::Header { version })?;
                                if b.take(1, "configuration flag")?[0] == 1 {
                                    let cfg = b.bytes("configuration")?;
                                    if let Some(bits) = page_bits(cfg) {
                                        if 1u64.checked_shl(bits) != Some(page_size) {
                                            return Err(Error::new(
                                                ErrorKind::Malformed,
                                                format!(
                                                    "the QEMU configuration has target page bits {bits}, but the stream's page size is {page_size}"
                                                ),
                                            ));
                                        }
                                    }
                                    let machine = cfg
                                        .get(4..)
                                        .and_then(|n| {
                                            n.get(
                                                ..u32::from_be_bytes(
                                                    cfg[..4].try_into().unwrap_or_default(),
                                                )
                                                    as usize,
                                            )
                                        })
                                        .and_then(|n| std::str::from_utf8(n).ok())
                                        .unwrap_or("");
                                    sink.event(&Event::Configuration { raw: cfg, machine })?;
                                }
                                b.done("stream record")?;
                                sink.event(&Event::Target { arch, page_size })?;
                                started = true;
                            }
                            kinds::SECTION => {
                                let code = b.take(1, "section type")?[0];
                                let kind = SectionKind::from_code(code).ok_or_else(|| {
                                    Error::new(ErrorKind::Malformed, format!("section type {code}"))
                                        .at_offset(raw.body_offset())
                                })?;
                                let id = b.u32("section id")?;
                                let has = kind.has_header();
                                if has {
                                    let idstr = b.bytes("idstr")?;
                                    if idstr.len() > 255 {
                                        return Err(Error::new(
                                            ErrorKind::Malformed,
                                            "idstr longer than 255 bytes",
                                        ));
                                    }
                                    header.idstr =
                                        String::from_utf8(idstr.to_vec()).map_err(|_| {
                                            Error::new(ErrorKind::Malformed, "idstr is not UTF-8")
                                        })?;
                                    header.instance_id = b.u32("instance id")?;
                                    header.version_id = b.u32("version id")?;
                                }
                                b.done("section record")?;
                                sink.event(&Event::Section {
                                    kind,
                                    id,
                                    header: has.then_some(&header),
                                })?;
                            }
                            kinds::SECTION_END => {
                                let footer = b.take(1, "footer flag")?[0] != 0;
                                b.done("section end record")?;
                                sink.event(&Event::SectionEnd { footer })?;
                            }
                            kinds::COMMAND => {
                                let cmd = u16::from_le_bytes(
                                    b.take(2, "command")?.try_into().unwrap_or_default(),
                                );
                                if b.b.len() > usize::from(u16::MAX) {
                                    return Err(Error::new(
                                        ErrorKind::Malformed,
                                        "command payload longer than 65535 bytes",
                                    ));
                                }
                                sink.event(&Event::Command { cmd, payload: b.b })?;
                            }
                            kinds::RAM_RECORD => {
                                let header = u64::from_be_bytes(
                                    b.take(8, "RAM record header")?
                                        .try_into()
                                        .unwrap_or_default(),
                                );
                                let name = match b.take(1, "name flag")?[0] {
                                    0 => None,
                                    _ => {
                                        let n = usize::from(b.take(1, "name length")?[0]);
                                        Some(b.take(n, "block name")?)
                                    }
                                };
                                if header & (page_size - 1) == FLAG_MEM_SIZE {
                                    let mut rec = header.to_be_bytes().to_vec();
                                    rec.extend_from_slice(b.b);
                                    sink.event(&Event::RamBlocks {
                                        raw: &rec,
                                        blocks: &blocks,
                                    })?;
                                    announced = Some(blocks.len());
                                } else {
                                    sink.event(&Event::RamRecord {
                                        header,
                                        name,
                                        payload: b.b,
                                    })?;
                                }
                            }
                            kinds::MAPPED_RAM => {
                                let entry = b.bytes("block list entry")?;
                                let hb = b.take(HEADER_LEN, "mapped-ram header")?;
                                let header = MappedRamHeader::parse(hb).ok_or_else(|| {
                                    Error::new(ErrorKind::Malformed, "mapped-ram header")
                                })?;
                                let k = mapped;
                                let block = mapped_entry(entry, blocks.get(k))?;
                                if blocks.len() != k + 1 {
                                    return Err(Error::new(
                                        ErrorKind::Malformed,
                                        format!(
                                            "mapped-ram block {k} ({:?}) does not follow the ram-blocks record that defines it ({} blocks defined)",
                                            block.name,
                                            blocks.len()
                                        ),
                                    ));
                                }
                                sink.event(&Event::MappedBlock {
                                    index: k as u32,
                                    block: &block,
                                    entry,
                                    header: &header,
                                    bitmap: b.b,
                                })?;
                                mapped += 1;
                                announced = Some(mapped);
                            }
                            kinds::SECTION_DATA => sink.event(&Event::SectionData { raw: b.b })?,
                            kinds::FORGET => sink.event(&Event::Forget)?,
                            kinds::EOF => {
                                eof = true;
                                sink.event(&Event::Eof)?
                            }
                            kinds::MULTIFD_INIT => {
                                let channel = b.take(1, "channel id")?[0];
                                let raw = b.take(crate::multifd::INIT_LEN, "init header")?;
                                b.done("multifd init record")?;
                                if raw[24] != channel {
                                    return Err(Error::new(
                                        ErrorKind::Malformed,
                                        format!("multifd init record of channel {channel} holds the header of channel {}", raw[24]),
                                    ));
                                }
                                sink.event(&Event::MultifdInit { channel, raw })?;
                            }
                            kinds::MULTIFD_PACKET => {
                                let channel = b.take(1, "channel id")?[0];
                                let header = b.bytes("packet header")?;
                                let at = channel_at
                                    .entry(channel)
                                    .or_insert(crate::multifd::INIT_LEN as u64);
                                let packet = crate::multifd::Packet::from_parts(
                                    header, b.b, page_size, channel, *at,
                                )?;
                                let payload = if packet.plain() {
                                    u64::from(packet.normal) * page_size
                                } else {
                                    b.b.len() as u64
                                };
                                *at += header.len() as u64 + payload;
                                sink.event(&Event::MultifdPacket { channel, packet })?;
                            }
                            kinds::VMDESC => {
                                let in_stream = b.take(1, "vmdesc flag")?[0] != 0;
                                sink.event(&Event::Vmdesc {
                                    json: b.b,
                                    in_stream,
                                })?;
                            }
                            _ => {}
                        }
                    }
                    _ => {}
                }
                Ok(())
            })();
            r.map_err(|e| e.at_offset(at).in_record(index, kind.name()))?;
            if kind == RecordKind::RAM_BLOCKS {
                // the list as the reader validated it (unique ids, sizes in
                // whole pages, within Limits::max_ram_blocks), every record so far
                blocks = qemu_blocks(self.reader.state())
                    .map_err(|e| e.at_offset(at).in_record(index, kind.name()))?;
            }
        }
        if !eof {
            // reported at the end record, where the EOF record should have been
            let state = self.reader.state();
            let end_at = state.offset().saturating_sub(END_FRAMED_LEN as u64);
            return Err(Error::new(
                ErrorKind::Malformed,
                "the converted stream has no QEMU EOF record",
            )
            .at_offset(end_at)
            .in_record(state.records().saturating_sub(1), RecordKind::END.name()));
        }
        Ok(())
    }
}

/// The block of a mapped-ram record's list entry (name length, name, used
/// length, and an 8-byte address with `x-ignore-shared`), which must be the
/// block `defined` by the `ram-blocks` record before it.
fn mapped_entry(entry: &[u8], defined: Option<&QemuRamBlock>) -> Result<QemuRamBlock> {
    let bad = |what: &str| {
        Error::new(
            ErrorKind::Malformed,
            format!("mapped-ram block list entry: {what}"),
        )
    };
    let n = usize::from(*entry.first().ok_or_else(|| bad("empty"))?);
    let name = entry
        .get(1..1 + n)
        .and_then(|n| std::str::from_utf8(n).ok())
        .ok_or_else(|| bad("name"))?;
    let size = entry
        .get(1 + n..9 + n)
        .map(|b| u64::from_be_bytes(b.try_into().unwrap_or_default()))
        .ok_or_else(|| bad("used length"))?;
    let addr = match &entry[9 + n..] {
        [] => None,
        b if b.len() == 8 => Some(u64::from_be_bytes(b.try_into().unwrap_or_default())),
        b => {
            return Err(bad(&format!(
                "{} bytes after the used length (0 or 8)",
                b.len()
            )))
        }
    };
    match defined {
        Some(d) if d.name == name && d.size == size => Ok(QemuRamBlock {
            name: name.to_owned(),
            size,
            page_size: None,
            addr,
        }),
        _ => Err(bad(&format!(
            "block {name:?} of {size:#x} bytes is not the block the ram-blocks record before it defines"
        ))),
    }
}

/// The vmstream RAM block list for a QEMU one: ids count from 0 in QEMU's
/// order, so a page event's block index is its vmstream block id.
pub fn vmstream_blocks(blocks: &[QemuRamBlock], page_size: u32) -> Vec<RamBlock> {
    blocks
        .iter()
        .enumerate()
        .map(|(i, b)| RamBlock {
            id: i as u32,
            name: b.name.clone(),
            size: b.size,
            page_size: b.page_size.map_or(page_size, |p| p as u32),
            flags: 0,
        })
        .collect()
}
