//! The configuration section: machine type, target page size, capabilities, UUID.

use std::io::Read;

use vmstream::{Error, ErrorKind, Result};

use super::{malformed, QemuReader};
use crate::event::{Event, Sink};
use crate::mapping::QEMU_PAGE_SIZES;
use crate::wire::SUBSECTION;

impl<R: Read> QemuReader<R> {
    pub(super) fn configuration(&mut self, sink: &mut dyn Sink) -> Result<()> {
        let start = self.input.offset() + 1;
        let mut raw = Vec::new();
        self.input.advance(1);
        let len = self.input.u32("configuration machine name length")?;
        if len > 256 {
            return Err(malformed(
                format!("configuration machine name is {len} bytes long (at most 256)"),
                start,
            ));
        }
        raw.extend_from_slice(&len.to_be_bytes());
        let name = self
            .input
            .take(len as usize, "configuration machine name")?;
        raw.extend_from_slice(name);
        let machine = String::from_utf8(name.to_vec())
            .map_err(|_| malformed("configuration machine name is not UTF-8", start + 4))?;
        loop {
            let at = self.input.offset();
            let next = self.input.peek(2, "configuration").map(|b| (b[0], b[1]));
            let Ok((SUBSECTION, n)) = next else { break };
            let head = self
                .input
                .peek(2 + usize::from(n), "configuration subsection name")?;
            if !head[2..].starts_with(b"configuration") {
                break;
            }
            let name = String::from_utf8_lossy(&head[2..]).into_owned();
            let head_len = head.len();
            raw.extend_from_slice(head);
            self.input.advance(head_len);
            let version = self.input.u32("configuration subsection version")?;
            raw.extend_from_slice(&version.to_be_bytes());
            match name.as_str() {
                "configuration/target-page-bits" => {
                    let bits = self.input.u32("target page bits")?;
                    raw.extend_from_slice(&bits.to_be_bytes());
                    let size = 1u32
                        .checked_shl(bits)
                        .filter(|s| QEMU_PAGE_SIZES.contains(s));
                    let Some(size) = size.map(u64::from) else {
                        return Err(malformed(
                            format!(
                                "target page bits {bits} out of range (QEMU's target pages are {} to {} bytes)",
                                QEMU_PAGE_SIZES.start(),
                                QEMU_PAGE_SIZES.end()
                            ),
                            at,
                        ));
                    };
                    // A page is held whole in the input buffer and in a record.
                    let max = u64::from(self.limits.max_record_size).min(self.limits.max_alloc);
                    if size > max {
                        return Err(Error::new(
                            ErrorKind::LimitExceeded,
                            format!("target page size of {size} bytes (page bits {bits}) exceeds Limits::max_record_size or max_alloc ({max} bytes)"),
                        )
                        .at_offset(at));
                    }
                    self.page_size = size;
                    self.page_bits_given = true;
                }
                "configuration/capabilities" => {
                    let count = self.input.u32("capability count")?;
                    raw.extend_from_slice(&count.to_be_bytes());
                    if count > 64 {
                        return Err(malformed(format!("{count} capabilities (at most 64)"), at));
                    }
                    for _ in 0..count {
                        let cap = self.input.cstr("capability name")?;
                        raw.push(cap.len() as u8);
                        raw.extend_from_slice(cap.as_bytes());
                        match cap.as_str() {
                            "x-ignore-shared" => self.ignore_shared = true,
                            crate::mapped_ram::CAPABILITY => self.mapped_ram = true,
                            _ => {}
                        }
                    }
                }
                "configuration/uuid" => {
                    raw.extend_from_slice(self.input.take(16, "configuration uuid")?)
                }
                other => {
                    return Err(Error::new(
                        ErrorKind::Unsupported,
                        format!("unknown configuration subsection {other:?}"),
                    )
                    .at_offset(at))
                }
            }
        }
        self.arch_candidates = crate::arch::candidates(&machine);
        self.summary.machine = Some(machine.clone());
        sink.event(&Event::Configuration {
            raw: &raw,
            machine: &machine,
        })
    }
}
