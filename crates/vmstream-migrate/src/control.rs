//! The migration commands of one VM, QEMU-shaped: a [`Controller`] holds a
//! [`Vm`], the capabilities and parameters set over QMP, and the migration in
//! progress, and serves QEMU's migration commands through
//! [`MigrationCommands`](crate::qmp::MigrationCommands).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use vmstream_transport::{
    accept_set, connect_set, open_destination, open_source, ChannelSet, Connection, Listener,
    MigrationAddress, MigrationChannel, MigrationId, TlsClient, TlsServer,
};

use crate::destination;
use crate::link::{Cancel, Connections, Cutter, Link};
use crate::qmp::{
    Events, MigrateArgs, MigrateIncomingArgs, MigrationCapability, MigrationCapabilityStatus,
    MigrationControl, MigrationInfo, MigrationParameters, MigrationTarget, MultiFdCompression,
    QmpError, SetMigrationParameters,
};
use crate::source::{self, Params};
use crate::stats::{Stats, Status};
use crate::vm::Vm;

/// How long a destination waits for the whole channel set to connect.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(60);

/// The capabilities this engine implements; setting any other on is refused.
const SUPPORTED: [MigrationCapability; 4] = [
    MigrationCapability::Multifd,
    MigrationCapability::AutoConverge,
    MigrationCapability::Events,
    MigrationCapability::ReturnPath,
];

impl Link for Connection {
    fn cutter(&self) -> Cutter {
        let h = self.shutdown_handle();
        Cutter::new(move || h.shutdown())
    }

    fn is_tls(&self) -> bool {
        Connection::is_tls(self)
    }

    fn close_write(&mut self) -> std::io::Result<()> {
        Connection::close_write(self).map_err(std::io::Error::other)
    }
}

/// Which way the current (or last) migration went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// This VM is the source.
    Outgoing,
    /// This VM is the destination.
    Incoming,
}

struct Job {
    direction: Direction,
    stats: Stats,
    cancel: Cancel,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct State {
    caps: Vec<MigrationCapabilityStatus>,
    params: MigrationParameters,
    job: Option<Job>,
}

/// Called when a migration ends: its direction and whether it completed.
pub type OnEnd = Arc<dyn Fn(Direction, Result<(), String>) + Send + Sync>;

/// The migration side of one VM.
pub struct Controller {
    vm: Arc<Vm>,
    state: Mutex<State>,
    events: Mutex<Option<Events>>,
    on_end: OnEnd,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller").finish_non_exhaustive()
    }
}

fn generic(e: impl std::fmt::Display) -> QmpError {
    QmpError::generic(e.to_string())
}

/// The main channel's address from `migrate`'s or `migrate-incoming`'s target.
fn address(target: &MigrationTarget) -> Result<MigrationAddress, QmpError> {
    match target {
        MigrationTarget::Uri(uri) => MigrationAddress::from_uri(uri).map_err(generic),
        MigrationTarget::Channels(list) => {
            let mut main = None;
            for c in list {
                let c = MigrationChannel::from_json(&Value::Object(c.clone())).map_err(generic)?;
                if main.replace(c.addr).is_some() {
                    return Err(QmpError::generic(
                        "Channel list has more than one main entry",
                    ));
                }
            }
            main.ok_or_else(|| QmpError::generic("Channel list has no main entry"))
        }
    }
}

impl Controller {
    /// Serves migrations of `vm`; `on_end` hears how each ends.
    pub fn new(vm: Vm, on_end: OnEnd) -> Controller {
        Controller {
            vm: Arc::new(vm),
            state: Mutex::new(State {
                caps: MigrationCapability::ALL
                    .iter()
                    .map(|&capability| MigrationCapabilityStatus {
                        capability,
                        state: false,
                    })
                    .collect(),
                params: MigrationParameters::default(),
                job: None,
            }),
            events: Mutex::new(None),
            on_end,
        }
    }

    /// Where `MIGRATION` events go.
    pub fn set_events(&self, events: Events) {
        if let Ok(mut e) = self.events.lock() {
            *e = Some(events);
        }
    }

    /// The direction and status of the current or last migration.
    pub fn current(&self) -> Option<(Direction, Status)> {
        let st = self.state.lock().ok()?;
        st.job.as_ref().map(|j| (j.direction, j.stats.status()))
    }

    /// Waits for the migration in progress to end.
    pub fn wait(&self) {
        let t = self
            .state
            .lock()
            .ok()
            .and_then(|mut s| s.job.as_mut().and_then(|j| j.thread.take()));
        if let Some(t) = t {
            let _ = t.join();
        }
    }

    fn cap(st: &State, c: MigrationCapability) -> bool {
        st.caps.iter().any(|s| s.capability == c && s.state)
    }

    /// Statistics for a new job; with the `events` capability on, each status
    /// change is a `MIGRATION` event (as in QEMU, only then).
    fn new_stats(&self, events_on: bool) -> Stats {
        let events = events_on
            .then(|| self.events.lock().ok().and_then(|e| e.clone()))
            .flatten();
        Stats::with_listener(move |s| {
            if let Some(e) = &events {
                e.emit_migration(s);
            }
        })
    }

    /// Starts a job unless one is running; `run` does the work on a thread.
    fn start(
        &self,
        direction: Direction,
        listener: Option<vmstream_transport::ShutdownHandle>,
        run: impl FnOnce(Arc<Vm>, Stats, Cancel) -> Result<(), crate::Error> + Send + 'static,
    ) -> Result<(), QmpError> {
        let mut st = self
            .state
            .lock()
            .map_err(|_| generic("state lock poisoned"))?;
        if let Some(j) = &st.job {
            if !j.stats.status().is_final() {
                return Err(QmpError::generic("There's a migration process in progress"));
            }
        }
        let stats = self.new_stats(Controller::cap(&st, MigrationCapability::Events));
        stats.update(|s| s.status = Some(Status::Setup));
        let cancel = Cancel::new();
        if let Some(l) = listener {
            // A cancel while the destination waits stops the listener.
            cancel.watch(Cutter::new(move || l.shutdown()));
        }
        let (vm, s2, c2, on_end) = (
            self.vm.clone(),
            stats.clone(),
            cancel.clone(),
            self.on_end.clone(),
        );
        let thread = std::thread::Builder::new()
            .name(format!("migrate-{direction:?}").to_lowercase())
            .spawn(move || {
                let r = run(vm, s2.clone(), c2.clone());
                if let Err(e) = &r {
                    // Errors before the driver ran (connecting) land here;
                    // the driver has already said how a migration it ran
                    // ended (a cancel cuts the connections, so its error is
                    // often an I/O error), and that stands.
                    let st = if e.is_cancel() || c2.is_cancelled() {
                        Status::Cancelled
                    } else {
                        Status::Failed
                    };
                    s2.update(|s| {
                        s.error.get_or_insert(e.to_string());
                        if !matches!(
                            s.status,
                            Some(Status::Cancelled | Status::Failed | Status::Completed)
                        ) {
                            s.status = Some(st);
                        }
                    });
                }
                // The migration is over: let its sockets and listener close.
                c2.release();
                on_end(direction, r.map_err(|e| e.to_string()));
            })
            .map_err(generic)?;
        st.job = Some(Job {
            direction,
            stats,
            cancel,
            thread: Some(thread),
        });
        Ok(())
    }
}

fn connections(set: ChannelSet) -> Connections {
    Connections {
        main: Box::new(set.main),
        data: set
            .data
            .into_iter()
            .map(|c| Box::new(c) as Box<dyn Link>)
            .collect(),
        one_way: false,
    }
}

fn one_way(c: Connection) -> Connections {
    Connections {
        main: Box::new(c),
        data: Vec::new(),
        one_way: true,
    }
}

fn transport(e: vmstream_transport::Error) -> crate::Error {
    crate::Error::transport(e.chain())
}

impl MigrationControl for Controller {
    fn migrate(&self, args: MigrateArgs) -> Result<(), QmpError> {
        if args.resume {
            return Err(QmpError::generic("postcopy resume is not supported"));
        }
        let addr = address(&args.target)?;
        let (params, multifd, tls) = {
            let st = self
                .state
                .lock()
                .map_err(|_| generic("state lock poisoned"))?;
            let p = &st.params;
            let compression = match p.multifd_compression {
                MultiFdCompression::None => vec![],
                MultiFdCompression::Zstd => vec!["zstd".to_owned()],
                other => {
                    return Err(QmpError::generic(format!(
                        "multifd-compression {other} is not supported (zstd is)"
                    )))
                }
            };
            let tls = if p.tls_creds.is_empty() {
                None
            } else {
                let mut c = TlsClient::load_dir(&p.tls_creds).map_err(|e| generic(e.chain()))?;
                if !p.tls_hostname.is_empty() {
                    c = c
                        .with_hostname(&p.tls_hostname)
                        .map_err(|e| generic(e.chain()))?;
                }
                Some(c)
            };
            let params = Params {
                downtime_limit_ms: p.downtime_limit,
                max_bandwidth: p.max_bandwidth,
                compression,
                auto_converge: Controller::cap(&st, MigrationCapability::AutoConverge),
                throttle_trigger_threshold: p.throttle_trigger_threshold,
                cpu_throttle_initial: p.cpu_throttle_initial,
                cpu_throttle_increment: p.cpu_throttle_increment,
                max_cpu_throttle: p.max_cpu_throttle,
                ..Params::default()
            };
            let multifd = if Controller::cap(&st, MigrationCapability::Multifd) {
                u16::from(p.multifd_channels)
            } else {
                0
            };
            (params, multifd, tls)
        };
        if addr.is_one_way() && multifd > 0 {
            return Err(QmpError::generic(format!(
                "{addr}: a one-way channel carries no multifd channels; turn the multifd capability off"
            )));
        }
        self.start(Direction::Outgoing, None, move |vm, stats, cancel| {
            let conns = if addr.is_one_way() {
                one_way(open_source(&addr).map_err(transport)?)
            } else {
                let id = MigrationId::random().map_err(transport)?;
                connections(connect_set(&addr, multifd, id, tls.as_ref()).map_err(transport)?)
            };
            source::migrate(&vm, conns, &params, &stats, &cancel)
        })
    }

    fn migrate_incoming(&self, args: MigrateIncomingArgs) -> Result<(), QmpError> {
        let addr = address(&args.target)?;
        let tls_dir = {
            let st = self
                .state
                .lock()
                .map_err(|_| generic("state lock poisoned"))?;
            st.params.tls_creds.clone()
        };
        let tls = if tls_dir.is_empty() {
            None
        } else {
            Some(TlsServer::load_dir(&tls_dir).map_err(|e| generic(e.chain()))?)
        };
        let local = destination::local(
            &self.vm,
            vmstream_transport::MAX_DATA_CHANNELS,
            &["zstd", "lz4"],
        )
        .map_err(generic)?;
        if addr.is_one_way() {
            return self.start(Direction::Incoming, None, move |vm, stats, cancel| {
                let conns = one_way(open_destination(&addr).map_err(transport)?);
                destination::incoming(&vm, conns, &local, &stats, &cancel)
            });
        }
        // Bind now, so the address is in use when the command returns.
        let listener = Listener::bind(&addr).map_err(|e| generic(e.chain()))?;
        let handle = listener.shutdown_handle();
        self.start(
            Direction::Incoming,
            Some(handle),
            move |vm, stats, cancel| {
                let set = accept_set(&listener, tls.as_ref(), ACCEPT_TIMEOUT).map_err(transport)?;
                drop(listener);
                destination::incoming(&vm, connections(set), &local, &stats, &cancel)
            },
        )
    }

    fn query_migrate(&self) -> Result<MigrationInfo, QmpError> {
        let st = self
            .state
            .lock()
            .map_err(|_| generic("state lock poisoned"))?;
        let page_size = u64::from(self.vm.memory.page_size());
        Ok(st
            .job
            .as_ref()
            .map(|j| j.stats.snapshot().to_migration_info(page_size))
            .unwrap_or_default())
    }

    fn query_migrate_capabilities(&self) -> Result<Vec<MigrationCapabilityStatus>, QmpError> {
        Ok(self
            .state
            .lock()
            .map_err(|_| generic("state lock poisoned"))?
            .caps
            .clone())
    }

    fn migrate_set_capabilities(
        &self,
        caps: Vec<MigrationCapabilityStatus>,
    ) -> Result<(), QmpError> {
        let mut st = self
            .state
            .lock()
            .map_err(|_| generic("state lock poisoned"))?;
        if st
            .job
            .as_ref()
            .is_some_and(|j| !j.stats.status().is_final())
        {
            return Err(QmpError::generic("There's a migration process in progress"));
        }
        if let Some(c) = caps
            .iter()
            .find(|c| c.state && !SUPPORTED.contains(&c.capability))
        {
            return Err(QmpError::generic(format!(
                "Capability '{}' is not supported by vmstream",
                c.capability
            )));
        }
        for c in caps {
            if let Some(s) = st.caps.iter_mut().find(|s| s.capability == c.capability) {
                s.state = c.state;
            }
        }
        Ok(())
    }

    fn query_migrate_parameters(&self) -> Result<MigrationParameters, QmpError> {
        Ok(self
            .state
            .lock()
            .map_err(|_| generic("state lock poisoned"))?
            .params
            .clone())
    }

    fn migrate_set_parameters(&self, set: SetMigrationParameters) -> Result<(), QmpError> {
        let mut st = self
            .state
            .lock()
            .map_err(|_| generic("state lock poisoned"))?;
        st.params = st.params.apply(&set)?;
        Ok(())
    }

    fn migrate_cancel(&self) -> Result<(), QmpError> {
        let st = self
            .state
            .lock()
            .map_err(|_| generic("state lock poisoned"))?;
        if let Some(j) = &st.job {
            if !j.stats.status().is_final() {
                j.stats.update(|s| s.status = Some(Status::Cancelling));
                j.cancel.cancel();
            }
        }
        Ok(())
    }
}
