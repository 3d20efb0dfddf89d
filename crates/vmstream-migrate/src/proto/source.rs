//! The source's side of the protocol, one type per phase:
//!
//! ```text
//! Handshake ──answer──> Precopy ──round──> … ──round──> StopAndCopy ──complete──> AwaitReady ──answer──> Committed ──answer──> done
//!                                                                          └─(one-way)──> done
//! ```
//!
//! Each transition takes what happened (a message from the destination, what
//! a round sent and how long it took) and returns the next phase with what
//! the driver must do (a message to send, a throttle to apply). A transition
//! that fails returns the error to report; the driver then cuts the
//! connections and gives the VM back. Nothing here touches a socket, a clock
//! or the VM.

use std::collections::BTreeMap;

use super::{can_switch_over, expected_downtime_ms, Accept, Control, Digests, Hello, Throttle};
use crate::Error;

/// Convergence settings of one migration, with QEMU's names.
#[derive(Debug, Clone, PartialEq)]
pub struct Convergence {
    /// `downtime-limit`, milliseconds.
    pub downtime_limit_ms: u64,
    /// Estimated size of all device state, bytes (sent while paused).
    pub device_bytes: u64,
    /// Auto-converge settings, when the capability is on.
    pub auto_converge: Option<AutoConverge>,
}

/// QEMU's auto-converge parameters, in percent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AutoConverge {
    /// `throttle-trigger-threshold`.
    pub trigger: u8,
    /// `cpu-throttle-initial`.
    pub initial: u8,
    /// `cpu-throttle-increment`.
    pub increment: u8,
    /// `max-cpu-throttle`.
    pub max: u8,
}

/// Phase 1: the hello is on its way; waiting for the destination's answer.
#[derive(Debug)]
pub struct Handshake {
    one_way: bool,
    tls: bool,
    saves: BTreeMap<String, u32>,
    convergence: Convergence,
}

impl Handshake {
    /// Starts a migration: returns the phase and the hello to send on the
    /// main channel. `one_way` channels (`exec`, `file`) get no answer.
    pub fn start(hello: Hello, one_way: bool, convergence: Convergence) -> (Handshake, Control) {
        let saves = hello
            .devices
            .iter()
            .map(|d| {
                (
                    d.name.clone(),
                    d.versions.iter().copied().max().unwrap_or(0),
                )
            })
            .collect();
        let phase = Handshake {
            one_way,
            tls: hello.features.tls,
            saves,
            convergence,
        };
        (phase, Control::Hello(hello))
    }

    /// Whether an answer is to be read (not on a one-way channel).
    pub fn expects_answer(&self) -> bool {
        !self.one_way
    }

    /// The destination's answer (`None` on a one-way channel, where the
    /// stream carries the base protocol and the versions this build saves).
    /// The accepted set goes into the stream's `info` record.
    pub fn answer(self, reply: Option<Control>) -> Result<Precopy, Error> {
        let accept = match (reply, self.one_way) {
            (None, true) => Accept {
                protocol: super::PROTOCOL,
                compression: None,
                checksums: vec!["crc32c".to_owned()],
                tls: false,
                devices: self.saves.clone(),
            },
            (None, false) => return Err(Error::peer("the destination did not answer the hello")),
            (Some(_), true) => return Err(Error::internal("an answer on a one-way channel")),
            (Some(Control::Accept(a)), false) => a,
            (Some(Control::Refuse { reason }), false) => return Err(Error::refused(reason)),
            (Some(other), false) => {
                return Err(Error::peer(format!(
                    "expected accept, got {}",
                    other.name()
                )))
            }
        };
        if accept.tls && !self.tls {
            return Err(Error::peer(
                "the destination reports TLS on channels this source opened in plain text",
            ));
        }
        if self.tls && !accept.tls && !self.one_way {
            return Err(Error::refused(
                "the destination did not confirm TLS on channels this source protects with it",
            ));
        }
        for (name, v) in &accept.devices {
            match self.saves.get(name) {
                None => {
                    return Err(Error::peer(format!(
                        "the destination accepted device {name}, which the source did not offer"
                    )))
                }
                Some(saves) if saves != v => {
                    return Err(Error::refused(format!(
                        "device {name}: destination wants state version {v}, this build saves {saves} and has no transform"
                    )))
                }
                Some(_) => {}
            }
        }
        if let Some(name) = self.saves.keys().find(|n| !accept.devices.contains_key(*n)) {
            return Err(Error::peer(format!(
                "the destination's answer leaves out device {name}"
            )));
        }
        Ok(Precopy {
            accept,
            one_way: self.one_way,
            epoch: 0,
            convergence: self.convergence,
            throttle: Throttle::new(),
        })
    }
}

/// What one precopy round did, as the driver measured it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Round {
    /// Bytes the round put on the wire (all channels).
    pub sent: u64,
    /// How long the round took, seconds.
    pub secs: f64,
    /// Pages the dirty log reported after the round.
    pub dirty_pages: u64,
    /// Guest page size, bytes.
    pub page_size: u64,
}

/// The estimates after a round, for `query-migrate`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// Bandwidth of the round, bytes per second.
    pub bandwidth: f64,
    /// Bytes still to send.
    pub remaining: u64,
    /// Pages dirtied per second.
    pub dirty_pages_rate: u64,
    /// Expected downtime if the switch-over came now, milliseconds.
    pub expected_downtime_ms: u64,
    /// A new vCPU throttle to apply (auto-converge), percent.
    pub throttle: Option<u8>,
}

/// Phase 2: precopy rounds. Round `epoch` sends the pages dirty before it,
/// then an epoch barrier on every channel.
#[derive(Debug)]
pub struct Precopy {
    accept: Accept,
    one_way: bool,
    epoch: u32,
    convergence: Convergence,
    throttle: Throttle,
}

/// Where a round leads.
#[derive(Debug)]
pub enum AfterRound {
    /// Another round, with epoch [`Precopy::epoch`].
    Again(Precopy),
    /// What is left fits in the downtime limit: pause the vCPUs and stop and
    /// copy.
    SwitchOver(StopAndCopy),
}

impl Precopy {
    /// The negotiated set.
    pub fn accept(&self) -> &Accept {
        &self.accept
    }

    /// The epoch of the next round.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// A round ended: switch over when what is left fits in the downtime
    /// limit at the bandwidth just measured (QEMU's rule); otherwise go on,
    /// throttling the vCPUs when auto-converge says so.
    pub fn round(mut self, r: Round) -> (AfterRound, Estimate) {
        let secs = r.secs.max(1e-6);
        let bandwidth = r.sent as f64 / secs;
        let remaining = r.dirty_pages.saturating_mul(r.page_size);
        let c = &self.convergence;
        let mut estimate = Estimate {
            bandwidth,
            remaining,
            dirty_pages_rate: (r.dirty_pages as f64 / secs) as u64,
            expected_downtime_ms: expected_downtime_ms(
                remaining.saturating_add(c.device_bytes),
                bandwidth,
            ),
            throttle: None,
        };
        self.epoch += 1;
        if can_switch_over(remaining, c.device_bytes, bandwidth, c.downtime_limit_ms) {
            let next = StopAndCopy {
                accept: self.accept,
                one_way: self.one_way,
                epoch: self.epoch,
            };
            return (AfterRound::SwitchOver(next), estimate);
        }
        if let Some(a) = c.auto_converge {
            estimate.throttle =
                self.throttle
                    .round(remaining, r.sent, a.trigger, a.initial, a.increment, a.max);
        }
        (AfterRound::Again(self), estimate)
    }
}

/// Phase 3: the vCPUs are paused; the last dirty pages go as epoch
/// [`StopAndCopy::epoch`], then every device, then the digests.
#[derive(Debug)]
pub struct StopAndCopy {
    accept: Accept,
    one_way: bool,
    epoch: u32,
}

/// Where the complete message leads.
#[derive(Debug)]
pub enum AfterComplete {
    /// Wait for the destination's `ready`.
    AwaitReady(AwaitReady),
    /// One-way: the stream is whole; end it. The VM stays paused here, as
    /// QEMU's does after a migration to a file.
    Finished,
}

impl StopAndCopy {
    /// The epoch of the last pages.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// The state version to send for device `name`.
    pub fn device_version(&self, name: &str) -> Result<u32, Error> {
        self.accept
            .devices
            .get(name)
            .copied()
            .ok_or_else(|| Error::internal(format!("device {name} was not negotiated")))
    }

    /// Everything is sent: returns the `complete` message carrying the
    /// digests, and the next phase.
    pub fn complete(
        self,
        regions: BTreeMap<String, u32>,
        devices: BTreeMap<String, u32>,
    ) -> (AfterComplete, Control) {
        let msg = Control::Complete(Digests {
            regions,
            devices,
            rounds: self.epoch + 1,
        });
        let next = if self.one_way {
            AfterComplete::Finished
        } else {
            AfterComplete::AwaitReady(AwaitReady(()))
        };
        (next, msg)
    }
}

/// Phase 4: waiting for the destination to load and verify.
#[derive(Debug)]
pub struct AwaitReady(());

impl AwaitReady {
    /// The destination's answer. On `ready`, returns the committed phase and
    /// `go`: once `go` is on the wire the destination may run, so the source
    /// must never resume.
    pub fn answer(self, msg: Control) -> Result<(Committed, Control), Error> {
        match msg {
            Control::Ready => Ok((Committed(()), Control::Go)),
            Control::Failed { reason } => Err(Error::peer(format!("destination failed: {reason}"))),
            other => Err(Error::peer(format!("expected ready, got {}", other.name()))),
        }
    }
}

/// Phase 5: `go` sent; waiting for `done`. Whatever happens now, the source
/// stays paused.
#[derive(Debug)]
pub struct Committed(());

impl Committed {
    /// The destination's last message: `done` means the VM runs there.
    pub fn answer(self, msg: Control) -> Result<(), Error> {
        match msg {
            Control::Done => Ok(()),
            other => Err(Error::peer(format!("expected done, got {}", other.name()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{DeviceOffer, Features, RegionInfo};
    use super::*;

    fn hello(tls: bool) -> Hello {
        Hello {
            protocol: 1,
            min_protocol: 1,
            software: "t".into(),
            page_size: 4096,
            regions: vec![RegionInfo {
                id: 0,
                name: "ram0".into(),
                size: 1 << 20,
            }],
            data_channels: 0,
            features: Features {
                tls,
                ..Features::default()
            },
            devices: vec![DeviceOffer {
                name: "cpu0".into(),
                type_name: "cpu".into(),
                versions: vec![2],
            }],
        }
    }

    fn conv() -> Convergence {
        Convergence {
            downtime_limit_ms: 300,
            device_bytes: 0,
            auto_converge: Some(AutoConverge {
                trigger: 50,
                initial: 20,
                increment: 10,
                max: 99,
            }),
        }
    }

    fn accept(tls: bool, v: u32) -> Control {
        Control::Accept(Accept {
            protocol: 1,
            compression: None,
            checksums: vec![],
            tls,
            devices: [("cpu0".to_owned(), v)].into(),
        })
    }

    #[test]
    fn a_whole_migration_through_the_phases() {
        let (hs, msg) = Handshake::start(hello(false), false, conv());
        assert_eq!(msg.name(), "hello");
        assert!(hs.expects_answer());
        let mut p = hs.answer(Some(accept(false, 2))).unwrap();
        // 100 MB/s; 40 MB dirty does not fit in 300 ms, 1000 pages do.
        let mut rounds = 0;
        let stop = loop {
            let dirty_pages = if rounds < 3 { 10_000 } else { 1_000 };
            let r = Round {
                sent: 100_000_000,
                secs: 1.0,
                dirty_pages,
                page_size: 4096,
            };
            rounds += 1;
            match p.round(r) {
                (AfterRound::Again(next), e) => {
                    assert_eq!(e.remaining, 40_960_000);
                    // Rounds dirtying less than half of what they sent do not throttle.
                    assert_eq!(e.throttle, None);
                    p = next;
                }
                (AfterRound::SwitchOver(s), e) => {
                    assert_eq!(e.expected_downtime_ms, 41);
                    break s;
                }
            }
        };
        assert_eq!(rounds, 4);
        assert_eq!(stop.epoch(), 4);
        assert_eq!(stop.device_version("cpu0").unwrap(), 2);
        assert!(stop.device_version("nic0").is_err());
        let (next, msg) = stop.complete(BTreeMap::new(), BTreeMap::new());
        let Control::Complete(d) = msg else { panic!() };
        assert_eq!(d.rounds, 5);
        let AfterComplete::AwaitReady(w) = next else {
            panic!()
        };
        let (c, go) = w.answer(Control::Ready).unwrap();
        assert_eq!(go, Control::Go);
        c.answer(Control::Done).unwrap();
    }

    #[test]
    fn rounds_that_do_not_shrink_throttle() {
        let (hs, _) = Handshake::start(hello(false), false, conv());
        let mut p = hs.answer(Some(accept(false, 2))).unwrap();
        let mut throttles = vec![];
        for _ in 0..4 {
            let r = Round {
                sent: 4096 * 1000,
                secs: 1.0,
                dirty_pages: 900,
                page_size: 4096,
            };
            let (AfterRound::Again(next), e) = p.round(r) else {
                panic!()
            };
            throttles.extend(e.throttle);
            p = next;
        }
        assert_eq!(throttles, vec![20, 30]);
    }

    #[test]
    fn wrong_answers_fail_the_handshake() {
        let answer = |reply, tls| {
            let (hs, _) = Handshake::start(hello(tls), false, conv());
            hs.answer(reply).unwrap_err().to_string()
        };
        assert!(answer(None, false).contains("did not answer"));
        assert!(answer(Some(Control::Go), false).contains("expected accept, got go"));
        let refuse = Control::Refuse {
            reason: "no room".into(),
        };
        assert_eq!(answer(Some(refuse), false), "no room");
        assert!(answer(Some(accept(false, 3)), false).contains("state version 3"));
        assert!(answer(Some(accept(true, 2)), false).contains("plain text"));
        assert!(answer(Some(accept(false, 2)), true).contains("confirm TLS"));
        let mut a = Accept {
            protocol: 1,
            compression: None,
            checksums: vec![],
            tls: false,
            devices: BTreeMap::new(),
        };
        assert!(answer(Some(Control::Accept(a.clone())), false).contains("leaves out device cpu0"));
        a.devices.insert("cpu9".into(), 1);
        assert!(answer(Some(Control::Accept(a)), false).contains("did not offer"));
    }

    #[test]
    fn one_way_takes_the_base_protocol_and_ends_after_complete() {
        let (hs, _) = Handshake::start(hello(false), true, conv());
        assert!(!hs.expects_answer());
        let p = hs.answer(None).unwrap();
        assert_eq!(p.accept().devices["cpu0"], 2);
        assert_eq!(p.accept().compression, None);
        let r = Round {
            sent: 1 << 20,
            secs: 0.01,
            dirty_pages: 0,
            page_size: 4096,
        };
        let (AfterRound::SwitchOver(s), _) = p.round(r) else {
            panic!()
        };
        let (next, _) = s.complete(BTreeMap::new(), BTreeMap::new());
        assert!(matches!(next, AfterComplete::Finished));
    }

    #[test]
    fn after_go_only_done_is_success() {
        let (hs, _) = Handshake::start(hello(false), false, conv());
        let p = hs.answer(Some(accept(false, 2))).unwrap();
        let r = Round {
            sent: 1,
            secs: 1.0,
            dirty_pages: 0,
            page_size: 4096,
        };
        let (AfterRound::SwitchOver(s), _) = p.round(r) else {
            panic!()
        };
        let (AfterComplete::AwaitReady(w), _) = s.complete(BTreeMap::new(), BTreeMap::new()) else {
            panic!()
        };
        let failed = Control::Failed {
            reason: "memory of regions [\"ram0\"] does not match".into(),
        };
        assert!(w.answer(failed).unwrap_err().to_string().contains("ram0"));
        let (hs, _) = Handshake::start(hello(false), false, conv());
        let p = hs.answer(Some(accept(false, 2))).unwrap();
        let (AfterRound::SwitchOver(s), _) = p.round(r) else {
            panic!()
        };
        let (AfterComplete::AwaitReady(w), _) = s.complete(BTreeMap::new(), BTreeMap::new()) else {
            panic!()
        };
        let (c, _) = w.answer(Control::Ready).unwrap();
        assert!(c.answer(Control::Ready).is_err());
    }
}
