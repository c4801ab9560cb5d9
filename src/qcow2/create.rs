//! Creating a qcow2 image with qemu-img's options and checks.

use super::entry::ClusterEntry;
use super::geometry::Geometry;
use super::header::{Extension, Header};
use super::refcount::Refcounts;
use super::write::ALL_SUBCLUSTERS;
use crate::codec::Compression;
use crate::error::{Error, ErrorKind, Result};
use crate::format::qcow2::{autoclear, compatible, incompatible};
use crate::format::qcow2::{
    CryptoExtension, ExtensionMagic, L1Entry, Qcow2Header, Qcow2HeaderCompression, Qcow2HeaderV3,
};
use crate::format::ByteArray;
use crate::format::Layout;
use crate::luks::{LuksOptions, LuksVolume};
use crate::storage::Storage;

/// qemu-img's `preallocation` option.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Preallocation {
    /// Nothing allocated beyond the metadata a new image needs.
    #[default]
    Off,
    /// L2 tables and data clusters allocated; the data reads as zeros (sparse file).
    Metadata,
    /// As metadata, with the file's length covering everything.
    Falloc,
    /// As metadata, with zeros written to every data cluster.
    Full,
}

impl Preallocation {
    /// The mode qemu-img names `name` (off, metadata, falloc, full).
    pub fn from_name(name: &str) -> Option<Preallocation> {
        Some(match name {
            "off" => Preallocation::Off,
            "metadata" => Preallocation::Metadata,
            "falloc" => Preallocation::Falloc,
            "full" => Preallocation::Full,
            _ => return None,
        })
    }
}

/// qemu-img's `compat` option: which qcow2 version an image is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Compat {
    /// "0.10": version 2, what QEMU before 1.1 reads.
    V0_10,
    /// "1.1": version 3 (zero clusters, feature bits, lazy refcounts, extended L2).
    V1_1,
}

impl Compat {
    /// The level qemu-img names `name` ("0.10" or "v2", "1.1" or "v3").
    pub fn from_name(name: &str) -> Option<Compat> {
        match name {
            "0.10" | "v2" => Some(Compat::V0_10),
            "1.1" | "v3" => Some(Compat::V1_1),
            _ => None,
        }
    }

    /// The header version: 2 or 3.
    pub fn version(self) -> u32 {
        match self {
            Compat::V0_10 => 2,
            Compat::V1_1 => 3,
        }
    }
}

/// How a new image's data is encrypted: qemu-img's `encrypt.format`.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub enum Encryption {
    /// Not encrypted.
    #[default]
    None,
    /// Legacy AES (crypt_method 1): the passphrase is needed only for writing data.
    Aes,
    /// LUKS1 (crypt_method 2 in qcow2; the whole of a raw `luks` volume).
    Luks(LuksOptions),
}

impl Encryption {
    /// Whether data is encrypted at all.
    pub fn is_some(&self) -> bool {
        !matches!(self, Encryption::None)
    }

    /// The qcow2 header's crypt_method.
    fn crypt_method(&self) -> u32 {
        match self {
            Encryption::None => 0,
            Encryption::Aes => 1,
            Encryption::Luks(_) => 2,
        }
    }
}

/// What a new image is to be (qcow2 uses every option; the other formats the size and
/// backing file). Built like [`OpenOptions`](crate::OpenOptions):
/// `CreateOptions::new(1 << 30).cluster_size(4096).lazy_refcounts(true)`.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CreateOptions {
    /// Virtual size in bytes (rounded up to 512).
    pub size: u64,
    /// 2 ("0.10") or 3 ("1.1").
    pub version: u32,
    /// Bytes per cluster: a power of two from 512 to 2 MiB.
    pub cluster_size: u64,
    /// Width of a reference count: 1 to 64 bits, a power of two.
    pub refcount_bits: u32,
    /// The backing file to name in the header.
    pub backing_file: Option<String>,
    /// Its format, named in the header (required with a backing file, as QEMU asks).
    /// A name rather than a [`Format`](crate::Format): QEMU stores any driver's name
    /// here, and an image may name one cowimg cannot open.
    pub backing_format: Option<String>,
    /// How data is encrypted.
    pub encryption: Encryption,
    /// How much to allocate up front.
    pub preallocation: Preallocation,
    /// Defer refcount updates (version 3 only).
    pub lazy_refcounts: bool,
    /// 128-bit L2 entries with 32 subclusters (version 3 only).
    pub extended_l2: bool,
    /// How clusters written compressed are compressed.
    pub compression: Compression,
    /// External data file name, stored in the header.
    pub data_file: Option<String>,
    /// The data file is a raw image of the guest disk (with `data_file`).
    pub data_file_raw: bool,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            size: 0,
            version: 3,
            cluster_size: 65536,
            refcount_bits: 16,
            backing_file: None,
            backing_format: None,
            encryption: Encryption::None,
            preallocation: Preallocation::Off,
            lazy_refcounts: false,
            extended_l2: false,
            compression: Compression::Deflate,
            data_file: None,
            data_file_raw: false,
        }
    }
}

fn bad(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::BadArgument, message)
}

impl CreateOptions {
    /// The defaults (qcow2 version 3, 64 KiB clusters, 16-bit refcounts, nothing
    /// preallocated) for a disk of `size` bytes.
    pub fn new(size: u64) -> CreateOptions {
        CreateOptions {
            size,
            ..CreateOptions::default()
        }
    }

    setters! {
        plain {
        /// Virtual size in bytes (rounded up to 512).
        size: u64;
        /// Bytes per cluster: a power of two from 512 to 2 MiB.
        cluster_size: u64;
        /// Width of a reference count: 1 to 64 bits, a power of two.
        refcount_bits: u32;
        /// How data is encrypted.
        encryption: Encryption;
        /// How much to allocate up front.
        preallocation: Preallocation;
        /// Defer refcount updates (version 3 only).
        lazy_refcounts: bool;
        /// 128-bit L2 entries with 32 subclusters (version 3 only).
        extended_l2: bool;
        /// How clusters written compressed are compressed.
        compression: Compression;
        /// The data file is a raw image of the guest disk (with `data_file`).
        data_file_raw: bool;
        }
        optional {
        /// The backing file to name in the header.
        backing_file: String;
        /// Its format's name.
        backing_format: String;
        /// External data file name, stored in the header.
        data_file: String;
        }
    }

    /// The qcow2 compatibility level: 0.10 (version 2) or 1.1 (version 3).
    pub fn compat(mut self, compat: Compat) -> Self {
        self.version = compat.version();
        self
    }

    /// qemu-img's refusals, in its words.
    pub fn check(&self) -> Result<()> {
        let cs = self.cluster_size;
        if !cs.is_power_of_two() || !(512..=2 << 20).contains(&cs) {
            return Err(bad(
                "Cluster size must be a power of two between 512 and 2048k",
            ));
        }
        if !self.refcount_bits.is_power_of_two() || self.refcount_bits > 64 {
            return Err(bad(
                "Refcount width must be a power of two and may not exceed 64 bits",
            ));
        }
        if self.version == 2 {
            if self.refcount_bits != 16 {
                return Err(bad(
                    "Different refcount widths than 16 bits require compatibility level 1.1 or above (use version=v3 or greater)",
                ));
            }
            if self.lazy_refcounts {
                return Err(bad("Lazy refcounts only supported with compatibility level 1.1 and above (use version=v3 or greater)"));
            }
            if self.extended_l2 {
                return Err(bad("Extended L2 entries are only supported with compatibility level 1.1 and above (use version=v3 or greater)"));
            }
            if self.compression != Compression::Deflate {
                return Err(bad("Non-zlib compression type is only supported with compatibility level 1.1 and above (use version=v3 or greater)"));
            }
            if self.data_file.is_some() {
                return Err(bad(
                    "External data files are only supported with compatibility level 1.1 and above (use version=v3 or greater)",
                ));
            }
        } else if self.version != 3 {
            return Err(bad(format!(
                "Invalid compatibility level: qcow2 version {}",
                self.version
            )));
        }
        if self.extended_l2 && cs < 16384 {
            return Err(bad(
                "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes",
            ));
        }
        if self.backing_format.is_some() && self.backing_file.is_none() {
            return Err(bad("Backing format cannot be used without backing file"));
        }
        if self.data_file_raw && self.data_file.is_none() {
            return Err(bad("data-file-raw requires data-file"));
        }
        if self.data_file.is_some() && self.backing_file.is_some() && self.data_file_raw {
            return Err(bad("Backing file and preallocation can only be used at the same time if data-file-raw is off"));
        }
        if self.backing_file.is_some() && self.preallocation != Preallocation::Off {
            return Err(bad("Backing file and preallocation can only be used at the same time if data-file-raw is off"));
        }
        if let Encryption::Luks(luks) = &self.encryption {
            luks.resolve()?;
            if self.preallocation != Preallocation::Off {
                // QEMU allows it and then reads the unwritten clusters as noise.
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    "preallocation with LUKS encryption is not supported: unwritten clusters would read as noise",
                ));
            }
        }
        if self.encryption.is_some() && self.data_file.is_some() {
            return Err(bad(
                "Encryption is not supported with an external data file",
            ));
        }
        if let Some(f) = &self.backing_format {
            if f.len() > 15 {
                return Err(bad(format!("Backing format name '{f}' is too long")));
            }
        }
        if self
            .backing_file
            .as_ref()
            .is_some_and(|b| b.len() > crate::format::qcow2::MAX_BACKING_NAME_LEN as usize)
        {
            return Err(bad("Backing file name too long"));
        }
        Ok(())
    }
}

/// Writes a new, empty qcow2 image into `storage` (which should be empty).
/// `data_storage` is the external data file, when there is one and it is to be sized.
///
/// Cluster 0 holds the header, extensions and backing name; cluster 1 the refcount
/// table; cluster 2 the first refcount block; then the L1 table (and, preallocated,
/// every L2 table and data cluster). The L1 offset goes into the header last: until
/// then the image has no L1 table.
pub fn create(
    storage: &dyn Storage,
    data_storage: Option<&dyn Storage>,
    opts: &CreateOptions,
) -> Result<()> {
    opts.check()?;
    let size = opts.size.next_multiple_of(512);
    let geometry = Geometry::new(opts.cluster_size.trailing_zeros(), opts.extended_l2);
    let cs = geometry.cluster_size();
    let l1_size = size.div_ceil(geometry.l2_span());
    if l1_size * 8 > crate::format::qcow2::MAX_L1_BYTES {
        return Err(bad(
            "The image size is too large for file format 'qcow2' (try using a larger cluster size)",
        ));
    }
    let order = opts.refcount_bits.trailing_zeros();

    let mut header = new_header(opts, geometry, size, l1_size as u32)?;
    storage
        .write_at(&header.to_cluster()?, 0)
        .map_err(io("writing the header"))?;
    let mut reftable = vec![0u8; cs as usize];
    reftable[..8].copy_from_slice(&(2 * cs).to_be_bytes());
    storage
        .write_at(&reftable, cs)
        .map_err(io("writing the refcount table"))?;
    storage
        .write_at(&vec![0u8; cs as usize], 2 * cs)
        .map_err(io("writing the refcount block"))?;

    let mut refcounts = Refcounts::load(storage, geometry.cluster_bits, order, cs, 1)?;
    for c in 0..3 {
        refcounts.set(storage, c, 1)?;
    }
    // An empty image has no L1 table at all (offset 0), as qemu-img makes it.
    let l1_at = if l1_size == 0 {
        0
    } else {
        refcounts.alloc(storage, (l1_size * 8).div_ceil(cs))?
    };
    let mut l1 = vec![0u64; l1_size as usize];

    // `end` tracks the highest byte allocated. The file ends where the L1 table does
    // (not at its cluster's end), as qemu-img's.
    let mut end = l1_at + l1_size * 8;
    if let Encryption::Luks(luks) = &opts.encryption {
        end = end.max(add_luks_header(storage, &mut header, &mut refcounts, luks)?);
    }
    // A raw data file is the disk: every cluster is mapped to it from the start (QEMU
    // makes data-file-raw imply preallocation=metadata), or writes made to the data
    // file directly would not show through the image.
    if opts.preallocation != Preallocation::Off || opts.data_file_raw {
        let place = Placement {
            storage,
            data_storage,
            opts,
            geometry,
            size,
        };
        end = end.max(place.preallocate(&mut refcounts, &mut l1)?);
    }
    if !l1.is_empty() {
        storage
            .write_at(&crate::tables::to_be_bytes(&l1), l1_at)
            .map_err(io("writing the L1 table"))?;
    }
    // Every allocated cluster lies inside the file (data clusters read as zeros).
    if storage.len().map_err(io("reading the file size"))? < end {
        storage.set_len(end).map_err(io("sizing the image"))?;
    }
    // The data file covers the whole disk, as QEMU sizes it (sparse unless
    // preallocated).
    if let Some(d) = data_storage {
        if d.len().map_err(io("reading the data file size"))? < size {
            d.set_len(size).map_err(io("sizing the data file"))?;
        }
    }
    header.write_l1_table(storage, l1_at, l1_size as u32)?;
    storage.flush().map_err(io("flushing the new image"))?;
    Ok(())
}

/// Allocates clusters for a new LUKS volume (header and all eight slots' key
/// material, as QEMU sizes it), writes the volume there, and rewrites the header
/// cluster with the extension that locates it. Returns where the clusters end.
fn add_luks_header(
    storage: &dyn Storage,
    header: &mut Header,
    refcounts: &mut Refcounts,
    luks: &LuksOptions,
) -> Result<u64> {
    let cs = 1u64 << header.cluster_bits();
    let (spec, _) = luks.resolve()?;
    let length = crate::luks::area_len(spec.key_len());
    let clusters = length.div_ceil(cs);
    let offset = refcounts.alloc(storage, clusters)?;
    LuksVolume::format(storage, offset, luks, true)?;
    // Before the feature table, where QEMU writes it.
    let table = ExtensionMagic::FeatureTable.value();
    let at = (header.extensions.iter())
        .position(|e| e.magic == table)
        .unwrap_or(header.extensions.len());
    let crypto = Extension {
        magic: ExtensionMagic::FullDiskEncryption.value(),
        offset: 0,
        data: CryptoExtension { offset, length }.to_bytes(),
    };
    header.extensions.insert(at, crypto);
    storage
        .write_at(&header.to_cluster()?, 0)
        .map_err(io("writing the header"))?;
    Ok(offset + clusters * cs)
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> Error {
    move |e| Error::io(what, e)
}

/// The header of a new image (its L1 table offset still 0).
fn new_header(opts: &CreateOptions, geometry: Geometry, size: u64, l1_size: u32) -> Result<Header> {
    let zstd = opts.compression == Compression::Zstd;
    let mut incompatible = 0;
    if zstd {
        incompatible |= incompatible::COMPRESSION;
    }
    if opts.extended_l2 {
        incompatible |= incompatible::EXTENDED_L2;
    }
    if opts.data_file.is_some() {
        incompatible |= incompatible::DATA_FILE;
    }
    let autoclear_bits = if opts.data_file_raw {
        autoclear::DATA_FILE_RAW
    } else {
        0
    };
    let mut extensions = Vec::new();
    let ext = |magic: ExtensionMagic, data: &[u8]| Extension {
        magic: magic.value(),
        offset: 0,
        data: data.to_vec(),
    };
    if let Some(f) = &opts.backing_format {
        extensions.push(ext(ExtensionMagic::BackingFormat, f.as_bytes()));
    }
    if let Some(d) = &opts.data_file {
        extensions.push(ext(ExtensionMagic::DataFile, d.as_bytes()));
    }
    // Like qemu-img, the feature name table only where the header cluster has room.
    let cs = geometry.cluster_size();
    if opts.version >= 3 && cs > 4096 {
        extensions.push(ext(
            ExtensionMagic::FeatureTable,
            &super::header::qemu_feature_table(),
        ));
    }
    Ok(Header {
        common: Qcow2Header {
            magic: Qcow2Header::MAGIC_REQUIRED,
            version: opts.version,
            backing_file_offset: 0,
            backing_file_size: 0,
            cluster_bits: geometry.cluster_bits,
            size,
            crypt_method: opts.encryption.crypt_method(),
            l1_size,
            l1_table_offset: 0,
            refcount_table_offset: cs,
            refcount_table_clusters: 1,
            nb_snapshots: 0,
            snapshots_offset: 0,
        },
        v3: (opts.version >= 3).then_some(Qcow2HeaderV3 {
            incompatible_features: incompatible,
            compatible_features: if opts.lazy_refcounts {
                compatible::LAZY_REFCOUNTS
            } else {
                0
            },
            autoclear_features: autoclear_bits,
            refcount_order: opts.refcount_bits.trailing_zeros(),
            header_length: 112,
        }),
        compression: (opts.version >= 3).then(|| Qcow2HeaderCompression {
            compression_type: u8::from(zstd),
            padding: ByteArray::zeroed(),
        }),
        unknown_fields: Vec::new(),
        extensions,
        backing_file: opts.backing_file.as_ref().map(|b| b.as_bytes().to_vec()),
    })
}

/// Where a preallocated image's clusters go.
struct Placement<'a> {
    storage: &'a dyn Storage,
    data_storage: Option<&'a dyn Storage>,
    opts: &'a CreateOptions,
    geometry: Geometry,
    size: u64,
}

impl Placement<'_> {
    /// Allocates every L2 table and every data cluster (in the data file, at the guest
    /// offset, when there is one) and fills `l1`. Returns the highest byte allocated.
    fn preallocate(&self, refcounts: &mut Refcounts, l1: &mut [u64]) -> Result<u64> {
        let (storage, g) = (self.storage, self.geometry);
        let cs = g.cluster_size();
        let entries = g.l2_entries();
        let clusters = self.size.div_ceil(cs);
        let zeros = vec![0u8; cs as usize];
        let width = g.entry_words() * 8;
        let mut end = 0;
        for (l1_index, l1_entry) in l1.iter_mut().enumerate() {
            let l2_at = refcounts.alloc(storage, 1)?;
            end = end.max(l2_at + cs);
            let first = l1_index as u64 * entries;
            let n = entries.min(clusters - first);
            let mut table = vec![0u8; cs as usize];
            // The table's clusters as one run, as QEMU allocates them.
            let run = match self.opts.data_file {
                Some(_) => first * cs,
                None => {
                    let run = refcounts.alloc(storage, n)?;
                    end = end.max(run + n * cs);
                    run
                }
            };
            // falloc: the run's blocks reserved in the file (they read as zeros).
            if self.opts.preallocation == Preallocation::Falloc {
                (self.data_storage.unwrap_or(storage))
                    .zero_range(run, n * cs)
                    .map_err(io("preallocating"))?;
            }
            for i in 0..n {
                let host = run + i * cs;
                if self.opts.preallocation == Preallocation::Full {
                    self.data_storage
                        .unwrap_or(storage)
                        .write_at(&zeros, host)
                        .map_err(io("preallocating"))?;
                }
                let at = (i * width) as usize;
                table[at..at + 8].copy_from_slice(&ClusterEntry::owned_data(host).to_be_bytes());
                if g.extended_l2 {
                    table[at + 8..at + 16].copy_from_slice(&ALL_SUBCLUSTERS.to_be_bytes());
                }
            }
            storage
                .write_at(&table, l2_at)
                .map_err(io("writing an L2 table"))?;
            *l1_entry = L1Entry::new().with_l2_offset(l2_at).with_copied(true).raw();
        }
        Ok(end)
    }
}
