//! `cowimg info` says what `qemu-img info` says about the same image.

mod common;

use common::*;
use std::process::Command;

fn cowimg(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cowimg"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// qemu-img's human info, up to the child-node part cowimg does not print.
fn qemu_info(path: &str) -> String {
    let text = qemu_img(&["info", path]);
    text.split("Child node").next().unwrap().to_string()
}

#[test]
fn info_matches_qemu_img_for_plain_images() {
    for name in [
        "sample.qcow2",
        "refcount1.qcow2",
        "zstd-extl2.qcow2",
        "datafile.qcow2",
        "qcow1.qcow",
    ] {
        let path = data_path(name);
        let path = path.to_str().unwrap();
        let (ok, ours, err) = cowimg(&["info", path]);
        assert!(ok, "{name}: {err}");
        assert_eq!(ours, qemu_info(path), "{name}");
    }
}

#[test]
fn info_lines_are_qemu_img_lines_for_images_with_more_to_say() {
    // Snapshots, bitmap details and resolved backing paths come with the reading issue;
    // what is printed already must agree.
    for name in [
        "snapshots.qcow2",
        "bitmaps.qcow2",
        "v2-backing.qcow2",
        "qcow1-backing.qcow",
    ] {
        let path = data_path(name);
        let path = path.to_str().unwrap();
        let (ok, ours, err) = cowimg(&["info", path]);
        assert!(ok, "{name}: {err}");
        let theirs = qemu_info(path);
        for line in ours
            .lines()
            .filter(|l| !l.starts_with("backing file:") && !l.starts_with("    bitmaps:"))
        {
            assert!(
                theirs.lines().any(|t| t == line),
                "{name}: {line:?} not in\n{theirs}"
            );
        }
    }
}

#[test]
fn info_reads_cow_headers_and_reports_bad_files_clearly() {
    let dir = Scratch::new("cli-info");
    let mut v3 = vec![0u8; 12288];
    v3[..4].copy_from_slice(&0x4f4f4f4du32.to_be_bytes());
    v3[4..8].copy_from_slice(&3u32.to_be_bytes());
    v3[12..20].copy_from_slice(&(2u64 << 20).to_be_bytes());
    v3[20..24].copy_from_slice(&512u32.to_be_bytes());
    v3[24..28].copy_from_slice(&4096u32.to_be_bytes());
    v3[32..40].copy_from_slice(b"base.img");
    std::fs::write(dir.path("a.cow"), &v3).unwrap();
    let (ok, out, err) = cowimg(&["info", "--header", &dir.str("a.cow")]);
    assert!(ok, "{err}");
    assert!(out.contains("file format: cow\n"), "{out}");
    assert!(
        out.contains("virtual size: 2 MiB (2097152 bytes)\n"),
        "{out}"
    );
    assert!(out.contains("backing file: base.img\n"), "{out}");
    assert!(
        out.contains("cow layout: v3\n") && out.contains("alignment: 4096"),
        "{out}"
    );

    let mut bad = data("sample.qcow2");
    bad[20..24].copy_from_slice(&40u32.to_be_bytes());
    std::fs::write(dir.path("bad.qcow2"), &bad).unwrap();
    let (ok, _, err) = cowimg(&["info", &dir.str("bad.qcow2")]);
    assert!(!ok);
    assert_eq!(
        err,
        "cowimg: Unsupported cluster size: 2^40 (qcow2 header: cluster_bits = 0x28 at byte 20)\n"
    );
}
