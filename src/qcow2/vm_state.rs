//! The VM state area of the current state: guest offsets past the disk, from the first
//! L1 entry the disk does not use, where savevm keeps RAM and device state (qemu-io's
//! `read -b` and `write -b`). Written through the ordinary write path, the L1 table
//! grown to reach it; read through the same mapping, unallocated parts as zeros (never
//! the backing file's).

use super::layer::Qcow2;
use super::write::Below;
use crate::error::{Error, ErrorKind, Result};
use crate::image::ReadLayer;
use crate::mapping::Mapping;

impl Qcow2 {
    /// Where the VM state area starts: the disk's end rounded up to a whole L2 table's
    /// span, as QEMU places it.
    pub fn vm_state_offset(&self) -> u64 {
        self.geometry.vm_state_start(self.size())
    }

    /// The guest range `[start, end)` that `len` bytes at `pos` of the VM state cover,
    /// refused when it reaches past what an L1 table may map.
    fn vm_state_range(&self, pos: u64, len: u64) -> Result<(u64, u64)> {
        let span = self.geometry.l2_span();
        let max = crate::format::qcow2::MAX_L1_BYTES / 8 * span;
        let start = self.vm_state_offset().checked_add(pos);
        match start.and_then(|s| Some((s, s.checked_add(len)?))) {
            Some((start, end)) if end <= max => Ok((start, end)),
            _ => Err(Error::new(
                ErrorKind::BadArgument,
                format!("{len} bytes of VM state at {pos} lie past what the L1 table can map"),
            )),
        }
    }

    /// Writes `data` at byte `pos` of the VM state, growing the L1 table as needed.
    pub fn write_vm_state(&mut self, pos: u64, data: &[u8], below: &Below) -> Result<()> {
        let (start, end) = self.vm_state_range(pos, data.len() as u64)?;
        let entries = end.div_ceil(self.geometry.l2_span());
        if entries > self.l1.len() as u64 {
            self.grow_l1(entries)?;
        }
        self.write_within(start, data, below, end)
    }

    /// Reads `buf.len()` bytes at byte `pos` of the VM state.
    pub fn read_vm_state(&self, pos: u64, buf: &mut [u8]) -> Result<()> {
        let (start, end) = self.vm_state_range(pos, buf.len() as u64)?;
        let mut guest = start;
        while guest < end {
            let extent =
                crate::mapping::extent_from(guest, end, |g| self.classify_in(&self.l1, g, end))?;
            let mut n = (extent.start + extent.len).min(end) - guest;
            if let Mapping::Compressed { cluster, .. } = extent.mapping {
                n = n.min(cluster + self.geometry.cluster_size() - guest);
            }
            let piece = &mut buf[(guest - start) as usize..(guest - start + n) as usize];
            match extent.mapping {
                Mapping::Data { .. } | Mapping::Compressed { .. } => {
                    self.read_mapped(&extent, guest, piece)?
                }
                _ => piece.fill(0),
            }
            guest += n;
        }
        Ok(())
    }
}
