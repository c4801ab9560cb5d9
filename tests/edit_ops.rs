//! rebase (-u and safe), commit and amend do what qemu-img does to a twin: the same
//! guest content, clean images, the same info; header rewrites keep what they do not
//! change.

mod common;

use common::*;

fn cowimg(dir: &Scratch, args: &[&str]) {
    qemu(dir, env!("CARGO_BIN_EXE_cowimg"), args);
}

fn qemu(dir: &Scratch, program: &str, args: &[&str]) -> String {
    run_ok(Some(&dir.path("")), program, args)
}

/// Two identical images made by qemu, with the given backing file and writes.
fn twins(dir: &Scratch, opts: &str, backing: Option<&str>, writes: &[&str]) {
    for name in ["ours.qcow2", "twin.qcow2"] {
        let mut args = vec!["create", "-q", "-f", "qcow2", "-o", opts];
        if let Some(b) = backing {
            args.extend([
                "-b",
                b,
                "-F",
                if b.ends_with(".raw") { "raw" } else { "qcow2" },
            ]);
        }
        args.extend([name, "1M"]);
        qemu(dir, "qemu-img", &args);
        let mut io = vec!["-f", "qcow2"];
        for w in writes {
            io.extend(["-c", w]);
        }
        io.push(name);
        qemu(dir, "qemu-io", &io);
    }
}

fn pattern_file(dir: &Scratch, name: &str, f: impl Fn(usize) -> u8) {
    std::fs::write(dir.path(name), (0..1 << 20).map(f).collect::<Vec<u8>>()).unwrap();
}

/// qemu-img info of both images agrees, apart from the file underneath (its size
/// depends on allocation choices) and snapshot timestamps.
fn same_info(dir: &Scratch) {
    let strip = |s: String| {
        let after_children = s
            .split_once("\n    ],\n")
            .map_or(s.clone(), |(_, rest)| rest.to_string());
        after_children
            .lines()
            .filter(|l| {
                !l.contains("filename") && !l.contains("actual-size") && !l.contains("date-")
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let a = strip(qemu(
        dir,
        "qemu-img",
        &["info", "--output=json", "ours.qcow2"],
    ));
    let b = strip(qemu(
        dir,
        "qemu-img",
        &["info", "--output=json", "twin.qcow2"],
    ));
    assert_eq!(a, b);
}

#[test]
fn unsafe_rebase_rewrites_only_the_name_and_keeps_the_rest() {
    let dir = Scratch::new("rebase-u");
    std::fs::copy(data_path("zstd-extl2.qcow2"), dir.path("ours.qcow2")).unwrap();
    std::fs::copy(data_path("zstd-extl2.qcow2"), dir.path("twin.qcow2")).unwrap();
    pattern_file(&dir, "base.raw", |i| (i / 4096) as u8);
    cowimg(
        &dir,
        &["rebase", "-u", "-b", "base.raw", "-F", "raw", "ours.qcow2"],
    );
    qemu(
        &dir,
        "qemu-img",
        &["rebase", "-u", "-b", "base.raw", "-F", "raw", "twin.qcow2"],
    );
    same_info(&dir);
    qemu(&dir, "qemu-img", &["check", "ours.qcow2"]);
    qemu(&dir, "qemu-img", &["compare", "ours.qcow2", "twin.qcow2"]);
    // The compression type and the feature table survive the rewrite.
    let h = cowimg::header::Qcow2::read(
        &cowimg::storage::FileStorage::open(&dir.path("ours.qcow2"), false).unwrap(),
    )
    .unwrap();
    assert_eq!(h.compression_type(), 1);
    assert_eq!(h.feature_table().len(), 8);
    assert_eq!(h.backing_file.as_deref(), Some(&b"base.raw"[..]));
    // And back to no backing file.
    cowimg(&dir, &["rebase", "-u", "-b", "", "ours.qcow2"]);
    qemu(&dir, "qemu-img", &["rebase", "-u", "-b", "", "twin.qcow2"]);
    same_info(&dir);
}

#[test]
fn safe_rebase_keeps_the_guest_content() {
    for opts in [
        "cluster_size=4096",
        "compat=0.10,cluster_size=4096",
        "cluster_size=16384,extended_l2=on",
    ] {
        let dir = Scratch::new("rebase");
        pattern_file(&dir, "old.raw", |i| (i / 4096 % 7) as u8);
        pattern_file(&dir, "new.raw", |i| {
            if i % 100_000 < 50_000 {
                (i / 4096 % 7) as u8
            } else {
                0x99
            }
        });
        twins(
            &dir,
            opts,
            Some("old.raw"),
            &["write -P 1 8k 12k", "write -z 300k 8k", "discard 600k 64k"],
        );
        qemu(
            &dir,
            "qemu-img",
            &["convert", "-O", "raw", "ours.qcow2", "before.raw"],
        );
        cowimg(
            &dir,
            &["rebase", "-b", "new.raw", "-F", "raw", "ours.qcow2"],
        );
        qemu(
            &dir,
            "qemu-img",
            &["rebase", "-b", "new.raw", "-F", "raw", "twin.qcow2"],
        );
        qemu(&dir, "qemu-img", &["check", "ours.qcow2"]);
        qemu(
            &dir,
            "qemu-img",
            &["convert", "-O", "raw", "ours.qcow2", "after.raw"],
        );
        assert!(
            std::fs::read(dir.path("before.raw")).unwrap()
                == std::fs::read(dir.path("after.raw")).unwrap(),
            "{opts}"
        );
        qemu(&dir, "qemu-img", &["compare", "ours.qcow2", "twin.qcow2"]);
        same_info(&dir);
        // Rebasing onto nothing copies everything the backing file supplied.
        cowimg(&dir, &["rebase", "-b", "", "ours.qcow2"]);
        qemu(
            &dir,
            "qemu-img",
            &["convert", "-O", "raw", "ours.qcow2", "alone.raw"],
        );
        assert!(
            std::fs::read(dir.path("before.raw")).unwrap()
                == std::fs::read(dir.path("alone.raw")).unwrap(),
            "{opts}"
        );
        qemu(&dir, "qemu-img", &["check", "ours.qcow2"]);
    }
}

#[test]
fn commit_writes_into_the_backing_file_and_empties_the_image() {
    for base_opts in ["cluster_size=4096", "compat=0.10,cluster_size=65536"] {
        let dir = Scratch::new("commit");
        for base in ["base-ours.qcow2", "base-twin.qcow2"] {
            qemu(
                &dir,
                "qemu-img",
                &["create", "-q", "-f", "qcow2", "-o", base_opts, base, "1M"],
            );
            qemu(
                &dir,
                "qemu-io",
                &["-f", "qcow2", "-c", "write -P 5 0 256k", base],
            );
        }
        let writes = [
            "write -P 1 8k 12k",
            "write -z 100k 8k",
            "write -c -P 2 512k 64k",
            "write -P 3 900k 100k",
        ];
        for (top, base) in [
            ("ours.qcow2", "base-ours.qcow2"),
            ("twin.qcow2", "base-twin.qcow2"),
        ] {
            qemu(
                &dir,
                "qemu-img",
                &[
                    "create",
                    "-q",
                    "-f",
                    "qcow2",
                    "-o",
                    "cluster_size=4096",
                    "-b",
                    base,
                    "-F",
                    "qcow2",
                    top,
                ],
            );
            let mut io = vec!["-f", "qcow2"];
            for w in writes {
                io.extend(["-c", w]);
            }
            io.push(top);
            qemu(&dir, "qemu-io", &io);
        }
        qemu(
            &dir,
            "qemu-img",
            &["convert", "-O", "raw", "ours.qcow2", "before.raw"],
        );
        cowimg(&dir, &["commit", "ours.qcow2"]);
        qemu(&dir, "qemu-img", &["commit", "twin.qcow2"]);
        for image in ["ours.qcow2", "base-ours.qcow2"] {
            qemu(&dir, "qemu-img", &["check", image]);
        }
        qemu(
            &dir,
            "qemu-img",
            &["compare", "base-ours.qcow2", "base-twin.qcow2"],
        );
        qemu(&dir, "qemu-img", &["compare", "ours.qcow2", "twin.qcow2"]);
        qemu(
            &dir,
            "qemu-img",
            &["convert", "-O", "raw", "base-ours.qcow2", "base.raw"],
        );
        assert!(
            std::fs::read(dir.path("before.raw")).unwrap()
                == std::fs::read(dir.path("base.raw")).unwrap()
        );
        let map = qemu_map(&dir.path("ours.qcow2"), "qcow2");
        assert!(
            map.iter().all(|r| r.depth == 1),
            "the committed image is empty: {map:?}"
        );
    }
}

#[test]
fn amend_compat_both_ways_and_lazy_refcounts() {
    let dir = Scratch::new("amend");
    pattern_file(&dir, "base.raw", |i| (i / 512) as u8);
    twins(
        &dir,
        "cluster_size=4096",
        Some("base.raw"),
        &[
            "write -P 1 0 64k",
            "write -z 8k 8k",
            "write -z -u 32k 8k",
            "write -z 200k 16k",
            "write -c -P 7 512k 4k",
        ],
    );
    qemu(&dir, "qemu-img", &["snapshot", "-c", "snap", "ours.qcow2"]);
    qemu(&dir, "qemu-img", &["snapshot", "-c", "snap", "twin.qcow2"]);
    qemu(
        &dir,
        "qemu-io",
        &["-f", "qcow2", "-c", "write -z 400k 8k", "ours.qcow2"],
    );
    qemu(
        &dir,
        "qemu-io",
        &["-f", "qcow2", "-c", "write -z 400k 8k", "twin.qcow2"],
    );
    qemu(
        &dir,
        "qemu-img",
        &["convert", "-O", "raw", "ours.qcow2", "before.raw"],
    );
    qemu(
        &dir,
        "qemu-img",
        &[
            "convert",
            "-l",
            "snapshot.name=snap",
            "-O",
            "raw",
            "ours.qcow2",
            "snap-before.raw",
        ],
    );
    cowimg(&dir, &["amend", "-o", "compat=0.10", "ours.qcow2"]);
    qemu(
        &dir,
        "qemu-img",
        &["amend", "-o", "compat=0.10", "twin.qcow2"],
    );
    qemu(&dir, "qemu-img", &["check", "ours.qcow2"]);
    same_info(&dir);
    qemu(
        &dir,
        "qemu-img",
        &["convert", "-O", "raw", "ours.qcow2", "after.raw"],
    );
    qemu(
        &dir,
        "qemu-img",
        &[
            "convert",
            "-l",
            "snapshot.name=snap",
            "-O",
            "raw",
            "ours.qcow2",
            "snap-after.raw",
        ],
    );
    assert!(
        std::fs::read(dir.path("before.raw")).unwrap()
            == std::fs::read(dir.path("after.raw")).unwrap()
    );
    assert!(
        std::fs::read(dir.path("snap-before.raw")).unwrap()
            == std::fs::read(dir.path("snap-after.raw")).unwrap()
    );
    cowimg(&dir, &["amend", "-o", "compat=1.1", "ours.qcow2"]);
    qemu(
        &dir,
        "qemu-img",
        &["amend", "-o", "compat=1.1", "twin.qcow2"],
    );
    same_info(&dir);
    cowimg(&dir, &["amend", "-o", "lazy_refcounts=on", "ours.qcow2"]);
    qemu(
        &dir,
        "qemu-img",
        &["amend", "-o", "lazy_refcounts=on", "twin.qcow2"],
    );
    same_info(&dir);
    qemu(&dir, "qemu-img", &["check", "ours.qcow2"]);
    qemu(&dir, "qemu-img", &["compare", "ours.qcow2", "twin.qcow2"]);
}

/// commit into an encrypted (legacy AES) backing file with the passphrase given: the
/// base is written with the key the chain was opened with (it was reopened without it
/// and refused, "Parameter 'encrypt.key-secret' is required for cipher").
#[test]
fn commit_into_an_encrypted_backing_file() {
    let dir = Scratch::new("commit-aes");
    let base = dir.str("base.qcow2");
    let top = dir.str("top.qcow2");
    let secret = "secret,id=s0,data=pw";
    qemu(
        &dir,
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "--object",
            secret,
            "-o",
            "encrypt.format=aes,encrypt.key-secret=s0",
            &base,
            "1M",
        ],
    );
    qemu(
        &dir,
        "qemu-img",
        &[
            "create", "-q", "-f", "qcow2", "-b", &base, "-F", "qcow2", &top,
        ],
    );
    qemu(
        &dir,
        "qemu-io",
        &[
            "--object",
            secret,
            "--image-opts",
            "-c",
            "write -P 5 0 64k",
            &format!("driver=qcow2,file.filename={top},backing.encrypt.key-secret=s0"),
        ],
    );
    std::fs::write(dir.path("pw"), "pw").unwrap();
    let object = format!("secret,id=s0,file={}", dir.str("pw"));
    cowimg(
        &dir,
        &[
            "commit",
            "--object",
            &object,
            "--image-opts",
            &format!("driver=qcow2,file.filename={top},encrypt.key-secret=s0"),
        ],
    );
    let read = qemu(
        &dir,
        "qemu-io",
        &[
            "--object",
            secret,
            "--image-opts",
            "-c",
            "read -P 5 0 64k",
            &format!("driver=qcow2,file.filename={base},encrypt.key-secret=s0"),
        ],
    );
    assert!(!read.contains("Pattern verification failed"), "{read}");
}
