//! Multifd channels: the extra connections on which QEMU sends guest pages
//! when the `multifd` capability is on (see `docs/qemu-mapping.md` §8).
//!
//! A channel carries a 64-byte `MultiFDInit` header (magic `0x11223344`,
//! version 1, the VM's UUID, the channel id), then packets: a RAM packet is a
//! fixed header of `320 + 8 × (512 KiB / page size)` bytes (flags, page counts,
//! packet number, the RAM block's name and an array of page offsets) and its
//! payload — the normal pages in offset order, or one piece of the channel's
//! zlib or zstd stream; zero pages (QEMU 9.0+) are listed and carry nothing. A
//! device-state packet (QEMU 10.0+, flag `0x40`) is a 276-byte header and that
//! many bytes of device data as it names.
//!
//! [`ChannelDecoder`] parses one channel without I/O: hand it the bytes
//! gathered so far and it returns the next whole item, or how many bytes it
//! needs. [`ChannelReader`] drives it over a [`Read`]. Both need the target
//! page size (from the main channel's configuration; 4096 when it names
//! none), because it sizes the packet header. [`Inflater`] turns a compressed
//! packet's payload into its pages with the channel's one stream.
//!
//! Every size is checked before bytes are gathered for it: a packet never
//! needs more than `320 + 8 × 128` header bytes and 1 MiB of payload (QEMU's
//! own receive buffer), and never more than [`Limits::max_record_size`].

use std::io::Read;

use vmstream::{Error, ErrorKind, Limits, Result};

/// The magic of the init header and of every packet.
pub const MAGIC: u32 = 0x1122_3344;
/// The only version of the init header and packets.
pub const VERSION: u32 = 1;
/// Bytes of the `MultiFDInit` header.
pub const INIT_LEN: usize = 64;
/// QEMU's `MULTIFD_PACKET_SIZE`: a RAM packet has room for this many bytes of pages.
pub const PACKET_SIZE: u64 = 512 << 10;
/// Packet flag: a sync point.
pub const FLAG_SYNC: u32 = 0x01;
/// Packet flags holding the compression method.
pub const FLAG_COMPRESSION_MASK: u32 = 0x3e;
/// Packet flag (10.0+): a device-state packet.
pub const FLAG_DEVICE_STATE: u32 = 0x40;
/// The most payload bytes a compressed packet may have (QEMU's receive buffer).
pub const MAX_COMPRESSED: u64 = 2 * PACKET_SIZE;
/// Bytes of a device-state packet's header.
pub const DEVICE_STATE_HEADER_LEN: usize = 12 + 256 + 4 + 4;
/// Offset of the page offset array in a RAM packet.
const OFFSETS_AT: usize = 320;

/// The compression of a RAM packet's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Compression {
    /// Plain pages.
    None,
    /// One zlib stream per channel, sync-flushed at each packet's end.
    Zlib,
    /// One zstd stream per channel, flushed at each packet's end.
    Zstd,
}

impl Compression {
    /// The method of packet flags; `None` for a code not read (qpl, uadk, qatzip).
    pub fn from_flags(flags: u32) -> Option<Compression> {
        match flags & FLAG_COMPRESSION_MASK {
            0 => Some(Compression::None),
            0x02 => Some(Compression::Zlib),
            0x04 => Some(Compression::Zstd),
            _ => None,
        }
    }

    /// The name QEMU's `multifd-compression` parameter uses.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Zlib => "zlib",
            Compression::Zstd => "zstd",
        }
    }
}

/// A channel's `MultiFDInit` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelInit {
    /// The 64 bytes as on the wire (reserved bytes included).
    pub raw: [u8; INIT_LEN],
}

impl ChannelInit {
    /// The channel id (byte 24).
    pub fn id(&self) -> u8 {
        self.raw[24]
    }

    /// The VM UUID (zeros when none was given).
    pub fn uuid(&self) -> &[u8] {
        &self.raw[8..24]
    }
}

/// What a packet is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PacketKind {
    /// Guest pages (or none: a sync packet).
    Ram,
    /// Device state (VFIO), QEMU 10.0+.
    DeviceState,
}

/// One packet of a channel, borrowed from the bytes it was parsed from.
#[derive(Debug, Clone, Copy)]
pub struct Packet<'a> {
    /// Device state or RAM.
    pub kind: PacketKind,
    /// The whole header as on the wire: for RAM packets the fixed part and the
    /// whole offset array, unused entries included.
    pub header: &'a [u8],
    /// The payload. For a plain RAM packet it is the normal pages' data, but
    /// packets handed on as [`crate::Event::MultifdPacket`] carry only what
    /// [`Packet::kept_payload`] says (their pages follow as page events).
    pub payload: &'a [u8],
    /// Packet flags.
    pub flags: u32,
    /// Normal (data) pages.
    pub normal: u32,
    /// Zero pages (QEMU 9.0+; 0 before).
    pub zero: u32,
    /// The packet number (QEMU numbers the packets of all channels in one sequence).
    pub packet_num: u64,
    /// Where the packet starts in its channel.
    pub offset: u64,
}

fn be32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_be_bytes)
}

fn be64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

impl<'a> Packet<'a> {
    /// Whether this is a sync point.
    pub fn sync(&self) -> bool {
        self.flags & FLAG_SYNC != 0
    }

    /// The payload's compression (RAM packets; `None` for device state).
    pub fn compression(&self) -> Option<Compression> {
        match self.kind {
            PacketKind::Ram => Compression::from_flags(self.flags),
            PacketKind::DeviceState => None,
        }
    }

    /// Whether the payload is the normal pages' bytes as they are.
    pub fn plain(&self) -> bool {
        self.kind == PacketKind::Ram && self.compression() == Some(Compression::None)
    }

    /// The payload a converted stream keeps as bytes: compressed data and
    /// device state (empty for a plain packet, whose pages travel as pages).
    pub fn kept_payload(&self) -> &'a [u8] {
        if self.plain() {
            &[]
        } else {
            self.payload
        }
    }

    /// Pages listed (normal and zero).
    pub fn pages(&self) -> u32 {
        self.normal.saturating_add(self.zero)
    }

    /// The RAM block name (up to its first NUL; empty for device state).
    pub fn block(&self) -> &'a [u8] {
        match self.kind {
            PacketKind::Ram => {
                let name = self.header.get(64..320).unwrap_or(&[]);
                let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
                &name[..end]
            }
            PacketKind::DeviceState => &[],
        }
    }

    /// The byte offset in its block of listed page `i` (normal pages first,
    /// then zero pages).
    pub fn page_offset(&self, i: u32) -> u64 {
        be64(self.header, OFFSETS_AT + 8 * i as usize)
    }

    /// For a device-state packet: its idstr and instance id.
    pub fn device(&self) -> Option<(&'a [u8], u32)> {
        (self.kind == PacketKind::DeviceState).then(|| {
            let name = self.header.get(12..268).unwrap_or(&[]);
            let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
            (&name[..end], be32(self.header, 268))
        })
    }

    /// Parses a packet whose header and payload are given apart (a converted
    /// stream keeps the payload of a plain packet as pages): checks the
    /// header as [`ChannelDecoder`] does and that `payload` has the length
    /// the header gives it (`plain_payload_len` for a plain packet).
    pub fn from_parts(
        header: &'a [u8],
        payload: &'a [u8],
        page_size: u64,
        channel: u8,
        offset: u64,
    ) -> Result<Packet<'a>> {
        let mut d = ChannelDecoder::new(page_size, Limits::default())?;
        d.channel = Some(channel);
        d.offset = offset;
        let (kind, header_len) = d.header_len(header)?.ok_or_else(|| {
            d.err(ErrorKind::Malformed, "packet header", "too short")
                .at_offset(offset)
        })?;
        if header.len() != header_len {
            return Err(d
                .err(
                    ErrorKind::Malformed,
                    "packet header",
                    format!("{} bytes, expected {header_len}", header.len()),
                )
                .at_offset(offset));
        }
        let mut p = d.parse(kind, header)?;
        let want = d.payload_len(&p)?;
        if !p.plain() && payload.len() as u64 != want {
            return Err(d
                .err(
                    ErrorKind::Malformed,
                    "payload",
                    format!("{} bytes kept, the header says {want}", payload.len()),
                )
                .at_offset(offset));
        }
        p.payload = payload;
        Ok(p)
    }
}

/// An item of a channel.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum ChannelEvent<'a> {
    /// The init header, first on every channel.
    Init(ChannelInit),
    /// A packet.
    Packet(Packet<'a>),
}

/// Parses one multifd channel from bytes in any split, without I/O.
///
/// ```
/// use vmstream_qemu::multifd::{ChannelDecoder, ChannelEvent};
/// # fn main() -> vmstream::Result<()> {
/// let mut init = [0u8; 64];
/// init[..4].copy_from_slice(&0x1122_3344u32.to_be_bytes());
/// init[4..8].copy_from_slice(&1u32.to_be_bytes());
/// init[24] = 2;
/// let mut d = ChannelDecoder::new(4096, vmstream::Limits::default())?;
/// assert!(d.decode(&init[..10])?.1.is_none()); // needs more
/// let (used, ev) = d.decode(&init)?;
/// assert!(matches!(ev, Some(ChannelEvent::Init(i)) if i.id() == 2) && used == 64);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ChannelDecoder {
    page_size: u64,
    limits: Limits,
    init: Option<ChannelInit>,
    channel: Option<u8>,
    offset: u64,
    packets: u64,
    failed: bool,
}

impl ChannelDecoder {
    /// A decoder for a stream of target page size `page_size` (1 KiB to 64 KiB).
    pub fn new(page_size: u64, limits: Limits) -> Result<ChannelDecoder> {
        if !crate::mapping::QEMU_PAGE_SIZES.contains(&u32::try_from(page_size).unwrap_or(0)) {
            return Err(Error::new(
                ErrorKind::Usage,
                format!("multifd page size {page_size} is not a QEMU target page size"),
            ));
        }
        Ok(ChannelDecoder {
            page_size,
            limits,
            init: None,
            channel: None,
            offset: 0,
            packets: 0,
            failed: false,
        })
    }

    /// Changes the page size; only before the first packet.
    pub fn set_page_size(&mut self, page_size: u64) -> Result<()> {
        if self.packets > 0 {
            return Err(Error::new(
                ErrorKind::Usage,
                "the page size of a multifd channel changes only before its first packet",
            ));
        }
        let fresh = ChannelDecoder::new(page_size, self.limits)?;
        self.page_size = fresh.page_size;
        Ok(())
    }

    /// The channel id, once the init header is read.
    pub fn channel(&self) -> Option<u8> {
        self.channel
    }

    /// Bytes consumed so far: the channel offset of the next item.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Packets decoded so far.
    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// The header length of a RAM packet at this page size.
    pub fn ram_header_len(&self) -> usize {
        OFFSETS_AT + 8 * (PACKET_SIZE / self.page_size) as usize
    }

    fn who(&self) -> String {
        match self.channel {
            Some(c) => format!("multifd channel {c}"),
            None => "multifd channel".to_owned(),
        }
    }

    fn err(&self, kind: ErrorKind, field: &str, msg: impl std::fmt::Display) -> Error {
        Error::new(kind, format!("{}: {field}: {msg}", self.who())).in_field(field)
    }

    /// Decodes the item at the start of `buf` (which starts at [`Self::offset`]):
    /// `(bytes used, Some(item))`, or `(0, None)` when `buf` does not hold a
    /// whole item yet (then [`Self::needed`] says how many bytes it takes).
    /// After an error every call fails.
    pub fn decode<'a>(&mut self, buf: &'a [u8]) -> Result<(usize, Option<ChannelEvent<'a>>)> {
        if self.failed {
            return Err(Error::new(
                ErrorKind::Usage,
                format!("{} decoder used after an error", self.who()),
            ));
        }
        let r = self.decode_inner(buf);
        if r.is_err() {
            self.failed = true;
        }
        r
    }

    /// The bytes the next item takes, as far as `buf` (its start) tells:
    /// at least this many must be present before [`Self::decode`] can return it.
    pub fn needed(&self, buf: &[u8]) -> Result<usize> {
        if self.init.is_none() {
            return Ok(INIT_LEN);
        }
        let Some((kind, hl)) = self.header_len(buf)? else {
            return Ok(12);
        };
        let Some(h) = buf.get(..hl) else {
            return Ok(hl);
        };
        let p = self.parse(kind, h)?;
        let pl = self.payload_len(&p)?;
        // both bounded by the checks in parse and payload_len
        Ok(hl + pl as usize)
    }

    fn decode_inner<'a>(&mut self, buf: &'a [u8]) -> Result<(usize, Option<ChannelEvent<'a>>)> {
        let at = self.offset;
        if self.init.is_none() {
            let Some(raw) = buf.get(..INIT_LEN) else {
                return Ok((0, None));
            };
            let magic = be32(raw, 0);
            if magic != MAGIC {
                return Err(self
                    .err(
                        ErrorKind::Malformed,
                        "init magic",
                        format!("{magic:#010x}, expected {MAGIC:#010x} (not a multifd channel)"),
                    )
                    .at_offset(at));
            }
            let version = be32(raw, 4);
            if version != VERSION {
                return Err(self
                    .err(
                        ErrorKind::Unsupported,
                        "init version",
                        format!("{version}, only {VERSION} is read"),
                    )
                    .at_offset(at + 4));
            }
            let mut init = ChannelInit { raw: [0; INIT_LEN] };
            init.raw.copy_from_slice(raw);
            self.channel = Some(init.id());
            self.offset += INIT_LEN as u64;
            self.init = Some(init);
            return Ok((INIT_LEN, Some(ChannelEvent::Init(init))));
        }
        let Some((kind, hl)) = self.header_len(buf)? else {
            return Ok((0, None));
        };
        let Some(h) = buf.get(..hl) else {
            return Ok((0, None));
        };
        let mut p = self.parse(kind, h)?;
        let pl = self.payload_len(&p)? as usize;
        let Some(payload) = buf.get(hl..hl + pl) else {
            return Ok((0, None));
        };
        p.payload = payload;
        self.offset += (hl + pl) as u64;
        self.packets += 1;
        Ok((hl + pl, Some(ChannelEvent::Packet(p))))
    }

    /// The kind and header length of the packet at the start of `buf`, once
    /// its first 12 bytes are there.
    fn header_len(&self, buf: &[u8]) -> Result<Option<(PacketKind, usize)>> {
        let at = self.offset;
        let Some(h) = buf.get(..12) else {
            return Ok(None);
        };
        let magic = be32(h, 0);
        if magic != MAGIC {
            return Err(self
                .err(
                    ErrorKind::Malformed,
                    "packet magic",
                    format!("{magic:#010x}, expected {MAGIC:#010x}"),
                )
                .at_offset(at));
        }
        let version = be32(h, 4);
        if version != VERSION {
            return Err(self
                .err(
                    ErrorKind::Unsupported,
                    "packet version",
                    format!("{version}, only {VERSION} is read"),
                )
                .at_offset(at + 4));
        }
        let flags = be32(h, 8);
        Ok(Some(if flags & FLAG_DEVICE_STATE != 0 {
            (PacketKind::DeviceState, DEVICE_STATE_HEADER_LEN)
        } else {
            (PacketKind::Ram, self.ram_header_len())
        }))
    }

    fn parse<'a>(&self, kind: PacketKind, h: &'a [u8]) -> Result<Packet<'a>> {
        let at = self.offset;
        let flags = be32(h, 8);
        let mut p = Packet {
            kind,
            header: h,
            payload: &[],
            flags,
            normal: 0,
            zero: 0,
            packet_num: 0,
            offset: at,
        };
        if kind == PacketKind::DeviceState {
            return Ok(p);
        }
        let known = FLAG_SYNC | FLAG_COMPRESSION_MASK;
        if flags & !known != 0 {
            return Err(self
                .err(
                    ErrorKind::Unsupported,
                    "flags",
                    format!("{flags:#x} has bits this reader does not know"),
                )
                .at_offset(at + 8));
        }
        if Compression::from_flags(flags).is_none() {
            return Err(self
                .err(
                    ErrorKind::Unsupported,
                    "flags",
                    format!(
                        "compression code {:#x} (only none, zlib and zstd are read)",
                        flags & FLAG_COMPRESSION_MASK
                    ),
                )
                .at_offset(at + 8));
        }
        let page_count = PACKET_SIZE / self.page_size;
        let alloc = be32(h, 12);
        if u64::from(alloc) > page_count {
            return Err(self
                .err(
                    ErrorKind::Malformed,
                    "pages_alloc",
                    format!(
                        "{alloc}, at most {page_count} with {}-byte pages",
                        self.page_size
                    ),
                )
                .at_offset(at + 12));
        }
        p.normal = be32(h, 16);
        if p.normal > alloc {
            return Err(self
                .err(
                    ErrorKind::Malformed,
                    "normal_pages",
                    format!("{} for a packet of {alloc} pages", p.normal),
                )
                .at_offset(at + 16));
        }
        p.zero = be32(h, 32);
        if p.zero > alloc - p.normal {
            return Err(self
                .err(
                    ErrorKind::Malformed,
                    "zero_pages",
                    format!(
                        "{} with {} normal pages in a packet of {alloc}",
                        p.zero, p.normal
                    ),
                )
                .at_offset(at + 32));
        }
        p.packet_num = be64(h, 24);
        Ok(p)
    }

    fn payload_len(&self, p: &Packet<'_>) -> Result<u64> {
        let at = self.offset;
        let (len, field, max) = match p.kind {
            PacketKind::DeviceState => (
                u64::from(be32(p.header, 272)),
                "next_packet_size",
                u64::from(self.limits.max_record_size).min(self.limits.max_alloc),
            ),
            PacketKind::Ram if p.normal == 0 => return Ok(0),
            PacketKind::Ram if p.plain() => {
                // normal ≤ PACKET_SIZE / page size, so this is at most 512 KiB
                return Ok(u64::from(p.normal) * self.page_size);
            }
            PacketKind::Ram => (
                u64::from(be32(p.header, 20)),
                "next_packet_size",
                MAX_COMPRESSED.min(u64::from(self.limits.max_record_size)),
            ),
        };
        if len > max {
            return Err(self
                .err(
                    ErrorKind::LimitExceeded,
                    field,
                    format!("a payload of {len} bytes, at most {max}"),
                )
                .at_offset(at + if p.kind == PacketKind::Ram { 20 } else { 272 }));
        }
        Ok(len)
    }
}

/// Reads one multifd channel from a [`Read`], item by item.
#[derive(Debug)]
pub struct ChannelReader<R> {
    inner: R,
    decoder: ChannelDecoder,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
}

impl<R: Read> ChannelReader<R> {
    /// A reader over `inner`, for target page size `page_size`.
    pub fn new(inner: R, page_size: u64, limits: Limits) -> Result<ChannelReader<R>> {
        Ok(ChannelReader {
            inner,
            decoder: ChannelDecoder::new(page_size, limits)?,
            buf: Vec::new(),
            start: 0,
            end: 0,
            eof: false,
        })
    }

    /// The decoder (channel id, offset, packet count).
    pub fn decoder(&self) -> &ChannelDecoder {
        &self.decoder
    }

    /// Changes the page size; only before the first packet.
    pub fn set_page_size(&mut self, page_size: u64) -> Result<()> {
        self.decoder.set_page_size(page_size)
    }

    /// The next item, or `None` at the end of the channel (between items).
    pub fn next_event(&mut self) -> Result<Option<ChannelEvent<'_>>> {
        while self.wanting()? > 0 && !self.eof {
            self.fill(usize::MAX)?;
        }
        let have = self.end - self.start;
        if self.eof && have < self.decoder.needed(&self.buf[self.start..self.end])? {
            if have == 0 {
                return Ok(None);
            }
            return Err(Error::new(
                ErrorKind::Malformed,
                format!(
                    "{}: the channel ends inside an item ({have} of its {} bytes)",
                    self.decoder.who(),
                    self.decoder.needed(&self.buf[self.start..self.end])?
                ),
            )
            .at_offset(self.decoder.offset()));
        }
        let (used, ev) = self.decoder.decode(&self.buf[self.start..self.end])?;
        self.start += used;
        match ev {
            Some(ev) => Ok(Some(ev)),
            None => Err(Error::new(
                ErrorKind::Malformed,
                format!(
                    "{}: item not decodable from the bytes it needs",
                    self.decoder.who()
                ),
            )
            .at_offset(self.decoder.offset())),
        }
    }

    /// Bytes the next item needs beyond those buffered, as far as the
    /// buffered ones tell (0: [`Self::next_event`] returns without reading).
    fn wanting(&self) -> Result<usize> {
        let need = self.decoder.needed(&self.buf[self.start..self.end])?;
        Ok(need.saturating_sub(self.end - self.start))
    }

    /// One read of at most `max` bytes towards the next item.
    fn fill(&mut self, max: usize) -> Result<()> {
        let have = self.end - self.start;
        let need = self.decoder.needed(&self.buf[self.start..self.end])?;
        // room for the item from `start`: the buffer grows as bytes
        // arrive (at most doubling what it holds), never to a declared
        // length at once (need is bounded by the decoder's size checks)
        if self.start > 0 && self.buf.len() - self.start < need.max(64 << 10) {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let want = (self.start + need.max(64 << 10)).min(self.end + have.max(64 << 10));
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
        let room = (self.buf.len() - self.end).min(max);
        let n = loop {
            match self.inner.read(&mut self.buf[self.end..self.end + room]) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::from(e).at_offset(self.decoder.offset())),
            }
        };
        if n == 0 {
            self.eof = true;
        }
        self.end += n;
        Ok(())
    }
}

/// A live channel: how many of its bytes have arrived, so that a reader can
/// take what is there without waiting for more.
pub trait Arrived {
    /// Bytes a read returns now without waiting; `usize::MAX` once the
    /// channel has ended (a read then returns at once: 0, or its error).
    fn arrived(&mut self) -> usize;
}

impl<R: Read + Arrived> ChannelReader<R> {
    /// Whether the next item (or the channel's end) has arrived whole:
    /// reads only bytes that are there, so it never waits. When it says
    /// yes, [`Self::next_event`] returns without waiting either.
    pub fn ready(&mut self) -> Result<bool> {
        loop {
            if self.eof || self.wanting()? == 0 {
                return Ok(true);
            }
            match self.inner.arrived() {
                0 => return Ok(false),
                n => self.fill(n)?,
            }
        }
    }
}

/// Turns compressed packets of one channel into their pages: QEMU keeps one
/// zlib or zstd stream per channel for the whole migration, so a channel's
/// packets go through one `Inflater`, in order.
pub struct Inflater {
    state: InflaterState,
    channel: u8,
    page_size: u64,
}

enum InflaterState {
    None,
    Zlib(Box<flate2::Decompress>),
    Zstd(Box<zstd::stream::raw::Decoder<'static>>),
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let method = match self.state {
            InflaterState::None => "none",
            InflaterState::Zlib(_) => "zlib",
            InflaterState::Zstd(_) => "zstd",
        };
        f.debug_struct("Inflater")
            .field("channel", &self.channel)
            .field("method", &method)
            .finish()
    }
}

impl Inflater {
    /// An inflater for channel `channel` of a stream of page size `page_size`.
    pub fn new(channel: u8, page_size: u64) -> Inflater {
        Inflater {
            state: InflaterState::None,
            channel,
            page_size,
        }
    }

    fn err(&self, p: &Packet<'_>, msg: impl std::fmt::Display) -> Error {
        Error::new(
            ErrorKind::Malformed,
            format!(
                "multifd channel {}: packet {}: payload: {msg}",
                self.channel, p.packet_num
            ),
        )
        .in_field("payload")
        .at_offset(p.offset)
    }

    /// The normal pages of `p`, concatenated in offset order, into `out`
    /// (replacing its contents): the payload itself for a plain packet, else
    /// the next piece of the channel's stream, which must give exactly
    /// `normal × page size` bytes. Device-state packets have no pages.
    pub fn pages(&mut self, p: &Packet<'_>, out: &mut Vec<u8>) -> Result<()> {
        out.clear();
        let want = u64::from(p.normal) * self.page_size;
        if p.kind != PacketKind::Ram || p.normal == 0 {
            return Ok(());
        }
        let method = p
            .compression()
            .ok_or_else(|| self.err(p, "compression method not read"))?;
        match (&self.state, method) {
            (_, Compression::None) => {
                out.extend_from_slice(p.payload);
                return Ok(());
            }
            (InflaterState::None, Compression::Zlib) => {
                self.state = InflaterState::Zlib(Box::new(flate2::Decompress::new(true)))
            }
            (InflaterState::None, Compression::Zstd) => {
                let d = zstd::stream::raw::Decoder::new()
                    .map_err(|e| self.err(p, format!("zstd decoder: {e}")))?;
                self.state = InflaterState::Zstd(Box::new(d));
            }
            (InflaterState::Zlib(_), Compression::Zlib)
            | (InflaterState::Zstd(_), Compression::Zstd) => {}
            _ => return Err(self.err(p, "the channel changes its compression method")),
        }
        // want ≤ PACKET_SIZE: normal ≤ 512 KiB / page size
        out.resize(want as usize, 0);
        let mut got = 0usize;
        let input = p.payload;
        let mut used = 0usize;
        let channel = self.channel;
        match &mut self.state {
            InflaterState::Zlib(z) => {
                while got < out.len() {
                    let (i0, o0) = (z.total_in(), z.total_out());
                    let r = z.decompress(
                        &input[used..],
                        &mut out[got..],
                        flate2::FlushDecompress::Sync,
                    );
                    let di = (z.total_in() - i0) as usize;
                    let dout = (z.total_out() - o0) as usize;
                    used += di;
                    got += dout;
                    match r {
                        Ok(flate2::Status::Ok) if di > 0 || dout > 0 => {}
                        Ok(_) => break,
                        Err(e) => {
                            return Err(Error::new(
                                ErrorKind::Malformed,
                                format!(
                                    "multifd channel {channel}: packet {}: payload: does not inflate: {e}",
                                    p.packet_num
                                ),
                            )
                            .in_field("payload")
                            .at_offset(p.offset))
                        }
                    }
                }
            }
            InflaterState::Zstd(z) => {
                use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
                while got < out.len() {
                    let mut inb = InBuffer::around(&input[used..]);
                    let mut outb = OutBuffer::around(&mut out[got..]);
                    let r = z.run(&mut inb, &mut outb);
                    let (di, dout) = (inb.pos(), outb.pos());
                    used += di;
                    got += dout;
                    match r {
                        Ok(_) if di > 0 || dout > 0 => {}
                        Ok(_) => break,
                        Err(e) => {
                            return Err(Error::new(
                                ErrorKind::Malformed,
                                format!(
                                    "multifd channel {channel}: packet {}: payload: does not decompress: {e}",
                                    p.packet_num
                                ),
                            )
                            .in_field("payload")
                            .at_offset(p.offset))
                        }
                    }
                }
            }
            InflaterState::None => {}
        }
        if got != out.len() {
            return Err(self.err(
                p,
                format!(
                    "{} bytes decompress to {got} bytes, expected {} ({} pages)",
                    input.len(),
                    out.len(),
                    p.normal
                ),
            ));
        }
        Ok(())
    }
}
