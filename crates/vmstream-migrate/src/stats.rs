//! Progress and statistics of one migration, shared between the driver and
//! whoever asks (`query-migrate`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::qmp::{MigrationInfo, MigrationStats};

/// A migration's status: QEMU's `MigrationStatus`.
pub use crate::qmp::MigrationStatus as Status;

/// Counters the page senders and receivers bump without locking.
#[derive(Debug, Default)]
pub struct Counters {
    /// Bytes written on every channel (framing included).
    pub transferred: Arc<AtomicU64>,
    /// Data pages sent.
    pub normal: AtomicU64,
    /// Zero pages sent (as zero entries).
    pub duplicate: AtomicU64,
}

/// A snapshot of the statistics, in the units of QEMU's `query-migrate`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Snapshot {
    /// Status.
    pub status: Option<Status>,
    /// Milliseconds since the start, frozen at the end.
    pub total_time_ms: u64,
    /// Milliseconds from start to the end of negotiation.
    pub setup_time_ms: u64,
    /// Estimate of the downtime, while active.
    pub expected_downtime_ms: u64,
    /// Measured downtime (vCPUs paused → destination running), once completed.
    pub downtime_ms: Option<u64>,
    /// Bytes sent.
    pub transferred: u64,
    /// Dirty bytes still to send.
    pub remaining: u64,
    /// Guest RAM size.
    pub total: u64,
    /// Zero pages sent.
    pub duplicate: u64,
    /// Data pages sent.
    pub normal: u64,
    /// Data bytes sent.
    pub normal_bytes: u64,
    /// Pages dirtied per second in the last round.
    pub dirty_pages_rate: u64,
    /// Throughput of the last round (or the whole migration once done), Mbit/s.
    pub mbps: f64,
    /// Dirty-log syncs (rounds).
    pub dirty_sync_count: u64,
    /// Current auto-converge throttle, percent.
    pub cpu_throttle_percentage: u8,
    /// The first error.
    pub error: Option<String>,
}

/// Called with each new status.
type Listener = Arc<dyn Fn(Status) + Send + Sync>;

/// Shared statistics.
#[derive(Clone, Default)]
pub struct Stats {
    inner: Arc<Mutex<Snapshot>>,
    /// Lock-free counters.
    pub counters: Arc<Counters>,
    listener: Option<Listener>,
}

impl std::fmt::Debug for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stats")
            .field("snapshot", &self.snapshot())
            .finish()
    }
}

impl Stats {
    /// Fresh statistics.
    pub fn new() -> Stats {
        Stats::default()
    }

    /// Statistics that call `listener` whenever the status changes (to emit
    /// QMP `MIGRATION` events).
    pub fn with_listener(listener: impl Fn(Status) + Send + Sync + 'static) -> Stats {
        Stats {
            listener: Some(Arc::new(listener)),
            ..Stats::default()
        }
    }

    /// Changes what is recorded.
    pub fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        let changed = match self.inner.lock() {
            Ok(mut s) => {
                let before = s.status;
                f(&mut s);
                (s.status != before).then_some(s.status).flatten()
            }
            Err(_) => None,
        };
        if let (Some(st), Some(l)) = (changed, &self.listener) {
            l(st);
        }
    }

    /// The current values.
    pub fn snapshot(&self) -> Snapshot {
        let mut s = self.inner.lock().map(|s| s.clone()).unwrap_or_default();
        s.transferred = self.counters.transferred.load(Ordering::Relaxed);
        s.normal = self.counters.normal.load(Ordering::Relaxed);
        s.duplicate = self.counters.duplicate.load(Ordering::Relaxed);
        s
    }

    /// The status.
    pub fn status(&self) -> Status {
        self.snapshot().status.unwrap_or(Status::None)
    }
}

impl Snapshot {
    /// The snapshot as QMP's `query-migrate` answers, for pages of
    /// `page_size` bytes.
    pub fn to_migration_info(&self, page_size: u64) -> MigrationInfo {
        let s = self;
        let st = s.status.unwrap_or(Status::None);
        let ram = (st != Status::None && st != Status::Setup).then(|| MigrationStats {
            transferred: s.transferred,
            remaining: s.remaining,
            total: s.total,
            duplicate: s.duplicate,
            normal: s.normal,
            normal_bytes: s.normal * page_size,
            dirty_pages_rate: s.dirty_pages_rate,
            mbps: s.mbps,
            dirty_sync_count: s.dirty_sync_count,
            page_size,
            ..MigrationStats::default()
        });
        MigrationInfo {
            status: s.status,
            ram,
            total_time: (st != Status::None).then_some(s.total_time_ms),
            setup_time: (st != Status::None).then_some(s.setup_time_ms),
            expected_downtime: (st == Status::Active).then_some(s.expected_downtime_ms),
            downtime: s.downtime_ms.filter(|_| st == Status::Completed),
            cpu_throttle_percentage: (s.cpu_throttle_percentage > 0)
                .then_some(u64::from(s.cpu_throttle_percentage)),
            error_desc: s.error.clone().filter(|_| st == Status::Failed),
            ..MigrationInfo::default()
        }
    }
}
