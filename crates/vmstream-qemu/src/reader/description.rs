//! Where the device description comes from: read ahead from a file's own
//! trailer, supplied from a twin stream, or found by buffering the rest of a
//! piped stream (its trailer comes last); and the trailer itself.

use std::io::Read;

use vmstream::{Error, ErrorKind, Result};

use super::{malformed, QemuReader};
use crate::event::{Event, Sink};
use crate::mapping::QEMU_PAGE_SIZES;
use crate::vmdesc::{self, Vmdesc};
use crate::wire::VMDESC;

impl<R: Read> QemuReader<R> {
    /// Parses and keeps a description; `at` is the stream offset of its JSON
    /// text, for errors (`None` when it is not where the stream is now).
    pub(super) fn set_vmdesc(
        &mut self,
        json: Vec<u8>,
        in_stream: bool,
        at: Option<u64>,
    ) -> Result<()> {
        let locate = |e: Error| match at {
            Some(at) => e.at_offset(at),
            None => e,
        };
        let d = Vmdesc::parse_limited(&json, &self.limits).map_err(locate)?;
        // Before the first section and without a page size from the
        // configuration, the description's page size is the stream's.
        let adopt = !self.page_bits_given
            && !self.target_sent
            && u32::try_from(d.page_size).is_ok_and(|p| QEMU_PAGE_SIZES.contains(&p))
            && d.page_size <= u64::from(self.limits.max_record_size).min(self.limits.max_alloc);
        if d.page_size != self.page_size && !adopt {
            return Err(locate(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "vmdesc page size {} differs from the stream's {}",
                    d.page_size, self.page_size
                ),
            )));
        }
        self.vmdesc = Some(d);
        self.vmdesc_json = Some((json, in_stream));
        Ok(())
    }

    pub(super) fn emit_vmdesc(&mut self, sink: &mut dyn Sink) -> Result<()> {
        if let (false, Some((json, in_stream))) = (self.vmdesc_emitted, &self.vmdesc_json) {
            self.vmdesc_emitted = true;
            sink.event(&Event::Vmdesc {
                json,
                in_stream: *in_stream,
            })?;
        }
        Ok(())
    }

    /// Makes sure a description is known if the stream or the caller has one.
    pub(super) fn find_vmdesc(&mut self) -> Result<()> {
        // A live stream is buffered to its trailer even when the description
        // is known: reads past the trailer would wait for the sender.
        if (self.vmdesc.is_some() && !self.live) || self.rest_buffered {
            return Ok(());
        }
        self.buffer_rest()?;
        let base = self.input.offset();
        if let Some(p) = vmdesc::find_trailer(self.input.avail()) {
            let json = self.input.avail()[p + 5..].to_vec();
            self.trailer_at = Some(base + p as u64);
            return self.set_vmdesc(json, true, Some(base + p as u64 + 5));
        }
        if let Some((json, _)) = self.supplied.take() {
            // A twin stream's description: an error is placed at the section
            // that needed it.
            self.set_vmdesc(json, false, None)?;
        }
        Ok(())
    }

    /// Buffers the rest of the stream: to the end of the input, or, for a
    /// live stream, until it ends with its trailer.
    pub(super) fn buffer_rest(&mut self) -> Result<()> {
        if !self.rest_buffered {
            let mut watch = vmdesc::TrailerWatch::default();
            let live = self.live;
            self.input
                .buffer_rest(self.limits.max_alloc, |data| live && watch.complete(data))?;
            self.rest_buffered = true;
        }
        Ok(())
    }

    pub(super) fn trailer(&mut self, sink: &mut dyn Sink) -> Result<()> {
        let at = self.input.offset();
        if let Some(t) = self.trailer_at {
            if t != at {
                return Err(malformed(
                    format!(
                        "the stream ends (EOF) at {at:#x}, but its vmdesc trailer starts at {t:#x}"
                    ),
                    at,
                ));
            }
        }
        match self.input.peek_u8()? {
            None => {
                if self.vmdesc_json.as_ref().is_some_and(|(_, own)| *own) {
                    return Err(malformed("the vmdesc trailer is missing after EOF", at));
                }
            }
            Some(VMDESC) => {
                self.input.advance(1);
                let len = u64::from(self.input.u32("vmdesc length")?);
                // Checked before any byte is read: parsing takes the text twice.
                if len.saturating_mul(2) > self.limits.max_alloc {
                    return Err(Error::new(
                        ErrorKind::LimitExceeded,
                        format!(
                            "vmdesc of {len} bytes: parsing it needs more than Limits::max_alloc ({} bytes)",
                            self.limits.max_alloc
                        ),
                    )
                    .at_offset(at));
                }
                let json = self.input.take(len as usize, "vmdesc")?.to_vec();
                match &self.vmdesc_json {
                    Some((own, true)) if *own != json => {
                        return Err(malformed(
                            "the vmdesc trailer differs from the one read ahead",
                            at,
                        ))
                    }
                    Some((_, true)) => {}
                    _ => {
                        self.vmdesc_emitted = false;
                        self.set_vmdesc(json, true, Some(at + 5))?;
                    }
                }
            }
            Some(b) => {
                return Err(malformed(
                    format!("byte {b:#04x} after EOF (expected the vmdesc trailer or the end)"),
                    at,
                ))
            }
        }
        self.emit_vmdesc(sink)?;
        if !self.live && self.input.fill(1)? > 0 {
            return Err(malformed(
                "data after the end of the stream",
                self.input.offset(),
            ));
        }
        Ok(())
    }
}
