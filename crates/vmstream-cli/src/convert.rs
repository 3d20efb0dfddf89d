//! `vmstream convert`: QEMU <-> vmstream, in files or pipes.

use std::fs::File;
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
    let out: Box<dyn Write> = if args.output.as_os_str() == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(
            File::create(&args.output)
                .with_context(|| format!("cannot create {}", args.output.display()))?,
        )
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
    Ok(ExitCode::SUCCESS)
}
