//! QEMU's iotest 080 (qcow2 input validation), rebuilt: each poke into a fresh 64 MiB
//! image QEMU made, then the same request to qemu-io and to cowimg. Both must refuse
//! (with QEMU's words in cowimg's message) or both succeed.

mod common;

use common::*;
use std::process::Command;

fn poke(path: &str, at: u64, bytes: &[u8]) {
    let mut b = std::fs::read(path).unwrap();
    if b.len() < at as usize + bytes.len() {
        b.resize(at as usize + bytes.len(), 0);
    }
    b[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
    std::fs::write(path, b).unwrap();
}

/// (succeeded, stderr) of a command.
fn outcome(program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let failed = !out.status.success() || text.contains("failed") || text.contains("Could not");
    (!failed, text)
}

/// The part of QEMU's message after its "can't open … :" prefix.
fn qemu_reason(text: &str) -> String {
    let line = text
        .lines()
        .find(|l| l.contains("qemu-io:") || l.contains("qemu-img:"))
        .unwrap_or(text);
    line.rsplit(": ").next().unwrap_or(line).trim().to_string()
}

fn same_read_outcome(img: &str, case: &str) {
    let (qemu_ok, qemu_text) = outcome("qemu-io", &["-f", "qcow2", "-c", "read 0 512", img]);
    let (ours_ok, ours_text) = outcome(
        env!("CARGO_BIN_EXE_cowimg"),
        &["io", "-r", "-f", "qcow2", "-c", "read 0 512", img],
    );
    assert_eq!(
        ours_ok, qemu_ok,
        "{case}: qemu: {qemu_text} / cowimg: {ours_text}"
    );
    if !qemu_ok {
        let reason = qemu_reason(&qemu_text);
        assert!(
            ours_text.contains(&reason),
            "{case}: qemu says {reason:?}; cowimg says {ours_text}"
        );
    }
}

/// A case: its name and the (offset, bytes) pokes that make it.
type Case = (&'static str, Vec<(u64, Vec<u8>)>);

fn fresh(dir: &Scratch) -> String {
    let img = dir.str("test.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &img, "64M"]);
    img
}

#[test]
fn header_fields() {
    let dir = Scratch::new("080");
    let hl = 112u64; // header_length of QEMU 10's images; the 080 script assumes 104
    let cases: Vec<Case> = vec![
        ("huge header size", vec![(100, vec![0xff; 4])]),
        ("big header size", vec![(100, b"\x7f\xff\xff\xff".to_vec())]),
        (
            "huge unknown extension, huge backing offset",
            vec![
                (8, vec![0xff; 8]),
                (hl, b"\x12\x34\x56\x78".to_vec()),
                (hl + 4, b"\x7f\xff\xff\xff".to_vec()),
            ],
        ),
        (
            "huge unknown extension, area ends at its size field",
            vec![
                (8, (hl + 4).to_be_bytes().to_vec()),
                (hl, b"\x12\x34\x56\x78".to_vec()),
                (hl + 4, b"\x7f\xff\xff\xff".to_vec()),
            ],
        ),
        (
            "huge unknown extension",
            vec![
                (hl, b"\x12\x34\x56\x78".to_vec()),
                (hl + 4, b"\x7f\xff\xff\xff".to_vec()),
            ],
        ),
        ("huge refcount table size", vec![(56, vec![0xff; 4])]),
        (
            "large refcount table size",
            vec![(56, b"\x00\x02\x00\x01".to_vec())],
        ),
        (
            "misaligned refcount table",
            vec![(48, b"\x12\x34\x56\x78\x90\xab\xcd\xef".to_vec())],
        ),
        (
            "huge refcount offset",
            vec![
                (48, b"\xff\xff\xff\xff\xff\xff\x00\x00".to_vec()),
                (56, b"\x00\x00\x00\x7f".to_vec()),
            ],
        ),
        ("huge snapshot count", vec![(60, vec![0xff; 4])]),
        (
            "big snapshot count",
            vec![(60, b"\x7f\xff\xff\xff".to_vec())],
        ),
        (
            "huge snapshot offset",
            vec![
                (64, b"\xff\xff\xff\xff\xff\xff\x00\x00".to_vec()),
                (60, b"\x00\x00\xff\xff".to_vec()),
            ],
        ),
        (
            "misaligned snapshot offset",
            vec![
                (64, b"\x12\x34\x56\x78\x90\xab\xcd\xef".to_vec()),
                (60, vec![0; 4]),
            ],
        ),
        ("huge L1 size", vec![(36, vec![0xff; 4])]),
        ("big L1 size", vec![(36, b"\x7f\xff\xff\xff".to_vec())]),
        (
            "huge L1 offset",
            vec![
                (40, b"\x7f\xff\xff\xff\xff\xff\x00\x00".to_vec()),
                (36, b"\x00\x00\xff\xff".to_vec()),
            ],
        ),
        (
            "misaligned L1 offset",
            vec![
                (40, b"\x12\x34\x56\x78\x90\xab\xcd\xef".to_vec()),
                (36, b"\x00\x00\x00\x01".to_vec()),
            ],
        ),
        (
            "invalid backing file size",
            vec![
                (8, b"\x00\x00\x00\x00\x00\x00\x10\x00".to_vec()),
                (16, vec![0xff; 4]),
            ],
        ),
        ("L1 too small", vec![(36, vec![0; 4])]),
    ];
    for (case, pokes) in cases {
        let img = fresh(&dir);
        for (at, bytes) in &pokes {
            poke(&img, *at, bytes);
        }
        same_read_outcome(&img, case);
    }
}

/// Snapshot L1 tables with a bad offset or size: reading the snapshot, amending,
/// applying and deleting it are refused as QEMU refuses them, and check agrees.
#[test]
fn invalid_snapshot_l1_tables() {
    for (case, at, bytes) in [
        (
            "snapshot L1 offset",
            0x70000u64,
            b"\x00\x00\x00\x00\x00\x40\x02\x00".to_vec(),
        ),
        ("snapshot L1 size", 0x70008, b"\x10\x00\x00\x00".to_vec()),
    ] {
        let dir = Scratch::new("080-snap");
        let img = fresh(&dir);
        qemu_io(&["-f", "qcow2", "-c", "write 0 512", &img]);
        qemu_img(&["snapshot", "-c", "test", &img]);
        poke(&img, at, &bytes);
        let cowimg = env!("CARGO_BIN_EXE_cowimg");
        let snap = dir.str("snap.raw");
        let (q, qt) = outcome(
            "qemu-img",
            &[
                "convert",
                "-l",
                "snapshot.name=test",
                "-O",
                "raw",
                &img,
                &snap,
            ],
        );
        let (o, ot) = outcome(
            cowimg,
            &[
                "convert",
                "-l",
                "snapshot.name=test",
                "-O",
                "raw",
                &img,
                &snap,
            ],
        );
        assert_eq!((o, q), (false, false), "{case} convert: {qt} / {ot}");
        assert!(
            ot.contains(&qemu_reason(&qt)),
            "{case}: qemu {qt:?} / ours {ot:?}"
        );
        for args in [
            vec!["snapshot", "-a", "test"],
            vec!["snapshot", "-d", "test"],
            vec!["amend", "-o", "compat=0.10"],
        ] {
            let copy = dir.str("copy.qcow2");
            std::fs::copy(&img, &copy).unwrap();
            let mut ours = args.clone();
            ours.push(&copy);
            let (o, ot) = outcome(cowimg, &ours);
            assert!(!o, "{case} {args:?} must be refused: {ot}");
            assert!(ot.contains("Snapshot L1 table"), "{case} {args:?}: {ot}");
        }
        let (_, q) = outcome("qemu-img", &["check", &img]);
        let (_, o) = outcome(cowimg, &["check", &img]);
        assert_eq!(o.replace("cowimg:", "qemu-img:"), q, "{case} check");
    }
}
