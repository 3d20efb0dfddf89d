//! A real KVM guest migrates live between two `vmstream guest --kvm`
//! processes driven only by QMP: over TCP and Unix sockets with 1 to 4 data
//! channels, idle and dirtying enough to need several rounds; a killed
//! destination and a cut channel leave the source guest running; a snapshot
//! of a paused guest (to a `file:` channel) restores into a new process, also
//! one saved with the previous vCPU state version, which loads through a
//! transform. Without KVM the command says so in one line and exits 2.
//!
//! After every migration the destination holds the frozen source's memory,
//! counter and serial state; once running, its serial port goes on printing
//! from the next line the source would have printed. Skipped, with the
//! reason, where /dev/kvm cannot be opened.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns: a failure is a test failure

use std::path::Path;
use std::thread;
use std::time::Duration;

use serde_json::{json, Value};
use tempfile::TempDir;

mod common;
use common::*;

fn kvm() -> bool {
    match vmstream_kvm::kvm_available(Path::new(vmstream_kvm::KVM_DEVICE)) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("skipped: {e}");
            false
        }
    }
}

/// A running KVM guest.
fn source(dir: &Path, name: &str, memory: &str, vcpus: &str, rate: &str, extra: &[&str]) -> Guest {
    let mut args = vec![
        "--kvm",
        "--memory",
        memory,
        "--vcpus",
        vcpus,
        "--dirty-rate",
        rate,
    ];
    args.extend_from_slice(extra);
    Guest::spawn(dir, name, &args)
}

/// A KVM guest waiting for `migrate-incoming`, paused after it until `cont`.
fn destination(dir: &Path, name: &str, memory: &str, vcpus: &str) -> Guest {
    Guest::spawn(
        dir,
        name,
        &[
            "--kvm",
            "--memory",
            memory,
            "--vcpus",
            vcpus,
            "--incoming",
            "-S",
        ],
    )
}

/// The numbers of the `counter N` lines a guest printed.
fn serial_counters(g: &Guest) -> Vec<u64> {
    g.log()
        .lines()
        .filter_map(|l| l.strip_prefix("counter "))
        .map(|n| n.parse().unwrap())
        .collect()
}

/// Waits for `g` to print a line; returns the numbers printed.
fn wait_for_lines(g: &Guest, n: usize) -> Vec<u64> {
    wait_until("serial lines", || serial_counters(g).len() >= n);
    serial_counters(g)
}

/// After `assert_migrated`: the destination's serial port goes on from the
/// line after the source's last, and the serial and workload state matched
/// at switchover.
fn assert_continues(src: &Guest, dst: &Guest) {
    let before = serial_counters(src);
    let last = *before.last().expect("the source printed");
    let after = wait_for_lines(dst, 1);
    assert_eq!(
        after[0],
        last + 10,
        "destination printed {after:?} after the source's {before:?}"
    );
    assert!(after.windows(2).all(|w| w[1] == w[0] + 10), "{after:?}");
}

/// `assert_migrated` plus what only a KVM guest has.
fn migrated(src: &mut Guest, dst: &mut Guest) -> Value {
    // Frozen source and paused destination: compare before `cont`.
    let info = src.wait_end();
    dst.wait_end();
    if info["status"] == "completed" {
        let (a, b) = (src.guest(), dst.guest());
        assert_eq!(a["serial"], b["serial"]);
        assert_eq!(a["pages-written"], b["pages-written"]);
        assert_eq!(b["error"], Value::Null);
    }
    let info = assert_migrated(src, dst);
    assert_continues(src, dst);
    info
}

#[test]
fn tcp_with_1_channel_then_unix_with_4_channels() {
    if !kvm() {
        return;
    }
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let mut a = source(d, "a", "32M", "2", "2000", &[]);
    wait_for_lines(&a, 1);
    let mut b = destination(d, "b", "32M", "2");
    let setup = Setup::channels(1);
    let (target, _) = listen_tcp(&mut b, &setup, "127.0.0.1", false);
    start(&mut a, &setup, &target);
    migrated(&mut a, &mut b);
    // The migrated guest migrates on, with its migrated dirty rate.
    let mut c = destination(d, "c", "32M", "2");
    let setup = Setup::channels(4);
    let target = Target::Uri(format!("unix:{}", d.join("c.mig").display()));
    listen(&mut c, &setup, &target);
    start(&mut b, &setup, &target);
    migrated(&mut b, &mut c);
    assert!(c.guest()["pages-written"][1].as_u64().unwrap() > 0);
    a.quit();
    b.quit();
    c.quit();
}

#[test]
fn an_idle_guest_with_random_memory_over_2_channels() {
    if !kvm() {
        return;
    }
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let mut a = source(d, "a", "64M", "1", "0", &[]);
    wait_for_lines(&a, 1);
    let mut b = destination(d, "b", "64M", "1");
    let setup = Setup::channels(2);
    let (target, _) = listen_tcp(&mut b, &setup, "127.0.0.1", false);
    start(&mut a, &setup, &target);
    let info = migrated(&mut a, &mut b);
    // Random memory: nearly every page went as data.
    assert!(info["ram"]["normal"].as_u64().unwrap() > 15000, "{info}");
    assert_eq!(b.guest()["pages-written"], json!([0]));
    a.quit();
    b.quit();
}

#[test]
fn a_dirtying_guest_needs_several_rounds() {
    if !kvm() {
        return;
    }
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let mut a = source(d, "a", "32M", "4", "6000", &[]);
    wait_for_lines(&a, 1);
    let mut b = destination(d, "b", "32M", "4");
    // 32 MiB at 48 MiB/s takes about 0.7 s, in which the vCPUs dirty
    // thousands of pages; 20 ms of downtime at that bandwidth allows about
    // 240, so the source goes round after round.
    let setup = Setup {
        max_bandwidth: Some(48 << 20),
        downtime_limit: Some(20),
        ..Setup::channels(2)
    };
    let (target, _) = listen_tcp(&mut b, &setup, "127.0.0.1", false);
    start(&mut a, &setup, &target);
    let info = migrated(&mut a, &mut b);
    let rounds = info["ram"]["dirty-sync-count"].as_u64().unwrap();
    eprintln!(
        "{rounds} rounds, {} pages sent, {} ms downtime",
        info["ram"]["normal"], info["downtime"]
    );
    assert!(rounds >= 2, "{info}");
    assert!(info["ram"]["normal"].as_u64().unwrap() > 8192, "{info}");
    a.quit();
    b.quit();
}

#[test]
fn a_killed_destination_and_a_cut_channel_leave_the_source_running() {
    if !kvm() {
        return;
    }
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let mut a = source(d, "a", "32M", "2", "2000", &[]);
    wait_for_lines(&a, 1);

    // Killed in precopy.
    let b = destination(d, "b", "32M", "2");
    kill_destination_in_precopy(&mut a, b);

    // A data channel cut after 1 MiB.
    let mut c = destination(d, "c", "32M", "2");
    let setup = Setup::channels(2);
    let (_, port) = listen_tcp(&mut c, &setup, "127.0.0.1", false);
    let proxy = Proxy::start(
        port,
        Fault::Cut {
            conn: 2,
            after: 1 << 20,
        },
    );
    start(&mut a, &setup, &tcp_uri("127.0.0.1", proxy.port()));
    assert_source_intact(&mut a, &["failed"]);
    assert!(proxy.fired(), "the fault was not injected");
    assert_eq!(c.wait_end()["status"], "failed");
    assert_eq!(c.run_state(), "inmigrate");
    // The serial port goes on too, and a third migration succeeds.
    let printed = serial_counters(&a).len();
    wait_for_lines(&a, printed + 1);
    let mut e = destination(d, "e", "32M", "2");
    let (target, _) = listen_tcp(&mut e, &setup, "127.0.0.1", false);
    start(&mut a, &setup, &target);
    migrated(&mut a, &mut e);
    a.quit();
    c.quit();
    e.quit();
}

/// `stop`, `migrate` to a file, restore in a new process, `cont`.
fn snapshot_restores(extra: &[&str], vcpu_version: u64) {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let mut a = source(d, "a", "16M", "2", "1000", extra);
    wait_for_lines(&a, 2);
    a.cmd("stop", Value::Null);
    assert_eq!(a.run_state(), "paused");
    let snap = d.join("snap.vms");
    a.cmd(
        "migrate",
        json!({"uri": format!("file:{}", snap.display())}),
    );
    let info = a.wait_end();
    assert_eq!(info["status"], "completed", "{info}\n{}", a.log());
    let dump = std::process::Command::new(env!("CARGO_BIN_EXE_vmstream"))
        .args(["dump", "--device", "cpu1", "--json"])
        .arg(&snap)
        .output()
        .unwrap();
    assert!(dump.status.success(), "{dump:?}");
    let dump: Value = serde_json::from_slice(&dump.stdout).unwrap();
    assert_eq!(dump["devices"][0]["type"], "kvm-x86-vcpu");
    assert_eq!(dump["devices"][0]["version"], vcpu_version);
    let mut b = destination(d, "b", "16M", "2");
    b.cmd(
        "migrate-incoming",
        json!({"uri": format!("file:{}", snap.display())}),
    );
    let dinfo = b.wait_end();
    assert_eq!(dinfo["status"], "completed", "{dinfo}\n{}", b.log());
    let (x, y) = (a.guest(), b.guest());
    assert_eq!(x["memory-crc32c"], y["memory-crc32c"], "memory differs");
    assert_eq!(x["counter"], y["counter"]);
    assert_eq!(x["serial"], y["serial"]);
    b.cmd("cont", Value::Null);
    b.assert_advancing();
    assert_continues(&a, &b);
    thread::sleep(Duration::from_millis(100));
    assert_eq!(b.guest()["error"], Value::Null, "{}", b.log());
    a.quit();
    b.quit();
}

#[test]
fn a_snapshot_of_a_paused_guest_restores_in_a_new_process() {
    if !kvm() {
        return;
    }
    snapshot_restores(&[], 2);
}

#[test]
fn a_snapshot_with_version_1_vcpu_state_loads_through_the_transform() {
    if !kvm() {
        return;
    }
    snapshot_restores(&["--x-vcpu-state-version", "1"], 1);
}

#[test]
fn without_kvm_the_command_says_so_in_one_line_and_exits_2() {
    let dir = TempDir::new().unwrap();
    for device in ["/nonexistent/kvm", "/dev/null"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vmstream"))
            .args(["guest", "--kvm", "--memory", "16M", "--qmp"])
            .arg(format!("unix:{}", dir.path().join("g.qmp").display()))
            .env("VMSTREAM_KVM_DEVICE", device)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{device}: {out:?}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(device), "{err}");
        assert!(out.stdout.is_empty());
        assert!(!dir.path().join("g.qmp").exists());
    }
}
