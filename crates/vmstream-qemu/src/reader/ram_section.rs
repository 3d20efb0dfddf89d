//! RAM section records: the block list, page records, and the records kept as they came.

use std::io::Read;

use vmstream::{Error, ErrorKind, Result};

use super::{malformed, QemuReader};
use crate::event::{Event, QemuRamBlock, SectionHeader, SectionKind, Sink};
use crate::mapped_ram::{self, MappedRamHeader, HEADER_LEN};
use crate::ram::*;

impl<R: Read> QemuReader<R> {
    pub(super) fn ram_section(
        &mut self,
        kind: SectionKind,
        id: u32,
        header: Option<&SectionHeader>,
        sink: &mut dyn Sink,
    ) -> Result<()> {
        sink.event(&Event::Section { kind, id, header })?;
        let ps = self.page_size;
        loop {
            let at = self.input.offset();
            let hb = self.input.peek(8, "RAM record header")?;
            let hdr = u64::from_be_bytes(hb.try_into().unwrap_or_default());
            let flags = hdr & (ps - 1);
            let addr = hdr & !(ps - 1);
            let kind = flags & !FLAG_CONTINUE;
            match kind {
                FLAG_EOS => {
                    if hdr != FLAG_EOS {
                        return Err(malformed(
                            format!("EOS record with extra bits {hdr:#x}"),
                            at,
                        ));
                    }
                    self.input.advance(8);
                    return Ok(());
                }
                FLAG_MEM_SIZE if flags == kind => self.mem_size(hdr, at, sink)?,
                FLAG_ZERO | FLAG_PAGE | FLAG_XBZRLE | FLAG_COMPRESS_PAGE | FLAG_MULTIFD_FLUSH
                    if self.mapped_ram =>
                {
                    return Err(malformed(
                        format!("RAM record {hdr:#018x} in a mapped-ram stream, whose pages sit in their blocks' slots (QEMU refuses page and flush records there)"),
                        at,
                    ))
                }
                FLAG_MULTIFD_FLUSH if hdr == FLAG_MULTIFD_FLUSH => {
                    self.input.advance(8);
                    sink.event(&Event::RamRecord {
                        header: hdr,
                        name: None,
                        payload: &[],
                    })?;
                }
                FLAG_ZERO | FLAG_PAGE | FLAG_XBZRLE | FLAG_COMPRESS_PAGE => {
                    self.page_record(hdr, kind, addr, flags & FLAG_CONTINUE != 0, at, sink)?
                }
                FLAG_HOOK => {
                    return Err(Error::new(
                        ErrorKind::Unsupported,
                        "RDMA hook record in a RAM section",
                    )
                    .at_offset(at))
                }
                _ => {
                    return Err(malformed(
                        format!(
                        "RAM record with unknown flag combination {flags:#x} (header {hdr:#018x})"
                    ),
                        at,
                    ))
                }
            }
        }
    }

    fn mem_size(&mut self, hdr: u64, at: u64, sink: &mut dyn Sink) -> Result<()> {
        if !self.blocks.is_empty() {
            return Err(
                Error::new(ErrorKind::Unsupported, "a second RAM block list").at_offset(at),
            );
        }
        if self.postcopy_huge {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "postcopy stream with huge-page RAM blocks (the per-block page size fields cannot be told apart)",
            )
            .at_offset(at));
        }
        self.input.advance(8);
        if self.mapped_ram {
            return self.mapped_blocks(hdr, sink);
        }
        let mut raw = hdr.to_be_bytes().to_vec();
        let total = hdr & !(self.page_size - 1);
        let mut left = total;
        let mut blocks = Vec::new();
        while left > 0 {
            let block = self.block_entry(blocks.len(), total, &mut left, &mut raw)?;
            blocks.push(block);
        }
        self.blocks = blocks;
        sink.event(&Event::RamBlocks {
            raw: &raw,
            blocks: &self.blocks,
        })
    }

    /// One entry of the block list (`count` read before it; `left` of the
    /// list's `total` bytes not yet listed), its bytes appended to `raw`.
    fn block_entry(
        &mut self,
        count: usize,
        total: u64,
        left: &mut u64,
        raw: &mut Vec<u8>,
    ) -> Result<QemuRamBlock> {
        let bat = self.input.offset();
        if count >= self.limits.max_ram_blocks as usize {
            return Err(Error::new(
                ErrorKind::LimitExceeded,
                format!("more than {count} RAM blocks (Limits::max_ram_blocks)"),
            )
            .at_offset(bat));
        }
        let name = self.input.cstr("RAM block name")?;
        let b = self.input.take(8, "RAM block length")?;
        let size = u64::from_be_bytes(b.try_into().unwrap_or_default());
        raw.push(name.len() as u8);
        raw.extend_from_slice(name.as_bytes());
        raw.extend_from_slice(&size.to_be_bytes());
        if size > *left || size % self.page_size != 0 || name.is_empty() {
            return Err(malformed(
                format!("RAM block {name:?} of {size:#x} bytes does not fit the list total {total:#x} ({left:#x} left) in whole pages"),
                bat,
            ));
        }
        *left -= size;
        let addr = if self.ignore_shared {
            let b = self.input.take(8, "RAM block address")?;
            raw.extend_from_slice(b);
            Some(u64::from_be_bytes(b.try_into().unwrap_or_default()))
        } else {
            None
        };
        Ok(QemuRamBlock {
            name,
            size,
            page_size: None,
            addr,
        })
    }

    /// The block list of a mapped-ram stream: each entry is followed by its
    /// header, bitmap and page slots ([`crate::mapped_ram`]). Every offset is
    /// checked before the reader moves to it, and only forward.
    fn mapped_blocks(&mut self, hdr: u64, sink: &mut dyn Sink) -> Result<()> {
        let ps = self.page_size;
        sink.event(&Event::RamBlocks {
            raw: &hdr.to_be_bytes(),
            blocks: &[],
        })?;
        let total = hdr & !(ps - 1);
        let mut left = total;
        while left > 0 {
            let mut entry = Vec::new();
            let QemuRamBlock {
                name, size, addr, ..
            } = self.block_entry(self.blocks.len(), total, &mut left, &mut entry)?;
            let hat = self.input.offset();
            let header = MappedRamHeader::parse(self.input.take(HEADER_LEN, "mapped-ram header")?)
                .ok_or_else(|| malformed("mapped-ram header", hat))?;
            let layout = header.check(&name, hat, size, ps)?;
            if layout.bitmap_len > self.limits.max_alloc {
                return Err(Error::new(
                    ErrorKind::LimitExceeded,
                    format!(
                        "mapped-ram bitmap of {} bytes (block {name:?} of {size:#x} bytes) exceeds Limits::max_alloc",
                        layout.bitmap_len
                    ),
                )
                .at_offset(hat + 4));
            }
            if let Some(len) = self.input.len() {
                if layout.end > len {
                    return Err(malformed(
                        format!(
                            "mapped-ram header of RAM block {name:?}, field pages_offset: its page slots run from {:#x} to {:#x}, past the end of the file at {len:#x}",
                            layout.pages_offset, layout.end
                        ),
                        hat + 20,
                    ));
                }
            }
            let bitmap = self
                .input
                .take(layout.bitmap_len as usize, "mapped-ram bitmap")?
                .to_vec();
            let index = u32::try_from(self.blocks.len()).unwrap_or(u32::MAX);
            self.blocks.push(QemuRamBlock {
                name,
                size,
                page_size: None,
                addr,
            });
            let block = &self.blocks[self.blocks.len() - 1];
            sink.event(&Event::MappedBlock {
                index,
                block,
                entry: &entry,
                header: &header,
                bitmap: &bitmap,
            })?;
            for (first, n) in mapped_ram::runs(&bitmap, layout.pages) {
                self.input
                    .skip_to(layout.slot(first, ps), "a mapped-ram page slot")?;
                for i in first..first + n {
                    let data = self.input.take(ps as usize, "mapped-ram page")?;
                    sink.event(&Event::Page {
                        block: index,
                        index: i,
                        data: Some(data),
                    })?;
                }
            }
            self.input
                .skip_to(layout.end, "the end of a block's mapped-ram page slots")?;
        }
        Ok(())
    }

    fn page_record(
        &mut self,
        hdr: u64,
        kind: u64,
        addr: u64,
        cont: bool,
        at: u64,
        sink: &mut dyn Sink,
    ) -> Result<()> {
        let ps = self.page_size as usize;
        let name_len = if cont {
            0
        } else {
            1 + usize::from(self.input.peek(9, "RAM block name")?[8])
        };
        let fixed = 8 + name_len;
        let payload_len = match kind {
            FLAG_ZERO => 1,
            FLAG_PAGE => ps,
            FLAG_XBZRLE => {
                let b = self.input.peek(fixed + 3, "XBZRLE header")?;
                if b[fixed] != 1 {
                    return Err(malformed(
                        format!("XBZRLE marker {:#04x} (expected 0x01)", b[fixed]),
                        at,
                    ));
                }
                let len = usize::from(u16::from_be_bytes([b[fixed + 1], b[fixed + 2]]));
                if len > ps {
                    return Err(malformed(
                        format!("XBZRLE delta of {len} bytes exceeds the page size"),
                        at,
                    ));
                }
                3 + len
            }
            _ => {
                let b = self.input.peek(fixed + 4, "compressed page length")?;
                let len = u32::from_be_bytes([b[fixed], b[fixed + 1], b[fixed + 2], b[fixed + 3]])
                    as usize;
                if len > ps.saturating_mul(2).saturating_add(1024) {
                    return Err(malformed(
                        format!(
                            "compressed page of {len} bytes is larger than any page compresses to"
                        ),
                        at,
                    ));
                }
                if len > self.limits.max_record_size as usize {
                    return Err(Error::new(
                        ErrorKind::LimitExceeded,
                        format!("compressed page of {len} bytes exceeds Limits::max_record_size"),
                    )
                    .at_offset(at));
                }
                4 + len
            }
        };
        let rec = self.input.peek(fixed + payload_len, "RAM record")?;
        let name = (!cont).then(|| &rec[9..fixed]);
        let payload = &rec[fixed..];
        let block = match name {
            None => self.last_block.ok_or_else(|| {
                malformed(
                    "RAM page record continues a block, but no block was named before",
                    at,
                )
            })?,
            Some(n) => {
                let found = match self.last_block {
                    Some(b) if self.blocks[b as usize].name.as_bytes() == n => Some(b),
                    _ => self
                        .blocks
                        .iter()
                        .position(|b| b.name.as_bytes() == n)
                        .map(|i| i as u32),
                };
                found.ok_or_else(|| {
                    malformed(
                        format!("RAM page of unknown block {:?}", String::from_utf8_lossy(n)),
                        at,
                    )
                })?
            }
        };
        let blk = &self.blocks[block as usize];
        let index = addr / self.page_size;
        if addr >= blk.size {
            return Err(malformed(
                format!(
                    "RAM page at offset {addr:#x} is beyond block {:?} ({:#x} bytes)",
                    blk.name, blk.size
                ),
                at,
            ));
        }
        let forget = name.is_some() && self.last_block == Some(block);
        let plain = kind == FLAG_PAGE || (kind == FLAG_ZERO && payload[0] == 0);
        if plain && forget {
            sink.event(&Event::Forget)?;
        }
        let ev = match kind {
            FLAG_PAGE => Event::Page {
                block,
                index,
                data: Some(payload),
            },
            FLAG_ZERO if payload[0] == 0 => Event::Page {
                block,
                index,
                data: None,
            },
            _ => Event::RamRecord {
                header: hdr,
                name,
                payload,
            },
        };
        sink.event(&ev)?;
        self.last_block = Some(block);
        self.input.advance(fixed + payload_len);
        Ok(())
    }
}
