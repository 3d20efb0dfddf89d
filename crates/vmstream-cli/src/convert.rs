//! `vmstream convert`: QEMU <-> vmstream, in files or pipes.

use std::io::{BufWriter, Write};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use crate::args::{ConvertArgs, Target};
use crate::input::{self, Format, Opts};

pub(crate) fn convert(args: &ConvertArgs, opts: &Opts) -> Result<ExitCode> {
    let (format, input) = input::open(&args.input)?;
    let target = args.to.unwrap_or(match format {
        Format::Qemu => Target::Vmstream,
        Format::Vmstream => Target::Qemu,
    });
    let mut copts = if format == Format::Qemu {
        opts.convert_options(&args.input, args.compact)?
    } else {
        let mut o = opts.convert_options(std::path::Path::new("-"), args.compact)?;
        o.vmdesc = None;
        o
    };
    copts.writer = copts
        .writer
        .with_compression(args.compression.to_compression());
    // A file output is written under a temporary name and renamed when complete,
    // so a failed conversion leaves no partial stream (and an old file intact).
    let mut partial = None;
    // Devices, FIFOs and the like are written in place, never replaced.
    let special = std::fs::metadata(&args.output).is_ok_and(|m| !m.is_file());
    let out: Box<dyn Write> = if args.output.as_os_str() == "-" {
        Box::new(std::io::stdout().lock())
    } else if special {
        Box::new(
            std::fs::OpenOptions::new()
                .write(true)
                .open(&args.output)
                .with_context(|| format!("cannot open {}", args.output.display()))?,
        )
    } else {
        let dir = match args.output.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => std::path::Path::new("."),
        };
        let tmp = tempfile::NamedTempFile::new_in(dir)
            .with_context(|| format!("cannot create a file in {}", dir.display()))?;
        let f = tmp.reopen()?;
        partial = Some(tmp);
        Box::new(f)
    };
    let out = BufWriter::with_capacity(1 << 20, out);
    let what = args.input.display();
    let mut out = match (format, target) {
        (Format::Qemu, Target::Vmstream) => {
            let (out, summary) = vmstream_qemu::qemu_to_vmstream(input, out, &copts)
                .with_context(|| what.to_string())?;
            if !summary.raw_devices.is_empty() {
                eprintln!(
                    "vmstream: note: {} device section(s) kept as bytes (no usable description): {}",
                    summary.raw_devices.len(),
                    summary.raw_devices.join(", ")
                );
            }
            out
        }
        (Format::Qemu, Target::Qemu) => {
            vmstream_qemu::qemu_to_qemu(input, out, &copts)
                .with_context(|| what.to_string())?
                .0
        }
        (Format::Vmstream, Target::Qemu) => {
            vmstream_qemu::vmstream_to_qemu(input, out, &copts).with_context(|| what.to_string())?
        }
        (Format::Vmstream, Target::Vmstream) => {
            if !args.compact {
                bail!("{what} is already a vmstream stream (use --compact to fold its RAM rounds, or --to qemu)");
            }
            vmstream_qemu::vmstream_to_vmstream(input, out, &copts)
                .with_context(|| what.to_string())?
        }
    };
    out.flush()?;
    drop(out);
    if let Some(tmp) = partial {
        tmp.persist(&args.output)
            .with_context(|| format!("cannot create {}", args.output.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
