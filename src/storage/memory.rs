//! Bytes in memory: images built or examined without a file (tests, fuzzing).

use super::Storage;
use std::io;
use std::sync::RwLock;

/// Bytes in memory: for tests, fuzzing, and images built before they are written out.
#[derive(Debug, Default)]
pub struct MemoryStorage {
    bytes: RwLock<Vec<u8>>,
}

impl MemoryStorage {
    /// Storage holding `bytes`.
    pub fn new(bytes: Vec<u8>) -> Self {
        MemoryStorage {
            bytes: RwLock::new(bytes),
        }
    }

    /// A copy of the current contents.
    pub fn to_vec(&self) -> Vec<u8> {
        self.bytes.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn index(offset: u64) -> io::Result<usize> {
    usize::try_from(offset).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "offset beyond addressable memory",
        )
    })
}

impl Storage for MemoryStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let bytes = self.bytes.read().unwrap_or_else(|e| e.into_inner());
        let Ok(start) = usize::try_from(offset) else {
            return Ok(0);
        };
        let Some(src) = bytes.get(start..) else {
            return Ok(0);
        };
        let n = src.len().min(buf.len());
        buf[..n].copy_from_slice(&src[..n]);
        Ok(n)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let start = index(offset)?;
        let end = start.checked_add(buf.len()).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "write past addressable memory")
        })?;
        let mut bytes = self.bytes.write().unwrap_or_else(|e| e.into_inner());
        if bytes.len() < end {
            bytes.resize(end, 0);
        }
        bytes[start..end].copy_from_slice(buf);
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.bytes.read().unwrap_or_else(|e| e.into_inner()).len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let len = index(len)?;
        self.bytes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .resize(len, 0);
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_short_at_the_end_and_pads_with_zeros() {
        let m = MemoryStorage::new(vec![1, 2, 3]);
        let mut buf = [9u8; 5];
        assert_eq!(m.read_at(&mut buf, 1).unwrap(), 2);
        assert_eq!(m.read_zero_padded(&mut buf, 1).unwrap(), 2);
        assert_eq!(buf, [2, 3, 0, 0, 0]);
        assert!(m.read_exact_at(&mut buf, 0).is_err());
        assert_eq!(m.read_at(&mut buf, u64::MAX).unwrap(), 0);
        m.write_at(&[7, 7], 4).unwrap();
        assert_eq!(m.to_vec(), vec![1, 2, 3, 0, 7, 7]);
        m.set_len(2).unwrap();
        assert_eq!(m.len().unwrap(), 2);
    }
}
