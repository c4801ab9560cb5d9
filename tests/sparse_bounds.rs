//! A 4 TiB sparse image converts end to end quickly, skipping its holes, and the
//! converter's peak memory stays under 64 MiB. (Its own test binary, so the peak
//! resident size of waited-for children is only qemu-img's and cowimg's.)

mod common;

use common::*;
use std::process::Command;

fn children_peak_rss_bytes() -> u64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes into the struct it is given.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    assert_eq!(rc, 0);
    usage.ru_maxrss as u64 * 1024
}

#[test]
fn four_tib_sparse_image_converts_in_bounded_memory() {
    let dir = Scratch::new("4tib");
    let img = dir.str("big.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &img, "4T"]);
    let spots = [
        (0u64, 0x11u8),
        (1 << 40, 0x22),
        ((4u64 << 40) - (64 << 10), 0x33),
        (3 << 40, 0x44),
    ];
    let mut args = vec!["-f".to_string(), "qcow2".to_string()];
    for (off, pat) in spots {
        args.push("-c".into());
        args.push(format!("write -P {pat:#x} {off} 64K"));
    }
    args.push(img.clone());
    qemu_io(&args.iter().map(String::as_str).collect::<Vec<_>>());

    let out = dir.str("big.raw");
    let status = Command::new(env!("CARGO_BIN_EXE_cowimg"))
        .args(["convert", "-O", "raw", &img, &out])
        .status()
        .unwrap();
    assert!(status.success());
    let peak = children_peak_rss_bytes();
    eprintln!(
        "peak RSS of qemu-img and cowimg children: {} KiB",
        peak / 1024
    );
    assert!(peak < 64 << 20, "peak RSS {peak} bytes");

    let meta = std::fs::metadata(&out).unwrap();
    assert_eq!(meta.len(), 4 << 40);
    use std::os::unix::fs::{FileExt, MetadataExt};
    assert!(
        meta.blocks() * 512 < 16 << 20,
        "holes were skipped: {} bytes allocated",
        meta.blocks() * 512
    );
    let file = std::fs::File::open(&out).unwrap();
    for (off, pat) in spots {
        let mut buf = vec![0u8; 64 << 10];
        file.read_exact_at(&mut buf, off).unwrap();
        assert!(buf.iter().all(|b| *b == pat), "data at {off:#x}");
    }
    let mut gap = vec![1u8; 4096];
    file.read_exact_at(&mut gap, 2 << 40).unwrap();
    assert!(gap.iter().all(|b| *b == 0));
}
