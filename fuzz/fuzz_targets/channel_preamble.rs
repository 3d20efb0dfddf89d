//! The handshake of a channel set: preamble bytes into `Preamble::parse`,
//! and sequences of preambles into `SetAssembler`, the I/O-free core of
//! `accept_set`.
//!
//! Parsing never panics, and what parses encodes back to exactly the same 40
//! bytes (the encoding is canonical). Each input is tried again with its
//! CRC32C recomputed, so mutations get past the checksum.
//!
//! Then a sequence of connections is offered to an assembler. Every
//! connection is accounted for exactly once: refused (with a reason that is
//! true of it), still held or waiting, or in the finished set. A finished set
//! has the main channel's count of data channels, each of the main channel's
//! migration and count, in channel-id order; at most 64 data channels wait
//! for a main channel; nothing joins a complete set.
//!
//! Input layout: byte 0 picks the mode. Even: the rest is raw 40-byte
//! preambles (CRC recomputed). Odd: the rest is 4-byte steps `role, channel,
//! count, id`: role bit 0 main/data, channel and count taken modulo 70 (so
//! some are out of range), id one of four migration ids.

#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use vmstream_transport::channel::{PREAMBLE_LEN, PREAMBLE_MAGIC};
use vmstream_transport::{
    MigrationId, Preamble, PreambleError, Refusal, Role, SetAssembler, MAX_DATA_CHANNELS,
};

fuzz_target!(|data: &[u8]| {
    check_parse(data);
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let offers: Vec<Preamble> = if mode % 2 == 0 {
        rest.chunks(PREAMBLE_LEN)
            .filter_map(|c| Preamble::parse(&with_crc(c)?).ok())
            .collect()
    } else {
        rest.chunks_exact(4).filter_map(step).collect()
    };
    assemble(&offers);
});

/// Parse, round trip, and the same with the checksum fixed.
fn check_parse(bytes: &[u8]) {
    round_trip(bytes, Preamble::parse(bytes));
    if let Some(fixed) = with_crc(bytes) {
        let r = Preamble::parse(&fixed);
        if fixed[..8] == PREAMBLE_MAGIC {
            assert!(!matches!(r, Err(PreambleError::Checksum { .. })), "{r:?}");
        }
        round_trip(&fixed, r);
    }
}

fn round_trip(bytes: &[u8], r: Result<Preamble, PreambleError>) {
    match r {
        Ok(p) => {
            assert_eq!(p.encode().as_slice(), bytes, "{p:?}");
            assert!(p.data_channels() <= MAX_DATA_CHANNELS);
            if let Role::Data(id) = p.role() {
                assert!(id < p.data_channels());
            }
            assert_ne!(p.migration_id().to_bytes(), [0; 16]);
        }
        Err(PreambleError::Length(n)) => assert_ne!(n, PREAMBLE_LEN),
        Err(e) => {
            assert_eq!(bytes.len(), PREAMBLE_LEN, "{e}");
            // Every error has a message.
            assert!(!e.to_string().is_empty());
        }
    }
}

/// The 40 bytes with their CRC32C recomputed; `None` if not 40 bytes.
fn with_crc(bytes: &[u8]) -> Option<[u8; PREAMBLE_LEN]> {
    let mut b: [u8; PREAMBLE_LEN] = bytes.try_into().ok()?;
    let crc = vmstream::crc32c(&b[..36]);
    b[36..].copy_from_slice(&crc.to_le_bytes());
    Some(b)
}

fn step(s: &[u8]) -> Option<Preamble> {
    let &[role, channel, count, id] = s else {
        return None;
    };
    let id = MigrationId::from_bytes([(id % 4).wrapping_add(1); 16])?;
    let channel = u16::from(channel % 70);
    let count = u16::from(count % 70);
    if role % 2 == 0 {
        Preamble::main(id, count).ok()
    } else {
        Preamble::data(id, count, channel).ok()
    }
}

fn assemble(offers: &[Preamble]) {
    let mut a = SetAssembler::new();
    let mut refused = HashSet::new();
    let mut main: Option<Preamble> = None;
    for (token, &p) in offers.iter().enumerate() {
        let was_complete = a.is_complete();
        let out = a.offer(p, token);
        if p.role() == Role::Main && main.is_none() {
            main = Some(p);
        }
        for (t, why) in out {
            assert!(t <= token, "refused a connection not yet offered");
            assert!(refused.insert(t), "connection {t} refused twice");
            let q = offers[t];
            match why {
                Refusal::SecondMain => assert_eq!(q.role(), Role::Main),
                Refusal::WrongMigration { expected, found } => {
                    assert_eq!(found, q.migration_id());
                    assert_eq!(Some(expected), main.map(|m| m.migration_id()));
                    assert_ne!(expected, found);
                }
                Refusal::WrongChannelCount { expected, found } => {
                    assert_eq!(found, q.data_channels());
                    assert_eq!(Some(expected), main.map(|m| m.data_channels()));
                    assert_ne!(expected, found);
                }
                Refusal::Duplicate(id) => assert_eq!(q.role(), Role::Data(id)),
                Refusal::TooManyWaiting => assert!(main.is_none() && t == token),
                Refusal::Complete => assert!(was_complete && t == token),
                other => panic!("unexpected refusal {other:?}"),
            }
        }
        let (filled, held) = a.counts();
        assert!(held <= usize::from(MAX_DATA_CHANNELS));
        if a.main().is_some() {
            assert_eq!(held, 0, "data channels held after the main one came");
            assert!(filled <= usize::from(a.main().map_or(0, |m| m.data_channels())));
        }
        if was_complete {
            assert!(a.is_complete());
        }
    }
    let (filled, held) = a.counts();
    match a.finish() {
        Ok((m, main_token, data)) => {
            assert_eq!(Some(m), main);
            assert_eq!(offers[main_token], m);
            assert_eq!(data.len(), usize::from(m.data_channels()));
            let mut all = refused.clone();
            assert!(all.insert(main_token));
            for (ch, &t) in data.iter().enumerate() {
                let q = offers[t];
                assert_eq!(q.role(), Role::Data(ch as u16));
                assert_eq!(q.migration_id(), m.migration_id());
                assert_eq!(q.data_channels(), m.data_channels());
                assert!(all.insert(t), "connection {t} both in the set and refused");
            }
            // Offers after completion were refused; none went missing.
            assert_eq!(all.len(), offers.len());
        }
        Err(a) => {
            assert!(!a.is_complete());
            let in_main = usize::from(a.main().is_some());
            assert_eq!(refused.len() + filled + held + in_main, offers.len());
        }
    }
}
