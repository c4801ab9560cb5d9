//! `cowimg convert`: copy the virtual disk into a new image (raw, for now), skipping
//! what reads as zeros so the output stays sparse.

use crate::create::{apply_options, key_secret};
use crate::flags::PartitionArgs;
use crate::progress::Progress;
use crate::source::{SnapshotSourceArgs, TargetArgs};
use cowimg::convert::{convert_concatenated, ConvertOptions};
use cowimg::image::BitmapChange;
use cowimg::{Backing, CreateOptions, Error, ErrorKind, Format, Image, OpenOptions};
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
    #[arg(short = 't', long = "target-cache", value_name = "CACHE", default_value = "unsafe",
          value_parser = ["unsafe", "writeback", "writethrough", "directsync", "none"])]
    cache: String,
    /// Show a progress bar.
    #[arg(short = 'p', long = "progress")]
    progress: bool,
    /// Compress every cluster of the output (qcow2).
    #[arg(short = 'c', long = "compress")]
    compress: bool,
    /// Quiet.
    #[arg(short = 'q', long = "quiet")]
    quiet: bool,
    /// Read what cannot be read as zeros, list it, and go on.
    #[arg(long = "salvage")]
    salvage: bool,
    /// Write into the existing output image (not created; its size at least the
    /// input's; what lies past the input's end is left as it is).
    #[arg(short = 'n', long = "no-create")]
    existing: bool,
    /// The output's backing file: only what differs from it is written.
    #[arg(short = 'B', long = "backing", value_name = "BACKING_FILE")]
    backing: Option<String>,
    /// The format of that backing file (required with -B, as qemu-img asks).
    #[arg(short = 'F', long = "backing-format", value_name = "BACKING_FMT")]
    backing_format: Option<String>,
    /// With -n: the output reads as zeros already, so zeros are not written.
    #[arg(long = "target-is-zero")]
    target_is_zero: bool,
    /// Runs of zeros at least this long (a multiple of 512, up to 16 MiB) stay holes;
    /// 0 writes them all (the output fully allocated).
    #[arg(short = 'S', long = "sparse-size", value_name = "SPARSE_SIZE")]
    sparse_size: Option<String>,
    /// Cache mode of the source. This and -W, -m and -C tune how qemu-img schedules
    /// its I/O and change nothing in the output; cowimg takes them and schedules its
    /// own way (one worker per core).
    #[arg(short = 'T', long = "source-cache", value_name = "SRC_CACHE")]
    source_cache: Option<String>,
    /// Allow out-of-order writes to the output.
    #[arg(short = 'W', long = "oob-writes")]
    out_of_order: bool,
    /// Requests in flight, 1 to 16.
    #[arg(short = 'm', long = "parallel", value_name = "NUM")]
    coroutines: Option<u32>,
    /// Copy offloading (refused with -c, -S and --salvage, as qemu-img refuses it).
    #[arg(short = 'C', long = "copy-range-offloading")]
    copy_offloading: bool,
    /// Copy at most RATE bytes per second (k, M, G suffixes).
    #[arg(short = 'r', long = "rate", value_name = "RATE")]
    rate: Option<String>,
    /// Copy the source's persistent bitmaps too (qcow2 to qcow2).
    #[arg(long = "bitmaps")]
    bitmaps: bool,
    /// With --bitmaps: leave out inconsistent bitmaps (with a warning) instead of failing.
    #[arg(long = "skip-broken-bitmaps")]
    skip_broken_bitmaps: bool,
    /// The output name is an option list (driver=FMT,file.filename=PATH); needs -n.
    #[arg(long = "target-image-opts")]
    target_image_opts: bool,
    /// Input images (several are concatenated), then the output file.
    #[arg(value_name = "FILENAME")]
    files: Vec<String>,
}

pub fn run(args: &Args) -> Result<ExitCode, Error> {
    crate::option_help::check_option_lists(&args.target.options)?;
    if crate::option_help::wants_help(&args.target.options) {
        let help =
            crate::option_help::create_help(&args.target.output_format, args.files.len() > 1)?;
        crate::print_out(&help);
        return Ok(ExitCode::SUCCESS);
    }
    let (Some((output, inputs)), true) = (args.files.split_last(), args.files.len() > 1) else {
        return Err(Error::new(
            ErrorKind::BadArgument,
            "Must specify image file name",
        ));
    };
    if args.skip_broken_bitmaps && !args.bitmaps {
        return Err(Error::new(
            ErrorKind::BadArgument,
            "Use of --skip-broken-bitmaps requires --bitmaps",
        ));
    }
    if args.existing && !args.target.options.is_empty() {
        return Err(Error::new(
            ErrorKind::BadArgument,
            "-o has no effect when skipping image creation",
        ));
    }
    if args.target_image_opts && !args.existing {
        return Err(Error::new(
            ErrorKind::BadArgument,
            "--target-image-opts requires use of -n flag",
        ));
    }
    let throttle = crate::throttle::Throttle::new(args.rate.as_deref())?;
    // An output given as options: its file and (if named) its format.
    let (output, named_format) = match args.target_image_opts {
        true => {
            let opts = crate::source::SourceArgs {
                image_opts: true,
                ..Default::default()
            };
            let (path, options) = opts.resolve(output)?;
            let path = path.to_str().unwrap_or(output).to_string();
            (path, options.format)
        }
        false => (output.to_string(), None),
    };
    let output = output.as_str();
    let target = match named_format {
        Some(format) => format,
        None => crate::option_help::creatable(&args.target.output_format)?,
    };
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
    let backing_option = args
        .target
        .options
        .iter()
        .flat_map(|t| crate::source::parse_options(t))
        .any(|(k, _)| k == "backing_file");
    if inputs.len() > 1 && (args.backing.is_some() || backing_option) {
        return Err(Error::new(
            ErrorKind::BadArgument,
            "Having a backing file for the target makes no sense when concatenating multiple input images",
        ));
    }
    if inputs.len() > 1 && args.input.snapshot.is_some() {
        return Err(Error::new(
            ErrorKind::BadArgument,
            "No support for concatenating multiple snapshot",
        ));
    }
    if inputs.len() > 1 && args.bitmaps {
        return Err(Error::new(
            ErrorKind::BadArgument,
            "Copying bitmaps only possible with single source",
        ));
    }
    let mut images = Vec::new();
    for name in inputs {
        let mut image = args.input.open(name)?;
        args.partition.apply(&mut image)?;
        images.push(image);
    }
    let image = &images[0];
    if args.bitmaps {
        check_bitmaps(image, target, args.skip_broken_bitmaps)?;
    }
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
        // (Only a target being created records its backing file.)
        if create.backing_file.is_some() && create.backing_format.is_none() && !args.existing {
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
    let total = images.iter().map(Image::size).sum();
    let progress = Progress::new(args.progress && !args.quiet, total);
    let sources: Vec<&Image> = images.iter().collect();
    let unreadable = convert_concatenated(&sources, Path::new(output), &options, &|n| {
        progress.advance(n);
        throttle.advance(n);
    })
    .map_err(
        |e| match e.message().starts_with("Could not open backing file") {
            // The new output could not be opened over its backing file.
            true => e.context(format!("Could not open '{output}'")),
            false => e,
        },
    )?;
    progress.finish();
    if args.bitmaps {
        copy_bitmaps(image, output)?;
    }
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

/// Before `--bitmaps` copies anything: the source has bitmaps to give, the output can
/// keep them, and none is inconsistent (unless those are to be skipped).
fn check_bitmaps(image: &Image, target: Format, skip_broken: bool) -> Result<(), Error> {
    if image.format() != Format::Qcow2 {
        return Err(Error::new(
            ErrorKind::Unsupported,
            "Source lacks bitmap support",
        ));
    }
    // QEMU holds the bitmaps last first, and checks them in that order.
    let bitmaps: Vec<_> = image.bitmaps()?.into_iter().rev().collect();
    if !skip_broken {
        if let Some(b) = bitmaps.iter().find(|b| b.in_use) {
            return Err(Error::new(
                ErrorKind::BadArgument,
                format!(
                    "Cannot copy inconsistent bitmap '{}'\nTry --skip-broken-bitmaps, or use 'qemu-img bitmap --remove' to delete it",
                    b.name
                ),
            ));
        }
    }
    if target != Format::Qcow2 {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!("Format driver '{}' does not support bitmaps", target.name()),
        ));
    }
    Ok(())
}

/// `--bitmaps`: each persistent bitmap of the source's top image, added to the output
/// with its granularity and state and filled with its bits.
fn copy_bitmaps(image: &Image, output: &str) -> Result<(), Error> {
    // qemu-img warns of skipped ones last first; its output lists the rest in the
    // source's order.
    let bitmaps = image.bitmaps()?;
    for b in bitmaps.iter().rev().filter(|b| b.in_use) {
        complain!("warning: Skipping inconsistent bitmap '{}'", b.name);
    }
    let opts = OpenOptions::new()
        .format(Format::Qcow2)
        .backing(Backing::Ignore)
        .writable(true);
    let mut out = Image::open(Path::new(output), &opts)?;
    for b in &bitmaps {
        if b.in_use {
            continue;
        }
        let add = BitmapChange::Add {
            granularity: Some(b.granularity),
            enabled: b.auto,
        };
        out.change_bitmap(&b.name, add)
            .map_err(|e| e.context(format_args!("Failed to create bitmap {}", b.name)))?;
        let content = image.bitmap_content(&b.name)?;
        out.change_bitmap(&b.name, BitmapChange::Merge(&content))
            .map_err(|e| e.context(format_args!("Failed to populate bitmap {}", b.name)))?;
    }
    out.close()
}
