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
    convert_concatenated(&[source], out, options, progress)
}

/// [`convert`] of several images, one after the other on the new disk (qemu-img
/// convert with several sources): its size is the sum of theirs.
pub fn convert_concatenated(
    sources: &[&Image],
    out: &Path,
    options: &ConvertOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Vec<Unreadable>> {
    refuse_overwrite(out, sources)?;
    if sources.len() > 1 && options.create.backing_file.is_some() {
        return Err(Error::new(
            ErrorKind::BadArgument,
            "Having a backing file for the target makes no sense when concatenating multiple input images",
        ));
    }
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
            to_raw(sources, out, options, s, progress)
        }
        Format::Raw if !options.compress => to_image(sources, out, options, s, progress),
        Format::Qcow2 | Format::Qcow => to_image(sources, out, options, s, progress),
        Format::Luks if !options.compress => to_image(sources, out, options, s, progress),
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
    sources: &[&Image],
    out: &Path,
    options: &ConvertOptions,
    salvage: Option<&Salvage>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<()> {
    let mut opts = options.create.clone();
    let total: u64 = sources.iter().map(|s| s.size()).sum();
    opts.size = total;
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
    if target.size() < total {
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
    // Compressed clusters are whole target clusters: sources that do not meet at
    // cluster boundaries are stitched together cluster by cluster.
    let mut starts = sources.iter().scan(0, |at, s| {
        let start = *at;
        *at += s.size();
        Some(start)
    });
    if options.compress && starts.any(|start| start % cs != 0) {
        stitch_compressed(sources, &mut target, cs, zero_init, progress)?;
        if options.flush {
            target.flush()?;
        }
        return Ok(());
    }
    let mut base = 0;
    for source in sources {
        let size = source.size();
        copy_into(
            source,
            (0, size),
            (&mut target, base),
            cs,
            (options.compress, zero_init, options.sparse_size),
            salvage,
            progress,
        )?;
        base += size;
    }
    if options.flush {
        target.flush()?;
    }
    Ok(())
}

/// Writes the concatenation of `sources` into `target` one cluster of `cs` bytes at a
/// time, compressed (zero clusters skipped where the target reads zeros already): for
/// sources whose boundaries fall inside target clusters.
fn stitch_compressed(
    sources: &[&Image],
    target: &mut Image,
    cs: u64,
    zero_init: bool,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<()> {
    let total: u64 = sources.iter().map(|s| s.size()).sum();
    let mut buf = vec![0u8; cs as usize];
    let mut at = 0;
    while at < total {
        let len = cs.min(total - at);
        let cluster = &mut buf[..len as usize];
        // Fill the cluster from every source it spans.
        let (mut filled, mut base) = (0u64, 0u64);
        for source in sources {
            let size = source.size();
            let (from, to) = (at + filled, at + len);
            if from < base + size && to > base {
                let n = (base + size).min(to) - from;
                let piece = &mut cluster[filled as usize..(filled + n) as usize];
                source.read_at(piece, from - base)?;
                filled += n;
            }
            base += size;
            if filled == len {
                break;
            }
        }
        if !is_zero(cluster) {
            target.write_compressed(cluster, at)?;
        } else if !zero_init {
            target.write_zeroes(at, len, false)?;
        }
        progress(len);
        at += len;
    }
    Ok(())
}

/// A raw file with the source's content, written by one worker per core.
fn to_raw(
    sources: &[&Image],
    out_path: &Path,
    options: &ConvertOptions,
    salvage: Option<&Salvage>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<()> {
    let out = create_locked_file(out_path)?;
    let total: u64 = sources.iter().map(|s| s.size()).sum();
    out.set_len(total)
        .map_err(|e| Error::io("sizing the output", e))?;
    crate::raw::allocate_first_block(&out, total)?;

    // Plan from metadata alone: the pieces that are not known zeros, by source and
    // offset in it, and where the source starts in the output.
    let mut pieces = Vec::new();
    let mut base = 0;
    for (which, source) in sources.iter().enumerate() {
        let size = source.size();
        let mut offset = 0;
        while offset < size {
            let len = match source.block_status(offset, (size - offset).min(CHUNK)) {
                // -S 0: zeros are written too.
                Ok(status) if status.zero && options.sparse_size > 0 => status.len,
                Ok(status) => {
                    push_piece(&mut pieces, (which, base), offset, status.len);
                    status.len
                }
                // Salvaging: what cannot be told is read (and salvaged) as data.
                Err(_) if salvage.is_some() => {
                    let len = (size - offset).min(CHUNK);
                    push_piece(&mut pieces, (which, base), offset, len);
                    len
                }
                Err(e) => return Err(e),
            };
            offset += len;
        }
        base += size;
    }
    progress(total - pieces.iter().map(|&(_, _, len)| len).sum::<u64>());
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
                    let Some(&((which, base), at, len)) = pieces.get(i) else {
                        break;
                    };
                    let chunk = &mut buf[..len as usize];
                    let result = read_into(sources[which], salvage, chunk, at).and_then(|()| {
                        write_sparse(&out, chunk, base + at, options.sparse_size).map_err(writing)
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

/// A planned piece: (the source and where it starts in the output), the offset in the
/// source, the length.
type Piece = ((usize, u64), u64, u64);

/// Adds `(offset, len)` of a source to the planned pieces, joined to the last one (of
/// the same source) while they stay within one `CHUNK`: runs of single compressed
/// clusters then go out as few large writes rather than one per cluster.
fn push_piece(pieces: &mut Vec<Piece>, source: (usize, u64), offset: u64, len: u64) {
    match pieces.last_mut() {
        Some((s, at, n)) if *s == source && *at + *n == offset && *n + len <= CHUNK => *n += len,
        _ => pieces.push((source, offset, len)),
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
