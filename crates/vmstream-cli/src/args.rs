//! Command-line flags, parsed into plain values.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Inspect, check, convert and compare VM migration streams (vmstream and QEMU).
#[derive(Debug, Parser)]
#[command(name = "vmstream", version, about, max_term_width = 100)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,

    /// Largest record accepted, in MiB (raise for trusted streams with huge records).
    #[arg(long, global = true, default_value_t = 64, value_name = "MIB")]
    pub(crate) max_record_mib: u32,

    /// Most memory one decoded record may take, in MiB.
    #[arg(long, global = true, default_value_t = 256, value_name = "MIB")]
    pub(crate) max_alloc_mib: u64,

    /// Device description for QEMU streams that carry none (machine types up to
    /// 2.2, postcopy): a twin QEMU stream with a vmdesc trailer, or its JSON.
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) vmdesc: Option<PathBuf>,
}

impl Cli {
    pub(crate) fn limits(&self) -> vmstream::Limits {
        vmstream::Limits::default()
            .with_max_record_size(self.max_record_mib.saturating_mul(1 << 20))
            .with_max_alloc(self.max_alloc_mib.saturating_mul(1 << 20))
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Header, features, record counts, devices and RAM blocks of a stream.
    Inspect(InspectArgs),
    /// Every device's state, field by field.
    Dump(DumpArgs),
    /// Check everything: framing, checksums, value encoding, limits, index.
    Verify(VerifyArgs),
    /// Unpack a stream into a directory: stream.json plus one raw file per RAM block.
    Decode(DecodeArgs),
    /// Pack a directory made by `decode` back into a stream.
    Encode(EncodeArgs),
    /// Write each RAM block's final contents to a raw file (sparse where zero).
    Extract(ExtractArgs),
    /// Devices, fields and pages that differ between two streams.
    Diff(DiffArgs),
    /// Convert between QEMU's migration stream and vmstream (lossless both ways).
    Convert(ConvertArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ConvertArgs {
    /// Input stream (format detected), or `-` for standard input.
    pub(crate) input: PathBuf,
    /// Output stream, or `-` for standard output.
    pub(crate) output: PathBuf,
    /// Output format (default: the other one).
    #[arg(long, value_enum)]
    pub(crate) to: Option<Target>,
    /// Fold re-sent pages into the final memory image and drop superseded RAM
    /// rounds (the result loads into QEMU with the same guest memory).
    #[arg(long)]
    pub(crate) compact: bool,
    /// Compression of vmstream page batches.
    #[arg(long, value_enum, default_value_t = CompressionArg::None)]
    pub(crate) compression: CompressionArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Target {
    Vmstream,
    Qemu,
}

#[derive(Debug, Args)]
pub(crate) struct InspectArgs {
    /// Stream file, or `-` for standard input.
    pub(crate) file: PathBuf,
    /// Machine-readable output.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct DumpArgs {
    /// Stream file, or `-` for standard input.
    pub(crate) file: PathBuf,
    /// Only devices whose name (or `name:instance`) matches.
    #[arg(long, value_name = "NAME")]
    pub(crate) device: Option<String>,
    /// Machine-readable output (values in the exact-typed JSON form).
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// Stream file, or `-` for standard input.
    pub(crate) file: PathBuf,
    /// Machine-readable output.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct DecodeArgs {
    /// Stream file, or `-` for standard input.
    pub(crate) file: PathBuf,
    /// Output directory (created; must be empty if it exists).
    #[arg(long, short)]
    pub(crate) out: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct EncodeArgs {
    /// Directory made by `vmstream decode`.
    pub(crate) dir: PathBuf,
    /// Output stream file, or `-` for standard output.
    #[arg(long, short)]
    pub(crate) out: PathBuf,
    /// Compression of page batches.
    #[arg(long, value_enum, default_value_t = CompressionArg::None)]
    pub(crate) compression: CompressionArg,
}

#[derive(Debug, Args)]
pub(crate) struct ExtractArgs {
    /// Stream file, or `-` for standard input.
    pub(crate) file: PathBuf,
    /// Output directory.
    #[arg(long, short)]
    pub(crate) out: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct DiffArgs {
    /// First stream.
    pub(crate) a: PathBuf,
    /// Second stream.
    pub(crate) b: PathBuf,
    /// Machine-readable output.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum CompressionArg {
    None,
    Zstd,
    Lz4,
}

impl CompressionArg {
    pub(crate) fn to_compression(self) -> vmstream::Compression {
        match self {
            CompressionArg::None => vmstream::Compression::None,
            CompressionArg::Zstd => vmstream::Compression::Zstd(3),
            CompressionArg::Lz4 => vmstream::Compression::Lz4,
        }
    }
}
