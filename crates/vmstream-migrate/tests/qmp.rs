//! The QMP server end to end over unix sockets: greeting and negotiation, QEMU's
//! errors for bad input, events, many clients, bounded memory, shutdown.
//!
//! The tests run one at a time (see `serial`) because one of them measures the
//! heap of the whole process with a counting allocator.

#![allow(unsafe_code)] // the counting allocator below
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns: a failure is a test failure

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use vmstream_migrate::qmp::{
    ClientError, ErrorClass, Events, Handler, MigrateArgs, MigrateIncomingArgs,
    MigrationCapability, MigrationCapabilityStatus, MigrationCommands, MigrationControl,
    MigrationInfo, MigrationParameters, MigrationStatus, QmpClient, QmpError, QmpServer,
    ServerConfig, SetMigrationParameters,
};

// ---------------------------------------------------------------------------
// A counting allocator, to show the server's memory stays bounded.

struct CountingAlloc;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let now = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is passed on to `System` unchanged; only counters are added.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller upholds `GlobalAlloc::dealloc`'s contract.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// Serialises the tests of this file.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------
// A stand-in engine behind the migration commands.

#[derive(Default)]
struct FakeEngine {
    params: Mutex<MigrationParameters>,
    caps: Mutex<Vec<MigrationCapabilityStatus>>,
    info: Mutex<MigrationInfo>,
    started: Mutex<Vec<MigrateArgs>>,
    events: OnceLock<Events>,
}

const SUPPORTED: [MigrationCapability; 3] = [
    MigrationCapability::Events,
    MigrationCapability::Multifd,
    MigrationCapability::AutoConverge,
];

impl FakeEngine {
    fn new() -> FakeEngine {
        let caps = SUPPORTED
            .iter()
            .map(|&capability| MigrationCapabilityStatus {
                capability,
                state: false,
            })
            .collect();
        FakeEngine {
            caps: Mutex::new(caps),
            ..FakeEngine::default()
        }
    }

    fn set_status(&self, status: MigrationStatus) {
        self.info.lock().unwrap().status = Some(status);
        let events_on = self
            .caps
            .lock()
            .unwrap()
            .iter()
            .any(|c| c.capability == MigrationCapability::Events && c.state);
        if events_on {
            if let Some(events) = self.events.get() {
                events.emit_migration(status);
            }
        }
    }
}

impl MigrationControl for FakeEngine {
    fn migrate(&self, args: MigrateArgs) -> Result<(), QmpError> {
        if self.info.lock().unwrap().status == Some(MigrationStatus::Active) {
            return Err(QmpError::generic("There's a migration process in progress"));
        }
        self.started.lock().unwrap().push(args);
        self.set_status(MigrationStatus::Setup);
        self.set_status(MigrationStatus::Active);
        self.set_status(MigrationStatus::Completed);
        Ok(())
    }

    fn migrate_incoming(&self, _args: MigrateIncomingArgs) -> Result<(), QmpError> {
        Err(QmpError::generic(
            "'-incoming' was not specified on the command line",
        ))
    }

    fn query_migrate(&self) -> Result<MigrationInfo, QmpError> {
        Ok(self.info.lock().unwrap().clone())
    }

    fn query_migrate_capabilities(&self) -> Result<Vec<MigrationCapabilityStatus>, QmpError> {
        Ok(self.caps.lock().unwrap().clone())
    }

    fn migrate_set_capabilities(
        &self,
        caps: Vec<MigrationCapabilityStatus>,
    ) -> Result<(), QmpError> {
        let mut current = self.caps.lock().unwrap();
        let mut next = current.clone();
        for cap in caps {
            let Some(slot) = next.iter_mut().find(|c| c.capability == cap.capability) else {
                return Err(QmpError::generic(format!(
                    "Capability '{}' is not supported",
                    cap.capability
                )));
            };
            slot.state = cap.state;
        }
        *current = next;
        Ok(())
    }

    fn query_migrate_parameters(&self) -> Result<MigrationParameters, QmpError> {
        Ok(self.params.lock().unwrap().clone())
    }

    fn migrate_set_parameters(&self, set: SetMigrationParameters) -> Result<(), QmpError> {
        let mut params = self.params.lock().unwrap();
        *params = params.apply(&set)?;
        Ok(())
    }

    fn migrate_cancel(&self) -> Result<(), QmpError> {
        Ok(())
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    server: QmpServer,
    engine: Arc<MigrationCommands<FakeEngine>>,
}

fn fixture(config: ServerConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qmp.sock");
    let engine = Arc::new(MigrationCommands::new(FakeEngine::new()));
    let server = QmpServer::bind_with(&path, engine.clone(), config).unwrap();
    engine.control().events.set(server.events()).unwrap();
    Fixture {
        _dir: dir,
        path,
        server,
        engine,
    }
}

/// A connection that speaks bytes, for what a well-behaved client never sends.
struct Raw {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Raw {
    fn connect(f: &Fixture) -> Raw {
        let stream = UnixStream::connect(&f.path).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Raw { stream, reader }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    fn recv(&mut self) -> Value {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).unwrap();
        assert!(n > 0, "server closed the connection");
        assert!(line.ends_with("\r\n"), "line not ended by CRLF: {line:?}");
        assert!(line.is_ascii());
        serde_json::from_str(&line).unwrap()
    }

    /// Reads the greeting and negotiates.
    fn ready(f: &Fixture) -> Raw {
        let mut raw = Raw::connect(f);
        assert!(raw.recv().get("QMP").is_some());
        raw.send(b"{\"execute\": \"qmp_capabilities\"}");
        assert_eq!(raw.recv(), json!({"return": {}}));
        raw
    }

    fn is_closed(&mut self) -> bool {
        let mut line = String::new();
        matches!(self.reader.read_line(&mut line), Ok(0) | Err(_))
    }
}

fn err(class: &str, desc: &str) -> Value {
    json!({"error": {"class": class, "desc": desc}})
}

fn err_id(class: &str, desc: &str, id: Value) -> Value {
    json!({"error": {"class": class, "desc": desc}, "id": id})
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------

#[test]
fn greeting_and_negotiation() {
    let _s = serial();
    let f = fixture(ServerConfig::default());
    let mut raw = Raw::connect(&f);
    let greeting = raw.recv();
    let version = &greeting["QMP"]["version"];
    assert_eq!(greeting["QMP"]["capabilities"], json!([]));
    assert_eq!(
        version["package"],
        format!("vmstream {}", env!("CARGO_PKG_VERSION"))
    );
    for part in ["major", "minor", "micro"] {
        assert!(version["qemu"][part].is_u64(), "{part}");
    }
    raw.send(b"{\"execute\": \"qmp_capabilities\", \"arguments\": {\"enable\": [\"oob\"]}}");
    assert_eq!(
        raw.recv(),
        err("GenericError", "Capability oob not available")
    );
    raw.send(b"{\"execute\": \"qmp_capabilities\", \"id\": 1}");
    assert_eq!(raw.recv(), json!({"return": {}, "id": 1}));
    raw.send(b"{\"execute\": \"qmp_capabilities\"}");
    assert_eq!(
        raw.recv(),
        err(
            "CommandNotFound",
            "Capabilities negotiation is already complete, command ignored"
        )
    );
    raw.send(b"{\"execute\": \"query-version\"}");
    assert_eq!(raw.recv()["return"], *version);
    raw.send(b"{\"execute\": \"query-commands\"}");
    let names: Vec<String> = raw.recv()["return"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    for cmd in [
        "qmp_capabilities",
        "query-version",
        "migrate",
        "migrate-incoming",
        "query-migrate",
        "migrate_cancel",
    ] {
        assert!(
            names.iter().any(|n| n == cmd),
            "{cmd} missing from {names:?}"
        );
    }

    // The blocking client does the same.
    let mut client = QmpClient::connect(&f.path).unwrap();
    assert_eq!(client.greeting()["QMP"]["version"], *version);
    client.negotiate().unwrap();
    assert_eq!(client.execute("query-version", None).unwrap(), *version);
}

#[test]
fn commands_before_negotiation_are_not_found_and_events_wait() {
    let _s = serial();
    let f = fixture(ServerConfig::default());
    let mut raw = Raw::connect(&f);
    raw.recv();
    raw.send(b"{\"execute\": \"query-migrate\", \"id\": \"q\"}");
    assert_eq!(
        raw.recv(),
        err_id(
            "CommandNotFound",
            "Expecting capabilities negotiation with 'qmp_capabilities'",
            json!("q")
        )
    );
    // Not negotiated: no events.
    wait_until("client registered", || f.server.client_count() == 1);
    assert_eq!(f.server.events().emit("EARLY", None), 0);
    raw.send(b"{\"execute\": \"qmp_capabilities\"}");
    assert_eq!(raw.recv(), json!({"return": {}}));
    assert_eq!(f.server.events().emit("LATE", None), 1);
    let event = raw.recv();
    assert_eq!(event["event"], "LATE");
    raw.send(b"{\"execute\": \"query-migrate\", \"id\": \"q\"}");
    assert_eq!(raw.recv(), json!({"return": {}, "id": "q"}));
}

#[test]
fn malformed_input_gets_qemu_errors_and_the_socket_keeps_serving() {
    let _s = serial();
    let f = fixture(ServerConfig::default());
    let mut raw = Raw::ready(&f);
    let cases: Vec<(&[u8], Vec<Value>)> = vec![
        (
            b"{\"execute\": }",
            vec![err("GenericError", "JSON parse error, expecting value")],
        ),
        (
            b"[1, 2]",
            vec![err("GenericError", "QMP input must be a JSON object")],
        ),
        (
            b"\"text\"\n",
            vec![err("GenericError", "QMP input must be a JSON object")],
        ),
        (
            b"{\"id\": 7}",
            vec![err_id(
                "GenericError",
                "QMP input lacks member 'execute'",
                json!(7),
            )],
        ),
        (
            b"{\"execute\": \"query-migrate\", \"verbose\": true}",
            vec![err(
                "GenericError",
                "QMP input member 'verbose' is unexpected",
            )],
        ),
        (
            b"{\"exec-oob\": \"migrate-pause\", \"id\": 42}",
            vec![err_id(
                "GenericError",
                "QMP input member 'exec-oob' is unexpected",
                json!(42),
            )],
        ),
        (
            b"{\"execute\": \"warp\", \"id\": [1]}",
            vec![err_id(
                "CommandNotFound",
                "The command warp has not been found",
                json!([1]),
            )],
        ),
        (
            b"{\"execute\": \"query-migrate\", \"arguments\": 5}",
            vec![err(
                "GenericError",
                "QMP input member 'arguments' must be an object",
            )],
        ),
        (
            b"{\"execute\": \"query-migrate\", \"execute\": \"x\"}",
            vec![err("GenericError", "JSON parse error, duplicate key")],
        ),
        // A lexical error mid-message; the newline gets the parser back.
        (
            b"{\"execute\": \"query-version\" @ \n",
            vec![err("GenericError", "JSON parse error, stray '@'")],
        ),
        (
            b"\xff\n",
            vec![err("GenericError", "JSON parse error, stray '\u{fffd}'")],
        ),
    ];
    for (input, expected) in cases {
        raw.send(input);
        for want in expected {
            assert_eq!(
                raw.recv(),
                want,
                "for input {:?}",
                String::from_utf8_lossy(input)
            );
        }
        // Still serving.
        raw.send(b"{\"execute\": \"query-migrate\", \"id\": \"ok\"}");
        assert_eq!(
            raw.recv(),
            json!({"return": {}, "id": "ok"}),
            "after {:?}",
            String::from_utf8_lossy(input)
        );
    }
    // Half a message abandoned with a control character, as the QMP spec advises.
    raw.send(b"{\"execute\": \"query-mig\x01");
    assert_eq!(
        raw.recv(),
        err("GenericError", "JSON parse error, stray '\"query-mig\u{1}'")
    );
    raw.send(b"{'execute': 'query-migrate', 'id': 'sq'}");
    assert_eq!(raw.recv(), json!({"return": {}, "id": "sq"}));
}

#[test]
fn bad_arguments_name_the_parameter() {
    let _s = serial();
    let f = fixture(ServerConfig::default());
    let mut c = QmpClient::connect(&f.path).unwrap();
    c.negotiate().unwrap();
    let cases = [
        (
            "migrate",
            json!({"uri": "tcp:0:4446", "bogus": 1}),
            "Parameter 'bogus' is unexpected",
        ),
        (
            "migrate",
            json!({"uri": 4446}),
            "Invalid parameter type for 'uri', expected: string",
        ),
        (
            "migrate",
            json!({}),
            "need either 'uri' or 'channels' argument",
        ),
        (
            "migrate",
            json!({"channels": ["main"]}),
            "Invalid parameter type for 'channels[0]', expected: object",
        ),
        (
            "migrate-set-parameters",
            json!({"downtime-limit": 3000000}),
            "Parameter 'downtime-limit' expects an integer in the range of 0 to 2000000 ms",
        ),
        (
            "migrate-set-parameters",
            json!({"multifd-channels": 0}),
            "Parameter 'multifd-channels' expects an integer in the range of 1 to 255",
        ),
        (
            "migrate-set-parameters",
            json!({"multifd-compression": "lzma"}),
            "Parameter 'multifd-compression' does not accept value 'lzma'",
        ),
        (
            "migrate-set-parameters",
            json!({"speed": 1}),
            "Parameter 'speed' is unexpected",
        ),
        (
            "migrate-set-capabilities",
            json!({"capabilities": [{"capability": "events", "state": "on"}]}),
            "Invalid parameter type for 'capabilities[0].state', expected: boolean",
        ),
        (
            "query-migrate",
            json!({"detail": true}),
            "Parameter 'detail' is unexpected",
        ),
        (
            "migrate_cancel",
            json!({"now": true}),
            "Parameter 'now' is unexpected",
        ),
    ];
    for (cmd, args, desc) in cases {
        match c.execute(cmd, args.as_object().cloned()) {
            Err(ClientError::Qmp(e)) => {
                assert_eq!(e.class, ErrorClass::GenericError, "{cmd} {args}");
                assert_eq!(e.desc, desc, "{cmd} {args}");
            }
            other => panic!("{cmd} {args}: {other:?}"),
        }
    }
    // Nothing reached the engine, and the parameters are unchanged.
    assert!(f.engine.control().started.lock().unwrap().is_empty());
    let params = c.execute("query-migrate-parameters", None).unwrap();
    assert_eq!(
        serde_json::from_value::<MigrationParameters>(params).unwrap(),
        MigrationParameters::default()
    );
}

#[test]
fn migration_commands_reach_the_engine_and_events_follow() {
    let _s = serial();
    let f = fixture(ServerConfig::default());
    let mut c = QmpClient::connect(&f.path).unwrap();
    c.negotiate().unwrap();

    let set = json!({"downtime-limit": 500, "multifd-channels": 4, "multifd-compression": "zstd", "tls-creds": null});
    c.execute("migrate-set-parameters", set.as_object().cloned())
        .unwrap();
    let params: MigrationParameters =
        serde_json::from_value(c.execute("query-migrate-parameters", None).unwrap()).unwrap();
    assert_eq!((params.downtime_limit, params.multifd_channels), (500, 4));

    let caps = json!({"capabilities": [{"capability": "events", "state": true}]});
    c.execute("migrate-set-capabilities", caps.as_object().cloned())
        .unwrap();
    let caps = c.execute("query-migrate-capabilities", None).unwrap();
    assert!(caps
        .as_array()
        .unwrap()
        .contains(&json!({"capability": "events", "state": true})));
    let unsupported = json!({"capabilities": [{"capability": "xbzrle", "state": true}]});
    match c.execute("migrate-set-capabilities", unsupported.as_object().cloned()) {
        Err(ClientError::Qmp(e)) => assert_eq!(e.desc, "Capability 'xbzrle' is not supported"),
        other => panic!("{other:?}"),
    }

    let channels = json!({"channels": [{"channel-type": "main", "addr": {"transport": "socket", "type": "unix", "path": "/tmp/x"}}]});
    assert_eq!(
        c.execute("migrate", channels.as_object().cloned()).unwrap(),
        json!({})
    );
    for status in ["setup", "active", "completed"] {
        let e = c
            .wait_event("MIGRATION", Duration::from_secs(10))
            .unwrap()
            .expect("MIGRATION event");
        assert_eq!(e.data.unwrap()["status"], status);
        assert!(e.seconds > 1_600_000_000 && (0..1_000_000).contains(&e.microseconds));
    }
    assert_eq!(
        c.execute("query-migrate", None).unwrap(),
        json!({"status": "completed"})
    );
    let started = f.engine.control().started.lock().unwrap().clone();
    assert_eq!(started.len(), 1);
    assert_eq!(
        MigrateArgs::from_args(started[0].to_args()).unwrap(),
        started[0]
    );
    assert_eq!(c.execute("migrate_cancel", None).unwrap(), json!({}));
    match c.execute(
        "migrate-incoming",
        json!({"uri": "tcp:0:4446"}).as_object().cloned(),
    ) {
        Err(ClientError::Qmp(e)) => {
            assert_eq!(e.desc, "'-incoming' was not specified on the command line")
        }
        other => panic!("{other:?}"),
    }
    assert!(c
        .wait_event("MIGRATION", Duration::from_millis(50))
        .unwrap()
        .is_none());
}

#[test]
fn ids_are_echoed_whatever_their_type() {
    let _s = serial();
    let f = fixture(ServerConfig::default());
    let mut raw = Raw::ready(&f);
    for id in [
        json!(1),
        json!("abc"),
        json!(-2.5),
        json!(null),
        json!({"a": [1, {"b": true}]}),
        json!([]),
    ] {
        let ok = json!({"execute": "query-migrate", "id": id});
        raw.send(ok.to_string().as_bytes());
        assert_eq!(raw.recv(), json!({"return": {}, "id": id}));
        let bad = json!({"execute": "nope", "id": id});
        raw.send(bad.to_string().as_bytes());
        assert_eq!(
            raw.recv(),
            err_id("CommandNotFound", "The command nope has not been found", id)
        );
    }
}

#[test]
fn split_and_concatenated_messages() {
    let _s = serial();
    let f = fixture(ServerConfig::default());
    let mut raw = Raw::ready(&f);
    // Three requests in one write, no separators: three responses, in order.
    raw.send(b"{\"execute\":\"query-migrate\",\"id\":1}{\"execute\":\"nope\",\"id\":2}{\"execute\":\"query-migrate\",\"id\":3}");
    assert_eq!(raw.recv()["id"], 1);
    assert_eq!(raw.recv()["id"], 2);
    assert_eq!(raw.recv()["id"], 3);
    // One request a byte at a time, pausing now and then so the server reads
    // partial tokens.
    let msg = b"{ \"execute\" : \"query-migrate\", \"id\" : 12345 }";
    for (i, b) in msg.iter().enumerate() {
        raw.send(&[*b]);
        if i % 7 == 0 {
            thread::sleep(Duration::from_millis(2));
        }
    }
    assert_eq!(raw.recv(), json!({"return": {}, "id": 12345}));
    // A trailing number completes only when the next byte comes.
    raw.send(b"7");
    thread::sleep(Duration::from_millis(50));
    raw.send(b" {\"execute\":\"query-migrate\",\"id\":4}");
    assert_eq!(
        raw.recv(),
        err("GenericError", "QMP input must be a JSON object")
    );
    assert_eq!(raw.recv()["id"], 4);
}

#[test]
fn oversized_and_deep_messages_are_refused_in_bounded_memory() {
    let _s = serial();
    let f = fixture(ServerConfig::default());
    let mut raw = Raw::ready(&f);
    let reader = raw.reader.get_ref().try_clone().unwrap();

    // Hostile input, built before measuring: a 4 MiB string, and 20000 '['
    // then 20000 ']'.
    let mut huge = b"{\"execute\": \"query-migrate\", \"arguments\": {\"x\": \"".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 4 << 20));
    huge.extend(b"\"}}\n");
    let mut deep = vec![b'['; 20_000];
    deep.extend(vec![b']'; 20_000]);
    deep.push(b'\n');
    let end = b"{\"execute\": \"query-migrate\", \"id\": \"end\"}";

    // Read every response in a thread, so the server never waits for us.
    let (tx, rx) = mpsc::channel();
    let counter = thread::spawn(move || {
        let mut r = BufReader::new(reader);
        let mut line = String::new();
        let mut errors: Vec<(String, usize)> = Vec::new();
        loop {
            line.clear();
            if r.read_line(&mut line).unwrap() == 0 {
                break;
            }
            let v: Value = serde_json::from_str(&line).unwrap();
            if v["id"] == "end" {
                break;
            }
            let desc = v["error"]["desc"].as_str().unwrap().to_string();
            match errors.iter_mut().find(|(d, _)| *d == desc) {
                Some((_, n)) => *n += 1,
                None => errors.push((desc, 1)),
            }
        }
        tx.send(errors).unwrap();
    });

    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    for _ in 0..8 {
        raw.send(&huge);
    }
    raw.send(&deep);
    raw.send(end);
    let errors = rx.recv_timeout(Duration::from_secs(60)).unwrap();
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    counter.join().unwrap();

    let count = |d: &str| errors.iter().find(|(e, _)| e == d).map_or(0, |(_, n)| *n);
    assert_eq!(count("JSON token size limit exceeded"), 8, "{errors:?}");
    assert!(count("JSON nesting depth limit exceeded") > 0, "{errors:?}");
    // 33 MiB went in; the server held about one 1 MiB message at a time.
    assert!(peak < 4 << 20, "peak heap growth {peak} bytes");
    // And it still serves, with its buffers given back.
    raw.send(b"{\"execute\": \"query-migrate\", \"id\": 1}");
    assert_eq!(raw.recv(), json!({"return": {}, "id": 1}));
    let after = LIVE.load(Ordering::Relaxed).saturating_sub(base);
    assert!(after < 256 << 10, "heap grew by {after} bytes");
}

#[test]
fn responses_wait_for_a_client_that_does_not_read() {
    let _s = serial();
    let f = fixture(ServerConfig::default());
    let mut raw = Raw::ready(&f);
    // Each request echoes a 256 KiB id; 64 of them are 16 MiB of responses.
    let id = "i".repeat(256 << 10);
    let request = json!({"execute": "query-migrate", "id": id}).to_string();
    let mut stream = raw.stream.try_clone().unwrap();

    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let writer = thread::spawn(move || {
        for _ in 0..64 {
            stream.write_all(request.as_bytes()).unwrap();
        }
    });
    // Give the server time to fill its outbox and the socket, then stall.
    thread::sleep(Duration::from_millis(300));
    let stalled_peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    assert!(
        !writer.is_finished(),
        "the server kept reading without being read"
    );
    assert!(
        stalled_peak < 6 << 20,
        "peak heap growth {stalled_peak} bytes while stalled"
    );
    // Reading again lets everything through.
    for _ in 0..64 {
        assert_eq!(raw.recv()["id"].as_str().map(str::len), Some(256 << 10));
    }
    writer.join().unwrap();
}

#[test]
fn events_reach_every_negotiated_client() {
    let _s = serial();
    let f = fixture(ServerConfig::default());
    let mut clients: Vec<QmpClient> = (0..5)
        .map(|_| QmpClient::connect(&f.path).unwrap())
        .collect();
    for c in &mut clients[..4] {
        c.negotiate().unwrap();
    }
    wait_until("5 clients", || f.server.client_count() == 5);
    assert_eq!(f.server.events().emit_migration(MigrationStatus::Active), 4);
    let mut data = Map::new();
    data.insert("pass".into(), 1.into());
    assert_eq!(
        f.server.events().emit("MIGRATION_PASS", Some(data.clone())),
        4
    );
    for c in &mut clients[..4] {
        let e = c
            .wait_event("MIGRATION_PASS", Duration::from_secs(5))
            .unwrap()
            .unwrap();
        assert_eq!(e.data, Some(data.clone()));
        let e = c
            .wait_event("MIGRATION", Duration::from_secs(5))
            .unwrap()
            .unwrap();
        assert_eq!(e.data.unwrap()["status"], "active");
    }
    // The one that never negotiated got nothing.
    let late = &mut clients[4];
    late.negotiate().unwrap();
    assert!(late.take_events().is_empty());
    assert!(late
        .next_message(Duration::from_millis(50))
        .unwrap()
        .is_none());
}

#[test]
fn a_client_that_stops_reading_is_dropped_and_others_go_on() {
    let _s = serial();
    let f = fixture(ServerConfig::default().with_max_queued(16 << 10));
    let mut stalled = Raw::ready(&f);
    let mut fast = QmpClient::connect(&f.path).unwrap();
    fast.negotiate().unwrap();
    wait_until("2 clients", || f.server.client_count() == 2);
    let events = f.server.events();
    let mut received = 0;
    let mut dropped = false;
    // Each event is about 100 bytes; the stalled client's socket buffer and
    // queue fill within a few thousand.
    for batch in 0..200 {
        let mut sent = 0;
        for _ in 0..50 {
            sent += events.emit_migration_pass(batch);
        }
        for _ in 0..50 {
            fast.wait_event("MIGRATION_PASS", Duration::from_secs(10))
                .unwrap()
                .expect("event");
            received += 1;
        }
        if sent < 100 {
            dropped = true;
            break;
        }
    }
    assert!(dropped, "the stalled client was never dropped");
    assert_eq!(f.server.client_count(), 1);
    assert!(received >= 50);
    // The stalled client finds its connection closed once it reads what was
    // sent (how much of that it still gets is the kernel's business).
    while !stalled.is_closed() {}
    assert!(fast.execute("query-migrate", None).is_ok());
}

#[test]
fn many_clients_at_once_and_a_cap() {
    let _s = serial();
    let f = fixture(ServerConfig::default());
    let path = f.path.clone();
    let workers: Vec<_> = (0..16)
        .map(|i| {
            let path = path.clone();
            thread::spawn(move || {
                let mut c = QmpClient::connect(&path).unwrap();
                c.negotiate().unwrap();
                for j in 0..20 {
                    let v = json!({"downtime-limit": 100 + i * 100 + j});
                    c.execute("migrate-set-parameters", v.as_object().cloned())
                        .unwrap();
                    c.execute("query-migrate-parameters", None).unwrap();
                }
                c
            })
        })
        .collect();
    let mut clients: Vec<QmpClient> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    assert_eq!(f.server.client_count(), 16);
    // One more is told why and closed.
    let mut extra = Raw::connect(&f);
    assert_eq!(
        extra.recv(),
        err("GenericError", "Too many QMP clients (at most 16)")
    );
    assert!(extra.is_closed());
    // When one leaves, there is room again.
    drop(clients.pop());
    wait_until("a free slot", || f.server.client_count() == 15);
    let mut again = QmpClient::connect(&f.path).unwrap();
    again.negotiate().unwrap();
    for c in &mut clients {
        c.execute("query-migrate", None).unwrap();
    }
}

#[test]
fn shutdown_still_answers_the_command_that_asked_for_it() {
    let _s = serial();
    // `quit` makes the guest shut its server down while the command is
    // still on its way back: the response must go out first.
    struct Quit(Mutex<mpsc::Sender<()>>);
    impl Handler for Quit {
        fn commands(&self) -> Vec<String> {
            vec!["quit".into()]
        }
        fn execute(&self, _name: &str, _args: Map<String, Value>) -> Result<Value, QmpError> {
            self.0.lock().unwrap().send(()).unwrap();
            // The shutdown starts before the response is queued.
            thread::sleep(Duration::from_millis(200));
            Ok(json!({}))
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qmp.sock");
    let (tx, rx) = mpsc::channel();
    let server = QmpServer::bind(&path, Arc::new(Quit(Mutex::new(tx)))).unwrap();
    let mut c = QmpClient::connect(&path).unwrap();
    c.negotiate().unwrap();
    let stopper = thread::spawn(move || {
        rx.recv().unwrap();
        let t = Instant::now();
        server.shutdown();
        t.elapsed()
    });
    assert_eq!(c.execute("quit", None).unwrap(), json!({}));
    assert!(stopper.join().unwrap() < Duration::from_secs(1));
    assert!(matches!(
        c.next_message(Duration::from_secs(5)),
        Err(ClientError::Closed | ClientError::Io(_))
    ));
    assert!(!path.exists());
}

#[test]
fn shutdown_closes_clients_and_removes_the_socket() {
    let _s = serial();
    let f = fixture(ServerConfig::default());
    let mut c = QmpClient::connect(&f.path).unwrap();
    c.negotiate().unwrap();
    let events = f.server.events();
    let path = f.path.clone();
    let Fixture { _dir, server, .. } = f;
    server.shutdown();
    assert!(!path.exists());
    assert!(matches!(
        c.execute("query-migrate", None),
        Err(ClientError::Closed | ClientError::Io(_))
    ));
    assert!(UnixStream::connect(&path).is_err());
    assert_eq!(events.emit("AFTER", None), 0);

    // A stale socket file is replaced; a live server or another file is not.
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let handler = Arc::new(MigrationCommands::new(FakeEngine::new()));
    let first = QmpServer::bind(&path, handler.clone()).unwrap();
    let second = QmpServer::bind(&path, handler.clone()).unwrap_err();
    assert_eq!(second.kind(), std::io::ErrorKind::AddrInUse);
    let mut c = QmpClient::connect(&path).unwrap();
    c.negotiate().unwrap();
    drop(first);
    assert!(!path.exists());
    std::fs::write(&path, b"not a socket").unwrap();
    assert!(QmpServer::bind(&path, handler).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
}
