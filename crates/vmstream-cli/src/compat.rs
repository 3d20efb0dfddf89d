//! `vmstream schema`, `schema-diff` and `transform`: versioned device state.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use vmstream_compat::{diff, schema, Schema};

use crate::args::{SchemaArgs, SchemaDiffArgs, TransformArgs};
use crate::input::Opts;

/// Reads a schema from a stream (vmstream: streamed; QEMU: its vmdesc
/// trailer), a `-dump-vmstate` JSON or a vmdesc JSON.
fn load_schema(path: &Path, opts: &Opts) -> Result<Schema> {
    let what = || path.display().to_string();
    let mut f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut head = [0u8; 8];
    let n = read_up_to(&mut f, &mut head)?;
    let head = &head[..n];
    f.seek(SeekFrom::Start(0))?;
    if head.starts_with(&vmstream::header::MAGIC) {
        return Schema::from_vmstream(std::io::BufReader::new(f), opts.limits).with_context(what);
    }
    if head.starts_with(&vmstream_qemu::MAGIC) {
        let json = match vmstream_qemu::read_trailer(&mut f).with_context(what)? {
            Some(j) => j,
            None => match &opts.vmdesc {
                Some(twin) => {
                    let data = std::fs::read(twin)
                        .with_context(|| format!("cannot read {}", twin.display()))?;
                    vmstream_qemu::vmdesc_from(&data).with_context(|| twin.display().to_string())?
                }
                None => anyhow::bail!(
                    "{}: the QEMU stream has no vmdesc trailer (give one with --vmdesc)",
                    path.display()
                ),
            },
        };
        return Schema::from_vmdesc(&json, &opts.limits).with_context(what);
    }
    let mut text = Vec::new();
    f.take(schema::MAX_JSON as u64 + 1).read_to_end(&mut text)?;
    Schema::from_bytes(&text, opts.limits).with_context(what)
}

fn out() -> std::io::StdoutLock<'static> {
    std::io::stdout().lock()
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

pub(crate) fn schema(args: &SchemaArgs, opts: &Opts) -> Result<ExitCode> {
    let s = load_schema(&args.input, opts)?;
    if args.json {
        writeln!(
            out(),
            "{}",
            serde_json::to_string_pretty(&schema::to_json(&s))?
        )?;
    } else {
        write!(out(), "{s}")?;
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn schema_diff(args: &SchemaDiffArgs, opts: &Opts) -> Result<ExitCode> {
    let load = |p: &Path| load_schema(p, opts);
    let (old, new) = match (load(&args.old), load(&args.new)) {
        (Ok(o), Ok(n)) => (o, n),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("vmstream: error: {e:#}");
            return Ok(ExitCode::from(2));
        }
    };
    let report = diff::diff(&old, &new);
    if args.json {
        writeln!(
            out(),
            "{}",
            serde_json::to_string_pretty(&diff::to_json(&report))?
        )?;
    } else {
        write!(out(), "{report}")?;
    }
    Ok(if report.breaks() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

pub(crate) fn transform(args: &TransformArgs, opts: &Opts) -> Result<ExitCode> {
    use vmstream_compat::{rules, stream};
    let text = std::fs::read(&args.rules)
        .with_context(|| format!("cannot read {}", args.rules.display()))?;
    let text = String::from_utf8(text)
        .map_err(|_| anyhow::anyhow!("{}: not UTF-8", args.rules.display()))?;
    let reg = rules::parse(&text, &args.rules.display().to_string())?;
    let mut targets = stream::Targets::default();
    for dv in &args.device_version {
        let (t, v) = dv
            .rsplit_once('=')
            .and_then(|(t, v)| Some((t, v.parse::<u32>().ok()?)))
            .ok_or_else(|| anyhow::anyhow!("--device-version {dv:?}: expected TYPE=VERSION"))?;
        targets.0.push((t.to_owned(), v));
    }
    let (format, input) = crate::input::open(&args.input)?;
    let dir = match args.output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    let out = std::io::BufWriter::new(tmp.reopen()?);
    let what = || args.input.display().to_string();
    let (mut out, notes) = match format {
        crate::input::Format::Qemu => {
            let copts = opts.convert_options(&args.input, false)?;
            stream::transform_qemu(input, out, &reg, &targets, &copts).with_context(what)?
        }
        crate::input::Format::Vmstream => {
            stream::transform_vmstream(input, out, &reg, &targets, opts.limits)
                .with_context(what)?
        }
    };
    out.flush()?;
    drop(out);
    tmp.persist(&args.output)
        .with_context(|| format!("cannot create {}", args.output.display()))?;
    for n in &notes {
        eprintln!("vmstream: transformed {n}");
    }
    if notes.is_empty() {
        eprintln!("vmstream: note: no device matched the rules");
    }
    Ok(ExitCode::SUCCESS)
}
