//! The spec's schema: what a `spec/*.toml` file may say, and the checks that keep it
//! self-consistent (sizes add up, bitfields fill 64 bits, checks name real fields).

use serde::Deserialize;
use std::path::Path;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Family {
    /// Module and file name: `qcow2` gives `generated/qcow2.rs` and `docs/format/qcow2.md`.
    pub family: String,
    pub title: String,
    pub doc: String,
    #[serde(default, rename = "struct")]
    pub structs: Vec<Struct>,
    #[serde(default, rename = "bitfield")]
    pub bitfields: Vec<Bitfield>,
    #[serde(default, rename = "descriptor")]
    pub descriptors: Vec<Descriptor>,
    #[serde(default, rename = "magic")]
    pub magics: Vec<Magic>,
    #[serde(default, rename = "feature")]
    pub features: Vec<Feature>,
    #[serde(default, rename = "constant")]
    pub constants: Vec<Constant>,
}

/// One feature bit of a version 3 header.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Feature {
    pub group: FeatureGroup,
    pub bit: u8,
    /// The Rust constant: `DIRTY`.
    pub name: String,
    /// What QEMU calls it in the feature name table it writes: "dirty bit".
    pub qemu_name: String,
    pub doc: String,
}

/// Which of the three feature fields a bit lives in; the number is its type in the
/// feature name table.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FeatureGroup {
    Incompatible,
    Compatible,
    Autoclear,
}

impl FeatureGroup {
    pub const ALL: [FeatureGroup; 3] = [
        FeatureGroup::Incompatible,
        FeatureGroup::Compatible,
        FeatureGroup::Autoclear,
    ];

    pub fn table_type(self) -> u8 {
        self as u8
    }

    pub fn module(self) -> &'static str {
        match self {
            FeatureGroup::Incompatible => "incompatible",
            FeatureGroup::Compatible => "compatible",
            FeatureGroup::Autoclear => "autoclear",
        }
    }
}

/// A number the format fixes: a limit QEMU enforces, a sector size.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Constant {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub value: u64,
    pub doc: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Struct {
    pub name: String,
    /// What errors call it: "qcow2 header".
    pub title: String,
    pub endian: Endian,
    /// Where it lives, in words or as a number.
    pub offset: String,
    /// When the structure is present at all, in words (the runtime decides).
    pub present: Option<String>,
    pub doc: String,
    #[serde(default)]
    pub params: Vec<Param>,
    #[serde(rename = "field")]
    pub fields: Vec<Field>,
    /// Checks that involve other fields; they run after every field's own checks.
    #[serde(default, rename = "check")]
    pub checks: Vec<CrossCheck>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Endian {
    Big,
    Little,
    Runtime,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Param {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Field {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub doc: String,
    #[serde(default)]
    pub checks: Vec<Check>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    pub equals: Option<u64>,
    pub one_of: Option<Vec<u64>>,
    pub range: Option<[u64; 2]>,
    pub zero: Option<bool>,
    pub expr: Option<String>,
    pub kind: Kind,
    pub error: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrossCheck {
    pub field: String,
    pub expr: String,
    pub kind: Kind,
    pub error: String,
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Invalid,
    Unsupported,
    Corrupt,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bitfield {
    pub name: String,
    pub title: String,
    pub doc: String,
    #[serde(rename = "field")]
    pub fields: Vec<BitField>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BitField {
    pub name: String,
    pub bits: u32,
    /// The field holds bits `shift..` of a byte offset.
    pub shift: Option<u32>,
    #[serde(default)]
    pub reserved: bool,
    pub doc: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Descriptor {
    pub name: String,
    pub title: String,
    pub param: String,
    pub doc: String,
    #[serde(rename = "field")]
    pub fields: Vec<DescriptorField>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DescriptorField {
    pub name: String,
    pub lsb: String,
    pub width: String,
    pub doc: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Magic {
    pub name: String,
    pub value: u32,
    pub payload: String,
    pub max_len: Option<u32>,
    pub doc: String,
}

/// A field's on-disk type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    Int { bytes: usize, signed: bool },
    Bytes(usize),
}

impl FieldType {
    pub fn parse(text: &str) -> Result<Self, String> {
        Ok(match text {
            "u8" => FieldType::Int {
                bytes: 1,
                signed: false,
            },
            "u16" => FieldType::Int {
                bytes: 2,
                signed: false,
            },
            "u32" => FieldType::Int {
                bytes: 4,
                signed: false,
            },
            "u64" => FieldType::Int {
                bytes: 8,
                signed: false,
            },
            "i32" => FieldType::Int {
                bytes: 4,
                signed: true,
            },
            "i64" => FieldType::Int {
                bytes: 8,
                signed: true,
            },
            _ => match text.strip_prefix("bytes ").map(str::parse::<usize>) {
                Some(Ok(n)) if n > 0 => FieldType::Bytes(n),
                _ => return Err(format!("unknown field type `{text}`")),
            },
        })
    }

    pub fn size(self) -> usize {
        match self {
            FieldType::Int { bytes, .. } => bytes,
            FieldType::Bytes(n) => n,
        }
    }
}

impl Struct {
    /// (field, its type, its offset in the structure), in order.
    pub fn layout(&self) -> Result<Vec<(&Field, FieldType, usize)>, String> {
        let mut offset = 0;
        let mut out = Vec::new();
        for field in &self.fields {
            let ty = FieldType::parse(&field.ty)
                .map_err(|e| format!("{}.{}: {e}", self.name, field.name))?;
            out.push((field, ty, offset));
            offset += ty.size();
        }
        Ok(out)
    }

    pub fn size(&self) -> Result<usize, String> {
        Ok(self.layout()?.iter().map(|(_, ty, _)| ty.size()).sum())
    }
}

pub fn load_all(dir: &Path) -> Result<Vec<Family>, String> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    let mut families = Vec::new();
    for path in paths {
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let family: Family =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        family
            .check()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        families.push(family);
    }
    Ok(families)
}

impl Family {
    fn check(&self) -> Result<(), String> {
        for s in &self.structs {
            let layout = s.layout()?;
            for (field, ty, _) in &layout {
                for check in &field.checks {
                    let n = [
                        check.equals.is_some(),
                        check.one_of.is_some(),
                        check.range.is_some(),
                        check.zero.is_some(),
                        check.expr.is_some(),
                    ]
                    .iter()
                    .filter(|b| **b)
                    .count();
                    if n != 1 {
                        return Err(format!(
                            "{}.{}: a check needs exactly one of equals/one_of/range/zero/expr",
                            s.name, field.name
                        ));
                    }
                    if matches!(ty, FieldType::Bytes(_)) && check.zero.is_none() {
                        return Err(format!(
                            "{}.{}: byte arrays take only `zero` checks",
                            s.name, field.name
                        ));
                    }
                }
            }
            for check in &s.checks {
                match layout.iter().find(|(f, _, _)| f.name == check.field) {
                    Some((_, FieldType::Int { .. }, _)) => {}
                    _ => {
                        return Err(format!(
                            "{}: check names unknown integer field `{}`",
                            s.name, check.field
                        ))
                    }
                }
            }
        }
        for f in &self.features {
            if f.bit > 63 {
                return Err(format!("feature {}: bit {} is past 63", f.name, f.bit));
            }
            if f.qemu_name.len() > 46 {
                return Err(format!("feature {}: its name is over 46 bytes", f.name));
            }
        }
        for c in &self.constants {
            if !matches!(c.ty.as_str(), "u32" | "u64" | "usize") {
                return Err(format!(
                    "constant {}: type must be u32, u64 or usize",
                    c.name
                ));
            }
            if c.ty == "u32" && c.value > u64::from(u32::MAX) {
                return Err(format!("constant {}: {} is not a u32", c.name, c.value));
            }
        }
        for b in &self.bitfields {
            let total: u32 = b.fields.iter().map(|f| f.bits).sum();
            if total != 64 {
                return Err(format!(
                    "bitfield {}: fields add up to {total} bits, not 64",
                    b.name
                ));
            }
            for f in &b.fields {
                if f.shift.is_some_and(|s| s + f.bits > 64) {
                    return Err(format!(
                        "bitfield {}.{}: shift + bits exceeds 64",
                        b.name, f.name
                    ));
                }
            }
        }
        Ok(())
    }
}
