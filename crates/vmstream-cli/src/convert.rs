//! `vmstream convert`: QEMU <-> vmstream, in files or pipes.

use std::io::{BufWriter, Write};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use vmstream::WriterOptions;
use vmstream_qemu::{QemuWriter, VmstreamSink};

use crate::args::{ConvertArgs, Target};
use crate::input::{self, Format, Opts};

/// Where a channel set's multifd channel K goes: `OUTPUT.multifdK`, next to
/// a file output.
fn channel_outputs(output: &std::path::Path) -> vmstream_qemu::OpenChannel {
    let output = output.to_owned();
    Box::new(move |k| {
        if output.as_os_str() == "-" || std::fs::metadata(&output).is_ok_and(|m| !m.is_file()) {
            return Err(vmstream::Error::new(
                vmstream::ErrorKind::Usage,
                "a multifd channel set is written as OUTPUT and OUTPUT.multifdK: give a file output",
            ));
        }
        let mut name = output.clone().into_os_string();
        name.push(format!(".multifd{k}"));
        let f = std::fs::File::create(&name).map_err(|e| {
            vmstream::Error::new(
                vmstream::ErrorKind::Usage,
                format!(
                    "cannot create {}: {e}",
                    std::path::Path::new(&name).display()
                ),
            )
        })?;
        Ok(Box::new(BufWriter::with_capacity(1 << 20, f)) as Box<dyn Write>)
    })
}

pub(crate) fn convert(args: &ConvertArgs, opts: &Opts) -> Result<ExitCode> {
    let (format, input) = input::open(&args.input)?;
    let target = args.to.unwrap_or(match format {
        Format::Qemu => Target::Vmstream,
        Format::Vmstream => Target::Qemu,
    });
    let writer = WriterOptions::default().with_compression(args.compression.to_compression());
    // A file output is written under a temporary name and renamed when complete,
    // so a failed conversion leaves no partial stream (and an old file intact).
    let mut partial = None;
    // Devices, FIFOs and the like are written in place, never replaced.
    let special = std::fs::metadata(&args.output).is_ok_and(|m| !m.is_file());
    // A regular file is written through a seekable writer, so the holes of a
    // mapped-ram stream stay holes; anything else as a stream.
    let out: Result<std::fs::File, Box<dyn Write>> = if args.output.as_os_str() == "-" {
        Err(Box::new(std::io::stdout().lock()))
    } else if special {
        Err(Box::new(
            std::fs::OpenOptions::new()
                .write(true)
                .open(&args.output)
                .with_context(|| format!("cannot open {}", args.output.display()))?,
        ))
    } else {
        let dir = match args.output.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => std::path::Path::new("."),
        };
        let tmp = tempfile::NamedTempFile::new_in(dir)
            .with_context(|| format!("cannot create a file in {}", dir.display()))?;
        let f = tmp.reopen()?;
        partial = Some(tmp);
        Ok(f)
    };
    let what = args.input.display();
    if (format, target) == (Format::Vmstream, Target::Vmstream) && !args.compact {
        bail!("{what} is already a vmstream stream (use --compact to fold its RAM rounds, or --to qemu)");
    }
    let events = input::events(format, input, &args.input, opts, args.compact)?;
    let ps = events.page_size();
    let context = || what.to_string();
    let summary = match (target, out) {
        (Target::Vmstream, out) => {
            let out: Box<dyn Write> = match out {
                Ok(f) => Box::new(f),
                Err(w) => w,
            };
            let mut sink = VmstreamSink::new(BufWriter::with_capacity(1 << 20, out), writer)
                .with_page_size(ps as u32);
            let summary = events.run(&mut sink).with_context(context)?;
            sink.finish().with_context(context)?.flush()?;
            summary
        }
        (Target::Qemu, Ok(f)) => {
            let mut sink = QemuWriter::seekable(BufWriter::with_capacity(1 << 20, f), ps)
                .with_channels(channel_outputs(&args.output));
            let summary = events.run(&mut sink).with_context(context)?;
            sink.finish().with_context(context)?.flush()?;
            summary
        }
        (Target::Qemu, Err(w)) => {
            let mut sink = QemuWriter::new(BufWriter::with_capacity(1 << 20, w), ps)
                .with_channels(channel_outputs(&args.output));
            let summary = events.run(&mut sink).with_context(context)?;
            sink.finish().with_context(context)?.flush()?;
            summary
        }
    };
    if let Some(summary) =
        summary.filter(|s| target == Target::Vmstream && !s.raw_devices.is_empty())
    {
        eprintln!(
            "vmstream: note: {} device section(s) kept as bytes (no usable description): {}",
            summary.raw_devices.len(),
            summary.raw_devices.join(", ")
        );
    }
    if let Some(tmp) = partial {
        tmp.persist(&args.output)
            .with_context(|| format!("cannot create {}", args.output.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
