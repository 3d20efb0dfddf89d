//! The QEMU stream writer: [`Event`]s to bytes.

use std::collections::{BTreeMap, HashMap};
use std::io::{Seek, SeekFrom, Write};

use vmstream::{Error, ErrorKind, Result, Value};

use crate::event::{Event, QemuRamBlock, SectionKind, Sink};
use crate::mapped_ram::{self, Layout, MappedRamHeader};
use crate::multifd::PacketKind;
use crate::ram::{FLAG_CONTINUE, FLAG_EOS, FLAG_PAGE, FLAG_ZERO};
use crate::vmdesc::{self, Vmdesc};
use crate::wire::{COMMAND, CONFIGURATION, FOOTER, MAGIC, VERSION, VMDESC};

/// Writes a QEMU migration stream from events, byte for byte as the events
/// describe it: block names are left out exactly where QEMU leaves them out
/// (same block as the previous page record, unless a [`Event::Forget`] came
/// between), and typed device values are encoded back through the vmdesc.
#[derive(Debug)]
pub struct QemuWriter<W: Write> {
    out: Out<W>,
    /// The mapped-ram block whose pages are being written.
    region: Option<Region>,
    page_size: u64,
    blocks: Vec<QemuRamBlock>,
    last_block: Option<u32>,
    /// Section id to "is RAM", for SectionEnd.
    sections: HashMap<u32, bool>,
    current: Option<u32>,
    vmdesc: Option<Vmdesc>,
    trailer: Option<Vec<u8>>,
    eof: bool,
    devices: usize,
    buf: Vec<u8>,
    max_depth: u32,
    channels: Option<ChannelOutputs>,
    pending: Option<PendingPacket>,
}

/// Opens the output of multifd channel K.
pub type OpenChannel = Box<dyn FnMut(u8) -> Result<Box<dyn Write>>>;

/// The outputs of a channel set's multifd channels.
struct ChannelOutputs {
    open: OpenChannel,
    outs: BTreeMap<u8, Box<dyn Write>>,
    /// The output written last: the main channel (`None`) or channel K.
    writing: Option<u8>,
}

impl std::fmt::Debug for ChannelOutputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelOutputs")
            .field("channels", &self.outs.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The pages a packet lists, which the next page events must be.
#[derive(Debug)]
struct PendingPacket {
    channel: u8,
    block: Vec<u8>,
    offsets: Vec<u64>,
    normal: usize,
    next: usize,
    plain: bool,
}

fn usage(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Usage, msg.into())
}

fn malformed(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Malformed, msg.into())
}

/// A mapped-ram block being written.
#[derive(Debug)]
struct Region {
    block: u32,
    layout: Layout,
    bitmap: Vec<u8>,
    /// The lowest page index still allowed.
    next: u64,
    /// Present pages not written yet.
    left: u64,
}

/// The output: counts the stream offset, and leaves holes by seeking where
/// it can (else by writing zeros), lazily, so a hole is only made when
/// something follows it.
struct Out<W> {
    inner: W,
    pos: u64,
    hole: u64,
    seek: Option<fn(&mut W, u64) -> std::io::Result<()>>,
}

impl<W> std::fmt::Debug for Out<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Out")
            .field("pos", &self.pos)
            .field("hole", &self.hole)
            .field("seekable", &self.seek.is_some())
            .finish()
    }
}

impl<W: Write> Out<W> {
    /// Leaves a hole up to stream offset `target` (at or after the position).
    fn skip_to(&mut self, target: u64) -> Result<()> {
        let at = self.pos + self.hole;
        if target < at {
            return Err(malformed(format!(
                "mapped-ram offset {target:#x} lies before the write position {at:#x}"
            )));
        }
        self.hole += target - at;
        Ok(())
    }

    fn fill_hole(&mut self) -> std::io::Result<()> {
        if self.hole == 0 {
            return Ok(());
        }
        match self.seek {
            Some(seek) => seek(&mut self.inner, self.hole)?,
            None => {
                let zeros = [0u8; 8192];
                let mut left = self.hole;
                while left > 0 {
                    let n = left.min(zeros.len() as u64) as usize;
                    self.inner.write_all(&zeros[..n])?;
                    left -= n as u64;
                }
            }
        }
        self.pos += self.hole;
        self.hole = 0;
        Ok(())
    }
}

impl<W: Write> Write for Out<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.fill_hole()?;
        let n = self.inner.write(buf)?;
        self.pos += n as u64;
        Ok(n)
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.fill_hole()?;
        self.inner.write_all(buf)?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The one-byte length QEMU puts before an idstr or block name.
fn name_len(name: &str) -> Result<u8> {
    u8::try_from(name.len()).map_err(|_| {
        usage(format!(
            "name of {} bytes; QEMU names have at most 255",
            name.len()
        ))
    })
}

impl<W: Write> QemuWriter<W> {
    /// A writer to `out` (wrap it in a `BufWriter` for speed).
    pub fn new(out: W, page_size: u64) -> QemuWriter<W> {
        QemuWriter {
            out: Out {
                inner: out,
                pos: 0,
                hole: 0,
                seek: None,
            },
            region: None,
            page_size,
            blocks: Vec::new(),
            last_block: None,
            sections: HashMap::new(),
            current: None,
            vmdesc: None,
            trailer: None,
            eof: false,
            devices: 0,
            buf: Vec::new(),
            max_depth: 128,
            channels: None,
            pending: None,
        }
    }

    /// Writes the multifd channels of a channel set too: channel K's bytes go
    /// to `open(K)`, called when its init header comes. Without it, multifd
    /// events are refused.
    pub fn with_channels(mut self, open: OpenChannel) -> QemuWriter<W> {
        self.channels = Some(ChannelOutputs {
            open,
            outs: BTreeMap::new(),
            writing: None,
        });
        self
    }

    /// The multifd channels written so far.
    pub fn channels(&self) -> Vec<u8> {
        self.channels
            .as_ref()
            .map(|c| c.outs.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Before writing to another output of a channel set than the last one,
    /// flushes the last one: a live destination's channel waits at each
    /// sync point for the main channel's, and its main channel for each
    /// channel's SYNC packet, so no bytes may wait in a buffer while the
    /// writer writes elsewhere.
    fn switch_to(&mut self, to: Option<u8>) -> Result<()> {
        let Some(c) = self.channels.as_mut() else {
            return Ok(());
        };
        if c.writing == to {
            return Ok(());
        }
        match c.writing {
            None => self.out.flush()?,
            Some(k) => {
                if let Some(out) = c.outs.get_mut(&k) {
                    out.flush()?;
                }
            }
        }
        c.writing = to;
        Ok(())
    }

    fn channel_out(&mut self, channel: u8) -> Result<&mut Box<dyn Write>> {
        self.channels
            .as_mut()
            .and_then(|c| c.outs.get_mut(&channel))
            .ok_or_else(|| {
                malformed(format!(
                    "multifd packet of channel {channel} before its init header"
                ))
            })
    }

    /// A page event that belongs to the pending packet: checked against the
    /// packet's list, its data written to the channel for a plain packet.
    fn packet_page(&mut self, block: u32, index: u64, data: Option<&[u8]>) -> Result<()> {
        let Some(p) = self.pending.as_mut() else {
            return Ok(());
        };
        let i = p.next;
        let name = self.blocks.get(block as usize).map(|b| b.name.as_bytes());
        let want = p.offsets.get(i).copied();
        let ok = name == Some(&p.block[..])
            && index.checked_mul(self.page_size) == want
            && data.is_some() == (i < p.normal);
        if !ok {
            return Err(malformed(format!(
                "page {i} of a multifd packet of channel {} is page {index} of RAM block {block}{}, but the packet lists {:?} offset {:?} as a {} page",
                p.channel,
                if data.is_some() { " with data" } else { " (zero)" },
                String::from_utf8_lossy(&p.block),
                want,
                if i < p.normal { "normal" } else { "zero" }
            )));
        }
        p.next += 1;
        let (channel, plain, done) = (p.channel, p.plain, p.next == p.offsets.len());
        if done {
            self.pending = None;
        }
        if let (true, Some(d)) = (plain, data) {
            if d.len() as u64 != self.page_size {
                return Err(malformed(format!(
                    "multifd page of {} bytes; the page size is {}",
                    d.len(),
                    self.page_size
                )));
            }
            self.channel_out(channel)?.write_all(d)?;
        }
        Ok(())
    }

    /// A writer to a seekable `out` (a file), whose stream starts at its
    /// current position: the holes of a `mapped-ram` stream (absent pages,
    /// padding) are seeked over, so the file is sparse. Without this the
    /// writer writes them as zeros.
    pub fn seekable(out: W, page_size: u64) -> QemuWriter<W>
    where
        W: Seek,
    {
        let mut w = QemuWriter::new(out, page_size);
        w.out.seek = Some(|w, n| {
            let n = i64::try_from(n).map_err(|_| std::io::Error::other("hole too large"))?;
            w.seek(SeekFrom::Current(n)).map(|_| ())
        });
        w
    }

    /// Flushes and returns the inner writer.
    pub fn finish(mut self) -> Result<W> {
        if !self.eof {
            return Err(usage("the stream has no EOF"));
        }
        if let Some(p) = &self.pending {
            return Err(malformed(format!(
                "the stream ends while {} pages of a multifd packet of channel {} are missing",
                p.offsets.len() - p.next,
                p.channel
            )));
        }
        if let Some(c) = self.channels.as_mut() {
            for out in c.outs.values_mut() {
                out.flush()?;
            }
        }
        if self.out.hole > 0 {
            // a stream never ends in a hole, but if it did, the file must
            // still have its length: write its last byte
            self.out.hole -= 1;
            self.out.write_all(&[0])?;
        }
        self.out.flush()?;
        Ok(self.out.inner)
    }

    /// Starts a mapped-ram block: its entry, header and bitmap, then the hole
    /// up to its first page slot.
    fn mapped_block(
        &mut self,
        index: u32,
        block: &QemuRamBlock,
        entry: &[u8],
        header: &MappedRamHeader,
        bitmap: &[u8],
    ) -> Result<()> {
        self.close_region()?;
        if index as usize != self.blocks.len() {
            return Err(malformed(format!(
                "mapped-ram block {index} ({:?}) after {} blocks",
                block.name,
                self.blocks.len()
            )));
        }
        self.out.write_all(entry)?;
        let at = self.out.pos;
        let layout = header.check(&block.name, at, block.size, self.page_size)?;
        if bitmap.len() as u64 != layout.bitmap_len {
            return Err(malformed(format!(
                "mapped-ram bitmap of {} bytes for RAM block {:?}, which needs {}",
                bitmap.len(),
                block.name,
                layout.bitmap_len
            )));
        }
        self.out.write_all(&header.to_bytes())?;
        self.out.write_all(bitmap)?;
        self.out.skip_to(layout.pages_offset)?;
        self.blocks.push(block.clone());
        self.region = Some(Region {
            block: index,
            layout,
            bitmap: bitmap.to_vec(),
            next: 0,
            left: mapped_ram::count(bitmap, layout.pages),
        });
        Ok(())
    }

    /// A page of the open mapped-ram block, into its slot.
    fn mapped_page(&mut self, block: u32, index: u64, data: Option<&[u8]>) -> Result<()> {
        let Some(r) = &mut self.region else {
            return Ok(());
        };
        let name = || self.blocks.get(block as usize).map_or("", |b| &b.name);
        if block != r.block
            || index < r.next
            || !mapped_ram::present(&r.bitmap, index)
            || index >= r.layout.pages
        {
            return Err(malformed(format!(
                "page {index} of RAM block {block} ({:?}) is not the next present page of mapped-ram block {} (its bitmap's pages come once each, in order)",
                name(), r.block
            )));
        }
        let Some(data) = data else {
            return Err(malformed(format!(
                "zero page {index} of mapped-ram RAM block {:?}: mapped-ram has no zero pages (they are absent from the bitmap)",
                name()
            )));
        };
        if data.len() as u64 != self.page_size {
            return Err(malformed(format!(
                "page of {} bytes; the page size is {}",
                data.len(),
                self.page_size
            )));
        }
        let slot = r.layout.slot(index, self.page_size);
        r.next = index + 1;
        r.left -= 1;
        self.out.skip_to(slot)?;
        self.out.write_all(data)?;
        Ok(())
    }

    /// Ends the open mapped-ram block: every present page was written; the
    /// stream goes on after its last slot.
    fn close_region(&mut self) -> Result<()> {
        let Some(r) = self.region.take() else {
            return Ok(());
        };
        if r.left > 0 {
            return Err(malformed(format!(
                "mapped-ram RAM block {:?}: its bitmap has {} more present pages than were given",
                self.blocks.get(r.block as usize).map_or("", |b| &b.name),
                r.left
            )));
        }
        self.out.skip_to(r.layout.end)
    }

    fn page_header(&mut self, flags: u64, block: u32, index: u64) -> Result<()> {
        let b = self.blocks.get(block as usize).ok_or_else(|| {
            usage(format!(
                "page of RAM block {block}, but the list has {}",
                self.blocks.len()
            ))
        })?;
        let addr = index
            .checked_mul(self.page_size)
            .filter(|&a| a < b.size)
            .ok_or_else(|| {
                usage(format!(
                    "page {index} is beyond RAM block {:?} ({} bytes)",
                    b.name, b.size
                ))
            })?;
        if self.last_block == Some(block) {
            self.out
                .write_all(&(addr | flags | FLAG_CONTINUE).to_be_bytes())?;
        } else {
            let len = name_len(&b.name)?;
            self.out.write_all(&(addr | flags).to_be_bytes())?;
            self.out.write_all(&[len])?;
            self.out.write_all(b.name.as_bytes())?;
        }
        self.last_block = Some(block);
        Ok(())
    }
}

impl<W: Write> Sink for QemuWriter<W> {
    fn event(&mut self, ev: &Event<'_>) -> Result<()> {
        if self.channels.is_some() {
            let to = match ev {
                Event::MultifdInit { channel, .. } | Event::MultifdPacket { channel, .. } => {
                    Some(*channel)
                }
                Event::Page { .. } => self.pending.as_ref().map(|p| p.channel),
                _ => None,
            };
            self.switch_to(to)?;
        }
        match ev {
            Event::Page { block, index, data } if self.region.is_some() => {
                self.mapped_page(*block, *index, *data)?;
                return Ok(());
            }
            Event::MappedBlock {
                index,
                block,
                entry,
                header,
                bitmap,
            } => return self.mapped_block(*index, block, entry, header, bitmap),
            _ => self.close_region()?,
        }
        match ev {
            Event::MappedBlock { .. } => {}
            Event::Header { version } => {
                if *version != VERSION {
                    return Err(usage(format!(
                        "QEMU stream version {version} cannot be written"
                    )));
                }
                self.out.write_all(&MAGIC)?;
                self.out.write_all(&VERSION.to_be_bytes())?;
            }
            Event::Configuration { raw, .. } => {
                self.out.write_all(&[CONFIGURATION])?;
                self.out.write_all(raw)?;
            }
            Event::Target { page_size, .. } => {
                if !self.blocks.is_empty() {
                    return Err(usage(
                        "the target page size changed after the RAM block list",
                    ));
                }
                self.page_size = *page_size;
            }
            Event::SectionData { raw } => self.out.write_all(raw)?,
            Event::Section { kind, id, header } => {
                let len = header.map(|h| name_len(&h.idstr)).transpose()?;
                self.out.write_all(&[kind.code()])?;
                self.out.write_all(&id.to_be_bytes())?;
                if let (Some(h), Some(len)) = (header, len) {
                    self.out.write_all(&[len])?;
                    self.out.write_all(h.idstr.as_bytes())?;
                    self.out.write_all(&h.instance_id.to_be_bytes())?;
                    self.out.write_all(&h.version_id.to_be_bytes())?;
                    let ram = h.idstr == "ram" && *kind == SectionKind::Start;
                    self.sections.insert(*id, ram);
                }
                self.current = Some(*id);
            }
            Event::RamBlocks { raw, blocks } => {
                self.out.write_all(raw)?;
                self.blocks = blocks.to_vec();
            }
            Event::Page { block, index, data } if self.pending.is_some() => {
                self.packet_page(*block, *index, *data)?
            }
            Event::MultifdInit { channel, raw } => {
                let c = self.channels.as_mut().ok_or_else(|| {
                    usage("a multifd channel set needs an output per channel (QemuWriter::with_channels)")
                })?;
                if c.outs.contains_key(channel) {
                    return Err(malformed(format!("multifd channel {channel} joins twice")));
                }
                let mut out = (c.open)(*channel)?;
                out.write_all(raw)?;
                c.outs.insert(*channel, out);
            }
            Event::MultifdPacket { channel, packet } => {
                if let Some(p) = &self.pending {
                    return Err(malformed(format!(
                        "multifd packet of channel {channel} while {} pages of a packet of channel {} are missing",
                        p.offsets.len() - p.next,
                        p.channel
                    )));
                }
                let out = self.channel_out(*channel)?;
                out.write_all(packet.header)?;
                out.write_all(packet.kept_payload())?;
                if packet.kind == PacketKind::Ram && packet.pages() > 0 {
                    self.pending = Some(PendingPacket {
                        channel: *channel,
                        block: packet.block().to_vec(),
                        offsets: (0..packet.pages()).map(|i| packet.page_offset(i)).collect(),
                        normal: packet.normal as usize,
                        next: 0,
                        plain: packet.plain(),
                    });
                }
            }
            Event::Page { block, index, data } => match data {
                Some(d) => {
                    self.page_header(FLAG_PAGE, *block, *index)?;
                    self.out.write_all(d)?;
                }
                None => {
                    self.page_header(FLAG_ZERO, *block, *index)?;
                    self.out.write_all(&[0])?;
                }
            },
            Event::Forget => self.last_block = None,
            Event::RamRecord {
                header,
                name,
                payload,
            } => {
                self.out.write_all(&header.to_be_bytes())?;
                if let Some(n) = name {
                    let len = u8::try_from(n.len())
                        .map_err(|_| usage("block name longer than 255 bytes"))?;
                    self.out.write_all(&[len])?;
                    self.out.write_all(n)?;
                    self.last_block = self
                        .blocks
                        .iter()
                        .position(|b| b.name.as_bytes() == *n)
                        .map(|i| i as u32);
                }
                self.out.write_all(payload)?;
            }
            Event::Device(state) => {
                let ordinal = self.devices;
                self.devices += 1;
                match &state.value {
                    Value::Bytes(b) => self.out.write_all(b)?,
                    v => {
                        let obj = self
                            .vmdesc
                            .as_ref()
                            .and_then(|d| d.devices.get(ordinal))
                            .and_then(|d| d.vmsd.as_ref())
                            .ok_or_else(|| {
                                usage(format!(
                                    "device {:?} has typed state but no vmdesc entry describes it",
                                    state.name
                                ))
                            })?;
                        self.buf.clear();
                        vmdesc::encode(obj, v, &mut self.buf)
                            .map_err(|e| e.in_device(&state.name))?;
                        self.out.write_all(&self.buf)?;
                    }
                }
            }
            Event::SectionEnd { footer } => {
                let id = self
                    .current
                    .take()
                    .ok_or_else(|| usage("section end outside a section"))?;
                if self.sections.get(&id).copied().unwrap_or(false) {
                    self.out.write_all(&FLAG_EOS.to_be_bytes())?;
                }
                if *footer {
                    self.out.write_all(&[FOOTER])?;
                    self.out.write_all(&id.to_be_bytes())?;
                }
            }
            Event::Command { cmd, payload } => {
                self.out.write_all(&[COMMAND])?;
                self.out.write_all(&cmd.to_be_bytes())?;
                let len = u16::try_from(payload.len())
                    .map_err(|_| usage("command payload longer than 65535 bytes"))?;
                self.out.write_all(&len.to_be_bytes())?;
                self.out.write_all(payload)?;
            }
            Event::Eof => {
                self.out.write_all(&[0x00])?;
                self.eof = true;
                if let Some(t) = self.trailer.take() {
                    self.write_trailer(&t)?;
                }
            }
            Event::Vmdesc { json, in_stream } => {
                self.vmdesc = Some(Vmdesc::parse(json, self.max_depth)?);
                if *in_stream {
                    if self.eof {
                        self.write_trailer(json)?;
                    } else {
                        self.trailer = Some(json.to_vec());
                    }
                }
            }
        }
        Ok(())
    }
}

impl<W: Write> QemuWriter<W> {
    fn write_trailer(&mut self, json: &[u8]) -> Result<()> {
        let len = u32::try_from(json.len()).map_err(|_| usage("vmdesc larger than 4 GiB"))?;
        self.out.write_all(&[VMDESC])?;
        self.out.write_all(&len.to_be_bytes())?;
        self.out.write_all(json)?;
        Ok(())
    }
}
