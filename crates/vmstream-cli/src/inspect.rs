//! `inspect`, `dump` and `verify`.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};
use serde_json::json;
use vmstream::header::{FEATURE_INDEX, FEATURE_LZ4, FEATURE_QEMU_FRAMING, FEATURE_ZSTD};
use vmstream::{DeviceState, Header, Record};
use vmstream_qemu::{Event, Sink};

use crate::args::{DumpArgs, InspectArgs, VerifyArgs};
use crate::input::{self, Format, Opts};

/// What `inspect` reports about one RAM block.
#[derive(Default)]
struct BlockStats {
    name: String,
    size: u64,
    page_size: u32,
    flags: u32,
    data_records: u64,
    zero_records: u64,
    /// Final state per page: 0 = never sent, 1 = zero, 2 = data.
    last: Vec<u8>,
}

struct DeviceRow {
    name: String,
    instance_id: u32,
    type_name: String,
    version: u32,
    size: usize,
}

/// Everything `inspect` prints.
struct Summary {
    format: Format,
    header: Header,
    counts: BTreeMap<&'static str, u64>,
    devices: Vec<DeviceRow>,
    blocks: BTreeMap<u32, BlockStats>,
    epochs: u64,
    bytes: u64,
    info: Option<vmstream::Value>,
    multifd: vmstream_qemu::MultifdSigns,
}

fn summarize(path: &std::path::Path, opts: &Opts) -> Result<Summary> {
    let mut budget = opts.limits.max_alloc;
    let mut counts = BTreeMap::new();
    let mut devices = Vec::new();
    let mut blocks = BTreeMap::new();
    let mut epochs = 0;
    let mut info = None;
    let mut multifd = vmstream_qemu::MultifdSigns::default();
    let read = input::each_record(path, opts, &mut |header, item| {
        *counts.entry(item.kind.name()).or_default() += 1;
        multifd.observe_record(&item.record);
        match item.record {
            Record::Info(v) => info = Some(v),
            Record::Device(d) => devices.push(DeviceRow {
                size: item.framed_len,
                name: d.name,
                instance_id: d.instance_id,
                type_name: d.type_name,
                version: d.version,
            }),
            Record::RamBlocks(list) => {
                let page_size = u64::from(header.page_size);
                for b in list {
                    let last = input::page_table(&mut budget, &b.name, b.size, b.size / page_size)?;
                    blocks.insert(
                        b.id,
                        BlockStats {
                            name: b.name,
                            size: b.size,
                            page_size: b.page_size,
                            flags: b.flags,
                            last,
                            ..Default::default()
                        },
                    );
                }
            }
            Record::Pages(batch) => {
                if let Some(st) = blocks.get_mut(&batch.block) {
                    for p in batch.pages() {
                        let slot = st.last.get_mut(p.index as usize);
                        match p.data {
                            Some(_) => {
                                st.data_records += 1;
                                if let Some(slot) = slot {
                                    *slot = 2;
                                }
                            }
                            None => {
                                st.zero_records += 1;
                                if let Some(slot) = slot {
                                    *slot = 1;
                                }
                            }
                        }
                    }
                }
            }
            Record::Epoch(_) => epochs += 1,
            _ => {}
        }
        Ok(())
    })?;
    Ok(Summary {
        format: read.format,
        header: read.header,
        counts,
        devices,
        blocks,
        epochs,
        bytes: read.bytes,
        info,
        multifd,
    })
}

fn feature_names(bits: u64, names: &[(u64, &str)]) -> Vec<String> {
    let mut out: Vec<String> = names
        .iter()
        .filter(|(b, _)| bits & b != 0)
        .map(|(_, n)| (*n).to_owned())
        .collect();
    let known: u64 = names.iter().map(|(b, _)| b).fold(0, |a, b| a | b);
    if bits & !known != 0 {
        out.push(format!("{:#x}", bits & !known));
    }
    out
}

pub(crate) fn inspect(args: &InspectArgs, opts: &Opts) -> Result<ExitCode> {
    let s = summarize(&args.file, opts)?;
    let required = feature_names(
        s.header.required_features,
        &[(FEATURE_ZSTD, "zstd"), (FEATURE_LZ4, "lz4")],
    );
    let optional = feature_names(
        s.header.optional_features,
        &[
            (FEATURE_INDEX, "index"),
            (FEATURE_QEMU_FRAMING, "qemu-framing"),
        ],
    );
    let out = &mut std::io::stdout().lock();
    if args.json {
        let j = json!({
            "input_format": s.format.name(),
            "format_version": format!("{}.{}", s.header.version_major, s.header.version_minor),
            "writer": s.header.writer,
            "kind": s.header.kind.name(),
            "arch": s.header.arch.name(),
            "page_size": s.header.page_size,
            "features": { "required": required, "optional": optional },
            "bytes": s.bytes,
            "records": s.counts,
            "epoch_barriers": s.epochs,
            "info": s.info.as_ref().map(vmstream::Value::to_json),
            "devices": s.devices.iter().map(|d| json!({
                "name": d.name, "instance_id": d.instance_id, "type": d.type_name,
                "version": d.version, "size": d.size,
            })).collect::<Vec<_>>(),
            "ram_blocks": s.blocks.iter().map(|(id, b)| json!({
                "id": id, "name": b.name, "size": b.size, "page_size": b.page_size, "flags": b.flags,
                "pages": b.last.len(),
                "final": { "data": count(&b.last, 2), "zero": count(&b.last, 1), "unsent": count(&b.last, 0) },
                "sent": { "data": b.data_records, "zero": b.zero_records },
            })).collect::<Vec<_>>(),
        });
        let mut j = j;
        let elsewhere = s.multifd.pages_elsewhere();
        if let (Some(obj), true) = (
            j.as_object_mut(),
            s.multifd.channels > 0 || elsewhere.is_some(),
        ) {
            // only for multifd migrations: the main channel and its channels
            obj.insert(
                "multifd".into(),
                json!({ "channels": s.multifd.channels, "flush_records": s.multifd.flush_records, "pages_elsewhere": elsewhere }),
            );
        }
        serde_json::to_writer_pretty(&mut *out, &j)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "input:     {} stream, {} bytes",
        s.format.name(),
        s.bytes
    )?;
    writeln!(
        out,
        "format:    vmstream {}.{}",
        s.header.version_major, s.header.version_minor
    )?;
    writeln!(out, "writer:    {}", s.header.writer)?;
    writeln!(out, "kind:      {}", s.header.kind.name())?;
    writeln!(out, "arch:      {}", s.header.arch.name())?;
    writeln!(out, "page size: {}", s.header.page_size)?;
    writeln!(
        out,
        "features:  required [{}], optional [{}]",
        required.join(", "),
        optional.join(", ")
    )?;
    let total: u64 = s.counts.values().sum();
    let per: Vec<String> = s.counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
    writeln!(out, "records:   {total} ({})", per.join(", "))?;
    if s.multifd.channels > 0 {
        writeln!(
            out,
            "multifd:   a channel set: the main channel and {} multifd channels",
            s.multifd.channels
        )?;
    } else if let Some(why) = s.multifd.pages_elsewhere() {
        writeln!(
            out,
            "multifd:   {why}; give each channel with --channel FILE"
        )?;
    }
    if let Some(info) = &s.info {
        writeln!(out, "info:")?;
        write!(out, "{}", info.display_indented("  "))?;
    }
    writeln!(out, "devices:   {}", s.devices.len())?;
    if !s.devices.is_empty() {
        let w = s
            .devices
            .iter()
            .map(|d| d.name.len())
            .max()
            .unwrap_or(4)
            .max(4);
        let tw = s
            .devices
            .iter()
            .map(|d| d.type_name.len())
            .max()
            .unwrap_or(4)
            .max(4);
        writeln!(
            out,
            "  {:<w$}  {:>8}  {:<tw$}  {:>7}  {:>8}",
            "NAME", "INSTANCE", "TYPE", "VERSION", "BYTES"
        )?;
        for d in &s.devices {
            writeln!(
                out,
                "  {:<w$}  {:>8}  {:<tw$}  {:>7}  {:>8}",
                d.name, d.instance_id, d.type_name, d.version, d.size
            )?;
        }
    }
    writeln!(out, "ram blocks: {}", s.blocks.len())?;
    if !s.blocks.is_empty() {
        let w = s
            .blocks
            .values()
            .map(|b| b.name.len())
            .max()
            .unwrap_or(4)
            .max(4);
        writeln!(
            out,
            "  {:>3}  {:<w$}  {:>12}  {:>8}  {:>8}  {:>8}  {:>8}  {:>10}",
            "ID", "NAME", "SIZE", "PAGES", "DATA", "ZERO", "UNSENT", "SENT"
        )?;
        for (id, b) in &s.blocks {
            writeln!(
                out,
                "  {:>3}  {:<w$}  {:>12}  {:>8}  {:>8}  {:>8}  {:>8}  {:>10}",
                id,
                b.name,
                format!("{:#x}", b.size),
                b.last.len(),
                count(&b.last, 2),
                count(&b.last, 1),
                count(&b.last, 0),
                b.data_records + b.zero_records,
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn count(states: &[u8], want: u8) -> usize {
    states.iter().filter(|&&s| s == want).count()
}

/// Prints devices for `dump`, from either reader.
struct Dump<'a, W: Write> {
    args: &'a DumpArgs,
    out: W,
    /// With `--json`: the devices so far, as the elements of the document's
    /// `devices` array, written as they come (no `serde_json::Value` tree).
    devices: Vec<u8>,
    ram_blocks: Vec<serde_json::Value>,
    matched: usize,
}

/// serde_json's pretty format (two-space indent), for a value `level`s deep
/// in a pretty-printed document: its parts are written where they go and
/// come out as `serde_json::to_writer_pretty` of the whole would write them.
struct Nested {
    level: usize,
    has_value: bool,
}

impl Nested {
    fn at(level: usize) -> Nested {
        Nested {
            level,
            has_value: false,
        }
    }

    fn newline<W: ?Sized + Write>(&self, w: &mut W, comma: bool) -> std::io::Result<()> {
        w.write_all(if comma { b",\n" } else { b"\n" })?;
        for _ in 0..self.level {
            w.write_all(b"  ")?;
        }
        Ok(())
    }

    fn close<W: ?Sized + Write>(&mut self, w: &mut W, end: &[u8]) -> std::io::Result<()> {
        self.level -= 1;
        if self.has_value {
            self.newline(w, false)?;
        }
        w.write_all(end)
    }
}

impl serde_json::ser::Formatter for Nested {
    fn begin_array<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.level += 1;
        self.has_value = false;
        w.write_all(b"[")
    }

    fn end_array<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.close(w, b"]")
    }

    fn begin_array_value<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.newline(w, !first)
    }

    fn end_array_value<W: ?Sized + Write>(&mut self, _w: &mut W) -> std::io::Result<()> {
        self.has_value = true;
        Ok(())
    }

    fn begin_object<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.level += 1;
        self.has_value = false;
        w.write_all(b"{")
    }

    fn end_object<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.close(w, b"}")
    }

    fn begin_object_key<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.newline(w, !first)
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }

    fn end_object_value<W: ?Sized + Write>(&mut self, _w: &mut W) -> std::io::Result<()> {
        self.has_value = true;
        Ok(())
    }
}

/// A device as `dump --json` prints it.
struct DeviceJson<'a>(&'a DeviceState);

impl serde::Serialize for DeviceJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let d = self.0;
        let mut m = s.serialize_map(Some(5))?;
        m.serialize_entry("name", &d.name)?;
        m.serialize_entry("instance_id", &d.instance_id)?;
        m.serialize_entry("type", &d.type_name)?;
        m.serialize_entry("version", &d.version)?;
        m.serialize_entry("value", &vmstream::value::TaggedJson(&d.value))?;
        m.end()
    }
}

impl<W: Write> Dump<'_, W> {
    /// RAM blocks as they are defined (not with `--device`): name and size, as
    /// QEMU's `analyze-migration.py -d state` shows them too.
    fn ram_block(&mut self, name: &str, size: u64) -> std::io::Result<()> {
        if self.args.device.is_some() {
            return Ok(());
        }
        if self.args.json {
            self.ram_blocks.push(json!({ "name": name, "size": size }));
            return Ok(());
        }
        writeln!(self.out, "ram block {name}: size {size:#x}")
    }

    fn device(&mut self, d: &DeviceState) -> std::io::Result<()> {
        if let Some(want) = &self.args.device {
            let full = format!("{}:{}", d.name, d.instance_id);
            if *want != d.name && *want != full {
                return Ok(());
            }
        }
        self.matched += 1;
        if self.args.json {
            let nested = Nested::at(2);
            nested.newline(&mut self.devices, self.matched > 1)?;
            let mut ser = serde_json::Serializer::with_formatter(&mut self.devices, nested);
            serde::Serialize::serialize(&DeviceJson(d), &mut ser).map_err(std::io::Error::from)?;
        } else {
            writeln!(
                self.out,
                "device {} (instance {}, type {}, version {}):",
                d.name, d.instance_id, d.type_name, d.version
            )?;
            write!(self.out, "{}", d.value.display_indented("  "))?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<()> {
        if self.args.json {
            // serde_json::to_writer_pretty of {"devices": [...], "ram_blocks": [...]}
            self.out.write_all(b"{\n  \"devices\": [")?;
            if !self.devices.is_empty() {
                self.out.write_all(&self.devices)?;
                self.out.write_all(b"\n  ")?;
            }
            self.out.write_all(b"],\n  \"ram_blocks\": ")?;
            let mut ser = serde_json::Serializer::with_formatter(&mut self.out, Nested::at(1));
            serde::Serialize::serialize(&self.ram_blocks, &mut ser)?;
            self.out.write_all(b"\n}\n")?;
        }
        if let Some(want) = &self.args.device {
            if self.matched == 0 {
                anyhow::bail!("no device named {want:?} in {}", self.args.file.display());
            }
        }
        self.out.flush()?;
        Ok(())
    }
}

impl<W: Write> Sink for Dump<'_, W> {
    fn event(&mut self, event: &Event<'_>) -> vmstream::Result<()> {
        match event {
            Event::Device(d) => Ok(self.device(d)?),
            Event::RamBlocks { blocks, .. } => {
                for b in blocks.iter() {
                    self.ram_block(&b.name, b.size)?;
                }
                Ok(())
            }
            // a mapped-ram stream's blocks come one at a time
            Event::MappedBlock { block, .. } => Ok(self.ram_block(&block.name, block.size)?),
            _ => Ok(()),
        }
    }
}

pub(crate) fn dump(args: &DumpArgs, opts: &Opts) -> Result<ExitCode> {
    let mut dump = Dump {
        args,
        out: std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock()),
        devices: Vec::new(),
        ram_blocks: Vec::new(),
        matched: 0,
    };
    let what = || args.file.display().to_string();
    // one device of a file: through the index, without reading the rest
    if let Some(want) = &args.device {
        if let Some(mut r) = input::seekable(&args.file, opts) {
            match input::seek_devices(&mut r, want) {
                Ok(devices) => {
                    for d in &devices {
                        dump.device(d)?;
                    }
                    dump.finish()?;
                    return Ok(ExitCode::SUCCESS);
                }
                Err(e) => input::seek_failed(&args.file, &e.into()),
            }
        }
    }
    let (format, input) = input::open(&args.file)?;
    match format {
        // straight from the QEMU reader's events: no conversion in between
        Format::Qemu => {
            input::events(format, input, &args.file, opts, false)?
                .run(&mut dump)
                .with_context(what)?;
        }
        Format::Vmstream => {
            let mut r = input::reader(input, &args.file, opts)?;
            while let Some(item) = r.next().with_context(what)? {
                match item.record {
                    Record::Device(d) => dump.device(&d)?,
                    Record::RamBlocks(blocks) => {
                        for b in &blocks {
                            dump.ram_block(&b.name, b.size)?;
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    dump.finish()?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn verify(args: &VerifyArgs, opts: &Opts) -> Result<ExitCode> {
    let mut schemas: BTreeMap<(String, u32), vmstream::Value> = BTreeMap::new();
    let mut devices = 0u64;
    let mut pages = 0u64;
    let mut index: Option<(u64, Vec<vmstream::record::IndexEntry>)> = None;
    let mut offsets: BTreeMap<u64, (vmstream::RecordKind, String)> = BTreeMap::new();
    let read = input::each_record(&args.file, opts, &mut |_, item| {
        let (offset, index_no) = (item.offset, item.index);
        match item.record {
            Record::Schema(s) => {
                schemas.insert((s.type_name, s.version), s.schema);
            }
            Record::Device(d) => {
                devices += 1;
                if let Some(schema) = schemas.get(&(d.type_name.clone(), d.version)) {
                    vmstream::schema::check(schema, &d.value).map_err(|e| {
                        e.in_device(&d.name)
                            .at_offset(offset)
                            .in_record(index_no, "device")
                    })?;
                }
                offsets.insert(offset, (item.kind, d.name));
            }
            Record::Pages(b) => {
                pages += b.len() as u64;
                offsets.insert(offset, (item.kind, String::new()));
            }
            Record::Names { .. } | Record::RamBlocks(_) => {
                offsets.insert(offset, (item.kind, String::new()));
            }
            Record::Index(entries) => index = Some((offset, entries)),
            _ => {}
        }
        Ok(())
    })?;
    let (format, records, bytes) = (read.format, read.records, read.bytes);
    if read.trailing {
        anyhow::bail!(
            "{}: malformed stream: data after the end record (at offset {bytes:#x})",
            args.file.display()
        );
    }
    if let Some((at, entries)) = &index {
        for (i, e) in entries.iter().enumerate() {
            // entries of kinds a later format version may add are hints to skip
            if !vmstream::index::INDEXED_KINDS.contains(&e.kind) {
                continue;
            }
            let ok = offsets
                .get(&e.offset)
                .is_some_and(|(k, name)| *k == e.kind && *name == e.name);
            if !ok {
                anyhow::bail!(
                    "{}: malformed stream: index entry {i} points at offset {:#x}, where no {} record{} starts (index record at offset {at:#x})",
                    args.file.display(),
                    e.offset,
                    e.kind.name(),
                    if e.name.is_empty() { String::new() } else { format!(" for {:?}", e.name) }
                );
            }
        }
    }
    if args.json {
        println!(
            "{}",
            json!({"ok": true, "input_format": format.name(), "records": records, "bytes": bytes, "devices": devices, "pages": pages})
        );
    } else {
        println!(
            "ok: {} stream, {records} records, {bytes} bytes, {devices} devices, {pages} pages",
            format.name()
        );
    }
    Ok(ExitCode::SUCCESS)
}
