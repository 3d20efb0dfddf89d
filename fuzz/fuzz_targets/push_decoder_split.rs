//! The push `Decoder` gives the same events and the same error however its
//! input is split.
//!
//! Input layout: byte 0 holds the number of chunk sizes in its low 4 bits
//! (0 means one byte at a time) and, in bit 7, whether to recompute the
//! stream's checksums; then come the chunk sizes as u16 LE (0 feeds an empty
//! slice), used in turn; the rest is the stream.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vmstream_fuzz::{fix_crcs, read_push, reader_limits};

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(ctl & 0x0f);
    let (spec, stream) = rest.split_at((2 * n).min(rest.len()));
    let mut sizes: Vec<usize> = spec
        .chunks_exact(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])))
        .collect();
    if sizes.is_empty() {
        sizes.push(1);
    }
    let mut stream = stream.to_vec();
    if ctl & 0x80 != 0 {
        fix_crcs(&mut stream);
    }
    let lim = reader_limits();
    let whole = read_push(&stream, &[usize::MAX], lim);
    let split = read_push(&stream, &sizes, lim);
    assert_eq!(whole, split, "chunk sizes {sizes:?}");
});
