//! `cowimg hash` against coreutils' digests of what `qemu-img convert -O raw` reads:
//! every golden image, each of its snapshots, every algorithm, and per window.

mod common;

use common::{qemu_img, Scratch};
use std::process::Command;

fn sum(tool: &str, path: &str) -> String {
    let out = common::run_ok(None, tool, &[path]);
    out.split_whitespace().next().unwrap().to_string()
}

fn ours(args: &[&str]) -> String {
    common::cowimg(&[&["hash"], args].concat())
}

/// (algorithm, digest, label) of each line.
fn lines(text: &str) -> Vec<(String, String, String)> {
    text.lines()
        .map(|l| {
            let mut parts = l.splitn(3, char::is_whitespace).filter(|p| !p.is_empty());
            let algo = parts.next().unwrap().to_string();
            let rest = l[algo.len()..].trim_start();
            let (digest, label) = rest.split_once("  ").unwrap();
            (algo, digest.to_string(), label.to_string())
        })
        .collect()
}

#[test]
fn digests_equal_coreutils_over_qemu_img_convert_for_every_golden_image_and_snapshot() {
    let dir = Scratch::new("hash");
    for name in [
        "sample.qcow2",
        "snapshots.qcow2",
        "zstd-extl2.qcow2",
        "v2-backing.qcow2",
        "qcow1.qcow",
        "qcow1-backing.qcow",
        "datafile.qcow2",
        "refcount1.qcow2",
        "bitmaps.qcow2",
    ] {
        let image = common::data_path(name);
        let image = image.to_str().unwrap();
        let text = ours(&["--snapshot", "all", "--algorithm", "sha256,sha1,md5", image]);
        let got = lines(&text);
        let snapshot_names: Vec<String> = got
            .iter()
            .filter_map(|(_, _, label)| label.split_once('@').map(|(_, n)| n.to_string()))
            .collect();
        let mut states = vec![(image.to_string(), None)];
        for n in snapshot_names {
            states.push((format!("{image}@{n}"), Some(n)));
        }
        states.dedup();
        for (label, snapshot) in states {
            let raw = dir.str("state.raw");
            match &snapshot {
                None => qemu_img(&["convert", "-O", "raw", image, &raw]),
                Some(n) => qemu_img(&[
                    "convert",
                    "-l",
                    &format!("snapshot.name={n}"),
                    "-O",
                    "raw",
                    image,
                    &raw,
                ]),
            };
            for (algo, tool) in [
                ("sha256", "sha256sum"),
                ("sha1", "sha1sum"),
                ("md5", "md5sum"),
            ] {
                let want = sum(tool, &raw);
                assert!(
                    got.contains(&(algo.to_string(), want.clone(), label.clone())),
                    "{name}: {algo} of {label} should be {want}:\n{text}"
                );
            }
        }
    }
}

#[test]
fn window_digests_equal_the_digests_of_each_piece() {
    for name in ["sample.qcow2", "refcount1.qcow2"] {
        windows_of(name);
    }
}

fn windows_of(name: &str) {
    let dir = Scratch::new("hash-window");
    let image = common::data_path(name);
    let raw = dir.str("image.raw");
    qemu_img(&["convert", "-O", "raw", image.to_str().unwrap(), &raw]);
    let bytes = std::fs::read(&raw).unwrap();
    let window = 393_216; // 384 KiB: the last window is short
    let text = ours(&["--window", "384K", image.to_str().unwrap()]);
    let got = lines(&text);
    let pieces: Vec<&[u8]> = bytes.chunks(window).collect();
    assert_eq!(got.len(), 1 + pieces.len(), "{text}");
    for (i, piece) in pieces.iter().enumerate() {
        let file = dir.str("piece");
        std::fs::write(&file, piece).unwrap();
        let start = i * window;
        let label = format!("{} [{start}, {})", image.display(), start + piece.len());
        assert_eq!(
            got[1 + i],
            ("sha256".into(), sum("sha256sum", &file), label)
        );
    }
    let json = ours(&["--window", "384K", "--output=json", image.to_str().unwrap()]);
    assert!(
        json.contains("\"windows\"") && json.contains(&got[0].1),
        "{json}"
    );
}

#[test]
fn unknown_algorithms_and_snapshots_are_refused() {
    let image = common::data_path("snapshots.qcow2");
    for args in [
        vec!["--algorithm", "sha3", image.to_str().unwrap()],
        vec!["--snapshot", "nope", image.to_str().unwrap()],
        vec!["--window", "0", image.to_str().unwrap()],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_cowimg"))
            .arg("hash")
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} was accepted");
    }
}
