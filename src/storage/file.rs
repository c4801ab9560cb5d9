use super::{Run, Storage};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// A file on the local file system. Opened read-only, the operating system itself
/// refuses writes, so a read-only image can never change.
#[derive(Debug)]
pub struct FileStorage {
    file: File,
    writable: bool,
}

impl FileStorage {
    /// Opens an existing file, read-only unless `writable`.
    pub fn open(path: &Path, writable: bool) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(writable).open(path)?;
        Ok(FileStorage { file, writable })
    }

    /// Creates (or truncates) a file for writing.
    pub fn create(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(FileStorage {
            file,
            writable: true,
        })
    }

    pub fn is_writable(&self) -> bool {
        self.writable
    }
}

fn read_only() -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        "the image was opened read-only",
    )
}

impl Storage for FileStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.file.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if !self.writable {
            return Err(read_only());
        }
        self.file.write_all_at(buf, offset)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn allocated_size(&self) -> io::Result<Option<u64>> {
        use std::os::unix::fs::MetadataExt;
        Ok(Some(self.file.metadata()?.blocks() * 512))
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        if !self.writable {
            return Err(read_only());
        }
        self.file.set_len(len)
    }

    /// fallocate(FALLOC_FL_ZERO_RANGE), as QEMU zeroes a new cluster before writing
    /// part of it; file systems without it (tmpfs) answer false.
    fn zero_range(&self, offset: u64, len: u64) -> io::Result<bool> {
        if !self.writable {
            return Err(read_only());
        }
        let (Ok(at), Ok(n)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return Ok(false);
        };
        // SAFETY: fallocate on a descriptor this value owns; no memory is passed.
        let r =
            unsafe { libc::fallocate(self.file.as_raw_fd(), libc::FALLOC_FL_ZERO_RANGE, at, n) };
        if r == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS) => Ok(false),
            _ => Err(e),
        }
    }

    /// Asks the file system with lseek(SEEK_DATA / SEEK_HOLE), as QEMU's file driver
    /// does; the file position is unused (all I/O is positioned), so moving it is harmless.
    fn allocation(&self, offset: u64) -> io::Result<Option<Run>> {
        let fd = self.file.as_raw_fd();
        let seek = |whence| -> io::Result<Option<u64>> {
            let Ok(at) = libc::off_t::try_from(offset) else {
                return Ok(None);
            };
            // SAFETY: lseek on a descriptor this value owns; no memory is passed.
            let r = unsafe { libc::lseek(fd, at, whence) };
            if r >= 0 {
                return Ok(Some(r as u64));
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                // Past the last data: the rest of the file is a hole.
                Some(libc::ENXIO) => Ok(None),
                _ => Err(e),
            }
        };
        let len = self.len()?;
        if offset >= len {
            return Ok(None);
        }
        let data = match seek(libc::SEEK_DATA) {
            Ok(Some(d)) => d,
            Ok(None) => {
                return Ok(Some(Run {
                    data: false,
                    end: len,
                }))
            }
            // File systems without hole support answer EINVAL: all data.
            Err(_) => return Ok(None),
        };
        if data > offset {
            return Ok(Some(Run {
                data: false,
                end: data.min(len),
            }));
        }
        match seek(libc::SEEK_HOLE) {
            Ok(Some(hole)) if hole > offset => Ok(Some(Run {
                data: true,
                end: hole.min(len),
            })),
            _ => Ok(None),
        }
    }

    fn flush(&self) -> io::Result<()> {
        if !self.writable {
            return Ok(());
        }
        self.file.sync_data()
    }
}
