//! Opening an image: the options, the chain of files followed from the top image down,
//! each file opened with QEMU's locks, backing file names checked and resolved, and the
//! guards against writing onto what is read.

use super::*;
use crate::luks::Luks;

/// What to do about backing files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backing {
    /// Open the chain as the images name it.
    #[default]
    Follow,
    /// Open no backing file: unallocated ranges read as zeros.
    Ignore,
    /// Open the backing file the top image names, as this format whatever the header
    /// says (QEMU's `backing.driver`); the layers below as they name theirs.
    Format(Format),
    /// Use this file (and format, else probed) as the top image's backing file.
    Override {
        /// The backing file to open instead.
        path: PathBuf,
        /// Its format; probed when not given.
        format: Option<Format>,
    },
}

/// How to open an image: read-only (never writing a byte) unless `writable`. Every file
/// is locked as QEMU locks it (see [`crate::storage::Access`]).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct OpenOptions {
    /// The top image's format; probed when None (reading only).
    pub format: Option<Format>,
    /// Which backing files to open (`Backing::Header`: the ones the headers name).
    pub backing: Backing,
    /// Passphrase for legacy AES images, anywhere in the chain.
    pub passphrase: Option<crate::Secret>,
    /// The top image's external data file, instead of the one its header names.
    pub data_file: Option<PathBuf>,
    /// Read this internal snapshot of the top image instead of its current state.
    pub snapshot: Option<SnapshotRef>,
    /// Bytes of L2 tables each qcow2 layer keeps in memory.
    pub l2_cache_bytes: u64,
    /// QEMU's qcow2 cache options for the top image, checked as QEMU checks them.
    pub qcow2_caches: crate::CacheSizes,
    /// The file named is itself an image of this format, whose guest disk holds the
    /// top image (QEMU's `file.driver=FORMAT`); None: a plain file.
    pub file_format: Option<Format>,
    /// A raw image's disk as a part of its file: QEMU raw's `offset` and `size` (None:
    /// to the file's end).
    pub raw_range: Option<(u64, Option<u64>)>,
    /// QEMU's `null-co` driver: no file is opened; the image is a raw disk of this
    /// size that reads as zeros and drops writes.
    pub null_size: Option<u64>,
    /// QEMU's `detect-zeroes`: writes of nothing but zeros become zero writes (None:
    /// off; Some(true): and may release the space, `unmap`).
    pub detect_zeroes: Option<bool>,
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
    /// Take QEMU's locks on every file (on by default); off (QEMU's `locking=off`)
    /// takes none, so no other opener is kept out or noticed.
    pub locking: bool,
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

    setters! {
        plain {
        /// Open the top image for writing.
        writable: bool;
        /// What to do about backing files.
        backing: Backing;
        /// Read whatever other processes do to the files (qemu-img's `-U`).
        force_share: bool;
        /// Take QEMU's locks (off: none at all, as QEMU's `locking=off`).
        locking: bool;
        /// Open for metadata only (what `info` needs): no key or data file required.
        metadata_only: bool;
        /// Flush between dependent metadata updates (on by default; off only for a new
        /// image nobody relies on yet).
        barriers: bool;
        /// Open as qemu-img check opens (a qcow2 image without a refcount table opens).
        for_check: bool;
        /// The longest chain accepted, the top image included.
        max_chain_length: usize;
        /// Bytes of L2 tables each qcow2 layer keeps in memory.
        l2_cache_bytes: u64;
        }
        optional {
        /// The top image's format (needed for writing; probed when None).
        format: Format;
        /// The passphrase of legacy AES images in the chain.
        passphrase: crate::Secret;
        /// Read this internal snapshot of the top image (None: the current state).
        snapshot: SnapshotRef;
        }
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
            qcow2_caches: Default::default(),
            file_format: None,
            raw_range: None,
            detect_zeroes: None,
            null_size: None,
            max_chain_length: 64,
            metadata_only: false,
            writable: false,
            barriers: true,
            force_share: false,
            locking: true,
            for_check: false,
        }
    }
}

impl Image {
    /// Opens `path` and, by `options.backing`, its backing chain.
    pub fn open(path: impl AsRef<Path>, options: &OpenOptions) -> Result<Image> {
        let path = path.as_ref();
        if let Some(inner) = options.file_format {
            return Image::open_nested(path, inner, options);
        }
        if let Some(size) = options.null_size {
            let storage = Arc::new(crate::storage::NullStorage::new(size));
            let options = OpenOptions {
                null_size: None,
                backing: Backing::Ignore,
                ..options.clone()
            };
            return Image::open_storage(storage, Format::Raw, &options);
        }
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
                    // qemu-img's words; they name the file, so no "Could not open" is
                    // put before them.
                    format!(
                        "Backing file '{}' creates an infinite loop.",
                        path.display()
                    ),
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
                        let format = match (&options.backing, top, format_name) {
                            (Backing::Format(stated), true, _) => Some(*stated),
                            (_, _, None) => None,
                            (_, _, Some(f)) => Some(Format::from_name(&f).ok_or_else(|| {
                                Error::new(ErrorKind::Unsupported, format!("Unknown driver '{f}'"))
                                    .context("Could not open backing file")
                            })?),
                        };
                        Some((resolve_backing(&path, &name), format, false))
                    }
                },
            };
            chain.push(entry);
        }
        let mut image = Image {
            chain,
            progress: None,
            window: None,
            options: options.clone(),
        };
        if let Some((offset, size)) = options.raw_range {
            image.select_raw_range(offset, size)?;
        }
        Ok(image)
    }

    /// Opens the image held in the guest disk of the `inner`-format image at `path`
    /// (which is opened for writing when the image is); backing files named by the
    /// image are not opened.
    fn open_nested(path: &Path, inner: Format, options: &OpenOptions) -> Result<Image> {
        let inner_options = OpenOptions {
            format: Some(inner),
            file_format: None,
            snapshot: None,
            data_file: None,
            qcow2_caches: Default::default(),
            ..options.clone()
        };
        let storage: Arc<dyn Storage> = Arc::new(super::nested::GuestDisk::new(Image::open(
            path,
            &inner_options,
        )?));
        let format = match options.format {
            Some(format) => format,
            None => {
                probe(storage.as_ref()).map_err(|e| Error::io("probing the image format", e))?
            }
        };
        let outer = OpenOptions {
            file_format: None,
            backing: Backing::Ignore,
            ..options.clone()
        };
        let mut image = Image::open_storage(storage, format, &outer)?;
        image.chain[0].path = path.to_path_buf();
        Ok(image)
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
            Format::Luks => Layer::Luks(Box::new(Luks::open(
                storage,
                options.passphrase.as_ref(),
                !options.metadata_only,
            )?)),
            Format::Qcow2 => {
                if options.writable {
                    qcow2::check::repair_if_dirty(storage.as_ref())?;
                }
                let header = qcow2::Header::read(storage.as_ref())?;
                let qopts = Qcow2Options {
                    passphrase: options.passphrase.clone(),
                    data_file: None,
                    l2_cache_bytes: options.l2_cache_bytes,
                    caches: options.qcow2_caches.clone(),
                    snapshot: options.snapshot.clone(),
                    io: !options.metadata_only,
                    writable: options.writable,
                    barriers: options.barriers,
                    for_check: options.for_check,
                };
                Layer::Qcow2(Box::new(Qcow2::open(storage, header, qopts)?))
            }
            Format::Qcow => {
                let header = qcow::Header::read(storage.as_ref())?;
                let key =
                    (options.passphrase.as_ref()).map(|p| SectorCipher::legacy_aes(p.as_bytes()));
                let io = !options.metadata_only;
                Layer::Qcow(Box::new(Qcow::open(
                    storage,
                    header,
                    key,
                    io,
                    options.writable,
                )?))
            }
            Format::Cow => {
                let header = cow::Header::read(storage.as_ref())?;
                Layer::Cow(Box::new(Cow::open(storage, header, options.writable)?))
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
            window: None,
            options: options.clone(),
        })
    }
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
        // Read remotely, as QEMU's curl driver reads http(s) backing files.
        if cfg!(feature = "remote") && crate::storage::is_remote(name) {
            return Ok(name.to_string());
        }
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
/// relative to the image's folder, or to its URL when it is remote.
pub fn resolve_backing(image: &Path, name: &str) -> PathBuf {
    #[cfg(feature = "remote")]
    if let Some(url) = crate::storage::remote_url(image) {
        if let Some(resolved) = crate::storage::remote::resolve_relative(url, name) {
            return PathBuf::from(resolved);
        }
    }
    let name = Path::new(name);
    if name.is_absolute() || name.to_str().is_some_and(crate::storage::is_remote) {
        name.to_path_buf()
    } else {
        image.parent().unwrap_or(Path::new("")).join(name)
    }
}

/// Opens one file of an image (the image, a backing file, a data file) for reading or
/// writing, with QEMU's locks for that use; `force_share` is qemu-img's `-U`. A lock
/// held by another user is an [`ErrorKind::InUse`] error worded as qemu-img words it.
/// A URL (`s3://…`, `https://…`) is opened remotely, for reading only.
pub fn open_file(path: &Path, writable: bool, force_share: bool) -> Result<Arc<dyn Storage>> {
    open_file_as(path, writable, Access::for_use(writable, force_share))
}

/// Opens one file of an image as [`open_file`] does, declaring `access` with QEMU's
/// locks.
fn open_file_as(path: &Path, writable: bool, access: Access) -> Result<Arc<dyn Storage>> {
    if let Some(url) = crate::storage::remote_url(path) {
        return open_remote(url, writable);
    }
    match FileStorage::open_with(path, writable, access) {
        Ok(file) => Ok(Arc::new(file)),
        Err(e) => Err(file_error(path, e)),
    }
}

#[cfg(feature = "remote")]
fn open_remote(url: &str, writable: bool) -> Result<Arc<dyn Storage>> {
    let shown = crate::storage::display_url(url);
    if writable {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!("'{shown}' is remote: remote images are read-only"),
        ));
    }
    match crate::storage::remote::RemoteStorage::open(url) {
        Ok(remote) => Ok(Arc::new(remote)),
        // The storage's message names the URL and what failed; callers add "Could not
        // open" once.
        Err(e) => Err(Error::new(ErrorKind::Io, e.to_string())),
    }
}

#[cfg(not(feature = "remote"))]
fn open_remote(url: &str, _writable: bool) -> Result<Arc<dyn Storage>> {
    Err(Error::new(
        ErrorKind::Unsupported,
        format!(
            "Could not open '{}': URLs are read with the `remote` feature, which this build lacks",
            crate::storage::display_url(url)
        ),
    ))
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
        // "'file' driver requires 'x' to be a regular file" names the file itself.
        None if e.kind() == io::ErrorKind::InvalidInput => {
            Error::new(ErrorKind::BadArgument, e.to_string())
        }
        None => Error::io(what, e),
    }
}

/// Creates (or empties) the file at `path` for a new image. QEMU's write lock is taken
/// before anything is emptied, so a file in use is refused whole, as qemu-img refuses it
/// (naming only the file).
pub fn create_locked_file(path: &Path) -> Result<FileStorage> {
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
    let Some(id) = file_id(target) else {
        return Ok(());
    };
    for image in images {
        for entry in image.chain() {
            let files = std::iter::once(&entry.path).chain(entry.data_path.as_ref());
            for file in files {
                if file_id(file) == Some(id) {
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

/// A file's device and inode: two names for one file have the same. None when it
/// cannot be looked at (it does not exist).
pub fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.dev(), meta.ino()))
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
    let access = match options.locking {
        true => Access::for_use(writable, options.force_share),
        false => Access::Unlocked,
    };
    let storage = open_file_as(path, writable, access)?;
    let (format, probed) = match format {
        Some(f) => (f, false),
        None => (
            probe(storage.as_ref()).map_err(|e| Error::io("probing the image format", e))?,
            true,
        ),
    };
    if top && format != Format::Qcow2 && options.qcow2_caches != Default::default() {
        return Err(Error::new(
            ErrorKind::BadArgument,
            format!("Block format '{format}' does not support qcow2's cache options"),
        ));
    }
    let mut data_path = None;
    let layer = match format {
        Format::Raw => Layer::Raw(Raw::open(storage)?),
        Format::Luks => Layer::Luks(Box::new(Luks::open(
            storage,
            options.passphrase.as_ref(),
            !options.metadata_only,
        )?)),
        Format::Qcow2 => {
            if writable {
                qcow2::check::repair_if_dirty(storage.as_ref())?;
            }
            let header = qcow2::Header::read(storage.as_ref())?;
            let data_file = if header.incompatible_features()
                & crate::format::qcow2::incompatible::DATA_FILE
                != 0
            {
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
                        let s = open_file_as(&p, writable, access)
                            .map_err(|e| e.context("Could not open data file"))?;
                        data_path = Some(p);
                        Some(s)
                    }
                    _ => None,
                }
            } else {
                None
            };
            let qopts = Qcow2Options {
                passphrase: options.passphrase.clone(),
                data_file,
                l2_cache_bytes: options.l2_cache_bytes,
                caches: match top {
                    true => options.qcow2_caches.clone(),
                    false => Default::default(),
                },
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
                .as_ref()
                .map(|p| SectorCipher::legacy_aes(p.as_bytes()));
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
    if let Layer::Cow(c) = &layer {
        let backing = String::from_utf8_lossy(&c.header().backing_file).into_owned();
        warnings.extend(c.backing_mtime_warning(&resolve_backing(path, &backing)));
    }
    Ok(ChainEntry {
        layer,
        path: path.to_path_buf(),
        data_path,
        probed,
        warnings,
    })
}
