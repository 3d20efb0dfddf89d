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

mod compact;
mod event;
mod input;
pub mod mapping;
pub mod ram;
mod reader;
pub mod vmdesc;
mod writer;

use std::io::{Read, Write};

use vmstream::{Error, ErrorKind, Limits, Result, WriterOptions};

pub use compact::Compactor;
pub use event::{Event, QemuRamBlock, SectionHeader, SectionKind, Sink};
pub use mapping::{VmstreamSink, VmstreamSource};
pub use reader::{QemuReader, Summary};
pub use writer::QemuWriter;

/// The stream magic, `QEVM`.
pub const MAGIC: [u8; 4] = *b"QEVM";
/// The only stream version read and written.
pub const VERSION: u32 = 3;

/// Command names by number (`""` for numbers QEMU does not define).
pub const COMMAND_NAMES: [&str; 12] = [
    "INVALID",
    "OPEN_RETURN_PATH",
    "PING",
    "POSTCOPY_ADVISE",
    "POSTCOPY_LISTEN",
    "POSTCOPY_RUN",
    "POSTCOPY_RAM_DISCARD",
    "PACKAGED",
    "ENABLE_COLO",
    "POSTCOPY_RESUME",
    "RECV_BITMAP",
    "SWITCHOVER_START",
];

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
}

fn qemu_reader<R: Read>(input: R, opts: &ConvertOptions) -> QemuReader<R> {
    let r = QemuReader::new(input, opts.limits);
    match &opts.vmdesc {
        Some((json, own)) => r.with_vmdesc(json.clone(), *own),
        None => r,
    }
}

/// Reads a QEMU stream into any [`Sink`] (through a [`Compactor`] if
/// `opts.compact`): for tools that want the events themselves, e.g. to write
/// RAM to files or print device state, without a conversion in between.
pub fn read_qemu<R: Read>(input: R, sink: &mut dyn Sink, opts: &ConvertOptions) -> Result<Summary> {
    let reader = qemu_reader(input, opts);
    if opts.compact {
        let mut c = Compactor::new(sink, 4096, opts.limits.max_alloc);
        reader.run(&mut c)
    } else {
        reader.run(sink)
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
    let mut sink = QemuWriter::new(out, 4096);
    let summary = read_qemu(input, &mut sink, opts)?;
    Ok((sink.finish()?, summary))
}

/// Converts a vmstream stream that was converted from QEMU back to the QEMU stream.
pub fn vmstream_to_qemu<R: Read, W: Write>(input: R, out: W, opts: &ConvertOptions) -> Result<W> {
    let source = VmstreamSource::new(input, opts.limits)?;
    let ps = source.page_size();
    let mut sink = QemuWriter::new(out, ps);
    if opts.compact {
        let mut c = Compactor::new(&mut sink, ps, opts.limits.max_alloc);
        source.run(&mut c)?;
    } else {
        source.run(&mut sink)?;
    }
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
    if opts.compact {
        let mut c = Compactor::new(&mut sink, ps, opts.limits.max_alloc);
        source.run(&mut c)?;
    } else {
        source.run(&mut sink)?;
    }
    sink.finish()
}

/// The vmdesc JSON of `data`: either a QEMU stream with a trailer, or the JSON itself.
pub fn vmdesc_from(data: &[u8]) -> Result<Vec<u8>> {
    if data.starts_with(&MAGIC) {
        let p = vmdesc::find_trailer(data).ok_or_else(|| {
            Error::new(
                ErrorKind::Unsupported,
                "the twin stream has no vmdesc trailer either",
            )
        })?;
        Ok(data[p + 5..].to_vec())
    } else if data.first() == Some(&b'{') {
        Ok(data.to_vec())
    } else {
        Err(Error::new(
            ErrorKind::Usage,
            "a device description must be a QEMU stream with a vmdesc trailer, or its JSON",
        ))
    }
}

/// Reads the vmdesc trailer from the end of a seekable QEMU stream, if it has one.
pub fn read_trailer<F: Read + std::io::Seek>(file: &mut F) -> Result<Option<Vec<u8>>> {
    use std::io::SeekFrom;
    let len = file.seek(SeekFrom::End(0))?;
    let tail = len.min(16 << 20);
    file.seek(SeekFrom::Start(len - tail))?;
    let mut buf = Vec::with_capacity(tail as usize);
    file.by_ref().take(tail).read_to_end(&mut buf)?;
    file.seek(SeekFrom::Start(0))?;
    Ok(vmdesc::find_trailer(&buf).map(|p| buf[p + 5..].to_vec()))
}
