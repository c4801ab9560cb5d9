//! A real full file system: a small tmpfs, filled to each of many levels before a cowimg
//! command writes copy-on-write data into it. Whatever fails, the image stays free of
//! corruption under `qemu-img check` (leaks allowed) and every byte the command did
//! not write reads as before, as with QEMU. Needs root (for the mount); CI runs as root.

mod common;

use common::{qemu_img, qemu_io};
use std::path::{Path, PathBuf};
use std::process::Command;

const COWIMG: &str = env!("CARGO_BIN_EXE_cowimg");
const CS: u64 = 64 << 10;

/// A tmpfs of `size` bytes mounted for one test, unmounted when dropped.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(tag: &str, size: u64) -> Option<SmallFs> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        let dir = std::env::temp_dir().join(format!("cowimg-full-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(status.success(), "mount -t tmpfs failed");
        Some(SmallFs(dir))
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).to_str().unwrap().to_string()
    }

    fn clear(&self) {
        for entry in std::fs::read_dir(&self.0).unwrap() {
            std::fs::remove_file(entry.unwrap().path()).unwrap();
        }
    }

    /// Bytes still free.
    fn free(&self) -> u64 {
        let path = std::ffi::CString::new(self.0.to_str().unwrap()).unwrap();
        // SAFETY: statvfs fills the struct it is given; the path is NUL-terminated.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut st) }, 0);
        st.f_bavail * st.f_frsize
    }

    /// Fills the file system until `leave` bytes are free.
    fn fill(&self, leave: u64) {
        let n = self.free().saturating_sub(leave);
        std::fs::write(self.0.join("filler"), vec![0xeeu8; n as usize]).unwrap();
    }

    fn unfill(&self) {
        std::fs::remove_file(self.0.join("filler")).unwrap();
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// The guest content, read by qemu-img into a file outside the small file system.
fn guest(path: &str, format: &str) -> Vec<u8> {
    let name = path.replace('/', "_");
    let out = std::env::temp_dir()
        .join(format!("{name}.raw"))
        .to_str()
        .unwrap()
        .to_string();
    qemu_img(&["convert", "-f", format, "-O", "raw", path, &out]);
    let bytes = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    bytes
}

/// qemu-img check: no corruption (exit 0, or 3 for leaks).
fn check_clean(path: &str, context: &str) {
    let out = Command::new("qemu-img")
        .args(["check", path])
        .output()
        .unwrap();
    let code = out.status.code();
    assert!(
        code == Some(0) || code == Some(3),
        "{context}: qemu-img check exit {code:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The 1 KiB writes: one into every other cluster, 1 KiB into it.
fn writes() -> Vec<(u64, u8)> {
    (0..16u64)
        .map(|i| (i * 2 * CS + 1024, 0xa0 + i as u8))
        .collect()
}

/// Runs the writes with `cowimg io` at each fill level after `setup`; checks the image
/// and that each 1 KiB reads as before or as written, and all else as before.
fn sweep(fs: &SmallFs, tag: &str, setup: &dyn Fn(&SmallFs) -> String, levels: u64) {
    let mut failures = 0;
    for level in 0..levels {
        fs.clear();
        let img = setup(fs);
        let before = guest(&img, "qcow2");
        fs.fill(level * 4096);
        let mut args = vec!["io".to_string(), "-f".into(), "qcow2".into()];
        for (at, p) in writes() {
            args.push("-c".into());
            args.push(format!("write -P {p:#x} {at} 1k"));
        }
        args.push(img.clone());
        let out = Command::new(COWIMG).args(&args).output().unwrap();
        failures += usize::from(!out.status.success());
        fs.unfill();
        let context = format!("{tag}, {level} pages free");
        check_clean(&img, &context);
        let after = guest(&img, "qcow2");
        let mut want = before.clone();
        for (at, p) in writes() {
            let piece = at as usize..at as usize + 1024;
            if after[piece.clone()].iter().all(|b| *b == p) {
                want[piece].fill(p);
            }
        }
        assert!(after == want, "{context}: bytes no write covered changed");
    }
    assert!(failures > 0, "{tag}: no fill level made a write fail");
}

#[test]
fn copy_on_write_into_a_full_file_system() {
    let Some(fs) = SmallFs::mount("cow", 3 << 20) else {
        return;
    };
    let filled = |fs: &SmallFs, name: &str| {
        let img = fs.path(name);
        qemu_img(&["create", "-q", "-f", "qcow2", &img, "2M"]);
        qemu_io(&["-f", "qcow2", "-c", "write -P 0x40 0 2M", &img]);
        img
    };
    // Clusters shared with an internal snapshot.
    sweep(
        &fs,
        "snapshot-shared",
        &|fs| {
            let img = filled(fs, "snap.qcow2");
            qemu_img(&["snapshot", "-c", "s1", &img]);
            img
        },
        40,
    );
    // Clusters whose old content comes from the backing file.
    sweep(
        &fs,
        "over a backing file",
        &|fs| {
            let base = filled(fs, "base.qcow2");
            let top = fs.path("top.qcow2");
            qemu_img(&[
                "create", "-q", "-f", "qcow2", "-b", &base, "-F", "qcow2", &top,
            ]);
            top
        },
        40,
    );
}

/// commit into a base that has snapshots, snapshot create, and convert, each at every
/// fill level: the images left are clean and read as before (or as committed); a
/// convert that fails leaves no output behind.
#[test]
fn commit_snapshot_and_convert_on_a_full_file_system() {
    let Some(fs) = SmallFs::mount("ops", 3 << 20) else {
        return;
    };
    let mut failed = [0usize; 3];
    for level in 0..40u64 {
        fs.clear();
        let base = fs.path("base.qcow2");
        qemu_img(&["create", "-q", "-f", "qcow2", &base, "1M"]);
        qemu_io(&["-f", "qcow2", "-c", "write -P 0x40 0 1M", &base]);
        qemu_img(&["snapshot", "-c", "s1", &base]);
        let top = fs.path("top.qcow2");
        qemu_img(&[
            "create", "-q", "-f", "qcow2", "-b", &base, "-F", "qcow2", &top,
        ]);
        for (at, p) in writes().into_iter().take(8) {
            qemu_io(&[
                "-f",
                "qcow2",
                "-c",
                &format!("write -P {p:#x} {at} 1k"),
                &top,
            ]);
        }
        let base_before = guest(&base, "qcow2");
        let top_before = guest(&top, "qcow2");
        let context = format!("{level} pages free");
        let run = |args: &[&str]| Command::new(COWIMG).args(args).output().unwrap();

        fs.fill(level * 4096);
        let commit = run(&["commit", "-d", &top]);
        fs.unfill();
        failed[0] += usize::from(!commit.status.success());
        check_clean(&base, &format!("commit, {context}"));
        let base_after = guest(&base, "qcow2");
        // Each written KiB is in the base as before or as committed; all else unchanged.
        let mut want = base_before.clone();
        for (at, _) in writes().into_iter().take(8) {
            let piece = at as usize..at as usize + 1024;
            if base_after[piece.clone()] == top_before[piece.clone()] {
                want[piece.clone()].copy_from_slice(&top_before[piece]);
            }
        }
        assert!(
            base_after == want,
            "commit, {context}: the base changed elsewhere"
        );
        assert_eq!(guest(&top, "qcow2"), top_before, "commit, {context}");

        fs.fill(level * 4096);
        let snap = run(&["snapshot", "-c", "s2", &base]);
        fs.unfill();
        failed[1] += usize::from(!snap.status.success());
        check_clean(&base, &format!("snapshot -c, {context}"));
        assert_eq!(guest(&base, "qcow2"), base_after, "snapshot -c, {context}");

        let out = fs.path("out.qcow2");
        fs.fill(level * 4096);
        let convert = run(&["convert", "-O", "qcow2", &top, &out]);
        fs.unfill();
        if convert.status.success() {
            check_clean(&out, &format!("convert, {context}"));
            assert_eq!(guest(&out, "qcow2"), top_before, "convert, {context}");
        } else {
            failed[2] += 1;
            assert!(
                !Path::new(&out).exists(),
                "convert, {context}: a failed output was left"
            );
        }
    }
    assert!(
        failed.iter().all(|&n| n > 0),
        "fill levels that failed: {failed:?}"
    );
}
