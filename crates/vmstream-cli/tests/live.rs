//! Live migration end to end: `vmstream guest` processes driven only by QMP
//! commands migrate over TCP (IPv4, IPv6) and Unix sockets, given as a `uri`
//! or a `channels` list, with 0 to 4 data channels, zstd and mutual TLS; a
//! dirtying guest needs several rounds; cancels in setup and precopy; faults
//! (a killed destination, a cut data channel, a flipped byte, a refused
//! device, a certificate from another CA) leave the source running and able
//! to migrate again; malformed QMP input is refused and the socket serves on.
//!
//! After every successful migration the destination (started with `-S`, so
//! it stays paused until `cont`) holds exactly the source's memory, devices
//! and workload counter; after `cont` it runs and its workload goes on.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns: a failure is a test failure

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use serde_json::{json, Value};
use tempfile::TempDir;

mod common;
use common::*;

// ---------------------------------------------------------------------------
// Channel types

#[test]
fn tcp_v4_uri_and_channels_with_0_and_4_data_channels() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let mut a = Guest::source(d, "a");
    // Without multifd: pages travel on the main channel.
    let mut b = Guest::destination(d, "b");
    let setup = Setup::channels(0);
    let (target, _) = listen_tcp(&mut b, &setup, "127.0.0.1", false);
    start(&mut a, &setup, &target);
    assert_migrated(&mut a, &mut b);
    // Every status change came as a MIGRATION event, in order.
    let statuses: Vec<String> = a
        .qmp
        .take_events()
        .into_iter()
        .filter(|e| e.name == "MIGRATION")
        .map(|e| e.data.unwrap()["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(statuses, ["setup", "active", "device", "completed"]);
    a.quit();

    // The migrated guest migrates on, over four data channels, given as a
    // channels list.
    let mut c = Guest::destination(d, "c");
    let setup = Setup::channels(4);
    let (target, _) = listen_tcp(&mut c, &setup, "127.0.0.1", true);
    start(&mut b, &setup, &target);
    assert_migrated(&mut b, &mut c);
    b.quit();
    c.quit();
}

#[test]
fn tcp_v6_and_zstd_with_1_and_2_data_channels() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let host = if have_ipv6() {
        "::1"
    } else {
        eprintln!("no IPv6 loopback here: testing over 127.0.0.1 only");
        "127.0.0.1"
    };
    let mut a = Guest::source(d, "a");
    let mut b = Guest::destination(d, "b");
    let setup = Setup::channels(1);
    let (target, _) = listen_tcp(&mut b, &setup, host, false);
    start(&mut a, &setup, &target);
    assert_migrated(&mut a, &mut b);
    a.quit();

    b.quit();

    // zstd, from a guest whose pages compress: zeros but for what its
    // workload wrote.
    let mut z = Guest::spawn(
        d,
        "z",
        &[
            "--memory",
            MEMORY,
            "--fill",
            "zero",
            "--dirty-rate",
            "20000",
        ],
    );
    thread::sleep(Duration::from_millis(300));
    let mut c = Guest::destination(d, "c");
    let setup = Setup {
        zstd: true,
        ..Setup::channels(2)
    };
    let (target, _) = listen_tcp(&mut c, &setup, host, true);
    start(&mut z, &setup, &target);
    let info = assert_migrated(&mut z, &mut c);
    let (sent, data) = (
        info["ram"]["transferred"].as_u64().unwrap(),
        info["ram"]["normal-bytes"].as_u64().unwrap(),
    );
    assert!(data > 4 << 20 && sent < data / 4, "{info}");
    z.quit();
    c.quit();
}

#[test]
fn unix_uri_and_channels_with_2_and_4_data_channels_and_autostart() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let mut a = Guest::source(d, "a");
    let mut b = Guest::destination(d, "b");
    let setup = Setup::channels(2);
    let target = Target::Uri(format!("unix:{}", d.join("b.mig").display()));
    listen(&mut b, &setup, &target);
    start(&mut a, &setup, &target);
    assert_migrated(&mut a, &mut b);
    a.quit();

    // Without -S the destination runs as soon as the migration completes;
    // its workload goes on from the source's counter.
    let mut c = Guest::spawn(d, "c", &["--memory", MEMORY, "--incoming"]);
    assert_eq!(c.run_state(), "inmigrate");
    let setup = Setup {
        zstd: true,
        ..Setup::channels(4)
    };
    let target = unix_channels(&d.join("c.mig"));
    listen(&mut c, &setup, &target);
    start(&mut b, &setup, &target);
    assert_eq!(b.wait_end()["status"], "completed", "{}", b.log());
    assert_eq!(c.wait_end()["status"], "completed", "{}", c.log());
    assert_eq!(c.run_state(), "running");
    let (from, to) = (b.guest(), c.guest());
    assert!(to["counter"].as_u64() >= from["counter"].as_u64());
    c.assert_advancing();
    // Devices other than the one the workload ticks are exactly the source's.
    let (fd, td) = (
        from["devices"].as_array().unwrap(),
        to["devices"].as_array().unwrap(),
    );
    assert_eq!(fd[1..], td[1..]);
    assert_eq!(from["devices"][0]["regs"], to["devices"][0]["regs"]);
    assert!(to["devices"][0]["ticks"].as_u64() >= from["devices"][0]["ticks"].as_u64());
    b.quit();
    c.quit();
}

// ---------------------------------------------------------------------------
// Rounds

#[test]
fn exec_and_file_channels_carry_a_snapshot_that_restores() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let mut a = Guest::source(d, "a");
    let snap = d.join("snap.vms");
    // One-way out through a child process (argv, no shell of ours).
    a.cmd(
        "migrate",
        json!({"channels": [{"channel-type": "main", "addr": {
            "transport": "exec",
            "args": ["sh", "-c", format!("cat > '{}'", snap.display())],
        }}]}),
    );
    let info = a.wait_end();
    assert_eq!(info["status"], "completed", "{info}\n{}", a.log());
    assert_eq!(a.run_state(), "postmigrate");
    // The snapshot is an ordinary vmstream file.
    let verify = Command::new(env!("CARGO_BIN_EXE_vmstream"))
        .arg("verify")
        .arg(&snap)
        .output()
        .unwrap();
    assert!(verify.status.success(), "{verify:?}");
    // One-way in from the file, into a paused guest.
    let mut b = Guest::destination(d, "b");
    b.cmd(
        "migrate-incoming",
        json!({"uri": format!("file:{}", snap.display())}),
    );
    let dinfo = b.wait_end();
    assert_eq!(dinfo["status"], "completed", "{dinfo}\n{}", b.log());
    let (x, y) = (a.guest(), b.guest());
    assert_eq!(x["memory-crc32c"], y["memory-crc32c"], "memory differs");
    assert_eq!(x["devices"], y["devices"]);
    assert_eq!(x["counter"], y["counter"]);
    b.cmd("cont", Value::Null);
    b.assert_advancing();
    b.quit();
    a.quit();
}

#[test]
fn fd_channels_passed_with_getfd() {
    use std::os::fd::AsFd;
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let mut a = Guest::source(d, "a");
    let mut b = Guest::destination(d, "b");
    // Without a descriptor, getfd fails as QEMU's does; closefd of an
    // unknown name too.
    let e = b.try_cmd("getfd", json!({"fdname": "mig"})).unwrap_err();
    assert!(e.to_string().contains("No file descriptor supplied"), "{e}");
    let e = b.try_cmd("closefd", json!({"fdname": "nope"})).unwrap_err();
    assert!(e.to_string().contains("not found"), "{e}");
    // The destination gets a listening socket (it would accept data channels
    // on it too), the source one connected socket per `migrate`, so no data
    // channels: QEMU's fd transport is the same.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    b.qmp
        .execute_with_fd(
            "getfd",
            Some(json!({"fdname": "mig"}).as_object().unwrap().clone()),
            Some(listener.as_fd()),
        )
        .unwrap();
    drop(listener);
    listen(
        &mut b,
        &Setup::channels(0),
        &Target::Channels(json!([{"channel-type": "main",
            "addr": {"transport": "socket", "type": "fd", "str": "mig"}}])),
    );
    let conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    a.qmp
        .execute_with_fd(
            "getfd",
            Some(json!({"fdname": "out"}).as_object().unwrap().clone()),
            Some(conn.as_fd()),
        )
        .unwrap();
    drop(conn);
    start(&mut a, &Setup::channels(0), &Target::Uri("fd:out".into()));
    assert_migrated(&mut a, &mut b);
    // Taken by the migration: the name is free again.
    let e = a.try_cmd("closefd", json!({"fdname": "out"})).unwrap_err();
    assert!(e.to_string().contains("not found"), "{e}");
    a.quit();
    b.quit();
}

#[test]
fn a_dirtying_guest_needs_several_rounds() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let mut a = Guest::spawn(
        d,
        "a",
        &["--memory", MEMORY, "--dirty-rate", "6000", "--devices", "4"],
    );
    let mut b = Guest::destination(d, "b");
    // 32 MiB at 48 MiB/s takes about 0.7 s, in which the guest dirties
    // thousands of pages; 10 ms of downtime at that rate allows about 120,
    // so the source goes round after round until few enough are left
    // (auto-converge throttles the guest if rounds stop shrinking).
    let setup = Setup {
        max_bandwidth: Some(48 << 20),
        downtime_limit: Some(10),
        auto_converge: true,
        ..Setup::channels(2)
    };
    let (target, _) = listen_tcp(&mut b, &setup, "127.0.0.1", false);
    thread::sleep(Duration::from_millis(100));
    start(&mut a, &setup, &target);
    let info = assert_migrated(&mut a, &mut b);
    let rounds = info["ram"]["dirty-sync-count"].as_u64().unwrap();
    eprintln!(
        "{rounds} rounds, {} pages sent, {} ms downtime, throttle {}",
        info["ram"]["normal"], info["downtime"], info["cpu-throttle-percentage"]
    );
    assert!(rounds >= 2, "{info}");
    // Pages sent more than once: more than the guest's memory went.
    assert!(info["ram"]["normal"].as_u64().unwrap() > 8192, "{info}");
    a.quit();
    b.quit();
}

// ---------------------------------------------------------------------------
// Cancel

#[test]
fn cancel_in_setup_and_in_precopy_leaves_the_source_running() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let mut a = Guest::source(d, "a");

    // Setup: the peer takes the connections but never answers the hello.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let setup = Setup::channels(2);
    start(&mut a, &setup, &tcp_uri("127.0.0.1", port));
    assert_eq!(a.status(), "setup");
    thread::sleep(Duration::from_millis(100));
    assert_eq!(a.status(), "setup");
    a.cmd("migrate_cancel", Value::Null);
    assert_source_intact(&mut a, &["cancelled"]);
    drop(silent);

    // Precopy: a low bandwidth keeps the migration active.
    let mut b = Guest::destination(d, "b");
    let slow = Setup {
        max_bandwidth: Some(4 << 20),
        ..Setup::channels(2)
    };
    let (target, _) = listen_tcp(&mut b, &slow, "127.0.0.1", false);
    start(&mut a, &slow, &target);
    a.wait_info("precopy under way", |i| {
        i["status"] == "active" && i["ram"]["transferred"].as_u64() > Some(1 << 20)
    });
    a.cmd("migrate_cancel", Value::Null);
    let info = assert_source_intact(&mut a, &["cancelled"]);
    assert!(info["ram"]["transferred"].as_u64().unwrap() < 32 << 20);
    // The destination saw its source go, and never ran.
    let dinfo = b.wait_end();
    assert!(
        matches!(dinfo["status"].as_str(), Some("failed" | "cancelled")),
        "{dinfo}"
    );
    assert_eq!(b.run_state(), "inmigrate");
    b.quit();

    // A destination cancelled while it waits stops listening and can wait again.
    let mut c = Guest::destination(d, "c");
    let (_, port) = listen_tcp(&mut c, &setup, "127.0.0.1", false);
    c.cmd("migrate_cancel", Value::Null);
    assert_eq!(c.wait_end()["status"], "cancelled");
    assert_eq!(c.run_state(), "inmigrate");
    wait_until("the listener to close", || {
        TcpStream::connect(("127.0.0.1", port)).is_err()
    });
    let (target, _) = listen_tcp(&mut c, &setup, "127.0.0.1", false);
    start(&mut a, &setup, &target);
    assert_migrated(&mut a, &mut c);
    a.quit();
    c.quit();
}

// ---------------------------------------------------------------------------
// Faults

#[test]
fn a_killed_destination_leaves_the_source_running() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let mut a = Guest::source(d, "a");
    let b = Guest::destination(d, "b");
    kill_destination_in_precopy(&mut a, b);
    migrate_again(d, &mut a, "c");
    a.quit();
}

#[test]
fn a_cut_data_channel_leaves_the_source_running() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let mut a = Guest::source(d, "a");
    let mut b = Guest::destination(d, "b");
    let setup = Setup::channels(2);
    let (_, port) = listen_tcp(&mut b, &setup, "127.0.0.1", false);
    // Connection 0 is main; 2 is the second data channel.
    let proxy = Proxy::start(
        port,
        Fault::Cut {
            conn: 2,
            after: 1 << 20,
        },
    );
    start(&mut a, &setup, &tcp_uri("127.0.0.1", proxy.port()));
    let info = assert_source_intact(&mut a, &["failed"]);
    assert!(proxy.fired(), "the fault was not injected");
    assert_eq!(proxy.connections(), 3);
    assert!(info["error-desc"].is_string(), "{info}");
    let dinfo = b.wait_end();
    assert_eq!(dinfo["status"], "failed", "{dinfo}");
    assert_eq!(b.run_state(), "inmigrate");
    migrate_again(d, &mut a, "c");
    a.quit();
    b.quit();
}

#[test]
fn a_flipped_byte_is_caught_and_leaves_the_source_running() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let mut a = Guest::source(d, "a");
    // Once on a data channel, once on main (no data channels).
    for (n, (channels, conn)) in [(2u8, 1usize), (0, 0)].into_iter().enumerate() {
        let mut b = Guest::destination(d, &format!("b{n}"));
        let setup = Setup::channels(channels);
        let (_, port) = listen_tcp(&mut b, &setup, "127.0.0.1", false);
        // Well inside the page data.
        let proxy = Proxy::start(
            port,
            Fault::Flip {
                conn,
                at: (1 << 20) + 12345,
            },
        );
        start(&mut a, &setup, &tcp_uri("127.0.0.1", proxy.port()));
        assert_source_intact(&mut a, &["failed"]);
        assert!(proxy.fired(), "the fault was not injected");
        let dinfo = b.wait_end();
        assert_eq!(dinfo["status"], "failed", "{dinfo}");
        let why = dinfo["error-desc"].as_str().unwrap();
        assert!(why.contains("CRC") || why.contains("checksum"), "{why}");
        assert_eq!(b.run_state(), "inmigrate");
        b.quit();
    }
    migrate_again(d, &mut a, "c");
    a.quit();
}

#[test]
fn negotiation_mismatch_is_refused_clearly_on_both_sides() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let mut a = Guest::source(d, "a");
    let setup = Setup::channels(1);

    // A destination with one device more: dev4 has no counterpart.
    let mut b = Guest::spawn(
        d,
        "b",
        &["--memory", MEMORY, "--devices", "5", "--incoming", "-S"],
    );
    let (target, _) = listen_tcp(&mut b, &setup, "127.0.0.1", false);
    start(&mut a, &setup, &target);
    let info = assert_source_intact(&mut a, &["failed"]);
    let dinfo = b.wait_end();
    assert_eq!(dinfo["status"], "failed");
    for why in [&info["error-desc"], &dinfo["error-desc"]] {
        assert!(why.as_str().unwrap().contains("dev4"), "{why}");
    }
    assert_eq!(b.run_state(), "inmigrate");
    b.quit();

    // Memory of another size: the region is named.
    let mut b = Guest::spawn(d, "b2", &["--memory", "16M", "--incoming", "-S"]);
    let (target, _) = listen_tcp(&mut b, &setup, "127.0.0.1", false);
    start(&mut a, &setup, &target);
    let info = assert_source_intact(&mut a, &["failed"]);
    let dinfo = b.wait_end();
    assert_eq!(dinfo["status"], "failed");
    for why in [&info["error-desc"], &dinfo["error-desc"]] {
        assert!(why.as_str().unwrap().contains("ram0"), "{why}");
    }
    b.quit();

    migrate_again(d, &mut a, "c");
    a.quit();
}

#[test]
fn a_fault_in_stop_and_copy_resumes_the_source_only_if_it_ran() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let mut a = Guest::source(d, "a");
    // The main channel is cut just before the source's `complete`: the
    // source has paused, sent its last pages and devices, and waits for
    // `ready`.
    for stopped in [false, true] {
        let name = format!("b-{}", if stopped { "stopped" } else { "running" });
        let mut b = Guest::destination(d, &name);
        let setup = Setup::channels(2);
        let (_, port) = listen_tcp(&mut b, &setup, "127.0.0.1", false);
        let proxy = Proxy::start(
            port,
            Fault::CutBefore {
                conn: 0,
                marker: b"{\"msg\":\"complete\"",
            },
        );
        let frozen = stopped.then(|| {
            a.cmd("stop", Value::Null);
            a.guest()
        });
        start(&mut a, &setup, &tcp_uri("127.0.0.1", proxy.port()));
        let info = a.wait_end();
        assert_eq!(info["status"], "failed", "{info}");
        assert!(proxy.fired(), "the fault was not injected");
        assert_eq!(b.wait_end()["status"], "failed");
        assert_eq!(b.run_state(), "inmigrate");
        match frozen {
            None => {
                assert_eq!(a.run_state(), "running");
                a.assert_advancing();
            }
            Some(frozen) => {
                // Stopped before, stopped after, and nothing changed.
                assert_eq!(a.run_state(), "paused");
                thread::sleep(Duration::from_millis(50));
                assert_eq!(a.guest(), frozen);
                a.cmd("cont", Value::Null);
                a.assert_advancing();
            }
        }
        b.quit();
    }
    migrate_again(d, &mut a, "c");
    a.quit();
}

// ---------------------------------------------------------------------------
// TLS

/// A certificate authority that issues server and client certificates.
struct Ca(CertifiedIssuer<'static, KeyPair>);

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Ca(CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap())
    }

    /// A leaf certificate and its key, both PEM.
    fn issue(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> (String, String) {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.0).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// tls-creds directories in QEMU's layout: (server, client, a client whose
/// certificate another CA issued).
fn credentials(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let good = Ca::new("vmstream test CA");
    let other = Ca::new("some other CA");
    let (server_cert, server_key) = good.issue(
        &["localhost", "127.0.0.1", "::1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client_cert, client_key) = good.issue(&["source"], ExtendedKeyUsagePurpose::ClientAuth);
    let (bad_cert, bad_key) = other.issue(&["intruder"], ExtendedKeyUsagePurpose::ClientAuth);
    let write = |sub: &str, files: &[(&str, &str)]| -> PathBuf {
        let d = dir.join(sub);
        std::fs::create_dir(&d).unwrap();
        for (name, text) in files {
            std::fs::write(d.join(name), text).unwrap();
        }
        d
    };
    let ca = good.0.pem();
    (
        write(
            "server",
            &[
                ("ca-cert.pem", &ca),
                ("server-cert.pem", &server_cert),
                ("server-key.pem", &server_key),
            ],
        ),
        write(
            "client",
            &[
                ("ca-cert.pem", &ca),
                ("client-cert.pem", &client_cert),
                ("client-key.pem", &client_key),
            ],
        ),
        write(
            "intruder",
            &[
                ("ca-cert.pem", &ca),
                ("client-cert.pem", &bad_cert),
                ("client-key.pem", &bad_key),
            ],
        ),
    )
}

#[test]
fn tls_with_mutual_authentication() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let (server, client, intruder) = credentials(d);
    let mut a = Guest::source(d, "a");

    // A client certificate from another CA is refused; the source runs on
    // and the destination never ran.
    let mut b = Guest::destination(d, "b");
    let bad = Setup {
        tls: Some((intruder, server.clone())),
        ..Setup::channels(2)
    };
    let (target, _) = listen_tcp(&mut b, &bad, "127.0.0.1", false);
    start(&mut a, &bad, &target);
    let info = assert_source_intact(&mut a, &["failed"]);
    assert!(info["error-desc"].is_string(), "{info}");
    // The destination refused that connection and waits on for its source.
    assert_eq!(b.status(), "setup");
    assert_eq!(b.run_state(), "inmigrate");
    b.quit();

    // Good certificates: over TCP, checking the name the source dialled.
    let mut c = Guest::destination(d, "c");
    let good = Setup {
        tls: Some((client.clone(), server.clone())),
        ..Setup::channels(2)
    };
    let (target, _) = listen_tcp(&mut c, &good, "127.0.0.1", true);
    start(&mut a, &good, &target);
    assert_migrated(&mut a, &mut c);
    a.quit();

    // Over a Unix socket, with the name to check given as tls-hostname,
    // and zstd inside TLS.
    let mut e = Guest::destination(d, "e");
    let unix = Setup {
        tls: Some((client, server)),
        tls_hostname: Some("localhost"),
        zstd: true,
        ..Setup::channels(1)
    };
    let target = Target::Uri(format!("unix:{}", d.join("e.mig").display()));
    listen(&mut e, &unix, &target);
    start(&mut c, &unix, &target);
    assert_migrated(&mut c, &mut e);
    c.quit();
    e.quit();
}

// ---------------------------------------------------------------------------
// Malformed input

#[test]
fn malformed_qmp_input_is_refused_and_the_socket_serves_on() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let mut a = Guest::source(d, "a");
    let mut b = Guest::destination(d, "b");
    let inet = |addr: Value| json!({"channels": [{"channel-type": "main", "addr": addr}]});
    let cases = [
        (
            inet(json!({"transport": "socket", "type": "inet", "host": "127.0.0.1"})),
            "addr.port",
        ),
        (
            inet(json!({"transport": "socket", "type": "inet", "host": "127.0.0.1", "port": 4})),
            "addr.port",
        ),
        (
            inet(json!({"transport": "pigeon", "type": "inet", "host": "h", "port": "1"})),
            "addr.transport",
        ),
        (
            inet(json!({"transport": "socket", "type": "unix", "path": "/x", "x": 1})),
            "addr.x",
        ),
        (
            json!({"channels": [{"addr": {"transport": "socket", "type": "unix", "path": "/x"}}]}),
            "channel-type",
        ),
        (
            json!({"channels": [
                unix_channels(Path::new("/x")).args()["channels"][0],
                unix_channels(Path::new("/y")).args()["channels"][0],
            ]}),
            "more than one main",
        ),
        (json!({"channels": [7]}), "channels[0]"),
        (json!({"uri": "tcp:127.0.0.1"}), "uri"),
        (json!({"uri": "tcp:127.0.0.1:65536"}), "uri"),
        (json!({"uri": "tcp:[::1:4"}), "uri"),
        (json!({"uri": "unix:"}), "uri"),
        (json!({"uri": "pigeon:coop"}), "uri"),
        (json!({"uri": ""}), "uri"),
        (json!({"uri": 4446}), "uri"),
        (
            json!({"uri": "tcp:127.0.0.1:1", "channels": [{}]}),
            "channels",
        ),
        (json!({}), "uri"),
    ];
    for (args, field) in &cases {
        for (g, command) in [(&mut a, "migrate"), (&mut b, "migrate-incoming")] {
            let why = g.cmd_err(command, args.clone());
            assert!(why.contains(field), "{command} {args}: {why}");
            assert_eq!(g.status(), "none", "{command} {args} started something");
        }
    }
    // Out-of-range and unknown parameters and capabilities.
    for (cmd, args, want) in [
        (
            "migrate-set-parameters",
            json!({"multifd-channels": 0}),
            "multifd-channels",
        ),
        (
            "migrate-set-parameters",
            json!({"multifd-compression": "gzip"}),
            "multifd-compression",
        ),
        (
            "migrate-set-parameters",
            json!({"downtime-limit": -1}),
            "downtime-limit",
        ),
        ("migrate-set-parameters", json!({"no-such": 1}), "no-such"),
        (
            "migrate-set-capabilities",
            json!({"capabilities": [{"capability": "postcopy-ram", "state": true}]}),
            "postcopy-ram",
        ),
        (
            "migrate-set-capabilities",
            json!({"capabilities": [{"capability": "no-such", "state": true}]}),
            "capability",
        ),
    ] {
        let why = a.cmd_err(cmd, args.clone());
        assert!(why.contains(want), "{cmd} {args}: {why}");
    }
    // Credentials that are not there fail the command, not the guest.
    a.cmd(
        "migrate-set-parameters",
        json!({"tls-creds": d.join("nowhere").to_str().unwrap()}),
    );
    let why = a.cmd_err("migrate", json!({"uri": "tcp:127.0.0.1:1"}));
    assert!(why.contains("nowhere"), "{why}");
    a.cmd("migrate-set-parameters", json!({"tls-creds": ""}));

    // Channel configurations the transports cannot carry.
    Setup::channels(100).apply(&mut a, true);
    let why = a.cmd_err("migrate", json!({"uri": "exec:cat > /dev/null"}));
    assert!(why.contains("multifd"), "{why}");
    a.cmd("migrate", json!({"uri": "tcp:127.0.0.1:1"}));
    let info = a.wait_end();
    assert_eq!(info["status"], "failed");
    let why = info["error-desc"].as_str().unwrap();
    assert!(why.contains("100 data channels"), "{why}");
    assert_eq!(a.run_state(), "running");

    // Bytes that are not QMP at all: each is answered with an error, and
    // the request behind it is served.
    for (n, raw) in [
        &b"{\"execute\": \"query-status\", \"argu}}}\n"[..],
        b"[1, 2]\n",
        b"\xff\xfe garbage\n",
        b"{\"execute\": 5}\n",
        b"{\"execute\": \"no-such-command\"}\n",
        b"{\"execute\": \"query-status\", \"arguments\": {\"verbose\": true}}\n",
    ]
    .into_iter()
    .enumerate()
    {
        let probe = format!("probe-{n}");
        a.qmp.send_bytes(raw).unwrap();
        let line = format!("{{\"execute\": \"query-status\", \"id\": \"{probe}\"}}\n");
        a.qmp.send_bytes(line.as_bytes()).unwrap();
        let mut errors = Vec::new();
        loop {
            let msg = a.qmp.next_message(TIMEOUT).unwrap().unwrap();
            if msg["id"] == probe.as_str() {
                assert_eq!(msg["return"]["status"], "running", "{msg}");
                break;
            }
            if msg.get("event").is_none() {
                errors.push(msg);
            }
        }
        let raw = String::from_utf8_lossy(raw);
        assert!(!errors.is_empty(), "{raw}: no error");
        for e in &errors {
            assert!(e["error"]["desc"].is_string(), "{raw}: {e}");
        }
    }
    assert_eq!(a.run_state(), "running");

    // Both sockets still serve, and the guests still migrate.
    let setup = Setup::channels(2);
    let (target, _) = listen_tcp(&mut b, &setup, "127.0.0.1", false);
    start(&mut a, &setup, &target);
    assert_migrated(&mut a, &mut b);
    a.quit();
    b.quit();
}
