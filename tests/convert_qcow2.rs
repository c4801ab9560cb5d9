//! `cowimg convert -O qcow2` writes images qemu-img checks clean and compares equal to
//! their source, across output options, with and without compression.

mod common;

use common::*;
use std::process::Command;

const COWIMG: &str = env!("CARGO_BIN_EXE_cowimg");

#[test]
fn converted_images_are_clean_and_identical() {
    let dir = Scratch::new("convert-qcow2");
    let sources = [
        "sample.qcow2",
        "zstd-extl2.qcow2",
        "snapshots.qcow2",
        "v2-backing.qcow2",
        "qcow1.qcow",
        "base.raw",
    ];
    let variants: [&[&str]; 7] = [
        &[],
        &["-c"],
        &["-o", "compat=0.10"],
        &["-o", "cluster_size=512,refcount_bits=1"],
        &["-c", "-o", "compression_type=zstd,cluster_size=4096"],
        &["-o", "extended_l2=on"],
        &["-o", "cluster_size=2M,lazy_refcounts=on"],
    ];
    for source in sources {
        if source.ends_with(".qcow") {
            continue; // qcow's reading runtime is a later issue
        }
        let src = data_path(source);
        for variant in variants {
            let out = dir.str("out.qcow2");
            let _ = std::fs::remove_file(&out);
            let mut args = vec!["convert"];
            args.extend_from_slice(variant);
            args.extend(["-O", "qcow2", src.to_str().unwrap(), &out]);
            let run = Command::new(env!("CARGO_BIN_EXE_cowimg"))
                .args(&args)
                .output()
                .unwrap();
            assert!(
                run.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&run.stderr)
            );
            qemu_img(&["check", "-f", "qcow2", &out]);
            qemu_img(&["compare", src.to_str().unwrap(), &out]);
            if variant.contains(&"-c") {
                let map = qemu_map(std::path::Path::new(&out), "qcow2");
                assert!(
                    map.iter().filter(|r| r.data).all(|r| r.compressed),
                    "{source} {variant:?}: every data cluster compressed"
                );
            }
        }
    }
    // Encrypted output with its key from a secret.
    let out = dir.str("aes.qcow2");
    let src = data_path("sample.qcow2");
    let run = Command::new(env!("CARGO_BIN_EXE_cowimg"))
        .args([
            "convert",
            "--object",
            "secret,id=k,data=pw",
            "-o",
            "encrypt.format=aes,encrypt.key-secret=k",
            "-O",
            "qcow2",
        ])
        .args([src.to_str().unwrap(), &out])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let opts = format!("driver=qcow2,file.filename={out},encrypt.key-secret=k");
    let plain = format!("driver=qcow2,file.filename={}", src.display());
    qemu_img(&[
        "compare",
        "--object",
        "secret,id=k,data=pw",
        "--image-opts",
        &opts,
        &plain,
    ]);
}

/// Compressed clusters are packed end to end as QEMU packs them, so the file is as
/// small as qemu-img's; and a source whose size is not a whole number of sectors or
/// clusters converts whole.
#[test]
fn compressed_output_is_packed_like_qemu_img() {
    let dir = Scratch::new("convert-packed");
    let src = dir.str("text.raw");
    // Compressible but not trivially: numbered lines, 3 MiB and a ragged tail.
    let text: String = (0..)
        .map(|i: u64| format!("line {i} {}\n", i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40))
        .take_while({
            let mut len = 0;
            move |l| {
                len += l.len();
                len <= (3 << 20) + 1000
            }
        })
        .collect();
    std::fs::write(&src, text).unwrap();
    let end_offset = |path: &str| -> u64 {
        let json = qemu_img(&["check", "--output=json", "-f", "qcow2", path]);
        let line = json
            .lines()
            .find(|l| l.contains("\"image-end-offset\""))
            .unwrap();
        line.trim()
            .trim_start_matches("\"image-end-offset\": ")
            .trim_end_matches(',')
            .parse()
            .unwrap()
    };
    for options in [
        "compression_type=zlib",
        "compression_type=zstd,cluster_size=4k",
        "refcount_bits=1",
    ] {
        let (ours, theirs) = (dir.str("ours.qcow2"), dir.str("theirs.qcow2"));
        for (program, out) in [(env!("CARGO_BIN_EXE_cowimg"), &ours), ("qemu-img", &theirs)] {
            let _ = std::fs::remove_file(out);
            let status = Command::new(program)
                .args([
                    "convert", "-c", "-f", "raw", "-O", "qcow2", "-o", options, &src, out,
                ])
                .status()
                .unwrap();
            assert!(status.success(), "{program} {options}");
        }
        qemu_img(&["compare", "-f", "raw", "-F", "qcow2", &src, &ours]);
        let (a, b) = (end_offset(&ours), end_offset(&theirs));
        // Within two clusters of qemu-img's (metadata placement differs slightly).
        assert!(
            a <= b + (128 << 10),
            "{options}: cowimg ends at {a}, qemu-img at {b}"
        );
    }
}

/// A target given a backing file (`-o backing_file=`) gets what that file does not
/// already give, zeros included: an overlay's zeroed cluster over backing data must
/// not let the data show through. Checked with `qemu-img compare` for the overlay's own
/// backing file (as qemu-img's output is) and for an unrelated one.
#[test]
fn a_target_with_a_backing_file_reads_as_the_source() {
    let dir = Scratch::new("convert-backed");
    let base = dir.str("base.qcow2");
    let other = dir.str("other.qcow2");
    let overlay = dir.str("overlay.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &base, "1M"]);
    qemu_io(&["-f", "qcow2", "-c", "write -P 1 0 256k", &base]);
    qemu_img(&["create", "-q", "-f", "qcow2", &other, "1M"]);
    qemu_io(&["-f", "qcow2", "-c", "write -P 7 0 1M", &other]);
    qemu_img(&[
        "create", "-q", "-f", "qcow2", "-b", &base, "-F", "qcow2", &overlay,
    ]);
    qemu_io(&[
        "-f",
        "qcow2",
        "-c",
        "write -z 0 64k",
        "-c",
        "write -P 2 64k 64k",
        "-c",
        "write -P 1 128k 64k",
        "-c",
        "write -P 3 512k 64k",
        &overlay,
    ]);
    for (backing, tool) in [(&base, "qemu-img"), (&base, COWIMG), (&other, COWIMG)] {
        let out = dir.str("out.qcow2");
        let _ = std::fs::remove_file(&out);
        let opt = format!("backing_file={backing},backing_fmt=qcow2");
        run_ok(
            None,
            tool,
            &["convert", "-O", "qcow2", "-o", &opt, &overlay, &out],
        );
        qemu_img(&["check", &out]);
        let same = qemu_img(&["compare", &overlay, &out]);
        assert_eq!(same, "Images are identical.\n", "{tool} over {backing}");
        let info = qemu_img(&["info", &out]);
        assert!(info.contains(&format!("backing file: {backing}")), "{info}");
    }
}
