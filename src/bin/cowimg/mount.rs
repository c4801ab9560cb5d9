//! `cowimg mount IMG MOUNTPOINT`: the guest disk as a file, through FUSE. The mount
//! holds `disk` (the whole chain read as one) and `snapshots/NAME` for each internal
//! snapshot (read-only). Read-only unless `-w` (writes go into the image, flushed on
//! fsync and unmount) or `--overlay NEW.qcow2` (writes go into a new overlay over the
//! image, which stays untouched). Runs in the foreground until unmounted or sent
//! SIGINT/SIGTERM; `-d` detaches once mounted.

use crate::flags::PartitionArgs;
use crate::source::SourceArgs;
use cowimg::{Error, ErrorKind, Image, SharedImage};
use fuser::{
    FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyWrite, Request,
};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    partition: PartitionArgs,
    /// Let writes into the image (qcow2, or a stated raw/qcow/cow format).
    #[arg(short = 'w', long = "writable")]
    writable: bool,
    /// Send writes into this new qcow2 overlay over the image, leaving the image as it is.
    #[arg(
        long = "overlay",
        value_name = "NEW.qcow2",
        conflicts_with = "writable"
    )]
    overlay: Option<PathBuf>,
    /// Detach once mounted.
    #[arg(short = 'd', long = "detach")]
    detach: bool,
    /// The image file.
    filename: String,
    /// Where to mount.
    mountpoint: PathBuf,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

const ROOT: u64 = 1;
const DISK: u64 = 2;
const SNAPSHOTS: u64 = 3;
/// Snapshot files are inodes FIRST_SNAPSHOT, FIRST_SNAPSHOT + 1, …
const FIRST_SNAPSHOT: u64 = 16;
const TTL: Duration = Duration::from_secs(1);

struct DiskFs {
    disk: Arc<SharedImage>,
    writable: bool,
    /// (file name, image at that snapshot)
    snapshots: Vec<(String, Arc<SharedImage>)>,
    uid: u32,
    gid: u32,
    started: SystemTime,
}

impl DiskFs {
    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let (kind, perm, size) = match ino {
            ROOT | SNAPSHOTS => (FileType::Directory, 0o555, 0),
            DISK => (
                FileType::RegularFile,
                if self.writable { 0o644 } else { 0o444 },
                self.disk.size(),
            ),
            n => {
                let i = n.checked_sub(FIRST_SNAPSHOT)? as usize;
                (
                    FileType::RegularFile,
                    0o444,
                    self.snapshots.get(i)?.1.size(),
                )
            }
        };
        Some(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: self.started,
            mtime: self.started,
            ctime: self.started,
            crtime: self.started,
            kind,
            perm,
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    fn image(&self, ino: u64) -> Option<&Arc<SharedImage>> {
        match ino {
            DISK => Some(&self.disk),
            n => self
                .snapshots
                .get(n.checked_sub(FIRST_SNAPSHOT)? as usize)
                .map(|(_, image)| image),
        }
    }
}

/// cowimg's error as an errno for the kernel.
fn errno(e: &Error) -> i32 {
    match e.kind() {
        ErrorKind::BadArgument => libc::EINVAL,
        ErrorKind::Unsupported => libc::EOPNOTSUPP,
        ErrorKind::InUse => libc::EBUSY,
        _ => libc::EIO,
    }
}

impl Filesystem for DiskFs {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let ino = match (parent, name.to_str()) {
            (ROOT, Some("disk")) => Some(DISK),
            (ROOT, Some("snapshots")) => Some(SNAPSHOTS),
            (SNAPSHOTS, Some(n)) => self
                .snapshots
                .iter()
                .position(|(s, _)| s == n)
                .map(|i| FIRST_SNAPSHOT + i as u64),
            _ => None,
        };
        match ino.and_then(|i| self.attr(i)) {
            Some(attr) => reply.entry(&TTL, &attr, 0),
            None => reply.error(libc::ENOENT),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.attr(ino) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(libc::ENOENT),
        }
    }

    /// Only what changes nothing is allowed: a disk has the size it has.
    #[allow(clippy::too_many_arguments)]
    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        match self.attr(ino) {
            Some(attr) if size.is_none_or(|s| s == attr.size) => reply.attr(&TTL, &attr),
            Some(_) => reply.error(libc::EPERM),
            None => reply.error(libc::ENOENT),
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let Some(image) = self.image(ino) else {
            return reply.error(libc::ENOENT);
        };
        let offset = offset.max(0) as u64;
        let end = image.size().min(offset.saturating_add(u64::from(size)));
        let mut buf = vec![0u8; end.saturating_sub(offset) as usize];
        if !buf.is_empty() {
            if let Err(e) = image.read_at(&mut buf, offset) {
                complain!("read at {offset}: {e}");
                return reply.error(errno(&e));
            }
        }
        reply.data(&buf);
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        if ino != DISK || !self.writable {
            return reply.error(libc::EROFS);
        }
        let offset = offset.max(0) as u64;
        if offset.saturating_add(data.len() as u64) > self.disk.size() {
            return reply.error(libc::ENOSPC);
        }
        match self.disk.write_at(data, offset) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => {
                complain!("write at {offset}: {e}");
                reply.error(errno(&e))
            }
        }
    }

    fn fsync(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.disk.flush() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let mut entries = vec![(ino, FileType::Directory, ".".to_string())];
        entries.push((ROOT, FileType::Directory, "..".to_string()));
        match ino {
            ROOT => {
                entries.push((DISK, FileType::RegularFile, "disk".into()));
                entries.push((SNAPSHOTS, FileType::Directory, "snapshots".into()));
            }
            SNAPSHOTS => {
                for (i, (name, _)) in self.snapshots.iter().enumerate() {
                    entries.push((
                        FIRST_SNAPSHOT + i as u64,
                        FileType::RegularFile,
                        name.clone(),
                    ));
                }
            }
            _ => return reply.error(libc::ENOTDIR),
        }
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset.max(0) as usize) {
            if reply.add(ino, i as i64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn destroy(&mut self) {
        if self.writable {
            if let Err(e) = self.disk.flush() {
                complain!("flushing on unmount: {e}");
            }
        }
    }
}

/// Names for snapshot files: the snapshot's name ('/' and NUL replaced), or, when two
/// share a name or it is empty, "ID-NAME".
fn snapshot_file_names(list: &[(String, String)]) -> Vec<String> {
    let clean = |s: &str| s.replace(['/', '\0'], "_");
    list.iter()
        .map(|(id, name)| {
            let shared = list.iter().filter(|(_, n)| n == name).count() > 1;
            if name.is_empty() || shared || name == "." || name == ".." {
                clean(&format!("{id}-{name}"))
            } else {
                clean(name)
            }
        })
        .collect()
}

fn build(args: &Args) -> Result<DiskFs, Error> {
    let (path, options) = args.source.resolve(&args.filename)?;
    let base = Image::open(&path, &options)?;
    crate::print_warnings(&base);
    let list: Vec<(String, String)> = base.snapshot_names();
    let names = snapshot_file_names(&list);
    // With -w the image is about to be opened for writing: the snapshot views share
    // the file (writes to the current state never touch a snapshot's clusters).
    let snapshot_options = options.clone().force_share(args.writable);
    let mut snapshots = Vec::new();
    for ((id, _), name) in list.iter().zip(names) {
        let at = args.partition.open_snapshot(&path, &snapshot_options, id)?;
        snapshots.push((name, Arc::new(SharedImage::new(at))));
    }
    let disk = if let Some(overlay) = &args.overlay {
        drop(base);
        crate::source::new_overlay(overlay, &path, options.format, &options)?
    } else if args.writable {
        drop(base);
        let mut options = options.clone().writable(true);
        if options.format.is_none() {
            let probed = crate::source::probed_self_describing(&path)?;
            options.format = Some(probed.ok_or_else(|| {
                Error::new(
                    ErrorKind::BadArgument,
                    "the image probed as raw: state its format with -f to mount it writable",
                )
            })?);
        }
        Image::open(&path, &options)?
    } else {
        base
    };
    let mut disk = disk;
    args.partition.apply(&mut disk)?;
    Ok(DiskFs {
        disk: Arc::new(SharedImage::new(disk)),
        writable: args.writable || args.overlay.is_some(),
        snapshots,
        // SAFETY: getuid/getgid cannot fail.
        uid: unsafe { libc::getuid() },
        gid: unsafe { libc::getgid() },
        started: SystemTime::now(),
    })
}

/// Detaches: the parent waits until the child has mounted (or failed), then exits.
fn detach(mountpoint: &Path) -> Result<(), Error> {
    use std::os::unix::fs::MetadataExt;
    let before = std::fs::metadata(mountpoint).map(|m| m.dev()).ok();
    // SAFETY: no threads have been started yet.
    match unsafe { libc::fork() } {
        -1 => Err(Error::io("fork", std::io::Error::last_os_error())),
        0 => {
            // SAFETY: setsid has no memory-safety preconditions.
            unsafe { libc::setsid() };
            Ok(())
        }
        child => {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while std::time::Instant::now() < deadline {
                if std::fs::metadata(mountpoint).map(|m| m.dev()).ok() != before {
                    std::process::exit(0);
                }
                let mut status = 0;
                // SAFETY: waitpid on our own child, without blocking.
                if unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) } == child {
                    std::process::exit(1);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            std::process::exit(1)
        }
    }
}

pub fn run(args: &Args) -> Result<ExitCode, Error> {
    if args.detach {
        detach(&args.mountpoint)?;
    }
    let fs = build(args)?;
    let mut options = vec![
        MountOption::FSName(format!("cowimg:{}", args.filename)),
        MountOption::Subtype("cowimg".into()),
        MountOption::DefaultPermissions,
    ];
    options.push(if fs.writable {
        MountOption::RW
    } else {
        MountOption::RO
    });
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let mounting = |e| Error::io(format!("mounting on '{}'", args.mountpoint.display()), e);
    let mut session = fuser::Session::new(fs, &args.mountpoint, &options).map_err(mounting)?;
    // A signal unmounts; so may anyone else (fusermount3 -u). Either way the session
    // loop ends, and the filesystem flushes as it is destroyed.
    let mut unmounter = session.unmount_callable();
    std::thread::spawn(move || {
        while !STOP.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = unmounter.unmount();
    });
    session.run().map_err(mounting)?;
    drop(session);
    Ok(ExitCode::SUCCESS)
}
