//! Channel sets over loopback TCP and Unix sockets: forming, moving data,
//! refusing strays, timeouts, cancellation.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::{Duration, Instant};

use vmstream_transport::channel::PREAMBLE_LEN;
use vmstream_transport::{
    accept_set, connect, connect_set, register_fd, ChannelSet, ErrorKind, Listener,
    MigrationAddress, MigrationId, Preamble, PreambleError, Refusal,
};

use crate::util::{closed_within, have_ipv6, temp_path};

const TIMEOUT: Duration = Duration::from_secs(5);

/// Every channel carries its own bytes each way, so a mix-up shows.
fn exchange(source: &mut ChannelSet, dest: &mut ChannelSet) {
    assert_eq!(source.migration_id, dest.migration_id);
    assert_eq!(source.data.len(), dest.data.len());
    let label = |side: &str, i: usize| format!("{side} channel {i}: {}", "x".repeat(i * 1000));
    let mut pairs: Vec<(&mut _, &mut _)> = vec![(&mut source.main, &mut dest.main)];
    pairs.extend(source.data.iter_mut().zip(dest.data.iter_mut()));
    for (i, (s, d)) in pairs.into_iter().enumerate() {
        let msg = label("to destination", i);
        s.write_all(msg.as_bytes()).unwrap();
        s.flush().unwrap();
        let mut got = vec![0; msg.len()];
        d.read_exact(&mut got).unwrap();
        assert_eq!(got, msg.as_bytes());
        let back = label("to source", i);
        d.write_all(back.as_bytes()).unwrap();
        d.flush().unwrap();
        let mut got = vec![0; back.len()];
        s.read_exact(&mut got).unwrap();
        assert_eq!(got, back.as_bytes());
    }
}

fn form(addr: &MigrationAddress, data: u16) {
    let listener = Listener::bind(addr).unwrap();
    let target = listener.local_address().clone();
    let id = MigrationId::random().unwrap();
    let source = thread::spawn(move || connect_set(&target, data, id, None).unwrap());
    let mut dest = accept_set(&listener, None, TIMEOUT).unwrap();
    let mut source = source.join().unwrap();
    assert!(dest.refused.is_empty(), "{:?}", dest.refused);
    assert_eq!(dest.migration_id, id);
    exchange(&mut source, &mut dest);
    // An orderly end: the destination reads the end of every stream.
    for c in std::iter::once(source.main).chain(source.data) {
        c.finish().unwrap();
    }
    for c in dest.data.iter_mut().chain([&mut dest.main]) {
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
    }
}

#[test]
fn tcp_ipv4_sets() {
    for n in 0..=4 {
        form(&MigrationAddress::from_uri("tcp:127.0.0.1:0").unwrap(), n);
    }
}

#[test]
fn tcp_ipv6_sets() {
    if !have_ipv6() {
        eprintln!("no IPv6 loopback here: skipped");
        return;
    }
    for n in [0, 1, 4] {
        form(
            &MigrationAddress::from_uri("tcp:[::1]:0,ipv6=on").unwrap(),
            n,
        );
    }
}

#[test]
fn unix_sets() {
    let dir = tempfile::tempdir().unwrap();
    for n in 0..=4 {
        let addr = MigrationAddress::unix(temp_path(dir.path(), &format!("s{n}.sock")));
        form(&addr, n);
    }
    // The listener removed its socket files.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn tcp_listener_reports_the_port_and_options_apply() {
    let addr = MigrationAddress::from_uri(
        "tcp:127.0.0.1:0,keep-alive=on,keep-alive-idle=30,keep-alive-interval=5,keep-alive-count=4",
    )
    .unwrap();
    let listener = Listener::bind(&addr).unwrap();
    let MigrationAddress::Socket(vmstream_transport::SocketAddress::Inet(local)) =
        listener.local_address()
    else {
        panic!("not inet: {}", listener.local_address());
    };
    assert_ne!(local.port, 0);
    assert_eq!(local.host, "127.0.0.1");
    let target = listener.local_address().clone();
    let t = thread::spawn(move || {
        let mut c = connect(&target, None).unwrap();
        c.write_all(b"ka").unwrap();
        c
    });
    let mut d = listener.accept(None).unwrap();
    let mut b = [0u8; 2];
    d.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ka");
    let c = t.join().unwrap();
    assert!(c.peer().starts_with("tcp:127.0.0.1:"), "{}", c.peer());

    // A port range: the second listener takes the next port.
    let port = local.port;
    let range = format!("tcp:127.0.0.1:{port},to={}", port.saturating_add(20));
    let second = Listener::bind(&MigrationAddress::from_uri(&range).unwrap()).unwrap();
    let second_port = tcp_port(&second);
    assert!(
        second_port > port && second_port <= port.saturating_add(20),
        "{second_port}"
    );

    // Options this implementation refuses, when the socket is opened.
    let e = Listener::bind(&MigrationAddress::from_uri("tcp:127.0.0.1:0,mptcp=on").unwrap())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(e.to_string().starts_with("addr.mptcp"), "{e}");
    let e = connect(&MigrationAddress::from_uri("tcp::4444").unwrap(), None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Address);
    assert!(e.to_string().starts_with("addr.host: is empty"), "{e}");
    let e = connect(
        &MigrationAddress::from_uri("tcp:localhost:1,ipv4=on").unwrap(),
        None,
    );
    assert!(e.is_err()); // nothing listens on port 1
}

#[test]
fn connect_refused_names_the_address() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    let e = connect(&MigrationAddress::tcp("127.0.0.1", port), None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
    assert_eq!(e.io_kind(), Some(std::io::ErrorKind::ConnectionRefused));
    assert_eq!(e.to_string(), format!("connect to tcp:127.0.0.1:{port}"));
}

/// Sends raw bytes as a connection's first, then waits until the acceptor
/// has closed it (which it does after recording the refusal).
fn stray(port: u16, bytes: &[u8]) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(bytes).unwrap();
    assert!(
        closed_within(&mut s, TIMEOUT),
        "stray connection not closed"
    );
}

/// Like [`stray`], but the stray ends its side after the bytes.
fn stray_then_eof(port: u16, bytes: &[u8]) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(bytes).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(
        closed_within(&mut s, TIMEOUT),
        "stray connection not closed"
    );
}

fn tcp_port(l: &Listener) -> u16 {
    match l.local_address() {
        MigrationAddress::Socket(vmstream_transport::SocketAddress::Inet(a)) => a.port,
        other => panic!("{other}"),
    }
}

#[test]
fn strays_are_refused_while_the_set_forms() {
    let listener = Listener::bind(&MigrationAddress::from_uri("tcp:127.0.0.1:0").unwrap()).unwrap();
    let port = tcp_port(&listener);
    let id = MigrationId::random().unwrap();
    let other = MigrationId::random().unwrap();

    let source = thread::spawn(move || {
        // Before the main channel: a data channel of another migration is
        // held, then refused when the main channel comes.
        let mut early = TcpStream::connect(("127.0.0.1", port)).unwrap();
        early
            .write_all(&Preamble::data(other, 3, 0).unwrap().encode())
            .unwrap();
        // Garbage, and a checksum that does not match.
        stray(
            port,
            b"GET / HTTP/1.1\r\nHost: vmstream.example\r\nAccept: */*\r\n\r\n",
        );
        let mut bad_crc = Preamble::data(id, 3, 1).unwrap().encode();
        bad_crc[39] ^= 1;
        stray(port, &bad_crc);
        // Channel id out of range for its own count.
        let mut out_of_range = Preamble::data(id, 3, 2).unwrap().encode();
        out_of_range[12] = 3;
        let crc = vmstream::crc32c(&out_of_range[..36]);
        out_of_range[36..].copy_from_slice(&crc.to_le_bytes());
        stray(port, &out_of_range);
        // A short preamble, then the peer goes away.
        stray_then_eof(port, &Preamble::main(id, 3).unwrap().encode()[..20]);

        // The real main channel and two of its three data channels.
        let mut main = TcpStream::connect(("127.0.0.1", port)).unwrap();
        main.write_all(&Preamble::main(id, 3).unwrap().encode())
            .unwrap();
        assert!(closed_within(&mut early, TIMEOUT), "held stray not closed");
        let mut data = Vec::new();
        for ch in [0u16, 2] {
            let mut d = TcpStream::connect(("127.0.0.1", port)).unwrap();
            d.write_all(&Preamble::data(id, 3, ch).unwrap().encode())
                .unwrap();
            data.push(d);
        }
        // Then the strays that need the main channel to be refused.
        stray(port, &Preamble::main(id, 3).unwrap().encode()); // a second main
        stray(port, &Preamble::data(id, 3, 0).unwrap().encode()); // duplicate
        stray(port, &Preamble::data(other, 3, 1).unwrap().encode()); // another migration
        stray(port, &Preamble::data(id, 4, 1).unwrap().encode()); // another count
                                                                  // The last real one completes the set.
        let mut last = TcpStream::connect(("127.0.0.1", port)).unwrap();
        last.write_all(&Preamble::data(id, 3, 1).unwrap().encode())
            .unwrap();
        data.insert(1, last);
        (main, data)
    });
    let mut set = accept_set(&listener, None, TIMEOUT).unwrap();
    let (mut main, mut data) = source.join().unwrap();
    assert_eq!(set.migration_id, id);
    assert_eq!(set.data.len(), 3);

    // The set is the real one: each connection is where it says it is.
    main.write_all(b"M").unwrap();
    for (i, d) in data.iter_mut().enumerate() {
        d.write_all(&[b'0' + i as u8]).unwrap();
    }
    let mut b = [0u8; 1];
    set.main.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"M");
    for (i, d) in set.data.iter_mut().enumerate() {
        d.read_exact(&mut b).unwrap();
        assert_eq!(b[0], b'0' + i as u8);
    }

    let reasons: Vec<String> = set.refused.iter().map(|r| r.error.chain()).collect();
    let has = |what: &str| reasons.iter().filter(|r| r.contains(what)).count();
    assert_eq!(set.refused.len(), 9, "{reasons:#?}");
    assert_eq!(has("bad magic"), 1, "{reasons:#?}");
    assert_eq!(has("checksum"), 1, "{reasons:#?}");
    assert_eq!(
        has("data channel id 3 is out of range for 3"),
        1,
        "{reasons:#?}"
    );
    assert_eq!(has("read the channel preamble"), 1, "{reasons:#?}");
    assert_eq!(has("a second main channel"), 1, "{reasons:#?}");
    assert_eq!(
        has("data channel 0 is already connected"),
        1,
        "{reasons:#?}"
    );
    assert_eq!(
        has(&format!("migration id {other} is not this set's {id}")),
        2,
        "{reasons:#?}"
    );
    assert_eq!(
        has("says 4 data channels, the main channel 3"),
        1,
        "{reasons:#?}"
    );
    for r in &set.refused {
        assert!(r.peer.starts_with("tcp:127.0.0.1:"), "{}", r.peer);
        let kind = r.error.kind();
        assert!(
            matches!(
                kind,
                ErrorKind::Malformed | ErrorKind::Refused | ErrorKind::Io
            ),
            "{kind:?}: {r}"
        );
    }
    let refusal = set
        .refused
        .iter()
        .find_map(|r| std::error::Error::source(&r.error).and_then(|s| s.downcast_ref::<Refusal>()))
        .expect("a typed refusal");
    assert!(matches!(
        refusal,
        Refusal::WrongMigration { .. }
            | Refusal::SecondMain
            | Refusal::Duplicate(0)
            | Refusal::WrongChannelCount { .. }
    ));
    let malformed = set
        .refused
        .iter()
        .find_map(|r| {
            std::error::Error::source(&r.error).and_then(|s| s.downcast_ref::<PreambleError>())
        })
        .expect("a typed preamble error");
    assert!(matches!(
        malformed,
        PreambleError::Magic
            | PreambleError::Checksum { .. }
            | PreambleError::ChannelOutOfRange { .. }
    ));
}

#[test]
fn a_silent_peer_times_out() {
    let listener = Listener::bind(&MigrationAddress::from_uri("tcp:127.0.0.1:0").unwrap()).unwrap();
    let port = tcp_port(&listener);
    let mut silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let start = Instant::now();
    let e = accept_set(&listener, None, Duration::from_millis(300)).unwrap_err();
    let took = start.elapsed();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(
        e.to_string().contains("no main channel within 300ms"),
        "{e}"
    );
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // The silent connection was closed when accept_set gave up.
    assert!(closed_within(&mut silent, TIMEOUT));

    // A main channel whose data channels never come.
    let id = MigrationId::random().unwrap();
    let mut main = TcpStream::connect(("127.0.0.1", port)).unwrap();
    main.write_all(&Preamble::main(id, 2).unwrap().encode())
        .unwrap();
    let mut d1 = TcpStream::connect(("127.0.0.1", port)).unwrap();
    d1.write_all(&Preamble::data(id, 2, 1).unwrap().encode())
        .unwrap();
    let mut junk = TcpStream::connect(("127.0.0.1", port)).unwrap();
    junk.write_all(&[0u8; PREAMBLE_LEN]).unwrap();
    let e = accept_set(&listener, None, Duration::from_millis(400)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    let msg = e.to_string();
    assert!(msg.contains("1 of 2 data channels within 400ms"), "{msg}");
    assert!(
        msg.contains("1 connections refused") && msg.contains("bad magic"),
        "{msg}"
    );

    // The listener still works afterwards, blocking as before.
    let target = listener.local_address().clone();
    let t = thread::spawn(move || connect(&target, None).unwrap());
    listener.accept(None).unwrap();
    t.join().unwrap();
}

#[test]
fn cancelled_through_the_listener() {
    let listener = Listener::bind(&MigrationAddress::from_uri("tcp:127.0.0.1:0").unwrap()).unwrap();
    let handle = listener.shutdown_handle();
    let t = thread::spawn(move || {
        thread::sleep(Duration::from_millis(100));
        handle.shutdown();
    });
    let start = Instant::now();
    let e = accept_set(&listener, None, TIMEOUT).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Cancelled, "{e}");
    assert!(start.elapsed() < Duration::from_secs(2));
    t.join().unwrap();

    // A blocking accept wakes too.
    let listener = Listener::bind(&MigrationAddress::from_uri("tcp:127.0.0.1:0").unwrap()).unwrap();
    let handle = listener.shutdown_handle();
    let t = thread::spawn(move || listener.accept(None).map(|_| ()));
    thread::sleep(Duration::from_millis(100));
    handle.shutdown();
    let e = t.join().unwrap().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Cancelled, "{e}");
}

#[test]
fn shutdown_unblocks_a_read_in_another_thread() {
    let listener = Listener::bind(&MigrationAddress::from_uri("tcp:127.0.0.1:0").unwrap()).unwrap();
    let target = listener.local_address().clone();
    let t = thread::spawn(move || connect(&target, None).unwrap());
    let _dest = listener.accept(None).unwrap();
    let mut source = t.join().unwrap();
    let handle = source.shutdown_handle();
    let reader = thread::spawn(move || {
        let mut b = [0u8; 8];
        let start = Instant::now();
        let r = source.read(&mut b);
        (r.map_err(|e| e.kind()), start.elapsed(), source)
    });
    thread::sleep(Duration::from_millis(100));
    assert!(!handle.is_shut_down());
    handle.shutdown();
    let (r, took, mut source) = reader.join().unwrap();
    assert_eq!(r, Err(std::io::ErrorKind::ConnectionAborted));
    assert!(
        took >= Duration::from_millis(90) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // Later calls fail the same way.
    assert_eq!(
        source.write(b"x").unwrap_err().kind(),
        std::io::ErrorKind::ConnectionAborted
    );
    handle.shutdown();
}

#[test]
fn read_timeouts() {
    let dir = tempfile::tempdir().unwrap();
    let addr = MigrationAddress::unix(temp_path(dir.path(), "t.sock"));
    let listener = Listener::bind(&addr).unwrap();
    let t = thread::spawn(move || connect(&addr, None).unwrap());
    let mut dest = listener.accept(None).unwrap();
    let _source = t.join().unwrap();
    assert!(dest
        .set_timeouts(Some(Duration::from_millis(50)), None)
        .unwrap());
    let start = Instant::now();
    let e = dest.read(&mut [0u8; 4]).unwrap_err();
    assert!(matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    ));
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[test]
fn unix_listener_replaces_a_stale_socket_but_not_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = temp_path(dir.path(), "stale.sock");
    // A socket file whose listener is gone.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(std::path::Path::new(&path).exists());
    let l = Listener::bind(&MigrationAddress::unix(path.as_str())).unwrap();
    drop(l);
    assert!(!std::path::Path::new(&path).exists());

    let file = temp_path(dir.path(), "plain");
    std::fs::write(&file, b"keep me").unwrap();
    let e = Listener::bind(&MigrationAddress::unix(file.as_str())).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Usage);
    assert!(e.to_string().contains("exists and is not a socket"), "{e}");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
}

#[cfg(target_os = "linux")]
#[test]
fn abstract_unix_sockets() {
    let name = format!("vmstream-test-{}", std::process::id());
    let addr = MigrationAddress::from_json(&serde_json::json!({
        "transport": "socket", "type": "unix", "path": name, "abstract": true
    }))
    .unwrap();
    form(&addr, 1);
    let mut padded = addr.clone();
    if let MigrationAddress::Socket(vmstream_transport::SocketAddress::Unix(u)) = &mut padded {
        u.tight = Some(false);
    }
    assert_eq!(
        Listener::bind(&padded).unwrap_err().kind(),
        ErrorKind::Unsupported
    );
}

#[test]
fn registered_descriptors() {
    // A connected socket handed over by name.
    let (mine, theirs) = UnixStream::pair().unwrap();
    register_fd("test-pair", theirs.into()).unwrap();
    let mut c = connect(&MigrationAddress::from_uri("fd:test-pair").unwrap(), None).unwrap();
    assert_eq!(c.peer(), "fd:test-pair");
    c.write_all(b"via fd").unwrap();
    let mut b = [0u8; 6];
    (&mine).read_exact(&mut b).unwrap();
    assert_eq!(&b, b"via fd");
    // It was taken: the name is free again.
    let e = connect(&MigrationAddress::fd("test-pair"), None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Usage);
    assert!(
        e.to_string().contains("no file descriptor registered"),
        "{e}"
    );

    // A listening TCP socket handed over by name.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    register_fd("test-listener", l.into()).unwrap();
    let listener = Listener::bind(&MigrationAddress::fd("test-listener")).unwrap();
    let t =
        thread::spawn(move || connect(&MigrationAddress::tcp("127.0.0.1", port), None).unwrap());
    let mut d = listener.accept(None).unwrap();
    let mut s = t.join().unwrap();
    s.write_all(b"ok").unwrap();
    let mut b = [0u8; 2];
    d.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ok");

    // A connected socket is not a listener.
    let (a, _b) = UnixStream::pair().unwrap();
    register_fd("test-not-listening", a.into()).unwrap();
    let e = Listener::bind(&MigrationAddress::fd("test-not-listening")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Usage);
    assert!(e.to_string().contains("not a listening socket"), "{e}");
}

#[test]
fn one_way_transports_have_no_channel_sets() {
    let exec = MigrationAddress::exec(["cat"]);
    let file = MigrationAddress::file("/nonexistent/x", 0);
    for addr in [&exec, &file] {
        let id = MigrationId::random().unwrap();
        let e = connect_set(addr, 2, id, None).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Usage);
        assert!(
            e.to_string().contains("carries only the main channel"),
            "{e}"
        );
        let e = connect(addr, None).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Usage);
        assert!(e.to_string().contains("open it with open_source"), "{e}");
        let e = Listener::bind(addr).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Usage);
        assert!(
            e.to_string().contains("open it with open_destination"),
            "{e}"
        );
    }
    let id = MigrationId::random().unwrap();
    let e = connect_set(&MigrationAddress::tcp("127.0.0.1", 1), 65, id, None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Usage);
    assert!(
        e.to_string()
            .contains("65 data channels is more than the limit of 64"),
        "{e}"
    );
}
