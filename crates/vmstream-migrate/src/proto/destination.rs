//! The destination's side of the protocol, one type per phase:
//!
//! ```text
//! AwaitHello ──hello──> Receiving ──complete──> Verifying ──verify──> AwaitGo ──go──> run, answer done
//! ```
//!
//! Each transition takes what arrived (a message, a device state, the digests
//! of what was loaded) and returns the next phase with the message to send
//! back. A failed transition returns the error, and for a hello the refusal
//! to send; the driver then discards everything and never resumes. Nothing
//! here touches a socket or the VM.

use std::collections::BTreeMap;

use vmstream::DeviceState;

use super::{negotiate, Accept, Control, Digests, Local};
use crate::Error;

/// Phase 1: waiting for the source's hello.
#[derive(Debug)]
pub struct AwaitHello {
    local: Local,
    data_connected: usize,
}

/// A hello this destination cannot take: the error to report here and the
/// refusal to send back.
#[derive(Debug)]
pub struct Refusal {
    /// What went wrong.
    pub error: Error,
    /// The message for the source, when there is one to send.
    pub reply: Option<Box<Control>>,
}

impl Refusal {
    fn refuse(reason: String) -> Refusal {
        Refusal {
            reply: Some(Box::new(Control::Refuse {
                reason: reason.clone(),
            })),
            error: Error::refused(reason),
        }
    }
}

impl AwaitHello {
    /// A destination that can load `local`, with `data_connected` data
    /// channels connected.
    pub fn new(local: Local, data_connected: usize) -> AwaitHello {
        AwaitHello {
            local,
            data_connected,
        }
    }

    /// The source's first message: returns the next phase and the `accept`
    /// to send back, or why not.
    pub fn hello(self, msg: Control) -> Result<(Receiving, Control), Refusal> {
        let hello = match msg {
            Control::Hello(h) => h,
            other => {
                return Err(Refusal {
                    error: Error::peer(format!("expected hello, got {}", other.name())),
                    reply: None,
                })
            }
        };
        let accept = negotiate(&hello, &self.local).map_err(Refusal::refuse)?;
        if usize::from(hello.data_channels) != self.data_connected {
            return Err(Refusal::refuse(format!(
                "the source announced {} data channels, {} connected",
                hello.data_channels, self.data_connected
            )));
        }
        let reply = Control::Accept(accept.clone());
        Ok((
            Receiving {
                accept,
                devices: Vec::new(),
                epochs: 0,
            },
            reply,
        ))
    }
}

/// Phase 2: pages arrive on every channel; the main channel carries epoch
/// barriers, then every device's state, then `complete`.
#[derive(Debug)]
pub struct Receiving {
    accept: Accept,
    devices: Vec<DeviceState>,
    epochs: u32,
}

impl Receiving {
    /// The negotiated set.
    pub fn accept(&self) -> &Accept {
        &self.accept
    }

    /// An epoch barrier on the main channel; returns how many have passed.
    pub fn epoch(&mut self, epoch: u32) -> Result<u32, Error> {
        if epoch != self.epochs {
            return Err(Error::peer(format!(
                "main channel: epoch {epoch} after {} epochs",
                self.epochs
            )));
        }
        self.epochs += 1;
        Ok(self.epochs)
    }

    /// A device's state: checked against the negotiated set at once, loaded
    /// after `complete`.
    pub fn device(&mut self, d: DeviceState) -> Result<(), Error> {
        let Some(&want) = self.accept.devices.get(&d.name) else {
            return Err(Error::peer(format!("device {} was not negotiated", d.name)));
        };
        if d.version != want {
            return Err(Error::peer(format!(
                "device {}: state version {} sent, {want} negotiated",
                d.name, d.version
            )));
        }
        if self.devices.iter().any(|x| x.name == d.name) {
            return Err(Error::peer(format!("device {} sent twice", d.name)));
        }
        self.devices.push(d);
        Ok(())
    }

    /// A control message: `complete` ends the transfer; anything else is an
    /// error.
    pub fn control(self, msg: Control) -> Result<Verifying, Error> {
        match msg {
            Control::Complete(digests) => {
                if self.devices.len() != self.accept.devices.len() {
                    return Err(Error::peer(format!(
                        "{} device states received, {} negotiated",
                        self.devices.len(),
                        self.accept.devices.len()
                    )));
                }
                if digests.rounds != self.epochs {
                    return Err(Error::peer(format!(
                        "the source sent {} rounds, {} epoch barriers arrived",
                        digests.rounds, self.epochs
                    )));
                }
                Ok(Verifying {
                    devices: self.devices,
                    digests,
                })
            }
            Control::Failed { reason } => Err(Error::peer(format!("source failed: {reason}"))),
            other => Err(Error::peer(format!(
                "unexpected {} during precopy",
                other.name()
            ))),
        }
    }
}

/// Phase 3: everything arrived; the driver loads the devices, then hands
/// the digests of what it loaded and of memory to [`Verifying::verify`].
#[derive(Debug)]
pub struct Verifying {
    devices: Vec<DeviceState>,
    digests: Digests,
}

impl Verifying {
    /// The device states to load, in the order sent.
    pub fn devices(&self) -> &[DeviceState] {
        &self.devices
    }

    /// Compares what was loaded (each device saved back after loading) and
    /// guest memory with the source's digests; returns the phase waiting for
    /// `go` and the `ready` to send.
    pub fn verify(
        self,
        devices: &BTreeMap<String, u32>,
        memory: &BTreeMap<String, u32>,
    ) -> Result<(AwaitGo, Control), Error> {
        for (name, want) in &self.digests.devices {
            if devices.get(name) != Some(want) {
                return Err(Error::peer(format!(
                    "device {name}: the loaded state does not match the source's digest"
                )));
            }
        }
        if devices.len() != self.digests.devices.len() {
            return Err(Error::peer(format!(
                "{} devices loaded, the source sent digests for {}",
                devices.len(),
                self.digests.devices.len()
            )));
        }
        if *memory != self.digests.regions {
            let bad: Vec<&String> = memory
                .iter()
                .filter(|(k, v)| self.digests.regions.get(*k) != Some(v))
                .map(|(k, _)| k)
                .chain(
                    self.digests
                        .regions
                        .keys()
                        .filter(|k| !memory.contains_key(*k)),
                )
                .collect();
            return Err(Error::peer(format!(
                "memory of regions {bad:?} does not match the source's digest"
            )));
        }
        Ok((AwaitGo(()), Control::Ready))
    }
}

/// Phase 4: verified; the VM may run only once `go` arrives.
#[derive(Debug)]
pub struct AwaitGo(());

impl AwaitGo {
    /// The source's next message (`None` on a one-way channel, where the
    /// stream's end is the go). On `go`, resume the vCPUs and answer with
    /// the returned `done`.
    pub fn answer(self, msg: Option<Control>) -> Result<Control, Error> {
        match msg {
            None | Some(Control::Go) => Ok(Control::Done),
            Some(Control::Failed { reason }) => {
                Err(Error::peer(format!("source failed: {reason}")))
            }
            Some(other) => Err(Error::peer(format!("expected go, got {}", other.name()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{DeviceOffer, Features, Hello, RegionInfo};
    use super::*;

    fn local() -> Local {
        Local {
            page_size: 4096,
            regions: vec![RegionInfo {
                id: 0,
                name: "ram0".into(),
                size: 1 << 20,
            }],
            features: Features::default(),
            devices: [("cpu0".to_owned(), ("cpu".to_owned(), 1..=2))].into(),
            max_data_channels: 4,
        }
    }

    fn hello(channels: u16) -> Control {
        Control::Hello(Hello {
            protocol: 1,
            min_protocol: 1,
            software: "t".into(),
            page_size: 4096,
            regions: local().regions,
            data_channels: channels,
            features: Features::default(),
            devices: vec![DeviceOffer {
                name: "cpu0".into(),
                type_name: "cpu".into(),
                versions: vec![2],
            }],
        })
    }

    fn device(name: &str, version: u32) -> DeviceState {
        DeviceState {
            name: name.into(),
            instance_id: 0,
            type_name: "cpu".into(),
            version,
            value: vmstream::Value::U64(7),
        }
    }

    fn digests(rounds: u32) -> Control {
        Control::Complete(Digests {
            regions: [("ram0".to_owned(), 1)].into(),
            devices: [("cpu0".to_owned(), 9)].into(),
            rounds,
        })
    }

    #[test]
    fn a_whole_migration_through_the_phases() {
        let (mut r, reply) = AwaitHello::new(local(), 2).hello(hello(2)).unwrap();
        assert_eq!(reply.name(), "accept");
        assert_eq!(r.accept().devices["cpu0"], 2);
        assert_eq!(r.epoch(0).unwrap(), 1);
        assert_eq!(r.epoch(1).unwrap(), 2);
        r.device(device("cpu0", 2)).unwrap();
        let v = r.control(digests(2)).unwrap();
        assert_eq!(v.devices().len(), 1);
        let (go, ready) = v
            .verify(&[("cpu0".into(), 9)].into(), &[("ram0".into(), 1)].into())
            .unwrap();
        assert_eq!(ready, Control::Ready);
        assert_eq!(go.answer(Some(Control::Go)).unwrap(), Control::Done);
    }

    #[test]
    fn a_bad_hello_is_refused_with_a_reply() {
        let e = AwaitHello::new(local(), 1).hello(hello(2)).unwrap_err();
        assert!(e.error.to_string().contains("2 data channels"), "{e:?}");
        assert!(matches!(e.reply.as_deref(), Some(Control::Refuse { .. })));
        let e = AwaitHello::new(local(), 0).hello(Control::Go).unwrap_err();
        assert!(e.reply.is_none());
        assert!(e.error.to_string().contains("expected hello, got go"));
    }

    #[test]
    fn out_of_order_or_wrong_records_fail() {
        let start = || AwaitHello::new(local(), 0).hello(hello(0)).unwrap().0;
        let mut r = start();
        assert!(r.epoch(1).is_err());
        let mut r = start();
        assert!(r
            .device(device("cpu0", 1))
            .unwrap_err()
            .to_string()
            .contains("negotiated"));
        assert!(r.device(device("nic0", 2)).is_err());
        r.device(device("cpu0", 2)).unwrap();
        assert!(r
            .device(device("cpu0", 2))
            .unwrap_err()
            .to_string()
            .contains("twice"));
        // A complete that claims rounds that did not arrive.
        assert!(r
            .control(digests(3))
            .unwrap_err()
            .to_string()
            .contains("rounds"));
        // Complete before every device.
        assert!(start().control(digests(0)).is_err());
        assert!(start().control(Control::Go).is_err());
    }

    #[test]
    fn digests_that_do_not_match_fail_naming_what() {
        let verifying = || {
            let mut r = AwaitHello::new(local(), 0).hello(hello(0)).unwrap().0;
            r.device(device("cpu0", 2)).unwrap();
            r.control(digests(0)).unwrap()
        };
        let ram = [("ram0".to_owned(), 1)].into();
        let e = verifying()
            .verify(&[("cpu0".into(), 8)].into(), &ram)
            .unwrap_err();
        assert!(e.to_string().contains("device cpu0"), "{e}");
        let e = verifying()
            .verify(&[("cpu0".into(), 9)].into(), &[("ram0".into(), 2)].into())
            .unwrap_err();
        assert!(e.to_string().contains("ram0"), "{e}");
        let e = verifying()
            .verify(&[("cpu0".into(), 9)].into(), &BTreeMap::new())
            .unwrap_err();
        assert!(e.to_string().contains("ram0"), "{e}");
    }

    #[test]
    fn only_go_lets_the_vm_run() {
        let go = || {
            let mut r = AwaitHello::new(local(), 0).hello(hello(0)).unwrap().0;
            r.device(device("cpu0", 2)).unwrap();
            let v = r.control(digests(0)).unwrap();
            v.verify(&[("cpu0".into(), 9)].into(), &[("ram0".into(), 1)].into())
                .unwrap()
                .0
        };
        assert!(go().answer(Some(Control::Ready)).is_err());
        let failed = Control::Failed {
            reason: "cancelled".into(),
        };
        assert!(go().answer(Some(failed)).is_err());
        assert_eq!(go().answer(None).unwrap(), Control::Done);
    }
}
