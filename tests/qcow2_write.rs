//! Write-path behaviour that the differential suite cannot show: refusals, and what
//! stays unallocated.

mod common;

use common::*;
use std::path::Path;
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
    // A command's failure is on standard output, as qemu-io prints it.
    let err = String::from_utf8_lossy(&out.stdout);
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

fn cowimg_io(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cowimg"))
        .arg("io")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Lazy refcounts, as QEMU: the dirty bit is set while the image is written and cleared
/// on a clean close; after an abort it stays, and the next read-write open repairs.
#[test]
fn lazy_refcounts_mark_the_image_dirty_until_a_clean_close() {
    let dir = Scratch::new("lazy");
    let img = dir.str("lazy.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "lazy_refcounts=on",
        &img,
        "1M",
    ]);
    let dirty = || be(&std::fs::read(&img).unwrap(), 72) & 1 != 0;
    assert_eq!(
        cowimg_io(&["-f", "qcow2", "-c", "write -P 1 0 64k", &img]).0,
        0
    );
    assert!(!dirty(), "a clean close clears the dirty bit");
    let (code, _) = cowimg_io(&[
        "-f",
        "qcow2",
        "-c",
        "write -P 2 64k 64k",
        "-c",
        "flush",
        "-c",
        "abort",
        &img,
    ]);
    assert_ne!(code, 0);
    // The flush made the write durable (metadata is written back, as in QEMU, so an
    // unflushed write may be lost to the abort); the bit stays until a clean close.
    assert!(dirty(), "abort leaves it set");
    qemu_img(&["check", &img]);
    assert_eq!(
        cowimg_io(&["-f", "qcow2", "-c", "write -P 3 128k 4k", &img]).0,
        0
    );
    assert!(
        !dirty(),
        "the read-write open repaired and the close cleared"
    );
    let out = qemu_io(&[
        "-f",
        "qcow2",
        "-c",
        "read -P 1 0 64k",
        "-c",
        "read -P 2 64k 64k",
        "-c",
        "read -P 3 128k 4k",
        &img,
    ]);
    assert!(!out.contains("verification failed"), "{out}");
    // A dirty image QEMU left behind is repaired the same way.
    let mut b = std::fs::read(&img).unwrap();
    b[79] |= 1;
    std::fs::write(&img, &b).unwrap();
    assert_eq!(
        cowimg_io(&["-f", "qcow2", "-c", "write -P 4 0 4k", &img]).0,
        0
    );
    assert!(!dirty());
    qemu_img(&["check", &img]);
}

/// Snapshots qemu-img made, applied and deleted by cowimg: the same result as qemu-img
/// doing it to a twin.
#[test]
fn cowimg_handles_snapshots_qemu_made() {
    let dir = Scratch::new("theirs");
    for name in ["ours.qcow2", "twin.qcow2"] {
        let p = dir.str(name);
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=4096",
            &p,
            "1M",
        ]);
        qemu_io(&["-f", "qcow2", "-c", "write -P 1 0 256k", &p]);
        qemu_img(&["snapshot", "-c", "one", &p]);
        qemu_io(&[
            "-f",
            "qcow2",
            "-c",
            "write -P 2 64k 64k",
            "-c",
            "write -c -P 3 512k 4k",
            &p,
        ]);
        qemu_img(&["snapshot", "-c", "two", &p]);
        qemu_io(&["-f", "qcow2", "-c", "write -z 0 128k", &p]);
    }
    let (ours, twin) = (dir.str("ours.qcow2"), dir.str("twin.qcow2"));
    for (flag, name) in [("-a", "one"), ("-d", "two"), ("-a", "one"), ("-d", "one")] {
        let out = Command::new(env!("CARGO_BIN_EXE_cowimg"))
            .args(["snapshot", flag, name, &ours])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{flag} {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        qemu_img(&["snapshot", flag, name, &twin]);
        qemu_img(&["check", &ours]);
        qemu_img(&["compare", &ours, &twin]);
    }
    assert!(qemu_img(&["snapshot", "-l", &ours]).is_empty());
}

/// A header rewrite keeps header fields and extensions cowimg does not know.
#[test]
fn header_rewrites_keep_unknown_fields_and_extensions() {
    let dir = Scratch::new("unknown");
    let img = dir.str("img.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4096,compression_type=zstd",
        &img,
        "1M",
    ]);
    // header_length 120 with 8 unknown bytes, then an unknown extension.
    let mut b = std::fs::read(&img).unwrap();
    b[100..104].copy_from_slice(&120u32.to_be_bytes());
    b[112..120].copy_from_slice(b"UNKNOWN!");
    b[120..124].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    b[124..128].copy_from_slice(&5u32.to_be_bytes());
    b[128..133].copy_from_slice(b"hello");
    b[136..144].fill(0);
    std::fs::write(&img, &b).unwrap();
    std::fs::write(dir.path("base.raw"), vec![7u8; 1 << 20]).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cowimg"))
        .current_dir(dir.path(""))
        .args(["rebase", "-u", "-b", "base.raw", "-F", "raw", "img.qcow2"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let h = cowimg::header::Qcow2::read(
        &cowimg::storage::FileStorage::open(&dir.path("img.qcow2"), false).unwrap(),
    )
    .unwrap();
    assert_eq!(h.unknown_fields, b"UNKNOWN!");
    assert_eq!(h.header_length(), 120);
    assert!(h
        .extensions
        .iter()
        .any(|e| e.magic == 0x1234_5678 && e.data == b"hello"));
    assert_eq!(h.compression_type(), 1);
    assert_eq!(h.backing_format(), Some(&b"raw"[..]));
    qemu_img(&["check", &img]);
    let info = qemu_img(&["info", &img]);
    assert!(
        info.contains("backing file: base.raw") && info.contains("compression type: zstd"),
        "{info}"
    );
}

/// With small clusters a refcount block covers few clusters (64 with 512-byte clusters
/// and 64-bit refcounts) and a new one sits at the start of its range, so a long run
/// (an L1 table when creating, resizing or taking a snapshot) needs its blocks placed
/// elsewhere. Every step must check clean, and creation lays out what qemu-img does.
#[test]
fn long_runs_with_small_refcount_blocks() {
    let dir = Scratch::new("small-blocks");
    let (ours, theirs) = (dir.str("ours.qcow2"), dir.str("theirs.qcow2"));
    for (options, size) in [
        ("cluster_size=512", "1G"),
        ("cluster_size=512,refcount_bits=1", "1G"),
        ("cluster_size=512,refcount_bits=64", "300M"),
        ("cluster_size=512,refcount_bits=64", "1G"),
    ] {
        let _ = std::fs::remove_file(&ours);
        cowimg(&["create", "-q", "-f", "qcow2", "-o", options, &ours, size]);
        qemu_img(&["check", &ours]);
        if !options.ends_with("64") || size != "1G" {
            qemu_img(&["create", "-q", "-f", "qcow2", "-o", options, &theirs, size]);
            assert!(
                std::fs::read(&ours).unwrap() == std::fs::read(&theirs).unwrap(),
                "{options} {size}: laid out unlike qemu-img"
            );
        }
        cowimg(&["resize", "-f", "qcow2", &ours, "3G"]);
        cowimg(&["snapshot", "-c", "s1", "-f", "qcow2", &ours]);
        cowimg(&["io", "-f", "qcow2", "-c", "write -P 7 2G 3M", &ours]);
        qemu_img(&["check", &ours]);
        let read = qemu_io(&["-f", "qcow2", "-c", "read -P 7 2G 3M", &ours]);
        assert!(!read.contains("verification failed"), "{read}");
    }
}

/// As qemu-io: an image whose header names its format (qcow2, qcow) is written without
/// -f; a file that probes as raw is only read, and the user is told how to write it.
#[test]
fn io_writes_self_describing_probed_formats_and_only_reads_probed_raw() {
    let dir = Scratch::new("probed");
    let raw = dir.str("p.raw");
    for (format, name) in [("qcow2", "p.qcow2"), ("qcow", "p.qcow")] {
        let img = dir.str(name);
        qemu_img(&["create", "-q", "-f", format, &img, "1M"]);
        cowimg(&["io", "-c", "write -P 5 0 4k", &img]);
        let read = qemu_io(&["-f", format, "-c", "read -P 5 0 4k", &img]);
        assert!(!read.contains("verification failed"), "{read}");
    }
    std::fs::write(&raw, vec![0u8; 1 << 20]).unwrap();
    let (code, stderr) = cowimg_io(&["-c", "write -P 5 0 4k", &raw]);
    assert_eq!(code, 1);
    assert!(stderr.contains("probing guessed raw"), "{stderr}");
    assert!(std::fs::read(&raw).unwrap().iter().all(|&b| b == 0));
}

/// Zeros in a version 2 image without a backing file: a part of a cluster that reads
/// as zeros stays unallocated and whole clusters are discarded, as QEMU does, so a
/// compressed write can still go there. The same commands through qemu-io and cowimg
/// io leave the same map and content.
#[test]
fn version_2_zero_writes_allocate_what_qemu_allocates() {
    let dir = Scratch::new("v2-zeros");
    let commands = [
        "write -P 9 300k 100k",
        "write -P 8 640k 64k",
        "write -z 1k 2k",
        "write -z 64k 64k",
        "write -z 192k 70k",
        "write -z 290k 200k",
        "write -z 640k 64k",
        "write -c -P 1 0 64k",
    ];
    let mut results = Vec::new();
    for tool in ["qemu-io", env!("CARGO_BIN_EXE_cowimg")] {
        let img = dir.str(&format!("{}.qcow2", results.len()));
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "compat=0.10",
            &img,
            "1M",
        ]);
        let mut command = Command::new(tool);
        if tool != "qemu-io" {
            command.arg("io");
        }
        command.args(["-f", "qcow2"]);
        for c in commands {
            command.args(["-c", c]);
        }
        let out = command.arg(&img).output().unwrap();
        assert!(
            out.status.success(),
            "{tool}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("failed"),
            "{tool}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        qemu_img(&["check", &img]);
        let raw = dir.str("content.raw");
        qemu_img(&["convert", "-O", "raw", &img, &raw]);
        // Per cluster: allocated (present) and compressed. (Holes the file system
        // keeps inside an allocated cluster are the host file's business.)
        let mut clusters = vec![(false, false); 16];
        for e in qemu_map(Path::new(&img), "qcow2") {
            for c in e.start / 65536..(e.start + e.length).div_ceil(65536) {
                let slot = &mut clusters[c as usize];
                *slot = (slot.0 || e.present, slot.1 || e.compressed);
            }
        }
        results.push((clusters, std::fs::read(&raw).unwrap()));
    }
    assert_eq!(results[0].0, results[1].0, "maps: qemu-io's, then cowimg's");
    assert!(results[0].1 == results[1].1, "the guest content differs");
}

/// A write that finds damage marks the image corrupt and stops the handle's writes;
/// whatever the handle is asked afterwards (flush, write, discard, drop) is an error or
/// nothing, never a panic, even with a free held from before.
#[test]
fn a_handle_stopped_by_damage_answers_errors() {
    use cowimg::{ErrorKind, Format, Image, OpenOptions};
    let dir = Scratch::new("stopped");
    let img = dir.str("img.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &img, "1G"]);
    qemu_io(&["-f", "qcow2", "-c", "write -P 1 0 64k", &img]);
    // L1 entry 1 names an unaligned L2 table (COPIED, so it would be written in place).
    let mut b = std::fs::read(&img).unwrap();
    let l1 = be(&b, 40) as usize;
    b[l1 + 8..l1 + 16].copy_from_slice(&(0x8000_0000_0001_0200u64).to_be_bytes());
    std::fs::write(&img, b).unwrap();
    let options = OpenOptions::new().format(Format::Qcow2).writable(true);
    let mut image = Image::open(&img, &options).unwrap();
    image.write_at(&[2u8; 65536], 0).unwrap();
    image.flush().unwrap();
    image.discard(0, 65536).unwrap();
    let e = image.write_at(&[3u8; 4096], 512 << 20).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt);
    assert!(
        e.message().contains("L2 table offset 0x10200 unaligned"),
        "{e}"
    );
    for e in [
        image.flush().unwrap_err(),
        image.write_at(&[4u8; 512], 0).unwrap_err(),
        image.discard(0, 65536).unwrap_err(),
    ] {
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    }
    // Reads still answer.
    let mut buf = [0u8; 512];
    image.read_at(&mut buf, 0).unwrap();
    drop(image);
    let info = qemu_img(&["info", &img]);
    assert!(info.contains("corrupt: true"), "{info}");
}

#[test]
fn a_refcount_table_outgrowing_one_block_grows_with_several() {
    // 512-byte clusters with 64-bit refcounts: a block counts 64 clusters, so the table
    // of a 192 MiB preallocated image needs more than one new block to count itself.
    let dir = Scratch::new("reftable-blocks");
    let image = dir.str("wide.qcow2");
    common::cowimg(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "refcount_bits=64,cluster_size=512,preallocation=metadata",
        &image,
        "192M",
    ]);
    let check = qemu_img(&["check", &image]);
    assert!(check.contains("No errors were found"), "{check}");
    // Every preallocated cluster reads as zeros, the old tables' clusters reused too.
    let zeros = dir.str("zeros.raw");
    std::fs::File::create(&zeros)
        .unwrap()
        .set_len(192 << 20)
        .unwrap();
    let same = qemu_img(&["compare", "-f", "qcow2", "-F", "raw", &image, &zeros]);
    assert!(same.contains("identical"), "{same}");
}

#[test]
fn vm_state_reads_and_writes_meet_qemu_ios_past_the_disk() {
    let dir = Scratch::new("vmstate-write");
    let image = dir.str("vm.qcow2");
    // 4 KiB clusters: the VM state starts at 2 MiB (one L2 table's span), and 3 MiB of
    // it needs the L1 table grown.
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4k",
        &image,
        "1M",
    ]);
    qemu_io(&["-f", "qcow2", "-c", "write -P 0x33 0 64k", &image]);
    let io = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_cowimg"))
            .arg("io")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, _) = io(&[
        "-f",
        "qcow2",
        "-c",
        "write -b -P 0x11 0 4k",
        "-c",
        "write -b -P 0x22 8k 60k",
        "-c",
        "write -b -P 0x44 3M 8k",
        &image,
    ]);
    assert!(ok);
    let read = qemu_io(&[
        "-f",
        "qcow2",
        "-r",
        "-c",
        "read -b -P 0x11 0 4k",
        "-c",
        "read -b -P 0x22 8k 60k",
        "-c",
        "read -b -P 0x44 3M 8k",
        "-c",
        "read -b -P 0 4k 4k",
        "-c",
        "read -P 0x33 0 64k",
        &image,
    ]);
    assert!(!read.contains("failed"), "{read}");
    qemu_io(&["-f", "qcow2", "-c", "write -b -P 0x55 100k 3k", &image]);
    let (ok, read) = io(&["-f", "qcow2", "-r", "-c", "read -b -P 0x55 100k 3k", &image]);
    assert!(ok && !read.contains("failed"), "{read}");
    let check = qemu_img(&["check", &image]);
    assert!(check.contains("No errors were found"), "{check}");
    // Formats without VM state refuse, as QEMU's do.
    let raw = dir.str("vm.raw");
    std::fs::write(&raw, vec![0u8; 65536]).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cowimg"))
        .args(["io", "-f", "raw", "-c", "write -b 0 4k", &raw])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("Operation not supported"));
}
