//! The read-only guarantee: every read-type command and library entry point, over
//! golden images and damaged ones (dirty lazy refcounts, the corrupt bit, encrypted,
//! chains, an external data file), leaves every file of the image exactly as it was:
//! bytes, size, modification time and access time.
//!
//! The times are set far in the past first, with atime not after mtime, so that the
//! kernel's relatime would update the access time on any plain read.

mod common;

use common::{qemu_img, qemu_io, Scratch};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

/// What must not change about a file.
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    len: u64,
    modified: SystemTime,
    accessed: SystemTime,
}

fn stat(path: &Path) -> Stat {
    let m = std::fs::metadata(path).unwrap();
    Stat {
        len: m.len(),
        modified: m.modified().unwrap(),
        accessed: m.accessed().unwrap(),
    }
}

fn age(path: &Path) {
    let ok = Command::new("touch")
        .args(["-d", "2020-01-02 03:04:05", path.to_str().unwrap()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

/// The files of one case, their bytes read before aging, and their stat after.
struct Watched {
    files: Vec<(PathBuf, Vec<u8>, Stat)>,
}

impl Watched {
    fn new(files: &[PathBuf]) -> Watched {
        let files = files
            .iter()
            .map(|p| {
                let bytes = std::fs::read(p).unwrap();
                age(p);
                (p.clone(), bytes, stat(p))
            })
            .collect();
        Watched { files }
    }

    fn assert_unchanged(&self, what: &str) {
        for (path, _, before) in &self.files {
            assert_eq!(&stat(path), before, "{what} changed {}", path.display());
        }
        for (path, bytes, _) in &self.files {
            assert!(
                &std::fs::read(path).unwrap() == bytes,
                "{what} changed the bytes of {}",
                path.display()
            );
        }
    }
}

fn cowimg_any(args: &[&str]) {
    // Only that nothing changes matters here; a refusal (an encrypted image without
    // its key, a damaged table) is fine.
    let _ = Command::new(env!("CARGO_BIN_EXE_cowimg"))
        .args(args)
        .output()
        .unwrap();
}

/// Every read-type command, run on `image` (whose files are `files`).
fn every_command(dir: &Scratch, image: &str, files: &[PathBuf]) {
    let out = dir.str("out");
    let carved = dir.str("carved");
    let cases: Vec<Vec<&str>> = vec![
        vec!["info", image],
        vec!["info", "--output=json", "--backing-chain", image],
        vec!["info", "--header", image],
        vec!["map", "--output=json", image],
        vec!["map", image],
        vec!["check", image],
        vec!["check", "--output=json", image],
        vec!["compare", image, image],
        vec!["convert", "-O", "raw", image, &out],
        vec!["convert", "-O", "qcow2", image, &out],
        vec!["measure", "-O", "qcow2", image],
        vec!["snapshot", "-l", image],
        vec!["io", "-r", "-c", "read 0 4k", "-c", "map", image],
        vec!["bench", "-c", "64", image],
        vec![
            "hash",
            "--snapshot",
            "all",
            "--algorithm",
            "sha256,md5",
            image,
        ],
        vec!["inspect", "--output=json", image],
        vec!["inspect", "--salvage", image],
        vec!["partitions", image],
        vec!["carve", image, &carved],
    ];
    for case in cases {
        let watched = Watched::new(files);
        cowimg_any(&case);
        watched.assert_unchanged(&format!("cowimg {case:?}"));
        let _ = std::fs::remove_file(&out);
        let _ = std::fs::remove_dir_all(&carved);
    }
    // The library, directly: open, read, map, status, info, check.
    let watched = Watched::new(files);
    if let Ok(image) = cowimg::Image::open(image, &cowimg::OpenOptions::new()) {
        let mut buf = vec![0u8; 65536.min(image.size() as usize)];
        let _ = image.read_at(&mut buf, 0);
        let _ = image.map();
        let _ = image.info();
        let _ = image.check();
        if image.size() > 0 {
            let _ = image.block_status(0, image.size());
        }
    }
    watched.assert_unchanged("the library");
}

fn set_bit(path: &str, byte: usize, bit: u8) {
    let mut data = std::fs::read(path).unwrap();
    data[byte] |= 1 << bit;
    std::fs::write(path, data).unwrap();
}

#[test]
fn examining_golden_images_changes_no_byte_and_no_time() {
    let dir = Scratch::new("read-only-golden");
    for (name, extra) in [
        ("sample.qcow2", vec![]),
        ("snapshots.qcow2", vec![]),
        ("zstd-extl2.qcow2", vec![]),
        ("bitmaps.qcow2", vec![]),
        ("refcount1.qcow2", vec![]),
        ("qcow1.qcow", vec![]),
        ("datafile.qcow2", vec!["datafile.data"]),
        ("v2-backing.qcow2", vec!["base.raw"]),
        ("qcow1-backing.qcow", vec!["base.raw"]),
    ] {
        let path = dir.path(name);
        std::fs::copy(common::data_path(name), &path).unwrap();
        let mut files = vec![path.clone()];
        for e in extra {
            let p = dir.path(e);
            std::fs::copy(common::data_path(e), &p).unwrap();
            files.push(p);
        }
        every_command(&dir, path.to_str().unwrap(), &files);
    }
}

#[test]
fn examining_damaged_and_encrypted_images_repairs_nothing() {
    let dir = Scratch::new("read-only-damaged");
    // Dirty: lazy refcounts, with the dirty bit set as a crash leaves it.
    let dirty = dir.str("dirty.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "lazy_refcounts=on",
        &dirty,
        "8M",
    ]);
    qemu_io(&["-c", "write -P 1 0 1M", &dirty]);
    set_bit(&dirty, 79, 0);
    // Corrupt: the corrupt bit set.
    let corrupt = dir.str("corrupt.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &corrupt, "8M"]);
    qemu_io(&["-c", "write -P 2 0 1M", &corrupt]);
    set_bit(&corrupt, 79, 1);
    // Damaged: a leaked cluster's refcount and an L2 entry pointing past the file.
    let damaged = dir.str("damaged.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4096",
        &damaged,
        "8M",
    ]);
    qemu_io(&["-c", "write -P 3 0 64k", &damaged]);
    let mut bytes = std::fs::read(&damaged).unwrap();
    let l1 = common::be64(&bytes, 40) as usize;
    let l2 = (common::be64(&bytes, l1 as u64) & 0x00ff_ffff_ffff_fe00) as usize;
    bytes[l2 + 8..l2 + 16].copy_from_slice(&(0x8000_0000_0000_0000u64 | (1 << 40)).to_be_bytes());
    std::fs::write(&damaged, bytes).unwrap();
    // Encrypted (legacy AES), read without its key.
    let aes = dir.str("aes.qcow2");
    let status = Command::new("qemu-img")
        .args(["convert", "--object", "secret,id=s0,data=k", "-O", "qcow2"])
        .args([
            "-o",
            "encrypt.format=aes,encrypt.key-secret=s0",
            &dirty,
            &aes,
        ])
        .status()
        .unwrap();
    assert!(status.success());
    // A chain over the dirty image.
    let top = dir.str("top.qcow2");
    qemu_img(&[
        "create", "-q", "-f", "qcow2", "-b", &dirty, "-F", "qcow2", &top,
    ]);
    for (image, files) in [
        (&dirty, vec![dirty.clone()]),
        (&corrupt, vec![corrupt.clone()]),
        (&damaged, vec![damaged.clone()]),
        (&aes, vec![aes.clone()]),
        (&top, vec![top.clone(), dirty.clone()]),
    ] {
        let files: Vec<PathBuf> = files.into_iter().map(PathBuf::from).collect();
        every_command(&dir, image, &files);
    }
}
