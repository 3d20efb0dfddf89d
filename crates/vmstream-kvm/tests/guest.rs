//! The KVM guest on its own: it runs, dirties pages KVM reports, and its
//! saved state restores into a second VM that continues it. Skipped (with
//! a message) where /dev/kvm cannot be opened.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns: a failure is a test failure

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::path::Path;

use vmstream_kvm::{kvm_available, Config, Fill, KvmGuest, KVM_DEVICE};
use vmstream_migrate::vm::{DirtyLog, GuestMemory, Vcpus};

fn kvm() -> bool {
    match kvm_available(Path::new(KVM_DEVICE)) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("skipped: {e}");
            false
        }
    }
}

type Lines = Arc<Mutex<Vec<String>>>;

fn config(memory: u64, vcpus: u8, boot: bool, lines: &Lines) -> Config {
    let l = lines.clone();
    Config {
        device: KVM_DEVICE.into(),
        memory,
        vcpus,
        fill: Fill::Zero,
        seed: 1,
        boot,
        vcpu_state_version: vmstream_kvm::state::VCPU_VERSION,
        sink: Arc::new(move |s: &str| l.lock().unwrap().push(s.to_owned())),
    }
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(10), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn counters(lines: &Lines) -> Vec<u64> {
    lines
        .lock()
        .unwrap()
        .iter()
        .map(|l| {
            l.strip_prefix("counter ")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("unexpected serial line {l:?}"))
        })
        .collect()
}

#[test]
fn runs_prints_and_dirties() {
    if !kvm() {
        return;
    }
    let lines = Lines::default();
    let g = KvmGuest::new(config(8 << 20, 2, true, &lines)).unwrap();
    g.set_dirty_rate(2000).unwrap();
    g.start().unwrap();
    g.resume().unwrap();
    wait_for("three serial lines", || lines.lock().unwrap().len() >= 3);
    let c = counters(&lines);
    assert_eq!(c[..3], [10, 20, 30], "{c:?}");
    let d = g.fetch_and_clear().unwrap();
    assert!(d[&0].count() > 10, "{} dirty pages", d[&0].count());
    // Let the digest cache read chunks the guest goes on writing.
    std::thread::sleep(Duration::from_millis(100));
    g.pause().unwrap();
    // The cached digest, with what the dirty log reports since the last
    // fetch, is the whole memory's CRC; and the next fetch still has them.
    let mut all = vec![0u8; 8 << 20];
    g.read(0, 0, &mut all).unwrap();
    let region = g.regions()[0].clone();
    assert_eq!(g.crc32c(&region).unwrap(), vmstream::crc32c(&all));
    assert!(g.fetch_and_clear().unwrap()[&0].count() > 0);
    let written = g.pages_written();
    assert!(written.iter().all(|&w| w > 0), "{written:?}");
    assert!(g.counter() >= 30);
    assert!(g.error().is_none());
}

#[test]
fn state_restores_into_another_vm() {
    restore(vmstream_kvm::state::VCPU_VERSION);
}

/// The previous release's vCPU state (no XCRs) loads through the transform.
#[test]
fn version_1_state_restores_through_the_transform() {
    restore(1);
}

fn restore(version: u32) {
    if !kvm() {
        return;
    }
    let (la, lb) = (Lines::default(), Lines::default());
    let a = KvmGuest::new(Config {
        vcpu_state_version: version,
        ..config(4 << 20, 2, true, &la)
    })
    .unwrap();
    a.set_dirty_rate(500).unwrap();
    a.resume().unwrap();
    wait_for("two lines", || la.lock().unwrap().len() >= 2);
    a.pause().unwrap();
    let at = a.counter();
    let b = KvmGuest::new(config(4 << 20, 2, false, &lb)).unwrap();
    let mut buf = vec![0u8; 4 << 20];
    a.read(0, 0, &mut buf).unwrap();
    b.write(0, 0, &buf).unwrap();
    let (va, vb) = (a.vm(), b.vm());
    {
        let ra = va.devices.lock().unwrap();
        let mut rb = vb.devices.lock().unwrap();
        for d in ra.iter() {
            let v = d.save().unwrap();
            if d.name() == "cpu0" {
                assert_eq!(d.version(), version);
                assert_eq!(v.to_json()["struct"].get("xcrs").is_some(), version > 1);
            }
            rb.get_mut(d.name()).unwrap().load(d.version(), &v).unwrap();
        }
    }
    assert_eq!(a.checksum().unwrap(), b.checksum().unwrap());
    // The parallel checksum is the CRC32C of the whole region.
    assert_eq!(a.checksum().unwrap(), vmstream::crc32c(&buf));
    b.resume().unwrap();
    wait_for("b prints", || lb.lock().unwrap().len() >= 2);
    let c = counters(&lb);
    assert!(
        c[0] > at - at % 10,
        "b's counter {c:?} did not continue from {at}"
    );
    assert!(b.counter() > at);
    assert_eq!(a.counter(), at, "a stayed paused");
    assert!(b.error().is_none());
}
