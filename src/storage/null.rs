//! QEMU's `null-co` driver: no file at all, a disk of a stated size that reads as
//! zeros and drops what is written (for benchmarks and tests).

use super::{Run, Storage};
use std::io;

/// Storage of `size` bytes that read as zeros; writes are accepted and dropped.
#[derive(Debug)]
pub struct NullStorage {
    size: u64,
}

impl NullStorage {
    /// A null device of `size` bytes.
    pub fn new(size: u64) -> NullStorage {
        NullStorage { size }
    }
}

impl Storage for NullStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let n = self.size.saturating_sub(offset).min(buf.len() as u64) as usize;
        buf[..n].fill(0);
        Ok(n)
    }

    fn write_at(&self, _buf: &[u8], _offset: u64) -> io::Result<()> {
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.size)
    }

    fn set_len(&self, _len: u64) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "a null device cannot be resized",
        ))
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    /// Every byte is data, as QEMU's null-co reports it.
    fn allocation(&self, _offset: u64) -> io::Result<Option<Run>> {
        Ok(Some(Run {
            data: true,
            end: self.size,
        }))
    }
}
