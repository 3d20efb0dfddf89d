//! Hostile vmstream input on its way back to QEMU, with and without
//! compaction: every stream here is sound framing around contents the
//! conversion must refuse with an error that says where, never a panic, a
//! wrapped count or an allocation beyond the limits.

use vmstream::{ErrorKind, Limits};
use vmstream_qemu::{vmstream_to_qemu, vmstream_to_vmstream, ConvertOptions};
use vmstream_testkit::qemu::{ram_stream, QemuFramed, SECTION_END, SECTION_START};

fn opts(compact: bool, limits: Limits) -> ConvertOptions {
    ConvertOptions {
        compact,
        limits,
        ..ConvertOptions::default()
    }
}

/// Converts `stream` back to QEMU (and to vmstream when compacting) and
/// returns the error, which must carry an offset.
fn refused(stream: &[u8], compact: bool, limits: Limits) -> vmstream::Error {
    let o = opts(compact, limits);
    let e = match vmstream_to_qemu(stream, Vec::new(), &o) {
        Ok(_) => panic!("a hostile stream converted (compact: {compact})"),
        Err(e) => e,
    };
    assert!(e.location().offset.is_some(), "{e}");
    if compact {
        let again = vmstream_to_vmstream(stream, Vec::new(), &o).expect_err("vmstream output");
        assert_eq!(again.kind(), e.kind(), "{again} vs {e}");
    }
    e
}

fn sound_stream_converts() -> Vec<u8> {
    let s = ram_stream(
        4096,
        &[("pc.ram", 8 * 4096), ("vga.vram", 4 * 4096)],
        &[(0, 1, Some(0xaa)), (1, 3, None), (0, 7, Some(0x55))],
    );
    for compact in [false, true] {
        vmstream_to_qemu(&s[..], Vec::new(), &opts(compact, Limits::default()))
            .unwrap_or_else(|e| panic!("compact {compact}: {e}"));
    }
    s
}

#[test]
fn the_frame_around_hostile_streams_is_sound() {
    let s = sound_stream_converts();
    let qemu = vmstream_to_qemu(&s[..], Vec::new(), &opts(true, Limits::default())).unwrap();
    // compaction keeps both data pages and the zero page
    assert_eq!(
        qemu.windows(4096)
            .filter(|w| w.iter().all(|&b| b == 0xaa))
            .count(),
        1
    );
    assert_eq!(
        qemu.windows(4096)
            .filter(|w| w.iter().all(|&b| b == 0x55))
            .count(),
        1
    );
}

/// Compaction used to add the blocks' page counts without checking: sizes that
/// add up past 2^64 wrapped to a small image, and the first page beyond it
/// indexed out of bounds.
#[test]
fn block_sizes_that_add_up_past_64_bits_are_refused_by_compaction() {
    // 2000 blocks of 2^54 - 1 pages of 1 KiB: about 2^65 pages in all
    let huge: u64 = !0x3ff;
    let blocks: Vec<(String, u64)> = (0..2000).map(|i| (format!("b{i}"), huge)).collect();
    let named: Vec<(&str, u64)> = blocks.iter().map(|(n, s)| (n.as_str(), *s)).collect();
    let s = ram_stream(
        1024,
        &named,
        &[(0, 1, Some(1)), (1999, (huge >> 10) - 1, Some(2))],
    );
    // no limit on the page state: only the checked sum stands in the way
    let unlimited = Limits::default().with_max_alloc(u64::MAX);
    let e = refused(&s, true, unlimited);
    assert_eq!(e.kind(), ErrorKind::LimitExceeded, "{e}");
    assert!(e.to_string().contains("Limits::max_alloc"), "{e}");
    assert!(e.location().record.is_some(), "{e}");
    // with the default limits, the same list is over Limits::max_alloc
    let e = refused(&s, true, Limits::default());
    assert_eq!(e.kind(), ErrorKind::LimitExceeded, "{e}");
    // without compaction nothing sums the blocks, and the pages convert
    let huge: u64 = !0xfff;
    let mut two = QemuFramed::new(4096);
    two.stream(3, None)
        .section(SECTION_START, 2, Some(("ram", 0, 4)));
    two.ram_blocks(&[(0, "a", huge), (1, "b", huge)])
        .mem_size(&[("a", huge), ("b", huge)])
        .pages(1, 0, 4096, &[((huge >> 12) - 1, Some(7))])
        .section_end(false)
        .section(SECTION_END, 2, None)
        .section_end(false)
        .eof();
    let two = two.finish();
    vmstream_to_qemu(&two[..], Vec::new(), &opts(false, Limits::default())).unwrap();
    let e = refused(&two, true, Limits::default());
    assert_eq!(e.kind(), ErrorKind::LimitExceeded, "{e}");
}

/// Pages refer to blocks by id; the conversion takes the block list from what
/// the reader validated, so every id a page names is one the sink knows.
#[test]
fn block_lists_come_from_validated_reader_state() {
    let base = |s: &mut QemuFramed| {
        s.stream(3, None)
            .section(SECTION_START, 2, Some(("ram", 0, 4)));
    };
    let close = |s: &mut QemuFramed| {
        s.section_end(false)
            .section(SECTION_END, 2, None)
            .section_end(false)
            .eof();
    };
    let mut cases: Vec<(&str, Vec<u8>, ErrorKind, &str)> = Vec::new();
    // one id twice in one record: the reader refuses it
    let mut s = QemuFramed::new(4096);
    base(&mut s);
    s.ram_blocks(&[(0, "a", 4096), (0, "b", 4096)]);
    close(&mut s);
    cases.push((
        "duplicate id",
        s.finish(),
        ErrorKind::Malformed,
        "defined twice",
    ));
    // ids that do not count from 0
    let mut s = QemuFramed::new(4096);
    base(&mut s);
    s.ram_blocks(&[(1, "a", 4096)]).mem_size(&[("a", 4096)]);
    close(&mut s);
    cases.push((
        "ids from 1",
        s.finish(),
        ErrorKind::Malformed,
        "count from 0",
    ));
    // a second record that continues the ids is fine, but pages of a block the
    // QEMU list never announced are not
    let mut s = QemuFramed::new(4096);
    base(&mut s);
    s.ram_blocks(&[(0, "a", 4096)])
        .mem_size(&[("a", 4096)])
        .ram_blocks(&[(1, "b", 2 * 4096)])
        .pages(1, 0, 4096, &[(1, Some(3))]);
    close(&mut s);
    cases.push((
        "unannounced block",
        s.finish(),
        ErrorKind::Malformed,
        "RAM block 1",
    ));
    // pages before any QEMU block list
    let mut s = QemuFramed::new(4096);
    base(&mut s);
    s.ram_blocks(&[(0, "a", 4096)])
        .pages(0, 0, 4096, &[(0, Some(3))]);
    close(&mut s);
    cases.push((
        "pages first",
        s.finish(),
        ErrorKind::Malformed,
        "before a QEMU RAM block list",
    ));
    // a block name QEMU's one-byte length cannot carry
    let long = "n".repeat(300);
    let mut s = QemuFramed::new(4096);
    base(&mut s);
    s.ram_blocks(&[(0, &long, 4096)]);
    close(&mut s);
    cases.push(("long name", s.finish(), ErrorKind::Malformed, "at most 255"));
    // too many blocks for Limits::max_ram_blocks
    let many: Vec<(u32, String, u64)> = (0..5000).map(|i| (i, String::new(), 4096)).collect();
    let many: Vec<(u32, &str, u64)> = many.iter().map(|(i, n, s)| (*i, n.as_str(), *s)).collect();
    let mut s = QemuFramed::new(4096);
    base(&mut s);
    s.ram_blocks(&many);
    close(&mut s);
    cases.push((
        "many blocks",
        s.finish(),
        ErrorKind::LimitExceeded,
        "max_ram_blocks",
    ));
    for (what, stream, kind, needle) in &cases {
        for compact in [false, true] {
            let e = refused(stream, compact, Limits::default());
            assert_eq!(e.kind(), *kind, "{what} (compact {compact}): {e}");
            assert!(
                e.to_string().contains(needle),
                "{what} (compact {compact}): {e}"
            );
            assert!(e.location().record.is_some(), "{what}: {e}");
        }
    }
}

/// A second block list would make compaction drop the pages it already has.
#[test]
fn compaction_refuses_a_second_block_list() {
    let mut s = QemuFramed::new(4096);
    s.stream(3, None)
        .section(SECTION_START, 2, Some(("ram", 0, 4)))
        .ram_blocks(&[(0, "a", 4 * 4096)])
        .mem_size(&[("a", 4 * 4096)])
        .pages(0, 0, 4096, &[(1, Some(9))])
        .mem_size(&[("a", 4 * 4096)])
        .section_end(false)
        .section(SECTION_END, 2, None)
        .section_end(false)
        .eof();
    let s = s.finish();
    vmstream_to_qemu(&s[..], Vec::new(), &opts(false, Limits::default())).unwrap();
    let e = refused(&s, true, Limits::default());
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    assert!(e.to_string().contains("second RAM block list"), "{e}");
}

/// QEMU target pages are 1 KiB to 64 KiB; a stream claiming other pages (a
/// 1 GiB page would make each encoded-page update cost 1 GiB) has no QEMU
/// stream to give back.
#[test]
fn page_sizes_qemu_cannot_have_are_refused() {
    for ps in [512u32, 128 << 10, 2 << 20, 1 << 30] {
        let mut s = QemuFramed::new(ps);
        s.stream(3, None).eof();
        let s = s.finish();
        for compact in [false, true] {
            let e = refused(&s, compact, Limits::default());
            assert_eq!(e.kind(), ErrorKind::Unsupported, "{ps}: {e}");
            assert!(e.to_string().contains("not a QEMU target page size"), "{e}");
        }
    }
    // the largest QEMU page size converts, compacted or not
    let s = ram_stream(64 << 10, &[("pc.ram", 4 << 20)], &[(0, 63, Some(1))]);
    for compact in [false, true] {
        vmstream_to_qemu(&s[..], Vec::new(), &opts(compact, Limits::default())).unwrap();
    }
}

/// Records whose contents only a QEMU writer needs are checked on the way.
#[test]
fn qemu_records_with_impossible_contents_say_where() {
    let mut s = QemuFramed::new(4096);
    s.stream(3, None)
        .section(SECTION_START, 2, Some(("ram", 0, 4)))
        .ram_blocks(&[(0, "a", 4096)])
        .mem_size(&[("a", 4096)])
        .command(2, &vec![0; 70_000])
        .eof();
    let e = refused(&s.finish(), false, Limits::default());
    assert!(e.to_string().contains("65535"), "{e}");
    // a section end outside any section, a page beyond its block (the reader's
    // own check), and XBZRLE of a block the list does not have
    let mut s = QemuFramed::new(4096);
    s.stream(3, None).section_end(false).eof();
    let e = refused(&s.finish(), false, Limits::default());
    assert!(e.location().record.is_some(), "{e}");
    let mut s = QemuFramed::new(4096);
    s.stream(3, None)
        .section(SECTION_START, 2, Some(("ram", 0, 4)))
        .ram_blocks(&[(0, "a", 4096)])
        .mem_size(&[("a", 4096)])
        .ram_record(0x1000 | 0x40, Some(b"nope"), &[0, 0, 2, 0, 1, 1])
        .section_end(false)
        .section(SECTION_END, 2, None)
        .section_end(false)
        .eof();
    let e = refused(&s.finish(), true, Limits::default());
    assert_eq!(e.kind(), ErrorKind::Malformed, "{e}");
}

/// The QEMU stream record comes once and first; the EOF record must be there;
/// a configuration's page bits must match the stream's page size.
#[test]
fn qemu_stream_records_in_the_wrong_place_say_where() {
    let mut s = QemuFramed::new(4096);
    s.stream(3, None).eof().stream(3, None);
    let e = refused(&s.finish(), false, Limits::default());
    assert!(e.to_string().contains("a second QEMU stream record"), "{e}");
    let mut s = QemuFramed::new(4096);
    s.section_end(false).stream(3, None).eof();
    let e = refused(&s.finish(), false, Limits::default());
    assert!(
        e.to_string().contains("before the QEMU stream record"),
        "{e}"
    );
    let mut s = QemuFramed::new(4096);
    s.stream(3, None);
    let e = refused(&s.finish(), false, Limits::default());
    assert!(e.to_string().contains("no QEMU EOF record"), "{e}");
    assert!(e.location().record.is_some(), "{e}");
    // target-page-bits 14 (16 KiB) in a stream of 4 KiB pages
    let mut cfg = 0u32.to_be_bytes().to_vec();
    cfg.extend_from_slice(b"\x05\x1econfiguration/target-page-bits");
    cfg.extend_from_slice(&[0, 0, 0, 0]);
    cfg.extend_from_slice(&14u32.to_be_bytes());
    let mut s = QemuFramed::new(4096);
    s.stream(3, Some(&cfg)).eof();
    let e = refused(&s.finish(), false, Limits::default());
    assert!(e.to_string().contains("target page bits 14"), "{e}");
}

/// Compacting a converted stream of 16 KiB pages into vmstream keeps its page
/// size (it used to fall back to 4 KiB without a configuration section), so
/// it converts back to the same QEMU stream compaction writes directly.
#[test]
fn compaction_to_vmstream_keeps_the_page_size() {
    let s = ram_stream(16 << 10, &[("pc.ram", 64 << 10)], &[(0, 3, Some(7))]);
    let o = opts(true, Limits::default());
    let qemu = vmstream_to_qemu(&s[..], Vec::new(), &o).unwrap();
    let vms = vmstream_to_vmstream(&s[..], Vec::new(), &o).unwrap();
    let r = vmstream::SliceReader::new(&vms, Limits::default()).unwrap();
    assert_eq!(r.state().header().page_size, 16 << 10);
    let back = vmstream_to_qemu(&vms[..], Vec::new(), &opts(false, Limits::default())).unwrap();
    assert!(
        back == qemu,
        "compacted vmstream converts to other QEMU bytes"
    );
}
