//! Edits of a qcow2 image beyond writing data: header rewrites (backing file, compat
//! level, lazy refcounts) and emptying the image (for commit).

use super::entry::ClusterEntry;
use super::header::Header;
use super::layer::Qcow2;
use super::write::Below;
use crate::error::{Error, ErrorKind, Result};
use crate::format::qcow2::SnapshotExtraData;
use crate::format::qcow2::{compatible, incompatible};
use crate::format::qcow2::{L1Entry, L2Entry, Qcow2HeaderCompression, Qcow2HeaderV3};
use crate::format::ByteArray;
use crate::format::Layout;
use crate::image::ReadLayer;

impl Qcow2 {
    /// Rewrites cluster 0 from what is on disk now, changed by `change`. Unknown header
    /// fields, unknown extensions and the compression type are kept.
    pub fn rewrite_header(&mut self, change: impl FnOnce(&mut Header) -> Result<()>) -> Result<()> {
        self.refcounts_mut()?;
        let mut header = Header::read(self.storage.as_ref())?;
        change(&mut header)?;
        let bytes = header.to_cluster()?;
        self.storage
            .write_at(&bytes, 0)
            .map_err(|e| Error::io("rewriting the header", e))?;
        self.storage
            .flush()
            .map_err(|e| Error::io("flushing the header", e))?;
        self.header = Header::read(self.storage.as_ref())?;
        Ok(())
    }

    /// Names a different backing file (or none) without touching data (`rebase -u`).
    pub fn set_backing(&mut self, name: Option<&str>, format: Option<&str>) -> Result<()> {
        if format.is_some_and(|f| f.len() > 15) {
            return Err(Error::new(
                ErrorKind::BadArgument,
                "backing format name too long",
            ));
        }
        self.rewrite_header(|h| {
            h.set_backing(name, format);
            Ok(())
        })
    }

    /// Releases every cluster from guest offset `first` to the end of the image (entries
    /// cleared, data and wholly covered L2 tables freed). The size is unchanged.
    pub(super) fn drop_from(&mut self, first: u64) -> Result<()> {
        let cs = self.geometry.cluster_size();
        let size = self.size();
        let span = self.geometry.l2_span();
        let first = first.next_multiple_of(cs);
        if first < size {
            self.clear_entries(first, size - first)?;
        }
        // The L1 entries below go out directly: the cleared tables must be there first.
        self.write_back()?;
        let keep = first.div_ceil(span) as usize;
        let storage = self.storage.clone();
        for index in keep..self.l1.len() {
            let l2 = L1Entry::from_raw(self.l1[index]).l2_offset();
            if l2 == 0 {
                continue;
            }
            storage
                .write_at(&0u64.to_be_bytes(), self.l1_offset() + index as u64 * 8)
                .map_err(|e| Error::io("writing the L1 table", e))?;
            self.l1[index] = 0;
            self.l2_cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(l2);
            self.sync()?;
            self.refcounts_mut()?
                .update_range(storage.as_ref(), l2, cs, -1)?;
        }
        Ok(())
    }

    /// Empties the image: every range reads from the backing file again (`commit`).
    pub fn make_empty(&mut self) -> Result<()> {
        self.refcounts_mut()?;
        self.drop_from(0)
    }

    /// `amend -o lazy_refcounts=…`.
    pub fn set_lazy_refcounts(&mut self, on: bool) -> Result<()> {
        if self.header.version() < 3 {
            return Err(Error::new(
                ErrorKind::BadArgument,
                "Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)",
            ));
        }
        self.rewrite_header(|h| {
            let Some(v3) = h.v3.as_mut() else {
                return Err(Error::new(
                    ErrorKind::BadArgument,
                    "lazy refcounts need a version 3 header",
                ));
            };
            if on {
                v3.compatible_features |= compatible::LAZY_REFCOUNTS;
            } else {
                v3.compatible_features &= !compatible::LAZY_REFCOUNTS;
            }
            Ok(())
        })
    }

    /// `amend -o compat=1.1`: a version 2 image becomes version 3.
    pub fn upgrade_to_v3(&mut self) -> Result<()> {
        if self.header.version() >= 3 {
            return Ok(());
        }
        // Version 3 wants every snapshot's extra data (QEMU upgrades the table first; a
        // version 2 image with complete entries is as valid).
        self.complete_snapshot_entries(SnapshotExtraData::SIZE as u32)?;
        self.rewrite_header(|h| {
            h.common.version = 3;
            h.v3 = Some(Qcow2HeaderV3 {
                incompatible_features: 0,
                compatible_features: 0,
                autoclear_features: 0,
                refcount_order: 4,
                header_length: 112,
            });
            h.compression = Some(Qcow2HeaderCompression {
                compression_type: 0,
                padding: ByteArray::zeroed(),
            });
            Ok(())
        })
    }

    /// `amend -o compat=0.10`: zero clusters are expanded (version 2 has no zero flag),
    /// then the header is rewritten as version 2. Refused for what version 2 cannot
    /// express.
    pub fn downgrade_to_v2(&mut self, below: &Below) -> Result<()> {
        if self.header.version() < 3 {
            return Ok(());
        }
        // QEMU's checks, in its order and words.
        let refuse = |what: String| Err(Error::new(ErrorKind::Unsupported, what));
        if self.header.refcount_order() != 4 {
            return refuse("compat=0.10 requires refcount_bits=16".into());
        }
        if self.header.incompatible_features() & incompatible::DATA_FILE != 0 {
            return refuse("Cannot downgrade an image with a data file".into());
        }
        let size = self.header.common.size;
        if self
            .snapshots
            .iter()
            .any(|s| s.vm_state_size > u64::from(u32::MAX) || s.disk_size != size)
        {
            return refuse("Internal snapshots prevent downgrade of image".into());
        }
        let blocking = self.header.incompatible_features()
            & !(incompatible::DIRTY | incompatible::CORRUPT | incompatible::COMPRESSION);
        if blocking != 0 {
            return refuse(format!(
                "Cannot downgrade an image with incompatible features {blocking:#x} set"
            ));
        }
        self.write_back()?;
        self.expand_zero_clusters(below)?;
        // A zstd image without compressed clusters can say zlib (version 2's only one).
        if self.header.compression_type() != 0 && self.has_compressed_clusters()? {
            return refuse(
                "Cannot downgrade an image with zstd compression type and existing compressed clusters"
                    .into(),
            );
        }
        self.rewrite_header(|h| {
            h.common.version = 2;
            h.v3 = None;
            h.compression = None;
            h.unknown_fields.clear();
            Ok(())
        })
    }

    /// Whether the active state maps any compressed cluster.
    fn has_compressed_clusters(&self) -> Result<bool> {
        for &e in &self.l1 {
            let l2 = L1Entry::from_raw(e).l2_offset();
            if l2 == 0 {
                continue;
            }
            let table = self.l2_table(l2)?;
            let step = if self.geometry.extended_l2 { 2 } else { 1 };
            let compressed = table.iter().step_by(step).any(|&raw| {
                matches!(
                    ClusterEntry::decode(raw, self.geometry, false),
                    ClusterEntry::Compressed { .. }
                )
            });
            if compressed {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Changes the refcount entry width (amend's `refcount_bits`): every cluster keeps
    /// its refcount, in new structures written past the end of the file; one header
    /// write then switches width and table together, and the old structures are free
    /// space. A refcount the new width cannot hold stops it first, as in QEMU.
    pub fn change_refcount_bits(&mut self, bits: u32) -> Result<()> {
        if bits == 0 || bits > 64 || !bits.is_power_of_two() {
            return Err(Error::new(
                ErrorKind::BadArgument,
                "Refcount width must be a power of two and may not exceed 64 bits",
            ));
        }
        let order = bits.trailing_zeros();
        if order == self.header.refcount_order() {
            return Ok(());
        }
        if self.header.version() < 3 {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "Refcount widths other than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)",
            ));
        }
        self.editable()?;
        self.sync_files()?;
        let cs = self.cs();
        let storage = self.storage.clone();
        let file_len = storage
            .len()
            .map_err(|e| Error::io("reading the image size", e))?;
        let clusters = file_len.div_ceil(cs);
        let rc = self.refcounts_mut()?;
        let old: Vec<u64> = (0..u64::from(rc.table_clusters()))
            .map(|i| rc.table_offset() + i * cs)
            .chain(rc.blocks())
            .collect();
        let mut counts = Vec::with_capacity(clusters as usize);
        for c in 0..clusters {
            counts.push(rc.get(storage.as_ref(), c)?);
        }
        for at in old {
            if let Some(count) = counts.get_mut((at / cs) as usize) {
                *count = 0;
            }
        }
        let max = u64::MAX >> (64 - bits);
        if let Some((c, &v)) = counts.iter().enumerate().find(|(_, &v)| v > max) {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "Cannot decrease refcount entry width to {bits} bits: Cluster at offset {:#x} has a refcount of {v}",
                    c as u64 * cs
                ),
            ));
        }
        let (table_at, table_clusters, _, _) = super::refcount::write_structures(
            storage.as_ref(),
            self.header.cluster_bits(),
            order,
            &counts,
            clusters,
        )?;
        self.rewrite_header(|h| {
            if let Some(v3) = &mut h.v3 {
                v3.refcount_order = order;
            }
            h.common.refcount_table_offset = table_at;
            h.common.refcount_table_clusters = table_clusters;
            Ok(())
        })?;
        self.compressed_tail = None;
        self.writer = super::layer::Writer::Open(super::refcount::Refcounts::load(
            storage.as_ref(),
            self.header.cluster_bits(),
            order,
            table_at,
            table_clusters,
        )?);
        Ok(())
    }

    /// Renames the external data file (amend's `data_file`; an empty name removes the
    /// name, leaving it to be given at open) and clears `data_file_raw` when asked: an
    /// image that does not have the bit cannot be given it.
    pub fn amend_data_file(&mut self, name: Option<&str>, raw: Option<bool>) -> Result<()> {
        let has_data_file = self.header.incompatible_features() & incompatible::DATA_FILE != 0;
        if name.is_some() && !has_data_file {
            return Err(Error::new(
                ErrorKind::BadArgument,
                "data-file can only be set for images that use an external data file",
            ));
        }
        let is_raw =
            self.header.autoclear_features() & crate::format::qcow2::autoclear::DATA_FILE_RAW != 0;
        if raw == Some(true) && !is_raw {
            return Err(Error::new(
                ErrorKind::BadArgument,
                "data-file-raw cannot be set on existing images",
            ));
        }
        if name.is_none() && raw.is_none_or(|r| r == is_raw) {
            return Ok(());
        }
        self.editable()?;
        self.rewrite_header(|h| {
            if raw == Some(false) {
                if let Some(v3) = &mut h.v3 {
                    v3.autoclear_features &= !crate::format::qcow2::autoclear::DATA_FILE_RAW;
                }
            }
            if let Some(name) = name {
                h.set_data_file(Some(name).filter(|n| !n.is_empty()));
            }
            Ok(())
        })
    }

    /// Replaces every zero flag, in the active state and in snapshots: a preallocated
    /// zero cluster gets zeros written into it; a plain one becomes unallocated, or,
    /// over a backing file, a freshly allocated cluster of zeros.
    fn expand_zero_clusters(&mut self, _below: &Below) -> Result<()> {
        let cs = self.geometry.cluster_size();
        let has_backing = self.header.backing_file.is_some();
        let storage = self.storage.clone();
        let mut tables: Vec<u64> = Vec::new();
        let mut l1s = vec![self.l1.clone()];
        for s in self.snapshots.clone() {
            l1s.push(self.read_snapshot_l1(&s)?);
        }
        for l1 in l1s {
            for e in l1 {
                let l2 = L1Entry::from_raw(e).l2_offset();
                if l2 != 0 && !tables.contains(&l2) {
                    tables.push(l2);
                }
            }
        }
        let zeros = vec![0u8; cs as usize];
        for l2 in tables {
            let mut table: Vec<u64> = self.l2_table(l2)?.to_vec();
            // A table shared by several L1 tables: its new clusters are shared as much.
            let shared = self.refcounts_mut()?.get(storage.as_ref(), l2 / cs)?;
            let mut changed = false;
            for entry in table.iter_mut() {
                let old = ClusterEntry::decode(*entry, self.geometry, false);
                if let ClusterEntry::ZeroAlloc { host, .. } = old {
                    storage
                        .write_at(&zeros, host)
                        .map_err(|err| Error::io("expanding a zero cluster", err))?;
                    *entry = L2Entry::from_raw(*entry).with_zero(false).raw();
                } else if old != ClusterEntry::ZeroPlain {
                    continue;
                } else if has_backing {
                    let refcounts = self.refcounts_mut()?;
                    let at = refcounts.alloc(storage.as_ref(), 1)?;
                    refcounts.set(storage.as_ref(), at / cs, shared)?;
                    storage
                        .write_at(&zeros, at)
                        .map_err(|err| Error::io("expanding a zero cluster", err))?;
                    *entry = ClusterEntry::data(at, shared == 1);
                } else {
                    *entry = 0;
                }
                changed = true;
            }
            if changed {
                self.sync()?;
                self.put_l2_table(l2, table.into())?;
            }
        }
        Ok(())
    }
}

impl Qcow2 {
    /// Adds or erases LUKS key slots (qemu-img amend's `encrypt.*` options), `secret`
    /// unlocking the volume for a new slot. The master key stays: data is untouched.
    pub fn change_key_slots(
        &mut self,
        secret: Option<&crate::Secret>,
        change: &crate::luks::KeySlotChange,
    ) -> Result<()> {
        let ext = match (self.header.common.crypt_method, self.header.crypto()?) {
            (2, Some(ext)) => ext,
            _ => {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    "Key slots can only be changed in LUKS-encrypted images",
                ))
            }
        };
        let storage = self.storage.as_ref();
        let mut volume = crate::luks::LuksVolume::read(storage, ext.offset, ext.length)?;
        volume.amend(storage, ext.offset, secret, change)?;
        storage
            .flush()
            .map_err(|e| Error::io("flushing the LUKS header", e))
    }
}
