//! `cowimg convert`: copy the virtual disk into a new image (raw, for now), skipping
//! what reads as zeros so the output stays sparse.

use crate::create::{apply_options, key_secret};
use crate::progress::Progress;
use crate::source::{format_named, SnapshotSourceArgs, TargetArgs};
use cowimg::copy::{copy_into, is_zero, workers, CHUNK};
use cowimg::create::create_file;
use cowimg::create::CreateOptions;
use cowimg::storage::{FileStorage, Storage};
use cowimg::{Backing, Error, ErrorKind, Format, Image, OpenOptions};
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Runs of zeros at least this long inside data are left as holes (qemu-img's -S).
const SPARSE: usize = 4096;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    input: SnapshotSourceArgs,
    #[command(flatten)]
    target: TargetArgs,
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
    /// Input image.
    filename: String,
    /// Output file.
    output: String,
}

pub fn run(args: &Args) -> Result<ExitCode, Error> {
    let target = format_named(&args.target.output_format)?;
    let image = args.input.open(&args.filename)?;
    let out = Path::new(&args.output);
    cowimg::image::refuse_overwrite(out, &[&image])?;
    // A target that fails half-way is removed, as qemu-img removes it, when this run
    // made it.
    let existed = out.symlink_metadata().is_ok();
    let result = convert(args, &image, target);
    if result.is_err() && !existed {
        if let Err(e) = cowimg::create::remove_created(out) {
            eprintln!("cowimg: could not remove '{}': {e}", out.display());
        }
    }
    result
}

fn convert(args: &Args, image: &Image, target: Format) -> Result<ExitCode, Error> {
    match target {
        Format::Raw if !args.compress => to_raw(args, image),
        Format::Qcow2 | Format::Qcow => to_image(args, image, target),
        Format::Raw => Err(Error::new(
            ErrorKind::BadArgument,
            "Compression not supported for this file format",
        )),
        other => Err(Error::new(
            ErrorKind::Unsupported,
            format!("converting to {other} is not implemented yet"),
        )),
    }
}

/// A new qcow2 or qcow image with the source's content: whole zero clusters are left
/// unallocated, the rest written (or compressed, with -c).
fn to_image(args: &Args, image: &Image, format: Format) -> Result<ExitCode, Error> {
    let mut opts = CreateOptions::default();
    let mut size = None;
    apply_options(&args.target.options, &mut opts, &mut size)?;
    opts.size = image.size();
    let passphrase = match key_secret(&args.target.options) {
        Some(id) => Some(args.input.source.secrets()?.remove(&id).ok_or_else(|| {
            Error::new(
                ErrorKind::BadArgument,
                format!("No secret with id '{id}' found"),
            )
        })?),
        None if opts.encrypt_aes => {
            return Err(Error::new(
                ErrorKind::BadArgument,
                "Parameter 'encrypt.key-secret' is required for cipher",
            ))
        }
        None => None,
    };
    if args.compress && (opts.encrypt_aes || opts.data_file.is_some()) {
        return Err(Error::new(
            ErrorKind::BadArgument,
            "Compression not supported with encryption or a data file",
        ));
    }
    let out = Path::new(&args.output);
    create_file(format, out, &opts, 3)?;
    // A new image nobody relies on yet: no barriers until the final flush, as qemu-img
    // writes convert targets with cache=unsafe.
    // With a backing file, what it gives need not be written (and zeros over it must
    // be).
    let backing = if opts.backing_file.is_some() {
        Backing::Follow
    } else {
        Backing::Ignore
    };
    let target_options = OpenOptions::new()
        .format(format)
        .backing(backing)
        .writable(true)
        .barriers(false)
        .passphrase(passphrase);
    let mut target = Image::open(out, &target_options)?;
    // A qcow target compresses in its own clusters; the others in the ones asked for.
    let cs = match (target.format(), target.cluster_size()) {
        (Format::Qcow, Some(cs)) => cs,
        _ => opts.cluster_size,
    };
    let progress = Progress::new(args.progress && !args.quiet, image.size());
    copy_into(
        image,
        0,
        image.size(),
        &mut target,
        cs,
        args.compress,
        &|n| progress.advance(n),
    )?;
    progress.finish();
    if args.cache != "unsafe" {
        target.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A raw file with the source's content, written by one worker per core.
fn to_raw(args: &Args, image: &Image) -> Result<ExitCode, Error> {
    let out = cowimg::image::create_locked_file(Path::new(&args.output))?;
    let size = image.size();
    out.set_len(size)
        .map_err(|e| Error::io("sizing the output", e))?;

    // Plan from metadata alone: the pieces that are not known zeros.
    let mut pieces = Vec::new();
    let mut offset = 0;
    while offset < size {
        let status = image.block_status(offset, (size - offset).min(CHUNK))?;
        if !status.zero {
            pieces.push((offset, status.len));
        }
        offset += status.len;
    }

    let progress = Progress::new(args.progress && !args.quiet, size);
    progress.advance(size - pieces.iter().map(|&(_, len)| len).sum::<u64>());
    // Copy them with one worker per core, as qemu-img keeps several requests in flight.
    let workers = workers();
    let next = AtomicUsize::new(0);
    let failed: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                let mut buf = vec![0u8; CHUNK as usize];
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(at, len)) = pieces.get(i) else {
                        break;
                    };
                    let chunk = &mut buf[..len as usize];
                    let result = image.read_at(chunk, at).and_then(|()| {
                        write_sparse(&out, chunk, at)
                            .map_err(|e| Error::io(format!("writing '{}'", args.output), e))
                    });
                    progress.advance(len);
                    if let Err(e) = result {
                        failed
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_or_insert(e);
                        next.store(pieces.len(), Ordering::Relaxed);
                        break;
                    }
                }
            });
        }
    });
    if let Some(e) = failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    progress.finish();
    if args.cache != "unsafe" {
        out.flush()
            .map_err(|e| Error::io(format!("flushing '{}'", args.output), e))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `data` at `offset`, leaving aligned all-zero blocks unwritten.
fn write_sparse(out: &FileStorage, data: &[u8], offset: u64) -> std::io::Result<()> {
    let mut start = None;
    for (i, block) in data.chunks(SPARSE).enumerate() {
        let zero = is_zero(block);
        match (zero, start) {
            (false, None) => start = Some(i * SPARSE),
            (true, Some(s)) => {
                out.write_at(&data[s..i * SPARSE], offset + s as u64)?;
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        out.write_at(&data[s..], offset + s as u64)?;
    }
    Ok(())
}
