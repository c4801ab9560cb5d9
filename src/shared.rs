//! One image used by many threads at once: what an NBD server, a FUSE mount or Python
//! threads need. Reads run in parallel; each change (write, zeros, discard, flush,
//! resize) runs alone, as QEMU's qcow2 driver serialises metadata changes under its
//! lock, so the crash-safe order of every change holds whatever the threads do.

use crate::error::Result;
use crate::image::{BlockStatus, Image};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// A cloneable, thread-safe handle on one [`Image`]. Every clone is the same image;
/// the image is closed (its held metadata written) when the last clone is dropped.
///
/// ```no_run
/// use cowimg::{Format, Image, OpenOptions, SharedImage};
///
/// let options = OpenOptions::new().format(Format::Qcow2).writable(true);
/// let disk = SharedImage::new(Image::open("disk.qcow2", &options)?);
/// let writer = {
///     let disk = disk.clone();
///     std::thread::spawn(move || disk.write_at(&[1; 4096], 0))
/// };
/// let mut sector = [0u8; 512];
/// disk.read_at(&mut sector, 1 << 20)?;
/// writer.join().expect("the writer ran")?;
/// disk.flush()?;
/// # Ok::<(), cowimg::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct SharedImage {
    image: Arc<RwLock<Image>>,
}

impl SharedImage {
    /// Shares `image` between threads.
    pub fn new(image: Image) -> SharedImage {
        SharedImage {
            image: Arc::new(RwLock::new(image)),
        }
    }

    /// For reading: a thread that panicked while holding the image left nothing half
    /// done that a reader could see (changes are ordered to be safe at any point).
    fn reading(&self) -> RwLockReadGuard<'_, Image> {
        self.image.read().unwrap_or_else(|e| e.into_inner())
    }

    fn writing(&self) -> RwLockWriteGuard<'_, Image> {
        self.image.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The virtual disk's size in bytes.
    pub fn size(&self) -> u64 {
        self.reading().size()
    }

    /// Reads guest bytes at `offset`; other readers run at the same time.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.reading().read_at(buf, offset)
    }

    /// Writes guest bytes at `offset`, alone.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.writing().write_at(buf, offset)
    }

    /// Makes `[offset, offset + len)` read as zeros, freeing space with `unmap`.
    pub fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<()> {
        self.writing().write_zeroes(offset, len, unmap)
    }

    /// Gives back the space of `[offset, offset + len)` where the format can.
    pub fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.writing().discard(offset, len)
    }

    /// Makes every completed change durable.
    pub fn flush(&self) -> Result<()> {
        self.writing().flush()
    }

    /// Changes the virtual size.
    pub fn resize(&self, new_size: u64) -> Result<()> {
        self.writing().resize(new_size)
    }

    /// What the range from `offset` is (data, zeros, where), as far as one answer goes.
    pub fn block_status(&self, offset: u64, len: u64) -> Result<BlockStatus> {
        self.reading().block_status(offset, len)
    }

    /// Runs `f` on the image with other readers (info, snapshots, the chain…).
    pub fn with<R>(&self, f: impl FnOnce(&Image) -> R) -> R {
        f(&self.reading())
    }

    /// Runs `f` on the image alone (snapshots, commit, amend…).
    pub fn with_mut<R>(&self, f: impl FnOnce(&mut Image) -> R) -> R {
        f(&mut self.writing())
    }

    /// The image back, when this is the last handle.
    pub fn into_inner(self) -> Option<Image> {
        let lock = Arc::into_inner(self.image)?;
        Some(lock.into_inner().unwrap_or_else(|e| e.into_inner()))
    }
}
