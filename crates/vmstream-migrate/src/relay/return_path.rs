//! QEMU's return path through the relays (capability `return-path`): the
//! destination QEMU answers its source on the migration connection itself
//! (a PONG to the opening PING, SWITCHOVER_ACK, and SHUT once it has loaded
//! the stream). The receiving relay reads those messages as they come
//! ([`send_back`]) and sends each as a [`RETURN_PATH`] record on the relay's
//! return channel; the sending relay writes them to the source QEMU as they
//! arrive ([`carry_back`]). Wire format: `docs/live-migration.md` §7.

use std::io::{self, Read, Write};

use vmstream::{Arch, Header, Limits, Record, RecordKind, StreamKind, StreamReader, StreamWriter};

use crate::link::Link;
use crate::Error;

/// Record kind of one return-path message, its body the message as QEMU
/// wrote it (`be16` type, `be16` length, data). Optional: only a relay reads it.
pub const RETURN_PATH: RecordKind = RecordKind(0x0202);

/// QEMU's return-path message names by type (`mig_rp_message_type`).
const NAMES: [&str; 8] = [
    "INVALID",
    "SHUT",
    "PONG",
    "REQ_PAGES_ID",
    "REQ_PAGES",
    "RECV_BITMAP",
    "RESUME_ACK",
    "SWITCHOVER_ACK",
];
const SHUT: u16 = 1;

/// What went back from the destination QEMU to the source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Carried {
    /// Messages carried.
    pub messages: u64,
    /// The value of the destination's SHUT message (0: loaded), if it sent one.
    pub shut: Option<u32>,
}

/// Writes each write through and flushes it: a return-path message must
/// not wait in a buffer (a TLS session's, for one).
struct Promptly<W>(W);

impl<W: Write> Write for Promptly<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_all(buf)?;
        self.0.flush()?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// Reads the destination QEMU's return path from `qemu` until it closes and
/// sends every message on `channel`, the relay's return channel, as it
/// comes; then ends the channel's stream. Messages are checked against
/// QEMU's framing (a known type, the whole length) before they are sent on.
pub fn send_back(mut qemu: impl Read, channel: Box<dyn Link>) -> Result<Carried, Error> {
    let header = Header::new(StreamKind::Live, Arch::Unknown, 4096);
    let options = vmstream::WriterOptions::default().with_index(false);
    let mut out = StreamWriter::new(Promptly(channel), header, options)?;
    let mut carried = Carried::default();
    let mut at = 0u64;
    loop {
        let mut msg = vec![0u8; 4];
        let got = read_full(&mut qemu, &mut msg)
            .map_err(|e| Error::transport(format!("the destination QEMU's return path: {e}")))?;
        if got == 0 {
            break;
        }
        let what = |m: String| {
            Error::peer(format!(
                "the destination QEMU's return path, message at byte {at}: {m}"
            ))
        };
        if got < 4 {
            return Err(what(format!("{got} of a 4-byte message header")));
        }
        let ty = u16::from_be_bytes([msg[0], msg[1]]);
        let len = usize::from(u16::from_be_bytes([msg[2], msg[3]]));
        let name = NAMES
            .get(usize::from(ty))
            .filter(|_| ty != 0)
            .ok_or_else(|| what(format!("unknown message type {ty} (expected 1 to 7)")))?;
        msg.resize(4 + len, 0);
        let body = read_full(&mut qemu, &mut msg[4..])
            .map_err(|e| Error::transport(format!("the destination QEMU's return path: {e}")))?;
        if body < len {
            return Err(what(format!("{name} of {len} bytes ends after {body}")));
        }
        if ty == SHUT {
            let v: [u8; 4] = msg[4..]
                .try_into()
                .map_err(|_| what(format!("SHUT of {len} bytes (expected 4)")))?;
            carried.shut = Some(u32::from_be_bytes(v));
        }
        out.write_raw_record(RETURN_PATH, true, &msg)?;
        carried.messages += 1;
        at += msg.len() as u64;
    }
    let Promptly(mut channel) = out.finish()?;
    channel
        .close_write()
        .map_err(|e| Error::transport(format!("the return channel: closing: {e}")))?;
    Ok(carried)
}

/// Reads the relay's return channel and writes every return-path message to
/// the source QEMU (`qemu`) as it arrives, until the channel's stream ends.
pub fn carry_back(
    channel: Box<dyn Link>,
    mut qemu: impl Write,
    limits: Limits,
) -> Result<Carried, Error> {
    let mut r = StreamReader::new(channel, limits)?;
    let mut carried = Carried::default();
    while let Some(item) = r.next()? {
        // The stream's own records (its names) carry nothing to pass on.
        let Record::Other(raw) = item.record else {
            continue;
        };
        if raw.kind != RETURN_PATH {
            return Err(Error::peer(format!(
                "the return channel carries a record of kind {:#06x} (expected return-path messages only)",
                raw.kind.0
            )));
        }
        if raw.body.len() >= 8 && raw.body[..2] == SHUT.to_be_bytes() {
            carried.shut = Some(u32::from_be_bytes([
                raw.body[4],
                raw.body[5],
                raw.body[6],
                raw.body[7],
            ]));
        }
        qemu.write_all(raw.body)
            .and_then(|()| qemu.flush())
            .map_err(|e| {
                Error::transport(format!("writing the return path to the source QEMU: {e}"))
            })?;
        carried.messages += 1;
    }
    Ok(carried)
}

/// Reads until `buf` is full or the input ends; returns how much was read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::net::UnixStream;

    use super::*;

    fn msg(ty: u16, data: &[u8]) -> Vec<u8> {
        let mut m = ty.to_be_bytes().to_vec();
        m.extend_from_slice(&(data.len() as u16).to_be_bytes());
        m.extend_from_slice(data);
        m
    }

    /// `qemu_rp` through send_back, the return channel, and carry_back.
    fn through(qemu_rp: &[u8]) -> (Result<Carried, Error>, Result<Carried, Error>, Vec<u8>) {
        let (a, b) = UnixStream::pair().unwrap();
        let reader = std::thread::spawn(move || {
            let mut source = Vec::new();
            let r = carry_back(Box::new(b), &mut source, Limits::default());
            (r, source)
        });
        let sent = send_back(qemu_rp, Box::new(a));
        let (carried, source) = reader.join().unwrap();
        (sent, carried, source)
    }

    #[test]
    fn messages_reach_the_source_as_qemu_wrote_them() {
        let mut rp = msg(2, &1u32.to_be_bytes()); // PONG 1
        rp.extend(msg(7, &[])); // SWITCHOVER_ACK
        rp.extend(msg(1, &0u32.to_be_bytes())); // SHUT 0
        let (sent, carried, source) = through(&rp);
        let want = Carried {
            messages: 3,
            shut: Some(0),
        };
        assert_eq!(sent.unwrap(), want);
        assert_eq!(carried.unwrap(), want);
        assert_eq!(source, rp);
        // No return path opened: an empty stream.
        let (sent, carried, source) = through(&[]);
        assert_eq!(sent.unwrap(), Carried::default());
        assert_eq!(carried.unwrap(), Carried::default());
        assert!(source.is_empty());
    }

    #[test]
    fn a_malformed_return_path_is_refused_with_where_and_what() {
        let mut two = msg(2, &1u32.to_be_bytes());
        two.extend(msg(9, &[]));
        for (rp, want) in [
            (msg(0, &[]), "unknown message type 0"),
            (two, "message at byte 8: unknown message type 9"),
            (msg(1, &[0; 3]), "SHUT of 3 bytes (expected 4)"),
            (
                msg(2, &[0; 4])[..6].to_vec(),
                "PONG of 4 bytes ends after 2",
            ),
            (vec![0, 1, 0], "3 of a 4-byte message header"),
        ] {
            let (sent, carried, _) = through(&rp);
            let e = sent.unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
            // The channel's stream never ended: the sending side fails too.
            assert!(carried.is_err());
        }
    }
}
