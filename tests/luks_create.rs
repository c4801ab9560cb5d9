//! LUKS volumes cowimg makes and changes, proven in QEMU: qcow2 with
//! encrypt.format=luks and raw `luks` volumes created by cowimg open in qemu-img and
//! qemu-io and read back what was written; the raw luks format QEMU makes reads and
//! writes in cowimg; convert to and from LUKS gives identical disks; key slots added or
//! erased by either tool unlock in the other; the last slot is never erased.

mod common;

use common::{qemu_img, Scratch};
use std::process::Command;

const SECRETS: [&str; 4] = [
    "--object",
    "secret,id=s0,data=first",
    "--object",
    "secret,id=s1,data=second",
];

/// `--image-opts` text for `image` of `driver` unlocked by secret `id`.
fn opts(driver: &str, image: &str, id: &str) -> String {
    match driver {
        "luks" => format!("driver=luks,key-secret={id},file.filename={image}"),
        _ => format!("driver=qcow2,encrypt.key-secret={id},file.filename={image}"),
    }
}

/// Runs `program` (cowimg, qemu-img or qemu-io) with the secrets and `args`; its
/// output, or None if it failed (the failure's stderr then in the Err).
fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let (exe, pre): (&str, &[&str]) = match program {
        "cowimg-io" => (env!("CARGO_BIN_EXE_cowimg"), &["io"]),
        "cowimg" => (env!("CARGO_BIN_EXE_cowimg"), &[]),
        other => (other, &[]),
    };
    let (first, rest) = args.split_first().expect("a subcommand");
    let mut cmd = Command::new(exe);
    cmd.args(pre);
    if program != "qemu-io" && program != "cowimg-io" {
        cmd.arg(first);
        cmd.args(SECRETS);
    } else {
        cmd.args(SECRETS);
        cmd.arg(first);
    }
    let out = cmd.args(rest).output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn ok(program: &str, args: &[&str]) -> String {
    run(program, args).unwrap_or_else(|e| panic!("{program} {args:?}: {e}"))
}

/// A raw LUKS volume of `size` made by qemu-img, unlocked by secret s0 (fast to open).
fn qemu_luks(image: &str, size: &str) {
    let opts = "key-secret=s0,iter-time=10";
    ok(
        "qemu-img",
        &["create", "-q", "-f", "luks", "-o", opts, image, size],
    );
}

/// The guest disk of `image` as qemu-img reads it and as cowimg reads it.
fn both_read(dir: &Scratch, driver: &str, image: &str, id: &str) -> (Vec<u8>, Vec<u8>) {
    let (q, c) = (dir.str("q.raw"), dir.str("c.raw"));
    let o = opts(driver, image, id);
    let _ = std::fs::remove_file(&c);
    ok(
        "qemu-img",
        &["convert", "--image-opts", &o, "-O", "raw", &q],
    );
    ok("cowimg", &["convert", "--image-opts", &o, "-O", "raw", &c]);
    (std::fs::read(q).unwrap(), std::fs::read(c).unwrap())
}

/// The `qemu-img info --output=json` text of `image` (the header alone: no secret).
fn qemu_info(image: &str) -> String {
    qemu_img(&["info", "--output=json", image])
}

#[test]
fn volumes_cowimg_creates_open_in_qemu_with_the_cipher_asked_for() {
    let dir = Scratch::new("luks-create");
    // (cipher-alg, cipher-mode, ivgen-alg, ivgen-hash-alg, hash-alg): the default and a
    // spread of what QEMU accepts.
    let cases = [
        ("aes-256", "xts", "plain64", "", "sha256"),
        ("aes-128", "cbc", "essiv", "sha256", "sha1"),
        ("serpent-256", "xts", "plain", "", "sha512"),
        ("twofish-128", "ctr", "plain64", "", "sha256"),
        ("cast5-128", "cbc", "plain", "", "md5"),
        ("aes-192", "xts", "essiv", "sha256", "ripemd160"),
        ("aes-256", "ecb", "plain64", "", "sm3"),
    ];
    for (i, (alg, mode, ivgen, ivhash, hash)) in cases.into_iter().enumerate() {
        let mut luks = format!(
            "cipher-alg={alg},cipher-mode={mode},ivgen-alg={ivgen},hash-alg={hash},iter-time=10"
        );
        if !ivhash.is_empty() {
            luks += &format!(",ivgen-hash-alg={ivhash}");
        }
        let qcow2 = dir.str(&format!("{i}.qcow2"));
        let raw = dir.str(&format!("{i}.luks"));
        let prefixed = luks.replace(',', ",encrypt.");
        ok(
            "cowimg",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                &format!("encrypt.format=luks,encrypt.key-secret=s0,encrypt.{prefixed}"),
                &qcow2,
                "3M",
            ],
        );
        ok(
            "cowimg",
            &[
                "create",
                "-q",
                "-f",
                "luks",
                "-o",
                &format!("key-secret=s0,{luks}"),
                &raw,
                "3M",
            ],
        );
        for (driver, image) in [("qcow2", &qcow2), ("luks", &raw)] {
            let info = qemu_info(image);
            // The encrypt block (qcow2) or luks data, as qemu-img describes it.
            assert_eq!(
                common::cowimg(&["info", "--output=json", image]),
                info,
                "{driver} case {i}: info JSON"
            );
            assert_eq!(
                common::cowimg(&["info", image]),
                qemu_img(&["info", image]),
                "{driver} case {i}: info"
            );
            for (key, want) in [
                ("cipher-alg", alg),
                ("cipher-mode", mode),
                ("ivgen-alg", ivgen),
                ("hash-alg", hash),
            ] {
                assert_eq!(
                    common::json_value(&info, key).as_deref(),
                    Some(want),
                    "{driver} case {i}: {key}"
                );
            }
            let o = opts(driver, image, "s0");
            ok(
                "qemu-io",
                &[
                    "--image-opts",
                    "-c",
                    "write -P 0x5c 0 64k",
                    "-c",
                    "write -P 0x3a 1000k 5000",
                    &o,
                ],
            );
            // cowimg writes through the cipher too, partly over QEMU's sectors.
            ok(
                "cowimg-io",
                &["--image-opts", "-c", "write -P 0x71 1003k 3000", &o],
            );
            let (q, c) = both_read(&dir, driver, image, "s0");
            assert!(
                q == c,
                "{driver} case {i}: cowimg reads other bytes than qemu-img"
            );
            assert!(q[..65536].iter().all(|b| *b == 0x5c), "{driver} case {i}");
            assert!(q[1003 << 10..(1003 << 10) + 3000]
                .iter()
                .all(|b| *b == 0x71));
            assert!(q[1000 << 10..1003 << 10].iter().all(|b| *b == 0x3a));
            if driver == "qcow2" {
                ok("qemu-img", &["check", "--image-opts", &o]);
                // Never written: reads as zeros (a raw volume's unwritten sectors are
                // noise, in QEMU as in cowimg: compared above).
                assert!(q[2 << 20..].iter().all(|b| *b == 0), "case {i}");
            }
        }
    }
}

#[test]
fn refusals_name_the_option_as_qemu_does() {
    let dir = Scratch::new("luks-refuse");
    let image = dir.str("x.qcow2");
    let cases = [
        (
            "encrypt.cipher-alg=foo",
            "Parameter 'cipher-alg' does not accept value 'foo'",
        ),
        (
            "encrypt.cipher-alg=cast5-128,encrypt.cipher-mode=xts",
            "Unsupported cipher mode xts",
        ),
        (
            "encrypt.ivgen-alg=essiv,encrypt.ivgen-hash-alg=sha1",
            "No aes cipher with key size 20 available",
        ),
        (
            "encrypt.cipher-alg=aes-192,encrypt.cipher-mode=cbc",
            "no whole number of sectors",
        ),
        ("encrypt.cipher-alg=sm4", "Algorithm 'sm4' not supported"),
        (
            "encrypt.iter-time=abc",
            "Parameter 'encrypt.iter-time' expects a number",
        ),
        ("encrypt.key-secret=nope", "No secret with id 'nope' found"),
        (
            "preallocation=metadata",
            "preallocation with LUKS encryption",
        ),
    ];
    for (extra, want) in cases {
        let o = if extra.contains("key-secret") {
            format!("encrypt.format=luks,{extra}")
        } else {
            format!("encrypt.format=luks,encrypt.key-secret=s0,{extra}")
        };
        let e = run(
            "cowimg",
            &["create", "-q", "-f", "qcow2", "-o", &o, &image, "1M"],
        )
        .expect_err(extra);
        assert!(e.contains(want), "{extra}: {e}");
        assert!(
            !std::path::Path::new(&image).exists(),
            "{extra}: file left behind"
        );
    }
    let e = run(
        "cowimg",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "encrypt.format=luks",
            &image,
            "1M",
        ],
    )
    .unwrap_err();
    assert!(
        e.contains("Parameter 'encrypt.key-secret' is required for cipher"),
        "{e}"
    );
    // An encrypted target takes no compressed clusters, as qemu-img refuses them.
    let src = dir.str("src.raw");
    std::fs::write(&src, vec![7u8; 1 << 20]).unwrap();
    let e = run(
        "cowimg",
        &[
            "convert",
            "-c",
            "-f",
            "raw",
            &src,
            "-O",
            "qcow2",
            "-o",
            "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10",
            &image,
        ],
    )
    .unwrap_err();
    assert!(
        e.contains("Compression and encryption not supported at the same time"),
        "{e}"
    );
}

#[test]
fn raw_luks_volumes_qemu_makes_probe_read_and_write() {
    let dir = Scratch::new("luks-raw");
    let image = dir.str("q.luks");
    qemu_luks(&image, "2M");
    let o = opts("luks", &image, "s0");
    ok("qemu-io", &["--image-opts", "-c", "write -P 0x21 0 1M", &o]);
    // Probed by its magic, described as qemu-img describes it (same file, same text).
    let theirs = qemu_img(&["info", &image]);
    let ours = common::cowimg(&["info", &image]);
    assert!(ours.contains("file format: luks"), "{ours}");
    assert_eq!(ours, theirs);
    assert_eq!(
        common::cowimg(&["info", "--output=json", &image]),
        qemu_info(&image)
    );
    let (q, c) = both_read(&dir, "luks", &image, "s0");
    assert!(q == c && q[..1 << 20].iter().all(|b| *b == 0x21));
    // Writes and a grown volume, compared with the same writes made by qemu-io.
    let theirs = dir.str("theirs.luks");
    std::fs::copy(&image, &theirs).unwrap();
    let writes = ["-c", "write -P 0x42 700k 3333", "-c", "write -z 4k 8k"];
    ok(
        "cowimg-io",
        &[&["--image-opts"][..], &writes, &[o.as_str()]].concat(),
    );
    ok(
        "qemu-io",
        &[
            &["--image-opts"][..],
            &writes,
            &[opts("luks", &theirs, "s0").as_str()],
        ]
        .concat(),
    );
    let same = ok(
        "qemu-img",
        &["compare", "--image-opts", &o, &opts("luks", &theirs, "s0")],
    );
    assert!(same.contains("identical"), "{same}");
    // A wrong passphrase and a hostile payload offset are refused by name.
    let e = run(
        "cowimg",
        &["map", "--image-opts", &opts("luks", &image, "s1")],
    );
    assert!(e
        .unwrap_err()
        .contains("Invalid password, cannot unlock any keyslot"));
    let mut bytes = std::fs::read(&image).unwrap();
    bytes[104..108].copy_from_slice(&0x7fff_ffffu32.to_be_bytes());
    let hostile = dir.str("hostile.luks");
    std::fs::write(&hostile, bytes).unwrap();
    let e = run(
        "cowimg",
        &["map", "--image-opts", &opts("luks", &hostile, "s0")],
    )
    .unwrap_err();
    assert!(e.contains("payload"), "{e}");
}

#[test]
fn convert_to_and_from_luks_keeps_every_byte() {
    let dir = Scratch::new("luks-convert");
    let src = dir.str("src.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &src, "6M"]);
    common::qemu_io(&[
        "-c",
        "write -P 0x61 0 1M",
        "-c",
        "write -P 0x62 5M 700k",
        &src,
    ]);
    let luks = dir.str("out.luks");
    ok(
        "cowimg",
        &[
            "convert",
            "-O",
            "luks",
            "-o",
            "key-secret=s0,iter-time=10",
            &src,
            &luks,
        ],
    );
    let same = ok(
        "qemu-img",
        &[
            "compare",
            "--image-opts",
            &format!("driver=qcow2,file.filename={src}"),
            &opts("luks", &luks, "s0"),
        ],
    );
    assert!(same.contains("identical"), "{same}");
    // LUKS to LUKS in qcow2, under another passphrase, then back to plain qcow2.
    let enc = dir.str("out.qcow2");
    ok(
        "cowimg",
        &[
            "convert",
            "--image-opts",
            &opts("luks", &luks, "s0"),
            "-O",
            "qcow2",
            "-o",
            "encrypt.format=luks,encrypt.key-secret=s1,encrypt.iter-time=10",
            &enc,
        ],
    );
    ok(
        "qemu-img",
        &["check", "--image-opts", &opts("qcow2", &enc, "s1")],
    );
    let plain = dir.str("plain.qcow2");
    ok(
        "cowimg",
        &[
            "convert",
            "--image-opts",
            &opts("qcow2", &enc, "s1"),
            "-O",
            "qcow2",
            &plain,
        ],
    );
    let same = qemu_img(&["compare", "-f", "qcow2", "-F", "qcow2", &src, &plain]);
    assert!(same.contains("identical"), "{same}");
}

#[test]
fn snapshots_and_backing_files_of_luks_qcow2_read_as_qemu_reads_them() {
    let dir = Scratch::new("luks-cow");
    let base = dir.str("base.raw");
    std::fs::write(&base, vec![0x11u8; 2 << 20]).unwrap();
    let top = dir.str("top.qcow2");
    ok(
        "cowimg",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            &base,
            "-F",
            "raw",
            "-o",
            "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10",
            &top,
        ],
    );
    let o = opts("qcow2", &top, "s0");
    // A partial cluster: the rest copied up from the backing file, encrypted.
    ok(
        "cowimg-io",
        &["--image-opts", "-c", "write -P 0x22 4096 512", &o],
    );
    ok("cowimg", &["snapshot", "-c", "one", "--image-opts", &o]);
    ok(
        "cowimg-io",
        &["--image-opts", "-c", "write -P 0x33 0 4096", &o],
    );
    ok("qemu-img", &["check", "--image-opts", &o]);
    let (q, c) = both_read(&dir, "qcow2", &top, "s0");
    assert!(q == c);
    assert!(q[..4096].iter().all(|b| *b == 0x33) && q[4096..4608].iter().all(|b| *b == 0x22));
    assert!(q[4608..].iter().all(|b| *b == 0x11));
    let (snap_q, snap_c) = (dir.str("sq.raw"), dir.str("sc.raw"));
    ok(
        "qemu-img",
        &[
            "convert",
            "-l",
            "one",
            "--image-opts",
            &o,
            "-O",
            "raw",
            &snap_q,
        ],
    );
    ok(
        "cowimg",
        &[
            "convert",
            "-l",
            "one",
            "--image-opts",
            &o,
            "-O",
            "raw",
            &snap_c,
        ],
    );
    let (sq, sc) = (
        std::fs::read(snap_q).unwrap(),
        std::fs::read(snap_c).unwrap(),
    );
    assert!(sq == sc);
    assert!(sq[..4096].iter().all(|b| *b == 0x11) && sq[4096..4608].iter().all(|b| *b == 0x22));
}

#[test]
fn key_slots_added_or_erased_by_either_tool_unlock_in_the_other() {
    let dir = Scratch::new("luks-slots");
    for driver in ["qcow2", "luks"] {
        let image = dir.str(&format!("slots.{driver}"));
        let p = if driver == "luks" { "" } else { "encrypt." };
        let create_opts = if driver == "luks" {
            "key-secret=s0,iter-time=10".to_string()
        } else {
            "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10".to_string()
        };
        ok(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                driver,
                "-o",
                &create_opts,
                &image,
                "1M",
            ],
        );
        ok(
            "qemu-io",
            &[
                "--image-opts",
                "-c",
                "write -P 0x55 0 64k",
                &opts(driver, &image, "s0"),
            ],
        );
        let amend = |program: &str, unlock: &str, change: &str| {
            run(
                program,
                &[
                    "amend",
                    "-o",
                    change,
                    "--image-opts",
                    &opts(driver, &image, unlock),
                ],
            )
        };
        let readable = |id: &str| {
            let (q, c) = both_read(&dir, driver, &image, id);
            q == c && q[..65536].iter().all(|b| *b == 0x55)
        };
        // cowimg adds s1; QEMU reads with it and erases s0 by its slot number.
        amend(
            "cowimg",
            "s0",
            &format!("{p}state=active,{p}new-secret=s1,{p}iter-time=10"),
        )
        .unwrap();
        assert!(readable("s1"), "{driver}: cowimg's new slot opens in QEMU");
        amend("qemu-img", "s1", &format!("{p}state=inactive,{p}keyslot=0")).unwrap();
        let e = run(
            "cowimg",
            &["map", "--image-opts", &opts(driver, &image, "s0")],
        )
        .unwrap_err();
        assert!(e.contains("Invalid password"), "{driver}: {e}");
        // QEMU adds s0 back; cowimg erases the slots s1 opens, by passphrase.
        amend(
            "qemu-img",
            "s1",
            &format!("{p}state=active,{p}new-secret=s0,{p}iter-time=10"),
        )
        .unwrap();
        amend(
            "cowimg",
            "s0",
            &format!("{p}state=inactive,{p}old-secret=s1"),
        )
        .unwrap();
        assert!(readable("s0"), "{driver}");
        let e = run(
            "qemu-img",
            &["map", "--image-opts", &opts(driver, &image, "s1")],
        );
        assert!(
            e.unwrap_err().contains("Invalid password"),
            "{driver}: s1 erased"
        );
        // The last slot stays, whether named by number or by passphrase.
        for change in [
            format!("{p}state=inactive,{p}keyslot=0"),
            format!("{p}state=inactive,{p}old-secret=s0"),
        ] {
            let e = amend("cowimg", "s0", &change).unwrap_err();
            assert!(e.contains("refusing operation"), "{driver} {change}: {e}");
        }
        let e = amend(
            "cowimg",
            "s0",
            &format!("{p}state=active,{p}new-secret=s1,{p}keyslot=0"),
        )
        .unwrap_err();
        assert!(e.contains("Refusing to overwrite active keyslot 0"), "{e}");
        assert!(readable("s0"), "{driver}: refusals change nothing");
        if driver == "qcow2" {
            ok(
                "qemu-img",
                &["check", "--image-opts", &opts(driver, &image, "s0")],
            );
        }
    }
}

#[test]
fn measure_counts_the_luks_header_as_qemu_img_does() {
    for target in [
        // (qemu-img measure runs a whole LUKS creation each time: a few cases.)
        "-O qcow2 -o encrypt.format=luks,encrypt.key-secret=s0,cluster_size=4096",
        "-O luks -o key-secret=s0,cipher-alg=aes-128,cipher-mode=cbc",
        "-O luks",
    ] {
        let mut args = vec!["measure", "--size", "1G", "--output=json"];
        args.extend(target.split(' '));
        let theirs = run("qemu-img", &args);
        let ours = run("cowimg", &args);
        match (theirs, ours) {
            (Ok(t), Ok(o)) => {
                assert_eq!(o, t, "{target}");
                assert!(
                    common::json_number(&t, "required").unwrap() > 2 << 20,
                    "{target}"
                );
            }
            (Err(t), Err(o)) => assert_eq!(o.replace("cowimg:", "qemu-img:"), t, "{target}"),
            (t, o) => panic!("{target}: qemu-img {t:?}, cowimg {o:?}"),
        }
    }
}

#[test]
fn the_library_creates_luks_images_and_writes_through_them() {
    use cowimg::create::{Encryption, LuksOptions};
    use cowimg::{CreateOptions, Format, Image, Secret};
    let dir = Scratch::new("luks-lib");
    for (format, name) in [(Format::Qcow2, "lib.qcow2"), (Format::Luks, "lib.luks")] {
        let path = dir.str(name);
        let luks = LuksOptions::new(Secret::from("first"))
            .cipher_alg("twofish-256".into())
            .iter_time_ms(10);
        let options = CreateOptions::new(1 << 20).encryption(Encryption::Luks(luks));
        let mut image = Image::create(&path, format, &options).unwrap();
        image.write_at(&[0x4du8; 5000], 1000).unwrap();
        image.flush().unwrap();
        drop(image);
        let driver = if format == Format::Luks {
            "luks"
        } else {
            "qcow2"
        };
        let read = ok(
            "qemu-io",
            &[
                "--image-opts",
                "-c",
                "read -P 0x4d 1000 5000",
                &opts(driver, &path, "s0"),
            ],
        );
        assert!(read.contains("read 5000/5000"), "{read}");
        assert!(qemu_info(&path).contains("twofish-256"));
    }
}

/// While one `cowimg amend` writes a key slot (its PBKDF2 timing holds the image for
/// about two seconds), a second cowimg amend and a qemu-img amend of the same image
/// are refused by QEMU's write lock, in qemu-img's words, and change nothing; the
/// first one's slot then unlocks in QEMU.
#[test]
fn a_key_slot_change_holds_the_image_against_other_amends() {
    let dir = Scratch::new("luks-amend-lock");
    let image = dir.str("locked.luks");
    qemu_luks(&image, "1M");
    let mut first = Command::new(env!("CARGO_BIN_EXE_cowimg"))
        .arg("amend")
        .args(SECRETS)
        .args([
            "-o",
            "state=active,new-secret=s1,iter-time=2000",
            "--image-opts",
        ])
        .arg(opts("luks", &image, "s0"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Held once its write lock (QEMU's byte 201) shows in /proc/locks.
    use std::os::unix::fs::MetadataExt;
    let needle = format!(":{} 201 ", std::fs::metadata(&image).unwrap().ino());
    let start = std::time::Instant::now();
    while !std::fs::read_to_string("/proc/locks")
        .unwrap()
        .contains(&needle)
    {
        assert!(
            start.elapsed().as_secs() < 20,
            "cowimg amend took no write lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let before = std::fs::read(&image).unwrap();
    let erase = "state=inactive,old-secret=s0";
    let refusals: Vec<(String, String)> = ["cowimg", "qemu-img"]
        .iter()
        .map(|program| {
            let args = [
                "amend",
                "-o",
                erase,
                "--image-opts",
                &opts("luks", &image, "s0"),
            ];
            let err = run(program, &args).expect_err("a second amend must be refused");
            let line = err.lines().next().unwrap_or("").to_string();
            (
                program.to_string(),
                line.replacen("qemu-img: ", "", 1)
                    .replacen("cowimg: ", "", 1),
            )
        })
        .collect();
    let still_held = first.try_wait().unwrap().is_none();
    assert!(
        still_held,
        "the first amend ended before the others were tried"
    );
    assert_eq!(refusals[0].1, refusals[1].1, "{refusals:?}");
    assert!(refusals[0].1.contains("\"write\" lock"), "{refusals:?}");
    assert!(
        std::fs::read(&image).unwrap() == before,
        "a refused amend wrote"
    );
    let status = first.wait().unwrap();
    assert!(status.success());
    // Both passphrases unlock in QEMU: the first amend's slot was written whole.
    for id in ["s0", "s1"] {
        ok(
            "qemu-io",
            &[
                "--image-opts",
                "-c",
                "read 0 512",
                &opts("luks", &image, id),
            ],
        );
    }
}
