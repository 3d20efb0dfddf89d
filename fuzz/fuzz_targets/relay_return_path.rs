//! QEMU's return path through the relays: bytes a destination QEMU (or
//! anything else) wrote on its migration connection go through `send_back`,
//! whose return-channel stream then goes through `carry_back`; and the same
//! bytes go to `carry_back` directly, as a hostile return channel.
//!
//! Neither panics, hangs nor allocates beyond its limits; whatever
//! `send_back` accepts, `carry_back` gives back byte for byte.

#![no_main]

use std::io::{Cursor, Read, Write};
use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use vmstream::Limits;
use vmstream_migrate::link::{Cutter, Link};
use vmstream_migrate::relay::{carry_back, send_back};

/// A connection that reads fixed bytes and keeps what is written.
struct Conn(Cursor<Vec<u8>>, Arc<Mutex<Vec<u8>>>);

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.1.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Link for Conn {
    fn cutter(&self) -> Cutter {
        Cutter::new(|| {})
    }
}

fn conn(bytes: Vec<u8>) -> (Box<dyn Link>, Arc<Mutex<Vec<u8>>>) {
    let out = Arc::new(Mutex::new(Vec::new()));
    (Box::new(Conn(Cursor::new(bytes), out.clone())), out)
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default()
        .with_max_record_size(1 << 16)
        .with_max_alloc(1 << 20);
    let (channel, wire) = conn(Vec::new());
    if let Ok(sent) = send_back(data, channel) {
        let wire = wire.lock().map(|w| w.clone()).unwrap_or_default();
        let (back, _) = conn(wire);
        let mut source = Vec::new();
        let carried = carry_back(back, &mut source, limits).expect("send_back's stream reads back");
        assert_eq!(carried, sent);
        assert_eq!(source, data);
    }
    let (hostile, _) = conn(data.to_vec());
    let _ = carry_back(hostile, std::io::sink(), limits);
});
