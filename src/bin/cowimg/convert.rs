//! `cowimg convert`: copy the virtual disk into a new image (raw, for now), skipping
//! what reads as zeros so the output stays sparse.

use crate::create::{apply_options, key_secret};
use crate::flags::PartitionArgs;
use crate::progress::Progress;
use crate::source::{SnapshotSourceArgs, TargetArgs};
use cowimg::convert::{convert, ConvertOptions};
use cowimg::{CreateOptions, Error, ErrorKind, Format};
use std::path::Path;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    input: SnapshotSourceArgs,
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    partition: PartitionArgs,
    /// Cache mode of the output: unsafe (qemu-img's default: not forced to disk at
    /// the end) or writeback, writethrough, directsync, none (flushed before exit).
    #[arg(short = 't', value_name = "CACHE", default_value = "unsafe",
          value_parser = ["unsafe", "writeback", "writethrough", "directsync", "none"])]
    cache: String,
    /// Show a progress bar.
    #[arg(short = 'p')]
    progress: bool,
    /// Compress every cluster of the output (qcow2).
    #[arg(short = 'c')]
    compress: bool,
    /// Quiet.
    #[arg(short = 'q')]
    quiet: bool,
    /// Read what cannot be read as zeros, list it, and go on.
    #[arg(long = "salvage")]
    salvage: bool,
    /// Write into the existing output image (not created; its size at least the
    /// input's; what lies past the input's end is left as it is).
    #[arg(short = 'n')]
    existing: bool,
    /// The output's backing file: only what differs from it is written.
    #[arg(short = 'B', value_name = "BACKING_FILE")]
    backing: Option<String>,
    /// The format of that backing file (required with -B, as qemu-img asks).
    #[arg(short = 'F', value_name = "BACKING_FMT")]
    backing_format: Option<String>,
    /// With -n: the output reads as zeros already, so zeros are not written.
    #[arg(long = "target-is-zero")]
    target_is_zero: bool,
    /// Runs of zeros at least this long (a multiple of 512, up to 16 MiB) stay holes;
    /// 0 writes them all (the output fully allocated).
    #[arg(short = 'S', value_name = "SPARSE_SIZE")]
    sparse_size: Option<String>,
    /// Accepted for qemu-img's sake; they tune how qemu-img schedules its I/O and
    /// change nothing in the output: -T (source cache mode), -W (out-of-order writes),
    /// -m (requests in flight: cowimg uses one worker per core), -C (copy offloading).
    #[arg(short = 'T', value_name = "SRC_CACHE")]
    source_cache: Option<String>,
    #[arg(short = 'W', hide = true)]
    out_of_order: bool,
    #[arg(short = 'm', value_name = "NUM", hide = true)]
    coroutines: Option<u32>,
    #[arg(short = 'C', hide = true)]
    copy_offloading: bool,
    /// Input image.
    filename: Option<String>,
    /// Output file.
    output: Option<String>,
}

pub fn run(args: &Args) -> Result<ExitCode, Error> {
    crate::option_help::check_option_lists(&args.target.options)?;
    if crate::option_help::wants_help(&args.target.options) {
        let help =
            crate::option_help::create_help(&args.target.output_format, args.output.is_some())?;
        crate::print_out(&help);
        return Ok(ExitCode::SUCCESS);
    }
    let (Some(filename), Some(output)) = (args.filename.as_deref(), args.output.as_deref()) else {
        return Err(Error::new(
            ErrorKind::BadArgument,
            "Must specify image file name",
        ));
    };
    let target = crate::option_help::creatable(&args.target.output_format)?;
    // Copy offloading (-C) copies ranges as they are: nothing to compress, no zeros to
    // find, no read errors to step over; qemu-img refuses the mix in this order.
    if args.copy_offloading {
        let refusal = if args.compress {
            Some("Cannot enable copy offloading when -c is used")
        } else if args.sparse_size.is_some() {
            Some("Cannot enable copy offloading when -S is used")
        } else if args.salvage {
            Some("Cannot use copy offloading in salvaging mode")
        } else {
            None
        };
        if let Some(refusal) = refusal {
            return Err(Error::new(ErrorKind::BadArgument, refusal));
        }
    }
    let mut image = args.input.open(filename)?;
    args.partition.apply(&mut image)?;
    let mut options = ConvertOptions::new(target)
        .compress(args.compress)
        .flush(args.cache != "unsafe")
        .salvage(args.salvage)
        .existing(args.existing)
        .target_is_zero(args.target_is_zero);
    if let Some(text) = &args.sparse_size {
        let size = crate::create::parse_size(text)
            .ok()
            .filter(|n| n % 512 == 0 && *n <= 16 << 20)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::BadArgument,
                    "Invalid buffer size for sparse output specified. Valid sizes are multiples of 512 up to 16777216. Select 0 to disable sparse detection (fully allocates output).",
                )
            })?;
        options.sparse_size = size;
    }
    if matches!(args.coroutines, Some(0) | Some(17..)) {
        return Err(Error::new(
            ErrorKind::BadArgument,
            "Invalid number of coroutines. Allowed number of coroutines is between 1 and 16",
        ));
    }
    if matches!(target, Format::Qcow2 | Format::Qcow | Format::Luks) {
        let mut create = CreateOptions::default();
        let secrets = args.input.source.secrets()?;
        apply_options(
            &args.target.options,
            target,
            &mut create,
            &mut None,
            Some(&secrets),
        )?;
        if let Some(b) = &args.backing {
            create.backing_file = Some(b.clone());
        }
        if let Some(f) = &args.backing_format {
            create.backing_format = Some(f.clone());
        }
        if create.backing_file.is_some() && create.backing_format.is_none() {
            return Err(Error::new(
                ErrorKind::BadArgument,
                "Use of backing file requires explicit backing format",
            ));
        }
        if let Some(id) = key_secret(&args.target.options) {
            let secret = secrets.get(&id).cloned().ok_or_else(|| {
                Error::new(
                    ErrorKind::BadArgument,
                    format!("No secret with id '{id}' found"),
                )
            })?;
            options = options.passphrase(secret);
        }
        options = options.create(create);
    }
    let progress = Progress::new(args.progress && !args.quiet, image.size());
    let unreadable = convert(&image, Path::new(output), &options, &|n| {
        progress.advance(n)
    })
    .map_err(
        |e| match e.message().starts_with("Could not open backing file") {
            // The new output could not be opened over its backing file.
            true => e.context(format!("Could not open '{output}'")),
            false => e,
        },
    )?;
    progress.finish();
    for r in &unreadable {
        complain!(
            "warning: error while reading at byte {} ({} bytes, written as zeros): {}",
            r.start,
            r.len,
            r.error
        );
    }
    Ok(ExitCode::SUCCESS)
}
