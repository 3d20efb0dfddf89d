//! Channel addresses: the QMP JSON shapes, legacy URIs, and their errors.

use serde_json::{json, Value};
use vmstream_transport::address::{InetAddress, UnixAddress};
use vmstream_transport::{ErrorKind, MigrationAddress, MigrationChannel, SocketAddress};

fn inet(host: &str, port: u16) -> InetAddress {
    InetAddress::new(host, port)
}

#[test]
fn json_shapes_accepted() {
    let mut full = inet("::1", 4444);
    full.numeric = Some(true);
    full.to = Some(4450);
    full.ipv4 = Some(false);
    full.ipv6 = Some(true);
    full.keep_alive = Some(true);
    full.keep_alive_count = Some(3);
    full.keep_alive_idle = Some(10);
    full.keep_alive_interval = Some(2);
    full.mptcp = Some(false);
    let mut abstract_unix = UnixAddress::new("vmstream-test");
    abstract_unix.r#abstract = Some(true);
    abstract_unix.tight = Some(true);

    let cases: Vec<(Value, MigrationAddress)> = vec![
        (
            json!({"transport": "socket", "type": "inet", "host": "127.0.0.1", "port": "4444"}),
            MigrationAddress::tcp("127.0.0.1", 4444),
        ),
        (
            json!({"transport": "socket", "type": "inet", "host": "::1", "port": "4444",
                   "numeric": true, "to": 4450, "ipv4": false, "ipv6": true, "keep-alive": true,
                   "keep-alive-count": 3, "keep-alive-idle": 10, "keep-alive-interval": 2,
                   "mptcp": false}),
            MigrationAddress::Socket(SocketAddress::Inet(full)),
        ),
        (
            json!({"transport": "socket", "type": "inet", "host": "", "port": "0"}),
            MigrationAddress::tcp("", 0),
        ),
        (
            json!({"transport": "socket", "type": "unix", "path": "/run/mig.sock"}),
            MigrationAddress::unix("/run/mig.sock"),
        ),
        (
            json!({"transport": "socket", "type": "unix", "path": "vmstream-test",
                   "abstract": true, "tight": true}),
            MigrationAddress::Socket(SocketAddress::Unix(abstract_unix)),
        ),
        (
            json!({"transport": "socket", "type": "fd", "str": "migfd"}),
            MigrationAddress::fd("migfd"),
        ),
        (
            json!({"transport": "exec", "args": ["gzip", "-c"]}),
            MigrationAddress::exec(["gzip", "-c"]),
        ),
        (
            json!({"transport": "file", "filename": "/tmp/vm.state", "offset": 4096}),
            MigrationAddress::file("/tmp/vm.state", 4096),
        ),
        (
            json!({"transport": "file", "filename": "/tmp/vm.state", "offset": u64::MAX}),
            MigrationAddress::file("/tmp/vm.state", u64::MAX),
        ),
    ];
    for (v, want) in cases {
        let got = MigrationAddress::from_json(&v).unwrap_or_else(|e| panic!("{v}: {e}"));
        assert_eq!(got, want, "{v}");
        // Serializing gives QMP's shape back, field for field.
        assert_eq!(got.to_json(), v);
        // And serde goes through the same parser.
        let via_serde: MigrationAddress = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(via_serde, want);

        let channel = json!({"channel-type": "main", "addr": v});
        let c = MigrationChannel::from_json(&channel).unwrap();
        assert_eq!(c, MigrationChannel::main(want));
        assert_eq!(c.to_json(), channel);
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(MigrationChannel::from_json_str(&text).unwrap(), c);
    }
}

#[test]
fn json_shapes_rejected_naming_the_field() {
    let sock = |extra: Value| {
        let mut v = json!({"transport": "socket", "type": "inet", "host": "h", "port": "1"});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        json!({"channel-type": "main", "addr": v})
    };
    use ErrorKind::{Address, Unsupported};
    let cases: Vec<(Value, ErrorKind, &str)> = vec![
        (
            json!([]),
            Address,
            "address: expected an object, found an array",
        ),
        (json!({"addr": {}}), Address, "channel-type: missing"),
        (json!({"channel-type": "main"}), Address, "addr: missing"),
        (
            json!({"channel-type": 1, "addr": {}}),
            Address,
            "channel-type: expected a string, found the number 1",
        ),
        (
            json!({"channel-type": "cpr", "addr": {}}),
            Unsupported,
            "channel-type: `cpr` is not supported",
        ),
        (
            json!({"channel-type": "side", "addr": {}}),
            Address,
            "channel-type: unknown `side`",
        ),
        (
            json!({"channel-type": "main", "addr": {}, "uri": "x"}),
            Address,
            "uri: unknown field",
        ),
        (json!({"": "4"}), Address, "\"\": unknown field"),
        (
            json!({"channel-type": "main", "addr": {"transport": "file", "file.name": "/x", "offset": 0}}),
            Address,
            "addr.\"file.name\": unknown field",
        ),
        (
            json!({"channel-type": "main", "addr": "tcp:h:1"}),
            Address,
            "addr: expected an object, found a string",
        ),
        (
            json!({"channel-type": "main", "addr": {}}),
            Address,
            "addr.transport: missing",
        ),
        (
            json!({"channel-type": "main", "addr": {"transport": null}}),
            Address,
            "addr.transport: expected a string, found null",
        ),
        (
            json!({"channel-type": "main", "addr": {"transport": "pigeon"}}),
            Address,
            "addr.transport: unknown `pigeon` (expected socket, exec or file)",
        ),
        (
            json!({"channel-type": "main", "addr": {"transport": "rdma", "host": "h", "port": "1"}}),
            Unsupported,
            "addr.transport: `rdma` is not supported",
        ),
        (
            json!({"channel-type": "main", "addr": {"transport": "socket"}}),
            Address,
            "addr.type: missing",
        ),
        (
            json!({"channel-type": "main", "addr": {"transport": "socket", "type": "tipc"}}),
            Address,
            "addr.type: unknown `tipc`",
        ),
        (
            json!({"channel-type": "main", "addr": {"transport": "socket", "type": "vsock", "cid": "3", "port": "1"}}),
            Unsupported,
            "addr.type: `vsock` is not supported",
        ),
        (
            sock(json!({"port": 4444})),
            Address,
            "addr.port: expected a string, found the number 4444",
        ),
        (
            sock(json!({"port": "http"})),
            Address,
            "addr.port: `http` is not a port number 0..=65535",
        ),
        (
            sock(json!({"port": "65536"})),
            Address,
            "addr.port: `65536` is not a port number",
        ),
        (
            sock(json!({"port": "-1"})),
            Address,
            "addr.port: `-1` is not a port number",
        ),
        (
            sock(json!({"host": ["h"]})),
            Address,
            "addr.host: expected a string, found an array",
        ),
        (
            json!({"channel-type": "main", "addr": {"transport": "socket", "type": "inet", "port": "1"}}),
            Address,
            "addr.host: missing",
        ),
        (
            json!({"channel-type": "main", "addr": {"transport": "socket", "type": "inet", "host": "h"}}),
            Address,
            "addr.port: missing",
        ),
        (
            sock(json!({"hots": "x"})),
            Address,
            "addr.hots: unknown field (expected one of: transport, type, host, port",
        ),
        (
            sock(json!({"path": "/x"})),
            Address,
            "addr.path: unknown field",
        ),
        (
            sock(json!({"ipv4": "on"})),
            Address,
            "addr.ipv4: expected a boolean, found a string",
        ),
        (
            sock(json!({"ipv4": null})),
            Address,
            "addr.ipv4: expected a boolean, found null",
        ),
        (
            sock(json!({"ipv4": false, "ipv6": false})),
            Address,
            "addr.ipv4: IPv4 and IPv6 are both turned off",
        ),
        (
            sock(json!({"to": 70000})),
            Address,
            "addr.to: expected a port number 0..=65535, found the number 70000",
        ),
        (
            sock(json!({"to": 0})),
            Address,
            "addr.to: 0 is below the port 1",
        ),
        (
            sock(json!({"keep-alive-count": -1})),
            Address,
            "addr.keep-alive-count: expected an unsigned 32-bit integer, found the number -1",
        ),
        (
            sock(json!({"keep-alive-idle": 1.5})),
            Address,
            "addr.keep-alive-idle: expected an unsigned 32-bit integer, found the number 1.5",
        ),
        (
            sock(json!({"numeric": true})),
            Address,
            "addr.host: `h` is not a numeric address",
        ),
        (
            json!({"channel-type": "main", "addr": {"transport": "socket", "type": "unix"}}),
            Address,
            "addr.path: missing",
        ),
        (
            json!({"channel-type": "main", "addr": {"transport": "socket", "type": "unix", "path": ""}}),
            Address,
            "addr.path: is empty",
        ),
        (
            json!({"channel-type": "main", "addr": {"transport": "socket", "type": "unix", "path": "/x", "abstract": 1}}),
            Address,
            "addr.abstract: expected a boolean",
        ),
        (
            json!({"channel-type": "main", "addr": {"transport": "socket", "type": "unix", "path": "/x", "host": "h"}}),
            Address,
            "addr.host: unknown field",
        ),
        (
            json!({"channel-type": "main", "addr": {"transport": "socket", "type": "fd"}}),
            Address,
            "addr.str: missing",
        ),
        (
            json!({"channel-type": "main", "addr": {"transport": "socket", "type": "fd", "str": 3}}),
            Address,
            "addr.str: expected a string, found the number 3",
        ),
        (
            json!({"channel-type": "main", "addr": {"transport": "exec"}}),
            Address,
            "addr.args: missing",
        ),
        (
            json!({"channel-type": "main", "addr": {"transport": "exec", "args": "cat"}}),
            Address,
            "addr.args: expected an array of strings, found a string",
        ),
        (
            json!({"channel-type": "main", "addr": {"transport": "exec", "args": []}}),
            Address,
            "addr.args: needs at least the program",
        ),
        (
            json!({"channel-type": "main", "addr": {"transport": "exec", "args": ["cat", 1]}}),
            Address,
            "addr.args[1]: expected a string, found the number 1",
        ),
        (
            json!({"channel-type": "main", "addr": {"transport": "exec", "args": ["cat"], "env": []}}),
            Address,
            "addr.env: unknown field",
        ),
        (
            json!({"channel-type": "main", "addr": {"transport": "file", "filename": "/x"}}),
            Address,
            "addr.offset: missing",
        ),
        (
            json!({"channel-type": "main", "addr": {"transport": "file", "offset": 0}}),
            Address,
            "addr.filename: missing",
        ),
        (
            json!({"channel-type": "main", "addr": {"transport": "file", "filename": "/x", "offset": "0"}}),
            Address,
            "addr.offset: expected an unsigned 64-bit integer, found a string",
        ),
        (
            json!({"channel-type": "main", "addr": {"transport": "file", "filename": "/x", "offset": -4096}}),
            Address,
            "addr.offset: expected an unsigned 64-bit integer, found the number -4096",
        ),
        (
            json!({"channel-type": "main", "addr": {"transport": "file", "filename": "", "offset": 0}}),
            Address,
            "addr.filename: is empty",
        ),
    ];
    for (v, kind, message) in cases {
        let e = MigrationChannel::from_json(&v).expect_err(&v.to_string());
        assert_eq!(e.kind(), kind, "{v}: {e}");
        assert!(
            e.to_string().starts_with(message),
            "{v}:\n  got  {e}\n  want {message}"
        );
        // serde reports the same message.
        let via_serde = serde_json::from_value::<MigrationChannel>(v.clone()).unwrap_err();
        assert!(via_serde.to_string().starts_with(message), "{via_serde}");
    }
    let e = MigrationChannel::from_json_str("{\"channel-type\": ").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Address);
    assert!(e.to_string().starts_with("channel: not JSON"), "{e}");
}

#[test]
fn uris_parse() {
    let with = |f: &dyn Fn(&mut InetAddress), host: &str, port: u16| {
        let mut a = inet(host, port);
        f(&mut a);
        MigrationAddress::Socket(SocketAddress::Inet(a))
    };
    let cases: Vec<(&str, MigrationAddress)> =
        vec![
        ("tcp:127.0.0.1:4444", MigrationAddress::tcp("127.0.0.1", 4444)),
        ("tcp:localhost:0", MigrationAddress::tcp("localhost", 0)),
        ("tcp::4444", MigrationAddress::tcp("", 4444)),
        ("tcp:[::1]:4444", MigrationAddress::tcp("::1", 4444)),
        ("tcp:[fe80::1%eth0]:1", MigrationAddress::tcp("fe80::1%eth0", 1)),
        ("tcp:0.0.0.0:65535", MigrationAddress::tcp("0.0.0.0", 65535)),
        (
            "tcp:127.0.0.1:4444,ipv4=on,to=4450,keep-alive,keep-alive-count=5",
            with(
                &|a| {
                    a.ipv4 = Some(true);
                    a.to = Some(4450);
                    a.keep_alive = Some(true);
                    a.keep_alive_count = Some(5);
                },
                "127.0.0.1",
                4444,
            ),
        ),
        (
            "tcp:[::1]:1,ipv6=yes,numeric=true,mptcp=off,keep-alive-idle=7,keep-alive-interval=8",
            with(
                &|a| {
                    a.ipv6 = Some(true);
                    a.numeric = Some(true);
                    a.mptcp = Some(false);
                    a.keep_alive_idle = Some(7);
                    a.keep_alive_interval = Some(8);
                },
                "::1",
                1,
            ),
        ),
        ("unix:/run/mig.sock", MigrationAddress::unix("/run/mig.sock")),
        ("unix:relative path", MigrationAddress::unix("relative path")),
        ("fd:3", MigrationAddress::fd("3")),
        ("fd:migfd", MigrationAddress::fd("migfd")),
        (
            "exec:gzip -c > /tmp/x.gz",
            MigrationAddress::exec(["/bin/sh", "-c", "gzip -c > /tmp/x.gz"]),
        ),
        ("file:/tmp/vm", MigrationAddress::file("/tmp/vm", 0)),
        ("file:/tmp/vm,offset=4096", MigrationAddress::file("/tmp/vm", 4096)),
        ("file:/tmp/vm,offset=4k", MigrationAddress::file("/tmp/vm", 4096)),
        ("file:/tmp/vm,offset=2M", MigrationAddress::file("/tmp/vm", 2 << 20)),
        ("file:/tmp/a,offset=1,offset=2", MigrationAddress::file("/tmp/a,offset=1", 2)),
        ("file:/tmp/a,b", MigrationAddress::file("/tmp/a,b", 0)),
    ];
    for (uri, want) in cases {
        let got = MigrationAddress::from_uri(uri).unwrap_or_else(|e| panic!("{uri}: {e}"));
        assert_eq!(got, want, "{uri}");
        // Display is a URI that parses back to the same address.
        let shown = got.to_string();
        assert_eq!(
            MigrationAddress::from_uri(&shown).unwrap(),
            got,
            "{uri} -> {shown}"
        );
    }
}

#[test]
fn display_reads_back() {
    assert_eq!(MigrationAddress::tcp("::1", 5).to_string(), "tcp:[::1]:5");
    assert_eq!(MigrationAddress::file("/x", 0).to_string(), "file:/x");
    assert_eq!(
        MigrationAddress::file("/x", 8).to_string(),
        "file:/x,offset=8"
    );
    // A name with ",offset=" in it keeps its offset so it parses back.
    let odd = MigrationAddress::file("/x,offset=5", 0);
    assert_eq!(odd.to_string(), "file:/x,offset=5,offset=0");
    assert_eq!(MigrationAddress::from_uri(&odd.to_string()).unwrap(), odd);
    assert_eq!(
        MigrationAddress::exec(["cat", "-u"]).to_string(),
        "exec:cat -u"
    );
    assert_eq!(
        MigrationChannel::main(MigrationAddress::unix("/s")).to_string(),
        "main unix:/s"
    );
}

#[test]
fn uris_rejected() {
    use ErrorKind::{Address, Unsupported};
    let cases: &[(&str, ErrorKind, &str)] = &[
        ("", Address, "uri: no `scheme:`"),
        (
            "127.0.0.1:4444",
            Address,
            "uri: unknown scheme `127.0.0.1:`",
        ),
        ("localhost", Address, "uri: no `scheme:` in `localhost`"),
        ("http://x", Address, "uri: unknown scheme `http:`"),
        ("tcp:", Address, "uri: `tcp:` needs host:port"),
        ("tcp:localhost", Address, "uri: `tcp:` needs host:port"),
        ("tcp:localhost:", Address, "uri: `tcp:` needs host:port"),
        (
            "tcp:h:http",
            Address,
            "uri: `http` is not a port number 0..=65535",
        ),
        ("tcp:h:65536", Address, "uri: `65536` is not a port number"),
        ("tcp:h:+1", Address, "uri: `+1` is not a port number"),
        (
            "tcp:[::1]",
            Address,
            "uri: `tcp:[` needs `[IPV6-ADDRESS]:PORT`",
        ),
        (
            "tcp:[::1]4444",
            Address,
            "uri: `tcp:[` needs `[IPV6-ADDRESS]:PORT`",
        ),
        ("tcp:[]:1", Address, "uri: `tcp:[]` has no address"),
        ("tcp:[[::1]]:1", Address, "uri: `tcp:[...]` holds a bracket"),
        (
            "tcp:h:1,bogus=1",
            Address,
            "uri: unknown `tcp:` option `bogus`",
        ),
        (
            "tcp:h:1,ipv4=maybe",
            Address,
            "uri: option `ipv4`: `maybe` is not on or off",
        ),
        ("tcp:h:1,to=x", Address, "uri: option `to` needs a number"),
        ("tcp:h:1,to", Address, "uri: option `to` needs a number"),
        (
            "tcp:h:1,to=65536",
            Address,
            "uri: option `to`: 65536 is above 65535",
        ),
        ("tcp:h:5,to=4", Address, "uri: to: 4 is below the port 5"),
        (
            "tcp:h:1,keep-alive-count=4294967296",
            Address,
            "uri: option `keep-alive-count`: 4294967296 is above",
        ),
        (
            "tcp:h:1,ipv4=off,ipv6=off",
            Address,
            "uri: ipv4: IPv4 and IPv6 are both turned off",
        ),
        (
            "tcp:h:1,numeric",
            Address,
            "uri: host: `h` is not a numeric address",
        ),
        ("unix:", Address, "uri: `unix:` needs a path"),
        ("fd:", Address, "uri: `fd:` needs a descriptor name"),
        ("exec:", Address, "uri: `exec:` needs a command"),
        ("exec:   ", Address, "uri: `exec:` needs a command"),
        ("file:", Address, "uri: `file:` needs a path"),
        ("file:,offset=1", Address, "uri: `file:` needs a path"),
        (
            "file:/x,offset=",
            Address,
            "uri: file offset `` is not a size",
        ),
        (
            "file:/x,offset=-1",
            Address,
            "uri: file offset `-1` is not a size",
        ),
        (
            "file:/x,offset=1Q",
            Address,
            "uri: file offset `1Q` is not a size",
        ),
        (
            "file:/x,offset=16E",
            Address,
            "uri: file offset `16E` is not a size",
        ),
        ("rdma:h:1", Unsupported, "uri: `rdma:` is not supported"),
        ("vsock:3:1", Unsupported, "uri: `vsock:` is not supported"),
    ];
    for (uri, kind, message) in cases {
        let e = MigrationAddress::from_uri(uri).expect_err(uri);
        assert_eq!(e.kind(), *kind, "{uri}: {e}");
        assert!(
            e.to_string().starts_with(message),
            "{uri}:\n  got  {e}\n  want {message}"
        );
    }
}
