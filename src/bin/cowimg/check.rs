//! `cowimg check`: qemu-img check's findings, output, JSON and exit codes.

use crate::flags::{ProgressArgs, ReportArgs};
use crate::progress::Progress;
use cowimg::check::{check_with_progress, CheckResult, Repair};
use cowimg::format::qcow2::incompatible;
use cowimg::report;
use cowimg::{Error, Format, Image};
use std::fmt::Write;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    report: ReportArgs,
    /// Repair: leaks, or all.
    #[arg(short = 'r', long = "repair", value_name = "leaks|all", value_parser = ["leaks", "all"])]
    repair: Option<String>,
    /// Cache mode of the image (see `flags::CACHE_MODES`).
    #[arg(short = 'T', long = "cache", value_name = "CACHE", value_parser = crate::flags::CACHE_MODES)]
    cache: Option<String>,
    /// -p: a progress bar (over the active L2 tables); -q: quiet.
    #[command(flatten)]
    progress: ProgressArgs,
    /// The image file.
    filename: String,
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

pub fn run(args: &Args) -> Result<ExitCode, Error> {
    let (path, options) = args.report.source.resolve(&args.filename)?;
    let repair = match args.repair.as_deref() {
        Some("leaks") => Repair::Leaks,
        Some("all") => Repair::All,
        _ => Repair::None,
    };
    let format = match options.format {
        Some(f) => f,
        None => {
            let probed = cowimg::image::open_file(&path, false, true)?;
            cowimg::probe(&probed).map_err(|e| Error::io("probing the image format", e))?
        }
    };
    if format != Format::Qcow2 {
        eprintln!("qemu-img: This image format does not support checks");
        return Ok(ExitCode::from(63));
    }
    // A repair opens the image for writing first, as qemu-img check -r does: unknown
    // autoclear bits are cleared, and (-r all) snapshot entries too short for version
    // 3 completed, as QEMU rewrites its snapshot table before counting references. A
    // dirty image is counted as it is (an open for writing would repair it unseen); one
    // that does not open is left to the open below to report.
    let dirty = cowimg::image::open_file(&path, false, true)
        .and_then(|s| cowimg::header::Qcow2::read(&s))
        .map_or(true, |h| {
            h.incompatible_features() & incompatible::DIRTY != 0
        });
    let completed = match repair {
        Repair::None => Vec::new(),
        _ if dirty => Vec::new(),
        _ => match Image::open(&path, &options.clone().format(Format::Qcow2).writable(true)) {
            Ok(mut image) if repair == Repair::All => image.complete_snapshot_table()?,
            Ok(_) | Err(_) => Vec::new(),
        },
    };
    let storage = cowimg::image::open_file(&path, repair != Repair::None, options.force_share)?;
    // qemu-img opens the image (its chain, data file and key) before checking it: what
    // it cannot open (an unknown incompatible feature, a size past its limits, a
    // missing backing file) is refused with the open's error, exit 1, never checked.
    // `storage` holds this command's lock; the trial open only shares it.
    let opened = Image::open(
        &path,
        &options
            .clone()
            .format(Format::Qcow2)
            .for_check(true)
            .force_share(true),
    );
    drop(opened.map_err(|e| {
        if e.message().starts_with("Could not open '") {
            e
        } else {
            // Named as it was given (an --image-opts string too), as qemu-img names it.
            let shown = cowimg::storage::display_url(&args.filename);
            e.context(format_args!("Could not open '{shown}'"))
        }
    })?);
    let header = cowimg::header::Qcow2::read(&storage);
    let has_data_file = header
        .as_ref()
        .is_ok_and(|h| h.incompatible_features() & incompatible::DATA_FILE != 0);
    // The bar counts tables, not bytes: its length is set once the L1 table is read.
    let bar = Progress::counting(args.progress.bar(), "L2 tables");
    let shown = bar.clone();
    let outcome = check_with_progress(&storage, has_data_file, repair, &move |done, total| {
        shown.set(done, total)
    });
    bar.finish();
    let mut result = match outcome {
        Ok(r) => r,
        Err(e) => {
            // qemu-img: the check could not be completed (exit 1).
            complain!("Check failed: {}", crate::shown(&e));
            return Ok(ExitCode::from(1));
        }
    };
    if !completed.is_empty() {
        let lines = completed
            .iter()
            .map(|i| format!("Repairing snapshot table entry {i} is incomplete"));
        result.messages.splice(0..0, lines);
        result.corruptions_fixed += completed.len() as u64;
        result.repaired = true;
    }
    for line in &result.messages {
        eprintln!("{line}");
    }
    if let Some(why) = &result.failed {
        complain!("Check failed: {why}");
        return Ok(ExitCode::from(1));
    }
    let out = if args.report.output.json() {
        report::check(&result, &cowimg::storage::display_url(&args.filename)).pretty() + "\n"
    } else {
        human(&result)
    };
    if !args.progress.quiet {
        crate::print_out(&out);
    }
    Ok(ExitCode::from(if result.check_errors > 0 {
        1
    } else if result.corruptions > 0 {
        2
    } else if result.leaks > 0 {
        3
    } else {
        0
    }))
}

fn human(r: &CheckResult) -> String {
    let mut out = String::new();
    if r.repaired || r.leaks_fixed + r.corruptions_fixed > 0 {
        let _ = write!(
            out,
            "The following inconsistencies were found and repaired:\n\n    {} leaked clusters\n    {} corruptions\n\nDouble checking the fixed image now...\n",
            r.leaks_fixed, r.corruptions_fixed
        );
    }
    if r.corruptions == 0 && r.leaks == 0 && r.check_errors == 0 {
        out.push_str("No errors were found on the image.\n");
    } else {
        if r.corruptions > 0 {
            let _ = write!(
                out,
                "\n{} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n",
                r.corruptions
            );
        }
        if r.leaks > 0 {
            let _ = write!(
                out,
                "\n{} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n",
                r.leaks
            );
        }
        if r.check_errors > 0 {
            let _ = write!(
                out,
                "\n{} internal errors have occurred during the check.\n",
                r.check_errors
            );
        }
    }
    if r.total_clusters > 0 && r.allocated_clusters > 0 {
        let _ = writeln!(
            out,
            "{}/{} = {:.2}% allocated, {:.2}% fragmented, {:.2}% compressed clusters",
            r.allocated_clusters,
            r.total_clusters,
            percent(r.allocated_clusters, r.total_clusters),
            percent(r.fragmented_clusters, r.allocated_clusters),
            percent(r.compressed_clusters, r.allocated_clusters)
        );
    }
    if r.image_end_offset > 0 {
        let _ = writeln!(out, "Image end offset: {}", r.image_end_offset);
    }
    out
}
