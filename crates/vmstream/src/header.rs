//! The fixed stream header (docs/format.md, "Header").

use crate::cursor::Cursor;
use crate::error::{Error, Result};

/// The 8-byte magic: `\x89VMS\r\n\x1a\n`. Like PNG's, it catches 7-bit transport
/// (the high bit), CR/LF translation in either direction, and DOS `type` (0x1a).
pub const MAGIC: [u8; 8] = [0x89, b'V', b'M', b'S', b'\r', b'\n', 0x1a, b'\n'];

/// The format's major version. A reader refuses a larger major version.
pub const VERSION_MAJOR: u16 = 1;
/// The format's minor version. Minor versions only add what older readers may ignore.
pub const VERSION_MINOR: u16 = 1;

/// Size of the fixed part of the header, before the writer string.
pub(crate) const FIXED_LEN: usize = 40;
/// Longest writer string.
pub const MAX_WRITER_LEN: usize = 255;

/// A must-understand feature: page batches may be zstd-compressed.
pub const FEATURE_ZSTD: u64 = 1 << 0;
/// A must-understand feature: page batches may be lz4-compressed.
pub const FEATURE_LZ4: u64 = 1 << 1;
/// Every must-understand feature this reader implements.
pub const KNOWN_REQUIRED_FEATURES: u64 = FEATURE_ZSTD | FEATURE_LZ4;

/// A may-ignore feature: the stream ends with an `index` record before `end`.
pub const FEATURE_INDEX: u64 = 1 << 0;
/// A may-ignore feature: the stream carries the records of a converted QEMU stream
/// needed to give back its exact bytes.
pub const FEATURE_QEMU_FRAMING: u64 = 1 << 1;

/// What a stream holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StreamKind {
    /// A live migration between two running VMMs.
    Live,
    /// A snapshot written to a file.
    Snapshot,
    /// A QEMU migration stream converted to this format.
    ConvertedFromQemu,
    /// A kind this reader does not know (kept so it can be written back).
    Other(u8),
}

impl StreamKind {
    /// The wire code.
    pub fn code(self) -> u8 {
        match self {
            StreamKind::Live => 1,
            StreamKind::Snapshot => 2,
            StreamKind::ConvertedFromQemu => 3,
            StreamKind::Other(c) => c,
        }
    }

    /// From the wire code (0 is invalid).
    pub fn from_code(code: u8) -> Result<StreamKind> {
        Ok(match code {
            0 => return Err(Error::malformed("stream kind 0 is invalid")),
            1 => StreamKind::Live,
            2 => StreamKind::Snapshot,
            3 => StreamKind::ConvertedFromQemu,
            c => StreamKind::Other(c),
        })
    }

    /// A lower-case name for text output.
    pub fn name(self) -> String {
        match self {
            StreamKind::Live => "live".into(),
            StreamKind::Snapshot => "snapshot".into(),
            StreamKind::ConvertedFromQemu => "converted-from-qemu".into(),
            StreamKind::Other(c) => format!("unknown({c})"),
        }
    }
}

/// The guest architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Arch {
    /// Not recorded.
    Unknown,
    /// x86-64 (and i386 guests of an x86-64 VMM).
    X86_64,
    /// 64-bit Arm.
    Aarch64,
    /// 64-bit RISC-V.
    Riscv64,
    /// IBM Z.
    S390x,
    /// 64-bit Power.
    Ppc64,
    /// 32-bit Arm (AArch32).
    Arm,
    /// 32-bit x86.
    I386,
    /// 32-bit RISC-V.
    Riscv32,
    /// 32-bit Power.
    Ppc,
    /// 32-bit MIPS (either byte order).
    Mips,
    /// 64-bit MIPS (either byte order).
    Mips64,
    /// 64-bit LoongArch.
    Loongarch64,
    /// 32-bit SPARC.
    Sparc,
    /// 64-bit SPARC.
    Sparc64,
    /// Alpha.
    Alpha,
    /// PA-RISC.
    Hppa,
    /// Motorola 68000 and ColdFire.
    M68k,
    /// MicroBlaze (either byte order).
    Microblaze,
    /// OpenRISC 1000.
    Or1k,
    /// SuperH SH-4 (either byte order).
    Sh4,
    /// Xtensa (either byte order).
    Xtensa,
    /// TriCore.
    Tricore,
    /// AVR.
    Avr,
    /// Renesas RX.
    Rx,
    /// CRIS.
    Cris,
    /// Nios II.
    Nios2,
    /// A code this reader does not know.
    Other(u16),
}

impl Arch {
    /// The wire code.
    pub fn code(self) -> u16 {
        match self {
            Arch::Unknown => 0,
            Arch::X86_64 => 1,
            Arch::Aarch64 => 2,
            Arch::Riscv64 => 3,
            Arch::S390x => 4,
            Arch::Ppc64 => 5,
            Arch::Arm => 6,
            Arch::I386 => 7,
            Arch::Riscv32 => 8,
            Arch::Ppc => 9,
            Arch::Mips => 10,
            Arch::Mips64 => 11,
            Arch::Loongarch64 => 12,
            Arch::Sparc => 13,
            Arch::Sparc64 => 14,
            Arch::Alpha => 15,
            Arch::Hppa => 16,
            Arch::M68k => 17,
            Arch::Microblaze => 18,
            Arch::Or1k => 19,
            Arch::Sh4 => 20,
            Arch::Xtensa => 21,
            Arch::Tricore => 22,
            Arch::Avr => 23,
            Arch::Rx => 24,
            Arch::Cris => 25,
            Arch::Nios2 => 26,
            Arch::Other(c) => c,
        }
    }

    /// From the wire code.
    pub fn from_code(code: u16) -> Arch {
        match code {
            0 => Arch::Unknown,
            1 => Arch::X86_64,
            2 => Arch::Aarch64,
            3 => Arch::Riscv64,
            4 => Arch::S390x,
            5 => Arch::Ppc64,
            6 => Arch::Arm,
            7 => Arch::I386,
            8 => Arch::Riscv32,
            9 => Arch::Ppc,
            10 => Arch::Mips,
            11 => Arch::Mips64,
            12 => Arch::Loongarch64,
            13 => Arch::Sparc,
            14 => Arch::Sparc64,
            15 => Arch::Alpha,
            16 => Arch::Hppa,
            17 => Arch::M68k,
            18 => Arch::Microblaze,
            19 => Arch::Or1k,
            20 => Arch::Sh4,
            21 => Arch::Xtensa,
            22 => Arch::Tricore,
            23 => Arch::Avr,
            24 => Arch::Rx,
            25 => Arch::Cris,
            26 => Arch::Nios2,
            c => Arch::Other(c),
        }
    }

    /// A lower-case name.
    pub fn name(self) -> String {
        match self {
            Arch::Unknown => "unknown".into(),
            Arch::X86_64 => "x86_64".into(),
            Arch::Aarch64 => "aarch64".into(),
            Arch::Riscv64 => "riscv64".into(),
            Arch::S390x => "s390x".into(),
            Arch::Ppc64 => "ppc64".into(),
            Arch::Arm => "arm".into(),
            Arch::I386 => "i386".into(),
            Arch::Riscv32 => "riscv32".into(),
            Arch::Ppc => "ppc".into(),
            Arch::Mips => "mips".into(),
            Arch::Mips64 => "mips64".into(),
            Arch::Loongarch64 => "loongarch64".into(),
            Arch::Sparc => "sparc".into(),
            Arch::Sparc64 => "sparc64".into(),
            Arch::Alpha => "alpha".into(),
            Arch::Hppa => "hppa".into(),
            Arch::M68k => "m68k".into(),
            Arch::Microblaze => "microblaze".into(),
            Arch::Or1k => "or1k".into(),
            Arch::Sh4 => "sh4".into(),
            Arch::Xtensa => "xtensa".into(),
            Arch::Tricore => "tricore".into(),
            Arch::Avr => "avr".into(),
            Arch::Rx => "rx".into(),
            Arch::Cris => "cris".into(),
            Arch::Nios2 => "nios2".into(),
            Arch::Other(c) => format!("unknown({c})"),
        }
    }

    /// Every architecture with a code, in code order (`Unknown` first).
    pub const ALL: [Arch; 27] = [
        Arch::Unknown,
        Arch::X86_64,
        Arch::Aarch64,
        Arch::Riscv64,
        Arch::S390x,
        Arch::Ppc64,
        Arch::Arm,
        Arch::I386,
        Arch::Riscv32,
        Arch::Ppc,
        Arch::Mips,
        Arch::Mips64,
        Arch::Loongarch64,
        Arch::Sparc,
        Arch::Sparc64,
        Arch::Alpha,
        Arch::Hppa,
        Arch::M68k,
        Arch::Microblaze,
        Arch::Or1k,
        Arch::Sh4,
        Arch::Xtensa,
        Arch::Tricore,
        Arch::Avr,
        Arch::Rx,
        Arch::Cris,
        Arch::Nios2,
    ];

    /// Parses a name as printed by [`Arch::name`].
    pub fn from_name(name: &str) -> Option<Arch> {
        Some(match name {
            "unknown" => Arch::Unknown,
            "x86_64" => Arch::X86_64,
            "aarch64" => Arch::Aarch64,
            "riscv64" => Arch::Riscv64,
            "s390x" => Arch::S390x,
            "ppc64" => Arch::Ppc64,
            "arm" => Arch::Arm,
            "i386" => Arch::I386,
            "riscv32" => Arch::Riscv32,
            "ppc" => Arch::Ppc,
            "mips" => Arch::Mips,
            "mips64" => Arch::Mips64,
            "loongarch64" => Arch::Loongarch64,
            "sparc" => Arch::Sparc,
            "sparc64" => Arch::Sparc64,
            "alpha" => Arch::Alpha,
            "hppa" => Arch::Hppa,
            "m68k" => Arch::M68k,
            "microblaze" => Arch::Microblaze,
            "or1k" => Arch::Or1k,
            "sh4" => Arch::Sh4,
            "xtensa" => Arch::Xtensa,
            "tricore" => Arch::Tricore,
            "avr" => Arch::Avr,
            "rx" => Arch::Rx,
            "cris" => Arch::Cris,
            "nios2" => Arch::Nios2,
            _ => return None,
        })
    }
}

/// The decoded stream header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Format major version.
    pub version_major: u16,
    /// Format minor version.
    pub version_minor: u16,
    /// Features a reader must implement to read the stream.
    pub required_features: u64,
    /// Features a reader may ignore.
    pub optional_features: u64,
    /// Guest page size in bytes (a power of two, 512 ..= 1 GiB).
    pub page_size: u32,
    /// Guest architecture.
    pub arch: Arch,
    /// What the stream holds.
    pub kind: StreamKind,
    /// Writer name and version, e.g. `vmstream 0.1.0`.
    pub writer: String,
}

impl Header {
    /// A header for the current format version with no features.
    pub fn new(kind: StreamKind, arch: Arch, page_size: u32) -> Header {
        Header {
            version_major: VERSION_MAJOR,
            version_minor: VERSION_MINOR,
            required_features: 0,
            optional_features: 0,
            page_size,
            arch,
            kind,
            writer: concat!("vmstream ", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }

    /// Encoded length of this header in bytes.
    pub fn encoded_len(&self) -> usize {
        encoded_len(self.writer.len())
    }

    /// Encodes the header. Fails if the writer string, page size or stream
    /// kind is invalid (what [`Header::decode`] would refuse).
    pub fn encode(&self) -> Result<Vec<u8>> {
        check_page_size(self.page_size)?;
        StreamKind::from_code(self.kind.code())
            .map_err(|_| Error::usage("stream kind 0 is invalid"))?;
        if self.writer.len() > MAX_WRITER_LEN {
            return Err(Error::usage(format!(
                "writer string is {} bytes; at most {MAX_WRITER_LEN}",
                self.writer.len()
            )));
        }
        let len = self.encoded_len();
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.version_major.to_le_bytes());
        out.extend_from_slice(&self.version_minor.to_le_bytes());
        out.extend_from_slice(&(len as u32).to_le_bytes());
        out.extend_from_slice(&self.required_features.to_le_bytes());
        out.extend_from_slice(&self.optional_features.to_le_bytes());
        out.extend_from_slice(&self.page_size.to_le_bytes());
        out.extend_from_slice(&self.arch.code().to_le_bytes());
        out.push(self.kind.code());
        out.push(self.writer.len() as u8);
        out.extend_from_slice(self.writer.as_bytes());
        out.resize(len - 4, 0);
        let crc = crate::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        Ok(out)
    }

    /// How many bytes the header starting with `prefix` takes in total, once at
    /// least [`FIXED_LEN`] bytes are known. Checks magic and version first so that
    /// a wrong file fails on its first bytes.
    pub(crate) fn total_len(prefix: &[u8]) -> Result<usize> {
        let mut c = Cursor::new(prefix, 0);
        let magic = c.array::<8>("magic")?;
        check_magic(&magic)?;
        let major = c.u16("version")?;
        let minor = c.u16("version")?;
        if major != VERSION_MAJOR {
            return Err(Error::unsupported(format!(
                "format version {major}.{minor}; this reader implements {VERSION_MAJOR}.x"
            ))
            .at_offset(8));
        }
        let len = c.u32("header length")?;
        let min = FIXED_LEN + 8;
        if (len as usize) < min || len % 8 != 0 || len > 4096 {
            return Err(Error::malformed(format!(
                "header length {len} is not a multiple of 8 in {min}..=4096"
            ))
            .at_offset(12));
        }
        Ok(len as usize)
    }

    /// Decodes a complete header (the fixed part plus its declared length).
    pub fn decode(buf: &[u8]) -> Result<Header> {
        let len = Header::total_len(buf)?;
        let Some(all) = buf.get(..len) else {
            return Err(Error::truncated("header", len, buf.len()).at_offset(buf.len() as u64));
        };
        let (body, crc_bytes) = all.split_at(len - 4);
        let stored = u32::from_le_bytes([crc_bytes[0], crc_bytes[1], crc_bytes[2], crc_bytes[3]]);
        let computed = crate::crc32c(body);
        if stored != computed {
            return Err(Error::malformed(format!(
                "header checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
            ))
            .at_offset(len as u64 - 4));
        }
        let mut c = Cursor::new(body, 0);
        c.bytes(12, "header")?;
        let _len = c.u32("header length")?;
        let version_major = VERSION_MAJOR;
        let version_minor = u16::from_le_bytes([buf[10], buf[11]]);
        let required_features = c.u64("required features")?;
        let optional_features = c.u64("optional features")?;
        let page_size = c.u32("page size")?;
        check_page_size(page_size).map_err(|e| e.at_offset(32))?;
        let arch = Arch::from_code(c.u16("arch")?);
        let kind = StreamKind::from_code(c.u8("stream kind")?).map_err(|e| e.at_offset(38))?;
        let wlen = c.u8("writer length")? as usize;
        // A later minor version may add fields after the writer string (a
        // longer header, docs/format.md §2, §10): its trailing bytes are
        // skipped unread. Up to this reader's version the header is exactly
        // the writer string and zero padding.
        let later = version_minor > VERSION_MINOR;
        let min = encoded_len(wlen);
        if len < min || (!later && len != min) {
            return Err(Error::malformed(format!(
                "header length {len} does not fit a writer string of {wlen} bytes (expected {}{min})",
                if later { "at least " } else { "" }
            ))
            .at_offset(12));
        }
        let writer = c.bytes(wlen, "writer")?;
        let writer = std::str::from_utf8(writer)
            .map_err(|_| Error::malformed("writer string is not UTF-8").at_offset(40))?
            .to_owned();
        if !later && c.rest().iter().any(|&b| b != 0) {
            return Err(Error::malformed("header padding is not zero").at_offset(40 + wlen as u64));
        }
        let unknown = required_features & !KNOWN_REQUIRED_FEATURES;
        if unknown != 0 {
            return Err(Error::unsupported(format!(
                "stream needs must-understand features {unknown:#x} that this reader lacks"
            ))
            .at_offset(16));
        }
        Ok(Header {
            version_major,
            version_minor,
            required_features,
            optional_features,
            page_size,
            arch,
            kind,
            writer,
        })
    }
}

fn encoded_len(writer_len: usize) -> usize {
    (FIXED_LEN + writer_len + 4).div_ceil(8) * 8
}

fn check_magic(magic: &[u8; 8]) -> Result<()> {
    if *magic == MAGIC {
        return Ok(());
    }
    let hint = if magic.starts_with(b"QEVM") {
        " (this is a QEMU migration stream)"
    } else if magic[1..4] == MAGIC[1..4] {
        " (the magic was altered in transit: text-mode or 7-bit transfer?)"
    } else {
        ""
    };
    Err(Error::malformed(format!("not a vmstream stream: bad magic{hint}")).at_offset(0))
}

fn check_page_size(size: u32) -> Result<()> {
    if size.is_power_of_two() && (512..=1 << 30).contains(&size) {
        Ok(())
    } else {
        Err(Error::malformed(format!(
            "page size {size} is not a power of two in 512..=1 GiB"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = Header::new(StreamKind::Snapshot, Arch::X86_64, 4096);
        let b = h.encode().unwrap();
        assert_eq!(b.len() % 8, 0);
        assert_eq!(Header::total_len(&b).unwrap(), b.len());
        assert_eq!(Header::decode(&b).unwrap(), h);
    }

    #[test]
    fn encode_refuses_what_decode_refuses() {
        let h = Header::new(StreamKind::Other(0), Arch::X86_64, 4096);
        assert_eq!(h.encode().unwrap_err().kind(), crate::ErrorKind::Usage);
        let h = Header::new(StreamKind::Other(200), Arch::Other(77), 4096);
        for (code, arch) in Arch::ALL.into_iter().enumerate() {
            assert_eq!(arch.code() as usize, code);
            assert_eq!(Arch::from_code(code as u16), arch);
            assert_eq!(Arch::from_name(&arch.name()), Some(arch));
        }
        assert_eq!(Arch::from_code(27), Arch::Other(27));
        assert_eq!(Arch::from_name("unknown(27)"), None);
        assert_eq!(Header::decode(&h.encode().unwrap()).unwrap(), h);
    }

    /// A header of format 1.`minor` for the writer string "w" (48 bytes at
    /// least), made `len` bytes long with `trailing` after the writer string.
    fn longer(minor: u16, len: usize, trailing: &[u8]) -> Vec<u8> {
        let mut h = Header::new(StreamKind::Snapshot, Arch::X86_64, 4096);
        h.version_minor = minor;
        h.writer = "w".into();
        let mut b = h.encode().unwrap();
        b.truncate(41);
        b[12..16].copy_from_slice(&(len as u32).to_le_bytes());
        b.extend_from_slice(trailing);
        b.resize(len - 4, 0);
        let crc = crate::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    #[test]
    fn later_minor_versions_may_have_longer_headers() {
        let h = Header::decode(&longer(2, 64, b"new fields")).unwrap();
        assert_eq!((h.version_minor, h.writer.as_str()), (2, "w"));
        assert_eq!(Header::total_len(&longer(9, 4096, b"x")).unwrap(), 4096);
        Header::decode(&longer(9, 4096, b"x")).unwrap();
        for minor in [0, VERSION_MINOR] {
            let e = Header::decode(&longer(minor, 64, &[])).unwrap_err();
            assert!(e.message().contains("expected 48"), "{e}");
            let e = Header::decode(&longer(minor, 48, b"\0\0\x01")).unwrap_err();
            assert!(e.message().contains("padding"), "{e}");
        }
        Header::decode(&longer(VERSION_MINOR, 48, &[])).unwrap();
    }

    #[test]
    fn header_rejects_mangling() {
        let h = Header::new(StreamKind::Snapshot, Arch::X86_64, 4096);
        let b = h.encode().unwrap();
        for i in 0..b.len() {
            let mut m = b.clone();
            m[i] ^= 0x01;
            assert!(Header::decode(&m).is_err(), "flip at {i} accepted");
        }
        let mut crlf = b.clone();
        crlf[4] = b'\n';
        assert!(Header::decode(&crlf)
            .unwrap_err()
            .message()
            .contains("altered"));
    }
}
