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

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use serde_json::{json, Map, Value};
use tempfile::TempDir;
use vmstream_migrate::qmp::{ClientError, ErrorClass, QmpClient, QmpLimits};

/// Longest wait for one QMP answer, a guest to start or exit, or a migration
/// to end: a hang fails the test instead of blocking.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Guest memory of most tests.
const MEMORY: &str = "32M";

/// Pages per second the workload of most guests writes.
const DIRTY_RATE: &str = "2000";

// ---------------------------------------------------------------------------
// Guests

/// A `vmstream guest` process and a QMP connection to it. Dropping it kills
/// the process if it is still running.
struct Guest {
    name: String,
    child: Child,
    qmp: QmpClient,
    log: PathBuf,
}

impl Guest {
    /// Starts `vmstream guest ARGS --qmp unix:DIR/NAME.qmp` and connects.
    fn spawn(dir: &Path, name: &str, args: &[&str]) -> Guest {
        let sock = dir.join(format!("{name}.qmp"));
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_vmstream"))
            .arg("guest")
            .args(args)
            .arg("--qmp")
            .arg(format!("unix:{}", sock.display()))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn vmstream guest");
        let deadline = Instant::now() + TIMEOUT;
        let qmp = loop {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "guest {name} exited with {status}:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if sock.exists() {
                if let Ok(c) = QmpClient::connect_with(&sock, QmpLimits::default(), TIMEOUT) {
                    break c;
                }
            }
            assert!(Instant::now() < deadline, "guest {name}: no QMP socket");
            thread::sleep(Duration::from_millis(10));
        };
        let mut g = Guest {
            name: name.to_owned(),
            child,
            qmp,
            log,
        };
        g.qmp.negotiate().unwrap();
        g
    }

    /// A source: running, dirtying pages.
    fn source(dir: &Path, name: &str) -> Guest {
        Guest::spawn(
            dir,
            name,
            &[
                "--memory",
                MEMORY,
                "--dirty-rate",
                DIRTY_RATE,
                "--devices",
                "4",
            ],
        )
    }

    /// A destination that waits for `migrate-incoming` and stays paused
    /// after it until `cont`.
    fn destination(dir: &Path, name: &str) -> Guest {
        Guest::spawn(
            dir,
            name,
            &["--memory", MEMORY, "--devices", "4", "--incoming", "-S"],
        )
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn try_cmd(&mut self, name: &str, args: Value) -> Result<Value, ClientError> {
        let args = match args {
            Value::Object(m) => Some(m),
            Value::Null => None,
            other => panic!("arguments {other} are not an object"),
        };
        self.qmp.execute(name, args)
    }

    /// Runs a command that must succeed.
    fn cmd(&mut self, name: &str, args: Value) -> Value {
        match self.try_cmd(name, args.clone()) {
            Ok(v) => v,
            Err(e) => panic!("{}: {name} {args}: {e}\nlog:\n{}", self.name, self.log()),
        }
    }

    /// Runs a command that must fail with a GenericError; returns its text.
    fn cmd_err(&mut self, name: &str, args: Value) -> String {
        match self.try_cmd(name, args.clone()) {
            Err(ClientError::Qmp(e)) => {
                assert_eq!(e.class, ErrorClass::GenericError, "{name} {args}: {e}");
                e.desc
            }
            other => panic!("{}: {name} {args}: {other:?}", self.name),
        }
    }

    fn run_state(&mut self) -> String {
        let v = self.cmd("query-status", Value::Null);
        assert_eq!(v["running"], v["status"] == "running", "{v}");
        v["status"].as_str().unwrap().to_owned()
    }

    fn info(&mut self) -> Value {
        self.cmd("query-migrate", Value::Null)
    }

    fn status(&mut self) -> String {
        self.info()["status"].as_str().unwrap_or("none").to_owned()
    }

    fn guest(&mut self) -> Value {
        self.cmd("x-query-guest", Value::Null)
    }

    fn counter(&mut self) -> u64 {
        self.guest()["counter"].as_u64().unwrap()
    }

    /// Polls `query-migrate` until `done` says so; returns that answer.
    fn wait_info(&mut self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let info = self.info();
            if done(&info) {
                return info;
            }
            assert!(
                Instant::now() < deadline,
                "{}: no {what} within {TIMEOUT:?}: {info}\nlog:\n{}",
                self.name,
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the migration to end; returns the final `query-migrate`.
    fn wait_end(&mut self) -> Value {
        self.wait_info("end of the migration", |i| {
            matches!(
                i["status"].as_str(),
                Some("completed" | "failed" | "cancelled")
            )
        })
    }

    /// Asserts the workload writes pages: the counter grows within a second.
    fn assert_advancing(&mut self) {
        let before = self.counter();
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.counter() <= before {
            assert!(Instant::now() < deadline, "{}: counter stuck", self.name);
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// `quit`: answered, then the process exits successfully.
    fn quit(mut self) {
        assert_eq!(self.cmd("quit", Value::Null), json!({}));
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "{}: {status}\n{}", self.name, self.log());
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: quit did not exit",
                self.name
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL, as a crashed or killed VMM.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `f` until it holds, failing after [`TIMEOUT`].
fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !f() {
        assert!(Instant::now() < deadline, "no {what} within {TIMEOUT:?}");
        thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------
// Addresses and settings

/// Where the destination listens and the source connects.
#[derive(Debug, Clone)]
enum Target {
    Uri(String),
    Channels(Value),
}

impl Target {
    fn args(&self) -> Value {
        match self {
            Target::Uri(u) => json!({ "uri": u }),
            Target::Channels(c) => json!({ "channels": c }),
        }
    }
}

fn inet_channels(host: &str, port: u16) -> Target {
    Target::Channels(json!([{
        "channel-type": "main",
        "addr": {"transport": "socket", "type": "inet", "host": host, "port": port.to_string()},
    }]))
}

fn unix_channels(path: &Path) -> Target {
    Target::Channels(json!([{
        "channel-type": "main",
        "addr": {"transport": "socket", "type": "unix", "path": path.to_str().unwrap()},
    }]))
}

fn tcp_uri(host: &str, port: u16) -> Target {
    if host.contains(':') {
        Target::Uri(format!("tcp:[{host}]:{port}"))
    } else {
        Target::Uri(format!("tcp:{host}:{port}"))
    }
}

/// A TCP port free a moment ago on `host`.
fn free_port(host: &str) -> u16 {
    let l = TcpListener::bind((host, 0)).unwrap();
    l.local_addr().unwrap().port()
}

fn have_ipv6() -> bool {
    TcpListener::bind("[::1]:0").is_ok()
}

/// Migration settings, applied to both sides as QEMU needs them.
#[derive(Debug, Clone, Default)]
struct Setup {
    /// Data channels; 0 turns the multifd capability off.
    channels: u8,
    zstd: bool,
    /// (source's, destination's) tls-creds directories.
    tls: Option<(PathBuf, PathBuf)>,
    tls_hostname: Option<&'static str>,
    /// Bytes per second; `None` for a rate no test reaches.
    max_bandwidth: Option<u64>,
    downtime_limit: Option<u64>,
    auto_converge: bool,
}

impl Setup {
    fn channels(n: u8) -> Setup {
        Setup {
            channels: n,
            ..Setup::default()
        }
    }

    fn apply(&self, g: &mut Guest, source: bool) {
        let caps = json!([
            {"capability": "multifd", "state": self.channels > 0},
            {"capability": "events", "state": true},
            {"capability": "auto-converge", "state": self.auto_converge},
        ]);
        g.cmd("migrate-set-capabilities", json!({ "capabilities": caps }));
        let mut p = Map::new();
        if self.channels > 0 {
            p.insert("multifd-channels".into(), self.channels.into());
        }
        let compression = if self.zstd { "zstd" } else { "none" };
        p.insert("multifd-compression".into(), compression.into());
        p.insert(
            "max-bandwidth".into(),
            self.max_bandwidth.unwrap_or(8 << 30).into(),
        );
        if let Some(d) = self.downtime_limit {
            p.insert("downtime-limit".into(), d.into());
        }
        let creds = match &self.tls {
            Some((src, dst)) => if source { src } else { dst }.to_str().unwrap(),
            None => "",
        };
        p.insert("tls-creds".into(), creds.into());
        p.insert(
            "tls-hostname".into(),
            self.tls_hostname.unwrap_or_default().into(),
        );
        g.cmd("migrate-set-parameters", Value::Object(p));
    }
}

/// Configures the destination and has it listen on a fresh port of `host`
/// (retrying if the port was taken meanwhile); returns the port.
fn listen_tcp(dst: &mut Guest, setup: &Setup, host: &str, channels_form: bool) -> (Target, u16) {
    setup.apply(dst, false);
    for _ in 0..5 {
        let port = free_port(host);
        let target = if channels_form {
            inet_channels(host, port)
        } else {
            tcp_uri(host, port)
        };
        match dst.try_cmd("migrate-incoming", target.args()) {
            Ok(_) => return (target, port),
            Err(ClientError::Qmp(e)) if e.desc.contains("in use") => continue,
            Err(e) => panic!("migrate-incoming {target:?}: {e}"),
        }
    }
    panic!("no free port on {host}");
}

fn listen(dst: &mut Guest, setup: &Setup, target: &Target) {
    setup.apply(dst, false);
    dst.cmd("migrate-incoming", target.args());
}

/// Starts migrating `src` to `target` with `setup`.
fn start(src: &mut Guest, setup: &Setup, target: &Target) {
    setup.apply(src, true);
    src.cmd("migrate", target.args());
}

/// Checks a completed migration: the destination holds exactly what the
/// frozen source holds, then runs on with `cont`. Returns the source's
/// final `query-migrate`.
fn assert_migrated(src: &mut Guest, dst: &mut Guest) -> Value {
    let info = src.wait_end();
    let dinfo = dst.wait_end();
    assert_eq!(
        info["status"],
        "completed",
        "source {info}\ndestination {dinfo}\nsource log:\n{}\ndestination log:\n{}",
        src.log(),
        dst.log()
    );
    assert_eq!(dinfo["status"], "completed", "destination {dinfo}");
    assert!(info["downtime"].is_u64(), "{info}");
    assert!(info["ram"]["transferred"].as_u64().unwrap() > 0, "{info}");
    assert_eq!(src.run_state(), "postmigrate");
    assert_eq!(dst.run_state(), "paused");
    let (a, b) = (src.guest(), dst.guest());
    assert_eq!(a["memory-crc32c"], b["memory-crc32c"], "memory differs");
    assert_eq!(a["devices"], b["devices"], "devices differ");
    assert_eq!(a["counter"], b["counter"], "workload state differs");
    // The source stays frozen; the destination runs on from its state.
    dst.cmd("cont", Value::Null);
    assert_eq!(dst.run_state(), "running");
    dst.assert_advancing();
    assert_eq!(src.guest()["memory-crc32c"], a["memory-crc32c"]);
    info
}

/// Checks a migration that failed or was cancelled left the source as it
/// was: running, its workload going on, and not paused for good.
fn assert_source_intact(src: &mut Guest, want: &[&str]) -> Value {
    let info = src.wait_end();
    let status = info["status"].as_str().unwrap();
    eprintln!("{}: {status}: {}", src.name, info["error-desc"]);
    assert!(
        want.contains(&status),
        "source {status}, expected one of {want:?}: {info}\n{}",
        src.log()
    );
    assert_eq!(src.run_state(), "running");
    src.assert_advancing();
    info
}

/// A second migration from `src` to a fresh destination, over TCP with two
/// data channels, succeeds and moves exactly the source's state.
fn migrate_again(dir: &Path, src: &mut Guest, name: &str) {
    let mut dst = Guest::destination(dir, name);
    let setup = Setup::channels(2);
    let (target, _) = listen_tcp(&mut dst, &setup, "127.0.0.1", false);
    start(src, &setup, &target);
    assert_migrated(src, &mut dst);
    dst.quit();
}

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
    let mut b = Guest::destination(d, "b");
    let slow = Setup {
        max_bandwidth: Some(8 << 20),
        ..Setup::channels(2)
    };
    let (target, _) = listen_tcp(&mut b, &slow, "127.0.0.1", false);
    start(&mut a, &slow, &target);
    a.wait_info("precopy under way", |i| {
        i["status"] == "active" && i["ram"]["transferred"].as_u64() > Some(1 << 20)
    });
    b.kill();
    let info = assert_source_intact(&mut a, &["failed"]);
    assert!(info["error-desc"].is_string(), "{info}");
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

// ---------------------------------------------------------------------------
// The fault-injection proxy

/// What the proxy does to the bytes the source sends on one connection
/// (connections are numbered from 0 in the order they arrive: main first,
/// then the data channels).
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Forward the first `after` bytes, then cut the connection both ways.
    Cut { conn: usize, after: u64 },
    /// Invert the byte at offset `at`.
    Flip { conn: usize, at: u64 },
    /// Forward up to the first `marker`, then cut the connection both ways.
    CutBefore { conn: usize, marker: &'static [u8] },
}

/// A TCP proxy on an ephemeral port of 127.0.0.1 that forwards every
/// connection to the destination's port, injecting one fault.
struct Proxy {
    port: u16,
    stop: Arc<AtomicBool>,
    fired: Arc<AtomicBool>,
    conns: Arc<AtomicUsize>,
    live: Arc<Mutex<Vec<Weak<Pair>>>>,
    acceptor: Option<JoinHandle<()>>,
}

/// One proxied connection. Its sockets close when both pumps are done with
/// it, so a sender that goes on writing to a connection the proxy gave up
/// gets a reset, as from a peer that closed.
struct Pair {
    source: TcpStream,
    destination: TcpStream,
}

impl Pair {
    fn cut(&self) {
        let _ = self.source.shutdown(Shutdown::Both);
        let _ = self.destination.shutdown(Shutdown::Both);
    }
}

impl Proxy {
    fn start(target_port: u16, fault: Fault) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = SocketAddr::from(([127, 0, 0, 1], target_port));
        let stop = Arc::new(AtomicBool::new(false));
        let fired = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(AtomicUsize::new(0));
        let live = Arc::new(Mutex::new(Vec::new()));
        let acceptor = {
            let (stop, fired, conns, live) =
                (stop.clone(), fired.clone(), conns.clone(), live.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let source = match listener.accept() {
                        Ok((s, _)) => s,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            thread::sleep(Duration::from_millis(2));
                            continue;
                        }
                        Err(e) => panic!("proxy accept: {e}"),
                    };
                    source.set_nonblocking(false).unwrap();
                    let k = conns.fetch_add(1, Ordering::SeqCst);
                    let Ok(destination) = TcpStream::connect_timeout(&target, TIMEOUT) else {
                        continue;
                    };
                    let pair = Arc::new(Pair {
                        source,
                        destination,
                    });
                    live.lock().unwrap().push(Arc::downgrade(&pair));
                    let mine = match fault {
                        Fault::Cut { conn, .. }
                        | Fault::Flip { conn, .. }
                        | Fault::CutBefore { conn, .. } => conn == k,
                    };
                    let (p, f) = (pair.clone(), fired.clone());
                    thread::spawn(move || pump(&p, true, mine.then_some(fault), &f));
                    let f = fired.clone();
                    thread::spawn(move || pump(&pair, false, None, &f));
                }
            })
        };
        Proxy {
            port,
            stop,
            fired,
            conns,
            live,
            acceptor: Some(acceptor),
        }
    }

    fn port(&self) -> u16 {
        self.port
    }

    /// Whether the fault was injected.
    fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }

    /// Connections accepted.
    fn connections(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for p in self.live.lock().unwrap().iter().filter_map(Weak::upgrade) {
            p.cut();
        }
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

/// Copies one direction of `pair` (source to destination if `forward`)
/// until either side ends, applying `fault`.
fn pump(pair: &Pair, forward: bool, fault: Option<Fault>, fired: &AtomicBool) {
    let (mut from, mut to) = if forward {
        (&pair.source, &pair.destination)
    } else {
        (&pair.destination, &pair.source)
    };
    let mut buf = vec![0u8; 64 << 10];
    let mut offset = 0u64;
    // The end of what was forwarded, to find a marker split across reads.
    let mut tail: Vec<u8> = Vec::new();
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => n,
            Err(_) => break,
        };
        let chunk = &mut buf[..n];
        let end = offset + n as u64;
        match fault {
            Some(Fault::Cut { after, .. }) if end >= after => {
                let keep = (after - offset) as usize;
                let _ = to.write_all(&chunk[..keep]);
                fired.store(true, Ordering::SeqCst);
                break;
            }
            Some(Fault::Flip { at, .. }) if (offset..end).contains(&at) => {
                chunk[(at - offset) as usize] ^= 0xff;
                fired.store(true, Ordering::SeqCst);
            }
            Some(Fault::CutBefore { marker, .. }) => {
                let mut seen = std::mem::take(&mut tail);
                seen.extend_from_slice(chunk);
                if let Some(p) = seen.windows(marker.len()).position(|w| w == marker) {
                    let keep = p.saturating_sub(seen.len() - n);
                    let _ = to.write_all(&chunk[..keep]);
                    fired.store(true, Ordering::SeqCst);
                    break;
                }
                tail = seen[seen.len().saturating_sub(marker.len() - 1)..].to_vec();
            }
            _ => {}
        }
        if to.write_all(chunk).is_err() {
            break;
        }
        offset = end;
    }
    // Cut, or one side failed: the connection is over both ways.
    pair.cut();
}
