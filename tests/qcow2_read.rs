//! qcow2 images QEMU made read back exactly as `qemu-img convert -O raw` reads them, and
//! map as `qemu-img map` maps them.

mod common;

use common::*;
use cowimg::{Backing, Image, OpenOptions};
use std::path::Path;

/// The guest bytes as QEMU reads them.
fn qemu_raw(path: &Path, extra: &[&str]) -> Vec<u8> {
    let dir = Scratch::new("raw");
    let out = dir.str("out.raw");
    let mut args = vec!["convert"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["-O", "raw", path.to_str().unwrap(), &out]);
    qemu_img(&args);
    std::fs::read(out).unwrap()
}

fn our_raw(image: &Image) -> Vec<u8> {
    let mut buf = vec![0u8; image.size() as usize];
    image.read_at(&mut buf, 0).unwrap();
    buf
}

fn our_map(image: &Image) -> Vec<MapEntry> {
    image
        .map()
        .unwrap()
        .into_iter()
        .map(|s| MapEntry {
            start: s.start,
            length: s.len,
            depth: s.depth as u64,
            present: s.present,
            zero: s.zero,
            data: s.data,
            compressed: s.compressed,
            offset: s.offset,
        })
        .collect()
}

fn assert_reads_like_qemu(path: &Path, options: &OpenOptions, qemu_args: &[&str]) {
    let image = Image::open(path, options).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let ours = our_raw(&image);
    let theirs = qemu_raw(path, qemu_args);
    assert_eq!(ours.len(), theirs.len(), "{}: size", path.display());
    if let Some(i) = ours.iter().zip(&theirs).position(|(a, b)| a != b) {
        panic!(
            "{}: first difference at byte {i}: ours {:#x}, qemu {:#x}",
            path.display(),
            ours[i],
            theirs[i]
        );
    }
}

#[test]
fn golden_images_read_and_map_like_qemu() {
    for name in [
        "sample.qcow2",
        "v2-backing.qcow2",
        "snapshots.qcow2",
        "bitmaps.qcow2",
        "zstd-extl2.qcow2",
        "datafile.qcow2",
        "refcount1.qcow2",
    ] {
        let path = data_path(name);
        assert_reads_like_qemu(&path, &OpenOptions::default(), &[]);
        let image = Image::open(&path, &OpenOptions::default()).unwrap();
        assert_eq!(our_map(&image), qemu_map(&path, "qcow2"), "{name}");
    }
}

#[test]
fn backing_can_be_ignored_or_overridden() {
    let path = data_path("v2-backing.qcow2");
    let alone = Image::open(&path, &OpenOptions::new().backing(Backing::Ignore)).unwrap();
    assert_eq!(alone.chain().len(), 1);
    assert!(our_raw(&alone).iter().all(|b| *b == 0));
    let dir = Scratch::new("override");
    std::fs::write(dir.path("other.raw"), vec![0x77u8; 4096]).unwrap();
    let options = OpenOptions::new().backing(Backing::Override {
        path: dir.path("other.raw"),
        format: Some(cowimg::Format::Raw),
    });
    let image = Image::open(&path, &options).unwrap();
    let data = our_raw(&image);
    // 4 KiB from the shorter backing file, zeros after it.
    assert!(data[..4096].iter().all(|b| *b == 0x77) && data[4096..].iter().all(|b| *b == 0));
}

// ---- Images QEMU makes at test time, one feature or anchor failure each.

/// `qemu-img create -q ARGS… PATH SIZE`, where the last of `args` is the size.
fn create(dir: &Scratch, name: &str, args: &[&str]) -> String {
    let path = dir.str(name);
    let (size, opts) = args.split_last().expect("a size");
    let mut all = vec!["create", "-q"];
    all.extend_from_slice(opts);
    all.push(&path);
    all.push(size);
    qemu_img(&all);
    path
}

fn io(path: &str, fmt: &str, commands: &[&str]) {
    let mut args = vec!["-f", fmt];
    for c in commands {
        args.push("-c");
        args.push(c);
    }
    args.push(path);
    qemu_io(&args);
}

#[test]
fn v3_zero_flag_hides_stale_data() {
    // Data written, then zeroed without unmapping: the cluster keeps its stale bytes
    // and the L2 entry its offset, with the zero flag set. Reads must give zeros.
    let dir = Scratch::new("zero");
    let img = create(
        &dir,
        "z.qcow2",
        &["-f", "qcow2", "-o", "cluster_size=4096", "1M"],
    );
    io(&img, "qcow2", &["write -P 0x55 0 64K", "write -z 0 64K"]);
    let map = qemu_map(Path::new(&img), "qcow2");
    let zeroed = &map[0];
    assert!(
        zeroed.zero && zeroed.present && zeroed.offset.is_some(),
        "preallocated zero: {map:?}"
    );
    let file = std::fs::read(&img).unwrap();
    let host = zeroed.offset.unwrap() as usize;
    assert_eq!(
        file[host..host + 4096],
        [0x55; 4096],
        "the stale data is still there"
    );
    assert_reads_like_qemu(Path::new(&img), &OpenOptions::default(), &[]);
    let image = Image::open(&img, &OpenOptions::default()).unwrap();
    assert!(our_raw(&image)[..65536].iter().all(|b| *b == 0));
    assert_eq!(our_map(&image), map);
}

#[test]
fn legacy_aes_reads_plaintext() {
    let dir = Scratch::new("aes");
    let img = dir.str("aes.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "--object",
        "secret,id=s0,data=hunter2",
        "-o",
        "encrypt.format=aes,encrypt.key-secret=s0,cluster_size=4096",
        &img,
        "256K",
    ]);
    let opts = format!("driver=qcow2,file.filename={img},encrypt.key-secret=s0");
    qemu_io(&[
        "--object",
        "secret,id=s0,data=hunter2",
        "--image-opts",
        "-c",
        "write -P 0x61 4K 12K",
        "-c",
        "write -P 0x62 100000 3000",
        &opts,
    ]);
    let theirs = {
        let out = dir.str("plain.raw");
        qemu_img(&[
            "convert",
            "--object",
            "secret,id=s0,data=hunter2",
            "--image-opts",
            &opts,
            "-O",
            "raw",
            &out,
        ]);
        std::fs::read(out).unwrap()
    };
    assert_eq!(theirs[4096..16384], [0x61; 12288]);
    let file = std::fs::read(&img).unwrap();
    assert!(
        !file.windows(64).any(|w| w == [0x61; 64]),
        "the file holds ciphertext only"
    );

    let keyed = OpenOptions::new().passphrase(cowimg::Secret::from("hunter2"));
    let image = Image::open(&img, &keyed).unwrap();
    assert_eq!(our_raw(&image), theirs);
    // Unaligned reads inside encrypted sectors.
    let mut part = vec![0u8; 777];
    image.read_at(&mut part, 99_999).unwrap();
    assert_eq!(part, theirs[99_999..99_999 + 777]);

    let e = Image::open(&img, &OpenOptions::default()).unwrap_err();
    assert_eq!(
        e.message(),
        "Parameter 'encrypt.key-secret' is required for cipher"
    );
    let meta = OpenOptions::new().metadata_only(true);
    assert!(Image::open(&img, &meta).is_ok(), "info needs no key");
}

#[test]
fn long_reads_through_a_three_level_chain() {
    // raw base ← qcow2 mid ← qcow2 top, each layer owning interleaved ranges, and the
    // mid layer shorter than the top. One read of the whole disk must match QEMU's.
    let dir = Scratch::new("chain");
    let base = dir.str("base.raw");
    std::fs::write(&base, vec![0xb0u8; 192 << 10]).unwrap();
    let mid = create(
        &dir,
        "mid.qcow2",
        &[
            "-f",
            "qcow2",
            "-o",
            "cluster_size=4096",
            "-b",
            "base.raw",
            "-F",
            "raw",
            "256K",
        ],
    );
    io(
        &mid,
        "qcow2",
        &[
            "write -P 0x4d 8K 16K",
            "write -z 40K 8K",
            "write -P 0x4e 128K 64K",
        ],
    );
    let top = create(
        &dir,
        "top.qcow2",
        &[
            "-f",
            "qcow2",
            "-o",
            "cluster_size=65536",
            "-b",
            "mid.qcow2",
            "-F",
            "qcow2",
            "1M",
        ],
    );
    io(
        &top,
        "qcow2",
        &[
            "write -P 0x70 12K 2K",
            "write -P 0x71 300K 100K",
            "write -c -P 0x72 640K 64K",
        ],
    );
    assert_reads_like_qemu(Path::new(&top), &OpenOptions::default(), &[]);
    let image = Image::open(&top, &OpenOptions::default()).unwrap();
    assert_eq!(image.chain().len(), 3);
    assert_eq!(our_map(&image), qemu_map(Path::new(&top), "qcow2"));
    // Through Read + Seek as well.
    use std::io::{Read, Seek, SeekFrom};
    let mut reader = image.reader();
    reader.seek(SeekFrom::Start(10 << 10)).unwrap();
    let mut buf = vec![0u8; 8192];
    reader.read_exact(&mut buf).unwrap();
    assert_eq!(buf, our_raw(&image)[10 << 10..18 << 10]);
}

#[test]
fn extended_l2_subclusters_over_a_backing_file() {
    let dir = Scratch::new("extl2");
    let base = dir.str("base.raw");
    std::fs::write(
        &base,
        (0..(128u32 << 10))
            .map(|i| (i / 512) as u8)
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    let top = create(
        &dir,
        "top.qcow2",
        &[
            "-f",
            "qcow2",
            "-o",
            "cluster_size=32768,extended_l2=on",
            "-b",
            "base.raw",
            "-F",
            "raw",
            "128K",
        ],
    );
    io(
        &top,
        "qcow2",
        &[
            "write -P 0x11 1K 1K",
            "write -z 3K 2K",
            "write -P 0x12 40K 3K",
            "write -z -u 64K 32K",
        ],
    );
    assert_reads_like_qemu(Path::new(&top), &OpenOptions::default(), &[]);
    let image = Image::open(&top, &OpenOptions::default()).unwrap();
    assert_eq!(our_map(&image), qemu_map(Path::new(&top), "qcow2"));
}

#[test]
fn snapshots_read_as_they_were() {
    let path = data_path("snapshots.qcow2");
    for (spec, snapshot) in [
        (
            "snapshot.name=first",
            cowimg::SnapshotRef::Name("first".into()),
        ),
        ("snapshot.id=2", cowimg::SnapshotRef::Id("2".into())),
    ] {
        let opts = OpenOptions::new().snapshot(snapshot);
        assert_reads_like_qemu(&path, &opts, &["-l", spec]);
    }
    let opts = OpenOptions::new().snapshot(cowimg::SnapshotRef::Name("nope".into()));
    assert_eq!(
        Image::open(&path, &opts).unwrap_err().message(),
        "Can't find snapshot with name 'nope'"
    );
    // The current state differs from the first snapshot: the read is not of the wrong L1.
    let first = Image::open(
        &path,
        &OpenOptions::new().snapshot(cowimg::SnapshotRef::Id("1".into())),
    )
    .unwrap();
    let now = Image::open(&path, &OpenOptions::default()).unwrap();
    assert_ne!(our_raw(&first), our_raw(&now));
    let list: Vec<_> = now
        .snapshots()
        .iter()
        .map(|s| (s.id.as_str(), s.name.as_str(), s.disk_size, s.icount))
        .collect();
    assert_eq!(
        list,
        [
            ("1", "first", 1 << 20, Some(0)),
            ("2", "second", 1 << 20, Some(0))
        ]
    );
}

#[test]
fn chains_have_a_length_limit_and_no_loops() {
    let dir = Scratch::new("loops");
    let a = create(&dir, "a.qcow2", &["-f", "qcow2", "64K"]);
    let b = create(
        &dir,
        "b.qcow2",
        &["-f", "qcow2", "-b", "a.qcow2", "-F", "qcow2", "64K"],
    );
    let c = create(
        &dir,
        "c.qcow2",
        &["-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", "64K"],
    );
    // a's backing file becomes b: a loop (qemu-img itself hangs on it).
    qemu_img(&[
        "rebase", "-u", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", &a,
    ]);
    let e = Image::open(&b, &OpenOptions::default()).unwrap_err();
    assert!(e.message().contains("creates an infinite loop"), "{e}");
    let short = OpenOptions::new()
        .max_chain_length(2)
        .backing(cowimg::Backing::Follow);
    let e = Image::open(&c, &short).unwrap_err();
    assert!(e.message().contains("longer than 2"), "{e}");
}

/// The message QEMU gives when it refuses to read an image.
fn qemu_refusal(path: &str) -> String {
    let sink = format!("{path}.out");
    let out = std::process::Command::new("qemu-img")
        .args(["convert", "-U", "-O", "raw", path, &sink])
        .output()
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn unknown_features_and_damage_are_refused_in_qemus_words() {
    let dir = Scratch::new("refuse");
    // An unknown incompatible bit that the image's own feature table names.
    let mut bytes = data("zstd-extl2.qcow2");
    let incompat = be64(&bytes, 72) | 1 << 5;
    bytes[72..80].copy_from_slice(&incompat.to_be_bytes());
    let table = bytes
        .windows(19)
        .position(|w| w == b"extended L2 entries")
        .unwrap()
        - 2;
    bytes[table + 1] = 5;
    bytes[72..80].copy_from_slice(&(incompat & !(1 << 4) | 1 << 5 | 1 << 63).to_be_bytes());
    let path = dir.str("unknown.qcow2");
    std::fs::write(&path, &bytes).unwrap();
    let e = Image::open(&path, &OpenOptions::default()).unwrap_err();
    assert_eq!(e.kind(), cowimg::ErrorKind::Unsupported);
    assert_eq!(
        e.message(),
        "Unsupported qcow2 feature(s): extended L2 entries, Unknown incompatible feature: 8000000000000000"
    );
    assert!(
        qemu_refusal(&path).contains(e.message()),
        "{}",
        qemu_refusal(&path)
    );

    // A version 2 image whose L2 entry has the zero flag.
    let img = create(
        &dir,
        "v2.qcow2",
        &["-f", "qcow2", "-o", "compat=0.10,cluster_size=4096", "64K"],
    );
    io(&img, "qcow2", &["write -P 0x33 0 4K"]);
    let mut bytes = std::fs::read(&img).unwrap();
    let l2 = L1(&bytes);
    let entry = be64(&bytes, l2) | 1;
    bytes[l2 as usize..l2 as usize + 8].copy_from_slice(&entry.to_be_bytes());
    std::fs::write(&img, &bytes).unwrap();
    let image = Image::open(&img, &OpenOptions::default()).unwrap();
    let e = image.read_at(&mut [0u8; 512], 0).unwrap_err();
    assert_eq!(e.kind(), cowimg::ErrorKind::Corrupt);
    assert!(
        e.message()
            .starts_with("Zero cluster entry found in pre-v3 image"),
        "{e}"
    );
    assert!(
        qemu_refusal(&img).contains("Input/output error")
            || qemu_refusal(&img).contains("Zero cluster")
    );

    // Dirty and corrupt bits: a read-only open still reads.
    let img = create(
        &dir,
        "flags.qcow2",
        &["-f", "qcow2", "-o", "cluster_size=4096", "64K"],
    );
    io(&img, "qcow2", &["write -P 0x44 0 4K"]);
    let mut bytes = std::fs::read(&img).unwrap();
    bytes[79] |= 0b11;
    std::fs::write(&img, &bytes).unwrap();
    assert_reads_like_qemu(Path::new(&img), &OpenOptions::default(), &["-U"]);
}

/// The L2 table offset of L1 entry 0.
#[allow(non_snake_case)]
fn L1(bytes: &[u8]) -> u64 {
    be64(bytes, be64(bytes, 40)) & 0x00ff_ffff_ffff_fe00
}

#[test]
fn external_data_file_that_is_not_raw() {
    let dir = Scratch::new("datafile");
    let data_file = dir.str("img.data");
    let img = create(
        &dir,
        "img.qcow2",
        &[
            "-f",
            "qcow2",
            "-o",
            &format!("cluster_size=4096,data_file={data_file}"),
            "128K",
        ],
    );
    io(
        &img,
        "qcow2",
        &[
            "write -P 0x31 4K 8K",
            "write -z 32K 4K",
            "write -P 0x32 100K 1K",
        ],
    );
    assert_reads_like_qemu(Path::new(&img), &OpenOptions::default(), &[]);
    let image = Image::open(&img, &OpenOptions::default()).unwrap();
    assert_eq!(our_map(&image), qemu_map(Path::new(&img), "qcow2"));
    // Without its data file the image can be described but not read.
    std::fs::rename(&data_file, dir.path("moved.data")).unwrap();
    let e = Image::open(&img, &OpenOptions::default()).unwrap_err();
    assert!(e.message().starts_with("Could not open data file"), "{e}");
    let moved = OpenOptions::new().data_file(dir.path("moved.data"));
    assert_eq!(
        our_raw(&Image::open(&img, &moved).unwrap())[4096..12288],
        [0x31; 8192]
    );
    assert!(Image::open(&img, &OpenOptions::new().metadata_only(true)).is_ok());
}

#[test]
fn luks_opens_with_its_passphrase_and_is_described_without_it() {
    let dir = Scratch::new("luks");
    let img = dir.str("luks.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "--object",
        "secret,id=s0,data=x",
        "-o",
        "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10",
        &img,
        "1M",
    ]);
    let image = Image::open(
        &img,
        &OpenOptions::new().passphrase(cowimg::Secret::from("x")),
    )
    .unwrap();
    let mut buf = vec![1u8; 4096];
    image.read_at(&mut buf, 0).unwrap();
    assert!(
        buf.iter().all(|b| *b == 0),
        "an unwritten LUKS image reads as zeros"
    );
    let e = Image::open(&img, &OpenOptions::new()).unwrap_err();
    assert!(e.message().contains("key-secret"), "{e}");
    assert!(Image::open(&img, &OpenOptions::new().metadata_only(true)).is_ok());
}

#[test]
fn a_read_only_open_changes_nothing() {
    let dir = Scratch::new("ro");
    let img = create(
        &dir,
        "ro.qcow2",
        &["-f", "qcow2", "-o", "cluster_size=4096", "1M"],
    );
    io(&img, "qcow2", &["write -P 0x21 0 128K"]);
    // Dirty bit and an unknown autoclear bit: a writer would clear or repair them.
    let mut bytes = std::fs::read(&img).unwrap();
    bytes[79] |= 1;
    bytes[88] |= 0x80;
    std::fs::write(&img, &bytes).unwrap();
    let before = std::fs::metadata(&img).unwrap().modified().unwrap();
    let image = Image::open(&img, &OpenOptions::default()).unwrap();
    our_raw(&image);
    image.map().unwrap();
    drop(image);
    assert_eq!(std::fs::read(&img).unwrap(), bytes);
    assert_eq!(std::fs::metadata(&img).unwrap().modified().unwrap(), before);
}

#[test]
fn backing_names_naming_protocols_are_refused_not_opened() {
    let dir = Scratch::new("proto");
    for (name, refused) in [
        ("nbd:localhost:10809", true),
        ("json:{\"driver\":\"null-co\"}", true),
        ("file:base.raw", false),
    ] {
        std::fs::write(dir.path("base.raw"), vec![3u8; 65536]).unwrap();
        let img = create(
            &dir,
            "top.qcow2",
            &["-f", "qcow2", "-u", "-b", name, "-F", "raw", "64K"],
        );
        let result = Image::open(&img, &OpenOptions::default());
        match refused {
            true => {
                let e = result.unwrap_err();
                assert_eq!(e.kind(), cowimg::ErrorKind::Unsupported, "{name}: {e}");
                assert!(e.message().contains("protocol"), "{name}: {e}");
            }
            false => assert_eq!(our_raw(&result.unwrap())[0], 3, "{name}"),
        }
    }
}
