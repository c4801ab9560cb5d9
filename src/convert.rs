//! `qemu-img convert`: the virtual disk copied into a new image file. Raw targets are
//! written sparse by one worker per core; qcow2 and qcow targets leave zero clusters
//! unallocated and may compress. A target this call made is removed when it fails.

use crate::copy::{copy_into, is_zero, read_into, workers, Salvage, Unreadable, CHUNK};
use crate::create::{create_file, remove_created, CreateOptions, Encryption};
use crate::error::{Error, ErrorKind, Result};
use crate::image::{create_locked_file, refuse_overwrite, Backing, Image, OpenOptions};
use crate::probe::Format;
use crate::storage::{FileStorage, Storage};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Runs of zeros at least this long inside data are left as holes (qemu-img's -S).
const SPARSE: usize = 4096;

/// What the new image is to be.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ConvertOptions {
    /// The target's format: raw, qcow2 or qcow.
    pub format: Format,
    /// The target's creation options (its size is the source's).
    pub create: CreateOptions,
    /// Compress every cluster (qcow2, qcow).
    pub compress: bool,
    /// The passphrase of an encrypted target.
    pub passphrase: Option<crate::Secret>,
    /// Flush the target before returning (qemu-img's default cache mode, unsafe, does
    /// not).
    pub flush: bool,
    /// Read what cannot be read as zeros and go on (qemu-img's `--salvage`); the
    /// ranges are returned.
    pub salvage: bool,
    /// Write into the target as it is (qemu-img's `-n`): nothing created, and its
    /// content not assumed to be zeros (it must be at least the source's size).
    pub existing: bool,
    /// With `existing`: the target reads as zeros already (`--target-is-zero`), so
    /// zeros need not be written.
    pub target_is_zero: bool,
    /// Runs of zeros at least this long are left unwritten (qemu-img's `-S`, 4 KiB by
    /// default); 0 writes every byte, zeros as data.
    pub sparse_size: u64,
}

impl ConvertOptions {
    /// A target of `format` with default creation options, not compressed, not flushed.
    pub fn new(format: Format) -> ConvertOptions {
        ConvertOptions {
            format,
            create: CreateOptions::default(),
            compress: false,
            passphrase: None,
            flush: false,
            salvage: false,
            existing: false,
            target_is_zero: false,
            sparse_size: SPARSE as u64,
        }
    }

    setters! {
        plain {
        /// The target's creation options.
        create: CreateOptions;
        /// Compress every cluster.
        compress: bool;
        /// Flush the target before returning.
        flush: bool;
        /// Read what cannot be read as zeros and go on.
        salvage: bool;
        /// Write into the existing target (qemu-img's `-n`).
        existing: bool;
        /// The existing target reads as zeros already.
        target_is_zero: bool;
        /// Runs of zeros at least this long stay holes (0: everything written).
        sparse_size: u64;
        }
        optional {
        /// The passphrase of an encrypted target.
        passphrase: crate::Secret;
        }
    }
}

/// Copies `source` into a new file at `out`, telling `progress` how many bytes of the
/// virtual disk each step covered. The target may not be one of the source's files.
/// Returns the ranges that could not be read (only when salvaging; they were written
/// as zeros).
pub fn convert(
    source: &Image,
    out: &Path,
    options: &ConvertOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Vec<Unreadable>> {
    refuse_overwrite(out, &[source])?;
    if options.target_is_zero && !options.existing {
        return Err(Error::new(
            ErrorKind::BadArgument,
            "--target-is-zero requires use of -n flag",
        ));
    }
    let existed = out.symlink_metadata().is_ok();
    let salvage = options.salvage.then(Salvage::new);
    let s = salvage.as_ref();
    let result = match options.format {
        Format::Raw if !options.compress && !options.existing => {
            to_raw(source, out, options, s, progress)
        }
        Format::Raw if !options.compress => to_image(source, out, options, s, progress),
        Format::Qcow2 | Format::Qcow => to_image(source, out, options, s, progress),
        Format::Luks if !options.compress => to_image(source, out, options, s, progress),
        Format::Raw | Format::Luks => Err(Error::new(
            ErrorKind::BadArgument,
            "Compression not supported for this file format",
        )),
        other => Err(Error::new(
            ErrorKind::Unsupported,
            format!("converting to {other} is not implemented yet"),
        )),
    };
    if result.is_err() && !existed {
        // The error that led here is the one to report.
        let _ = remove_created(out);
    }
    result?;
    Ok(salvage.map(Salvage::into_ranges).unwrap_or_default())
}

/// A new qcow2, qcow or luks image with the source's content: whole zero clusters are
/// left unallocated (a luks volume has none: they are written), the rest written (or
/// compressed).
fn to_image(
    source: &Image,
    out: &Path,
    options: &ConvertOptions,
    salvage: Option<&Salvage>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<()> {
    let mut opts = options.create.clone();
    opts.size = source.size();
    // A LUKS target opens with the passphrase it was made with.
    let passphrase = match &opts.encryption {
        Encryption::Luks(luks) => Some(luks.passphrase.clone()),
        _ => options.passphrase.clone(),
    };
    if matches!(opts.encryption, Encryption::Aes) && passphrase.is_none() {
        return Err(Error::new(
            ErrorKind::BadArgument,
            "Parameter 'encrypt.key-secret' is required for cipher",
        ));
    }
    if options.compress && opts.encryption.is_some() {
        return Err(Error::new(
            ErrorKind::BadArgument,
            "Compression and encryption not supported at the same time",
        ));
    }
    if options.compress && opts.data_file.is_some() {
        return Err(Error::new(
            ErrorKind::BadArgument,
            "Compression not supported with a data file",
        ));
    }
    if !options.existing {
        create_file(options.format, out, &opts, 3)?;
    }
    // A new image nobody relies on yet: no barriers until the final flush, as qemu-img
    // writes convert targets with cache=unsafe. With a backing file, what it gives
    // need not be written (and zeros over it must be); an existing target reads
    // through its own.
    let backing = if opts.backing_file.is_some() || options.existing {
        Backing::Follow
    } else {
        Backing::Ignore
    };
    let target_options = OpenOptions::new()
        .format(options.format)
        .backing(backing)
        .writable(true)
        .barriers(false)
        .passphrase(passphrase);
    let mut target = Image::open(out, &target_options)?;
    if target.size() < source.size() {
        return Err(Error::new(
            ErrorKind::BadArgument,
            "output file is smaller than input file",
        ));
    }
    // What a target reads before it is written: zeros when new (a LUKS volume's
    // sectors decrypt to noise), unknown when it existed unless the caller knows.
    let zero_init = if options.existing {
        options.target_is_zero
    } else {
        target.format().zero_initialised()
    };
    // A qcow target compresses in its own clusters; the others in the ones asked for.
    let cs = match (target.format(), target.cluster_size()) {
        (Format::Qcow, Some(cs)) => cs,
        _ => opts.cluster_size,
    };
    let size = source.size();
    copy_into(
        source,
        (0, size),
        &mut target,
        cs,
        (options.compress, zero_init, options.sparse_size == 0),
        salvage,
        progress,
    )?;
    if options.flush {
        target.flush()?;
    }
    Ok(())
}

/// A raw file with the source's content, written by one worker per core.
fn to_raw(
    source: &Image,
    out_path: &Path,
    options: &ConvertOptions,
    salvage: Option<&Salvage>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<()> {
    let out = create_locked_file(out_path)?;
    let size = source.size();
    out.set_len(size)
        .map_err(|e| Error::io("sizing the output", e))?;
    crate::raw::allocate_first_block(&out, size)?;

    // Plan from metadata alone: the pieces that are not known zeros.
    let mut pieces = Vec::new();
    let mut offset = 0;
    while offset < size {
        let len = match source.block_status(offset, (size - offset).min(CHUNK)) {
            // -S 0: zeros are written too.
            Ok(status) if status.zero && options.sparse_size > 0 => status.len,
            Ok(status) => {
                push_piece(&mut pieces, offset, status.len);
                status.len
            }
            // Salvaging: what cannot be told is read (and salvaged) as data.
            Err(_) if salvage.is_some() => {
                let len = (size - offset).min(CHUNK);
                push_piece(&mut pieces, offset, len);
                len
            }
            Err(e) => return Err(e),
        };
        offset += len;
    }
    progress(size - pieces.iter().map(|&(_, len)| len).sum::<u64>());
    let writing = |e| Error::io(format!("writing '{}'", out_path.display()), e);
    // Copy them with one worker per core, as qemu-img keeps several requests in flight.
    let next = AtomicUsize::new(0);
    let failed: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..workers() {
            scope.spawn(|| {
                let mut buf = vec![0u8; CHUNK as usize];
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(at, len)) = pieces.get(i) else {
                        break;
                    };
                    let chunk = &mut buf[..len as usize];
                    let result = read_into(source, salvage, chunk, at).and_then(|()| {
                        write_sparse(&out, chunk, at, options.sparse_size).map_err(writing)
                    });
                    progress(len);
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
    if options.flush {
        out.flush()
            .map_err(|e| Error::io(format!("flushing '{}'", out_path.display()), e))?;
    }
    Ok(())
}

/// Adds `(offset, len)` to the planned pieces, joined to the last one while they stay
/// within one `CHUNK`: runs of single compressed clusters then go out as few large
/// writes rather than one per cluster.
fn push_piece(pieces: &mut Vec<(u64, u64)>, offset: u64, len: u64) {
    match pieces.last_mut() {
        Some((at, n)) if *at + *n == offset && *n + len <= CHUNK => *n += len,
        _ => pieces.push((offset, len)),
    }
}

/// Writes `data` at `offset`, leaving aligned all-zero blocks of `sparse` bytes
/// unwritten (every byte written when `sparse` is 0).
fn write_sparse(out: &FileStorage, data: &[u8], offset: u64, sparse: u64) -> std::io::Result<()> {
    if sparse == 0 {
        return out.write_at(data, offset);
    }
    let block = sparse as usize;
    let mut start = None;
    for (i, piece) in data.chunks(block).enumerate() {
        let zero = is_zero(piece);
        match (zero, start) {
            (false, None) => start = Some(i * block),
            (true, Some(s)) => {
                out.write_at(&data[s..i * block], offset + s as u64)?;
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
