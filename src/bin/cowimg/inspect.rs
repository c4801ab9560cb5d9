//! `cowimg inspect`: every structure of every file of the chain, with host offsets,
//! and what check finds; never a secret, never a change.

use crate::flags::ReportArgs;
use cowimg::{Backing, Error, Image};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    report: ReportArgs,
    /// The image file.
    filename: String,
}

pub fn run(args: &Args) -> Result<ExitCode, Error> {
    let (path, mut options) = args.report.source.resolve(&args.filename)?;
    // Metadata only: no key or data file is needed to look at the structures, and a
    // chain whose backing file is missing is still inspected.
    options.metadata_only = true;
    let image = match Image::open(&path, &options) {
        Ok(image) => image,
        Err(_) => Image::open(&path, &options.clone().backing(Backing::Ignore))?,
    };
    crate::print_warnings(&image);
    let report = cowimg::report::inspect(&image)?;
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
