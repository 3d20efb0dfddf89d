//! The engine end to end in one process: two synthetic guests, connected by
//! socket pairs, migrate with 0..4 data channels, with and without
//! compression, idle and dirtying; and failures leave the source running.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns: a failure is a test failure

use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use vmstream_migrate::destination::{incoming, local};
use vmstream_migrate::link::{Cancel, Connections, Link};
use vmstream_migrate::source::{migrate, Params};
use vmstream_migrate::stats::{Stats, Status};
use vmstream_migrate::synthetic::{Fill, Synthetic};

fn pairs(n: usize) -> (Connections, Connections) {
    let (a, b) = UnixStream::pair().unwrap();
    let mut src = Connections {
        main: Box::new(a) as Box<dyn Link>,
        data: vec![],
        one_way: false,
    };
    let mut dst = Connections {
        main: Box::new(b) as Box<dyn Link>,
        data: vec![],
        one_way: false,
    };
    for _ in 0..n {
        let (a, b) = UnixStream::pair().unwrap();
        src.data.push(Box::new(a));
        dst.data.push(Box::new(b));
    }
    (src, dst)
}

struct Outcome {
    src: Result<(), vmstream_migrate::Error>,
    dst: Result<(), vmstream_migrate::Error>,
    src_stats: Stats,
}

fn run(
    source: &Arc<Synthetic>,
    dest: &Arc<Synthetic>,
    channels: usize,
    params: Params,
    dest_compression: &[&str],
    src_cancel: Cancel,
) -> Outcome {
    let (s, d) = pairs(channels);
    let (svm, dvm) = (source.vm(), dest.vm());
    let loc = local(&dvm, 8, dest_compression).unwrap();
    let (ss, ds) = (Stats::new(), Stats::new());
    let dcancel = Cancel::new();
    let (src, dst) = std::thread::scope(|scope| {
        let h = scope.spawn(|| incoming(&dvm, d, &loc, &ds, &dcancel));
        let src = migrate(&svm, s, &params, &ss, &src_cancel);
        (src, h.join().unwrap())
    });
    Outcome {
        src,
        dst,
        src_stats: ss,
    }
}

fn ok(o: &Outcome) {
    if o.src.is_err() || o.dst.is_err() {
        panic!("source: {:?}\ndestination: {:?}", o.src, o.dst);
    }
}

fn fast() -> Params {
    Params {
        max_bandwidth: 0,
        // Small guests answer at once; a test that hangs fails in seconds.
        answer_timeout_ms: 2000,
        ..Params::default()
    }
}

#[test]
fn idle_guest_migrates_over_0_to_4_channels() {
    for n in [0, 1, 2, 4] {
        let a = Arc::new(Synthetic::new(32 << 20, Fill::Random, 3, 1));
        let b = Arc::new(Synthetic::new(32 << 20, Fill::Zero, 3, 2));
        let o = run(&a, &b, n, fast(), &[], Cancel::new());
        ok(&o);
        assert_eq!(a.checksum(), b.checksum(), "{n} channels");
        assert_eq!(a.device_states(), b.device_states());
        assert!(!b.is_paused(), "destination runs");
        assert!(a.is_paused(), "source stays paused");
        let s = o.src_stats.snapshot();
        assert_eq!(s.status, Some(Status::Completed));
        assert!(s.transferred >= 32 << 20);
        assert!(s.downtime_ms.is_some());
    }
}

#[test]
fn compression_is_negotiated() {
    for (offer, accept) in [
        (vec!["zstd", "lz4"], vec!["lz4"]),
        (vec!["zstd"], vec!["zstd"]),
        (vec!["zstd"], vec![]),
    ] {
        let a = Arc::new(Synthetic::new(8 << 20, Fill::Zero, 1, 1));
        a.write_pattern();
        let b = Arc::new(Synthetic::new(8 << 20, Fill::Random, 1, 2));
        let p = Params {
            compression: offer.iter().map(|s| s.to_string()).collect(),
            ..fast()
        };
        let o = run(&a, &b, 2, p, &accept, Cancel::new());
        ok(&o);
        assert_eq!(a.checksum(), b.checksum());
    }
}

#[test]
fn dirtying_guest_needs_rounds_and_keeps_running_on_the_destination() {
    let a = Arc::new(Synthetic::new(64 << 20, Fill::Random, 2, 1));
    let b = Arc::new(Synthetic::new(64 << 20, Fill::Zero, 2, 2));
    a.start_workload(40_000);
    b.start_workload(0);
    use vmstream_migrate::vm::Vcpus;
    a.resume().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    // A bandwidth cap makes rounds long enough for the workload to dirty pages,
    // and a 2 ms limit needs auto-converge to throttle it.
    let p = Params {
        max_bandwidth: 256 << 20,
        downtime_limit_ms: 2,
        auto_converge: true,
        ..Params::default()
    };
    let o = run(&a, &b, 2, p, &[], Cancel::new());
    ok(&o);
    let s = o.src_stats.snapshot();
    assert!(s.dirty_sync_count >= 2, "{s:?} counter {}", a.counter());
    // Source paused at switchover; the destination ran from the same state.
    assert!(a.is_paused());
    // The workload (its counter and rate travel as device cpu0) goes on from
    // where the source stopped, though the destination was started idle.
    let before = b.counter();
    assert!(before >= a.counter() && a.counter() > 0);
    std::thread::sleep(Duration::from_millis(100));
    assert!(b.counter() > before, "destination workload continues");
    assert!(a.device_states()[0].ticks <= b.device_states()[0].ticks);
}

#[test]
fn refused_device_version_leaves_the_source_running() {
    let a = Arc::new(Synthetic::new(4 << 20, Fill::Random, 2, 1));
    let b = Arc::new(Synthetic::new(4 << 20, Fill::Zero, 3, 2));
    use vmstream_migrate::vm::Vcpus;
    a.resume().unwrap();
    let o = run(&a, &b, 1, fast(), &[], Cancel::new());
    let e = o.src.unwrap_err();
    assert!(e.to_string().contains("dev2"), "{e}");
    assert!(o.dst.unwrap_err().to_string().contains("dev2"));
    assert!(!a.is_paused(), "source still running");
    assert!(b.is_paused(), "destination never ran");
    assert_eq!(o.src_stats.snapshot().status, Some(Status::Failed));
}

#[test]
fn cancel_before_start_and_a_second_migration_succeeds() {
    let a = Arc::new(Synthetic::new(4 << 20, Fill::Random, 1, 1));
    let b = Arc::new(Synthetic::new(4 << 20, Fill::Zero, 1, 2));
    use vmstream_migrate::vm::Vcpus;
    a.resume().unwrap();
    let c = Cancel::new();
    c.cancel();
    let o = run(&a, &b, 2, fast(), &[], c);
    assert!(o.src.unwrap_err().is_cancel());
    assert!(o.dst.is_err());
    assert!(!a.is_paused());
    assert_eq!(o.src_stats.snapshot().status, Some(Status::Cancelled));
    let o = run(&a, &b, 2, fast(), &[], Cancel::new());
    ok(&o);
    assert_eq!(a.checksum(), b.checksum());
}

#[test]
fn one_way_file_snapshot_restores_into_a_new_guest() {
    let dir = std::env::temp_dir().join(format!("vmstream-engine-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("snap.vms");
    let a = Arc::new(Synthetic::new(8 << 20, Fill::Random, 2, 1));
    use vmstream_migrate::vm::Vcpus;
    a.resume().unwrap();
    let out = std::fs::File::create(&path).unwrap();
    let conns = Connections {
        main: Box::new(out),
        data: vec![],
        one_way: true,
    };
    let stats = Stats::new();
    migrate(&a.vm(), conns, &fast(), &stats, &Cancel::new()).unwrap();
    assert!(a.is_paused(), "the source stays paused after a snapshot");
    assert_eq!(stats.snapshot().status, Some(Status::Completed));

    let b = Arc::new(Synthetic::new(8 << 20, Fill::Zero, 2, 2));
    let bvm = b.vm();
    let loc = local(&bvm, 0, &[]).unwrap();
    let inp = std::fs::File::open(&path).unwrap();
    let conns = Connections {
        main: Box::new(inp),
        data: vec![],
        one_way: true,
    };
    incoming(&bvm, conns, &loc, &Stats::new(), &Cancel::new()).unwrap();
    assert_eq!(a.checksum(), b.checksum());
    assert_eq!(a.device_states(), b.device_states());
    assert!(!b.is_paused());

    // A guest with another device set refuses the snapshot and stays paused.
    let c = Arc::new(Synthetic::new(8 << 20, Fill::Zero, 3, 2));
    let cvm = c.vm();
    let loc = local(&cvm, 0, &[]).unwrap();
    let inp = std::fs::File::open(&path).unwrap();
    let conns = Connections {
        main: Box::new(inp),
        data: vec![],
        one_way: true,
    };
    let e = incoming(&cvm, conns, &loc, &Stats::new(), &Cancel::new()).unwrap_err();
    assert!(e.to_string().contains("dev2"), "{e}");
    assert!(c.is_paused());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn controller_reports_a_cancelled_migration_as_cancelled() {
    use vmstream_migrate::control::Controller;
    use vmstream_migrate::qmp::{
        MigrateArgs, MigrateIncomingArgs, MigrationControl, MigrationStatus,
    };
    use vmstream_migrate::vm::Vcpus;

    let obj = |v: serde_json::Value| v.as_object().unwrap().clone();
    // A peer that takes the connections and never answers: the source waits
    // in setup until the cancel cuts its connections, which its driver sees
    // as an I/O error.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let uri = format!("tcp:127.0.0.1:{}", silent.local_addr().unwrap().port());
    let a = Arc::new(Synthetic::new(4 << 20, Fill::Random, 1, 1));
    a.resume().unwrap();
    let src = Controller::new(a.vm(), Arc::new(|_, _| {}));
    src.migrate(MigrateArgs::from_args(obj(serde_json::json!({ "uri": uri }))).unwrap())
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    src.migrate_cancel().unwrap();
    src.wait();
    let info = src.query_migrate().unwrap();
    assert_eq!(info.status, Some(MigrationStatus::Cancelled), "{info:?}");
    assert!(!a.is_paused());

    // A destination cancelled while it waits for its source.
    let b = Arc::new(Synthetic::new(4 << 20, Fill::Zero, 1, 2));
    let dst = Controller::new(b.vm(), Arc::new(|_, _| {}));
    let args = serde_json::json!({ "uri": "tcp:127.0.0.1:0" });
    dst.migrate_incoming(MigrateIncomingArgs::from_args(obj(args)).unwrap())
        .unwrap();
    dst.migrate_cancel().unwrap();
    dst.wait();
    let info = dst.query_migrate().unwrap();
    assert_eq!(info.status, Some(MigrationStatus::Cancelled), "{info:?}");
    assert!(b.is_paused());
}

#[test]
fn a_destination_stops_listening_when_its_migration_ends() {
    use vmstream_migrate::control::Controller;
    use vmstream_migrate::qmp::{
        MigrateArgs, MigrateIncomingArgs, MigrationControl, MigrationStatus,
    };
    use vmstream_migrate::vm::Vcpus;

    let obj = |v: serde_json::Value| v.as_object().unwrap().clone();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let uri = serde_json::json!({ "uri": format!("tcp:127.0.0.1:{port}") });
    // The destination has a device the source lacks: refused.
    let b = Arc::new(Synthetic::new(4 << 20, Fill::Zero, 2, 2));
    let dst = Controller::new(b.vm(), Arc::new(|_, _| {}));
    dst.migrate_incoming(MigrateIncomingArgs::from_args(obj(uri.clone())).unwrap())
        .unwrap();
    let a = Arc::new(Synthetic::new(4 << 20, Fill::Random, 1, 1));
    a.resume().unwrap();
    let src = Controller::new(a.vm(), Arc::new(|_, _| {}));
    src.migrate(MigrateArgs::from_args(obj(uri.clone())).unwrap())
        .unwrap();
    src.wait();
    dst.wait();
    assert_eq!(
        src.query_migrate().unwrap().status,
        Some(MigrationStatus::Failed)
    );
    assert_eq!(
        dst.query_migrate().unwrap().status,
        Some(MigrationStatus::Failed)
    );
    // Nothing listens on the port any more, and it can be listened on again.
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    dst.migrate_incoming(MigrateIncomingArgs::from_args(obj(uri)).unwrap())
        .unwrap();
    dst.migrate_cancel().unwrap();
    dst.wait();
    assert_eq!(
        dst.query_migrate().unwrap().status,
        Some(MigrationStatus::Cancelled)
    );
}

#[test]
fn a_failing_channel_fails_the_migration_and_the_first_failure_is_reported() {
    use vmstream_migrate::vm::Vcpus;
    for fault in [(Kind::Cut, 1 << 20), (Kind::Flip, (1 << 20) + 777)] {
        let a = Arc::new(Synthetic::new(16 << 20, Fill::Random, 1, 1));
        let b = Arc::new(Synthetic::new(16 << 20, Fill::Zero, 1, 2));
        a.resume().unwrap();
        let w = wired(2, Spot::Data(1), Some(fault));
        let (o, ds) = migrate_wired(&a, &b, w.src, w.dst);
        let (src, dst, ss) = (o.src, o.dst, o.src_stats);
        let (src, dst) = (src.unwrap_err(), dst.unwrap_err());
        // A failure, not a cancel, on both sides.
        assert_eq!(ss.snapshot().status, Some(Status::Failed), "{src}");
        assert_eq!(ds.snapshot().status, Some(Status::Failed), "{dst}");
        assert!(!a.is_paused(), "the source runs on");
        assert!(b.is_paused(), "the destination never ran");
        if matches!(fault.0, Kind::Cut) {
            assert!(src.to_string().contains("injected cut"), "{src}");
        } else {
            // The destination names the corruption, not the teardown after it.
            assert!(dst.to_string().contains("checksum"), "{dst}");
        }
    }
}

/// One end of a connection that logs what it writes and can inject one fault
/// at a byte offset: cut the connection there, or invert that byte.
struct Wire {
    inner: UnixStream,
    written: usize,
    fault: Option<(Kind, usize)>,
    log: Arc<std::sync::Mutex<Vec<u8>>>,
    fired: Arc<std::sync::atomic::AtomicBool>,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Cut,
    Flip,
}

impl Wire {
    fn new(inner: UnixStream, fault: Option<(Kind, usize)>) -> Wire {
        Wire {
            inner,
            written: 0,
            fault,
            log: Arc::default(),
            fired: Arc::default(),
        }
    }
}

impl std::io::Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf)
    }
}

impl std::io::Write for Wire {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let span = self.written..self.written + buf.len();
        let mut chunk = buf.to_vec();
        match self.fault {
            Some((Kind::Cut, at)) if span.contains(&at) => {
                self.fired.store(true, std::sync::atomic::Ordering::SeqCst);
                self.inner.write_all(&chunk[..at - self.written])?;
                self.inner.shutdown(std::net::Shutdown::Both)?;
                return Err(std::io::Error::other("injected cut"));
            }
            Some((Kind::Flip, at)) if span.contains(&at) => {
                self.fired.store(true, std::sync::atomic::Ordering::SeqCst);
                chunk[at - self.written] ^= 0xff;
            }
            _ => {}
        }
        let n = self.inner.write(&chunk)?;
        self.log.lock().unwrap().extend_from_slice(&chunk[..n]);
        self.written += n;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl Link for Wire {
    fn cutter(&self) -> vmstream_migrate::link::Cutter {
        self.inner.cutter()
    }
}

/// Where a fault goes: the source's main channel, one of its data
/// channels, or the destination's answers on main.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Spot {
    Main,
    Data(usize),
    Back,
}

/// Connections whose source ends (and the destination's main) are [`Wire`]s,
/// one of them with a fault.
struct Wired {
    src: Connections,
    dst: Connections,
    /// What the source's main, its data channels and the destination's main
    /// carried.
    logs: Vec<Arc<std::sync::Mutex<Vec<u8>>>>,
    /// Whether the fault fired.
    fired: Arc<std::sync::atomic::AtomicBool>,
}

fn wired(n: usize, spot: Spot, fault: Option<(Kind, usize)>) -> Wired {
    let mut logs = Vec::new();
    let mut fired = Arc::default();
    let mut wire = |s: UnixStream, here: Spot| {
        let w = Wire::new(s, if spot == here { fault } else { None });
        logs.push(w.log.clone());
        if spot == here {
            fired = w.fired.clone();
        }
        Box::new(w) as Box<dyn Link>
    };
    let (a, b) = UnixStream::pair().unwrap();
    let mut src = Connections {
        main: wire(a, Spot::Main),
        data: vec![],
        one_way: false,
    };
    let mut data = Vec::new();
    for k in 0..n {
        let (a, b) = UnixStream::pair().unwrap();
        src.data.push(wire(a, Spot::Data(k)));
        data.push(Box::new(b) as Box<dyn Link>);
    }
    let dst = Connections {
        main: wire(b, Spot::Back),
        data,
        one_way: false,
    };
    Wired {
        src,
        dst,
        logs,
        fired,
    }
}

fn migrate_wired(
    a: &Arc<Synthetic>,
    b: &Arc<Synthetic>,
    s: Connections,
    d: Connections,
) -> (Outcome, Stats) {
    let (svm, dvm) = (a.vm(), b.vm());
    let loc = local(&dvm, 8, &[]).unwrap();
    let (ss, ds) = (Stats::new(), Stats::new());
    let (src, dst) = std::thread::scope(|scope| {
        let h = scope.spawn(|| incoming(&dvm, d, &loc, &ds, &Cancel::new()));
        let src = migrate(&svm, s, &fast(), &ss, &Cancel::new());
        (src, h.join().unwrap())
    });
    (
        Outcome {
            src,
            dst,
            src_stats: ss,
        },
        ds,
    )
}

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{:?} not on the wire", String::from_utf8_lossy(needle)))
}

/// A flipped byte in a record's length leaves the reader waiting for bytes
/// that never come, and the writer waiting for an answer: the source gives up
/// after its answer timeout, takes its VM back, and the destination, cut off,
/// fails.
#[test]
fn a_corrupt_record_length_times_out_and_leaves_the_source_intact() {
    use vmstream_migrate::vm::Vcpus;
    let a = Arc::new(Synthetic::new(4 << 20, Fill::Random, 2, 1));
    a.resume().unwrap();
    let memory = a.checksum();
    let b = Arc::new(Synthetic::new(4 << 20, Fill::Zero, 2, 2));
    let w = wired(2, Spot::Main, None);
    let (o, _) = migrate_wired(&a, &b, w.src, w.dst);
    ok(&o);
    a.resume().unwrap();
    // The second byte of `complete`'s body length (record: u16 kind, u16
    // flags, u32 body_len, body): 64 KiB more than will ever come.
    let complete = find(&w.logs[0].lock().unwrap(), br#"{"msg":"complete""#);
    let at = complete - 8 + 5;
    let b = Arc::new(Synthetic::new(4 << 20, Fill::Zero, 2, 2));
    let w = wired(2, Spot::Main, Some((Kind::Flip, at)));
    let t = std::time::Instant::now();
    let (o, ds) = migrate_wired(&a, &b, w.src, w.dst);
    assert!(w.fired.load(std::sync::atomic::Ordering::SeqCst));
    let e = o.src.unwrap_err().to_string();
    assert!(
        e.contains("no ready from the destination within 2000 ms"),
        "{e}"
    );
    assert!(o.dst.is_err());
    assert_eq!(ds.snapshot().status, Some(Status::Failed));
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    assert!(!a.is_paused(), "the source runs on");
    assert!(b.is_paused(), "the destination never ran");
    assert_eq!(a.checksum(), memory);
}

/// splitmix64: a reproducible stream of random numbers from one seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Faults at random points of random channels, in every phase up to the
/// commit: each leaves the source running with memory and devices as they
/// were and the destination paused, and a second migration then succeeds.
/// `VMSTREAM_FAULT_SEED` replays one seed; `VMSTREAM_FAULT_TRIALS` runs more.
#[test]
fn faults_at_random_points_leave_the_source_intact() {
    use vmstream_migrate::vm::Vcpus;
    let seed: u64 = std::env::var("VMSTREAM_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    let trials: u64 = std::env::var("VMSTREAM_FAULT_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let mut rng = Rng(seed);
    let a = Arc::new(Synthetic::new(8 << 20, Fill::Random, 3, 1));
    a.resume().unwrap();
    let (memory, devices) = (a.checksum(), a.device_states());
    // Where each channel's bytes end, from a run without faults: a fault on
    // the source's main must come before `go` (after it the destination may
    // run, and the source rightly stays paused); on the destination's main,
    // before the end of `ready`. Pages go to whichever data channel is free,
    // so a data channel's length varies from run to run: a fault past its
    // end this time does not fire, and that migration must succeed.
    let mut lengths = Vec::new();
    for n in 0..=3 {
        let b = Arc::new(Synthetic::new(8 << 20, Fill::Zero, 3, 2));
        let Wired { src, dst, logs, .. } = wired(n, Spot::Main, None);
        let (o, _) = migrate_wired(&a, &b, src, dst);
        ok(&o);
        let main = logs[0].lock().unwrap();
        let go = find(&main, br#"{"msg":"go"}"#) - 64;
        let data: Vec<usize> = logs[1..=n]
            .iter()
            .map(|l| l.lock().unwrap().len())
            .collect();
        let back = logs[n + 1].lock().unwrap();
        let ready = find(&back, br#"{"msg":"ready"}"#) + br#"{"msg":"ready"}"#.len();
        lengths.push((go, data, ready));
        // The source stays paused after a completed migration: run it again.
        a.resume().unwrap();
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut missed = 0;
    for t in 0..trials {
        let n = rng.below(4) as usize;
        let (go, data, ready) = &lengths[n];
        let spot = match rng.below(n as u64 + 2) {
            0 => Spot::Main,
            1 => Spot::Back,
            k => Spot::Data(k as usize - 2),
        };
        let end = match spot {
            Spot::Main => *go,
            Spot::Back => *ready,
            Spot::Data(k) => data[k],
        };
        let kind = if rng.below(2) == 0 {
            Kind::Cut
        } else {
            Kind::Flip
        };
        let at = rng.below(end as u64) as usize;
        let what =
            format!("seed {seed} trial {t}: {kind:?} at byte {at} of {spot:?}, {n} data channels");
        let b = Arc::new(Synthetic::new(8 << 20, Fill::Zero, 3, 2));
        if std::env::var_os("VMSTREAM_FAULT_TRACE").is_some() {
            eprintln!("start {what}");
        }
        let w = wired(n, spot, Some((kind, at)));
        let (o, ds) = migrate_wired(&a, &b, w.src, w.dst);
        let fired = w.fired;
        if !fired.load(std::sync::atomic::Ordering::SeqCst) {
            assert!(
                matches!(spot, Spot::Data(_)),
                "{what}: the fault did not fire"
            );
            ok(&o);
            assert_eq!(b.checksum(), memory, "{what}");
            a.resume().unwrap();
            missed += 1;
            continue;
        }
        let src = o.src.expect_err(&what);
        let dst = o.dst.expect_err(&what);
        eprintln!("{what}\n  source: {src}\n  destination: {dst}");
        assert_eq!(
            o.src_stats.snapshot().status,
            Some(Status::Failed),
            "{what}: {src}"
        );
        assert_eq!(ds.snapshot().status, Some(Status::Failed), "{what}: {dst}");
        assert!(!a.is_paused(), "{what}: the source runs on");
        assert!(b.is_paused(), "{what}: the destination never ran");
        assert_eq!(a.checksum(), memory, "{what}: source memory changed");
        assert_eq!(a.device_states(), devices, "{what}: source devices changed");
        seen.insert((
            format!("{spot:?}").chars().take(4).collect::<String>(),
            format!("{kind:?}"),
        ));
    }
    // Every kind of fault on every kind of channel was tried, and most fired.
    if trials >= 40 {
        assert_eq!(seen.len(), 6, "{seen:?}");
        assert!(
            missed * 4 < trials,
            "{missed} of {trials} faults did not fire"
        );
    }
    // And the source migrates again, exactly.
    let b = Arc::new(Synthetic::new(8 << 20, Fill::Zero, 3, 2));
    let w = wired(2, Spot::Main, None);
    let (o, _) = migrate_wired(&a, &b, w.src, w.dst);
    ok(&o);
    assert_eq!(b.checksum(), memory);
    assert_eq!(b.device_states(), devices);
}
