//! `convert --salvage` on damaged images: every readable byte equal to the undamaged
//! original (as qemu-img converts it), every unreadable range written as zeros and
//! listed, and the damage located where the test put it.

mod common;

use common::{qemu_img, qemu_io, Scratch};
use std::process::Command;

fn convert_salvaging(image: &str, out: &str) -> String {
    let run = Command::new(env!("CARGO_BIN_EXE_cowimg"))
        .args([
            "convert",
            "--salvage",
            "-f",
            "qcow2",
            "-O",
            "raw",
            image,
            out,
        ])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    String::from_utf8(run.stderr).unwrap()
}

/// (start, length) of each range the warnings list.
fn listed(warnings: &str) -> Vec<(u64, u64)> {
    warnings
        .lines()
        .filter_map(|l| {
            let rest = l.split("at byte ").nth(1)?;
            let (start, rest) = rest.split_once(" (")?;
            let len = rest.split(' ').next()?;
            Some((start.parse().ok()?, len.parse().ok()?))
        })
        .collect()
}

/// (start, length) of each range `inspect --salvage` lists for the image.
fn inspected(image: &str) -> Vec<(u64, u64)> {
    let json = common::cowimg(&["inspect", "--salvage", "--output=json", image]);
    let Some(list) = json.split("\"unreadable\": [").nth(1) else {
        panic!("inspect lists no unreadable ranges: {json}");
    };
    let list = list.split("\n    ]").next().unwrap();
    let number = |obj: &str, key: &str| common::json_number(obj, key).unwrap();
    list.split('{')
        .skip(1)
        .map(|obj| (number(obj, "start"), number(obj, "length")))
        .collect()
}

fn assert_salvaged(original: &[u8], got: &[u8], bad: &[(u64, u64)]) {
    assert_eq!(original.len(), got.len());
    for (i, (a, b)) in original.iter().zip(got).enumerate() {
        let i = i as u64;
        if bad.iter().any(|&(s, l)| i >= s && i < s + l) {
            assert_eq!(*b, 0, "byte {i} of an unreadable range is not zero");
        } else if a != b {
            panic!("readable byte {i} differs: {a:#x} vs {b:#x}");
        }
    }
}

#[test]
fn a_damaged_l2_table_and_a_damaged_compressed_cluster_are_listed_and_the_rest_kept() {
    let dir = Scratch::new("salvage");
    // 64 KiB clusters, 8 MiB: L1 entry 0 covers 512 MiB, so L2 damage is made in a
    // 4 KiB-cluster image where one table covers 2 MiB.
    let image = dir.str("damaged.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4096",
        &image,
        "8M",
    ]);
    qemu_io(&["-c", "write -P 0x11 0 8M", &image]);
    let original = dir.str("original.raw");
    qemu_img(&["convert", "-O", "raw", &image, &original]);
    let original = std::fs::read(&original).unwrap();
    // L1 entry 1 (guest 2 MiB..4 MiB) names an unaligned L2 table.
    let mut bytes = std::fs::read(&image).unwrap();
    let l1 = common::be64(&bytes, 40) as usize;
    let entry = common::be64(&bytes, l1 as u64 + 8) | 0x200;
    bytes[l1 + 8..l1 + 16].copy_from_slice(&entry.to_be_bytes());
    std::fs::write(&image, &bytes).unwrap();
    let out = dir.str("out.raw");
    let warnings = convert_salvaging(&image, &out);
    let bad = listed(&warnings);
    assert_eq!(bad, vec![(2 << 20, 2 << 20)], "{warnings}");
    assert_eq!(inspected(&image), bad);
    assert_salvaged(&original, &std::fs::read(&out).unwrap(), &bad);

    // A compressed cluster whose bytes are garbage: that cluster alone is lost.
    let compressed = dir.str("compressed.qcow2");
    let plain = dir.str("plain.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &plain, "4M"]);
    qemu_io(&["-c", "write -P 0x22 0 4M", &plain]);
    qemu_img(&["convert", "-c", "-O", "qcow2", &plain, &compressed]);
    let victim = 1u64 << 20; // guest cluster 16 of 64 KiB
                             // Where its compressed bytes are: from the L2 entry of guest cluster 16 (64 KiB).
    let mut bytes = std::fs::read(&compressed).unwrap();
    let l1 = common::be64(&bytes, 40);
    let l2 = common::be64(&bytes, l1) & 0x00ff_ffff_ffff_fe00;
    let entry = common::be64(&bytes, l2 + 16 * 8);
    let host = (entry & ((1u64 << 54) - 1)) as usize;
    for b in &mut bytes[host..host + 64] {
        *b ^= 0x5a;
    }
    std::fs::write(&compressed, &bytes).unwrap();
    let out = dir.str("out2.raw");
    let warnings = convert_salvaging(&compressed, &out);
    let bad = listed(&warnings);
    assert_eq!(bad, vec![(victim, 65536)], "{warnings}");
    assert_eq!(inspected(&compressed), bad);
    let want = {
        let p = dir.str("plain.raw");
        qemu_img(&["convert", "-O", "raw", &plain, &p]);
        std::fs::read(p).unwrap()
    };
    assert_salvaged(&want, &std::fs::read(&out).unwrap(), &bad);
    // Into a qcow2 target, the same salvage through the copy engine.
    let q = dir.str("out2.qcow2");
    let run = Command::new(env!("CARGO_BIN_EXE_cowimg"))
        .args([
            "convert",
            "--salvage",
            "-f",
            "qcow2",
            "-O",
            "qcow2",
            &compressed,
            &q,
        ])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(listed(&String::from_utf8(run.stderr).unwrap()), bad);
    qemu_img(&["check", &q]);
    qemu_img(&["compare", "-f", "qcow2", "-F", "raw", &q, &out]);
    // hash --salvage names the same range, and its digest is that of what the
    // salvaging convert wrote.
    let run = Command::new(env!("CARGO_BIN_EXE_cowimg"))
        .args(["hash", "--salvage", "-f", "qcow2", &compressed])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(listed(&String::from_utf8(run.stderr).unwrap()), bad);
    let digest = common::run_ok(None, "sha256sum", &[&out]);
    let digest = digest.split_whitespace().next().unwrap();
    assert!(String::from_utf8(run.stdout).unwrap().contains(digest));
    // Without --salvage, the same copy fails and leaves nothing behind.
    let fail = Command::new(env!("CARGO_BIN_EXE_cowimg"))
        .args([
            "convert",
            "-f",
            "qcow2",
            "-O",
            "raw",
            &compressed,
            &dir.str("none.raw"),
        ])
        .output()
        .unwrap();
    assert!(!fail.status.success());
    assert!(!dir.path("none.raw").exists());
}
