//! A device section: decoded through its vmdesc entry into typed values and
//! kept typed only if they encode back to the same bytes; otherwise kept as
//! bytes, delimited by the description's size or by the section footer.

use std::io::Read;

use vmstream::{DeviceState, Error, ErrorKind, Result, Value};

use super::QemuReader;
use crate::event::{Event, SectionHeader, SectionKind, Sink};
use crate::vmdesc;
use crate::wire::FOOTER;

impl<R: Read> QemuReader<R> {
    pub(super) fn device_section(
        &mut self,
        id: u32,
        h: &SectionHeader,
        sink: &mut dyn Sink,
    ) -> Result<()> {
        self.find_vmdesc()?;
        self.emit_vmdesc(sink)?;
        let ordinal = self.devices;
        self.devices += 1;
        let desc = match &self.vmdesc {
            Some(d) => {
                let e = d.devices.get(ordinal).ok_or_else(|| {
                    Error::new(
                        ErrorKind::Incompatible,
                        format!(
                            "the vmdesc describes {} devices; this is device section {}",
                            d.devices.len(),
                            ordinal + 1
                        ),
                    )
                })?;
                if e.name != h.idstr || e.instance_id != h.instance_id {
                    return Err(Error::new(
                        ErrorKind::Incompatible,
                        format!(
                            "vmdesc device entry {ordinal} describes {:?} instance {}, but the section is {:?} instance {}",
                            e.name, e.instance_id, h.idstr, h.instance_id
                        ),
                    ));
                }
                Some(e)
            }
            None => None,
        };
        let described = desc.is_some();
        let type_name = match desc.and_then(|d| d.vmsd.as_ref()) {
            Some(o) => o.vmsd_name.clone(),
            None => h.idstr.clone(),
        };
        let max = self.limits.max_record_size as usize;
        let body_at = self.input.offset();
        let mut value = None;
        let mut why = String::new();
        if let Some(d) = desc {
            match &d.vmsd {
                Some(obj) if obj.version == h.version_id => {
                    let want = usize::try_from(obj.body_len())
                        .unwrap_or(usize::MAX)
                        .min(max);
                    // The body and the footer after it.
                    self.input.fill(want.saturating_add(5))?;
                    // A typed body is bounded like a kept one: by max_record_size.
                    let avail = self.input.avail();
                    let data = &avail[..avail.len().min(max)];
                    match vmdesc::decode_prefix(obj, data, body_at, &self.limits) {
                        Ok((v, len)) => {
                            self.scratch.clear();
                            match vmdesc::encode(obj, &v, &mut self.scratch) {
                                Ok(()) if self.scratch[..] == data[..len] => {
                                    // With footers on, a description that
                                    // fits must end where the footer starts
                                    // (QEMU's vmdesc can undercount, e.g. an
                                    // array of pointers with null elements).
                                    let mut footer = [FOOTER, 0, 0, 0, 0];
                                    footer[1..].copy_from_slice(&id.to_be_bytes());
                                    let next = data.get(len..len + 5);
                                    if self.footers == Some(true) && next != Some(&footer[..]) {
                                        why =
                                            "the section footer does not follow the described body"
                                                .into();
                                    } else {
                                        self.input.advance(len);
                                        value = Some(v);
                                    }
                                }
                                Ok(()) => {
                                    why = "its typed values do not encode back to the same bytes"
                                        .into()
                                }
                                Err(e) => why = format!("{} ({})", e.message(), e.location()),
                            }
                        }
                        Err(e) => why = format!("{} at {}", e.message(), e.location()),
                    }
                }
                Some(obj) => {
                    why = format!(
                        "the vmdesc has version {}, the section {}",
                        obj.version, h.version_id
                    )
                }
                None => {
                    let n = usize::try_from(d.size).unwrap_or(usize::MAX);
                    if n > max {
                        return Err(Error::new(
                            ErrorKind::LimitExceeded,
                            format!("device body of {n} bytes exceeds Limits::max_record_size"),
                        ));
                    }
                    value = Some(Value::Bytes(
                        self.input.take(n, "device section body")?.to_vec(),
                    ));
                }
            }
        } else {
            why = "the stream has no vmdesc trailer".into();
        }
        let typed = matches!(value, Some(Value::Struct(_)));
        let value = match value {
            Some(v) => v,
            None => {
                let len = self.footer_scan(id)?.ok_or_else(|| {
                    if described {
                        Error::new(
                            ErrorKind::Malformed,
                            format!("the vmdesc does not describe this section ({why}), and without a section footer its end cannot be found"),
                        )
                    } else {
                        Error::new(
                            ErrorKind::Unsupported,
                            format!("no device description ({why}, and the section has no footer to delimit it; pass --vmdesc with a twin stream)"),
                        )
                    }
                    .at_offset(body_at)
                })?;
                if len > max {
                    return Err(Error::new(
                        ErrorKind::LimitExceeded,
                        format!("device body of {len} bytes exceeds Limits::max_record_size"),
                    ));
                }
                Value::Bytes(self.input.take(len, "device section body")?.to_vec())
            }
        };
        if typed {
            self.summary.typed_devices += 1;
        } else {
            self.summary.raw_devices.push(h.idstr.clone());
        }
        sink.event(&Event::Section {
            kind: SectionKind::Full,
            id,
            header: Some(h),
        })?;
        let state = DeviceState {
            name: h.idstr.clone(),
            instance_id: h.instance_id,
            type_name,
            version: h.version_id,
            value,
        };
        if self.summary.arch.is_none() && typed && h.idstr == "cpu" {
            let cands = match self.arch_candidates {
                [] => &[vmstream::Arch::Aarch64, vmstream::Arch::Arm][..],
                c => c,
            };
            self.summary.arch = crate::arch::from_cpu(cands, &state.value);
        }
        sink.event(&Event::Device(&state))
    }
}
