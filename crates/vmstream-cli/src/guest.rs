//! `vmstream guest`: a synthetic VM — memory, devices and a workload that
//! dirties pages — or, with `--kvm`, a real KVM virtual machine
//! (`vmstream-kvm`), controlled only through a QMP socket, so two of them
//! migrate live with the same commands that migrate QEMU.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};
use vmstream_kvm::KvmGuest;
use vmstream_migrate::control::{Controller, Direction};
use vmstream_migrate::qmp::{
    dispatch_migration, Handler, MigrationControl, QmpError, QmpServer, MIGRATION_COMMANDS,
};
use vmstream_migrate::stats::Status;
use vmstream_migrate::synthetic::{Fill, Synthetic};
use vmstream_migrate::vm::{Vcpus, Vm};

use crate::args::{GuestArgs, GuestFill};

/// The run state `query-status` reports, with QEMU's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunState {
    Running,
    Paused,
    InMigrate,
    PostMigrate,
}

impl RunState {
    fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::InMigrate => "inmigrate",
            RunState::PostMigrate => "postmigrate",
        }
    }
}

/// What the QMP commands need of a guest, synthetic or KVM: its vCPUs, and
/// more.
trait GuestVm: Vcpus {
    fn is_paused(&self) -> bool;
    /// `x-query-guest`: the memory checksum, the workload's counter and the
    /// devices, to compare both sides of a migration.
    fn query(&self) -> Result<Value, String>;
}

impl GuestVm for Synthetic {
    fn is_paused(&self) -> bool {
        Synthetic::is_paused(self)
    }
    fn query(&self) -> Result<Value, String> {
        let devices = serde_json::to_value(self.device_states()).map_err(|e| e.to_string())?;
        Ok(json!({
            "memory-crc32c": self.checksum(),
            "counter": self.counter(),
            "devices": devices,
        }))
    }
}

impl GuestVm for KvmGuest {
    fn is_paused(&self) -> bool {
        KvmGuest::is_paused(self)
    }
    fn query(&self) -> Result<Value, String> {
        let serial = self.serial();
        Ok(json!({
            "memory-crc32c": self.checksum()?,
            "counter": self.counter(),
            "pages-written": self.pages_written(),
            "serial": {"bytes-out": serial.bytes_out, "line": String::from_utf8_lossy(&serial.line)},
            "error": self.error(),
        }))
    }
}

/// The vCPUs as the engine drives them. The engine pauses a source for
/// stop-and-copy and resumes it if the migration fails, and resumes a
/// destination once it may run; this keeps a guest that was stopped before
/// a failed migration stopped, and with `-S` keeps an incoming guest paused
/// until `cont`.
struct EngineVcpus {
    vm: Arc<dyn GuestVm>,
    /// The next resume is the end of an incoming migration under `-S`.
    hold: AtomicBool,
    /// The guest was already paused when the engine paused it.
    was_paused: AtomicBool,
}

impl Vcpus for EngineVcpus {
    fn pause(&self) -> Result<(), String> {
        self.was_paused.store(self.vm.is_paused(), Ordering::SeqCst);
        self.vm.pause()
    }

    fn resume(&self) -> Result<(), String> {
        if self.hold.swap(false, Ordering::SeqCst) || self.was_paused.swap(false, Ordering::SeqCst)
        {
            return Ok(());
        }
        self.vm.resume()
    }

    fn throttle(&self, percent: u8) {
        self.vm.throttle(percent)
    }
}

/// The run state once the last migration's end is taken into account: an
/// incoming guest runs (or, under `-S`, waits paused) once its migration
/// completed, and a source that completed one is paused for good. The
/// engine publishes a migration's end before it calls back, and QEMU
/// changes the run state before it reports `completed`, so commands settle
/// the state from the migration's status too, not only the callback.
fn settle(st: RunState, last: Option<(Direction, Status)>, paused: bool) -> RunState {
    match (st, last) {
        (RunState::InMigrate, Some((Direction::Incoming, Status::Completed))) if paused => {
            RunState::Paused
        }
        (RunState::InMigrate, Some((Direction::Incoming, Status::Completed))) => RunState::Running,
        (RunState::Running, Some((Direction::Outgoing, Status::Completed))) if paused => {
            RunState::PostMigrate
        }
        (st, _) => st,
    }
}

struct Guest {
    vm: Arc<dyn GuestVm>,
    control: Arc<Controller>,
    state: Arc<Mutex<RunState>>,
    quit: Arc<(Mutex<bool>, Condvar)>,
}

const COMMANDS: [&str; 5] = ["query-status", "stop", "cont", "quit", "x-query-guest"];

impl Handler for Guest {
    fn commands(&self) -> Vec<String> {
        COMMANDS
            .iter()
            .chain(MIGRATION_COMMANDS.iter())
            .map(|s| s.to_string())
            .collect()
    }

    fn execute(&self, name: &str, args: Map<String, Value>) -> Result<Value, QmpError> {
        if let Some(r) = dispatch_migration(&*self.control, name, args.clone()) {
            return r;
        }
        if let Some(k) = args.keys().next() {
            return Err(QmpError::unexpected(k));
        }
        let busy = || self.control.current().is_some_and(|(_, s)| !s.is_final());
        let mut st = self
            .state
            .lock()
            .map_err(|_| QmpError::generic("state lock poisoned"))?;
        *st = settle(*st, self.control.current(), self.vm.is_paused());
        match name {
            "query-status" => Ok(json!({
                "status": st.as_str(),
                "running": *st == RunState::Running,
                "singlestep": false,
            })),
            "stop" => {
                if *st == RunState::Running {
                    if busy() {
                        return Err(QmpError::generic("a migration is in progress"));
                    }
                    self.vm.pause().map_err(QmpError::generic)?;
                    *st = RunState::Paused;
                }
                Ok(json!({}))
            }
            "cont" => match *st {
                RunState::InMigrate => Err(QmpError::generic(
                    "Guest is waiting for an incoming migration",
                )),
                _ if busy() => Err(QmpError::generic("a migration is in progress")),
                _ => {
                    self.vm.resume().map_err(QmpError::generic)?;
                    *st = RunState::Running;
                    Ok(json!({}))
                }
            },
            "quit" => {
                let (l, cv) = &*self.quit;
                if let Ok(mut q) = l.lock() {
                    *q = true;
                }
                cv.notify_all();
                Ok(json!({}))
            }
            "x-query-guest" => self.vm.query().map_err(QmpError::generic),
            _ => Err(QmpError::command_not_found(name)),
        }
    }
}

/// Runs the guest until `quit`.
pub(crate) fn guest(a: &GuestArgs) -> Result<std::process::ExitCode> {
    let Some(path) = a.qmp.strip_prefix("unix:") else {
        bail!("--qmp {}: expected unix:PATH", a.qmp);
    };
    let (vm, mut engine_vm, what): (Arc<dyn GuestVm>, Vm, String) = if a.kvm {
        let device = kvm_device();
        if let Err(e) = vmstream_kvm::kvm_available(&device) {
            eprintln!("vmstream guest --kvm: {e}");
            return Ok(std::process::ExitCode::from(2));
        }
        let vm = kvm_guest(a, device)?;
        let engine_vm = vm.vm();
        let what = format!("KVM, {} MiB, {} vCPUs", vm.size() >> 20, a.vcpus);
        (vm, engine_vm, what)
    } else {
        let fill = match (a.incoming, a.fill) {
            (true, _) | (false, GuestFill::Zero) => Fill::Zero,
            (false, GuestFill::Random) => Fill::Random,
        };
        let vm = Arc::new(Synthetic::new(a.memory, fill, a.devices, a.seed));
        vm.start_workload(a.dirty_rate);
        let engine_vm = vm.vm();
        let what = format!("{} MiB, {} devices", a.memory >> 20, a.devices);
        (vm, engine_vm, what)
    };
    let state = Arc::new(Mutex::new(match (a.incoming, a.paused) {
        (true, _) => RunState::InMigrate,
        (false, true) => RunState::Paused,
        (false, false) => RunState::Running,
    }));
    if !a.incoming && !a.paused {
        vm.resume().map_err(anyhow::Error::msg)?;
    }
    let vcpus = Arc::new(EngineVcpus {
        vm: vm.clone(),
        hold: AtomicBool::new(a.incoming && a.paused),
        was_paused: AtomicBool::new(false),
    });
    engine_vm.vcpus = vcpus.clone();
    let st = state.clone();
    let guest_vm = vm.clone();
    let control = Arc::new(Controller::new(
        engine_vm,
        Arc::new(move |dir, result: Result<(), String>| {
            let mut s = match st.lock() {
                Ok(s) => s,
                Err(_) => return,
            };
            if result.is_ok() {
                if dir == Direction::Outgoing {
                    // Paused for good: no resume follows this pause.
                    vcpus.was_paused.store(false, Ordering::SeqCst);
                }
                *s = settle(*s, Some((dir, Status::Completed)), guest_vm.is_paused());
            }
            match result {
                Ok(()) => println!("migration ({dir:?}) completed"),
                Err(e) => println!("migration ({dir:?}) failed: {e}"),
            }
        }),
    ));
    let quit = Arc::new((Mutex::new(false), Condvar::new()));
    let handler = Arc::new(Guest {
        vm: vm.clone(),
        control: control.clone(),
        state,
        quit: quit.clone(),
    });
    let server = QmpServer::bind(path, handler).with_context(|| format!("QMP socket {path}"))?;
    control.set_events(server.events());
    println!(
        "guest: {what}, dirty rate {} pages/s, QMP on {path}{}",
        a.dirty_rate,
        if a.incoming {
            ", waiting for migrate-incoming"
        } else {
            ""
        }
    );
    let (l, cv) = &*quit;
    let mut q = l
        .lock()
        .map_err(|_| anyhow::anyhow!("quit lock poisoned"))?;
    while !*q {
        q = cv
            .wait(q)
            .map_err(|_| anyhow::anyhow!("quit lock poisoned"))?;
    }
    drop(q);
    let _ = control.migrate_cancel();
    control.wait();
    server.shutdown();
    Ok(std::process::ExitCode::SUCCESS)
}

/// The KVM device node: `VMSTREAM_KVM_DEVICE`, or /dev/kvm.
fn kvm_device() -> std::path::PathBuf {
    std::env::var_os("VMSTREAM_KVM_DEVICE")
        .map(Into::into)
        .unwrap_or_else(|| vmstream_kvm::KVM_DEVICE.into())
}

/// A KVM guest: booted into its program unless incoming, where memory and
/// vCPU state (the dirty rate included) arrive by migration.
fn kvm_guest(a: &GuestArgs, device: std::path::PathBuf) -> Result<Arc<KvmGuest>> {
    let fill = match (a.incoming, a.fill) {
        (true, _) | (false, GuestFill::Zero) => vmstream_kvm::Fill::Zero,
        (false, GuestFill::Random) => vmstream_kvm::Fill::Random,
    };
    let vm = KvmGuest::new(vmstream_kvm::Config {
        device,
        memory: a.memory.div_ceil(2 << 20).max(1) * (2 << 20),
        vcpus: a.vcpus,
        fill,
        seed: a.seed,
        boot: !a.incoming,
        vcpu_state_version: a
            .x_vcpu_state_version
            .unwrap_or(vmstream_kvm::state::VCPU_VERSION),
        sink: Arc::new(|line: &str| println!("{line}")),
    })
    .map_err(anyhow::Error::msg)?;
    if !a.incoming {
        vm.set_dirty_rate(a.dirty_rate)
            .map_err(anyhow::Error::msg)?;
    }
    Ok(vm)
}
