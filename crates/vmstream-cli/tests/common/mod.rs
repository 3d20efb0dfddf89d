//! Helpers of the end-to-end live-migration tests (`live.rs`, `kvm.rs`):
//! `vmstream guest` processes driven over QMP, migration targets and
//! settings, and a TCP proxy that injects faults.

// Each test crate uses its own subset of the helpers.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use vmstream_migrate::qmp::{ClientError, ErrorClass, QmpClient, QmpLimits};

/// Longest wait for one QMP answer, a guest to start or exit, or a migration
/// to end: a hang fails the test instead of blocking.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(30);

/// Guest memory of most tests.
pub(crate) const MEMORY: &str = "32M";

/// Pages per second the workload of most guests writes.
pub(crate) const DIRTY_RATE: &str = "2000";

// ---------------------------------------------------------------------------
// Guests

/// A `vmstream guest` process and a QMP connection to it. Dropping it kills
/// the process if it is still running.
pub(crate) struct Guest {
    pub(crate) name: String,
    pub(crate) child: Child,
    pub(crate) qmp: QmpClient,
    pub(crate) log: PathBuf,
}

impl Guest {
    /// Starts `vmstream guest ARGS --qmp unix:DIR/NAME.qmp` and connects.
    pub(crate) fn spawn(dir: &Path, name: &str, args: &[&str]) -> Guest {
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
    pub(crate) fn source(dir: &Path, name: &str) -> Guest {
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
    pub(crate) fn destination(dir: &Path, name: &str) -> Guest {
        Guest::spawn(
            dir,
            name,
            &["--memory", MEMORY, "--devices", "4", "--incoming", "-S"],
        )
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) fn try_cmd(&mut self, name: &str, args: Value) -> Result<Value, ClientError> {
        let args = match args {
            Value::Object(m) => Some(m),
            Value::Null => None,
            other => panic!("arguments {other} are not an object"),
        };
        self.qmp.execute(name, args)
    }

    /// Runs a command that must succeed.
    pub(crate) fn cmd(&mut self, name: &str, args: Value) -> Value {
        match self.try_cmd(name, args.clone()) {
            Ok(v) => v,
            Err(e) => panic!("{}: {name} {args}: {e}\nlog:\n{}", self.name, self.log()),
        }
    }

    /// Runs a command that must fail with a GenericError; returns its text.
    pub(crate) fn cmd_err(&mut self, name: &str, args: Value) -> String {
        match self.try_cmd(name, args.clone()) {
            Err(ClientError::Qmp(e)) => {
                assert_eq!(e.class, ErrorClass::GenericError, "{name} {args}: {e}");
                e.desc
            }
            other => panic!("{}: {name} {args}: {other:?}", self.name),
        }
    }

    pub(crate) fn run_state(&mut self) -> String {
        let v = self.cmd("query-status", Value::Null);
        assert_eq!(v["running"], v["status"] == "running", "{v}");
        v["status"].as_str().unwrap().to_owned()
    }

    pub(crate) fn info(&mut self) -> Value {
        self.cmd("query-migrate", Value::Null)
    }

    pub(crate) fn status(&mut self) -> String {
        self.info()["status"].as_str().unwrap_or("none").to_owned()
    }

    pub(crate) fn guest(&mut self) -> Value {
        self.cmd("x-query-guest", Value::Null)
    }

    pub(crate) fn counter(&mut self) -> u64 {
        self.guest()["counter"].as_u64().unwrap()
    }

    /// Polls `query-migrate` until `done` says so; returns that answer.
    pub(crate) fn wait_info(&mut self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
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
    pub(crate) fn wait_end(&mut self) -> Value {
        self.wait_info("end of the migration", |i| {
            matches!(
                i["status"].as_str(),
                Some("completed" | "failed" | "cancelled")
            )
        })
    }

    /// Asserts the workload writes pages: the counter grows within a second.
    pub(crate) fn assert_advancing(&mut self) {
        let before = self.counter();
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.counter() <= before {
            assert!(Instant::now() < deadline, "{}: counter stuck", self.name);
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// `quit`: answered, then the process exits successfully.
    pub(crate) fn quit(mut self) {
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
    pub(crate) fn kill(mut self) {
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
pub(crate) fn wait_until(what: &str, f: impl Fn() -> bool) {
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
pub(crate) enum Target {
    Uri(String),
    Channels(Value),
}

impl Target {
    pub(crate) fn args(&self) -> Value {
        match self {
            Target::Uri(u) => json!({ "uri": u }),
            Target::Channels(c) => json!({ "channels": c }),
        }
    }
}

pub(crate) fn inet_channels(host: &str, port: u16) -> Target {
    Target::Channels(json!([{
        "channel-type": "main",
        "addr": {"transport": "socket", "type": "inet", "host": host, "port": port.to_string()},
    }]))
}

pub(crate) fn unix_channels(path: &Path) -> Target {
    Target::Channels(json!([{
        "channel-type": "main",
        "addr": {"transport": "socket", "type": "unix", "path": path.to_str().unwrap()},
    }]))
}

pub(crate) fn tcp_uri(host: &str, port: u16) -> Target {
    if host.contains(':') {
        Target::Uri(format!("tcp:[{host}]:{port}"))
    } else {
        Target::Uri(format!("tcp:{host}:{port}"))
    }
}

/// A TCP port free a moment ago on `host`.
pub(crate) fn free_port(host: &str) -> u16 {
    let l = TcpListener::bind((host, 0)).unwrap();
    l.local_addr().unwrap().port()
}

pub(crate) fn have_ipv6() -> bool {
    TcpListener::bind("[::1]:0").is_ok()
}

/// Migration settings, applied to both sides as QEMU needs them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Setup {
    /// Data channels; 0 turns the multifd capability off.
    pub(crate) channels: u8,
    pub(crate) zstd: bool,
    /// (source's, destination's) tls-creds directories.
    pub(crate) tls: Option<(PathBuf, PathBuf)>,
    pub(crate) tls_hostname: Option<&'static str>,
    /// Bytes per second; `None` for a rate no test reaches.
    pub(crate) max_bandwidth: Option<u64>,
    pub(crate) downtime_limit: Option<u64>,
    pub(crate) auto_converge: bool,
}

impl Setup {
    pub(crate) fn channels(n: u8) -> Setup {
        Setup {
            channels: n,
            ..Setup::default()
        }
    }

    pub(crate) fn apply(&self, g: &mut Guest, source: bool) {
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
pub(crate) fn listen_tcp(
    dst: &mut Guest,
    setup: &Setup,
    host: &str,
    channels_form: bool,
) -> (Target, u16) {
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

pub(crate) fn listen(dst: &mut Guest, setup: &Setup, target: &Target) {
    setup.apply(dst, false);
    dst.cmd("migrate-incoming", target.args());
}

/// Starts migrating `src` to `target` with `setup`.
pub(crate) fn start(src: &mut Guest, setup: &Setup, target: &Target) {
    setup.apply(src, true);
    src.cmd("migrate", target.args());
}

/// Checks a completed migration: the destination holds exactly what the
/// frozen source holds, then runs on with `cont`. Returns the source's
/// final `query-migrate`.
pub(crate) fn assert_migrated(src: &mut Guest, dst: &mut Guest) -> Value {
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

/// Starts a slow migration from `src` to `dst` over two data channels,
/// kills `dst` once precopy is under way, and checks the source runs on.
pub(crate) fn kill_destination_in_precopy(src: &mut Guest, mut dst: Guest) {
    let slow = Setup {
        max_bandwidth: Some(8 << 20),
        ..Setup::channels(2)
    };
    let (target, _) = listen_tcp(&mut dst, &slow, "127.0.0.1", false);
    start(src, &slow, &target);
    src.wait_info("precopy under way", |i| {
        i["status"] == "active" && i["ram"]["transferred"].as_u64() > Some(1 << 20)
    });
    dst.kill();
    let info = assert_source_intact(src, &["failed"]);
    assert!(info["error-desc"].is_string(), "{info}");
}

/// Checks a migration that failed or was cancelled left the source as it
/// was: running, its workload going on, and not paused for good.
pub(crate) fn assert_source_intact(src: &mut Guest, want: &[&str]) -> Value {
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
pub(crate) fn migrate_again(dir: &Path, src: &mut Guest, name: &str) {
    let mut dst = Guest::destination(dir, name);
    let setup = Setup::channels(2);
    let (target, _) = listen_tcp(&mut dst, &setup, "127.0.0.1", false);
    start(src, &setup, &target);
    assert_migrated(src, &mut dst);
    dst.quit();
}

// ---------------------------------------------------------------------------
// The fault-injection proxy

/// What the proxy does to the bytes the source sends on one connection
/// (connections are numbered from 0 in the order they arrive: main first,
/// then the data channels).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Fault {
    /// Forward the first `after` bytes, then cut the connection both ways.
    Cut { conn: usize, after: u64 },
    /// Invert the byte at offset `at`.
    Flip { conn: usize, at: u64 },
    /// Forward up to the first `marker`, then cut the connection both ways.
    CutBefore { conn: usize, marker: &'static [u8] },
}

/// A TCP proxy on an ephemeral port of 127.0.0.1 that forwards every
/// connection to the destination's port, injecting one fault.
pub(crate) struct Proxy {
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
pub(crate) struct Pair {
    source: TcpStream,
    destination: TcpStream,
}

impl Pair {
    pub(crate) fn cut(&self) {
        let _ = self.source.shutdown(Shutdown::Both);
        let _ = self.destination.shutdown(Shutdown::Both);
    }
}

impl Proxy {
    pub(crate) fn start(target_port: u16, fault: Fault) -> Proxy {
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

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// Whether the fault was injected.
    pub(crate) fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }

    /// Connections accepted.
    pub(crate) fn connections(&self) -> usize {
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
pub(crate) fn pump(pair: &Pair, forward: bool, fault: Option<Fault>, fired: &AtomicBool) {
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
