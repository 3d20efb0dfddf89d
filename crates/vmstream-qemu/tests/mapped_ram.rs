//! mapped-ram streams (QEMU 9.0+ `file:` migrations with the `mapped-ram`
//! capability), built here in QEMU's layout: read from files and pipes,
//! converted to vmstream and back byte for byte, written sparse, and hostile
//! headers refused with the field and offset named. Real QEMU 10.0 files are
//! checked by `scripts/qemu_interop.py`.

#![allow(clippy::unwrap_used)] // builders and drivers of known-good inputs

use std::io::{Cursor, Read, Seek, SeekFrom, Write};

use vmstream::{ErrorKind, Limits};
use vmstream_qemu::mapped_ram::{bitmap_len, MappedRamHeader, PAGES_ALIGNMENT};
use vmstream_qemu::{
    qemu_to_qemu, qemu_to_vmstream, read_qemu, read_qemu_seekable, vmstream_to_qemu,
    vmstream_to_qemu_seekable, ConvertOptions, Event, MultifdSigns, Sink, VmstreamSink,
};

const PS: u64 = 4096;

/// One block: name, size, present pages.
struct Block<'a> {
    name: &'a str,
    size: u64,
    present: &'a [u64],
}

/// The bytes of page `index` of block `b`.
fn page(b: usize, index: u64) -> Vec<u8> {
    let mut p = vec![0u8; PS as usize];
    for (k, x) in p.iter_mut().enumerate() {
        *x = (b as u64 * 131 + index * 7 + k as u64 % 251) as u8;
    }
    p
}

/// Knobs for hostile variants: applied to the first block's header.
#[derive(Default, Clone, Copy)]
struct Tamper {
    version: Option<u32>,
    page_size: Option<u64>,
    bitmap_offset: Option<u64>,
    pages_offset: Option<u64>,
    /// a PAGE record in the END section
    page_record: bool,
    /// capability x-ignore-shared too: every entry carries an address
    ignore_shared: bool,
}

fn u32be(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_be_bytes());
}

fn u64be(v: &mut Vec<u8>, x: u64) {
    v.extend_from_slice(&x.to_be_bytes());
}

/// A mapped-ram stream as QEMU 10.0 writes it for a paused guest: header,
/// configuration with the capability, RAM section-start with the blocks at
/// their slots, a section-part and section-end with only EOS, EOF.
fn stream(blocks: &[Block<'_>], t: Tamper) -> Vec<u8> {
    let mut v = b"QEVM\0\0\0\x03".to_vec();
    v.push(0x07);
    u32be(&mut v, 11);
    v.extend_from_slice(b"pc-q35-10.0");
    v.push(0x05);
    v.push(26);
    v.extend_from_slice(b"configuration/capabilities");
    u32be(&mut v, 1);
    u32be(&mut v, 1 + u32::from(t.ignore_shared));
    if t.ignore_shared {
        v.push(15);
        v.extend_from_slice(b"x-ignore-shared");
    }
    v.push(10);
    v.extend_from_slice(b"mapped-ram");
    // RAM section-start, id 1
    v.push(0x01);
    u32be(&mut v, 1);
    v.push(3);
    v.extend_from_slice(b"ram");
    u32be(&mut v, 0);
    u32be(&mut v, 4);
    let total: u64 = blocks.iter().map(|b| b.size).sum();
    u64be(&mut v, total | 0x04);
    for (bi, b) in blocks.iter().enumerate() {
        v.push(b.name.len() as u8);
        v.extend_from_slice(b.name.as_bytes());
        u64be(&mut v, b.size);
        if t.ignore_shared {
            u64be(&mut v, 0x1_0000_0000 * bi as u64);
        }
        let at = v.len() as u64;
        let pages = b.size / PS;
        let bm_len = bitmap_len(pages);
        let mut h = MappedRamHeader {
            version: 1,
            page_size: PS,
            bitmap_offset: at + 28,
            pages_offset: (at + 28 + bm_len).next_multiple_of(PAGES_ALIGNMENT),
        };
        if bi == 0 {
            h.version = t.version.unwrap_or(h.version);
            h.page_size = t.page_size.unwrap_or(h.page_size);
            h.bitmap_offset = t.bitmap_offset.unwrap_or(h.bitmap_offset);
            h.pages_offset = t.pages_offset.unwrap_or(h.pages_offset);
        }
        v.extend_from_slice(&h.to_bytes());
        let mut bm = vec![0u8; bm_len as usize];
        for &i in b.present {
            bm[(i / 8) as usize] |= 1 << (i % 8);
        }
        v.extend_from_slice(&bm);
        if h.pages_offset > (1 << 32) {
            return v; // a hostile offset: the stream ends here
        }
        v.resize(h.pages_offset.max(v.len() as u64) as usize, 0);
        let base = v.len();
        v.resize(base + b.size as usize, 0);
        for &i in b.present {
            let s = base + (i * PS) as usize;
            v[s..s + PS as usize].copy_from_slice(&page(bi, i));
        }
    }
    let section_end = |v: &mut Vec<u8>| {
        u64be(v, 0x10);
        v.push(0x7e);
        u32be(v, 1);
    };
    section_end(&mut v);
    v.push(0x02);
    u32be(&mut v, 1);
    section_end(&mut v);
    v.push(0x03);
    u32be(&mut v, 1);
    if t.page_record {
        u64be(&mut v, 0x08);
        v.push(blocks[0].name.len() as u8);
        v.extend_from_slice(blocks[0].name.as_bytes());
        v.extend_from_slice(&page(0, 0));
    }
    section_end(&mut v);
    v.push(0x00);
    v
}

fn guest() -> Vec<Block<'static>> {
    vec![
        Block {
            name: "pc.ram",
            size: 2 << 20,
            present: &[0, 1, 2, 9, 63, 64, 100, 511],
        },
        Block {
            name: "/rom@etc/acpi/tables",
            size: 128 << 10,
            present: &[],
        },
        Block {
            name: "pc.bios",
            size: 256 << 10,
            present: &[3, 63],
        },
    ]
}

/// A reader that hands out at most `n` bytes per call, like a pipe.
struct Trickle<'a>(&'a [u8], usize);

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.0.len().min(self.1).min(buf.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

/// Collects the pages and mapped blocks events carry.
#[derive(Default)]
struct Pages {
    pages: Vec<(u32, u64, Vec<u8>)>,
    blocks: Vec<(u32, String, u64)>,
    lists: usize,
}

impl Sink for Pages {
    fn event(&mut self, ev: &Event<'_>) -> vmstream::Result<()> {
        match ev {
            Event::RamBlocks { blocks, .. } => {
                assert!(blocks.is_empty());
                self.lists += 1;
            }
            Event::MappedBlock {
                index,
                block,
                header,
                ..
            } => {
                assert_eq!(header.version, 1);
                self.blocks.push((*index, block.name.clone(), block.size));
            }
            Event::Page { block, index, data } => {
                self.pages.push((*block, *index, data.unwrap().to_vec()))
            }
            _ => {}
        }
        Ok(())
    }
}

fn expected_pages(blocks: &[Block<'_>]) -> Vec<(u32, u64, Vec<u8>)> {
    let mut v = Vec::new();
    for (bi, b) in blocks.iter().enumerate() {
        for &i in b.present {
            v.push((bi as u32, i, page(bi, i)));
        }
    }
    v
}

#[test]
fn pages_come_from_their_slots_in_files_and_pipes() {
    let blocks = guest();
    let src = stream(&blocks, Tamper::default());
    let o = ConvertOptions::default();
    for chunk in [1 << 20, 4093, 1] {
        let mut p = Pages::default();
        let s = read_qemu(Trickle(&src, chunk), &mut p, &o).unwrap();
        assert_eq!(s.bytes, src.len() as u64);
        assert_eq!(p.pages, expected_pages(&blocks), "chunk {chunk}");
        assert_eq!(p.lists, 1);
        assert_eq!(
            p.blocks,
            [
                (0, "pc.ram".into(), 2 << 20),
                (1, "/rom@etc/acpi/tables".into(), 128 << 10),
                (2, "pc.bios".into(), 256 << 10)
            ]
        );
    }
    let mut p = Pages::default();
    read_qemu_seekable(Cursor::new(&src), &mut p, &o).unwrap();
    assert_eq!(p.pages, expected_pages(&blocks));
}

#[test]
fn round_trips_byte_for_byte_through_vmstream() {
    let src = stream(&guest(), Tamper::default());
    for compact in [false, true] {
        let o = ConvertOptions {
            compact,
            ..ConvertOptions::default()
        };
        let (vms, _) = qemu_to_vmstream(Trickle(&src, 65537), Vec::new(), &o).unwrap();
        // far smaller than the file: holes are not carried
        assert!(vms.len() < 64 << 10, "{}", vms.len());
        let back = vmstream_to_qemu(&vms[..], Vec::new(), &o).unwrap();
        assert!(
            back == src,
            "vmstream -> qemu (zeros for holes), compact {compact}"
        );
        let back = vmstream_to_qemu_seekable(&vms[..], Cursor::new(Vec::new()), &o).unwrap();
        assert!(back.into_inner() == src, "vmstream -> qemu (seeking)");
        let (again, _) = qemu_to_qemu(&src[..], Vec::new(), &o).unwrap();
        assert!(again == src, "qemu -> qemu, compact {compact}");
    }
    // a standard vmstream reader sees the blocks and the present pages
    let (vms, _) = qemu_to_vmstream(&src[..], Vec::new(), &ConvertOptions::default()).unwrap();
    let mut r = vmstream::SliceReader::new(&vms, Limits::default()).unwrap();
    let mut got = Vec::new();
    while let Some(item) = r.next().unwrap() {
        if let vmstream::Record::Pages(b) = &item.record {
            for p in b.pages() {
                got.push((b.block, p.index, p.data.unwrap().to_vec()));
            }
        }
    }
    assert_eq!(got, expected_pages(&guest()));
    assert_eq!(r.state().blocks().count(), 3);
}

#[test]
fn entries_with_addresses_round_trip() {
    let t = Tamper {
        ignore_shared: true,
        ..Default::default()
    };
    let src = stream(&guest(), t);
    let o = ConvertOptions::default();
    let mut p = Pages::default();
    read_qemu(Trickle(&src, 4096), &mut p, &o).unwrap();
    assert_eq!(p.pages, expected_pages(&guest()));
    let (vms, _) = qemu_to_vmstream(&src[..], Vec::new(), &o).unwrap();
    let back = vmstream_to_qemu(&vms[..], Vec::new(), &o).unwrap();
    assert!(back == src);
}

#[test]
fn a_file_written_back_is_sparse() {
    let blocks = [Block {
        name: "pc.ram",
        size: 16 << 20,
        present: &[5, 4000],
    }];
    let src = stream(&blocks, Tamper::default());
    let (vms, _) = qemu_to_vmstream(&src[..], Vec::new(), &ConvertOptions::default()).unwrap();
    let mut f = tempfile::tempfile().unwrap();
    let mut f2 = f.try_clone().unwrap();
    vmstream_to_qemu_seekable(
        &vms[..],
        std::io::BufWriter::new(&mut f2),
        &ConvertOptions::default(),
    )
    .unwrap()
    .flush()
    .unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut back = Vec::new();
    f.read_to_end(&mut back).unwrap();
    assert!(back == src);
    use std::os::unix::fs::MetadataExt;
    let allocated = f.metadata().unwrap().blocks() * 512;
    // two pages, the header part and the tail, not 17 MiB
    assert!(allocated < 1 << 20, "{allocated} bytes allocated");
}

fn fails(src: &[u8], limits: Limits) -> [vmstream::Error; 2] {
    let o = ConvertOptions {
        limits,
        ..ConvertOptions::default()
    };
    let pipe = read_qemu(Trickle(src, 4096), &mut Pages::default(), &o).unwrap_err();
    let file = read_qemu_seekable(Cursor::new(src), &mut Pages::default(), &o).unwrap_err();
    [pipe, file]
}

#[test]
fn hostile_headers_are_refused_naming_field_and_offset() {
    let blocks = guest();
    // the first block's header stands after the MEM_SIZE record and pc.ram's entry
    let hat = stream(&blocks, Tamper::default())
        .windows(6)
        .position(|w| w == b"pc.ram")
        .unwrap() as u64
        + 6
        + 8;
    let cases: [(Tamper, ErrorKind, &str, u64); 6] = [
        (
            Tamper {
                version: Some(2),
                ..Default::default()
            },
            ErrorKind::Unsupported,
            "version",
            hat,
        ),
        (
            Tamper {
                page_size: Some(65536),
                ..Default::default()
            },
            ErrorKind::Malformed,
            "page_size",
            hat + 4,
        ),
        (
            Tamper {
                bitmap_offset: Some(1 << 40),
                ..Default::default()
            },
            ErrorKind::Unsupported,
            "bitmap_offset",
            hat + 12,
        ),
        (
            Tamper {
                pages_offset: Some(0x100800),
                ..Default::default()
            },
            ErrorKind::Malformed,
            "pages_offset",
            hat + 20,
        ),
        (
            Tamper {
                pages_offset: Some(0),
                ..Default::default()
            },
            ErrorKind::Malformed,
            "pages_offset",
            hat + 20,
        ),
        (
            Tamper {
                pages_offset: Some(!4095),
                ..Default::default()
            },
            ErrorKind::Malformed,
            "pages_offset",
            hat + 20,
        ),
    ];
    for (t, kind, field, at) in cases {
        let src = stream(&blocks, t);
        for e in fails(&src, Limits::default()) {
            assert_eq!(e.kind(), kind, "{e}");
            assert!(e.message().contains(field), "{e}");
            assert!(e.message().contains("pc.ram"), "{e}");
            assert_eq!(e.location().offset, Some(at), "{e}");
        }
    }
    // slots past the end of a file: refused before seeking, naming the field;
    // in a pipe, the stream is truncated there
    let src = stream(
        &blocks,
        Tamper {
            pages_offset: Some(1 << 33),
            ..Default::default()
        },
    );
    let [pipe, file] = fails(&src, Limits::default());
    assert!(
        file.message().contains("pages_offset") && file.message().contains("past the end"),
        "{file}"
    );
    assert_eq!(file.location().offset, Some(hat + 20));
    assert!(pipe.message().contains("truncated"), "{pipe}");
    // a bitmap beyond Limits::max_alloc is refused before it is read
    let big = [Block {
        name: "pc.ram",
        size: 1 << 40,
        present: &[],
    }];
    let src = stream(
        &big,
        Tamper {
            pages_offset: Some(1 << 40),
            ..Default::default()
        },
    );
    for e in fails(&src, Limits::default().with_max_alloc(1 << 20)) {
        assert_eq!(e.kind(), ErrorKind::LimitExceeded, "{e}");
        assert!(e.message().contains("bitmap"), "{e}");
    }
    // a page record where QEMU refuses one
    let src = stream(
        &blocks,
        Tamper {
            page_record: true,
            ..Default::default()
        },
    );
    for e in fails(&src, Limits::default()) {
        assert_eq!(e.kind(), ErrorKind::Malformed, "{e}");
        assert!(e.message().contains("mapped-ram stream"), "{e}");
    }
    // truncated inside a page slot: a pipe runs out there, a file is
    // refused at the header whose slots pass its end
    let src = stream(&blocks, Tamper::default());
    let cut = &src[..0x100000 + 4096 * 2 + 100];
    let [pipe, file] = fails(cut, Limits::default());
    assert!(pipe.message().contains("truncated"), "{pipe}");
    assert_eq!(pipe.location().offset, Some(0x100000 + 4096 * 2));
    assert!(
        file.message().contains("past the end of the file"),
        "{file}"
    );
    assert_eq!(file.location().offset, Some(hat + 20));
}

/// Events whose pages disagree with their bitmap are refused on the way back.
#[test]
fn pages_must_match_the_bitmap_going_back() {
    let src = stream(&guest(), Tamper::default());
    let o = ConvertOptions::default();
    // drop one page on the way to vmstream
    struct DropOne<S>(S, bool);
    impl<S: Sink> Sink for DropOne<S> {
        fn event(&mut self, ev: &Event<'_>) -> vmstream::Result<()> {
            if let Event::Page { index: 9, .. } = ev {
                if !self.1 {
                    self.1 = true;
                    return Ok(());
                }
            }
            self.0.event(ev)
        }
    }
    let mut sink = DropOne(VmstreamSink::new(Vec::new(), o.writer), false);
    read_qemu(&src[..], &mut sink, &o).unwrap();
    let vms = sink.0.finish().unwrap();
    let e = vmstream_to_qemu(&vms[..], Vec::new(), &o).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Malformed, "{e}");
    assert!(e.message().contains("more present pages"), "{e}");
}

/// A mapped-ram file written with multifd has no page records on the main
/// stream and may have no present page at all: its pages are in the file, not
/// on missing channels.
#[test]
fn never_taken_for_a_main_channel_without_its_channels() {
    let blocks = [Block {
        name: "pc.ram",
        size: 1 << 20,
        present: &[],
    }];
    let src = stream(&blocks, Tamper::default());
    struct Signs(MultifdSigns);
    impl Sink for Signs {
        fn event(&mut self, ev: &Event<'_>) -> vmstream::Result<()> {
            self.0.observe(ev, PS);
            Ok(())
        }
    }
    let mut s = Signs(MultifdSigns::default());
    read_qemu(&src[..], &mut s, &ConvertOptions::default()).unwrap();
    assert_eq!(s.0.pages_elsewhere(), None);
    let (vms, _) = qemu_to_vmstream(&src[..], Vec::new(), &ConvertOptions::default()).unwrap();
    let mut r = vmstream::SliceReader::new(&vms, Limits::default()).unwrap();
    let mut signs = MultifdSigns::default();
    while let Some(item) = r.next().unwrap() {
        signs.observe_record(&item.record);
    }
    assert_eq!(signs.listed_pages, 256);
    assert_eq!(signs.pages_elsewhere(), None);
}
