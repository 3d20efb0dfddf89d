//! `diff`: devices, fields and pages that differ between two streams.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use serde_json::json;
use vmstream::{DeviceState, Record, Value};

use crate::args::DiffArgs;
use crate::input::{self, Opts};

/// The final state of a stream: devices and a fingerprint of every page.
struct Snapshot {
    devices: BTreeMap<(String, u32), DeviceState>,
    /// Block name -> (size, one fingerprint per page; 0 = zero or never sent).
    blocks: BTreeMap<String, (u64, Vec<u64>)>,
}

fn fingerprint(data: &[u8]) -> u64 {
    if vmstream::write::is_zero(data) {
        return 0;
    }
    let (a, b) = data.split_at(data.len() / 2);
    let fp = (u64::from(vmstream::crc32c(a)) << 32) | u64::from(vmstream::crc32c(b));
    fp.max(1)
}

fn load(path: &Path, opts: &Opts) -> Result<Snapshot> {
    let mut budget = opts.limits.max_alloc;
    let mut snap = Snapshot {
        devices: BTreeMap::new(),
        blocks: BTreeMap::new(),
    };
    let mut names: BTreeMap<u32, String> = BTreeMap::new();
    input::each_image_record(path, opts, &mut |header, item| {
        match item.record {
            Record::Device(d) => {
                snap.devices.insert((d.name.clone(), d.instance_id), d);
            }
            Record::RamBlocks(blocks) => {
                let page_size = u64::from(header.page_size);
                for b in blocks {
                    let pages = b.size / page_size;
                    let fps = input::page_table(&mut budget, &b.name, b.size, pages)?;
                    names.insert(b.id, b.name.clone());
                    snap.blocks.insert(b.name, (b.size, fps));
                }
            }
            Record::Pages(batch) => {
                let Some(fps) = names.get(&batch.block).and_then(|n| snap.blocks.get_mut(n)) else {
                    return Ok(());
                };
                for p in batch.pages() {
                    if let Some(slot) = fps.1.get_mut(p.index as usize) {
                        *slot = p.data.map_or(0, fingerprint);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    })?;
    Ok(snap)
}

/// Leaf paths whose values differ: (path, old, new); `None` = absent. A path
/// can occur more than once (QEMU names fields like `channels[0].x` next to an
/// array `channels`), so leaves pair up by path and occurrence.
fn value_diff(a: &Value, b: &Value) -> Vec<(String, Option<Value>, Option<Value>)> {
    let mut left: Vec<(String, Value)> = Vec::new();
    a.walk_leaves(&mut |p, v| left.push((p.to_owned(), v.clone())));
    let mut right: BTreeMap<String, std::collections::VecDeque<Value>> = BTreeMap::new();
    let mut order = Vec::new();
    b.walk_leaves(&mut |p, v| {
        order.push(p.to_owned());
        right.entry(p.to_owned()).or_default().push_back(v.clone());
    });
    let mut out = Vec::new();
    for (p, v) in left {
        match right.get_mut(&p).and_then(|q| q.pop_front()) {
            Some(w) if w == v => {}
            Some(w) => out.push((p, Some(v), Some(w))),
            None => out.push((p, Some(v), None)),
        }
    }
    for p in order {
        if let Some(w) = right.get_mut(&p).and_then(|q| q.pop_front()) {
            out.push((p, None, Some(w)));
        }
    }
    out
}

fn show(v: &Option<Value>) -> String {
    match v {
        None => "(absent)".to_owned(),
        Some(v) => format!("{} {}", v.type_name(), v.scalar_text().unwrap_or_default()),
    }
}

pub(crate) fn diff(args: &DiffArgs, opts: &Opts) -> Result<ExitCode> {
    let a = load(&args.a, opts)?;
    let b_opts = Opts {
        channels: args.b_channels.clone(),
        ..opts.clone()
    };
    let b = load(&args.b, &b_opts)?;
    let mut device_diffs = Vec::new();
    let mut text = Vec::new();
    for (key, da) in &a.devices {
        let label = format!("{} (instance {})", key.0, key.1);
        match b.devices.get(key) {
            None => {
                text.push(format!("device {label}: only in {}", args.a.display()));
                device_diffs.push(json!({"name": key.0, "instance_id": key.1, "only_in": "a"}));
            }
            Some(db) => {
                let mut fields = Vec::new();
                if da.type_name != db.type_name || da.version != db.version {
                    text.push(format!(
                        "device {label}: type {} v{} -> {} v{}",
                        da.type_name, da.version, db.type_name, db.version
                    ));
                }
                for (path, old, new) in value_diff(&da.value, &db.value) {
                    let p = if path.is_empty() { "." } else { path.as_str() };
                    text.push(format!(
                        "device {label}: {p}: {} -> {}",
                        show(&old),
                        show(&new)
                    ));
                    fields.push(json!({
                        "path": path,
                        "old": old.as_ref().map(Value::to_json),
                        "new": new.as_ref().map(Value::to_json),
                    }));
                }
                if !fields.is_empty() || da.type_name != db.type_name || da.version != db.version {
                    device_diffs.push(json!({
                        "name": key.0, "instance_id": key.1,
                        "type": [da.type_name, db.type_name], "version": [da.version, db.version],
                        "fields": fields,
                    }));
                }
            }
        }
    }
    for key in b.devices.keys().filter(|k| !a.devices.contains_key(*k)) {
        text.push(format!(
            "device {} (instance {}): only in {}",
            key.0,
            key.1,
            args.b.display()
        ));
        device_diffs.push(json!({"name": key.0, "instance_id": key.1, "only_in": "b"}));
    }
    let mut block_diffs = Vec::new();
    let names: std::collections::BTreeSet<&String> =
        a.blocks.keys().chain(b.blocks.keys()).collect();
    for name in names {
        match (a.blocks.get(name), b.blocks.get(name)) {
            (Some((sa, fa)), Some((sb, fb))) => {
                let common = fa.len().min(fb.len());
                let differing = fa.iter().zip(fb).filter(|(x, y)| x != y).count()
                    + fa.len().max(fb.len())
                    - common;
                if differing > 0 || sa != sb {
                    text.push(format!(
                        "ram block {name}: {differing} pages differ{}",
                        if sa != sb {
                            format!(" (size {sa:#x} -> {sb:#x})")
                        } else {
                            String::new()
                        }
                    ));
                    block_diffs
                        .push(json!({"name": name, "pages_differ": differing, "size": [sa, sb]}));
                }
            }
            (Some(_), None) => {
                text.push(format!("ram block {name}: only in {}", args.a.display()));
                block_diffs.push(json!({"name": name, "only_in": "a"}));
            }
            (None, Some(_)) => {
                text.push(format!("ram block {name}: only in {}", args.b.display()));
                block_diffs.push(json!({"name": name, "only_in": "b"}));
            }
            (None, None) => {}
        }
    }
    let equal = device_diffs.is_empty() && block_diffs.is_empty();
    let out = &mut std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(
            &mut *out,
            &json!({"equal": equal, "devices": device_diffs, "ram_blocks": block_diffs}),
        )?;
        writeln!(out)?;
    } else {
        for line in &text {
            writeln!(out, "{line}")?;
        }
        if equal {
            writeln!(
                out,
                "streams are equal: {} devices, {} RAM blocks",
                a.devices.len(),
                a.blocks.len()
            )?;
        }
    }
    Ok(if equal {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
