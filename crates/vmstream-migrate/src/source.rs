//! The source side: negotiate, precopy rounds over the data channels,
//! stop-and-copy, and the ready → go → done commit.
//!
//! Failure rule: until `go` is on the wire the source can always take its VM
//! back — any error cuts the connections, stops dirty logging and throttling,
//! and resumes the vCPUs if they were paused. After `go` the destination may be
//! running, so the source stays paused and reports the outcome as unknown.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmstream::{
    Compression, Header, Limits, RamBlock, Record, StreamKind, StreamReader, WriterOptions,
};

use crate::link::{Cancel, Connections, Counted, Link, Shared, Watchdog};
use crate::out::{device_digest, memory_digests, read_control, Out};
use crate::proto::source::{
    AfterComplete, AfterRound, AutoConverge, Convergence, Handshake, Round,
};
use crate::proto::{self, Accept, DeviceOffer, Features, Hello, RegionInfo};
use crate::stats::{Stats, Status};
use crate::vm::{DirtyBitmap, Vm};
use crate::Error;

/// Pages per work item handed to a channel.
const CHUNK_PAGES: u64 = 256;

/// Tunables of one outgoing migration, with QEMU's names and defaults where
/// QEMU has the concept.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// `downtime-limit`, milliseconds (default 300).
    pub downtime_limit_ms: u64,
    /// `max-bandwidth`, bytes per second over all channels; 0 = unlimited.
    pub max_bandwidth: u64,
    /// Page compressions to offer, in order of preference (`zstd`, `lz4`).
    pub compression: Vec<String>,
    /// `auto-converge`: throttle the vCPUs when rounds stop shrinking.
    pub auto_converge: bool,
    /// `throttle-trigger-threshold`, percent.
    pub throttle_trigger_threshold: u8,
    /// `cpu-throttle-initial`, percent.
    pub cpu_throttle_initial: u8,
    /// `cpu-throttle-increment`, percent.
    pub cpu_throttle_increment: u8,
    /// `max-cpu-throttle`, percent.
    pub max_cpu_throttle: u8,
    /// Architecture recorded in stream headers.
    pub arch: vmstream::Arch,
    /// How long to wait for each answer of the destination (`accept`,
    /// `ready`, `done`) before giving up and taking the VM back, ms. The wait
    /// for `ready` gets one more second per 256 MiB of guest memory, which the
    /// destination checksums before it answers.
    pub answer_timeout_ms: u64,
}

impl Default for Params {
    fn default() -> Params {
        Params {
            downtime_limit_ms: 300,
            max_bandwidth: 128 << 20,
            compression: Vec::new(),
            auto_converge: false,
            throttle_trigger_threshold: 50,
            cpu_throttle_initial: 20,
            cpu_throttle_increment: 10,
            max_cpu_throttle: 99,
            arch: vmstream::Arch::X86_64,
            answer_timeout_ms: 60_000,
        }
    }
}

/// A run of pages of one region.
#[derive(Debug, Clone, Copy)]
struct Chunk {
    region: u32,
    first: u64,
    count: u64,
}

fn chunks(dirty: &BTreeMap<u32, DirtyBitmap>) -> VecDeque<Chunk> {
    let mut out = VecDeque::new();
    for (&region, bitmap) in dirty {
        for (first, count) in bitmap.runs() {
            let mut at = first;
            while at < first + count {
                let n = CHUNK_PAGES.min(first + count - at);
                out.push_back(Chunk {
                    region,
                    first: at,
                    count: n,
                });
                at += n;
            }
        }
    }
    out
}

/// Shared bandwidth limit over all channels, in 100 ms windows (QEMU's).
struct RateLimit {
    bytes_per_window: u64,
    window: Mutex<(Instant, u64)>,
}

impl RateLimit {
    fn new(bytes_per_sec: u64) -> RateLimit {
        RateLimit {
            bytes_per_window: bytes_per_sec / 10,
            window: Mutex::new((Instant::now(), 0)),
        }
    }

    fn take(&self, bytes: u64) {
        if self.bytes_per_window == 0 {
            return;
        }
        loop {
            let wait = {
                let Ok(mut w) = self.window.lock() else {
                    return;
                };
                let now = Instant::now();
                if now.duration_since(w.0) >= Duration::from_millis(100) {
                    *w = (now, 0);
                }
                if w.1 < self.bytes_per_window {
                    w.1 += bytes;
                    return;
                }
                Duration::from_millis(100).saturating_sub(now.duration_since(w.0))
            };
            std::thread::sleep(wait);
        }
    }
}

/// What every page sender shares.
struct Ctx<'a> {
    vm: &'a Vm,
    page_size: u64,
    limit: &'a RateLimit,
    stats: &'a Stats,
    cancel: &'a Cancel,
}

/// Sends the chunks of `queue` on `w` as epoch `epoch`, then the barrier.
fn send_round<W: Write>(
    w: &mut Out<W>,
    ctx: &Ctx<'_>,
    queue: &Mutex<VecDeque<Chunk>>,
    epoch: u32,
) -> Result<(), Error> {
    let Ctx {
        vm,
        page_size,
        limit,
        stats,
        cancel,
    } = *ctx;
    let mut buf = vec![0u8; (CHUNK_PAGES * page_size) as usize];
    loop {
        if cancel.is_stopped() {
            return Err(Error::cancelled());
        }
        let Some(c) = queue
            .lock()
            .map_err(|_| Error::internal("queue lock"))?
            .pop_front()
        else {
            break;
        };
        let bytes = (c.count * page_size) as usize;
        let data = &mut buf[..bytes];
        vm.memory
            .read(c.region, c.first * page_size, data)
            .map_err(|e| Error::vm(format!("reading region {}: {e}", c.region)))?;
        limit.take(bytes as u64);
        let pages: Vec<(u64, &[u8])> = data
            .chunks_exact(page_size as usize)
            .enumerate()
            .map(|(i, page)| (c.first + i as u64, page as &[u8]))
            .collect();
        // Zero pages go as zero entries (the encoder elides their data).
        let zero = pages
            .iter()
            .filter(|(_, p)| vmstream::write::is_zero(p))
            .count() as u64;
        w.pages(c.region, epoch, &pages)?;
        stats
            .counters
            .normal
            .fetch_add(c.count - zero, Ordering::Relaxed);
        stats.counters.duplicate.fetch_add(zero, Ordering::Relaxed);
    }
    w.epoch(epoch)
}

/// Reads the destination's next message, giving up after `timeout`.
fn answer<R: std::io::Read>(
    back: &mut StreamReader<R>,
    cancel: &Cancel,
    timeout: Duration,
    what: &str,
) -> Result<proto::Control, Error> {
    let dog = Watchdog::arm(cancel, timeout);
    let r = read_control(back);
    if dog.fired() {
        return Err(Error::peer(format!(
            "no {what} from the destination within {} ms",
            timeout.as_millis()
        )));
    }
    r
}

enum Job {
    Round(u32, Arc<Mutex<VecDeque<Chunk>>>),
    Finish,
}

fn header(vm: &Vm, params: &Params) -> Header {
    Header::new(StreamKind::Live, params.arch, vm.memory.page_size())
}

fn options(accept: &Accept) -> WriterOptions {
    let c = match accept.compression.as_deref() {
        Some("zstd") => Compression::Zstd(1),
        Some("lz4") => Compression::Lz4,
        _ => Compression::None,
    };
    WriterOptions::default()
        .with_index(false)
        .with_compression(c)
}

fn ram_blocks(vm: &Vm) -> Vec<RamBlock> {
    let ps = vm.memory.page_size();
    vm.memory
        .regions()
        .into_iter()
        .map(|r| RamBlock {
            id: r.id,
            name: r.name,
            size: r.size,
            page_size: ps,
            flags: 0,
        })
        .collect()
}

/// Migrates `vm` over `conns`. On success the source's vCPUs stay paused (the
/// VM now runs on the destination); on any error before the commit they run
/// again as before.
pub fn migrate(
    vm: &Vm,
    conns: Connections,
    params: &Params,
    stats: &Stats,
    cancel: &Cancel,
) -> Result<(), Error> {
    let start = Instant::now();
    stats.update(|s| {
        *s = Default::default();
        s.status = Some(Status::Setup);
        s.total = vm.memory.regions().iter().map(|r| r.size).sum();
    });
    let mut paused = false;
    let mut committed = false;
    let result = run(
        vm,
        conns,
        params,
        stats,
        cancel,
        start,
        &mut paused,
        &mut committed,
    );
    let total = start.elapsed().as_millis() as u64;
    match &result {
        Ok(()) => stats.update(|s| {
            s.status = Some(Status::Completed);
            s.total_time_ms = total;
            s.remaining = 0;
        }),
        Err(e) => {
            let cancelled = e.is_cancel() || cancel.is_cancelled();
            cancel.abort();
            vm.vcpus.throttle(0);
            vm.dirty.stop();
            let mut msg = e.to_string();
            if committed {
                msg = format!("{msg}; the destination may be running: the source stays paused");
            } else if paused {
                if let Err(r) = vm.vcpus.resume() {
                    msg = format!("{msg}; resuming the source failed too: {r}");
                }
            }
            let st = if cancelled {
                Status::Cancelled
            } else {
                Status::Failed
            };
            stats.update(|s| {
                s.status = Some(st);
                s.total_time_ms = total;
                s.error.get_or_insert(msg);
            });
        }
    }
    cancel.release();
    result
}

#[allow(clippy::too_many_arguments)]
fn run(
    vm: &Vm,
    conns: Connections,
    params: &Params,
    stats: &Stats,
    cancel: &Cancel,
    start: Instant,
    paused: &mut bool,
    committed: &mut bool,
) -> Result<(), Error> {
    let one_way = conns.one_way;
    let tls = conns.is_tls();
    if one_way && !conns.data.is_empty() {
        return Err(Error::usage(
            "a one-way channel (exec, file) carries no data channels",
        ));
    }
    cancel.watch(conns.main.cutter());
    for d in &conns.data {
        cancel.watch(d.cutter());
    }
    if cancel.is_stopped() {
        return Err(Error::cancelled());
    }
    let page_size = u64::from(vm.memory.page_size());
    let regions = vm.memory.regions();
    let counter = stats.counters.clone();
    // Main's stream is opened before negotiation, so pages that travel on it
    // (no data channels) are not compressed.
    let (w, r) = Shared::new(conns.main);
    let mut main = Out::new(
        Counted(w, counter.transferred.clone()),
        header(vm, params),
        WriterOptions::default().with_index(false),
    )?;

    // Negotiation.
    let devices: Vec<DeviceOffer> = {
        let reg = vm
            .devices
            .lock()
            .map_err(|_| Error::internal("device lock"))?;
        reg.iter()
            .map(|d| DeviceOffer {
                name: d.name().to_owned(),
                type_name: d.type_name().to_owned(),
                versions: vec![d.version()],
            })
            .collect()
    };
    let device_bytes = 64 * 1024 * devices.len() as u64;
    let hello = Hello {
        protocol: proto::PROTOCOL,
        min_protocol: proto::MIN_PROTOCOL,
        software: concat!("vmstream ", env!("CARGO_PKG_VERSION")).to_owned(),
        page_size: page_size as u32,
        regions: regions
            .iter()
            .map(|r| RegionInfo {
                id: r.id,
                name: r.name.clone(),
                size: r.size,
            })
            .collect(),
        data_channels: conns.data.len() as u16,
        features: Features {
            compression: params.compression.clone(),
            checksums: vec!["crc32c".to_owned()],
            tls: tls && !one_way,
        },
        devices,
    };
    let convergence = Convergence {
        downtime_limit_ms: params.downtime_limit_ms,
        device_bytes,
        auto_converge: params.auto_converge.then_some(AutoConverge {
            trigger: params.throttle_trigger_threshold,
            initial: params.cpu_throttle_initial,
            increment: params.cpu_throttle_increment,
            max: params.max_cpu_throttle,
        }),
    };
    let (handshake, msg) = Handshake::start(hello, one_way, convergence);
    main.control(&msg)?;
    let mut back = if handshake.expects_answer() {
        Some(StreamReader::new(r, Limits::default())?)
    } else {
        None
    };
    let memory: u64 = regions.iter().map(|r| r.size).sum();
    let timeout = Duration::from_millis(params.answer_timeout_ms);
    let ready_timeout = timeout + Duration::from_secs(memory >> 28);
    let reply = back
        .as_mut()
        .map(|b| answer(b, cancel, timeout, "accept"))
        .transpose()?;
    let mut precopy = handshake.answer(reply)?;
    let accept = precopy.accept().clone();
    main.info(&vmstream::to_value(&accept)?)?;
    let blocks = ram_blocks(vm);
    main.ram_blocks(&blocks)?;
    let mut data: Vec<Out<Counted<Box<dyn Link>>>> = Vec::new();
    for c in conns.data {
        let mut w = Out::new(
            Counted(c, counter.transferred.clone()),
            header(vm, params),
            options(&accept),
        )?;
        w.ram_blocks(&blocks)?;
        data.push(w);
    }
    stats.update(|s| s.setup_time_ms = start.elapsed().as_millis() as u64);
    vm.dirty.start().map_err(Error::vm)?;
    stats.update(|s| s.status = Some(Status::Active));

    let limit = RateLimit::new(params.max_bandwidth);
    let mut dirty: BTreeMap<u32, DirtyBitmap> = regions
        .iter()
        .map(|r| (r.id, DirtyBitmap::full(r.size / page_size)))
        .collect();

    let ctx = Ctx {
        vm,
        page_size,
        limit: &limit,
        stats,
        cancel,
    };
    std::thread::scope(|scope| -> Result<(), Error> {
        // One thread per data channel, each owning its stream.
        let mut jobs = Vec::new();
        let (done_tx, done_rx) = mpsc::channel::<Result<(), Error>>();
        for mut w in data.drain(..) {
            let (tx, rx) = mpsc::channel::<Job>();
            jobs.push(tx);
            let done = done_tx.clone();
            let ctx = &ctx;
            scope.spawn(move || {
                for job in rx {
                    let r = match job {
                        Job::Round(e, q) => send_round(&mut w, ctx, &q, e),
                        Job::Finish => {
                            let r = w.finish();
                            let _ = done.send(r);
                            return;
                        }
                    };
                    let failed = r.is_err();
                    let _ = done.send(r);
                    if failed {
                        return;
                    }
                }
            });
        }
        drop(done_tx);
        let wait_all = |n: usize| -> Result<(), Error> {
            let mut first = None;
            for _ in 0..n {
                match done_rx.recv() {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        cancel.abort();
                        if first
                            .as_ref()
                            .is_none_or(|f: &Error| f.is_cancel() && !e.is_cancel())
                        {
                            first = Some(e);
                        }
                    }
                    Err(_) => {
                        first.get_or_insert(Error::internal("a channel thread ended"));
                    }
                }
            }
            first.map_or(Ok(()), Err)
        };
        let send = |main: &mut Out<_>,
                    epoch: u32,
                    dirty: &BTreeMap<u32, DirtyBitmap>|
         -> Result<(), Error> {
            let q = Arc::new(Mutex::new(chunks(dirty)));
            if jobs.is_empty() {
                send_round(main, &ctx, &q, epoch)?;
            } else {
                for j in &jobs {
                    j.send(Job::Round(epoch, q.clone()))
                        .map_err(|_| Error::internal("channel thread gone"))?;
                }
                wait_all(jobs.len())?;
                main.epoch(epoch)?;
            }
            Ok(())
        };

        // Precopy rounds.
        let stop = loop {
            let t = Instant::now();
            let before = counter.transferred.load(Ordering::Relaxed);
            send(&mut main, precopy.epoch(), &dirty)?;
            let secs = t.elapsed().as_secs_f64();
            let sent = counter.transferred.load(Ordering::Relaxed) - before;
            dirty = vm.dirty.fetch_and_clear().map_err(Error::vm)?;
            let round = Round {
                sent,
                secs,
                dirty_pages: dirty.values().map(|b| b.count()).sum(),
                page_size,
            };
            let (next, e) = precopy.round(round);
            stats.update(|s| {
                s.dirty_sync_count += 1;
                s.remaining = e.remaining;
                s.mbps = e.bandwidth * 8.0 / 1e6;
                s.dirty_pages_rate = e.dirty_pages_rate;
                s.expected_downtime_ms = e.expected_downtime_ms;
                s.normal_bytes = s.normal * page_size;
            });
            if let Some(p) = e.throttle {
                vm.vcpus.throttle(p);
                stats.update(|s| s.cpu_throttle_percentage = p);
            }
            match next {
                AfterRound::SwitchOver(stop) => break stop,
                AfterRound::Again(p) => precopy = p,
            }
            if cancel.is_stopped() {
                return Err(Error::cancelled());
            }
        };

        // Stop and copy.
        stats.update(|s| s.status = Some(Status::Device));
        let paused_at = Instant::now();
        vm.vcpus.pause().map_err(Error::vm)?;
        *paused = true;
        let last = vm.dirty.fetch_and_clear().map_err(Error::vm)?;
        for (id, b) in &last {
            if let Some(d) = dirty.get_mut(id) {
                d.union(b);
            }
        }
        // Memory no longer changes: its digest is taken while the last pages go.
        let regions = scope.spawn(|| memory_digests(vm));
        send(&mut main, stop.epoch(), &dirty)?;
        for j in &jobs {
            j.send(Job::Finish)
                .map_err(|_| Error::internal("channel thread gone"))?;
        }
        wait_all(jobs.len())?;
        let regions = regions
            .join()
            .map_err(|_| Error::internal("digest thread panicked"))??;
        let mut devices = BTreeMap::new();
        {
            let reg = vm
                .devices
                .lock()
                .map_err(|_| Error::internal("device lock"))?;
            for d in reg.iter() {
                let v = d
                    .save()
                    .map_err(|e| Error::vm(format!("saving device {}: {e}", d.name())))?;
                devices.insert(d.name().to_owned(), device_digest(&v));
                main.device(&vmstream::DeviceState {
                    name: d.name().to_owned(),
                    instance_id: 0,
                    type_name: d.type_name().to_owned(),
                    version: stop.device_version(d.name())?,
                    value: v,
                })?;
            }
        }
        let (next, msg) = stop.complete(regions, devices);
        main.control(&msg)?;
        let (awaiting, back) = match (next, back.as_mut()) {
            (AfterComplete::AwaitReady(w), Some(back)) => (w, back),
            // One-way: the stream is whole; the VM stays paused here, as
            // QEMU's does after a migration to a file.
            _ => {
                *committed = true;
                main.finish()?;
                stats.update(|s| s.downtime_ms = Some(paused_at.elapsed().as_millis() as u64));
                return Ok(());
            }
        };
        let (commit, go) = awaiting.answer(answer(back, cancel, ready_timeout, "ready")?)?;
        if cancel.is_stopped() {
            return Err(Error::cancelled());
        }
        // The point of no return.
        *committed = true;
        main.control(&go)?;
        main.finish()?;
        commit.answer(answer(back, cancel, timeout, "done")?)?;
        // The destination ends its stream after `done`; read to that end so
        // neither side closes under the other's last write. The outcome is
        // already known, so an error here changes nothing.
        while let Ok(Some(item)) = back.next() {
            if matches!(item.record, Record::End(_)) {
                break;
            }
        }
        vm.dirty.stop();
        vm.vcpus.throttle(0);
        let downtime = paused_at.elapsed().as_millis() as u64;
        let total = start.elapsed();
        let transferred = counter.transferred.load(Ordering::Relaxed);
        stats.update(|s| {
            s.downtime_ms = Some(downtime);
            s.mbps = transferred as f64 * 8.0 / 1e6 / total.as_secs_f64().max(1e-6);
        });
        Ok(())
    })
}
