//! Transforms between versions of a device type's state, on the value model.
//!
//! A [`Step`] takes a type from one version to the next (`up`) and back
//! (`down`), as a list of [`Op`]s; `down` defaults to the inverse of `up`.
//! A [`Registry`] holds the steps of every type and chains them over any
//! distance in either direction. Nothing is ever truncated: a value the
//! target version cannot hold is an error naming device, field and versions.

use vmstream::{Error, ErrorKind, Result, Value};

/// A scalar type of a field added, removed or resized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Scalar {
    /// `bool`.
    Bool,
    /// Integers.
    U8,
    /// `u16`.
    U16,
    /// `u32`.
    U32,
    /// `u64`.
    U64,
    /// `i8`.
    I8,
    /// `i16`.
    I16,
    /// `i32`.
    I32,
    /// `i64`.
    I64,
}

impl Scalar {
    /// From its name (`u8`, `bool`, ...).
    pub fn parse(s: &str) -> Option<Scalar> {
        Some(match s {
            "bool" => Scalar::Bool,
            "u8" => Scalar::U8,
            "u16" => Scalar::U16,
            "u32" => Scalar::U32,
            "u64" => Scalar::U64,
            "i8" => Scalar::I8,
            "i16" => Scalar::I16,
            "i32" => Scalar::I32,
            "i64" => Scalar::I64,
            _ => return None,
        })
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Scalar::Bool => "bool",
            Scalar::U8 => "u8",
            Scalar::U16 => "u16",
            Scalar::U32 => "u32",
            Scalar::U64 => "u64",
            Scalar::I8 => "i8",
            Scalar::I16 => "i16",
            Scalar::I32 => "i32",
            Scalar::I64 => "i64",
        }
    }

    /// QEMU's vmdesc type name and size.
    pub fn qemu(self) -> (&'static str, u64) {
        match self {
            Scalar::Bool => ("bool", 1),
            Scalar::U8 => ("uint8", 1),
            Scalar::U16 => ("uint16", 2),
            Scalar::U32 => ("uint32", 4),
            Scalar::U64 => ("uint64", 8),
            Scalar::I8 => ("int8", 1),
            Scalar::I16 => ("int16", 2),
            Scalar::I32 => ("int32", 4),
            Scalar::I64 => ("int64", 8),
        }
    }

    /// `v` as this type, if it fits (integers by value, bools as 0/1).
    pub fn convert(self, v: &Value) -> Option<Value> {
        let wide: i128 = match *v {
            Value::Bool(b) => i128::from(b),
            Value::U8(x) => x.into(),
            Value::U16(x) => x.into(),
            Value::U32(x) => x.into(),
            Value::U64(x) => x.into(),
            Value::I8(x) => x.into(),
            Value::I16(x) => x.into(),
            Value::I32(x) => x.into(),
            Value::I64(x) => x.into(),
            _ => return None,
        };
        Some(match self {
            Scalar::Bool => match wide {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                _ => return None,
            },
            Scalar::U8 => Value::U8(wide.try_into().ok()?),
            Scalar::U16 => Value::U16(wide.try_into().ok()?),
            Scalar::U32 => Value::U32(wide.try_into().ok()?),
            Scalar::U64 => Value::U64(wide.try_into().ok()?),
            Scalar::I8 => Value::I8(wide.try_into().ok()?),
            Scalar::I16 => Value::I16(wide.try_into().ok()?),
            Scalar::I32 => Value::I32(wide.try_into().ok()?),
            Scalar::I64 => Value::I64(wide.try_into().ok()?),
        })
    }

    fn bits(self) -> u32 {
        match self {
            Scalar::Bool => 1,
            Scalar::U8 | Scalar::I8 => 8,
            Scalar::U16 | Scalar::I16 => 16,
            Scalar::U32 | Scalar::I32 => 32,
            Scalar::U64 | Scalar::I64 => 64,
        }
    }
}

/// One part of a split integer: `bits` bits, low parts first.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    /// The field it becomes.
    pub field: String,
    /// Its type.
    pub ty: Scalar,
    /// How many bits of the whole it holds.
    pub bits: u32,
}

/// One step of a transform.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Op {
    /// A field changes name.
    Rename {
        /// Old name.
        field: String,
        /// New name.
        to: String,
    },
    /// A field appears, holding `default` where it came from a version without it.
    Add {
        /// Its name.
        field: String,
        /// Its type.
        ty: Scalar,
        /// The value standing for "absent".
        default: Value,
        /// Placed after this field (else last).
        after: Option<String>,
    },
    /// A field goes. Where its value is not `default`, the target cannot hold it:
    /// an error. Without a default the step is one-way and the value is dropped.
    Remove {
        /// Its name.
        field: String,
        /// Type and default, to put it back going the other way.
        back: Option<(Scalar, Value)>,
        /// Where it was (for the way back).
        after: Option<String>,
    },
    /// An integer changes width (range-checked).
    Width {
        /// The field.
        field: String,
        /// Its type before.
        from: Scalar,
        /// Its type after.
        to: Scalar,
    },
    /// Fields move into a new nested struct, placed where the first was.
    Nest {
        /// The fields, in order.
        fields: Vec<String>,
        /// The new struct field.
        into: String,
    },
    /// A nested struct's fields move out into the parent, in its place.
    Unnest {
        /// The struct field.
        field: String,
        /// Its fields (for the way back).
        fields: Vec<String>,
    },
    /// An integer splits into parts, low bits first.
    Split {
        /// The field.
        field: String,
        /// Its type.
        ty: Scalar,
        /// The parts.
        into: Vec<Part>,
    },
    /// An optional part (a subsection) appears, absent in what came from a
    /// version without it.
    AddSubsection {
        /// The field holding it (an option).
        field: String,
    },
    /// An optional part goes; an error when it is present (the target cannot
    /// hold it).
    RemoveSubsection {
        /// The field holding it.
        field: String,
    },
    /// Integer parts merge into one, low bits first.
    Merge {
        /// The parts.
        parts: Vec<Part>,
        /// The field they become.
        into: String,
        /// Its type.
        ty: Scalar,
    },
}

impl Op {
    /// The step that undoes this one, or why there is none.
    pub fn inverse(&self) -> std::result::Result<Op, String> {
        Ok(match self.clone() {
            Op::Rename { field, to } => Op::Rename {
                field: to,
                to: field,
            },
            Op::Add {
                field,
                ty,
                default,
                after,
            } => Op::Remove {
                field,
                back: Some((ty, default)),
                after,
            },
            Op::Remove { field, back, after } => match back {
                Some((ty, default)) => Op::Add {
                    field,
                    ty,
                    default,
                    after,
                },
                None => {
                    return Err(format!(
                        "removing {field:?} has no way back: give its type and default"
                    ))
                }
            },
            Op::Width { field, from, to } => Op::Width {
                field,
                from: to,
                to: from,
            },
            Op::Nest { fields, into } => Op::Unnest {
                field: into,
                fields,
            },
            Op::Unnest { field, fields } => Op::Nest {
                fields,
                into: field,
            },
            Op::Split { field, ty, into } => Op::Merge {
                parts: into,
                into: field,
                ty,
            },
            Op::Merge { parts, into, ty } => Op::Split {
                field: into,
                ty,
                into: parts,
            },
            Op::AddSubsection { field } => Op::RemoveSubsection { field },
            Op::RemoveSubsection { field } => Op::AddSubsection { field },
        })
    }
}

/// Where a transform runs, for errors.
#[derive(Debug, Clone)]
pub struct Ctx<'a> {
    /// The device.
    pub device: &'a str,
    /// Version before and after the step.
    pub from: u32,
    /// Version after.
    pub to: u32,
}

impl Ctx<'_> {
    fn err(&self, field: &str, msg: impl std::fmt::Display) -> Error {
        Error::new(
            ErrorKind::Incompatible,
            format!(
                "device {:?}, field {field:?}, version {} -> {}: {msg}",
                self.device, self.from, self.to
            ),
        )
    }
}

fn fields_of<'v>(v: &'v mut Value, cx: &Ctx<'_>) -> Result<&'v mut Vec<(String, Value)>> {
    match v {
        Value::Struct(f) => Ok(f),
        other => Err(cx.err(
            "",
            format!("expected a struct, found {}", other.type_name()),
        )),
    }
}

fn pos(fs: &[(String, Value)], name: &str) -> Option<usize> {
    fs.iter().position(|(n, _)| n == name)
}

fn take(fs: &mut Vec<(String, Value)>, name: &str, cx: &Ctx<'_>) -> Result<(usize, Value)> {
    let i = pos(fs, name).ok_or_else(|| cx.err(name, "no such field"))?;
    Ok((i, fs.remove(i).1))
}

fn insert_after(
    fs: &mut Vec<(String, Value)>,
    after: Option<&str>,
    name: String,
    v: Value,
    cx: &Ctx<'_>,
) -> Result<()> {
    if pos(fs, &name).is_some() {
        return Err(cx.err(&name, "the field is there already"));
    }
    let at = match after {
        Some(a) => pos(fs, a).ok_or_else(|| cx.err(a, "no such field to place a field after"))? + 1,
        None => fs.len(),
    };
    fs.insert(at, (name, v));
    Ok(())
}

fn as_wide(v: &Value) -> Option<u128> {
    match *v {
        Value::Bool(b) => Some(b.into()),
        Value::U8(x) => Some(x.into()),
        Value::U16(x) => Some(x.into()),
        Value::U32(x) => Some(x.into()),
        Value::U64(x) => Some(x.into()),
        _ => None,
    }
}

/// Applies one op to a struct value.
pub fn apply(op: &Op, v: &mut Value, cx: &Ctx<'_>) -> Result<()> {
    let fs = fields_of(v, cx)?;
    match op {
        Op::Rename { field, to } => {
            if pos(fs, to).is_some() {
                return Err(cx.err(to, "the field is there already"));
            }
            let i = pos(fs, field).ok_or_else(|| cx.err(field, "no such field"))?;
            fs[i].0.clone_from(to);
        }
        Op::Add {
            field,
            ty,
            default,
            after,
        } => {
            let d = ty
                .convert(default)
                .ok_or_else(|| cx.err(field, format!("the default is not a {}", ty.name())))?;
            insert_after(fs, after.as_deref(), field.clone(), d, cx)?;
        }
        Op::Remove { field, back, .. } => {
            let (_, val) = take(fs, field, cx)?;
            if let Some((ty, default)) = back {
                let d = ty.convert(default);
                if ty.convert(&val) != d {
                    return Err(cx.err(
                        field,
                        format!(
                            "holds {}, not its default {}; version {} cannot hold it",
                            val.scalar_text().unwrap_or_else(|| val.type_name().into()),
                            default.scalar_text().unwrap_or_default(),
                            cx.to
                        ),
                    ));
                }
            }
        }
        Op::Width { field, to, .. } => {
            let i = pos(fs, field).ok_or_else(|| cx.err(field, "no such field"))?;
            let nv = to.convert(&fs[i].1).ok_or_else(|| {
                cx.err(
                    field,
                    format!(
                        "{} does not fit {}",
                        fs[i]
                            .1
                            .scalar_text()
                            .unwrap_or_else(|| fs[i].1.type_name().into()),
                        to.name()
                    ),
                )
            })?;
            fs[i].1 = nv;
        }
        Op::Nest { fields, into } => {
            let first = fields
                .first()
                .ok_or_else(|| cx.err(into, "nothing to nest"))?;
            let at = pos(fs, first).ok_or_else(|| cx.err(first, "no such field"))?;
            let mut inner = Vec::with_capacity(fields.len());
            for f in fields {
                inner.push((f.clone(), take(fs, f, cx)?.1));
            }
            if pos(fs, into).is_some() {
                return Err(cx.err(into, "the field is there already"));
            }
            fs.insert(at.min(fs.len()), (into.clone(), Value::Struct(inner)));
        }
        Op::Unnest { field, .. } => {
            let (at, inner) = take(fs, field, cx)?;
            let Value::Struct(inner) = inner else {
                return Err(cx.err(field, "not a struct"));
            };
            for (k, (n, val)) in inner.into_iter().enumerate() {
                if pos(fs, &n).is_some() {
                    return Err(cx.err(&n, "the field is there already"));
                }
                fs.insert(at + k, (n, val));
            }
        }
        Op::Split { field, ty, into } => {
            let (at, val) = take(fs, field, cx)?;
            let whole = as_wide(&val)
                .ok_or_else(|| cx.err(field, format!("not an unsigned {}", ty.name())))?;
            let total: u32 = into.iter().map(|p| p.bits).sum();
            if total < 128 && whole >> total != 0 {
                return Err(cx.err(
                    field,
                    format!("{whole} has bits above the {total} the parts hold"),
                ));
            }
            let mut shift = 0;
            for (k, p) in into.iter().enumerate() {
                let mask = if p.bits >= 128 {
                    u128::MAX
                } else {
                    (1u128 << p.bits) - 1
                };
                let part = (whole >> shift) & mask;
                shift += p.bits;
                let pv =
                    p.ty.convert(&Value::U64(u64::try_from(part).unwrap_or(u64::MAX)))
                        .ok_or_else(|| {
                            cx.err(&p.field, format!("{part} does not fit {}", p.ty.name()))
                        })?;
                if pos(fs, &p.field).is_some() {
                    return Err(cx.err(&p.field, "the field is there already"));
                }
                fs.insert(at + k, (p.field.clone(), pv));
            }
        }
        Op::AddSubsection { field } => {
            insert_after(fs, None, field.clone(), Value::Option(None), cx)?;
        }
        Op::RemoveSubsection { field } => {
            let (_, val) = take(fs, field, cx)?;
            match val {
                Value::Option(None) => {}
                Value::Option(Some(_)) => {
                    return Err(cx.err(
                        field,
                        format!("the subsection is present; version {} has none", cx.to),
                    ))
                }
                other => {
                    return Err(cx.err(
                        field,
                        format!("a subsection is an option, not {}", other.type_name()),
                    ))
                }
            }
        }
        Op::Merge { parts, into, ty } => {
            let first = parts
                .first()
                .ok_or_else(|| cx.err(into, "nothing to merge"))?;
            let at = pos(fs, &first.field).ok_or_else(|| cx.err(&first.field, "no such field"))?;
            let mut whole: u128 = 0;
            let mut shift = 0u32;
            for p in parts {
                let (_, val) = take(fs, &p.field, cx)?;
                let x = as_wide(&val).ok_or_else(|| cx.err(&p.field, "not an unsigned integer"))?;
                if p.bits < 128 && x >> p.bits != 0 {
                    return Err(cx.err(&p.field, format!("{x} does not fit its {} bits", p.bits)));
                }
                whole |= x.checked_shl(shift).unwrap_or(0);
                shift += p.bits;
            }
            if ty.bits() < 128 && whole >> ty.bits() != 0 {
                return Err(cx.err(into, format!("{whole} does not fit {}", ty.name())));
            }
            let nv = ty
                .convert(&Value::U64(u64::try_from(whole).unwrap_or(u64::MAX)))
                .ok_or_else(|| cx.err(into, format!("{whole} does not fit {}", ty.name())))?;
            if pos(fs, into).is_some() {
                return Err(cx.err(into, "the field is there already"));
            }
            fs.insert(at.min(fs.len()), (into.clone(), nv));
        }
    }
    Ok(())
}

/// One part of a device split: the fields that go to a device of another type.
#[derive(Debug, Clone, PartialEq)]
pub struct DevicePart {
    /// The part's device type.
    pub ty: String,
    /// Its version.
    pub version: u32,
    /// Appended to the instance name (`serial0` + `/fifo`); one part may have `""`.
    pub suffix: String,
    /// The fields it takes, in order.
    pub fields: Vec<String>,
}

/// One device type becoming several: a device of `ty` at `version` splits
/// into `parts`, every field going to exactly one part.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceSplit {
    /// The type that splits.
    pub ty: String,
    /// At this version.
    pub version: u32,
    /// The parts.
    pub parts: Vec<DevicePart>,
}

/// Several device types becoming one (the inverse of a split): devices whose
/// names are one base name plus each part's suffix merge into one device of
/// `into.ty` named base + `into.suffix`, fields in the parts' order.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceMerge {
    /// The parts (their `fields` are those expected, checked).
    pub parts: Vec<DevicePart>,
    /// The merged device: type, version and suffix (its `fields` are unused).
    pub into: DevicePart,
}

impl DeviceSplit {
    /// The merge that undoes this split.
    pub fn inverse(&self) -> DeviceMerge {
        DeviceMerge {
            parts: self.parts.clone(),
            into: DevicePart {
                ty: self.ty.clone(),
                version: self.version,
                suffix: String::new(),
                fields: Vec::new(),
            },
        }
    }

    /// Splits one device state; an error names a field no part takes.
    pub fn apply(&self, name: &str, value: Value) -> Result<Vec<(String, String, u32, Value)>> {
        let Value::Struct(mut fs) = value else {
            return Err(Error::new(
                ErrorKind::Incompatible,
                format!("device {name:?}: a split takes a struct"),
            ));
        };
        let mut out = Vec::with_capacity(self.parts.len());
        for p in &self.parts {
            let mut taken = Vec::with_capacity(p.fields.len());
            for f in &p.fields {
                let i = pos(&fs, f).ok_or_else(|| {
                    Error::new(
                        ErrorKind::Incompatible,
                        format!(
                            "device {name:?} (type {:?}, version {}): no field {f:?} for part {:?}",
                            self.ty, self.version, p.ty
                        ),
                    )
                })?;
                taken.push(fs.remove(i));
            }
            out.push((
                format!("{name}{}", p.suffix),
                p.ty.clone(),
                p.version,
                Value::Struct(taken),
            ));
        }
        if let Some((f, _)) = fs.first() {
            return Err(Error::new(
                ErrorKind::Incompatible,
                format!(
                    "device {name:?} (type {:?}, version {}): no part takes field {f:?}",
                    self.ty, self.version
                ),
            ));
        }
        Ok(out)
    }
}

impl DeviceMerge {
    /// The part a device of `ty`/`version` named `name` is, with the base name.
    pub fn part_of(&self, ty: &str, version: u32, name: &str) -> Option<(usize, String)> {
        self.parts.iter().enumerate().find_map(|(i, p)| {
            (p.ty == ty && p.version == version)
                .then(|| {
                    name.strip_suffix(p.suffix.as_str())
                        .map(|b| (i, b.to_owned()))
                })
                .flatten()
        })
    }

    /// Merges the parts' states (in the order of `parts`).
    pub fn apply(&self, base: &str, parts: Vec<Value>) -> Result<(String, Value)> {
        let mut fs: Vec<(String, Value)> = Vec::new();
        for (p, v) in self.parts.iter().zip(parts) {
            let Value::Struct(pf) = v else {
                return Err(Error::new(
                    ErrorKind::Incompatible,
                    format!("device {base:?}{}: not a struct", p.suffix),
                ));
            };
            for (n, val) in pf {
                if pos(&fs, &n).is_some() {
                    return Err(Error::new(
                        ErrorKind::Incompatible,
                        format!(
                            "device {base:?}: field {n:?} is in two parts of the merge into {:?}",
                            self.into.ty
                        ),
                    ));
                }
                fs.push((n, val));
            }
        }
        Ok((format!("{base}{}", self.into.suffix), Value::Struct(fs)))
    }
}

/// One version step of a type: `from` → `to` is `up`, the way back `down`.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The older version.
    pub from: u32,
    /// The newer version.
    pub to: u32,
    /// Ops from `from` to `to`.
    pub up: Vec<Op>,
    /// Ops from `to` to `from`.
    pub down: Vec<Op>,
}

impl Step {
    /// A step whose `down` is the inverse of `up` (each op inverted, in
    /// reverse order); an error names an op without an inverse.
    pub fn invertible(from: u32, to: u32, up: Vec<Op>) -> std::result::Result<Step, String> {
        let down = up
            .iter()
            .rev()
            .map(Op::inverse)
            .collect::<std::result::Result<_, _>>()?;
        Ok(Step { from, to, up, down })
    }
}

/// A type's transforms: the steps between its versions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TypeTransforms {
    /// Steps, each between two versions.
    pub steps: Vec<Step>,
}

/// Transforms for every device type, registered by a VMM at start or read
/// from a rules file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Registry {
    types: Vec<(String, TypeTransforms)>,
    splits: Vec<DeviceSplit>,
    merges: Vec<DeviceMerge>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Adds a step of `ty`; refuses a step whose versions another step of
    /// the type already takes.
    pub fn step(&mut self, ty: &str, step: Step) -> Result<&mut Registry> {
        if step.from >= step.to {
            return Err(Error::new(
                ErrorKind::Usage,
                format!(
                    "type {ty:?}: a step goes from an older version to a newer one ({} -> {})",
                    step.from, step.to
                ),
            ));
        }
        let t = match self.types.iter().position(|(n, _)| n == ty) {
            Some(i) => &mut self.types[i].1,
            None => {
                self.types.push((ty.to_owned(), TypeTransforms::default()));
                let last = self.types.len() - 1;
                &mut self.types[last].1
            }
        };
        if t.steps
            .iter()
            .any(|s| s.from == step.from || s.to == step.to)
        {
            return Err(Error::new(
                ErrorKind::Usage,
                format!(
                    "type {ty:?}: a second step from {} or to {}",
                    step.from, step.to
                ),
            ));
        }
        t.steps.push(step);
        Ok(self)
    }

    /// Registers a device split (applied to devices of the type at that version).
    pub fn split(&mut self, split: DeviceSplit) -> &mut Registry {
        self.splits.push(split);
        self
    }

    /// Registers a device merge.
    pub fn merge(&mut self, merge: DeviceMerge) -> &mut Registry {
        self.merges.push(merge);
        self
    }

    /// The registered splits.
    pub fn splits(&self) -> &[DeviceSplit] {
        &self.splits
    }

    /// The registered merges.
    pub fn merges(&self) -> &[DeviceMerge] {
        &self.merges
    }

    /// The registered types.
    pub fn types(&self) -> impl Iterator<Item = &str> {
        self.types.iter().map(|(n, _)| n.as_str())
    }

    /// The transforms of a type.
    pub fn get(&self, ty: &str) -> Option<&TypeTransforms> {
        self.types.iter().find(|(n, _)| n == ty).map(|(_, t)| t)
    }

    /// The newest version the steps of `ty` reach.
    pub fn newest(&self, ty: &str) -> Option<u32> {
        self.get(ty)?.steps.iter().map(|s| s.to).max()
    }

    /// The ops taking `ty` from version `from` to `to`, with the versions of
    /// each step, or an error saying which step is missing.
    pub fn chain(&self, ty: &str, from: u32, to: u32) -> Result<Vec<(u32, u32, &[Op])>> {
        let mut out = Vec::new();
        let t = self.get(ty);
        let mut v = from;
        while v != to {
            let next = t.and_then(|t| {
                if to > v {
                    t.steps
                        .iter()
                        .find(|s| s.from == v)
                        .map(|s| (s.to, s.up.as_slice()))
                } else {
                    t.steps
                        .iter()
                        .find(|s| s.to == v)
                        .map(|s| (s.from, s.down.as_slice()))
                }
            });
            match next {
                Some((n, ops)) if (to > v && n <= to) || (to < v && n >= to) => {
                    out.push((v, n, ops));
                    v = n;
                }
                _ => {
                    return Err(Error::new(
                        ErrorKind::Incompatible,
                        format!("type {ty:?}: no transform from version {v} toward {to}"),
                    ))
                }
            }
        }
        Ok(out)
    }

    /// Transforms the state of device `device` of type `ty` from version
    /// `from` to `to`.
    pub fn transform(
        &self,
        device: &str,
        ty: &str,
        from: u32,
        to: u32,
        value: &mut Value,
    ) -> Result<()> {
        for (a, b, ops) in self.chain(ty, from, to)? {
            let cx = Ctx {
                device,
                from: a,
                to: b,
            };
            for op in ops {
                apply(op, value, &cx)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(fields: &[(&str, Value)]) -> Value {
        Value::Struct(
            fields
                .iter()
                .map(|(n, v)| ((*n).to_owned(), v.clone()))
                .collect(),
        )
    }

    fn cx() -> Ctx<'static> {
        Ctx {
            device: "d",
            from: 1,
            to: 2,
        }
    }

    fn round(op: Op, before: Value, after: Value) {
        let mut v = before.clone();
        apply(&op, &mut v, &cx()).unwrap();
        assert_eq!(v, after, "{op:?}");
        apply(&op.inverse().unwrap(), &mut v, &cx()).unwrap();
        assert_eq!(v, before, "inverse of {op:?}");
    }

    #[test]
    fn each_op_and_its_inverse() {
        round(
            Op::Rename {
                field: "a".into(),
                to: "b".into(),
            },
            s(&[("a", Value::U8(1))]),
            s(&[("b", Value::U8(1))]),
        );
        round(
            Op::Add {
                field: "b".into(),
                ty: Scalar::Bool,
                default: Value::Bool(false),
                after: Some("a".into()),
            },
            s(&[("a", Value::U8(1)), ("c", Value::U8(3))]),
            s(&[
                ("a", Value::U8(1)),
                ("b", Value::Bool(false)),
                ("c", Value::U8(3)),
            ]),
        );
        round(
            Op::Width {
                field: "a".into(),
                from: Scalar::U8,
                to: Scalar::U32,
            },
            s(&[("a", Value::U8(200))]),
            s(&[("a", Value::U32(200))]),
        );
        round(
            Op::Nest {
                fields: vec!["a".into(), "b".into()],
                into: "n".into(),
            },
            s(&[
                ("x", Value::U8(0)),
                ("a", Value::U8(1)),
                ("b", Value::U8(2)),
            ]),
            s(&[
                ("x", Value::U8(0)),
                ("n", s(&[("a", Value::U8(1)), ("b", Value::U8(2))])),
            ]),
        );
        let parts = vec![
            Part {
                field: "lo".into(),
                ty: Scalar::U8,
                bits: 8,
            },
            Part {
                field: "hi".into(),
                ty: Scalar::U8,
                bits: 8,
            },
        ];
        round(
            Op::Split {
                field: "w".into(),
                ty: Scalar::U16,
                into: parts,
            },
            s(&[("w", Value::U16(0x1234))]),
            s(&[("lo", Value::U8(0x34)), ("hi", Value::U8(0x12))]),
        );
    }

    #[test]
    fn lossy_steps_are_errors() {
        let mut v = s(&[("a", Value::U32(300))]);
        let e = apply(
            &Op::Width {
                field: "a".into(),
                from: Scalar::U32,
                to: Scalar::U8,
            },
            &mut v,
            &cx(),
        )
        .unwrap_err();
        assert!(
            e.message()
                .contains("device \"d\", field \"a\", version 1 -> 2: 0x0000012c does not fit u8"),
            "{e}"
        );
        let add = Op::Add {
            field: "b".into(),
            ty: Scalar::U8,
            default: Value::U8(0),
            after: None,
        };
        let mut v = s(&[("b", Value::U8(7))]);
        let e = apply(&add.inverse().unwrap(), &mut v, &cx()).unwrap_err();
        assert!(e.message().contains("not its default"), "{e}");
    }
}
