//! Resizing a qcow2 layer: growing the L1 table, dropping what lies past a shrunk end,
//! and the new size in the header.

use super::layer::Qcow2;
use super::write::Below;
use crate::error::{Error, ErrorKind, Result};
use crate::image::ReadLayer;

impl Qcow2 {
    /// Clears the entries of `[first, first + len)` (whole clusters) and releases their
    /// space: afterwards they are unallocated.
    pub(super) fn clear_entries(&mut self, first: u64, len: u64) -> Result<()> {
        self.for_each_cluster(first, len, |this, slot, pending| {
            if slot.raw == 0 && slot.bitmap == 0 {
                return Ok(());
            }
            let old = this.classify_for_write(slot)?;
            pending.entries.push((slot.index, 0, 0));
            pending.free(this.freed_by_replacing(old));
            Ok(())
        })
    }

    /// Replaces the active L1 table by one with `entries` entries: written in fresh
    /// clusters, switched with one header write (size and offset are adjacent), then
    /// the old table freed.
    pub(super) fn grow_l1(&mut self, entries: u64) -> Result<()> {
        let cs = self.cs();
        if entries * 8 > crate::format::qcow2::MAX_L1_BYTES {
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
        let (old_at, old_len) = (self.l1_offset(), u64::from(self.header.common.l1_size) * 8);
        self.header
            .write_l1_table(self.storage.as_ref(), at, entries as u32)?;
        self.barrier()?;
        self.l1 = l1;
        if old_len > 0 {
            self.release(old_at, old_len)?;
        }
        Ok(())
    }

    fn write_size(&mut self, size: u64) -> Result<()> {
        self.header.write_size(self.storage.as_ref(), size)?;
        self.barrier()?;
        Ok(())
    }

    /// Changes the virtual size. Growing extends the L1 table as needed and makes the
    /// new range read as zeros; shrinking releases every cluster past the new end.
    pub fn resize(&mut self, new_size: u64, below: &Below) -> Result<()> {
        self.editable()?;
        self.resize_bitmaps()?;
        if new_size % 512 != 0 {
            return Err(Error::new(
                ErrorKind::BadArgument,
                "The new size must be a multiple of 512",
            ));
        }
        let cs = self.cs();
        let old = self.size();
        let span = self.geometry.l2_span();
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
        // Shrinking, in QEMU's order: every entry past the new end cleared and its
        // space released, then the new size (a crash between leaves the old size, its
        // tail discarded).
        self.drop_from(new_size)?;
        self.write_size(new_size)
    }
}
