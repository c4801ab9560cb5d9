//! The command line says what qemu-img says: `info` (human and JSON, with and without
//! the backing chain) and `map` (human and JSON), byte for byte, on every golden image.

mod common;

use common::*;
use std::process::Command;

/// Runs cowimg in tests/data, as `qemu_img` runs qemu-img, so relative names agree.
fn cowimg(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cowimg"))
        .current_dir(data_path(""))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// What `program args…` did with `input` on its standard input: its exit code and
/// its output and error lines, qemu-io's timing lines ("… ops; …") left out and the
/// program's name in messages made cowimg's, so that two tools' sessions compare.
type Session = (Option<i32>, Vec<String>, Vec<String>);

/// cowimg installed in `dir` as `name` (qemu-img, qemu-io): the path to run it by.
fn installed_as(dir: &Scratch, name: &str) -> String {
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_cowimg"), dir.path(name)).unwrap();
    dir.str(name)
}

/// `name` (qemu-img, qemu-io) as `who` runs it: "ours" the cowimg installed in `dir`
/// under that name, anyone else QEMU's own.
fn tool(dir: &Scratch, who: &str, name: &str) -> String {
    match who {
        "ours" => dir.str(name),
        _ => name.to_string(),
    }
}

/// qemu-img map's JSON lines for `path` without host offsets (they follow the order
/// in which clusters were allocated).
fn map_without_offsets(path: &str) -> Vec<String> {
    let map = qemu_img(&["map", "--output=json", path]).replace(path, "IMAGE");
    map.lines()
        .map(|l| l.split(", \"offset\"").next().unwrap_or(l).to_string())
        .collect()
}

fn session(program: &str, args: &[&str], input: &[u8]) -> Session {
    use std::io::Write as _;
    use std::process::Stdio;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    let lines = |bytes: &[u8]| {
        String::from_utf8_lossy(bytes)
            .lines()
            .filter(|l| !l.contains(" ops; "))
            .map(|l| {
                l.replace("qemu-img:", "cowimg:")
                    .replace("qemu-io:", "cowimg:")
            })
            .collect::<Vec<_>>()
    };
    (out.status.code(), lines(&out.stdout), lines(&out.stderr))
}

/// What a command printed and how it exited.
#[derive(Debug, PartialEq)]
struct Outcome {
    code: Option<i32>,
    stdout: String,
    /// With the program's name as cowimg's, so that messages compare.
    stderr: String,
}

/// Runs the same command line through cowimg and qemu-img, in tests/data.
fn both(args: &[&str]) -> (Outcome, Outcome) {
    let run = |program: &str| {
        let out = Command::new(program)
            .current_dir(data_path(""))
            .args(args)
            .output()
            .unwrap();
        Outcome {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into(),
            stderr: String::from_utf8_lossy(&out.stderr).replace("qemu-img:", "cowimg:"),
        }
    };
    (run(env!("CARGO_BIN_EXE_cowimg")), run("qemu-img"))
}

const IMAGES: [&str; 9] = [
    "sample.qcow2",
    "v2-backing.qcow2",
    "snapshots.qcow2",
    "bitmaps.qcow2",
    "zstd-extl2.qcow2",
    "datafile.qcow2",
    "refcount1.qcow2",
    "qcow1.qcow",
    "base.raw",
];

/// The disk usage of a file depends on the file system; snapshots leave it out.
fn redact_usage(text: &str) -> String {
    text.lines()
        .map(|l| {
            if l.contains("\"actual-size\"") {
                "        \"actual-size\": [redacted],"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn info_is_qemu_img_info() {
    for name in IMAGES {
        for extra in [
            &[][..],
            &["--output=json"],
            &["--backing-chain"],
            &["--backing-chain", "--output=json"],
        ] {
            if name.ends_with(".qcow") && extra.contains(&"--backing-chain") {
                continue; // qcow's reading runtime is a later issue
            }
            let mut args = vec!["info"];
            args.extend_from_slice(extra);
            args.push(name);
            let (ok, ours, err) = cowimg(&args);
            assert!(ok, "{args:?}: {err}");
            assert_eq!(ours, qemu_img(&args), "{args:?}");
        }
    }
    let (_, json, _) = cowimg(&["info", "--output=json", "snapshots.qcow2"]);
    insta::assert_snapshot!("info_snapshots_json", redact_usage(&json));
    let (_, json, _) = cowimg(&[
        "info",
        "--output=json",
        "--backing-chain",
        "v2-backing.qcow2",
    ]);
    insta::assert_snapshot!("info_chain_json", redact_usage(&json));
}

#[test]
fn map_is_qemu_img_map() {
    for name in IMAGES.iter().filter(|n| !n.ends_with(".qcow")) {
        let (ok, ours, err) = cowimg(&["map", "--output=json", name]);
        assert!(ok, "{name}: {err}");
        assert_eq!(ours, qemu_img(&["map", "--output=json", name]), "{name}");
    }
    for name in ["snapshots.qcow2", "v2-backing.qcow2", "bitmaps.qcow2"] {
        let (ok, ours, err) = cowimg(&["map", name]);
        assert!(ok, "{name}: {err}");
        assert_eq!(ours, qemu_img(&["map", name]), "{name}");
    }
    // Human map cannot show compressed data, and says so as qemu-img does.
    let (ok, _, err) = cowimg(&["map", "sample.qcow2"]);
    assert!(!ok);
    assert_eq!(
        err,
        "cowimg: File contains external, encrypted or compressed clusters.\n"
    );
    let (_, json, _) = cowimg(&["map", "--output=json", "zstd-extl2.qcow2"]);
    insta::assert_snapshot!("map_extl2_json", json);
}

#[test]
fn info_reads_cow_headers_and_reports_bad_files_clearly() {
    let dir = Scratch::new("cli-info");
    let mut v3 = vec![0u8; 12288];
    v3[..4].copy_from_slice(&0x4f4f4f4du32.to_be_bytes());
    v3[4..8].copy_from_slice(&3u32.to_be_bytes());
    v3[12..20].copy_from_slice(&(2u64 << 20).to_be_bytes());
    v3[20..24].copy_from_slice(&512u32.to_be_bytes());
    v3[24..28].copy_from_slice(&4096u32.to_be_bytes());
    v3[32..40].copy_from_slice(b"base.img");
    std::fs::write(dir.path("a.cow"), &v3).unwrap();
    let (ok, out, err) = cowimg(&["info", "--header", &dir.str("a.cow")]);
    assert!(ok, "{err}");
    assert!(out.contains("file format: cow\n"), "{out}");
    assert!(
        out.contains("virtual size: 2 MiB (2097152 bytes)\n"),
        "{out}"
    );
    assert!(out.contains("backing file: base.img"), "{out}");
    assert!(
        out.contains("cow layout: v3\n") && out.contains("alignment: 4096"),
        "{out}"
    );

    let mut bad = data("sample.qcow2");
    bad[20..24].copy_from_slice(&40u32.to_be_bytes());
    std::fs::write(dir.path("bad.qcow2"), &bad).unwrap();
    let (ok, _, err) = cowimg(&["info", &dir.str("bad.qcow2")]);
    assert!(!ok);
    assert_eq!(
        err,
        format!(
            "cowimg: Could not open '{}': Unsupported cluster size: 2^40 (qcow2 header: cluster_bits = 0x28 at byte 20)\n",
            dir.str("bad.qcow2")
        )
    );
}

#[test]
fn output_survives_a_closed_pipe() {
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_cowimg"))
        .current_dir(data_path(""))
        .args([
            "info",
            "--output=json",
            "--backing-chain",
            "v2-backing.qcow2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `cowimg convert` and `qemu-img convert` write the same raw bytes.
#[test]
fn convert_writes_what_qemu_img_convert_writes() {
    let dir = Scratch::new("convert");
    let same = |ours: &[&str], theirs: &[&str], env: Option<(&str, &str)>| {
        let out_ours = dir.str("ours.raw");
        let out_theirs = dir.str("theirs.raw");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cowimg"));
        cmd.current_dir(data_path(""))
            .arg("convert")
            .args(ours)
            .arg(&out_ours);
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{ours:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut args = vec!["convert"];
        args.extend_from_slice(theirs);
        args.push(&out_theirs);
        qemu_img(&args);
        assert_eq!(
            std::fs::read(&out_ours).unwrap(),
            std::fs::read(&out_theirs).unwrap(),
            "{ours:?}"
        );
    };
    for name in [
        "sample.qcow2",
        "v2-backing.qcow2",
        "zstd-extl2.qcow2",
        "datafile.qcow2",
    ] {
        same(&["-O", "raw", name], &["-O", "raw", name], None);
    }
    same(
        &["-l", "snapshot.name=first", "-O", "raw", "snapshots.qcow2"],
        &["-l", "snapshot.name=first", "-O", "raw", "snapshots.qcow2"],
        None,
    );
    same(
        &[
            "-f",
            "qcow2",
            "-l",
            "snapshot.id=2",
            "-O",
            "raw",
            "snapshots.qcow2",
        ],
        &["-l", "snapshot.id=2", "-O", "raw", "snapshots.qcow2"],
        None,
    );

    // Legacy AES: the secret from a file via --object and --image-opts, or from the
    // environment; never on the command line.
    let img = dir.str("aes.qcow2");
    let secret = dir.str("secret.txt");
    std::fs::write(&secret, "hunter2").unwrap();
    let object = format!("secret,id=s0,file={secret}");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "--object",
        &object,
        "-o",
        "encrypt.format=aes,encrypt.key-secret=s0",
        &img,
        "1M",
    ]);
    let opts = format!("driver=qcow2,file.filename={img},encrypt.key-secret=s0");
    qemu_io(&[
        "--object",
        &object,
        "--image-opts",
        "-c",
        "write -P 0x5a 64K 64K",
        &opts,
    ]);
    let theirs = [
        "--object",
        object.as_str(),
        "--image-opts",
        opts.as_str(),
        "-O",
        "raw",
    ];
    same(&theirs, &theirs, None);
    same(
        &["-O", "raw", &img],
        &theirs,
        Some(("COWIMG_PASSPHRASE", "hunter2")),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_cowimg"))
        .args(["convert", "-O", "raw", &img, &dir.str("x.raw")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("cowimg: Could not open '{img}': Parameter 'encrypt.key-secret' is required for cipher\n")
    );
}

/// A longer header (header_length 120, an unknown non-zero field at 112): extensions
/// start at header_length, and both tools still see the bitmaps extension.
#[test]
fn extensions_start_at_header_length() {
    let dir = Scratch::new("hdrlen");
    let mut bytes = data("bitmaps.qcow2");
    let area: Vec<u8> = bytes[112..4096 - 8].to_vec();
    bytes[120..4096].copy_from_slice(&area);
    bytes[112..120].copy_from_slice(b"\x01\x02\x03\x04\x05\x06\x07\x08");
    bytes[100..104].copy_from_slice(&120u32.to_be_bytes());
    let path = dir.str("long-header.qcow2");
    std::fs::write(&path, &bytes).unwrap();
    let (ok, ours, err) = cowimg(&["info", "--output=json", &path]);
    assert!(ok, "{err}");
    assert!(ours.contains("\"name\": \"bitmap0\""), "{ours}");
    assert_eq!(ours, qemu_img(&["info", "--output=json", &path]));
    let header = cowimg::header::Qcow2::read(&cowimg::storage::MemoryStorage::new(bytes)).unwrap();
    assert_eq!(header.unknown_fields, b"\x01\x02\x03\x04\x05\x06\x07\x08");
}

/// `cowimg compare` says and exits what `qemu-img compare` does: identical, a size
/// difference (warned, or refused with -s), the first differing sector, in the common
/// part and in the tail of the larger image.
#[test]
fn compare_is_qemu_img_compare() {
    let dir = Scratch::new("compare");
    let (a, b) = (dir.str("a.qcow2"), dir.str("b.qcow2"));
    qemu_img(&["create", "-q", "-f", "qcow2", &a, "1M"]);
    qemu_img(&["create", "-q", "-f", "qcow2", &b, "2M"]);
    let same = |args: &[&str]| {
        let mut full = vec!["compare"];
        full.extend_from_slice(args);
        let (ours, theirs) = both(&full);
        assert_eq!(ours.stdout, theirs.stdout, "{args:?}");
        assert_eq!(ours.code, theirs.code, "{args:?}");
    };
    same(&[&a, &b]);
    same(&["-s", &a, &b]);
    qemu_io(&["-f", "qcow2", "-c", "write -P 1 1500k 1", &b]);
    same(&[&a, &b]);
    qemu_io(&["-f", "qcow2", "-c", "write -P 1 4097 1", &a]);
    same(&[&a, &b]);
    same(&["-q", &a, &b]);
    same(&[&a, &a]);
    same(&[&a, &dir.str("missing.qcow2")]);
    // Many pieces, compared on every core: the lowest of several differences.
    let (c, d) = (dir.str("c.qcow2"), dir.str("d.qcow2"));
    qemu_img(&["create", "-q", "-f", "qcow2", &c, "64M"]);
    qemu_io(&["-f", "qcow2", "-c", "write -P 7 0 64M", &c]);
    qemu_img(&["convert", "-c", "-O", "qcow2", &c, &d]);
    same(&[&c, &d]);
    qemu_io(&["-f", "qcow2", "-c", "write -P 8 50M 1", &d]);
    qemu_io(&["-f", "qcow2", "-c", "write -P 8 10485763 1", &d]);
    qemu_io(&["-f", "qcow2", "-c", "write -P 8 40M 1", &d]);
    same(&[&c, &d]);
    // Strict: allocation must agree too (compressed against plain, raw against
    // qcow2, holes against zero clusters), the status checked before the content.
    let (e, f, g) = (dir.str("e.qcow2"), dir.str("f.raw"), dir.str("g.qcow2"));
    qemu_img(&["convert", "-O", "qcow2", &c, &e]);
    qemu_img(&["convert", "-O", "raw", &c, &f]);
    qemu_img(&["create", "-q", "-f", "qcow2", &g, "64M"]);
    qemu_io(&[
        "-f",
        "qcow2",
        "-c",
        "write -P 7 0 64M",
        "-c",
        "write -z 1M 1M",
        &g,
    ]);
    for (x, y) in [
        (&c, &d),
        (&c, &e),
        (&c, &g),
        (&e, &f),
        (&f, &f),
        (&g, &g),
        (&c, &c),
    ] {
        same(&["-s", x, y]);
    }
}

#[test]
fn measure_is_qemu_img_measure() {
    let same = |args: &[&str]| {
        let mut full = vec!["measure"];
        full.extend_from_slice(args);
        let (ours, theirs) = both(&full);
        assert_eq!(ours, theirs, "{full:?}");
    };
    for name in IMAGES {
        for extra in [
            &["-O", "qcow2"][..],
            &["-O", "raw"],
            &["-O", "qcow2", "-o", "cluster_size=4k", "--output=json"],
            &["-O", "qcow2", "-o", "compat=0.10,cluster_size=2M"],
            &["-O", "qcow2", "-o", "refcount_bits=1,extended_l2=on"],
            &["-O", "qcow2", "-o", "preallocation=falloc"],
        ] {
            let mut args = extra.to_vec();
            args.push(name);
            same(&args);
        }
    }
    same(&[
        "-O",
        "qcow2",
        "-l",
        "snapshot.name=first",
        "snapshots.qcow2",
    ]);
    for size in ["1G", "1000", "3T", "0"] {
        same(&["--size", size, "-O", "qcow2", "--output=json"]);
        same(&["--size", size]);
    }
    // Refusals, in qemu-img's words and with its exit code.
    same(&["-O", "qcow2"]);
    same(&["--size", "1G", "sample.qcow2"]);
    same(&["-O", "qcow", "--size", "1G"]);
    same(&["-O", "qcow2", "-o", "cluster_size=3000", "--size", "1G"]);

    // A sparse raw file: holes need no clusters, partly written clusters need whole ones.
    let dir = Scratch::new("measure");
    let raw = dir.str("sparse.raw");
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    qemu_io(&[
        "-f",
        "raw",
        "-c",
        "write 1000 5000",
        "-c",
        "write 40M 1M",
        &raw,
    ]);
    same(&["-O", "qcow2", "-o", "cluster_size=16k", &raw]);
    let (ours, theirs) = both(&["map", "--output=json", "-f", "raw", &raw]);
    assert_eq!(ours, theirs, "a raw file's holes are zero ranges");
}

/// Data clusters whose host range is a hole in the file read as zeros, and QEMU says so
/// (zero: true, data: true; not listed in the human map): preallocated metadata, an
/// external data file with holes, and qcow version 1 over a sparse file.
#[test]
fn data_over_host_holes_maps_as_qemu_img_maps_it() {
    let dir = Scratch::new("host-holes");
    let (meta, ext, v1) = (
        dir.str("meta.qcow2"),
        dir.str("ext.qcow2"),
        dir.str("v1.qcow"),
    );
    let data = dir.str("ext.data");
    let create = [
        format!("create -q -f qcow2 -o preallocation=metadata {meta} 10M"),
        format!("create -q -f qcow2 -o data_file={data},data_file_raw=on {ext} 10M"),
        format!("create -q -f qcow {v1} 10M"),
    ];
    for (line, (image, format)) in
        create
            .iter()
            .zip([(&meta, "qcow2"), (&ext, "qcow2"), (&v1, "qcow")])
    {
        qemu_img(&line.split(' ').collect::<Vec<_>>());
        qemu_io(&[
            "-f",
            format,
            "-c",
            "write -P 1 1M 64k",
            "-c",
            "write -P 2 3M 100k",
            image,
        ]);
    }
    // A hole punched into data the qcow image points at.
    let file = std::fs::OpenOptions::new().write(true).open(&v1).unwrap();
    let size = file.metadata().unwrap().len();
    file.set_len(size + (1 << 20)).unwrap();
    for image in [&meta, &ext, &v1] {
        for output in ["--output=json", "--output=human"] {
            let (ours, theirs) = both(&["map", output, image]);
            assert_eq!(ours, theirs, "{image} {output}");
        }
    }
    let (ours, _) = both(&["map", "--output=json", &meta]);
    assert!(
        ours.stdout.contains("\"zero\": true, \"data\": true"),
        "{}",
        ours.stdout
    );
}

#[test]
fn dd_is_qemu_img_dd() {
    let dir = Scratch::new("dd");
    let src = dir.str("src.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &src, "5M"]);
    qemu_io(&[
        "-f",
        "qcow2",
        "-c",
        "write -P 7 1000 2M",
        "-c",
        "write -z 3M 1M",
        "-c",
        "write -P 9 4M 4097",
        &src,
    ]);
    let cases: [&[&str]; 7] = [
        &[],
        &["bs=1M", "count=3"],
        &["bs=1M", "skip=2"],
        &["bs=1M", "count=4", "skip=1"],
        &["bs=3000", "count=2"],
        &["bs=1.5k", "count=100000"],
        &["-O", "qcow2", "bs=64k", "skip=17"],
    ];
    for (i, extra) in cases.iter().enumerate() {
        let (ours, theirs) = (dir.str(&format!("ours{i}")), dir.str(&format!("theirs{i}")));
        let run = |program: &str, out: &str| {
            let mut args = vec!["dd", "-f", "qcow2"];
            args.extend_from_slice(extra);
            let (input, output) = (format!("if={src}"), format!("of={out}"));
            args.extend([input.as_str(), output.as_str()]);
            let status = Command::new(program).args(&args).status().unwrap();
            assert!(status.success(), "{program} {args:?}");
        };
        run(env!("CARGO_BIN_EXE_cowimg"), &ours);
        run("qemu-img", &theirs);
        let size = |p: &str| {
            qemu_img(&["info", p])
                .lines()
                .find(|l| l.starts_with("virtual size:"))
                .unwrap()
                .to_string()
        };
        assert_eq!(size(&ours), size(&theirs), "{extra:?}");
        let cmp = Command::new("qemu-img")
            .args(["compare", &ours, &theirs])
            .output()
            .unwrap();
        assert!(
            cmp.status.success(),
            "{extra:?}: {}",
            String::from_utf8_lossy(&cmp.stdout)
        );
    }
    let out = format!("of={}", dir.str("x"));
    for operands in [
        &["bs=0", "if=a", &out][..],
        &["if=a"],
        &["count=x", "if=a", &out],
        &["bogus"],
    ] {
        let mut args = vec!["dd"];
        args.extend_from_slice(operands);
        let (ours, theirs) = both(&args);
        assert_eq!(ours, theirs, "{args:?}");
    }
}

#[test]
fn bench_is_qemu_img_bench() {
    let dir = Scratch::new("bench");
    let (ours, theirs) = (dir.str("ours.qcow2"), dir.str("theirs.qcow2"));
    for p in [&ours, &theirs] {
        qemu_img(&["create", "-q", "-f", "qcow2", p, "8M"]);
    }
    // The same requests leave the same content (offsets wrap at the end of the image).
    let runs: [&[&str]; 3] = [
        &[
            "-w",
            "--pattern",
            "5",
            "-c",
            "700",
            "-s",
            "3000",
            "-S",
            "12k",
            "-o",
            "1000",
        ],
        &[
            "-w",
            "--pattern",
            "9",
            "-c",
            "50",
            "-d",
            "2",
            "--flush-interval",
            "10",
        ],
        &["-c", "3000", "-s", "64k", "-o", "7M", "-S", "0"],
    ];
    for extra in runs {
        let mut outputs = Vec::new();
        for (program, image) in [(env!("CARGO_BIN_EXE_cowimg"), &ours), ("qemu-img", &theirs)] {
            let out = Command::new(program)
                .arg("bench")
                .args(extra)
                .arg(image)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{program} {extra:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8(out.stdout).unwrap();
            // All but the timing line agree.
            outputs.push(
                text.lines()
                    .filter(|l| !l.starts_with("Run completed"))
                    .collect::<Vec<_>>()
                    .join("\n"),
            );
        }
        assert_eq!(outputs[0], outputs[1], "{extra:?}");
        qemu_img(&["compare", &ours, &theirs]);
    }
    let (ours_map, theirs_map) = (
        qemu_map(ours.as_ref(), "qcow2"),
        qemu_map(theirs.as_ref(), "qcow2"),
    );
    assert_eq!(ours_map.len(), theirs_map.len());
    let cmp = Command::new("qemu-img")
        .args(["compare", &ours, &theirs])
        .status()
        .unwrap();
    assert!(cmp.success());
    for bad in [
        &["-c", "0"][..],
        &["-c", "x"],
        &["-d", "0"],
        &["-s", "0"],
        &["-w", "--pattern", "300"],
        &["--flush-interval", "10"],
        &["-w", "--flush-interval", "10"],
        &["-t", "bogus"],
        &["-o", "9M", "-c", "1"],
    ] {
        let mut args = vec!["bench"];
        args.extend_from_slice(bad);
        args.push(&ours);
        let (a, b) = both(&args);
        assert_eq!(a.code, b.code, "{args:?}");
        // A failed request says why in cowimg's words ("past the end…", not "EIO").
        let failed = "cowimg: Failed request: ";
        if b.stderr.starts_with(failed) {
            assert!(a.stderr.starts_with(failed), "{args:?}: {}", a.stderr);
        } else {
            assert_eq!(a.stderr, b.stderr, "{args:?}");
        }
    }
}

/// `create` lays a new qcow2 out byte for byte as qemu-img create does: header (and the
/// feature name table where the header cluster has room), refcount table and block, L1
/// table ending the file, empty images without one, a raw data file mapped whole, and
/// preallocated metadata (each L2 table's clusters one run, refcount blocks after it).
#[test]
fn create_is_byte_identical_to_qemu_img_create() {
    let dir = Scratch::new("create-identical");
    let (ours, theirs) = (dir.str("ours.qcow2"), dir.str("theirs.qcow2"));
    qemu_img(&["create", "-q", "-f", "qcow2", &dir.str("base.qcow2"), "10M"]);
    let mut cases = Vec::new();
    for size in ["0", "1", "10M", "1G"] {
        for cluster in ["512", "4096", "65536", "2M"] {
            for extra in ["", ",compat=0.10", ",lazy_refcounts=on", ",refcount_bits=1"] {
                cases.push((format!("cluster_size={cluster}{extra}"), size));
            }
        }
    }
    cases.push(("compression_type=zstd,extended_l2=on".into(), "10M"));
    cases.push(("cluster_size=4096,preallocation=metadata".into(), "10M"));
    cases.push(("cluster_size=8192,preallocation=metadata".into(), "100M"));
    cases.push(("preallocation=metadata".into(), "100M"));
    cases.push(("backing_file=base.qcow2,backing_fmt=qcow2".into(), "10M"));
    cases.push((
        "data_file=d.data,data_file_raw=on,cluster_size=4096".into(),
        "10M",
    ));
    for (options, size) in &cases {
        for (program, path) in [(env!("CARGO_BIN_EXE_cowimg"), &ours), ("qemu-img", &theirs)] {
            let _ = std::fs::remove_file(dir.path("d.data"));
            let args = [
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                options,
                path.as_str(),
                size,
            ];
            run_ok(Some(&dir.path("")), program, &args);
        }
        assert!(
            std::fs::read(&ours).unwrap() == std::fs::read(&theirs).unwrap(),
            "{options} {size}: not laid out as qemu-img lays it out"
        );
    }
}

#[test]
fn a_raw_file_is_whole_sectors_as_qemu_sizes_it() {
    // 1,234 bytes are 1,536 to QEMU: the tail reads as zeros, maps as zero, converts out.
    let dir = Scratch::new("raw-sectors");
    let raw = dir.str("odd.raw");
    std::fs::write(&raw, vec![0x78u8; 1234]).unwrap();
    for args in [
        vec!["info", "--output=json", "-f", "raw", raw.as_str()],
        vec!["map", "--output=json", "-f", "raw", raw.as_str()],
    ] {
        let (q, c) = both(&args);
        assert_eq!(c, q, "{args:?}");
    }
    let (q, c) = (dir.str("q.raw"), dir.str("c.raw"));
    qemu_img(&["convert", "-f", "raw", "-O", "raw", &raw, &q]);
    common::cowimg(&["convert", "-f", "raw", "-O", "raw", &raw, &c]);
    assert_eq!(std::fs::read(&c).unwrap(), std::fs::read(&q).unwrap());
    assert_eq!(std::fs::read(&c).unwrap().len(), 1536);
    let read = common::cowimg(&["io", "-f", "raw", "-c", "read -P 0 1234 302", &raw]);
    assert!(read.contains("read 302/302"), "{read}");
}

#[test]
fn snapshot_delete_takes_a_name_as_qemu_img_does() {
    let dir = Scratch::new("snapshot-delete");
    let (ours, theirs) = (dir.str("ours.qcow2"), dir.str("theirs.qcow2"));
    qemu_img(&["create", "-q", "-f", "qcow2", &ours, "1M"]);
    qemu_img(&["snapshot", "-c", "first", &ours]);
    std::fs::copy(&ours, &theirs).unwrap();
    // ID 1 is no name: both refuse; the name deletes.
    for target in ["1", "first"] {
        let c = session(
            env!("CARGO_BIN_EXE_cowimg"),
            &["snapshot", "-d", target, &ours],
            b"",
        );
        let q = session("qemu-img", &["snapshot", "-d", target, &theirs], b"");
        assert_eq!(c, q, "-d {target}");
    }
    assert_eq!(qemu_img(&["snapshot", "-l", &ours]), "");
}

#[test]
fn resize_by_odd_amounts_is_qemu_img_resize() {
    let dir = Scratch::new("resize-odd");
    // qemu-img warns of shrinking even when it then refuses to: the warnings aside.
    let run = |program: &str, args: &[&str]| {
        let (code, out, mut err) = session(program, args, b"");
        err.retain(|l| !l.contains("warning"));
        (code, out, err)
    };
    let mut files = Vec::new();
    for tool in [env!("CARGO_BIN_EXE_cowimg"), "qemu-img"] {
        let tag = if tool == "qemu-img" { "q" } else { "c" };
        let (qcow2, raw) = (
            dir.str(&format!("{tag}.qcow2")),
            dir.str(&format!("{tag}.raw")),
        );
        qemu_img(&["create", "-q", "-f", "qcow2", &qcow2, "64k"]);
        std::fs::write(&raw, vec![1u8; 65536]).unwrap();
        let outcomes = [
            run(tool, &["resize", "-f", "qcow2", &qcow2, "+1"]),
            run(tool, &["resize", "-f", "raw", &raw, "+1"]),
            run(tool, &["resize", "-f", "raw", &raw, "--", "-1"]),
        ];
        files.push((outcomes, std::fs::metadata(&raw).unwrap().len()));
    }
    assert_eq!(files[0], files[1]);
    assert_eq!(files[0].1, 65537, "a raw file takes the exact size");
}

#[test]
fn create_prints_the_formatting_line_qemu_img_prints() {
    let secret = "secret,id=s0,data=x";
    let cases: [&[&str]; 10] = [
        &["-f", "qcow2"],
        &["-f", "qcow2", "-o", "cluster_size=4k,lazy_refcounts=on,compat=v3"],
        &["-f", "qcow2", "-o", "preallocation=metadata,refcount_bits=8,extended_l2=on"],
        &["-f", "qcow2", "-o", "compression_type=zstd,data_file=d.raw,data_file_raw=on"],
        &["-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2"],
        &["-f", "qcow2", "--object", secret, "-o", "encrypt.iter-time=10,encrypt.format=luks,encrypt.key-secret=s0,encrypt.cipher-alg=aes-128"],
        &["-f", "luks", "--object", secret, "-o", "cipher-alg=aes-128,key-secret=s0,iter-time=10"],
        &["-f", "raw", "-o", "preallocation=full"],
        &["-f", "raw"],
        &["-f", "qcow", "-b", "base.qcow2", "-F", "qcow2"],
    ];
    for case in cases {
        let mut lines = Vec::new();
        for program in [env!("CARGO_BIN_EXE_cowimg"), "qemu-img"] {
            let dir = Scratch::new("formatting");
            qemu_img(&["create", "-q", "-f", "qcow2", &dir.str("base.qcow2"), "1M"]);
            let out = Command::new(program)
                .current_dir(dir.path(""))
                .arg("create")
                .args(case)
                .args(["f.img", "1M"])
                .output()
                .unwrap();
            assert!(out.status.success(), "{program} {case:?}: {out:?}");
            lines.push(String::from_utf8(out.stdout).unwrap());
        }
        assert_eq!(lines[0], lines[1], "{case:?}");
    }
}

#[test]
fn installed_as_qemu_img_or_qemu_io_it_is_that_program() {
    let dir = Scratch::new("argv0");
    for name in ["qemu-img", "qemu-io"] {
        installed_as(&dir, name);
    }
    let image = dir.str("x.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &image, "1M"]);
    let run = |program: &str, args: &[&str]| session(program, args, b"");
    let ours = dir.str("qemu-img");
    // The same subcommands, output and messages, under qemu-img's name; a repeated
    // option takes its last value, as getopt gives it.
    for args in [
        vec!["info", "-f", "raw", "-f", "qcow2", image.as_str()],
        vec!["info", dir.str("missing.qcow2").leak()],
        vec!["check", image.as_str()],
    ] {
        assert_eq!(run(&ours, &args), run("qemu-img", &args), "{args:?}");
    }
    let (code, stdout, _) = run(
        &dir.str("qemu-io"),
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 7 0 4k",
            "-c",
            "read -P 7 0 4k",
            &image,
        ],
    );
    assert_eq!(code, Some(0));
    assert!(
        stdout
            .iter()
            .any(|l| l == "read 4096/4096 bytes at offset 0"),
        "{stdout:?}"
    );
    assert!(
        !stdout.iter().any(|l| l.contains("verification failed")),
        "{stdout:?}"
    );
}

#[test]
fn map_of_a_range_is_qemu_img_map_of_it() {
    let dir = Scratch::new("map-range");
    let image = dir.str("m.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &image, "4M"]);
    qemu_io(&[
        "-f",
        "qcow2",
        "-c",
        "write -P 1 0 100k",
        "-c",
        "write -z 1M 64k",
        "-c",
        "write -P 2 2M 300k",
        &image,
    ]);
    for range in [
        ["--start-offset=1000", "--max-length=5000"],
        ["--start-offset=70k", "--max-length=4M"],
        ["--start-offset=1M", "--max-length=1536k"],
        ["--start-offset=0", "--max-length=10"],
        ["--start-offset=5M", "--max-length=1"],
    ] {
        for output in ["--output=json", "--output=human"] {
            let args = ["map", output, range[0], range[1], image.as_str()];
            let (ours, theirs) = both(&args);
            assert_eq!(ours, theirs, "{args:?}");
        }
    }
}

#[test]
fn convert_into_an_existing_target_is_qemu_img_convert_n() {
    let dir = Scratch::new("convert-n");
    let source = dir.str("src.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &source, "2M"]);
    // Data, written zeros and a never-written hole: over a full target, both kinds of
    // zeros must be written.
    qemu_io(&[
        "-f",
        "qcow2",
        "-c",
        "write -P 3 0 300k",
        "-c",
        "write -z 512k 64k",
        "-c",
        "write -P 4 1M 4k",
        &source,
    ]);
    for (format, extra) in [
        ("qcow2", None),
        ("raw", None),
        ("raw", Some("--target-is-zero")),
    ] {
        let mut outputs = Vec::new();
        for program in [env!("CARGO_BIN_EXE_cowimg"), "qemu-img"] {
            let target = dir.str(&format!("{}-{format}", outputs.len()));
            let _ = std::fs::remove_file(&target);
            qemu_img(&["create", "-q", "-f", format, &target, "3M"]);
            if extra.is_none() {
                // Full of other bytes, past the source's end too (left as they are).
                qemu_io(&["-f", format, "-c", "write -P 9 0 3M", &target]);
            }
            let mut args = vec!["convert", "-n", "-O", format, "-m", "4", "-W", "-T", "none"];
            args.extend(extra);
            args.extend([source.as_str(), target.as_str()]);
            let out = Command::new(program).args(&args).output().unwrap();
            assert!(out.status.success(), "{program} {args:?}: {out:?}");
            outputs.push(target);
        }
        let same = qemu_img(&[
            "compare",
            "-f",
            format,
            "-F",
            format,
            &outputs[0],
            &outputs[1],
        ]);
        assert!(same.contains("identical"), "{format} {extra:?}: {same}");
        if format == "qcow2" {
            qemu_img(&["check", &outputs[0]]);
        }
    }
    let small = dir.str("small.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &small, "1M"]);
    for args in [
        vec![
            "convert",
            "-n",
            "-O",
            "qcow2",
            source.as_str(),
            small.as_str(),
        ],
        vec![
            "convert",
            "--target-is-zero",
            "-O",
            "qcow2",
            source.as_str(),
            small.as_str(),
        ],
    ] {
        let (ours, theirs) = both(&args);
        assert_eq!(ours, theirs, "{args:?}");
    }
}

#[test]
fn io_alloc_info_and_vectored_commands_are_qemu_ios() {
    let dir = Scratch::new("io-commands");
    let image = dir.str("m.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &image, "4M"]);
    qemu_io(&[
        "-f",
        "qcow2",
        "-c",
        "write -P 1 0 100k",
        "-c",
        "write -z 1M 64k",
        &image,
    ]);
    // The timing lines differ from run to run; everything else must not.
    let report = |program: &str, args: &[&str]| {
        let (code, out, err) = session(program, args, b"");
        assert_eq!(code, Some(0), "{program} {args:?}: {err:?}");
        out
    };
    let ours = [env!("CARGO_BIN_EXE_cowimg"), "io"];
    let queries = [
        "-f",
        "qcow2",
        "-r",
        "-c",
        "alloc 0",
        "-c",
        "alloc 0 1M",
        "-c",
        "alloc 50k 100k",
        "-c",
        "alloc 1M 64k",
        "-c",
        "alloc 3M 64k",
        "-c",
        "alloc 5M 1",
        "-c",
        "info",
        &image,
    ];
    assert_eq!(
        report(ours[0], &[&ours[1..], &queries[..]].concat()),
        report("qemu-io", &queries)
    );
    // Vectored and aio commands: the same reports and the same image afterwards.
    let twin = dir.str("twin.qcow2");
    std::fs::copy(&image, &twin).unwrap();
    let writes = |file: &str| {
        vec![
            "-f".to_string(),
            "qcow2".into(),
            "-c".into(),
            "writev -P 7 0 1k 3k".into(),
            "-c".into(),
            "readv -P 7 0 2k 2k".into(),
            "-c".into(),
            "aio_write -P 8 8k 4k".into(),
            "-c".into(),
            "aio_flush".into(),
            "-c".into(),
            "aio_read -P 8 8k 4k".into(),
            "-c".into(),
            "sleep 1".into(),
            file.to_string(),
        ]
    };
    let (a, b) = (writes(&image), writes(&twin));
    let a: Vec<&str> = [ours[1]]
        .into_iter()
        .chain(a.iter().map(String::as_str))
        .collect();
    let b: Vec<&str> = b.iter().map(String::as_str).collect();
    assert_eq!(report(ours[0], &a), report("qemu-io", &b));
    let same = qemu_img(&["compare", &image, &twin]);
    assert!(same.contains("identical"), "{same}");
}

#[test]
fn io_reads_commands_from_standard_input_as_qemu_io_does() {
    let dir = Scratch::new("io-stdin");
    let image = dir.str("s.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &image, "1M"]);
    qemu_io(&["-f", "qcow2", "-c", "write -P 1 0 64k", &image]);
    let script = b"alloc 0\nbogus\nread -P 1 0 4k\nalloc 64k 64k\n";
    let args = ["-f", "qcow2", "-r", image.as_str()];
    assert_eq!(
        session(
            env!("CARGO_BIN_EXE_cowimg"),
            &[&["io"][..], &args].concat(),
            script
        ),
        session("qemu-io", &args, script)
    );
}

#[test]
fn convert_onto_a_backing_file_writes_only_what_differs() {
    let dir = Scratch::new("convert-b");
    let (base, src) = (dir.str("base.qcow2"), dir.str("src.qcow2"));
    qemu_img(&["create", "-q", "-f", "qcow2", &base, "1M"]);
    qemu_io(&["-f", "qcow2", "-c", "write -P 1 0 1M", &base]);
    qemu_img(&[
        "create", "-q", "-f", "qcow2", "-b", &base, "-F", "qcow2", &src,
    ]);
    qemu_io(&[
        "-f",
        "qcow2",
        "-c",
        "write -P 2 64k 64k",
        "-c",
        "write -z 512k 4k",
        &src,
    ]);
    let mut maps = Vec::new();
    for (i, program) in [env!("CARGO_BIN_EXE_cowimg"), "qemu-img"]
        .into_iter()
        .enumerate()
    {
        let out = dir.str(&format!("out{i}.qcow2"));
        let args = [
            "convert", "-B", &base, "-F", "qcow2", "-O", "qcow2", &src, &out,
        ];
        assert!(Command::new(program).args(args).status().unwrap().success());
        maps.push(qemu_img(&["map", "--output=json", &out]));
        let same = qemu_img(&["compare", &src, &out]);
        assert!(same.contains("identical"), "{program}: {same}");
    }
    assert_eq!(maps[0], maps[1]);
    let missing_format = [
        "convert",
        "-B",
        &base,
        "-O",
        "qcow2",
        &src,
        &dir.str("x.qcow2"),
    ];
    let (ours, theirs) = both(&missing_format);
    assert_eq!(ours, theirs);
}

#[test]
fn amend_size_and_refusals_are_qemu_img_amend() {
    let dir = Scratch::new("amend-size");
    let image = dir.str("a.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &image, "1M"]);
    qemu_io(&["-f", "qcow2", "-c", "write -P 5 0 64k", &image]);
    for args in [
        vec![
            "amend",
            "-f",
            "qcow2",
            "-o",
            "backing_file=x.qcow2,backing_fmt=qcow2",
            image.as_str(),
        ],
        vec!["amend", "-f", "qcow2", "-o", "size=1000", image.as_str()],
        vec![
            "amend",
            "-f",
            "qcow2",
            "-o",
            "data_file_raw=on",
            image.as_str(),
        ],
    ] {
        let (ours, theirs) = both(&args);
        assert_eq!(ours, theirs, "{args:?}");
    }
    // size= grows and shrinks (no --shrink needed), as qemu-img's amend.
    let twin = dir.str("b.qcow2");
    std::fs::copy(&image, &twin).unwrap();
    for size in ["3M", "512k"] {
        let o = format!("size={size}");
        common::cowimg(&["amend", "-p", "-f", "qcow2", "-o", &o, &image]);
        qemu_img(&["amend", "-f", "qcow2", "-o", &o, &twin]);
        let same = qemu_img(&["compare", "-s", &image, &twin]);
        assert!(same.contains("identical"), "{size}: {same}");
        qemu_img(&["check", &image]);
    }
}

#[test]
fn json_and_file_filenames_name_images_as_qemu_img_reads_them() {
    for name in [
        r#"json:{"driver":"qcow2","file":{"driver":"file","filename":"sample.qcow2"}}"#,
        r#"json:{"file":{"driver":"file","filename":"sample.qcow2"}}"#,
        r#"json:{"driver":"qcow2","file.filename":"snapshots.qcow2"}"#,
        "file:sample.qcow2",
    ] {
        for args in [vec!["info", name], vec!["map", "--output=json", name]] {
            let (ours, theirs) = both(&args);
            assert_eq!(ours, theirs, "{args:?}");
        }
    }
}

#[test]
fn resize_preallocation_and_commit_b_are_qemu_imgs() {
    let dir = Scratch::new("prealloc-commit");
    // A raw file grown with preallocation=full: the same length and bytes, allocated.
    let mut sizes = Vec::new();
    for program in [env!("CARGO_BIN_EXE_cowimg"), "qemu-img"] {
        let raw = dir.str(&format!("{}.raw", sizes.len()));
        std::fs::write(&raw, vec![1u8; 65536]).unwrap();
        let args = [
            "resize",
            "-q",
            "--preallocation=full",
            "-f",
            "raw",
            &raw,
            "+64k",
        ];
        assert!(Command::new(program).args(args).status().unwrap().success());
        sizes.push((
            std::fs::read(&raw).unwrap(),
            qemu_img(&["info", "--output=json", &raw]),
        ));
    }
    assert_eq!(sizes[0].0, sizes[1].0);
    assert_eq!(
        json_number(&sizes[0].1, "actual-size"),
        json_number(&sizes[1].1, "actual-size")
    );
    let raw = dir.str("0.raw");
    let (ours, theirs) = both(&["resize", "--preallocation=bogus", "-f", "raw", &raw, "+1k"]);
    assert_eq!(ours, theirs);
    // commit -b: the backing file named, or a file not in the chain refused alike.
    let (base, top) = (dir.str("base.qcow2"), dir.str("top.qcow2"));
    qemu_img(&["create", "-q", "-f", "qcow2", &base, "1M"]);
    qemu_img(&[
        "create", "-q", "-f", "qcow2", "-b", &base, "-F", "qcow2", &top,
    ]);
    qemu_io(&["-f", "qcow2", "-c", "write -P 6 0 64k", &top]);
    let (ours, theirs) = both(&["commit", "-b", &dir.str("elsewhere.qcow2"), &top]);
    assert_eq!(ours, theirs);
    common::cowimg(&["commit", "-q", "-b", &base, &top]);
    let read = qemu_io(&["-f", "qcow2", "-r", "-c", "read -P 6 0 64k", &base]);
    assert!(!read.contains("failed"), "{read}");
}

#[test]
fn io_without_a_file_opens_and_closes_as_qemu_io() {
    let dir = Scratch::new("io-open");
    let image = dir.str("o.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &image, "1M"]);
    qemu_io(&["-f", "qcow2", "-c", "write -P 1 0 64k", &image]);
    let script = format!(
        "alloc 0\nopen -o driver=qcow2 {image}\nalloc 0\nopen {image}\nclose\nalloc 0\n\
         open -r -U {image}\nread -P 1 0 4k\nclose\n"
    );
    // One after the other: each holds the image's lock while it is open.
    let ours = session(env!("CARGO_BIN_EXE_cowimg"), &["io"], script.as_bytes());
    let theirs = session("qemu-io", &[], script.as_bytes());
    assert_eq!(ours, theirs);
}

/// qemu-io's program options as QEMU's own test harness passes them (`--cache
/// writeback --aio threads`), their invalid values refused in qemu-io's words, `-s`
/// writing to a throw-away overlay, and `-d ignore` making discards change nothing:
/// the same sessions and the same image afterwards as with qemu-io.
#[test]
fn qemu_io_program_options_act_as_in_qemu_io() {
    let dir = Scratch::new("io-options");
    installed_as(&dir, "qemu-io");
    let ours = dir.str("qemu-io");
    let cases: [&[&str]; 9] = [
        &[
            "--cache",
            "writeback",
            "--aio",
            "threads",
            "-c",
            "write -P 5 0 64k",
            "-c",
            "read -P 5 0 64k",
        ],
        &[
            "-t",
            "none",
            "-n",
            "-k",
            "-m",
            "-c",
            "read -P 0 1020k 4k",
            "-c",
            "read 1020k 8k",
        ],
        &["-t", "fast", "-c", "read 0 512"],
        &["-i", "posix", "-c", "read 0 512"],
        &["-d", "sometimes", "-c", "read 0 512"],
        &["-s", "-c", "write -P 9 0 128k", "-c", "read -P 9 0 128k"],
        &[
            "-d",
            "ignore",
            "-c",
            "write -P 3 64k 64k",
            "-c",
            "discard 64k 64k",
            "-c",
            "read -P 3 64k 64k",
        ],
        &[
            "-d",
            "unmap",
            "-c",
            "write -P 4 192k 64k",
            "-c",
            "discard 192k 64k",
        ],
        &["-C", "-r", "-c", "read 0 512"],
    ];
    for (n, args) in cases.iter().enumerate() {
        let mut maps = Vec::new();
        let mut sessions = Vec::new();
        for (program, name) in [(ours.as_str(), "ours"), ("qemu-io", "qemu")] {
            let image = dir.str(&format!("{n}-{name}.qcow2"));
            qemu_img(&["create", "-q", "-f", "qcow2", &image, "1M"]);
            let mut all = vec!["-f", "qcow2"];
            all.extend_from_slice(args);
            all.push(&image);
            let (code, out, err) = session(program, &all, b"");
            let unnamed = |lines: Vec<String>| -> Vec<String> {
                lines.iter().map(|l| l.replace(&image, "IMAGE")).collect()
            };
            sessions.push((code, unnamed(out), unnamed(err)));
            maps.push(qemu_img(&["map", "--output=json", &image]));
        }
        assert_eq!(sessions[0], sessions[1], "{args:?}");
        assert_eq!(maps[0], maps[1], "{args:?}: the image afterwards");
    }
}

/// `read -P` checks the pattern over `-s`/`-l`'s part of the buffer and names that
/// range when it differs; requests past the disk fail with EIO, readv and writev
/// under their own names: as qemu-io reports them, line for line.
#[test]
fn qemu_io_reads_verify_and_fail_as_qemu_io() {
    let dir = Scratch::new("io-verify");
    installed_as(&dir, "qemu-io");
    let image = dir.str("p.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &image, "1M"]);
    let commands = [
        "write -P 65 8k 4k",
        "read -P 65 -s 4k -l 4k 4k 12k",
        "read -P 65 -s 4k -l 4k 8k 8k",
        "read -P 65 8k 8k",
        "read -P 0 -s 12k 4k",
        "readv 1020k 8k",
        "writev 1M 512",
        "write 1020k 8k",
        "discard 1M 64k",
        "read -P 1 -s 4k -l 8k 0 8k",
        "write -P -1 0 512",
        "write -P 256 0 512",
        "write -P 0x1g 0 512",
        "write -P 010 0 512",
        "read -P 8 0 512",
    ];
    let mut args = vec!["-f", "qcow2"];
    for c in &commands {
        args.extend(["-c", c]);
    }
    args.push(&image);
    let ours = session(&dir.str("qemu-io"), &args, b"");
    assert_eq!(ours, session("qemu-io", &args, b""));
}

/// A backing chain that comes back to one of its files: `info --backing-chain` says
/// so in qemu-img's words, naming the file that closes the loop.
#[test]
fn a_looping_chain_is_named_as_qemu_img_names_it() {
    let dir = Scratch::new("loop");
    installed_as(&dir, "qemu-img");
    let (a, b) = (dir.str("a.qcow2"), dir.str("b.qcow2"));
    qemu_img(&["create", "-q", "-f", "qcow2", &a, "1M"]);
    qemu_img(&["create", "-q", "-f", "qcow2", "-b", &a, "-F", "qcow2", &b]);
    qemu_img(&["rebase", "-u", "-b", &b, "-F", "qcow2", &a]);
    for image in [&a, &b] {
        let args = ["info", "--backing-chain", image.as_str()];
        let ours = session(&dir.str("qemu-img"), &args, b"");
        assert_eq!(ours, session("qemu-img", &args, b""), "{image}");
    }
}

/// `open -o` naming the file among its options (no path word), `driver=file` as the
/// bytes themselves, and `json:` filenames with QEMU's single-quoted strings: read as
/// qemu-io reads them.
#[test]
fn qemu_io_opens_by_options_and_single_quoted_json() {
    let dir = Scratch::new("io-open-opts");
    installed_as(&dir, "qemu-io");
    let image = dir.str("o.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &image, "1M"]);
    qemu_io(&["-f", "qcow2", "-c", "write -P 65 8k 4k", &image]);
    let by_options = format!("open -o driver=qcow2,file.driver=file,file.filename={image}");
    let raw = format!("open -r -o driver=file,filename={image}");
    let json = format!("json:{{'driver':'qcow2','file':{{'driver':'file','filename':'{image}'}}}}");
    let cases: [Vec<&str>; 3] = [
        vec!["-c", &by_options, "-c", "read -P 65 8k 4k"],
        vec!["-c", &raw, "-c", "read -v 0 16"],
        vec!["-c", "read -P 65 8k 4k", &json],
    ];
    for args in cases {
        let ours = session(&dir.str("qemu-io"), &args, b"");
        assert_eq!(ours, session("qemu-io", &args, b""), "{args:?}");
        assert_eq!(ours.0, Some(0), "{args:?}");
    }
}

/// `create` as qemu-img: a backing file without its format is refused after opening
/// it (naming what it failed on, or the format it found), `extent_size_hint` is taken
/// and shown, and a `file:` target is created at the name after the prefix.
#[test]
fn create_backing_checks_hints_and_file_prefixes_as_qemu_img() {
    let dir = Scratch::new("create-more");
    installed_as(&dir, "qemu-img");
    qemu_img(&["create", "-q", "-f", "qcow", &dir.str("base.qcow"), "1M"]);
    let cases: [&[&str]; 5] = [
        &["create", "-f", "qcow", "t.qcow", "-b", "absent.qcow", "1M"],
        &["create", "-f", "qcow2", "t.qcow2", "-b", "base.qcow", "1M"],
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "extent_size_hint=1M",
            "hint.qcow2",
            "1M",
        ],
        &[
            "create",
            "-f",
            "raw",
            "-o",
            "extent_size_hint=64k",
            "hint.raw",
            "1M",
        ],
        &["create", "-f", "qcow2", "file:a:b.qcow2", "1M"],
    ];
    for args in cases {
        let mut results = Vec::new();
        for program in [dir.str("qemu-img"), "qemu-img".to_string()] {
            let out = Command::new(&program)
                .args(args)
                .current_dir(dir.path(""))
                .output()
                .unwrap();
            let made: Vec<String> = ["t.qcow", "t.qcow2", "hint.qcow2", "hint.raw", "a:b.qcow2"]
                .iter()
                .filter(|n| dir.path(n).exists())
                .map(|n| n.to_string())
                .collect();
            for n in &made {
                std::fs::remove_file(dir.path(n)).unwrap();
            }
            let err = String::from_utf8_lossy(&out.stderr).replace(&program, "qemu-img");
            results.push((
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                err,
                made,
            ));
        }
        assert_eq!(results[0], results[1], "{args:?}");
    }
}

/// An unknown incompatible feature is named from the image's own feature table, read
/// as QEMU reads it: here a table of one entry cut short after its name (14 bytes), as
/// QEMU's iotest 036 writes it.
#[test]
fn unknown_features_are_named_from_a_short_feature_table_as_qemu_names_them() {
    let dir = Scratch::new("feature-table");
    installed_as(&dir, "qemu-img");
    let image = dir.str("f.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &image, "1M"]);
    let mut bytes = std::fs::read(&image).unwrap();
    // Incompatible features (byte 72): bits 63 and 62.
    bytes[72] |= 0xc0;
    let at = bytes
        .windows(4)
        .position(|w| w == [0x68, 0x03, 0xf8, 0x57])
        .expect("qemu-img writes a feature name table");
    let mut table = b"\x00\x3fTest feature".to_vec();
    bytes[at + 4..at + 8].copy_from_slice(&(table.len() as u32).to_be_bytes());
    table.resize(16 + 8, 0); // padded to 8 bytes, then the end-of-extensions marker
    bytes[at + 8..at + 8 + table.len()].copy_from_slice(&table);
    std::fs::write(&image, bytes).unwrap();
    let args = ["info", image.as_str()];
    let ours = session(&dir.str("qemu-img"), &args, b"");
    assert_eq!(ours, session("qemu-img", &args, b""));
    assert!(
        ours.2
            .iter()
            .any(|l| l.contains("Test feature, Unknown incompatible feature: 4000000000000000")),
        "{ours:?}"
    );
}

/// Failed opens in qemu-io's words ("can't open device NAME: why", from the command
/// line and from `open`), and create's refusals of impossible qcow2 layouts naming the
/// image first, as qemu-img's do.
#[test]
fn open_and_create_failures_are_worded_as_qemu_words_them() {
    let dir = Scratch::new("open-create-words");
    for name in ["qemu-img", "qemu-io"] {
        installed_as(&dir, name);
    }
    let image = dir.str("w.qcow2");
    let missing = dir.str("missing.qcow2");
    let base_missing = dir.str("orphan.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &image, "1M"]);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "gone.qcow2",
        "-F",
        "qcow2",
        "-u",
        &base_missing,
        "1M",
    ]);
    let open_missing = format!("open {missing}");
    let cases: [(&str, Vec<&str>); 7] = [
        ("qemu-io", vec!["-c", "read 0 1", &missing]),
        ("qemu-io", vec!["-c", &open_missing]),
        (
            "qemu-io",
            vec!["-f", "qcow2", "-c", "read 0 1", &base_missing],
        ),
        (
            "qemu-io",
            vec!["-f", "qcow2", "-C", "-r", "-c", "read 0 1", &image],
        ),
        (
            "qemu-img",
            vec![
                "create",
                "-f",
                "qcow2",
                "-o",
                "cluster_size=3k",
                &image,
                "1M",
            ],
        ),
        (
            "qemu-img",
            vec![
                "create",
                "-f",
                "qcow2",
                "-o",
                "cluster_size=512",
                &image,
                "100T",
            ],
        ),
        (
            "qemu-img",
            vec![
                "create",
                "-f",
                "qcow2",
                "-o",
                "refcount_bits=3",
                &image,
                "1M",
            ],
        ),
    ];
    for (program, args) in cases {
        let ours = session(&dir.str(program), &args, b"");
        assert_eq!(ours, session(program, &args, b""), "{program} {args:?}");
    }
}

/// qemu-io's protocol drivers check the kind of file they open (a directory, a device),
/// `locking=off` is taken, `--image-opts` may name the backing file and its format,
/// `encryption=on` shows in the Formatting line, and a `file:` name with a colon reads
/// as "./a:b", backing files found beside it too, as QEMU shows them.
#[test]
fn protocols_locking_backing_options_and_colon_names_are_qemus() {
    let dir = Scratch::new("protocols");
    for name in ["qemu-img", "qemu-io"] {
        installed_as(&dir, name);
    }
    let folder = dir.str("folder");
    std::fs::create_dir(&folder).unwrap();
    let mut cases: Vec<(&str, Vec<String>)> =
        vec![("qemu-img", vec!["info".into(), folder.clone()])];
    for driver in ["file", "host_device", "host_cdrom"] {
        for (target, extra) in [(folder.as_str(), ""), ("/dev/null", ",locking=off")] {
            for mode in ["-r ", ""] {
                let open = format!("open {mode}-o driver={driver},filename={target}{extra}");
                cases.push(("qemu-io", vec!["-c".into(), open]));
            }
        }
    }
    // The backing file named by options, instead of the one the header names.
    let (base, other, top) = (
        dir.str("base.qcow2"),
        dir.str("other.qcow2"),
        dir.str("top.qcow2"),
    );
    for (image, byte) in [(&base, "1"), (&other, "2")] {
        qemu_img(&["create", "-q", "-f", "qcow2", image, "1M"]);
        qemu_io(&[
            "-f",
            "qcow2",
            "-c",
            &format!("write -P {byte} 0 64k"),
            image,
        ]);
    }
    qemu_img(&[
        "create", "-q", "-f", "qcow2", "-b", &base, "-F", "qcow2", &top,
    ]);
    let spec = format!(
        "driver=qcow2,file.filename={top},backing.driver=qcow2,backing.file.filename={other}"
    );
    for read in ["read -P 2 0 64k", "read -P 1 0 64k"] {
        cases.push((
            "qemu-io",
            vec![
                "--image-opts".into(),
                "-c".into(),
                read.into(),
                spec.clone(),
            ],
        ));
    }
    let secret = "secret,id=sec0,data=123456";
    for format in ["qcow", "qcow2"] {
        let target = dir.str(&format!("e.{format}"));
        let args = ["create", "-f", format, "--object", secret, "-o"];
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        args.extend([
            "encryption=on,encrypt.key-secret=sec0".into(),
            target,
            "1M".into(),
        ]);
        cases.push(("qemu-img", args));
    }
    for (program, args) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let ours = session(&dir.str(program), &args, b"");
        assert_eq!(ours, session(program, &args, b""), "{program} {args:?}");
    }

    // Relative names with a colon, run from the folder they are in.
    let in_folder = |program: &str, args: &[&str]| {
        let out = Command::new(program)
            .current_dir(dir.path(""))
            .args(args)
            .output()
            .unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).replace("qemu-img:", "cowimg:");
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    in_folder(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            "file:a:b.qcow2",
        ],
    );
    for args in [
        vec!["info", "file:a:b.qcow2"],
        vec!["info", "--output=json", "file:a:b.qcow2"],
        vec!["info", "file:other.qcow2"],
    ] {
        let ours = in_folder(&dir.str("qemu-img"), &args);
        assert_eq!(ours, in_folder("qemu-img", &args), "{args:?}");
        assert_eq!(ours.0, Some(0), "{args:?}");
    }
}

/// Cuts the extra data of the image's first snapshot table entry to `keep` bytes (the
/// entry's id and name moved up behind it), as an older writer might have left it.
fn shorten_first_snapshot_extra(path: &str, keep: u32) {
    let mut file = std::fs::read(path).unwrap();
    let table = be64(&file, 64) as usize;
    let field = |at: usize| u16::from_be_bytes([file[at], file[at + 1]]) as usize;
    let (id_len, name_len) = (field(table + 12), field(table + 14));
    let extra = be32(&file, table as u64 + 36) as usize;
    let strings = file[table + 40 + extra..table + 40 + extra + id_len + name_len].to_vec();
    let mut entry = file[table..table + 36].to_vec();
    entry.extend(keep.to_be_bytes());
    entry.extend(&file[table + 40..table + 40 + keep as usize]);
    entry.extend(strings);
    entry.resize(entry.len().next_multiple_of(8), 0);
    file[table..table + entry.len()].copy_from_slice(&entry);
    std::fs::write(path, file).unwrap();
}

/// `amend -o compat=1.1` completes short snapshot extra data as qemu-img's does (the
/// upgraded image checks clean), and `check -r all` repairs a version 3 entry without
/// its disk size as qemu-img repairs it: same report, same exit code, a clean image.
#[test]
fn short_snapshot_extra_data_is_completed_as_qemu_img_completes_it() {
    let dir = Scratch::new("snapshot-extra");
    let entry_extra = |path: &str| {
        let file = std::fs::read(path).unwrap();
        be32(&file, be64(&file, 64) + 36)
    };
    for (compat, keep) in [("0.10", 0), ("0.10", 8), ("1.1", 8)] {
        let (ours, theirs) = (dir.str("ours.qcow2"), dir.str("theirs.qcow2"));
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &format!("compat={compat}"),
            &ours,
            "64M",
        ]);
        qemu_io(&["-f", "qcow2", "-c", "write -P 7 0 64k", &ours]);
        qemu_img(&["snapshot", "-c", "sn0", &ours]);
        shorten_first_snapshot_extra(&ours, keep);
        assert_eq!(entry_extra(&ours), keep);
        std::fs::copy(&ours, &theirs).unwrap();
        if compat == "0.10" {
            common::cowimg(&["amend", "-f", "qcow2", "-o", "compat=1.1", &ours]);
            qemu_img(&["amend", "-f", "qcow2", "-o", "compat=1.1", &theirs]);
        } else {
            let args = |path: &str| {
                vec![
                    "check".to_string(),
                    "-r".into(),
                    "all".into(),
                    path.to_string(),
                ]
            };
            let ours_said = session(
                env!("CARGO_BIN_EXE_cowimg"),
                &args(&ours).iter().map(String::as_str).collect::<Vec<_>>(),
                b"",
            );
            let theirs_said = session(
                "qemu-img",
                &args(&theirs).iter().map(String::as_str).collect::<Vec<_>>(),
                b"",
            );
            assert_eq!(ours_said, theirs_said);
            assert!(
                ours_said
                    .2
                    .iter()
                    .any(|l| l.contains("entry 0 is incomplete")),
                "{ours_said:?}"
            );
        }
        assert_eq!(entry_extra(&ours), 24, "compat={compat} keep={keep}");
        assert_eq!(entry_extra(&ours), entry_extra(&theirs));
        assert!(qemu_img(&["check", &ours]).contains("No errors were found"));
        let list = |p: &str| qemu_img(&["snapshot", "-l", p]).replace(p, "IMAGE");
        assert_eq!(list(&ours), list(&theirs));
        assert!(qemu_img(&["compare", &ours, &theirs]).contains("identical"));
    }
}

/// Installed as qemu-io or qemu-img, a bad header is refused in QEMU's words alone;
/// as cowimg, the structure, field and value follow them.
#[test]
fn header_errors_are_qemus_words_when_installed_as_qemu() {
    let dir = Scratch::new("header-words");
    for name in ["qemu-img", "qemu-io"] {
        installed_as(&dir, name);
    }
    let image = dir.str("h.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &image, "1M"]);
    let mut bytes = std::fs::read(&image).unwrap();
    bytes[56..60].copy_from_slice(&0xffff_ffffu32.to_be_bytes()); // refcount_table_clusters
    std::fs::write(&image, bytes).unwrap();
    for (program, args) in [
        ("qemu-io", vec!["-c", "read 0 512", &image]),
        ("qemu-img", vec!["info", &image]),
        ("qemu-img", vec!["check", &image]),
    ] {
        let ours = session(&dir.str(program), &args, b"");
        assert_eq!(ours, session(program, &args, b""), "{program} {args:?}");
        assert!(
            ours.2
                .iter()
                .any(|l| l.contains("Reference count table too large")),
            "{ours:?}"
        );
    }
    let (ok, _, err) = cowimg(&["info", &image]);
    assert!(!ok);
    assert!(
        err.contains("refcount_table_clusters = 0xffffffff at byte 56"),
        "{err}"
    );
}

/// `check -r` opens the image for writing as qemu-img's does, so an autoclear bit
/// cowimg does not know is cleared whether or not anything needed repair.
#[test]
fn check_repair_clears_unknown_autoclear_bits_as_qemu_img() {
    let dir = Scratch::new("autoclear");
    for mode in ["leaks", "all"] {
        let (ours, theirs) = (dir.str("ours.qcow2"), dir.str("theirs.qcow2"));
        qemu_img(&["create", "-q", "-f", "qcow2", &ours, "1M"]);
        let mut bytes = std::fs::read(&ours).unwrap();
        bytes[88..96].copy_from_slice(&(1u64 << 63).to_be_bytes()); // autoclear_features
        std::fs::write(&ours, &bytes).unwrap();
        std::fs::copy(&ours, &theirs).unwrap();
        let args = |p: &str| ["check", "-r", mode, p].map(str::to_string);
        let said = |program: &str, p: &str| {
            let args = args(p);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            session(program, &args, b"")
        };
        assert_eq!(
            said(env!("CARGO_BIN_EXE_cowimg"), &ours),
            said("qemu-img", &theirs)
        );
        let autoclear = |p: &str| be64(&std::fs::read(p).unwrap(), 88);
        assert_eq!(autoclear(&theirs), 0, "qemu-img clears it");
        assert_eq!(autoclear(&ours), 0, "-r {mode}");
    }
}

/// qcow2's cache options are taken by `open -o` and `--image-opts`, and refused in
/// qemu-io's words where QEMU refuses them (combinations, entry sizes).
#[test]
fn qcow2_cache_options_are_checked_as_qemu_io_checks_them() {
    let dir = Scratch::new("cache-options");
    installed_as(&dir, "qemu-io");
    let image = dir.str("c.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &image, "64k"]);
    qemu_io(&["-f", "qcow2", "-c", "write -P 42 0 64k", &image]);
    let mut cases: Vec<Vec<String>> = Vec::new();
    for opts in [
        "cache-size=1.25M,l2-cache-size=1M,refcount-cache-size=0.25M",
        "cache-size=1M,l2-cache-size=2M",
        "cache-size=1M,refcount-cache-size=2M",
        "l2-cache-entry-size=4242",
        "l2-cache-entry-size=128k",
        "l2-cache-size=0",
        "cache-size=2M,l2-cache-size=1M",
        "l2-cache-entry-size=16k,cache-clean-interval=30",
    ] {
        let open = format!("open -o {opts} {image}");
        cases.push(
            ["-c", &open, "-c", "read -P 42 0 64k"]
                .map(String::from)
                .to_vec(),
        );
        let spec = format!("driver=qcow2,file.filename={image},{opts}");
        cases.push(
            ["--image-opts", "-c", "read -P 42 0 64k", &spec]
                .map(String::from)
                .to_vec(),
        );
    }
    for args in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let ours = session(&dir.str("qemu-io"), &args, b"");
        assert_eq!(ours, session("qemu-io", &args, b""), "{args:?}");
    }
}

/// `commit -b` commits through every layer above the named base and keeps the image
/// (as qemu-img's -b implies -d); a relative base is named relative to the image, and
/// a qcow chain (no backing format recorded) commits without -F, as qemu-img's does.
#[test]
fn commit_through_layers_is_qemu_img_commit() {
    let dir = Scratch::new("commit-layers");
    installed_as(&dir, "qemu-img");
    for (format, target) in [("qcow2", "t.base"), ("qcow2", "t.mid"), ("qcow", "t.base")] {
        let sets = ["ours", "theirs"].map(|who| {
            let sub = dir.path(who);
            let _ = std::fs::remove_dir_all(&sub);
            std::fs::create_dir(&sub).unwrap();
            let p = |n: &str| sub.join(n).to_string_lossy().into_owned();
            qemu_img(&["create", "-q", "-f", format, &p("t.base"), "4M"]);
            for (name, below) in [("t.mid", "t.base"), ("t", "t.mid")] {
                let path = p(name);
                qemu_img(&[
                    "create", "-q", "-f", format, "-b", below, "-F", format, &path, "4M",
                ]);
            }
            for (name, byte, at) in [("t.base", 1, "0"), ("t.mid", 2, "1M"), ("t", 3, "2M")] {
                let w = format!("write -P {byte} {at} 640k");
                qemu_io(&["-f", format, "-c", &w, &p(name)]);
            }
            sub
        });
        let run = |program: &str, sub: &std::path::Path, args: &[&str]| {
            let out = Command::new(program)
                .current_dir(sub)
                .args(args)
                .output()
                .unwrap();
            let text = |b: &[u8]| String::from_utf8_lossy(b).replace("qemu-img:", "cowimg:");
            (out.status.code(), text(&out.stdout), text(&out.stderr))
        };
        let ours_said = run(
            &dir.str("qemu-img"),
            &sets[0],
            &["commit", "-b", target, "t"],
        );
        let theirs_said = run("qemu-img", &sets[1], &["commit", "-b", target, "t"]);
        assert_eq!(ours_said, theirs_said, "{format} -b {target}");
        assert_eq!(ours_said.0, Some(0));
        for name in ["t.base", "t.mid", "t"] {
            // Which guest ranges each file holds (host offsets follow write order).
            let held = |sub: &std::path::Path| {
                let mut runs: Vec<(u64, u64, bool)> = Vec::new();
                for e in qemu_map(&sub.join(name), format) {
                    let held = e.present && e.depth == 0;
                    match runs.last_mut() {
                        Some(last) if last.2 == held && last.0 + last.1 == e.start => {
                            last.1 += e.length
                        }
                        _ => runs.push((e.start, e.length, held)),
                    }
                }
                runs
            };
            assert_eq!(
                held(&sets[0]),
                held(&sets[1]),
                "{format} -b {target}: {name}"
            );
            let files = sets
                .each_ref()
                .map(|s| s.join(name).to_string_lossy().into_owned());
            let same = qemu_img(&["compare", "-f", format, "-F", format, &files[0], &files[1]]);
            assert!(same.contains("identical"), "{format} {name}: {same}");
        }
        // Named from the folder above, relative to the working directory: not found.
        let above = sets[0].parent().unwrap();
        let args = ["commit", "-b", "ours/t.mid", "ours/t"];
        let ours_said = run(&dir.str("qemu-img"), above, &args);
        assert_eq!(ours_said, run("qemu-img", above, &args));
        assert_eq!(ours_said.0, Some(1));
    }
}

/// `compare` of images of different sizes reads the larger one's tail against zeros,
/// however far past the smaller one's end, as qemu-img compare does.
#[test]
fn compare_reads_a_longer_tail_against_zeros_as_qemu_img() {
    let dir = Scratch::new("compare-tail");
    let (small, large) = (dir.str("small.raw"), dir.str("large.raw"));
    qemu_img(&["create", "-q", "-f", "raw", &small, "4M"]);
    qemu_img(&["create", "-q", "-f", "raw", &large, "12M"]);
    for (write, expect) in [
        ("write -P 0 4M 8M", Some(0)),
        ("write -P 7 10M 4k", Some(1)),
    ] {
        qemu_io(&["-f", "raw", "-c", write, &large]);
        for args in [
            vec!["compare", small.as_str(), large.as_str()],
            vec!["compare", "-s", small.as_str(), large.as_str()],
        ] {
            let (ours, theirs) = both(&args);
            assert_eq!(ours, theirs, "{write}: {args:?}");
            if !args.contains(&"-s") {
                assert_eq!(ours.code, expect, "{write}: {ours:?}");
            }
        }
    }
}

/// `amend --force` does what qemu-img does only when forced: overwrite an active LUKS
/// key slot, erase the last one (an inactive slot erased again is no error); without
/// it the same requests are refused in qemu-img's words.
#[test]
fn amend_force_overwrites_and_erases_key_slots_as_qemu_img() {
    let dir = Scratch::new("amend-force");
    installed_as(&dir, "qemu-img");
    let secrets = [
        "--object",
        "secret,id=s0,data=zero",
        "--object",
        "secret,id=s1,data=one",
    ];
    let steps: [(&str, bool); 6] = [
        ("state=active,new-secret=s1,keyslot=0,iter-time=10", false),
        ("state=active,new-secret=s1,keyslot=0,iter-time=10", true),
        ("state=inactive,keyslot=0", false),
        ("state=inactive,old-secret=s1", false),
        ("state=inactive,keyslot=1", true),
        ("state=inactive,keyslot=0", true),
    ];
    let images = ["ours", "theirs"].map(|who| {
        let image = dir.str(&format!("{who}.luks"));
        let mut args = vec!["create", "-q", "-f", "luks"];
        args.extend(secrets);
        args.extend(["-o", "key-secret=s0,iter-time=10", &image, "1M"]);
        qemu_img(&args);
        image
    });
    for (options, force) in steps {
        let said = |program: &str, image: &str| {
            let mut args = vec!["amend".to_string()];
            args.extend(secrets.map(String::from));
            let spec = format!("driver=luks,file.filename={image},key-secret=s1");
            let spec = if options.contains("new-secret") {
                spec.replace("s1", "s0")
            } else {
                spec
            };
            args.extend(["--image-opts".into(), "-o".into(), options.into(), spec]);
            if force {
                args.push("--force".into());
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            session(program, &args, b"")
        };
        let ours = said(&dir.str("qemu-img"), &images[0]);
        let theirs = said("qemu-img", &images[1]);
        assert_eq!(ours, theirs, "{options} force={force}");
    }
    // Every slot erased: neither passphrase opens either image.
    for image in &images {
        for key in ["s0", "s1"] {
            let spec = format!("driver=luks,file.filename={image},key-secret={key}");
            let mut args = secrets.to_vec();
            args.extend(["--image-opts", "-c", "read 0 512", &spec]);
            let (code, _, err) = session("qemu-io", &args, b"");
            assert_eq!(code, Some(1), "{image} {key}");
            assert!(
                err.iter().any(|l| l.contains("Invalid password")),
                "{err:?}"
            );
        }
    }
}

/// `resize` refuses a shrink without --shrink and preallocation without growth in
/// qemu-img's words and order; `create -f raw -o preallocation=falloc|full` allocates
/// the file as qemu-img does (metadata is refused).
#[test]
fn resize_refusals_and_raw_preallocation_are_qemu_imgs() {
    use std::os::unix::fs::MetadataExt;
    let dir = Scratch::new("resize-prealloc");
    installed_as(&dir, "qemu-img");
    for (format, name) in [("raw", "r"), ("qcow2", "q")] {
        for args in [
            vec!["512k"],
            vec!["--preallocation=falloc", "512k"],
            vec!["--preallocation=falloc", "1M"],
            vec!["--shrink", "--preallocation=full", "256k"],
            vec!["--shrink", "512k"],
        ] {
            let images = ["ours", "theirs"].map(|who| {
                let image = dir.str(&format!("{name}-{who}"));
                qemu_img(&["create", "-q", "-f", format, &image, "1M"]);
                image
            });
            let said = |program: &str, image: &str| {
                let mut all = vec!["resize", "-f", format];
                all.extend(&args);
                all.insert(all.len() - 1, image);
                session(program, &all, b"")
            };
            let ours = said(&dir.str("qemu-img"), &images[0]);
            assert_eq!(ours, said("qemu-img", &images[1]), "{format} {args:?}");
            let size = |p: &str| {
                qemu_img(&["info", "--output=json", p])
                    .lines()
                    .find(|l| l.contains("virtual-size"))
                    .map(String::from)
            };
            assert_eq!(size(&images[0]), size(&images[1]), "{format} {args:?}");
        }
    }
    for mode in ["falloc", "full", "metadata"] {
        let images = ["ours", "theirs"].map(|who| dir.str(&format!("p-{mode}-{who}.raw")));
        let o = format!("preallocation={mode}");
        let args = |image: &str| {
            vec![
                "create".to_string(),
                "-f".into(),
                "raw".into(),
                "-o".into(),
                o.clone(),
                image.to_string(),
                "1M".into(),
            ]
        };
        let run = |program: &str, image: &str| {
            let args = args(image);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (code, out, err) = session(program, &args, b"");
            (
                code,
                out.join("\n").replace(image, "IMAGE"),
                err.join("\n").replace(image, "IMAGE"),
            )
        };
        assert_eq!(
            run(&dir.str("qemu-img"), &images[0]),
            run("qemu-img", &images[1]),
            "{mode}"
        );
        if mode != "metadata" {
            let blocks = |p: &str| std::fs::metadata(p).unwrap().blocks() * 512;
            assert!(
                blocks(&images[0]) >= 1 << 20,
                "{mode}: {}",
                blocks(&images[0])
            );
            assert!(blocks(&images[1]) >= 1 << 20, "{mode}");
        }
    }
}

/// A raw file is created as QEMU's file driver creates it (whole sectors, the first
/// block written so that its block size can be probed), converted to raw likewise, and
/// a discard punches a hole: `map` shows the same for files made by either tool.
#[test]
fn raw_files_are_made_and_discarded_as_qemu_makes_them() {
    let dir = Scratch::new("raw-files");
    for name in ["qemu-img", "qemu-io"] {
        installed_as(&dir, name);
    }
    let source = dir.str("source.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &source, "1M"]);
    qemu_io(&["-f", "qcow2", "-c", "write -P 3 512k 64k", &source]);
    let tool = |who: usize, name: &str| match who {
        0 => dir.str(name),
        _ => name.to_string(),
    };
    let mut maps = [Vec::new(), Vec::new()];
    for (who, map) in maps.iter_mut().enumerate() {
        let (img, io) = (tool(who, "qemu-img"), tool(who, "qemu-io"));
        for size in ["65537", "1048575", "1000"] {
            let file = dir.str(&format!("r{who}-{size}.raw"));
            run_ok(None, &img, &["create", "-q", "-f", "raw", &file, size]);
            map.push(qemu_img(&["map", "--output=json", "-f", "raw", &file]));
            map.push(std::fs::metadata(&file).unwrap().len().to_string());
            run_ok(
                None,
                &io,
                &["-f", "raw", "-c", &format!("discard 0 {size}"), &file],
            );
            map.push(qemu_img(&["map", "--output=json", "-f", "raw", &file]));
        }
        let converted = dir.str(&format!("c{who}.raw"));
        run_ok(None, &img, &["convert", "-O", "raw", &source, &converted]);
        map.push(qemu_img(&["map", "--output=json", "-f", "raw", &converted]));
    }
    assert_eq!(maps[0], maps[1]);
}

/// `blkdebug::IMAGE` (no rules) reads and writes the image itself at blkdebug's
/// alignment, as qemu-io does; blkdebug with a rules file is refused by name.
#[test]
fn blkdebug_without_rules_is_the_image_itself() {
    let dir = Scratch::new("blkdebug");
    installed_as(&dir, "qemu-io");
    for who in ["ours", "theirs"] {
        let image = dir.str(&format!("{who}.qcow2"));
        qemu_img(&["create", "-q", "-f", "qcow2", &image, "1M"]);
    }
    for align in ["512", "4k"] {
        for command in [
            "write -P 10 0x200 0x400",
            "write -z 0x400 0x800",
            "read -P 10 0x200 0x200",
            "read -P 0 0x400 0x800",
        ] {
            let said = |program: &str, image: &str| {
                let open = format!("open -o driver=qcow2,file.align={align} blkdebug::{image}");
                session(program, &[], format!("{open}\n{command}\n").as_bytes())
            };
            let ours = said(&dir.str("qemu-io"), &dir.str("ours.qcow2"));
            assert_eq!(
                ours,
                said("qemu-io", &dir.str("theirs.qcow2")),
                "{align} {command}"
            );
            assert!(!ours.1.iter().any(|l| l.contains("failed")), "{ours:?}");
        }
    }
    // A blkdebug node over the image format, with its request limits.
    for command in [
        "write -P 33 1000 128k",
        "read -P 33 1000 128k",
        "write -z 300k 200k",
    ] {
        let said = |program: &str, image: &str| {
            let open = format!("open -o driver=blkdebug,image.driver=qcow2,align=4k,max-transfer=64k blkdebug::{image}");
            session(program, &[], format!("{open}\n{command}\n").as_bytes())
        };
        let ours = said(&dir.str("qemu-io"), &dir.str("ours.qcow2"));
        assert_eq!(ours, said("qemu-io", &dir.str("theirs.qcow2")), "{command}");
    }
    let same = qemu_img(&["compare", &dir.str("ours.qcow2"), &dir.str("theirs.qcow2")]);
    assert!(same.contains("identical"), "{same}");
    let rules = dir.str("rules.conf");
    std::fs::write(&rules, "[inject-error]\nevent = \"read_aio\"\n").unwrap();
    let (code, _, err) = session(
        &dir.str("qemu-io"),
        &[
            "-c",
            "read 0 512",
            &format!("blkdebug:{rules}:{}", dir.str("ours.qcow2")),
        ],
        b"",
    );
    assert_eq!(code, Some(1));
    assert!(err.iter().any(|l| l.contains("blkdebug rules")), "{err:?}");
}

/// An image stored in the guest disk of another (`file.driver=FORMAT`) reads and
/// writes as qemu-io reads and writes it, by `open -o` and by `json:`.
#[test]
fn nested_formats_are_read_and_written_as_qemu_io_does() {
    let dir = Scratch::new("nested");
    installed_as(&dir, "qemu-io");
    for format in ["qcow2", "qcow"] {
        let base = dir.str(&format!("base.{format}"));
        // The inner image is the outer one's guest disk: a format file stored raw.
        qemu_img(&["create", "-q", "-f", format, &base, "8M"]);
        qemu_io(&[
            "-f",
            format,
            "-c",
            "write -P 42 0 512",
            "-c",
            "write -P 23 512 512",
            &base,
        ]);
        let images = ["ours", "theirs"].map(|who| {
            let image = dir.str(&format!("{who}.{format}"));
            qemu_img(&["convert", "-f", "raw", "-O", format, &base, &image]);
            image
        });
        let said = |program: &str, image: &str| {
            let open =
                format!("open -o driver={format},file.driver={format},file.file.filename={image}");
            let json = format!("json:{{\"driver\":\"{format}\",\"file\":{{\"driver\":\"{format}\",\"file\":{{\"filename\":\"{image}\"}}}}}}");
            let mut all = session(
                program,
                &[
                    "-c",
                    &open,
                    "-c",
                    "read -P 42 0 512",
                    "-c",
                    "read -P 23 512 512",
                    "-c",
                    // A qcow image grows its file to write: the guest disk holding it
                    // cannot grow (both tools fail, in their own words).
                    if format == "qcow2" {
                        "write -P 7 4096 512"
                    } else {
                        "read -P 0 4096 512"
                    },
                ],
                b"",
            );
            let again = session(
                program,
                &[
                    "-c",
                    if format == "qcow2" {
                        "read -P 7 4096 512"
                    } else {
                        "read -P 0 4096 512"
                    },
                    "-c",
                    "read -P 0 8192 512",
                    &json,
                ],
                b"",
            );
            all.1.extend(again.1);
            all.2
                .extend(again.2.iter().map(|l| l.replace(image, "IMAGE")));
            all
        };
        let ours = said(&dir.str("qemu-io"), &images[0]);
        assert_eq!(ours, said("qemu-io", &images[1]), "{format}");
        assert!(!ours.1.iter().any(|l| l.contains("failed")), "{ours:?}");
        let same = qemu_img(&[
            "compare", "-f", format, "-F", format, &images[0], &images[1],
        ]);
        assert!(same.contains("identical"), "{format}: {same}");
    }
}

/// Appends a header extension to a version 3 qcow2 image, moving the backing file name
/// behind it (what QEMU's test tool does to make a header with a repeated extension).
fn add_header_extension(path: &str, magic: u32, data: &[u8]) {
    let mut file = std::fs::read(path).unwrap();
    let mut at = be32(&file, 100) as usize; // header_length: the extensions follow
    loop {
        let (kind, len) = (be32(&file, at as u64), be32(&file, at as u64 + 4) as usize);
        if kind == 0 {
            break;
        }
        at += 8 + len.next_multiple_of(8);
    }
    let name_at = be64(&file, 8) as usize;
    let name = file[name_at..name_at + be32(&file, 16) as usize].to_vec();
    let mut tail = magic.to_be_bytes().to_vec();
    tail.extend((data.len() as u32).to_be_bytes());
    tail.extend(data);
    tail.resize(8 + data.len().next_multiple_of(8), 0);
    tail.extend([0u8; 8]); // the end marker
    let new_name_at = at + tail.len();
    tail.extend(&name);
    file[at..at + tail.len()].copy_from_slice(&tail);
    file[8..16].copy_from_slice(&(new_name_at as u64).to_be_bytes());
    std::fs::write(path, file).unwrap();
}

/// With two backing-format extensions the last one counts, `open -o backing.driver=`
/// overrides it, and rebase -u writes one extension again, as in qemu-io/qemu-img.
#[test]
fn a_repeated_backing_format_extension_reads_as_qemu_reads_it() {
    let dir = Scratch::new("backing-ext");
    for name in ["qemu-img", "qemu-io"] {
        installed_as(&dir, name);
    }
    let base = dir.str("base.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &base, "1M"]);
    let images = ["ours", "theirs"].map(|who| {
        let image = dir.str(&format!("{who}.qcow2"));
        qemu_img(&[
            "create", "-q", "-f", "qcow2", "-b", &base, "-F", "qcow2", &image, "1M",
        ]);
        add_header_extension(&image, 0xe279_2aca, b"foo");
        image
    });
    let steps: Vec<(&str, Vec<&str>)> = vec![
        ("qemu-img", vec!["info"]),
        ("qemu-io", vec!["-c", "read 0 4k"]),
        (
            "qemu-io",
            vec![
                "-c",
                "open -o backing.driver=qcow2 IMAGE",
                "-c",
                "read 0 4k",
            ],
        ),
        ("qemu-img", vec!["rebase", "-u", "-b", &base]),
        ("qemu-img", vec!["rebase", "-u", "-b", &base, "-F", "qcow2"]),
        ("qemu-io", vec!["-c", "read 0 4k"]),
        ("qemu-img", vec!["info"]),
    ];
    for (program, args) in steps {
        let said = |tool: &str, image: &str| {
            let mut all: Vec<String> = args.iter().map(|a| a.replace("IMAGE", image)).collect();
            if !args.iter().any(|a| a.contains("IMAGE")) {
                all.push(image.to_string());
            }
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            let (code, out, err) = session(tool, &all, b"");
            let hide = |lines: Vec<String>| -> Vec<String> {
                lines
                    .iter()
                    .map(|l| l.replace(image, "IMAGE"))
                    .filter(|l| !l.starts_with("disk size"))
                    .collect()
            };
            (code, hide(out), hide(err))
        };
        let ours = said(&dir.str(program), &images[0]);
        assert_eq!(ours, said(program, &images[1]), "{program} {args:?}");
    }
}

/// Converting onto a backing file (`-B`) keeps what the source reads as zeros over
/// that file's data (zero clusters written, not skipped), and writes nothing where
/// the target reads zeros already: the result reads and maps as qemu-img's.
#[test]
fn zeros_over_a_backing_file_survive_convert_b_as_in_qemu_img() {
    let dir = Scratch::new("convert-b-zeros");
    installed_as(&dir, "qemu-img");
    let base = dir.str("base.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &base, "16M"]);
    qemu_io(&["-f", "qcow2", "-c", "write -P 0x11 0 8M", &base]);
    let top = dir.str("top.qcow2");
    qemu_img(&[
        "create", "-q", "-f", "qcow2", "-b", &base, "-F", "qcow2", &top,
    ]);
    qemu_io(&[
        "-f",
        "qcow2",
        "-c",
        "write -z 0 3M",
        "-c",
        "write -P 0 4M 64k",
        "-c",
        "write -z 12M 2M",
        &top,
    ]);
    for extra in [vec![], vec!["-c"]] {
        let outputs = ["ours", "theirs"].map(|who| {
            let out = dir.str(&format!("{who}.qcow2"));
            let program = tool(&dir, who, "qemu-img");
            let mut args = vec!["convert", "-O", "qcow2", "-B", base.as_str(), "-F", "qcow2"];
            args.extend(&extra);
            args.extend([top.as_str(), out.as_str()]);
            run_ok(None, &program, &args);
            out
        });
        let read = qemu_io(&[
            "-f",
            "qcow2",
            "-c",
            "read -P 0 0 3M",
            "-c",
            "read -P 0x11 3M 1M",
            &outputs[0],
        ]);
        assert!(!read.contains("verification failed"), "{extra:?}: {read}");
        let same = qemu_img(&["compare", &outputs[0], &outputs[1]]);
        assert!(same.contains("identical"), "{extra:?}: {same}");
        let maps = outputs.each_ref().map(|o| map_without_offsets(o));
        assert_eq!(maps[0], maps[1], "{extra:?}");
        qemu_img(&["check", &outputs[0]]);
    }
}

/// `commit` of zeros releases the base's clusters, as qemu-img's commit does: the base
/// checks and maps alike afterwards.
#[test]
fn committed_zeros_release_the_base_clusters_as_qemu_img() {
    let dir = Scratch::new("commit-zeros");
    installed_as(&dir, "qemu-img");
    let said = ["ours", "theirs"].map(|who| {
        let (base, top) = (
            dir.str(&format!("{who}.base")),
            dir.str(&format!("{who}.top")),
        );
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=4096",
            &base,
            "2M",
        ]);
        qemu_io(&["-f", "qcow2", "-c", "write -P 1 0 2M", &base]);
        qemu_img(&[
            "create", "-q", "-f", "qcow2", "-b", &base, "-F", "qcow2", &top,
        ]);
        qemu_io(&[
            "-f",
            "qcow2",
            "-c",
            "write -z 0 1M",
            "-c",
            "write -P 0 1536k 64k",
            &top,
        ]);
        let program = tool(&dir, who, "qemu-img");
        let commit = session(&program, &["commit", &top], b"");
        let check = session("qemu-img", &["check", &base], b"");
        let map = map_without_offsets(&base);
        (commit, check, map)
    });
    assert_eq!(said[0], said[1]);
}

/// `rebase -c` writes the clusters it copies compressed, packed as qemu-img packs
/// them, and a format without compression is refused in qemu-img's words.
#[test]
fn rebase_c_compresses_what_it_copies_as_qemu_img() {
    let dir = Scratch::new("rebase-c");
    installed_as(&dir, "qemu-img");
    let raw = dir.str("plain.raw");
    qemu_img(&["create", "-q", "-f", "raw", &raw, "1M"]);
    let args = ["rebase", "-c", "-f", "raw", "-b", "", raw.as_str()];
    assert_eq!(
        session(&dir.str("qemu-img"), &args, b""),
        session("qemu-img", &args, b"")
    );
    let said = ["ours", "theirs"].map(|who| {
        let (base, mid, top) = (
            dir.str(&format!("{who}.base")),
            dir.str(&format!("{who}.mid")),
            dir.str(&format!("{who}.top")),
        );
        qemu_img(&["create", "-q", "-f", "qcow2", &base, "3M"]);
        qemu_img(&[
            "create", "-q", "-f", "qcow2", "-b", &base, "-F", "qcow2", &mid,
        ]);
        qemu_img(&[
            "create", "-q", "-f", "qcow2", "-b", &mid, "-F", "qcow2", &top,
        ]);
        qemu_io(&["-f", "qcow2", "-c", "write -c -P 0xaa 0 1M", &base]);
        qemu_io(&[
            "-f",
            "qcow2",
            "-c",
            "write -c -P 0xbb 1M 1M",
            "-c",
            "write -P 0xdd 2M 32767",
            &mid,
        ]);
        qemu_io(&["-f", "qcow2", "-c", "write -c -P 0xcc 2M 64k", &top]);
        let program = tool(&dir, who, "qemu-img");
        let rebase = session(
            &program,
            &[
                "rebase", "-c", "-f", "qcow2", "-b", &base, "-F", "qcow2", &top,
            ],
            b"",
        );
        let check = session("qemu-img", &["check", &top], b"");
        let read = qemu_io(&[
            "-f",
            "qcow2",
            "-c",
            "read -P 0xbb 1M 1M",
            "-c",
            "read -P 0xcc 2M 64k",
            &top,
        ]);
        assert!(!read.contains("verification failed"), "{who}: {read}");
        (rebase, check)
    });
    assert_eq!(said[0], said[1]);
}

/// qcow2 `preallocation=falloc` reserves the data clusters' blocks, and an external
/// data file is sized to the disk, as qemu-img creates them (file sizes equal, disk
/// usage on the same side of the mark).
#[test]
fn qcow2_preallocation_and_data_files_are_sized_as_qemu_img_sizes_them() {
    use std::os::unix::fs::MetadataExt;
    let dir = Scratch::new("prealloc-sizes");
    installed_as(&dir, "qemu-img");
    for mode in ["off", "metadata", "falloc", "full"] {
        for data_file in [false, true] {
            let made = ["ours", "theirs"].map(|who| {
                let image = dir.str(&format!("{who}.qcow2"));
                let data = dir.str(&format!("{who}.data"));
                let _ = std::fs::remove_file(&data);
                let mut o = format!("preallocation={mode},extent_size_hint=0");
                if data_file {
                    o = format!("data_file={data},{o}");
                }
                let program = tool(&dir, who, "qemu-img");
                run_ok(
                    None,
                    &program,
                    &["create", "-q", "-f", "qcow2", "-o", &o, &image, "16M"],
                );
                let files = if data_file {
                    vec![image, data]
                } else {
                    vec![image]
                };
                files
                    .iter()
                    .map(|f| {
                        let m = std::fs::metadata(f).unwrap();
                        (m.len(), m.blocks() * 512 >= 8 << 20)
                    })
                    .collect::<Vec<_>>()
            });
            assert_eq!(made[0], made[1], "{mode} data_file={data_file}");
        }
    }
}

/// qemu-io's `read -v` dump: a short last line unpadded, only letters and digits shown.
#[test]
fn hexdumps_are_qemu_ios() {
    let dir = Scratch::new("hexdump");
    installed_as(&dir, "qemu-io");
    let image = dir.str("h.raw");
    qemu_img(&["create", "-q", "-f", "raw", &image, "64k"]);
    qemu_io(&[
        "-f",
        "raw",
        "-c",
        "write -P 0x21 0 1",
        "-c",
        "write -P 0x20 1 1",
        "-c",
        "write -P 0x41 2 1",
        "-c",
        "write -P 0x7e 3 1",
        &image,
    ]);
    let args = [
        "-f",
        "raw",
        "-c",
        "read -v 0 5",
        "-c",
        "read -v 2 37",
        "-c",
        "read -v 65534 2",
        &image,
    ];
    let ours = session(&dir.str("qemu-io"), &args, b"");
    assert_eq!(ours, session("qemu-io", &args, b""));
    assert_eq!(ours.1[0], "00000000:  21 20 41 7e 00  ..A..");
}

/// Sizes take their suffix in either case, as qemu_strtosz reads them.
#[test]
fn lowercase_size_suffixes_are_qemus() {
    let dir = Scratch::new("suffixes");
    for name in ["qemu-img", "qemu-io"] {
        installed_as(&dir, name);
    }
    let cases = [
        ("qemu-img", vec!["create", "-f", "qcow2", "IMAGE", "1m"]),
        (
            "qemu-io",
            vec![
                "-f",
                "qcow2",
                "-c",
                "write -P 1 64k 64k",
                "-c",
                "alloc 0 1m",
                "-c",
                "alloc 512k 5p",
                "IMAGE",
            ],
        ),
    ];
    for (program, args) in cases {
        let said = |tool: &str, image: &str| {
            let args: Vec<String> = args.iter().map(|a| a.replace("IMAGE", image)).collect();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (code, out, err) = session(tool, &args, b"");
            (code, out.join("\n").replace(image, "IMAGE"), err)
        };
        let ours = said(&dir.str(program), &dir.str("ours.qcow2"));
        assert_eq!(
            ours,
            said(program, &dir.str("theirs.qcow2")),
            "{program} {args:?}"
        );
        assert_eq!(ours.0, Some(0), "{ours:?}");
    }
}

/// A raw image's `offset`/`size` options window its file, `reopen -o` moves the
/// window, `reopen -r` makes it read-only, and unchangeable options are refused in
/// qemu-io's words.
#[test]
fn raw_windows_and_reopen_are_qemu_ios() {
    let dir = Scratch::new("raw-window");
    installed_as(&dir, "qemu-io");
    let said = |program: &str, image: &str| {
        qemu_img(&["create", "-q", "-f", "raw", image, "4k"]);
        let json = format!("json:{{\"driver\":\"raw\",\"offset\":\"512\",\"size\":\"512\",\"file\":{{\"driver\":\"file\",\"filename\":\"{image}\"}}}}");
        let input = "write -P 10 0 512\nwrite -P 10 511 2\nreopen -o driver=raw,offset=8192\nread -P 10 0 512\nreopen -o driver=raw,offset=1536,size=1024\nwrite -P 11 0 1024\nread -P 11 1023 1\nwrite 1024 1\nreopen -r\nwrite 0 1\nreopen -o node-name=x\n";
        let mut all = session(program, &[&json], input.as_bytes());
        all.2 = all.2.iter().map(|l| l.replace(image, "IMAGE")).collect();
        let dump = qemu_io(&[
            "-f",
            "raw",
            "-c",
            "read -v 508 8",
            "-c",
            "read -v 1532 8",
            "-c",
            "read -v 2556 8",
            image,
        ]);
        (
            all,
            dump.lines()
                .filter(|l| !l.contains("ops;"))
                .map(String::from)
                .collect::<Vec<_>>(),
        )
    };
    let ours = said(&dir.str("qemu-io"), &dir.str("ours.raw"));
    assert_eq!(ours, said("qemu-io", &dir.str("theirs.raw")));
}

/// `detect-zeroes` turns writes of zeros into zero writes (unmapping with
/// `discard=unmap`), and refuses unmap without it, as qemu-io does.
#[test]
fn detect_zeroes_is_qemus() {
    let dir = Scratch::new("detect-zeroes");
    installed_as(&dir, "qemu-io");
    for opts in [
        "detect-zeroes=on",
        "discard=unmap,detect-zeroes=unmap",
        "detect-zeroes=unmap",
        "discard=ignore,detect-zeroes=unmap",
        "detect-zeroes=off",
    ] {
        let said = |program: &str, image: &str| {
            qemu_img(&["create", "-q", "-f", "qcow2", image, "1M"]);
            qemu_io(&["-f", "qcow2", "-c", "write -P 1 0 128k", image]);
            let spec = format!("driver=qcow2,file.filename={image},{opts}");
            let (code, out, err) = session(
                program,
                &[
                    "--image-opts",
                    "-c",
                    "write -P 0 0 64k",
                    "-c",
                    "write -P 0 256k 64k",
                    &spec,
                ],
                b"",
            );
            let map = map_without_offsets(image);
            (code, out, err, map)
        };
        let ours = said(&dir.str("qemu-io"), &dir.str("ours.qcow2"));
        assert_eq!(ours, said("qemu-io", &dir.str("theirs.qcow2")), "{opts}");
    }
}

/// `convert -S`: 0 allocates every byte (zeros written as data), a size keeps zero
/// runs as holes, a bad size is refused in qemu-img's words; a null-co source reads
/// as zeros. The outputs map as qemu-img's do.
#[test]
fn convert_sparse_sizes_and_null_sources_are_qemu_imgs() {
    let dir = Scratch::new("convert-s");
    installed_as(&dir, "qemu-img");
    let source = dir.str("src.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &source, "1M"]);
    qemu_io(&[
        "-f",
        "qcow2",
        "-c",
        "write -P 5 64k 8k",
        "-c",
        "write -P 0 256k 64k",
        &source,
    ]);
    let null = "json:{'driver': 'null-co', 'size': 1048576, 'read-zeroes': true}";
    for format in ["raw", "qcow2"] {
        for (input, sparse) in [
            (source.as_str(), "0"),
            (source.as_str(), "512"),
            (null, "512"),
            (null, "0"),
            (source.as_str(), "100"),
        ] {
            let said = |program: &str, out: &str| {
                let _ = std::fs::remove_file(out);
                let run = session(
                    program,
                    &["convert", "-O", format, "-S", sparse, input, out],
                    b"",
                );
                let map = match run.0 {
                    Some(0) => qemu_img(&["map", "-f", format, out]).replace(out, "OUT"),
                    _ => String::new(),
                };
                let map: Vec<String> = map
                    .lines()
                    .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
                    .collect();
                (run, map)
            };
            let ours = said(&dir.str("qemu-img"), &dir.str("ours.out"));
            assert_eq!(
                ours,
                said("qemu-img", &dir.str("theirs.out")),
                "{format} {input} -S {sparse}"
            );
        }
    }
}

/// Growing an overlay whose last cluster is partial keeps what the backing file gives
/// before the old end (a data bug: the backing file was not opened, the cluster read
/// as zeros), and qcow2 resize preallocation allocates the grown range, so writing it
/// later does not grow the file: as qemu-img resize does.
#[test]
fn resize_keeps_backing_data_and_preallocates_as_qemu_img() {
    let dir = Scratch::new("resize-backing");
    installed_as(&dir, "qemu-img");
    let base = dir.str("base.raw");
    qemu_img(&["create", "-q", "-f", "raw", &base, "128k"]);
    qemu_io(&["-f", "raw", "-c", "write -P 1 0 128k", &base]);
    for prealloc in ["off", "metadata", "full"] {
        let said = ["ours", "theirs"].map(|who| {
            let image = dir.str(&format!("{who}.qcow2"));
            qemu_img(&[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "raw",
                "-b",
                &base,
                "-o",
                "cluster_size=64k",
                &image,
                "31k",
            ]);
            let program = tool(&dir, who, "qemu-img");
            let p = format!("--preallocation={prealloc}");
            let resize = session(&program, &["resize", "-f", "qcow2", &p, &image, "96k"], b"");
            let read = qemu_io(&[
                "-f",
                "qcow2",
                "-c",
                "read -P 1 0 31k",
                "-c",
                "read -P 0 31k 65k",
                &image,
            ]);
            assert!(
                !read.contains("verification failed"),
                "{who} {prealloc}: {read}"
            );
            let before = std::fs::metadata(&image).unwrap().len();
            qemu_io(&["-f", "qcow2", "-c", "write -P 7 64k 32k", &image]);
            let grew = std::fs::metadata(&image).unwrap().len() > before;
            (resize, grew)
        });
        assert_eq!(said[0], said[1], "{prealloc}");
    }
}

/// The magics of a version 3 qcow2 header's extensions, in order.
fn extension_magics(path: &str) -> Vec<u32> {
    let file = std::fs::read(path).unwrap();
    let mut at = be32(&file, 100) as u64;
    let mut out = Vec::new();
    while be32(&file, at) != 0 {
        out.push(be32(&file, at));
        at += 8 + (be32(&file, at + 4) as u64).next_multiple_of(8);
    }
    out
}

/// A LUKS qcow2 image's crypto extension precedes the feature table, as qemu-img
/// writes them, and check names an --image-opts image by its option string.
#[test]
fn luks_header_extensions_and_check_names_are_qemu_imgs() {
    let dir = Scratch::new("luks-exts");
    installed_as(&dir, "qemu-img");
    let secret = "secret,id=sec0,data=123456";
    let images = ["ours", "theirs"].map(|who| {
        let image = dir.str(&format!("{who}.qcow2"));
        let program = tool(&dir, who, "qemu-img");
        run_ok(
            None,
            &program,
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "--object",
                secret,
                "-o",
                "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
                &image,
                "1M",
            ],
        );
        image
    });
    assert_eq!(extension_magics(&images[0]), extension_magics(&images[1]));
    for image in &images {
        // Without its crypto extension the image cannot be opened.
        let mut file = std::fs::read(image).unwrap();
        let at = be32(&file, 100) as usize;
        assert_eq!(be32(&file, at as u64), 0x0537_be77, "crypto header first");
        let len = 8 + (be32(&file, at as u64 + 4) as usize).next_multiple_of(8);
        // Zeros in its place end the extension list there.
        file[at..at + len].fill(0);
        std::fs::write(image, &file).unwrap();
    }
    let said = |program: &str, image: &str| {
        let spec = format!("file.filename={image},encrypt.key-secret=sec0");
        let (code, out, err) = session(
            program,
            &["check", "--object", secret, "--image-opts", &spec],
            b"",
        );
        (
            code,
            out,
            err.iter()
                .map(|l| l.replace(image, "IMAGE"))
                .collect::<Vec<_>>(),
        )
    };
    assert_eq!(
        said(&dir.str("qemu-img"), &images[0]),
        said("qemu-img", &images[1])
    );
}

/// Rebase writes zeros as zero clusters where no old backing file reached, and as
/// data where an old backing file read zeros: the overlay maps as qemu-img's does.
#[test]
fn rebase_writes_zeros_as_qemu_img_writes_them() {
    let dir = Scratch::new("rebase-zeros");
    installed_as(&dir, "qemu-img");
    for with_old in [false, true] {
        let said = ["ours", "theirs"].map(|who| {
            let p = |n: &str| dir.str(&format!("{who}.{n}"));
            qemu_img(&["create", "-q", "-f", "qcow2", &p("old"), "384k"]);
            qemu_img(&["create", "-q", "-f", "qcow2", &p("new"), "384k"]);
            qemu_io(&[
                "-f",
                "qcow2",
                "-c",
                "write -P 0x11 0 64k",
                "-c",
                "write -P 0x11 128k 64k",
                "-c",
                "write -P 0x11 256k 64k",
                &p("new"),
            ]);
            match with_old {
                true => qemu_img(&[
                    "create",
                    "-q",
                    "-f",
                    "qcow2",
                    "-b",
                    &p("old"),
                    "-F",
                    "qcow2",
                    &p("top"),
                    "384k",
                ]),
                false => qemu_img(&["create", "-q", "-f", "qcow2", &p("top"), "384k"]),
            };
            qemu_io(&["-f", "qcow2", "-c", "write -P 0x22 0 128k", &p("top")]);
            let program = tool(&dir, who, "qemu-img");
            let new = p("new");
            let rebase = session(
                &program,
                &["rebase", "-b", &new, "-F", "qcow2", &p("top")],
                b"",
            );
            let map = map_without_offsets(&p("top"));
            (rebase, map)
        });
        assert_eq!(said[0], said[1], "old backing: {with_old}");
    }
}

/// `rebase -u -F host_device` records the protocol driver's name, as qemu-img does:
/// the header clusters come out byte for byte the same.
#[test]
fn unsafe_rebase_records_protocol_drivers_as_qemu_img() {
    let dir = Scratch::new("rebase-driver");
    installed_as(&dir, "qemu-img");
    let headers = ["ours", "theirs"].map(|who| {
        let image = dir.str(&format!("{who}.qcow2"));
        qemu_img(&["create", "-q", "-f", "qcow2", &image, "64M"]);
        let program = tool(&dir, who, "qemu-img");
        let args = [
            "rebase",
            "-u",
            "-b",
            "/some/backing/file/path",
            "-F",
            "host_device",
            &image,
        ];
        let said = session(&program, &args, b"");
        (said, std::fs::read(&image).unwrap()[..4096].to_vec())
    });
    assert_eq!(headers[0], headers[1]);
}

/// `help` lists qemu-io's own synopsis line for every command we run (no command it
/// lacks), `help NAME` starts with that line, an unknown topic fails, `quit` ends the
/// session without a last prompt, and `sigraise` ends the program by that signal.
#[test]
fn io_help_quit_and_sigraise_are_qemu_ios() {
    let dir = Scratch::new("io-help");
    let image = dir.str("h.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &image, "1M"]);
    let listing = |program: &str| session(program, &["-c", "help"], b"");
    let ours = listing(&installed_as(&dir, "qemu-io"));
    let theirs = listing("qemu-io");
    assert_eq!((ours.0, &ours.2), (theirs.0, &theirs.2));
    let commands: Vec<&String> = ours.1.iter().filter(|l| l.contains(" -- ")).collect();
    assert!(commands.len() >= 20, "{:?}", ours.1);
    for line in &ours.1 {
        assert!(theirs.1.contains(line), "qemu-io's help lacks {line:?}");
    }
    for line in commands {
        let name = line.split_whitespace().next().unwrap();
        let first = |program: &str| session(program, &["-c", &format!("help {name}")], b"").1;
        assert_eq!(
            first(&dir.str("qemu-io"))[0],
            first("qemu-io")[0],
            "help {name}"
        );
    }
    let script = "help nosuch\nhelp sleep\nq\nread 0 512\n";
    for args in [
        vec![image.as_str()],
        vec!["-c", "help nosuch", "-c", "read 0 1", &image],
    ] {
        let input = if args.len() == 1 {
            script.as_bytes()
        } else {
            b""
        };
        assert_eq!(
            session(&dir.str("qemu-io"), &args, input),
            session("qemu-io", &args, input),
            "{args:?}"
        );
    }
    assert_eq!(
        session(&dir.str("qemu-io"), &["-c", "sigraise 15", &image], b""),
        session("qemu-io", &["-c", "sigraise 15", &image], b""),
    );
}

/// `-o help` and `-o ?` list a format's options as qemu-img lists them (with the file
/// protocol's when the target is named; amend's for amend), option lists qemu-img
/// refuses are refused in its words, and a missing file name is reported as it reports
/// it: the same output and exit code from both, command by command.
#[test]
fn option_help_and_option_lists_are_qemu_imgs() {
    let dir = Scratch::new("option-help");
    let ours = installed_as(&dir, "qemu-img");
    let image = dir.str("t.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &image, "1M"]);
    let out = dir.str("out.img");
    let cases: Vec<Vec<&str>> = vec![
        vec!["create", "-f", "qcow2", "-o", "help"],
        vec!["create", "-f", "qcow2", "-o", "?", &out, "1M"],
        vec![
            "create",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=4k,help",
            &out,
            "1M",
        ],
        vec![
            "create",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=4k",
            "-o",
            "help",
            &out,
        ],
        vec!["create", "-f", "qcow", "-o", "help"],
        vec!["create", "-f", "qcow", "-o", "help", &out],
        vec!["create", "-f", "luks", "-o", "help"],
        vec!["create", "-f", "raw", "-o", "help", &out],
        vec!["create", "-o", "help"],
        vec!["create", "-f", "bochs", "-o", "help"],
        vec![
            "create",
            "-f",
            "qcow2",
            "-o",
            "backing_file=x,",
            "-o",
            "help",
            &out,
        ],
        vec!["create", "-f", "qcow2", "-o", ",help", &out],
        vec!["create", "-f", "qcow2", "-o", ",,", "-o", "help", &out],
        vec!["create", "-f", "qcow2"],
        vec!["convert", "-O", "qcow2", "-o", "help"],
        vec!["convert", "-O", "qcow2", "-o", "help", &image],
        vec!["convert", "-O", "qcow2", "-o", "help", &image, &out],
        vec!["convert", "-o", "help"],
        vec!["convert", "-O", "bochs", "-o", "help"],
        vec!["convert", "-O", "qcow2", &image],
        vec!["convert", "-C", "-S", "4k", "-O", "qcow2", &image, &out],
        vec![
            "convert",
            "-C",
            "-c",
            "--salvage",
            "-O",
            "qcow2",
            &image,
            &out,
        ],
        vec!["convert", "-C", "--salvage", "-O", "qcow2", &image, &out],
        vec!["amend", "-f", "qcow2", "-o", "help", &image],
        vec!["amend", "-o", "?", &image],
        vec!["amend", "-f", "qcow2", "-o", "help"],
        vec!["amend", "-f", "luks", "-o", "help"],
        vec!["amend", "-o", "help"],
        vec!["amend", "-f", "raw", "-o", "help", &image],
        vec!["amend", "-f", "bochs", "-o", "help"],
    ];
    for args in cases {
        let theirs = session("qemu-img", &args, b"");
        let mine = session(&ours, &args, b"");
        assert_eq!(mine, theirs, "{args:?}");
        assert!(!std::path::Path::new(&out).exists(), "{args:?} wrote {out}");
    }
}

/// Every option qemu-img 10's `SUB --help` lists, short and long spelling, is one this
/// program takes under the same spellings (installed as qemu-img): none is refused as
/// unknown, and our help gives the short and the long spelling to the same option.
#[test]
fn every_option_qemu_img_help_lists_is_taken_in_both_spellings() {
    let dir = Scratch::new("long-options");
    let ours = installed_as(&dir, "qemu-img");
    let subcommands = [
        "amend", "bench", "bitmap", "check", "commit", "compare", "convert", "create", "dd",
        "info", "map", "measure", "snapshot", "rebase", "resize",
    ];
    let mut missing = Vec::new();
    for sub in subcommands {
        let theirs = session("qemu-img", &[sub, "--help"], b"").1;
        let help = session(&ours, &[sub, "--help"], b"").1;
        for line in &theirs {
            let words: Vec<&str> = line.split_whitespace().collect();
            let (short, long, rest) = match words.as_slice() {
                [s, l, rest @ ..] if s.len() == 3 && s.starts_with('-') && l.starts_with("--") => {
                    (Some(&s[..2]), *l, rest)
                }
                [l, rest @ ..] if l.starts_with("--") && l.len() > 2 => (None, *l, rest),
                _ => continue,
            };
            let long = long.trim_end_matches(',');
            if long == "--help" {
                continue;
            }
            // A value follows the spelling in the help (FMT, "human|json", …).
            let value = rest
                .first()
                .filter(|w| !w.starts_with('-') && !w.starts_with('('));
            let refused = |args: &[&str]| {
                let (_, out, err) = session(&ours, args, b"");
                let text = format!("{}\n{}", out.join("\n"), err.join("\n"));
                text.contains("unexpected argument") || text.contains("unrecognized")
            };
            let spelled: Vec<String> = match value {
                Some(_) => vec![format!("{long}=x")],
                None => vec![long.to_string()],
            };
            let mut args = vec![sub];
            args.extend(spelled.iter().map(String::as_str));
            if refused(&args) {
                missing.push(format!("{sub} {long}"));
                continue;
            }
            if let Some(short) = short {
                // Our help's entry for the short spelling names the long one too.
                let entry: Vec<&String> = help
                    .iter()
                    .skip_while(|l| !l.trim_start().starts_with(&format!("{short},")))
                    .take_while(|l| !l.trim().is_empty())
                    .collect();
                // (A spelling of theirs may be an abbreviation: amend's "--progres".)
                let names_long = entry.first().is_some_and(|first| first.contains(long))
                    || entry
                        .iter()
                        .any(|l| l.contains("[alias") && l.contains(&long[2..]));
                if !names_long {
                    missing.push(format!("{sub} {short}/{long}"));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "not taken as qemu-img takes them: {missing:?}"
    );
}

/// `amend` of the refcount width (both ways, with QEMU's refusals: a refcount the new
/// width cannot hold, compat=0.10 with a width other than 16), of the data file's name
/// and raw flag, and of the backing file (only as it is): the same exit codes and
/// messages as qemu-img's on copies of one image, the same refcount width afterwards,
/// a clean `qemu-img check`, the same guest data. Create's option refusals too.
#[test]
fn amend_refcount_bits_data_file_and_create_refusals_are_qemu_imgs() {
    let dir = Scratch::new("amend-refcounts");
    let ours = installed_as(&dir, "qemu-img");
    let bits = |image: &str| {
        qemu_img(&["info", image])
            .lines()
            .find(|l| l.contains("refcount bits"))
            .map(str::to_string)
    };
    let (a, b) = (dir.str("a.qcow2"), dir.str("b.qcow2"));
    qemu_img(&["create", "-q", "-f", "qcow2", &a, "64M"]);
    qemu_io(&["-c", "write -P 7 16M 32M", &a]);
    std::fs::copy(&a, &b).unwrap();
    let steps: Vec<Vec<&str>> = vec![
        vec!["amend", "-o", "refcount_bits=1", "IMG"],
        vec!["amend", "-o", "refcount_bits=64", "IMG"],
        vec!["amend", "-o", "compat=0.10", "IMG"],
        vec!["amend", "-o", "compat=0.10,refcount_bits=16", "IMG"],
        vec!["amend", "-o", "refcount_bits=8", "IMG"],
        vec!["amend", "-o", "compat=1.1", "IMG"],
        vec!["amend", "-o", "refcount_bits=32,compat=0.10", "IMG"],
        vec!["amend", "-o", "refcount_bits=3", "IMG"],
        vec!["snapshot", "-c", "foo", "IMG"],
        vec!["amend", "-o", "refcount_bits=1", "IMG"],
        vec!["amend", "-o", "refcount_bits=2", "IMG"],
        vec!["amend", "-o", "data_file=x.raw", "IMG"],
        vec!["amend", "-o", "data_file_raw=on", "IMG"],
        vec!["amend", "-o", "data_file_raw=off", "IMG"],
        vec!["amend", "-o", "backing_file=other.qcow2", "IMG"],
    ];
    for step in &steps {
        let run = |tool: &str, image: &str| {
            let args: Vec<&str> = step
                .iter()
                .map(|w| if *w == "IMG" { image } else { w })
                .collect();
            let (code, out, err) = session(tool, &args, b"");
            let err: Vec<String> = err.iter().map(|l| l.replace(image, "IMG")).collect();
            (
                code,
                out,
                err,
                bits(image),
                session("qemu-img", &["check", image], b"").0,
            )
        };
        assert_eq!(run(&ours, &a), run("qemu-img", &b), "{step:?}");
        assert_eq!(qemu_img(&["compare", &a, &b]), "Images are identical.\n");
    }
    assert_eq!(bits(&a).as_deref(), Some("    refcount bits: 2"));

    // An image with an external data file: renamed, its raw flag cleared.
    let (c, d) = (dir.str("c.qcow2"), dir.str("d.qcow2"));
    for (image, data) in [(&c, "c.data"), (&d, "d.data")] {
        let opts = format!("data_file={},data_file_raw=on", dir.str(data));
        qemu_img(&["create", "-q", "-f", "qcow2", "-o", &opts, image, "1M"]);
    }
    for step in [
        vec!["amend", "-o", "data_file_raw=off", "IMG"],
        vec!["amend", "-o", "data_file_raw=on", "IMG"],
        vec!["amend", "-o", "data_file=renamed.data", "IMG"],
    ] {
        let run = |tool: &str, image: &str| {
            let args: Vec<&str> = step
                .iter()
                .map(|w| if *w == "IMG" { image } else { w })
                .collect();
            let (code, _, err) = session(tool, &args, b"");
            let info = qemu_img(&["info", "-U", image]).replace(image, "IMG");
            let info: Vec<String> = info
                .lines()
                .filter(|l| l.contains("data file") || l.contains("raw"))
                .map(|l| l.replace("c.data", "X").replace("d.data", "X"))
                .collect();
            (
                code,
                err.iter()
                    .map(|l| l.replace(image, "IMG"))
                    .collect::<Vec<_>>(),
                info,
            )
        };
        assert_eq!(run(&ours, &c), run("qemu-img", &d), "{step:?}");
    }

    // Create's option refusals name the image, some after the Formatting line.
    let target = dir.str("new.qcow2");
    for opts in [
        "refcount_bits=0",
        "refcount_bits=42",
        "refcount_bits=-1",
        "refcount_bits=abc",
        "compat=0.10,refcount_bits=1",
        "compat=0.10,lazy_refcounts=on",
        "compat=0.10,extended_l2=on",
        "compat=0.10,compression_type=zstd",
        "compat=9",
        "lazy_refcounts=maybe",
        "nonsense=1",
    ] {
        let args = ["create", "-f", "qcow2", "-o", opts, &target, "1M"];
        let mine = session(&ours, &args, b"");
        let _ = std::fs::remove_file(&target);
        let theirs = session("qemu-img", &args, b"");
        let _ = std::fs::remove_file(&target);
        assert_eq!(mine, theirs, "{opts}");
    }
}

/// Usage errors in getopt's words with qemu-img's pointer to its help: an unknown long
/// or short option, an option missing its value (either spelling), an unknown command,
/// no command at all; exit code 1 for each, as qemu-img's.
#[test]
fn usage_errors_are_qemu_imgs() {
    let dir = Scratch::new("usage-errors");
    let ours = installed_as(&dir, "qemu-img");
    for args in [
        &["info", "--foo", "x"][..],
        &["info", "-z", "x"],
        &["info", "-f"],
        &["info", "--format"],
        &["convert", "-O"],
        &["check", "--repair"],
        &["frob"],
        &[],
    ] {
        assert_eq!(
            session(&ours, args, b""),
            session("qemu-img", args, b""),
            "{args:?}"
        );
    }
}

/// `-p` installed as qemu-img prints qemu-img's lines on standard output: "(0.00/100%)"
/// first, then percentages at least a whole step apart, always rising, each ended by a
/// carriage return, 100% twice and a newline at the end, exactly as qemu-img frames
/// its own (where the steps fall depends on how each tool walks the image).
#[test]
fn progress_lines_are_qemu_imgs() {
    let dir = Scratch::new("progress-lines");
    let ours = installed_as(&dir, "qemu-img");
    let source = dir.str("p.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &source, "128M"]);
    qemu_io(&[
        "-c",
        "write 0 1M",
        "-c",
        "write 2M 1M",
        "-c",
        "write 32M 1M",
        &source,
    ]);
    let lines = |tool: &str, out: &str| {
        let stdout = run_ok(None, tool, &["convert", "-p", "-O", "qcow2", &source, out]);
        assert!(stdout.ends_with("\r\n"), "{stdout:?}");
        let percents: Vec<f64> = stdout
            .trim_end_matches('\n')
            .split_terminator('\r')
            .map(|l| {
                let number = l
                    .strip_prefix("    (")
                    .and_then(|l| l.strip_suffix("/100%)"))
                    .unwrap_or_else(|| panic!("{tool}: {l:?}"));
                assert_eq!(number.split('.').nth(1).map(str::len), Some(2), "{l:?}");
                number.parse().unwrap()
            })
            .collect();
        percents
    };
    let (mine, theirs) = (
        lines(&ours, &dir.str("a.qcow2")),
        lines("qemu-img", &dir.str("b.qcow2")),
    );
    for p in [&mine, &theirs] {
        assert_eq!(p.first(), Some(&0.0));
        assert_eq!(&p[p.len() - 2..], [100.0, 100.0]);
        assert!(p.windows(2).all(|w| w[1] >= w[0]), "{p:?}");
        assert!(
            p[..p.len() - 1]
                .windows(2)
                .all(|w| w[1] - w[0] >= 1.0 || w[1] == 100.0),
            "{p:?}"
        );
    }
    assert!(mine.len() > 3);
}

/// Several sources are concatenated as qemu-img concatenates them (raw, qcow2, and
/// compressed across sources that meet inside a cluster), refused with a backing file;
/// and -S N keeps holes only in whole zero N-byte blocks for small clusters: the same
/// guest data and the same map as qemu-img's output.
#[test]
fn convert_concatenates_and_keeps_sparse_blocks_as_qemu_img() {
    let dir = Scratch::new("convert-many");
    let ours = installed_as(&dir, "qemu-img");
    let parts: Vec<String> = (1..=3)
        .map(|i| dir.str(&format!("part{i}.qcow2")))
        .collect();
    for (i, part) in parts.iter().enumerate() {
        // Sizes that do not end on cluster boundaries: 1 MiB less 1 KiB, and so on.
        let size = format!("{}", (i as u64 + 1) * (1 << 20) - 1024);
        qemu_img(&["create", "-q", "-f", "qcow2", part, &size]);
        let at = format!("{}k", 64 * i);
        qemu_io(&["-c", &format!("write -P {} {at} 64k", i + 1), part]);
    }
    let small = dir.str("small.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=1k",
        &small,
        "64M",
    ]);
    let writes = "write -P 0 0 64k|write 0 1k|write 8k 1k|write 17k 1k";
    for command in writes.split('|') {
        qemu_io(&["-c", command, &small]);
    }
    let p: Vec<&str> = parts.iter().map(String::as_str).collect();
    // Each case's words; "P1".."P3" and "SMALL" stand for the sources.
    let cases: Vec<Vec<&str>> = [
        "-O raw P1 P2 P3",
        "-O qcow2 P1 P2 P3",
        "-c -O qcow2 P1 P2 P3",
        "-O qcow2 -B P1 -F qcow2 P2 P3",
        "-O qcow2 -o cluster_size=1k -S 4k SMALL",
        "-O qcow2 -o cluster_size=1k -S 8k SMALL",
        "-O qcow2 -o cluster_size=1k -c -S 0 SMALL",
    ]
    .iter()
    .map(|case| {
        let words = case.split_whitespace().map(|w| match w {
            "P1" => p[0],
            "P2" => p[1],
            "P3" => p[2],
            "SMALL" => small.as_str(),
            w => w,
        });
        std::iter::once("convert").chain(words).collect()
    })
    .collect();
    for case in cases {
        let outcome = |tool: &str, out: &str| {
            let mut args = case.clone();
            args.push(out);
            let ran = session(tool, &args, b"");
            let map = match ran.0 {
                Some(0) => map_without_offsets(out).join("\n").replace(out, "OUT"),
                _ => String::new(),
            };
            (ran, map)
        };
        let (a, b) = (dir.str("a.out"), dir.str("b.out"));
        assert_eq!(outcome(&ours, &a), outcome("qemu-img", &b), "{case:?}");
        if std::path::Path::new(&b).exists() {
            assert_eq!(qemu_img(&["compare", &a, &b]), "Images are identical.\n");
        }
        let _ = (std::fs::remove_file(&a), std::fs::remove_file(&b));
    }
}

/// `--version` (and -V) installed as a QEMU tool begins as that tool's line does, with
/// the QEMU release cowimg follows, so that scripts reading the version find it; the
/// trace option qemu-img takes before its command is accepted.
#[test]
fn version_lines_are_qemus() {
    let dir = Scratch::new("versions");
    for tool in ["qemu-img", "qemu-io", "qemu-nbd"] {
        let ours = installed_as(&dir, tool);
        for flag in ["--version", "-V"] {
            let first = |program: &str| {
                let out = run_ok(None, program, &[flag]);
                let line = out.lines().next().unwrap_or_default().to_string();
                // Up to the release: "qemu-img version 10.0.2", "qemu-nbd 10.0.2".
                line.split(" (").next().unwrap_or_default().to_string()
            };
            assert_eq!(first(&ours), first(tool), "{tool} {flag}");
        }
    }
    let image = dir.str("t.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &image, "1M"]);
    let ours = run_ok(None, &dir.str("qemu-img"), &["-T", "foo", "info", &image]);
    assert!(ours.contains("virtual size: 1 MiB"), "{ours}");

    // --help ends with the formats, as qemu-img's does: each of ours is one of QEMU's
    // (UML cow aside, which QEMU dropped), and the ones scripts look for are there.
    let formats = |program: &str| -> Vec<String> {
        let help = run_ok(None, program, &["--help"]);
        let section = help
            .split("Supported image formats:")
            .nth(1)
            .unwrap_or_default();
        section
            .split("\n\n")
            .find(|s| !s.trim().is_empty())
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    let (mine, theirs) = (formats(&dir.str("qemu-img")), formats("qemu-img"));
    for f in &mine {
        assert!(
            theirs.contains(f) || f == "cow",
            "{f} is not one of QEMU's {theirs:?}"
        );
    }
    for f in ["qcow2", "qcow", "raw", "luks", "file"] {
        assert!(mine.iter().any(|m| m == f), "{f} missing from {mine:?}");
    }
}

/// Installed as qemu-img, `--help` has qemu-img's layout: the top level lists every
/// command qemu-img lists ("name - what it does") between the same section headings;
/// each command's help has qemu-img's headings, its usage line naming the command, and
/// every option spelled as qemu-img spells it ("-f, --format FMT").
#[test]
fn help_texts_have_qemu_imgs_layout() {
    let dir = Scratch::new("help-layout");
    let ours = installed_as(&dir, "qemu-img");
    let headings = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with(' ') && l.ends_with(':') && !l.ends_with(".  Usage:"))
            .map(str::to_string)
            .collect()
    };
    let top = |program: &str| run_ok(None, program, &["--help"]);
    let (mine, theirs) = (top(&ours), top("qemu-img"));
    let commands = |text: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| {
                l.strip_prefix("  ")?
                    .split_once(" - ")
                    .map(|(c, _)| c.to_string())
            })
            .collect()
    };
    for command in commands(&theirs) {
        assert!(
            commands(&mine).contains(&command),
            "{command} missing:\n{mine}"
        );
    }
    assert!(headings(&mine).contains(&"Supported image formats:".to_string()));
    for sub in commands(&theirs) {
        let help = |program: &str| run_ok(None, program, &[sub.as_str(), "--help"]);
        let (mine, theirs) = (help(&ours), help("qemu-img"));
        assert_eq!(headings(&mine), headings(&theirs), "{sub}");
        assert!(
            mine.contains(&format!("  qemu-img {sub} ")),
            "{sub}:\n{mine}"
        );
        let spelled = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|l| l.starts_with("  -") && !l.starts_with("  --") && l.contains(", --"))
                .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
                .collect()
        };
        for option in spelled(&theirs) {
            // (amend's "--progres" is qemu-img's own spelling of --progress; a long
            // spelling may be another's alias, listed with it.)
            let found = spelled(&mine).iter().any(|o| o.starts_with(&option));
            let long = option.split_whitespace().nth(1).unwrap_or_default();
            let aliased = mine
                .lines()
                .any(|l| l.contains("[alias") && l.contains(long));
            assert!(found || aliased, "{sub}: {option} missing:\n{mine}");
        }
    }
}

/// A cluster referenced more often than the refcount width can count: check reports
/// each reference past the widest refcount as an error, with qemu-img's pointer to
/// amend, and repairs nothing, as qemu-img does; snapshot creation that would overflow
/// fails naming the snapshot.
#[test]
fn refcount_overflow_is_checked_as_qemu_img_checks_it() {
    let dir = Scratch::new("refcount-overflow");
    let ours = installed_as(&dir, "qemu-img");
    let runs = |tool: &str, name: &str| {
        let image = dir.str(name);
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "refcount_bits=1",
            &image,
            "64M",
        ]);
        qemu_io(&["-c", "write 0 64k", &image]);
        // The L2 table is at 0x40000, the data cluster at 0x50000: a second entry points
        // at that cluster too.
        let mut bytes = std::fs::read(&image).unwrap();
        bytes[0x40008..0x40010].copy_from_slice(&0x8000_0000_0005_0000u64.to_be_bytes());
        std::fs::write(&image, bytes).unwrap();
        let plain = session(tool, &["check", &image], b"");
        let repair = session(tool, &["check", "-r", "all", &image], b"");
        let (code, _, err) = session(tool, &["snapshot", "-c", "s", &image], b"");
        (
            plain,
            repair,
            code,
            err.first()
                .map(|l| l.split(": ").take(2).collect::<Vec<_>>().join(": ")),
        )
    };
    let mine = runs(&ours, "a.qcow2");
    let theirs = runs("qemu-img", "b.qcow2");
    let strip = |s: (Option<i32>, Vec<String>, Vec<String>), name: &str| {
        let path = dir.str(name);
        (
            s.0,
            s.1.iter()
                .map(|l| l.replace(&path, "IMG"))
                .collect::<Vec<_>>(),
            s.2,
        )
    };
    assert_eq!(strip(mine.0, "a.qcow2"), strip(theirs.0, "b.qcow2"));
    assert_eq!(strip(mine.1, "a.qcow2"), strip(theirs.1, "b.qcow2"));
    assert_eq!((mine.2, mine.3), (theirs.2, theirs.3));
}
