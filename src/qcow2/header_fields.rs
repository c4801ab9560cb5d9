//! The one place qcow2 header fields are rewritten in place.
//!
//! Each setter writes the field's big-endian bytes where the spec puts them and, once
//! the write succeeded, records the value in the in-memory [`Header`], so a handle never
//! believes in a value the file lacks. Fields that must change together (an L1 table's
//! offset and size, the refcount table's, the snapshot table's) are adjacent on disk and
//! go out in one write, which is what keeps a switch crash-safe.

use super::header::Header;
use crate::error::{Error, ErrorKind, Result};
use crate::format::qcow2::{Qcow2Header, Qcow2HeaderV3};
use crate::storage::Storage;

// The paired fields are written as one buffer: they must stay adjacent.
const _: () = assert!(Qcow2Header::L1_TABLE_OFFSET_AT == Qcow2Header::L1_SIZE_AT + 4);
const _: () =
    assert!(Qcow2Header::REFCOUNT_TABLE_CLUSTERS_AT == Qcow2Header::REFCOUNT_TABLE_OFFSET_AT + 8);
const _: () = assert!(Qcow2Header::SNAPSHOTS_OFFSET_AT == Qcow2Header::NB_SNAPSHOTS_AT + 4);

/// Writes the adjacent fields `parts` (big-endian bytes) from `at`, in one write.
fn put(storage: &dyn Storage, at: u64, field: &str, parts: &[&[u8]]) -> Result<()> {
    storage
        .write_at(&parts.concat(), at)
        .map_err(|e| Error::io(format!("writing {field} in the qcow2 header"), e))
}

impl Header {
    /// Rewrites `incompatible_features` (version 3 only).
    pub(crate) fn write_incompatible_features(
        &mut self,
        storage: &dyn Storage,
        bits: u64,
    ) -> Result<()> {
        let at = Qcow2HeaderV3::INCOMPATIBLE_FEATURES_AT;
        self.write_v3_bits(storage, at, "incompatible_features", bits, |v3| {
            &mut v3.incompatible_features
        })
    }

    /// Rewrites `autoclear_features` (version 3 only).
    pub(crate) fn write_autoclear_features(
        &mut self,
        storage: &dyn Storage,
        bits: u64,
    ) -> Result<()> {
        let at = Qcow2HeaderV3::AUTOCLEAR_FEATURES_AT;
        self.write_v3_bits(storage, at, "autoclear_features", bits, |v3| {
            &mut v3.autoclear_features
        })
    }

    /// Writes a version 3 feature field, then sets it in memory at `place`.
    fn write_v3_bits(
        &mut self,
        storage: &dyn Storage,
        at: u64,
        field: &str,
        bits: u64,
        place: impl FnOnce(&mut Qcow2HeaderV3) -> &mut u64,
    ) -> Result<()> {
        let v3 = self.v3.as_mut().ok_or_else(|| {
            Error::new(
                ErrorKind::Unsupported,
                format!("a version 2 qcow2 header has no {field}"),
            )
        })?;
        put(storage, at, field, &[&bits.to_be_bytes()])?;
        *place(v3) = bits;
        Ok(())
    }

    /// Rewrites the virtual disk size.
    pub(crate) fn write_size(&mut self, storage: &dyn Storage, size: u64) -> Result<()> {
        put(
            storage,
            Qcow2Header::SIZE_AT,
            "size",
            &[&size.to_be_bytes()],
        )?;
        self.common.size = size;
        Ok(())
    }

    /// Points the header at an active L1 table of `entries` entries at `offset`: both
    /// fields in one write.
    pub(crate) fn write_l1_table(
        &mut self,
        storage: &dyn Storage,
        offset: u64,
        entries: u32,
    ) -> Result<()> {
        let parts: [&[u8]; 2] = [&entries.to_be_bytes(), &offset.to_be_bytes()];
        put(storage, Qcow2Header::L1_SIZE_AT, "the L1 table", &parts)?;
        self.common.l1_size = entries;
        self.common.l1_table_offset = offset;
        Ok(())
    }

    /// Points the header at a refcount table of `clusters` clusters at `offset`: both
    /// fields in one write.
    pub(crate) fn write_refcount_table(
        &mut self,
        storage: &dyn Storage,
        offset: u64,
        clusters: u32,
    ) -> Result<()> {
        Self::write_refcount_table_in_file(storage, offset, clusters)?;
        self.common.refcount_table_offset = offset;
        self.common.refcount_table_clusters = clusters;
        Ok(())
    }

    /// `write_refcount_table` for the refcount runtime, which moves the table while
    /// allocating and holds no header: while a writer is open, its `Refcounts` knows
    /// where the table is, and the in-memory header keeps the location it was opened with.
    pub(crate) fn write_refcount_table_in_file(
        storage: &dyn Storage,
        offset: u64,
        clusters: u32,
    ) -> Result<()> {
        let parts: [&[u8]; 2] = [&offset.to_be_bytes(), &clusters.to_be_bytes()];
        let at = Qcow2Header::REFCOUNT_TABLE_OFFSET_AT;
        put(storage, at, "the refcount table", &parts)
    }

    /// Points the header at a snapshot table of `count` entries at `offset`: both
    /// fields in one write.
    pub(crate) fn write_snapshot_table(
        &mut self,
        storage: &dyn Storage,
        offset: u64,
        count: u32,
    ) -> Result<()> {
        let parts: [&[u8]; 2] = [&count.to_be_bytes(), &offset.to_be_bytes()];
        put(
            storage,
            Qcow2Header::NB_SNAPSHOTS_AT,
            "the snapshot table",
            &parts,
        )?;
        self.common.nb_snapshots = count;
        self.common.snapshots_offset = offset;
        Ok(())
    }
}
