//! A multifd channel set read as one migration: the main channel's events
//! with each channel's packets put in where QEMU's destination waits for them
//! (see `docs/qemu-mapping.md` §8).
//!
//! QEMU's destination applies a channel's packets as they arrive, and at each
//! sync point of the main channel waits until every channel has delivered a
//! packet flagged SYNC. A sync point is a MULTIFD_FLUSH record when the stream
//! has them (QEMU 8.1+ by default), otherwise the end of every RAM section (7.2,
//! and later versions with `multifd-flush-after-each-section`). Between two
//! sync points each page is sent at most once, so the packets of a round are
//! put in just before the sync point that closes it, and a reader of the
//! merged events that applies pages in order gets QEMU's memory.

use std::collections::HashSet;
use std::io::Read;

use vmstream::{Error, ErrorKind, Limits, Result};

use crate::event::{Event, QemuRamBlock, SectionKind, Sink};
use crate::multifd::{
    Arrived, ChannelEvent, ChannelInit, ChannelReader, Compression, Inflater, Packet, PacketKind,
};
use crate::ram::{FLAG_COMPRESS_PAGE, FLAG_MULTIFD_FLUSH, FLAG_XBZRLE};

/// What one channel of a set carried.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelSummary {
    /// The channel id of its init header.
    pub id: u8,
    /// Packets.
    pub packets: u64,
    /// Packets flagged SYNC.
    pub syncs: u64,
    /// Normal (data) pages.
    pub normal_pages: u64,
    /// Zero pages listed in packets.
    pub zero_pages: u64,
    /// Device-state packets.
    pub device_state: u64,
    /// The compression of its page packets (`none`, `zlib`, `zstd`), once one carried pages.
    pub compression: Option<&'static str>,
    /// Bytes.
    pub bytes: u64,
}

/// How the main channel marks its sync points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Flush,
    SectionEnd,
}

struct Channel<C> {
    reader: ChannelReader<C>,
    inflater: Inflater,
    init: ChannelInit,
    done: bool,
    /// Live: this round's SYNC packet has been handed on.
    synced: bool,
    summary: ChannelSummary,
}

/// Whether a live channel's next item has arrived whole ([`ChannelReader::ready`]).
type Ready<C> = fn(&mut ChannelReader<C>) -> Result<bool>;

/// A [`Sink`] filter that merges the packets of a channel set's multifd
/// channels into the events of its main channel (which it receives from a
/// [`crate::QemuReader`]) and hands them on: each packet as an
/// [`Event::MultifdPacket`] followed by one [`Event::Page`] per page it lists
/// (normal pages decompressed).
///
/// Made with [`ChannelMerger::new`], the merger reads a channel only at a
/// sync point of the main channel, up to that channel's next SYNC packet.
/// That suits captures (files), not live connections: QEMU's main migration
/// thread waits for each channel's writes to complete (a free channel for the
/// next packet, then the SYNC packet written) before it sends the sync point
/// on the main channel, so a reader that leaves a channel unread until then
/// stalls the source once a round outgrows the socket buffers. Made with
/// [`ChannelMerger::live`], over channels whose bytes are taken off their
/// connections as they come ([`Arrived`]), it also hands on, before each
/// event of the main channel, every packet that has arrived whole and
/// belongs to the round that event is in (packets after a channel's SYNC wait
/// for the sync point); at the main channel's end it takes what has arrived
/// and does not wait for the channels to close, which QEMU does only after
/// the destination has loaded the stream when the return path is on.
/// Between two sync points each page is sent once, so handing a packet on
/// earlier in its round gives the same memory.
pub struct ChannelMerger<'s, C> {
    inner: &'s mut dyn Sink,
    channels: Vec<Channel<C>>,
    page_size: u64,
    blocks: Vec<QemuRamBlock>,
    ram_ids: HashSet<u32>,
    in_ram: bool,
    mode: Option<Mode>,
    announced: bool,
    pages: Vec<u8>,
    numbers: (u64, u64, u64),
    live: Option<Ready<C>>,
}

impl<C> std::fmt::Debug for ChannelMerger<'_, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelMerger")
            .field("channels", &self.channels.len())
            .field("page_size", &self.page_size)
            .finish()
    }
}

impl<'s, C: Read> ChannelMerger<'s, C> {
    /// Reads each channel's init header and sorts the channels by id. Channel
    /// ids must be unique, count from 0 without a gap, and the channels must
    /// name the same VM UUID.
    pub fn new(channels: Vec<C>, inner: &'s mut dyn Sink, limits: Limits) -> Result<Self> {
        let mut set = Vec::new();
        for (n, c) in channels.into_iter().enumerate() {
            let mut reader = ChannelReader::new(c, 4096, limits)?;
            let init = match reader.next_event()? {
                Some(ChannelEvent::Init(i)) => i,
                _ => {
                    return Err(Error::new(
                        ErrorKind::Malformed,
                        format!("multifd channel capture {}: empty (no init header)", n + 1),
                    )
                    .at_offset(0))
                }
            };
            let id = init.id();
            set.push(Channel {
                inflater: Inflater::new(id, 4096),
                reader,
                done: false,
                synced: false,
                summary: ChannelSummary {
                    id,
                    bytes: 64,
                    ..ChannelSummary::default()
                },
                init,
            });
        }
        set.sort_by_key(|c| c.init.id());
        for (i, c) in set.iter().enumerate() {
            if usize::from(c.init.id()) != i {
                let ids: Vec<String> = set.iter().map(|c| c.init.id().to_string()).collect();
                return Err(Error::new(
                    ErrorKind::Malformed,
                    format!(
                        "multifd channel ids {} given: QEMU numbers its channels 0, 1, ... so {}",
                        ids.join(", "),
                        if i > 0 && set[i - 1].init.id() == c.init.id() {
                            format!("two captures are channel {}", c.init.id())
                        } else {
                            format!("channel {i} is missing")
                        }
                    ),
                ));
            }
            if c.init.uuid() != set[0].init.uuid() {
                return Err(Error::new(
                    ErrorKind::Malformed,
                    format!(
                        "multifd channel {}: init uuid {:02x?} differs from channel 0's {:02x?}: not one migration",
                        c.init.id(),
                        c.init.uuid(),
                        set[0].init.uuid()
                    ),
                )
                .in_field("uuid")
                .at_offset(8));
            }
        }
        Ok(ChannelMerger {
            inner,
            channels: set,
            page_size: 4096,
            blocks: Vec::new(),
            ram_ids: HashSet::new(),
            in_ram: false,
            mode: None,
            announced: false,
            pages: Vec::new(),
            numbers: (u64::MAX, 0, 0),
            live: None,
        })
    }

    /// What each channel carried (complete after the main channel's EOF).
    pub fn summaries(&self) -> Vec<ChannelSummary> {
        self.channels.iter().map(|c| c.summary.clone()).collect()
    }

    fn announce(&mut self) -> Result<()> {
        if !self.announced {
            self.announced = true;
            for c in &self.channels {
                self.inner.event(&Event::MultifdInit {
                    channel: c.init.id(),
                    raw: &c.init.raw,
                })?;
            }
        }
        Ok(())
    }

    /// At a sync point (`all`: the main channel's end): each channel's
    /// packets up to its next SYNC packet (`all`: to its end; for a live
    /// merger, to what has arrived). A live merger's channel that has handed
    /// on this round's SYNC already gives nothing more.
    fn round(&mut self, all: bool) -> Result<()> {
        self.announce()?;
        let arrived_only = all && self.live.is_some();
        self.hand_on(!all, arrived_only)?;
        self.channels.iter_mut().for_each(|c| c.synced = false);
        Ok(())
    }

    /// Before an event of a live merger's main channel: the packets of this
    /// round that have arrived whole.
    fn arrived(&mut self) -> Result<()> {
        if self.live.is_none() || self.blocks.is_empty() {
            return Ok(()); // not live, or no packet can name a block yet
        }
        self.announce()?;
        self.hand_on(true, true)
    }

    /// Hands on each channel's next packets: up to its next SYNC packet
    /// (`until_sync`; none if it has handed that on already) or to its end,
    /// and only those that have arrived whole (`arrived_only`).
    fn hand_on(&mut self, until_sync: bool, arrived_only: bool) -> Result<()> {
        let ps = self.page_size;
        for c in &mut self.channels {
            while !(c.done || until_sync && c.synced) {
                if let (true, Some(ready)) = (arrived_only, self.live) {
                    if !ready(&mut c.reader)? {
                        break;
                    }
                }
                let Some(ev) = c.reader.next_event()? else {
                    c.done = true;
                    break;
                };
                let ChannelEvent::Packet(p) = ev else {
                    return Err(Error::new(
                        ErrorKind::Malformed,
                        format!("multifd channel {}: a second init header", c.init.id()),
                    )
                    .at_offset(c.reader.decoder().offset()));
                };
                let sync = p.sync();
                emit(
                    &p,
                    c.init.id(),
                    &mut c.inflater,
                    &mut c.summary,
                    &self.blocks,
                    ps,
                    &mut self.pages,
                    &mut *self.inner,
                )?;
                if p.kind == PacketKind::Ram {
                    let (lo, hi, n) = &mut self.numbers;
                    *lo = (*lo).min(p.packet_num);
                    *hi = (*hi).max(p.packet_num);
                    *n += 1;
                }
                c.synced |= sync && until_sync;
            }
        }
        Ok(())
    }

    /// At the main channel's EOF: every channel must be used up, and the
    /// packet numbers (one sequence over all channels) must have no gap.
    fn finish(&mut self) -> Result<()> {
        self.round(true)?;
        let (lo, hi, n) = self.numbers;
        if n > 0 && (lo != 0 || hi - lo + 1 != n) {
            let ids: Vec<String> = self
                .channels
                .iter()
                .map(|c| c.init.id().to_string())
                .collect();
            return Err(Error::new(
                ErrorKind::Malformed,
                format!(
                    "the channel set is incomplete: its packets are numbered {lo} to {hi} but channels {} hold {n} of them; give every multifd channel of the migration",
                    ids.join(", ")
                ),
            ));
        }
        Ok(())
    }
}

impl<'s, C: Read + Arrived> ChannelMerger<'s, C> {
    /// A merger of live channels, which hands on their packets as they
    /// arrive (see the type's documentation); reads each channel's init
    /// header as [`ChannelMerger::new`] does.
    pub fn live(channels: Vec<C>, inner: &'s mut dyn Sink, limits: Limits) -> Result<Self> {
        let mut m = ChannelMerger::new(channels, inner, limits)?;
        m.live = Some(ChannelReader::ready);
        Ok(m)
    }
}

#[allow(clippy::too_many_arguments)]
fn emit(
    p: &Packet<'_>,
    channel: u8,
    inflater: &mut Inflater,
    summary: &mut ChannelSummary,
    blocks: &[QemuRamBlock],
    ps: u64,
    pages: &mut Vec<u8>,
    sink: &mut dyn Sink,
) -> Result<()> {
    summary.packets += 1;
    summary.bytes += (p.header.len() + p.payload.len()) as u64;
    if p.sync() {
        summary.syncs += 1;
    }
    let bad = |field: &str, msg: String, at: u64| {
        Error::new(
            ErrorKind::Malformed,
            format!(
                "multifd channel {channel}: packet {}: {field}: {msg}",
                p.packet_num
            ),
        )
        .in_field(field)
        .at_offset(at)
    };
    if p.kind == PacketKind::DeviceState {
        summary.device_state += 1;
        return sink.event(&Event::MultifdPacket {
            channel,
            packet: *p,
        });
    }
    if p.pages() == 0 {
        return sink.event(&Event::MultifdPacket {
            channel,
            packet: *p,
        });
    }
    let name = p.block();
    let block = blocks
        .iter()
        .position(|b| b.name.as_bytes() == name)
        .ok_or_else(|| {
            bad(
                "ramblock",
                format!(
                    "{:?} is not a RAM block of the main channel's list",
                    String::from_utf8_lossy(name)
                ),
                p.offset + 64,
            )
        })?;
    let size = blocks[block].size;
    let block = u32::try_from(block)
        .map_err(|_| bad("ramblock", "too many blocks".into(), p.offset + 64))?;
    let mut indexes = Vec::with_capacity(p.pages() as usize);
    for i in 0..p.pages() {
        let off = p.page_offset(i);
        if !off.is_multiple_of(ps) || off >= size {
            return Err(bad(
                "offset",
                format!(
                    "offset[{i}] = {off:#x} is not a page of RAM block {:?} ({size:#x} bytes, {ps}-byte pages)",
                    blocks[block as usize].name
                ),
                p.offset + 320 + 8 * u64::from(i),
            ));
        }
        indexes.push(off / ps);
    }
    inflater.pages(p, pages)?;
    summary.compression = p.compression().map(Compression::name);
    summary.normal_pages += u64::from(p.normal);
    summary.zero_pages += u64::from(p.zero);
    sink.event(&Event::MultifdPacket {
        channel,
        packet: *p,
    })?;
    let psz = ps as usize;
    for (i, &index) in indexes.iter().enumerate() {
        let data = (i < p.normal as usize).then(|| &pages[i * psz..(i + 1) * psz]);
        sink.event(&Event::Page { block, index, data })?;
    }
    Ok(())
}

impl<C: Read> Sink for ChannelMerger<'_, C> {
    fn event(&mut self, ev: &Event<'_>) -> Result<()> {
        self.arrived()?;
        match ev {
            // the stream's page size (configuration, description or
            // architecture), known before the first section
            Event::Target { page_size, .. } if *page_size != self.page_size => {
                for c in &mut self.channels {
                    c.reader.set_page_size(*page_size)?;
                    c.inflater = Inflater::new(c.init.id(), *page_size);
                }
                self.page_size = *page_size;
            }
            Event::Section { kind, id, header } => {
                if let Some(h) = header {
                    if h.idstr == "ram" && *kind == SectionKind::Start {
                        self.ram_ids.insert(*id);
                    }
                }
                self.in_ram = self.ram_ids.contains(id);
            }
            Event::RamBlocks { blocks, .. } => self.blocks = blocks.to_vec(),
            Event::RamRecord { header, .. } if *header == FLAG_MULTIFD_FLUSH => {
                let mode = *self.mode.get_or_insert(Mode::Flush);
                if mode == Mode::Flush {
                    self.round(false)?;
                }
            }
            Event::SectionEnd { .. } if self.in_ram => {
                self.in_ram = false;
                let mode = *self.mode.get_or_insert(Mode::SectionEnd);
                if mode == Mode::SectionEnd {
                    self.round(false)?;
                }
            }
            Event::Eof => self.finish()?,
            _ => {}
        }
        self.inner.event(ev)
    }
}

/// Signs that a main channel's pages travel on multifd channels, gathered from
/// the events of a migration ([`MultifdSigns::observe`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MultifdSigns {
    /// MULTIFD_FLUSH records (QEMU 8.1+ with multifd).
    pub flush_records: u64,
    /// Page records with data on the main channel (PAGE, XBZRLE, compressed).
    pub data_records: u64,
    /// Zero pages on the main channel.
    pub zero_records: u64,
    /// Pages of the RAM block list.
    pub listed_pages: u64,
    /// Multifd channels given with the main channel.
    pub channels: u64,
    in_packet: u64,
    /// A mapped-ram stream: its pages sit in the file, whether multifd
    /// channels wrote them or not.
    mapped_ram: bool,
}

impl MultifdSigns {
    /// Takes note of one event (page size `page_size`).
    pub fn observe(&mut self, ev: &Event<'_>, page_size: u64) {
        match ev {
            Event::MultifdInit { .. } => self.channels += 1,
            Event::MappedBlock { .. } => self.mapped_ram = true,
            Event::MultifdPacket { packet, .. } => self.in_packet = u64::from(packet.pages()),
            Event::Page { data, .. } => {
                if self.in_packet > 0 {
                    self.in_packet -= 1;
                } else if data.is_some() {
                    self.data_records += 1;
                } else {
                    self.zero_records += 1;
                }
            }
            Event::RamBlocks { blocks, .. } => {
                self.listed_pages = blocks
                    .iter()
                    .fold(0u64, |n, b| n.saturating_add(b.size / page_size.max(1)))
            }
            Event::RamRecord { header, .. } => {
                let flags = header & (page_size.max(1) - 1) & !crate::ram::FLAG_CONTINUE;
                if *header == FLAG_MULTIFD_FLUSH {
                    self.flush_records += 1;
                } else if flags == FLAG_XBZRLE || flags == FLAG_COMPRESS_PAGE {
                    self.data_records += 1;
                }
            }
            _ => {}
        }
    }

    /// Takes note of one record of a vmstream stream converted from QEMU.
    pub fn observe_record(&mut self, record: &vmstream::Record<'_>) {
        use crate::mapping::kinds;
        match record {
            vmstream::Record::RamBlocks(blocks) => {
                for b in blocks {
                    let pages = b.size / u64::from(b.page_size.max(1));
                    self.listed_pages = self.listed_pages.saturating_add(pages);
                }
            }
            vmstream::Record::Pages(batch) => {
                for p in batch.pages() {
                    match p.data {
                        Some(_) => self.data_records += 1,
                        None => self.zero_records += 1,
                    }
                }
            }
            vmstream::Record::Other(raw) => match raw.kind {
                kinds::MULTIFD_INIT => self.channels += 1,
                kinds::MAPPED_RAM => self.mapped_ram = true,
                kinds::RAM_RECORD => {
                    let header = raw
                        .body
                        .get(..8)
                        .and_then(|b| b.try_into().ok())
                        .map_or(0, u64::from_be_bytes);
                    let flags = header & 0x3ff & !crate::ram::FLAG_CONTINUE;
                    if header == FLAG_MULTIFD_FLUSH {
                        self.flush_records += 1;
                    } else if flags == FLAG_XBZRLE || flags == FLAG_COMPRESS_PAGE {
                        self.data_records += 1;
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }

    /// Why this looks like the main channel of a multifd migration whose
    /// channels are not here, if it does.
    pub fn pages_elsewhere(&self) -> Option<String> {
        if self.channels > 0 || self.mapped_ram {
            return None;
        }
        if self.flush_records > 0 {
            return Some(format!(
                "{} MULTIFD_FLUSH records: this is the main channel of a multifd migration, and its RAM pages travel on the multifd channels",
                self.flush_records
            ));
        }
        if self.data_records == 0 && self.zero_records < self.listed_pages {
            return Some(format!(
                "no data page on this channel, and {} of the {} pages of its RAM blocks never sent: this is the main channel of a multifd migration (QEMU 8.0 and older mark it no other way), and its RAM pages travel on the multifd channels",
                self.listed_pages - self.zero_records,
                self.listed_pages
            ));
        }
        None
    }
}
