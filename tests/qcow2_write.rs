//! Write-path behaviour that the differential suite cannot show: refusals.

mod common;

use common::*;
use std::process::Command;

fn be(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

/// An L2 entry (COPIED, so writable in place) that points at the refcount table: the
/// write is refused, the image marked corrupt, and the refcount table left intact.
#[test]
fn writes_through_damaged_entries_never_touch_metadata() {
    let dir = Scratch::new("overlap");
    let img = dir.str("img.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4096",
        &img,
        "1M",
    ]);
    qemu_io(&["-f", "qcow2", "-c", "write -P 1 0 4k", &img]);
    let mut b = std::fs::read(&img).unwrap();
    let reftable = be(&b, 48);
    let l2 = (be(&b, be(&b, 40) as usize) & 0x00ff_ffff_ffff_fe00) as usize;
    b[l2..l2 + 8].copy_from_slice(&(reftable | 1 << 63).to_be_bytes());
    std::fs::write(&img, &b).unwrap();
    let before = b[reftable as usize..reftable as usize + 4096].to_vec();

    let out = Command::new(env!("CARGO_BIN_EXE_cowimg"))
        .args(["io", "-f", "qcow2", "-c", "write -P 9 0 512", &img])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Preventing invalid write on metadata (overlaps with refcount table)"),
        "{err}"
    );
    let after = std::fs::read(&img).unwrap();
    assert_eq!(
        after[reftable as usize..reftable as usize + 4096],
        before[..],
        "the refcount table is intact"
    );
    // The corrupt bit is set: a read-write open is refused, a read-only one works.
    assert_ne!(be(&after, 72) & 2, 0);
    let out = Command::new(env!("CARGO_BIN_EXE_cowimg"))
        .args(["io", "-f", "qcow2", "-c", "write 0 512", &img])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("Image is corrupt; cannot be opened read/write"));
    let out = Command::new(env!("CARGO_BIN_EXE_cowimg"))
        .args(["io", "-r", "-f", "qcow2", "-c", "read 4096 512", &img])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
