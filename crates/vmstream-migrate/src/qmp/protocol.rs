//! QMP's message layer, free of I/O: requests, responses, the greeting, events,
//! and [`Session`], the per-connection state machine (capabilities negotiation,
//! then commands) that turns each input message into its response.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use super::args::Args;
use super::error::{ErrorClass, QmpError};
use super::json::Message;

/// Commands every session answers itself, whatever the [`Handler`].
pub const BUILTIN_COMMANDS: [&str; 5] = [
    "qmp_capabilities",
    "query-commands",
    "query-version",
    "getfd",
    "closefd",
];

/// Most file descriptors a session holds that no `getfd` has taken yet.
pub const MAX_PENDING_FDS: usize = 8;

/// What a command is asked to do: `{"execute": NAME, "arguments": {...}, "id": ...}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The command's name.
    pub execute: String,
    /// Its arguments; empty when the request had none.
    pub arguments: Map<String, Value>,
    /// The client's transaction id, echoed in the response.
    pub id: Option<Value>,
}

/// A request that could not be read, with the id to answer it with if the id
/// could be read (QMP answers without one otherwise).
#[derive(Debug, Clone, PartialEq)]
pub struct RequestError {
    /// The error response's body.
    pub error: QmpError,
    /// The request's `id`, if it was an object with one.
    pub id: Option<Value>,
}

impl Request {
    /// A request for `execute` with `arguments` and an optional `id`.
    pub fn new(
        execute: impl Into<String>,
        arguments: Map<String, Value>,
        id: Option<Value>,
    ) -> Request {
        Request {
            execute: execute.into(),
            arguments,
            id,
        }
    }

    /// Reads one input message as QEMU does (`qmp_dispatch_check_obj`): it must
    /// be an object whose members are a string `execute`, an optional object
    /// `arguments` and an optional `id` of any type. Out-of-band execution
    /// (`exec-oob`) is not offered, so that member is unexpected, as in QEMU
    /// when the client did not enable the `oob` capability.
    pub fn parse(input: Value) -> Result<Request, RequestError> {
        let Value::Object(mut obj) = input else {
            return Err(RequestError {
                error: QmpError::generic("QMP input must be a JSON object"),
                id: None,
            });
        };
        let id = obj.remove("id");
        let fail = |desc: String| RequestError {
            error: QmpError::generic(desc),
            id: id.clone(),
        };
        let mut execute = None;
        let mut arguments = None;
        for (name, value) in obj {
            match name.as_str() {
                "execute" => match value {
                    Value::String(s) => execute = Some(s),
                    _ => return Err(fail("QMP input member 'execute' must be a string".into())),
                },
                "arguments" => match value {
                    Value::Object(m) => arguments = Some(m),
                    _ => {
                        return Err(fail(
                            "QMP input member 'arguments' must be an object".into(),
                        ))
                    }
                },
                _ => return Err(fail(format!("QMP input member '{name}' is unexpected"))),
            }
        }
        let Some(execute) = execute else {
            return Err(fail("QMP input lacks member 'execute'".into()));
        };
        Ok(Request {
            execute,
            arguments: arguments.unwrap_or_default(),
            id,
        })
    }

    /// The request as sent on the wire; `arguments` is left out when empty.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("execute".into(), self.execute.clone().into());
        if !self.arguments.is_empty() {
            m.insert("arguments".into(), Value::Object(self.arguments.clone()));
        }
        if let Some(id) = &self.id {
            m.insert("id".into(), id.clone());
        }
        Value::Object(m)
    }
}

/// Executes the commands a QMP server offers besides the built-in
/// [`BUILTIN_COMMANDS`]. Called from each client's thread, possibly from
/// several at once.
pub trait Handler: Send + Sync {
    /// Names of the commands [`Handler::execute`] takes. Any other name is
    /// answered with `CommandNotFound` without calling it.
    fn commands(&self) -> Vec<String>;

    /// Runs command `name` with its `args` (an empty map when the request had
    /// none). A command without a result returns an empty object (or `Null`,
    /// sent as `{}`). Unknown or ill-typed arguments are the handler's to
    /// refuse, naming the member (see [`QmpError::unexpected`]).
    fn execute(&self, name: &str, args: Map<String, Value>) -> Result<Value, QmpError>;
}

/// One client connection's protocol state: in capabilities-negotiation mode
/// only `qmp_capabilities` exists; after it succeeds every command does.
pub struct Session {
    handler: Arc<dyn Handler>,
    negotiated: bool,
    /// Descriptors that arrived with the latest bytes (SCM_RIGHTS), for `getfd`.
    fds: Vec<OwnedFd>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("negotiated", &self.negotiated)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A session in capabilities-negotiation mode. Send [`greeting`] first.
    pub fn new(handler: Arc<dyn Handler>) -> Session {
        Session {
            handler,
            negotiated: false,
            fds: Vec::new(),
        }
    }

    /// File descriptors that arrived with the bytes being handled (a unix
    /// socket's SCM_RIGHTS). As in QEMU, they replace any that no `getfd`
    /// took (those are closed), and `getfd` takes the last. At most
    /// [`MAX_PENDING_FDS`] are kept; the rest are closed.
    pub fn receive_fds(&mut self, fds: Vec<OwnedFd>) {
        self.fds = fds;
        let extra = self.fds.len().saturating_sub(MAX_PENDING_FDS);
        self.fds.drain(..extra);
    }

    /// Whether `qmp_capabilities` has succeeded: commands run and events are
    /// delivered from then on.
    pub fn is_negotiated(&self) -> bool {
        self.negotiated
    }

    /// The response to one input message (an unreadable one included).
    pub fn handle(&mut self, input: Message) -> Value {
        let value = match input {
            Ok(v) => v,
            Err(e) => return error_response(&e.to_qmp(), None),
        };
        let request = match Request::parse(value) {
            Ok(r) => r,
            Err(e) => return error_response(&e.error, e.id.as_ref()),
        };
        let was_negotiated = self.negotiated;
        match self.dispatch(&request.execute, request.arguments) {
            Ok(v) => ok_response(v, request.id.as_ref()),
            Err(mut e) => {
                if !was_negotiated && e.class == ErrorClass::CommandNotFound {
                    e.desc = "Expecting capabilities negotiation with 'qmp_capabilities'".into();
                }
                error_response(&e, request.id.as_ref())
            }
        }
    }

    /// Names of the commands that exist now.
    pub fn commands(&self) -> Vec<String> {
        if !self.negotiated {
            return vec!["qmp_capabilities".into()];
        }
        let mut names: Vec<String> = BUILTIN_COMMANDS.iter().map(|s| s.to_string()).collect();
        for name in self.handler.commands() {
            if !names.contains(&name) {
                names.push(name);
            }
        }
        names
    }

    fn dispatch(&mut self, name: &str, args: Map<String, Value>) -> Result<Value, QmpError> {
        if name == "qmp_capabilities" {
            capabilities(args)?;
            if self.negotiated {
                return Err(QmpError::new(
                    ErrorClass::CommandNotFound,
                    "Capabilities negotiation is already complete, command ignored",
                ));
            }
            self.negotiated = true;
            return Ok(Value::Object(Map::new()));
        }
        if !self.negotiated {
            return Err(QmpError::command_not_found(name));
        }
        match name {
            "query-commands" => {
                Args::new(args, "").finish()?;
                let list = self.commands().into_iter().map(|n| {
                    let mut m = Map::new();
                    m.insert("name".into(), n.into());
                    Value::Object(m)
                });
                Ok(Value::Array(list.collect()))
            }
            "query-version" => {
                Args::new(args, "").finish()?;
                Ok(version())
            }
            "getfd" => {
                let mut args = Args::new(args, "");
                let name: String = args.req("fdname")?;
                args.finish()?;
                if name.starts_with(|c: char| c.is_ascii_digit()) {
                    return Err(QmpError::generic(
                        "Parameter 'fdname' expects a name not starting with a digit",
                    ));
                }
                let fd = self.fds.pop().ok_or_else(|| {
                    QmpError::generic("No file descriptor supplied via SCM_RIGHTS")
                })?;
                vmstream_transport::register_fd(&name, fd)
                    .map_err(|e| QmpError::generic(e.to_string()))?;
                Ok(Value::Object(Map::new()))
            }
            "closefd" => {
                let mut args = Args::new(args, "");
                let name: String = args.req("fdname")?;
                args.finish()?;
                if !vmstream_transport::unregister_fd(&name) {
                    return Err(QmpError::generic(format!(
                        "File descriptor named '{name}' not found"
                    )));
                }
                Ok(Value::Object(Map::new()))
            }
            _ if self.handler.commands().iter().any(|c| c == name) => {
                match self.handler.execute(name, args)? {
                    Value::Null => Ok(Value::Object(Map::new())),
                    v => Ok(v),
                }
            }
            _ => Err(QmpError::command_not_found(name)),
        }
    }
}

/// `qmp_capabilities`'s arguments: `enable`, a list of capabilities to turn on.
/// QMP's only capability, `oob`, is not offered.
fn capabilities(args: Map<String, Value>) -> Result<(), QmpError> {
    let mut args = Args::new(args, "");
    let enable: Option<Vec<String>> = args.opt("enable")?;
    args.finish()?;
    for (i, cap) in enable.iter().flatten().enumerate() {
        if cap != "oob" {
            return Err(QmpError::generic(format!(
                "Parameter 'enable[{i}]' does not accept value '{cap}'"
            )));
        }
    }
    if let Some(caps) = enable.filter(|c| !c.is_empty()) {
        return Err(QmpError::generic(format!(
            "Capability {} not available",
            caps.join(", ")
        )));
    }
    Ok(())
}

/// The greeting a server sends first: `{"QMP": {"version": ..., "capabilities": []}}`.
pub fn greeting() -> Value {
    let mut qmp = Map::new();
    qmp.insert("version".into(), version());
    qmp.insert("capabilities".into(), Value::Array(Vec::new()));
    let mut m = Map::new();
    m.insert("QMP".into(), Value::Object(qmp));
    Value::Object(m)
}

/// `query-version`'s result in QEMU's `VersionInfo` shape, carrying vmstream's
/// version: `{"qemu": {"major": 0, "minor": 1, "micro": 0}, "package": "vmstream 0.1.0"}`.
pub fn version() -> Value {
    let part = |s: &str| s.parse::<u64>().unwrap_or(0);
    let mut triple = Map::new();
    triple.insert("major".into(), part(env!("CARGO_PKG_VERSION_MAJOR")).into());
    triple.insert("minor".into(), part(env!("CARGO_PKG_VERSION_MINOR")).into());
    triple.insert("micro".into(), part(env!("CARGO_PKG_VERSION_PATCH")).into());
    let mut m = Map::new();
    m.insert("qemu".into(), Value::Object(triple));
    m.insert(
        "package".into(),
        concat!("vmstream ", env!("CARGO_PKG_VERSION")).into(),
    );
    Value::Object(m)
}

/// A success response: `{"return": VALUE, "id": ID}`.
pub fn ok_response(value: Value, id: Option<&Value>) -> Value {
    let mut m = Map::new();
    m.insert("return".into(), value);
    if let Some(id) = id {
        m.insert("id".into(), id.clone());
    }
    Value::Object(m)
}

/// An error response: `{"error": {"class": ..., "desc": ...}, "id": ID}`.
pub fn error_response(error: &QmpError, id: Option<&Value>) -> Value {
    let mut m = Map::new();
    m.insert("error".into(), error.to_json());
    if let Some(id) = id {
        m.insert("id".into(), id.clone());
    }
    Value::Object(m)
}

/// An asynchronous event: `{"timestamp": {"seconds", "microseconds"}, "event":
/// NAME, "data": {...}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The event's name, e.g. `MIGRATION`.
    pub name: String,
    /// Its data, if it has any.
    pub data: Option<Map<String, Value>>,
    /// Seconds since the Unix epoch when it happened (-1 if the clock failed).
    pub seconds: i64,
    /// Microseconds within that second (-1 if the clock failed).
    pub microseconds: i64,
}

impl Event {
    /// An event that happens at `at`.
    pub fn new(name: impl Into<String>, data: Option<Map<String, Value>>, at: SystemTime) -> Event {
        let (seconds, microseconds) = match at.duration_since(UNIX_EPOCH) {
            Ok(d) => match i64::try_from(d.as_secs()) {
                Ok(s) => (s, i64::from(d.subsec_micros())),
                Err(_) => (-1, -1),
            },
            Err(_) => (-1, -1),
        };
        Event {
            name: name.into(),
            data,
            seconds,
            microseconds,
        }
    }

    /// The event as sent on the wire.
    pub fn to_json(&self) -> Value {
        let mut ts = Map::new();
        ts.insert("seconds".into(), self.seconds.into());
        ts.insert("microseconds".into(), self.microseconds.into());
        let mut m = Map::new();
        m.insert("timestamp".into(), Value::Object(ts));
        m.insert("event".into(), self.name.clone().into());
        if let Some(data) = &self.data {
            m.insert("data".into(), Value::Object(data.clone()));
        }
        Value::Object(m)
    }

    /// Reads an event message; `None` if `v` is not one.
    pub fn from_json(v: &Value) -> Option<Event> {
        let name = v.get("event")?.as_str()?.to_string();
        let data = match v.get("data") {
            None => None,
            Some(Value::Object(m)) => Some(m.clone()),
            Some(_) => return None,
        };
        let ts = v.get("timestamp")?;
        Some(Event {
            name,
            data,
            seconds: ts.get("seconds")?.as_i64()?,
            microseconds: ts.get("microseconds")?.as_i64()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qmp::json::{QmpLimits, Splitter};
    use serde_json::json;

    struct Echo;

    impl Handler for Echo {
        fn commands(&self) -> Vec<String> {
            vec!["echo".into(), "nothing".into()]
        }

        fn execute(&self, name: &str, args: Map<String, Value>) -> Result<Value, QmpError> {
            match name {
                "echo" => Ok(Value::Object(args)),
                _ => Ok(Value::Null),
            }
        }
    }

    fn run(session: &mut Session, input: &str) -> Vec<Value> {
        let mut s = Splitter::new(QmpLimits::default());
        s.messages(input.as_bytes())
            .map(|m| session.handle(m))
            .collect()
    }

    #[test]
    fn request_shape_errors_as_qemu_words_them() {
        let cases = [
            (json!([1]), "QMP input must be a JSON object", None),
            (
                json!({"id": 4}),
                "QMP input lacks member 'execute'",
                Some(json!(4)),
            ),
            (
                json!({"execute": 1, "id": "x"}),
                "QMP input member 'execute' must be a string",
                Some(json!("x")),
            ),
            (
                json!({"execute": "a", "arguments": []}),
                "QMP input member 'arguments' must be an object",
                None,
            ),
            (
                json!({"execute": "a", "extra": 1}),
                "QMP input member 'extra' is unexpected",
                None,
            ),
            (
                json!({"exec-oob": "migrate-pause", "id": 42}),
                "QMP input member 'exec-oob' is unexpected",
                Some(json!(42)),
            ),
        ];
        for (input, desc, id) in cases {
            let err = Request::parse(input.clone()).unwrap_err();
            assert_eq!(err.error, QmpError::generic(desc), "{input}");
            assert_eq!(err.id, id, "{input}");
        }
        let ok = Request::parse(json!({"id": [1], "arguments": {"a": 1}, "execute": "x"})).unwrap();
        assert_eq!(
            ok,
            Request::new(
                "x",
                json!({"a": 1}).as_object().unwrap().clone(),
                Some(json!([1]))
            )
        );
        assert_eq!(Request::parse(ok.to_json()).unwrap(), ok);
    }

    #[test]
    fn negotiation_then_commands() {
        let mut s = Session::new(Arc::new(Echo));
        let out = run(
            &mut s,
            r#"{"execute": "echo", "id": 1}
               {"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}
               {"execute": "qmp_capabilities", "arguments": {"enable": ["x"]}}
               {"execute": "qmp_capabilities", "id": "n"}
               {"execute": "echo", "arguments": {"a": [1]}, "id": 2}
               {"execute": "nothing"}
               {"execute": "qmp_capabilities"}
               {"execute": "nope", "id": 3}
               {"execute": "query-version", "arguments": {"x": 1}}"#,
        );
        let expect = [
            json!({"error": {"class": "CommandNotFound", "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}, "id": 1}),
            json!({"error": {"class": "GenericError", "desc": "Capability oob not available"}}),
            json!({"error": {"class": "GenericError", "desc": "Parameter 'enable[0]' does not accept value 'x'"}}),
            json!({"return": {}, "id": "n"}),
            json!({"return": {"a": [1]}, "id": 2}),
            json!({"return": {}}),
            json!({"error": {"class": "CommandNotFound", "desc": "Capabilities negotiation is already complete, command ignored"}}),
            json!({"error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}, "id": 3}),
            json!({"error": {"class": "GenericError", "desc": "Parameter 'x' is unexpected"}}),
        ];
        assert_eq!(out, expect);
        assert!(s.is_negotiated());
    }

    #[test]
    fn getfd_takes_the_last_descriptor_received_and_closefd_drops_it() {
        let mut s = Session::new(Arc::new(Echo));
        run(&mut s, r#"{"execute":"qmp_capabilities"}"#);
        let out = run(&mut s, r#"{"execute":"getfd","arguments":{"fdname":"x"}}"#);
        assert!(out[0]["error"]["desc"]
            .as_str()
            .unwrap()
            .contains("No file descriptor supplied"));
        let fds: Vec<OwnedFd> = (0..MAX_PENDING_FDS + 3)
            .map(|_| std::fs::File::open("/dev/null").unwrap().into())
            .collect();
        s.receive_fds(fds);
        assert_eq!(s.fds.len(), MAX_PENDING_FDS);
        let out = run(
            &mut s,
            r#"{"execute":"getfd","arguments":{"fdname":"1x"}}{"execute":"getfd","arguments":{"fdname":"session-test-fd"}}{"execute":"closefd","arguments":{"fdname":"session-test-fd"}}{"execute":"closefd","arguments":{"fdname":"session-test-fd"}}"#,
        );
        assert!(out[0]["error"]["desc"]
            .as_str()
            .unwrap()
            .contains("not starting with a digit"));
        assert_eq!(out[1]["return"], serde_json::json!({}));
        assert_eq!(out[2]["return"], serde_json::json!({}));
        assert!(out[3]["error"]["desc"]
            .as_str()
            .unwrap()
            .contains("not found"));
        assert_eq!(s.fds.len(), MAX_PENDING_FDS - 1);
    }

    #[test]
    fn builtin_queries() {
        let mut s = Session::new(Arc::new(Echo));
        let out = run(
            &mut s,
            r#"{"execute":"qmp_capabilities"}{"execute":"query-commands"}{"execute":"query-version"}"#,
        );
        let names: Vec<&str> = out[1]["return"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "qmp_capabilities",
                "query-commands",
                "query-version",
                "getfd",
                "closefd",
                "echo",
                "nothing"
            ]
        );
        assert_eq!(out[2]["return"], version());
        assert_eq!(
            version()["package"],
            format!("vmstream {}", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(greeting()["QMP"]["capabilities"], json!([]));
    }

    #[test]
    fn events_round_trip_and_match_qemu_shape() {
        let at = UNIX_EPOCH + std::time::Duration::new(1_432_121_972, 744_001_999);
        let data = json!({"status": "completed"}).as_object().cloned();
        let e = Event::new("MIGRATION", data, at);
        assert_eq!(
            e.to_json(),
            json!({"timestamp": {"seconds": 1432121972, "microseconds": 744001}, "event": "MIGRATION", "data": {"status": "completed"}})
        );
        assert_eq!(Event::from_json(&e.to_json()), Some(e));
        let before = Event::new("X", None, UNIX_EPOCH - std::time::Duration::from_secs(1));
        assert_eq!((before.seconds, before.microseconds), (-1, -1));
        assert!(before.to_json().get("data").is_none());
    }
}
