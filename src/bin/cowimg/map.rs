//! `cowimg map`: where each range of the disk comes from, as qemu-img map says it.

use crate::create::parse_size;
use crate::flags::{PartitionArgs, ReportArgs};
use cowimg::report;
use cowimg::{Error, ErrorKind, Image};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    report: ReportArgs,
    #[command(flatten)]
    partition: PartitionArgs,
    /// Map from this guest offset (k, M, G… suffixes as for sizes).
    #[arg(long = "start-offset", value_name = "OFFSET")]
    start_offset: Option<String>,
    /// Map at most this many bytes.
    #[arg(long = "max-length", value_name = "LENGTH")]
    max_length: Option<String>,
    /// The image file.
    filename: String,
}

pub fn run(args: &Args) -> Result<ExitCode, Error> {
    let (path, options) = args.report.source.resolve(&args.filename)?;
    let mut image = crate::source::opened(&args.filename, Image::open(&path, &options))?;
    args.partition.apply(&mut image)?;
    crate::print_warnings(&image);
    let size = image.size();
    let start = args
        .start_offset
        .as_deref()
        .map(parse_size)
        .transpose()?
        .unwrap_or(0);
    let end = match args.max_length.as_deref().map(parse_size).transpose()? {
        Some(len) => start.saturating_add(len).min(size),
        None => size,
    };
    // The whole map, cut to the range asked for (runs merge the same either way).
    let whole = image.map()?;
    let past_end = whole.first().filter(|_| start >= size).map(|r| {
        // qemu-img answers a start past the end with one empty, absent range.
        let mut r = *r;
        (r.start, r.len, r.depth) = (start, 0, 0);
        (r.present, r.zero, r.data, r.compressed, r.offset) = (false, false, false, false, None);
        r
    });
    let ranges: Vec<_> = whole
        .into_iter()
        .filter(|r| r.start < end && r.start + r.len > start)
        .map(|mut r| {
            let (from, to) = (r.start.max(start), (r.start + r.len).min(end));
            r.offset = r.offset.map(|o| o + (from - r.start));
            r.start = from;
            r.len = to - from;
            r
        })
        .chain(past_end)
        .collect();
    let mut out = String::new();
    if args.report.output.json() {
        out = report::map(&ranges);
    } else {
        // Only ranges stored as plain data (and not over holes) are listed; data that
        // cannot be (compressed, encrypted, external) is an error.
        out.push_str(&format!(
            "{:<16}{:<16}{:<16}{}\n",
            "Offset", "Length", "Mapped to", "File"
        ));
        for r in ranges.iter().filter(|r| r.data) {
            let Some(offset) = r.offset.filter(|_| !r.compressed) else {
                crate::print_out(&out);
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    "File contains external, encrypted or compressed clusters.",
                ));
            };
            if r.zero {
                // Data over a hole in the file: it reads as zeros, and is not listed.
                continue;
            }
            // Data lives in the external data file when there is one (QEMU names it).
            let entry = &image.chain()[r.depth];
            let file = entry.data_path.as_ref().unwrap_or(&entry.path);
            out.push_str(&format!(
                "{:<16}{:<16}{:<16}{}\n",
                hex(r.start),
                hex(r.len),
                hex(offset),
                cowimg::storage::display_url(&file.to_string_lossy())
            ));
        }
    }
    crate::print_out(&out);
    Ok(ExitCode::SUCCESS)
}

/// printf's `%#x`: "0" for zero, "0x…" otherwise.
fn hex(n: u64) -> String {
    if n == 0 {
        "0".into()
    } else {
        format!("{n:#x}")
    }
}
