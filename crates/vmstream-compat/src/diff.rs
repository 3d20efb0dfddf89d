//! The static checker: what changed between two schemas, and what of it
//! breaks migration in each direction.
//!
//! Rules (QEMU's load semantics, which vmstream device types follow too):
//!
//! * A stream says its version; a loader refuses a version above its own or
//!   below its minimum. Nested structs are not versioned on the wire: each
//!   side uses its own version for them, subsections carry theirs.
//! * A field added in version `s` is on the wire only when the version in
//!   force is at least `s`; a conditional field only when its test says so
//!   (such a break is reported as "if sent").
//! * Fields are matched by name in order; an unmatched field where the other
//!   side has an unmatched field of the same size and type at the same place
//!   is a **rename**: the bytes still match, the check goes on behind it.
//! * Sizes and (known) types must match; a subsection the loader does not know
//!   breaks the load when it is sent, one the stream lacks never does.

use std::fmt;

use serde_json::json;

use crate::schema::{path_text, push_segment, DeviceSchema, Field, Schema, Source, StructTy, Ty};

/// Whether a change breaks loading in one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Break {
    /// Loads.
    No,
    /// Breaks when the part is on the wire (a subsection sent when needed, a
    /// conditional field, a device the machine may not have).
    IfSent,
    /// Breaks.
    Yes,
}

impl Break {
    fn name(self) -> &'static str {
        match self {
            Break::No => "ok",
            Break::IfSent => "breaks if sent",
            Break::Yes => "breaks",
        }
    }
}

/// What kind of change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Kind {
    /// A device type only the new schema has.
    DeviceAdded,
    /// A device type only the old schema has.
    DeviceRemoved,
    /// The version written changed.
    Version,
    /// The oldest version loaded changed.
    MinimumVersion,
    /// A struct's (vmsd) name changed.
    StructName,
    /// A field only the new side has.
    FieldAdded,
    /// A field only the old side has.
    FieldRemoved,
    /// A field changed name at the same place, size and type.
    Renamed,
    /// A field changed size.
    Resized,
    /// A field changed type at the same size.
    Retyped,
    /// A field's version or condition changed.
    FieldVersion,
    /// A subsection only the new side has.
    SubsectionAdded,
    /// A subsection only the old side has.
    SubsectionRemoved,
}

impl Kind {
    /// Name in output.
    pub fn name(self) -> &'static str {
        match self {
            Kind::DeviceAdded => "device added",
            Kind::DeviceRemoved => "device removed",
            Kind::Version => "version",
            Kind::MinimumVersion => "minimum version",
            Kind::StructName => "struct renamed",
            Kind::FieldAdded => "field added",
            Kind::FieldRemoved => "field removed",
            Kind::Renamed => "renamed",
            Kind::Resized => "resized",
            Kind::Retyped => "retyped",
            Kind::FieldVersion => "field version",
            Kind::SubsectionAdded => "subsection added",
            Kind::SubsectionRemoved => "subsection removed",
        }
    }
}

/// One change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Path inside the device: field names (one segment each), subsections as
    /// their names.
    pub path: Vec<String>,
    /// What kind of change.
    pub kind: Kind,
    /// Human-readable detail.
    pub detail: String,
    /// A stream of the old side loaded by the new side.
    pub forward: Break,
    /// A stream of the new side loaded by the old side.
    pub backward: Break,
}

/// The changes of one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceDiff {
    /// The device's key (the old side's, else the new side's).
    pub key: String,
    /// Its QEMU vmstate (or type) name, where it has one.
    pub vmsd: Option<String>,
    /// The changes in order.
    pub changes: Vec<Change>,
}

/// A whole comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Devices present on both sides.
    pub compared: usize,
    /// Devices with changes, in the old side's order then the new side's.
    pub devices: Vec<DeviceDiff>,
    /// Machine types, when both are known and differ.
    pub machines: Option<(String, String)>,
}

impl Report {
    /// The worst break in one direction (`forward`: old → new).
    pub fn worst(&self, forward: bool) -> Break {
        self.devices
            .iter()
            .flat_map(|d| &d.changes)
            .map(|c| if forward { c.forward } else { c.backward })
            .max()
            .unwrap_or(Break::No)
    }

    /// Whether anything breaks in either direction.
    pub fn breaks(&self) -> bool {
        self.worst(true) != Break::No || self.worst(false) != Break::No
    }

    /// Number of changes (all devices).
    pub fn changes(&self) -> usize {
        self.devices.iter().map(|d| d.changes.len()).sum()
    }
}

/// Compares two schemas. Devices are matched by key when both schemas are of
/// one kind, else by vmstate name.
pub fn diff(old: &Schema, new: &Schema) -> Report {
    let by_key = old.source == new.source;
    // the first device not matched yet: same key (and instance, where both
    // say one), else, across kinds, the same vmstate name
    let find = |s: &'_ Schema, d: &DeviceSchema, seen: &[bool]| -> Option<usize> {
        let free = |i: &usize| !seen[*i];
        let same_key = |x: &DeviceSchema| {
            x.key == d.key
                && match (&x.instance, &d.instance) {
                    (Some(a), Some(b)) => a == b,
                    _ => true,
                }
        };
        let by_name = (0..s.devices.len())
            .filter(free)
            .find(|&i| s.devices[i].ty.name.is_some() && s.devices[i].ty.name == d.ty.name);
        let by_k = (0..s.devices.len())
            .filter(free)
            .find(|&i| same_key(&s.devices[i]));
        if by_key {
            by_k
        } else {
            by_name.or(by_k)
        }
    };
    let mut report = Report {
        compared: 0,
        devices: Vec::new(),
        machines: match (&old.machine, &new.machine) {
            (Some(a), Some(b)) if a != b => Some((a.clone(), b.clone())),
            _ => None,
        },
    };
    let mut seen_new = vec![false; new.devices.len()];
    let catalogue_old = old.source == Source::Dump && new.source != Source::Dump;
    let catalogue_new = new.source == Source::Dump && old.source != Source::Dump;
    for o in &old.devices {
        let vmsd = o.ty.name.clone();
        match find(new, o, &seen_new) {
            Some(i) => {
                seen_new[i] = true;
                report.compared += 1;
                let mut changes = Vec::new();
                let cx = Cx {
                    per_elem: !(old.array_counts && new.array_counts),
                    // a vmdesc says neither field versions nor minimum versions
                    versions: old.source != Source::Vmdesc && new.source != Source::Vmdesc,
                };
                cx.compare_struct(
                    &o.ty,
                    &new.devices[i].ty,
                    &mut Vec::new(),
                    true,
                    &mut changes,
                );
                if !changes.is_empty() {
                    report.devices.push(DeviceDiff {
                        key: o.key.clone(),
                        vmsd,
                        changes,
                    });
                }
            }
            // a dump lists every device type QEMU has, a stream the devices
            // of one machine: a type only the dump has is no change
            None if catalogue_old => {}
            None => report.devices.push(DeviceDiff {
                key: o.key.clone(),
                vmsd,
                changes: vec![Change {
                    path: Vec::new(),
                    kind: Kind::DeviceRemoved,
                    detail: "only the old side has this device type".into(),
                    forward: Break::IfSent,
                    backward: Break::No,
                }],
            }),
        }
    }
    for (n, seen) in new.devices.iter().zip(seen_new) {
        if !seen && !catalogue_new {
            report.devices.push(DeviceDiff {
                key: n.key.clone(),
                vmsd: n.ty.name.clone(),
                changes: vec![Change {
                    path: Vec::new(),
                    kind: Kind::DeviceAdded,
                    detail: "only the new side has this device type".into(),
                    forward: Break::No,
                    backward: Break::IfSent,
                }],
            });
        }
    }
    report
}

fn change(
    out: &mut Vec<Change>,
    path: &[String],
    kind: Kind,
    detail: String,
    forward: Break,
    backward: Break,
) {
    out.push(Change {
        path: path.to_vec(),
        kind,
        detail,
        forward,
        backward,
    });
}

/// How sizes compare.
#[derive(Clone, Copy)]
struct Cx {
    /// One side gives element sizes of arrays (a QEMU 7.2 dump).
    per_elem: bool,
    /// Both sides say field versions and minimum versions.
    versions: bool,
}

impl Cx {
    fn size(self, f: &Field) -> Option<u64> {
        match (&f.ty, self.per_elem) {
            (Ty::Seq(_, Some(n)), true) if *n > 0 => f.size.map(|s| s / n),
            _ => f.size,
        }
    }

    /// `top`: the struct's version is on the wire (a section or subsection).
    fn compare_struct(
        self,
        o: &StructTy,
        n: &StructTy,
        path: &mut Vec<String>,
        top: bool,
        out: &mut Vec<Change>,
    ) {
        if o.name != n.name && o.name.is_some() && n.name.is_some() {
            change(
                out,
                path,
                Kind::StructName,
                format!(
                    "vmstate name {} -> {}",
                    o.name.as_deref().unwrap_or("?"),
                    n.name.as_deref().unwrap_or("?")
                ),
                Break::No,
                Break::No,
            );
        }
        if o.version != n.version {
            let (f, b) = if top {
                (
                    if o.version > n.version {
                        Break::Yes
                    } else {
                        Break::No
                    },
                    if n.version > o.version {
                        Break::Yes
                    } else {
                        Break::No
                    },
                )
            } else {
                (Break::No, Break::No)
            };
            let note = if top {
                ""
            } else {
                " (a nested struct: not on the wire, each side reads with its own)"
            };
            change(
                out,
                path,
                Kind::Version,
                format!("version {} -> {}{note}", o.version, n.version),
                f,
                b,
            );
        }
        if top && self.versions {
            let f = o.version < n.minimum_version;
            let b = n.version < o.minimum_version;
            // a type whose version is below its own minimum is broken on both
            // sides alike: no change
            if o.minimum_version != n.minimum_version || ((f || b) && o.version != n.version) {
                change(
                    out,
                    path,
                    Kind::MinimumVersion,
                    format!(
                        "minimum version {} -> {} (versions written {} and {})",
                        o.minimum_version, n.minimum_version, o.version, n.version
                    ),
                    if f { Break::Yes } else { Break::No },
                    if b { Break::Yes } else { Break::No },
                );
            }
        }
        // versions in force: forward the old writes at o.version and the new
        // reads at the stream's version (top) or its own (nested)
        let fwd_read = if top { o.version } else { n.version };
        let bwd_read = if top { n.version } else { o.version };
        let pairs = self.align(&o.fields, &n.fields);
        for p in pairs {
            match p {
                (Some(i), Some(j)) => {
                    let (a, b) = (&o.fields[i], &n.fields[j]);
                    self.compare_fields(a, b, o, n, fwd_read, bwd_read, path, top, out);
                }
                (Some(i), None) => {
                    let a = &o.fields[i];
                    path.push(a.name.clone());
                    // forward: the old sends it, the new does not read it
                    let sent = a.since <= o.version;
                    let f = if !sent {
                        Break::No
                    } else if a.conditional {
                        Break::IfSent
                    } else {
                        Break::Yes
                    };
                    // backward: the old reads it from a new stream that lacks it
                    let read = a.since <= bwd_read;
                    let bk = if !read {
                        Break::No
                    } else if a.conditional {
                        Break::IfSent
                    } else {
                        Break::Yes
                    };
                    change(out, path, Kind::FieldRemoved, field_text(a), f, bk);
                    path.pop();
                }
                (None, Some(j)) => {
                    let b = &n.fields[j];
                    path.push(b.name.clone());
                    let read = b.since <= fwd_read;
                    let f = if !read {
                        Break::No
                    } else if b.conditional {
                        Break::IfSent
                    } else {
                        Break::Yes
                    };
                    let sent = b.since <= n.version;
                    let bk = if !sent {
                        Break::No
                    } else if b.conditional {
                        Break::IfSent
                    } else {
                        Break::Yes
                    };
                    change(out, path, Kind::FieldAdded, field_text(b), f, bk);
                    path.pop();
                }
                (None, None) => {}
            }
        }
        for s in &o.subsections {
            let name = s.name.clone().unwrap_or_default();
            match n.subsections.iter().find(|x| x.name == s.name) {
                Some(t) => {
                    path.push(name);
                    self.compare_struct(s, t, path, true, out);
                    path.pop();
                }
                None => {
                    path.push(name);
                    change(
                    out,
                    path,
                    Kind::SubsectionRemoved,
                    "only the old side has this subsection; the new one refuses it when it is sent"
                        .into(),
                    Break::IfSent,
                    Break::No,
                );
                    path.pop();
                }
            }
        }
        for t in &n.subsections {
            if !o.subsections.iter().any(|x| x.name == t.name) {
                path.push(t.name.clone().unwrap_or_default());
                change(
                    out,
                    path,
                    Kind::SubsectionAdded,
                    "only the new side has this subsection; the old one refuses it when it is sent"
                        .into(),
                    Break::No,
                    Break::IfSent,
                );
                path.pop();
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn compare_fields(
        self,
        a: &Field,
        b: &Field,
        o: &StructTy,
        n: &StructTy,
        fwd_read: u32,
        bwd_read: u32,
        path: &mut Vec<String>,
        top: bool,
        out: &mut Vec<Change>,
    ) {
        let _ = top;
        path.push(a.name.clone());
        if !same_name(&a.name, &b.name) {
            change(
                out,
                path,
                Kind::Renamed,
                format!(
                    "renamed to {}, wire-compatible (same place, {}){}",
                    {
                        let mut s = String::new();
                        push_segment(&mut s, &b.name);
                        s
                    },
                    size_text(a),
                    if b.name == "unused" {
                        ": the new side skips these bytes"
                    } else if a.name == "unused" {
                        ": the old side skipped these bytes"
                    } else {
                        ""
                    }
                ),
                Break::No,
                Break::No,
            );
        }
        // on the wire in each direction?
        let f_sent = a.since <= o.version;
        let f_read = b.since <= fwd_read;
        let b_sent = b.since <= n.version;
        let b_read = a.since <= bwd_read;
        let cond = a.conditional || b.conditional;
        let level = |x: bool| match (x, cond) {
            (false, _) => Break::No,
            (true, true) => Break::IfSent,
            (true, false) => Break::Yes,
        };
        if self.versions && (a.since != b.since || a.conditional != b.conditional) {
            change(
                out,
                path,
                Kind::FieldVersion,
                format!(
                    "since version {}{} -> {}{}",
                    a.since,
                    if a.conditional { " (conditional)" } else { "" },
                    b.since,
                    if b.conditional { " (conditional)" } else { "" }
                ),
                level(f_sent != f_read),
                level(b_sent != b_read),
            );
        }
        let both_f = f_sent && f_read;
        let both_b = b_sent && b_read;
        let unwrap = |t: &'_ Ty| -> Ty {
            match t {
                Ty::Seq(e, _) if self.per_elem => (**e).clone(),
                other => other.clone(),
            }
        };
        let (ta, tb) = (unwrap(&a.ty), unwrap(&b.ty));
        // paired with a padding field by `align`, which checked the sizes
        let padding = a.name == "unused" || b.name == "unused";
        let nested = match (&ta, &tb) {
            (Ty::Struct(x), Ty::Struct(y)) => Some((x, y)),
            (Ty::Seq(x, _), Ty::Seq(y, _)) if self.size(a) == self.size(b) => match (&**x, &**y) {
                (Ty::Struct(x), Ty::Struct(y)) => Some((x, y)),
                _ => None,
            },
            _ => None,
        };
        match nested {
            Some((x, y)) => self.compare_struct(x, y, path, false, out),
            None => {
                if self.size(a) != self.size(b) && !padding {
                    change(
                        out,
                        path,
                        Kind::Resized,
                        format!("{} -> {}", size_text(a), size_text(b)),
                        level(both_f),
                        level(both_b),
                    );
                } else if ta.known() && tb.known() && ta != tb {
                    change(
                        out,
                        path,
                        Kind::Retyped,
                        format!("{} -> {} ({})", a.ty.label(), b.ty.label(), size_text(a)),
                        level(both_f),
                        level(both_b),
                    );
                }
            }
        }
        path.pop();
    }
}

/// Names match, an index suffix aside: a vmdesc names the first element
/// of some arrays `config[0]` where a dump says `config`.
fn same_name(a: &str, b: &str) -> bool {
    fn base(s: &str) -> &str {
        match s.strip_suffix(']').and_then(|t| t.rsplit_once('[')) {
            Some((b, k)) if !k.is_empty() && k.bytes().all(|c| c.is_ascii_digit()) => b,
            _ => s,
        }
    }
    a == b || base(a) == base(b)
}

fn size_text(f: &Field) -> String {
    match f.size {
        Some(s) => format!("{s} bytes"),
        None => "size unknown".into(),
    }
}

fn field_text(f: &Field) -> String {
    let mut s = format!("{}, {}", f.ty.label(), size_text(f));
    if f.since > 0 {
        s.push_str(&format!(", since version {}", f.since));
    }
    if f.conditional {
        s.push_str(", conditional");
    }
    s
}

impl Cx {
    /// How many fields from the front of `fs` add up to `want` bytes exactly.
    fn run(self, fs: &[Field], want: Option<u64>) -> Option<usize> {
        let want = want?;
        let mut sum = 0u64;
        for (k, f) in fs.iter().enumerate() {
            sum = sum.checked_add(self.size(f)?)?;
            if sum == want {
                return Some(k + 1);
            }
            if sum > want {
                return None;
            }
        }
        None
    }

    /// Pairs fields: same name (in order, longest common subsequence), then, in
    /// each gap between such pairs, fields at the same place of the same size and
    /// compatible type (renames). Unpaired fields are `(Some, None)` / `(None, Some)`.
    fn align(self, a: &[Field], b: &[Field]) -> Vec<(Option<usize>, Option<usize>)> {
        let (n, m) = (a.len(), b.len());
        let mut anchors: Vec<(usize, usize)> = Vec::new();
        if n.saturating_mul(m) <= 4_000_000 {
            // LCS table on names
            let mut t = vec![0u32; (n + 1) * (m + 1)];
            for i in (0..n).rev() {
                for j in (0..m).rev() {
                    t[i * (m + 1) + j] = if same_name(&a[i].name, &b[j].name) {
                        t[(i + 1) * (m + 1) + j + 1] + 1
                    } else {
                        t[(i + 1) * (m + 1) + j].max(t[i * (m + 1) + j + 1])
                    };
                }
            }
            let (mut i, mut j) = (0, 0);
            while i < n && j < m {
                if same_name(&a[i].name, &b[j].name) {
                    anchors.push((i, j));
                    i += 1;
                    j += 1;
                } else if t[(i + 1) * (m + 1) + j] >= t[i * (m + 1) + j + 1] {
                    i += 1;
                } else {
                    j += 1;
                }
            }
        } else {
            // too large to tabulate: greedy by position
            let mut j = 0;
            for (i, f) in a.iter().enumerate() {
                if let Some(k) = b[j..].iter().position(|g| same_name(&g.name, &f.name)) {
                    anchors.push((i, j + k));
                    j += k + 1;
                }
            }
        }
        let mut out = Vec::new();
        let (mut pi, mut pj) = (0, 0);
        for (ai, bj) in anchors.into_iter().chain(std::iter::once((n, m))) {
            let (ga, gb) = (pi..ai, pj..bj);
            let (la, lb) = (ga.len(), gb.len());
            let (mut xa, mut xb) = (0, 0);
            while xa < la && xb < lb {
                let (fa, fb) = (&a[pi + xa], &b[pj + xb]);
                // several fields that became one padding field of their total
                // size (VMSTATE_UNUSED), or the reverse
                if fb.name == "unused" && fa.name != "unused" {
                    if let Some(k) = self.run(&a[pi + xa..ai], self.size(fb)) {
                        out.extend((0..k).map(|t| (Some(pi + xa + t), Some(pj + xb))));
                        xa += k;
                        xb += 1;
                        continue;
                    }
                } else if fa.name == "unused" && fb.name != "unused" {
                    if let Some(k) = self.run(&b[pj + xb..bj], self.size(fa)) {
                        out.extend((0..k).map(|t| (Some(pi + xa), Some(pj + xb + t))));
                        xa += 1;
                        xb += k;
                        continue;
                    }
                }
                let padding = self.per_elem && (fa.name == "unused" || fb.name == "unused");
                let same_shape = padding
                    || self.size(fa) == self.size(fb)
                        && (!fa.ty.known()
                            || !fb.ty.known()
                            || fa.ty.label() == fb.ty.label()
                            || matches!((&fa.ty, &fb.ty), (Ty::Struct(_), Ty::Struct(_))));
                if !same_shape {
                    break;
                }
                out.push((Some(pi + xa), Some(pj + xb)));
                xa += 1;
                xb += 1;
            }
            out.extend((pi + xa..ai).map(|i| (Some(i), None)));
            out.extend((pj + xb..bj).map(|j| (None, Some(j))));
            if ai < n && bj < m {
                out.push((Some(ai), Some(bj)));
            }
            pi = ai + 1;
            pj = bj + 1;
        }
        out
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((a, b)) = &self.machines {
            writeln!(f, "note: the machine types differ: {a} (old), {b} (new)")?;
        }
        for d in &self.devices {
            let mut key = String::new();
            push_segment(&mut key, &d.key);
            write!(f, "{key}")?;
            if let Some(v) = &d.vmsd {
                if *v != d.key {
                    write!(f, " (vmstate {v})")?;
                }
            }
            writeln!(f)?;
            for c in &d.changes {
                let p = if c.path.is_empty() {
                    String::from("(device)")
                } else {
                    path_text(&c.path)
                };
                write!(f, "  {p}: {}: {}", c.kind.name(), c.detail)?;
                let dirs = [("old -> new", c.forward), ("new -> old", c.backward)];
                let bad: Vec<String> = dirs
                    .iter()
                    .filter(|(_, b)| *b != Break::No)
                    .map(|(d, b)| format!("{d} {}", b.name()))
                    .collect();
                if !bad.is_empty() {
                    write!(f, "  [{}]", bad.join("; "))?;
                }
                writeln!(f)?;
            }
        }
        let count = |fw: bool, b: Break| {
            self.devices
                .iter()
                .flat_map(|d| &d.changes)
                .filter(|c| (if fw { c.forward } else { c.backward }) == b)
                .count()
        };
        writeln!(
            f,
            "{} device(s) compared, {} with changes, {} change(s); old -> new: {} break, {} break if sent; new -> old: {} break, {} break if sent",
            self.compared,
            self.devices.len(),
            self.changes(),
            count(true, Break::Yes),
            count(true, Break::IfSent),
            count(false, Break::Yes),
            count(false, Break::IfSent),
        )
    }
}

/// JSON rendering (`vmstream schema-diff --json`).
pub fn to_json(r: &Report) -> serde_json::Value {
    json!({
        "compared": r.compared,
        "breaks": {"old_to_new": r.worst(true).name(), "new_to_old": r.worst(false).name()},
        "machines": r.machines.as_ref().map(|(a, b)| json!({"old": a, "new": b})),
        "devices": r.devices.iter().map(|d| json!({
            "key": d.key,
            "vmstate": d.vmsd,
            "changes": d.changes.iter().map(|c| json!({
                "path": c.path,
                "kind": c.kind.name(),
                "detail": c.detail,
                "old_to_new": c.forward.name(),
                "new_to_old": c.backward.name(),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Source;

    fn raw(name: &str, size: u64) -> Field {
        Field {
            name: name.into(),
            ty: Ty::Raw(None),
            size: Some(size),
            since: 0,
            conditional: false,
            default: None,
        }
    }

    fn one(ty: StructTy) -> Schema {
        Schema {
            source: Source::Dump,
            machine: None,
            devices: vec![DeviceSchema {
                key: "d".into(),
                instance: None,
                ty,
            }],
            array_counts: true,
        }
    }

    fn st(version: u32, fields: Vec<Field>) -> StructTy {
        let mut s = StructTy::new("d", version, fields);
        s.minimum_version = 1;
        s
    }

    #[test]
    fn rename_is_wire_compatible_and_checking_goes_on() {
        let o = one(st(2, vec![raw("a", 4), raw("core.itr", 8), raw("c", 2)]));
        let n = one(st(2, vec![raw("a", 4), raw("core.eitr", 8), raw("c", 4)]));
        let r = diff(&o, &n);
        let ch = &r.devices[0].changes;
        assert_eq!(ch[0].kind, Kind::Renamed);
        assert_eq!(ch[0].forward, Break::No);
        assert_eq!(ch[1].kind, Kind::Resized);
        assert_eq!(ch[1].forward, Break::Yes);
        assert!(r.to_string().contains("\"core.itr\": renamed"));
    }

    #[test]
    fn versions_and_added_fields() {
        let o = one(st(2, vec![raw("a", 4)]));
        let mut late = raw("b", 1);
        late.since = 3;
        let n = one(st(3, vec![raw("a", 4), late]));
        let r = diff(&o, &n);
        let ch = &r.devices[0].changes;
        // version 2 -> 3: only new -> old breaks; the v3 field is absent from v2 streams
        assert_eq!(
            (ch[0].kind, ch[0].forward, ch[0].backward),
            (Kind::Version, Break::No, Break::Yes)
        );
        let added = ch.iter().find(|c| c.kind == Kind::FieldAdded).unwrap();
        assert_eq!((added.forward, added.backward), (Break::No, Break::Yes));
        assert_eq!(r.worst(true), Break::No);
        // an unconditional field at version 0 breaks old -> new
        let n2 = one(st(2, vec![raw("a", 4), raw("b", 1)]));
        assert_eq!(diff(&o, &n2).worst(true), Break::Yes);
        // minimum version above the old one
        let mut n3 = st(5, vec![raw("a", 4)]);
        n3.minimum_version = 4;
        assert!(diff(&o, &one(n3)).devices[0]
            .changes
            .iter()
            .any(|c| c.kind == Kind::MinimumVersion && c.forward == Break::Yes));
    }
}
