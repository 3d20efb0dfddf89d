//! Certificates made for the tests, and small helpers.

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tempfile::TempDir;

/// A certificate authority that issues server and client certificates.
pub(crate) struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    pub(crate) fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Ca { issuer }
    }

    pub(crate) fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf certificate and its key, both PEM.
    pub(crate) fn issue(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> (String, String) {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("client"),
        );
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// Credential directories in QEMU's layout, one per scenario.
pub(crate) struct Pki {
    _dir: TempDir,
    /// Server credentials from the good CA.
    pub(crate) server: PathBuf,
    /// Client credentials from the good CA.
    pub(crate) client: PathBuf,
    /// A client that trusts the good CA but whose certificate another CA issued.
    pub(crate) client_wrong_cert: PathBuf,
    /// A client with a good certificate that trusts only another CA.
    pub(crate) client_wrong_ca: PathBuf,
}

impl Pki {
    pub(crate) fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let good = Ca::new("vmstream test CA");
        let other = Ca::new("some other CA");
        let (server_cert, server_key) = good.issue(
            &["localhost", "127.0.0.1", "::1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) =
            good.issue(&["source"], ExtendedKeyUsagePurpose::ClientAuth);
        let (bad_cert, bad_key) = other.issue(&["intruder"], ExtendedKeyUsagePurpose::ClientAuth);

        let write = |sub: &str, files: &[(&str, &str)]| -> PathBuf {
            let d = dir.path().join(sub);
            std::fs::create_dir(&d).unwrap();
            for (name, text) in files {
                std::fs::write(d.join(name), text).unwrap();
            }
            d
        };
        let server = write(
            "server",
            &[
                ("ca-cert.pem", &good.pem()),
                ("server-cert.pem", &server_cert),
                ("server-key.pem", &server_key),
            ],
        );
        let client = write(
            "client",
            &[
                ("ca-cert.pem", &good.pem()),
                ("client-cert.pem", &client_cert),
                ("client-key.pem", &client_key),
            ],
        );
        let client_wrong_cert = write(
            "client-wrong-cert",
            &[
                ("ca-cert.pem", &good.pem()),
                ("client-cert.pem", &bad_cert),
                ("client-key.pem", &bad_key),
            ],
        );
        let client_wrong_ca = write(
            "client-wrong-ca",
            &[
                ("ca-cert.pem", &other.pem()),
                ("client-cert.pem", &client_cert),
                ("client-key.pem", &client_key),
            ],
        );
        Pki {
            _dir: dir,
            server,
            client,
            client_wrong_cert,
            client_wrong_ca,
        }
    }
}

/// Reads until the peer closes or fails; true if that happened within `limit`.
pub(crate) fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 64];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => {
                return !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                )
            }
        }
    }
}

/// Whether this machine can listen on IPv6 loopback.
pub(crate) fn have_ipv6() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

pub(crate) fn temp_path(dir: &Path, name: &str) -> String {
    dir.join(name).to_str().unwrap().to_string()
}
