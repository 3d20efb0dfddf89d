//! A small blocking QMP client over a unix socket, for tests and for the
//! command line. It works with QEMU as well as with [`QmpServer`](super::QmpServer).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use super::error::QmpError;
use super::json::{QmpLimits, Splitter};
use super::protocol::{Event, Request};

/// Why a [`QmpClient`] call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The socket failed.
    #[error("QMP connection: {0}")]
    Io(#[from] io::Error),
    /// The server closed the connection.
    #[error("QMP server closed the connection")]
    Closed,
    /// No answer within the timeout.
    #[error("no answer from the QMP server within {0:?}")]
    Timeout(Duration),
    /// The server sent something that is not QMP.
    #[error("QMP server sent {0}")]
    Protocol(String),
    /// The command failed.
    #[error("{0}")]
    Qmp(#[from] QmpError),
}

/// Most events kept while waiting for responses; older ones are dropped.
const MAX_QUEUED_EVENTS: usize = 4096;

/// A blocking QMP client: reads the greeting on connect, then sends one
/// command at a time and waits for its response, keeping the events that
/// arrive meanwhile for [`QmpClient::wait_event`].
#[derive(Debug)]
pub struct QmpClient {
    stream: UnixStream,
    splitter: Splitter,
    greeting: Value,
    /// Messages read but not yet handed out.
    inbox: VecDeque<Value>,
    events: VecDeque<Event>,
    next_id: u64,
    timeout: Duration,
}

impl QmpClient {
    /// Connects to the server at `path` and reads its greeting (waiting at
    /// most the default timeout of 30 s).
    pub fn connect(path: impl AsRef<Path>) -> Result<QmpClient, ClientError> {
        QmpClient::connect_with(path, QmpLimits::default(), Duration::from_secs(30))
    }

    /// Connects with explicit bounds on each message read and a timeout for
    /// each answer.
    pub fn connect_with(
        path: impl AsRef<Path>,
        limits: QmpLimits,
        timeout: Duration,
    ) -> Result<QmpClient, ClientError> {
        let stream = UnixStream::connect(path)?;
        let mut client = QmpClient {
            stream,
            splitter: Splitter::new(limits),
            greeting: Value::Null,
            inbox: VecDeque::new(),
            events: VecDeque::new(),
            next_id: 0,
            timeout,
        };
        let greeting = client
            .next_message(timeout)?
            .ok_or(ClientError::Timeout(timeout))?;
        if greeting.get("QMP").is_none() {
            return Err(ClientError::Protocol(format!(
                "{greeting} instead of a greeting"
            )));
        }
        client.greeting = greeting;
        Ok(client)
    }

    /// The server's greeting: `{"QMP": {"version": ..., "capabilities": [...]}}`.
    pub fn greeting(&self) -> &Value {
        &self.greeting
    }

    /// Sets how long to wait for each answer.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Completes capabilities negotiation (`qmp_capabilities`, enabling nothing).
    pub fn negotiate(&mut self) -> Result<(), ClientError> {
        self.execute("qmp_capabilities", None).map(|_| ())
    }

    /// Runs command `name` and returns its `return` value; a QMP error comes
    /// back as [`ClientError::Qmp`]. Events read meanwhile are kept.
    pub fn execute(
        &mut self,
        name: &str,
        arguments: Option<Map<String, Value>>,
    ) -> Result<Value, ClientError> {
        self.execute_with_fd(name, arguments, None)
    }

    /// Runs command `name` as [`QmpClient::execute`] does, sending `fd` with
    /// the request (SCM_RIGHTS), as QEMU's `getfd` and `add-fd` expect.
    pub fn execute_with_fd(
        &mut self,
        name: &str,
        arguments: Option<Map<String, Value>>,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<Value, ClientError> {
        let id = Value::from(format!("vmstream-{}", self.next_id));
        self.next_id = self.next_id.wrapping_add(1);
        let request = Request::new(name, arguments.unwrap_or_default(), Some(id.clone()));
        let mut line = request.to_json().to_string();
        line.push('\n');
        match fd {
            None => self.send_bytes(line.as_bytes())?,
            Some(fd) => self.send_with_fd(line.as_bytes(), fd)?,
        }
        let deadline = Instant::now() + self.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = self
                .next_message(left)?
                .ok_or(ClientError::Timeout(self.timeout))?;
            if let Some(event) = Event::from_json(&msg) {
                self.keep_event(event);
                continue;
            }
            if msg.get("id") != Some(&id) {
                return Err(ClientError::Protocol(format!(
                    "{msg} in answer to request {id}"
                )));
            }
            if let Some(ret) = msg.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = msg.get("error").and_then(QmpError::from_json) {
                return Err(ClientError::Qmp(err));
            }
            return Err(ClientError::Protocol(format!("{msg} as a response")));
        }
    }

    /// Waits up to `timeout` for event `name`, returning it; events with other
    /// names that arrive meanwhile are kept. `None` if none came in time.
    pub fn wait_event(
        &mut self,
        name: &str,
        timeout: Duration,
    ) -> Result<Option<Event>, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(pos) = self.events.iter().position(|e| e.name == name) {
                return Ok(self.events.remove(pos));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(msg) = self.next_message(left)? else {
                return Ok(None);
            };
            match Event::from_json(&msg) {
                Some(event) => self.keep_event(event),
                None => {
                    return Err(ClientError::Protocol(format!(
                        "{msg} while waiting for event {name}"
                    )))
                }
            }
        }
    }

    /// Events received and not yet taken, oldest first.
    pub fn take_events(&mut self) -> Vec<Event> {
        self.events.drain(..).collect()
    }

    fn send_with_fd(&mut self, bytes: &[u8], fd: BorrowedFd<'_>) -> Result<(), ClientError> {
        use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        let fds = [fd];
        if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
            return Err(ClientError::Protocol(
                "no room for the file descriptor".into(),
            ));
        }
        // The descriptor travels with the first byte; the rest follows.
        let n = sendmsg(
            &self.stream,
            &[std::io::IoSlice::new(bytes)],
            &mut control,
            SendFlags::NOSIGNAL,
        )
        .map_err(std::io::Error::from)?;
        self.send_bytes(&bytes[n..])
    }

    /// Sends raw bytes, for speaking to the server below the request level.
    pub fn send_bytes(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.stream.write_all(bytes)?;
        Ok(())
    }

    /// The next message from the server, whatever it is, waiting up to
    /// `timeout`; `None` on timeout. Ends with [`ClientError::Closed`] when the
    /// server closes the connection.
    pub fn next_message(&mut self, timeout: Duration) -> Result<Option<Value>, ClientError> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            if let Some(msg) = self.inbox.pop_front() {
                return Ok(Some(msg));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.stream.set_read_timeout(Some(left))?;
            let n = match self.stream.read(&mut buf) {
                Ok(0) => return Err(ClientError::Closed),
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            for msg in self.splitter.messages(buf.get(..n).unwrap_or_default()) {
                match msg {
                    Ok(v) => self.inbox.push_back(v),
                    Err(e) => return Err(ClientError::Protocol(format!("malformed JSON: {e}"))),
                }
            }
        }
    }

    fn keep_event(&mut self, event: Event) {
        if self.events.len() >= MAX_QUEUED_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }
}
