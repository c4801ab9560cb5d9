//! UML cow: QEMU no longer reads or writes it, so these tests lay reference files out
//! themselves, byte by byte from the documented layouts (never with cowimg's code), and
//! read cowimg's files back with an equally independent reader.

mod common;

use common::*;
use std::process::Command;

const COWIMG: &str = env!("CARGO_BIN_EXE_cowimg");
const MAGIC: u32 = 0x4f4f4f4d;
const SIZE: u64 = 1 << 20;

fn base_bytes() -> Vec<u8> {
    (0..SIZE).map(|i| (i / 512 % 251) as u8 + 1).collect()
}

fn run(dir: &Scratch, args: &[&str]) -> String {
    run_ok(Some(&dir.path("")), COWIMG, args)
}

fn read_all(dir: &Scratch, image: &str) -> Vec<u8> {
    run(dir, &["convert", "-O", "raw", image, "out.raw"]);
    std::fs::read(dir.path("out.raw")).unwrap()
}

/// A cow layout, as the facts describe it: where the fields, bitmap and data are.
#[derive(Clone, Copy, Debug)]
enum Layout {
    V1 { little: bool },
    V2,
    V3,
    V3Broken,
    Qemu,
}

/// Lays out a cow file over `backing` holding `sectors` (each filled with its own byte).
fn write_reference(layout: Layout, backing: &str, sectors: &[(u64, u8)]) -> Vec<u8> {
    let ss = 512u64;
    let be32 = |v: u32| v.to_be_bytes();
    let (mut head, bitmap_at, data_at) = match layout {
        Layout::V1 { little } => {
            let w32 = |v: u32| {
                if little {
                    v.to_le_bytes()
                } else {
                    v.to_be_bytes()
                }
            };
            let w64 = |v: u64| {
                if little {
                    v.to_le_bytes()
                } else {
                    v.to_be_bytes()
                }
            };
            let mut h = vec![0u8; 280];
            h[0..4].copy_from_slice(&w32(MAGIC));
            h[4..8].copy_from_slice(&w32(1));
            h[8..8 + backing.len()].copy_from_slice(backing.as_bytes());
            h[268..276].copy_from_slice(&w64(SIZE));
            h[276..280].copy_from_slice(&w32(512));
            let len = (SIZE + ss - 1) / (8 * ss);
            (h, 280, (280 + len).next_multiple_of(ss))
        }
        Layout::V2 => {
            let mut h = vec![0u8; 4120];
            h[0..4].copy_from_slice(&be32(MAGIC));
            h[4..8].copy_from_slice(&be32(2));
            h[8..8 + backing.len()].copy_from_slice(backing.as_bytes());
            h[4108..4116].copy_from_slice(&SIZE.to_be_bytes());
            h[4116..4120].copy_from_slice(&be32(512));
            let len = (SIZE + ss - 1) / (8 * ss);
            (h, 4120, (4120 + len).next_multiple_of(ss))
        }
        Layout::V3 | Layout::V3Broken => {
            let broken = matches!(layout, Layout::V3Broken);
            let mut h = vec![0u8; if broken { 4136 } else { 4128 }];
            h[0..4].copy_from_slice(&be32(MAGIC));
            h[4..8].copy_from_slice(&be32(3));
            let (size_at, ss_at, align_at, name_at) = if broken {
                (16, 24, 28, 36)
            } else {
                (12, 20, 24, 32)
            };
            h[size_at..size_at + 8].copy_from_slice(&SIZE.to_be_bytes());
            h[ss_at..ss_at + 4].copy_from_slice(&be32(512));
            h[align_at..align_at + 4].copy_from_slice(&be32(4096));
            h[name_at..name_at + backing.len()].copy_from_slice(backing.as_bytes());
            let bitmap_at = (h.len() as u64).next_multiple_of(4096);
            let len = SIZE.div_ceil(ss).div_ceil(8);
            (h, bitmap_at, (bitmap_at + len).next_multiple_of(4096))
        }
        Layout::Qemu => {
            let mut h = vec![0u8; 1056];
            h[0..4].copy_from_slice(&be32(MAGIC));
            h[4..8].copy_from_slice(&be32(2));
            h[8..8 + backing.len()].copy_from_slice(backing.as_bytes());
            h[1040..1048].copy_from_slice(&SIZE.to_be_bytes());
            h[1048..1052].copy_from_slice(&be32(512));
            let len = (SIZE / 512).div_ceil(8);
            (h, 1056, (1056 + len + 511) & !511)
        }
    };
    head.resize((data_at + SIZE) as usize, 0);
    for &(s, byte) in sectors {
        head[(bitmap_at + s / 8) as usize] |= 1 << (s % 8);
        head[(data_at + s * ss) as usize..(data_at + (s + 1) * ss) as usize].fill(byte);
    }
    head
}

/// The guest content a reference file should read as.
fn expected(sectors: &[(u64, u8)]) -> Vec<u8> {
    let mut out = base_bytes();
    for &(s, byte) in sectors {
        out[(s * 512) as usize..((s + 1) * 512) as usize].fill(byte);
    }
    out
}

#[test]
fn every_layout_written_by_hand_reads_back() {
    let sectors = [
        (0u64, 0xa0u8),
        (1, 0xa1),
        (7, 0xa7),
        (8, 0xa8),
        (1000, 0xb0),
        (2047, 0xbf),
    ];
    for layout in [
        Layout::V1 { little: true },
        Layout::V1 { little: false },
        Layout::V2,
        Layout::V3,
        Layout::V3Broken,
        Layout::Qemu,
    ] {
        let dir = Scratch::new("cow-ref");
        std::fs::write(dir.path("base.raw"), base_bytes()).unwrap();
        std::fs::write(
            dir.path("ref.cow"),
            write_reference(layout, "base.raw", &sectors),
        )
        .unwrap();
        assert_eq!(read_all(&dir, "ref.cow"), expected(&sectors), "{layout:?}");
        let info = run(&dir, &["info", "ref.cow"]);
        assert!(
            info.contains("file format: cow") && info.contains("backing file: base.raw"),
            "{layout:?}: {info}"
        );
    }
}

/// Version 3 without a backing file: four zero bytes at 32 are then the kernel
/// layout's empty name, not the broken layout's marker, and both layouts still read.
#[test]
fn version_3_without_a_backing_file_reads_in_both_layouts() {
    let sectors = [(0u64, 0x31u8), (9, 0x39), (2047, 0x3f)];
    for layout in [Layout::V3, Layout::V3Broken] {
        let dir = Scratch::new("cow-v3-alone");
        std::fs::write(dir.path("alone.cow"), write_reference(layout, "", &sectors)).unwrap();
        let mut want = vec![0u8; SIZE as usize];
        for &(s, byte) in &sectors {
            want[(s * 512) as usize..((s + 1) * 512) as usize].fill(byte);
        }
        assert_eq!(read_all(&dir, "alone.cow"), want, "{layout:?}");
        let info = run(&dir, &["info", "alone.cow"]);
        assert!(!info.contains("backing file:"), "{layout:?}: {info}");
    }
}

/// An independent reader of the v3 and v2 layouts: the guest content a file holds.
fn read_reference(file: &[u8], base: &[u8]) -> Vec<u8> {
    let be32 = |at: usize| u32::from_be_bytes(file[at..at + 4].try_into().unwrap());
    let be64 = |at: usize| u64::from_be_bytes(file[at..at + 8].try_into().unwrap());
    assert_eq!(be32(0), MAGIC);
    let (size, bitmap_at, data_at) = match be32(4) {
        3 => {
            let size = be64(12);
            let align = u64::from(be32(24));
            let bitmap_at = 4128u64.next_multiple_of(align);
            (
                size,
                bitmap_at,
                (bitmap_at + size.div_ceil(512).div_ceil(8)).next_multiple_of(align),
            )
        }
        2 => {
            let size = be64(4108);
            (
                size,
                4120,
                (4120 + (size + 511) / 4096).next_multiple_of(512),
            )
        }
        v => panic!("version {v}"),
    };
    let mut out = base[..size as usize].to_vec();
    for s in 0..size / 512 {
        if file[(bitmap_at + s / 8) as usize] & (1 << (s % 8)) != 0 {
            let at = (data_at + s * 512) as usize;
            out[(s * 512) as usize..((s + 1) * 512) as usize].copy_from_slice(&file[at..at + 512]);
        }
    }
    out
}

#[test]
fn files_cowimg_writes_read_back_independently() {
    for version in ["3", "2"] {
        let dir = Scratch::new("cow-ours");
        std::fs::write(dir.path("base.raw"), base_bytes()).unwrap();
        run(
            &dir,
            &[
                "create",
                "-q",
                "-f",
                "cow",
                "-o",
                &format!("cow_version={version}"),
                "-b",
                "base.raw",
                "ours.cow",
            ],
        );
        let mut model = base_bytes();
        let mut args = vec!["io".to_string(), "-f".into(), "cow".into()];
        let mut x = 99u64 + version.len() as u64;
        for _ in 0..30 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let off = x % (SIZE - 1);
            let len = 1 + (x >> 20) % 5000.min(SIZE - off);
            let pat = (x >> 40) as u8 | 1;
            args.extend(["-c".into(), format!("write -P {pat} {off} {len}")]);
            model[off as usize..(off + len) as usize].fill(pat);
        }
        args.push("ours.cow".into());
        run(&dir, &args.iter().map(String::as_str).collect::<Vec<_>>());
        let file = std::fs::read(dir.path("ours.cow")).unwrap();
        assert_eq!(
            read_reference(&file, &base_bytes()),
            model,
            "v{version}: independent reader"
        );
        assert_eq!(
            read_all(&dir, "ours.cow"),
            model,
            "v{version}: cowimg's own reader"
        );
    }
}

#[test]
fn a_changed_backing_file_is_warned_about() {
    let dir = Scratch::new("cow-mtime");
    std::fs::write(dir.path("base.raw"), base_bytes()).unwrap();
    run(
        &dir,
        &["create", "-q", "-f", "cow", "-b", "base.raw", "a.cow"],
    );
    let quiet = Command::new(COWIMG)
        .current_dir(dir.path(""))
        .args(["info", "a.cow"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&quiet.stderr).contains("warning"));
    let file = std::fs::File::options()
        .write(true)
        .open(dir.path("base.raw"))
        .unwrap();
    file.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(3600))
        .unwrap();
    let loud = Command::new(COWIMG)
        .current_dir(dir.path(""))
        .args(["info", "a.cow"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&loud.stderr).contains("was modified"),
        "{}",
        String::from_utf8_lossy(&loud.stderr)
    );
}

#[test]
fn chains_mixing_formats() {
    let dir = Scratch::new("mixed");
    std::fs::write(dir.path("base.raw"), base_bytes()).unwrap();
    // qcow2 over cow over raw.
    run(
        &dir,
        &["create", "-q", "-f", "cow", "-b", "base.raw", "mid.cow"],
    );
    run(
        &dir,
        &[
            "io",
            "-f",
            "cow",
            "-c",
            "write -P 0x33 4096 8192",
            "mid.cow",
        ],
    );
    run(
        &dir,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=4096",
            "-b",
            "mid.cow",
            "-F",
            "cow",
            "top.qcow2",
        ],
    );
    run(
        &dir,
        &[
            "io",
            "-f",
            "qcow2",
            "-c",
            "write -P 0x44 6144 1024",
            "top.qcow2",
        ],
    );
    let mut model = base_bytes();
    model[4096..12288].fill(0x33);
    model[6144..7168].fill(0x44);
    assert_eq!(read_all(&dir, "top.qcow2"), model);
    // qemu-img cannot open a cow backing file: check the qcow2 without it.
    let spec = format!(
        "json:{{\"driver\":\"qcow2\",\"file\":{{\"driver\":\"file\",\"filename\":\"{}\"}},\"backing\":null}}",
        dir.str("top.qcow2")
    );
    qemu_img(&["check", &spec]);
    // cow over qcow2 over raw: the cow's sectors over the qcow2's.
    run(
        &dir,
        &["create", "-q", "-f", "cow", "-b", "top.qcow2", "over.cow"],
    );
    run(
        &dir,
        &["io", "-f", "cow", "-c", "write -P 0x55 0 512", "over.cow"],
    );
    model[0..512].fill(0x55);
    assert_eq!(read_all(&dir, "over.cow"), model);
    // qcow2 over qcow over raw, all made by QEMU: cowimg reads what qemu-img reads.
    let path = |n: &str| dir.str(n);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow",
        "-b",
        &path("base.raw"),
        "-F",
        "raw",
        &path("mid.qcow"),
        "1M",
    ]);
    qemu_io(&[
        "-f",
        "qcow",
        "-c",
        "write -P 0x66 100k 20k",
        &path("mid.qcow"),
    ]);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        &path("mid.qcow"),
        "-F",
        "qcow",
        &path("top2.qcow2"),
        "1M",
    ]);
    qemu_io(&[
        "-f",
        "qcow2",
        "-c",
        "write -P 0x77 110k 2k",
        &path("top2.qcow2"),
    ]);
    qemu_img(&[
        "convert",
        "-O",
        "raw",
        &path("top2.qcow2"),
        &path("qemu.raw"),
    ]);
    assert_eq!(
        read_all(&dir, "top2.qcow2"),
        std::fs::read(dir.path("qemu.raw")).unwrap()
    );
}
