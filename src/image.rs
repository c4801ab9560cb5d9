//! The format-independent image: a chain of layers (the image, its backing file, that
//! file's backing file…), read as one virtual disk.

use crate::codec::LegacyAes;
use crate::cow::{self, Cow};
use crate::error::{Error, ErrorKind, Result};
use crate::mapping::{Extent, Mapping};
use crate::probe::{probe, Format};
use crate::qcow::{self, Qcow};
use crate::qcow2::{self, Qcow2, Qcow2Options, SnapshotRef};
use crate::raw::Raw;
use crate::storage::{Access, FileStorage, Storage};
use std::collections::HashSet;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What to do about backing files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backing {
    /// Open the chain as the images name it.
    #[default]
    Follow,
    /// Open no backing file: unallocated ranges read as zeros.
    Ignore,
    /// Use this file (and format, else probed) as the top image's backing file.
    Override {
        path: PathBuf,
        format: Option<Format>,
    },
}

/// How to open an image: read-only (never writing a byte) unless `writable`. Every file
/// is locked as QEMU locks it (see [`crate::storage::Access`]).
#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// The top image's format; probed when None (reading only).
    pub format: Option<Format>,
    pub backing: Backing,
    /// Passphrase for legacy AES images, anywhere in the chain.
    pub passphrase: Option<Vec<u8>>,
    /// The top image's external data file, instead of the one its header names.
    pub data_file: Option<PathBuf>,
    /// Read this internal snapshot of the top image instead of its current state.
    pub snapshot: Option<SnapshotRef>,
    /// Bytes of L2 tables each qcow2 layer keeps in memory.
    pub l2_cache_bytes: u64,
    /// The longest chain accepted, the top image included.
    pub max_chain_length: usize,
    /// Open for metadata only (what `info` needs): no key or data file required.
    pub metadata_only: bool,
    /// Open the top image for writing. Its format must be stated: a probed format is
    /// never trusted for writing.
    pub writable: bool,
    /// Flush between dependent metadata updates. Only a brand-new image that nobody
    /// relies on yet (a convert target) may go without.
    pub barriers: bool,
    /// Read whatever other processes do to the files (qemu-img's `-U`): take no lock
    /// that keeps a writer out. Only for read-only opens.
    pub force_share: bool,
    /// Open as qemu-img check opens (QEMU's BDRV_O_CHECK): a qcow2 image without a
    /// refcount table opens, so that a check can report on it.
    pub for_check: bool,
}

/// A builder, as `std::fs::OpenOptions`: `OpenOptions::new().format(Format::Qcow2)
/// .writable(true)`.
impl OpenOptions {
    /// The defaults: read-only, format probed, backing chain followed.
    pub fn new() -> OpenOptions {
        OpenOptions::default()
    }

    /// The top image's format (needed for writing; probed otherwise).
    pub fn format(mut self, format: Format) -> Self {
        self.format = Some(format);
        self
    }

    /// Open the top image for writing.
    pub fn writable(mut self, writable: bool) -> Self {
        self.writable = writable;
        self
    }

    /// What to do about backing files.
    pub fn backing(mut self, backing: Backing) -> Self {
        self.backing = backing;
        self
    }

    /// The passphrase of legacy AES images in the chain.
    pub fn passphrase(mut self, passphrase: impl Into<Vec<u8>>) -> Self {
        self.passphrase = Some(passphrase.into());
        self
    }

    /// Read this internal snapshot of the top image.
    pub fn snapshot(mut self, snapshot: SnapshotRef) -> Self {
        self.snapshot = Some(snapshot);
        self
    }

    /// Read whatever other processes do to the files (qemu-img's `-U`).
    pub fn force_share(mut self, force_share: bool) -> Self {
        self.force_share = force_share;
        self
    }

    /// The top image's external data file, instead of the one its header names.
    pub fn data_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.data_file = Some(path.into());
        self
    }
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            format: None,
            backing: Backing::Follow,
            passphrase: None,
            data_file: None,
            snapshot: None,
            l2_cache_bytes: 4 << 20,
            max_chain_length: 64,
            metadata_only: false,
            writable: false,
            barriers: true,
            force_share: false,
            for_check: false,
        }
    }
}

/// One opened file of a chain.
#[derive(Debug)]
pub enum Layer {
    Qcow2(Box<Qcow2>),
    Qcow(Box<Qcow>),
    Cow(Box<Cow>),
    Raw(Raw),
}

impl Layer {
    pub fn format(&self) -> Format {
        match self {
            Layer::Qcow2(_) => Format::Qcow2,
            Layer::Qcow(_) => Format::Qcow,
            Layer::Cow(_) => Format::Cow,
            Layer::Raw(_) => Format::Raw,
        }
    }

    pub fn size(&self) -> u64 {
        match self {
            Layer::Qcow2(l) => l.size(),
            Layer::Qcow(l) => l.size(),
            Layer::Cow(l) => l.size(),
            Layer::Raw(l) => l.size(),
        }
    }

    pub fn map(&self, offset: u64, len: u64) -> Result<Extent> {
        match self {
            Layer::Qcow2(l) => l.map(offset, len),
            Layer::Qcow(l) => l.map(offset, len),
            Layer::Cow(l) => l.map(offset, len),
            Layer::Raw(l) => l.map(offset, len),
        }
    }

    fn read_mapped(&self, extent: &Extent, guest: u64, buf: &mut [u8]) -> Result<()> {
        match self {
            Layer::Qcow2(l) => l.read_mapped(extent, guest, buf),
            Layer::Qcow(l) => l.read_mapped(extent, guest, buf),
            Layer::Cow(l) => l.read_mapped(extent, guest, buf),
            Layer::Raw(l) => l.read_mapped(extent, guest, buf),
        }
    }

    /// For data stored at `host` (`len` bytes): whether the file holding it has a hole
    /// there (or ends before it), and how far that answer holds. QEMU asks the file
    /// this only for metadata-preallocated qcow2 images and reports such data as
    /// zeros; a raw layer answers in its own map.
    fn host_zeros(&self, host: u64, len: u64) -> (bool, u64) {
        let storage = match self {
            Layer::Qcow2(l) if l.metadata_preallocated() => l.data_storage().as_ref(),
            _ => return (false, len),
        };
        match storage.allocation(host) {
            Ok(Some(run)) => (!run.data, len.min(run.end.saturating_sub(host)).max(1)),
            Ok(None) => (storage.len().is_ok_and(|end| host >= end), len),
            Err(_) => (false, len),
        }
    }

    /// Host offsets of encrypted data are not reported (as QEMU).
    fn is_encrypted(&self) -> bool {
        match self {
            Layer::Qcow2(l) => l.is_encrypted(),
            Layer::Qcow(l) => l.is_encrypted(),
            Layer::Cow(_) | Layer::Raw(_) => false,
        }
    }

    /// The backing file as the header names it, and its format if named.
    pub fn backing_name(&self) -> Option<(String, Option<String>)> {
        match self {
            Layer::Qcow2(l) => l.header().backing_file.as_ref().map(|name| {
                let format = l
                    .header()
                    .backing_format()
                    .map(|f| String::from_utf8_lossy(f).into_owned());
                (String::from_utf8_lossy(name).into_owned(), format)
            }),
            // qcow names no backing format: it is probed, as QEMU does.
            Layer::Qcow(l) => l
                .header()
                .backing_file
                .as_ref()
                .map(|n| (String::from_utf8_lossy(n).into_owned(), None)),
            Layer::Cow(l) => (!l.header().backing_file.is_empty()).then(|| {
                (
                    String::from_utf8_lossy(&l.header().backing_file).into_owned(),
                    None,
                )
            }),
            Layer::Raw(_) => None,
        }
    }
}

/// A layer and where it came from.
#[derive(Debug)]
pub struct ChainEntry {
    pub layer: Layer,
    /// The path it was opened at (relative names resolved against the image's folder).
    pub path: PathBuf,
    /// The external data file holding its data clusters, if it has one.
    pub data_path: Option<PathBuf>,
    /// True when its format was guessed rather than stated.
    pub probed: bool,
    /// What QEMU (or UML) would warn about when opening it.
    pub warnings: Vec<String>,
}

/// What a range is, as `qemu-img map` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockStatus {
    pub start: u64,
    pub len: u64,
    /// Which layer decided: 0 the top image, 1 its backing file…
    pub depth: usize,
    /// That layer supplies the bytes (false: unallocated down to the bottom).
    pub present: bool,
    /// Known to read as zeros.
    pub zero: bool,
    /// Read from a file (not zeros, not unallocated).
    pub data: bool,
    pub compressed: bool,
    /// Host offset in that layer's file, where meaningful.
    pub offset: Option<u64>,
}

impl BlockStatus {
    /// qemu-img map's rule for joining `next` onto `self`.
    fn mergeable(&self, next: &BlockStatus) -> bool {
        self.start + self.len == next.start
            && (
                self.depth,
                self.present,
                self.zero,
                self.data,
                self.compressed,
            ) == (
                next.depth,
                next.present,
                next.zero,
                next.data,
                next.compressed,
            )
            && match (self.offset, next.offset) {
                (None, None) => true,
                (Some(a), Some(b)) => a + self.len == b,
                _ => false,
            }
    }
}

/// Told how far a long operation (rebase, commit) has come: bytes done of the total.
pub type Progress = Box<dyn Fn(u64, u64) + Send + Sync>;

/// A virtual disk: the top image and its backing chain.
pub struct Image {
    chain: Vec<ChainEntry>,
    progress: Option<Progress>,
    /// What the chain was opened with, for reopening part of it (commit).
    options: OpenOptions,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image")
            .field("chain", &self.chain)
            .finish_non_exhaustive()
    }
}

impl Image {
    /// Has rebase and commit report their progress to `progress` as they go.
    pub fn on_progress(&mut self, progress: impl Fn(u64, u64) + Send + Sync + 'static) {
        self.progress = Some(Box::new(progress));
    }

    fn report(&self, done: u64, total: u64) {
        if let Some(p) = &self.progress {
            p(done, total);
        }
    }

    /// Opens `path` and, by `options.backing`, its backing chain.
    pub fn open(path: impl AsRef<Path>, options: &OpenOptions) -> Result<Image> {
        let path = path.as_ref();
        let mut chain: Vec<ChainEntry> = Vec::new();
        let mut seen = HashSet::new();
        let mut next = Some((path.to_path_buf(), options.format, true));
        while let Some((path, format, top)) = next.take() {
            if chain.len() >= options.max_chain_length {
                return Err(Error::new(
                    ErrorKind::BadArgument,
                    format!(
                        "backing chain longer than {} images",
                        options.max_chain_length
                    ),
                ));
            }
            let canonical = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
            if !seen.insert(canonical) {
                return Err(Error::new(
                    ErrorKind::Corrupt,
                    format!("backing chain loops back to '{}'", path.display()),
                ));
            }
            let entry = open_layer(&path, format, top, options).map_err(|e| {
                if top {
                    e
                } else {
                    // qemu-img's words; the file is named by the error inside.
                    e.context("Could not open backing file")
                }
            })?;
            next = match (&options.backing, top) {
                (Backing::Ignore, _) => None,
                (Backing::Override { path, format }, true) => Some((path.clone(), *format, false)),
                _ => match entry.layer.backing_name() {
                    None => None,
                    Some((name, format_name)) => {
                        let name = check_backing_name(&name)?;
                        let format = match format_name {
                            None => None,
                            Some(f) => Some(Format::from_name(&f).ok_or_else(|| {
                                Error::new(ErrorKind::Unsupported, format!("Unknown driver '{f}'"))
                            })?),
                        };
                        Some((resolve_backing(&path, &name), format, false))
                    }
                },
            };
            chain.push(entry);
        }
        Ok(Image {
            chain,
            progress: None,
            options: options.clone(),
        })
    }

    /// Opens a single image held by `storage` (memory, a test backend…) in the stated
    /// format. Backing files named by the image are not opened; `options.backing` may
    /// name one explicitly.
    pub fn open_storage(
        storage: Arc<dyn Storage>,
        format: Format,
        options: &OpenOptions,
    ) -> Result<Image> {
        let layer = match format {
            Format::Raw => Layer::Raw(Raw::open(storage)?),
            Format::Qcow2 => {
                if options.writable {
                    repair_if_dirty(storage.as_ref())?;
                }
                let header = qcow2::Header::read(storage.as_ref())?;
                let qopts = Qcow2Options {
                    key: options
                        .passphrase
                        .as_deref()
                        .map(LegacyAes::from_passphrase),
                    data_file: None,
                    l2_cache_bytes: options.l2_cache_bytes,
                    snapshot: options.snapshot.clone(),
                    io: !options.metadata_only,
                    writable: options.writable,
                    barriers: options.barriers,
                    for_check: options.for_check,
                };
                Layer::Qcow2(Box::new(Qcow2::open(storage, header, qopts)?))
            }
            other => {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!("reading {other} images is not implemented yet"),
                ))
            }
        };
        let mut chain = vec![ChainEntry {
            layer,
            path: PathBuf::new(),
            data_path: None,
            probed: false,
            warnings: Vec::new(),
        }];
        if let Backing::Override { path, format } = &options.backing {
            let below = OpenOptions {
                writable: false,
                backing: Backing::Ignore,
                ..options.clone()
            };
            chain.push(open_layer(path, *format, false, &below)?);
        }
        Ok(Image {
            chain,
            progress: None,
            options: options.clone(),
        })
    }

    /// The images of the chain, top first.
    pub fn chain(&self) -> &[ChainEntry] {
        &self.chain
    }

    pub fn top(&self) -> &Layer {
        &self.chain[0].layer
    }

    /// Virtual size in bytes.
    pub fn size(&self) -> u64 {
        self.top().size()
    }

    /// Fills `buf` with the guest bytes at `offset`, the chain resolved.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|end| end > self.size()) {
            return Err(Error::new(
                ErrorKind::BadArgument,
                format!(
                    "read of {} bytes at {offset} is past the end of the image ({})",
                    buf.len(),
                    self.size()
                ),
            ));
        }
        self.read_layer(0, offset, buf)
    }

    fn read_layer(&self, depth: usize, offset: u64, buf: &mut [u8]) -> Result<()> {
        read_chain(self.chain.get(depth..).unwrap_or_default(), offset, buf)
    }

    /// The top layer for writing, and the layers below it for copy-on-write reads.
    fn split_top(&mut self) -> Result<(&mut Layer, &[ChainEntry])> {
        let (top, below) = self
            .chain
            .split_first_mut()
            .ok_or_else(|| Error::new(ErrorKind::BadArgument, "the image has no layers"))?;
        Ok((&mut top.layer, below))
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        if offset.checked_add(len).is_none_or(|end| end > self.size()) {
            return Err(Error::new(
                ErrorKind::BadArgument,
                format!(
                    "request of {len} bytes at {offset} is past the end of the image ({})",
                    self.size()
                ),
            ));
        }
        Ok(())
    }

    /// Writes `buf` at guest offset `offset` of the top image.
    pub fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        let (top, below) = self.split_top()?;
        let below = |at: u64, b: &mut [u8]| read_chain(below, at, b);
        match top {
            Layer::Qcow2(q) => q.write_at(offset, buf, &below),
            Layer::Qcow(q) => q.write_at(offset, buf, &below),
            Layer::Cow(c) => c.write_at(offset, buf, &below),
            Layer::Raw(r) => r.write_at(offset, buf),
        }
    }

    /// Makes a range read as zeros; `unmap` lets the image release its space.
    pub fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> Result<()> {
        self.check_range(offset, len)?;
        let (top, below) = self.split_top()?;
        let below = |at: u64, b: &mut [u8]| read_chain(below, at, b);
        match top {
            Layer::Qcow2(q) => q.write_zeroes(offset, len, unmap, &below),
            // qcow has no zero flag: zeros are written (as QEMU's generic fallback does).
            Layer::Qcow(q) => {
                write_zero_buffers(offset, len, |at, zeros| q.write_at(at, zeros, &below))
            }
            Layer::Cow(c) => {
                write_zero_buffers(offset, len, |at, zeros| c.write_at(at, zeros, &below))
            }
            Layer::Raw(r) => r.write_zeroes(offset, len),
        }
    }

    /// Discards a range: whole clusters stop holding data (what they then read as
    /// depends on the format, as in QEMU).
    pub fn discard(&mut self, offset: u64, len: u64) -> Result<()> {
        self.check_range(offset, len)?;
        let (top, below) = self.split_top()?;
        let below = |at: u64, b: &mut [u8]| read_chain(below, at, b);
        match top {
            Layer::Qcow2(q) => q.discard(offset, len, &below),
            // qcow cannot discard; QEMU ignores the request and so does cowimg.
            Layer::Qcow(_) | Layer::Cow(_) => Ok(()),
            Layer::Raw(r) => r.write_zeroes(offset, len),
        }
    }

    /// Writes whole clusters compressed.
    pub fn write_compressed(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        let (top, below) = self.split_top()?;
        let below = |at: u64, b: &mut [u8]| read_chain(below, at, b);
        match top {
            Layer::Qcow2(q) => q.write_compressed(offset, buf, &below),
            Layer::Qcow(q) => q.write_compressed(offset, buf, &below),
            Layer::Cow(_) | Layer::Raw(_) => Err(Error::new(
                ErrorKind::Unsupported,
                "raw images cannot hold compressed data",
            )),
        }
    }

    /// Changes the virtual size of the top image (growing reads as zeros; shrinking
    /// drops everything past the new end).
    pub fn resize(&mut self, new_size: u64) -> Result<()> {
        let (top, below) = self.split_top()?;
        let below = |at: u64, b: &mut [u8]| read_chain(below, at, b);
        match top {
            Layer::Qcow2(q) => q.resize(new_size, &below),
            Layer::Qcow(_) | Layer::Cow(_) => Err(Error::new(
                ErrorKind::Unsupported,
                "Image format driver does not support resize",
            )),
            Layer::Raw(r) => r.resize(new_size),
        }
    }

    /// Names another backing file in the header, touching no data (`rebase -u`).
    pub fn set_backing(&mut self, name: Option<&str>, format: Option<Format>) -> Result<()> {
        self.top_qcow2("a backing file")?
            .set_backing(name, format.map(Format::name))
    }

    /// Safe rebase: every range the top image does not hold itself and whose content
    /// differs between the current backing chain and `new` (or zeros, for none) is
    /// copied into the top image first; then the header names `new`.
    pub fn rebase(&mut self, name: Option<&str>, new: Option<&Image>) -> Result<()> {
        let size = self.size();
        // Compare and copy by the top image's clusters, so no more is copied than needed.
        let unit = match self.top() {
            Layer::Qcow2(q) => q.cluster_size(),
            Layer::Qcow(q) => q.cluster_size(),
            Layer::Cow(c) => u64::from(c.header().sector_size),
            Layer::Raw(_) => 64 << 10,
        };
        let mut old_buf = vec![0u8; unit as usize];
        let mut new_buf = vec![0u8; unit as usize];
        let mut offset = 0;
        while offset < size {
            let (held, len) = self.top_status(offset, size - offset)?;
            if held {
                offset += len;
                self.report(offset, size);
                continue;
            }
            let end = offset + len;
            while offset < end {
                let n = unit.min(end - offset) as usize;
                read_chain(&self.chain[1..], offset, &mut old_buf[..n])?;
                match new {
                    Some(image) => read_chain(&image.chain, offset, &mut new_buf[..n])?,
                    None => new_buf[..n].fill(0),
                }
                if old_buf[..n] != new_buf[..n] {
                    let data = old_buf[..n].to_vec();
                    self.write_at(&data, offset)?;
                }
                offset += n as u64;
                self.report(offset, size);
            }
        }
        self.flush()?;
        let format = new.map(|i| i.top().format());
        self.set_backing(name, format)
    }

    /// Writes everything the top image holds into its backing file, then (unless
    /// `keep`) empties the top image so that it reads through to it (`commit`). A
    /// backing file whose format was probed is written only when `backing_format` states it.
    pub fn commit(&mut self, keep: bool, backing_format: Option<Format>) -> Result<()> {
        let Some(below) = self.chain.get(1) else {
            return Err(Error::new(
                ErrorKind::BadArgument,
                "Image does not have a backing file",
            ));
        };
        if below.probed && backing_format.is_none() {
            return Err(Error::new(
                ErrorKind::BadArgument,
                "the backing file's format was probed, not stated, and a probed format is never trusted for writing: state it (commit -F FMT)",
            ));
        }
        let base_path = below.path.clone();
        let base_format = backing_format.unwrap_or(below.layer.format());
        // The chain below holds read locks that keep writers out, this one too: it is
        // closed while the base is written, and opened again after.
        drop(self.chain.split_off(1));
        let written = self.copy_into_base(&base_path, base_format);
        let reopened = Image::open(
            &base_path,
            &OpenOptions {
                format: Some(base_format),
                backing: Backing::Follow,
                writable: false,
                snapshot: None,
                data_file: None,
                ..self.options.clone()
            },
        );
        written?;
        self.chain.extend(reopened?.chain);
        if !keep {
            match self.split_top()?.0 {
                Layer::Qcow2(q) => q.make_empty()?,
                Layer::Qcow(q) => q.make_empty()?,
                other => {
                    return Err(Error::new(
                        ErrorKind::Unsupported,
                        format!(
                            "a {} image cannot be emptied after commit (use -d)",
                            other.format()
                        ),
                    ))
                }
            }
            self.flush()?;
        }
        Ok(())
    }

    /// The copying half of `commit`: every range the top image holds, written into the
    /// base image at `path` opened for writing (its own backing chain below it, so that
    /// a part-written cluster of the base keeps what the base's backing file gives).
    fn copy_into_base(&self, path: &Path, format: Format) -> Result<()> {
        let options = OpenOptions {
            format: Some(format),
            backing: Backing::Follow,
            writable: true,
            snapshot: None,
            data_file: None,
            ..self.options.clone()
        };
        let mut base = Image::open(path, &options)?;
        let size = self.size();
        if base.size() < size {
            base.resize(size)?;
        }
        let unit = 1u64 << 20;
        let mut buf = vec![0u8; unit as usize];
        let mut offset = 0;
        while offset < size {
            let (held, len) = self.top_status(offset, size - offset)?;
            if held {
                let mut at = offset;
                while at < offset + len {
                    let n = unit.min(offset + len - at) as usize;
                    self.read_at(&mut buf[..n], at)?;
                    base.write_at(&buf[..n], at)?;
                    at += n as u64;
                    self.report(at, size);
                }
            }
            offset += len;
            self.report(offset, size);
        }
        base.flush()
    }

    /// `amend`: the compat level (both ways) and lazy refcounts of a qcow2 image.
    pub fn amend(&mut self, compat: Option<&str>, lazy_refcounts: Option<bool>) -> Result<()> {
        let (top, below) = self.split_top()?;
        let below = |at: u64, b: &mut [u8]| read_chain(below, at, b);
        let Layer::Qcow2(q) = top else {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "amend needs a qcow2 image",
            ));
        };
        match compat {
            Some("0.10") | Some("v2") => q.downgrade_to_v2(&below)?,
            Some("1.1") | Some("v3") => q.upgrade_to_v3()?,
            Some(other) => {
                return Err(Error::new(
                    ErrorKind::BadArgument,
                    format!("Invalid compatibility level: '{other}'"),
                ))
            }
            None => {}
        }
        if let Some(on) = lazy_refcounts {
            q.set_lazy_refcounts(on)?;
        }
        q.flush()
    }

    /// The top image's internal snapshots (none for formats without them).
    pub fn snapshots(&self) -> &[qcow2::Snapshot] {
        match self.top() {
            Layer::Qcow2(q) => q.snapshots(),
            Layer::Qcow(_) | Layer::Cow(_) | Layer::Raw(_) => &[],
        }
    }

    fn top_qcow2(&mut self, what: &str) -> Result<&mut Qcow2> {
        match self.split_top()?.0 {
            Layer::Qcow2(q) => Ok(q),
            other => Err(Error::new(
                ErrorKind::Unsupported,
                format!("{what} needs a qcow2 image, not {}", other.format()),
            )),
        }
    }

    /// Takes an internal snapshot of the top image; returns its id.
    pub fn snapshot_create(&mut self, name: &str) -> Result<String> {
        self.top_qcow2("a snapshot")?.snapshot_create(name)
    }

    /// Makes the snapshot with this id (or name) the current state.
    pub fn snapshot_apply(&mut self, id_or_name: &str) -> Result<()> {
        self.top_qcow2("a snapshot")?.snapshot_apply(id_or_name)
    }

    /// Deletes the snapshot with this id (or name).
    pub fn snapshot_delete(&mut self, id_or_name: &str) -> Result<()> {
        self.top_qcow2("a snapshot")?.snapshot_delete(id_or_name)
    }

    /// Makes every completed write durable. qcow2 metadata changed by writes is held
    /// in memory until then (as in QEMU); dropping the image writes it too, but only
    /// `flush` reports a failure.
    pub fn flush(&mut self) -> Result<()> {
        match self.split_top()?.0 {
            Layer::Qcow2(q) => q.flush(),
            Layer::Qcow(q) => q.flush(),
            Layer::Cow(c) => c.flush(),
            Layer::Raw(r) => r.flush(),
        }
    }

    /// What the range from `offset` (at most `len` bytes) is, as far as one answer
    /// covers it: QEMU's block status, descending the chain through unallocated ranges.
    pub fn block_status(&self, offset: u64, len: u64) -> Result<BlockStatus> {
        let mut len = len.min(self.size().saturating_sub(offset));
        if len == 0 {
            return Err(Error::new(
                ErrorKind::BadArgument,
                format!("offset {offset} is past the end of the image"),
            ));
        }
        let mut depth = 0;
        loop {
            let layer = &self.chain[depth].layer;
            let extent = layer.map(offset, len)?;
            let hide = layer.is_encrypted();
            let host = extent.mapping.host().filter(|_| !hide).map(|h| h.0);
            let (host_zeros, span) = match (extent.mapping, host) {
                (Mapping::Data { .. }, Some(h)) => layer.host_zeros(h, extent.len),
                _ => (false, extent.len),
            };
            let status = |present, zero, data, compressed, offset| BlockStatus {
                start: extent.start,
                len: span,
                depth,
                present,
                zero,
                data,
                compressed,
                offset,
            };
            return Ok(match extent.mapping {
                Mapping::Data { .. } => status(true, host_zeros, true, false, host),
                Mapping::Compressed { .. } => status(true, false, true, true, None),
                Mapping::Zero { .. } => status(true, true, false, false, host),
                Mapping::Unallocated { .. } => match self.chain.get(depth + 1) {
                    Some(below) if offset < below.layer.size() => {
                        len = extent.len.min(below.layer.size() - offset);
                        depth += 1;
                        continue;
                    }
                    _ => status(false, true, false, false, host),
                },
            });
        }
    }

    /// The whole disk as `qemu-img map` lists it: block status from start to end,
    /// adjacent ranges merged when every attribute agrees and host offsets continue.
    pub fn map(&self) -> Result<Vec<BlockStatus>> {
        let mut out: Vec<BlockStatus> = Vec::new();
        let mut offset = 0;
        while offset < self.size() {
            let s = self.block_status(offset, self.size() - offset)?;
            offset += s.len;
            if let Some(last) = out.last_mut() {
                if last.mergeable(&s) {
                    last.len += s.len;
                    continue;
                }
            }
            out.push(s);
        }
        Ok(out)
    }

    /// Whether the top image itself holds the range from `offset` (data, zeros or
    /// compressed, as opposed to deferring to its backing file), and for how many bytes.
    pub fn top_status(&self, offset: u64, len: u64) -> Result<(bool, u64)> {
        let extent = self.top().map(offset, len)?;
        Ok((
            !matches!(extent.mapping, Mapping::Unallocated { .. }),
            extent.len,
        ))
    }

    /// A `Read + Seek` view of the virtual disk.
    pub fn reader(&self) -> ImageReader<'_> {
        ImageReader {
            image: self,
            pos: 0,
        }
    }
}

/// As QEMU, before a qcow2 image with the dirty bit is written to: its refcounts may be
/// stale, so it is checked and repaired (which clears the bit) first.
fn repair_if_dirty(storage: &dyn Storage) -> Result<()> {
    use qcow2::header::incompat;
    let header = qcow2::Header::read(storage)?;
    let bits = header.incompatible_features();
    if bits & incompat::DIRTY == 0 {
        return Ok(());
    }
    let result = qcow2::check::check(
        storage,
        bits & incompat::DATA_FILE != 0,
        qcow2::check::Repair::All,
    )?;
    if result.corruptions > 0 || result.check_errors > 0 || result.failed.is_some() {
        return Err(Error::new(
            ErrorKind::Corrupt,
            format!(
                "Could not repair dirty image: {} errors remain",
                result.corruptions + result.check_errors
            ),
        ));
    }
    Ok(())
}

/// Writes zeros over a range a megabyte at a time through `write`.
fn write_zero_buffers(
    offset: u64,
    len: u64,
    mut write: impl FnMut(u64, &[u8]) -> Result<()>,
) -> Result<()> {
    let zeros = vec![0u8; len.min(1 << 20) as usize];
    let mut at = offset;
    while at < offset + len {
        let n = (offset + len - at).min(zeros.len() as u64) as usize;
        write(at, &zeros[..n])?;
        at += n as u64;
    }
    Ok(())
}

/// Reads guest bytes from `chain[0]`, falling through unallocated ranges to the layers
/// below it; zeros past the end of a layer and below the last one.
fn read_chain(chain: &[ChainEntry], offset: u64, buf: &mut [u8]) -> Result<()> {
    let Some((entry, below)) = chain.split_first() else {
        buf.fill(0);
        return Ok(());
    };
    let layer = &entry.layer;
    let inside = layer.size().saturating_sub(offset).min(buf.len() as u64) as usize;
    buf[inside..].fill(0);
    let mut done = 0;
    while done < inside {
        let at = offset + done as u64;
        let extent = layer.map(at, (inside - done) as u64)?;
        let part = &mut buf[done..done + extent.len as usize];
        match extent.mapping {
            Mapping::Zero { .. } => part.fill(0),
            Mapping::Unallocated { .. } => read_chain(below, at, part)?,
            Mapping::Data { .. } | Mapping::Compressed { .. } => {
                layer.read_mapped(&extent, at, part)?
            }
        }
        done += extent.len as usize;
    }
    Ok(())
}

/// A backing file name from a header, as a path: names that hold a NUL or name one of
/// QEMU's protocols (`nbd:`, `json:`, …) are refused by name, never opened as files;
/// a `file:` prefix is just a path.
pub fn check_backing_name(name: &str) -> Result<String> {
    const PROTOCOLS: [&str; 14] = [
        "json", "nbd", "http", "https", "ftp", "ftps", "ssh", "iscsi", "rbd", "gluster", "nfs",
        "vvfat", "null-co", "blkdebug",
    ];
    if name.is_empty() || name.contains('\0') {
        return Err(Error::new(
            ErrorKind::InvalidFormat,
            format!("invalid backing file name {name:?}"),
        ));
    }
    if let Some((proto, _)) = name.split_once(':') {
        if PROTOCOLS.contains(&proto) {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("backing file protocol '{proto}' is not supported (backing file {name:?})"),
            ));
        }
        if proto == "file" {
            return Ok(name["file:".len()..].to_string());
        }
    }
    Ok(name.to_string())
}

/// Where a backing file named `name` by the image at `image` is: relative names are
/// relative to the image's folder.
pub fn resolve_backing(image: &Path, name: &str) -> PathBuf {
    let name = Path::new(name);
    if name.is_absolute() {
        name.to_path_buf()
    } else {
        image.parent().unwrap_or(Path::new("")).join(name)
    }
}

/// Opens one file of an image (the image, a backing file, a data file) for reading or
/// writing, with QEMU's locks for that use; `force_share` is qemu-img's `-U`. A lock
/// held by another user is an [`ErrorKind::InUse`] error worded as qemu-img words it.
pub fn open_file(path: &Path, writable: bool, force_share: bool) -> Result<FileStorage> {
    let access = match (writable, force_share) {
        (true, _) => Access::Write,
        (false, true) => Access::ForceShare,
        (false, false) => Access::Read,
    };
    FileStorage::open_with(path, writable, access).map_err(|e| file_error(path, e))
}

/// An error opening the file at `path`, as qemu-img words it.
pub fn file_error(path: &Path, e: io::Error) -> Error {
    file_error_as(path, e, &format!("Could not open '{}'", path.display()))
}

/// An error opening or creating the file at `path`, after `what` ("Could not open
/// 'x'"); a lock held by another user is [`ErrorKind::InUse`], with qemu-img's hint.
fn file_error_as(path: &Path, e: io::Error, what: &str) -> Error {
    match crate::storage::lock::conflict_of(&e) {
        Some(conflict) => Error::new(
            ErrorKind::InUse,
            format!(
                "{what}: {conflict}\nIs another process using the image [{}]?",
                path.display()
            ),
        ),
        None => Error::io(what, e),
    }
}

/// Creates (or empties) the file at `path` for a new image. QEMU's write lock is taken
/// before anything is emptied, so a file in use is refused whole, as qemu-img refuses it
/// (naming only the file).
pub fn create_file(path: &Path) -> Result<FileStorage> {
    FileStorage::create(path).map_err(|e| {
        let what = match crate::storage::lock::conflict_of(&e) {
            Some(_) => path.display().to_string(),
            None => format!("Could not create '{}'", path.display()),
        };
        file_error_as(path, e, &what)
    })
}

/// Refuses to write `target` when it is a file one of `images` reads (an image of its
/// chain or a data file, by device and inode, whatever the names), before anything
/// is touched. Locks refuse most of these too, but not with `-U`, nor where a file
/// system has no locks.
pub fn refuse_overwrite(target: &Path, images: &[&Image]) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(target) else {
        return Ok(());
    };
    let id = (meta.dev(), meta.ino());
    for image in images {
        for entry in image.chain() {
            let files = std::iter::once(&entry.path).chain(entry.data_path.as_ref());
            for file in files {
                let same = std::fs::metadata(file).is_ok_and(|m| (m.dev(), m.ino()) == id);
                if same {
                    return Err(Error::new(
                        ErrorKind::BadArgument,
                        format!(
                            "'{}' is '{}', a file the input image uses: it would be overwritten while it is read",
                            target.display(),
                            file.display()
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

fn open_layer(
    path: &Path,
    format: Option<Format>,
    top: bool,
    options: &OpenOptions,
) -> Result<ChainEntry> {
    let writable = top && options.writable;
    if writable && format.is_none() {
        return Err(Error::new(
            ErrorKind::BadArgument,
            "a format must be given to open an image for writing (a probed format is never trusted for writing)",
        ));
    }
    if writable && options.force_share {
        return Err(Error::new(
            ErrorKind::BadArgument,
            "force-share=on can only be used with read-only images",
        ));
    }
    let storage = open_file(path, writable, options.force_share)?;
    let storage: Arc<dyn Storage> = Arc::new(storage);
    let (format, probed) = match format {
        Some(f) => (f, false),
        None => (
            probe(storage.as_ref()).map_err(|e| Error::io("probing the image format", e))?,
            true,
        ),
    };
    let mut data_path = None;
    let layer = match format {
        Format::Raw => Layer::Raw(Raw::open(storage)?),
        Format::Qcow2 => {
            if writable {
                repair_if_dirty(storage.as_ref())?;
            }
            let header = qcow2::Header::read(storage.as_ref())?;
            let data_file =
                if header.incompatible_features() & qcow2::header::incompat::DATA_FILE != 0 {
                    let named = header
                        .data_file()
                        .map(|n| resolve_backing(path, &String::from_utf8_lossy(n)));
                    let chosen = if top {
                        options.data_file.clone().or(named)
                    } else {
                        named
                    };
                    match chosen {
                        Some(p) if !options.metadata_only => {
                            let s = open_file(&p, writable, options.force_share)
                                .map_err(|e| e.context("Could not open data file"))?;
                            data_path = Some(p);
                            Some(Arc::new(s) as Arc<dyn Storage>)
                        }
                        _ => None,
                    }
                } else {
                    None
                };
            let qopts = Qcow2Options {
                key: options
                    .passphrase
                    .as_deref()
                    .map(LegacyAes::from_passphrase),
                data_file,
                l2_cache_bytes: options.l2_cache_bytes,
                snapshot: if top { options.snapshot.clone() } else { None },
                io: !options.metadata_only,
                writable: top && options.writable,
                barriers: options.barriers,
                for_check: top && options.for_check,
            };
            Layer::Qcow2(Box::new(Qcow2::open(storage, header, qopts)?))
        }
        Format::Qcow => {
            let header = qcow::Header::read(storage.as_ref())?;
            let key = options
                .passphrase
                .as_deref()
                .map(LegacyAes::from_passphrase);
            Layer::Qcow(Box::new(Qcow::open(
                storage,
                header,
                key,
                !options.metadata_only,
                writable,
            )?))
        }
        Format::Cow => {
            let header = cow::Header::read(storage.as_ref())?;
            Layer::Cow(Box::new(Cow::open(storage, header, writable)?))
        }
    };
    let mut warnings = Vec::new();
    if let Layer::Qcow2(q) = &layer {
        warnings.extend(q.warnings().iter().cloned());
    }
    if let Some(w) = cow_mtime_warning(path, &layer) {
        warnings.push(w);
    }
    Ok(ChainEntry {
        layer,
        path: path.to_path_buf(),
        data_path,
        probed,
        warnings,
    })
}

/// UML records the backing file's modification time in a cow header and complains when
/// it changed (the backing file may no longer be what the cow file was made over).
/// QEMU's layout does not keep it.
fn cow_mtime_warning(path: &Path, layer: &Layer) -> Option<String> {
    let Layer::Cow(c) = layer else { return None };
    let h = c.header();
    if matches!(h.fields, cow::header::Fields::Qemu(_)) || h.backing_file.is_empty() {
        return None;
    }
    let backing = resolve_backing(path, &String::from_utf8_lossy(&h.backing_file));
    let modified = std::fs::metadata(&backing).ok()?.modified().ok()?;
    let secs = modified
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs() as u32;
    (secs != h.mtime).then(|| {
        format!(
            "backing file '{}' was modified (mtime {secs}) since the cow file was made over it (mtime {})",
            backing.display(),
            h.mtime
        )
    })
}

/// `Read + Write + Seek` over a writable [`Image`], for `io::copy` into an image and
/// other consumers of std's traits. Writes past the end of the disk are refused (the
/// disk does not grow); `flush` flushes the image.
pub struct ImageWriter<'a> {
    image: &'a mut Image,
    pos: u64,
}

impl Image {
    /// A `Read + Write + Seek` view from the start of the disk.
    pub fn writer(&mut self) -> ImageWriter<'_> {
        ImageWriter {
            image: self,
            pos: 0,
        }
    }
}

impl Read for ImageWriter<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut reader = ImageReader {
            image: self.image,
            pos: self.pos,
        };
        let n = reader.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for ImageWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = self.image.size().saturating_sub(self.pos);
        if room == 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write past the end of the disk",
            ));
        }
        let n = room.min(buf.len() as u64) as usize;
        self.image.write_at(&buf[..n], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(self.image.flush()?)
    }
}

impl Seek for ImageWriter<'_> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let mut reader = ImageReader {
            image: self.image,
            pos: self.pos,
        };
        self.pos = reader.seek(pos)?;
        Ok(self.pos)
    }
}

/// `Read + Seek` over an [`Image`].
pub struct ImageReader<'a> {
    image: &'a Image,
    pos: u64,
}

impl Read for ImageReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.image.size().saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.image.read_at(&mut buf[..n], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for ImageReader<'_> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let target = match pos {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.image.size().checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = target
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.pos)
    }
}
