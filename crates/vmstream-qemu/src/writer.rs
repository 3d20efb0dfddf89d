//! The QEMU stream writer: [`Event`]s to bytes.

use std::collections::HashMap;
use std::io::Write;

use vmstream::{Error, ErrorKind, Result, Value};

use crate::event::{Event, QemuRamBlock, SectionKind, Sink};
use crate::ram::{FLAG_CONTINUE, FLAG_EOS, FLAG_PAGE, FLAG_ZERO};
use crate::vmdesc::{self, Vmdesc};
use crate::{MAGIC, VERSION};

/// Writes a QEMU migration stream from events, byte for byte as the events
/// describe it: block names are left out exactly where QEMU leaves them out
/// (same block as the previous page record, unless a [`Event::Forget`] came
/// between), and typed device values are encoded back through the vmdesc.
#[derive(Debug)]
pub struct QemuWriter<W: Write> {
    out: W,
    page_size: u64,
    blocks: Vec<QemuRamBlock>,
    last_block: Option<u32>,
    /// Section id to "is RAM", for SectionEnd.
    sections: HashMap<u32, bool>,
    current: Option<u32>,
    vmdesc: Option<Vmdesc>,
    trailer: Option<Vec<u8>>,
    eof: bool,
    devices: usize,
    buf: Vec<u8>,
    max_depth: u32,
}

fn usage(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Usage, msg.into())
}

/// The one-byte length QEMU puts before an idstr or block name.
fn name_len(name: &str) -> Result<u8> {
    u8::try_from(name.len()).map_err(|_| {
        usage(format!(
            "name of {} bytes; QEMU names have at most 255",
            name.len()
        ))
    })
}

impl<W: Write> QemuWriter<W> {
    /// A writer to `out` (wrap it in a `BufWriter` for speed).
    pub fn new(out: W, page_size: u64) -> QemuWriter<W> {
        QemuWriter {
            out,
            page_size,
            blocks: Vec::new(),
            last_block: None,
            sections: HashMap::new(),
            current: None,
            vmdesc: None,
            trailer: None,
            eof: false,
            devices: 0,
            buf: Vec::new(),
            max_depth: 128,
        }
    }

    /// Flushes and returns the inner writer.
    pub fn finish(mut self) -> Result<W> {
        if !self.eof {
            return Err(usage("the stream has no EOF"));
        }
        self.out.flush()?;
        Ok(self.out)
    }

    fn page_header(&mut self, flags: u64, block: u32, index: u64) -> Result<()> {
        let b = self.blocks.get(block as usize).ok_or_else(|| {
            usage(format!(
                "page of RAM block {block}, but the list has {}",
                self.blocks.len()
            ))
        })?;
        let addr = index
            .checked_mul(self.page_size)
            .filter(|&a| a < b.size)
            .ok_or_else(|| {
                usage(format!(
                    "page {index} is beyond RAM block {:?} ({} bytes)",
                    b.name, b.size
                ))
            })?;
        if self.last_block == Some(block) {
            self.out
                .write_all(&(addr | flags | FLAG_CONTINUE).to_be_bytes())?;
        } else {
            let len = name_len(&b.name)?;
            self.out.write_all(&(addr | flags).to_be_bytes())?;
            self.out.write_all(&[len])?;
            self.out.write_all(b.name.as_bytes())?;
        }
        self.last_block = Some(block);
        Ok(())
    }
}

impl<W: Write> Sink for QemuWriter<W> {
    fn event(&mut self, ev: &Event<'_>) -> Result<()> {
        match ev {
            Event::Header { version } => {
                if *version != VERSION {
                    return Err(usage(format!(
                        "QEMU stream version {version} cannot be written"
                    )));
                }
                self.out.write_all(&MAGIC)?;
                self.out.write_all(&VERSION.to_be_bytes())?;
            }
            Event::Configuration { raw, .. } => {
                self.out.write_all(&[0x07])?;
                self.out.write_all(raw)?;
            }
            Event::Section { kind, id, header } => {
                let len = header.map(|h| name_len(&h.idstr)).transpose()?;
                self.out.write_all(&[kind.code()])?;
                self.out.write_all(&id.to_be_bytes())?;
                if let (Some(h), Some(len)) = (header, len) {
                    self.out.write_all(&[len])?;
                    self.out.write_all(h.idstr.as_bytes())?;
                    self.out.write_all(&h.instance_id.to_be_bytes())?;
                    self.out.write_all(&h.version_id.to_be_bytes())?;
                    let ram = h.idstr == "ram" && *kind == SectionKind::Start;
                    self.sections.insert(*id, ram);
                }
                self.current = Some(*id);
            }
            Event::RamBlocks { raw, blocks } => {
                self.out.write_all(raw)?;
                self.blocks = blocks.to_vec();
            }
            Event::Page { block, index, data } => match data {
                Some(d) => {
                    self.page_header(FLAG_PAGE, *block, *index)?;
                    self.out.write_all(d)?;
                }
                None => {
                    self.page_header(FLAG_ZERO, *block, *index)?;
                    self.out.write_all(&[0])?;
                }
            },
            Event::Forget => self.last_block = None,
            Event::RamRecord {
                header,
                name,
                payload,
            } => {
                self.out.write_all(&header.to_be_bytes())?;
                if let Some(n) = name {
                    let len = u8::try_from(n.len())
                        .map_err(|_| usage("block name longer than 255 bytes"))?;
                    self.out.write_all(&[len])?;
                    self.out.write_all(n)?;
                    self.last_block = self
                        .blocks
                        .iter()
                        .position(|b| b.name.as_bytes() == *n)
                        .map(|i| i as u32);
                }
                self.out.write_all(payload)?;
            }
            Event::Device(state) => {
                let ordinal = self.devices;
                self.devices += 1;
                match &state.value {
                    Value::Bytes(b) => self.out.write_all(b)?,
                    v => {
                        let obj = self
                            .vmdesc
                            .as_ref()
                            .and_then(|d| d.devices.get(ordinal))
                            .and_then(|d| d.vmsd.as_ref())
                            .ok_or_else(|| {
                                usage(format!(
                                    "device {:?} has typed state but no vmdesc entry describes it",
                                    state.name
                                ))
                            })?;
                        self.buf.clear();
                        vmdesc::encode(obj, v, &mut self.buf)
                            .map_err(|e| e.in_device(&state.name))?;
                        self.out.write_all(&self.buf)?;
                    }
                }
            }
            Event::SectionEnd { footer } => {
                let id = self
                    .current
                    .take()
                    .ok_or_else(|| usage("section end outside a section"))?;
                if self.sections.get(&id).copied().unwrap_or(false) {
                    self.out.write_all(&FLAG_EOS.to_be_bytes())?;
                }
                if *footer {
                    self.out.write_all(&[0x7e])?;
                    self.out.write_all(&id.to_be_bytes())?;
                }
            }
            Event::Command { cmd, payload } => {
                self.out.write_all(&[0x08])?;
                self.out.write_all(&cmd.to_be_bytes())?;
                let len = u16::try_from(payload.len())
                    .map_err(|_| usage("command payload longer than 65535 bytes"))?;
                self.out.write_all(&len.to_be_bytes())?;
                self.out.write_all(payload)?;
            }
            Event::Eof => {
                self.out.write_all(&[0x00])?;
                self.eof = true;
                if let Some(t) = self.trailer.take() {
                    self.write_trailer(&t)?;
                }
            }
            Event::Vmdesc { json, in_stream } => {
                self.vmdesc = Some(Vmdesc::parse(json, self.max_depth)?);
                if *in_stream {
                    if self.eof {
                        self.write_trailer(json)?;
                    } else {
                        self.trailer = Some(json.to_vec());
                    }
                }
            }
        }
        Ok(())
    }
}

impl<W: Write> QemuWriter<W> {
    fn write_trailer(&mut self, json: &[u8]) -> Result<()> {
        let len = u32::try_from(json.len()).map_err(|_| usage("vmdesc larger than 4 GiB"))?;
        self.out.write_all(&[0x06])?;
        self.out.write_all(&len.to_be_bytes())?;
        self.out.write_all(json)?;
        Ok(())
    }
}
