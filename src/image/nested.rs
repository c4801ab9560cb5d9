//! An image whose file is itself an image: QEMU's format nesting (`file.driver=qcow2`,
//! a qcow2 image stored in the guest disk of another). The inner image's guest disk
//! is the outer image's storage.

use super::Image;
use crate::storage::Storage;
use std::io;
use std::sync::Mutex;

/// The guest disk of an image, as storage for another image. Its length is the inner
/// image's virtual size; it does not grow.
#[derive(Debug)]
pub(crate) struct GuestDisk(Mutex<Image>);

impl GuestDisk {
    pub(crate) fn new(image: Image) -> GuestDisk {
        GuestDisk(Mutex::new(image))
    }

    fn image(&self) -> std::sync::MutexGuard<'_, Image> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Storage for GuestDisk {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let image = self.image();
        let n = image.size().saturating_sub(offset).min(buf.len() as u64) as usize;
        if n > 0 {
            image.read_at(&mut buf[..n], offset)?;
        }
        Ok(n)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        Ok(self.image().write_at(buf, offset)?)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.image().size())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        match len == self.image().size() {
            true => Ok(()),
            false => Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "the image holding this one cannot change its size",
            )),
        }
    }

    fn flush(&self) -> io::Result<()> {
        Ok(self.image().flush()?)
    }
}
