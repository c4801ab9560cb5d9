//! `cowimg rebase`, `commit` and `amend`: edits to an image's chain and header.

use crate::flags::ProgressArgs;
use crate::progress::Progress;
use crate::source::{format_named, parse_options, SourceArgs};
use cowimg::create::{Compat, KeySlotChange};
use cowimg::{Backing, Error, ErrorKind, Format, Image, OpenOptions};
use std::path::Path;
use std::process::ExitCode;

/// A progress bar (when `enabled`) that follows the image's long operation.
fn watch(image: &mut Image, enabled: bool) -> Progress {
    watch_at_rate(image, enabled, crate::throttle::Throttle::new(None).ok())
}

/// `watch`, the operation also held to `throttle`'s rate (commit -r).
fn watch_at_rate(
    image: &mut Image,
    enabled: bool,
    throttle: Option<crate::throttle::Throttle>,
) -> Progress {
    let bar = Progress::new(enabled, image.size());
    let shown = bar.clone();
    image.on_progress(move |done, total| {
        shown.set(done, total);
        if let Some(t) = &throttle {
            t.reached(done);
        }
    });
    bar
}

#[derive(clap::Args)]
pub struct RebaseArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// Only rewrite the backing file name (no data is compared or copied).
    #[arg(short = 'u', long = "backing-unsafe")]
    unsafe_rebase: bool,
    /// The new backing file ("" for none).
    #[arg(short = 'b', long = "backing", value_name = "BACKING_FILE")]
    backing: String,
    /// The new backing file's format.
    #[arg(short = 'F', long = "backing-format", value_name = "BACKING_FMT")]
    backing_format: Option<String>,
    /// Write the clusters copied from the old backing chain compressed.
    #[arg(short = 'c', long = "compress")]
    compress: bool,
    /// Cache mode of the image (see `flags::CACHE_MODES`).
    #[arg(short = 't', long = "cache", value_name = "CACHE", value_parser = crate::flags::CACHE_MODES)]
    cache: Option<String>,
    /// Cache mode of the backing files.
    #[arg(short = 'T', long = "backing-cache", value_name = "CACHE", value_parser = crate::flags::CACHE_MODES)]
    backing_cache: Option<String>,
    #[command(flatten)]
    progress: ProgressArgs,
    /// The image file.
    filename: String,
}

pub fn rebase(args: &RebaseArgs) -> Result<ExitCode, Error> {
    let compressible = |f: Format| matches!(f, Format::Qcow2 | Format::Qcow);
    let no_compression = || {
        Error::new(
            ErrorKind::Unsupported,
            "Compression not supported for this file format",
        )
    };
    let stated = args
        .source
        .format
        .as_deref()
        .map(format_named)
        .transpose()?;
    if args.compress && stated.is_some_and(|f| !compressible(f)) {
        return Err(no_compression());
    }
    let name = (!args.backing.is_empty()).then_some(args.backing.as_str());
    if let (Some(n), None) = (name, &args.backing_format) {
        // As qemu-img: a backing file named without its format is never recorded.
        return Err(Error::new(
            ErrorKind::BadArgument,
            format!("Could not change the backing file to '{n}': backing format must be specified"),
        ));
    }
    // -u records the name alone, so a protocol driver (host_device…) may be named too,
    // as qemu-img records it; everything else must be a format cowimg opens.
    let protocol = (args.backing_format.as_deref())
        .filter(|d| args.unsafe_rebase && ["file", "host_device", "host_cdrom"].contains(d));
    let format = match protocol {
        Some(_) => None,
        None => args
            .backing_format
            .as_deref()
            .map(format_named)
            .transpose()?,
    };
    if args.unsafe_rebase {
        let mut image = args.source.open_writable(&args.filename, Backing::Ignore)?;
        match protocol {
            Some(driver) => image.set_backing_driver(name, Some(driver))?,
            None => image.set_backing(name, format)?,
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut image = args.source.open_writable(&args.filename, Backing::Follow)?;
    if args.compress && !compressible(image.format()) {
        return Err(no_compression());
    }
    let new = match name {
        Some(n) => {
            let path = cowimg::image::resolve_backing(Path::new(&args.filename), n);
            Some(
                Image::open(&path, &OpenOptions::new().format(format)).map_err(|e| {
                    e.context(format_args!(
                        "Could not open new backing file '{}'",
                        path.display()
                    ))
                })?,
            )
        }
        None => None,
    };
    if let Some(new) = &new {
        // The new chain must not hold the image being rebased.
        cowimg::image::refuse_overwrite(Path::new(&args.filename), &[new])?;
    }
    let bar = watch(&mut image, args.progress.bar());
    image.rebase_compressed(name, new.as_ref(), args.compress)?;
    bar.finish();
    // Closed, not dropped: what closing stores (bitmaps) can fail, and says so.
    image.close()?;
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct CommitArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// Keep the image's data after committing it (do not empty it).
    #[arg(short = 'd', long = "drop")]
    keep: bool,
    /// Cache mode of the image (see `flags::CACHE_MODES`).
    #[arg(short = 't', long = "cache", value_name = "CACHE", value_parser = crate::flags::CACHE_MODES)]
    cache: Option<String>,
    /// Bytes per second for the block job qemu-img runs; cowimg copies at full speed.
    #[arg(short = 'r', long = "rate", value_name = "RATE")]
    rate: Option<String>,
    /// The backing file's format, when the image does not record it (qcow, cow).
    #[arg(short = 'F', value_name = "BACKING_FMT")]
    backing_format: Option<String>,
    /// The image to commit into, anywhere in the backing chain (default: the backing
    /// file); committing through several layers keeps the image as it is (-d).
    #[arg(short = 'b', long = "base", value_name = "BASE")]
    base: Option<String>,
    #[command(flatten)]
    progress: ProgressArgs,
    /// The image file.
    filename: String,
}

pub fn commit(args: &CommitArgs) -> Result<ExitCode, Error> {
    let mut image = args.source.open_writable(&args.filename, Backing::Follow)?;
    let format = args
        .backing_format
        .as_deref()
        .map(format_named)
        .transpose()?;
    let mut depth = 1;
    if let Some(base) = &args.base {
        // Found by file identity among the chain's files, as QEMU looks it up: a
        // relative name is relative to the image, as backing file names are.
        let wanted = cowimg::image::resolve_backing(Path::new(&args.filename), base);
        let same = |p: &Path| cowimg::create::same_file(p, &wanted);
        match image.chain().iter().skip(1).position(|e| same(&e.path)) {
            Some(below) => depth = below + 1,
            None => {
                return Err(Error::new(
                    ErrorKind::BadArgument,
                    format!(
                        "Did not find '{base}' in the backing chain of '{}'",
                        args.filename
                    ),
                ))
            }
        }
    }
    let throttle = crate::throttle::Throttle::new(args.rate.as_deref())?;
    let bar = watch_at_rate(&mut image, args.progress.bar(), Some(throttle));
    // qemu-img's -b implies -d, even naming the backing file itself.
    image.commit_into(depth, args.keep || args.base.is_some(), format)?;
    bar.finish();
    image.close()?;
    if !args.progress.quiet {
        crate::print_out("Image committed.\n");
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct AmendArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// Options to change: compat=0.10|1.1, lazy_refcounts=on|off; LUKS key slots with
    /// encrypt.state=active|inactive, encrypt.new-secret=ID, encrypt.old-secret=ID,
    /// encrypt.keyslot=N, encrypt.iter-time=MS (a luks image: the same without
    /// "encrypt.").
    #[arg(short = 'o', long = "options", value_name = "OPTIONS", required = true)]
    options: Vec<String>,
    /// Quiet.
    #[arg(short = 'q', long = "quiet")]
    quiet: bool,
    /// Show progress (an amend here is one step).
    #[arg(short = 'p', long = "progress")]
    progress: bool,
    /// Cache mode of the image (see `flags::CACHE_MODES`).
    #[arg(short = 't', long = "cache", value_name = "CACHE", value_parser = crate::flags::CACHE_MODES)]
    cache: Option<String>,
    /// Allow what cannot be undone: overwriting an active LUKS key slot, erasing the
    /// last ones.
    #[arg(long = "force")]
    force: bool,
    /// The image file.
    filename: Option<String>,
}

pub fn amend(args: &AmendArgs) -> Result<ExitCode, Error> {
    crate::option_help::check_option_lists(&args.options)?;
    let help = crate::option_help::wants_help(&args.options);
    let filename = match (args.filename.as_deref(), &args.source.format) {
        (Some(name), _) => name,
        (None, Some(format)) if help => {
            crate::print_out(&crate::option_help::amend_help(format)?);
            return Ok(ExitCode::SUCCESS);
        }
        (None, _) => {
            return Err(Error::new(
                ErrorKind::BadArgument,
                "Expecting one image file name",
            ))
        }
    };
    if help {
        let format = match &args.source.format {
            Some(format) => format.clone(),
            None => args
                .source
                .open_metadata(filename)?
                .format()
                .name()
                .to_string(),
        };
        crate::print_out(&crate::option_help::amend_help(&format)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut compat = None;
    let mut lazy = None;
    let mut slots: Option<KeySlotChange> = None;
    let mut size = None;
    let mut state_given = false;
    let (mut refcount_bits, mut data_file, mut data_file_raw) = (None, None, None);
    let (mut backing_file, mut backing_fmt): (Option<String>, Option<String>) = (None, None);
    let secrets = args.source.secrets()?;
    let secret = |id: &str| {
        secrets
            .get(id)
            .cloned()
            .ok_or_else(|| Error::new(ErrorKind::BadArgument, format!("No secret with id '{id}'")))
    };
    for text in &args.options {
        for (key, value) in parse_options(text) {
            let luks_key = key.strip_prefix("encrypt.").unwrap_or(&key);
            let is_luks = matches!(
                luks_key,
                "state" | "new-secret" | "old-secret" | "keyslot" | "iter-time" | "format"
            );
            if is_luks {
                let change = slots.get_or_insert_with(KeySlotChange::default);
                change.force = args.force;
                match luks_key {
                    "state" => {
                        state_given = true;
                        change.active = match value.as_str() {
                            "active" => true,
                            "inactive" => false,
                            _ => {
                                return Err(Error::new(
                                    ErrorKind::BadArgument,
                                    format!("Parameter 'state' does not accept value '{value}'"),
                                ))
                            }
                        }
                    }
                    "new-secret" => change.new_secret = Some(secret(&value)?),
                    "old-secret" => change.old_secret = Some(secret(&value)?),
                    "keyslot" => {
                        change.keyslot = Some(value.parse().map_err(|_| {
                            Error::new(
                                ErrorKind::BadArgument,
                                "Parameter 'keyslot' expects a number",
                            )
                        })?)
                    }
                    "iter-time" => {
                        change.iter_time_ms = Some(value.parse().map_err(|_| {
                            Error::new(
                                ErrorKind::BadArgument,
                                "Parameter 'iter-time' expects a number",
                            )
                        })?)
                    }
                    // encrypt.format=luks names what is already there.
                    _ if value == "luks" => {}
                    _ => {
                        return Err(Error::new(
                            ErrorKind::Unsupported,
                            "Changing the encryption format is not supported",
                        ))
                    }
                }
                continue;
            }
            match key.as_str() {
                "compat" => compat = Some(value),
                "lazy_refcounts" => lazy = Some(matches!(value.as_str(), "on" | "true" | "yes")),
                "size" => size = Some(crate::create::parse_size(&value)?),
                "backing_file" => backing_file = Some(value),
                "backing_fmt" => backing_fmt = Some(value),
                "data_file" => data_file = Some(value),
                "data_file_raw" => {
                    data_file_raw = Some(matches!(value.as_str(), "on" | "true" | "yes"))
                }
                "cluster_size" => {
                    return Err(Error::new(
                        ErrorKind::Unsupported,
                        "Changing the cluster size is not supported",
                    ))
                }
                "refcount_bits" => {
                    let bits = value
                        .parse::<u32>()
                        .ok()
                        .filter(|b| b.is_power_of_two() && *b <= 64);
                    refcount_bits = Some(bits.ok_or_else(|| {
                        Error::new(
                            ErrorKind::BadArgument,
                            "Refcount width must be a power of two and may not exceed 64 bits",
                        )
                    })?);
                }
                other => {
                    return Err(Error::new(
                        ErrorKind::Unsupported,
                        format!("Changing '{other}' is not supported"),
                    ))
                }
            }
        }
    }
    let mut image = args.source.open_writable(filename, Backing::Follow)?;
    // Named after the image opened, as QEMU's driver checks it.
    let compat = compat
        .map(|name| {
            Compat::from_name(&name).ok_or_else(|| {
                Error::new(
                    ErrorKind::BadArgument,
                    format!("Invalid compatibility level: '{name}'"),
                )
            })
        })
        .transpose()?;
    // QEMU's order: upgrade, (key slots,) refcount width, data file, the backing file
    // check, lazy refcounts, size, downgrade last.
    if compat == Some(Compat::V1_1) {
        image.amend(compat, None)?;
    }
    if let Some(bits) = refcount_bits {
        if compat == Some(Compat::V0_10) && bits != 16 {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "Refcount widths other than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)",
            ));
        }
        image.amend_refcount_bits(bits)?;
    }
    if data_file.is_some() || data_file_raw.is_some() {
        image.amend_data_file(data_file.as_deref(), data_file_raw)?;
    }
    if backing_file.is_some() || backing_fmt.is_some() {
        let (name, format) = image.chain()[0].backing_name().unzip();
        if backing_file != name || backing_fmt != format.flatten() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "Cannot amend the backing file\nYou can use 'qemu-img rebase' instead.",
            ));
        }
    }
    if lazy.is_some() {
        image.amend(None, lazy)?;
    }

    // As qemu-img: size= resizes either way, no --shrink asked.
    if let Some(size) = size {
        image.resize(size)?;
        image.flush()?;
    }
    if compat == Some(Compat::V0_10) {
        image.amend(compat, None)?;
    }
    if let Some(change) = &slots {
        if !state_given {
            return Err(Error::new(
                ErrorKind::BadArgument,
                "Parameter 'encrypt.state' is missing",
            ));
        }
        image.change_key_slots(change)?;
    }
    image.close()?;
    Ok(ExitCode::SUCCESS)
}
