//! Channel addresses, in the JSON shape of QMP's `MigrationChannel` and
//! `MigrationAddress` (QEMU 8.2 and later), and the legacy URIs that map to
//! them.
//!
//! ```json
//! {"channel-type": "main",
//!  "addr": {"transport": "socket", "type": "inet", "host": "127.0.0.1", "port": "4444"}}
//! ```
//!
//! `addr` is a union on `transport`: `socket` (itself a union on `type`:
//! `inet`, `unix`, `fd`), `exec` (`args`, an argument vector run without a
//! shell) or `file` (`filename` and `offset`). Field names and types are
//! QMP's: the port is a string, the file offset a number. A field QEMU does
//! not know is refused, and every error names the field that is wrong, as
//! `addr.port: expected a string, found a number`.
//!
//! QEMU's `rdma` transport and `vsock` sockets are refused as unsupported;
//! so is the `cpr` channel type. A port must be a number (QEMU would also
//! look up a service name).
//!
//! [`MigrationAddress::from_uri`] turns a legacy URI (`tcp:host:port`,
//! `unix:path`, `fd:name`, `exec:command`, `file:path,offset=N`) into the
//! same type, once, at the edge of the program.

#![forbid(unsafe_code)]

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// One channel of a migration: what it is for and where it goes (QMP's
/// `MigrationChannel`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigrationChannel {
    /// What the channel carries.
    #[serde(rename = "channel-type")]
    pub channel_type: ChannelType,
    /// Where it goes.
    pub addr: MigrationAddress,
}

/// What a channel carries (QMP's `MigrationChannelType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ChannelType {
    /// The migration stream. Data channels, if any, go to the same address
    /// (see [`connect_set`](crate::connect_set)).
    Main,
}

/// Where a channel's bytes go (QMP's `MigrationAddress`, a union on
/// `transport`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "transport", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum MigrationAddress {
    /// A stream socket, both ways.
    Socket(SocketAddress),
    /// A command: the source writes to its standard input, the destination
    /// reads its standard output. One way; main channel only.
    Exec(ExecCommand),
    /// A file at an offset. One way; main channel only.
    File(FileTarget),
}

/// A stream socket (QMP's `SocketAddress`, a union on `type`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum SocketAddress {
    /// TCP over IPv4 or IPv6.
    Inet(InetAddress),
    /// A Unix domain socket.
    Unix(UnixAddress),
    /// A file descriptor handed over by [`register_fd`](crate::register_fd).
    Fd(FdAddress),
}

/// A TCP address (QMP's `InetSocketAddress`). Options left out take QEMU's
/// defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub struct InetAddress {
    /// Host name or numeric address (IPv6 without brackets). Empty means
    /// every local address when listening.
    pub host: String,
    /// Port; 0 asks for an ephemeral port when listening. A string in QMP's JSON.
    #[serde(serialize_with = "port_as_string")]
    pub port: u16,
    /// The host must be a numeric address: no name lookup.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub numeric: Option<bool>,
    /// When listening, try every port from `port` up to this one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<u16>,
    /// Use IPv4 addresses (see [`InetAddress::families`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<bool>,
    /// Use IPv6 addresses (see [`InetAddress::families`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<bool>,
    /// Enable TCP keep-alive on the connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_alive: Option<bool>,
    /// Keep-alive probes before the connection is dropped; 0: the system's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_alive_count: Option<u32>,
    /// Idle seconds before the first keep-alive probe; 0: the system's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_alive_idle: Option<u32>,
    /// Seconds between keep-alive probes; 0: the system's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_alive_interval: Option<u32>,
    /// Multipath TCP. Accepted in the address; `true` is refused when the
    /// socket is opened.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mptcp: Option<bool>,
}

/// A Unix domain socket address (QMP's `UnixSocketAddress`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct UnixAddress {
    /// File system path, or the name of an abstract socket.
    pub path: String,
    /// A Linux abstract socket: `path` is a name, not a file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub r#abstract: Option<bool>,
    /// Abstract names are not padded (the default). `false` is refused when
    /// the socket is opened.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tight: Option<bool>,
}

/// A file descriptor by name (QMP's `FdSocketAddress`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FdAddress {
    /// The name it was registered under; QEMU's decimal numbers are names
    /// like any other here.
    pub str: String,
}

/// A command to run (QMP's `MigrationExecCommand`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExecCommand {
    /// The program and its arguments, run without a shell. Never empty.
    pub args: Vec<String>,
}

/// A file and where in it the stream starts (QMP's `FileMigrationArgs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileTarget {
    /// The file.
    pub filename: String,
    /// Byte offset of the stream in the file.
    pub offset: u64,
}

/// The shell a legacy `exec:` URI's command runs under, as QEMU does.
pub const EXEC_SHELL: [&str; 2] = ["/bin/sh", "-c"];

impl MigrationChannel {
    /// The main channel to `addr`.
    pub fn main(addr: MigrationAddress) -> MigrationChannel {
        MigrationChannel {
            channel_type: ChannelType::Main,
            addr,
        }
    }

    /// Parses QMP JSON text.
    pub fn from_json_str(text: &str) -> Result<MigrationChannel> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| Error::address("channel", format_args!("not JSON: {e}")))?;
        MigrationChannel::from_json(&v)
    }

    /// Parses a QMP JSON value; errors name the field, as `addr.port`.
    pub fn from_json(v: &Value) -> Result<MigrationChannel> {
        let f = Fields::new(v, "")?;
        f.known(&["channel-type", "addr"])?;
        let channel_type = match f.string("channel-type")?.as_str() {
            "main" => ChannelType::Main,
            "cpr" => {
                return Err(Error::unsupported(
                    "channel-type: `cpr` is not supported (expected `main`)",
                ))
            }
            other => {
                return Err(Error::address(
                    "channel-type",
                    format_args!("unknown `{other}` (expected `main`)"),
                ))
            }
        };
        let addr = MigrationAddress::parse_json(f.required("addr")?, "addr")?;
        Ok(MigrationChannel { channel_type, addr })
    }

    /// The QMP JSON value.
    pub fn to_json(&self) -> Value {
        to_json_value(self)
    }
}

impl MigrationAddress {
    /// TCP to or on `host:port`.
    pub fn tcp(host: impl Into<String>, port: u16) -> MigrationAddress {
        MigrationAddress::Socket(SocketAddress::Inet(InetAddress::new(host, port)))
    }

    /// A Unix socket at `path`.
    pub fn unix(path: impl Into<String>) -> MigrationAddress {
        MigrationAddress::Socket(SocketAddress::Unix(UnixAddress::new(path)))
    }

    /// A file descriptor registered as `name`.
    pub fn fd(name: impl Into<String>) -> MigrationAddress {
        MigrationAddress::Socket(SocketAddress::Fd(FdAddress { str: name.into() }))
    }

    /// A command run with `args` (program first), without a shell.
    pub fn exec<S: Into<String>>(args: impl IntoIterator<Item = S>) -> MigrationAddress {
        MigrationAddress::Exec(ExecCommand {
            args: args.into_iter().map(Into::into).collect(),
        })
    }

    /// The file `filename`, starting at `offset`.
    pub fn file(filename: impl Into<String>, offset: u64) -> MigrationAddress {
        MigrationAddress::File(FileTarget {
            filename: filename.into(),
            offset,
        })
    }

    /// Parses QMP JSON text.
    pub fn from_json_str(text: &str) -> Result<MigrationAddress> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| Error::address("addr", format_args!("not JSON: {e}")))?;
        MigrationAddress::from_json(&v)
    }

    /// Parses a QMP JSON value; errors name the field, as `port` or `type`.
    pub fn from_json(v: &Value) -> Result<MigrationAddress> {
        MigrationAddress::parse_json(v, "")
    }

    /// The QMP JSON value.
    pub fn to_json(&self) -> Value {
        to_json_value(self)
    }

    /// Parses a legacy migration URI, as QEMU's `migrate` command takes:
    ///
    /// | URI | Address |
    /// | --- | --- |
    /// | `tcp:HOST:PORT[,OPT=VAL...]`, `tcp:[IPV6]:PORT` | `socket`/`inet`; options as in [`InetAddress`] (`ipv4=on`, `to=N`, ...) |
    /// | `unix:PATH` | `socket`/`unix` |
    /// | `fd:NAME` | `socket`/`fd` |
    /// | `exec:COMMAND` | `exec` with `args` `["/bin/sh", "-c", COMMAND]` ([`EXEC_SHELL`]): the command line goes to a shell, as in QEMU |
    /// | `file:PATH[,offset=N]` | `file`; `N` decimal with an optional `K`/`M`/`G`/`T`/`P`/`E` suffix (powers of 1024) |
    ///
    /// Errors start with `uri:` and say which part is wrong.
    pub fn from_uri(uri: &str) -> Result<MigrationAddress> {
        let (scheme, rest) = uri.split_once(':').ok_or_else(|| {
            Error::address(
                "uri",
                format_args!("no `scheme:` in `{uri}` (expected tcp:, unix:, fd:, exec: or file:)"),
            )
        })?;
        match scheme {
            "tcp" => parse_tcp_uri(rest).map(|a| MigrationAddress::Socket(SocketAddress::Inet(a))),
            "unix" => {
                if rest.is_empty() {
                    return Err(Error::address("uri", "`unix:` needs a path"));
                }
                Ok(MigrationAddress::unix(rest))
            }
            "fd" => {
                if rest.is_empty() {
                    return Err(Error::address("uri", "`fd:` needs a descriptor name"));
                }
                Ok(MigrationAddress::fd(rest))
            }
            "exec" => {
                if rest.trim().is_empty() {
                    return Err(Error::address("uri", "`exec:` needs a command"));
                }
                Ok(MigrationAddress::exec(
                    EXEC_SHELL.iter().copied().chain([rest]),
                ))
            }
            "file" => parse_file_uri(rest),
            "rdma" | "vsock" => Err(Error::unsupported(format!(
                "uri: `{scheme}:` is not supported (expected tcp:, unix:, fd:, exec: or file:)"
            ))),
            _ => Err(Error::address(
                "uri",
                format_args!(
                    "unknown scheme `{scheme}:` (expected tcp:, unix:, fd:, exec: or file:)"
                ),
            )),
        }
    }

    /// Whether this is a one-way transport (`exec`, `file`) that carries
    /// only a main channel.
    pub fn is_one_way(&self) -> bool {
        matches!(self, MigrationAddress::Exec(_) | MigrationAddress::File(_))
    }

    fn parse_json(v: &Value, path: &str) -> Result<MigrationAddress> {
        let f = Fields::new(v, path)?;
        let transport = f.string("transport")?;
        match transport.as_str() {
            "socket" => SocketAddress::parse_json(&f).map(MigrationAddress::Socket),
            "exec" => {
                f.known(&["transport", "args"])?;
                let args = f.string_list("args")?;
                if args.is_empty() {
                    return Err(Error::address(
                        f.path("args"),
                        "needs at least the program to run",
                    ));
                }
                Ok(MigrationAddress::Exec(ExecCommand { args }))
            }
            "file" => {
                f.known(&["transport", "filename", "offset"])?;
                let filename = f.string("filename")?;
                if filename.is_empty() {
                    return Err(Error::address(f.path("filename"), "is empty"));
                }
                let offset = f.uint::<u64>("offset", "an unsigned 64-bit integer")?;
                Ok(MigrationAddress::File(FileTarget { filename, offset }))
            }
            "rdma" => Err(Error::unsupported(format!(
                "{}: `rdma` is not supported (expected socket, exec or file)",
                f.path("transport")
            ))),
            other => Err(Error::address(
                f.path("transport"),
                format_args!("unknown `{other}` (expected socket, exec or file)"),
            )),
        }
    }
}

impl SocketAddress {
    fn parse_json(f: &Fields<'_>) -> Result<SocketAddress> {
        let ty = f.string("type")?;
        match ty.as_str() {
            "inet" => {
                f.known(&[
                    "transport",
                    "type",
                    "host",
                    "port",
                    "numeric",
                    "to",
                    "ipv4",
                    "ipv6",
                    "keep-alive",
                    "keep-alive-count",
                    "keep-alive-idle",
                    "keep-alive-interval",
                    "mptcp",
                ])?;
                let host = f.string("host")?;
                let port_text = f.string("port")?;
                let port = parse_port(&port_text).map_err(|m| Error::address(f.path("port"), m))?;
                let a = InetAddress {
                    host,
                    port,
                    numeric: f.opt_bool("numeric")?,
                    to: f.opt_uint("to", "a port number 0..=65535")?,
                    ipv4: f.opt_bool("ipv4")?,
                    ipv6: f.opt_bool("ipv6")?,
                    keep_alive: f.opt_bool("keep-alive")?,
                    keep_alive_count: f
                        .opt_uint("keep-alive-count", "an unsigned 32-bit integer")?,
                    keep_alive_idle: f.opt_uint("keep-alive-idle", "an unsigned 32-bit integer")?,
                    keep_alive_interval: f
                        .opt_uint("keep-alive-interval", "an unsigned 32-bit integer")?,
                    mptcp: f.opt_bool("mptcp")?,
                };
                a.check()
                    .map_err(|(field, m)| Error::address(f.path(field), m))?;
                Ok(SocketAddress::Inet(a))
            }
            "unix" => {
                f.known(&["transport", "type", "path", "abstract", "tight"])?;
                let path = f.string("path")?;
                if path.is_empty() {
                    return Err(Error::address(f.path("path"), "is empty"));
                }
                Ok(SocketAddress::Unix(UnixAddress {
                    path,
                    r#abstract: f.opt_bool("abstract")?,
                    tight: f.opt_bool("tight")?,
                }))
            }
            "fd" => {
                f.known(&["transport", "type", "str"])?;
                let name = f.string("str")?;
                if name.is_empty() {
                    return Err(Error::address(f.path("str"), "is empty"));
                }
                Ok(SocketAddress::Fd(FdAddress { str: name }))
            }
            "vsock" => Err(Error::unsupported(format!(
                "{}: `vsock` is not supported (expected inet, unix or fd)",
                f.path("type")
            ))),
            other => Err(Error::address(
                f.path("type"),
                format_args!("unknown `{other}` (expected inet, unix or fd)"),
            )),
        }
    }
}

impl InetAddress {
    /// `host:port` with every option at QEMU's default.
    pub fn new(host: impl Into<String>, port: u16) -> InetAddress {
        InetAddress {
            host: host.into(),
            port,
            numeric: None,
            to: None,
            ipv4: None,
            ipv6: None,
            keep_alive: None,
            keep_alive_count: None,
            keep_alive_idle: None,
            keep_alive_interval: None,
            mptcp: None,
        }
    }

    /// Which address families to use, `(ipv4, ipv6)`. Both unless one is
    /// asked for alone (`ipv4: true` without `ipv6`, or the reverse) or
    /// turned off.
    pub fn families(&self) -> (bool, bool) {
        let v4 = match (self.ipv4, self.ipv6) {
            (Some(v4), _) => v4,
            (None, Some(true)) => false,
            (None, _) => true,
        };
        let v6 = match (self.ipv6, self.ipv4) {
            (Some(v6), _) => v6,
            (None, Some(true)) => false,
            (None, _) => true,
        };
        (v4, v6)
    }

    /// Consistency of the options: the field at fault and why.
    fn check(&self) -> std::result::Result<(), (&'static str, String)> {
        if self.families() == (false, false) {
            return Err(("ipv4", "IPv4 and IPv6 are both turned off".into()));
        }
        if let Some(to) = self.to {
            if to < self.port {
                return Err((
                    "to",
                    format!("{to} is below the port {} it ends the range of", self.port),
                ));
            }
        }
        if self.numeric == Some(true) && !self.host.is_empty() && self.ip().is_none() {
            return Err((
                "host",
                format!("`{}` is not a numeric address (numeric is set)", self.host),
            ));
        }
        Ok(())
    }

    /// The host as an IP address, if it is one.
    pub(crate) fn ip(&self) -> Option<std::net::IpAddr> {
        self.host.parse().ok()
    }
}

impl UnixAddress {
    /// The socket at `path` in the file system.
    pub fn new(path: impl Into<String>) -> UnixAddress {
        UnixAddress {
            path: path.into(),
            r#abstract: None,
            tight: None,
        }
    }
}

impl<'de> Deserialize<'de> for MigrationChannel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        MigrationChannel::from_json(&v).map_err(serde::de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for MigrationAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        MigrationAddress::from_json(&v).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for MigrationChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.channel_type {
            ChannelType::Main => write!(f, "main {}", self.addr),
        }
    }
}

/// A readable form. For every address [`MigrationAddress::from_uri`] makes,
/// it is a URI that parses back to the same address; an `exec` argument
/// vector that is not `/bin/sh -c COMMAND` is shown as its words.
impl fmt::Display for MigrationAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MigrationAddress::Socket(s) => s.fmt(f),
            MigrationAddress::Exec(e) => match e.args.as_slice() {
                [sh, c, cmd] if sh == EXEC_SHELL[0] && c == EXEC_SHELL[1] => {
                    write!(f, "exec:{cmd}")
                }
                args => write!(f, "exec:{}", args.join(" ")),
            },
            MigrationAddress::File(t) => {
                write!(f, "file:{}", t.filename)?;
                // Written whenever a parser could read part of the name as
                // the offset, so the form parses back.
                if t.offset != 0 || t.filename.contains(FILE_OFFSET) {
                    write!(f, "{FILE_OFFSET}{}", t.offset)?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for SocketAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SocketAddress::Inet(a) => a.fmt(f),
            SocketAddress::Unix(u) => {
                if u.r#abstract == Some(true) {
                    write!(f, "unix:@{}", u.path)
                } else {
                    write!(f, "unix:{}", u.path)
                }
            }
            SocketAddress::Fd(d) => write!(f, "fd:{}", d.str),
        }
    }
}

impl fmt::Display for InetAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "tcp:[{}]:{}", self.host, self.port)?;
        } else {
            write!(f, "tcp:{}:{}", self.host, self.port)?;
        }
        let on = |b: bool| if b { "on" } else { "off" };
        let bools = [
            ("numeric", self.numeric),
            ("ipv4", self.ipv4),
            ("ipv6", self.ipv6),
            ("keep-alive", self.keep_alive),
            ("mptcp", self.mptcp),
        ];
        for (name, v) in bools {
            if let Some(v) = v {
                write!(f, ",{name}={}", on(v))?;
            }
        }
        if let Some(to) = self.to {
            write!(f, ",to={to}")?;
        }
        let numbers = [
            ("keep-alive-count", self.keep_alive_count),
            ("keep-alive-idle", self.keep_alive_idle),
            ("keep-alive-interval", self.keep_alive_interval),
        ];
        for (name, v) in numbers {
            if let Some(v) = v {
                write!(f, ",{name}={v}")?;
            }
        }
        Ok(())
    }
}

const FILE_OFFSET: &str = ",offset=";

fn port_as_string<S: Serializer>(port: &u16, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.collect_str(port)
}

fn to_json_value<T: Serialize>(v: &T) -> Value {
    // Plain structs of strings, booleans and integers: serde_json cannot fail
    // on them (no maps with non-string keys, no non-finite floats).
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// A decimal port number; the message says what is wrong.
fn parse_port(text: &str) -> std::result::Result<u16, String> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("`{text}` is not a port number 0..=65535"));
    }
    text.parse::<u16>()
        .map_err(|_| format!("`{text}` is not a port number 0..=65535"))
}

/// `HOST:PORT[,OPT[=VAL]...]` or `[IPV6]:PORT[,...]`.
fn parse_tcp_uri(rest: &str) -> Result<InetAddress> {
    let mut parts = rest.split(',');
    let hostport = parts.next().unwrap_or_default();
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (host, port) = v6
            .split_once("]:")
            .ok_or_else(|| Error::address("uri", "`tcp:[` needs `[IPV6-ADDRESS]:PORT`"))?;
        if host.is_empty() {
            return Err(Error::address(
                "uri",
                "`tcp:[]` has no address in the brackets",
            ));
        }
        if host.contains(['[', ']']) {
            return Err(Error::address(
                "uri",
                "`tcp:[...]` holds a bracket inside the address",
            ));
        }
        (host, port)
    } else {
        hostport
            .split_once(':')
            .ok_or_else(|| Error::address("uri", "`tcp:` needs host:port"))?
    };
    if port.is_empty() {
        return Err(Error::address("uri", "`tcp:` needs host:port"));
    }
    let port = parse_port(port).map_err(|m| Error::address("uri", m))?;
    let mut a = InetAddress::new(host, port);
    for opt in parts {
        let (name, value) = match opt.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (opt, None),
        };
        let boolean = |v: Option<&str>| -> Result<bool> {
            match v {
                None | Some("on" | "yes" | "true") => Ok(true),
                Some("off" | "no" | "false") => Ok(false),
                Some(other) => Err(Error::address(
                    "uri",
                    format_args!("option `{name}`: `{other}` is not on or off"),
                )),
            }
        };
        let number = |v: Option<&str>| -> Result<u64> {
            v.filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| {
                    Error::address("uri", format_args!("option `{name}` needs a number"))
                })
        };
        let narrow = |n: u64, max: u64| -> Result<u64> {
            if n > max {
                Err(Error::address(
                    "uri",
                    format_args!("option `{name}`: {n} is above {max}"),
                ))
            } else {
                Ok(n)
            }
        };
        match name {
            "numeric" => a.numeric = Some(boolean(value)?),
            "ipv4" => a.ipv4 = Some(boolean(value)?),
            "ipv6" => a.ipv6 = Some(boolean(value)?),
            "keep-alive" => a.keep_alive = Some(boolean(value)?),
            "mptcp" => a.mptcp = Some(boolean(value)?),
            "to" => a.to = u16::try_from(narrow(number(value)?, u16::MAX.into())?).ok(),
            "keep-alive-count" => {
                a.keep_alive_count = u32::try_from(narrow(number(value)?, u32::MAX.into())?).ok()
            }
            "keep-alive-idle" => {
                a.keep_alive_idle = u32::try_from(narrow(number(value)?, u32::MAX.into())?).ok()
            }
            "keep-alive-interval" => {
                a.keep_alive_interval = u32::try_from(narrow(number(value)?, u32::MAX.into())?).ok()
            }
            _ => {
                return Err(Error::address(
                    "uri",
                    format_args!("unknown `tcp:` option `{name}`"),
                ))
            }
        }
    }
    a.check()
        .map_err(|(field, m)| Error::address("uri", format_args!("{field}: {m}")))?;
    Ok(a)
}

/// `PATH[,offset=N]`. The last `,offset=` counts, so a name that contains
/// one still parses back from [`MigrationAddress`]'s `Display`.
fn parse_file_uri(rest: &str) -> Result<MigrationAddress> {
    let (path, offset) = match rest.rfind(FILE_OFFSET) {
        Some(at) => {
            let (path, tail) = rest.split_at(at);
            let text = tail.get(FILE_OFFSET.len()..).unwrap_or_default();
            let offset = parse_size(text).ok_or_else(|| {
                Error::address(
                    "uri",
                    format_args!(
                        "file offset `{text}` is not a size (a number, K, M, G... suffix)"
                    ),
                )
            })?;
            (path, offset)
        }
        None => (rest, 0),
    };
    if path.is_empty() {
        return Err(Error::address("uri", "`file:` needs a path"));
    }
    Ok(MigrationAddress::file(path, offset))
}

/// A decimal size with an optional binary suffix (`B`, `K`, `M`, `G`, `T`,
/// `P`, `E`, either case); `None` if malformed or beyond `u64`.
fn parse_size(text: &str) -> Option<u64> {
    let (digits, shift) = match text.as_bytes().last()? {
        b'0'..=b'9' => (text, 0),
        b => {
            let shift = match b.to_ascii_uppercase() {
                b'B' => 0,
                b'K' => 10,
                b'M' => 20,
                b'G' => 30,
                b'T' => 40,
                b'P' => 50,
                b'E' => 60,
                _ => return None,
            };
            (text.get(..text.len().checked_sub(1)?)?, shift)
        }
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(1u64 << shift)
}

/// The fields of one JSON object, with the path that names them in errors.
struct Fields<'a> {
    prefix: &'a str,
    map: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    fn new(v: &'a Value, prefix: &'a str) -> Result<Fields<'a>> {
        match v {
            Value::Object(map) => Ok(Fields { prefix, map }),
            other => Err(Error::address(
                if prefix.is_empty() { "address" } else { prefix },
                format_args!("expected an object, found {}", describe(other)),
            )),
        }
    }

    /// `prefix.name`; a name that is empty or not a plain QMP name is
    /// quoted, so the path still says which field (`addr."a.b"`, `""`).
    fn path(&self, name: &str) -> String {
        let plain = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        let name = if plain {
            name.to_string()
        } else {
            format!("{name:?}")
        };
        if self.prefix.is_empty() {
            name
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// Refuses the first field not in `known`, as QEMU does.
    fn known(&self, known: &[&str]) -> Result<()> {
        match self.map.keys().find(|k| !known.contains(&k.as_str())) {
            Some(k) => Err(Error::address(
                self.path(k),
                format_args!("unknown field (expected one of: {})", known.join(", ")),
            )),
            None => Ok(()),
        }
    }

    fn required(&self, name: &str) -> Result<&'a Value> {
        self.map
            .get(name)
            .ok_or_else(|| Error::address(self.path(name), "missing"))
    }

    fn string(&self, name: &str) -> Result<String> {
        match self.required(name)? {
            Value::String(s) => Ok(s.clone()),
            other => Err(self.wrong_type(name, "a string", other)),
        }
    }

    fn string_list(&self, name: &str) -> Result<Vec<String>> {
        match self.required(name)? {
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(Error::address(
                        format_args!("{}[{i}]", self.path(name)),
                        format_args!("expected a string, found {}", describe(other)),
                    )),
                })
                .collect(),
            other => Err(self.wrong_type(name, "an array of strings", other)),
        }
    }

    fn opt_bool(&self, name: &str) -> Result<Option<bool>> {
        match self.map.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(self.wrong_type(name, "a boolean", other)),
        }
    }

    fn uint<T: TryFrom<u64>>(&self, name: &str, what: &str) -> Result<T> {
        self.opt_uint(name, what)?
            .ok_or_else(|| Error::address(self.path(name), "missing"))
    }

    fn opt_uint<T: TryFrom<u64>>(&self, name: &str, what: &str) -> Result<Option<T>> {
        match self.map.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| T::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| self.wrong_type(name, what, v)),
        }
    }

    fn wrong_type(&self, name: &str, expected: &str, found: &Value) -> Error {
        Error::address(
            self.path(name),
            format_args!("expected {expected}, found {}", describe(found)),
        )
    }
}

/// "a string", "the number -1": what a JSON value is, for messages.
fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0"), Some(0));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("4k"), Some(4096));
        assert_eq!(parse_size("1M"), Some(1 << 20));
        assert_eq!(parse_size("15E"), Some(15 << 60));
        assert_eq!(parse_size("16E"), None);
        assert_eq!(parse_size("18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_size("18446744073709551616"), None);
        for bad in ["", "k", "-1", "1.5M", "0x10", "1 K", "1KB"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }

    #[test]
    fn families() {
        let mut a = InetAddress::new("h", 1);
        assert_eq!(a.families(), (true, true));
        a.ipv4 = Some(true);
        assert_eq!(a.families(), (true, false));
        a.ipv6 = Some(true);
        assert_eq!(a.families(), (true, true));
        a.ipv4 = Some(false);
        assert_eq!(a.families(), (false, true));
        a.ipv6 = None;
        assert_eq!(a.families(), (false, true));
    }
}
