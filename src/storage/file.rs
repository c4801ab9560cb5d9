//! A file on the local file system, opened with QEMU's locks for its use; read-only
//! opens use read-only descriptors, so the operating system itself refuses writes.

use super::lock::{self, Access};
use super::{Run, Storage};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

/// A file on the local file system. Opened read-only, the operating system itself
/// refuses writes, so a read-only image can never change.
#[derive(Debug)]
pub struct FileStorage {
    file: File,
    writable: bool,
}

impl FileStorage {
    /// Opens an existing file, read-only unless `writable`, with QEMU's locks for that
    /// use (see [`Access`]).
    pub fn open(path: &Path, writable: bool) -> io::Result<Self> {
        Self::open_with(path, writable, Access::for_use(writable, false))
    }

    /// Opens an existing file, read-only unless `writable`, declaring `access` with
    /// QEMU's locks. Only regular files and devices are opened: a FIFO or socket would
    /// block the open or every read.
    ///
    /// A read-only open also asks for `O_NOATIME` (where the caller owns the file, or
    /// is root), so that examining an image leaves even its access time as it was.
    pub fn open_with(path: &Path, writable: bool, access: Access) -> io::Result<Self> {
        let open = |extra: libc::c_int| {
            OpenOptions::new()
                .read(true)
                .write(writable)
                .custom_flags(libc::O_NONBLOCK | extra)
                .open(path)
        };
        let file = match writable {
            true => open(0)?,
            // Not permitted on another user's file: then without it.
            false => match open(libc::O_NOATIME) {
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(0)?,
                other => other?,
            },
        };
        let kind = file.metadata()?.file_type();
        if !(kind.is_file() || kind.is_block_device() || kind.is_char_device()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "'file' driver requires '{}' to be a regular file",
                    path.display()
                ),
            ));
        }
        // Non-blocking was only for the open: devices are read as files are.
        // SAFETY: fcntl on a descriptor `file` owns; no memory is passed.
        unsafe {
            let fd = file.as_raw_fd();
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags != -1 {
                libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
            }
        }
        lock::lock(&file, access)?;
        Ok(FileStorage { file, writable })
    }

    /// Creates (or empties) a file for writing. The write lock is taken before the
    /// file is emptied, so a file another process (or this one) is using is refused
    /// whole, never truncated.
    pub fn create(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        lock::lock(&file, Access::Write)?;
        if file.metadata()?.len() > 0 {
            file.set_len(0)?;
            // ext4 marks a file truncated to nothing for writing out at its next close
            // (`auto_da_alloc`, for programs that rewrite files in place): closing a
            // second description of it now, while nothing is written, takes that
            // close, which would otherwise start writing out everything we write.
            drop(File::open(format!("/proc/self/fd/{}", file.as_raw_fd())));
        }
        Ok(FileStorage {
            file,
            writable: true,
        })
    }

    /// fallocate with `mode` over `[offset, offset + len)`; false, having changed
    /// nothing, where the file system or the file cannot.
    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<bool> {
        if !self.writable {
            return Err(read_only());
        }
        let (Ok(at), Ok(n)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return Ok(false);
        };
        // SAFETY: fallocate on a descriptor this value owns; no memory is passed.
        if unsafe { libc::fallocate(self.file.as_raw_fd(), mode, at, n) } == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS | libc::ENODEV) => Ok(false),
            _ => Err(e),
        }
    }

    fn is_char_device(&self) -> bool {
        self.file
            .metadata()
            .is_ok_and(|m| m.file_type().is_char_device())
    }

    /// Whether the file was opened for writing.
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
        self.fallocate(libc::FALLOC_FL_ZERO_RANGE, offset, len)
    }

    /// fallocate(FALLOC_FL_PUNCH_HOLE), as QEMU's file driver discards.
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<bool> {
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        self.fallocate(mode, offset, len)
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
        match self.file.sync_data() {
            // A character device (/dev/null) has nothing to synchronize: Linux says
            // EINVAL, and QEMU's host_device opens it without complaint.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && self.is_char_device() => Ok(()),
            other => other,
        }
    }
}
