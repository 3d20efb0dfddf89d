//! `vmstream relay send|receive`: carries a running QEMU's live migration
//! over vmstream channels. The sending side reads QEMU's stream as it
//! arrives, converts it to vmstream on the fly and spreads its page records
//! over the data channels (`vmstream_migrate::relay::Splitter`); the receiving
//! side puts the records back in order (`Merger`), converts them back to
//! QEMU's bytes and feeds the destination QEMU; QEMU's return path goes back
//! the other way on a return channel. Each exits 0 only once the destination
//! QEMU has loaded the whole stream; on any failure it shuts its QEMU
//! connection down, so the source QEMU fails its migration and runs on and the
//! destination QEMU never gets a whole stream to run.

use std::fs::File;
use std::io::{BufWriter, Cursor, Read, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use vmstream::{Header, Limits, StreamKind, StreamReader, StreamWriter, WriterOptions};
use vmstream_migrate::link::Link;
use vmstream_migrate::proto::{Control, CONTROL};
use vmstream_migrate::qmp::QmpServer;
use vmstream_migrate::relay::{carry_back, send_back, Merger, QueryMigrate, Splitter};
use vmstream_migrate::stats::{Stats, Status};
use vmstream_qemu::ConvertOptions;
use vmstream_transport::{
    accept_set, connect, connect_set, ChannelSet, Connection, Listener, MigrationAddress,
    MigrationChannel, MigrationId, ShutdownHandle, TlsClient, TlsServer,
};

use crate::args::{RelayArgs, RelayCommand, RelayReceiveArgs, RelaySendArgs};

mod multifd;

/// How long `receive` waits for the sending relay's channels.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long `send` waits for the source QEMU's multifd connections once its
/// first connection came, and for each connection's first bytes.
const QEMU_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// The first bytes of QEMU's main channel and of a multifd channel.
const QEMU_MAGIC: [u8; 4] = *b"QEVM";
const MULTIFD_MAGIC: [u8; 4] = 0x1122_3344u32.to_be_bytes();
/// How long `receive` waits, after the stream's last byte, for the
/// destination QEMU to load it and close its connection.
const LOAD_TIMEOUT: Duration = Duration::from_secs(60);

pub(crate) fn relay(args: &RelayArgs, limits: Limits) -> Result<ExitCode> {
    let stats = Arc::new(Stats::new());
    let (side, r) = match &args.command {
        RelayCommand::Send(a) => (
            "send",
            serve(a.qmp.as_deref(), &stats, || send(a, limits, &stats)),
        ),
        RelayCommand::Receive(a) => (
            "receive",
            serve(a.qmp.as_deref(), &stats, || receive(a, limits, &stats)),
        ),
    };
    match r {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("vmstream relay {side}: failed: {e:#}");
            Ok(ExitCode::from(1))
        }
    }
}

/// Runs `work` with a QMP control socket (if asked for) answering
/// `query-migrate` from `stats`, and records the outcome there.
fn serve(qmp: Option<&str>, stats: &Arc<Stats>, work: impl FnOnce() -> Result<()>) -> Result<()> {
    let server = match qmp {
        Some(addr) => {
            let path = addr
                .strip_prefix("unix:")
                .ok_or_else(|| anyhow!("--qmp {addr}: expected unix:PATH"))?;
            Some(
                QmpServer::bind(path, Arc::new(QueryMigrate::new(stats.clone(), 4096)))
                    .with_context(|| format!("--qmp {addr}"))?,
            )
        }
        None => None,
    };
    let start = Instant::now();
    stats.update(|s| s.status = Some(Status::Setup));
    let r = work();
    stats.update(|s| {
        s.total_time_ms = start.elapsed().as_millis() as u64;
        match &r {
            Ok(()) => s.status = Some(Status::Completed),
            Err(e) => {
                s.status = Some(Status::Failed);
                s.error = Some(format!("{e:#}"));
            }
        }
    });
    if let Some(s) = server {
        s.shutdown();
    }
    r
}

/// An address as given on the command line: a URI (`unix:PATH`,
/// `tcp:HOST:PORT`) or a channel's JSON.
fn address(text: &str, flag: &str) -> Result<MigrationAddress> {
    let addr = if text.trim_start().starts_with('{') {
        MigrationChannel::from_json_str(text).map(|c| c.addr)
    } else {
        MigrationAddress::from_uri(text)
    }
    .map_err(|e| anyhow!("{flag} {text}: {}", e.chain()))?;
    if addr.is_one_way() {
        bail!("{flag} {text}: expected a socket address (unix: or tcp:)");
    }
    Ok(addr)
}

/// Counts what a reader reads into `stats`' transferred bytes.
struct Counted<R>(R, Arc<AtomicU64>);

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.0.read(buf)?;
        self.1.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

fn send(a: &RelaySendArgs, limits: Limits, stats: &Stats) -> Result<()> {
    let to = address(&a.to, "--to")?;
    let tls = match &a.tls_creds {
        Some(dir) => {
            Some(TlsClient::load_dir(dir).map_err(|e| anyhow!("--tls-creds: {}", e.chain()))?)
        }
        None => None,
    };
    let rules = a.rules.as_deref().map(load_rules).transpose()?;
    if a.rules.is_some() && a.multifd_channels > 0 {
        bail!("--rules with --multifd-channels: not supported yet (the transform reads QEMU's main channel alone)");
    }
    // The source QEMU's stream: its connections to --from, or standard input
    // (QEMU's `exec:`); its return path goes back the main connection.
    let mut cut = Vec::new();
    let (input, back, channels): (Box<dyn Read + Send>, Box<dyn Write + Send>, _) = if a.from == "-"
    {
        if a.multifd_channels > 0 {
            bail!("--multifd-channels needs a socket --from: QEMU migrates with multifd over sockets only");
        }
        (
            Box::new(std::io::stdin()),
            Box::new(std::io::stdout()),
            Vec::new(),
        )
    } else {
        let from = address(&a.from, "--from")?;
        let l = Listener::bind(&from).map_err(|e| anyhow!("--from {}: {}", a.from, e.chain()))?;
        let (main, channels) =
            accept_qemu(&l, a.multifd_channels).with_context(|| format!("--from {}", a.from))?;
        let back = main
            .try_clone()
            .map_err(|e| anyhow!("--from {}: {}", a.from, e.chain()))?;
        cut.push(main.shutdown_handle());
        let channels: Vec<Box<dyn Read + Send>> = channels
            .into_iter()
            .map(|c| {
                cut.push(c.shutdown_handle());
                Box::new(Cursor::new(MULTIFD_MAGIC).chain(c)) as Box<dyn Read + Send>
            })
            .collect();
        (
            Box::new(Cursor::new(QEMU_MAGIC).chain(main)),
            Box::new(back),
            channels,
        )
    };
    let id = MigrationId::random().map_err(|e| anyhow!("{}", e.chain()))?;
    let mut set = connect_set(&to, a.data_channels + 1, id, tls.as_ref())
        .map_err(|e| anyhow!("--to {}: {}", a.to, e.chain()))?;
    let ret = set
        .data
        .pop()
        .ok_or_else(|| anyhow!("--to {}: no return channel", a.to))?;
    cut.push(ret.shutdown_handle());
    let r = relay_out(
        a,
        set,
        ret,
        (input, channels),
        back,
        rules.as_ref(),
        limits,
        stats,
    );
    if r.is_err() {
        // The clone of QEMU's socket would keep it open: shut it down, so the
        // source QEMU sees its migration fail.
        cut.iter().for_each(ShutdownHandle::shutdown);
    }
    r
}

/// The sending relay once connected: QEMU's stream out over the channel set,
/// its return path back from the return channel.
#[allow(clippy::too_many_arguments)]
fn relay_out(
    a: &RelaySendArgs,
    set: ChannelSet,
    ret: Connection,
    (input, channels): (Box<dyn Read + Send>, Vec<Box<dyn Read + Send>>),
    back: Box<dyn Write + Send>,
    rules: Option<&vmstream_compat::Registry>,
    limits: Limits,
    stats: &Stats,
) -> Result<()> {
    stats.update(|s| s.status = Some(Status::Active));
    let record: Option<Box<dyn Write + Send>> = match &a.record {
        Some(p) => Some(Box::new(BufWriter::with_capacity(
            1 << 20,
            File::create(p).with_context(|| format!("--record {}", p.display()))?,
        ))),
        None => None,
    };
    let links = |c: Connection| Box::new(c) as Box<dyn Link>;
    let carrier = std::thread::Builder::new()
        .name("relay-return-path".into())
        .spawn(move || carry_back(links(ret), back, limits))
        .context("a thread for the return path")?;
    let splitter = Splitter::new(
        links(set.main),
        set.data.into_iter().map(links).collect(),
        record,
        stats.counters.transferred.clone(),
    );
    let opts = ConvertOptions {
        limits,
        writer: WriterOptions::default().with_index(false),
        live: true,
        ..ConvertOptions::default()
    };
    let received = Arc::new(AtomicU64::new(0));
    let input = Counted(input, received.clone());
    let at = |e: vmstream::Error| {
        anyhow!(
            "at byte {} of the source QEMU's stream: {e}",
            received.load(Ordering::Relaxed)
        )
    };
    let splitter = match rules {
        None if channels.is_empty() => convert(input, splitter, &opts).map_err(at)?,
        None => convert_set(Box::new(input), channels, splitter, &opts).map_err(at)?,
        Some(reg) => {
            // Transformed QEMU bytes go through a pipe into the conversion.
            let (r, w) = std::io::pipe().context("a pipe for the transform")?;
            std::thread::scope(|s| -> Result<Splitter> {
                let w = BufWriter::with_capacity(1 << 20, w);
                let t = s.spawn(|| transform(input, w, reg, &opts));
                let converted = convert(r, splitter, &opts);
                let transformed = t.join().map_err(|_| anyhow!("the transform panicked"))?;
                transformed.map_err(at)?;
                converted.map_err(at)
            })?
        }
    };
    let main = splitter
        .finish()
        .context("sending to the receiving relay")?;
    // The receiving relay answers once the destination QEMU has it all and
    // has closed its return path.
    let mut answer = StreamReader::new(main, limits).context("the receiving relay's answer")?;
    loop {
        let item = answer
            .next()
            .context("the receiving relay's answer")?
            .ok_or_else(|| anyhow!("the receiving relay closed without an answer"))?;
        if let vmstream::Record::Other(raw) = item.record {
            if raw.kind == CONTROL {
                match Control::decode(raw.body).map_err(|e| anyhow!(e))? {
                    Control::Done => break,
                    Control::Failed { reason } => bail!("the receiving relay failed: {reason}"),
                    other => bail!("the receiving relay answered {}", other.name()),
                }
            }
        }
    }
    let carried = carrier
        .join()
        .map_err(|_| anyhow!("the return path's thread panicked"))?
        .map_err(|e| anyhow!("carrying the return path to the source QEMU: {e}"))?;
    if carried.messages > 0 {
        eprintln!(
            "vmstream relay send: return path: {} messages carried to the source QEMU",
            carried.messages
        );
    }
    Ok(())
}

fn receive(a: &RelayReceiveArgs, limits: Limits, stats: &Stats) -> Result<()> {
    let listen = address(&a.listen, "--listen")?;
    let to = address(&a.to, "--to")?;
    let tls = match &a.tls_creds {
        Some(dir) => {
            Some(TlsServer::load_dir(dir).map_err(|e| anyhow!("--tls-creds: {}", e.chain()))?)
        }
        None => None,
    };
    let rules = a.rules.as_deref().map(load_rules).transpose()?;
    let listener =
        Listener::bind(&listen).map_err(|e| anyhow!("--listen {}: {}", a.listen, e.chain()))?;
    let mut set = accept_set(&listener, tls.as_ref(), ACCEPT_TIMEOUT)
        .map_err(|e| anyhow!("--listen {}: {}", a.listen, e.chain()))?;
    drop(listener);
    let ret = set.data.pop().ok_or_else(|| {
        anyhow!(
            "--listen {}: the sending relay opened no return channel",
            a.listen
        )
    })?;
    stats.update(|s| s.status = Some(Status::Active));
    let qemu = connect(&to, None).map_err(|e| anyhow!("--to {}: {}", a.to, e.chain()))?;
    let cut = Arc::new(std::sync::Mutex::new(vec![qemu.shutdown_handle()]));
    // A multifd migration's channels: one more connection each, opened when
    // the stream says the channel joins.
    let open: vmstream_qemu::OpenChannel = {
        let (cut, text) = (cut.clone(), a.to.clone());
        Box::new(move |k| {
            let c = connect(&to, None).map_err(|e| {
                vmstream::Error::new(
                    vmstream::ErrorKind::Io,
                    format!("--to {text}: multifd channel {k}: {}", e.chain()),
                )
            })?;
            if let Ok(mut v) = cut.lock() {
                v.push(c.shutdown_handle());
            }
            Ok(Box::new(BufWriter::with_capacity(1 << 20, c)))
        })
    };
    let r = relay_in(set, ret, qemu, open, rules.as_ref(), limits, stats);
    if r.is_err() {
        // The return path's clone would keep the socket open: shut it down,
        // so the destination QEMU sees the stream break.
        if let Ok(v) = cut.lock() {
            v.iter().for_each(ShutdownHandle::shutdown);
        }
    }
    r
}

/// The receiving relay once connected: the channel set merged and converted
/// back into the destination QEMU, its return path sent back, and the answer.
fn relay_in(
    set: ChannelSet,
    ret: Connection,
    qemu: Connection,
    open: vmstream_qemu::OpenChannel,
    rules: Option<&vmstream_compat::Registry>,
    limits: Limits,
    stats: &Stats,
) -> Result<()> {
    let links = |c: Connection| Box::new(c) as Box<dyn Link>;
    let rp = qemu
        .try_clone()
        .map_err(|e| anyhow!("the destination QEMU: {}", e.chain()))?;
    let (rp_tx, rp_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("relay-return-path".into())
        .spawn(move || rp_tx.send(send_back(rp, links(ret))))
        .context("a thread for the return path")?;
    let main_peer = set.main.peer().to_owned();
    let mut merger = Merger::new(
        links(set.main),
        set.data.into_iter().map(links).collect(),
        limits,
        stats.counters.transferred.clone(),
    );
    let opts = ConvertOptions {
        limits,
        ..ConvertOptions::default()
    };
    // QemuWriter writes a few bytes at a time: gather them into large writes.
    let mut out = BufWriter::with_capacity(1 << 20, qemu);
    let result = match rules {
        None => {
            vmstream_qemu::vmstream_to_qemu_channels(&mut merger, &mut out, open, &opts).map(|_| ())
        }
        Some(reg) => match std::io::pipe() {
            // QEMU bytes converted back go through a pipe into the transform.
            Ok((r, w)) => std::thread::scope(|s| {
                let w = BufWriter::with_capacity(1 << 20, w);
                drop(open);
                let t = s.spawn(|| {
                    let refuse: vmstream_qemu::OpenChannel = Box::new(|_| {
                        Err(vmstream::Error::new(
                            vmstream::ErrorKind::Unsupported,
                            "--rules with a multifd migration: not supported yet (the transform reads QEMU's main channel alone)",
                        ))
                    });
                    vmstream_qemu::vmstream_to_qemu_channels(&mut merger, w, refuse, &opts)
                        .map(|_| ())
                });
                let transformed = transform(r, &mut out, reg, &opts);
                let converted = t.join().unwrap_or_else(|_| {
                    Err(vmstream::Error::new(
                        vmstream::ErrorKind::Malformed,
                        "the conversion panicked",
                    ))
                });
                converted.and(transformed)
            }),
            Err(e) => Err(vmstream::Error::from(e)),
        },
    };
    let result = result
        .map_err(|e| anyhow!("relaying to the destination QEMU: {e}"))
        .and_then(|()| {
            let qemu = out
                .into_inner()
                .map_err(|e| anyhow!("writing to the destination QEMU: {}", e.error()))?;
            qemu.finish()
                .map_err(|e| anyhow!("closing the destination QEMU's connection: {}", e.chain()))
        })
        .and_then(|()| {
            // The destination QEMU closes its connection once it has loaded
            // the stream, after a SHUT on its return path if it opened one.
            let carried = rp_rx
                .recv_timeout(LOAD_TIMEOUT)
                .map_err(|_| {
                    anyhow!(
                        "the destination QEMU did not close its connection within {} s of the stream's end",
                        LOAD_TIMEOUT.as_secs()
                    )
                })?
                .map_err(|e| anyhow!("{e}"))?;
            match carried.shut {
                Some(v) if v != 0 => bail!(
                    "the destination QEMU failed to load the stream (its return path's SHUT says {v})"
                ),
                _ => Ok(()),
            }
        });
    // Tell the sending relay how it went, on main's way back.
    let answer = match &result {
        Ok(()) => Control::Done,
        Err(e) => Control::Failed {
            reason: format!("{e:#}"),
        },
    };
    let main = merger.into_main();
    let header = Header::new(StreamKind::Live, vmstream::Arch::Unknown, 4096);
    let told = StreamWriter::new(main, header, WriterOptions::default().with_index(false))
        .and_then(|mut w| {
            w.write_raw_record(CONTROL, true, &answer.encode())?;
            w.finish().map(|_| ())
        });
    result?;
    told.map_err(|e| anyhow!("answering the sending relay at {main_peer}: {e}"))
}

/// Converts the source QEMU's stream into `out`.
fn convert<R: Read, W: Write>(input: R, out: W, opts: &ConvertOptions) -> vmstream::Result<W> {
    let mut sink = vmstream_qemu::VmstreamSink::new(out, opts.writer);
    vmstream_qemu::read_qemu(input, &mut sink, opts)?;
    sink.finish()
}

/// Converts the source QEMU's multifd migration (main channel and multifd
/// connections) into `out`, each connection read as its bytes arrive.
fn convert_set<W: Write>(
    main: Box<dyn Read + Send>,
    channels: Vec<Box<dyn Read + Send>>,
    out: W,
    opts: &ConvertOptions,
) -> vmstream::Result<W> {
    let mut inputs = vec![("the source QEMU's main channel".to_owned(), main)];
    for (i, c) in channels.into_iter().enumerate() {
        inputs.push((format!("the source QEMU's multifd connection {}", i + 1), c));
    }
    let cap = usize::try_from(opts.limits.max_alloc).unwrap_or(usize::MAX);
    let mut ports = multifd::ports(inputs, cap)?;
    let main = ports.remove(0);
    let mut sink = vmstream_qemu::VmstreamSink::new(out, opts.writer);
    vmstream_qemu::read_live_channel_set(main, ports, &mut sink, opts)?;
    sink.finish()
}

/// Takes the source QEMU's connections on `l`: its main channel and,
/// with multifd, its `multifd` channels, told apart by their first bytes.
fn accept_qemu(l: &Listener, multifd: u8) -> Result<(Connection, Vec<Connection>)> {
    let mut main = None;
    let mut channels = Vec::new();
    // the first connection whenever QEMU migrates; the others right after it
    let first = l.accept(None).map_err(|e| anyhow!("{}", e.chain()))?;
    let watchdog = {
        let stop = l.shutdown_handle();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            if rx.recv_timeout(QEMU_CONNECT_TIMEOUT)
                == Err(std::sync::mpsc::RecvTimeoutError::Timeout)
            {
                stop.shutdown();
            }
        });
        tx
    };
    let mut next = Some(first);
    for n in 0..=usize::from(multifd) {
        let c = match next.take() {
            Some(c) => c,
            None => l.accept(None).map_err(|e| {
                anyhow!(
                    "the source QEMU opened {n} of the {} connections of a migration with {multifd} multifd channels within {} s: {}",
                    usize::from(multifd) + 1,
                    QEMU_CONNECT_TIMEOUT.as_secs(),
                    e.chain()
                )
            })?,
        };
        let mut c = c;
        let mut magic = [0u8; 4];
        let what = || format!("the first bytes of the source QEMU's connection {}", n + 1);
        c.set_timeouts(Some(QEMU_CONNECT_TIMEOUT), None)
            .map_err(|e| anyhow!("{}: {}", what(), e.chain()))?;
        c.read_exact(&mut magic).with_context(what)?;
        c.set_timeouts(None, None)
            .map_err(|e| anyhow!("{}: {}", what(), e.chain()))?;
        match magic {
            QEMU_MAGIC if main.is_none() => main = Some(c),
            MULTIFD_MAGIC if multifd == 0 => bail!(
                "the source QEMU opened a multifd channel: it migrates with multifd, so give --multifd-channels (its multifd-channels parameter)"
            ),
            MULTIFD_MAGIC => channels.push(c),
            _ => bail!(
                "the source QEMU's connection {} starts with {magic:02x?}: neither a main channel (QEVM) nor a multifd channel, or a second main channel",
                n + 1
            ),
        }
    }
    drop(watchdog);
    let main = main.ok_or_else(|| anyhow!("the source QEMU opened no main channel"))?;
    Ok((main, channels))
}

/// A rules file, parsed.
fn load_rules(path: &std::path::Path) -> Result<vmstream_compat::Registry> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("--rules {}", path.display()))?;
    Ok(vmstream_compat::rules::parse(
        &text,
        &path.display().to_string(),
    )?)
}

/// Applies `reg` to the device sections of a QEMU stream, every device to the
/// newest version its steps reach.
fn transform<R: Read, W: Write>(
    input: R,
    out: W,
    reg: &vmstream_compat::Registry,
    opts: &ConvertOptions,
) -> vmstream::Result<()> {
    let targets = vmstream_compat::stream::Targets::default();
    let (_, notes) = vmstream_compat::stream::transform_qemu(input, out, reg, &targets, opts)?;
    for n in notes {
        eprintln!("vmstream relay: transformed {n}");
    }
    Ok(())
}
