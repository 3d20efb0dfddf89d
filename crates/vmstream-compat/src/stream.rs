//! Transforms applied to whole streams: vmstream streams device record by
//! device record, QEMU streams section by section, their device sections
//! written back in QEMU's layout for the target version (the vmdesc is
//! rewritten with the same steps and describes the new layout).

use std::io::{Read, Write};

use serde_json::Value as Json;
use vmstream::{
    DeviceState, Error, ErrorKind, Limits, Record, Result, StreamReader, StreamWriter, Value,
    WriterOptions,
};
use vmstream_qemu::vmdesc::{Obj, Vmdesc};
use vmstream_qemu::{ConvertOptions, Event, QemuWriter, SectionHeader, SectionKind, Sink};

use crate::transform::{Op, Registry};

/// Target versions: `(type, version)`; types not listed go to the newest
/// version their steps reach.
#[derive(Debug, Clone, Default)]
pub struct Targets(pub Vec<(String, u32)>);

impl Targets {
    fn of(&self, reg: &Registry, ty: &str) -> Option<u32> {
        self.0
            .iter()
            .find(|(t, _)| t == ty)
            .map(|(_, v)| *v)
            .or_else(|| reg.newest(ty))
    }
}

/// What a transform did: one line per device changed.
pub type Notes = Vec<String>;

/// Transforms the device records of a vmstream stream.
pub fn transform_vmstream<R: Read, W: Write>(
    input: R,
    out: W,
    reg: &Registry,
    targets: &Targets,
    limits: Limits,
) -> Result<(W, Notes)> {
    let mut r = StreamReader::new(input, limits)?;
    let header = r.header().clone();
    let mut w = StreamWriter::new(out, header, WriterOptions::default().with_limits(limits))?;
    let mut notes = Notes::new();
    // merges waiting for parts: (merge, base name, instance, parts)
    let mut pending: Vec<(usize, String, u32, Vec<Option<Value>>)> = Vec::new();
    // schema records written for transformed versions
    let mut schemas: Vec<(String, u32)> = Vec::new();
    while let Some(item) = r.next()? {
        match item.record {
            Record::Info(v) => w.write_info(&v)?,
            Record::Schema(s) => {
                // a schema of a version the devices leave is replaced by the
                // new version's, written before the first device of it
                let leaves = reg.get(&s.type_name).is_some()
                    && targets
                        .of(reg, &s.type_name)
                        .is_some_and(|t| t != s.version);
                if !leaves {
                    w.write_schema(&s)?;
                }
            }
            Record::Device(mut d) => {
                if let Some(to) = targets.of(reg, &d.type_name) {
                    if to != d.version && reg.get(&d.type_name).is_some() {
                        reg.transform(&d.name, &d.type_name, d.version, to, &mut d.value)?;
                        notes.push(format!(
                            "{} ({}): version {} -> {to}",
                            d.name, d.type_name, d.version
                        ));
                        d.version = to;
                        if !schemas.iter().any(|(t, v)| *t == d.type_name && *v == to) {
                            let mut st = crate::schema::StructTy::of_value(&d.value);
                            st.version = to;
                            w.write_schema(&st.to_record(&d.type_name))?;
                            schemas.push((d.type_name.clone(), to));
                        }
                    }
                }
                if let Some(sp) = reg
                    .splits()
                    .iter()
                    .find(|s| s.ty == d.type_name && s.version == d.version)
                {
                    for (name, ty, version, value) in sp.apply(&d.name, d.value)? {
                        notes.push(format!(
                            "{} ({}) -> {name} ({ty} version {version})",
                            d.name, d.type_name
                        ));
                        w.write_device(&DeviceState {
                            name,
                            instance_id: d.instance_id,
                            type_name: ty,
                            version,
                            value,
                        })?;
                    }
                    continue;
                }
                let part = reg.merges().iter().enumerate().find_map(|(m, mg)| {
                    mg.part_of(&d.type_name, d.version, &d.name)
                        .map(|(i, base)| (m, i, base))
                });
                if let Some((m, i, base)) = part {
                    let mg = &reg.merges()[m];
                    let slot = match pending
                        .iter()
                        .position(|(pm, b, id, _)| *pm == m && *b == base && *id == d.instance_id)
                    {
                        Some(k) => k,
                        None => {
                            pending.push((
                                m,
                                base.clone(),
                                d.instance_id,
                                vec![None; mg.parts.len()],
                            ));
                            pending.len() - 1
                        }
                    };
                    pending[slot].3[i] = Some(d.value);
                    if pending[slot].3.iter().all(Option::is_some) {
                        let (_, base, id, vals) = pending.remove(slot);
                        let (name, value) =
                            mg.apply(&base, vals.into_iter().flatten().collect())?;
                        notes.push(format!(
                            "{} part(s) of {base} -> {name} ({} version {})",
                            mg.parts.len(),
                            mg.into.ty,
                            mg.into.version
                        ));
                        w.write_device(&DeviceState {
                            name,
                            instance_id: id,
                            type_name: mg.into.ty.clone(),
                            version: mg.into.version,
                            value,
                        })?;
                    }
                    continue;
                }
                w.write_device(&d)?;
            }
            Record::RamBlocks(b) => w.write_ram_blocks(&b)?,
            Record::Pages(batch) => {
                for p in batch.pages() {
                    match p.data {
                        Some(data) => w.write_page(batch.block, batch.epoch, p.index, data)?,
                        None => w.write_zero_page(batch.block, batch.epoch, p.index)?,
                    }
                }
            }
            Record::Epoch(e) => w.write_epoch(e)?,
            Record::Other(raw) => w.write_raw_record(raw.kind, true, raw.body)?,
            Record::Index(_) | Record::End(_) | Record::Names { .. } => {}
            _ => {}
        }
    }
    if let Some((m, base, _, parts)) = pending.first() {
        let mg = &reg.merges()[*m];
        let missing: Vec<&str> = mg
            .parts
            .iter()
            .zip(parts)
            .filter(|(_, v)| v.is_none())
            .map(|(p, _)| p.ty.as_str())
            .collect();
        return Err(Error::new(
            ErrorKind::Incompatible,
            format!(
                "device {base:?}: the merge into {:?} lacks its part(s) {}",
                mg.into.ty,
                missing.join(", ")
            ),
        ));
    }
    Ok((w.finish()?, notes))
}

/// Transforms the device sections of a QEMU stream.
pub fn transform_qemu<R: Read, W: Write>(
    input: R,
    out: W,
    reg: &Registry,
    targets: &Targets,
    opts: &ConvertOptions,
) -> Result<(W, Notes)> {
    let mut sink = QemuTransform {
        inner: QemuWriter::new(out, 4096),
        reg,
        targets,
        orig: None,
        devices: 0,
        sections: 0,
        notes: Notes::new(),
    };
    vmstream_qemu::read_qemu(input, &mut sink, opts)?;
    let notes = sink.notes;
    Ok((sink.inner.finish()?, notes))
}

struct QemuTransform<'a, W: Write> {
    inner: QemuWriter<W>,
    reg: &'a Registry,
    targets: &'a Targets,
    orig: Option<Vmdesc>,
    devices: usize,
    sections: usize,
    notes: Notes,
}

impl<W: Write> QemuTransform<'_, W> {
    fn target(&self, o: &Obj) -> Option<u32> {
        self.reg.get(&o.vmsd_name)?;
        self.targets
            .of(self.reg, &o.vmsd_name)
            .filter(|&t| t != o.version)
    }

    /// Transforms a value described by `o`, nested parts first.
    fn value(&self, o: &Obj, v: &mut Value, device: &str, notes: &mut Notes) -> Result<()> {
        if let Value::Struct(fs) = v {
            for f in &o.fields {
                let Some(n) = &f.nested else { continue };
                if let Some((_, fv)) = fs.iter_mut().find(|(name, _)| *name == f.name) {
                    match fv {
                        Value::Seq(items) => {
                            for it in items.iter_mut() {
                                self.value(n, it, device, notes)?;
                            }
                        }
                        other => self.value(n, other, device, notes)?,
                    }
                }
            }
            for s in &o.subsections {
                if let Some((_, sv)) = fs.iter_mut().find(|(name, _)| *name == s.vmsd_name) {
                    self.value(s, sv, device, notes)?;
                }
            }
        }
        if let Some(to) = self.target(o) {
            self.reg.transform(device, &o.vmsd_name, o.version, to, v)?;
            notes.push(format!(
                "{device}: {} version {} -> {to}",
                o.vmsd_name, o.version
            ));
        }
        Ok(())
    }

    /// Rewrites a vmsd-object of the vmdesc JSON the same way; returns by how
    /// many bytes its body grew, so the enclosing field's size follows.
    fn desc(&self, j: &mut Json, depth: u32) -> Result<i64> {
        if depth > 256 {
            return Err(Error::new(
                ErrorKind::LimitExceeded,
                "vmdesc nests too deeply".to_string(),
            ));
        }
        let Json::Object(m) = j else { return Ok(0) };
        let mut delta = 0i64;
        if let Some(Json::Array(fs)) = m.get_mut("fields") {
            for f in fs.iter_mut() {
                let Some(s) = f.get_mut("struct") else {
                    continue;
                };
                let d = self.desc(s, depth + 1)?;
                if d != 0 {
                    let size = f.get("size").and_then(Json::as_i64).unwrap_or(0);
                    let n = f.get("array_len").and_then(Json::as_i64).unwrap_or(1);
                    f["size"] = Json::from(size + d);
                    delta += d * n;
                }
            }
        }
        if let Some(Json::Array(ss)) = m.get_mut("subsections") {
            for s in ss.iter_mut() {
                delta += self.desc(s, depth + 1)?;
            }
        }
        let name = m
            .get("vmsd_name")
            .and_then(Json::as_str)
            .unwrap_or_default()
            .to_owned();
        let version = m
            .get("version")
            .and_then(Json::as_u64)
            .and_then(|v| u32::try_from(v).ok());
        let (Some(version), true) = (version, self.reg.get(&name).is_some()) else {
            return Ok(delta);
        };
        let Some(to) = self.targets.of(self.reg, &name).filter(|&t| t != version) else {
            return Ok(delta);
        };
        let Some(Json::Array(fs)) = m.get_mut("fields") else {
            return Ok(delta);
        };
        let total = |fs: &[Json]| -> i64 {
            fs.iter()
                .map(|f| {
                    f.get("size").and_then(Json::as_i64).unwrap_or(0)
                        * f.get("array_len").and_then(Json::as_i64).unwrap_or(1)
                })
                .sum()
        };
        let before = total(fs);
        for (_, _, ops) in self.reg.chain(&name, version, to)? {
            for op in ops {
                desc_op(op, fs, &name)?;
            }
        }
        delta += total(fs) - before;
        m.insert("version".into(), Json::from(to));
        Ok(delta)
    }
}

fn entry_pos(fs: &[Json], name: &str) -> Option<usize> {
    fs.iter()
        .rposition(|f| f.get("name").and_then(Json::as_str) == Some(name))
}

fn desc_op(op: &Op, fs: &mut Vec<Json>, vmsd: &str) -> Result<()> {
    let missing = |f: &str| {
        Error::new(
            ErrorKind::Incompatible,
            format!("vmstate {vmsd:?}: the vmdesc has no field {f:?}"),
        )
    };
    match op {
        Op::Rename { field, to } => {
            for f in fs.iter_mut().filter(|f| f.get("name").and_then(Json::as_str) == Some(field)) {
                f["name"] = Json::from(to.as_str());
            }
        }
        Op::Add { field, ty, after, .. } => {
            let (t, size) = ty.qemu();
            let at = match after {
                Some(a) => entry_pos(fs, a).ok_or_else(|| missing(a))? + 1,
                None => fs.len(),
            };
            fs.insert(at, serde_json::json!({"name": field, "type": t, "size": size}));
        }
        Op::Remove { field, .. } => fs.retain(|f| f.get("name").and_then(Json::as_str) != Some(field)),
        Op::Width { field, to, .. } => {
            let i = entry_pos(fs, field).ok_or_else(|| missing(field))?;
            let (t, size) = to.qemu();
            fs[i]["type"] = Json::from(t);
            fs[i]["size"] = Json::from(size);
        }
        Op::Split { field, into, .. } => {
            let i = entry_pos(fs, field).ok_or_else(|| missing(field))?;
            fs.remove(i);
            for (k, p) in into.iter().enumerate() {
                let (t, size) = p.ty.qemu();
                fs.insert(i + k, serde_json::json!({"name": p.field, "type": t, "size": size}));
            }
        }
        Op::Merge { parts, into, ty } => {
            let first = parts.first().map(|p| p.field.as_str()).unwrap_or_default();
            let i = entry_pos(fs, first).ok_or_else(|| missing(first))?;
            for p in parts {
                fs.retain(|f| f.get("name").and_then(Json::as_str) != Some(p.field.as_str()));
            }
            let (t, size) = ty.qemu();
            fs.insert(i.min(fs.len()), serde_json::json!({"name": into, "type": t, "size": size}));
        }
        Op::AddSubsection { .. } | Op::RemoveSubsection { .. } => {
            return Err(Error::new(
                ErrorKind::Usage,
                format!("vmstate {vmsd:?}: a QEMU subsection is a vmstate of its own; add or remove it in the QEMU release"),
            ))
        }
        Op::Nest { .. } | Op::Unnest { .. } => {
            return Err(Error::new(
                ErrorKind::Usage,
                format!("vmstate {vmsd:?}: nest and unnest have no QEMU layout (a nested struct is its own vmstate)"),
            ))
        }
    }
    Ok(())
}

impl<W: Write> Sink for QemuTransform<'_, W> {
    fn event(&mut self, ev: &Event<'_>) -> Result<()> {
        match ev {
            Event::Vmdesc { json, in_stream } => {
                let orig = Vmdesc::parse(json, 128)?;
                let mut j: Json = serde_json::from_slice(json)
                    .map_err(|e| Error::new(ErrorKind::Malformed, format!("vmdesc: {e}")))?;
                if let Some(Json::Array(ds)) = j.get_mut("devices") {
                    for d in ds.iter_mut() {
                        self.desc(d, 0)?;
                    }
                }
                self.orig = Some(orig);
                let text = serde_json::to_vec(&j)
                    .map_err(|e| Error::new(ErrorKind::Malformed, format!("vmdesc: {e}")))?;
                self.inner.event(&Event::Vmdesc {
                    json: &text,
                    in_stream: *in_stream,
                })
            }
            Event::Section {
                kind: SectionKind::Full,
                id,
                header: Some(h),
            } => {
                let ordinal = self.sections;
                self.sections += 1;
                let top = self
                    .orig
                    .as_ref()
                    .and_then(|d| d.devices.get(ordinal))
                    .and_then(|d| d.vmsd.as_ref());
                match top.and_then(|o| self.target(o)) {
                    Some(to) => {
                        let h2 = SectionHeader {
                            version_id: to,
                            ..(*h).clone()
                        };
                        self.inner.event(&Event::Section {
                            kind: SectionKind::Full,
                            id: *id,
                            header: Some(&h2),
                        })
                    }
                    None => self.inner.event(ev),
                }
            }
            Event::Device(state) => {
                let ordinal = self.devices;
                self.devices += 1;
                let obj = self
                    .orig
                    .as_ref()
                    .and_then(|d| d.devices.get(ordinal))
                    .and_then(|d| d.vmsd.clone());
                match (obj, &state.value) {
                    (Some(o), Value::Struct(_)) => {
                        let mut v = state.value.clone();
                        let mut notes = Notes::new();
                        self.value(&o, &mut v, &state.name, &mut notes)?;
                        if notes.is_empty() {
                            return self.inner.event(ev);
                        }
                        self.notes.extend(notes);
                        let d = DeviceState { value: v, ..(*state).clone() };
                        self.inner.event(&Event::Device(&d))
                    }
                    (Some(o), Value::Bytes(_)) if self.target(&o).is_some() => Err(Error::new(
                        ErrorKind::Incompatible,
                        format!("device {:?}: its section could not be decoded through the vmdesc, so it cannot be transformed", state.name),
                    )),
                    _ => self.inner.event(ev),
                }
            }
            other => self.inner.event(other),
        }
    }
}
