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

fn put(storage: &dyn Storage, bytes: &[u8], at: u64, field: &str) -> Result<()> {
    storage
        .write_at(bytes, at)
        .map_err(|e| Error::io(format!("writing {field} in the qcow2 header"), e))
}

fn pair(first: &[u8], second: &[u8]) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[..first.len()].copy_from_slice(first);
    out[first.len()..].copy_from_slice(second);
    out
}

impl Header {
    fn v3_mut(&mut self, field: &str) -> Result<&mut Qcow2HeaderV3> {
        self.v3.as_mut().ok_or_else(|| {
            Error::new(
                ErrorKind::Unsupported,
                format!("a version 2 qcow2 header has no {field}"),
            )
        })
    }

    /// Rewrites `incompatible_features` (version 3 only).
    pub(crate) fn write_incompatible_features(
        &mut self,
        storage: &dyn Storage,
        bits: u64,
    ) -> Result<()> {
        self.v3_mut("incompatible_features")?;
        put(
            storage,
            &bits.to_be_bytes(),
            Qcow2HeaderV3::INCOMPATIBLE_FEATURES_AT,
            "incompatible_features",
        )?;
        self.v3_mut("incompatible_features")?.incompatible_features = bits;
        Ok(())
    }

    /// Rewrites `autoclear_features` (version 3 only).
    pub(crate) fn write_autoclear_features(
        &mut self,
        storage: &dyn Storage,
        bits: u64,
    ) -> Result<()> {
        self.v3_mut("autoclear_features")?;
        put(
            storage,
            &bits.to_be_bytes(),
            Qcow2HeaderV3::AUTOCLEAR_FEATURES_AT,
            "autoclear_features",
        )?;
        self.v3_mut("autoclear_features")?.autoclear_features = bits;
        Ok(())
    }

    /// Rewrites the virtual disk size.
    pub(crate) fn write_size(&mut self, storage: &dyn Storage, size: u64) -> Result<()> {
        put(storage, &size.to_be_bytes(), Qcow2Header::SIZE_AT, "size")?;
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
        let bytes = pair(&entries.to_be_bytes(), &offset.to_be_bytes());
        put(
            storage,
            &bytes,
            Qcow2Header::L1_SIZE_AT,
            "the L1 table size and offset",
        )?;
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
        let bytes = pair(&offset.to_be_bytes(), &clusters.to_be_bytes());
        put(
            storage,
            &bytes,
            Qcow2Header::REFCOUNT_TABLE_OFFSET_AT,
            "the refcount table offset and size",
        )
    }

    /// Points the header at a snapshot table of `count` entries at `offset`: both
    /// fields in one write.
    pub(crate) fn write_snapshot_table(
        &mut self,
        storage: &dyn Storage,
        offset: u64,
        count: u32,
    ) -> Result<()> {
        let bytes = pair(&count.to_be_bytes(), &offset.to_be_bytes());
        put(
            storage,
            &bytes,
            Qcow2Header::NB_SNAPSHOTS_AT,
            "the snapshot count and table offset",
        )?;
        self.common.nb_snapshots = count;
        self.common.snapshots_offset = offset;
        Ok(())
    }
}
