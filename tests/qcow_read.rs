//! qcow (version 1) images QEMU made read back exactly as qemu-img reads them: plain,
//! over a backing file, with compressed clusters, and legacy-AES encrypted; and commit
//! of a qcow image does what qemu-img commit does.

mod common;

use common::*;
use std::process::Command;

#[test]
fn qemu_made_qcow_images_read_exactly() {
    let dir = Scratch::new("qcow-read");
    let p = |n: &str| dir.str(n);
    std::fs::write(
        dir.path("base.raw"),
        (0..(1u32 << 20))
            .map(|i| (i / 512 % 251) as u8)
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    qemu_img(&["create", "-q", "-f", "qcow", &p("plain.qcow"), "2M"]);
    qemu_io(&[
        "-f",
        "qcow",
        "-c",
        "write -P 1 0 100k",
        "-c",
        "write -c -P 2 1M 4k",
        "-c",
        "write -P 3 1500k 1",
        &p("plain.qcow"),
    ]);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow",
        "-b",
        &p("base.raw"),
        "-F",
        "raw",
        &p("backed.qcow"),
        "1M",
    ]);
    qemu_io(&[
        "-f",
        "qcow",
        "-c",
        "write -P 4 1000 3000",
        "-c",
        "write -c -P 5 64k 512",
        &p("backed.qcow"),
    ]);
    let secret = "secret,id=s0,data=pw";
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow",
        "--object",
        secret,
        "-o",
        "encrypt.format=aes,encrypt.key-secret=s0",
        &p("aes.qcow"),
        "1M",
    ]);
    let aes = format!(
        "driver=qcow,file.filename={},encrypt.key-secret=s0",
        p("aes.qcow")
    );
    qemu_io(&[
        "--object",
        secret,
        "--image-opts",
        "-c",
        "write -P 6 777 9999",
        &aes,
    ]);
    for name in ["plain.qcow", "backed.qcow"] {
        qemu_img(&["convert", "-O", "raw", &p(name), &p("qemu.raw")]);
        cowimg(&["convert", "-O", "raw", &p(name), &p("ours.raw")]);
        assert!(
            std::fs::read(p("qemu.raw")).unwrap() == std::fs::read(p("ours.raw")).unwrap(),
            "{name}"
        );
    }
    qemu_img(&[
        "convert",
        "--object",
        secret,
        "--image-opts",
        &aes,
        "-O",
        "raw",
        &p("qemu.raw"),
    ]);
    cowimg(&[
        "convert",
        "--object",
        secret,
        "--image-opts",
        &aes,
        "-O",
        "raw",
        &p("ours.raw"),
    ]);
    assert!(
        std::fs::read(p("qemu.raw")).unwrap() == std::fs::read(p("ours.raw")).unwrap(),
        "aes"
    );
}

#[test]
fn commit_of_a_qcow_image() {
    let dir = Scratch::new("qcow-commit");
    let p = |n: &str| dir.str(n);
    for base in ["base-ours.raw", "base-twin.raw"] {
        std::fs::write(dir.path(base), vec![9u8; 1 << 20]).unwrap();
    }
    for (top, base) in [
        ("ours.qcow", "base-ours.raw"),
        ("twin.qcow", "base-twin.raw"),
    ] {
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow",
            "-b",
            &p(base),
            "-F",
            "raw",
            &p(top),
            "1M",
        ]);
        qemu_io(&[
            "-f",
            "qcow",
            "-c",
            "write -P 1 0 4k",
            "-c",
            "write -c -P 2 64k 512",
            &p(top),
        ]);
    }
    // qcow records no backing format: cowimg writes into it only when told.
    let refused = Command::new(env!("CARGO_BIN_EXE_cowimg"))
        .args(["commit", "-f", "qcow", &p("ours.qcow")])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("commit -F raw"));
    cowimg(&["commit", "-f", "qcow", "-F", "raw", &p("ours.qcow")]);
    qemu_img(&["commit", "-f", "qcow", &p("twin.qcow")]);
    assert!(
        std::fs::read(p("base-ours.raw")).unwrap() == std::fs::read(p("base-twin.raw")).unwrap()
    );
    qemu_img(&["compare", &p("ours.qcow"), &p("twin.qcow")]);
    assert!(
        qemu_map(&dir.path("ours.qcow"), "qcow")
            .iter()
            .all(|r| r.depth == 1),
        "emptied"
    );
}
