//! The receiving relay's input: a main channel and data channels as a
//! `vmstream relay send` wrote them (or anything else) into `Merger`.
//!
//! The merger never panics, never hangs and never allocates beyond its
//! limits: it gives back a byte stream or an error. What it gives back is
//! then read as a vmstream stream, as the receiving relay does, with small
//! limits.
//!
//! Input layout: byte 0 modulo 4 is the number of data channels N; then N + 1
//! segments, main first, each a little-endian u16 length and that many bytes
//! (the last segment takes what is left).

#![no_main]

use std::io::{Cursor, Read, Write};
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vmstream::Limits;
use vmstream_migrate::link::{Cutter, Link};
use vmstream_migrate::relay::Merger;

/// A connection that reads fixed bytes and swallows writes.
struct Bytes(Cursor<Vec<u8>>);

impl Read for Bytes {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Bytes {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Link for Bytes {
    fn cutter(&self) -> Cutter {
        Cutter::new(|| {})
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, mut rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 4);
    let mut parts = Vec::new();
    for i in 0..=n {
        let take = if i == n || rest.len() < 2 {
            rest.len()
        } else {
            let len = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
            rest = &rest[2..];
            len.min(rest.len())
        };
        parts.push(rest[..take].to_vec());
        rest = &rest[take..];
    }
    let limits = Limits::default()
        .with_max_record_size(1 << 20)
        .with_max_alloc(4 << 20);
    let main = Box::new(Bytes(Cursor::new(parts.remove(0)))) as Box<dyn Link>;
    let data: Vec<Box<dyn Link>> = parts
        .into_iter()
        .map(|p| Box::new(Bytes(Cursor::new(p))) as Box<dyn Link>)
        .collect();
    let mut merged = Vec::new();
    let merger = Merger::new(main, data, limits, Arc::default());
    let mut m = merger.take(16 << 20);
    if m.read_to_end(&mut merged).is_ok() {
        if let Ok(mut r) = vmstream::SliceReader::new(&merged, limits) {
            while let Ok(Some(_)) = r.next() {}
        }
    }
});
