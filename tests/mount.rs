//! `cowimg mount` on a real FUSE mount (as root, with /dev/fuse and fusermount3; the
//! tests skip with a message elsewhere): file contents against qemu-img, writes against
//! qemu-io on a copy, an overlay that leaves the image untouched.

mod common;

use common::{qemu_img, qemu_io, Scratch};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

fn can_mount() -> bool {
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let fusermount = Command::new("fusermount3").arg("-V").output().is_ok();
    if !(root && Path::new("/dev/fuse").exists() && fusermount) {
        eprintln!("skipped: FUSE mounts need root, /dev/fuse and fusermount3 (fuse3)");
        return false;
    }
    true
}

fn dev(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().dev()
}

/// A mount in the foreground, unmounted (SIGTERM, then waited for) when dropped.
struct Mounted {
    child: Child,
    point: PathBuf,
}

impl Mounted {
    fn new(args: &[&str], point: &Path) -> Mounted {
        std::fs::create_dir_all(point).unwrap();
        let before = dev(point);
        let mut all = vec!["mount"];
        all.extend_from_slice(args);
        all.push(point.to_str().unwrap());
        let mut child = Command::new(env!("CARGO_BIN_EXE_cowimg"))
            .args(&all)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while dev(point) == before {
            assert!(Instant::now() < deadline, "never mounted");
            if let Some(status) = child.try_wait().unwrap() {
                panic!("cowimg mount {args:?} ended before mounting: {status}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Mounted {
            child,
            point: point.to_path_buf(),
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.point.join(name)
    }

    /// Unmounts as a user would (SIGTERM) and waits for the process.
    fn unmount(mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        assert!(self.child.wait().unwrap().success());
        std::mem::forget(self);
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn sample(dir: &Scratch) -> String {
    let path = dir.str("disk.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &path, "32M"]);
    qemu_io(&[
        "-c",
        "write -P 0x11 0 2M",
        "-c",
        "write -P 0x12 20M 1M",
        &path,
    ]);
    qemu_img(&["snapshot", "-c", "first", &path]);
    qemu_io(&["-c", "write -P 0x21 1M 2M", &path]);
    qemu_img(&["snapshot", "-c", "second", &path]);
    qemu_io(&["-c", "write -z 0 64k", &path]);
    path
}

fn converted(dir: &Scratch, args: &[&str], name: &str) -> Vec<u8> {
    let out = dir.str(name);
    qemu_img(&[&["convert"], args, &["-O", "raw", &out]].concat());
    std::fs::read(out).unwrap()
}

fn dd(to: &Path, seek_kib: u64, byte: u8, kib: usize) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().write(true).open(to).unwrap();
    f.seek(SeekFrom::Start(seek_kib << 10)).unwrap();
    f.write_all(&vec![byte; kib << 10]).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn the_disk_and_each_snapshot_read_as_qemu_img_converts_them() {
    if !can_mount() {
        return;
    }
    let dir = Scratch::new("mount-read");
    let image = sample(&dir);
    let before = std::fs::read(&image).unwrap();
    let m = Mounted::new(&["-f", "qcow2", &image], &dir.path("mnt"));
    assert!(
        std::fs::read(m.file("disk")).unwrap()
            == converted(&dir, &["-f", "qcow2", &image], "now.raw")
    );
    for name in ["first", "second"] {
        let want = converted(
            &dir,
            &[
                "-f",
                "qcow2",
                "-l",
                &format!("snapshot.name={name}"),
                &image,
            ],
            &format!("{name}.raw"),
        );
        assert!(
            std::fs::read(m.file(&format!("snapshots/{name}"))).unwrap() == want,
            "{name}"
        );
    }
    // Read-only: writing is refused, and the image did not change.
    assert!(std::fs::OpenOptions::new()
        .write(true)
        .open(m.file("disk"))
        .is_err());
    m.unmount();
    assert!(std::fs::read(&image).unwrap() == before);
}

#[test]
fn writes_go_into_the_image_and_qemu_img_finds_it_clean() {
    if !can_mount() {
        return;
    }
    let dir = Scratch::new("mount-write");
    let image = sample(&dir);
    let model = dir.str("model.qcow2");
    std::fs::copy(&image, &model).unwrap();
    let m = Mounted::new(&["-w", "-f", "qcow2", &image], &dir.path("mnt"));
    dd(&m.file("disk"), 100, 0x7a, 300);
    dd(&m.file("disk"), 20 << 10, 0x7b, 64);
    m.unmount();
    qemu_io(&[
        "-c",
        "write -P 0x7a 100k 300k",
        "-c",
        "write -P 0x7b 20M 64k",
        &model,
    ]);
    qemu_img(&["check", &image]);
    qemu_img(&["compare", "-f", "qcow2", "-F", "qcow2", &model, &image]);
}

#[test]
fn an_overlay_takes_the_writes_and_the_evidence_stays_untouched() {
    if !can_mount() {
        return;
    }
    let dir = Scratch::new("mount-overlay");
    let image = sample(&dir);
    let before = std::fs::read(&image).unwrap();
    let overlay = dir.str("scratch.qcow2");
    let m = Mounted::new(
        &["--overlay", &overlay, "-f", "qcow2", &image],
        &dir.path("mnt"),
    );
    dd(&m.file("disk"), 4, 0x5e, 8);
    let through_mount = std::fs::read(m.file("disk")).unwrap();
    m.unmount();
    assert!(
        std::fs::read(&image).unwrap() == before,
        "the image changed"
    );
    qemu_img(&["check", &overlay]);
    let model = dir.str("model.qcow2");
    std::fs::copy(&image, &model).unwrap();
    qemu_io(&["-c", "write -P 0x5e 4k 8k", &model]);
    qemu_img(&["compare", "-f", "qcow2", "-F", "qcow2", &model, &overlay]);
    assert!(through_mount == converted(&dir, &["-f", "qcow2", &overlay], "overlay.raw"));
}

#[test]
fn detached_mounts_come_back_once_mounted_and_end_with_fusermount() {
    if !can_mount() {
        return;
    }
    let dir = Scratch::new("mount-detach");
    let image = sample(&dir);
    let point = dir.path("mnt");
    std::fs::create_dir_all(&point).unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_cowimg"))
        .args([
            "mount",
            "-d",
            "-f",
            "qcow2",
            &image,
            point.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    // Mounted by the time the command returned.
    assert_eq!(std::fs::read(point.join("disk")).unwrap().len(), 32 << 20);
    let out = Command::new("fusermount3")
        .args(["-u", point.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!point.join("disk").exists());
}
