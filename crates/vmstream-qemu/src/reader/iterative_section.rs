//! Sections of the iterative handlers other than RAM: their bodies cut into
//! units by [`crate::iterative::Framer`] and handed on as they came.

use std::io::Read;

use vmstream::Result;

use super::{malformed, QemuReader};
use crate::event::{Event, SectionHeader, SectionKind, Sink};
use crate::iterative::{Framer, Handler, Step};

impl<R: Read> QemuReader<R> {
    pub(super) fn iterative_section(
        &mut self,
        kind: SectionKind,
        id: u32,
        header: Option<&SectionHeader>,
        handler: Handler,
        sink: &mut dyn Sink,
    ) -> Result<()> {
        sink.event(&Event::Section { kind, id, header })?;
        let max = u64::from(self.limits.max_record_size).min(self.limits.max_alloc);
        let mut framer = Framer::new(handler, self.page_size, max);
        loop {
            let at = self.input.offset();
            let mut want = 1;
            let (len, last) = loop {
                let have = self.input.fill(want)?;
                match framer
                    .step(self.input.avail())
                    .map_err(|e| e.at_offset(at))?
                {
                    Step::Need(n) if n > have => {
                        if have < want {
                            return Err(malformed(
                                format!(
                                    "truncated stream: a {} unit needs {n} bytes, {have} left",
                                    handler.idstr()
                                ),
                                at,
                            ));
                        }
                        want = n;
                    }
                    Step::Need(n) => {
                        return Err(malformed(
                            format!(
                                "{} framing asked for {n} bytes with {have} at hand",
                                handler.idstr()
                            ),
                            at,
                        ))
                    }
                    Step::Unit { len, last } => break (len, last),
                }
            };
            let raw = self.input.peek(len, "iterative section unit")?;
            sink.event(&Event::SectionData { raw })?;
            self.input.advance(len);
            if last {
                return Ok(());
            }
        }
    }
}
