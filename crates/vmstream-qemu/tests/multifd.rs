//! Multifd channel sets: the channel parser on hand-made packets (plain,
//! zlib, zstd, zero pages, sync), hostile packets, and channel sets made by
//! real QEMU when `VMSTREAM_MULTIFD_FIXTURES` names a directory of them
//! (scripts/qemu_tool.py writes one; scripts/qemu_interop.py runs the CLI on it).

#![allow(clippy::unwrap_used)]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::rc::Rc;

use vmstream::{ErrorKind, Limits};
use vmstream_qemu::multifd::{ChannelDecoder, ChannelEvent, ChannelReader, Inflater, Packet};
use vmstream_qemu::{
    channel_set_to_vmstream, read_channel_set, vmstream_to_qemu_channels, ConvertOptions, Event,
    MultifdSigns, OpenChannel, QemuReader, Sink,
};

/// Collects the final memory image from events.
#[derive(Default)]
struct Image {
    blocks: Vec<(String, Vec<u8>)>,
    signs: MultifdSigns,
    page_size: usize,
}

impl Sink for Image {
    fn event(&mut self, ev: &Event<'_>) -> vmstream::Result<()> {
        let ps = if self.page_size == 0 {
            PS
        } else {
            self.page_size
        };
        self.signs.observe(ev, ps as u64);
        match ev {
            Event::Target { page_size, .. } => self.page_size = *page_size as usize,
            Event::RamBlocks { blocks, .. } => {
                self.blocks = blocks
                    .iter()
                    .map(|b| (b.name.clone(), vec![0; b.size as usize]))
                    .collect();
            }
            Event::Page { block, index, data } => {
                let mem = &mut self.blocks[*block as usize].1;
                let at = *index as usize * ps;
                match data {
                    Some(d) => mem[at..at + ps].copy_from_slice(d),
                    None => mem[at..at + ps].fill(0),
                }
            }
            _ => {}
        }
        Ok(())
    }
}

type Outputs = Rc<RefCell<BTreeMap<u8, Vec<u8>>>>;

struct Shared(Outputs, u8);

impl Write for Shared {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .borrow_mut()
            .entry(self.1)
            .or_default()
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn opener(outs: &Outputs) -> OpenChannel {
    let outs = outs.clone();
    Box::new(move |k| Ok(Box::new(Shared(outs.clone(), k)) as Box<dyn Write>))
}

/// Round trip of one channel set; returns the memory image of the set.
fn round_trip(main: &[u8], channels: &[Vec<u8>]) -> Image {
    let opts = ConvertOptions::default();
    let chans: Vec<&[u8]> = channels.iter().map(|c| &c[..]).collect();
    let (vms, _, summaries) =
        channel_set_to_vmstream(main, chans.clone(), Vec::new(), &opts).unwrap();
    assert_eq!(summaries.len(), channels.len());
    let outs: Outputs = Rc::default();
    let (back, ids) =
        vmstream_to_qemu_channels(&vms[..], Vec::new(), opener(&outs), &opts).unwrap();
    assert_eq!(back, main, "main channel differs after the round trip");
    assert_eq!(ids.len(), channels.len());
    let outs = outs.borrow();
    for c in channels {
        let id = c[24];
        assert!(outs[&id] == *c, "channel {id} differs after the round trip");
    }
    let mut image = Image::default();
    read_channel_set(main, chans, &mut image, &opts).unwrap();
    image
}

/// Run with `VMSTREAM_MULTIFD_FIXTURES=DIR cargo test -p vmstream-qemu --test
/// multifd -- --ignored`, DIR made by `scripts/qemu_tool.py gen DIR`
/// (scripts/qemu_interop.py checks the same sets through the CLI).
#[test]
#[ignore = "needs VMSTREAM_MULTIFD_FIXTURES, channel sets made by real QEMU"]
fn real_qemu_channel_sets() {
    let dir = std::env::var("VMSTREAM_MULTIFD_FIXTURES")
        .expect("VMSTREAM_MULTIFD_FIXTURES names a directory of fixtures with a manifest.json");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(Path::new(&dir).join("manifest.json")).unwrap())
            .unwrap();
    let mut seen = 0;
    for e in manifest.as_array().unwrap() {
        let Some(m) = e.get("multifd") else { continue };
        let name = e["file"].as_str().unwrap();
        let main = std::fs::read(Path::new(&dir).join(name)).unwrap();
        let channels: Vec<Vec<u8>> = m["files"]
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .map(|f| std::fs::read(Path::new(&dir).join(f.as_str().unwrap())).unwrap())
            .collect();
        let image = round_trip(&main, &channels);
        let pmem =
            std::fs::read(Path::new(&dir).join(m["pmem"]["file"].as_str().unwrap())).unwrap();
        let ram = &image.blocks.iter().find(|b| b.0 == "pc.ram").unwrap().1;
        assert!(
            ram[0x100000..0x100000 + pmem.len()] == pmem[..],
            "{name}: memory differs from the source's"
        );
        // the main channel alone says its pages are elsewhere
        let mut alone = Image::default();
        QemuReader::new(&main[..], Limits::default())
            .run(&mut alone)
            .unwrap();
        assert!(
            alone.signs.pages_elsewhere().is_some(),
            "{name}: {:?}",
            alone.signs
        );
        assert!(image.signs.pages_elsewhere().is_none(), "{name}");
        // one channel short: refused
        if channels.len() > 1 {
            let chans: Vec<&[u8]> = channels[1..].iter().map(|c| &c[..]).collect();
            let err = read_channel_set(
                &main[..],
                chans,
                &mut Image::default(),
                &ConvertOptions::default(),
            )
            .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Malformed, "{name}: {err}");
        }
        eprintln!(
            "{name}: {} channels, round trip and memory ok",
            channels.len()
        );
        seen += 1;
    }
    assert!(seen > 0, "no multifd fixture in {dir}");
}

const PS: usize = 4096;
const HDR: usize = 320 + 8 * 128;

fn init(id: u8) -> Vec<u8> {
    let mut b = vec![0u8; 64];
    b[..4].copy_from_slice(&0x1122_3344u32.to_be_bytes());
    b[4..8].copy_from_slice(&1u32.to_be_bytes());
    b[24] = id;
    b
}

/// A RAM packet: flags, packet number, normal and zero page offsets, payload.
fn packet(
    flags: u32,
    num: u64,
    normal: &[u64],
    zero: &[u64],
    next: u32,
    payload: &[u8],
) -> Vec<u8> {
    packet_of(PS, flags, num, normal, zero, next, payload)
}

/// [`packet`] for target page size `ps`.
fn packet_of(
    ps: usize,
    flags: u32,
    num: u64,
    normal: &[u64],
    zero: &[u64],
    next: u32,
    payload: &[u8],
) -> Vec<u8> {
    let slots = 524_288 / ps;
    let mut h = vec![0u8; 320 + 8 * slots];
    h[..4].copy_from_slice(&0x1122_3344u32.to_be_bytes());
    h[4..8].copy_from_slice(&1u32.to_be_bytes());
    h[8..12].copy_from_slice(&flags.to_be_bytes());
    h[12..16].copy_from_slice(&(slots as u32).to_be_bytes());
    h[16..20].copy_from_slice(&(normal.len() as u32).to_be_bytes());
    h[20..24].copy_from_slice(&next.to_be_bytes());
    h[24..32].copy_from_slice(&num.to_be_bytes());
    h[32..36].copy_from_slice(&(zero.len() as u32).to_be_bytes());
    h[64..70].copy_from_slice(b"pc.ram");
    for (i, o) in normal.iter().chain(zero).enumerate() {
        h[320 + 8 * i..328 + 8 * i].copy_from_slice(&o.to_be_bytes());
    }
    h.extend_from_slice(payload);
    h
}

fn page(fill: u8) -> Vec<u8> {
    (0..PS).map(|i| fill ^ (i as u8)).collect()
}

/// A channel: init, a plain packet of two pages and a zero page, a sync packet.
fn plain_channel() -> Vec<u8> {
    let mut c = init(0);
    let data = [page(1), page(2)].concat();
    c.extend(packet(0, 0, &[0x1000, 0x3000], &[0x2000], 0, &data));
    c.extend(packet(1, 1, &[], &[], 0, &[]));
    c
}

/// A reader that hands out at most `n` bytes per call.
struct Trickle<'a>(&'a [u8], usize);

impl std::io::Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.0.len().min(self.1).min(buf.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

/// Packet number, normal pages, zero pages, sync, payload (an init: id as normal).
type Item = (u64, u32, u32, bool, Vec<u8>);

fn items(bytes: &[u8], step: usize) -> vmstream::Result<Vec<Item>> {
    let mut r = ChannelReader::new(Trickle(bytes, step), 4096, Limits::default())?;
    let mut out = Vec::new();
    while let Some(ev) = r.next_event()? {
        match ev {
            ChannelEvent::Init(i) => out.push((u64::MAX, u32::from(i.id()), 0, false, Vec::new())),
            ChannelEvent::Packet(p) => {
                out.push((p.packet_num, p.normal, p.zero, p.sync(), p.payload.to_vec()))
            }
            _ => unreachable!(),
        }
    }
    Ok(out)
}

#[test]
fn a_channel_reads_the_same_however_it_arrives() {
    let c = plain_channel();
    let whole = items(&c, usize::MAX).unwrap();
    assert_eq!(whole.len(), 3);
    assert_eq!((whole[1].1, whole[1].2, whole[1].4.len()), (2, 1, 2 * PS));
    assert!(whole[2].3, "the last packet is a sync packet");
    for step in [1, 7, 63, 64, 65, 1000, HDR, HDR + 1] {
        assert_eq!(
            items(&c, step).unwrap(),
            whole,
            "read {step} bytes at a time"
        );
    }
    // the push decoder: nothing until an item is whole, then exactly it
    let mut d = ChannelDecoder::new(4096, Limits::default()).unwrap();
    let mut at = 0;
    for want in [64, HDR + 2 * PS, HDR] {
        assert_eq!(d.needed(&c[at..at + want]).unwrap(), want);
        assert!(d.decode(&c[at..at + want - 1]).unwrap().1.is_none());
        let (used, ev) = d.decode(&c[at..]).unwrap();
        assert!(ev.is_some());
        assert_eq!(used, want);
        at += used;
    }
    assert_eq!(at, c.len());
}

fn err_of(bytes: &[u8]) -> vmstream::Error {
    items(bytes, usize::MAX).unwrap_err()
}

#[test]
fn hostile_packets_are_refused_before_allocation_with_channel_offset_and_field() {
    let good = plain_channel();
    // bad packet magic at the first packet
    let mut b = good.clone();
    b[64] ^= 0xff;
    let e = err_of(&b);
    assert_eq!(e.kind(), ErrorKind::Malformed);
    assert_eq!(e.location().offset, Some(64));
    assert!(
        e.to_string().contains("multifd channel 0") && e.to_string().contains("magic"),
        "{e}"
    );
    // more pages than a packet has room for
    let mut b = good.clone();
    b[64 + 12..64 + 16].copy_from_slice(&129u32.to_be_bytes());
    let e = err_of(&b);
    assert_eq!(
        (e.kind(), e.location().offset),
        (ErrorKind::Malformed, Some(64 + 12))
    );
    assert!(e.to_string().contains("pages_alloc"), "{e}");
    // normal + zero beyond pages_alloc
    let mut b = good.clone();
    b[64 + 32..64 + 36].copy_from_slice(&127u32.to_be_bytes());
    let e = err_of(&b);
    assert!(e.to_string().contains("zero_pages"), "{e}");
    // a compressed payload size beyond QEMU's buffer: refused before reading it
    let mut c = init(3);
    c.extend(packet(0x02, 0, &[0], &[], u32::MAX, &[]));
    let e = err_of(&c);
    assert_eq!(e.kind(), ErrorKind::LimitExceeded);
    assert!(
        e.to_string().contains("multifd channel 3") && e.to_string().contains("next_packet_size"),
        "{e}"
    );
    // a device-state packet (10.0+) claiming 4 GiB of device data
    let mut c = init(1);
    let mut h = vec![0u8; 276];
    h[..12].copy_from_slice(b"\x11\x22\x33\x44\0\0\0\x01\0\0\0\x40");
    h[272..276].copy_from_slice(&u32::MAX.to_be_bytes());
    c.extend(h);
    let e = err_of(&c);
    assert_eq!(e.kind(), ErrorKind::LimitExceeded, "{e}");
    assert_eq!(e.location().offset, Some(64 + 272));
    // an unknown compression code
    let mut c = init(0);
    c.extend(packet(0x08, 0, &[0], &[], 10, &[0; 10]));
    assert_eq!(err_of(&c).kind(), ErrorKind::Unsupported);
    // a channel that ends inside a packet says how much is missing
    let e = err_of(&good[..good.len() - 5]);
    assert_eq!(e.kind(), ErrorKind::Malformed);
    assert!(e.to_string().contains("ends inside"), "{e}");
    // not a multifd channel at all
    let e =
        err_of(b"QEVM\0\0\0\x03 and then some more bytes to fill an init header of 64 bytes....");
    assert!(e.to_string().contains("init magic"), "{e}");
}

fn inflate_all(channel: &[u8]) -> Vec<Vec<u8>> {
    let mut r = ChannelReader::new(channel, 4096, Limits::default()).unwrap();
    let mut inf = Inflater::new(0, 4096);
    let mut out = Vec::new();
    while let Some(ev) = r.next_event().unwrap() {
        if let ChannelEvent::Packet(p) = ev {
            let mut pages = Vec::new();
            inf.pages(&p, &mut pages).unwrap();
            out.push(pages);
        }
    }
    out
}

#[test]
fn compressed_packets_inflate_through_one_stream_per_channel() {
    let pages = [page(5), page(6), vec![0u8; PS], page(7)];
    // zlib: one deflate stream, sync-flushed at each packet's end, as QEMU does
    let mut z = flate2::Compress::new(flate2::Compression::default(), true);
    let mut zc = init(0);
    for (n, two) in pages.chunks(2).enumerate() {
        let mut out = Vec::with_capacity(3 * PS);
        z.compress_vec(&two.concat(), &mut out, flate2::FlushCompress::Sync)
            .unwrap();
        zc.extend(packet(
            0x02,
            n as u64,
            &[0, 0x1000],
            &[],
            out.len() as u32,
            &out,
        ));
    }
    // zstd: one stream, flushed at each packet's end
    let mut e = zstd::stream::raw::Encoder::new(1).unwrap();
    let mut sc = init(0);
    for (n, two) in pages.chunks(2).enumerate() {
        use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
        let input = two.concat();
        let mut buf = vec![0u8; 3 * PS];
        let mut inb = InBuffer::around(&input);
        let mut outb = OutBuffer::around(&mut buf);
        e.run(&mut inb, &mut outb).unwrap();
        while e.flush(&mut outb).unwrap() > 0 {}
        let len = outb.pos();
        sc.extend(packet(
            0x04,
            n as u64,
            &[0, 0x1000],
            &[],
            len as u32,
            &buf[..len],
        ));
    }
    for ch in [&zc, &sc] {
        let got = inflate_all(ch);
        assert_eq!(got, vec![pages[..2].concat(), pages[2..].concat()]);
    }
    // the second packet alone does not inflate: the stream is per channel
    let mut r = ChannelReader::new(&zc[..], 4096, Limits::default()).unwrap();
    let mut packets = Vec::new();
    while let Some(ev) = r.next_event().unwrap() {
        if let ChannelEvent::Packet(p) = ev {
            packets.push((p.header.to_vec(), p.payload.to_vec()));
        }
    }
    let p = Packet::from_parts(&packets[1].0, &packets[1].1, 4096, 0, 0).unwrap();
    let mut out = Vec::new();
    assert_eq!(
        Inflater::new(0, 4096)
            .pages(&p, &mut out)
            .unwrap_err()
            .kind(),
        ErrorKind::Malformed
    );
    // a payload that inflates short is refused, naming the channel and packet
    let mut short = init(0);
    let mut z = flate2::Compress::new(flate2::Compression::default(), true);
    let mut out = Vec::with_capacity(3 * PS);
    z.compress_vec(&pages[0], &mut out, flate2::FlushCompress::Sync)
        .unwrap();
    short.extend(packet(0x02, 0, &[0, 0x1000], &[], out.len() as u32, &out));
    let mut r = ChannelReader::new(&short[..], 4096, Limits::default()).unwrap();
    r.next_event().unwrap();
    let Some(ChannelEvent::Packet(p)) = r.next_event().unwrap() else {
        panic!()
    };
    let e = Inflater::new(0, 4096)
        .pages(&p, &mut Vec::new())
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("multifd channel 0: packet 0: payload"),
        "{e}"
    );
}

/// A main channel with one RAM block `pc.ram` of 16 pages: START and END
/// sections, each with a MULTIFD_FLUSH record (`flush`) or without (the
/// section ends are then the sync points).
fn main_channel(flush: bool) -> Vec<u8> {
    main_channel_of(flush, 4096)
}

/// [`main_channel`] with pages of `ps` bytes.
fn main_channel_of(flush: bool, ps: u64) -> Vec<u8> {
    let mut m = b"QEVM\0\0\0\x03".to_vec();
    m.push(0x01);
    m.extend(1u32.to_be_bytes());
    m.push(3);
    m.extend(b"ram");
    m.extend(0u32.to_be_bytes());
    m.extend(4u32.to_be_bytes());
    m.extend(((16 * ps) | 0x04).to_be_bytes());
    m.push(6);
    m.extend(b"pc.ram");
    m.extend((16 * ps).to_be_bytes());
    if flush {
        m.extend(0x200u64.to_be_bytes());
    }
    m.extend(0x10u64.to_be_bytes());
    m.push(0x03);
    m.extend(1u32.to_be_bytes());
    if flush {
        m.extend(0x200u64.to_be_bytes());
    }
    m.extend(0x10u64.to_be_bytes());
    m.push(0x00);
    m
}

/// Two channels, two rounds: round 1, channel 1 sends pages 1 and 2 = A;
/// round 2, channel 0 sends page 1 = B and a zero page 2. In stream order
/// page 1 must end as B and page 2 as zeros.
fn two_rounds() -> (Vec<u8>, Vec<u8>) {
    let (a, b) = (page(0xa), page(0xb));
    let mut c0 = init(0);
    c0.extend(packet(1, 0, &[], &[], 0, &[]));
    c0.extend(packet(0, 2, &[0x1000], &[0x2000], 0, &b));
    c0.extend(packet(1, 3, &[], &[], 0, &[]));
    let mut c1 = init(1);
    c1.extend(packet(
        1,
        1,
        &[0x1000, 0x2000],
        &[],
        0,
        &[a.clone(), a].concat(),
    ));
    c1.extend(packet(1, 4, &[], &[], 0, &[]));
    (c0, c1)
}

#[test]
fn a_channel_set_merges_round_by_round() {
    let (c0, c1) = two_rounds();
    let b = page(0xb);
    for flush in [true, false] {
        let main = main_channel(flush);
        // any order of the captures
        let image = round_trip(&main, &[c1.clone(), c0.clone()]);
        let ram = &image.blocks[0].1;
        assert!(
            ram[0x1000..0x2000] == b[..],
            "flush records {flush}: page 1 is not the later copy"
        );
        assert!(
            ram[0x2000..0x3000].iter().all(|&x| x == 0),
            "page 2 was zeroed later"
        );
        assert_eq!(image.signs.pages_elsewhere(), None);
        // alone, the main channel says where its pages are
        let mut alone = Image::default();
        QemuReader::new(&main[..], Limits::default())
            .run(&mut alone)
            .unwrap();
        assert!(
            alone.signs.pages_elsewhere().unwrap().contains("multifd"),
            "{:?}",
            alone.signs
        );
    }
    let main = main_channel(true);
    let opts = ConvertOptions::default();
    // a missing channel (gap in the packet numbers), a twice-given one, a block
    // the main channel does not list, a page beyond the block
    for (chans, what) in [
        (vec![c0.clone()], "incomplete"),
        (vec![c0.clone(), c0.clone()], "two captures are channel 0"),
        (vec![c1.clone()], "channel 0 is missing"),
    ] {
        let refs: Vec<&[u8]> = chans.iter().map(|c| &c[..]).collect();
        let e = read_channel_set(&main[..], refs, &mut Image::default(), &opts).unwrap_err();
        assert!(e.to_string().contains(what), "{what}: {e}");
    }
    let mut bad = c0.clone();
    let at = 64 + HDR + 64;
    bad[at..at + 6].copy_from_slice(b"pc.rom");
    let e = read_channel_set(
        &main[..],
        vec![&bad[..], &c1[..]],
        &mut Image::default(),
        &opts,
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("ramblock") && e.to_string().contains("multifd channel 0"),
        "{e}"
    );
    let mut bad = c0.clone();
    let at = 64 + HDR + 320;
    bad[at..at + 8].copy_from_slice(&0x10000u64.to_be_bytes());
    let e = read_channel_set(
        &main[..],
        vec![&bad[..], &c1[..]],
        &mut Image::default(),
        &opts,
    )
    .unwrap_err();
    assert_eq!(e.location().offset, Some((64 + HDR + 320) as u64), "{e}");
}

/// A live channel: `step` more bytes arrive whenever the merger asks what
/// has arrived or reads past it (waiting), and the connection never closes
/// (a read at the end would wait forever, so it panics).
struct Live {
    bytes: Vec<u8>,
    pos: usize,
    arrived: usize,
    step: usize,
}

impl std::io::Read for Live {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        assert!(
            self.pos < self.bytes.len(),
            "read past the channel's last byte: would wait for a close QEMU sends only later"
        );
        if self.pos == self.arrived {
            self.arrived = (self.arrived + self.step).min(self.bytes.len()); // waited
        }
        let n = (self.arrived - self.pos).min(buf.len());
        buf[..n].copy_from_slice(&self.bytes[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl vmstream_qemu::multifd::Arrived for Live {
    fn arrived(&mut self) -> usize {
        self.arrived = (self.arrived + self.step).min(self.bytes.len());
        self.arrived - self.pos
    }
}

/// Records the order of events: `P<channel>` for a packet, `F` for a
/// MULTIFD_FLUSH record, `E` for a section end.
#[derive(Default)]
struct Order {
    image: Image,
    seen: Vec<String>,
}

impl Sink for Order {
    fn event(&mut self, ev: &Event<'_>) -> vmstream::Result<()> {
        match ev {
            Event::MultifdPacket { channel, packet } => {
                self.seen.push(format!("P{channel}.{}", packet.packet_num))
            }
            Event::RamRecord { header: 0x200, .. } => self.seen.push("F".into()),
            Event::SectionEnd { .. } => self.seen.push("E".into()),
            _ => {}
        }
        self.image.event(ev)
    }
}

#[test]
fn a_live_channel_set_hands_packets_on_as_they_arrive_and_never_waits_for_a_close() {
    let (c0, c1) = two_rounds();
    for flush in [true, false] {
        let main = main_channel(flush);
        let mut file = Image::default();
        let opts = ConvertOptions::default();
        read_channel_set(&main[..], vec![&c0[..], &c1[..]], &mut file, &opts).unwrap();
        for step in [1, 100, 5000, 1 << 20] {
            let live = |c: &Vec<u8>| Live {
                bytes: c.clone(),
                pos: 0,
                arrived: 0,
                step,
            };
            let mut order = Order::default();
            vmstream_qemu::read_live_channel_set(
                &main[..],
                vec![live(&c1), live(&c0)],
                &mut order,
                &opts,
            )
            .unwrap();
            assert!(
                order.image.blocks == file.blocks,
                "flush {flush}, step {step}: memory differs from the file merger's"
            );
            let at = |what: &str| order.seen.iter().position(|s| s == what).unwrap();
            let sync = if flush { at("F") } else { at("E") };
            // round 2's packet waits for round 1's sync point, whenever it arrived
            assert!(at("P0.2") > sync, "step {step}: {:?}", order.seen);
            if step == 1 << 20 {
                // everything there at once: round 1's packets before the
                // section's first event after the block list
                assert!(at("P1.1") < sync, "{:?}", order.seen);
            }
        }
    }
}

#[test]
fn a_channel_set_takes_the_streams_page_size() {
    // Alpha's 8 KiB target pages: packet headers of 320 + 8 x 64 bytes, and
    // pages of 8 KiB in them, whether the merger reads captures or live channels.
    let ps = 8192;
    let data: Vec<u8> = (0..ps).map(|i| (i % 251) as u8).collect();
    let mut c0 = init(0);
    c0.extend(packet_of(ps, 0, 0, &[ps as u64], &[], 0, &data));
    c0.extend(packet_of(ps, 1, 1, &[], &[], 0, &[]));
    c0.extend(packet_of(ps, 1, 2, &[], &[], 0, &[]));
    let main = main_channel_of(true, ps as u64);
    let opts = ConvertOptions {
        arch: Some(vmstream::Arch::Alpha),
        ..ConvertOptions::default()
    };
    let (vms, summary, _) =
        channel_set_to_vmstream(&main[..], vec![&c0[..]], Vec::new(), &opts).unwrap();
    assert_eq!(summary.page_size, ps as u64);
    let outs: Outputs = Rc::default();
    let (back, _) = vmstream_to_qemu_channels(&vms[..], Vec::new(), opener(&outs), &opts).unwrap();
    assert!(
        back == main && outs.borrow()[&0] == c0,
        "the set differs after the round trip"
    );
    let mut order = Order::default();
    let live = Live {
        bytes: c0.clone(),
        pos: 0,
        arrived: 0,
        step: 1000,
    };
    vmstream_qemu::read_live_channel_set(&main[..], vec![live], &mut order, &opts).unwrap();
    assert_eq!(order.seen.iter().filter(|s| s.starts_with('P')).count(), 3);
    assert!(order.image.blocks[0].1[ps..2 * ps] == data[..]);
}
