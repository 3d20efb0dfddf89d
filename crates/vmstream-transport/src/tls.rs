//! TLS with mutual authentication, by rustls (the `ring` provider).
//!
//! Both ends prove who they are: the server requires a client certificate
//! issued by its CA, and the client checks the server's certificate against
//! the same CA and the host name it connected to (or a `tls-hostname`
//! override). Credentials come from a directory laid out as QEMU's
//! `tls-creds-x509` object expects:
//!
//! | File | Used by |
//! | --- | --- |
//! | `ca-cert.pem` | both: the CA that issued the peer's certificate |
//! | `server-cert.pem`, `server-key.pem` | the server (the migration destination) |
//! | `client-cert.pem`, `client-key.pem` | the client (the migration source) |
//!
//! Certificate files may hold a chain (leaf first). Keys may be PKCS#8,
//! PKCS#1 (RSA) or SEC1 (EC). Every error names the file.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::error::{Error, ErrorKind, Result};

/// Which end of a TLS connection credentials are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// The end that accepts connections: the migration destination.
    Server,
    /// The end that connects: the migration source.
    Client,
}

impl Endpoint {
    fn file_prefix(self) -> &'static str {
        match self {
            Endpoint::Server => "server",
            Endpoint::Client => "client",
        }
    }
}

/// The CA certificates, own certificate chain and key of one endpoint.
pub struct TlsCreds {
    endpoint: Endpoint,
    ca: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl fmt::Debug for TlsCreds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key stays out of logs.
        f.debug_struct("TlsCreds")
            .field("endpoint", &self.endpoint)
            .field("ca_certs", &self.ca.len())
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl TlsCreds {
    /// Loads `ca-cert.pem` and `server-cert.pem`/`server-key.pem` (or the
    /// `client-` pair) from `dir`.
    pub fn load_dir(dir: impl AsRef<Path>, endpoint: Endpoint) -> Result<TlsCreds> {
        let dir = dir.as_ref();
        let prefix = endpoint.file_prefix();
        let ca_path = dir.join("ca-cert.pem");
        let cert_path = dir.join(format!("{prefix}-cert.pem"));
        let key_path = dir.join(format!("{prefix}-key.pem"));
        let ca = read_certs(&ca_path)?;
        let chain = read_certs(&cert_path)?;
        let key_pem = read_file(&key_path)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            Error::with_source(
                ErrorKind::Tls,
                format!("{}: no usable private key", key_path.display()),
                e,
            )
        })?;
        Ok(TlsCreds {
            endpoint,
            ca,
            chain,
            key,
        })
    }

    /// Credentials from PEM text already in memory; errors name the parts
    /// by their file names in the directory layout.
    pub fn from_pem(endpoint: Endpoint, ca: &[u8], cert: &[u8], key: &[u8]) -> Result<TlsCreds> {
        let prefix = endpoint.file_prefix();
        let ca = parse_certs(ca, Path::new("ca-cert.pem"))?;
        let chain = parse_certs(cert, &PathBuf::from(format!("{prefix}-cert.pem")))?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| {
            Error::with_source(
                ErrorKind::Tls,
                format!("{prefix}-key.pem: no usable private key"),
                e,
            )
        })?;
        Ok(TlsCreds {
            endpoint,
            ca,
            chain,
            key,
        })
    }

    /// The end these credentials are for.
    pub fn endpoint(&self) -> Endpoint {
        self.endpoint
    }

    fn roots(&self) -> Result<RootCertStore> {
        let mut roots = RootCertStore::empty();
        for cert in &self.ca {
            roots.add(cert.clone()).map_err(|e| {
                Error::with_source(
                    ErrorKind::Tls,
                    "ca-cert.pem: not a usable CA certificate",
                    e,
                )
            })?;
        }
        Ok(roots)
    }
}

/// The server side of mutual TLS: accepts only clients whose certificate
/// the CA issued. Cheap to clone.
#[derive(Clone)]
pub struct TlsServer {
    config: Arc<ServerConfig>,
}

impl fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsServer").finish_non_exhaustive()
    }
}

impl TlsServer {
    /// A server from server credentials.
    pub fn new(creds: &TlsCreds) -> Result<TlsServer> {
        if creds.endpoint != Endpoint::Server {
            return Err(Error::usage(
                "TLS server: the credentials are for a client (load them with Endpoint::Server)",
            ));
        }
        let provider = provider();
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(creds.roots()?), provider.clone())
                .build()
                .map_err(|e| {
                    Error::with_source(
                        ErrorKind::Tls,
                        "ca-cert.pem: cannot verify client certificates with it",
                        e,
                    )
                })?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(tls_setup)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(creds.chain.clone(), creds.key.clone_key())
            .map_err(|e| {
                Error::with_source(
                    ErrorKind::Tls,
                    "server-cert.pem, server-key.pem: the key does not go with the certificate",
                    e,
                )
            })?;
        // No session tickets: nothing resumes a migration's session, and a
        // ticket the source never reads would make its close a reset, which
        // can cut off the end of what it sent.
        config.send_tls13_tickets = 0;
        Ok(TlsServer {
            config: Arc::new(config),
        })
    }

    /// Loads server credentials from `dir` (see the module documentation).
    pub fn load_dir(dir: impl AsRef<Path>) -> Result<TlsServer> {
        TlsServer::new(&TlsCreds::load_dir(dir, Endpoint::Server)?)
    }

    pub(crate) fn connection(&self) -> Result<rustls::ServerConnection> {
        rustls::ServerConnection::new(self.config.clone()).map_err(tls_setup)
    }
}

/// The client side of mutual TLS: presents its certificate and checks the
/// server's against the CA and the host name. Cheap to clone.
#[derive(Clone)]
pub struct TlsClient {
    config: Arc<ClientConfig>,
    hostname: Option<ServerName<'static>>,
}

impl fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClient")
            .field("hostname", &self.hostname)
            .finish_non_exhaustive()
    }
}

impl TlsClient {
    /// A client from client credentials.
    pub fn new(creds: &TlsCreds) -> Result<TlsClient> {
        if creds.endpoint != Endpoint::Client {
            return Err(Error::usage(
                "TLS client: the credentials are for a server (load them with Endpoint::Client)",
            ));
        }
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(tls_setup)?
            .with_root_certificates(creds.roots()?)
            .with_client_auth_cert(creds.chain.clone(), creds.key.clone_key())
            .map_err(|e| {
                Error::with_source(
                    ErrorKind::Tls,
                    "client-cert.pem, client-key.pem: the key does not go with the certificate",
                    e,
                )
            })?;
        config.resumption = rustls::client::Resumption::disabled();
        Ok(TlsClient {
            config: Arc::new(config),
            hostname: None,
        })
    }

    /// Loads client credentials from `dir` (see the module documentation).
    pub fn load_dir(dir: impl AsRef<Path>) -> Result<TlsClient> {
        TlsClient::new(&TlsCreds::load_dir(dir, Endpoint::Client)?)
    }

    /// Checks the server certificate against `name` (a DNS name or an IP
    /// address) instead of the host connected to, as QEMU's `tls-hostname`.
    /// Needed for Unix sockets and file descriptors, which have no host.
    pub fn with_hostname(mut self, name: &str) -> Result<TlsClient> {
        let name = ServerName::try_from(name.to_string()).map_err(|_| {
            Error::address(
                "tls-hostname",
                format_args!("`{name}` is not a host name or IP address"),
            )
        })?;
        self.hostname = Some(name);
        Ok(self)
    }

    /// The host name to check the server certificate against: the override
    /// if set, else `host`, else an error.
    pub(crate) fn connection(
        &self,
        host: Option<&str>,
        what: &str,
    ) -> Result<rustls::ClientConnection> {
        let name = match (&self.hostname, host) {
            (Some(name), _) => name.clone(),
            (None, Some(host)) if !host.is_empty() => ServerName::try_from(host.to_string())
                .map_err(|_| {
                    Error::address(
                        "addr.host",
                        format_args!("`{host}` is not a host name to check a TLS certificate against"),
                    )
                })?,
            _ => {
                return Err(Error::usage(format!(
                    "TLS over {what} needs a host name to check the server certificate against (TlsClient::with_hostname)"
                )))
            }
        };
        rustls::ClientConnection::new(self.config.clone(), name).map_err(tls_setup)
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_setup(e: rustls::Error) -> Error {
    Error::with_source(ErrorKind::Tls, "TLS setup", e)
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        Error::with_source(
            ErrorKind::Io,
            format!("TLS credentials: cannot read {}", path.display()),
            e,
        )
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    parse_certs(&read_file(path)?, path)
}

fn parse_certs(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| {
            Error::with_source(
                ErrorKind::Tls,
                format!("{}: malformed PEM", path.display()),
                e,
            )
        })?;
    if certs.is_empty() {
        return Err(Error::new(
            ErrorKind::Tls,
            format!("{}: no certificate in it", path.display()),
        ));
    }
    Ok(certs)
}
