//! Opening inputs: files or stdin, in vmstream or QEMU format.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use anyhow::{Context, Result};
use vmstream::{Limits, StreamReader};

use crate::progress::ProgressReader;

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
    let mut input: Input = Box::new(BufReader::with_capacity(
        1 << 20,
        ProgressReader::new(raw, total, &what),
    ));
    let prefix = input
        .fill_buf()
        .with_context(|| format!("cannot read {what}"))?;
    let format = if prefix.starts_with(b"QEVM") {
        Format::Qemu
    } else {
        Format::Vmstream
    };
    Ok((format, input))
}

/// A vmstream record reader over any input; QEMU streams are converted on the fly.
pub(crate) fn records(path: &Path, limits: Limits) -> Result<(Format, StreamReader<Input>)> {
    let (format, input) = open(path)?;
    let input = match format {
        Format::Vmstream => input,
        Format::Qemu => qemu_as_vmstream(input)?,
    };
    let reader = StreamReader::new(input, limits)
        .with_context(|| format!("{}: cannot read the stream header", path.display()))?;
    Ok((format, reader))
}

fn qemu_as_vmstream(_input: Input) -> Result<Input> {
    anyhow::bail!("QEMU streams are not supported by this build")
}
