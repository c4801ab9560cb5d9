//! Writing a qcow2 layer: data, zeros, discards and compressed clusters.
//!
//! Every change keeps one order, so that a crash at any point leaves an image whose
//! only possible fault is a leak:
//! 1. new clusters get their refcount (raised by the allocator, written by the end of
//!    the request);
//! 2. data goes into them (never in place into a cluster someone else shares);
//! 3. barrier; the L2 entries (or L1 entry) that point at them are written;
//! 4. barrier; the refcounts of the clusters they replaced are lowered.
//!
//! Steps 1 and 2 are written by each request; changed L2 tables and the frees of
//! step 4 are held in memory (write-back, as QEMU's metadata caches) and go out in
//! `write_back`: on flush, before any other kind of metadata change, when too many
//! tables wait, and on close. One barrier then serves every request since the last.
//!
//! Shared L2 tables are copied before they are changed, and every newly allocated
//! cluster is checked against the image's metadata before anything is written to it.

use super::header::incompat;
use super::layer::{Qcow2, Writer};
use crate::error::{Error, ErrorKind, Result};
use crate::format::qcow2::{L1Entry, L2Entry, Qcow2CompressedDescriptor};
use crate::format::qcow2::{Qcow2Header, Qcow2HeaderV3};
use crate::mapping::Mapping;
use crate::storage::Storage;
use std::sync::Arc;

/// Reads guest bytes from the layers below this one (zeros where there are none).
pub type Below<'a> = dyn Fn(u64, &mut [u8]) -> Result<()> + 'a;

/// What an L2 entry says about its cluster, for a writer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Old {
    Unallocated,
    ZeroPlain,
    ZeroAlloc { host: u64, copied: bool },
    Normal { host: u64, copied: bool },
    Compressed { host: u64, len: u64 },
}

const ALL_SUBCLUSTERS: u64 = 0xffff_ffff;

/// The subclusters `[first, end)` as a bitmap mask.
fn sub_mask(first: u64, end: u64) -> u64 {
    let n = end - first;
    let ones = if n >= 32 {
        ALL_SUBCLUSTERS
    } else {
        (1u64 << n) - 1
    };
    ones << first
}

/// One cluster of a request, as `for_each_cluster` hands it out.
#[derive(Clone, Copy, Debug)]
struct Slot {
    /// Guest offset of the cluster.
    gc: u64,
    /// The bytes `[a, b)` of the cluster the request covers.
    a: u64,
    b: u64,
    /// Its L2 entry and (extended L2) subcluster bitmap.
    raw: u64,
    bitmap: u64,
    /// Where the entry is: L2 table and index.
    l2_at: u64,
    index: u64,
}

/// Changes to one L2 table, published together.
#[derive(Default)]
struct Pending {
    /// (entry index, entry, subcluster bitmap for extended L2)
    entries: Vec<(u64, u64, u64)>,
    /// Host ranges whose refcounts drop once the entries are published.
    frees: Vec<(u64, u64)>,
}

impl Qcow2 {
    fn cs(&self) -> u64 {
        1 << self.cluster_bits
    }

    fn entry_words(&self) -> u64 {
        if self.extended_l2 {
            2
        } else {
            1
        }
    }

    pub(super) fn is_writable(&mut self) -> Result<()> {
        self.refcounts_mut()?;
        // With lazy refcounts, as QEMU: the dirty bit first (cleared on a clean close).
        let lazy = self.header.compatible_features() & super::header::compat::LAZY_REFCOUNTS != 0;
        if lazy && !self.marked_dirty && self.header.version() >= 3 {
            let bits = self.header.incompatible_features() | incompat::DIRTY;
            self.storage
                .write_at(&bits.to_be_bytes(), Qcow2HeaderV3::INCOMPATIBLE_FEATURES_AT)
                .map_err(|e| Error::io("setting the dirty bit", e))?;
            self.storage
                .flush()
                .map_err(|e| Error::io("flushing the dirty bit", e))?;
            if let Some(v3) = self.header.v3.as_mut() {
                v3.incompatible_features = bits;
            }
            self.marked_dirty = true;
        }
        Ok(())
    }

    /// `is_writable`, and the held metadata written back first: edits other than plain
    /// requests (snapshots, resizing, amending) read and write the file directly.
    pub(super) fn editable(&mut self) -> Result<()> {
        self.is_writable()?;
        self.write_back()
    }

    /// Where data clusters live: the external data file, or the image.
    pub(crate) fn data_storage(&self) -> &Arc<dyn Storage> {
        self.data_file.as_ref().unwrap_or(&self.storage)
    }

    /// Sends what is held back: data for combining (see `store`) and refcount
    /// changes (see `Refcounts::defer`).
    fn flush_combined(&mut self) -> Result<()> {
        if let Some((at, buf)) = self.combined.take() {
            self.storage
                .write_at(&buf, at)
                .map_err(|e| Error::io(format!("writing data at {at:#x}"), e))?;
        }
        if let Writer::Open(r) = &mut self.writer {
            r.write_deferred(self.storage.as_ref())?;
        }
        Ok(())
    }

    /// Makes everything written so far durable before what follows depends on it.
    fn barrier(&mut self) -> Result<()> {
        if self.barriers {
            self.flush()
        } else {
            self.write_back()
        }
    }

    /// The file (and data file) durable, when barriers are kept.
    pub(super) fn sync(&self) -> Result<()> {
        if self.barriers {
            self.sync_files()
        } else {
            Ok(())
        }
    }

    /// The file (and data file) durable.
    fn sync_files(&self) -> Result<()> {
        self.storage
            .flush()
            .map_err(|e| Error::io("flushing the image", e))?;
        if let Some(d) = &self.data_file {
            d.flush()
                .map_err(|e| Error::io("flushing the data file", e))?;
        }
        Ok(())
    }

    /// Writes the held metadata in crash-safe order: data and raised refcounts, barrier,
    /// changed L2 tables, barrier, then the frees those tables made possible. Called
    /// before any change that is not a plain request, so that those find the file as
    /// the cache sees it.
    pub(super) fn write_back(&mut self) -> Result<()> {
        self.flush_combined()?;
        let dirty = self
            .l2_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take_dirty();
        if !dirty.is_empty() {
            let written = self.sync().and_then(|()| {
                dirty.iter().try_for_each(|(at, table)| {
                    self.storage
                        .write_at(&crate::tables::to_be_bytes(table), *at)
                        .map_err(|e| Error::io("writing an L2 table", e))
                })
            });
            let mut cache = self.l2_cache.lock().unwrap_or_else(|e| e.into_inner());
            for (at, table) in dirty {
                // Held again if anything failed: the frees wait for them.
                match written {
                    Ok(()) => cache.insert(at, table),
                    Err(_) => cache.insert_dirty(at, table),
                }
            }
            written?;
        }
        if !self.pending_frees.is_empty() {
            self.sync()?;
            for (host, len) in std::mem::take(&mut self.pending_frees) {
                self.release(host, len)?;
            }
            self.flush_combined()?;
        }
        Ok(())
    }

    /// Sets the corrupt bit (as QEMU does for metadata damage found while writing) and
    /// returns the error to give. The handle takes no more writes afterwards, in either version (QEMU makes the
    /// node unusable); what it held unwritten is dropped, as a crash would drop it.
    fn mark_corrupt(&mut self, message: String) -> Error {
        let bits = self.header.incompatible_features() | incompat::CORRUPT;
        if self.header.version() >= 3
            && self
                .storage
                .write_at(&bits.to_be_bytes(), Qcow2HeaderV3::INCOMPATIBLE_FEATURES_AT)
                .is_ok()
        {
            let _ = self.storage.flush();
            if let Some(v3) = self.header.v3.as_mut() {
                v3.incompatible_features = bits;
            }
        }
        self.writer = Writer::Stopped(message.clone());
        Error::new(
            ErrorKind::Corrupt,
            format!("qcow2: Marking image as corrupt: {message}"),
        )
    }

    fn alloc(&mut self, n: u64) -> Result<u64> {
        let storage = self.storage.clone();
        let at = self.refcounts_mut()?.alloc(storage.as_ref(), n)?;
        self.check_overlap(at, n << self.cluster_bits)?;
        Ok(at)
    }

    /// Host bytes for one compressed cluster (`len` < one cluster), packed right after
    /// the previous one as QEMU packs them: each host cluster the bytes touch holds one
    /// more reference. Packing resumes only where nothing was freed in between, so the
    /// tail can never have been reused for something else.
    fn alloc_bytes(&mut self, len: u64) -> Result<u64> {
        let cs = self.cs();
        let storage = self.storage.clone();
        let tail = self.compressed_tail.take();
        let rc = self.refcounts_mut()?;
        let mut tail = tail
            .filter(|&(_, frees)| frees == rc.frees())
            .map(|(at, _)| at);
        if let Some(at) = tail {
            if rc.get(storage.as_ref(), at / cs)? >= rc.max() {
                tail = None;
            }
        }
        let start = match tail {
            Some(at) if cs - at % cs >= len => {
                rc.update_range(storage.as_ref(), at, 1, 1)?;
                at
            }
            Some(at) => {
                // The rest needs the next cluster; packing continues only if that is
                // where the new cluster lands.
                let fresh = self.alloc(1)?;
                let rc = self.refcounts_mut()?;
                if fresh == at.next_multiple_of(cs) {
                    rc.update_range(storage.as_ref(), at, 1, 1)?;
                    at
                } else {
                    fresh
                }
            }
            None => self.alloc(1)?,
        };
        self.check_overlap(start, len)?;
        let end = start + len;
        let frees = self.refcounts_mut()?.frees();
        self.compressed_tail = (end % cs != 0).then_some((end, frees));
        Ok(start)
    }

    fn release(&mut self, host: u64, len: u64) -> Result<()> {
        let storage = self.storage.clone();
        self.refcounts_mut()?
            .update_range(storage.as_ref(), host, len, -1)
    }

    /// Refuses (and marks the image corrupt) when `[at, at + len)` holds metadata.
    fn check_overlap(&mut self, at: u64, len: u64) -> Result<()> {
        match self.metadata_at(at, len) {
            Some(what) => Err(self.mark_corrupt(format!(
                "Preventing invalid write on metadata (overlaps with {what}) at {at:#x}"
            ))),
            None => Ok(()),
        }
    }

    /// Which metadata (QEMU's name for it) `[at, at + len)` overlaps, if any. Runs on
    /// every allocation: it walks the tables in place, allocating nothing.
    fn metadata_at(&self, at: u64, len: u64) -> Option<&'static str> {
        let cs = self.cs();
        let hits = |start: u64, size: u64| size > 0 && at < start + size && start < at + len;
        if hits(0, cs) {
            return Some("qcow2_header");
        }
        if hits(self.l1_offset, self.l1.len() as u64 * 8) {
            return Some("active L1 table");
        }
        if let Some(r) = self.refcounts() {
            if hits(r.table_offset(), r.table().len() as u64 * 8) {
                return Some("refcount table");
            }
            if r.blocks().any(|block| hits(block, cs)) {
                return Some("refcount block");
            }
        }
        let l2_tables = self.l1.iter().map(|&e| L1Entry::from_raw(e).l2_offset());
        if l2_tables.filter(|&l2| l2 != 0).any(|l2| hits(l2, cs)) {
            return Some("active L2 table");
        }
        for s in &self.snapshots {
            let l1 = &s.header;
            if hits(l1.l1_table_offset, u64::from(l1.l1_size) * 8) {
                return Some("inactive L1 table");
            }
        }
        let table = super::snapshot::table_len(&self.snapshots);
        hits(self.header.common.snapshots_offset, table).then_some("snapshot table")
    }

    fn classify_for_write(&mut self, slot: Slot) -> Result<Old> {
        let Slot {
            raw, l2_at, index, ..
        } = slot;
        let e = L2Entry::from_raw(raw);
        let cs = self.cs();
        if e.compressed() {
            let (host, len) = super::layer::compressed_span(raw, self.cluster_bits);
            return Ok(Old::Compressed { host, len });
        }
        let host = e.host_offset();
        let allocated = host != 0 || (self.data_file.is_some() && e.copied());
        if allocated && host % cs != 0 {
            return Err(self.mark_corrupt(format!(
                "Cluster allocation offset {host:#x} unaligned (L2 offset: {l2_at:#x}, L2 index: {index:#x})"
            )));
        }
        // An external data file has no refcounts: its clusters are always writable in place.
        let copied = e.copied() || self.data_file.is_some();
        Ok(match (allocated, e.zero() && !self.extended_l2) {
            (false, true) => Old::ZeroPlain,
            (false, false) => Old::Unallocated,
            (true, true) => Old::ZeroAlloc { host, copied },
            (true, false) => Old::Normal { host, copied },
        })
    }

    /// Writes guest bytes `data` at `off` of the cluster at guest `gc`, stored at host
    /// `host`. Encrypted data goes out at once in whole sectors (read, changed and
    /// rewritten where `data` covers only part of one). Plain data landing right after
    /// the previous piece is combined with it into one write, sent before the next
    /// barrier or when the request ends.
    fn store(&mut self, host: u64, gc: u64, off: u64, data: &[u8]) -> Result<()> {
        const LIMIT: usize = 4 << 20;
        if self.key.is_none() && self.data_file.is_none() {
            let at = host + off;
            if let Some((start, buf)) = &mut self.combined {
                if *start + buf.len() as u64 == at && buf.len() + data.len() <= LIMIT {
                    buf.extend_from_slice(data);
                    return Ok(());
                }
            }
            self.flush_combined()?;
            self.combined = Some((at, data.to_vec()));
            return Ok(());
        }
        crate::sector_io::write(
            self.data_storage().as_ref(),
            self.key.as_ref(),
            host + off,
            gc + off,
            data,
        )
    }

    /// Reads guest bytes at `off` of the cluster at guest `gc` stored at host `host`.
    fn fetch(&self, host: u64, gc: u64, off: u64, buf: &mut [u8]) -> Result<()> {
        crate::sector_io::read(
            self.data_storage().as_ref(),
            self.key.as_ref(),
            host + off,
            gc + off,
            buf,
        )
    }

    /// The current content of the cluster at guest `gc` as `old` describes it.
    fn old_content(&mut self, old: Old, gc: u64, below: &Below) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; self.cs() as usize];
        match old {
            Old::Unallocated => below(gc, &mut buf)?,
            Old::ZeroPlain | Old::ZeroAlloc { .. } => {}
            Old::Normal { host, .. } => self.fetch(host, gc, 0, &mut buf)?,
            Old::Compressed { host, len } => {
                let data = self.decompress(host, len)?;
                buf.copy_from_slice(&data);
            }
        }
        Ok(buf)
    }

    /// The L2 table for L1 entry `l1_index`, made writable: allocated when absent,
    /// copied when shared with a snapshot. Returns its host offset.
    fn writable_l2(&mut self, l1_index: u64) -> Result<u64> {
        let Some(&raw) = self.l1.get(l1_index as usize) else {
            return Err(Error::new(
                ErrorKind::BadArgument,
                format!("L1 index {l1_index} is past the L1 table"),
            ));
        };
        let e = L1Entry::from_raw(raw);
        let old = e.l2_offset();
        if old % self.cs() != 0 {
            return Err(self.mark_corrupt(format!(
                "L2 table offset {old:#x} unaligned (L1 index: {l1_index:#x})"
            )));
        }
        if old != 0 && e.copied() {
            return Ok(old);
        }
        let new = self.alloc(1)?;
        let fresh: super::l2cache::Table = if old != 0 {
            self.l2_table(old)?
        } else {
            vec![0u64; (self.cs() / 8) as usize].into()
        };
        self.storage
            .write_at(&crate::tables::to_be_bytes(&fresh), new)
            .map_err(|e| Error::io("writing an L2 table", e))?;
        // The cluster may have held a table before (freed since): the cache must not
        // answer with that one.
        self.l2_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(new, fresh);
        self.barrier()?;
        let entry = L1Entry::new().with_l2_offset(new).with_copied(true).raw();
        self.storage
            .write_at(&entry.to_be_bytes(), self.l1_offset + l1_index * 8)
            .map_err(|e| Error::io("writing the L1 table", e))?;
        self.l1[l1_index as usize] = entry;
        if old != 0 {
            self.barrier()?;
            self.release(old, self.cs())?;
        }
        Ok(new)
    }

    /// Zeros over `[host, host + len)` without writing them, if the file can.
    fn zero_range(&mut self, host: u64, len: u64) -> Result<bool> {
        self.storage
            .zero_range(host, len)
            .map_err(|e| Error::io(format!("zeroing the cluster at {host:#x}"), e))
    }

    /// Changes the L2 table at `l2_at` by the entries of `pending`, held for
    /// `write_back` with the frees they allow; written back at once when too much waits.
    fn publish(&mut self, l2_at: u64, pending: Pending) -> Result<()> {
        /// Frees held at most: each is a range to release after the next barrier.
        const MAX_PENDING_FREES: usize = 4096;
        if pending.entries.is_empty() {
            return Ok(());
        }
        let mut table: Vec<u64> = self.l2_table(l2_at)?.to_vec();
        let words = self.entry_words();
        for &(index, entry, bitmap) in &pending.entries {
            table[(index * words) as usize] = entry;
            if words == 2 {
                table[(index * 2 + 1) as usize] = bitmap;
            }
        }
        let waiting = {
            let mut cache = self.l2_cache.lock().unwrap_or_else(|e| e.into_inner());
            cache.insert_dirty(l2_at, table.into());
            // Held tables are not evicted: half the cache's room at most.
            cache.dirty_len() > (cache.capacity() / 2).max(1)
        };
        self.pending_frees.extend(pending.frees);
        if waiting || self.pending_frees.len() > MAX_PENDING_FREES {
            self.write_back()?;
        }
        Ok(())
    }

    /// Runs `per_cluster` over every cluster of `[guest, guest + len)`, one L2 table at a
    /// time, publishing each table's changes together.
    fn for_each_cluster(
        &mut self,
        guest: u64,
        len: u64,
        mut per_cluster: impl FnMut(&mut Self, Slot, &mut Pending) -> Result<()>,
    ) -> Result<()> {
        self.request(guest, len, |this, end| {
            this.walk_clusters(guest, end, &mut per_cluster)
        })
    }

    /// Runs `body(self, end)` as one request on `[guest, guest + len)`: refcount changes
    /// held to one write per block, and what is held sent out at the end.
    fn request(
        &mut self,
        guest: u64,
        len: u64,
        body: impl FnOnce(&mut Self, u64) -> Result<()>,
    ) -> Result<()> {
        self.is_writable()?;
        let end = guest
            .checked_add(len)
            .filter(|e| *e <= self.size)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::BadArgument,
                    format!("write of {len} bytes at {guest} is past the end of the image"),
                )
            })?;
        if let Writer::Open(r) = &mut self.writer {
            r.defer(true);
        }
        let result = body(self, end);
        // What is held (data for combining, refcounts) goes out whatever happened.
        let flushed = self.flush_combined();
        if let Writer::Open(r) = &mut self.writer {
            r.defer(false);
        }
        result.and(flushed)
    }

    /// True when `[guest, guest + len)` is whole clusters without host space
    /// (unallocated or plain zero) in a plain image: written whole, nothing of them
    /// needs reading, copying or freeing.
    fn all_new(&self, guest: u64, len: u64) -> Result<bool> {
        let cs = self.cs();
        if self.key.is_some()
            || self.data_file.is_some()
            || self.extended_l2
            || guest % cs != 0
            || len % cs != 0
            || len == 0
            || guest.checked_add(len).is_none_or(|end| end > self.size)
        {
            return Ok(false);
        }
        let entries = 1u64 << self.l2_bits;
        for c in guest / cs..(guest + len) / cs {
            let l1 = self.l1.get((c / entries) as usize).copied().unwrap_or(0);
            let l2 = L1Entry::from_raw(l1).l2_offset();
            if l2 == 0 {
                continue;
            }
            let raw = self.l2_table(l2)?[(c % entries) as usize];
            let e = L2Entry::from_raw(raw);
            if e.compressed() || e.host_offset() != 0 {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Writes whole new clusters (see `all_new`) the short way: per L2 table, one run
    /// of contiguous clusters allocated (as QEMU allocates them), the data written
    /// straight from `data` in one call, then the entries published.
    fn write_new_clusters(&mut self, guest: u64, data: &[u8]) -> Result<()> {
        let cs = self.cs();
        let end = guest + data.len() as u64;
        self.for_each_table(guest, end, |this, at, span_end, _, pending| {
            let n = (span_end - at) / cs;
            let host = this.alloc(n)?;
            let from = (at - guest) as usize;
            this.storage
                .write_at(&data[from..from + (n * cs) as usize], host)
                .map_err(|e| Error::io(format!("writing data at {host:#x}"), e))?;
            let first = (at / cs) % (1 << this.l2_bits);
            pending.entries.extend((0..n).map(|k| {
                let entry = L2Entry::new()
                    .with_host_offset(host + k * cs)
                    .with_copied(true);
                (first + k, entry.raw(), 0)
            }));
            Ok(())
        })
    }

    /// Runs `body(self, from, to, l2 offset, changes)` for each L2 table's part of
    /// `[guest, end)`, the table made writable first and the changes published after.
    fn for_each_table(
        &mut self,
        guest: u64,
        end: u64,
        mut body: impl FnMut(&mut Self, u64, u64, u64, &mut Pending) -> Result<()>,
    ) -> Result<()> {
        let table_span = 1u64 << (self.cluster_bits + self.l2_bits);
        let mut at = guest;
        while at < end {
            let l1_index = at / table_span;
            let span_end = end.min((l1_index + 1) * table_span);
            let l2_at = self.writable_l2(l1_index)?;
            let mut pending = Pending::default();
            body(self, at, span_end, l2_at, &mut pending)?;
            // The data and raised refcounts the entries depend on are written before
            // the entries reach the cache: entries of a failed write (ENOSPC, EIO) are
            // never published, so no table can point at data that is not there.
            self.flush_combined()?;
            self.publish(l2_at, pending)?;
            at = span_end;
        }
        Ok(())
    }

    fn walk_clusters(
        &mut self,
        guest: u64,
        end: u64,
        per_cluster: &mut impl FnMut(&mut Self, Slot, &mut Pending) -> Result<()>,
    ) -> Result<()> {
        let cs = self.cs();
        self.for_each_table(guest, end, |this, mut at, span_end, l2_at, pending| {
            while at < span_end {
                let gc = at & !(cs - 1);
                let stop = span_end.min(gc + cs);
                let index = (at >> this.cluster_bits) & ((1 << this.l2_bits) - 1);
                let table = this.l2_table(l2_at)?;
                let words = this.entry_words();
                let raw = table[(index * words) as usize];
                let bitmap = if words == 2 {
                    table[(index * 2 + 1) as usize]
                } else {
                    0
                };
                let slot = Slot {
                    gc,
                    a: at - gc,
                    b: stop - gc,
                    raw,
                    bitmap,
                    l2_at,
                    index,
                };
                per_cluster(this, slot, pending)?;
                at = stop;
            }
            Ok(())
        })
    }

    /// Writes `data` at guest offset `guest`. `below` supplies backing data for the
    /// parts of newly allocated clusters that `data` does not cover.
    pub fn write_at(&mut self, guest: u64, data: &[u8], below: &Below) -> Result<()> {
        if self.all_new(guest, data.len() as u64)? {
            return self.request(guest, data.len() as u64, |this, _| {
                this.write_new_clusters(guest, data)
            });
        }
        let cs = self.cs();
        let size = self.size;
        self.for_each_cluster(guest, data.len() as u64, |this, slot, pending| {
            let Slot {
                gc, a, b, index, ..
            } = slot;
            let src = &data[(gc + a - guest) as usize..(gc + b - guest) as usize];
            let old = this.classify_for_write(slot)?;
            if this.extended_l2 {
                return this.write_subclusters(slot, src, old, pending, below);
            }
            match old {
                Old::Normal { host, copied: true } => {
                    // In place: a damaged entry must not turn this into a metadata write.
                    if this.data_file.is_none() {
                        this.check_overlap(host, cs)?;
                    }
                    this.store(host, gc, a, src)
                }
                Old::ZeroAlloc { host, copied: true } => {
                    if this.data_file.is_none() {
                        this.check_overlap(host, cs)?;
                    }
                    let mut buf = vec![0u8; cs as usize];
                    buf[a as usize..b as usize].copy_from_slice(src);
                    this.store(host, gc, 0, &buf)?;
                    pending.entries.push((
                        index,
                        L2Entry::new()
                            .with_host_offset(host)
                            .with_copied(true)
                            .raw(),
                        0,
                    ));
                    Ok(())
                }
                _ => {
                    // The whole cluster is new: what `data` does not cover keeps its old content.
                    let covers_all = a == 0 && (b == cs || gc + b >= size);
                    let host = if this.data_file.is_some() {
                        gc
                    } else {
                        this.alloc(1)?
                    };
                    let was_zeros = old == Old::ZeroPlain
                        || (old == Old::Unallocated && this.header.backing_file.is_none());
                    if !covers_all
                        && was_zeros
                        && this.key.is_none()
                        && this.data_file.is_none()
                        && this.zero_range(host, cs)?
                    {
                        // The cluster reads as zeros already: only the new bytes are
                        // written (QEMU zeroes and writes the same way).
                        this.store(host, gc, a, src)?;
                    } else if src.len() as u64 == cs {
                        this.store(host, gc, 0, src)?;
                    } else {
                        let mut buf = if covers_all {
                            vec![0u8; cs as usize]
                        } else {
                            this.old_content(old, gc, below)?
                        };
                        buf[a as usize..b as usize].copy_from_slice(src);
                        this.store(host, gc, 0, &buf)?;
                    }
                    pending.entries.push((
                        index,
                        L2Entry::new()
                            .with_host_offset(host)
                            .with_copied(true)
                            .raw(),
                        0,
                    ));
                    match old {
                        Old::Normal { host, .. } | Old::ZeroAlloc { host, .. }
                            if this.data_file.is_none() =>
                        {
                            pending.frees.push((host, cs))
                        }
                        Old::Compressed { host, len } => pending.frees.push((host, len)),
                        _ => {}
                    }
                    Ok(())
                }
            }
        })
    }

    /// The extended-L2 case of a write: only the touched subclusters are written; a
    /// subcluster partly covered keeps the rest of its old content.
    fn write_subclusters(
        &mut self,
        slot: Slot,
        src: &[u8],
        old: Old,
        pending: &mut Pending,
        below: &Below,
    ) -> Result<()> {
        let Slot {
            gc,
            a,
            b,
            bitmap,
            index,
            ..
        } = slot;
        let cs = self.cs();
        let ss = cs / 32;
        let (s0, s1) = (a / ss, b.div_ceil(ss));
        let mask = sub_mask(s0, s1);
        let (alloc, zero) = (bitmap & ALL_SUBCLUSTERS, bitmap >> 32);
        // The span of whole subclusters, with the old content at its partial ends.
        let mut span = vec![0u8; ((s1 - s0) * ss) as usize];
        for k in [s0, s1 - 1] {
            let (lo, hi) = (k * ss, (k + 1) * ss);
            if a <= lo && b >= hi {
                continue;
            }
            let part = &mut span[((k - s0) * ss) as usize..((k - s0 + 1) * ss) as usize];
            match old {
                Old::Normal { host, .. } if alloc & (1 << k) != 0 => {
                    self.fetch(host, gc, lo, part)?
                }
                Old::Compressed { .. } => {}
                _ if zero & (1 << k) != 0 => part.fill(0),
                _ => below(gc + lo, part)?,
            }
        }
        span[(a - s0 * ss) as usize..(b - s0 * ss) as usize].copy_from_slice(src);
        let new_bitmap = |alloc: u64, zero: u64| (alloc | mask) | ((zero & !mask) << 32);
        match old {
            Old::Normal { host, copied: true } => {
                if self.data_file.is_none() {
                    self.check_overlap(host, cs)?;
                }
                self.store(host, gc, s0 * ss, &span)?;
                if alloc & mask != mask || zero & mask != 0 {
                    pending.entries.push((
                        index,
                        L2Entry::new()
                            .with_host_offset(host)
                            .with_copied(true)
                            .raw(),
                        new_bitmap(alloc, zero),
                    ));
                }
            }
            Old::Unallocated | Old::ZeroPlain | Old::ZeroAlloc { .. } => {
                let host = if self.data_file.is_some() {
                    gc
                } else {
                    self.alloc(1)?
                };
                self.store(host, gc, s0 * ss, &span)?;
                pending.entries.push((
                    index,
                    L2Entry::new()
                        .with_host_offset(host)
                        .with_copied(true)
                        .raw(),
                    new_bitmap(0, zero),
                ));
            }
            Old::Normal {
                host: old_host,
                copied: false,
            } => {
                let mut whole = vec![0u8; cs as usize];
                self.fetch(old_host, gc, 0, &mut whole)?;
                whole[(s0 * ss) as usize..(s1 * ss) as usize].copy_from_slice(&span);
                let host = self.alloc(1)?;
                self.store(host, gc, 0, &whole)?;
                pending.entries.push((
                    index,
                    L2Entry::new()
                        .with_host_offset(host)
                        .with_copied(true)
                        .raw(),
                    new_bitmap(alloc, zero),
                ));
                pending.frees.push((old_host, cs));
            }
            Old::Compressed {
                host: old_host,
                len,
            } => {
                let mut whole = self.old_content(old, gc, below)?;
                whole[a as usize..b as usize].copy_from_slice(src);
                let host = self.alloc(1)?;
                self.store(host, gc, 0, &whole)?;
                pending.entries.push((
                    index,
                    L2Entry::new()
                        .with_host_offset(host)
                        .with_copied(true)
                        .raw(),
                    ALL_SUBCLUSTERS,
                ));
                pending.frees.push((old_host, len));
            }
        }
        Ok(())
    }

    /// Makes `[guest, guest + len)` read as zeros. Whole clusters (or, with extended L2,
    /// whole subclusters) are marked zero in version 3 images; with `unmap` their space
    /// is released. Everything else is written as explicit zeros.
    pub fn write_zeroes(&mut self, guest: u64, len: u64, unmap: bool, below: &Below) -> Result<()> {
        self.is_writable()?;
        let cs = self.cs();
        let unit = if self.extended_l2 { cs / 32 } else { cs };
        let alone = self.header.backing_file.is_none() && self.data_file.is_none();
        if self.header.version() < 3 && alone {
            return self.write_zeroes_unbacked_v2(guest, len, below);
        }
        let explicit = self.header.version() < 3 || self.data_file.is_some();
        let end = guest + len;
        // The image's last cluster may be partial: ending at the image's end is whole.
        let last = if end == self.size {
            end
        } else {
            end / unit * unit
        };
        let first = guest.next_multiple_of(unit);
        if explicit || first >= last {
            return self.write_explicit_zeroes(guest, len, below);
        }
        self.write_explicit_zeroes(guest, first - guest, below)?;
        self.write_explicit_zeroes(last, end - last, below)?;
        let mut fallback = Vec::new();
        self.for_each_cluster(first, last - first, |this, slot, pending| {
            let Slot {
                gc,
                a,
                b,
                raw,
                bitmap,
                index,
                ..
            } = slot;
            let old = this.classify_for_write(slot)?;
            if this.extended_l2 {
                let ss = cs / 32;
                let mask = sub_mask(a / ss, b.div_ceil(ss));
                let (alloc, zero) = (bitmap & ALL_SUBCLUSTERS, bitmap >> 32);
                match old {
                    Old::Normal { copied: true, .. } => {
                        pending
                            .entries
                            .push((index, raw, (alloc & !mask) | ((zero | mask) << 32)));
                    }
                    Old::Unallocated | Old::ZeroPlain => {
                        pending.entries.push((index, 0, (zero | mask) << 32))
                    }
                    _ => fallback.push((gc + a, b - a)),
                }
                return Ok(());
            }
            let zero_entry = L2Entry::new().with_zero(true);
            match old {
                Old::Normal { host, copied: true } | Old::ZeroAlloc { host, copied: true }
                    if !unmap =>
                {
                    pending.entries.push((
                        index,
                        zero_entry.with_host_offset(host).with_copied(true).raw(),
                        0,
                    ));
                }
                Old::Normal { host, .. } | Old::ZeroAlloc { host, .. } => {
                    pending.entries.push((index, zero_entry.raw(), 0));
                    pending.frees.push((host, cs));
                }
                Old::Compressed { host, len } => {
                    pending.entries.push((index, zero_entry.raw(), 0));
                    pending.frees.push((host, len));
                }
                Old::Unallocated => pending.entries.push((index, zero_entry.raw(), 0)),
                Old::ZeroPlain => {}
            }
            Ok(())
        })?;
        for (at, n) in fallback {
            self.write_explicit_zeroes(at, n, below)?;
        }
        Ok(())
    }

    /// Zeros in a version 2 image without a backing file, as QEMU writes them: having
    /// no zero flag, whole clusters are discarded (unallocated reads as zeros), and a
    /// part of a cluster is left alone when it reads as zeros already, so that nothing
    /// is allocated for it; only a part holding data gets zeros written.
    fn write_zeroes_unbacked_v2(&mut self, guest: u64, len: u64, below: &Below) -> Result<()> {
        let cs = self.cs();
        let end = guest + len;
        let last = if end == self.size { end } else { end / cs * cs };
        let first = guest.next_multiple_of(cs);
        if first >= last {
            return self.zero_part(guest, end, below);
        }
        self.zero_part(guest, first, below)?;
        self.discard(first, last - first, below)?;
        self.zero_part(last, end, below)
    }

    /// Zeros over `[from, to)`, part of one cluster, unless it is unallocated.
    fn zero_part(&mut self, from: u64, to: u64, below: &Below) -> Result<()> {
        if from >= to {
            return Ok(());
        }
        let extent = self.map(from, to - from)?;
        if matches!(extent.mapping, Mapping::Unallocated { .. }) && extent.len >= to - from {
            return Ok(());
        }
        self.write_explicit_zeroes(from, to - from, below)
    }

    fn write_explicit_zeroes(&mut self, guest: u64, len: u64, below: &Below) -> Result<()> {
        let chunk = 1u64 << 20;
        let zeros = vec![0u8; chunk.min(len) as usize];
        let mut at = guest;
        while at < guest + len {
            let n = chunk.min(guest + len - at);
            self.write_at(at, &zeros[..n as usize], below)?;
            at += n;
        }
        Ok(())
    }

    /// Discards the whole clusters inside `[guest, guest + len)`, as QEMU does: in a
    /// version 3 image they then read as zeros; a version 2 image unallocates them when
    /// it has no backing file and keeps them when it has one.
    pub fn discard(&mut self, guest: u64, len: u64, below: &Below) -> Result<()> {
        self.is_writable()?;
        let cs = self.cs();
        let end = guest + len;
        let last = if end == self.size { end } else { end / cs * cs };
        let first = guest.next_multiple_of(cs);
        if first >= last {
            return Ok(());
        }
        if self.data_file.is_some() {
            // A raw data file must keep reading as the image: zeros are written there.
            return self.write_explicit_zeroes(first, last - first, below);
        }
        let has_backing = self.header.backing_file.is_some();
        let v3 = self.header.version() >= 3;
        if !v3 && has_backing {
            // A version 2 image cannot say "zeros", and unallocating would expose the
            // backing file: QEMU leaves the clusters as they are.
            return Ok(());
        }
        self.for_each_cluster(first, last - first, |this, slot, pending| {
            let Slot {
                raw,
                bitmap: old_bitmap,
                index,
                ..
            } = slot;
            let old = this.classify_for_write(slot)?;
            let allocated = !matches!(old, Old::Unallocated | Old::ZeroPlain);
            if !(has_backing || allocated) {
                return Ok(());
            }
            let (entry, bitmap) = match (this.extended_l2, v3) {
                (true, _) => (0, ALL_SUBCLUSTERS << 32),
                (false, true) => (L2Entry::new().with_zero(true).raw(), 0),
                (false, false) => (0, 0),
            };
            if (raw, old_bitmap) == (entry, bitmap) {
                return Ok(());
            }
            pending.entries.push((index, entry, bitmap));
            match old {
                Old::Normal { host, .. } | Old::ZeroAlloc { host, .. } => {
                    pending.frees.push((host, cs))
                }
                Old::Compressed { host, len } => pending.frees.push((host, len)),
                _ => {}
            }
            Ok(())
        })
    }

    /// Writes whole clusters compressed (a short last piece may end in the image's last
    /// cluster), packed end to end in the file.
    /// A cluster that does not shrink is written normally, as QEMU does.
    pub fn write_compressed(&mut self, guest: u64, data: &[u8], below: &Below) -> Result<()> {
        self.is_writable()?;
        let cs = self.cs();
        // A short final piece is allowed in the image's last cluster; the rest of that
        // cluster reads as zeros.
        let end = guest + data.len() as u64;
        if guest % cs != 0 || (end % cs != 0 && end.div_ceil(cs) != self.size.div_ceil(cs)) {
            return Err(Error::new(
                ErrorKind::BadArgument,
                "compressed writes must cover whole clusters",
            ));
        }
        if self.key.is_some() || self.data_file.is_some() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "compressed clusters are not possible in encrypted images or images with a data file",
            ));
        }
        // Compression is the slow part and needs no metadata: all of it first, on every
        // core; then each cluster is placed in order.
        let clusters: Vec<&[u8]> = data.chunks(cs as usize).collect();
        let results = self.compression.compress_clusters(&clusters, cs as usize)?;
        for (i, (chunk, compressed)) in clusters.into_iter().zip(results).enumerate() {
            let gc = guest + i as u64 * cs;
            let Some(compressed) = compressed else {
                self.write_at(gc, chunk, below)?;
                continue;
            };
            let clen = compressed.len() as u64;
            let host = self.alloc_bytes(clen)?;
            let descriptor = Qcow2CompressedDescriptor {
                host_offset: host,
                additional_sectors: (host + clen - 1) / 512 - host / 512,
            };
            let Some(bits) = descriptor.encode(self.cluster_bits) else {
                self.release(host, clen)?;
                self.write_at(gc, chunk, below)?;
                continue;
            };
            self.storage
                .write_at(&compressed, host)
                .map_err(|e| Error::io("writing a compressed cluster", e))?;
            // Freed compressed data may have lived at this offset before.
            *self.decompressed.lock().unwrap_or_else(|e| e.into_inner()) = None;
            let entry = bits | 1 << 62;
            let mut refused = false;
            self.for_each_cluster(gc, chunk.len() as u64, |this, slot, pending| {
                // As QEMU: a compressed cluster never replaces one that has host space.
                match this.classify_for_write(slot)? {
                    Old::Unallocated | Old::ZeroPlain => {
                        pending.entries.push((slot.index, entry, 0))
                    }
                    _ => refused = true,
                }
                Ok(())
            })?;
            if refused {
                self.release(host, clen)?;
                return Err(Error::new(
                    ErrorKind::BadArgument,
                    format!("a compressed write cannot replace the allocated cluster at {gc:#x}"),
                ));
            }
        }
        Ok(())
    }

    /// Makes every completed write durable: held metadata written back, then the
    /// file (and data file) flushed.
    pub fn flush(&mut self) -> Result<()> {
        self.write_back()?;
        self.sync_files()
    }
}

impl Qcow2 {
    /// Clears the entries of `[first, first + len)` (whole clusters) and releases their
    /// space: afterwards they are unallocated.
    pub(super) fn clear_entries(&mut self, first: u64, len: u64) -> Result<()> {
        let cs = self.cs();
        let data_file = self.data_file.is_some();
        self.for_each_cluster(first, len, |this, slot, pending| {
            if slot.raw == 0 && slot.bitmap == 0 {
                return Ok(());
            }
            let old = this.classify_for_write(slot)?;
            pending.entries.push((slot.index, 0, 0));
            match old {
                Old::Normal { host, .. } | Old::ZeroAlloc { host, .. } if !data_file => {
                    pending.frees.push((host, cs))
                }
                Old::Compressed { host, len } => pending.frees.push((host, len)),
                _ => {}
            }
            Ok(())
        })
    }

    /// Replaces the active L1 table by one with `entries` entries: written in fresh
    /// clusters, switched with one header write (size and offset are adjacent), then
    /// the old table freed.
    fn grow_l1(&mut self, entries: u64) -> Result<()> {
        let cs = self.cs();
        if entries * 8 > super::layer::MAX_L1_BYTES {
            return Err(Error::new(
                ErrorKind::BadArgument,
                "Active L1 table too large",
            ));
        }
        let mut l1 = self.l1.clone();
        l1.resize(entries as usize, 0);
        let bytes: Vec<u8> = l1.iter().flat_map(|e| e.to_be_bytes()).collect();
        let at = self.alloc((entries * 8).div_ceil(cs))?;
        self.storage
            .write_at(&bytes, at)
            .map_err(|e| Error::io("writing the L1 table", e))?;
        self.barrier()?;
        let mut switch = [0u8; 12];
        switch[..4].copy_from_slice(&(entries as u32).to_be_bytes());
        switch[4..].copy_from_slice(&at.to_be_bytes());
        self.storage
            .write_at(&switch, Qcow2Header::L1_SIZE_AT)
            .map_err(|e| Error::io("switching the L1 table", e))?;
        self.barrier()?;
        let (old_at, old_len) = (self.l1_offset, u64::from(self.header.common.l1_size) * 8);
        self.l1 = l1;
        self.l1_offset = at;
        self.header.common.l1_size = entries as u32;
        self.header.common.l1_table_offset = at;
        if old_len > 0 {
            self.release(old_at, old_len)?;
        }
        Ok(())
    }

    fn write_size(&mut self, size: u64) -> Result<()> {
        self.storage
            .write_at(&size.to_be_bytes(), Qcow2Header::SIZE_AT)
            .map_err(|e| Error::io("writing the image size", e))?;
        self.barrier()?;
        self.size = size;
        self.header.common.size = size;
        Ok(())
    }

    /// Changes the virtual size. Growing extends the L1 table as needed and makes the
    /// new range read as zeros; shrinking releases every cluster past the new end.
    pub fn resize(&mut self, new_size: u64, below: &Below) -> Result<()> {
        self.editable()?;
        let cs = self.cs();
        let old = self.size;
        let span = 1u64 << (self.cluster_bits + self.l2_bits);
        if new_size > old {
            // The grown range must not show the backing file: v3 marks it zero, v2 cannot
            // (and QEMU refuses the same way).
            let has_backing = self.header.backing_file.is_some();
            if has_backing && self.header.version() < 3 {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    "Failed to zero out new clusters: Operation not supported",
                ));
            }
            let entries = new_size.div_ceil(span);
            if entries > self.l1.len() as u64 {
                self.grow_l1(entries)?;
            }
            if let Some(d) = &self.data_file {
                if d.len()
                    .map_err(|e| Error::io("reading the data file size", e))?
                    < new_size
                {
                    d.set_len(new_size)
                        .map_err(|e| Error::io("growing the data file", e))?;
                }
            }
            // The rest of a partial last cluster may hold stale bytes from before a
            // shrink: the grown range must read as zeros.
            let tail_end = old.next_multiple_of(cs).min(new_size);
            self.write_size(new_size)?;
            if has_backing {
                return self.write_zeroes(old, new_size - old, false, below);
            }
            if tail_end > old {
                self.write_explicit_zeroes(old, tail_end - old, below)?;
            }
            return Ok(());
        }
        if new_size == old {
            return Ok(());
        }
        // Shrinking: size first (the clusters past it become unreachable leaks), then
        // every entry past the end cleared and its space released.
        self.write_size(new_size)?;
        let saved = self.size;
        self.size = old;
        let result = self.drop_from(new_size);
        self.size = saved;
        result?;
        Ok(())
    }
}
