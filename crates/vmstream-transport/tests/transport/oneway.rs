//! One-way channels: exec (a child's stdin or stdout) and file at an offset.

use std::io::{Read, Write};
use std::thread;
use std::time::{Duration, Instant};

use vmstream_transport::{open_destination, open_source, ErrorKind, MigrationAddress};

use crate::util::temp_path;

fn payload() -> Vec<u8> {
    (0..200_000u32).map(|i| (i * 31 + i / 251) as u8).collect()
}

#[test]
fn exec_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let file = temp_path(dir.path(), "via-exec");
    // The legacy URI runs its command in a shell, as QEMU does.
    let source = MigrationAddress::from_uri(&format!("exec:cat > '{file}'")).unwrap();
    let MigrationAddress::Exec(cmd) = &source else {
        panic!()
    };
    assert_eq!(cmd.args[..2], ["/bin/sh", "-c"]);

    let data = payload();
    let mut out = open_source(&source).unwrap();
    assert!(
        out.peer().starts_with("exec:/bin/sh (pid "),
        "{}",
        out.peer()
    );
    assert!(!out
        .set_timeouts(Some(Duration::from_secs(1)), None)
        .unwrap());
    out.write_all(&data).unwrap();
    assert_eq!(
        out.read(&mut [0u8; 1]).unwrap_err().kind(),
        std::io::ErrorKind::Unsupported
    );
    out.finish().unwrap();
    assert_eq!(std::fs::read(&file).unwrap(), data);

    // An argument vector runs without a shell: the quote is part of the name.
    let mut input = open_destination(&MigrationAddress::exec(["cat", file.as_str()])).unwrap();
    let mut got = Vec::new();
    input.read_to_end(&mut got).unwrap();
    assert_eq!(got, data);
    assert_eq!(
        input.write(b"x").unwrap_err().kind(),
        std::io::ErrorKind::Unsupported
    );
    input.finish().unwrap();
}

#[test]
fn exec_failures() {
    let e = open_source(&MigrationAddress::exec(["/nonexistent/vmstream-helper"])).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
    assert_eq!(
        e.to_string(),
        "exec:/nonexistent/vmstream-helper: cannot run it"
    );

    let mut out = open_source(&MigrationAddress::exec([
        "sh",
        "-c",
        "cat >/dev/null; exit 3",
    ]))
    .unwrap();
    out.write_all(b"state").unwrap();
    let e = out.finish().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
    assert!(e.to_string().contains("exit status: 3"), "{e}");

    let input = open_destination(&MigrationAddress::exec(["false"])).unwrap();
    assert!(input.finish().is_err());
}

#[test]
fn shutdown_kills_a_blocked_exec_channel() {
    let mut input = open_destination(&MigrationAddress::exec(["sleep", "30"])).unwrap();
    let handle = input.shutdown_handle();
    let reader = thread::spawn(move || {
        let start = Instant::now();
        let r = input.read(&mut [0u8; 16]).map_err(|e| e.kind());
        (r, start.elapsed())
    });
    thread::sleep(Duration::from_millis(100));
    handle.shutdown();
    let (r, took) = reader.join().unwrap();
    assert_eq!(r, Err(std::io::ErrorKind::ConnectionAborted));
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn file_at_an_offset() {
    let dir = tempfile::tempdir().unwrap();
    let path = temp_path(dir.path(), "image");
    // Something else owns the first 4 KiB (a header, another stream).
    std::fs::write(&path, vec![b'H'; 8192]).unwrap();
    let data = payload();
    let addr = MigrationAddress::from_uri(&format!("file:{path},offset=4k")).unwrap();
    assert_eq!(addr, MigrationAddress::file(path.as_str(), 4096));

    let mut out = open_source(&addr).unwrap();
    out.write_all(&data).unwrap();
    out.finish().unwrap();
    let on_disk = std::fs::read(&path).unwrap();
    assert_eq!(on_disk.len(), 4096 + data.len());
    assert!(on_disk[..4096].iter().all(|&b| b == b'H'));
    assert_eq!(&on_disk[4096..], &data[..]);

    // Writing a shorter stream again cuts what was after the offset.
    let mut out = open_source(&addr).unwrap();
    out.write_all(b"short").unwrap();
    out.finish().unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 4096 + 5);

    let mut input = open_destination(&addr).unwrap();
    assert_eq!(input.peer(), format!("file:{path},offset=4096"));
    let mut got = Vec::new();
    input.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"short");

    // A new file at offset 0.
    let fresh = MigrationAddress::file(temp_path(dir.path(), "fresh"), 0);
    let mut out = open_source(&fresh).unwrap();
    out.write_all(&data).unwrap();
    out.finish().unwrap();
    let mut got = Vec::new();
    open_destination(&fresh)
        .unwrap()
        .read_to_end(&mut got)
        .unwrap();
    assert_eq!(got, data);

    let e =
        open_destination(&MigrationAddress::file(temp_path(dir.path(), "missing"), 0)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
    assert_eq!(e.io_kind(), Some(std::io::ErrorKind::NotFound));
    assert!(e.to_string().ends_with("missing: open"), "{e}");
}

#[test]
fn sockets_are_not_one_way() {
    let tcp = MigrationAddress::tcp("127.0.0.1", 1);
    let e = open_source(&tcp).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Usage);
    assert!(e.to_string().contains("opened with connect"), "{e}");
    let e = open_destination(&tcp).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Usage);
    assert!(e.to_string().contains("opened with Listener::bind"), "{e}");
}
