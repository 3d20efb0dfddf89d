//! Rules files: transforms in TOML (reference: docs/transforms.md).
//!
//! ```toml
//! [[type]]
//! name = "esp"
//!
//! [[type.step]]
//! from = 6
//! to = 7
//! up = [
//!   { op = "rename", field = "ti_cmd", to = "mig_ti_cmd" },
//!   { op = "add", field = "drq_state", type = "bool", default = false, after = "lun" },
//! ]
//! # down = [...]   (default: the inverse of up)
//! ```
//!
//! Errors name the line and column and what was expected.

use serde::Deserialize;
use vmstream::{Error, ErrorKind, Result, Value};

use crate::transform::{DeviceMerge, DevicePart, DeviceSplit, Op, Part, Registry, Scalar, Step};

/// Largest rules file read, in bytes.
pub const MAX_RULES: usize = 1 << 20;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(rename = "type", default)]
    types: Vec<TypeRules>,
    #[serde(default)]
    split: Vec<SplitRules>,
    #[serde(default)]
    merge: Vec<MergeRules>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DevicePartRules {
    #[serde(rename = "type")]
    ty: String,
    version: u32,
    #[serde(default)]
    suffix: String,
    #[serde(default)]
    fields: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SplitRules {
    #[serde(rename = "type")]
    ty: String,
    version: u32,
    parts: Vec<DevicePartRules>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MergeRules {
    parts: Vec<DevicePartRules>,
    into: DevicePartRules,
}

fn device_part(p: &DevicePartRules) -> DevicePart {
    DevicePart {
        ty: p.ty.clone(),
        version: p.version,
        suffix: p.suffix.clone(),
        fields: p.fields.clone(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TypeRules {
    name: String,
    #[serde(rename = "step", default)]
    steps: Vec<StepRules>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepRules {
    from: u32,
    to: u32,
    up: Vec<OpRules>,
    down: Option<Vec<OpRules>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartRules {
    field: String,
    #[serde(rename = "type")]
    ty: String,
    bits: u32,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
enum OpRules {
    Rename {
        field: String,
        to: String,
    },
    Add {
        field: String,
        #[serde(rename = "type")]
        ty: String,
        default: toml::Value,
        after: Option<String>,
    },
    Remove {
        field: String,
        #[serde(rename = "type")]
        ty: Option<String>,
        default: Option<toml::Value>,
        after: Option<String>,
    },
    Width {
        field: String,
        from: String,
        to: String,
    },
    Nest {
        fields: Vec<String>,
        into: String,
    },
    Unnest {
        field: String,
        fields: Vec<String>,
    },
    Split {
        field: String,
        #[serde(rename = "type")]
        ty: String,
        into: Vec<PartRules>,
    },
    Merge {
        parts: Vec<PartRules>,
        into: String,
        #[serde(rename = "type")]
        ty: String,
    },
    AddSubsection {
        field: String,
    },
    RemoveSubsection {
        field: String,
    },
}

fn scalar(s: &str, at: &str) -> std::result::Result<Scalar, String> {
    Scalar::parse(s).ok_or_else(|| {
        format!("{at}: type {s:?} is not one of bool, u8, u16, u32, u64, i8, i16, i32, i64")
    })
}

fn value(v: &toml::Value, ty: Scalar, at: &str) -> std::result::Result<Value, String> {
    let raw = match v {
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Integer(i) => Value::I64(*i),
        other => {
            return Err(format!(
                "{at}: a default is a boolean or an integer, not {}",
                other.type_str()
            ))
        }
    };
    ty.convert(&raw)
        .ok_or_else(|| format!("{at}: default {v} does not fit {}", ty.name()))
}

fn parts(ps: &[PartRules], at: &str) -> std::result::Result<Vec<Part>, String> {
    ps.iter()
        .map(|p| {
            Ok(Part {
                field: p.field.clone(),
                ty: scalar(&p.ty, at)?,
                bits: if (1..=64).contains(&p.bits) {
                    p.bits
                } else {
                    return Err(format!("{at}: a part holds 1 to 64 bits, not {}", p.bits));
                },
            })
        })
        .collect()
}

fn op(o: &OpRules, at: &str) -> std::result::Result<Op, String> {
    Ok(match o {
        OpRules::Rename { field, to } => Op::Rename {
            field: field.clone(),
            to: to.clone(),
        },
        OpRules::Add {
            field,
            ty,
            default,
            after,
        } => {
            let ty = scalar(ty, at)?;
            Op::Add {
                field: field.clone(),
                ty,
                default: value(default, ty, at)?,
                after: after.clone(),
            }
        }
        OpRules::Remove {
            field,
            ty,
            default,
            after,
        } => Op::Remove {
            field: field.clone(),
            back: match (ty, default) {
                (Some(t), Some(d)) => {
                    let t = scalar(t, at)?;
                    Some((t, value(d, t, at)?))
                }
                (None, None) => None,
                _ => {
                    return Err(format!(
                        "{at}: give both type and default of a removed field, or neither"
                    ))
                }
            },
            after: after.clone(),
        },
        OpRules::Width { field, from, to } => Op::Width {
            field: field.clone(),
            from: scalar(from, at)?,
            to: scalar(to, at)?,
        },
        OpRules::Nest { fields, into } => {
            if fields.is_empty() {
                return Err(format!("{at}: nest needs at least one field"));
            }
            Op::Nest {
                fields: fields.clone(),
                into: into.clone(),
            }
        }
        OpRules::Unnest { field, fields } => Op::Unnest {
            field: field.clone(),
            fields: fields.clone(),
        },
        OpRules::Split { field, ty, into } => {
            if into.is_empty() {
                return Err(format!("{at}: split needs parts"));
            }
            Op::Split {
                field: field.clone(),
                ty: scalar(ty, at)?,
                into: parts(into, at)?,
            }
        }
        OpRules::AddSubsection { field } => Op::AddSubsection {
            field: field.clone(),
        },
        OpRules::RemoveSubsection { field } => Op::RemoveSubsection {
            field: field.clone(),
        },
        OpRules::Merge {
            parts: ps,
            into,
            ty,
        } => {
            if ps.is_empty() {
                return Err(format!("{at}: merge needs parts"));
            }
            Op::Merge {
                parts: parts(ps, at)?,
                into: into.clone(),
                ty: scalar(ty, at)?,
            }
        }
    })
}

/// Line and column (1-based) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Parses a rules file into a registry. `name` is used in errors.
pub fn parse(text: &str, name: &str) -> Result<Registry> {
    if text.len() > MAX_RULES {
        return Err(Error::new(
            ErrorKind::LimitExceeded,
            format!("{name}: more than {MAX_RULES} bytes"),
        ));
    }
    let bad = |msg: String| Error::new(ErrorKind::Malformed, msg);
    let file: File = toml::from_str(text).map_err(|e| {
        let (l, c) = e.span().map_or((1, 1), |s| line_col(text, s.start));
        bad(format!("{name}:{l}:{c}: {}", e.message()))
    })?;
    let mut reg = Registry::new();
    for (ti, t) in file.types.iter().enumerate() {
        for (si, s) in t.steps.iter().enumerate() {
            let at = format!(
                "{name}: type {:?} ([[type]] {}), step {} ({} -> {})",
                t.name,
                ti + 1,
                si + 1,
                s.from,
                s.to
            );
            let up =
                s.up.iter()
                    .enumerate()
                    .map(|(k, o)| op(o, &format!("{at}, up[{k}]")))
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(bad)?;
            let step = match &s.down {
                Some(d) => Step {
                    from: s.from,
                    to: s.to,
                    up,
                    down: d
                        .iter()
                        .enumerate()
                        .map(|(k, o)| op(o, &format!("{at}, down[{k}]")))
                        .collect::<std::result::Result<Vec<_>, _>>()
                        .map_err(bad)?,
                },
                None => Step::invertible(s.from, s.to, up)
                    .map_err(|e| bad(format!("{at}: {e} (or write down = [...])")))?,
            };
            reg.step(&t.name, step)
                .map_err(|e| bad(format!("{at}: {}", e.message())))?;
        }
    }
    for (i, sp) in file.split.iter().enumerate() {
        let at = format!("{name}: [[split]] {} (type {:?})", i + 1, sp.ty);
        if sp.parts.len() < 2 {
            return Err(bad(format!("{at}: a split has at least two parts")));
        }
        let mut suffixes: Vec<&str> = sp.parts.iter().map(|p| p.suffix.as_str()).collect();
        suffixes.sort_unstable();
        suffixes.dedup();
        if suffixes.len() != sp.parts.len() {
            return Err(bad(format!("{at}: the parts need distinct suffixes")));
        }
        reg.split(DeviceSplit {
            ty: sp.ty.clone(),
            version: sp.version,
            parts: sp.parts.iter().map(device_part).collect(),
        });
    }
    for (i, mg) in file.merge.iter().enumerate() {
        let at = format!("{name}: [[merge]] {} (into {:?})", i + 1, mg.into.ty);
        if mg.parts.len() < 2 {
            return Err(bad(format!("{at}: a merge has at least two parts")));
        }
        reg.merge(DeviceMerge {
            parts: mg.parts.iter().map(device_part).collect(),
            into: device_part(&mg.into),
        });
    }
    Ok(reg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_locates_errors() {
        let ok = r#"
[[type]]
name = "t"
[[type.step]]
from = 1
to = 2
up = [ { op = "rename", field = "a", to = "b" },
       { op = "add", field = "c", type = "u8", default = 3 } ]
"#;
        let r = parse(ok, "r.toml").unwrap();
        assert_eq!(r.newest("t"), Some(2));
        let e = parse("[[type]]\nname = \"t\"\n[[type.step]]\nfrom = 1\nto = 2\nup = [ { op = \"frobnicate\" } ]\n", "r.toml").unwrap_err();
        assert!(e.message().starts_with("r.toml:6:"), "{e}");
        assert!(e.message().contains("frobnicate"), "{e}");
        let e = parse("[[type]]\nname = 3\n", "r.toml").unwrap_err();
        assert!(e.message().starts_with("r.toml:2:8"), "{e}");
        let e = parse("[[type]]\nname = \"t\"\n[[type.step]]\nfrom = 1\nto = 2\nup = [ { op = \"add\", field = \"c\", type = \"u8\", default = 300 } ]\n", "r.toml").unwrap_err();
        assert!(e.message().contains("default 300 does not fit u8"), "{e}");
        let e = parse("[[type]]\nname = \"t\"\n[[type.step]]\nfrom = 1\nto = 2\nup = [ { op = \"remove\", field = \"c\" } ]\n", "r.toml").unwrap_err();
        assert!(e.message().contains("no way back"), "{e}");
        assert!(parse("x = [", "r.toml")
            .unwrap_err()
            .message()
            .starts_with("r.toml:1:"));
    }
}
