//! Arbitrary bytes as a file for `SeekReader`: opening it and reading every
//! mapped device and every RAM block through it never panics, and every
//! *malformed* error says where. When the bytes also read whole as a stream,
//! what seeking returns agrees with that read: a device read at a record
//! boundary is the device the stream holds there, and every page of a block is
//! zero or data the stream sent for that page (an index may leave batches
//! out, never make data up). With small limits, seeking holds at most a few
//! times them.
//!
//! Each input is also tried with its checksums recomputed (the index and end
//! records' too), so mutations reach the index parser and the checks of the
//! records it points at.

#![no_main]

use std::collections::{HashMap, HashSet};
use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use vmstream::{DeviceState, Error, ErrorKind, Limits, Record, SeekReader, SliceReader};
use vmstream_fuzz::{canon, fix_crcs, limits, peak_alloc, reader_limits};

/// Largest RAM block read whole.
const MAX_BLOCK: u64 = 4 << 20;
/// Record size and allocation limit of the accounting check.
const SMALL: u32 = 64 << 10;

/// What a whole read of the stream found.
struct Truth {
    /// Offsets of every record.
    records: HashSet<u64>,
    devices: HashMap<u64, DeviceState>,
    /// Every version of each page sent: `(block, page)` → data (`None` for zero).
    pages: HashMap<(u32, u64), Vec<Option<Vec<u8>>>>,
}

fn truth(data: &[u8], lim: Limits) -> Option<Truth> {
    let mut r = SliceReader::new(data, lim).ok()?;
    let mut t = Truth {
        records: HashSet::new(),
        devices: HashMap::new(),
        pages: HashMap::new(),
    };
    while let Some(item) = r.next().ok()? {
        t.records.insert(item.offset);
        match item.record {
            Record::Device(d) => {
                t.devices.insert(item.offset, d);
            }
            Record::Pages(b) => {
                for p in b.pages() {
                    t.pages
                        .entry((b.block, p.index))
                        .or_default()
                        .push(p.data.map(<[u8]>::to_vec));
                }
            }
            _ => {}
        }
    }
    r.trailing().is_empty().then_some(t)
}

fn check_error(e: &Error) {
    if e.kind() == ErrorKind::Malformed {
        assert!(e.location().offset.is_some(), "error without an offset: {e}");
    }
}

fn check(data: &[u8]) {
    let lim = reader_limits();
    let truth = truth(data, lim);
    let mut r = match SeekReader::open(Cursor::new(data), lim) {
        Ok(r) => r,
        Err(e) => return check_error(&e),
    };
    // entries that point inside other records may frame records of their own
    let sound = truth
        .as_ref()
        .filter(|t| r.entries().iter().all(|e| t.records.contains(&e.offset)));
    let offsets: Vec<u64> = r.devices().map(|e| e.offset).collect();
    for at in offsets {
        match r.device_at(at) {
            Ok(d) => {
                if let Some(t) = sound {
                    let want = t.devices.get(&at).expect("a device where the stream has one");
                    assert_eq!(
                        (&d.name, d.instance_id, &d.type_name, d.version),
                        (&want.name, want.instance_id, &want.type_name, want.version)
                    );
                    assert_eq!(canon(&d.value), canon(&want.value), "device at {at:#x}");
                }
            }
            Err(e) => check_error(&e),
        }
    }
    let blocks = match r.ram_blocks() {
        Ok(b) => b.to_vec(),
        Err(e) => return check_error(&e),
    };
    let page_size = u64::from(r.header().page_size);
    for b in blocks.iter().filter(|b| b.size <= MAX_BLOCK) {
        let mut buf = vec![0u8; b.size as usize];
        match r.read_ram(b.id, 0, &mut buf) {
            Ok(()) => {
                let Some(t) = sound else { continue };
                for (i, page) in buf.chunks(page_size as usize).enumerate() {
                    let sent = t.pages.get(&(b.id, i as u64));
                    let ok = page.iter().all(|&x| x == 0)
                        || sent.is_some_and(|h| h.iter().flatten().any(|d| d == page));
                    assert!(ok, "block {} page {i}: data the stream never sent", b.id);
                }
            }
            Err(e) => check_error(&e),
        }
    }
}

/// Seeking costs at most a few times the limits, plus a small multiple of the
/// input, whatever the index claims.
fn check_cost(data: &[u8]) {
    let small = limits()
        .with_max_record_size(SMALL)
        .with_max_alloc(u64::from(SMALL));
    let ((), peak) = peak_alloc(|| {
        let Ok(mut r) = SeekReader::open(Cursor::new(data), small) else {
            return;
        };
        let offsets: Vec<u64> = r.devices().map(|e| e.offset).collect();
        for at in offsets {
            let _ = r.device_at(at);
        }
        let ids: Vec<u32> = r
            .ram_blocks()
            .map(|b| b.iter().map(|b| b.id).collect())
            .unwrap_or_default();
        for id in ids {
            let _ = r.for_each_batch(id, 0..=u64::MAX, &mut |_| Ok(()));
        }
    });
    let bound = 8 * SMALL as usize + 16 * data.len() + (256 << 10);
    assert!(
        peak <= bound,
        "seeking in {} bytes used {peak} bytes of heap (bound {bound})",
        data.len()
    );
}

fuzz_target!(|data: &[u8]| {
    check(data);
    check_cost(data);
    let mut fixed = data.to_vec();
    if fix_crcs(&mut fixed) {
        check(&fixed);
        check_cost(&fixed);
    }
});
