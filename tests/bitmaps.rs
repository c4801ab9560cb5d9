//! Persistent bitmaps: `bitmap` and guest writes through cowimg (installed as qemu-img
//! and qemu-io) leave the same bitmaps as QEMU's tools do on the same steps, read back
//! by QEMU (qemu-nbd exporting each bitmap's dirty map, qemu-img map reading it), and
//! every image passes `qemu-img check`; errors are qemu-img's, exit codes too.

mod common;

use common::*;
use std::process::Command;

/// What a tool run did: exit code, standard output, standard error (the program's
/// name made neutral).
fn run(program: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(program).args(args).output().unwrap();
    let neutral = |b: &[u8]| {
        String::from_utf8_lossy(b)
            .lines()
            .filter(|l| !l.contains(" ops; "))
            .map(|l| l.replace("qemu-img:", "TOOL:").replace("qemu-io:", "TOOL:"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    (
        out.status.code(),
        neutral(&out.stdout),
        neutral(&out.stderr),
    )
}

/// The ranges (start, length) QEMU reads as dirty in `bitmap` of `image`: qemu-nbd
/// exports its dirty map, and qemu-img map shows dirty ranges as holding no data.
fn dirty_ranges(dir: &Scratch, image: &str, bitmap: &str) -> Vec<(u64, u64)> {
    let socket = dir.str("nbd.sock");
    let _ = std::fs::remove_file(&socket);
    let server = Command::new("qemu-nbd")
        .args(["-r", "-k", &socket, "-B", bitmap, "-f", "qcow2", image])
        .spawn()
        .unwrap();
    let _server = Stopped(server);
    let started = std::time::Instant::now();
    while !std::path::Path::new(&socket).exists() {
        assert!(started.elapsed().as_secs() < 10, "qemu-nbd did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let opts = format!(
        "driver=nbd,server.type=unix,server.path={socket},x-dirty-bitmap=qemu:dirty-bitmap:{bitmap}"
    );
    let map = qemu_img(&["map", "--output=json", "--image-opts", &opts]);
    map.lines()
        .filter(|l| l.contains("\"data\": false"))
        .map(|l| {
            (
                json_number(l, "start").unwrap(),
                json_number(l, "length").unwrap(),
            )
        })
        .collect()
}

/// `qemu-img info`'s bitmaps of `image`: names, flags and granularities, in order.
fn listed(image: &str) -> String {
    let info = qemu_img(&["info", image]);
    info.lines()
        .skip_while(|l| !l.contains("bitmaps:"))
        .take_while(|l| !l.contains("refcount bits"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The steps a user takes, with `img` and `io` the tools that run them.
fn steps(img: &str, io: &str, image: &str, other: &str) -> Vec<(Option<i32>, String, String)> {
    let calls: Vec<(&str, Vec<&str>)> = vec![
        (img, vec!["bitmap", "--add", image, "b0"]),
        (
            img,
            vec!["bitmap", "--add", "-g", "512", "--disable", image, "b1"],
        ),
        (
            img,
            vec!["bitmap", "--add", "--granularity", "1M", image, "b2"],
        ),
        (
            io,
            vec!["-c", "write -P 1 1M 64k", "-c", "write 10M 1k", image],
        ),
        (
            io,
            vec!["-c", "write -z 20M 128k", "-c", "discard 30M 64k", image],
        ),
        (img, vec!["bitmap", "--enable", image, "b1"]),
        (
            io,
            vec!["-c", "write 40M 4k", "-c", "write -c 48M 64k", image],
        ),
        (img, vec!["bitmap", "--disable", image, "b0"]),
        (io, vec!["-c", "write 50M 512", image]),
        (img, vec!["bitmap", "--merge", "b0", image, "b2"]),
        (
            img,
            vec!["bitmap", "--add", "--merge", "b1", "--disable", image, "b3"],
        ),
        (img, vec!["bitmap", "--clear", image, "b1"]),
        (
            img,
            vec![
                "bitmap", "--merge", "src", "-b", other, "-F", "qcow2", image, "b1",
            ],
        ),
        (img, vec!["bitmap", "--remove", image, "b0"]),
        // Refusals, in qemu-img's words.
        (img, vec!["bitmap", "--add", image, "b2"]),
        (img, vec!["bitmap", "--remove", image, "nothing"]),
        (img, vec!["bitmap", "--clear", image, "nothing"]),
        (img, vec!["bitmap", "--add", "-g", "100", image, "bad"]),
        (img, vec!["bitmap", "--add", image, ""]),
        (img, vec!["bitmap", "--merge", "nothing", image, "b2"]),
        (img, vec!["bitmap", "-g", "64k", "--clear", image, "b2"]),
        (img, vec!["bitmap", "-F", "qcow2", "--clear", image, "b2"]),
        (img, vec!["bitmap", "-b", other, "--clear", image, "b2"]),
        (img, vec!["bitmap", image, "b2"]),
        (img, vec!["bitmap", "--clear", image]),
        (img, vec!["check", image]),
    ];
    calls
        .into_iter()
        .map(|(program, args)| run(program, &args))
        .collect()
}

#[test]
fn bitmap_commands_and_guest_writes_leave_qemus_bitmaps() {
    let dir = Scratch::new("bitmaps");
    let img = dir.str("qemu-img");
    let io = dir.str("qemu-io");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_cowimg"), &img).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_cowimg"), &io).unwrap();
    // A second image with a bitmap to merge from, QEMU's.
    let other = dir.str("other.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &other, "64M"]);
    qemu_img(&["bitmap", "--add", "-g", "4k", &other, "src"]);
    qemu_io(&["-c", "write 5M 12k", &other]);

    let (ours, theirs) = (dir.str("ours.qcow2"), dir.str("theirs.qcow2"));
    for image in [&ours, &theirs] {
        qemu_img(&["create", "-q", "-f", "qcow2", image, "64M"]);
    }
    let mine = steps(&img, &io, &ours, &other);
    let qemus = steps("qemu-img", "qemu-io", &theirs, &other);
    for (i, (a, b)) in mine.iter().zip(&qemus).enumerate() {
        let (a, b) = (
            (a.0, a.1.replace(&ours, "IMG"), a.2.replace(&ours, "IMG")),
            (
                b.0,
                b.1.replace(&theirs, "IMG"),
                b.2.replace(&theirs, "IMG"),
            ),
        );
        // Image end offsets and fragmentation depend on where clusters landed.
        let settled = |s: &str| {
            s.lines()
                .filter(|l| !l.starts_with("Image end offset") && !l.contains("fragmented"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(
            (a.0, settled(&a.1), a.2),
            (b.0, settled(&b.1), b.2),
            "step {i}"
        );
    }
    assert_eq!(listed(&ours), listed(&theirs));
    assert!(listed(&ours).contains("name: b3"), "{}", listed(&ours));
    for bitmap in ["b1", "b2", "b3"] {
        assert_eq!(
            dirty_ranges(&dir, &ours, bitmap),
            dirty_ranges(&dir, &theirs, bitmap),
            "{bitmap}"
        );
    }
    // Worked out by hand from the steps: b2 (1 MiB granularity) is marked by every
    // write (b0's bits merged in add none).
    let m = 1u64 << 20;
    assert_eq!(
        dirty_ranges(&dir, &ours, "b2"),
        [
            (m, m),
            (10 * m, m),
            (20 * m, m),
            (30 * m, m),
            (40 * m, m),
            (48 * m, m),
            (50 * m, m)
        ]
    );
    // b1: cleared, then the other image's bits merged in.
    assert_eq!(dirty_ranges(&dir, &ours, "b1"), [(5 * m, 12 << 10)]);
    assert_eq!(
        qemu_img(&["compare", &ours, &theirs]),
        "Images are identical.\n"
    );
}

/// A writer that dies after a guest write leaves the bitmaps it holds marked in use,
/// never believed: QEMU lists them as in-use, as after its own crash. The image may
/// leak clusters (check's exit code 3), never hold corruption (2).
#[test]
fn a_crash_after_a_write_leaves_bitmaps_in_use_as_qemus_does() {
    let dir = Scratch::new("bitmaps-crash");
    let io = dir.str("qemu-io");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_cowimg"), &io).unwrap();
    let listing = |tool: &str, name: &str| {
        let image = dir.str(name);
        qemu_img(&["create", "-q", "-f", "qcow2", &image, "16M"]);
        qemu_img(&["bitmap", "--add", &image, "b0"]);
        qemu_img(&["bitmap", "--add", "--disable", &image, "b1"]);
        let died = run(tool, &["-c", "write 0 64k", "-c", "sigraise 9", &image]);
        assert_eq!(died.0, None, "{tool} was not killed");
        let check = run("qemu-img", &["check", &image]);
        assert!(matches!(check.0, Some(0 | 3)), "{tool}: {check:?}");
        listed(&image)
    };
    let ours = listing(&io, "ours.qcow2");
    assert!(ours.contains("in-use"), "{ours}");
    assert_eq!(ours, listing("qemu-io", "theirs.qcow2"));
}

/// Resizing keeps the bitmaps (their tables sized for the new disk); reading an image
/// never changes a byte of it, bitmaps or not.
#[test]
fn resize_keeps_bitmaps_and_reading_changes_nothing() {
    let dir = Scratch::new("bitmaps-resize");
    let img = dir.str("qemu-img");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_cowimg"), &img).unwrap();
    for (tool, name) in [(img.as_str(), "ours.qcow2"), ("qemu-img", "theirs.qcow2")] {
        let image = dir.str(name);
        qemu_img(&["create", "-q", "-f", "qcow2", &image, "16M"]);
        qemu_img(&["bitmap", "--add", "-g", "512", &image, "b0"]);
        qemu_io(&["-c", "write 15M 1M", &image]);
        assert_eq!(run(tool, &["resize", &image, "64M"]).0, Some(0));
        assert_eq!(run(tool, &["resize", "--shrink", &image, "15M"]).0, Some(0));
        assert_eq!(run(tool, &["resize", &image, "32M"]).0, Some(0));
        assert_eq!(run("qemu-img", &["check", &image]).0, Some(0));
    }
    let (ours, theirs) = (dir.str("ours.qcow2"), dir.str("theirs.qcow2"));
    assert_eq!(listed(&ours), listed(&theirs));
    assert_eq!(
        dirty_ranges(&dir, &ours, "b0"),
        dirty_ranges(&dir, &theirs, "b0")
    );

    let before = std::fs::read(&ours).unwrap();
    cowimg(&["info", &ours]);
    cowimg(&["map", &ours]);
    cowimg(&["io", "-r", "-c", "read 0 1M", &ours]);
    assert!(std::fs::read(&ours).unwrap() == before);
}

/// `convert --bitmaps` copies every bitmap (granularity, state, bits) as qemu-img's does;
/// an inconsistent one stops it unless `--skip-broken-bitmaps` leaves it out with a
/// warning; sources and targets without bitmaps are refused in qemu-img's words.
#[test]
fn convert_bitmaps_copies_them_as_qemu_img_does() {
    let dir = Scratch::new("bitmaps-convert");
    let img = dir.str("qemu-img");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_cowimg"), &img).unwrap();
    let source = dir.str("source.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &source, "32M"]);
    qemu_img(&["bitmap", "--add", "-g", "8k", &source, "on"]);
    qemu_img(&["bitmap", "--add", "--disable", &source, "off"]);
    qemu_io(&["-c", "write 3M 100k", "-c", "write 20M 1k", &source]);
    qemu_img(&["bitmap", "--enable", &source, "off"]);
    qemu_io(&["-c", "write 30M 64k", &source]);
    let broken = dir.str("broken.qcow2");
    std::fs::copy(&source, &broken).unwrap();
    let killed = run(
        "qemu-io",
        &["-c", "write 0 4k", "-c", "sigraise 9", &broken],
    );
    assert_eq!(killed.0, None);
    let raw = dir.str("plain.raw");
    qemu_img(&["create", "-q", "-f", "raw", &raw, "32M"]);

    let cases: Vec<Vec<&str>> = vec![
        vec!["convert", "--bitmaps", "-O", "qcow2", &source, "OUT"],
        vec!["convert", "--bitmaps", "-O", "qcow2", &broken, "OUT"],
        vec![
            "convert",
            "--bitmaps",
            "--skip-broken-bitmaps",
            "-O",
            "qcow2",
            &broken,
            "OUT",
        ],
        vec![
            "convert",
            "--skip-broken-bitmaps",
            "-O",
            "qcow2",
            &source,
            "OUT",
        ],
        vec!["convert", "--bitmaps", "-O", "raw", &source, "OUT"],
        vec![
            "convert",
            "--bitmaps",
            "-f",
            "raw",
            "-O",
            "qcow2",
            &raw,
            "OUT",
        ],
    ];
    for (i, case) in cases.iter().enumerate() {
        let mut outcomes = Vec::new();
        for (tool, name) in [(img.as_str(), "ours"), ("qemu-img", "theirs")] {
            let out = dir.str(&format!("{name}{i}.qcow2"));
            let args: Vec<&str> = case
                .iter()
                .map(|a| if *a == "OUT" { out.as_str() } else { a })
                .collect();
            let ran = run(tool, &args);
            let listing = match ran.0 {
                Some(0) => {
                    assert_eq!(run("qemu-img", &["check", &out]).0, Some(0));
                    let ranges: Vec<_> = ["on", "off"]
                        .iter()
                        .filter(|b| listed(&out).contains(&format!("name: {b}")))
                        .map(|b| dirty_ranges(&dir, &out, b))
                        .collect();
                    (listed(&out), ranges)
                }
                _ => Default::default(),
            };
            outcomes.push((ran.0, ran.2.replace(&out, "OUT"), listing));
        }
        assert_eq!(outcomes[0], outcomes[1], "{case:?}");
    }
}

/// The first bitmap's table offset, read from the image by hand: the bitmaps extension
/// in cluster 0, then the directory's first entry.
fn first_table(image: &str) -> u64 {
    let bytes = std::fs::read(image).unwrap();
    let mut at = be32(&bytes, 100) as usize; // header_length: extensions follow
    loop {
        let magic = be32(&bytes, at as u64);
        let len = be32(&bytes, at as u64 + 4) as usize;
        if magic == 0x2385_2875 {
            let directory = be64(&bytes, at as u64 + 8 + 16);
            return be64(&bytes, directory);
        }
        assert_ne!(magic, 0, "no bitmaps extension");
        at += 8 + len.next_multiple_of(8);
    }
}

/// A hostile bitmap table (reserved bits set, a data cluster past the end of the file)
/// stops a write before anything changes, with an error naming the bitmap and the
/// entry; reading the image is unaffected.
#[test]
fn a_damaged_bitmap_table_stops_writes_and_names_the_entry() {
    let dir = Scratch::new("bitmaps-damaged");
    for (what, entry) in [
        ("reserved bits", 0x0000_0000_0000_0002u64),
        ("past the end", 0x0000_7fff_ffff_0000u64),
    ] {
        let image = dir.str("damaged.qcow2");
        qemu_img(&["create", "-q", "-f", "qcow2", &image, "16M"]);
        qemu_img(&["bitmap", "--add", &image, "b0"]);
        qemu_io(&["-c", "write 0 64k", &image]);
        let table = first_table(&image);
        let mut bytes = std::fs::read(&image).unwrap();
        bytes[table as usize..table as usize + 8].copy_from_slice(&entry.to_be_bytes());
        std::fs::write(&image, &bytes).unwrap();

        let out = Command::new(env!("CARGO_BIN_EXE_cowimg"))
            .args(["io", "-c", "write 1M 4k", &image])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: {err}");
        assert!(
            err.contains("bitmap 'b0'") && err.contains("table entry 0"),
            "{what}: {err}"
        );
        assert!(
            std::fs::read(&image).unwrap() == bytes,
            "{what}: the image changed"
        );
        cowimg(&["io", "-r", "-c", "read -P 0xcd 0 64k", &image]);
    }
}
