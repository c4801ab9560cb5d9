//! QEMU's damaged-image cases (iotests 060 and 214), rebuilt with qemu-img and byte
//! patches: cowimg check reports and repairs what qemu-img check does, writes that
//! would land on metadata are refused and mark the image corrupt, and reads of damaged
//! compressed clusters fail or succeed as QEMU's do.

mod common;

use common::*;
use std::process::Command;

const COWIMG: &str = env!("CARGO_BIN_EXE_cowimg");

fn poke(path: &str, at: u64, bytes: &[u8]) {
    let mut b = std::fs::read(path).unwrap();
    if b.len() < at as usize + bytes.len() {
        b.resize(at as usize + bytes.len(), 0);
    }
    b[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
    std::fs::write(path, b).unwrap();
}

fn incompat(path: &str) -> u64 {
    let b = std::fs::read(path).unwrap();
    u64::from_be_bytes(b[72..80].try_into().unwrap())
}

fn run(program: &str, args: &[&str]) -> (String, i32) {
    let mut cmd = Command::new(program);
    if program == COWIMG {
        cmd.arg(args[0]).args(&args[1..]);
    } else {
        cmd.args(args);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    (
        text.replace("cowimg:", "qemu-img:"),
        out.status.code().unwrap_or(-1),
    )
}

/// Runs `check` with `extra` on two copies of `image`: same output, same exit code,
/// and the repaired copies check the same afterwards.
fn same_check(dir: &Scratch, image: &str, extra: &[&str], context: &str) {
    let ours = dir.str("ours.qcow2");
    let theirs = dir.str("theirs.qcow2");
    std::fs::copy(image, &ours).unwrap();
    std::fs::copy(image, &theirs).unwrap();
    let mut a = vec!["check"];
    a.extend_from_slice(extra);
    let (mut x, cx) = run(COWIMG, &[a.as_slice(), &[&ours]].concat());
    let (mut y, cy) = run("qemu-img", &[a.as_slice(), &[&theirs]].concat());
    x = x.replace(&ours, "IMG");
    y = y.replace(&theirs, "IMG");
    assert_eq!((x, cx), (y, cy), "{context} check {extra:?}");
    assert_eq!(
        incompat(&ours),
        incompat(&theirs),
        "{context}: header flags after check {extra:?}"
    );
}

fn write_refused_and_marks_corrupt(image: &str, context: &str) {
    let (out, code) = run(
        COWIMG,
        &["io", "-f", "qcow2", "-c", "write -P 0x2a 0 512", image],
    );
    assert_ne!(code, 0, "{context}: {out}");
    assert!(
        out.contains("Preventing invalid write on metadata"),
        "{context}: {out}"
    );
    assert_ne!(incompat(image) & 2, 0, "{context}: corrupt bit set");
    let (out, _) = run(COWIMG, &["io", "-f", "qcow2", "-c", "read 0 512", image]);
    assert!(
        out.contains("Image is corrupt; cannot be opened read/write"),
        "{context}: {out}"
    );
    let (out, code) = run(
        COWIMG,
        &["io", "-r", "-f", "qcow2", "-c", "read 0 512", image],
    );
    assert_eq!(code, 0, "{context}: read-only open: {out}");
}

#[test]
fn iotest_060_l2_table_linked_onto_the_l1_table() {
    let dir = Scratch::new("060a");
    let img = dir.str("img.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "compat=1.1",
        &img,
        "64M",
    ]);
    poke(&img, 0x30000, b"\x80\x00\x00\x00\x00\x03\x00\x00");
    same_check(&dir, &img, &[], "060 L2 into L1");
    write_refused_and_marks_corrupt(&img, "060 L2 into L1");
}

#[test]
fn iotest_060_data_cluster_linked_onto_a_refcount_block() {
    let dir = Scratch::new("060b");
    let img = dir.str("img.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "compat=1.1",
        &img,
        "64M",
    ]);
    poke(&img, 0x40000 + 65535, b"\x00");
    poke(&img, 0x30000, b"\x80\x00\x00\x00\x00\x04\x00\x00");
    poke(&img, 0x20000 + 8, b"\x00\x01");
    poke(&img, 0x40000, b"\x80\x00\x00\x00\x00\x02\x00\x00");
    same_check(&dir, &img, &[], "060 data into refblock");
    same_check(&dir, &img, &["-r", "all"], "060 data into refblock");
    write_refused_and_marks_corrupt(&img, "060 data into refblock");
    // Repair clears the corrupt bit; afterwards writes work again.
    let (out, code) = run(COWIMG, &["check", "-r", "all", &img]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(incompat(&img) & 2, 0);
    let (out, code) = run(
        COWIMG,
        &["io", "-f", "qcow2", "-c", "write -P 0x2a 0 512", &img],
    );
    assert_eq!(code, 0, "{out}");
    qemu_img(&["check", &img]);
}

#[test]
fn iotest_060_data_cluster_linked_onto_an_inactive_l2_table() {
    let dir = Scratch::new("060c");
    let img = dir.str("img.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "compat=1.1",
        &img,
        "64M",
    ]);
    qemu_io(&["-f", "qcow2", "-c", "write -P 1 0 512", &img]);
    qemu_img(&["snapshot", "-c", "foo", &img]);
    qemu_io(&["-f", "qcow2", "-c", "write -P 2 0 512", &img]);
    // The active L2 table after the snapshot's copy-on-write is at 0x80000; point its
    // first entry at the snapshot's (inactive) L2 table.
    poke(&img, 0x80000, b"\x80\x00\x00\x00\x00\x04\x00\x00");
    same_check(&dir, &img, &[], "060 data into inactive L2");
    same_check(&dir, &img, &["-r", "all"], "060 data into inactive L2");
}

#[test]
fn iotest_214_compressed_clusters_with_wrong_sizes() {
    let dir = Scratch::new("214");
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
    // Two bits of entropy a byte: compresses to several sectors, not to one.
    let mut x = 7u64;
    let data: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x & 3) as u8
        })
        .collect();
    std::fs::write(dir.path("data.bin"), &data).unwrap();
    let source = dir.str("data.bin");
    qemu_io(&[
        "-f",
        "qcow2",
        "-c",
        &format!("write -c -s {source} 0 4k"),
        "-c",
        "write -c -P 0x22 4k 4k",
        &img,
    ]);
    let b = std::fs::read(&img).unwrap();
    let l1 = u64::from_be_bytes(b[40..48].try_into().unwrap()) as usize;
    let l2 = u64::from_be_bytes(b[l1..l1 + 8].try_into().unwrap()) & 0x00ff_ffff_ffff_fe00;
    let entry = |b: &[u8], i: u64| {
        u64::from_be_bytes(
            b[(l2 + i * 8) as usize..(l2 + i * 8 + 8) as usize]
                .try_into()
                .unwrap(),
        )
    };
    // 4 KiB clusters: the sector count is the 4 bits at 58..62.
    let shift = 62 - (12 - 8);
    let e0 = entry(&b, 0);
    assert!(
        (e0 >> shift) & 0xf >= 1,
        "the compressed data spans sectors"
    );
    let too_few = e0 & !(0xf << shift);
    let huge = e0 | (0xf << shift);
    for (name, value, readable) in [("too-few", too_few, false), ("huge", huge, true)] {
        let copy = dir.str(&format!("{name}.qcow2"));
        std::fs::copy(&img, &copy).unwrap();
        poke(&copy, l2, &value.to_be_bytes());
        // Reads: QEMU fails on too few sectors and reads fine with a huge count.
        let theirs = Command::new("qemu-io")
            .args(["-r", "-f", "qcow2", "-c", "read 0 4k", &copy])
            .output()
            .unwrap();
        let qemu_ok = !String::from_utf8_lossy(&theirs.stdout).contains("failed")
            && !String::from_utf8_lossy(&theirs.stderr).contains("failed");
        assert_eq!(qemu_ok, readable, "{name}: qemu");
        let (ours, code) = run(
            COWIMG,
            &["io", "-r", "-f", "qcow2", "-c", "read 0 4k", &copy],
        );
        assert_eq!(code == 0, readable, "{name}: cowimg: {ours}");
        if readable {
            let image = cowimg::Image::open(&copy, &cowimg::OpenOptions::default()).unwrap();
            let mut got = vec![0u8; 4096];
            image.read_at(&mut got, 0).unwrap();
            assert_eq!(
                got, data,
                "{name}: the data decompresses despite the oversized count"
            );
        }
        same_check(&dir, &copy, &[], &format!("214 {name}"));
    }
}

/// iotest 138: a data cluster at 32 PB. The check must not size anything by that
/// offset: the reference is reported as past the end of the file, as qemu-img does.
#[test]
fn iotest_138_data_cluster_at_32_pib() {
    let dir = Scratch::new("138");
    let img = dir.str("img.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=512",
        &img,
        "512",
    ]);
    qemu_io(&["-f", "qcow2", "-c", "write 0 512", &img]);
    poke(&img, 2048, b"\x80\x80\x00\x00\x00\x00\x00\x00");
    same_check(&dir, &img, &[], "138");
    same_check(&dir, &img, &["--output=json"], "138");
}
