//! qcow2 images QEMU made read back exactly as `qemu-img convert -O raw` reads them, and
//! map as `qemu-img map` maps them.

mod common;

use common::*;
use cowimg::{Backing, Image, OpenOptions};
use std::path::Path;

/// The guest bytes as QEMU reads them.
fn qemu_raw(path: &Path, extra: &[&str]) -> Vec<u8> {
    let dir = Scratch::new("raw");
    let out = dir.str("out.raw");
    let mut args = vec!["convert"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["-O", "raw", path.to_str().unwrap(), &out]);
    qemu_img(&args);
    std::fs::read(out).unwrap()
}

fn our_raw(image: &Image) -> Vec<u8> {
    let mut buf = vec![0u8; image.size() as usize];
    image.read_at(&mut buf, 0).unwrap();
    buf
}

fn our_map(image: &Image) -> Vec<MapEntry> {
    image
        .map()
        .unwrap()
        .into_iter()
        .map(|s| MapEntry {
            start: s.start,
            length: s.len,
            depth: s.depth as u64,
            present: s.present,
            zero: s.zero,
            data: s.data,
            compressed: s.compressed,
            offset: s.offset,
        })
        .collect()
}

fn assert_reads_like_qemu(path: &Path, options: &OpenOptions, qemu_args: &[&str]) {
    let image = Image::open(path, options).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let ours = our_raw(&image);
    let theirs = qemu_raw(path, qemu_args);
    assert_eq!(ours.len(), theirs.len(), "{}: size", path.display());
    if let Some(i) = ours.iter().zip(&theirs).position(|(a, b)| a != b) {
        panic!(
            "{}: first difference at byte {i}: ours {:#x}, qemu {:#x}",
            path.display(),
            ours[i],
            theirs[i]
        );
    }
}

#[test]
fn golden_images_read_and_map_like_qemu() {
    for name in [
        "sample.qcow2",
        "v2-backing.qcow2",
        "snapshots.qcow2",
        "bitmaps.qcow2",
        "zstd-extl2.qcow2",
        "datafile.qcow2",
        "refcount1.qcow2",
    ] {
        let path = data_path(name);
        assert_reads_like_qemu(&path, &OpenOptions::default(), &[]);
        let image = Image::open(&path, &OpenOptions::default()).unwrap();
        assert_eq!(our_map(&image), qemu_map(&path, "qcow2"), "{name}");
    }
}

#[test]
fn backing_can_be_ignored_or_overridden() {
    let path = data_path("v2-backing.qcow2");
    let alone = Image::open(
        &path,
        &OpenOptions {
            backing: Backing::Ignore,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(alone.chain().len(), 1);
    assert!(our_raw(&alone).iter().all(|b| *b == 0));
    let dir = Scratch::new("override");
    std::fs::write(dir.path("other.raw"), vec![0x77u8; 4096]).unwrap();
    let options = OpenOptions {
        backing: Backing::Override {
            path: dir.path("other.raw"),
            format: Some(cowimg::Format::Raw),
        },
        ..Default::default()
    };
    let image = Image::open(&path, &options).unwrap();
    let data = our_raw(&image);
    // 4 KiB from the shorter backing file, zeros after it.
    assert!(data[..4096].iter().all(|b| *b == 0x77) && data[4096..].iter().all(|b| *b == 0));
}
