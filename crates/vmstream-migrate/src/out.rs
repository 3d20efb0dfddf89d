//! The streams of a migration as both drivers use them: [`Out`], one
//! outgoing stream whose records gather in a buffer that goes out in large
//! writes (page batches are framed straight from the sender's page buffer, so
//! a 4 KiB page costs no syscall of its own); control messages read and
//! written; and the digests both sides compute.

use std::collections::BTreeMap;
use std::io::Write;

use vmstream::{
    DeviceState, FrameEncoder, Frames, Header, RamBlock, Record, StreamReader, StreamWriter, Value,
    WriterOptions,
};

use crate::proto::{self, Control};
use crate::vm::Vm;
use crate::Error;

/// Writes go out once this much is gathered.
const FLUSH_AT: usize = 1 << 20;

pub(crate) struct Out<W: Write> {
    enc: FrameEncoder,
    buf: Vec<u8>,
    w: W,
}

impl<W: Write> Out<W> {
    pub(crate) fn new(w: W, header: Header, options: WriterOptions) -> Result<Out<W>, Error> {
        let enc = FrameEncoder::new(header, options)?;
        let mut buf = Vec::with_capacity(FLUSH_AT + (2 << 20));
        buf.extend_from_slice(enc.header_bytes());
        Ok(Out { enc, buf, w })
    }

    fn take(buf: &mut Vec<u8>, frames: vmstream::Result<Frames<'_>>) -> Result<(), Error> {
        frames?.append_to(buf);
        Ok(())
    }

    /// Writes what is gathered.
    pub(crate) fn flush(&mut self) -> Result<(), Error> {
        if !self.buf.is_empty() {
            if let Err(e) = self.w.write_all(&self.buf).and_then(|()| self.w.flush()) {
                self.enc.fail(format!("write failed: {e}"));
                return Err(vmstream::Error::from(e).at_offset(self.enc.offset()).into());
            }
            self.buf.clear();
        }
        Ok(())
    }

    fn maybe_flush(&mut self) -> Result<(), Error> {
        if self.buf.len() >= FLUSH_AT {
            self.flush()?;
        }
        Ok(())
    }

    /// Pages of one block and epoch (zero pages elided by the encoder).
    pub(crate) fn pages(
        &mut self,
        block: u32,
        epoch: u32,
        pages: &[(u64, &[u8])],
    ) -> Result<(), Error> {
        Out::<W>::take(&mut self.buf, self.enc.pages(block, epoch, pages))?;
        self.maybe_flush()
    }

    /// An epoch barrier, sent at once.
    pub(crate) fn epoch(&mut self, epoch: u32) -> Result<(), Error> {
        Out::<W>::take(&mut self.buf, self.enc.epoch(epoch))?;
        self.flush()
    }

    pub(crate) fn info(&mut self, info: &Value) -> Result<(), Error> {
        Out::<W>::take(&mut self.buf, self.enc.info(info))
    }

    pub(crate) fn ram_blocks(&mut self, blocks: &[RamBlock]) -> Result<(), Error> {
        Out::<W>::take(&mut self.buf, self.enc.ram_blocks(blocks))
    }

    pub(crate) fn device(&mut self, dev: &DeviceState) -> Result<(), Error> {
        Out::<W>::take(&mut self.buf, self.enc.device(dev))?;
        self.maybe_flush()
    }

    /// A control message, sent at once.
    pub(crate) fn control(&mut self, msg: &Control) -> Result<(), Error> {
        Out::<W>::take(
            &mut self.buf,
            self.enc.raw_record(proto::CONTROL, true, &msg.encode()),
        )?;
        self.flush()
    }

    /// The end record, sent at once.
    pub(crate) fn finish(&mut self) -> Result<(), Error> {
        Out::<W>::take(&mut self.buf, self.enc.finish())?;
        self.flush()
    }
}

/// CRC32C of every region's contents, by name.
pub(crate) fn memory_digests(vm: &Vm) -> Result<BTreeMap<String, u32>, Error> {
    vm.memory
        .regions()
        .into_iter()
        .map(|r| {
            let crc = vm
                .memory
                .crc32c(&r)
                .map_err(|e| Error::vm(format!("reading region {}: {e}", r.name)))?;
            Ok((r.name, crc))
        })
        .collect()
}

/// CRC32C of a device state's canonical JSON.
pub(crate) fn device_digest(v: &vmstream::Value) -> u32 {
    vmstream::crc32c(v.to_json().to_string().as_bytes())
}

/// Reads the next control message from the peer's stream.
pub(crate) fn read_control<R: std::io::Read>(r: &mut StreamReader<R>) -> Result<Control, Error> {
    loop {
        let Some(item) = r.next()? else {
            return Err(Error::peer("the peer ended its stream"));
        };
        match item.record {
            Record::Other(raw) if raw.kind == proto::CONTROL => {
                return Control::decode(raw.body).map_err(Error::peer)
            }
            Record::Names { .. } => continue,
            _ => {
                return Err(Error::peer(format!(
                    "expected a control message, got a {:?} record at offset {}",
                    item.kind, item.offset
                )));
            }
        }
    }
}

/// Sends a control message on a [`StreamWriter`] (the destination's answers).
pub(crate) fn write_control<W: Write>(w: &mut StreamWriter<W>, msg: &Control) -> Result<(), Error> {
    w.write_raw_record(proto::CONTROL, true, &msg.encode())?;
    Ok(())
}
