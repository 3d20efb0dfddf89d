//! The I/O-free protocol core: control messages, negotiation, the
//! convergence rule, and each side's phases as types ([`source`],
//! [`destination`]). Nothing here reads a socket, a clock or the VM; the
//! drivers (`crate::source`, `crate::destination`) feed it what happened
//! and do what it says.

use std::collections::BTreeMap;

pub mod destination;
pub mod source;

use serde::{Deserialize, Serialize};
use vmstream::RecordKind;

/// Record kind of a live-migration control message (optional, so a recording
/// of the main channel reads with any tool). The body is one JSON object.
pub const CONTROL: RecordKind = RecordKind(0x0200);

/// The protocol version this build speaks.
pub const PROTOCOL: u32 = 1;
/// The oldest protocol version this build accepts.
pub const MIN_PROTOCOL: u32 = 1;
/// Largest control message accepted, in bytes.
pub const MAX_CONTROL: usize = 1 << 20;

/// One control message. On the wire: `{"msg": "hello", ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Control {
    /// Source → destination, first: what the source has and can do.
    Hello(Hello),
    /// Destination → source: the negotiated set.
    Accept(Accept),
    /// Destination → source: the migration cannot go ahead.
    Refuse {
        /// Why, for the operator.
        reason: String,
    },
    /// Source → destination, after the last pages and every device: digests to
    /// check what arrived against.
    Complete(Digests),
    /// Destination → source: everything loaded and verified; waiting for `go`.
    Ready,
    /// Either way: this side gives up.
    Failed {
        /// Why.
        reason: String,
    },
    /// Source → destination: the source has stopped for good; run the VM.
    Go,
    /// Destination → source: the VM runs on the destination.
    Done,
}

impl Control {
    /// Encodes the message as a control record body.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("control messages always serialize")
    }

    /// Decodes a control record body.
    pub fn decode(body: &[u8]) -> Result<Control, String> {
        if body.len() > MAX_CONTROL {
            return Err(format!(
                "control message of {} bytes exceeds {MAX_CONTROL}",
                body.len()
            ));
        }
        serde_json::from_slice(body).map_err(|e| format!("bad control message: {e}"))
    }

    /// The message's name, for errors.
    pub fn name(&self) -> &'static str {
        match self {
            Control::Hello(_) => "hello",
            Control::Accept(_) => "accept",
            Control::Refuse { .. } => "refuse",
            Control::Complete(_) => "complete",
            Control::Ready => "ready",
            Control::Failed { .. } => "failed",
            Control::Go => "go",
            Control::Done => "done",
        }
    }
}

/// A guest memory region as announced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionInfo {
    /// Region id (page batches use it as the block id).
    pub id: u32,
    /// Name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
}

/// A device as the source offers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DeviceOffer {
    /// Instance name.
    pub name: String,
    /// Device type.
    pub type_name: String,
    /// State versions the source can send, lowest first (the version it saves,
    /// plus any it can transform to).
    pub versions: Vec<u32>,
}

/// Optional features, each side's set; the intersection is used.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Features {
    /// Page-batch compressions supported, in order of preference: `zstd`, `lz4`.
    #[serde(default)]
    pub compression: Vec<String>,
    /// Checksums supported (`crc32c`: every record is checked).
    #[serde(default)]
    pub checksums: Vec<String>,
    /// Whether this side's channels are TLS with mutual authentication. A
    /// destination whose channels use TLS refuses a source that says they
    /// do not (a TLS-terminating hop in between).
    #[serde(default)]
    pub tls: bool,
}

/// The source's announcement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Hello {
    /// Highest protocol version the source speaks.
    pub protocol: u32,
    /// Lowest it accepts.
    pub min_protocol: u32,
    /// Writer identity, for messages.
    pub software: String,
    /// Guest page size.
    pub page_size: u32,
    /// Guest memory regions.
    pub regions: Vec<RegionInfo>,
    /// Number of data channels that follow the main one.
    pub data_channels: u16,
    /// Optional features.
    #[serde(default)]
    pub features: Features,
    /// Devices and the state versions the source can send.
    pub devices: Vec<DeviceOffer>,
}

/// The negotiated set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Accept {
    /// Protocol version both use.
    pub protocol: u32,
    /// Page compression to use, if any.
    pub compression: Option<String>,
    /// Checksums both check.
    pub checksums: Vec<String>,
    /// Whether every channel is TLS with mutual authentication.
    #[serde(default)]
    pub tls: bool,
    /// The state version to send for each device, by instance name.
    pub devices: BTreeMap<String, u32>,
}

/// What the destination must find after loading.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Digests {
    /// CRC32C of each region's whole contents, by region name.
    pub regions: BTreeMap<String, u32>,
    /// CRC32C of each device's state as saved (its canonical JSON), by name.
    pub devices: BTreeMap<String, u32>,
    /// Number of precopy rounds (epochs) sent.
    pub rounds: u32,
}

/// What the destination can load: its side of the negotiation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    /// Page size.
    pub page_size: u32,
    /// Regions.
    pub regions: Vec<RegionInfo>,
    /// Features.
    pub features: Features,
    /// Per device instance: (type, loadable versions).
    pub devices: BTreeMap<String, (String, std::ops::RangeInclusive<u32>)>,
    /// Most data channels accepted.
    pub max_data_channels: u16,
}

/// Negotiates: the destination's answer to `hello`.
pub fn negotiate(hello: &Hello, local: &Local) -> Result<Accept, String> {
    if hello.min_protocol > PROTOCOL || hello.protocol < MIN_PROTOCOL {
        return Err(format!(
            "protocol versions {}..={} offered, this destination speaks {MIN_PROTOCOL}..={PROTOCOL}",
            hello.min_protocol, hello.protocol
        ));
    }
    if hello.page_size != local.page_size {
        return Err(format!(
            "page size {} offered, the destination uses {}",
            hello.page_size, local.page_size
        ));
    }
    if hello.data_channels > local.max_data_channels {
        return Err(format!(
            "{} data channels offered, the destination accepts at most {}",
            hello.data_channels, local.max_data_channels
        ));
    }
    for r in &hello.regions {
        match local.regions.iter().find(|l| l.name == r.name) {
            None => return Err(format!("region {} has no counterpart here", r.name)),
            Some(l) if l.size != r.size || l.id != r.id => {
                return Err(format!(
                    "region {}: source has id {} and {} bytes, destination id {} and {} bytes",
                    r.name, r.id, r.size, l.id, l.size
                ))
            }
            Some(_) => {}
        }
    }
    if let Some(l) = local
        .regions
        .iter()
        .find(|l| !hello.regions.iter().any(|r| r.name == l.name))
    {
        return Err(format!("region {} is not sent by the source", l.name));
    }
    let mut devices = BTreeMap::new();
    for d in &hello.devices {
        let Some((ty, loads)) = local.devices.get(&d.name) else {
            return Err(format!(
                "device {} ({}) has no counterpart here",
                d.name, d.type_name
            ));
        };
        if *ty != d.type_name {
            return Err(format!(
                "device {} is a {} on the source but a {ty} here",
                d.name, d.type_name
            ));
        }
        let Some(v) = d.versions.iter().rev().find(|v| loads.contains(v)) else {
            return Err(format!(
                "device {} ({}): the source sends state versions {:?}, this destination loads {}..={}",
                d.name,
                d.type_name,
                d.versions,
                loads.start(),
                loads.end()
            ));
        };
        devices.insert(d.name.clone(), *v);
    }
    if let Some(name) = local.devices.keys().find(|n| !devices.contains_key(*n)) {
        return Err(format!("device {name} is not sent by the source"));
    }
    if local.features.tls && !hello.features.tls {
        return Err(
            "this destination's channels use TLS, the source says its channels do not".to_owned(),
        );
    }
    let compression = hello
        .features
        .compression
        .iter()
        .find(|c| local.features.compression.contains(c))
        .cloned();
    let checksums = hello
        .features
        .checksums
        .iter()
        .filter(|c| local.features.checksums.contains(c))
        .cloned()
        .collect();
    Ok(Accept {
        protocol: hello.protocol.min(PROTOCOL),
        compression,
        checksums,
        tls: hello.features.tls && local.features.tls,
        devices,
    })
}

/// The convergence rule, QEMU's: switch over once what is left to send fits
/// in `downtime_limit` at the bandwidth measured.
///
/// `remaining` and `device_bytes` in bytes, `bandwidth` in bytes per second,
/// `downtime_limit_ms` in milliseconds.
pub fn can_switch_over(
    remaining: u64,
    device_bytes: u64,
    bandwidth: f64,
    downtime_limit_ms: u64,
) -> bool {
    let threshold = bandwidth * downtime_limit_ms as f64 / 1000.0;
    (remaining.saturating_add(device_bytes)) as f64 <= threshold
}

/// Expected downtime in milliseconds for `remaining` bytes at `bandwidth`.
pub fn expected_downtime_ms(remaining: u64, bandwidth: f64) -> u64 {
    if bandwidth <= 0.0 {
        return u64::MAX;
    }
    (remaining as f64 * 1000.0 / bandwidth).ceil() as u64
}

/// Auto-converge: the throttle to apply after a round, QEMU's rule. Rounds
/// that dirty more than `trigger_pct` % of what they sent, twice in a row,
/// start throttling at `initial`; each further such pair adds `increment`, up
/// to `max`.
#[derive(Debug, Clone)]
pub struct Throttle {
    /// Current throttle, percent (0 = none).
    pub percent: u8,
    strikes: u32,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle::new()
    }
}

impl Throttle {
    /// No throttling yet.
    pub fn new() -> Throttle {
        Throttle {
            percent: 0,
            strikes: 0,
        }
    }

    /// Feeds one round; returns the new throttle if it changed.
    pub fn round(
        &mut self,
        dirtied: u64,
        sent: u64,
        trigger_pct: u8,
        initial: u8,
        increment: u8,
        max: u8,
    ) -> Option<u8> {
        if sent > 0 && dirtied.saturating_mul(100) > sent.saturating_mul(u64::from(trigger_pct)) {
            self.strikes += 1;
        } else {
            self.strikes = 0;
        }
        if self.strikes >= 2 {
            self.strikes = 0;
            let next = if self.percent == 0 {
                initial
            } else {
                self.percent.saturating_add(increment)
            }
            .min(max);
            if next != self.percent {
                self.percent = next;
                return Some(next);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> Local {
        let mut devices = BTreeMap::new();
        devices.insert("serial0".to_owned(), ("uart".to_owned(), 1..=2));
        Local {
            page_size: 4096,
            regions: vec![RegionInfo {
                id: 0,
                name: "ram0".into(),
                size: 1 << 20,
            }],
            features: Features {
                compression: vec!["lz4".into()],
                checksums: vec!["crc32c".into()],
                tls: false,
            },
            devices,
            max_data_channels: 8,
        }
    }

    fn hello() -> Hello {
        Hello {
            protocol: 1,
            min_protocol: 1,
            software: "t".into(),
            page_size: 4096,
            regions: local().regions,
            data_channels: 2,
            features: Features {
                compression: vec!["zstd".into(), "lz4".into()],
                checksums: vec!["crc32c".into()],
                tls: false,
            },
            devices: vec![DeviceOffer {
                name: "serial0".into(),
                type_name: "uart".into(),
                versions: vec![1, 2, 3],
            }],
        }
    }

    #[test]
    fn negotiation_takes_the_intersection() {
        let a = negotiate(&hello(), &local()).unwrap();
        assert_eq!(a.compression.as_deref(), Some("lz4"));
        assert_eq!(a.devices["serial0"], 2);
        assert_eq!(a.checksums, vec!["crc32c".to_owned()]);
    }

    #[test]
    fn negotiation_refuses_with_reasons() {
        let mut h = hello();
        h.devices[0].versions = vec![3];
        let e = negotiate(&h, &local()).unwrap_err();
        assert!(e.contains("serial0") && e.contains("1..=2"), "{e}");
        let mut h = hello();
        h.page_size = 65536;
        assert!(negotiate(&h, &local()).unwrap_err().contains("page size"));
        let mut h = hello();
        h.regions[0].size = 4096;
        assert!(negotiate(&h, &local()).unwrap_err().contains("ram0"));
        let mut h = hello();
        h.devices.clear();
        assert!(negotiate(&h, &local())
            .unwrap_err()
            .contains("not sent by the source"));
        let mut h = hello();
        h.min_protocol = 2;
        h.protocol = 3;
        assert!(negotiate(&h, &local()).unwrap_err().contains("protocol"));
        let mut h = hello();
        h.data_channels = 9;
        assert!(negotiate(&h, &local()).unwrap_err().contains("channels"));
    }

    #[test]
    fn a_peer_that_reports_no_features_gets_the_base_protocol() {
        let json =
            br#"{"msg":"hello","protocol":1,"min-protocol":1,"software":"x","page-size":4096,
            "regions":[{"id":0,"name":"ram0","size":1048576}],"data-channels":0,
            "devices":[{"name":"serial0","type-name":"uart","versions":[1]}]}"#;
        let Control::Hello(h) = Control::decode(json).unwrap() else {
            panic!()
        };
        let a = negotiate(&h, &local()).unwrap();
        assert_eq!(a.compression, None);
        assert!(a.checksums.is_empty());
        assert!(!a.tls);
    }

    #[test]
    fn tls_is_negotiated_and_a_tls_destination_refuses_a_plain_source() {
        let mut l = local();
        l.features.tls = true;
        let e = negotiate(&hello(), &l).unwrap_err();
        assert!(e.contains("TLS"), "{e}");
        let mut h = hello();
        h.features.tls = true;
        assert!(negotiate(&h, &l).unwrap().tls);
        // A plain destination behind a TLS-terminating hop answers plain (and
        // the source, which protects its channels, then refuses).
        assert!(!negotiate(&h, &local()).unwrap().tls);
    }

    #[test]
    fn control_messages_round_trip_and_reject_junk() {
        for m in [
            Control::Hello(hello()),
            Control::Ready,
            Control::Go,
            Control::Done,
            Control::Refuse { reason: "x".into() },
        ] {
            assert_eq!(Control::decode(&m.encode()).unwrap(), m);
        }
        assert!(Control::decode(br#"{"msg":"refuse","reason":"x","extra":1}"#).is_err());
        assert!(Control::decode(br#"{"msg":"launch"}"#).is_err());
        assert!(Control::decode(b"[]").is_err());
        assert!(Control::decode(&vec![b' '; MAX_CONTROL + 1]).is_err());
    }

    #[test]
    fn convergence_rule() {
        // 1 GB/s, 300 ms: 300 MB fit, 301 MB do not.
        assert!(can_switch_over(300_000_000, 0, 1e9, 300));
        assert!(!can_switch_over(300_000_001, 0, 1e9, 300));
        assert!(!can_switch_over(299_000_000, 2_000_000, 1e9, 300));
        assert!(!can_switch_over(1, 0, 0.0, 300));
        assert_eq!(expected_downtime_ms(500_000_000, 1e9), 500);
    }

    #[test]
    fn throttle_rises_after_two_bad_rounds() {
        let mut t = Throttle::new();
        assert_eq!(t.round(60, 100, 50, 20, 10, 99), None);
        assert_eq!(t.round(60, 100, 50, 20, 10, 99), Some(20));
        assert_eq!(t.round(10, 100, 50, 20, 10, 99), None);
        assert_eq!(t.round(60, 100, 50, 20, 10, 99), None);
        assert_eq!(t.round(60, 100, 50, 20, 10, 99), Some(30));
        t.percent = 95;
        t.round(60, 100, 50, 20, 10, 99);
        assert_eq!(t.round(60, 100, 50, 20, 10, 99), Some(99));
    }
}
