//! `cowimg partitions` against sfdisk: tables made by sfdisk on a raw disk, the disk
//! converted to qcow2 by qemu-img, and every partition's start, size and type read
//! through the image equal to what `sfdisk --json` says of the raw disk.

mod common;

use common::{qemu_img, Scratch};
use std::process::{Command, Stdio};

/// (start, size) in sectors and type of each partition sfdisk lists, in its order.
fn sfdisk_json(raw: &str) -> Vec<(u64, u64, String)> {
    let text = common::run_ok(None, "sfdisk", &["--json", raw]);
    let value = |obj: &str, key: &str| common::json_value(obj, key).unwrap();
    text.split("\"node\"")
        .skip(1)
        .map(|obj| {
            (
                value(obj, "start").parse().unwrap(),
                value(obj, "size").parse().unwrap(),
                value(obj, "type"),
            )
        })
        .collect()
}

fn make(dir: &Scratch, name: &str, script: &str) -> (String, String) {
    let raw = dir.str(&format!("{name}.raw"));
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let mut child = Command::new("sfdisk")
        .args(["-q", &raw])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    let image = dir.str(&format!("{name}.qcow2"));
    qemu_img(&["convert", "-O", "qcow2", &raw, &image]);
    (raw, image)
}

fn ours(image: &str) -> Vec<(u64, u64, String)> {
    let text = common::cowimg(&["partitions", "--output=json", image]);
    let num = |obj: &str, key: &str| common::json_number(obj, key).unwrap();
    let word = |obj: &str, key: &str| common::json_value(obj, key).unwrap();
    text.split("\"number\"")
        .skip(1)
        .map(|obj| {
            (
                num(obj, "start") / 512,
                num(obj, "length") / 512,
                word(obj, "type"),
            )
        })
        .collect()
}

fn have_sfdisk() -> bool {
    let ok = Command::new("sfdisk").arg("--version").output().is_ok();
    if !ok {
        eprintln!("skipped: sfdisk (util-linux fdisk) is not installed");
    }
    ok
}

#[test]
fn mbr_with_logical_partitions_matches_sfdisk() {
    if !have_sfdisk() {
        return;
    }
    let dir = Scratch::new("partitions-mbr");
    let (raw, image) = make(
        &dir,
        "mbr",
        "label: dos\n,8M,83,*\n,8M,82\n,,5\n,4M,83\n,4M,7\n",
    );
    // sfdisk lists the extended container too; cowimg lists what holds data.
    let want: Vec<_> = sfdisk_json(&raw)
        .into_iter()
        .filter(|(_, _, t)| t != "5")
        .collect();
    assert_eq!(ours(&image), want);
}

#[test]
fn gpt_matches_sfdisk() {
    if !have_sfdisk() {
        return;
    }
    let dir = Scratch::new("partitions-gpt");
    let script = "label: gpt\nsize=8M, type=L, name=root\nsize=16M, type=S, name=swap\n,\n";
    let (raw, image) = make(&dir, "gpt", script);
    assert_eq!(ours(&image), sfdisk_json(&raw));
}

#[test]
fn a_disk_without_a_table_is_refused() {
    let dir = Scratch::new("partitions-none");
    let image = dir.str("blank.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &image, "8M"]);
    let out = Command::new(env!("CARGO_BIN_EXE_cowimg"))
        .args(["partitions", &image])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no partition table"));
}

/// The bytes of `raw` from `start` for `len`, as dd would cut them.
fn cut(raw: &str, start: u64, len: u64) -> Vec<u8> {
    let bytes = std::fs::read(raw).unwrap();
    bytes[start as usize..(start + len) as usize].to_vec()
}

#[test]
fn one_partition_through_convert_hash_map_and_nbd_is_that_range_of_the_disk() {
    if !have_sfdisk() {
        return;
    }
    let dir = Scratch::new("partitions-select");
    let script = "label: gpt\nsize=8M, type=L\nsize=16M, type=L\n";
    let (raw, image) = make(&dir, "gpt", script);
    // Distinct content in each partition, written through QEMU.
    common::qemu_io(&[
        "-c",
        "write -P 0x61 1M 3M",
        "-c",
        "write -P 0x62 9M 64k",
        &image,
    ]);
    qemu_img(&["convert", "-O", "raw", &image, &raw]);
    let (start, len) = (9 << 20, 16 << 20);
    let want = cut(&raw, start, len);
    let run = common::cowimg;
    let out = dir.str("p2.raw");
    run(&["convert", "--partition", "2", "-O", "raw", &image, &out]);
    assert!(
        std::fs::read(&out).unwrap() == want,
        "convert --partition 2"
    );
    let piece = dir.str("piece");
    std::fs::write(&piece, &want).unwrap();
    let digest = common::run_ok(None, "sha256sum", &[&piece]);
    let ours = run(&["hash", "--partition", "2", &image]);
    assert!(
        ours.contains(digest.split_whitespace().next().unwrap()),
        "{ours}"
    );
    // The map starts at the partition's first byte, and its data is where QEMU wrote.
    let map = run(&["map", "--output=json", "--partition", "2", &image]);
    assert!(
        map.starts_with("[{ \"start\": 0, \"length\": 65536,"),
        "{map}"
    );
    // Over NBD, the export is the partition.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let port = port.to_string();
    let server = Command::new(env!("CARGO_BIN_EXE_cowimg"))
        .args([
            "nbd",
            "-r",
            "-t",
            "--partition",
            "2",
            "-f",
            "qcow2",
            "-b",
            "127.0.0.1",
            "-p",
            &port,
            &image,
        ])
        .spawn()
        .unwrap();
    let server = common::Stopped(server);
    let uri = format!("nbd://127.0.0.1:{port}/");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap())).is_err() {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let served = dir.str("served.raw");
    qemu_img(&["convert", "-f", "raw", "-O", "raw", &uri, &served]);
    drop(server);
    assert!(std::fs::read(&served).unwrap() == want, "nbd --partition 2");
    // Whole-image operations are refused on a selected partition, and a missing
    // partition is named.
    let mut image_handle = cowimg::Image::open(&image, &cowimg::OpenOptions::new()).unwrap();
    assert!(image_handle.select_partition(7).is_err());
    image_handle.select_partition(1).unwrap();
    assert_eq!(image_handle.size(), 8 << 20);
}
