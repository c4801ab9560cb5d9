//! Zeros and discards in a qcow2 layer: zero flags (or subcluster zero bits) where the
//! version has them, discarded clusters where it does not, and explicit zeros where
//! nothing else reads right.

use super::entry::ClusterEntry;
use super::layer::Qcow2;
use super::write::{sub_mask, Below, Slot, ALL_SUBCLUSTERS};
use crate::error::Result;
use crate::image::ReadLayer;
use crate::mapping::Mapping;

impl Qcow2 {
    /// The whole `unit`-sized pieces inside `[guest, guest + len)`, as `[first, last)`
    /// (empty when `first >= last`). The image's last cluster may be partial: a range
    /// ending at the image's end ends on a whole one.
    fn whole_units(&self, guest: u64, len: u64, unit: u64) -> (u64, u64) {
        let end = guest + len;
        let last = if end == self.size() {
            end
        } else {
            end / unit * unit
        };
        (guest.next_multiple_of(unit), last)
    }

    /// Makes `[guest, guest + len)` read as zeros. Whole clusters (or, with extended L2,
    /// whole subclusters) are marked zero in version 3 images; with `unmap` their space
    /// is released. Everything else is written as explicit zeros.
    pub fn write_zeroes(&mut self, guest: u64, len: u64, unmap: bool, below: &Below) -> Result<()> {
        self.is_writable()?;
        self.track_change(guest, len)?;
        let cs = self.cs();
        let unit = if self.geometry.extended_l2 {
            cs / 32
        } else {
            cs
        };
        let alone = self.header.backing_file.is_none() && self.data_file.is_none();
        if self.header.version() < 3 && alone {
            return self.write_zeroes_unbacked_v2(guest, len, below);
        }
        let explicit = self.header.version() < 3 || self.data_file.is_some();
        let (first, last) = self.whole_units(guest, len, unit);
        if explicit || first >= last {
            return self.write_explicit_zeroes(guest, len, below);
        }
        self.write_explicit_zeroes(guest, first - guest, below)?;
        self.write_explicit_zeroes(last, guest + len - last, below)?;
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
            if this.geometry.extended_l2 {
                let ss = cs / 32;
                let mask = sub_mask(a / ss, b.div_ceil(ss));
                let (alloc, zero) = (bitmap & ALL_SUBCLUSTERS, bitmap >> 32);
                match old {
                    ClusterEntry::Normal { copied: true, .. } => {
                        pending
                            .entries
                            .push((index, raw, (alloc & !mask) | ((zero | mask) << 32)));
                    }
                    ClusterEntry::Unallocated | ClusterEntry::ZeroPlain => {
                        pending.entries.push((index, 0, (zero | mask) << 32))
                    }
                    _ => fallback.push((gc + a, b - a)),
                }
                return Ok(());
            }
            match old {
                ClusterEntry::Normal { host, copied: true }
                | ClusterEntry::ZeroAlloc { host, copied: true }
                    if !unmap =>
                {
                    pending
                        .entries
                        .push((index, ClusterEntry::owned_zero(host), 0));
                }
                ClusterEntry::ZeroPlain => {}
                _ => {
                    pending.entries.push((index, ClusterEntry::plain_zero(), 0));
                    pending.free(this.freed_by_replacing(old));
                }
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
    pub(super) fn write_zeroes_unbacked_v2(
        &mut self,
        guest: u64,
        len: u64,
        below: &Below,
    ) -> Result<()> {
        let end = guest + len;
        let (first, last) = self.whole_units(guest, len, self.cs());
        if first >= last {
            return self.zero_part(guest, end, below);
        }
        self.zero_part(guest, first, below)?;
        self.discard(first, last - first, below)?;
        self.zero_part(last, end, below)
    }

    /// Zeros over `[from, to)`, part of one cluster, unless it is unallocated.
    pub(super) fn zero_part(&mut self, from: u64, to: u64, below: &Below) -> Result<()> {
        if from >= to {
            return Ok(());
        }
        let extent = self.map(from, to - from)?;
        if matches!(extent.mapping, Mapping::Unallocated { .. }) && extent.len >= to - from {
            return Ok(());
        }
        self.write_explicit_zeroes(from, to - from, below)
    }

    pub(super) fn write_explicit_zeroes(
        &mut self,
        guest: u64,
        len: u64,
        below: &Below,
    ) -> Result<()> {
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
        self.track_change(guest, len)?;
        let cs = self.cs();
        let (first, last) = self.whole_units(guest, len, cs);
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
            let allocated = !matches!(old, ClusterEntry::Unallocated | ClusterEntry::ZeroPlain);
            if !(has_backing || allocated) {
                return Ok(());
            }
            let (entry, bitmap) = match (this.geometry.extended_l2, v3) {
                (true, _) => (0, ALL_SUBCLUSTERS << 32),
                (false, true) => (ClusterEntry::plain_zero(), 0),
                (false, false) => (0, 0),
            };
            if (raw, old_bitmap) == (entry, bitmap) {
                return Ok(());
            }
            pending.entries.push((index, entry, bitmap));
            pending.free(this.freed_by_replacing(old));
            Ok(())
        })
    }
}
