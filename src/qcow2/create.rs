//! Creating a qcow2 image with qemu-img's options and checks.

use super::header::{Extension, Header};
use super::refcount::Refcounts;
use crate::codec::Compression;
use crate::error::{Error, ErrorKind, Result};
use crate::format::qcow2::{autoclear, compatible, incompatible};
use crate::format::qcow2::{
    ExtensionMagic, L1Entry, L2Entry, Qcow2Header, Qcow2HeaderCompression, Qcow2HeaderV3,
};
use crate::format::ByteArray;
use crate::storage::Storage;

/// qemu-img's `preallocation` option.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Preallocation {
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

/// What a new qcow2 image is to be.
#[derive(Clone, Debug)]
pub struct CreateOptions {
    /// Virtual size in bytes (rounded up to 512).
    pub size: u64,
    /// 2 ("0.10") or 3 ("1.1").
    pub version: u32,
    pub cluster_size: u64,
    pub refcount_bits: u32,
    pub backing_file: Option<String>,
    pub backing_format: Option<String>,
    /// Legacy AES (crypt_method 1); the passphrase is needed only for writing data.
    pub encrypt_aes: bool,
    pub preallocation: Preallocation,
    pub lazy_refcounts: bool,
    pub extended_l2: bool,
    pub compression: Compression,
    /// External data file name, stored in the header.
    pub data_file: Option<String>,
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
            encrypt_aes: false,
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
                    "Different refcount widths than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)",
                ));
            }
            if self.lazy_refcounts {
                return Err(bad("Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)"));
            }
            if self.extended_l2 {
                return Err(bad("Extended L2 entries are only supported with compatibility level 1.1 and above (use compat=1.1 or greater)"));
            }
            if self.compression != Compression::Deflate {
                return Err(bad("Compression type selection is only supported with compatibility level 1.1 and above (use compat=1.1 or greater)"));
            }
            if self.data_file.is_some() {
                return Err(bad(
                    "External data files are only supported with compatibility level 1.1 and above",
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
        if self.encrypt_aes && self.data_file.is_some() {
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
pub fn create(
    storage: &dyn Storage,
    data_storage: Option<&dyn Storage>,
    opts: &CreateOptions,
) -> Result<()> {
    opts.check()?;
    let io = |what: &'static str| move |e| Error::io(what, e);
    let size = opts.size.next_multiple_of(512);
    let cluster_bits = opts.cluster_size.trailing_zeros();
    let cs = opts.cluster_size;
    let l2_bits = cluster_bits - if opts.extended_l2 { 4 } else { 3 };
    let l1_size = size.div_ceil(1 << (cluster_bits + l2_bits));
    if l1_size * 8 > crate::format::qcow2::MAX_L1_BYTES {
        return Err(bad("Image size is too big for this cluster size"));
    }
    let order = opts.refcount_bits.trailing_zeros();

    // Cluster 0: header, extensions, backing name. Cluster 1: refcount table.
    // Cluster 2: the first refcount block. Then the L1 table.
    let mut incompatible = 0;
    let mut autoclear_bits = 0;
    if opts.compression == Compression::Zstd {
        incompatible |= incompatible::COMPRESSION;
    }
    if opts.extended_l2 {
        incompatible |= incompatible::EXTENDED_L2;
    }
    if opts.data_file.is_some() {
        incompatible |= incompatible::DATA_FILE;
    }
    if opts.data_file_raw {
        autoclear_bits |= autoclear::DATA_FILE_RAW;
    }
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
    if opts.version >= 3 && cs > 4096 {
        extensions.push(ext(
            ExtensionMagic::FeatureTable,
            &super::header::qemu_feature_table(),
        ));
    }
    let mut header = Header {
        common: Qcow2Header {
            magic: Qcow2Header::MAGIC_REQUIRED,
            version: opts.version,
            backing_file_offset: 0,
            backing_file_size: 0,
            cluster_bits,
            size,
            crypt_method: u32::from(opts.encrypt_aes),
            l1_size: l1_size as u32,
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
            refcount_order: order,
            header_length: 112,
        }),
        compression: (opts.version >= 3).then(|| Qcow2HeaderCompression {
            compression_type: if opts.compression == Compression::Zstd {
                1
            } else {
                0
            },
            padding: ByteArray::zeroed(),
        }),
        unknown_fields: Vec::new(),
        extensions,
        backing_file: opts.backing_file.as_ref().map(|b| b.as_bytes().to_vec()),
    };
    let cluster0 = header.to_cluster()?;
    storage
        .write_at(&cluster0, 0)
        .map_err(io("writing the header"))?;
    let mut reftable = vec![0u8; cs as usize];
    reftable[..8].copy_from_slice(&(2 * cs).to_be_bytes());
    storage
        .write_at(&reftable, cs)
        .map_err(io("writing the refcount table"))?;
    storage
        .write_at(&vec![0u8; cs as usize], 2 * cs)
        .map_err(io("writing the refcount block"))?;

    let mut refcounts = Refcounts::load(storage, cluster_bits, order, cs, 1)?;
    for c in 0..3 {
        refcounts.set(storage, c, 1)?;
    }
    // An empty image has no L1 table at all (offset 0), as qemu-img makes it.
    let l1_clusters = (l1_size * 8).div_ceil(cs);
    let l1_at = if l1_size == 0 {
        0
    } else {
        refcounts.alloc(storage, l1_clusters)?
    };
    let mut l1 = vec![0u64; l1_size as usize];

    // Preallocation: every L2 table, and every data cluster (in the data file, at the
    // guest offset, when there is one). `end` tracks the highest byte allocated.
    // The file ends where the L1 table does (not at its cluster's end), as qemu-img's.
    let mut end = l1_at + l1_size * 8;
    // A raw data file is the disk: every cluster is mapped to it from the start (QEMU
    // makes data-file-raw imply preallocation=metadata), or writes made to the data
    // file directly would not show through the image.
    if opts.preallocation != Preallocation::Off || opts.data_file_raw {
        let entries = 1u64 << l2_bits;
        let clusters = size.div_ceil(cs);
        let zeros = vec![0u8; cs as usize];
        let width = if opts.extended_l2 { 16 } else { 8 };
        for (l1_index, l1_entry) in l1.iter_mut().enumerate() {
            let l2_at = refcounts.alloc(storage, 1)?;
            end = end.max(l2_at + cs);
            let first = l1_index as u64 * entries;
            let n = entries.min(clusters - first);
            let mut table = vec![0u8; cs as usize];
            // The table's clusters as one run, as QEMU allocates them.
            let run = match opts.data_file {
                Some(_) => first * cs,
                None => {
                    let run = refcounts.alloc(storage, n)?;
                    end = end.max(run + n * cs);
                    run
                }
            };
            for i in 0..n {
                let host = run + i * cs;
                if opts.preallocation == Preallocation::Full {
                    data_storage
                        .unwrap_or(storage)
                        .write_at(&zeros, host)
                        .map_err(io("preallocating"))?;
                }
                let entry = L2Entry::new().with_host_offset(host).with_copied(true);
                let at = (i * width) as usize;
                table[at..at + 8].copy_from_slice(&entry.raw().to_be_bytes());
                if opts.extended_l2 {
                    table[at + 8..at + 16].copy_from_slice(&0xffff_ffffu64.to_be_bytes());
                }
            }
            storage
                .write_at(&table, l2_at)
                .map_err(io("writing an L2 table"))?;
            *l1_entry = L1Entry::new().with_l2_offset(l2_at).with_copied(true).raw();
        }
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
    if let Some(d) = data_storage {
        let want = if opts.data_file_raw || opts.preallocation != Preallocation::Off {
            size
        } else {
            0
        };
        if d.len().map_err(io("reading the data file size"))? < want {
            d.set_len(want).map_err(io("sizing the data file"))?;
        }
    }
    // The L1 offset goes in last: until then the image has no L1 table.
    header.write_l1_table(storage, l1_at, l1_size as u32)?;
    storage.flush().map_err(io("flushing the new image"))?;
    Ok(())
}
