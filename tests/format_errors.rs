//! Bad headers give an error of the right kind, in QEMU's words where QEMU has words,
//! naming the structure, field, offset and value; and no byte of a header can make the
//! readers panic.

mod common;

use common::*;
use cowimg::header::{Cow as CowHeader, Qcow as QcowHeader, Qcow2 as Qcow2Header};
use cowimg::storage::MemoryStorage;
use cowimg::{Error, ErrorKind};

fn qcow2_err(bytes: Vec<u8>) -> Error {
    Qcow2Header::read(&MemoryStorage::new(bytes)).expect_err("the header should be refused")
}

fn with(mut bytes: Vec<u8>, at: usize, patch: &[u8]) -> Vec<u8> {
    bytes[at..at + patch.len()].copy_from_slice(patch);
    bytes
}

fn assert_error(e: &Error, kind: ErrorKind, message: &str, field: Option<(&str, &str, u64, u64)>) {
    assert_eq!(e.kind(), kind, "{e}");
    assert_eq!(e.message(), message, "{e}");
    let text = e.to_string();
    assert!(
        !text.contains('\x1b'),
        "no terminal colour codes in {text:?}"
    );
    if let Some((structure, name, offset, value)) = field {
        let loc = e.location().unwrap_or_else(|| panic!("no location in {e}"));
        assert_eq!(
            (loc.structure, loc.field, loc.offset, loc.value),
            (structure, name, offset, value)
        );
        assert!(text.contains(name) && text.contains(structure), "{text}");
    }
}

#[test]
fn qcow2_header_fields_are_checked_with_qemu_messages() {
    let good = data("sample.qcow2");
    let hdr = "qcow2 header";
    assert_error(
        &qcow2_err(with(good.clone(), 0, b"QFI\xfa")),
        ErrorKind::InvalidFormat,
        "Image is not in qcow2 format",
        Some((hdr, "magic", 0, 0x514649fa)),
    );
    assert_error(
        &qcow2_err(with(good.clone(), 4, &4u32.to_be_bytes())),
        ErrorKind::Unsupported,
        "Unsupported qcow2 version 4",
        Some((hdr, "version", 4, 4)),
    );
    assert_error(
        &qcow2_err(with(good.clone(), 20, &30u32.to_be_bytes())),
        ErrorKind::Unsupported,
        "Unsupported cluster size: 2^30",
        Some((hdr, "cluster_bits", 20, 30)),
    );
    assert_error(
        &qcow2_err(with(good.clone(), 32, &3u32.to_be_bytes())),
        ErrorKind::Unsupported,
        "Unsupported encryption method 3",
        Some((hdr, "crypt_method", 32, 3)),
    );
    assert_error(
        &qcow2_err(with(good.clone(), 40, &0x1234u64.to_be_bytes())),
        ErrorKind::InvalidFormat,
        "Active L1 table offset invalid",
        Some((hdr, "l1_table_offset", 40, 0x1234)),
    );
    // Test 080's case: the snapshot table offset is checked even with no snapshots.
    assert_error(
        &qcow2_err(with(good.clone(), 64, &0x1234567890abcdefu64.to_be_bytes())),
        ErrorKind::InvalidFormat,
        "Snapshot table offset invalid",
        Some((hdr, "snapshots_offset", 64, 0x1234567890abcdef)),
    );
    assert_error(
        &qcow2_err(with(good.clone(), 56, &0x10000u32.to_be_bytes())),
        ErrorKind::InvalidFormat,
        "Reference count table too large",
        Some((hdr, "refcount_table_clusters", 56, 0x10000)),
    );
    assert_error(
        &qcow2_err(with(good.clone(), 8, &8192u64.to_be_bytes())),
        ErrorKind::InvalidFormat,
        "Invalid backing file offset",
        Some((hdr, "backing_file_offset", 8, 8192)),
    );
    let v3 = "qcow2 v3 header";
    assert_error(
        &qcow2_err(with(good.clone(), 96, &7u32.to_be_bytes())),
        ErrorKind::Unsupported,
        "Reference count entry width too large; may not exceed 64 bits",
        Some((v3, "refcount_order", 96, 7)),
    );
    assert_error(
        &qcow2_err(with(good.clone(), 100, &96u32.to_be_bytes())),
        ErrorKind::InvalidFormat,
        "qcow2 header too short",
        Some((v3, "header_length", 100, 96)),
    );
    assert_error(
        &qcow2_err(with(good.clone(), 100, &8192u32.to_be_bytes())),
        ErrorKind::InvalidFormat,
        "qcow2 header exceeds cluster size",
        Some((v3, "header_length", 100, 8192)),
    );
    assert_error(
        &qcow2_err(with(good.clone(), 104, &[2])),
        ErrorKind::Unsupported,
        "qcow2: unknown compression type: 2",
        Some((
            "qcow2 compression type header field",
            "compression_type",
            104,
            2,
        )),
    );
    // Padding after the compression type is not looked at: qemu-img opens such an
    // image (and its check then reports on it), so it is read here too.
    let padded = with(good.clone(), 107, &[1]);
    Qcow2Header::read(&MemoryStorage::new(padded.clone())).expect("padding is ignored");
    let dir = Scratch::new("padding");
    std::fs::write(dir.path("padded.qcow2"), &padded).unwrap();
    qemu_img(&["info", "-f", "qcow2", &dir.str("padded.qcow2")]);
    // Truncated files name what is missing.
    let e = qcow2_err(good[..50].to_vec());
    assert_eq!(e.kind(), ErrorKind::InvalidFormat);
    assert_eq!(e.message(), "qcow2 header truncated: 50 bytes, 72 needed");
}

#[test]
fn qcow2_extensions_are_bounded_and_checked() {
    let good = data("sample.qcow2");
    // An extension longer than the rest of cluster 0.
    let big = with(
        with(good.clone(), 112, &0x12345678u32.to_be_bytes()),
        116,
        &5000u32.to_be_bytes(),
    );
    assert_error(
        &qcow2_err(big),
        ErrorKind::InvalidFormat,
        "Header extension too large",
        Some(("qcow2 header extension", "length", 116, 5000)),
    );
    // A backing format name QEMU's 16-byte buffer cannot hold.
    let fmt = with(
        with(good.clone(), 112, &0xe2792acau32.to_be_bytes()),
        116,
        &16u32.to_be_bytes(),
    );
    assert_error(
        &qcow2_err(fmt),
        ErrorKind::InvalidFormat,
        "ERROR: ext_backing_format: len=16 too large (>=16)",
        Some(("qcow2 header extension", "length", 116, 16)),
    );
    let bitmaps = with(
        with(good.clone(), 112, &0x23852875u32.to_be_bytes()),
        116,
        &16u32.to_be_bytes(),
    );
    assert_error(
        &qcow2_err(bitmaps),
        ErrorKind::InvalidFormat,
        "bitmaps_ext: Invalid extension length",
        None,
    );
    let crypto = with(
        with(good.clone(), 112, &0x0537be77u32.to_be_bytes()),
        116,
        &16u32.to_be_bytes(),
    );
    assert_error(
        &qcow2_err(crypto),
        ErrorKind::InvalidFormat,
        "CRYPTO header extension only expected with LUKS encryption method",
        None,
    );
    let luks_without_ext = with(good.clone(), 32, &2u32.to_be_bytes());
    assert_error(
        &qcow2_err(luks_without_ext),
        ErrorKind::InvalidFormat,
        "Missing CRYPTO header for crypt method 2",
        None,
    );
    // The bitmaps extension's own fields: zero bitmaps is refused.
    let mut zero_bitmaps = data("bitmaps.qcow2");
    zero_bitmaps[120..124].copy_from_slice(&0u32.to_be_bytes());
    assert_error(
        &qcow2_err(zero_bitmaps),
        ErrorKind::InvalidFormat,
        "found bitmaps extension with zero bitmaps",
        Some(("qcow2 bitmaps extension", "nb_bitmaps", 120, 0)),
    );
    // Unknown extensions are kept, not refused.
    let unknown = with(
        with(good, 112, &0x12345678u32.to_be_bytes()),
        116,
        &3u32.to_be_bytes(),
    );
    let h = Qcow2Header::read(&MemoryStorage::new(unknown)).unwrap();
    assert_eq!(h.extensions.len(), 1);
    assert_eq!(
        (h.extensions[0].magic, h.extensions[0].data.len()),
        (0x12345678, 3)
    );
}

#[test]
fn qcow_v1_header_checks() {
    let good = data("qcow1.qcow");
    let err = |b: Vec<u8>| QcowHeader::read(&MemoryStorage::new(b)).expect_err("refused");
    let hdr = "qcow header";
    assert_error(
        &err(with(good.clone(), 4, &2u32.to_be_bytes())),
        ErrorKind::Unsupported,
        "qcow (v1) does not support qcow version 2; try the 'qcow2' driver instead",
        Some((hdr, "version", 4, 2)),
    );
    assert_error(
        &err(with(good.clone(), 4, &9u32.to_be_bytes())),
        ErrorKind::Unsupported,
        "qcow (v1) does not support qcow version 9",
        Some((hdr, "version", 4, 9)),
    );
    assert_error(
        &err(with(good.clone(), 24, &1u64.to_be_bytes())),
        ErrorKind::InvalidFormat,
        "Image size is too small (must be at least 2 bytes)",
        Some((hdr, "size", 24, 1)),
    );
    assert_error(
        &err(with(good.clone(), 32, &[17])),
        ErrorKind::InvalidFormat,
        "Cluster size must be between 512 and 64k",
        Some((hdr, "cluster_bits", 32, 17)),
    );
    assert_error(
        &err(with(good.clone(), 33, &[5])),
        ErrorKind::InvalidFormat,
        "L2 table size must be between 512 and 64k",
        Some((hdr, "l2_bits", 33, 5)),
    );
    assert_error(
        &err(with(good.clone(), 36, &2u32.to_be_bytes())),
        ErrorKind::Unsupported,
        "invalid encryption method in qcow header",
        Some((hdr, "crypt_method", 36, 2)),
    );
    assert_error(
        &err(with(
            with(good.clone(), 8, &48u64.to_be_bytes()),
            16,
            &1024u32.to_be_bytes(),
        )),
        ErrorKind::InvalidFormat,
        "Backing file name too long",
        Some((hdr, "backing_file_size", 16, 1024)),
    );
    assert_error(
        &err(with(good, 24, &(u64::MAX - 100).to_be_bytes())),
        ErrorKind::InvalidFormat,
        "Image too large",
        Some((hdr, "size", 24, u64::MAX - 100)),
    );
}

#[test]
fn cow_header_checks() {
    let mut v3 = vec![0u8; 8192];
    v3[..4].copy_from_slice(&0x4f4f4f4du32.to_be_bytes());
    v3[4..8].copy_from_slice(&3u32.to_be_bytes());
    v3[20..24].copy_from_slice(&512u32.to_be_bytes());
    v3[24..28].copy_from_slice(&4096u32.to_be_bytes());
    v3[32] = b'b';
    assert!(CowHeader::read(&MemoryStorage::new(v3.clone())).is_ok());
    let err = |b: Vec<u8>| CowHeader::read(&MemoryStorage::new(b)).expect_err("refused");
    assert_error(
        &err(with(v3.clone(), 24, &0u32.to_be_bytes())),
        ErrorKind::InvalidFormat,
        "COW alignment 0 is not a power of two up to 1 MiB",
        Some(("cow v3 header", "alignment", 24, 0)),
    );
    assert_error(
        &err(with(v3.clone(), 20, &0u32.to_be_bytes())),
        ErrorKind::Unsupported,
        "COW sector size 0 is not supported",
        Some(("cow v3 header", "sectorsize", 20, 0)),
    );
    assert_error(
        &err(with(v3.clone(), 4, &4u32.to_be_bytes())),
        ErrorKind::InvalidFormat,
        "invalid COW version 4",
        Some(("cow v3 header", "version", 4, 4)),
    );
    assert_error(
        &err(with(v3, 0, b"MOOX")),
        ErrorKind::InvalidFormat,
        "Image not in COW format",
        None,
    );
}

/// Every byte of each header area set to a handful of values: the readers return an
/// error or a header, never panic, and never allocate beyond their bounds.
#[test]
fn no_header_byte_can_make_a_reader_panic() {
    let samples = [
        ("sample.qcow2", 128),
        ("v2-backing.qcow2", 104),
        ("bitmaps.qcow2", 152),
        ("zstd-extl2.qcow2", 160),
        ("qcow1.qcow", 48),
        ("qcow1-backing.qcow", 56),
    ];
    let mut refused = 0;
    for (name, span) in samples {
        let good = data(name);
        for at in 0..span {
            for value in [0x00, 0x01, 0x07, 0x3f, 0x80, 0xff] {
                let mut bytes = good.clone();
                bytes[at] = value;
                let storage = MemoryStorage::new(bytes);
                let result = if name.ends_with(".qcow") {
                    QcowHeader::read(&storage).map(|_| ())
                } else {
                    Qcow2Header::read(&storage).map(|_| ())
                };
                if let Err(e) = result {
                    assert!(!e.message().is_empty());
                    refused += 1;
                }
            }
        }
    }
    assert!(
        refused > 100,
        "mutations should be refused often, got {refused}"
    );
}
