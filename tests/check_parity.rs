//! `cowimg check` finds, reports and repairs what `qemu-img check` does: each kind of
//! damage, with no repair, `-r leaks` and `-r all`, in human and JSON output; the exit
//! codes agree and so does a later `qemu-img check` of the repaired image.

mod common;

use common::*;
use std::process::Command;

#[derive(Clone, Copy, Debug)]
enum Damage {
    /// A cluster past the data with refcount 1, and a data cluster with refcount 2.
    Leaks,
    /// A data cluster with refcount 0: the refcount structures need rebuilding.
    ZeroRefcount,
    /// A data cluster with refcount 1 but COPIED clear.
    CopiedMissing,
    /// A data cluster with refcount 3.
    TooHigh,
    /// Dirty and corrupt bits set on a healthy image.
    Flags,
    /// The L1 entry's COPIED flag cleared.
    L1Copied,
    /// A reserved bit set in an L2 entry.
    Reserved,
}

fn be(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

fn damaged(dir: &Scratch, name: &str, damage: Damage) -> String {
    let path = dir.str(name);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4096",
        &path,
        "1M",
    ]);
    qemu_io(&[
        "-f",
        "qcow2",
        "-c",
        "write -P 1 0 16k",
        "-c",
        "write -c -P 2 64k 4k",
        &path,
    ]);
    let mut b = std::fs::read(&path).unwrap();
    let block = be(&b, be(&b, 48) as usize) as usize;
    let l1 = be(&b, 40) as usize;
    let l2 = (be(&b, l1) & 0x00ff_ffff_ffff_fe00) as usize;
    let data = ((be(&b, l2) & 0x00ff_ffff_ffff_fe00) / 4096) as usize;
    let set = |b: &mut Vec<u8>, cluster: usize, v: u16| {
        b[block + 2 * cluster..block + 2 * cluster + 2].copy_from_slice(&v.to_be_bytes())
    };
    match damage {
        Damage::Leaks => {
            let n = b.len() / 4096;
            b.extend_from_slice(&[0; 4096]);
            set(&mut b, n, 1);
            set(&mut b, data, 2);
        }
        Damage::ZeroRefcount => set(&mut b, data, 0),
        Damage::CopiedMissing => {
            let e = be(&b, l2) & !(1 << 63);
            b[l2..l2 + 8].copy_from_slice(&e.to_be_bytes());
        }
        Damage::TooHigh => set(&mut b, data, 3),
        Damage::Flags => b[79] |= 3,
        Damage::L1Copied => b[l1] &= 0x7f,
        Damage::Reserved => b[l2 + 7] |= 0x02,
    }
    std::fs::write(&path, b).unwrap();
    path
}

fn run(program: &str, args: &[&str], image: &str) -> (String, i32) {
    let out = Command::new(program)
        .arg("check")
        .args(args)
        .arg(image)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    )
    .replace("cowimg:", "qemu-img:")
    .replace(image, "IMAGE");
    (text, out.status.code().unwrap())
}

#[test]
fn check_and_repair_agree_with_qemu_img() {
    let damages = [
        Damage::Leaks,
        Damage::ZeroRefcount,
        Damage::CopiedMissing,
        Damage::TooHigh,
        Damage::Flags,
        Damage::L1Copied,
        Damage::Reserved,
    ];
    for damage in damages {
        for repair in [&[][..], &["-r", "leaks"], &["-r", "all"]] {
            for output in ["--output=human", "--output=json"] {
                let dir = Scratch::new("check");
                let ours = damaged(&dir, "ours.qcow2", damage);
                let theirs = damaged(&dir, "theirs.qcow2", damage);
                let mut args = vec![output];
                args.extend_from_slice(repair);
                let a = run(env!("CARGO_BIN_EXE_cowimg"), &args, &ours);
                let b = run("qemu-img", &args, &theirs);
                assert_eq!(a, b, "{damage:?} {args:?}");
                let after = |image: &str| {
                    Command::new("qemu-img")
                        .args(["check", image])
                        .status()
                        .unwrap()
                        .code()
                };
                assert_eq!(
                    after(&ours),
                    after(&theirs),
                    "{damage:?} {args:?}: the repaired images differ"
                );
            }
        }
    }
}

#[test]
fn formats_without_checks_exit_63() {
    let out = Command::new(env!("CARGO_BIN_EXE_cowimg"))
        .args(["check", &data_path("qcow1.qcow").to_string_lossy()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(63));
    let out = Command::new(env!("CARGO_BIN_EXE_cowimg"))
        .args(["check", &data_path("base.raw").to_string_lossy()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(63));
}

/// What qemu-img cannot open it does not check: an unknown incompatible feature, a
/// size past its limit and a missing backing file are refused (exit 1) with the open's
/// reason, by both tools, instead of "No errors were found".
#[test]
fn images_qemu_cannot_open_are_refused_not_checked() {
    let dir = Scratch::new("check-refused");
    let cases: [(&str, u64, &[u8], &str); 3] = [
        (
            "feature.qcow2",
            72,
            &[0x80],
            "Unknown incompatible feature: 8000000000000000",
        ),
        (
            "big.qcow2",
            24,
            &[0x40, 0, 0, 0, 0, 0, 0, 0],
            "Image is too big",
        ),
        (
            "orphan.qcow2",
            0,
            &[],
            "Could not open 'missing.qcow2': No such file or directory",
        ),
    ];
    for (name, at, patch, reason) in cases {
        let path = dir.str(name);
        if name == "orphan.qcow2" {
            qemu_img(&[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-u",
                "-b",
                "missing.qcow2",
                "-F",
                "qcow2",
                &path,
                "1M",
            ]);
        } else {
            qemu_img(&["create", "-q", "-f", "qcow2", &path, "1M"]);
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[at as usize..at as usize + patch.len()].copy_from_slice(patch);
            std::fs::write(&path, bytes).unwrap();
        }
        let mut messages = Vec::new();
        for program in ["qemu-img", env!("CARGO_BIN_EXE_cowimg")] {
            let out = Command::new(program)
                .current_dir(dir.path(""))
                .args(["check", name])
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(1),
                "{program} check {name}: {stderr}"
            );
            assert!(stderr.contains(reason), "{program} check {name}: {stderr}");
            messages.push(stderr.split_once(": ").unwrap().1.to_string());
            assert!(
                out.stdout.is_empty(),
                "{program} check {name} reported a check"
            );
        }
        // The same words, but for the program's name.
        assert_eq!(messages[0], messages[1], "{name}");
    }
}
