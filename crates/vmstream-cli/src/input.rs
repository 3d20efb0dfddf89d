//! Opening inputs: files or stdin, in vmstream or QEMU format. QEMU streams are
//! converted to vmstream on the fly, in a thread feeding a pipe, so every
//! command reads one format. vmstream files can also be opened for seeking
//! ([`seekable`]), for commands that need one device or one RAM range.

use std::fs::File;
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use vmstream::header::{FEATURE_QEMU_FRAMING, MAGIC};
use vmstream::{DeviceState, Limits, SeekReader, StreamReader, WriterOptions};
use vmstream_qemu::ConvertOptions;

use crate::aligned::AlignedReader;
use crate::progress::ProgressReader;

/// What every command needs to open its inputs.
#[derive(Debug, Clone)]
pub(crate) struct Opts {
    pub(crate) limits: Limits,
    /// A device description for QEMU streams without one (`--vmdesc`).
    pub(crate) vmdesc: Option<PathBuf>,
}

impl Opts {
    /// Conversion options for the QEMU stream at `path`: the vmdesc read ahead
    /// from the file's own trailer when it is seekable, else from `--vmdesc`.
    pub(crate) fn convert_options(&self, path: &Path, compact: bool) -> Result<ConvertOptions> {
        let mut opts = ConvertOptions {
            limits: self.limits,
            writer: WriterOptions::default(),
            compact,
            vmdesc: None,
        };
        if path.as_os_str() != "-" {
            let mut f =
                File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
            if f.metadata()?.is_file() {
                if let Some(json) = vmstream_qemu::read_trailer(&mut f)? {
                    opts.vmdesc = Some((json, true));
                }
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

/// A vmstream record reader over any input; QEMU streams are converted on the fly.
pub(crate) fn records(path: &Path, opts: &Opts) -> Result<(Format, StreamReader<Input>)> {
    open_records(path, opts, false)
}

/// Like [`records`], for commands that want the final memory image: streams
/// from QEMU are compacted on the way, so XBZRLE and compressed pages arrive
/// decoded and re-sent pages only once.
pub(crate) fn image_records(path: &Path, opts: &Opts) -> Result<(Format, StreamReader<Input>)> {
    open_records(path, opts, true)
}

fn open_records(path: &Path, opts: &Opts, image: bool) -> Result<(Format, StreamReader<Input>)> {
    let (format, mut input) = open(path)?;
    input = match format {
        Format::Qemu => {
            let copts = opts.convert_options(path, image)?;
            convert_in_thread(input, move |i, o| {
                vmstream_qemu::qemu_to_vmstream(i, o, &copts).map(drop)
            })?
        }
        Format::Vmstream if image && is_qemu_framed(&mut input) => {
            let copts = opts.convert_options(path, true)?;
            convert_in_thread(input, move |i, o| {
                vmstream_qemu::vmstream_to_vmstream(i, o, &copts).map(drop)
            })?
        }
        Format::Vmstream => input,
    };
    Ok((format, reader(input, path, opts)?))
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

type Job = Box<dyn FnOnce(Input, std::io::PipeWriter) -> vmstream::Result<()> + Send>;

/// Runs `job(input, pipe)` in a thread and returns the pipe's reading end. The
/// job's error, if any, is what the reader gets at the end of the pipe.
fn convert_in_thread(
    input: Input,
    job: impl FnOnce(Input, std::io::PipeWriter) -> vmstream::Result<()> + Send + 'static,
) -> Result<Input> {
    let (r, w) = std::io::pipe().context("cannot create a pipe")?;
    let job: Job = Box::new(job);
    let handle = std::thread::spawn(move || job(input, w));
    Ok(Box::new(AlignedReader::with_capacity(
        1 << 20,
        Converted {
            pipe: r,
            handle: Some(handle),
        },
    )))
}

struct Converted {
    pipe: std::io::PipeReader,
    handle: Option<JoinHandle<vmstream::Result<()>>>,
}

impl Read for Converted {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.pipe.read(buf)?;
        if n == 0 && !buf.is_empty() {
            if let Some(h) = self.handle.take() {
                match h.join() {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(std::io::Error::other(ConversionError(e))),
                    Err(_) => return Err(std::io::Error::other("the conversion thread panicked")),
                }
            }
        }
        Ok(n)
    }
}

/// A conversion error passed through the pipe reader.
#[derive(Debug)]
pub(crate) struct ConversionError(pub(crate) vmstream::Error);

impl std::fmt::Display for ConversionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::error::Error for ConversionError {}
