//! QEMU's migration stream ("QEVM" version 3, as written by QEMU 7.2 to 10.x):
//! a reader and a writer that are exact inverses, and a lossless mapping to and
//! from the vmstream format.
//!
//! ```text
//! QEVM bytes ── QemuReader ──┐                ┌── QemuWriter ──── QEVM bytes
//!                            ├── Event ─ [Compactor] ─┤
//! vmstream ── VmstreamSource ┘                └── VmstreamSink ── vmstream
//! ```
//!
//! Every producer hands [`Event`]s to a [`Sink`]; page data is borrowed from the
//! producer's buffer. Device sections are decoded through the stream's vmdesc
//! into typed [`vmstream::Value`]s, checked to encode back to the same bytes,
//! and kept as bytes where that does not hold. The mapping to vmstream records
//! is specified in `docs/qemu-mapping.md`.
//!
//! ```no_run
//! # fn main() -> vmstream::Result<()> {
//! use vmstream_qemu::{qemu_to_vmstream, vmstream_to_qemu, ConvertOptions};
//! let qemu = std::fs::read("vm.mig")?;
//! let opts = ConvertOptions::default();
//! let (vms, summary) = qemu_to_vmstream(&qemu[..], Vec::new(), &opts)?;
//! println!("{} devices typed, {} kept as bytes", summary.typed_devices, summary.raw_devices.len());
//! let back = vmstream_to_qemu(&vms[..], Vec::new(), &opts)?;
//! assert_eq!(back, qemu);
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

mod arch;
mod channel_set;
mod compact;
mod event;
pub mod image;
mod input;
pub mod iterative;
pub mod mapped_ram;
pub mod mapping;
pub mod multifd;
pub mod ram;
mod reader;
pub mod vmdesc;
mod wire;
mod writer;

use std::io::{Read, Seek, Write};

use vmstream::{Arch, Limits, Result, WriterOptions};

pub use arch::default_page_size;
pub use channel_set::{ChannelMerger, ChannelSummary, MultifdSigns};
pub use compact::Compactor;
pub use event::{Event, QemuRamBlock, SectionHeader, SectionKind, Sink};
pub use image::{ImageBlock, MemoryImage, PageState};
pub use mapping::{VmstreamSink, VmstreamSource};
pub use reader::{QemuReader, Summary};
pub use vmdesc::{read_trailer, vmdesc_from};
pub use wire::{COMMAND_NAMES, MAGIC, VERSION};
pub use writer::{OpenChannel, QemuWriter};

/// Options of the conversion functions.
#[derive(Debug, Clone, Default)]
pub struct ConvertOptions {
    /// Limits for reading either format.
    pub limits: Limits,
    /// How vmstream output is written.
    pub writer: WriterOptions,
    /// Fold re-sent pages into the final memory image ([`Compactor`]).
    pub compact: bool,
    /// A device description: `(json, own)`. `own` means it is the input's own
    /// trailer read ahead (from a seekable file); otherwise it is used only when
    /// the input has none (a twin stream's).
    pub vmdesc: Option<(Vec<u8>, bool)>,
    /// The QEMU input is a live migration's connection: it ends with its
    /// vmdesc trailer, without waiting for the sender to close
    /// ([`QemuReader::live`]).
    pub live: bool,
    /// The guest architecture, where the stream does not say it
    /// ([`QemuReader::with_arch`]).
    pub arch: Option<Arch>,
}

fn qemu_reader<R: Read>(input: R, opts: &ConvertOptions) -> QemuReader<R> {
    let mut r = QemuReader::new(input, opts.limits);
    if opts.live {
        r = r.live();
    }
    if let Some((json, own)) = &opts.vmdesc {
        r = r.with_vmdesc(json.clone(), *own);
    }
    if let Some(arch) = opts.arch {
        r = r.with_arch(arch);
    }
    r
}

/// Runs `run` into `sink`, through a [`Compactor`] if `opts.compact`.
fn compacting<T>(
    sink: &mut dyn Sink,
    page_size: u64,
    opts: &ConvertOptions,
    run: impl FnOnce(&mut dyn Sink) -> Result<T>,
) -> Result<T> {
    if opts.compact {
        let mut c = Compactor::new(sink, page_size, opts.limits.max_alloc);
        run(&mut c)
    } else {
        run(sink)
    }
}

/// Reads a QEMU stream into any [`Sink`] (through a [`Compactor`] if
/// `opts.compact`): for tools that want the events themselves, e.g. to write
/// RAM to files or print device state, without a conversion in between.
pub fn read_qemu<R: Read>(input: R, sink: &mut dyn Sink, opts: &ConvertOptions) -> Result<Summary> {
    let reader = qemu_reader(input, opts);
    // The page size comes with the reader's first event (Event::Target).
    compacting(sink, 4096, opts, |s| reader.run(s))
}

/// Like [`read_qemu`], from a seekable input (a file): the holes of a
/// `mapped-ram` stream are seeked over instead of read, and its offsets are
/// checked against the file's length.
pub fn read_qemu_seekable<R: Read + Seek>(
    input: R,
    sink: &mut dyn Sink,
    opts: &ConvertOptions,
) -> Result<Summary> {
    let mut reader = QemuReader::seekable(input, opts.limits)?;
    if let Some((json, own)) = &opts.vmdesc {
        reader = reader.with_vmdesc(json.clone(), *own);
    }
    if let Some(arch) = opts.arch {
        reader = reader.with_arch(arch);
    }
    // The page size comes with the reader's first event (Event::Target).
    compacting(sink, 4096, opts, |s| reader.run(s))
}

/// Reads a multifd channel set — the main channel and its multifd channels,
/// in any order — as one migration into any [`Sink`] (through a
/// [`Compactor`] if `opts.compact`): the main channel's events with each
/// channel's packets and their pages put in at the sync points
/// ([`ChannelMerger`]).
pub fn read_channel_set<R: Read, C: Read>(
    main: R,
    channels: Vec<C>,
    sink: &mut dyn Sink,
    opts: &ConvertOptions,
) -> Result<(Summary, Vec<ChannelSummary>)> {
    merge_set(main, sink, opts, |inner| {
        ChannelMerger::new(channels, inner, opts.limits)
    })
}

/// Like [`read_channel_set`], for a live migration's connections: each
/// channel's packets are handed on as they arrive ([`ChannelMerger::live`]),
/// so that QEMU never waits for the reader to take a channel's bytes.
/// `opts.live` should be set, so that the main channel ends at its trailer.
pub fn read_live_channel_set<R: Read, C: Read + multifd::Arrived>(
    main: R,
    channels: Vec<C>,
    sink: &mut dyn Sink,
    opts: &ConvertOptions,
) -> Result<(Summary, Vec<ChannelSummary>)> {
    merge_set(main, sink, opts, |inner| {
        ChannelMerger::live(channels, inner, opts.limits)
    })
}

fn merge_set<R: Read, C: Read>(
    main: R,
    sink: &mut dyn Sink,
    opts: &ConvertOptions,
    merger: impl FnOnce(&mut dyn Sink) -> Result<ChannelMerger<'_, C>>,
) -> Result<(Summary, Vec<ChannelSummary>)> {
    let reader = qemu_reader(main, opts);
    let mut compactor;
    let inner: &mut dyn Sink = if opts.compact {
        compactor = Compactor::new(sink, 4096, opts.limits.max_alloc);
        &mut compactor
    } else {
        sink
    };
    let mut merger = merger(inner)?;
    let summary = reader.run(&mut merger)?;
    Ok((summary, merger.summaries()))
}

/// Converts a multifd channel set to one vmstream stream.
pub fn channel_set_to_vmstream<R: Read, C: Read, W: Write>(
    main: R,
    channels: Vec<C>,
    out: W,
    opts: &ConvertOptions,
) -> Result<(W, Summary, Vec<ChannelSummary>)> {
    let mut sink = VmstreamSink::new(out, opts.writer);
    let (summary, chans) = read_channel_set(main, channels, &mut sink, opts)?;
    Ok((sink.finish()?, summary, chans))
}

/// Converts a vmstream stream converted from QEMU back to QEMU's streams:
/// the main channel to `out` and, for a channel set, multifd channel K to
/// `open(K)` (streams without channels never call it). Returns the main
/// output and the channel ids written.
pub fn vmstream_to_qemu_channels<R: Read, W: Write>(
    input: R,
    out: W,
    open: OpenChannel,
    opts: &ConvertOptions,
) -> Result<(W, Vec<u8>)> {
    let source = VmstreamSource::new(input, opts.limits)?;
    let ps = source.page_size();
    let mut sink = QemuWriter::new(out, ps).with_channels(open);
    compacting(&mut sink, ps, opts, |s| source.run(s))?;
    let ids = sink.channels();
    Ok((sink.finish()?, ids))
}

/// The architecture of the QEMU stream in a seekable `file`, read from its
/// start, for the streams whose configuration and description leave it open
/// (an Arm `virt` machine whose vCPU has no AArch64-only state): the stream is
/// read up to its vCPU section, whose register list decides. `None` when that
/// does not decide either. The file is left at its start.
pub fn detect_arch<F: Read + std::io::Seek>(
    file: &mut F,
    opts: &ConvertOptions,
) -> Result<Option<Arch>> {
    struct Probe {
        cands: &'static [Arch],
        early: Option<Arch>,
        found: Option<Arch>,
    }
    impl Sink for Probe {
        fn event(&mut self, ev: &Event<'_>) -> Result<()> {
            let stop = || {
                Err(vmstream::Error::new(
                    vmstream::ErrorKind::Usage,
                    "probe done",
                ))
            };
            match ev {
                Event::Configuration { machine, .. } => self.cands = arch::candidates(machine),
                Event::Target { arch, .. } if *arch != Arch::Unknown => {
                    self.early = Some(*arch);
                    return stop();
                }
                Event::Target { .. }
                    if !(self.cands.contains(&Arch::Aarch64)
                        && self.cands.contains(&Arch::Arm)) =>
                {
                    return stop();
                }
                Event::Device(d) if d.name == "cpu" => {
                    self.found = arch::from_cpu(self.cands, &d.value);
                    return stop();
                }
                _ => {}
            }
            Ok(())
        }
    }
    file.seek(std::io::SeekFrom::Start(0))?;
    let mut probe = Probe {
        cands: &[],
        early: None,
        found: None,
    };
    let opts = ConvertOptions {
        compact: false,
        ..opts.clone()
    };
    let r = read_qemu(std::io::BufReader::new(&mut *file), &mut probe, &opts);
    file.seek(std::io::SeekFrom::Start(0))?;
    match r {
        Ok(s) => Ok(s.arch),
        Err(_) if probe.early.is_some() || probe.found.is_some() => Ok(probe.early.or(probe.found)),
        Err(e) if e.kind() == vmstream::ErrorKind::Usage => Ok(None),
        Err(e) => Err(e),
    }
}

/// Converts a QEMU stream to vmstream.
pub fn qemu_to_vmstream<R: Read, W: Write>(
    input: R,
    out: W,
    opts: &ConvertOptions,
) -> Result<(W, Summary)> {
    let mut sink = VmstreamSink::new(out, opts.writer);
    let summary = read_qemu(input, &mut sink, opts)?;
    Ok((sink.finish()?, summary))
}

/// Rewrites a QEMU stream (byte-identical unless compacting).
pub fn qemu_to_qemu<R: Read, W: Write>(
    input: R,
    out: W,
    opts: &ConvertOptions,
) -> Result<(W, Summary)> {
    // The page size comes with the reader's first event (Event::Target).
    let mut sink = QemuWriter::new(out, 4096);
    let summary = read_qemu(input, &mut sink, opts)?;
    Ok((sink.finish()?, summary))
}

/// Converts a vmstream stream that was converted from QEMU back to the QEMU
/// stream. The holes of a `mapped-ram` stream are written as zeros; see
/// [`vmstream_to_qemu_seekable`] for a sparse file.
pub fn vmstream_to_qemu<R: Read, W: Write>(input: R, out: W, opts: &ConvertOptions) -> Result<W> {
    let source = VmstreamSource::new(input, opts.limits)?;
    let ps = source.page_size();
    to_qemu(source, QemuWriter::new(out, ps), opts)
}

/// Like [`vmstream_to_qemu`], into a seekable output (a file, starting at its
/// current position): the holes of a `mapped-ram` stream (absent pages,
/// padding) are seeked over, so the file is as sparse as QEMU's.
pub fn vmstream_to_qemu_seekable<R: Read, W: Write + Seek>(
    input: R,
    out: W,
    opts: &ConvertOptions,
) -> Result<W> {
    let source = VmstreamSource::new(input, opts.limits)?;
    let ps = source.page_size();
    to_qemu(source, QemuWriter::seekable(out, ps), opts)
}

fn to_qemu<R: Read, W: Write>(
    source: VmstreamSource<R>,
    mut sink: QemuWriter<W>,
    opts: &ConvertOptions,
) -> Result<W> {
    let ps = source.page_size();
    compacting(&mut sink, ps, opts, |s| source.run(s))?;
    sink.finish()
}

/// Rewrites a vmstream stream converted from QEMU (compacting it, if asked).
pub fn vmstream_to_vmstream<R: Read, W: Write>(
    input: R,
    out: W,
    opts: &ConvertOptions,
) -> Result<W> {
    let source = VmstreamSource::new(input, opts.limits)?;
    let ps = source.page_size();
    let mut sink = VmstreamSink::new(out, opts.writer).with_page_size(ps as u32);
    compacting(&mut sink, ps, opts, |s| source.run(s))?;
    sink.finish()
}
