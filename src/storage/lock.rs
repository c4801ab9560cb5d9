//! QEMU's image locking, so that cowimg and QEMU refuse each other's conflicting use of
//! an image: open-file-description (OFD) byte-range locks on the permission bytes that
//! QEMU's file-posix driver uses.
//!
//! An opener takes a shared lock on byte `100 + p` for each permission `p` it uses and
//! on byte `200 + p` for each permission it does not share with others; it is refused
//! when another opener holds `200 + p` for a permission it wants ("Failed to get "write"
//! lock") or `100 + p` for one it will not share ("Failed to get shared "write" lock").
//! OFD locks belong to one open file, so two opens in one process conflict as two
//! processes do, and closing the file releases them.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Where QEMU's permission bytes and "not shared" bytes start.
const PERMISSION_BASE: i64 = 100;
const UNSHARED_BASE: i64 = 200;

/// QEMU's block permissions, by bit: consistent read, write, write unchanged, resize.
const PERMISSION_NAMES: [&str; 4] = ["consistent read", "write", "write unchanged", "resize"];
const CONSISTENT_READ: u8 = 1 << 0;
const WRITE: u8 = 1 << 1;
const RESIZE: u8 = 1 << 3;

/// How an image file is used, as QEMU declares it with its locks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Access {
    /// Reading, with nobody else writing or resizing the file (qemu-img's read-only
    /// opens, backing files).
    #[default]
    Read,
    /// Reading and writing, with nobody else writing or resizing it (a writable open).
    Write,
    /// Reading whatever others do to the file (qemu-img's `-U`, `--force-share`).
    ForceShare,
    /// No locks taken or tested (QEMU's `file.locking=off`).
    Unlocked,
}

impl Access {
    /// What qemu-img declares for a use: writing, or reading (sharing everything with
    /// `force_share`, its `-U`).
    pub fn for_use(writable: bool, force_share: bool) -> Access {
        match (writable, force_share) {
            (true, _) => Access::Write,
            (false, true) => Access::ForceShare,
            (false, false) => Access::Read,
        }
    }

    /// The permissions used, and those not shared with other openers.
    fn permissions(self) -> (u8, u8) {
        match self {
            Access::Read => (CONSISTENT_READ, WRITE | RESIZE),
            Access::Write => (CONSISTENT_READ | WRITE | RESIZE, WRITE | RESIZE),
            Access::ForceShare => (CONSISTENT_READ, 0),
            Access::Unlocked => (0, 0),
        }
    }
}

/// Another opener holds the file in a way this access cannot live with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockConflict {
    /// QEMU's name of the permission: "write", "resize"…
    pub permission: &'static str,
    /// True when the conflict is a permission this opener would not share.
    pub shared: bool,
}

impl fmt::Display for LockConflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = if self.shared { "shared " } else { "" };
        write!(f, "Failed to get {shared}\"{}\" lock", self.permission)
    }
}

impl std::error::Error for LockConflict {}

/// One byte's lock request or test, for fcntl.
fn byte_lock(start: i64, kind: libc::c_short) -> libc::flock {
    // SAFETY: flock is plain data; all-zero is a valid value (l_pid must be 0 for OFD).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start;
    fl.l_len = 1;
    fl
}

/// Errors that mean the file system has no byte-range locks: nothing to lock then.
fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::ENOLCK | libc::EOPNOTSUPP | libc::ENOSYS)
    )
}

fn take_shared(file: &File, byte: i64) -> io::Result<()> {
    let fl = byte_lock(byte, libc::F_RDLCK as libc::c_short);
    // SAFETY: fcntl on a descriptor `file` owns, with a valid flock.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) } == -1 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EAGAIN | libc::EACCES) => {
                io::Error::new(e.kind(), format!("Failed to lock byte {byte}"))
            }
            _ => e,
        });
    }
    Ok(())
}

/// True when another open file holds a lock on `byte`.
fn held_elsewhere(file: &File, byte: i64) -> io::Result<bool> {
    let mut fl = byte_lock(byte, libc::F_WRLCK as libc::c_short);
    // SAFETY: fcntl on a descriptor `file` owns, with a valid flock it may fill in.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

/// Takes the locks of `access` on `file` and tests that no other opener conflicts. On
/// a conflict the error's kind is `WouldBlock` and its inner error a [`LockConflict`];
/// the locks taken go with the file when the caller drops it.
pub fn lock(file: &File, access: Access) -> io::Result<()> {
    let (used, unshared) = access.permissions();
    let bits = |mask: u8| (0..PERMISSION_NAMES.len()).filter(move |b| mask & (1 << b) != 0);
    let taken = bits(used)
        .map(|b| PERMISSION_BASE + b as i64)
        .chain(bits(unshared).map(|b| UNSHARED_BASE + b as i64))
        .try_for_each(|byte| take_shared(file, byte));
    match taken {
        Err(e) if unsupported(&e) => return Ok(()),
        other => other?,
    }
    // What others refuse to share that this opener uses, then what they use that it
    // will not share: QEMU's order, so the message names the same permission.
    let tests = bits(used)
        .map(|b| (UNSHARED_BASE + b as i64, b, false))
        .chain(bits(unshared).map(|b| (PERMISSION_BASE + b as i64, b, true)));
    for (byte, bit, shared) in tests {
        if held_elsewhere(file, byte)? {
            let conflict = LockConflict {
                permission: PERMISSION_NAMES[bit],
                shared,
            };
            return Err(io::Error::new(io::ErrorKind::WouldBlock, conflict));
        }
    }
    Ok(())
}

/// The conflict inside an error from [`lock`], if that is what it is.
pub fn conflict_of(e: &io::Error) -> Option<LockConflict> {
    e.get_ref()?.downcast_ref::<LockConflict>().copied()
}
