//! Arbitrary bytes as a whole stream: `SliceReader`, `StreamReader` (over an
//! in-memory cursor and over a reader that hands out a few bytes per call) and
//! the push `Decoder` must read the same records and fail the same way, and
//! every error must carry an offset. A `StreamReader` whose reader is
//! interrupted now and then and fails for good two thirds into the input
//! reads the same records up to there, and its I/O error says where.
//!
//! Reading with small limits must not allocate much more than they allow
//! (plus a small multiple of the input, for what accumulates across records).
//!
//! Each input is also tried with its checksums recomputed, so that mutations
//! reach the record parsers instead of stopping at a CRC mismatch.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vmstream_fuzz::{
    check_stream_failing, drain_all, fix_crcs, limits, peak_alloc, read_push, read_slice,
    read_stream, reader_limits, Dribble,
};

/// Record size and allocation limit of the accounting check.
const SMALL: u32 = 64 << 10;

fn check(data: &[u8]) {
    let lim = reader_limits();
    let slice = read_slice(data, lim);
    let cursor = read_stream(std::io::Cursor::new(data), lim);
    slice.assert_agrees(&cursor, "StreamReader over a cursor");
    let dribble = read_stream(
        Dribble {
            data,
            n: 1 + data.len() % 7,
        },
        lim,
    );
    slice.assert_agrees(&dribble, "StreamReader, short reads");
    let push = read_push(data, &[usize::MAX], lim);
    slice.assert_agrees(&push, "Decoder fed the whole input");
    let fail_at = data.len() - data.len() / 3;
    check_stream_failing(data, fail_at, 1 + data.len() % 5, lim, &slice);
}

/// Reading costs at most a few times the limits, plus what the input itself
/// defines (names, RAM blocks) and some fixed overhead.
fn check_cost(data: &[u8]) {
    let small = limits()
        .with_max_record_size(SMALL)
        .with_max_alloc(u64::from(SMALL));
    let ((), peak) = peak_alloc(|| drain_all(data, small, 4096));
    let bound = 8 * SMALL as usize + 16 * data.len() + (256 << 10);
    assert!(
        peak <= bound,
        "reading {} bytes used {peak} bytes of heap (bound {bound})",
        data.len()
    );
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let mut fixed = data.to_vec();
    if fix_crcs(&mut fixed) {
        check(&fixed);
        check_cost(&fixed);
    } else {
        check_cost(data);
    }
});
