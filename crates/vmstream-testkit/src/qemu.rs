//! Hand-made vmstream streams in the layout of a converted QEMU stream
//! (`docs/qemu-mapping.md`): every record framed with a valid checksum,
//! whatever it holds, so tests and fuzz targets reach the conversion back to
//! QEMU instead of stopping at the framing.

use vmstream::header::FEATURE_QEMU_FRAMING;
use vmstream::{Arch, Header, StreamKind};

use crate::{end_record, frame};

/// The QEMU record kinds of `docs/qemu-mapping.md` §2.
pub mod kinds {
    /// `qemu-stream`.
    pub const STREAM: u16 = 0x0100;
    /// `qemu-section`.
    pub const SECTION: u16 = 0x0101;
    /// `qemu-section-end`.
    pub const SECTION_END: u16 = 0x0102;
    /// `qemu-command`.
    pub const COMMAND: u16 = 0x0103;
    /// `qemu-ram-record`.
    pub const RAM_RECORD: u16 = 0x0104;
    /// `qemu-forget`.
    pub const FORGET: u16 = 0x0105;
    /// `qemu-eof`.
    pub const EOF: u16 = 0x0106;
    /// `qemu-vmdesc`.
    pub const VMDESC: u16 = 0x0107;
}

/// Flag of QEMU's block-list RAM record.
pub const FLAG_MEM_SIZE: u64 = 0x004;

/// Section types (`docs/qemu-mapping.md` §2).
pub const SECTION_START: u8 = 1;
/// A middle section of an iterative handler.
pub const SECTION_PART: u8 = 2;
/// The last section of an iterative handler.
pub const SECTION_END: u8 = 3;
/// A complete device section.
pub const SECTION_FULL: u8 = 4;

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn str_field(out: &mut Vec<u8>, s: &[u8]) {
    varint(out, s.len() as u64);
    out.extend_from_slice(s);
}

/// Builds a QEMU-framed vmstream stream one record at a time.
#[derive(Debug, Clone)]
pub struct QemuFramed {
    out: Vec<u8>,
    records: u64,
}

impl QemuFramed {
    /// A stream whose header has the `qemu-framing` feature and this page size
    /// (any `u32`: the header is framed whatever it says).
    pub fn new(page_size: u32) -> QemuFramed {
        let mut h = Header::new(StreamKind::ConvertedFromQemu, Arch::X86_64, 4096);
        h.optional_features |= FEATURE_QEMU_FRAMING;
        let mut out = match h.encode() {
            Ok(b) => b,
            Err(e) => panic!("header must encode: {e}"),
        };
        // the page size at offset 32, then the header checksum again
        out[32..36].copy_from_slice(&page_size.to_le_bytes());
        let n = out.len();
        let crc = crate::crc32c(&out[..n - 4]);
        out[n - 4..].copy_from_slice(&crc.to_le_bytes());
        QemuFramed { out, records: 0 }
    }

    /// Any record, framed with a valid checksum.
    pub fn record(&mut self, kind: u16, flags: u16, body: &[u8]) -> &mut QemuFramed {
        self.out.extend_from_slice(&frame(kind, flags, body));
        self.records += 1;
        self
    }

    /// An optional record of the QEMU range.
    pub fn qemu(&mut self, kind: u16, body: &[u8]) -> &mut QemuFramed {
        self.record(kind, 1, body)
    }

    /// `qemu-stream`: the QEMU stream version and, optionally, the raw
    /// configuration section body.
    pub fn stream(&mut self, version: u32, configuration: Option<&[u8]>) -> &mut QemuFramed {
        let mut b = version.to_le_bytes().to_vec();
        match configuration {
            Some(c) => {
                b.push(1);
                b.extend_from_slice(&(c.len() as u32).to_le_bytes());
                b.extend_from_slice(c);
            }
            None => b.push(0),
        }
        self.qemu(kinds::STREAM, &b)
    }

    /// `qemu-section` of `kind` (1..=4) and `id`; START and FULL sections take
    /// `(idstr, instance_id, version_id)`.
    pub fn section(
        &mut self,
        kind: u8,
        id: u32,
        header: Option<(&str, u32, u32)>,
    ) -> &mut QemuFramed {
        let mut b = vec![kind];
        b.extend_from_slice(&id.to_le_bytes());
        if let Some((idstr, instance, version)) = header {
            b.extend_from_slice(&(idstr.len() as u32).to_le_bytes());
            b.extend_from_slice(idstr.as_bytes());
            b.extend_from_slice(&instance.to_le_bytes());
            b.extend_from_slice(&version.to_le_bytes());
        }
        self.qemu(kinds::SECTION, &b)
    }

    /// `qemu-section-end`.
    pub fn section_end(&mut self, footer: bool) -> &mut QemuFramed {
        self.qemu(kinds::SECTION_END, &[u8::from(footer)])
    }

    /// A standard `ram-blocks` record of `(id, name, size)`, whatever they are
    /// (repeated ids, sizes in part pages), with the block page size 4096.
    pub fn ram_blocks(&mut self, blocks: &[(u32, &str, u64)]) -> &mut QemuFramed {
        let mut b = Vec::new();
        varint(&mut b, blocks.len() as u64);
        for &(id, name, size) in blocks {
            b.extend_from_slice(&id.to_le_bytes());
            str_field(&mut b, name.as_bytes());
            b.extend_from_slice(&size.to_le_bytes());
            b.extend_from_slice(&4096u32.to_le_bytes());
            b.extend_from_slice(&0u32.to_le_bytes());
        }
        self.record(5, 0, &b)
    }

    /// QEMU's block-list RAM record (MEM_SIZE) as a `qemu-ram-record`: the
    /// total size with the flag, then each block's name and size, big-endian.
    pub fn mem_size(&mut self, blocks: &[(&str, u64)]) -> &mut QemuFramed {
        let total = blocks.iter().fold(0u64, |t, b| t.wrapping_add(b.1));
        let mut list = Vec::new();
        for &(name, size) in blocks {
            list.push(name.len() as u8);
            list.extend_from_slice(name.as_bytes());
            list.extend_from_slice(&size.to_be_bytes());
        }
        self.ram_record((total & !0xfff) | FLAG_MEM_SIZE, None, &list)
    }

    /// A `qemu-ram-record`: the wire header, the block name if any, the rest.
    pub fn ram_record(&mut self, header: u64, name: Option<&[u8]>, rest: &[u8]) -> &mut QemuFramed {
        let mut b = header.to_be_bytes().to_vec();
        match name {
            Some(n) => {
                b.push(1);
                b.push(n.len() as u8);
                b.extend_from_slice(n);
            }
            None => b.push(0),
        }
        b.extend_from_slice(rest);
        self.qemu(kinds::RAM_RECORD, &b)
    }

    /// An uncompressed `pages` record: `(index, None)` is a zero page,
    /// `(index, Some(fill))` a data page of `page_size` bytes of `fill`.
    /// Indexes are written as given.
    pub fn pages(
        &mut self,
        block: u32,
        epoch: u32,
        page_size: usize,
        entries: &[(u64, Option<u8>)],
    ) -> &mut QemuFramed {
        let data_pages = entries.iter().filter(|e| e.1.is_some()).count();
        let raw = (data_pages * page_size) as u32;
        let mut b = Vec::new();
        b.extend_from_slice(&block.to_le_bytes());
        b.extend_from_slice(&epoch.to_le_bytes());
        b.extend_from_slice(&[0, 0, 0, 0]);
        b.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        b.extend_from_slice(&raw.to_le_bytes());
        b.extend_from_slice(&raw.to_le_bytes());
        for &(index, fill) in entries {
            let kind = if fill.is_some() { 2 } else { 1 };
            b.extend_from_slice(&((index << 8) | kind).to_le_bytes());
        }
        for &(_, fill) in entries {
            if let Some(f) = fill {
                b.extend(std::iter::repeat_n(f, page_size));
            }
        }
        self.record(6, 0, &b)
    }

    /// A `device` record whose value is the section body as bytes.
    pub fn device_bytes(
        &mut self,
        name: &str,
        instance_id: u32,
        type_name: &str,
        version: u32,
        body: &[u8],
    ) -> &mut QemuFramed {
        let mut b = Vec::new();
        str_field(&mut b, name.as_bytes());
        b.extend_from_slice(&instance_id.to_le_bytes());
        str_field(&mut b, type_name.as_bytes());
        b.extend_from_slice(&version.to_le_bytes());
        b.push(0x0c);
        str_field(&mut b, body);
        self.record(4, 0, &b)
    }

    /// `qemu-command`.
    pub fn command(&mut self, cmd: u16, payload: &[u8]) -> &mut QemuFramed {
        let mut b = cmd.to_le_bytes().to_vec();
        b.extend_from_slice(payload);
        self.qemu(kinds::COMMAND, &b)
    }

    /// `qemu-forget`.
    pub fn forget(&mut self) -> &mut QemuFramed {
        self.qemu(kinds::FORGET, &[])
    }

    /// `qemu-eof`.
    pub fn eof(&mut self) -> &mut QemuFramed {
        self.qemu(kinds::EOF, &[])
    }

    /// `qemu-vmdesc`.
    pub fn vmdesc(&mut self, in_stream: bool, json: &[u8]) -> &mut QemuFramed {
        let mut b = vec![u8::from(in_stream)];
        b.extend_from_slice(json);
        self.qemu(kinds::VMDESC, &b)
    }

    /// Records so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// The stream with its `end` record.
    pub fn finish(&self) -> Vec<u8> {
        let mut out = self.out.clone();
        out.extend_from_slice(&end_record(self.records));
        out
    }

    /// The stream as it is, without an `end` record.
    pub fn unfinished(&self) -> Vec<u8> {
        self.out.clone()
    }
}

/// A small sound converted QEMU stream: one RAM section (start and end) with
/// the given blocks `(name, size)` and pages `(block, index, fill)` sent in
/// the start section, then EOF. What a hostile variant changes is up to the
/// caller; this is the frame around it.
pub fn ram_stream(
    page_size: u32,
    blocks: &[(&str, u64)],
    pages: &[(u32, u64, Option<u8>)],
) -> Vec<u8> {
    let mut s = QemuFramed::new(page_size);
    s.stream(3, None)
        .section(SECTION_START, 2, Some(("ram", 0, 4)));
    let defs: Vec<(u32, &str, u64)> = blocks
        .iter()
        .enumerate()
        .map(|(i, &(n, size))| (i as u32, n, size))
        .collect();
    s.ram_blocks(&defs).mem_size(blocks);
    for &(block, index, fill) in pages {
        s.pages(block, 0, page_size as usize, &[(index, fill)]);
    }
    s.section_end(false)
        .section(SECTION_END, 2, None)
        .section_end(false)
        .eof();
    s.finish()
}
