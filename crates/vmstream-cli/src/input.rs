//! Opening inputs: files or stdin, in vmstream or QEMU format. QEMU input
//! becomes events in one place ([`events`]), which every command reads: those
//! that want QEMU's events take them directly, those that read vmstream
//! records get the records the events are framed into, in this process
//! ([`each_record`]). vmstream files can also be opened for seeking
//! ([`seekable`]), for commands that need one device or one RAM range.

use std::cell::RefCell;
use std::fs::File;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use anyhow::{Context, Result};
use vmstream::header::{FEATURE_QEMU_FRAMING, MAGIC};
use vmstream::read::Event as DecodedEvent;
use vmstream::{
    Decoder, DeviceState, Header, Item, Limits, SeekReader, SliceReader, StreamReader,
    WriterOptions,
};
use vmstream_qemu::{
    Compactor, ConvertOptions, Event, MultifdSigns, Sink, Summary, VmstreamSink, VmstreamSource,
};

use crate::aligned::AlignedReader;
use crate::mapped::Mapped;
use crate::progress::{self, ProgressReader};

/// What every command needs to open its inputs.
#[derive(Debug, Clone)]
pub(crate) struct Opts {
    pub(crate) limits: Limits,
    /// A device description for QEMU streams without one (`--vmdesc`).
    pub(crate) vmdesc: Option<PathBuf>,
    /// The multifd channels of the QEMU main channel read (`--channel`).
    pub(crate) channels: Vec<PathBuf>,
    /// The guest architecture of QEMU streams that do not say it (`--arch`).
    pub(crate) arch: Option<vmstream::Arch>,
}

impl Opts {
    /// Conversion options for the QEMU stream at `path`: the vmdesc read ahead
    /// from the file's own trailer when it is seekable, else from `--vmdesc`.
    pub(crate) fn convert_options(&self, path: &Path, compact: bool) -> Result<ConvertOptions> {
        let mut opts = ConvertOptions {
            limits: self.limits,
            writer: WriterOptions::default(),
            compact,
            arch: self.arch,
            ..ConvertOptions::default()
        };
        let mut file = None;
        if path.as_os_str() != "-" {
            let mut f =
                File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
            if f.metadata()?.is_file() {
                if let Some(json) = vmstream_qemu::read_trailer(&mut f)? {
                    opts.vmdesc = Some((json, true));
                }
                file = Some(f);
            }
        }
        if opts.vmdesc.is_none() {
            if let Some(twin) = &self.vmdesc {
                let data = std::fs::read(twin)
                    .with_context(|| format!("cannot read {}", twin.display()))?;
                let json = vmstream_qemu::vmdesc_from(&data)
                    .with_context(|| twin.display().to_string())?;
                opts.vmdesc = Some((json, false));
            }
        }
        // A file whose configuration and description leave the architecture
        // open (Arm `virt`) is read up to its vCPU section, which decides. A
        // stream that fails to read on the way fails again, with its context,
        // where the command reads it.
        if let (None, Some(f)) = (opts.arch, file.as_mut()) {
            opts.arch = vmstream_qemu::detect_arch(f, &opts).ok().flatten();
        }
        Ok(opts)
    }
}

/// Bookkeeping for a RAM block of `size` bytes: `entries` values of `T`,
/// charged against `budget` (what is left of `Limits::max_alloc`), so a hostile
/// block list cannot make a command allocate terabytes.
pub(crate) fn page_table<T: Clone + Default>(
    budget: &mut u64,
    name: &str,
    size: u64,
    entries: u64,
) -> Result<Vec<T>> {
    let bytes = entries.saturating_mul(std::mem::size_of::<T>() as u64);
    *budget = budget.checked_sub(bytes).with_context(|| {
        format!(
            "RAM block {name:?} of {size} bytes: tracking its pages needs more than Limits::max_alloc (--max-alloc-mib)"
        )
    })?;
    Ok(vec![T::default(); usize::try_from(entries)?])
}

/// Input formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Vmstream,
    Qemu,
}

impl Format {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Format::Vmstream => "vmstream",
            Format::Qemu => "qemu",
        }
    }
}

pub(crate) type Input = Box<dyn BufRead + Send>;

/// Opens `path` (`-` = stdin) with a progress bar, and detects its format from
/// the first bytes.
pub(crate) fn open(path: &Path) -> Result<(Format, Input)> {
    let (raw, total): (Box<dyn Read + Send>, Option<u64>) = if path.as_os_str() == "-" {
        (Box::new(std::io::stdin()), None)
    } else {
        let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let len = f.metadata().ok().map(|m| m.len());
        (Box::new(f), len)
    };
    let what = path.display().to_string();
    let mut input: Input = Box::new(AlignedReader::with_capacity(
        1 << 20,
        ProgressReader::new(raw, total, &what),
    ));
    let prefix = input
        .fill_buf()
        .with_context(|| format!("cannot read {what}"))?;
    let format = if prefix.starts_with(&vmstream_qemu::MAGIC) {
        Format::Qemu
    } else {
        Format::Vmstream
    };
    Ok((format, input))
}

/// What a whole-stream read of records learned besides the records.
pub(crate) struct RecordsRead {
    pub(crate) format: Format,
    /// The vmstream header (of the stream as converted, for QEMU input).
    pub(crate) header: Header,
    /// Records read.
    pub(crate) records: u64,
    /// Bytes of vmstream read, up to and with the `end` record.
    pub(crate) bytes: u64,
    /// Whether input follows the `end` record.
    pub(crate) trailing: bool,
}

/// A record consumer: gets the stream header and every record in order.
pub(crate) type OnRecord<'f> = dyn FnMut(&Header, Item<'_>) -> Result<()> + 'f;

/// Reads every record of `path` into `f`. A QEMU stream is read as the
/// vmstream records `convert` would write for it, produced in this process
/// from the QEMU reader's events ([`events`]) and handed to `f` as they are
/// framed.
pub(crate) fn each_record(path: &Path, opts: &Opts, f: &mut OnRecord<'_>) -> Result<RecordsRead> {
    read_records(path, opts, false, f)
}

/// Like [`each_record`], for commands that want the final memory image:
/// streams from QEMU are compacted on the way, so XBZRLE and compressed pages
/// arrive decoded and re-sent pages only once.
pub(crate) fn each_image_record(
    path: &Path,
    opts: &Opts,
    f: &mut OnRecord<'_>,
) -> Result<RecordsRead> {
    read_records(path, opts, true, f)
}

fn read_records(
    path: &Path,
    opts: &Opts,
    image: bool,
    f: &mut OnRecord<'_>,
) -> Result<RecordsRead> {
    let what = || path.display().to_string();
    if let Some(map) = mapped_vmstream(path, image) {
        // in place: the records borrow the page cache through the mapping
        let bar = progress::bar(Some(map.bytes().len() as u64), &what());
        let mut r = SliceReader::new(map.bytes(), opts.limits)
            .with_context(|| format!("{}: cannot read the stream header", path.display()))?;
        let header = r.state().header().clone();
        while let Some(item) = r.next().with_context(what)? {
            f(&header, item).with_context(what)?;
            let at = r.state().offset();
            map.passed(at);
            if let Some(bar) = &bar {
                bar.set_position(at);
            }
        }
        if let Some(bar) = &bar {
            bar.finish_and_clear();
        }
        return Ok(RecordsRead {
            format: Format::Vmstream,
            header,
            records: r.state().records(),
            bytes: r.state().offset(),
            trailing: !r.trailing().is_empty(),
        });
    }
    let (format, mut input) = open(path)?;
    let framed = format == Format::Vmstream && image && is_qemu_framed(&mut input);
    if format == Format::Vmstream && !framed {
        let mut r = reader(input, path, opts)?;
        let header = r.header().clone();
        while let Some(item) = r.next().with_context(what)? {
            f(&header, item).with_context(what)?;
        }
        let trailing = !r.at_eof().with_context(what)?;
        return Ok(RecordsRead {
            format,
            header,
            records: r.state().records(),
            bytes: r.state().offset(),
            trailing,
        });
    }
    let source = events(format, input, path, opts, image)?;
    let mut pump = Pump {
        buf: Shared::default(),
        decoder: Decoder::of_own_frames(opts.limits),
        header: None,
        f,
        failed: None,
    };
    let mut sink = VmstreamSink::new(pump.buf.clone(), WriterOptions::default())
        .with_page_size(source.page_size() as u32);
    let mut tee = Tee {
        sink: &mut sink,
        pump: &mut pump,
    };
    let ran = source.run(&mut tee).map(drop);
    let ran = ran.and_then(|()| sink.finish().map(drop));
    let ran = ran.and_then(|()| pump.drain());
    if let Some(e) = pump.failed.take() {
        return Err(e.context(what()));
    }
    ran.map_err(|e| anyhow::Error::new(QemuStreamError(e)).context(what()))?;
    pump.decoder.finish().with_context(what)?;
    let state = pump.decoder.state().context("no stream header")?;
    Ok(RecordsRead {
        format,
        header: state.header().clone(),
        records: state.records(),
        bytes: state.offset(),
        trailing: false,
    })
}

/// Whether `path` is a regular file holding a vmstream stream, which
/// [`each_record`] reads in place.
pub(crate) fn is_vmstream_file(path: &Path) -> bool {
    mapped_vmstream(path, false).is_some()
}

/// `path` mapped, when it is a regular file holding a vmstream stream that
/// is read as it is (not one converted from QEMU that `image` wants
/// compacted).
fn mapped_vmstream(path: &Path, image: bool) -> Option<Mapped> {
    if path.as_os_str() == "-" {
        return None;
    }
    let map = Mapped::open(&File::open(path).ok()?)?;
    let b = map.bytes();
    let framed = b
        .get(24..32)
        .and_then(|b| b.try_into().ok())
        .is_some_and(|b| u64::from_le_bytes(b) & FEATURE_QEMU_FRAMING != 0);
    (b.starts_with(&MAGIC) && !(image && framed)).then_some(map)
}

/// Where QEMU events come from: a QEMU stream, or a vmstream stream converted
/// from one. The one producer of [`vmstream_qemu::Event`]s for every command,
/// compacted on the way when asked.
pub(crate) struct Events {
    source: Source,
    compact: bool,
    copts: ConvertOptions,
    /// The multifd channels of a QEMU main channel (`--channel`).
    channels: Vec<PathBuf>,
    /// Refuse a main channel whose pages travel on channels not given.
    need_image: bool,
}

enum Source {
    Qemu(Input),
    /// A mapped-ram file, read through a seekable reader so its holes are
    /// seeked over.
    QemuFile(std::io::BufReader<ProgressReader<File>>),
    Converted(Box<VmstreamSource<Input>>),
}

/// The events of an input opened with [`open`]: `format` says what it holds;
/// `compact` folds re-sent pages into the final image ([`vmstream_qemu::Compactor`]).
pub(crate) fn events(
    format: Format,
    input: Input,
    path: &Path,
    opts: &Opts,
    compact: bool,
) -> Result<Events> {
    let what = || path.display().to_string();
    Ok(match format {
        Format::Qemu => Events {
            copts: opts.convert_options(path, compact)?,
            source: match mapped_ram_file(path, input)? {
                Ok(file) => Source::QemuFile(file),
                Err(input) => Source::Qemu(input),
            },
            compact,
            channels: opts.channels.clone(),
            need_image: compact,
        },
        Format::Vmstream => {
            let mut copts = opts.convert_options(Path::new("-"), compact)?;
            copts.vmdesc = None;
            Events {
                source: Source::Converted(Box::new(
                    VmstreamSource::new(input, opts.limits).with_context(what)?,
                )),
                copts,
                compact,
                channels: opts.channels.clone(),
                need_image: compact,
            }
        }
    })
}

/// A seekable reader of `path` when it is a regular file holding a mapped-ram
/// stream (the capability is in the configuration section, at its start);
/// otherwise the input back.
fn mapped_ram_file(
    path: &Path,
    mut input: Input,
) -> Result<std::result::Result<std::io::BufReader<ProgressReader<File>>, Input>> {
    let mapped = path.as_os_str() != "-"
        && input
            .fill_buf()
            .is_ok_and(|p| vmstream_qemu::mapped_ram::in_configuration(&p[..p.len().min(4096)]));
    if !mapped {
        return Ok(Err(input));
    }
    let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Ok(Err(input));
    }
    let what = path.display().to_string();
    let progress = ProgressReader::new(f, Some(meta.len()), &what);
    Ok(Ok(std::io::BufReader::with_capacity(1 << 20, progress)))
}

impl Events {
    /// The target page size of the events (4096 for a QEMU stream, whose
    /// configuration section may say otherwise).
    pub(crate) fn page_size(&self) -> u64 {
        match &self.source {
            Source::Qemu(_) | Source::QemuFile(_) => 4096,
            Source::Converted(s) => s.page_size(),
        }
    }

    /// For commands that need the memory image: a main channel whose pages
    /// travel on multifd channels not given is refused (as it is when compacting).
    pub(crate) fn need_image(mut self) -> Events {
        self.need_image = true;
        self
    }

    /// Hands every event to `sink`; for a QEMU stream, what the reader learned.
    /// With `--channel`, a QEMU main channel is read with its multifd channels
    /// as one migration. A main channel whose pages travel on channels not
    /// given is refused when the image is needed, else noted on standard error.
    pub(crate) fn run(self, sink: &mut dyn Sink) -> vmstream::Result<Option<Summary>> {
        let ps = self.page_size();
        let mut copts = self.copts;
        copts.compact = false;
        let mut compactor;
        let inner: &mut dyn Sink = if self.compact {
            compactor = Compactor::new(sink, ps, copts.limits.max_alloc);
            &mut compactor
        } else {
            sink
        };
        let mut guard = Guard {
            inner,
            signs: MultifdSigns::default(),
            refuse: self.need_image,
            page_size: ps,
        };
        let channels = self.channels;
        let summary = match self.source {
            Source::Qemu(input) if !channels.is_empty() => {
                let mut files = Vec::new();
                for c in &channels {
                    let f = File::open(c).map_err(|e| {
                        vmstream::Error::new(
                            vmstream::ErrorKind::Usage,
                            format!("cannot open multifd channel {}: {e}", c.display()),
                        )
                    })?;
                    files.push(std::io::BufReader::with_capacity(1 << 20, f));
                }
                Some(vmstream_qemu::read_channel_set(input, files, &mut guard, &copts)?.0)
            }
            _ if !channels.is_empty() => {
                return Err(vmstream::Error::new(
                    vmstream::ErrorKind::Usage,
                    "--channel goes with the QEMU main channel of a multifd migration (a stream converted from a channel set holds its channels)",
                ))
            }
            Source::Qemu(input) => Some(vmstream_qemu::read_qemu(input, &mut guard, &copts)?),
            Source::QemuFile(file) => {
                Some(vmstream_qemu::read_qemu_seekable(file, &mut guard, &copts)?)
            }
            Source::Converted(source) => {
                source.run(&mut guard)?;
                None
            }
        };
        if let Some(why) = guard.signs.pages_elsewhere() {
            eprintln!("vmstream: note: {why}; give each channel with --channel FILE");
        }
        Ok(summary)
    }
}

/// Watches the events for a main channel whose pages travel on multifd
/// channels not given and, when `refuse`, stops there (at its first
/// MULTIFD_FLUSH record, or at EOF for QEMU 8.0 and older, whose main
/// channel shows it only by the pages it lacks).
struct Guard<'s> {
    inner: &'s mut dyn Sink,
    signs: MultifdSigns,
    refuse: bool,
    page_size: u64,
}

impl Sink for Guard<'_> {
    fn event(&mut self, ev: &Event<'_>) -> vmstream::Result<()> {
        self.signs.observe(ev, self.page_size);
        let check = match ev {
            Event::RamRecord { .. } => self.signs.flush_records > 0,
            Event::Eof => true,
            _ => false,
        };
        if self.refuse && check {
            if let Some(why) = self.signs.pages_elsewhere() {
                return Err(vmstream::Error::new(
                    vmstream::ErrorKind::Unsupported,
                    format!("the memory image is not in this stream alone: {why}; give each channel with --channel FILE"),
                ));
            }
        }
        self.inner.event(ev)
    }
}

/// A QEMU stream's error, as the reader reported it.
#[derive(Debug)]
pub(crate) struct QemuStreamError(pub(crate) vmstream::Error);

impl std::fmt::Display for QemuStreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QEMU stream: {}", self.0)
    }
}

impl std::error::Error for QemuStreamError {}

/// The bytes a [`VmstreamSink`] wrote and the [`Pump`] has not parsed yet.
#[derive(Clone, Default)]
struct Shared(Rc<RefCell<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Parses the records an in-process [`VmstreamSink`] framed, after each
/// event, and hands them to the consumer: whole records, parsed in place.
struct Pump<'a, 'f> {
    buf: Shared,
    decoder: Decoder,
    header: Option<Header>,
    f: &'a mut OnRecord<'f>,
    /// The consumer's own error, kept whole (the reader gets a copy of its text).
    failed: Option<anyhow::Error>,
}

impl Pump<'_, '_> {
    fn drain(&mut self) -> vmstream::Result<()> {
        let mut buf = self.buf.0.borrow_mut();
        let mut pos = 0;
        while pos < buf.len() {
            let (n, event) = self.decoder.feed(&buf[pos..])?;
            pos += n;
            match event {
                Some(DecodedEvent::Header(h)) => self.header = Some(h),
                Some(DecodedEvent::Record(item)) => {
                    let Some(header) = &self.header else {
                        return Err(vmstream::Error::new(
                            vmstream::ErrorKind::Usage,
                            "a record before the header",
                        ));
                    };
                    if let Err(e) = (self.f)(header, item) {
                        let msg = format!("{e:#}");
                        self.failed = Some(e);
                        return Err(vmstream::Error::new(vmstream::ErrorKind::Io, msg));
                    }
                }
                Some(_) => {}
                None if n == 0 => break,
                None => {}
            }
        }
        buf.drain(..pos);
        Ok(())
    }
}

/// Hands each event to the sink, then the records it framed to the pump.
struct Tee<'s, 'a, 'f> {
    sink: &'s mut VmstreamSink<Shared>,
    pump: &'s mut Pump<'a, 'f>,
}

impl Sink for Tee<'_, '_, '_> {
    fn event(&mut self, event: &Event<'_>) -> vmstream::Result<()> {
        self.sink.event(event)?;
        self.pump.drain()
    }
}

/// A record reader over an input opened with [`open`] that holds vmstream.
pub(crate) fn reader(input: Input, path: &Path, opts: &Opts) -> Result<StreamReader<Input>> {
    StreamReader::new(input, opts.limits)
        .with_context(|| format!("{}: cannot read the stream header", path.display()))
}

/// A seeking reader over `path` when it is a regular file holding a vmstream
/// stream; `None` for `-`, pipes, devices and QEMU streams, which commands
/// read as streams. A file whose tail or index cannot be used is read as a
/// stream too, after a warning that says why.
pub(crate) fn seekable(path: &Path, opts: &Opts) -> Option<SeekReader<File>> {
    if path.as_os_str() == "-" {
        return None;
    }
    let mut f = File::open(path).ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut magic = [0u8; MAGIC.len()];
    f.read_exact(&mut magic).ok()?;
    if magic != MAGIC {
        return None;
    }
    match SeekReader::open(f, opts.limits) {
        Ok(r) => Some(r),
        Err(e) => {
            seek_failed(path, &e.into());
            None
        }
    }
}

/// Says on stderr why seeking in `path` failed, before the caller reads the
/// whole stream instead.
pub(crate) fn seek_failed(path: &Path, err: &anyhow::Error) {
    eprintln!(
        "vmstream: warning: {}: cannot seek ({err:#}); reading the whole stream",
        path.display()
    );
}

/// Whether `want` (a `dump --device` argument: `name` or `name:instance`)
/// may select a device of instance name `name`.
pub(crate) fn may_match_device(want: &str, name: &str) -> bool {
    want == name
        || want
            .strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(':'))
            .is_some_and(|id| id.parse::<u32>().is_ok())
}

/// The device records that `want` may select, read by seeking, in stream order.
pub(crate) fn seek_devices(
    r: &mut SeekReader<File>,
    want: &str,
) -> vmstream::Result<Vec<DeviceState>> {
    let offsets: Vec<u64> = r
        .devices()
        .filter(|e| may_match_device(want, &e.name))
        .map(|e| e.offset)
        .collect();
    offsets.into_iter().map(|at| r.device_at(at)).collect()
}

/// Whether a vmstream input carries QEMU framing (peeks at its header).
fn is_qemu_framed(input: &mut Input) -> bool {
    let Ok(prefix) = input.fill_buf() else {
        return false;
    };
    // optional feature flags: u64 LE at offset 24 of the header (docs/format.md §2)
    prefix
        .get(24..32)
        .and_then(|b| b.try_into().ok())
        .is_some_and(|b| u64::from_le_bytes(b) & FEATURE_QEMU_FRAMING != 0)
}
