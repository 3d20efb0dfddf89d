//! Mutual TLS: both sides authenticate, and each kind of impostor is refused.

use std::io::{Read, Write};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use vmstream_transport::{
    accept_set, connect, connect_set, Endpoint, ErrorKind, Listener, MigrationAddress, MigrationId,
    TlsClient, TlsCreds, TlsServer,
};

use crate::util::{have_ipv6, temp_path, Pki};

const TIMEOUT: Duration = Duration::from_secs(5);

/// Key generation is the slow part: one set of credentials for all tests.
fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(Pki::new)
}

fn server() -> TlsServer {
    TlsServer::load_dir(&pki().server).unwrap()
}

fn client() -> TlsClient {
    TlsClient::load_dir(&pki().client).unwrap()
}

/// The server's handshake failed: by the client's alert, or by the reset
/// of a client that closed with the server's flight unread.
fn server_side_failed(r: vmstream_transport::Result<()>) {
    let e = r.unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::Tls | ErrorKind::Io),
        "{}",
        e.chain()
    );
    assert!(e.to_string().ends_with("TLS handshake"), "{e}");
}

fn tls_set(addr: &MigrationAddress, client: TlsClient, data: u16) {
    let listener = Listener::bind(addr).unwrap();
    let target = listener.local_address().clone();
    let id = MigrationId::random().unwrap();
    let source = thread::spawn(move || {
        let mut set = connect_set(&target, data, id, Some(&client)).unwrap();
        for (i, c) in std::iter::once(&mut set.main)
            .chain(set.data.iter_mut())
            .enumerate()
        {
            assert!(c.is_tls());
            c.write_all(format!("secret {i}").as_bytes()).unwrap();
            c.flush().unwrap();
            let mut back = [0u8; 2];
            c.read_exact(&mut back).unwrap();
            assert_eq!(back, [b'k', b'0' + i as u8]);
        }
        for c in std::iter::once(set.main).chain(set.data) {
            c.finish().unwrap();
        }
    });
    let mut set = accept_set(&listener, Some(&server()), TIMEOUT).unwrap();
    assert!(set.refused.is_empty(), "{:?}", set.refused);
    for (i, c) in std::iter::once(&mut set.main)
        .chain(set.data.iter_mut())
        .enumerate()
    {
        assert!(c.is_tls());
        let want = format!("secret {i}");
        let mut got = vec![0; want.len()];
        c.read_exact(&mut got).unwrap();
        assert_eq!(got, want.as_bytes());
        c.write_all(&[b'k', b'0' + i as u8]).unwrap();
        c.flush().unwrap();
    }
    source.join().unwrap();
    // close_notify arrived: a clean end of stream, not a truncation error.
    for c in std::iter::once(&mut set.main).chain(set.data.iter_mut()) {
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
    }
}

#[test]
fn mutual_tls_over_tcp_and_unix() {
    // The server certificate names 127.0.0.1, ::1 and localhost.
    tls_set(&MigrationAddress::tcp("127.0.0.1", 0), client(), 2);
    tls_set(
        &MigrationAddress::from_uri("tcp:localhost:0,ipv4=on").unwrap(),
        client(),
        1,
    );
    if have_ipv6() {
        tls_set(&MigrationAddress::tcp("::1", 0), client(), 1);
    }
    let dir = tempfile::tempdir().unwrap();
    let unix = MigrationAddress::unix(temp_path(dir.path(), "tls.sock"));
    tls_set(&unix, client().with_hostname("localhost").unwrap(), 3);

    // Over a Unix socket the client must be told what name to check.
    let listener = Listener::bind(&unix).unwrap();
    let e = connect(&unix, Some(&client())).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Usage);
    assert!(e.to_string().contains("needs a host name"), "{e}");
    drop(listener);
}

#[test]
fn a_source_that_only_writes_ends_cleanly() {
    // The source writes and finishes without reading anything: if the server
    // had sent it anything after the handshake (TLS 1.3 session tickets),
    // closing with those bytes unread would reset the connection and could
    // cut off the end of the stream.
    let listener = Listener::bind(&MigrationAddress::tcp("127.0.0.1", 0)).unwrap();
    let target = listener.local_address().clone();
    let data: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8).collect();
    let sent = data.clone();
    let source = thread::spawn(move || {
        let mut set =
            connect_set(&target, 1, MigrationId::random().unwrap(), Some(&client())).unwrap();
        set.data[0].write_all(&sent).unwrap();
        set.data[0].flush().unwrap();
        set.main.finish().unwrap();
        for c in set.data {
            c.finish().unwrap();
        }
    });
    let mut set = accept_set(&listener, Some(&server()), TIMEOUT).unwrap();
    // Read late, so that the source closes while much of the stream is
    // still in this side's buffers: a reset would discard it.
    thread::sleep(Duration::from_millis(200));
    let mut got = Vec::new();
    set.data[0].read_to_end(&mut got).unwrap();
    assert!(got == data, "{} of {} bytes", got.len(), data.len());
    let mut rest = Vec::new();
    set.main.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    source.join().unwrap();
}

#[test]
fn server_name_mismatch_is_refused() {
    let listener = Listener::bind(&MigrationAddress::tcp("127.0.0.1", 0)).unwrap();
    let target = listener.local_address().clone();
    let t = thread::spawn(move || listener.accept(Some(&server())).map(|_| ()));
    let c = client().with_hostname("migration.example").unwrap();
    let e = connect(&target, Some(&c)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Tls, "{}", e.chain());
    assert!(e.chain().contains("not valid for name"), "{}", e.chain());
    server_side_failed(t.join().unwrap());
}

#[test]
fn wrong_client_certificate_is_refused() {
    let listener = Listener::bind(&MigrationAddress::tcp("127.0.0.1", 0)).unwrap();
    let target = listener.local_address().clone();
    let t = thread::spawn(move || listener.accept(Some(&server())).map(|_| ()));
    let intruder = TlsClient::load_dir(&pki().client_wrong_cert).unwrap();
    // In TLS 1.3 the client may finish its side first; it learns of the
    // refusal on its next read at the latest.
    let refused_at_client = match connect(&target, Some(&intruder)) {
        Err(e) => e.kind() == ErrorKind::Tls,
        Ok(mut c) => {
            let _ = c.write_all(b"let me in");
            let _ = c.flush();
            c.read(&mut [0u8; 16]).is_err()
        }
    };
    assert!(refused_at_client);
    let e = t.join().unwrap().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Tls, "{}", e.chain());
    assert!(e.chain().contains("UnknownIssuer"), "{}", e.chain());
}

#[test]
fn wrong_server_ca_is_refused() {
    let listener = Listener::bind(&MigrationAddress::tcp("127.0.0.1", 0)).unwrap();
    let target = listener.local_address().clone();
    let t = thread::spawn(move || listener.accept(Some(&server())).map(|_| ()));
    let doubter = TlsClient::load_dir(&pki().client_wrong_ca).unwrap();
    let e = connect(&target, Some(&doubter)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Tls, "{}", e.chain());
    assert!(e.to_string().ends_with("TLS handshake"), "{e}");
    assert!(e.chain().contains("UnknownIssuer"), "{}", e.chain());
    server_side_failed(t.join().unwrap());
}

#[test]
fn missing_client_certificate_is_refused() {
    let listener = Listener::bind(&MigrationAddress::tcp("127.0.0.1", 0)).unwrap();
    let port = match listener.local_address() {
        MigrationAddress::Socket(vmstream_transport::SocketAddress::Inet(a)) => a.port,
        other => panic!("{other}"),
    };
    let t = thread::spawn(move || listener.accept(Some(&server())).map(|_| ()));

    // A client that trusts the server but has no certificate of its own.
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(pki().client.join("ca-cert.pem")).unwrap();
    for cert in CertificateDer::pem_slice_iter(&ca) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut conn =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap())
            .unwrap();
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut stream = rustls::Stream::new(&mut conn, &mut sock);
    let _ = stream.write_all(b"no certificate");
    let _ = stream.flush();
    assert!(stream.read(&mut [0u8; 16]).is_err());

    let e = t.join().unwrap().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Tls, "{}", e.chain());
    assert!(e.chain().contains("no certificates"), "{}", e.chain());
}

#[test]
fn impostors_are_refused_while_the_tls_set_forms() {
    let listener = Listener::bind(&MigrationAddress::tcp("127.0.0.1", 0)).unwrap();
    let target = listener.local_address().clone();
    let id = MigrationId::random().unwrap();
    let source = thread::spawn(move || {
        // Plain bytes to a TLS listener, and a client the CA never certified.
        let _ = connect_set(&target, 0, id, None).map(|mut s| {
            let _ = s.main.read(&mut [0u8; 1]);
        });
        let intruder = TlsClient::load_dir(&pki().client_wrong_cert).unwrap();
        if let Ok(mut s) = connect_set(&target, 0, id, Some(&intruder)) {
            let _ = s.main.read(&mut [0u8; 1]);
        }
        connect_set(&target, 2, id, Some(&client())).unwrap()
    });
    let set = accept_set(&listener, Some(&server()), TIMEOUT).unwrap();
    let _source = source.join().unwrap();
    assert_eq!(set.data.len(), 2);
    assert_eq!(set.refused.len(), 2, "{:?}", set.refused);
    for r in &set.refused {
        assert_eq!(r.error.kind(), ErrorKind::Tls, "{r}");
    }
}

#[test]
fn credential_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let e = TlsServer::load_dir(dir.path()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
    assert!(e.to_string().ends_with("ca-cert.pem"), "{e}");

    let copy = |name: &str| {
        std::fs::copy(pki().server.join(name), dir.path().join(name)).unwrap();
    };
    copy("ca-cert.pem");
    let e = TlsServer::load_dir(dir.path()).unwrap_err();
    assert!(e.to_string().ends_with("server-cert.pem"), "{e}");

    std::fs::write(dir.path().join("server-cert.pem"), "not PEM at all").unwrap();
    std::fs::write(dir.path().join("server-key.pem"), "").unwrap();
    let e = TlsServer::load_dir(dir.path()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Tls);
    assert!(
        e.to_string().contains("server-cert.pem: no certificate"),
        "{e}"
    );

    copy("server-cert.pem");
    let e = TlsServer::load_dir(dir.path()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Tls);
    assert!(
        e.to_string()
            .contains("server-key.pem: no usable private key"),
        "{e}"
    );

    // A key that belongs to another certificate.
    std::fs::copy(
        pki().client.join("client-key.pem"),
        dir.path().join("server-key.pem"),
    )
    .unwrap();
    let e = TlsServer::load_dir(dir.path()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Tls);
    assert!(
        e.to_string().contains("does not go with the certificate"),
        "{e}"
    );

    // Credentials for the other end.
    let creds = TlsCreds::load_dir(&pki().client, Endpoint::Client).unwrap();
    assert_eq!(TlsServer::new(&creds).unwrap_err().kind(), ErrorKind::Usage);
    let creds = TlsCreds::load_dir(&pki().server, Endpoint::Server).unwrap();
    assert_eq!(TlsClient::new(&creds).unwrap_err().kind(), ErrorKind::Usage);
    assert!(!format!("{creds:?}").contains("PRIVATE"));

    let e = client().with_hostname("not a host").unwrap_err();
    assert!(e.to_string().starts_with("tls-hostname:"), "{e}");
}
