//! `cowimg info`: what an image is, in qemu-img's words and JSON shape.

use crate::human;
use crate::json::Json;
use crate::source::SourceArgs;
use cowimg::format::qcow2::{autoclear, compatible, incompatible};
use cowimg::image::{ChainEntry, Layer};
use cowimg::qcow2::{self, Snapshot};
use cowimg::{Backing, Error, Format, Image};
use std::fmt::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    source: SourceArgs,
    /// Output format: human or json.
    #[arg(long = "output", default_value = "human", value_parser = ["human", "json"])]
    output: String,
    /// Show every image of the backing chain.
    #[arg(long = "backing-chain")]
    backing_chain: bool,
    /// Also print every header field as parsed (cowimg only).
    #[arg(long)]
    header: bool,
    /// The image file.
    filename: String,
}

/// What `info` says about one file.
struct Info {
    filename: String,
    format: Format,
    virtual_size: u64,
    file_length: u64,
    actual_size: u64,
    cluster_size: Option<u64>,
    encrypted: bool,
    dirty: bool,
    backing_filename: Option<String>,
    full_backing_filename: Option<String>,
    backing_format: Option<String>,
    snapshots: Vec<Snapshot>,
    /// `format-specific.data` for qcow2.
    specific: Option<Json>,
    /// The parsed header, for --header.
    header_dump: String,
}

pub fn run(args: &Args) -> Result<ExitCode, Error> {
    let (path, mut options) = args.source.resolve(&args.filename)?;
    options.metadata_only = true;
    if !args.backing_chain {
        options.backing = Backing::Ignore;
    }
    let image = Image::open(&path, &options)?;
    crate::print_warnings(&image);
    let mut infos = Vec::new();
    for entry in image.chain() {
        infos.push(describe(entry, args.header)?);
    }
    let out = if args.output == "json" {
        let mut values: Vec<Json> = infos.iter().map(to_json).collect();
        let value = if args.backing_chain {
            Json::Array(values)
        } else {
            values.remove(0)
        };
        value.pretty() + "\n"
    } else {
        infos.iter().map(to_human).collect::<Vec<_>>().join("\n")
    };
    crate::print_out(&out);
    Ok(ExitCode::SUCCESS)
}

fn file_sizes(path: &Path) -> Result<(u64, u64), Error> {
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::io(format!("Could not open '{}'", path.display()), e))?;
    // QEMU's file layer counts whole 512-byte sectors.
    Ok((meta.len().next_multiple_of(512), meta.blocks() * 512))
}

fn base(path: &Path, format: Format, virtual_size: u64) -> Result<Info, Error> {
    let (file_length, actual_size) = file_sizes(path)?;
    Ok(Info {
        filename: path.display().to_string(),
        format,
        virtual_size,
        file_length,
        actual_size,
        cluster_size: None,
        encrypted: false,
        dirty: false,
        backing_filename: None,
        full_backing_filename: None,
        backing_format: None,
        snapshots: Vec::new(),
        specific: None,
        header_dump: String::new(),
    })
}

fn with_backing(mut info: Info, path: &Path, name: Option<String>, format: Option<String>) -> Info {
    info.full_backing_filename = name.as_deref().map(|n| {
        cowimg::image::resolve_backing(path, n)
            .display()
            .to_string()
    });
    info.backing_filename = name;
    info.backing_format = format;
    info
}

fn describe(entry: &ChainEntry, dump: bool) -> Result<Info, Error> {
    let path = &entry.path;
    match &entry.layer {
        Layer::Raw(raw) => base(path, Format::Raw, raw.size()),
        Layer::Cow(c) => {
            let h = c.header();
            let mut info = base(path, Format::Cow, c.size())?;
            info.header_dump = format!("cow layout: {}\n", h.layout_name());
            if dump {
                info.header_dump += &format!("{h:#?}");
            }
            let backing = entry.layer.backing_name();
            let (name, format) = backing.map_or((None, None), |(n, f)| (Some(n), f));
            Ok(with_backing(info, path, name, format))
        }
        Layer::Qcow(q) => {
            let h = q.header();
            let mut info = base(path, Format::Qcow, q.size())?;
            info.cluster_size = Some(q.cluster_size());
            info.encrypted = q.is_encrypted();
            if dump {
                info.header_dump = format!("{h:#?}");
            }
            let backing = entry.layer.backing_name();
            let (name, format) = backing.map_or((None, None), |(n, f)| (Some(n), f));
            Ok(with_backing(info, path, name, format))
        }
        Layer::Qcow2(q) => {
            let h = q.header();
            let mut info = base(path, Format::Qcow2, h.common.size / 512 * 512)?;
            info.cluster_size = Some(h.cluster_size());
            info.encrypted = h.common.crypt_method != 0;
            info.dirty = h.incompatible_features() & incompatible::DIRTY != 0;
            info.snapshots = q.snapshots().to_vec();
            info.specific = Some(qcow2_specific(q)?);
            if dump {
                info.header_dump = format!("{h:#?}");
            }
            let backing = entry.layer.backing_name();
            let (name, format) = backing.map_or((None, None), |(n, f)| (Some(n), f));
            Ok(with_backing(info, path, name, format))
        }
    }
}

fn qcow2_specific(q: &qcow2::Qcow2) -> Result<Json, Error> {
    let h = q.header();
    let v3 = h.version() >= 3;
    let mut data = vec![
        ("compat", Json::str(if v3 { "1.1" } else { "0.10" })),
        (
            "compression-type",
            Json::str(if h.compression_type() == 1 {
                "zstd"
            } else {
                "zlib"
            }),
        ),
    ];
    if v3 {
        data.push((
            "lazy-refcounts",
            Json::Bool(h.compatible_features() & compatible::LAZY_REFCOUNTS != 0),
        ));
    }
    let bitmaps = qcow2::bitmaps::read_directory(q.storage(), h)?;
    if !bitmaps.is_empty() {
        let list = bitmaps
            .iter()
            .map(|b| {
                let mut flags = Vec::new();
                if b.in_use {
                    flags.push(Json::str("in-use"));
                }
                if b.auto {
                    flags.push(Json::str("auto"));
                }
                Json::Object(vec![
                    ("flags", Json::Array(flags)),
                    ("name", Json::str(&b.name)),
                    ("granularity", Json::int(b.granularity)),
                ])
            })
            .collect();
        data.push(("bitmaps", Json::Array(list)));
    }
    data.push(("refcount-bits", Json::int(1u64 << h.refcount_order())));
    match h.common.crypt_method {
        1 => data.push(("encrypt", Json::Object(vec![("format", Json::str("aes"))]))),
        2 => data.push(("encrypt", Json::Object(vec![("format", Json::str("luks"))]))),
        _ => {}
    }
    if let Some(name) = h.data_file() {
        data.push(("data-file", Json::str(String::from_utf8_lossy(name))));
        data.push((
            "data-file-raw",
            Json::Bool(h.autoclear_features() & autoclear::DATA_FILE_RAW != 0),
        ));
    }
    if v3 {
        data.push((
            "corrupt",
            Json::Bool(h.incompatible_features() & incompatible::CORRUPT != 0),
        ));
        data.push((
            "extended-l2",
            Json::Bool(h.incompatible_features() & incompatible::EXTENDED_L2 != 0),
        ));
    }
    Ok(Json::Object(data))
}

fn snapshot_json(s: &Snapshot) -> Json {
    let mut fields = Vec::new();
    if let Some(icount) = s.icount {
        fields.push(("icount", Json::int(icount)));
    }
    fields.extend([
        (
            "vm-clock-nsec",
            Json::int(s.vm_clock_nsec() % 1_000_000_000),
        ),
        ("name", Json::str(&s.name)),
        ("date-sec", Json::int(s.date_sec())),
        ("date-nsec", Json::int(s.date_nsec())),
        ("vm-clock-sec", Json::int(s.vm_clock_nsec() / 1_000_000_000)),
        ("id", Json::str(&s.id)),
        ("vm-state-size", Json::int(s.vm_state_size)),
    ]);
    Json::Object(fields)
}

fn to_json(info: &Info) -> Json {
    let file = Json::Object(vec![
        ("children", Json::Array(vec![])),
        ("virtual-size", Json::int(info.file_length)),
        ("filename", Json::str(&info.filename)),
        ("format", Json::str("file")),
        ("actual-size", Json::int(info.actual_size)),
        (
            "format-specific",
            Json::Object(vec![
                ("type", Json::str("file")),
                ("data", Json::Object(vec![])),
            ]),
        ),
        ("dirty-flag", Json::Bool(false)),
    ]);
    let mut fields = vec![(
        "children",
        Json::Array(vec![Json::Object(vec![
            ("name", Json::str("file")),
            ("info", file),
        ])]),
    )];
    if !info.snapshots.is_empty() {
        fields.push((
            "snapshots",
            Json::Array(info.snapshots.iter().map(snapshot_json).collect()),
        ));
    }
    if let Some(f) = &info.backing_format {
        fields.push(("backing-filename-format", Json::str(f)));
    }
    fields.push(("virtual-size", Json::int(info.virtual_size)));
    fields.push(("filename", Json::str(&info.filename)));
    if let Some(cs) = info.cluster_size {
        fields.push(("cluster-size", Json::int(cs)));
    }
    fields.push(("format", Json::str(info.format.name())));
    fields.push(("actual-size", Json::int(info.actual_size)));
    if let Some(data) = &info.specific {
        fields.push((
            "format-specific",
            Json::Object(vec![
                ("type", Json::str(info.format.name())),
                ("data", data.clone()),
            ]),
        ));
    }
    if let Some(full) = &info.full_backing_filename {
        fields.push(("full-backing-filename", Json::str(full)));
    }
    if let Some(name) = &info.backing_filename {
        fields.push(("backing-filename", Json::str(name)));
    }
    if info.encrypted {
        fields.push(("encrypted", Json::Bool(true)));
    }
    fields.push(("dirty-flag", Json::Bool(info.dirty)));
    Json::Object(fields)
}

fn to_human(info: &Info) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "image: {}\nfile format: {}",
        info.filename, info.format
    );
    let _ = writeln!(
        out,
        "virtual size: {} ({} bytes)",
        human::size(info.virtual_size),
        info.virtual_size
    );
    let _ = writeln!(out, "disk size: {}", human::size(info.actual_size));
    if info.encrypted {
        out.push_str("encrypted: yes\n");
    }
    if let Some(cs) = info.cluster_size {
        let _ = writeln!(out, "cluster_size: {cs}");
    }
    if info.dirty {
        out.push_str("cleanly shut down: no\n");
    }
    if let Some(name) = &info.backing_filename {
        let _ = write!(out, "backing file: {name}");
        match &info.full_backing_filename {
            Some(full) if full != name => {
                let _ = write!(out, " (actual path: {full})");
            }
            _ => {}
        }
        out.push('\n');
    }
    if let Some(f) = &info.backing_format {
        let _ = writeln!(out, "backing file format: {f}");
    }
    if !info.snapshots.is_empty() {
        out.push_str("Snapshot list:\n");
        out.push_str(&snapshot_table(&info.snapshots));
    }
    if let Some(data) = &info.specific {
        out.push_str("Format specific information:\n");
        human_tree(&mut out, data, 1);
    }
    out.push_str(&info.header_dump);
    if !info.header_dump.is_empty() && !info.header_dump.ends_with('\n') {
        out.push('\n');
    }
    let _ = writeln!(out, "Child node '/file':");
    let _ = writeln!(
        out,
        "    filename: {}\n    protocol type: file",
        info.filename
    );
    let _ = writeln!(
        out,
        "    file length: {} ({} bytes)",
        human::size(info.file_length),
        info.file_length
    );
    let _ = writeln!(out, "    disk size: {}", human::size(info.actual_size));
    out
}

/// qemu-img's snapshot table, header line included.
pub fn snapshot_table(snapshots: &[Snapshot]) -> String {
    let mut out = format!(
        "{:<7} {:<17} {:>7}{:>20}{:>16}{:>11}\n",
        "ID", "TAG", "VM_SIZE", "DATE", "VM_CLOCK", "ICOUNT"
    );
    for s in snapshots {
        let ns = s.vm_clock_nsec();
        let secs = ns / 1_000_000_000;
        let clock = format!(
            "{:04}:{:02}:{:02}.{:03}",
            secs / 3600,
            secs / 60 % 60,
            secs % 60,
            ns / 1_000_000 % 1000
        );
        let icount = s.icount.map(|n| n.to_string()).unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<7} {:<17} {:>7}{:>20}{:>16}{:>11}",
            s.id,
            s.name,
            human::size(s.vm_state_size),
            human::date(i64::from(s.date_sec())),
            clock,
            icount
        );
    }
    out
}

/// QEMU's generic human form of a QAPI object: dashes become spaces, lists number
/// their items.
fn human_tree(out: &mut String, value: &Json, level: usize) {
    let pad = "    ".repeat(level);
    let scalar = |v: &Json| match v {
        Json::Bool(b) => b.to_string(),
        Json::Int(n) => n.to_string(),
        Json::Str(s) => s.clone(),
        _ => String::new(),
    };
    let items: Vec<(String, &Json)> = match value {
        Json::Object(fields) => fields
            .iter()
            .map(|(k, v)| (k.replace('-', " "), v))
            .collect(),
        Json::Array(list) => list
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("[{i}]"), v))
            .collect(),
        _ => return,
    };
    for (key, v) in items {
        match v {
            Json::Object(_) | Json::Array(_) => {
                let _ = writeln!(out, "{pad}{key}:");
                human_tree(out, v, level + 1);
            }
            _ => {
                let _ = writeln!(out, "{pad}{key}: {}", scalar(v));
            }
        }
    }
}
