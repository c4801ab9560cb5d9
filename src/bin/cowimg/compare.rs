//! `cowimg compare`: whether two images hold the same guest content, in qemu-img's
//! words and exit codes (0 identical, 1 different, 2 error).

use crate::source::{format_named, SourceArgs};
use cowimg::{Error, Image};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    source: SourceArgs,
    /// Format of the second image.
    #[arg(short = 'F', long = "b-format", value_name = "FMT")]
    second_format: Option<String>,
    /// Strict: images of different sizes are different.
    #[arg(short = 's', long = "strict")]
    strict: bool,
    /// Quiet.
    #[arg(short = 'q', long = "quiet")]
    quiet: bool,
    /// Show progress (accepted; the comparison prints no bar).
    #[arg(short = 'p', long = "progress")]
    progress: bool,
    /// Cache mode of both images (see `flags::CACHE_MODES`).
    #[arg(short = 'T', long = "cache", value_name = "CACHE", value_parser = crate::flags::CACHE_MODES)]
    cache: Option<String>,
    /// The first image.
    first: String,
    /// The second image.
    second: String,
}

fn open(source: &SourceArgs, name: &str, format: Option<&str>) -> Result<Image, Error> {
    let (path, mut options) = source.resolve(name)?;
    if let Some(f) = format {
        options.format = Some(format_named(f)?);
    }
    Image::open(&path, &options)
}

pub fn run(args: &Args) -> Result<ExitCode, Error> {
    let say = |text: &str| {
        if !args.quiet {
            crate::print_out(&format!("{text}\n"));
        }
    };
    let (a, b) = match (
        open(&args.source, &args.first, None),
        open(&args.source, &args.second, args.second_format.as_deref()),
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            complain!("{}", crate::shown(&e));
            return Ok(ExitCode::from(2));
        }
    };
    let (size_a, size_b) = (a.size(), b.size());
    if size_a != size_b && args.strict {
        say("Strict mode: Image size mismatch!");
        return Ok(ExitCode::from(1));
    }
    // The common part first, then the rest of the larger image against zeros (qemu-img
    // warns of the size only once the common part matched).
    let common = size_a.min(size_b);
    let first = cowimg::compare::first_difference(&a, &b)?;
    if args.strict {
        // qemu-img tests each range's status before its content.
        let status = cowimg::compare::first_status_difference(&a, &b)?;
        if let Some(at) = status.filter(|s| first.is_none_or(|c| *s <= c)) {
            say(&format!("Strict mode: Offset {at} block status mismatch!"));
            return Ok(ExitCode::from(1));
        }
    }
    if let Some(at) = first.filter(|at| *at < common) {
        say(&format!("Content mismatch at offset {at}!"));
        return Ok(ExitCode::from(1));
    }
    if size_a != size_b {
        say("Warning: Image size mismatch!");
    }
    if let Some(at) = first {
        say(&format!("Content mismatch at offset {at}!"));
        return Ok(ExitCode::from(1));
    }
    say("Images are identical.");
    Ok(ExitCode::SUCCESS)
}
