//! Writing data into a qcow2 layer: plain and compressed clusters, and the request
//! machinery zeros and discards (`zeros.rs`) share; what is held back and the
//! allocator live in `writeback.rs`, resizing in `resize.rs`.
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

use super::entry::{ClusterEntry, Freed};
use super::layer::{Qcow2, Writer};
use crate::error::{Error, ErrorKind, Result};
use crate::format::qcow2::L1Entry;
use crate::image::ReadLayer;
use crate::storage::Storage;

pub use crate::mapping::Below;

pub(super) const ALL_SUBCLUSTERS: u64 = 0xffff_ffff;

/// The subclusters `[first, end)` as a bitmap mask.
pub(super) fn sub_mask(first: u64, end: u64) -> u64 {
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
pub(super) struct Slot {
    /// Guest offset of the cluster.
    pub(super) gc: u64,
    /// The bytes `[a, b)` of the cluster the request covers.
    pub(super) a: u64,
    pub(super) b: u64,
    /// Its L2 entry and (extended L2) subcluster bitmap.
    pub(super) raw: u64,
    pub(super) bitmap: u64,
    /// Where the entry is: L2 table and index.
    l2_at: u64,
    pub(super) index: u64,
}

/// Changes to one L2 table, published together.
#[derive(Default)]
pub(super) struct Pending {
    /// (entry index, entry, subcluster bitmap for extended L2)
    pub(super) entries: Vec<(u64, u64, u64)>,
    /// Host ranges whose refcounts drop once the entries are published.
    pub(super) frees: Vec<Freed>,
}

impl Pending {
    /// Holds what a replaced entry freed until the entries are published.
    pub(super) fn free(&mut self, freed: Option<Freed>) {
        self.frees.extend(freed);
    }
}

impl Qcow2 {
    pub(super) fn cs(&self) -> u64 {
        self.geometry.cluster_size()
    }

    /// What the L2 entry in `slot` says, for a writer: a damaged entry marks the image
    /// corrupt. Clusters of an external data file count as COPIED (they have no
    /// refcounts, so they are always written in place).
    pub(super) fn classify_for_write(&mut self, slot: Slot) -> Result<ClusterEntry> {
        let data_file = self.data_file.is_some();
        let entry = ClusterEntry::decode(slot.raw, self.geometry, data_file);
        if let Some(host) = entry.unaligned_host(self.geometry) {
            return Err(self.mark_corrupt(format!(
                "Cluster allocation offset {host:#x} unaligned (L2 offset: {:#x}, L2 index: {:#x})",
                slot.l2_at, slot.index
            )));
        }
        Ok(match entry {
            ClusterEntry::ZeroAlloc { host, .. } if data_file => {
                ClusterEntry::ZeroAlloc { host, copied: true }
            }
            ClusterEntry::Normal { host, .. } if data_file => {
                ClusterEntry::Normal { host, copied: true }
            }
            other => other,
        })
    }

    /// What replacing `old` frees in this image.
    pub(super) fn freed_by_replacing(&self, old: ClusterEntry) -> Option<Freed> {
        old.freed_by_replacing(self.geometry, self.data_file.is_some())
    }

    /// Writes guest bytes `data` at `off` of the cluster at guest `gc`, stored at host
    /// `host`. Encrypted data goes out at once in whole sectors (read, changed and
    /// rewritten where `data` covers only part of one). Plain data landing right after
    /// the previous piece is combined with it into one write, sent before the next
    /// barrier or when the request ends.
    pub(super) fn store(&mut self, host: u64, gc: u64, off: u64, data: &[u8]) -> Result<()> {
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
        let storage = self.data_storage();
        crate::sector_io::write(
            storage.as_ref(),
            self.key.as_ref(),
            host + off,
            gc + off,
            data,
        )
    }

    /// Reads guest bytes at `off` of the cluster at guest `gc` stored at host `host`.
    pub(super) fn fetch(&self, host: u64, gc: u64, off: u64, buf: &mut [u8]) -> Result<()> {
        self.read_data(host + off, gc + off, buf)
    }

    /// The current content of the cluster at guest `gc` as `old` describes it.
    pub(super) fn old_content(
        &mut self,
        old: ClusterEntry,
        gc: u64,
        below: &Below,
    ) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; self.cs() as usize];
        match old {
            ClusterEntry::Unallocated => below(gc, &mut buf)?,
            ClusterEntry::ZeroPlain | ClusterEntry::ZeroAlloc { .. } => {}
            ClusterEntry::Normal { host, .. } => self.fetch(host, gc, 0, &mut buf)?,
            ClusterEntry::Compressed { host, len, .. } => {
                self.read_compressed((host, len), 0, &mut buf)?
            }
        }
        Ok(buf)
    }

    /// The L2 table for L1 entry `l1_index`, made writable: allocated when absent,
    /// copied when shared with a snapshot. Returns its host offset.
    pub(super) fn writable_l2(&mut self, l1_index: u64) -> Result<u64> {
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
        let fresh: crate::l2cache::Table = if old != 0 {
            self.l2_table(old)?
        } else {
            vec![0u64; (self.cs() / 8) as usize].into()
        };
        // The cluster may have held a table before (freed since): the cache must not
        // answer with that one.
        self.put_l2_table(new, fresh)?;
        self.barrier()?;
        let entry = L1Entry::new().with_l2_offset(new).with_copied(true).raw();
        self.storage
            .write_at(&entry.to_be_bytes(), self.l1_offset() + l1_index * 8)
            .map_err(|e| Error::io("writing the L1 table", e))?;
        self.l1[l1_index as usize] = entry;
        if old != 0 {
            self.barrier()?;
            self.release(old, self.cs())?;
        }
        Ok(new)
    }

    /// Runs `per_cluster` over every cluster of `[guest, guest + len)`, one L2 table at a
    /// time, publishing each table's changes together.
    pub(super) fn for_each_cluster(
        &mut self,
        guest: u64,
        len: u64,
        per_cluster: impl FnMut(&mut Self, Slot, &mut Pending) -> Result<()>,
    ) -> Result<()> {
        self.for_each_cluster_within(guest, len, self.size(), per_cluster)
    }

    /// As `for_each_cluster`, for a range that may reach `limit` (past the disk: the VM
    /// state area).
    pub(super) fn for_each_cluster_within(
        &mut self,
        guest: u64,
        len: u64,
        limit: u64,
        mut per_cluster: impl FnMut(&mut Self, Slot, &mut Pending) -> Result<()>,
    ) -> Result<()> {
        self.request_within(guest, len, limit, |this, end| {
            this.walk_clusters(guest, end, &mut per_cluster)
        })
    }

    /// Runs `body(self, end)` as one request on `[guest, guest + len)`: refcount changes
    /// held to one write per block, and what is held sent out at the end.
    /// The range may reach `limit`: the disk's end, or past it in the VM state area.
    pub(super) fn request_within(
        &mut self,
        guest: u64,
        len: u64,
        limit: u64,
        body: impl FnOnce(&mut Self, u64) -> Result<()>,
    ) -> Result<()> {
        self.is_writable()?;
        let end = guest
            .checked_add(len)
            .filter(|e| *e <= limit)
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
    pub(super) fn all_new(&self, guest: u64, len: u64, limit: u64) -> Result<bool> {
        let cs = self.cs();
        if self.key.is_some()
            || self.data_file.is_some()
            || self.geometry.extended_l2
            || guest % cs != 0
            || len % cs != 0
            || len == 0
            || guest.checked_add(len).is_none_or(|end| end > limit)
        {
            return Ok(false);
        }
        let g = self.geometry;
        let entries = g.l2_entries();
        for c in guest / cs..(guest + len) / cs {
            let l1 = self.l1.get((c / entries) as usize).copied().unwrap_or(0);
            let l2 = L1Entry::from_raw(l1).l2_offset();
            if l2 == 0 {
                continue;
            }
            let raw = self.l2_table(l2)?[(c % entries) as usize];
            if ClusterEntry::decode(raw, g, false).host_range(g).is_some() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Writes whole new clusters (see `all_new`) the short way: per L2 table, one run
    /// of contiguous clusters allocated (as QEMU allocates them), the data written
    /// straight from `data` in one call, then the entries published.
    pub(super) fn write_new_clusters(&mut self, guest: u64, data: &[u8]) -> Result<()> {
        let cs = self.cs();
        let end = guest + data.len() as u64;
        self.for_each_table(guest, end, |this, at, span_end, _, pending| {
            let n = (span_end - at) / cs;
            let host = this.alloc(n)?;
            let from = (at - guest) as usize;
            this.storage
                .write_at(&data[from..from + (n * cs) as usize], host)
                .map_err(|e| Error::io(format!("writing data at {host:#x}"), e))?;
            let first = (at / cs) % (1 << this.geometry.l2_bits);
            pending
                .entries
                .extend((0..n).map(|k| (first + k, ClusterEntry::owned_data(host + k * cs), 0)));
            Ok(())
        })
    }

    /// Runs `body(self, from, to, l2 offset, changes)` for each L2 table's part of
    /// `[guest, end)`, the table made writable first and the changes published after.
    pub(super) fn for_each_table(
        &mut self,
        guest: u64,
        end: u64,
        mut body: impl FnMut(&mut Self, u64, u64, u64, &mut Pending) -> Result<()>,
    ) -> Result<()> {
        let table_span = self.geometry.l2_span();
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

    pub(super) fn walk_clusters(
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
                let index = (at >> this.geometry.cluster_bits) & ((1 << this.geometry.l2_bits) - 1);
                let table = this.l2_table(l2_at)?;
                let words = this.geometry.entry_words();
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
        self.track_change(guest, data.len() as u64)?;
        self.write_within(guest, data, below, self.size())
    }

    /// As `write_at`, for data that may reach `limit` (the VM state area lies past the
    /// disk; there, as past the disk's end, uncovered parts of new clusters are zeros).
    pub(super) fn write_within(
        &mut self,
        guest: u64,
        data: &[u8],
        below: &Below,
        limit: u64,
    ) -> Result<()> {
        if self.all_new(guest, data.len() as u64, limit)? {
            return self.request_within(guest, data.len() as u64, limit, |this, _| {
                this.write_new_clusters(guest, data)
            });
        }
        let cs = self.cs();
        let size = self.size();
        self.for_each_cluster_within(guest, data.len() as u64, limit, |this, slot, pending| {
            let Slot {
                gc, a, b, index, ..
            } = slot;
            let src = &data[(gc + a - guest) as usize..(gc + b - guest) as usize];
            let old = this.classify_for_write(slot)?;
            if this.geometry.extended_l2 {
                return this.write_subclusters(slot, src, old, pending, below);
            }
            match old {
                ClusterEntry::Normal { host, copied: true } => {
                    // In place: a damaged entry must not turn this into a metadata write.
                    if this.data_file.is_none() {
                        this.check_overlap(host, cs)?;
                    }
                    this.store(host, gc, a, src)
                }
                ClusterEntry::ZeroAlloc { host, copied: true } => {
                    if this.data_file.is_none() {
                        this.check_overlap(host, cs)?;
                    }
                    let mut buf = vec![0u8; cs as usize];
                    buf[a as usize..b as usize].copy_from_slice(src);
                    this.store(host, gc, 0, &buf)?;
                    pending
                        .entries
                        .push((index, ClusterEntry::owned_data(host), 0));
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
                    let was_zeros = old == ClusterEntry::ZeroPlain
                        || (old == ClusterEntry::Unallocated && this.header.backing_file.is_none());
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
                    pending
                        .entries
                        .push((index, ClusterEntry::owned_data(host), 0));
                    pending.free(this.freed_by_replacing(old));
                    Ok(())
                }
            }
        })
    }

    /// The extended-L2 case of a write: only the touched subclusters are written; a
    /// subcluster partly covered keeps the rest of its old content.
    pub(super) fn write_subclusters(
        &mut self,
        slot: Slot,
        src: &[u8],
        old: ClusterEntry,
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
        let (span, _) = crate::sector_io::widen_to_units(a, src, ss, |k, part| match old {
            ClusterEntry::Normal { host, .. } if alloc & (1 << k) != 0 => {
                self.fetch(host, gc, k * ss, part)
            }
            ClusterEntry::Compressed { .. } => Ok(()),
            _ if zero & (1 << k) != 0 => {
                part.fill(0);
                Ok(())
            }
            _ => below(gc + k * ss, part),
        })?;
        let new_bitmap = |alloc: u64, zero: u64| (alloc | mask) | ((zero & !mask) << 32);
        match old {
            ClusterEntry::Normal { host, copied: true } => {
                if self.data_file.is_none() {
                    self.check_overlap(host, cs)?;
                }
                self.store(host, gc, s0 * ss, &span)?;
                if alloc & mask != mask || zero & mask != 0 {
                    pending.entries.push((
                        index,
                        ClusterEntry::owned_data(host),
                        new_bitmap(alloc, zero),
                    ));
                }
            }
            ClusterEntry::Unallocated
            | ClusterEntry::ZeroPlain
            | ClusterEntry::ZeroAlloc { .. } => {
                let host = if self.data_file.is_some() {
                    gc
                } else {
                    self.alloc(1)?
                };
                self.store(host, gc, s0 * ss, &span)?;
                pending
                    .entries
                    .push((index, ClusterEntry::owned_data(host), new_bitmap(0, zero)));
            }
            ClusterEntry::Normal {
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
                    ClusterEntry::owned_data(host),
                    new_bitmap(alloc, zero),
                ));
                pending.free(self.freed_by_replacing(old));
            }
            ClusterEntry::Compressed { .. } => {
                let mut whole = self.old_content(old, gc, below)?;
                whole[a as usize..b as usize].copy_from_slice(src);
                let host = self.alloc(1)?;
                self.store(host, gc, 0, &whole)?;
                pending
                    .entries
                    .push((index, ClusterEntry::owned_data(host), ALL_SUBCLUSTERS));
                pending.free(self.freed_by_replacing(old));
            }
        }
        Ok(())
    }

    /// Writes whole clusters compressed (a short last piece may end in the image's last
    /// cluster), packed end to end in the file.
    /// A cluster that does not shrink is written normally, as QEMU does.
    pub fn write_compressed(&mut self, guest: u64, data: &[u8], below: &Below) -> Result<()> {
        self.is_writable()?;
        self.track_change(guest, data.len() as u64)?;
        let cs = self.cs();
        // A short final piece is allowed in the image's last cluster; the rest of that
        // cluster reads as zeros.
        let end = guest + data.len() as u64;
        if guest % cs != 0 || (end % cs != 0 && end.div_ceil(cs) != self.size().div_ceil(cs)) {
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
            let new = ClusterEntry::Compressed {
                host,
                len: clen,
                copied: false,
            };
            let Some(entry) = new.encode(self.geometry) else {
                self.release(host, clen)?;
                self.write_at(gc, chunk, below)?;
                continue;
            };
            self.storage
                .write_at(&compressed, host)
                .map_err(|e| Error::io("writing a compressed cluster", e))?;
            // Freed compressed data may have lived at this offset before.
            self.decompressed.clear();
            let mut refused = false;
            self.for_each_cluster(gc, chunk.len() as u64, |this, slot, pending| {
                // As QEMU: a compressed cluster never replaces one that has host space.
                match this.classify_for_write(slot)? {
                    ClusterEntry::Unallocated | ClusterEntry::ZeroPlain => {
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
