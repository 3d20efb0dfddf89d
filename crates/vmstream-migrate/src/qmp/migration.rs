//! QEMU's migration vocabulary (`qapi/migration.json`) with QEMU's names and
//! JSON shapes: statuses, statistics, capabilities, parameters with QEMU's
//! defaults and range checks, the arguments of `migrate` and
//! `migrate-incoming`, and the [`MigrationControl`] trait an engine implements
//! to get QEMU's migration commands, arguments checked, through
//! [`MigrationCommands`].
//!
//! Output types derive serde `Serialize` and `Deserialize` (the latter liberal,
//! for reading a server's answers: unknown members are ignored, missing ones
//! take their defaults). Input from clients is read strictly, member by member,
//! by the `from_args` functions, whose errors name the member as QEMU does.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::args::{Args, FromArg};
use super::error::QmpError;
use super::protocol::Handler;

/// Declares a QAPI enum: variants with their QMP names, `as_str`,
/// `from_name`, `ALL`, serde and argument reading.
macro_rules! qapi_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $text)] $variant, )*
        }

        impl $name {
            /// Every value, in QEMU's order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The QMP name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }

            /// The value whose QMP name is `name`.
            pub fn from_name(name: &str) -> Option<$name> {
                match name {
                    $($text => Some($name::$variant),)*
                    _ => None,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromArg for $name {
            fn from_arg(v: Value, name: &str) -> Result<$name, QmpError> {
                let s = String::from_arg(v, name)?;
                $name::from_name(&s).ok_or_else(|| {
                    QmpError::generic(format!("Parameter '{name}' does not accept value '{s}'"))
                })
            }
        }
    };
}

qapi_enum! {
    /// Where a migration is (`MigrationStatus`).
    #[non_exhaustive]
    pub enum MigrationStatus {
        /// No migration has ever happened.
        None = "none",
        /// Migration has been initiated.
        Setup = "setup",
        /// Cancelling.
        Cancelling = "cancelling",
        /// Cancelled.
        Cancelled = "cancelled",
        /// Migrating.
        Active = "active",
        /// Postcopy, destination still loading device state.
        PostcopyDevice = "postcopy-device",
        /// Postcopy.
        PostcopyActive = "postcopy-active",
        /// Postcopy, paused.
        PostcopyPaused = "postcopy-paused",
        /// Setting up a postcopy recovery.
        PostcopyRecoverSetup = "postcopy-recover-setup",
        /// Recovering a paused postcopy.
        PostcopyRecover = "postcopy-recover",
        /// Finished.
        Completed = "completed",
        /// Failed.
        Failed = "failed",
        /// Fault tolerance (COLO).
        Colo = "colo",
        /// Paused before device serialisation.
        PreSwitchover = "pre-switchover",
        /// Serialising devices (switchover).
        Device = "device",
        /// Waiting for the guest to unplug devices.
        WaitUnplug = "wait-unplug",
    }
}

impl MigrationStatus {
    /// Whether a migration in this status has ended (or never started), so
    /// another may begin.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            MigrationStatus::None
                | MigrationStatus::Completed
                | MigrationStatus::Failed
                | MigrationStatus::Cancelled
        )
    }
}

qapi_enum! {
    /// A migration capability (`MigrationCapability`), switched with
    /// `migrate-set-capabilities`. Which ones an engine supports is its own
    /// business; the names are QEMU's.
    #[non_exhaustive]
    pub enum MigrationCapability {
        /// XOR-based zero run-length encoding of pages.
        Xbzrle = "xbzrle",
        /// Pin all RAM for RDMA.
        RdmaPinAll = "rdma-pin-all",
        /// Throttle the guest to converge.
        AutoConverge = "auto-converge",
        /// Emit `MIGRATION` events on status changes.
        Events = "events",
        /// Postcopy RAM.
        PostcopyRam = "postcopy-ram",
        /// COLO fault tolerance.
        XColo = "x-colo",
        /// Free migrated RAM on the source during postcopy.
        ReleaseRam = "release-ram",
        /// Use a return path even for precopy.
        ReturnPath = "return-path",
        /// Pause before switchover.
        PauseBeforeSwitchover = "pause-before-switchover",
        /// Several channels for RAM.
        Multifd = "multifd",
        /// Migrate dirty bitmaps.
        DirtyBitmaps = "dirty-bitmaps",
        /// Measure postcopy blocktime.
        PostcopyBlocktime = "postcopy-blocktime",
        /// Activate block devices late on the destination.
        LateBlockActivate = "late-block-activate",
        /// Skip shared memory.
        XIgnoreShared = "x-ignore-shared",
        /// Check the source's UUID on the destination.
        ValidateUuid = "validate-uuid",
        /// Snapshot at the start instead of the end.
        BackgroundSnapshot = "background-snapshot",
        /// Zero-copy sends.
        ZeroCopySend = "zero-copy-send",
        /// Postcopy requests preempt precopy.
        PostcopyPreempt = "postcopy-preempt",
        /// Wait for the destination's switchover acknowledgement.
        SwitchoverAck = "switchover-ack",
        /// Throttle vCPUs by dirty rate.
        DirtyLimit = "dirty-limit",
        /// Pages at fixed file offsets.
        MappedRam = "mapped-ram",
    }
}

qapi_enum! {
    /// Compression of multifd channels (`MultiFDCompression`).
    #[non_exhaustive]
    pub enum MultiFdCompression {
        /// None.
        None = "none",
        /// zlib.
        Zlib = "zlib",
        /// zstd.
        Zstd = "zstd",
    }
}

/// RAM statistics of a migration (`MigrationStats`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct MigrationStats {
    /// Bytes transferred so far.
    pub transferred: u64,
    /// Bytes still to transfer.
    pub remaining: u64,
    /// Bytes in all.
    pub total: u64,
    /// Zero pages (sent as a flag, not as data).
    pub duplicate: u64,
    /// Pages sent with their data.
    pub normal: u64,
    /// Bytes of pages sent with their data.
    pub normal_bytes: u64,
    /// Pages the guest dirties per second.
    pub dirty_pages_rate: u64,
    /// Throughput in megabits per second.
    pub mbps: f64,
    /// Dirty-bitmap synchronisations so far.
    pub dirty_sync_count: u64,
    /// Page requests from the destination (postcopy).
    pub postcopy_requests: u64,
    /// Bytes per page.
    pub page_size: u64,
    /// Bytes sent through multifd channels.
    pub multifd_bytes: u64,
    /// Pages transferred per second.
    pub pages_per_second: u64,
    /// Bytes sent while the guest ran.
    pub precopy_bytes: u64,
    /// Bytes sent while the guest was paused.
    pub downtime_bytes: u64,
    /// Bytes sent during postcopy.
    pub postcopy_bytes: u64,
    /// Times dirty-page synchronisation could not avoid copying.
    pub dirty_sync_missed_zero_copy: u64,
}

/// `query-migrate`'s answer (`MigrationInfo`). Members are present only when
/// meaningful, as in QEMU: none at all before the first migration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct MigrationInfo {
    /// The status; absent if no migration was ever started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<MigrationStatus>,
    /// RAM statistics (while active and when completed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ram: Option<MigrationStats>,
    /// Milliseconds since the migration started, or its total time once ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_time: Option<u64>,
    /// Expected downtime in milliseconds (while active).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_downtime: Option<u64>,
    /// Downtime in milliseconds (once completed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub downtime: Option<u64>,
    /// Milliseconds of setup before the first round.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub setup_time: Option<u64>,
    /// Percentage of time the guest's vCPUs are throttled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_throttle_percentage: Option<u64>,
    /// Why the migration failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_desc: Option<String>,
    /// Why a migration cannot start now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked_reasons: Option<Vec<String>>,
}

/// A capability and whether it is on (`MigrationCapabilityStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationCapabilityStatus {
    /// The capability.
    pub capability: MigrationCapability,
    /// Whether it is on.
    pub state: bool,
}

impl FromArg for MigrationCapabilityStatus {
    fn from_arg(v: Value, name: &str) -> Result<MigrationCapabilityStatus, QmpError> {
        let mut a = Args::new(Map::from_arg(v, name)?, name);
        let capability = a.req("capability")?;
        let state = a.req("state")?;
        a.finish()?;
        Ok(MigrationCapabilityStatus { capability, state })
    }
}

/// `migrate-set-capabilities`'s argument: `{"capabilities": [{"capability": ..., "state": ...}]}`.
pub fn capabilities_from_args(
    args: Map<String, Value>,
) -> Result<Vec<MigrationCapabilityStatus>, QmpError> {
    let mut a = Args::new(args, "");
    let caps = a.req("capabilities")?;
    a.finish()?;
    Ok(caps)
}

/// Most downtime `downtime-limit` may allow, in milliseconds (QEMU's
/// `MAX_MIGRATE_DOWNTIME`).
pub const MAX_DOWNTIME_LIMIT: u64 = 2_000_000;

/// A parameter's type as read from `migrate-set-parameters`.
trait FromParam: Sized {
    fn from_param(v: Value, name: &str) -> Result<Self, QmpError>;
}

macro_rules! from_param_via_arg {
    ($($t:ty),*) => {$(
        impl FromParam for $t {
            fn from_param(v: Value, name: &str) -> Result<$t, QmpError> {
                <$t>::from_arg(v, name)
            }
        }
    )*};
}

from_param_via_arg!(u8, u64, bool, MultiFdCompression);

/// String parameters are QEMU's `StrOrNull`: `null` sets them to "" (off).
impl FromParam for String {
    fn from_param(v: Value, name: &str) -> Result<String, QmpError> {
        match v {
            Value::Null => Ok(String::new()),
            Value::String(s) => Ok(s),
            _ => Err(QmpError::invalid_type(name, "string")),
        }
    }
}

/// Declares [`MigrationParameters`] (every parameter's value) and
/// [`SetMigrationParameters`] (the ones a `migrate-set-parameters` sets) from
/// one list, so the two cannot drift apart.
macro_rules! parameters {
    ($( $(#[$doc:meta])* $field:ident: $ty:ty = $default:expr, $name:literal; )*) => {
        /// Every migration parameter's value (`query-migrate-parameters`'s
        /// answer), defaulting to QEMU's defaults. The parameters here are
        /// the ones vmstream knows; others are refused by
        /// `migrate-set-parameters` as unexpected.
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(rename_all = "kebab-case", default)]
        pub struct MigrationParameters {
            $( $(#[$doc])* pub $field: $ty, )*
        }

        impl Default for MigrationParameters {
            fn default() -> MigrationParameters {
                MigrationParameters { $( $field: $default, )* }
            }
        }

        /// The parameters one `migrate-set-parameters` sets; `None` leaves a
        /// parameter as it is.
        #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(rename_all = "kebab-case", default)]
        pub struct SetMigrationParameters {
            $(
                $(#[$doc])*
                #[serde(skip_serializing_if = "Option::is_none")]
                pub $field: Option<$ty>,
            )*
        }

        impl SetMigrationParameters {
            /// Reads `migrate-set-parameters`'s arguments. Each value is
            /// checked against its type here; ranges that depend on other
            /// parameters are checked by [`MigrationParameters::apply`].
            pub fn from_args(args: Map<String, Value>) -> Result<SetMigrationParameters, QmpError> {
                let mut a = Args::new(args, "");
                let mut set = SetMigrationParameters::default();
                $(
                    let name = a.name($name);
                    set.$field = match a.take($name) {
                        Some(v) => Some(<$ty as FromParam>::from_param(v, &name)?),
                        None => None,
                    };
                )*
                a.finish()?;
                Ok(set)
            }

            /// The arguments that set these parameters.
            pub fn to_args(&self) -> Map<String, Value> {
                match serde_json::to_value(self) {
                    Ok(Value::Object(m)) => m,
                    _ => Map::new(),
                }
            }
        }

        impl MigrationParameters {
            /// These parameters with `set` applied, checked as a whole as QEMU
            /// checks them (`migrate_params_check`); `self` is left alone, so
            /// a refused change changes nothing.
            pub fn apply(&self, set: &SetMigrationParameters) -> Result<MigrationParameters, QmpError> {
                let mut next = self.clone();
                $(
                    if let Some(v) = &set.$field {
                        next.$field = v.clone();
                    }
                )*
                next.check()?;
                Ok(next)
            }
        }
    };
}

parameters! {
    /// Percentage of dirtying to transfer rate that starts throttling (1..=100).
    throttle_trigger_threshold: u8 = 50, "throttle-trigger-threshold";
    /// Initial throttle percentage under auto-converge (1..=99).
    cpu_throttle_initial: u8 = 20, "cpu-throttle-initial";
    /// Throttle percentage added each time convergence stalls (1..=99).
    cpu_throttle_increment: u8 = 10, "cpu-throttle-increment";
    /// Throttle more gently near the end.
    cpu_throttle_tailslow: bool = false, "cpu-throttle-tailslow";
    /// Highest throttle percentage (`cpu-throttle-initial`..=99).
    max_cpu_throttle: u8 = 99, "max-cpu-throttle";
    /// TLS credentials' id; empty for plain text.
    tls_creds: String = String::new(), "tls-creds";
    /// Host name the destination's certificate must name; empty to take it
    /// from the address.
    tls_hostname: String = String::new(), "tls-hostname";
    /// Authorization object's id for client certificates; empty for none.
    tls_authz: String = String::new(), "tls-authz";
    /// Bandwidth cap in bytes per second (default 128 MiB/s).
    max_bandwidth: u64 = 128 << 20, "max-bandwidth";
    /// Bandwidth available at switchover, bytes per second; 0 to estimate it.
    avail_switchover_bandwidth: u64 = 0, "avail-switchover-bandwidth";
    /// Largest tolerated downtime in milliseconds (..=2000000).
    downtime_limit: u64 = 300, "downtime-limit";
    /// Channels for RAM with the `multifd` capability (1..=255).
    multifd_channels: u8 = 2, "multifd-channels";
    /// Compression on multifd channels.
    multifd_compression: MultiFdCompression = MultiFdCompression::None, "multifd-compression";
    /// zlib level (0..=9).
    multifd_zlib_level: u8 = 1, "multifd-zlib-level";
    /// zstd level (0..=20).
    multifd_zstd_level: u8 = 1, "multifd-zstd-level";
}

impl MigrationParameters {
    /// Checks every range, in QEMU's order; the error names the parameter.
    pub fn check(&self) -> Result<(), QmpError> {
        fn range(name: &str, v: u64, lo: u64, hi: u64) -> Result<(), QmpError> {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(QmpError::invalid_value(
                    name,
                    &format!("an integer in the range of {lo} to {hi}"),
                ))
            }
        }
        range(
            "throttle-trigger-threshold",
            self.throttle_trigger_threshold.into(),
            1,
            100,
        )?;
        range(
            "cpu-throttle-initial",
            self.cpu_throttle_initial.into(),
            1,
            99,
        )?;
        range(
            "cpu-throttle-increment",
            self.cpu_throttle_increment.into(),
            1,
            99,
        )?;
        let size_max = u64::try_from(usize::MAX).unwrap_or(u64::MAX);
        range("max-bandwidth", self.max_bandwidth, 0, size_max)?;
        range(
            "avail-switchover-bandwidth",
            self.avail_switchover_bandwidth,
            0,
            size_max,
        )?;
        if self.downtime_limit > MAX_DOWNTIME_LIMIT {
            return Err(QmpError::invalid_value(
                "downtime-limit",
                &format!("an integer in the range of 0 to {MAX_DOWNTIME_LIMIT} ms"),
            ));
        }
        range("multifd-channels", self.multifd_channels.into(), 1, 255)?;
        range("multifd-zlib-level", self.multifd_zlib_level.into(), 0, 9)?;
        range("multifd-zstd-level", self.multifd_zstd_level.into(), 0, 20)?;
        if !(self.cpu_throttle_initial..=99).contains(&self.max_cpu_throttle) {
            return Err(QmpError::invalid_value(
                "max-cpu-throttle",
                &format!(
                    "an integer in the range of cpu-throttle-initial ({}) to 99",
                    self.cpu_throttle_initial
                ),
            ));
        }
        Ok(())
    }
}

/// Where a migration goes to or comes from: QMP's `uri` or `channels`, exactly
/// one of the two.
#[derive(Debug, Clone, PartialEq)]
pub enum MigrationTarget {
    /// A legacy URI such as `tcp:host:port` or `unix:/path`.
    Uri(String),
    /// A non-empty list of `MigrationChannel` objects
    /// (`{"channel-type": "main", "addr": {"transport": "socket", ...}}`),
    /// checked here to be objects only: the transport layer reads them.
    Channels(Vec<Map<String, Value>>),
}

/// `uri` and `channels` as read, before checking that exactly one is there
/// (which QEMU does after refusing unexpected members).
struct TargetArgs {
    uri: Option<String>,
    channels: Option<Vec<Map<String, Value>>>,
}

impl TargetArgs {
    fn read(a: &mut Args) -> Result<TargetArgs, QmpError> {
        Ok(TargetArgs {
            uri: a.opt("uri")?,
            channels: a.opt("channels")?,
        })
    }

    /// `uri` xor non-empty `channels` (QEMU reads an empty list as absent).
    fn pick(self) -> Result<MigrationTarget, QmpError> {
        match (self.uri, self.channels.filter(|c| !c.is_empty())) {
            (Some(uri), None) => Ok(MigrationTarget::Uri(uri)),
            (None, Some(channels)) => Ok(MigrationTarget::Channels(channels)),
            _ => Err(QmpError::generic(
                "need either 'uri' or 'channels' argument",
            )),
        }
    }
}

impl MigrationTarget {
    fn to_args(&self, m: &mut Map<String, Value>) {
        match self {
            MigrationTarget::Uri(uri) => {
                m.insert("uri".into(), uri.clone().into());
            }
            MigrationTarget::Channels(channels) => {
                let list = channels.iter().cloned().map(Value::Object).collect();
                m.insert("channels".into(), Value::Array(list));
            }
        }
    }
}

/// `migrate`'s arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct MigrateArgs {
    /// Where to.
    pub target: MigrationTarget,
    /// Resume a paused postcopy migration (default false).
    pub resume: bool,
}

impl MigrateArgs {
    /// Reads `migrate`'s arguments: `uri` or `channels`, `resume`, and
    /// `detach`, which QEMU accepted and ignored until 9.0 and which is
    /// accepted and ignored here too so older scripts keep working.
    pub fn from_args(args: Map<String, Value>) -> Result<MigrateArgs, QmpError> {
        let mut a = Args::new(args, "");
        let target = TargetArgs::read(&mut a)?;
        let _detach: Option<bool> = a.opt("detach")?;
        let resume = a.opt("resume")?.unwrap_or(false);
        a.finish()?;
        Ok(MigrateArgs {
            target: target.pick()?,
            resume,
        })
    }

    /// The arguments as a client sends them.
    pub fn to_args(&self) -> Map<String, Value> {
        let mut m = Map::new();
        self.target.to_args(&mut m);
        if self.resume {
            m.insert("resume".into(), true.into());
        }
        m
    }
}

/// `migrate-incoming`'s arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct MigrateIncomingArgs {
    /// Where from.
    pub target: MigrationTarget,
    /// Exit when the incoming migration fails (default true); when false, the
    /// failure is reported by a `MIGRATION` event and `query-migrate`.
    pub exit_on_error: bool,
}

impl MigrateIncomingArgs {
    /// Reads `migrate-incoming`'s arguments: `uri` or `channels`, and `exit-on-error`.
    pub fn from_args(args: Map<String, Value>) -> Result<MigrateIncomingArgs, QmpError> {
        let mut a = Args::new(args, "");
        let target = TargetArgs::read(&mut a)?;
        let exit_on_error = a.opt("exit-on-error")?.unwrap_or(true);
        a.finish()?;
        Ok(MigrateIncomingArgs {
            target: target.pick()?,
            exit_on_error,
        })
    }

    /// The arguments as a client sends them.
    pub fn to_args(&self) -> Map<String, Value> {
        let mut m = Map::new();
        self.target.to_args(&mut m);
        if !self.exit_on_error {
            m.insert("exit-on-error".into(), false.into());
        }
        m
    }
}

/// The migration commands, typed. An engine implements this and serves it with
/// [`MigrationCommands`], which reads and checks the arguments first.
pub trait MigrationControl: Send + Sync {
    /// `migrate`: start an outgoing migration; returns once it is started.
    fn migrate(&self, args: MigrateArgs) -> Result<(), QmpError>;
    /// `migrate-incoming`: start listening for an incoming migration.
    fn migrate_incoming(&self, args: MigrateIncomingArgs) -> Result<(), QmpError>;
    /// `query-migrate`.
    fn query_migrate(&self) -> Result<MigrationInfo, QmpError>;
    /// `query-migrate-capabilities`: every capability the engine knows and its state.
    fn query_migrate_capabilities(&self) -> Result<Vec<MigrationCapabilityStatus>, QmpError>;
    /// `migrate-set-capabilities`.
    fn migrate_set_capabilities(
        &self,
        caps: Vec<MigrationCapabilityStatus>,
    ) -> Result<(), QmpError>;
    /// `query-migrate-parameters`.
    fn query_migrate_parameters(&self) -> Result<MigrationParameters, QmpError>;
    /// `migrate-set-parameters`; [`MigrationParameters::apply`] does QEMU's checks.
    fn migrate_set_parameters(&self, set: SetMigrationParameters) -> Result<(), QmpError>;
    /// `migrate_cancel`: succeeds even when nothing is running, as in QEMU.
    fn migrate_cancel(&self) -> Result<(), QmpError>;
}

/// The commands [`MigrationCommands`] serves.
pub const MIGRATION_COMMANDS: [&str; 8] = [
    "migrate",
    "migrate-incoming",
    "query-migrate",
    "query-migrate-capabilities",
    "migrate-set-capabilities",
    "query-migrate-parameters",
    "migrate-set-parameters",
    "migrate_cancel",
];

/// Serves a [`MigrationControl`] as a QMP [`Handler`].
#[derive(Debug)]
pub struct MigrationCommands<M> {
    control: M,
}

impl<M: MigrationControl> MigrationCommands<M> {
    /// Serves `control`.
    pub fn new(control: M) -> MigrationCommands<M> {
        MigrationCommands { control }
    }

    /// The engine being served.
    pub fn control(&self) -> &M {
        &self.control
    }
}

impl<M: MigrationControl> Handler for MigrationCommands<M> {
    fn commands(&self) -> Vec<String> {
        MIGRATION_COMMANDS.iter().map(|s| s.to_string()).collect()
    }

    fn execute(&self, name: &str, args: Map<String, Value>) -> Result<Value, QmpError> {
        dispatch_migration(&self.control, name, args)
            .unwrap_or_else(|| Err(QmpError::command_not_found(name)))
    }
}

/// Runs migration command `name` on `control`, arguments read and checked
/// first; `None` if `name` is not one of [`MIGRATION_COMMANDS`]. For handlers
/// that serve migration commands next to others.
pub fn dispatch_migration(
    control: &dyn MigrationControl,
    name: &str,
    args: Map<String, Value>,
) -> Option<Result<Value, QmpError>> {
    let empty = || Value::Object(Map::new());
    let none = |args: Map<String, Value>| Args::new(args, "").finish();
    let result = match name {
        "migrate" => MigrateArgs::from_args(args)
            .and_then(|a| control.migrate(a))
            .map(|()| empty()),
        "migrate-incoming" => MigrateIncomingArgs::from_args(args)
            .and_then(|a| control.migrate_incoming(a))
            .map(|()| empty()),
        "query-migrate" => none(args)
            .and_then(|()| control.query_migrate())
            .and_then(to_json),
        "query-migrate-capabilities" => none(args)
            .and_then(|()| control.query_migrate_capabilities())
            .and_then(to_json),
        "migrate-set-capabilities" => capabilities_from_args(args)
            .and_then(|c| control.migrate_set_capabilities(c))
            .map(|()| empty()),
        "query-migrate-parameters" => none(args)
            .and_then(|()| control.query_migrate_parameters())
            .and_then(to_json),
        "migrate-set-parameters" => SetMigrationParameters::from_args(args)
            .and_then(|s| control.migrate_set_parameters(s))
            .map(|()| empty()),
        "migrate_cancel" => none(args)
            .and_then(|()| control.migrate_cancel())
            .map(|()| empty()),
        _ => return None,
    };
    Some(result)
}

fn to_json<T: Serialize>(v: T) -> Result<Value, QmpError> {
    serde_json::to_value(v).map_err(|e| QmpError::generic(format!("cannot encode the result: {e}")))
}

/// The `MIGRATION` event's data: `{"status": STATUS}`.
pub fn migration_event_data(status: MigrationStatus) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("status".into(), status.as_str().into());
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn enums_use_qemu_names() {
        assert_eq!(MigrationStatus::ALL.len(), 16);
        for s in MigrationStatus::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), json!(s.as_str()));
            assert_eq!(MigrationStatus::from_name(s.as_str()), Some(*s));
        }
        assert_eq!(MigrationStatus::PostcopyActive.as_str(), "postcopy-active");
        assert_eq!(
            MigrationCapability::from_name("x-ignore-shared"),
            Some(MigrationCapability::XIgnoreShared)
        );
        assert_eq!(MigrationCapability::ALL.len(), 21);
        assert_eq!(MultiFdCompression::from_name("lz4"), None);
    }

    #[test]
    fn info_serializes_like_qemu() {
        assert_eq!(
            serde_json::to_value(MigrationInfo::default()).unwrap(),
            json!({})
        );
        let info = MigrationInfo {
            status: Some(MigrationStatus::Completed),
            total_time: Some(12345),
            downtime: Some(20),
            ram: Some(MigrationStats {
                transferred: 123,
                normal_bytes: 123456,
                mbps: 1.5,
                ..MigrationStats::default()
            }),
            ..MigrationInfo::default()
        };
        let v = serde_json::to_value(&info).unwrap();
        assert_eq!(v["status"], "completed");
        assert_eq!(v["total-time"], 12345);
        assert_eq!(v["ram"]["normal-bytes"], 123456);
        assert_eq!(v["ram"]["dirty-sync-missed-zero-copy"], 0);
        assert!(v.get("expected-downtime").is_none());
        assert_eq!(serde_json::from_value::<MigrationInfo>(v).unwrap(), info);
        // A QEMU answer with members we do not model still reads.
        let qemu = json!({"status": "active", "vfio": {"transferred": 1}, "ram": {"transferred": 5, "skipped": 0}});
        let read: MigrationInfo = serde_json::from_value(qemu).unwrap();
        assert_eq!(read.ram.unwrap().transferred, 5);
    }

    #[test]
    fn parameter_defaults_are_qemus() {
        let p = MigrationParameters::default();
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["downtime-limit"], 300);
        assert_eq!(v["max-bandwidth"], 134217728);
        assert_eq!(v["multifd-channels"], 2);
        assert_eq!(v["multifd-compression"], "none");
        assert_eq!(v["cpu-throttle-initial"], 20);
        assert_eq!(v["cpu-throttle-increment"], 10);
        assert_eq!(v["max-cpu-throttle"], 99);
        assert_eq!(v["throttle-trigger-threshold"], 50);
        assert_eq!(v["tls-creds"], "");
        p.check().unwrap();
    }

    #[test]
    fn query_output_is_valid_set_input() {
        // Scripts feed query-migrate-parameters' answer back to migrate-set-parameters.
        let p = MigrationParameters {
            downtime_limit: 1000,
            multifd_compression: MultiFdCompression::Zstd,
            tls_creds: "tls0".into(),
            ..MigrationParameters::default()
        };
        let Value::Object(args) = serde_json::to_value(&p).unwrap() else {
            panic!()
        };
        let set = SetMigrationParameters::from_args(args).unwrap();
        assert_eq!(MigrationParameters::default().apply(&set).unwrap(), p);
        assert_eq!(
            SetMigrationParameters::from_args(set.to_args()).unwrap(),
            set
        );
    }

    #[test]
    fn set_parameters_checks_ranges_and_names_members() {
        let base = MigrationParameters::default();
        let cases = [
            (json!({"downtime-limit": 2000001}), "Parameter 'downtime-limit' expects an integer in the range of 0 to 2000000 ms"),
            (json!({"multifd-channels": 0}), "Parameter 'multifd-channels' expects an integer in the range of 1 to 255"),
            (json!({"multifd-channels": 256}), "Parameter 'multifd-channels' expects uint8_t"),
            (json!({"multifd-compression": "lz4"}), "Parameter 'multifd-compression' does not accept value 'lz4'"),
            (json!({"cpu-throttle-initial": 100}), "Parameter 'cpu-throttle-initial' expects an integer in the range of 1 to 99"),
            (json!({"throttle-trigger-threshold": 0}), "Parameter 'throttle-trigger-threshold' expects an integer in the range of 1 to 100"),
            (json!({"max-cpu-throttle": 10}), "Parameter 'max-cpu-throttle' expects an integer in the range of cpu-throttle-initial (20) to 99"),
            (json!({"multifd-zstd-level": 21}), "Parameter 'multifd-zstd-level' expects an integer in the range of 0 to 20"),
            (json!({"max-bandwidth": "fast"}), "Invalid parameter type for 'max-bandwidth', expected: integer"),
            (json!({"tls-creds": 5}), "Invalid parameter type for 'tls-creds', expected: string"),
            (json!({"downtime-limit": 1, "xbzrle-cache-size": 1}), "Parameter 'xbzrle-cache-size' is unexpected"),
        ];
        for (args, desc) in cases {
            let err = SetMigrationParameters::from_args(obj(args.clone()))
                .and_then(|s| base.apply(&s))
                .unwrap_err();
            assert_eq!(err.desc, desc, "{args}");
        }
        // null turns a TLS string off; several members at once apply together.
        let set = SetMigrationParameters::from_args(obj(
            json!({"tls-creds": null, "cpu-throttle-initial": 30, "max-cpu-throttle": 40}),
        ))
        .unwrap();
        let p = MigrationParameters {
            tls_creds: "x".into(),
            ..base.clone()
        }
        .apply(&set)
        .unwrap();
        assert_eq!(
            (
                p.tls_creds.as_str(),
                p.cpu_throttle_initial,
                p.max_cpu_throttle
            ),
            ("", 30, 40)
        );
    }

    #[test]
    fn migrate_arguments() {
        let uri =
            MigrateArgs::from_args(obj(json!({"uri": "tcp:0:4446", "detach": true}))).unwrap();
        assert_eq!(
            uri,
            MigrateArgs {
                target: MigrationTarget::Uri("tcp:0:4446".into()),
                resume: false
            }
        );
        let ch = json!({"channel-type": "main", "addr": {"transport": "socket", "type": "inet", "host": "10.12.34.9", "port": "1050"}});
        let chans =
            MigrateArgs::from_args(obj(json!({"channels": [ch.clone()], "resume": true}))).unwrap();
        assert_eq!(chans.target, MigrationTarget::Channels(vec![obj(ch)]));
        assert!(chans.resume);
        assert_eq!(MigrateArgs::from_args(chans.to_args()).unwrap(), chans);
        let errors = [
            (json!({}), "need either 'uri' or 'channels' argument"),
            (
                json!({"uri": "a", "channels": [{}]}),
                "need either 'uri' or 'channels' argument",
            ),
            (
                json!({"channels": []}),
                "need either 'uri' or 'channels' argument",
            ),
            (
                json!({"channels": [1]}),
                "Invalid parameter type for 'channels[0]', expected: object",
            ),
            (
                json!({"uri": 4}),
                "Invalid parameter type for 'uri', expected: string",
            ),
            (
                json!({"uri": "a", "blk": true}),
                "Parameter 'blk' is unexpected",
            ),
            (
                json!({"uri": "a", "resume": "yes"}),
                "Invalid parameter type for 'resume', expected: boolean",
            ),
        ];
        for (args, desc) in errors {
            assert_eq!(
                MigrateArgs::from_args(obj(args.clone())).unwrap_err().desc,
                desc,
                "{args}"
            );
        }
        let inc =
            MigrateIncomingArgs::from_args(obj(json!({"uri": "unix:/s", "exit-on-error": false})))
                .unwrap();
        assert!(!inc.exit_on_error);
        assert_eq!(MigrateIncomingArgs::from_args(inc.to_args()).unwrap(), inc);
        assert!(
            MigrateIncomingArgs::from_args(obj(json!({"uri": "x"})))
                .unwrap()
                .exit_on_error
        );
        assert_eq!(
            MigrateIncomingArgs::from_args(obj(json!({"uri": "x", "resume": true})))
                .unwrap_err()
                .desc,
            "Parameter 'resume' is unexpected"
        );
    }

    #[test]
    fn capability_arguments() {
        let caps = capabilities_from_args(obj(
            json!({"capabilities": [{"capability": "events", "state": true}]}),
        ))
        .unwrap();
        assert_eq!(
            caps,
            vec![MigrationCapabilityStatus {
                capability: MigrationCapability::Events,
                state: true
            }]
        );
        let errors = [
            (json!({}), "Parameter 'capabilities' is missing"),
            (
                json!({"capabilities": [{"capability": "warp", "state": true}]}),
                "Parameter 'capabilities[0].capability' does not accept value 'warp'",
            ),
            (
                json!({"capabilities": [{"capability": "events"}]}),
                "Parameter 'capabilities[0].state' is missing",
            ),
            (
                json!({"capabilities": [{"capability": "events", "state": true, "on": 1}]}),
                "Parameter 'capabilities[0].on' is unexpected",
            ),
        ];
        for (args, desc) in errors {
            assert_eq!(
                capabilities_from_args(obj(args.clone())).unwrap_err().desc,
                desc,
                "{args}"
            );
        }
    }
}
