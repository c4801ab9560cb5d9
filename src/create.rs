//! Creating an image file of any format, as qemu-img create does: the file (and a data
//! file) made, laid out by the format's own creator, and removed again if anything
//! fails; and `Image::create`, which then opens it for writing.

use crate::error::{Error, ErrorKind, Result};
use crate::image::{Backing, Image, OpenOptions};
use crate::luks::LuksVolume;
pub use crate::luks::{KeySlotChange, LuksOptions};
use crate::probe::Format;
use crate::qcow2::create::create;
pub use crate::qcow2::create::{Compat, CreateOptions, Encryption, Preallocation};
use crate::storage::Storage;
use std::path::Path;

/// Creates the image file (and its data file) at `path`. `cow_version` picks the UML
/// cow layout (3, as UML writes; or 2).
/// A failure leaves nothing behind that this call made: a file (or data file) that did
/// not exist before is removed again.
pub fn create_file(
    format: Format,
    path: &Path,
    opts: &CreateOptions,
    cow_version: u32,
) -> Result<()> {
    let data_path = match (format, &opts.data_file) {
        (Format::Qcow2, Some(name)) => Some(crate::image::resolve_backing(path, name)),
        _ => None,
    };
    let made: Vec<&Path> = std::iter::once(path)
        .chain(data_path.as_deref())
        .filter(|p| p.symlink_metadata().is_err())
        .collect();
    let result = create_files(format, path, data_path.as_deref(), opts, cow_version);
    if result.is_err() {
        for made in made {
            // The error that led here is the one to report.
            let _ = remove_created(made);
        }
    }
    result
}

/// Lays out a new qcow2 image in `storage` (and its external data file in
/// `data_storage`): for storage that is not a file of its own, such as memory or a
/// fault injector in tests.
pub fn layout_qcow2(
    storage: &dyn Storage,
    data_storage: Option<&dyn Storage>,
    opts: &CreateOptions,
) -> Result<()> {
    create(storage, data_storage, opts)
}

/// Removes a file this run created and could not finish (one already gone is fine).
pub fn remove_created(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn create_files(
    format: Format,
    path: &Path,
    data_path: Option<&Path>,
    opts: &CreateOptions,
    cow_version: u32,
) -> Result<()> {
    // Checked before anything is made.
    let cow_backing = match (format, opts.backing_file.as_deref()) {
        (Format::Cow, None) => {
            return Err(Error::new(
                ErrorKind::BadArgument,
                "a cow file needs a backing file (-b)",
            ))
        }
        (_, backing) => backing.unwrap_or_default(),
    };
    let storage = crate::image::create_locked_file(path)?;
    match format {
        Format::Qcow2 => {
            let data = data_path
                .map(|p| {
                    crate::image::create_locked_file(p)
                        .map_err(|e| e.context("Could not create data file"))
                })
                .transpose()?;
            create(&storage, data.as_ref().map(|d| d as &dyn Storage), opts)
        }
        Format::Raw => {
            // Whole 512-byte sectors, as QEMU's file driver creates it.
            let size = opts.size.next_multiple_of(512);
            storage
                .set_len(size)
                .map_err(|e| Error::io("sizing the image", e))?;
            preallocate_raw(&storage, size, opts.preallocation)
        }
        Format::Cow => {
            let backing = cow_backing;
            let backing_path = crate::image::resolve_backing(path, backing);
            let mtime = std::fs::metadata(&backing_path)
                .and_then(|m| m.modified())
                .map(|t| {
                    t.duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_secs() as u32
                })
                .map_err(|e| {
                    Error::io(
                        format!("Could not open backing file '{}'", backing_path.display()),
                        e,
                    )
                })?;
            let version = match cow_version {
                2 => crate::cow::create::CowVersion::V2,
                3 => crate::cow::create::CowVersion::V3,
                other => {
                    return Err(Error::new(
                        ErrorKind::BadArgument,
                        format!("cow_version={other}: 2 or 3"),
                    ))
                }
            };
            crate::cow::create::create(&storage, opts.size, backing, mtime, version)
        }
        Format::Luks => {
            refuse_options(opts, "luks", true)?;
            let Encryption::Luks(luks) = &opts.encryption else {
                return Err(Error::new(
                    ErrorKind::BadArgument,
                    "Parameter 'key-secret' is required for cipher",
                ));
            };
            let (volume, _) = LuksVolume::format(&storage, 0, luks, false)?;
            storage
                .set_len(volume.payload_offset() + opts.size.next_multiple_of(512))
                .map_err(|e| Error::io("sizing the image", e))
        }
        Format::Qcow => {
            refuse_options(opts, "qcow", false)?;
            crate::qcow::create::create(
                &storage,
                opts.size,
                opts.backing_file.as_deref(),
                match opts.encryption {
                    Encryption::None => false,
                    Encryption::Aes => true,
                    Encryption::Luks(_) => {
                        return Err(Error::new(
                            ErrorKind::BadArgument,
                            "Unsupported encryption format 'luks' for format qcow",
                        ))
                    }
                },
            )
        }
    }
}

/// Allocates a new raw file's `size` bytes as `mode` asks: `falloc` reserves the
/// blocks (they read as zeros), `full` writes the zeros; `metadata` has no meaning
/// for raw and is refused in QEMU's words.
fn preallocate_raw(storage: &dyn Storage, size: u64, mode: Preallocation) -> Result<()> {
    let failed = |e| Error::io("preallocating the image", e);
    match mode {
        Preallocation::Off => crate::raw::allocate_first_block(storage, size),
        Preallocation::Metadata => Err(Error::new(
            ErrorKind::BadArgument,
            "Unsupported preallocation mode: metadata",
        )),
        Preallocation::Falloc if storage.zero_range(0, size).map_err(failed)? => Ok(()),
        Preallocation::Falloc | Preallocation::Full => {
            crate::image::write_zero_buffers(0, size, |at, zeros| {
                storage.write_at(zeros, at).map_err(failed)
            })
        }
    }
}

/// Refuses the qcow2 options a simpler format has no place for, naming the first
/// one set (qcow takes a size, a backing file and legacy encryption; luks a size and
/// its encryption options).
fn refuse_options(opts: &CreateOptions, format: &str, no_backing: bool) -> Result<()> {
    let defaults = CreateOptions::default();
    let refused = [
        ("compat", opts.version != defaults.version),
        ("cluster_size", opts.cluster_size != defaults.cluster_size),
        (
            "refcount_bits",
            opts.refcount_bits != defaults.refcount_bits,
        ),
        (
            "preallocation",
            opts.preallocation != defaults.preallocation,
        ),
        ("lazy_refcounts", opts.lazy_refcounts),
        ("extended_l2", opts.extended_l2),
        ("compression_type", opts.compression != defaults.compression),
        ("data_file", opts.data_file.is_some()),
        ("backing_file", no_backing && opts.backing_file.is_some()),
    ];
    if let Some((name, _)) = refused.iter().find(|(_, set)| *set) {
        return Err(Error::new(
            ErrorKind::BadArgument,
            format!("Invalid parameter '{name}' for format {format}"),
        ));
    }
    Ok(())
}

/// Whether two names are one file (one device and inode), or one name.
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (crate::image::file_id(a), crate::image::file_id(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

impl Image {
    /// Creates a new image at `path` (qcow2, qcow, UML cow version 3, raw or luks) and opens
    /// it for writing, its backing chain below it.
    ///
    /// ```no_run
    /// use cowimg::CreateOptions;
    /// use cowimg::{Format, Image};
    ///
    /// let options = CreateOptions::new(1 << 30);
    /// let mut image = Image::create("new.qcow2", Format::Qcow2, &options)?;
    /// image.write_at(b"hello", 0)?;
    /// image.flush()?;
    /// # Ok::<(), cowimg::Error>(())
    /// ```
    pub fn create(
        path: impl AsRef<Path>,
        format: Format,
        options: &CreateOptions,
    ) -> Result<Image> {
        let path = path.as_ref();
        create_file(format, path, options, 3)?;
        Image::open(
            path,
            &OpenOptions {
                format: Some(format),
                backing: Backing::Follow,
                writable: true,
                // A LUKS image opens with the passphrase it was made with.
                passphrase: match &options.encryption {
                    Encryption::Luks(luks) => Some(luks.passphrase.clone()),
                    _ => None,
                },
                ..OpenOptions::default()
            },
        )
    }
}
