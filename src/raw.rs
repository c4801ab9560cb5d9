//! Raw images: guest offset = host offset.

use crate::error::{Error, Result};
use crate::image::ReadLayer;
use crate::mapping::{HostOffset, Mapping};
use crate::storage::{Run, Storage};
use std::sync::{Arc, Mutex};

/// A raw file as a layer.
#[derive(Debug)]
pub struct Raw {
    storage: Arc<dyn Storage>,
    /// The file's length rounded up to whole sectors, as QEMU sizes a raw image.
    size: u64,
    /// The file's length: past it, up to `size`, the image reads as zeros.
    file_len: u64,
    /// The last run of data or hole the file system reported, from where it was asked:
    /// asking costs two system calls, and reads walk forward through the same run.
    /// Forgotten on every change to the file.
    last_run: Mutex<Option<(u64, Run)>>,
}

impl Raw {
    pub fn open(storage: Arc<dyn Storage>) -> Result<Raw> {
        let size = storage
            .len()
            .map_err(|e| Error::io("reading the size of the raw image", e))?;
        Ok(Raw {
            storage,
            size: size.next_multiple_of(512),
            file_len: size,
            last_run: Mutex::new(None),
        })
    }

    /// Writes at `guest` (the image does not grow).
    /// The run holding `offset`, from the remembered one when it covers `offset`.
    fn allocation(&self, offset: u64) -> Option<Run> {
        let mut last = self.last_run.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((start, run)) = *last {
            if (start..run.end).contains(&offset) {
                return Some(run);
            }
        }
        let run = self
            .storage
            .allocation(offset)
            .ok()
            .flatten()
            .filter(|r| r.end > offset)?;
        *last = Some((offset, run));
        Some(run)
    }

    fn forget_runs(&mut self) {
        *self.last_run.get_mut().unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub fn write_at(&mut self, guest: u64, buf: &[u8]) -> Result<()> {
        self.forget_runs();
        self.file_len = self.file_len.max(guest + buf.len() as u64);
        self.storage
            .write_at(buf, guest)
            .map_err(|e| Error::io(format!("writing at {guest:#x}"), e))
    }

    /// Writes zeros over a range.
    pub fn write_zeroes(&mut self, guest: u64, len: u64) -> Result<()> {
        self.forget_runs();
        crate::image::write_zero_buffers(guest, len, |at, zeros| self.write_at(at, zeros))
    }

    /// Discards a range: a hole punched where the file system can (it reads as zeros
    /// and takes no space, as QEMU's discard leaves it), zeros written elsewhere.
    pub fn discard(&mut self, guest: u64, len: u64) -> Result<()> {
        self.forget_runs();
        let punched = (self.storage)
            .punch_hole(guest, len)
            .map_err(|e| Error::io("discarding", e))?;
        match punched {
            true => Ok(()),
            false => self.write_zeroes(guest, len),
        }
    }

    /// Sets the file's length.
    pub fn resize(&mut self, new_size: u64) -> Result<()> {
        self.forget_runs();
        self.storage
            .set_len(new_size)
            .map_err(|e| Error::io("resizing the image", e))?;
        if self.file_len == 0 {
            allocate_first_block(self.storage.as_ref(), new_size)?;
        }
        self.size = new_size.next_multiple_of(512);
        self.file_len = new_size;
        Ok(())
    }
}

impl ReadLayer for Raw {
    fn file(&self) -> &dyn Storage {
        self.storage.as_ref()
    }

    fn size(&self) -> u64 {
        self.size
    }

    /// Every byte is at its own offset: data, or a hole in the file (holes read as
    /// zeros, and say so, as QEMU's block status does).
    fn classify(&self, guest: u64) -> Result<(Mapping, u64)> {
        let host = HostOffset(guest);
        let (data, end) = match self.allocation(guest) {
            // The tail of the last sector, past the end of the file.
            _ if guest >= self.file_len => (false, self.size),
            Some(run) => (run.data, run.end.min(self.file_len)),
            None => (true, self.file_len),
        };
        let mapping = if data {
            Mapping::Data { host }
        } else {
            Mapping::Zero { host: Some(host) }
        };
        Ok((mapping, end.max(guest + 1)))
    }

    /// Every byte is at its own offset; holes and the end of the file read as zeros.
    fn read_data(&self, host: u64, _guest: u64, buf: &mut [u8]) -> Result<()> {
        self.storage
            .read_zero_padded(buf, host)
            .map_err(|e| Error::io(format!("reading at {host:#x}"), e))?;
        Ok(())
    }
}

/// Writes zeros over the first block of a raw file just sized from empty to `size`
/// bytes (512 bytes of a file under 4 KiB, else 4 KiB), as QEMU's file driver does so
/// that the block size can be probed later: `map` then shows that block as data,
/// as it shows it for a file qemu-img made.
pub(crate) fn allocate_first_block(storage: &dyn Storage, size: u64) -> Result<()> {
    if size == 0 {
        return Ok(());
    }
    let block = if size < 4096 { 512 } else { 4096 };
    storage
        .write_at(&[0u8; 4096][..block], 0)
        .map_err(|e| Error::io("allocating the first block", e))
}
