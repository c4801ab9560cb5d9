//! One qcow2 file opened: the layer's state, guest-to-host mapping through L1 and
//! L2, and reads of what the mapping finds. Opening is in `open.rs`, writing in
//! `write.rs`.

use super::entry::ClusterEntry;
use super::entry::Freed;
use super::geometry::Geometry;
use super::header::Header;
use super::snapshot::Snapshot;
use crate::codec::{Compression, SectorCipher};
use crate::error::{Error, ErrorKind, Result};
use crate::format::qcow2::incompatible;
use crate::format::qcow2::{L1Entry, SubclusterBitmap};
use crate::image::ReadLayer;
use crate::l2cache::{self, L2Cache, Table};
use crate::mapping::{GuestOffset, HostOffset, Mapping};
use crate::storage::Storage;
use std::sync::{Arc, Mutex};

/// A qcow2 layer: read through `&self`, written through `&mut self` (see `write.rs`).
pub struct Qcow2 {
    pub(super) header: Header,
    pub(super) storage: Arc<dyn Storage>,
    pub(super) data_file: Option<Arc<dyn Storage>>,
    /// Cluster and L2 table sizes, fixed at open.
    pub(super) geometry: Geometry,
    /// The L1 table in use: entries past the end of the file are left out (they read as 0).
    pub(super) l1: Vec<u64>,
    pub(super) l2_cache: Mutex<L2Cache>,
    pub(super) compression: Compression,
    pub(super) key: Option<SectorCipher>,
    /// The last cluster decompressed, by host offset of its compressed bytes.
    pub(super) decompressed: crate::compressed::LastCluster,
    /// Where the next compressed cluster may be packed (mid-cluster, after the last
    /// one written), and the refcount free count at which that was true.
    pub(super) compressed_tail: Option<(u64, u64)>,
    /// Data written but held to be combined with the next piece: (host offset, bytes).
    /// Always empty between requests.
    pub(super) combined: Option<(u64, Vec<u8>)>,
    /// Whether the image looks metadata-preallocated (see `metadata_preallocated`),
    /// worked out on first use.
    pub(super) preallocated: std::sync::OnceLock<bool>,
    /// Host ranges whose refcounts drop once the changed L2 tables that stopped
    /// pointing at them are on disk (see `write_back`).
    pub(super) pending_frees: Vec<Freed>,
    pub(super) snapshots: Vec<Snapshot>,
    pub(super) warnings: Vec<String>,
    /// The state this handle reads: the active one, or a snapshot's.
    pub(super) view: View,
    /// Whether this handle writes, with the refcounts a writer keeps; reached through
    /// `refcounts_mut`, which answers an error when it may not.
    pub(super) writer: Writer,
    pub(super) barriers: bool,
    /// The dirty bit was set by this handle (lazy refcounts) and is cleared on close.
    pub(super) marked_dirty: bool,
    /// Persistent bitmaps, once a change needed them (see `bitmap_writer.rs`); stored
    /// back at close.
    pub(super) held_bitmaps: Option<super::bitmap_writer::HeldBitmaps>,
}

/// Which state of the image a handle reads. The active state's L1 table and size are
/// the header's, so they are never kept twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum View {
    Active,
    /// An internal snapshot (read-only): its own L1 table and disk size.
    Snapshot {
        l1_offset: u64,
        size: u64,
    },
}

/// Writable as a type: what the write side of a handle has, or why it has nothing.
#[derive(Debug)]
pub(super) enum Writer {
    /// Opened read-only.
    ReadOnly,
    /// Open for writing, with the refcounts kept up to date.
    Open(super::refcount::Refcounts),
    /// A write found metadata damage and marked the image corrupt: nothing more is
    /// written through this handle (the message says why).
    Stopped(String),
}

impl Qcow2 {
    /// The refcounts, for a change to the image; an error, never a panic, when this
    /// handle may not write.
    pub(super) fn refcounts_mut(&mut self) -> Result<&mut super::refcount::Refcounts> {
        match &mut self.writer {
            Writer::Open(refcounts) => Ok(refcounts),
            Writer::ReadOnly => Err(Error::new(
                ErrorKind::BadArgument,
                "the image was opened read-only",
            )),
            Writer::Stopped(why) => Err(Error::new(
                ErrorKind::Corrupt,
                format!("qcow2: the image was marked corrupt ({why}); it takes no more writes"),
            )),
        }
    }

    /// The refcounts, when this handle writes.
    pub(super) fn refcounts(&self) -> Option<&super::refcount::Refcounts> {
        match &self.writer {
            Writer::Open(refcounts) => Some(refcounts),
            Writer::ReadOnly | Writer::Stopped(_) => None,
        }
    }
}

impl Drop for Qcow2 {
    /// A clean close: held metadata is written and, unless barriers are off (cache
    /// mode unsafe), flushed; bitmaps are stored back; what a lazy-refcounts writer
    /// marked dirty is marked clean again (refcounts are always kept exact, so nothing
    /// needs rebuilding). Errors are lost here: callers who care call `close`.
    fn drop(&mut self) {
        let _ = self.close();
    }
}

impl Qcow2 {
    /// A clean close (what dropping does, with its failure reported): held metadata
    /// written and synced, bitmaps stored back, the dirty bit of lazy refcounts
    /// cleared. Nothing is left to do afterwards, so a second call (the drop) is free.
    pub fn close(&mut self) -> Result<()> {
        if self.refcounts().is_none() {
            return Ok(());
        }
        self.write_back()?;
        self.sync()?;
        self.store_bitmaps()?;
        if self.marked_dirty {
            let bits = self.header.incompatible_features() & !incompatible::DIRTY;
            self.storage
                .flush()
                .map_err(|e| Error::io("flushing the image", e))?;
            self.header
                .write_incompatible_features(self.storage.as_ref(), bits)?;
            self.marked_dirty = false;
            self.storage
                .flush()
                .map_err(|e| Error::io("flushing the image", e))?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for Qcow2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2")
            .field("header", &self.header)
            .field("size", &self.size())
            .finish_non_exhaustive()
    }
}

pub(super) fn corrupt(message: String) -> Error {
    Error::new(ErrorKind::Corrupt, message)
}

impl Qcow2 {
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The file this layer reads its metadata from.
    pub fn storage(&self) -> &dyn Storage {
        self.storage.as_ref()
    }

    /// Whether guest data lives in an external data file.
    pub(crate) fn has_data_file(&self) -> bool {
        self.data_file.is_some()
            || self.header.incompatible_features() & crate::format::qcow2::incompatible::DATA_FILE
                != 0
    }

    /// Host offset of the L1 table this handle reads.
    pub(super) fn l1_offset(&self) -> u64 {
        match self.view {
            View::Active => self.header.common.l1_table_offset,
            View::Snapshot { l1_offset, .. } => l1_offset,
        }
    }

    pub fn cluster_size(&self) -> u64 {
        1 << self.geometry.cluster_bits
    }

    pub fn snapshots(&self) -> &[Snapshot] {
        &self.snapshots
    }

    /// Things QEMU would warn about at open.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// True when data clusters are encrypted (their host offsets mean nothing to a reader).
    pub fn is_encrypted(&self) -> bool {
        self.header.common.crypt_method != 0
    }

    /// Whether far more clusters are counted in use than the file has blocks for, as
    /// after `preallocation=metadata`: QEMU's test (at least 10/9 of the allocated
    /// clusters, and 2 more), and only then does it ask the file whether data clusters
    /// are holes. Unknown sizes or unreadable refcounts answer no.
    pub fn metadata_preallocated(&self) -> bool {
        *self.preallocated.get_or_init(|| {
            let cs = self.geometry.cluster_size();
            let (Ok(len), Ok(Some(real))) = (self.storage.len(), self.storage.allocated_size())
            else {
                return false;
            };
            let real_clusters = real / cs;
            let threshold = (real_clusters * 10 / 9).max(real_clusters + 2);
            // A writer may have moved the table since the header was read.
            let (table_at, table_clusters) = match self.refcounts() {
                Some(r) => (r.table_offset(), r.table_clusters()),
                None => (
                    self.header.common.refcount_table_offset,
                    self.header.common.refcount_table_clusters,
                ),
            };
            let Ok(mut refcounts) = super::refcount::Refcounts::load(
                self.storage.as_ref(),
                self.geometry.cluster_bits,
                self.header.refcount_order(),
                table_at,
                table_clusters,
            ) else {
                return false;
            };
            let mut counted = 0;
            for cluster in 0..len.div_ceil(cs) {
                if counted >= threshold {
                    break;
                }
                match refcounts.get(self.storage.as_ref(), cluster) {
                    Ok(n) => counted += u64::from(n > 0),
                    Err(_) => return false,
                }
            }
            counted >= threshold
        })
    }

    /// Writes the L2 table at `offset` now, and caches it (whatever the cache held for
    /// that cluster is stale). Only for changes that may not wait for write-back.
    pub(super) fn put_l2_table(&self, offset: u64, table: Table) -> Result<()> {
        self.storage
            .write_at(&crate::tables::to_be_bytes(&table), offset)
            .map_err(|e| Error::io("writing an L2 table", e))?;
        self.l2_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(offset, table);
        Ok(())
    }

    /// The L2 table at `offset`, from the cache or the file.
    pub(super) fn l2_table(&self, offset: u64) -> Result<Table> {
        l2cache::load(
            &self.l2_cache,
            self.storage.as_ref(),
            offset,
            1 << self.geometry.cluster_bits,
        )
    }

    /// Reads from the compressed cluster at `host` (see `ReadLayer::read_compressed`).
    pub(super) fn read_compressed(
        &self,
        at: (u64, u64),
        from: usize,
        buf: &mut [u8],
    ) -> Result<()> {
        // len ≤ 2 × cluster size: the descriptor's sector count has cluster_bits − 8 bits.
        let cs = self.geometry.cluster_size() as usize;
        let storage = self.storage.as_ref();
        (self.decompressed).read(storage, self.compression, at, cs, from, buf)
    }

    /// The mapping of the (sub)cluster holding `guest` in the tree `l1` heads (this
    /// handle's, or a snapshot's read in full, VM state included), and where it ends:
    /// with a standard L2 table, runs of unallocated, zero or contiguous data clusters
    /// in the same table are answered at once, as far as `end` asks (a chain of many
    /// layers otherwise asks each table once per cluster).
    pub(super) fn classify_in(&self, l1: &[u64], guest: u64, end: u64) -> Result<(Mapping, u64)> {
        let g = self.geometry;
        let at = GuestOffset(guest);
        let cluster_start = g.cluster_start(at);
        let cluster_end = cluster_start + g.cluster_size();
        let (l1_index, l2_index) = (g.l1_index(at), g.l2_index(at));
        // Past the L1 table (or the part of it inside the file), or no L2 table: a whole
        // L2 range at once.
        let whole_table = (
            Mapping::Unallocated { host: None },
            (l1_index + 1) * g.l2_span(),
        );
        let Some(&raw_l1) = l1.get(l1_index as usize) else {
            return Ok(whole_table);
        };
        let l2_offset = L1Entry::from_raw(raw_l1).l2_offset();
        if l2_offset == 0 {
            return Ok(whole_table);
        }
        if l2_offset % g.cluster_size() != 0 {
            return Err(corrupt(format!(
                "L2 table offset {l2_offset:#x} unaligned (L1 index: {l1_index:#x})"
            )));
        }
        let table = self.l2_table(l2_offset)?;
        let words = g.entry_words();
        let data_file = self.data_file.is_some();
        let entry = ClusterEntry::decode(table[(l2_index * words) as usize], g, data_file);
        let in_cluster = g.in_cluster(at);
        let place = || format!("L2 offset: {l2_offset:#x}, L2 index: {l2_index:#x}");

        if let ClusterEntry::Compressed { host, len, .. } = entry {
            if data_file {
                return Err(corrupt(
                    "Compressed cluster entry found in image with external data file".into(),
                ));
            }
            let mapping = Mapping::Compressed {
                cluster: cluster_start,
                host: HostOffset(host),
                len,
            };
            return Ok((mapping, cluster_end));
        }
        if let Some(host) = entry.unaligned_host(g) {
            return Err(corrupt(format!(
                "Cluster allocation offset {host:#x} unaligned ({})",
                place()
            )));
        }
        let host = entry.standard_host();
        if let Some(host) = host.filter(|h| data_file && *h != cluster_start) {
            return Err(corrupt(format!(
                "External data file host cluster offset {host:#x} does not match guest cluster offset {cluster_start:#x}"
            )));
        }
        let host_here = host.map(|h| HostOffset(h + in_cluster));

        if !g.extended_l2 {
            let mapping = match entry {
                ClusterEntry::ZeroPlain | ClusterEntry::ZeroAlloc { .. } => {
                    if self.header.version() < 3 {
                        return Err(corrupt(format!(
                            "Zero cluster entry found in pre-v3 image ({})",
                            place()
                        )));
                    }
                    Mapping::Zero { host: host_here }
                }
                ClusterEntry::Normal { .. } => Mapping::Data {
                    host: HostOffset(host.unwrap_or_default() + in_cluster),
                },
                _ => Mapping::Unallocated { host: None },
            };
            // Following entries of the same kind (data: the next host cluster) extend
            // the unit; every check above holds for them as it did for the first.
            let cs = g.cluster_size();
            let same = |raw: u64, k: u64| match (entry, ClusterEntry::decode(raw, g, data_file)) {
                (ClusterEntry::Unallocated, ClusterEntry::Unallocated)
                | (ClusterEntry::ZeroPlain, ClusterEntry::ZeroPlain) => true,
                (ClusterEntry::Normal { host: a, .. }, ClusterEntry::Normal { host: b, .. }) => {
                    b == a + k * cs
                }
                _ => false,
            };
            let mut unit_end = cluster_end;
            let mut k = 1;
            while unit_end < end
                && l2_index + k < g.l2_entries()
                && same(table[((l2_index + k) * words) as usize], k)
            {
                unit_end += cs;
                k += 1;
            }
            return Ok((mapping, unit_end));
        }

        let bitmap = SubclusterBitmap::from_raw(table[(l2_index * 2 + 1) as usize]);
        let (alloc, zero) = (bitmap.allocated(), bitmap.zero());
        if alloc & zero != 0 || (host.is_none() && alloc != 0) {
            return Err(corrupt(format!(
                "Invalid cluster entry found  ({})",
                place()
            )));
        }
        let sub_bits = g.subcluster_bits();
        let sub = (in_cluster >> sub_bits) as u32;
        let sub_end = cluster_start + (u64::from(sub + 1) << sub_bits);
        // An allocated bit implies an allocated cluster (checked above).
        let mapping = match (zero & (1 << sub) != 0, alloc & (1 << sub) != 0, host_here) {
            (true, _, _) => Mapping::Zero { host: host_here },
            (false, true, Some(host)) => Mapping::Data { host },
            _ => Mapping::Unallocated { host: host_here },
        };
        Ok((mapping, sub_end))
    }
}

impl ReadLayer for Qcow2 {
    fn file(&self) -> &dyn Storage {
        self.storage.as_ref()
    }

    /// The virtual size of the state this handle reads.
    fn size(&self) -> u64 {
        match self.view {
            View::Active => self.header.common.size,
            View::Snapshot { size, .. } => size,
        }
    }

    /// The mapping of the (sub)cluster holding `guest`, and the guest offset where that
    /// (sub)cluster ends.
    fn classify(&self, guest: u64) -> Result<(Mapping, u64)> {
        self.classify_in(&self.l1, guest, guest)
    }

    fn classify_until(&self, guest: u64, end: u64) -> Result<(Mapping, u64)> {
        self.classify_in(&self.l1, guest, end)
    }

    fn read_data(&self, host: u64, guest: u64, buf: &mut [u8]) -> Result<()> {
        let storage = self.data_storage();
        crate::sector_io::read(storage.as_ref(), self.key.as_ref(), host, guest, buf)
    }

    fn read_compressed(&self, at: (u64, u64), from: usize, buf: &mut [u8]) -> Result<()> {
        Qcow2::read_compressed(self, at, from, buf)
    }

    fn is_encrypted(&self) -> bool {
        Qcow2::is_encrypted(self)
    }

    fn backing_name(&self) -> Option<(String, Option<String>)> {
        let header = self.header();
        header.backing_file.as_ref().map(|name| {
            let format = header
                .backing_format()
                .map(|f| String::from_utf8_lossy(f).into_owned());
            (String::from_utf8_lossy(name).into_owned(), format)
        })
    }
}
