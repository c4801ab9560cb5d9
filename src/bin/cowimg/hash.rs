//! `cowimg hash`: digests of the guest disk, for the current state and any internal
//! snapshot, with several algorithms in one pass and optionally per window.

use crate::create::parse_size;
use crate::flags::{PartitionArgs, ReportArgs};
use cowimg::copy::{Salvage, Unreadable};
use cowimg::hash::{hash, Algorithm, Digests};
use cowimg::report::Json;
use cowimg::{Error, ErrorKind, Image};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    report: ReportArgs,
    #[command(flatten)]
    partition: PartitionArgs,
    /// Also hash internal snapshots: all, or one snapshot's ID or name.
    #[arg(long = "snapshot", value_name = "all|ID|NAME")]
    snapshot: Option<String>,
    /// Digest algorithms, comma-separated: sha256, sha1, md5.
    #[arg(long = "algorithm", value_name = "LIST", default_value = "sha256")]
    algorithm: String,
    /// Also a digest per window of this many bytes (piecewise hashing).
    #[arg(long = "window", value_name = "SIZE")]
    window: Option<String>,
    /// Hash what cannot be read as zeros (as convert --salvage writes it) and list it.
    #[arg(long = "salvage")]
    salvage: bool,
    /// The image file.
    filename: String,
}

fn bad(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::BadArgument, message)
}

/// One state hashed: its label, the snapshot's id and name if it is one, the digests.
struct Hashed {
    label: String,
    snapshot: Option<(String, String)>,
    whole: Digests,
    windows: Vec<Digests>,
    /// Ranges read as zeros because they could not be read (with --salvage).
    unreadable: Vec<Unreadable>,
}

pub fn run(args: &Args) -> Result<ExitCode, Error> {
    let algorithms = args
        .algorithm
        .split(',')
        .map(|n| {
            Algorithm::from_name(n.trim())
                .ok_or_else(|| bad(format!("Unknown digest algorithm '{n}'")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let window = args.window.as_deref().map(parse_size).transpose()?;
    let (path, options) = args.report.source.resolve(&args.filename)?;
    let mut image = crate::source::opened(&args.filename, Image::open(&path, &options))?;
    crate::print_warnings(&image);
    args.partition.apply(&mut image)?;
    let snapshots: Vec<(String, String)> = image.snapshot_names();
    let wanted: Vec<(String, String)> = match args.snapshot.as_deref() {
        None => Vec::new(),
        Some("all") => snapshots,
        Some(which) => {
            let found = snapshots
                .iter()
                .find(|(id, _)| id == which)
                .or_else(|| snapshots.iter().find(|(_, name)| name == which))
                .ok_or_else(|| bad(format!("Can't find snapshot '{which}'")))?;
            vec![found.clone()]
        }
    };
    let mut results = Vec::new();
    let hash_one = |image: &Image| -> Result<Hashed, Error> {
        let salvage = args.salvage.then(Salvage::new);
        let d = hash(image, &algorithms, window, salvage.as_ref(), &|_| {})?;
        Ok(Hashed {
            label: cowimg::storage::display_url(&args.filename),
            snapshot: None,
            whole: d.whole,
            windows: d.windows,
            unreadable: salvage.map(Salvage::into_ranges).unwrap_or_default(),
        })
    };
    results.push(hash_one(&image)?);
    drop(image);
    for (id, name) in wanted {
        let at = args.partition.open_snapshot(&path, &options, &id)?;
        results.push(Hashed {
            label: format!("{}@{name}", cowimg::storage::display_url(&args.filename)),
            snapshot: Some((id, name)),
            ..hash_one(&at)?
        });
    }
    for h in &results {
        for r in &h.unreadable {
            complain!(
                "warning: {}: error while reading at byte {} ({} bytes, hashed as zeros): {}",
                h.label,
                r.start,
                r.len,
                r.error
            );
        }
    }
    let text = if args.report.output.json() {
        Json::Array(results.iter().map(to_json).collect()).pretty() + "\n"
    } else {
        results.iter().map(to_text).collect()
    };
    crate::print_out(&text);
    Ok(ExitCode::SUCCESS)
}

fn digest_fields(d: &Digests) -> Vec<(&'static str, Json)> {
    d.digests
        .iter()
        .map(|(a, hex)| (a.name(), Json::str(hex)))
        .collect()
}

fn to_json(h: &Hashed) -> Json {
    let mut fields = vec![("filename", Json::str(&h.label))];
    if let Some((id, name)) = &h.snapshot {
        fields.push(("snapshot-id", Json::str(id)));
        fields.push(("snapshot-name", Json::str(name)));
    }
    fields.push(("virtual-size", Json::int(h.whole.len)));
    fields.push(("digests", Json::Object(digest_fields(&h.whole))));
    if !h.windows.is_empty() {
        let windows = h
            .windows
            .iter()
            .map(|w| {
                let mut f = vec![("start", Json::int(w.start)), ("length", Json::int(w.len))];
                f.extend(digest_fields(w));
                Json::Object(f)
            })
            .collect();
        fields.push(("windows", Json::Array(windows)));
    }
    if !h.unreadable.is_empty() {
        fields.push(("unreadable", cowimg::report::unreadable(&h.unreadable)));
    }
    Json::Object(fields)
}

/// sha256sum's shape, with the algorithm in front: "sha256  HEX  LABEL".
fn to_text(h: &Hashed) -> String {
    let mut out = String::new();
    for (a, hex) in &h.whole.digests {
        out.push_str(&format!("{:<7}{hex}  {}\n", a.name(), h.label));
    }
    for w in &h.windows {
        for (a, hex) in &w.digests {
            out.push_str(&format!(
                "{:<7}{hex}  {} [{}, {})\n",
                a.name(),
                h.label,
                w.start,
                w.start + w.len
            ));
        }
    }
    out
}
