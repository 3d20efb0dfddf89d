//! Arbitrary bytes as a QEMU multifd channel (after its init header): the
//! channel parser never panics and gives the same items and error however
//! the bytes arrive; every error says where; merged with a main channel into
//! one migration, what is accepted converts to vmstream and back to the same
//! bytes on both channels.
#![no_main]

use std::cell::RefCell;
use std::io::{Read, Write};
use std::rc::Rc;

use libfuzzer_sys::fuzz_target;
use vmstream_qemu::multifd::{ChannelEvent, ChannelReader, Inflater};
use vmstream_qemu::{channel_set_to_vmstream, vmstream_to_qemu_channels, ConvertOptions, OpenChannel};

/// A reader that hands out at most `n` bytes per call.
struct Trickle<'a>(&'a [u8], usize);

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.0.len().min(self.1).min(buf.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

fn items(channel: &[u8], step: usize) -> (Vec<String>, Option<String>) {
    let mut out = Vec::new();
    let mut r = match ChannelReader::new(Trickle(channel, step), 4096, vmstream_fuzz::limits()) {
        Ok(r) => r,
        Err(e) => return (out, Some(e.to_string())),
    };
    let mut inf = Inflater::new(0, 4096);
    let mut pages = Vec::new();
    loop {
        match r.next_event() {
            Ok(None) => return (out, None),
            Ok(Some(ChannelEvent::Init(i))) => out.push(format!("init {}", i.id())),
            Ok(Some(ChannelEvent::Packet(p))) => {
                let inflated = inf.pages(&p, &mut pages).map(|()| pages.len());
                out.push(format!(
                    "packet {} at {} flags {:#x} normal {} zero {} payload {} -> {:?}",
                    p.packet_num,
                    p.offset,
                    p.flags,
                    p.normal,
                    p.zero,
                    p.payload.len(),
                    inflated.map_err(|e| e.to_string())
                ));
            }
            Ok(Some(_)) => out.push("other".into()),
            Err(e) => {
                assert!(e.location().offset.is_some(), "channel error without an offset: {e}");
                return (out, Some(e.to_string()));
            }
        }
    }
}

/// A main channel with one RAM block of 16 pages and a MULTIFD_FLUSH in its
/// START and END sections.
fn main_channel() -> Vec<u8> {
    let mut m = b"QEVM\0\0\0\x03\x01\0\0\0\x01\x03ram\0\0\0\0\0\0\0\x04".to_vec();
    m.extend(((16 * 4096u64) | 0x04).to_be_bytes());
    m.push(6);
    m.extend(b"pc.ram");
    m.extend((16 * 4096u64).to_be_bytes());
    m.extend(0x200u64.to_be_bytes());
    m.extend(0x10u64.to_be_bytes());
    m.extend(b"\x03\0\0\0\x01");
    m.extend(0x200u64.to_be_bytes());
    m.extend(0x10u64.to_be_bytes());
    m.push(0);
    m
}

struct Shared(Rc<RefCell<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let mut channel = vec![0u8; 64];
    channel[..8].copy_from_slice(b"\x11\x22\x33\x44\0\0\0\x01");
    channel.extend_from_slice(data);
    let whole = items(&channel, usize::MAX);
    for step in [1, 13, 4096] {
        assert_eq!(items(&channel, step), whole, "read {step} bytes at a time");
    }

    let opts = ConvertOptions {
        limits: vmstream_fuzz::limits(),
        ..ConvertOptions::default()
    };
    let main = main_channel();
    match channel_set_to_vmstream(&main[..], vec![&channel[..]], Vec::new(), &opts) {
        Ok((vms, _, _)) => {
            let got = Rc::new(RefCell::new(Vec::new()));
            let g = got.clone();
            let open: OpenChannel = Box::new(move |_| Ok(Box::new(Shared(g.clone())) as Box<dyn Write>));
            let (back, ids) = vmstream_to_qemu_channels(&vms[..], Vec::new(), open, &opts)
                .expect("an accepted channel set converts back");
            assert!(back == main, "main channel not reproduced");
            assert_eq!(ids, vec![0]);
            assert!(*got.borrow() == channel, "multifd channel not reproduced");
        }
        Err(e) => assert!(
            e.location().offset.is_some() || e.message().contains("incomplete"),
            "error without a location: {e}"
        ),
    }
});
