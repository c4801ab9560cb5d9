//! The write side of a qcow2 layer: whether it may write, what it holds back and when
//! that goes out (write-back in crash-safe order), and the allocator with its guard
//! against allocating over metadata.

use super::layer::{Qcow2, Writer};
use super::write::Pending;
use crate::error::{Error, ErrorKind, Result};
use crate::format::qcow2::incompatible;
use crate::format::qcow2::L1Entry;
use crate::storage::Storage;
use std::sync::Arc;

impl Qcow2 {
    pub(super) fn is_writable(&mut self) -> Result<()> {
        self.refcounts_mut()?;
        // With lazy refcounts, as QEMU: the dirty bit first (cleared on a clean close).
        let lazy = self.header.compatible_features()
            & crate::format::qcow2::compatible::LAZY_REFCOUNTS
            != 0;
        if lazy && !self.marked_dirty && self.header.version() >= 3 {
            let bits = self.header.incompatible_features() | incompatible::DIRTY;
            self.header
                .write_incompatible_features(self.storage.as_ref(), bits)?;
            self.storage
                .flush()
                .map_err(|e| Error::io("flushing the dirty bit", e))?;
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
    pub(super) fn flush_combined(&mut self) -> Result<()> {
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
    pub(super) fn barrier(&mut self) -> Result<()> {
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
    pub(super) fn sync_files(&self) -> Result<()> {
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
            for freed in std::mem::take(&mut self.pending_frees) {
                self.release(freed.host, freed.len)?;
            }
            self.flush_combined()?;
        }
        Ok(())
    }

    /// Sets the corrupt bit (as QEMU does for metadata damage found while writing) and
    /// returns the error to give. The handle takes no more writes afterwards, in either version (QEMU makes the
    /// node unusable); what it held unwritten is dropped, as a crash would drop it.
    pub(super) fn mark_corrupt(&mut self, message: String) -> Error {
        let bits = self.header.incompatible_features() | incompatible::CORRUPT;
        if self.header.version() >= 3
            && self
                .header
                .write_incompatible_features(self.storage.as_ref(), bits)
                .is_ok()
        {
            let _ = self.storage.flush();
        }
        self.writer = Writer::Stopped(message.clone());
        Error::new(
            ErrorKind::Corrupt,
            format!("qcow2: Marking image as corrupt: {message}"),
        )
    }

    pub(super) fn alloc(&mut self, n: u64) -> Result<u64> {
        let storage = self.storage.clone();
        let at = self.refcounts_mut()?.alloc(storage.as_ref(), n)?;
        self.check_overlap(at, n << self.geometry.cluster_bits)?;
        Ok(at)
    }

    /// Host bytes for one compressed cluster (`len` < one cluster), packed right after
    /// the previous one as QEMU packs them: each host cluster the bytes touch holds one
    /// more reference. Packing resumes only where nothing was freed in between, so the
    /// tail can never have been reused for something else.
    pub(super) fn alloc_bytes(&mut self, len: u64) -> Result<u64> {
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

    pub(super) fn release(&mut self, host: u64, len: u64) -> Result<()> {
        let storage = self.storage.clone();
        self.refcounts_mut()?
            .update_range(storage.as_ref(), host, len, -1)
    }

    /// Refuses (and marks the image corrupt) when `[at, at + len)` holds metadata.
    pub(super) fn check_overlap(&mut self, at: u64, len: u64) -> Result<()> {
        match self.metadata_at(at, len) {
            Some(what) => Err(self.mark_corrupt(format!(
                "Preventing invalid write on metadata (overlaps with {what}) at {at:#x}"
            ))),
            None => Ok(()),
        }
    }

    /// Which metadata (QEMU's name for it) `[at, at + len)` overlaps, if any. Runs on
    /// every allocation: it walks the tables in place, allocating nothing.
    pub(super) fn metadata_at(&self, at: u64, len: u64) -> Option<&'static str> {
        let cs = self.cs();
        let hits = |start: u64, size: u64| size > 0 && at < start + size && start < at + len;
        if hits(0, cs) {
            return Some("qcow2_header");
        }
        if hits(self.l1_offset(), self.l1.len() as u64 * 8) {
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

    /// Zeros over `[host, host + len)` without writing them, if the file can.
    pub(super) fn zero_range(&mut self, host: u64, len: u64) -> Result<bool> {
        self.storage
            .zero_range(host, len)
            .map_err(|e| Error::io(format!("zeroing the cluster at {host:#x}"), e))
    }

    /// Changes the L2 table at `l2_at` by the entries of `pending`, held for
    /// `write_back` with the frees they allow; written back at once when too much waits.
    pub(super) fn publish(&mut self, l2_at: u64, pending: Pending) -> Result<()> {
        /// Frees held at most: each is a range to release after the next barrier.
        const MAX_PENDING_FREES: usize = 4096;
        if pending.entries.is_empty() {
            return Ok(());
        }
        let mut table: Vec<u64> = self.l2_table(l2_at)?.to_vec();
        let words = self.geometry.entry_words();
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
}
