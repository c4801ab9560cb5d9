//! `cowimg info`: what an image is, in qemu-img's words and JSON shape.

use crate::flags::ReportArgs;
use crate::human;
use cowimg::info::ImageInfo;
use cowimg::report::{self, Json};
use cowimg::{Backing, Error, Image, Snapshot};
use std::fmt::Write;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    report: ReportArgs,
    /// Show every image of the backing chain.
    #[arg(short = 'b', long = "backing-chain")]
    backing_chain: bool,
    /// Also print every header field as parsed (cowimg only).
    #[arg(long)]
    header: bool,
    /// The image file.
    filename: String,
}

pub fn run(args: &Args) -> Result<ExitCode, Error> {
    let (path, mut options) = args.report.source.resolve(&args.filename)?;
    options.metadata_only = true;
    if !args.backing_chain {
        options.backing = Backing::Ignore;
    }
    let image = crate::source::opened(&args.filename, Image::open(&path, &options))?;
    crate::print_warnings(&image);
    let infos = image.info()?;
    let out = if args.report.output.json() {
        let mut values: Vec<Json> = infos.iter().map(report::info).collect();
        let value = if args.backing_chain {
            Json::Array(values)
        } else {
            values.remove(0)
        };
        value.pretty() + "\n"
    } else {
        let dumps = image.header_dumps();
        infos
            .iter()
            .zip(dumps)
            .map(|(info, dump)| to_human(info, if args.header { &dump } else { "" }))
            .collect::<Vec<_>>()
            .join("\n")
    };
    crate::print_out(&out);
    Ok(ExitCode::SUCCESS)
}

fn to_human(info: &ImageInfo, header_dump: &str) -> String {
    let filename = info.filename.display().to_string();
    let mut out = String::new();
    let _ = writeln!(out, "image: {}\nfile format: {}", filename, info.format);
    let _ = writeln!(out, "virtual size: {}", with_bytes(info.virtual_size));
    let _ = writeln!(out, "disk size: {}", disk_size(info.actual_size));
    if info.encrypted {
        out.push_str("encrypted: yes\n");
    }
    if let Some(cs) = info.cluster_size {
        let _ = writeln!(out, "cluster_size: {cs}");
    }
    if info.dirty {
        out.push_str("cleanly shut down: no\n");
    }
    if let Some(name) = &info.backing_file {
        let _ = write!(out, "backing file: {name}");
        match info
            .full_backing_file
            .as_ref()
            .map(|f| f.display().to_string())
        {
            Some(full) if &full != name => {
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
    if let Some(q) = &info.qcow2 {
        out.push_str("Format specific information:\n");
        report::qcow2_specific(q).write_tree(&mut out, 1);
    }
    if let Some(l) = &info.luks {
        out.push_str("Format specific information:\n");
        report::luks_info(l, false).write_tree(&mut out, 1);
    }
    if let Some(layout) = info.cow_layout {
        let _ = writeln!(out, "cow layout: {layout}");
    }
    out.push_str(header_dump);
    if !header_dump.is_empty() && !header_dump.ends_with('\n') {
        out.push('\n');
    }
    let _ = writeln!(out, "Child node '/file':");
    let _ = writeln!(
        out,
        "    filename: {filename}\n    protocol type: {}",
        info.protocol
    );
    let _ = writeln!(out, "    file length: {}", with_bytes(info.file_length));
    let _ = writeln!(out, "    disk size: {}", disk_size(info.actual_size));
    out
}

/// Bytes a file takes, or qemu-img's word when the storage cannot tell.
fn disk_size(actual: Option<u64>) -> String {
    actual.map_or("unavailable".to_string(), human::size)
}

/// A size as qemu-img prints it with its exact count: "1 MiB (1048576 bytes)".
fn with_bytes(n: u64) -> String {
    format!("{} ({n} bytes)", human::size(n))
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
