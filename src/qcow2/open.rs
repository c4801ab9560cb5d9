//! Opening one qcow2 file: QEMU's open-time checks in named steps (features, geometry,
//! what reading needs, the state chosen, the write side), then the layer.

use super::geometry::Geometry;
use super::header::Header;
use super::layer::{corrupt, Qcow2, View, Writer};
use super::snapshot::{self, Snapshot};
use crate::codec::{Compression, SectorCipher};
use crate::error::{Error, ErrorKind, Result};
use crate::format::qcow2::{autoclear, incompatible};
use crate::format::qcow2::{Qcow2Header, MAX_L1_BYTES};
use crate::l2cache::L2Cache;
use crate::storage::Storage;
use std::sync::{Arc, Mutex};

/// Which L1 table a layer reads through.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SnapshotRef {
    /// The snapshot with this ID.
    Id(String),
    /// The snapshot with this name.
    Name(String),
    /// The snapshot with this ID, or else the one with this name (qemu-img's bare `-l`).
    IdOrName(String),
}

/// QEMU's qcow2 cache options (`cache-size`, `l2-cache-size`, `refcount-cache-size`,
/// `l2-cache-entry-size`): they tune memory, never what is read, and are checked as
/// QEMU checks them when the image opens.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheSizes {
    /// Bytes for the L2 and refcount caches together.
    pub cache_size: Option<u64>,
    /// Bytes of L2 tables.
    pub l2_cache_size: Option<u64>,
    /// Bytes of refcount blocks.
    pub refcount_cache_size: Option<u64>,
    /// The unit the L2 cache loads (a power of two from 512 to the cluster size).
    pub l2_cache_entry_size: Option<u64>,
}

impl CacheSizes {
    /// The L2 cache bytes these sizes give an image of `cluster_size` (None: they
    /// leave the default), or QEMU's refusal.
    pub fn l2_bytes(&self, cluster_size: u64) -> Result<Option<u64>> {
        let bad = |message: String| Err(Error::new(ErrorKind::BadArgument, message));
        let (all, l2, refcount) = (
            self.cache_size,
            self.l2_cache_size,
            self.refcount_cache_size,
        );
        if let (Some(_), Some(_), Some(_)) = (all, l2, refcount) {
            return bad(
                "cache-size, l2-cache-size and refcount-cache-size may not be set at the same time"
                    .into(),
            );
        }
        if let (Some(all), Some(l2)) = (all, l2) {
            if l2 > all {
                return bad("l2-cache-size may not exceed cache-size".into());
            }
        }
        if let (Some(all), Some(refcount)) = (all, refcount) {
            if refcount > all {
                return bad("refcount-cache-size may not exceed cache-size".into());
            }
        }
        if let Some(entry) = self.l2_cache_entry_size {
            if !entry.is_power_of_two() || !(512..=cluster_size).contains(&entry) {
                return bad(format!(
                    "L2 cache entry size must be a power of two between 512 and the cluster size ({cluster_size})"
                ));
            }
        }
        Ok(l2.or(all.map(|all| all - refcount.unwrap_or(0).min(all))))
    }
}

/// What opening a qcow2 layer needs besides its file.
#[derive(Clone, Debug)]
pub struct Qcow2Options {
    /// The passphrase: the legacy AES key (crypt_method 1), or what unlocks a LUKS
    /// key slot (crypt_method 2).
    pub passphrase: Option<crate::Secret>,
    /// The external data file, for images that have one.
    pub data_file: Option<Arc<dyn Storage>>,
    /// Bytes of L2 tables to keep in memory.
    pub l2_cache_bytes: u64,
    /// QEMU's cache options, checked at open; a size given replaces `l2_cache_bytes`.
    pub caches: CacheSizes,
    /// Read a snapshot instead of the active state.
    pub snapshot: Option<SnapshotRef>,
    /// False to open for metadata only (info): no key or data file is needed.
    pub io: bool,
    /// Open for writing (the storage must be writable).
    pub writable: bool,
    /// Flush between dependent metadata updates (off only for new images, as qemu-img
    /// convert's targets).
    pub barriers: bool,
    /// Open as qemu-img check does (QEMU's BDRV_O_CHECK): an image without a refcount
    /// table opens, so that check can report on it.
    pub for_check: bool,
}

impl Default for Qcow2Options {
    fn default() -> Self {
        Qcow2Options {
            passphrase: None,
            data_file: None,
            l2_cache_bytes: 4 << 20,
            caches: CacheSizes::default(),
            snapshot: None,
            io: true,
            writable: false,
            barriers: true,
            for_check: false,
        }
    }
}

impl Qcow2 {
    /// Opens a layer whose header was read already, making QEMU's open-time checks.
    pub fn open(
        storage: Arc<dyn Storage>,
        mut header: Header,
        options: Qcow2Options,
    ) -> Result<Qcow2> {
        let cluster_bits = header.cluster_bits();
        let cluster_size = 1u64 << cluster_bits;
        let incompatible = header.incompatible_features();

        let compression = check_features(&header, options.for_check)?;
        let extended_l2 = incompatible & incompatible::EXTENDED_L2 != 0;
        let geometry = check_geometry(&header, extended_l2)?;

        let has_data_file = incompatible & incompatible::DATA_FILE != 0;
        if options.io {
            check_io_needs(&header, &options, has_data_file)?;
        }

        let mut warnings = Vec::new();
        if header.bitmaps()?.is_some() && header.autoclear_features() & autoclear::BITMAPS == 0 {
            warnings.push(
                "a program lacking bitmap support modified this file, so all bitmaps are now considered inconsistent"
                    .to_string(),
            );
        }
        // QEMU loads a consistent bitmap directory on every open and refuses an image
        // whose directory it cannot read.
        super::bitmaps::read_directory(storage.as_ref(), &header)?;

        let snapshots = snapshot::read_table(
            storage.as_ref(),
            header.common.snapshots_offset,
            header.common.nb_snapshots,
            header.common.size,
        )?;

        let (l1_offset, l1_size, size) =
            chosen_state(&header, &snapshots, options.snapshot.as_ref())?;
        let view = match options.snapshot {
            Some(_) => View::Snapshot { l1_offset, size },
            None => View::Active,
        };
        let l1 = read_l1(storage.as_ref(), l1_offset, l1_size)?;

        let writer = if options.writable {
            open_writer(storage.as_ref(), &mut header, options.snapshot.is_some())?
        } else {
            Writer::ReadOnly
        };

        let key = match header.common.crypt_method {
            1 => options
                .passphrase
                .as_ref()
                .map(|p| SectorCipher::legacy_aes(p.as_bytes())),
            2 if options.io => {
                let passphrase = options
                    .passphrase
                    .as_ref()
                    .map(|p| p.as_bytes())
                    .unwrap_or_default();
                Some(unlock_luks(storage.as_ref(), &header, passphrase)?)
            }
            _ => None,
        };
        let l2_bytes = options.caches.l2_bytes(cluster_size)?;
        let tables = (l2_bytes.unwrap_or(options.l2_cache_bytes) / cluster_size).max(2) as usize;
        Ok(Qcow2 {
            storage,
            data_file: if has_data_file {
                options.data_file
            } else {
                None
            },
            geometry,
            l1,
            l2_cache: Mutex::new(L2Cache::new(tables)),
            compression,
            key,
            decompressed: Default::default(),
            compressed_tail: None,
            combined: None,
            pending_frees: Vec::new(),
            preallocated: std::sync::OnceLock::new(),
            snapshots,
            warnings,
            view,
            writer,
            barriers: options.barriers,
            marked_dirty: false,
            held_bitmaps: None,
            header,
        })
    }
}

/// QEMU's wording for unknown incompatible bits: names from the image's own feature
/// table, then any bits it does not name.
fn feature_names(header: &Header, mut mask: u64) -> String {
    let mut names = Vec::new();
    for entry in header.feature_table() {
        if entry.feature_type == 0 && entry.bit < 64 && mask & (1 << entry.bit) != 0 {
            names.push(String::from_utf8_lossy(entry.name.until_nul()).into_owned());
            mask &= !(1 << entry.bit);
        }
    }
    if mask != 0 {
        names.push(format!("Unknown incompatible feature: {mask:x}"));
    }
    names.join(", ")
}

/// Reads an L1 table of `entries` entries, leaving out what lies past the end of the file
/// (those entries read as 0). `entries` × 8 must be at most 32 MiB.
fn read_l1(storage: &dyn Storage, offset: u64, entries: u64) -> Result<Vec<u64>> {
    if entries * 8 > MAX_L1_BYTES {
        return Err(Error::new(
            ErrorKind::InvalidFormat,
            "Active L1 table too large",
        ));
    }
    crate::tables::read_be64(storage, offset, entries, "L1 table")
}

/// QEMU's open-time checks of the feature bits and compression type: an unknown
/// incompatible feature, a missing refcount table (allowed when opening for check), a
/// compression bit that contradicts the type. Returns the compression in use.
fn check_features(header: &Header, for_check: bool) -> Result<Compression> {
    let incompatible = header.incompatible_features();
    let unknown = incompatible & !incompatible::KNOWN;
    if unknown != 0 {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "Unsupported qcow2 feature(s): {}",
                feature_names(header, unknown)
            ),
        ));
    }
    if header.common.refcount_table_clusters == 0 && !for_check {
        return Err(Error::new(
            ErrorKind::InvalidFormat,
            "Image does not contain a reference count table",
        ));
    }
    let compression_bit = incompatible & incompatible::COMPRESSION != 0;
    match (header.compression_type(), compression_bit) {
        (0, true) => {
            return Err(Error::new(
                ErrorKind::InvalidFormat,
                "qcow2: Compression type incompatible feature bit must not be set",
            ))
        }
        (t, false) if t != 0 => {
            return Err(Error::new(
                ErrorKind::InvalidFormat,
                "qcow2: Compression type incompatible feature bit must be set",
            ))
        }
        _ => {}
    }
    Compression::from_header(header.compression_type()).ok_or_else(|| {
        Error::new(
            ErrorKind::Unsupported,
            format!(
                "qcow2: unknown compression type: {}",
                header.compression_type()
            ),
        )
    })
}

/// The cluster geometry QEMU accepts: subclusters of at least 512 bytes, an L1 table
/// that covers every guest byte and fits QEMU's limit.
fn check_geometry(header: &Header, extended_l2: bool) -> Result<Geometry> {
    let cluster_bits = header.cluster_bits();
    let cluster_size = 1u64 << cluster_bits;
    if extended_l2 && cluster_bits < 14 {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!("Unsupported subcluster size: {}", cluster_size / 32),
        ));
    }
    let geometry = Geometry::new(cluster_bits, extended_l2);

    // Every guest byte must have an L1 entry.
    let l1_needed = header.common.size.div_ceil(geometry.l2_span());
    if l1_needed > i32::MAX as u64 {
        return Err(Error::new(ErrorKind::InvalidFormat, "Image is too big"));
    }
    if u64::from(header.common.l1_size) < l1_needed {
        return Err(Error::field(
            ErrorKind::InvalidFormat,
            "qcow2 header",
            "l1_size",
            Qcow2Header::L1_SIZE_AT,
            u64::from(header.common.l1_size),
            "L1 table is too small",
        ));
    }
    Ok(geometry)
}

/// What reading data needs that metadata does not: the data file, the passphrase.
fn check_io_needs(header: &Header, options: &Qcow2Options, has_data_file: bool) -> Result<()> {
    if has_data_file && options.data_file.is_none() {
        return Err(Error::new(
            ErrorKind::BadArgument,
            "'data-file' is required for this image",
        ));
    }
    if !has_data_file && header.autoclear_features() & autoclear::DATA_FILE_RAW != 0 {
        return Err(Error::new(
            ErrorKind::InvalidFormat,
            "data-file-raw requires a data file",
        ));
    }
    if header.common.crypt_method != 0 && options.passphrase.is_none() {
        return Err(Error::new(
            ErrorKind::BadArgument,
            "Parameter 'encrypt.key-secret' is required for cipher",
        ));
    }
    Ok(())
}

/// The LUKS header the crypto extension locates, unlocked with `passphrase`: data
/// sectors are numbered by host offset, as QEMU numbers them for LUKS in qcow2.
fn unlock_luks(storage: &dyn Storage, header: &Header, passphrase: &[u8]) -> Result<SectorCipher> {
    let ext = header.crypto()?.ok_or_else(|| {
        corrupt("LUKS encryption without a full disk encryption header extension".into())
    })?;
    let volume = crate::luks::LuksVolume::read(storage, ext.offset, ext.length)
        .map_err(|e| e.context(format_args!("LUKS header at {:#x}", ext.offset)))?;
    volume.unlock(storage, ext.offset, passphrase, true)
}

/// Where the state to read is: the active L1 table, or the chosen snapshot's (checked
/// before use). Returns (L1 offset, L1 entries, virtual size).
fn chosen_state(
    header: &Header,
    snapshots: &[Snapshot],
    want: Option<&SnapshotRef>,
) -> Result<(u64, u64, u64)> {
    let cluster_size = header.cluster_size();
    Ok(match want {
        None => (
            header.common.l1_table_offset,
            u64::from(header.common.l1_size),
            header.common.size,
        ),
        Some(want) => {
            let s = snapshots
                .iter()
                .find(|s| match want {
                    SnapshotRef::Id(id) | SnapshotRef::IdOrName(id) => &s.id == id,
                    SnapshotRef::Name(name) => &s.name == name,
                })
                .or_else(|| match want {
                    SnapshotRef::IdOrName(name) => snapshots.iter().find(|s| &s.name == name),
                    _ => None,
                })
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::BadArgument,
                        match want {
                            SnapshotRef::Id(id) => {
                                format!("Can't find snapshot with id '{id}'")
                            }
                            SnapshotRef::Name(n) => {
                                format!("Can't find snapshot with name '{n}'")
                            }
                            SnapshotRef::IdOrName(n) => {
                                format!("Can't find snapshot with id or name '{n}'")
                            }
                        },
                    )
                })?;
            if s.header.l1_table_offset % cluster_size != 0 {
                return Err(corrupt("Snapshot L1 table offset invalid".into()));
            }
            if u64::from(s.header.l1_size) * 8 > MAX_L1_BYTES {
                return Err(corrupt("Snapshot L1 table too large".into()));
            }
            (
                s.header.l1_table_offset,
                u64::from(s.header.l1_size),
                s.disk_size,
            )
        }
    })
}

/// The write side of a handle opening for writing: refused on a corrupt or dirty image
/// or a snapshot; stale autoclear bits cleared first, as QEMU clears them.
fn open_writer(storage: &dyn Storage, header: &mut Header, snapshot: bool) -> Result<Writer> {
    let incompatible = header.incompatible_features();
    if incompatible & incompatible::CORRUPT != 0 {
        return Err(Error::new(
            ErrorKind::Corrupt,
            "qcow2: Image is corrupt; cannot be opened read/write",
        ));
    }
    if incompatible & incompatible::DIRTY != 0 {
        // Opened for writing by `Image::open`, which repairs dirty images first.
        return Err(Error::new(
            ErrorKind::Corrupt,
            "qcow2: Image is dirty (refcounts may be stale); repair it with 'check -r all' first",
        ));
    }
    if snapshot {
        return Err(Error::new(
            ErrorKind::BadArgument,
            "a snapshot can only be opened read-only",
        ));
    }
    // Bits of features a writer must keep up to date: cowimg keeps the bitmaps (see
    // `bitmap_writer.rs`) and the raw data file, so the rest are cleared before
    // anything is written.
    let autoclear_now = header.autoclear_features();
    let keep = autoclear_now & (autoclear::DATA_FILE_RAW | autoclear::BITMAPS);
    if autoclear_now != keep {
        header.write_autoclear_features(storage, keep)?;
    }
    Ok(Writer::Open(super::refcount::Refcounts::load(
        storage,
        header.cluster_bits(),
        header.refcount_order(),
        header.common.refcount_table_offset,
        header.common.refcount_table_clusters,
    )?))
}
