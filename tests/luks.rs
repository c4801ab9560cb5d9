//! LUKS-encrypted qcow2 images made by qemu-img and written by qemu-io: cowimg reads
//! every cipher, mode, IV generator and hash QEMU accepts exactly as qemu-img converts
//! it; cowimg's writes read back identically in QEMU and check clean; wrong
//! passphrases and hostile headers are refused by name.

mod common;

use common::{qemu_img, Scratch};
use std::process::Command;

const SECRET: &str = "secret,id=s0,data=pw";

fn opts(image: &str) -> String {
    format!("driver=qcow2,encrypt.key-secret=s0,file.filename={image}")
}

/// qemu-img create with `encrypt` options; false when QEMU refuses (or crashes on)
/// the combination.
fn create(image: &str, encrypt: &str) -> bool {
    Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "--object", SECRET, "-o"])
        .arg(format!(
            "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10{encrypt}"
        ))
        .args([image, "1M"])
        .output()
        .unwrap()
        .status
        .success()
}

fn qemu_io_writes(image: &str) {
    common::run_ok(
        None,
        "qemu-io",
        &[
            "--object",
            SECRET,
            "--image-opts",
            "-c",
            "write -P 0x5a 0 64k",
            "-c",
            "write -P 0x33 512k 4k",
            "-c",
            "write -P 0x71 700k 3000",
            &opts(image),
        ],
    );
}

/// The guest disk as raw bytes, by qemu-img and by cowimg.
fn both_raw(dir: &Scratch, image: &str) -> (Vec<u8>, Vec<u8>) {
    let (q, c) = (dir.str("q.raw"), dir.str("c.raw"));
    let _ = std::fs::remove_file(&c);
    let args = [
        "convert",
        "--object",
        SECRET,
        "--image-opts",
        &opts(image),
        "-O",
        "raw",
    ];
    qemu_img(&[&args[..], &[q.as_str()]].concat());
    common::cowimg(&[&args[..], &[c.as_str()]].concat());
    (std::fs::read(q).unwrap(), std::fs::read(c).unwrap())
}

#[test]
fn every_cipher_mode_ivgen_and_hash_qemu_accepts_reads_as_qemu_reads_it() {
    let dir = Scratch::new("luks-matrix");
    // Every cipher in every mode, the IV generators taking turns (each meets every
    // mode); then every hash, for PBKDF2, the splitter and ESSIV. (qemu-img create
    // spends about 3 s measuring PBKDF2 speed, so not every triple is made.)
    let mut cases = Vec::new();
    let ivgens = ["plain", "plain64", "essiv"];
    let mut turn = 0;
    for alg in [
        "aes-128",
        "aes-192",
        "aes-256",
        "serpent-128",
        "serpent-192",
        "serpent-256",
        "twofish-128",
        "twofish-192",
        "twofish-256",
        "cast5-128",
        "sm4",
    ] {
        for mode in ["ecb", "cbc", "xts", "ctr"] {
            let mut o = format!(",encrypt.cipher-alg={alg},encrypt.cipher-mode={mode}");
            if mode != "ecb" {
                let iv = ivgens[turn % 3];
                turn += 1;
                o += &format!(",encrypt.ivgen-alg={iv}");
                if iv == "essiv" {
                    o += ",encrypt.ivgen-hash-alg=sha256";
                }
            }
            cases.push(o);
        }
    }
    for hash in [
        "md5",
        "sha1",
        "sha224",
        "sha256",
        "sha384",
        "sha512",
        "ripemd160",
        "sm3",
    ] {
        cases.push(format!(",encrypt.cipher-alg=aes-256,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv,encrypt.ivgen-hash-alg=sha256,encrypt.hash-alg={hash}"));
    }
    // ESSIV hashes whose digest is a key for the cipher (QEMU refuses the others).
    for (alg, hash) in [
        ("aes-128", "md5"),
        ("aes-256", "sm3"),
        ("twofish-256", "sha256"),
    ] {
        cases.push(format!(",encrypt.cipher-alg={alg},encrypt.cipher-mode=xts,encrypt.ivgen-alg=essiv,encrypt.ivgen-hash-alg={hash}"));
    }
    // Made two at a time: creating is qemu-img's PBKDF2 benchmark, one core each.
    let made: Vec<Option<String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = cases
            .chunks(cases.len().div_ceil(2))
            .enumerate()
            .map(|(half, part)| {
                let dir = &dir;
                scope.spawn(move || {
                    part.iter()
                        .enumerate()
                        .map(|(i, case)| {
                            let image = dir.str(&format!("{half}-{i}.qcow2"));
                            create(&image, case).then_some(image)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    for (case, image) in cases.iter().zip(&made) {
        let Some(image) = image else {
            assert!(
                !qemu_accepts(case),
                "{case}: qemu-img refused a combination it is known to create"
            );
            continue;
        };
        qemu_io_writes(image);
        let (q, c) = both_raw(&dir, image);
        assert!(q == c, "{case}: cowimg reads other bytes than qemu-img");
        assert!(
            q[..65536].iter().all(|b| *b == 0x5a),
            "{case}: the data was written"
        );
    }
}

/// What QEMU 10.0.2 creates: it has no sm4, takes cast5 only without xts and essiv,
/// and aborts on 192-bit keys outside xts (whose key material then fills no whole
/// number of sectors). Every combination it creates must have been read above.
fn qemu_accepts(case: &str) -> bool {
    !(case.contains("sm4")
        || case.contains("cast5") && (case.contains("xts") || case.contains("essiv"))
        || case.contains("-192,") && !case.contains("mode=xts"))
}

#[test]
fn writes_read_back_identically_in_qemu_and_check_clean() {
    let dir = Scratch::new("luks-write");
    let base = dir.str("base.qcow2");
    assert!(create(&base, ""));
    qemu_io_writes(&base);
    let (ours, theirs) = (dir.str("ours.qcow2"), dir.str("theirs.qcow2"));
    std::fs::copy(&base, &ours).unwrap();
    std::fs::copy(&base, &theirs).unwrap();
    let writes = [
        "-c",
        "write -P 0x77 3000 70000",
        "-c",
        "write -P 0x66 640k 128k",
        "-c",
        "write -z 4k 4k",
    ];
    let run = |program: &str, image: &str| {
        let mut args = vec!["--object", SECRET, "--image-opts"];
        args.extend(writes);
        let o = opts(image);
        args.push(&o);
        if program == "cowimg" {
            let mut full = vec!["io"];
            full.extend(args);
            common::cowimg(&full);
        } else {
            common::run_ok(None, program, &args);
        }
    };
    run("cowimg", &ours);
    run("qemu-io", &theirs);
    let compare = qemu_img(&[
        "compare",
        "--object",
        SECRET,
        "--image-opts",
        &opts(&ours),
        &opts(&theirs),
    ]);
    assert!(compare.contains("identical"), "{compare}");
    qemu_img(&["check", "--object", SECRET, "--image-opts", &opts(&ours)]);
}

/// cowimg convert's failure message for `image` read with passphrase `pw`.
fn refusal(image: &str, pw: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_cowimg"))
        .args(["convert", "--object"])
        .arg(format!("secret,id=s0,data={pw}"))
        .args(["--image-opts", &opts(image), "-O", "raw"])
        .arg(format!("{image}.raw"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "{image} was read");
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn wrong_passphrases_and_hostile_headers_are_refused_by_name() {
    let dir = Scratch::new("luks-hostile");
    let good = dir.str("good.qcow2");
    assert!(create(&good, ""));
    qemu_io_writes(&good);
    assert!(refusal(&good, "wrong").contains("Invalid password, cannot unlock any keyslot"));
    let no_key = Command::new(env!("CARGO_BIN_EXE_cowimg"))
        .args(["convert", "-O", "raw", &good, &dir.str("none.raw")])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&no_key.stderr).contains("encrypt.key-secret"));

    let bytes = std::fs::read(&good).unwrap();
    let header = bytes
        .windows(6)
        .position(|w| w == b"LUKS\xba\xbe")
        .expect("the LUKS header");
    let slot0 = header + 208;
    // (where to overwrite, relative to the header, with what) → what the error says.
    let cases: Vec<(usize, Vec<u8>, &str)> = vec![
        (
            6,
            2u16.to_be_bytes().to_vec(),
            "LUKS version 2 is not supported",
        ),
        (
            8,
            b"blowfish\0".to_vec(),
            "Algorithm 'blowfish' with key size 64 bytes not supported",
        ),
        (
            72,
            b"sha999\0".to_vec(),
            "Hash algorithm 'sha999' is not supported",
        ),
        (108, 0x10000u32.to_be_bytes().to_vec(), "key length 65536"),
        (112, vec![0xff; 20], "Invalid password"),
        (
            164,
            0xffff_ffffu32.to_be_bytes().to_vec(),
            "digest iterations 4294967295 out of range",
        ),
        (
            208 + 4,
            0xffff_ffffu32.to_be_bytes().to_vec(),
            "Keyslot 0 iterations 4294967295 out of range",
        ),
        (
            208 + 40,
            0x0100_0000u32.to_be_bytes().to_vec(),
            "Keyslot 0 is overlapping with the encrypted payload",
        ),
        (104, 0u32.to_be_bytes().to_vec(), "PAYLOAD0"),
        (
            208 + 44,
            0xffff_ffffu32.to_be_bytes().to_vec(),
            "Keyslot 0 is corrupted (stripes 4294967295 != 4000)",
        ),
        (
            208 + 40,
            1u32.to_be_bytes().to_vec(),
            "Keyslot 0 is overlapping with the LUKS header",
        ),
        (
            208 + 48,
            0x1234u32.to_be_bytes().to_vec(),
            "LUKS key slot state 0x1234",
        ),
    ];
    assert_eq!(
        bytes[slot0..slot0 + 4],
        [0x00, 0xac, 0x71, 0xf3],
        "slot 0 active"
    );
    for (i, (at, patch, want)) in cases.iter().enumerate() {
        let mut hostile = bytes.clone();
        hostile[header + at..header + at + patch.len()].copy_from_slice(patch);
        let image = dir.str(&format!("hostile{i}.qcow2"));
        std::fs::write(&image, &hostile).unwrap();
        let started = std::time::Instant::now();
        if *want == "PAYLOAD0" {
            // No payload offset (as raw images without one): the key material of a
            // slot sent 8 GiB away must still lie within the LUKS area.
            let far = 0x0100_0000u32.to_be_bytes();
            hostile[slot0 + 40..slot0 + 44].copy_from_slice(&far);
            std::fs::write(&image, &hostile).unwrap();
            let message = refusal(&image, "pw");
            assert!(message.contains("Keyslot 0 key material"), "{message}");
            continue;
        }
        let message = refusal(&image, "pw");
        assert!(message.contains(want), "case {i}: {message}");
        assert!(!message.contains("panicked"), "case {i}: {message}");
        // Bounded: nothing here runs more than the header's own small iteration counts.
        assert!(
            started.elapsed().as_secs() < 60,
            "case {i} took {:?}",
            started.elapsed()
        );
    }
}
