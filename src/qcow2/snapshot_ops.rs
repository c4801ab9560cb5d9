//! Taking, applying and deleting internal snapshots of a read-write image: reference
//! counts raised or lowered for a whole tree of tables, COPIED flags kept true, and the
//! snapshot table (`snapshot.rs`) replaced in one header write.

use super::entry::ClusterEntry;
use super::layer::{Qcow2, Writer};
use super::snapshot::{entry_bytes, read_table, table_len, Snapshot};
use crate::error::{Error, ErrorKind, Result};
use crate::format::qcow2::{L1Entry, L2Entry};
use crate::format::qcow2::{SnapshotHeader, MAX_L1_BYTES, MAX_SNAPSHOTS};
use crate::image::ReadLayer;
use crate::storage::Storage;

impl Qcow2 {
    fn io_err(what: &'static str) -> impl Fn(std::io::Error) -> Error {
        move |e| Error::io(what, e)
    }

    /// Calls `visit(host, len)` for every L2 table and data range an L1 table reaches.
    fn for_each_tree_range(
        &self,
        l1: &[u64],
        mut visit: impl FnMut(u64, u64) -> Result<()>,
    ) -> Result<()> {
        let cs = self.geometry.cluster_size();
        let words = self.geometry.entry_words() as usize;
        let data_file = self.data_file.is_some();
        for raw in l1 {
            let l2 = L1Entry::from_raw(*raw).l2_offset();
            if l2 == 0 {
                continue;
            }
            visit(l2, cs)?;
            let table = self.l2_table(l2)?;
            for &raw in table.iter().step_by(words) {
                let entry = ClusterEntry::decode(raw, self.geometry, data_file);
                if let Some((host, len)) = entry.refcounted_range(self.geometry, data_file) {
                    visit(host, len)?;
                }
            }
        }
        Ok(())
    }

    /// Refuses, before anything changes, a raise by `delta` of every cluster an L1
    /// table reaches that would take some cluster past the largest refcount (packed
    /// compressed clusters with narrow refcounts), so a snapshot that cannot be taken
    /// leaves nothing behind.
    fn check_headroom(&mut self, l1: &[u64], delta: u64) -> Result<()> {
        let mut raises: std::collections::HashMap<u64, u64> = Default::default();
        let cs = self.geometry.cluster_size();
        self.for_each_tree_range(l1, |from, len| {
            for c in from / cs..=(from + len - 1) / cs {
                *raises.entry(c).or_default() += delta;
            }
            Ok(())
        })?;
        let storage = self.storage.clone();
        let refcounts = self.refcounts_mut()?;
        for (cluster, raise) in raises {
            let now = refcounts.get(storage.as_ref(), cluster)?;
            if now + raise > refcounts.max() {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "refcount of cluster {cluster} would exceed {} (refcount_bits {})",
                        refcounts.max(),
                        refcounts.bits()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Adds `delta` to the refcount of every L2 table and data cluster an L1 table
    /// reaches (QEMU's update_snapshot_refcount).
    fn tree_refcounts(&mut self, l1: &[u64], delta: i64) -> Result<()> {
        let storage = self.storage.clone();
        // The walk reads tables through `self` while the refcounts change: they are
        // taken out for it and put back whatever happens.
        let mut refcounts = match std::mem::replace(&mut self.writer, Writer::ReadOnly) {
            Writer::Open(refcounts) => refcounts,
            other => {
                self.writer = other;
                // Not writable: the accessor says why.
                return self.refcounts_mut().map(|_| ());
            }
        };
        let result = self.for_each_tree_range(l1, |host, len| {
            refcounts.update_range(storage.as_ref(), host, len, delta)
        });
        self.writer = Writer::Open(refcounts);
        result
    }

    /// Sets every COPIED flag of the active L1 table and its L2 tables: to "refcount is
    /// 1" when `exact`, else cleared (the harmless direction, used before refcounts rise).
    fn set_copied_flags(&mut self, exact: bool) -> Result<()> {
        let cs = self.geometry.cluster_size();
        let storage = self.storage.clone();
        let words = self.geometry.entry_words() as usize;
        let data_file = self.data_file.is_some();
        for index in 0..self.l1.len() {
            let e = L1Entry::from_raw(self.l1[index]);
            let l2 = e.l2_offset();
            if l2 == 0 {
                continue;
            }
            let mut table: Vec<u64> = self.l2_table(l2)?.to_vec();
            let mut changed = false;
            for i in (0..table.len()).step_by(words) {
                let entry = ClusterEntry::decode(table[i], self.geometry, data_file);
                let Some(host) = entry.standard_host() else {
                    continue;
                };
                let want = exact
                    && (data_file || self.refcounts_mut()?.get(storage.as_ref(), host / cs)? == 1);
                if entry.copied() != want {
                    table[i] = L2Entry::from_raw(table[i]).with_copied(want).raw();
                    changed = true;
                }
            }
            if changed {
                self.put_l2_table(l2, table.into())?;
            }
            let want = exact && self.refcounts_mut()?.get(storage.as_ref(), l2 / cs)? == 1;
            if e.copied() != want {
                let raw = e.with_copied(want).raw();
                storage
                    .write_at(&raw.to_be_bytes(), self.l1_offset() + index as u64 * 8)
                    .map_err(Self::io_err("writing the L1 table"))?;
                self.l1[index] = raw;
            }
        }
        Ok(())
    }

    /// Rewrites the snapshot table as QEMU writes one, every entry's extra data at
    /// least complete (VM state size, disk size, icount: the values read, or their
    /// defaults), unknown extra data kept. Returns the indices of the entries whose
    /// extra data was shorter than `needed` bytes; nothing is written when none was.
    pub(crate) fn complete_snapshot_entries(&mut self, needed: u32) -> Result<Vec<usize>> {
        let short: Vec<usize> = (self.snapshots.iter().enumerate())
            .filter(|(_, s)| s.header.extra_data_size < needed)
            .map(|(i, _)| i)
            .collect();
        if !short.is_empty() {
            self.editable()?;
            self.write_snapshot_table(self.snapshots.clone())?;
        }
        Ok(short)
    }

    /// Writes `snapshots` as the new snapshot table in fresh clusters, switches the
    /// header to it in one write, then frees the old table.
    fn write_snapshot_table(&mut self, snapshots: Vec<Snapshot>) -> Result<()> {
        let cs = self.geometry.cluster_size();
        let bytes: Vec<u8> = snapshots.iter().flat_map(entry_bytes).collect();
        let old_offset = self.header.common.snapshots_offset;
        let old_len = table_len(&self.snapshots);
        let new_offset = if bytes.is_empty() {
            0
        } else {
            let clusters = (bytes.len() as u64).div_ceil(cs);
            let storage = self.storage.clone();
            let at = self.refcounts_mut()?.alloc(storage.as_ref(), clusters)?;
            self.storage
                .write_at(&bytes, at)
                .map_err(Self::io_err("writing the snapshot table"))?;
            self.sync()?;
            at
        };
        self.header.write_snapshot_table(
            self.storage.as_ref(),
            new_offset,
            snapshots.len() as u32,
        )?;
        self.sync()?;
        if old_offset != 0 && old_len > 0 {
            let storage = self.storage.clone();
            self.refcounts_mut()?
                .update_range(storage.as_ref(), old_offset, old_len, -1)?;
        }
        // Re-read so that offsets and extra data are exactly what is on disk.
        self.snapshots = read_table(
            self.storage.as_ref(),
            new_offset,
            snapshots.len() as u32,
            self.size(),
        )?;
        Ok(())
    }

    /// Takes an internal snapshot of the current state, named `name`; returns its id.
    pub fn snapshot_create(&mut self, name: &str) -> Result<String> {
        self.editable()?;
        if self.data_file.is_some() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "Internal snapshots are not supported with an external data file",
            ));
        }
        if self.snapshots.len() as u32 >= MAX_SNAPSHOTS {
            return Err(Error::new(
                ErrorKind::BadArgument,
                "Snapshot table too large",
            ));
        }
        if name.len() > u16::MAX as usize {
            return Err(Error::new(ErrorKind::BadArgument, "snapshot name too long"));
        }
        let cs = self.geometry.cluster_size();
        let id = self
            .snapshots
            .iter()
            .filter_map(|s| s.id.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
            + 1;
        let id = id.to_string();

        self.check_headroom(&self.l1.clone(), 1)?;
        // 1. The snapshot's own copy of the L1 table (unreferenced until published).
        let l1_bytes: Vec<u8> = self.l1.iter().flat_map(|e| e.to_be_bytes()).collect();
        let l1_len = (self.header.common.l1_size as u64 * 8).max(8);
        let storage = self.storage.clone();
        let l1_at = self
            .refcounts_mut()?
            .alloc(storage.as_ref(), l1_len.div_ceil(cs))?;
        let mut padded = l1_bytes.clone();
        padded.resize((self.header.common.l1_size as u64 * 8) as usize, 0);
        self.storage
            .write_at(&padded, l1_at)
            .map_err(Self::io_err("writing the snapshot's L1 table"))?;
        // 2. COPIED cleared everywhere, 3. then the refcounts raised (leaks until
        // published), 4. then the table and header. A flag and a refcount live in two
        // clusters, so a crash between 2 and 3 leaves flags that check reports (and
        // -r all repairs); this order leaves the harmless kind, a flag cleared early (at
        // worst an extra copy), never a flag that lets a shared cluster be written in
        // place.
        self.set_copied_flags(false)?;
        self.sync()?;
        let l1 = self.l1.clone();
        self.tree_refcounts(&l1, 1)?;
        self.sync()?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let mut snapshots = self.snapshots.clone();
        snapshots.push(Snapshot {
            header: SnapshotHeader {
                l1_table_offset: l1_at,
                l1_size: self.header.common.l1_size,
                id_str_size: 0,
                name_size: 0,
                date_sec: now.as_secs() as u32,
                date_nsec: now.subsec_nanos(),
                vm_clock_nsec: 0,
                vm_state_size: 0,
                extra_data_size: 0,
            },
            vm_state_size: 0,
            disk_size: self.size(),
            icount: Some(0),
            id: id.clone(),
            name: name.to_string(),
            unknown_extra: Vec::new(),
            offset: 0,
        });
        self.write_snapshot_table(snapshots)?;
        Ok(id)
    }

    /// Finds a snapshot by id, else by name (as qemu-img does).
    pub fn find_snapshot(&self, id_or_name: &str) -> Option<usize> {
        self.snapshots
            .iter()
            .position(|s| s.id == id_or_name)
            .or_else(|| self.snapshots.iter().position(|s| s.name == id_or_name))
    }

    pub(super) fn read_snapshot_l1(&self, s: &Snapshot) -> Result<Vec<u64>> {
        let cs = self.geometry.cluster_size();
        if s.header.l1_table_offset % cs != 0 {
            return Err(Error::new(
                ErrorKind::Corrupt,
                "Snapshot L1 table offset invalid",
            ));
        }
        if u64::from(s.header.l1_size) * 8 > MAX_L1_BYTES {
            return Err(Error::new(
                ErrorKind::Corrupt,
                "Snapshot L1 table too large",
            ));
        }
        let mut bytes = vec![0u8; s.header.l1_size as usize * 8];
        self.storage
            .read_zero_padded(&mut bytes, s.header.l1_table_offset)
            .map_err(Self::io_err("reading a snapshot's L1 table"))?;
        Ok(crate::tables::from_be_bytes(&bytes))
    }

    /// The index of the snapshot `id_or_name` names, or QEMU's error for `verb`.
    fn snapshot_for(&self, verb: &str, id_or_name: &str) -> Result<usize> {
        self.find_snapshot(id_or_name).ok_or_else(|| {
            Error::new(
                ErrorKind::BadArgument,
                format!("Could not {verb} snapshot '{id_or_name}': snapshot not found"),
            )
        })
    }

    /// Deletes a snapshot: first from the table (so it is gone even after a crash), then
    /// its references; finally COPIED flags are set where clusters are no longer shared.
    pub fn snapshot_delete(&mut self, id_or_name: &str) -> Result<()> {
        self.editable()?;
        let index = self.snapshot_for("delete", id_or_name)?;
        let victim = self.snapshots[index].clone();
        let l1 = self.read_snapshot_l1(&victim)?;
        let mut snapshots = self.snapshots.clone();
        snapshots.remove(index);
        self.write_snapshot_table(snapshots)?;
        self.tree_refcounts(&l1, -1)?;
        let storage = self.storage.clone();
        let l1_len = (u64::from(victim.header.l1_size) * 8).max(8);
        self.refcounts_mut()?.update_range(
            storage.as_ref(),
            victim.header.l1_table_offset,
            l1_len,
            -1,
        )?;
        self.sync()?;
        self.set_copied_flags(true)?;
        self.sync()
    }

    /// Makes a snapshot the current state: its tree gains a reference, the active L1
    /// table takes its entries (COPIED cleared), the old tree loses one, and COPIED
    /// flags are recomputed.
    pub fn snapshot_apply(&mut self, id_or_name: &str) -> Result<()> {
        self.editable()?;
        let index = self.snapshot_for("apply", id_or_name)?;
        let target = self.snapshots[index].clone();
        let l1 = self.read_snapshot_l1(&target)?;
        self.check_headroom(&l1, 1)?;
        if l1.len() > self.l1.len() || target.disk_size != self.size() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "applying a snapshot taken at another disk size is not supported yet",
            ));
        }
        self.tree_refcounts(&l1, 1)?;
        self.sync()?;
        let old = self.l1.clone();
        let mut new = l1
            .iter()
            .map(|e| L1Entry::from_raw(*e).with_copied(false).raw())
            .collect::<Vec<_>>();
        new.resize(self.l1.len(), 0);
        let bytes: Vec<u8> = new.iter().flat_map(|e| e.to_be_bytes()).collect();
        self.storage
            .write_at(&bytes, self.l1_offset())
            .map_err(Self::io_err("writing the L1 table"))?;
        self.l1 = new;
        self.sync()?;
        self.tree_refcounts(&old, -1)?;
        self.sync()?;
        self.set_copied_flags(true)?;
        self.sync()
    }
}
