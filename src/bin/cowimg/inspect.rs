//! `cowimg inspect`: every structure of every file of the chain, with host offsets,
//! and what check finds; never a secret, never a change.

use crate::flags::ReportArgs;
use cowimg::{Backing, Error, Image};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    report: ReportArgs,
    /// Also read the whole guest disk and list what cannot be read (the ranges
    /// convert --salvage and hash --salvage name); needs the chain and any key.
    #[arg(long = "salvage")]
    salvage: bool,
    /// The image file.
    filename: String,
}

pub fn run(args: &Args) -> Result<ExitCode, Error> {
    let (path, mut options) = args.report.source.resolve(&args.filename)?;
    // Metadata only: no key or data file is needed to look at the structures, and a
    // chain whose backing file is missing is still inspected.
    let io_options = options.clone();
    options.metadata_only = true;
    let image = match Image::open(&path, &options) {
        Ok(image) => image,
        Err(_) => Image::open(&path, &options.clone().backing(Backing::Ignore))?,
    };
    crate::print_warnings(&image);
    let unreadable = if args.salvage {
        // Reading the disk needs what a metadata open does not: the chain, a key.
        let readable = Image::open(&path, &io_options)?;
        Some(cowimg::copy::unreadable_ranges(&readable, &|_| {})?)
    } else {
        None
    };
    let report = cowimg::report::inspect(&image, unreadable.as_deref())?;
    let text = if args.report.output.json() {
        report.pretty() + "\n"
    } else {
        let mut out = String::new();
        report.write_tree(&mut out, 0);
        out
    };
    crate::print_out(&text);
    Ok(ExitCode::SUCCESS)
}
