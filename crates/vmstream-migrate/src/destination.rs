//! The destination side: answer the source's hello, apply pages from every
//! channel in epoch order, load and verify device state and memory, and run
//! the VM only when the source says `go`.
//!
//! Failure rule: the destination never resumes unless every check passed and
//! `go` arrived; on any error it reports why (to the source too, when the
//! main channel still works) and leaves its vCPUs paused.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::{Condvar, Mutex};

use vmstream::{Header, Limits, Record, StreamKind, StreamReader, StreamWriter, WriterOptions};

use crate::link::{Cancel, Connections, Counted, Shared};
use crate::out::{device_digest, memory_digests, read_control, write_control};
use crate::proto::destination::{AwaitGo, AwaitHello, Refusal, Verifying};
use crate::proto::{self, Control, Local};
use crate::stats::{Stats, Status};
use crate::vm::Vm;
use crate::Error;

/// Holds every data channel at an epoch barrier until all reached it, so a
/// page of a later round is never overwritten by an older copy that another
/// channel delivers late (docs/format.md §6.3).
struct Gate {
    reached: Mutex<(Vec<Option<u32>>, bool)>,
    cv: Condvar,
}

impl Gate {
    fn new(n: usize) -> Gate {
        Gate {
            reached: Mutex::new((vec![None; n], false)),
            cv: Condvar::new(),
        }
    }

    fn arrive(&self, channel: usize, epoch: u32) -> Result<(), Error> {
        let mut g = self
            .reached
            .lock()
            .map_err(|_| Error::internal("gate lock"))?;
        g.0[channel] = Some(epoch);
        self.cv.notify_all();
        while !g.1 && g.0.iter().any(|e| e.is_none_or(|e| e < epoch)) {
            g = self.cv.wait(g).map_err(|_| Error::internal("gate lock"))?;
        }
        if g.1 {
            return Err(Error::cancelled());
        }
        Ok(())
    }

    fn abort(&self) {
        if let Ok(mut g) = self.reached.lock() {
            g.1 = true;
        }
        self.cv.notify_all();
    }
}

/// Applies one record's pages to guest memory.
fn apply(
    vm: &Vm,
    batch: &vmstream::PageBatch<'_>,
    zero: &[u8],
    page_size: u64,
) -> Result<(), Error> {
    for p in batch.pages() {
        let data = p.data.unwrap_or(zero);
        vm.memory
            .write(batch.block, p.index * page_size, data)
            .map_err(|e| {
                Error::vm(format!(
                    "writing block {} page {}: {e}",
                    batch.block, p.index
                ))
            })?;
    }
    Ok(())
}

/// Sends `msg` to the source, unless the transport is one-way.
fn tell<W: std::io::Write>(back: &mut Option<StreamWriter<W>>, msg: &Control) -> Result<(), Error> {
    match back {
        Some(w) => write_control(w, msg),
        None => Ok(()),
    }
}

/// Reads one data channel to its end.
fn receive<R: Read>(
    vm: &Vm,
    conn: R,
    channel: usize,
    gate: &Gate,
    page_size: u64,
) -> Result<(), Error> {
    let zero = vec![0u8; page_size as usize];
    let mut r = StreamReader::new(conn, Limits::default())?;
    check_header(r.state().header(), page_size, channel)?;
    while let Some(item) = r.next()? {
        match item.record {
            Record::Pages(b) => apply(vm, &b, &zero, page_size)?,
            Record::Epoch(e) => gate.arrive(channel, e)?,
            Record::RamBlocks(_) | Record::Names { .. } | Record::Info(_) | Record::Index(_) => {}
            Record::End(_) => return Ok(()),
            _ => {
                return Err(Error::peer(format!(
                    "data channel {channel}: unexpected {:?} record at offset {}",
                    item.kind, item.offset
                )))
            }
        }
    }
    Err(Error::peer(format!(
        "data channel {channel} ended without an end record"
    )))
}

fn check_header(h: &Header, page_size: u64, channel: usize) -> Result<(), Error> {
    if h.kind != StreamKind::Live || u64::from(h.page_size) != page_size {
        return Err(Error::peer(format!(
            "channel {channel}: stream kind {:?} with {}-byte pages, expected a live stream with {page_size}-byte pages",
            h.kind, h.page_size
        )));
    }
    Ok(())
}

/// What this destination can load, from its VM.
pub fn local(vm: &Vm, max_data_channels: u16, compression: &[&str]) -> Result<Local, Error> {
    let reg = vm
        .devices
        .lock()
        .map_err(|_| Error::internal("device lock"))?;
    Ok(Local {
        page_size: vm.memory.page_size(),
        regions: vm
            .memory
            .regions()
            .into_iter()
            .map(|r| proto::RegionInfo {
                id: r.id,
                name: r.name,
                size: r.size,
            })
            .collect(),
        features: proto::Features {
            compression: compression.iter().map(|s| (*s).to_owned()).collect(),
            checksums: vec!["crc32c".to_owned()],
            tls: false,
        },
        devices: reg
            .iter()
            .map(|d| (d.name().to_owned(), (d.type_name().to_owned(), d.loads())))
            .collect(),
        max_data_channels,
    })
}

/// Receives a migration into `vm` (whose vCPUs are paused) over `conns`. On
/// success the vCPUs run; on error they stay paused and nothing of the
/// incoming state is to be trusted.
pub fn incoming(
    vm: &Vm,
    conns: Connections,
    local: &Local,
    stats: &Stats,
    cancel: &Cancel,
) -> Result<(), Error> {
    stats.update(|s| {
        *s = Default::default();
        s.status = Some(Status::Setup);
        s.total = local.regions.iter().map(|r| r.size).sum();
    });
    let start = std::time::Instant::now();
    let r = run(vm, conns, local, stats, cancel);
    let total = start.elapsed().as_millis() as u64;
    let cancelled = cancel.is_cancelled();
    stats.update(|s| {
        s.total_time_ms = total;
        match &r {
            Ok(()) => s.status = Some(Status::Completed),
            Err(e) => {
                s.status = Some(if e.is_cancel() || cancelled {
                    Status::Cancelled
                } else {
                    Status::Failed
                });
                s.error.get_or_insert(e.to_string());
            }
        }
    });
    if r.is_err() {
        cancel.abort();
    }
    cancel.release();
    r
}

fn run(
    vm: &Vm,
    conns: Connections,
    local: &Local,
    stats: &Stats,
    cancel: &Cancel,
) -> Result<(), Error> {
    cancel.watch(conns.main.cutter());
    for d in &conns.data {
        cancel.watch(d.cutter());
    }
    let page_size = u64::from(local.page_size);
    // The channels' TLS is known now that they are connected.
    let mut local = local.clone();
    local.features.tls = conns.is_tls();
    let (w, r) = Shared::new(conns.main);
    let mut main = StreamReader::new(r, Limits::default())?;
    check_header(main.state().header(), page_size, 0)?;
    let header = Header::new(
        StreamKind::Live,
        main.state().header().arch,
        local.page_size,
    );
    let one_way = conns.one_way;
    // Nothing goes back on a one-way transport.
    let mut back = if one_way {
        None
    } else {
        Some(StreamWriter::new(
            Counted(w, stats.counters.transferred.clone()),
            header,
            WriterOptions::default().with_index(false),
        )?)
    };
    let receiving = match AwaitHello::new(local, conns.data.len()).hello(read_control(&mut main)?) {
        Ok((receiving, reply)) => {
            tell(&mut back, &reply)?;
            receiving
        }
        Err(Refusal { error, reply }) => {
            if let Some(reply) = reply {
                let _ = tell(&mut back, &reply);
            }
            return Err(error);
        }
    };
    stats.update(|s| s.status = Some(Status::Active));

    let fail = |back: &mut Option<StreamWriter<_>>, e: Error| -> Error {
        let _ = tell(
            back,
            &Control::Failed {
                reason: e.to_string(),
            },
        );
        e
    };
    let gate = Gate::new(conns.data.len());
    // Who failed first: a data channel (its index) or main (`None`). What
    // fails after is the teardown's doing (a cut connection), and the first
    // failure is the one to report.
    let first_failure: Mutex<Option<Option<usize>>> = Mutex::new(None);
    let failed = |who: Option<usize>, e: &Error| {
        if !e.is_cancel() {
            if let Ok(mut f) = first_failure.lock() {
                f.get_or_insert(who);
            }
        }
        gate.abort();
        cancel.abort();
    };
    let verifying = std::thread::scope(|scope| {
        let mut handles = Vec::new();
        for (k, c) in conns.data.into_iter().enumerate() {
            let (gate, failed) = (&gate, &failed);
            handles.push(scope.spawn(move || {
                let r = receive(vm, c, k, gate, page_size);
                if let Err(e) = &r {
                    failed(Some(k), e);
                }
                r
            }));
        }
        let main_result = (|| -> Result<Verifying, Error> {
            let zero = vec![0u8; page_size as usize];
            let mut receiving = receiving;
            loop {
                let Some(item) = main.next()? else {
                    return Err(Error::peer("main channel ended before complete"));
                };
                match item.record {
                    Record::Pages(b) => apply(vm, &b, &zero, page_size)?,
                    Record::Epoch(e) => {
                        let n = receiving.epoch(e)?;
                        stats.update(|s| s.dirty_sync_count = u64::from(n));
                    }
                    Record::Device(d) => {
                        stats.update(|s| s.status = Some(Status::Device));
                        receiving.device(d)?;
                    }
                    Record::Other(raw) if raw.kind == proto::CONTROL => {
                        let msg = Control::decode(raw.body).map_err(Error::peer)?;
                        return receiving.control(msg);
                    }
                    Record::Info(_)
                    | Record::RamBlocks(_)
                    | Record::Names { .. }
                    | Record::Index(_) => {}
                    _ => {
                        return Err(Error::peer(format!(
                            "main channel: unexpected {:?} record at offset {}",
                            item.kind, item.offset
                        )))
                    }
                }
            }
        })();
        if let Err(e) = &main_result {
            failed(None, e);
        }
        let channels: Vec<Result<(), Error>> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::internal("a channel thread panicked")))
            })
            .collect();
        let first = first_failure.lock().ok().and_then(|f| *f);
        let mut channel_errors = channels
            .into_iter()
            .enumerate()
            .filter_map(|(k, r)| r.err().map(|e| (k, e)));
        match (main_result, first) {
            (Err(e), Some(None)) => Err(e),
            (main_result, Some(Some(k))) => Err(channel_errors
                .find(|(i, _)| *i == k)
                .map(|(_, e)| e)
                .or(main_result.err())
                .unwrap_or_else(|| Error::internal("a channel failed without an error"))),
            // Nothing failed of its own: cancelled, or done.
            (Err(e), None) => Err(e),
            (Ok(v), _) => match channel_errors.next() {
                Some((_, e)) => Err(e),
                None => Ok(v),
            },
        }
    })
    .map_err(|e| fail(&mut back, e))?;

    // Load and verify.
    let check = (|| -> Result<(AwaitGo, Control), Error> {
        let mut loaded = BTreeMap::new();
        {
            let mut reg = vm
                .devices
                .lock()
                .map_err(|_| Error::internal("device lock"))?;
            for d in verifying.devices() {
                let dev = reg
                    .get_mut(&d.name)
                    .ok_or_else(|| Error::peer(format!("device {} is unknown here", d.name)))?;
                dev.load(d.version, &d.value).map_err(|e| {
                    Error::vm(format!(
                        "loading device {} ({} v{}): {e}",
                        d.name, d.type_name, d.version
                    ))
                })?;
                // Saved back, the state must be what the source saved; a
                // state loaded through a transform from an older version
                // saves as the newer one, so there the received value is
                // what the digest covers.
                let digest = if d.version == dev.version() {
                    let again = dev
                        .save()
                        .map_err(|e| Error::vm(format!("saving device {} back: {e}", d.name)))?;
                    device_digest(&again)
                } else {
                    device_digest(&d.value)
                };
                loaded.insert(d.name.clone(), digest);
            }
        }
        verifying.verify(&loaded, &memory_digests(vm)?)
    })();
    let (await_go, ready) = check.map_err(|e| fail(&mut back, e))?;
    tell(&mut back, &ready)?;
    let go = if one_way {
        None
    } else {
        Some(read_control(&mut main)?)
    };
    let done = await_go.answer(go)?;
    vm.vcpus
        .resume()
        .map_err(|e| fail(&mut back, Error::vm(e)))?;
    // The source ends its stream right after `go`: read to that end (so the
    // source's last write lands), then answer.
    while let Ok(Some(item)) = main.next() {
        if matches!(item.record, Record::End(_)) {
            break;
        }
    }
    tell(&mut back, &done)?;
    if let Some(back) = back {
        back.finish()?;
    }
    Ok(())
}
