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

    /// A multifd channel of the QEMU main channel read (repeat it for each
    /// channel, in any order): the channel set is read as one migration. For
    /// `diff`, the channels of the first stream.
    #[arg(long = "channel", global = true, value_name = "FILE")]
    pub(crate) channels: Vec<PathBuf>,
    /// Guest architecture of a QEMU stream, where the stream does not say it
    /// (x86_64, aarch64, arm, riscv64, ppc64, s390x, ...; see docs/format.md):
    /// taken over what the stream shows.
    #[arg(long, global = true, value_name = "ARCH", value_parser = parse_arch)]
    pub(crate) arch: Option<vmstream::Arch>,
}

fn parse_arch(s: &str) -> Result<vmstream::Arch, String> {
    vmstream::Arch::from_name(s).ok_or_else(|| {
        let names: Vec<String> = vmstream::Arch::ALL.iter().map(|a| a.name()).collect();
        format!("unknown architecture {s:?} (one of {})", names.join(", "))
    })
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
    /// Run a synthetic VM or a KVM guest controlled over QMP, to migrate live with QEMU's commands.
    Guest(GuestArgs),
    /// The device schemas of a stream, a QEMU -dump-vmstate JSON or a vmdesc.
    Schema(SchemaArgs),
    /// What changed between two schemas and what breaks migration each way (exit 1 if anything does).
    SchemaDiff(SchemaDiffArgs),
    /// Apply versioned-state transforms (a rules file) to a stream's devices.
    Transform(TransformArgs),
    /// Carry a running QEMU's live migration over vmstream channels.
    Relay(RelayArgs),
}

#[derive(Debug, Args)]
pub(crate) struct RelayArgs {
    #[command(subcommand)]
    pub(crate) command: RelayCommand,
}

#[derive(Debug, Subcommand)]
pub(crate) enum RelayCommand {
    /// Take the source QEMU's migration and send it to a receiving relay.
    Send(RelaySendArgs),
    /// Take a sending relay's channels and feed the destination QEMU.
    Receive(RelayReceiveArgs),
}

#[derive(Debug, Args)]
pub(crate) struct RelaySendArgs {
    /// Where the source QEMU migrates to (unix:PATH, tcp:HOST:PORT, a channel's
    /// JSON), or - for standard input (QEMU's exec:).
    #[arg(long)]
    pub(crate) from: String,
    /// Where the receiving relay listens.
    #[arg(long)]
    pub(crate) to: String,
    /// Data channels that carry the guest's pages (a return channel for
    /// QEMU's return path comes on top).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(0..=63))]
    pub(crate) data_channels: u16,
    /// The source QEMU migrates with multifd over this many channels (its
    /// multifd-channels parameter): the relay takes them all on --from.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=255))]
    pub(crate) multifd_channels: u8,
    /// Compatibility transforms (a rules file) applied in flight.
    #[arg(long)]
    pub(crate) rules: Option<PathBuf>,
    /// Also write the vmstream stream to this file.
    #[arg(long)]
    pub(crate) record: Option<PathBuf>,
    /// Mutual TLS on the channels: a directory in QEMU's x509 layout.
    #[arg(long)]
    pub(crate) tls_creds: Option<PathBuf>,
    /// A QMP control socket answering query-migrate (unix:PATH).
    #[arg(long)]
    pub(crate) qmp: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct RelayReceiveArgs {
    /// Where to listen for the sending relay's channels.
    #[arg(long)]
    pub(crate) listen: String,
    /// The destination QEMU's migrate-incoming address.
    #[arg(long)]
    pub(crate) to: String,
    /// Compatibility transforms (a rules file) applied in flight.
    #[arg(long)]
    pub(crate) rules: Option<PathBuf>,
    /// Mutual TLS on the channels: a directory in QEMU's x509 layout.
    #[arg(long)]
    pub(crate) tls_creds: Option<PathBuf>,
    /// A QMP control socket answering query-migrate (unix:PATH).
    #[arg(long)]
    pub(crate) qmp: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct SchemaArgs {
    /// A vmstream or QEMU stream, a -dump-vmstate JSON or a vmdesc JSON.
    pub(crate) input: PathBuf,
    /// Machine-readable output.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct SchemaDiffArgs {
    /// The old side: a stream, a -dump-vmstate JSON or a vmdesc JSON.
    pub(crate) old: PathBuf,
    /// The new side.
    pub(crate) new: PathBuf,
    /// Machine-readable output.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct TransformArgs {
    /// The rules file (TOML, docs/transforms.md).
    #[arg(long, value_name = "FILE")]
    pub(crate) rules: PathBuf,
    /// Input stream (vmstream or QEMU).
    pub(crate) input: PathBuf,
    /// Output stream, in the input's format.
    pub(crate) output: PathBuf,
    /// Target version of a device type (default: the newest the rules reach).
    #[arg(long = "device-version", value_name = "TYPE=V")]
    pub(crate) device_version: Vec<String>,
}

/// How a synthetic guest's memory starts out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum GuestFill {
    /// Pseudo-random bytes.
    Random,
    /// Zeros.
    Zero,
}

#[derive(Debug, Args)]
pub(crate) struct GuestArgs {
    /// Guest memory: bytes, or with a K, M or G suffix.
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub(crate) memory: u64,
    /// Initial memory contents (an incoming guest starts with zeros).
    #[arg(long, value_enum, default_value = "random")]
    pub(crate) fill: GuestFill,
    /// Pages the workload writes per second while the guest runs.
    #[arg(long, default_value_t = 0, value_name = "PAGES_PER_S")]
    pub(crate) dirty_rate: u64,
    /// Number of devices with state of their own.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub(crate) devices: u32,
    /// Seed of the random fill.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// The QMP control socket: unix:PATH.
    #[arg(long, value_name = "unix:PATH")]
    pub(crate) qmp: String,
    /// Wait paused for `migrate-incoming` instead of running.
    #[arg(long)]
    pub(crate) incoming: bool,
    /// Stay paused until `cont`: at start, or with `--incoming` after the
    /// migration completed (QEMU's -S).
    #[arg(short = 'S', long)]
    pub(crate) paused: bool,
    /// Run a real KVM virtual machine (needs /dev/kvm): vCPUs running a
    /// guest program that dirties memory and prints `counter N` lines on
    /// its serial port, copied to standard output.
    #[arg(long)]
    pub(crate) kvm: bool,
    /// vCPUs of a KVM guest.
    #[arg(long, default_value_t = 1, value_name = "N", requires = "kvm")]
    pub(crate) vcpus: u8,
    /// The vCPU state version a KVM guest saves (1: the previous release's).
    #[arg(long, hide = true, value_name = "V", requires = "kvm")]
    pub(crate) x_vcpu_state_version: Option<u32>,
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
    /// Output directory; with `--range`, the output file (`-` for standard output).
    #[arg(long, short)]
    pub(crate) out: PathBuf,
    /// Only this range of one RAM block, as raw bytes: BLOCK is the block's
    /// name, OFFSET and LEN are bytes (decimal, 0x hex, or with a K/M/G
    /// suffix). A vmstream file is read through its index, touching only the
    /// page batches that overlap the range.
    #[arg(long, value_name = "BLOCK:OFFSET:LEN", value_parser = parse_range)]
    pub(crate) range: Option<RamRange>,
}

/// A byte range of one RAM block (`extract --range`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RamRange {
    pub(crate) block: String,
    pub(crate) offset: u64,
    pub(crate) len: u64,
}

/// Parses `BLOCK:OFFSET:LEN`; BLOCK may itself hold colons (QEMU block names do).
fn parse_range(s: &str) -> Result<RamRange, String> {
    let mut parts = s.rsplitn(3, ':');
    let (Some(len), Some(offset), Some(block)) = (parts.next(), parts.next(), parts.next()) else {
        return Err("expected BLOCK:OFFSET:LEN".to_owned());
    };
    if block.is_empty() {
        return Err("BLOCK, the RAM block's name, is empty".to_owned());
    }
    let offset = parse_size(offset).map_err(|e| format!("OFFSET: {e}"))?;
    let len = parse_size(len).map_err(|e| format!("LEN: {e}"))?;
    if len == 0 {
        return Err("LEN is 0".to_owned());
    }
    if offset.checked_add(len).is_none() {
        return Err("OFFSET + LEN is beyond 2^64".to_owned());
    }
    Ok(RamRange {
        block: block.to_owned(),
        offset,
        len,
    })
}

/// A byte count: decimal, `0x` hex, or decimal with a K, M or G (1024-based) suffix.
fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a byte count (decimal, 0x hex, or with K/M/G)");
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        return u64::from_str_radix(hex, 16).map_err(|_| bad());
    }
    let (digits, shift) = match s.as_bytes().last() {
        Some(b'k' | b'K') => (&s[..s.len() - 1], 10),
        Some(b'm' | b'M') => (&s[..s.len() - 1], 20),
        Some(b'g' | b'G') => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(1 << shift).ok_or_else(bad)
}

#[derive(Debug, Args)]
pub(crate) struct DiffArgs {
    /// First stream.
    pub(crate) a: PathBuf,
    /// Second stream.
    pub(crate) b: PathBuf,
    /// A multifd channel of the second stream (repeat it for each channel).
    #[arg(long = "b-channel", value_name = "FILE")]
    pub(crate) b_channels: Vec<PathBuf>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_from_the_right() {
        let r = parse_range("0000:00:02.0/e1000e.rom:0x1000:4K").unwrap();
        assert_eq!(r.block, "0000:00:02.0/e1000e.rom");
        assert_eq!((r.offset, r.len), (0x1000, 4096));
        assert_eq!(parse_range("pc.ram:1G:12").unwrap().offset, 1 << 30);
        for bad in [
            "pc.ram:0",
            ":0:1",
            "pc.ram:0:0",
            "pc.ram:x:1",
            "pc.ram:0:-1",
            "pc.ram:0xffffffffffffffff:2",
            "pc.ram:0:99999999999G",
        ] {
            assert!(parse_range(bad).is_err(), "{bad}");
        }
    }
}
