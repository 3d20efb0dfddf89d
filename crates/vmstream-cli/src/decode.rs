//! `decode`, `encode` and `extract`: between streams and plain files.
//!
//! `extract --range` of a vmstream file reads only the page batches that
//! overlap the range, through the file's index; pipes and QEMU streams are
//! read whole.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value as Json};
use vmstream::record::SchemaRecord;
use vmstream::write::is_zero;
use vmstream::{
    Arch, DeviceState, Header, RamBlock, Record, StreamKind, StreamWriter, Value, WriterOptions,
};
use vmstream_qemu::{Event, ImageBlock, MemoryImage, Sink};

use crate::args::{DecodeArgs, EncodeArgs, ExtractArgs, RamRange};
use crate::input::{self, Opts};

/// Version of the `stream.json` layout written by `decode`.
const DECODE_LAYOUT: u64 = 1;

/// What a page batch body holds besides its pages' data and entries: the fixed
/// part and the largest data pad (docs/format.md §6.2).
const BATCH_OVERHEAD: u64 = 24 + 63;

/// One RAM block's output file. The file holds the block's pages
/// `base .. base + pages` (all of them, but for `extract --range`).
struct BlockFile {
    block: RamBlock,
    file_name: String,
    base: u64,
}

/// The range of one block `extract --range` keeps, in whole pages.
struct Window {
    range: RamRange,
    /// The block that matched, once defined.
    block: Option<u32>,
}

/// One raw file per RAM block, which the pages are applied to in stream order
/// by the one [`MemoryImage`] every reader of QEMU pages shares.
struct RamFiles {
    dir: PathBuf,
    page_size: u64,
    blocks: BTreeMap<u32, BlockFile>,
    used_names: HashSet<String>,
    image: MemoryImage,
    /// Only this range is kept, in an anonymous file in `dir`.
    window: Option<Window>,
}

impl RamFiles {
    fn new(dir: &Path, page_size: u32, limits: &vmstream::Limits) -> Result<RamFiles> {
        Ok(RamFiles {
            dir: dir.to_owned(),
            page_size: page_size.into(),
            blocks: BTreeMap::new(),
            used_names: HashSet::new(),
            image: MemoryImage::new(page_size.into(), limits.max_alloc)?,
            window: None,
        })
    }

    /// Sets the page size, before any RAM block is known (a QEMU stream says
    /// its target page size before its block list).
    fn set_page_size(&mut self, page_size: u64) -> Result<()> {
        if !self.blocks.is_empty() {
            anyhow::bail!("the page size changed after RAM blocks were defined");
        }
        self.image.set_page_size(page_size)?;
        self.page_size = page_size;
        Ok(())
    }

    /// Keeps only `range` (whole pages of it), in an anonymous file in `dir`.
    fn windowed(
        dir: &Path,
        page_size: u32,
        limits: &vmstream::Limits,
        range: RamRange,
    ) -> Result<Self> {
        Ok(RamFiles {
            window: Some(Window { range, block: None }),
            ..RamFiles::new(dir, page_size, limits)?
        })
    }

    fn add(&mut self, b: RamBlock) -> Result<()> {
        let ps = self.page_size;
        let (base, pages) = match &mut self.window {
            None => (0, b.size / ps),
            Some(w) if w.block.is_none() && w.range.block == b.name => {
                let r = &w.range;
                if r.offset.checked_add(r.len).is_none_or(|end| end > b.size) {
                    bail!(
                        "range {:#x}+{:#x} is beyond RAM block {:?} of {:#x} bytes",
                        r.offset,
                        r.len,
                        b.name,
                        b.size
                    );
                }
                w.block = Some(b.id);
                let first = r.offset / ps;
                (first, (r.offset + r.len - 1) / ps + 1 - first)
            }
            Some(_) => (0, 0),
        };
        self.image.check_room(&b.name, b.size, pages)?;
        let (file_name, file) = if self.window.is_some() {
            let file = (pages > 0)
                .then(|| {
                    let f = tempfile::tempfile_in(&self.dir).with_context(|| {
                        format!("cannot create a file in {}", self.dir.display())
                    })?;
                    f.set_len(pages * ps)?;
                    anyhow::Ok(f)
                })
                .transpose()?;
            (String::new(), file)
        } else {
            let mut name = sanitize(&b.name);
            if !self.used_names.insert(name.clone()) {
                name = format!("{name}-{}", b.id);
                self.used_names.insert(name.clone());
            }
            let file_name = format!("{name}.bin");
            let path = self.dir.join(&file_name);
            // read back too: QEMU's XBZRLE pages apply to the page as written so far
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            file.set_len(b.size)
                .with_context(|| format!("cannot size {}", path.display()))?;
            (file_name, Some(file))
        };
        self.image.add_blocks(vec![ImageBlock {
            id: b.id,
            name: b.name.clone(),
            size: b.size,
            file: file.map(|f| (Arc::new(f), 0)),
            keep: Some(base..base + pages),
        }])?;
        self.blocks.insert(
            b.id,
            BlockFile {
                block: b,
                file_name,
                base,
            },
        );
        Ok(())
    }

    fn apply(&mut self, batch: &vmstream::PageBatch<'_>) -> Result<()> {
        for p in batch.pages() {
            self.image.page(batch.block, p.index, p.data)?;
        }
        Ok(())
    }

    /// Takes one record of a vmstream stream: RAM blocks, pages and QEMU RAM
    /// records; refuses a main channel whose pages travel on multifd
    /// channels as soon as its records say so (`signs`).
    fn take(&mut self, record: &Record<'_>, signs: &mut vmstream_qemu::MultifdSigns) -> Result<()> {
        signs.observe_record(record);
        if signs.flush_records > 0 {
            if let Some(why) = signs.pages_elsewhere() {
                anyhow::bail!(elsewhere(&why));
            }
        }
        match record {
            Record::RamBlocks(blocks) => {
                for b in blocks {
                    self.add(b.clone())?;
                }
            }
            Record::Pages(batch) => self.apply(batch)?,
            Record::Other(raw) if raw.kind == vmstream_qemu::mapping::kinds::RAM_RECORD => {
                self.apply_qemu(raw.body)
                    .with_context(|| format!("record {} at offset {:#x}", raw.index, raw.offset))?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Writes the pages gathered so far.
    fn flush(&mut self) -> Result<()> {
        Ok(self.image.flush()?)
    }

    /// Applies a QEMU RAM record kept as it came in a vmstream record.
    fn apply_qemu(&mut self, body: &[u8]) -> Result<()> {
        let (header, rest) = body.split_at_checked(8).context("short QEMU RAM record")?;
        let header = u64::from_be_bytes(header.try_into()?);
        let (name, payload) = match rest.split_first() {
            Some((0, p)) => (None, p),
            Some((_, r)) => {
                let (&n, r) = r.split_first().context("short QEMU RAM record")?;
                let (name, p) = r
                    .split_at_checked(usize::from(n))
                    .context("short QEMU RAM record")?;
                (Some(name), p)
            }
            None => bail!("short QEMU RAM record"),
        };
        Ok(self.image.update(header, name, payload)?)
    }

    /// The file of the block `extract --range` keeps.
    fn window_file(&self) -> Option<(&BlockFile, &File)> {
        let id = self.window.as_ref()?.block?;
        Some((self.blocks.get(&id)?, self.image.file(id)?))
    }

    fn describe(&self) -> Vec<Json> {
        self.blocks
            .values()
            .map(|bf| {
                json!({
                    "id": bf.block.id, "name": bf.block.name, "size": bf.block.size,
                    "page_size": bf.block.page_size, "flags": bf.block.flags, "file": bf.file_name,
                })
            })
            .collect()
    }
}

/// A file name for a RAM block name (QEMU names contain `/` and `:`).
fn sanitize(name: &str) -> String {
    let s: String = name
        .trim_start_matches('/')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        "block".to_owned()
    } else {
        s
    }
}

fn prepare_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        if fs::read_dir(dir)?.next().is_some() {
            bail!("output directory {} is not empty", dir.display());
        }
    } else {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    Ok(())
}

pub(crate) fn decode(args: &DecodeArgs, opts: &Opts) -> Result<ExitCode> {
    prepare_dir(&args.out)?;
    let mut ram = None;
    let mut info = Json::Null;
    let mut schemas = Vec::new();
    let mut devices = Vec::new();
    let read = input::each_record(&args.file, opts, &mut |h, item| {
        if ram.is_none() {
            ram = Some(RamFiles::new(&args.out, h.page_size, &opts.limits)?);
        }
        let Some(ram) = ram.as_mut() else {
            return Ok(());
        };
        match item.record {
            Record::Info(v) => info = v.to_json(),
            Record::Schema(s) => schemas.push(
                json!({"type": s.type_name, "version": s.version, "schema": s.schema.to_json()}),
            ),
            Record::Device(d) => devices.push(json!({
                "name": d.name, "instance_id": d.instance_id, "type": d.type_name,
                "version": d.version, "value": d.value.to_json(),
            })),
            Record::RamBlocks(blocks) => {
                for b in blocks {
                    ram.add(b)?;
                }
            }
            Record::Pages(batch) => ram.apply(&batch)?,
            _ => {}
        }
        Ok(())
    })?;
    let (format, h) = (read.format, read.header);
    let mut ram = match ram {
        Some(ram) => ram,
        None => RamFiles::new(&args.out, h.page_size, &opts.limits)?,
    };
    ram.flush()?;
    let doc = json!({
        "vmstream_decode": DECODE_LAYOUT,
        "source_format": format.name(),
        "header": {
            "version": format!("{}.{}", h.version_major, h.version_minor),
            "writer": h.writer, "kind": h.kind.name(), "arch": h.arch.name(), "page_size": h.page_size,
        },
        "info": info,
        "schemas": schemas,
        "devices": devices,
        "ram_blocks": ram.describe(),
    });
    let path = args.out.join("stream.json");
    let mut f = BufWriter::new(
        File::create(&path).with_context(|| format!("cannot create {}", path.display()))?,
    );
    serde_json::to_writer_pretty(&mut f, &doc)?;
    writeln!(f)?;
    f.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn field<'a>(j: &'a Json, key: &str, at: &str) -> Result<&'a Json> {
    j.get(key)
        .with_context(|| format!("stream.json: {at} has no {key:?}"))
}

fn u64_field(j: &Json, key: &str, at: &str) -> Result<u64> {
    field(j, key, at)?
        .as_u64()
        .with_context(|| format!("stream.json: {at}.{key} must be an unsigned integer"))
}

fn u32_field(j: &Json, key: &str, at: &str) -> Result<u32> {
    u32::try_from(u64_field(j, key, at)?)
        .with_context(|| format!("stream.json: {at}.{key} does not fit 32 bits"))
}

fn str_field<'a>(j: &'a Json, key: &str, at: &str) -> Result<&'a str> {
    field(j, key, at)?
        .as_str()
        .with_context(|| format!("stream.json: {at}.{key} must be a string"))
}

fn array<'a>(j: &'a Json, key: &str) -> Result<&'a [Json]> {
    match j.get(key) {
        None | Some(Json::Null) => Ok(&[]),
        Some(v) => v
            .as_array()
            .map(Vec::as_slice)
            .with_context(|| format!("stream.json: {key:?} must be an array")),
    }
}

/// A value from its JSON form, refused if readers would refuse it as too deep.
fn value(j: &Json, at: &str, max_depth: u32) -> Result<Value> {
    let v = Value::from_json(j).with_context(|| format!("stream.json: {at}"))?;
    if v.depth() > max_depth {
        bail!(
            "stream.json: {at}: value nests {} deep, more than Limits::max_depth ({max_depth})",
            v.depth()
        );
    }
    Ok(v)
}

/// How deep `stream.json` may nest: each value level is at most three JSON
/// levels (the tag object, its body, a map entry), plus the document's own few.
fn max_json_depth(limits: &vmstream::Limits) -> usize {
    3 * limits.max_depth as usize + 8
}

/// Nesting depth of a JSON text (brackets outside strings), so a document can
/// be refused before a recursive parser sees it.
fn json_depth(text: &str) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0, false, false);
    for b in text.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                max = max.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

pub(crate) fn encode(args: &EncodeArgs, opts: &Opts) -> Result<ExitCode> {
    let path = args.dir.join("stream.json");
    let text =
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    // Values may nest as deep as Limits::max_depth, deeper than serde_json's
    // default recursion limit; the depth is checked here instead.
    let (depth, max) = (json_depth(&text), max_json_depth(&opts.limits));
    if depth > max {
        bail!(
            "{} nests {depth} levels deep, more than the {max} that values within the depth limit need",
            path.display()
        );
    }
    let max_depth = opts.limits.max_depth;
    let mut de = serde_json::Deserializer::from_str(&text);
    de.disable_recursion_limit();
    let doc = serde::Deserialize::deserialize(&mut de)
        .and_then(|doc: Json| de.end().map(|()| doc))
        .with_context(|| format!("{} is not JSON", path.display()))?;
    let layout = u64_field(&doc, "vmstream_decode", "top level")?;
    if layout != DECODE_LAYOUT {
        bail!("stream.json layout {layout} is not supported (expected {DECODE_LAYOUT})");
    }
    let h = field(&doc, "header", "top level")?;
    let kind = match str_field(h, "kind", "header")? {
        "live" => StreamKind::Live,
        "snapshot" => StreamKind::Snapshot,
        "converted-from-qemu" => StreamKind::ConvertedFromQemu,
        other => {
            bail!("stream.json: header.kind {other:?} is not live, snapshot or converted-from-qemu")
        }
    };
    let arch_name = str_field(h, "arch", "header")?;
    let arch = Arch::from_name(arch_name)
        .with_context(|| format!("stream.json: unknown arch {arch_name:?}"))?;
    let page_size = u32_field(h, "page_size", "header")?;
    let mut header = Header::new(kind, arch, page_size);
    header.writer = str_field(h, "writer", "header")?.to_owned();

    let out: Box<dyn Write> = if args.out.as_os_str() == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(
            File::create(&args.out)
                .with_context(|| format!("cannot create {}", args.out.display()))?,
        )
    };
    // Batches as large as the reader's record limit takes, and never fewer than
    // one page (docs/format.md §6.2): 2 MiB pages go 31 to a batch, 1 GiB pages one.
    let per_page = u64::from(page_size) + 8;
    let room = u64::from(opts.limits.max_record_size).saturating_sub(BATCH_OVERHEAD) / per_page;
    let batch_pages = room.clamp(1, u64::from(WriterOptions::default().batch_pages)) as u32;
    let options = WriterOptions::default()
        .with_compression(args.compression.to_compression())
        .with_batch_pages(batch_pages);
    let mut w = StreamWriter::new(BufWriter::with_capacity(1 << 20, out), header, options)?;
    if let Some(info) = doc.get("info").filter(|i| !i.is_null()) {
        w.write_info(&value(info, "info", max_depth)?)?;
    }
    for (i, s) in array(&doc, "schemas")?.iter().enumerate() {
        let at = format!("schemas[{i}]");
        w.write_schema(&SchemaRecord {
            type_name: str_field(s, "type", &at)?.to_owned(),
            version: u32_field(s, "version", &at)?,
            schema: value(field(s, "schema", &at)?, &at, max_depth)?,
        })?;
    }
    let mut blocks = Vec::new();
    for (i, b) in array(&doc, "ram_blocks")?.iter().enumerate() {
        let at = format!("ram_blocks[{i}]");
        let block = RamBlock {
            id: u32_field(b, "id", &at)?,
            name: str_field(b, "name", &at)?.to_owned(),
            size: u64_field(b, "size", &at)?,
            page_size: u32_field(b, "page_size", &at)?,
            flags: u32_field(b, "flags", &at)?,
        };
        let file = str_field(b, "file", &at)?;
        if file.contains('/') || file.contains("..") {
            bail!("stream.json: {at}.file {file:?} must be a plain file name inside the directory");
        }
        blocks.push((block, args.dir.join(file)));
    }
    if !blocks.is_empty() {
        let defs: Vec<RamBlock> = blocks.iter().map(|(b, _)| b.clone()).collect();
        w.write_ram_blocks(&defs)?;
    }
    // whole pages per read: 1 MiB of them, or one page when pages are larger
    let mut buf = vec![0u8; (page_size as usize).max(1 << 20)];
    for (block, path) in &blocks {
        let mut f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let len = f.metadata()?.len();
        if len != block.size {
            bail!(
                "{} is {len} bytes; block {:?} is {} bytes",
                path.display(),
                block.name,
                block.size
            );
        }
        let ps = page_size as usize;
        let mut index = 0u64;
        let mut left = block.size;
        while left > 0 {
            let n = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
            f.read_exact(&mut buf[..n])
                .with_context(|| format!("cannot read {}", path.display()))?;
            for page in buf[..n].chunks_exact(ps) {
                if !is_zero(page) {
                    w.write_page(block.id, 0, index, page)?;
                }
                index += 1;
            }
            left -= n as u64;
        }
    }
    for (i, d) in array(&doc, "devices")?.iter().enumerate() {
        let at = format!("devices[{i}]");
        w.write_device(&DeviceState {
            name: str_field(d, "name", &at)?.to_owned(),
            instance_id: u32_field(d, "instance_id", &at)?,
            type_name: str_field(d, "type", &at)?.to_owned(),
            version: u32_field(d, "version", &at)?,
            value: value(field(d, "value", &at)?, &at, max_depth)?,
        })?;
    }
    w.finish()?.flush()?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn extract(args: &ExtractArgs, opts: &Opts) -> Result<ExitCode> {
    if let Some(range) = &args.range {
        return extract_range(args, range, opts);
    }
    prepare_dir(&args.out)?;
    let ram = stream_ram(&args.file, opts, |ps| {
        RamFiles::new(&args.out, ps, &opts.limits)
    })?;
    for bf in ram.blocks.values() {
        println!("{}\t{}\t{}", bf.file_name, bf.block.name, bf.block.size);
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads the whole stream at `path` into the `RamFiles` that `ram(page_size)`
/// makes, and flushes them.
fn stream_ram(
    path: &Path,
    opts: &Opts,
    make_ram: impl FnOnce(u32) -> Result<RamFiles>,
) -> Result<RamFiles> {
    let what = || path.display().to_string();
    let mut make_ram = Some(make_ram);
    if input::is_vmstream_file(path) {
        // a file is read in place (through a mapping) by the record reader
        let mut ram = None;
        let mut signs = vmstream_qemu::MultifdSigns::default();
        let read = input::each_record(path, opts, &mut |h, item| {
            if let Some(make) = make_ram.take() {
                ram = Some(make(h.page_size)?);
            }
            let Some(ram) = ram.as_mut() else {
                return Ok(());
            };
            ram.take(&item.record, &mut signs)
        })?;
        pages_here(&read.header, &signs).with_context(what)?;
        let mut ram = ram.context("no records")?;
        ram.flush().with_context(what)?;
        return Ok(ram);
    }
    let ram = make_ram.take().context("no RAM files")?;
    let (format, input) = input::open(path)?;
    let mut ram = match format {
        // straight from the QEMU reader's events: no conversion in between
        input::Format::Qemu => {
            let events = input::events(format, input, path, opts, false)?.need_image();
            let mut sink = ExtractSink {
                ram: ram(events.page_size() as u32)?,
                failed: None,
            };
            let r = events.run(&mut sink);
            if let Some(e) = sink.failed {
                // the reader knows where in the stream the sink failed
                let at = r.err().map(|re| format!(" (at {})", re.location()));
                return Err(e.context(format!("{}{}", what(), at.unwrap_or_default())));
            }
            r.with_context(what)?;
            sink.ram
        }
        input::Format::Vmstream => {
            let mut r = input::reader(input, path, opts)?;
            let mut ram = ram(r.header().page_size)?;
            let mut signs = vmstream_qemu::MultifdSigns::default();
            while let Some(item) = r.next().with_context(what)? {
                ram.take(&item.record, &mut signs).with_context(what)?;
            }
            pages_here(r.header(), &signs).with_context(what)?;
            ram
        }
    };
    ram.flush().with_context(what)?;
    Ok(ram)
}

/// Why a memory image cannot come from a main channel alone.
fn elsewhere(why: &str) -> String {
    format!("the memory image is not in this stream alone: {why}; convert the channel set with --channel FILE")
}

/// At a stream's end: a converted QEMU 8.0-or-older main channel shows only
/// here that its pages travel on multifd channels.
fn pages_here(header: &vmstream::Header, signs: &vmstream_qemu::MultifdSigns) -> Result<()> {
    let framed = header.optional_features & vmstream::header::FEATURE_QEMU_FRAMING != 0;
    match (framed, signs.pages_elsewhere()) {
        (true, Some(why)) => anyhow::bail!(elsewhere(&why)),
        _ => Ok(()),
    }
}

/// `extract --range`: the range's final contents, as raw bytes, to a file or
/// standard output. A vmstream file is read through its index; anything else
/// (pipes, QEMU streams, files that cannot seek) as a stream.
fn extract_range(args: &ExtractArgs, range: &RamRange, opts: &Opts) -> Result<ExitCode> {
    let to_stdout = args.out.as_os_str() == "-";
    let dir = match args.out.parent() {
        _ if to_stdout => std::env::temp_dir(),
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let what = || args.file.display().to_string();
    let ram = match seek_range(args, range, &dir, opts)? {
        Some(ram) => ram,
        None => stream_ram(&args.file, opts, |ps| {
            RamFiles::windowed(&dir, ps, &opts.limits, range.clone())
        })?,
    };
    let (bf, file) = ram
        .window_file()
        .with_context(|| format!("{}: no RAM block named {:?}", what(), range.block))?;
    let from = range.offset - bf.base * ram.page_size;
    if to_stdout {
        copy_out(file, from, range.len, &mut std::io::stdout().lock())?;
    } else {
        // written beside the output and renamed over it once complete
        let tmp = tempfile::NamedTempFile::new_in(&dir)
            .with_context(|| format!("cannot create a file in {}", dir.display()))?;
        let mut out = tmp.reopen()?;
        copy_out(file, from, range.len, &mut out)?;
        tmp.persist(&args.out)
            .with_context(|| format!("cannot create {}", args.out.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `extract --range` through a vmstream file's index: reads the RAM block
/// list and the page batches that overlap the range. `Ok(None)` when the
/// input is no seekable vmstream file, carries QEMU RAM records (which update
/// pages outside page batches), or its index failed (after a warning): the
/// caller then reads the stream whole.
fn seek_range(
    args: &ExtractArgs,
    range: &RamRange,
    dir: &Path,
    opts: &Opts,
) -> Result<Option<RamFiles>> {
    let Some(mut r) = input::seekable(&args.file, opts) else {
        return Ok(None);
    };
    if r.header().optional_features & vmstream::header::FEATURE_QEMU_FRAMING != 0 {
        return Ok(None);
    }
    let blocks = match r.ram_blocks() {
        Ok(b) => b.to_vec(),
        Err(e) => {
            input::seek_failed(&args.file, &e.into());
            return Ok(None);
        }
    };
    let what = || args.file.display().to_string();
    // what the request asks of a sound file is answered here, without a fallback
    let block = blocks
        .into_iter()
        .find(|b| b.name == range.block)
        .with_context(|| format!("{}: no RAM block named {:?}", what(), range.block))?;
    let id = block.id;
    let page_size = r.header().page_size;
    let mut ram = RamFiles::windowed(dir, page_size, &opts.limits, range.clone())?;
    ram.add(block).with_context(what)?;
    let ps = u64::from(page_size);
    let pages = range.offset / ps..=(range.offset + range.len - 1) / ps;
    let mut failed = None;
    let read = r.for_each_batch(id, pages, &mut |batch| {
        ram.apply(batch).map_err(|e| {
            let msg = format!("{e:#}");
            failed = Some(e);
            vmstream::Error::new(vmstream::ErrorKind::Io, msg)
        })
    });
    if let Some(e) = failed {
        // writing the output failed, not reading the file
        return Err(e.context(what()));
    }
    if let Err(e) = read {
        input::seek_failed(&args.file, &e.into());
        return Ok(None);
    }
    ram.flush().with_context(what)?;
    Ok(Some(ram))
}

/// Copies `len` bytes at `from` of `src` to `out`, leaving holes for zeros
/// when `out` is a file.
fn copy_out(src: &File, from: u64, len: u64, out: &mut dyn WriteOut) -> Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    while done < len {
        let n = usize::try_from((len - done).min(buf.len() as u64))?;
        src.read_exact_at(&mut buf[..n], from + done)?;
        out.put(&buf[..n], done + n as u64 == len)?;
        done += n as u64;
    }
    out.flush()?;
    Ok(())
}

/// Where `copy_out` writes: standard output, or a file that can keep holes.
trait WriteOut: Write {
    /// Writes `chunk`; `last` says no more follow.
    fn put(&mut self, chunk: &[u8], last: bool) -> std::io::Result<()>;
}

impl WriteOut for std::io::StdoutLock<'_> {
    fn put(&mut self, chunk: &[u8], _last: bool) -> std::io::Result<()> {
        self.write_all(chunk)
    }
}

impl WriteOut for File {
    fn put(&mut self, chunk: &[u8], last: bool) -> std::io::Result<()> {
        if is_zero(chunk) {
            let end = self.seek(SeekFrom::Current(chunk.len() as i64))?;
            if last {
                self.set_len(end)?;
            }
            Ok(())
        } else {
            self.write_all(chunk)
        }
    }
}

/// Extracts RAM from a QEMU reader's events. The reader stops at the first
/// error the sink returns; the sink keeps the error itself, with its context.
struct ExtractSink {
    ram: RamFiles,
    failed: Option<anyhow::Error>,
}

impl ExtractSink {
    fn apply(&mut self, event: &Event<'_>) -> Result<()> {
        match *event {
            Event::Target { page_size, .. } => self.ram.set_page_size(page_size)?,
            Event::RamBlocks { blocks, .. } => {
                let ps = self.ram.page_size as u32;
                for b in vmstream_qemu::mapping::vmstream_blocks(blocks, ps) {
                    self.ram.add(b)?;
                }
            }
            // a mapped-ram stream's blocks come one at a time
            Event::MappedBlock { index, block, .. } => {
                let ps = self.ram.page_size as u32;
                let b = vmstream_qemu::mapping::vmstream_blocks(std::slice::from_ref(block), ps);
                for mut b in b {
                    b.id = index;
                    self.ram.add(b)?;
                }
            }
            Event::Page { block, index, data } => self.ram.image.page(block, index, data)?,
            Event::RamRecord {
                header,
                name,
                payload,
            } => self.ram.image.update(header, name, payload)?,
            _ => {}
        }
        Ok(())
    }
}

impl Sink for ExtractSink {
    fn event(&mut self, event: &Event<'_>) -> vmstream::Result<()> {
        self.apply(event).map_err(|e| {
            let msg = format!("{e:#}");
            self.failed = Some(e);
            vmstream::Error::new(vmstream::ErrorKind::Io, msg)
        })
    }
}
