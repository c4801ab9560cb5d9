//! Every generated view parses real bytes to the expected fields and serialises back to
//! the same bytes. qcow2 and qcow bytes come from images qemu-img made (tests/data, see
//! make.sh, or made here at test time); expected values come from how they were made or
//! from `qemu-img map`. cow bytes are laid out here from the documented layouts.

mod common;

use common::*;
use cowimg::format::cow::*;
use cowimg::format::qcow::*;
use cowimg::format::qcow2::*;
use cowimg::format::qcow2::{autoclear, compatible, incompatible};
use cowimg::format::{ByteArray, Layout};
use cowimg::storage::MemoryStorage;
use std::fmt::Debug;
use std::io::Read;

/// Parses `T` at `at`, checks it serialises back to the same bytes, and returns it.
fn view<T: Layout + Debug>(bytes: &[u8], at: u64) -> T {
    let slice = &bytes[at as usize..at as usize + T::SIZE];
    let parsed = T::parse(slice).unwrap_or_else(|e| panic!("{}: {e}", T::NAME));
    assert_eq!(
        parsed.to_bytes(),
        slice,
        "{} does not serialise back to its bytes",
        T::NAME
    );
    parsed
}

const QFI: u32 = u32::from_be_bytes(*b"QFI\xfb");

fn inflate_raw(data: &[u8], size: usize) -> Vec<u8> {
    let mut out = vec![0u8; size];
    flate2::read::DeflateDecoder::new(data)
        .read_exact(&mut out)
        .expect("raw deflate");
    out
}

#[test]
fn qcow2_v3_header_from_qemu() {
    // qemu-img create -o cluster_size=4096 sample.qcow2 1M
    let bytes = data("sample.qcow2");
    let h: Qcow2Header = view(&bytes, 0);
    assert_eq!(
        (h.magic, h.version, h.cluster_bits, h.size),
        (QFI, 3, 12, 1 << 20)
    );
    assert_eq!(
        (h.backing_file_offset, h.crypt_method, h.nb_snapshots),
        (0, 0, 0)
    );
    h.validate(0).unwrap();
    let v3: Qcow2HeaderV3 = view(&bytes, 72);
    assert_eq!((v3.refcount_order, v3.header_length), (4, 112));
    assert_eq!(
        (
            v3.incompatible_features,
            v3.compatible_features,
            v3.autoclear_features
        ),
        (0, 0, 0)
    );
    v3.validate(72, h.cluster_bits).unwrap();
    let c: Qcow2HeaderCompression = view(&bytes, 104);
    assert_eq!(c.compression_type, 0);
    c.validate(104).unwrap();
    insta::assert_debug_snapshot!("qcow2_v3_header", (h, v3, c));
}

#[test]
fn qcow2_v2_header_and_backing_format_extension_from_qemu() {
    // compat=0.10, backing file base.raw, backing format raw.
    let bytes = data("v2-backing.qcow2");
    let h: Qcow2Header = view(&bytes, 0);
    assert_eq!((h.version, h.cluster_bits, h.size), (2, 12, 64 << 10));
    h.validate(0).unwrap();
    let name = &bytes[h.backing_file_offset as usize..][..h.backing_file_size as usize];
    assert_eq!(name, b"base.raw");
    // A version 2 header's extensions start at byte 72.
    let ext: ExtensionHeader = view(&bytes, 72);
    assert_eq!(
        ExtensionMagic::from_value(ext.magic),
        Some(ExtensionMagic::BackingFormat)
    );
    assert_eq!(&bytes[80..80 + ext.length as usize], b"raw");
    let end: ExtensionHeader = view(&bytes, 80 + u64::from(ext.length).next_multiple_of(8));
    assert_eq!(
        ExtensionMagic::from_value(end.magic),
        Some(ExtensionMagic::End)
    );
    insta::assert_debug_snapshot!("qcow2_v2_header", (h, ext, end));

    // The runtime reads the same, and never looks for v3 fields.
    let header = cowimg::header::Qcow2::read(&MemoryStorage::new(bytes)).unwrap();
    assert!(header.v3.is_none() && header.compression.is_none());
    assert_eq!(header.backing_format(), Some(&b"raw"[..]));
    assert_eq!(header.backing_file.as_deref(), Some(&b"base.raw"[..]));
}

#[test]
fn qcow2_feature_bits_refcount_order_and_feature_table_from_qemu() {
    // refcount_bits=1, lazy_refcounts=on
    let bytes = data("refcount1.qcow2");
    let v3: Qcow2HeaderV3 = view(&bytes, 72);
    assert_eq!(v3.refcount_order, 0);
    assert_eq!(v3.compatible_features, compatible::LAZY_REFCOUNTS);

    // compression_type=zstd, extended_l2=on: two incompatible bits and a feature table.
    let bytes = data("zstd-extl2.qcow2");
    let v3: Qcow2HeaderV3 = view(&bytes, 72);
    assert_eq!(
        v3.incompatible_features,
        incompatible::COMPRESSION | incompatible::EXTENDED_L2
    );
    let c: Qcow2HeaderCompression = view(&bytes, 104);
    assert_eq!(c.compression_type, 1);
    let ext: ExtensionHeader = view(&bytes, u64::from(v3.header_length));
    assert_eq!(
        ExtensionMagic::from_value(ext.magic),
        Some(ExtensionMagic::FeatureTable)
    );
    assert_eq!(ext.length as usize % FeatureNameEntry::SIZE, 0);
    let entries: Vec<FeatureNameEntry> = (0..ext.length as u64 / 48)
        .map(|i| view(&bytes, u64::from(v3.header_length) + 8 + i * 48))
        .collect();
    let named = |t: u8, bit: u8| {
        entries
            .iter()
            .find(|e| e.feature_type == t && e.bit == bit)
            .map(|e| String::from_utf8_lossy(e.name.until_nul()).into_owned())
    };
    // QEMU's names for the features it knows.
    assert_eq!(named(0, 0).as_deref(), Some("dirty bit"));
    assert_eq!(named(0, 1).as_deref(), Some("corrupt bit"));
    assert_eq!(named(0, 4).as_deref(), Some("extended L2 entries"));
    assert_eq!(named(1, 0).as_deref(), Some("lazy refcounts"));
    assert_eq!(named(2, 0).as_deref(), Some("bitmaps"));
    insta::assert_debug_snapshot!("qcow2_feature_table", entries);
}

#[test]
fn qcow2_data_file_extension_from_qemu() {
    // data_file=datafile.data, data_file_raw=on
    let bytes = data("datafile.qcow2");
    let v3: Qcow2HeaderV3 = view(&bytes, 72);
    assert_ne!(v3.incompatible_features & incompatible::DATA_FILE, 0);
    assert_ne!(v3.autoclear_features & autoclear::DATA_FILE_RAW, 0);
    let ext: ExtensionHeader = view(&bytes, 112);
    assert_eq!(
        ExtensionMagic::from_value(ext.magic),
        Some(ExtensionMagic::DataFile)
    );
    assert_eq!(&bytes[120..120 + ext.length as usize], b"datafile.data");
}

#[test]
fn qcow2_bitmaps_extension_directory_and_table_from_qemu() {
    // bitmap0 with 64 KiB granularity over 1 MiB; guest bytes 0..64K and 512K..516K written.
    let bytes = data("bitmaps.qcow2");
    let ext: ExtensionHeader = view(&bytes, 112);
    assert_eq!(
        ExtensionMagic::from_value(ext.magic),
        Some(ExtensionMagic::Bitmaps)
    );
    assert_eq!(ext.length as usize, BitmapsExtension::SIZE);
    let b: BitmapsExtension = view(&bytes, 120);
    assert_eq!(b.nb_bitmaps, 1);
    b.validate(120, 12).unwrap();
    let dir: BitmapDirectoryEntry = view(&bytes, b.bitmap_directory_offset);
    dir.validate(b.bitmap_directory_offset, 12).unwrap();
    assert_eq!(
        (dir.granularity_bits, dir.name_size, dir.bitmap_type),
        (16, 7, 1)
    );
    assert_eq!(dir.flags & 2, 2, "qemu-img info says the bitmap is 'auto'");
    let name_at = (b.bitmap_directory_offset as usize) + 24 + dir.extra_data_size as usize;
    assert_eq!(&bytes[name_at..name_at + 7], b"bitmap0");
    // 16 bits of bitmap fit one cluster: one table entry, pointing at data.
    assert_eq!(dir.bitmap_table_size, 1);
    let entry = BitmapTableEntry::from_raw(be64(&bytes, dir.bitmap_table_offset));
    assert_eq!(entry.reserved_bits(), 0);
    let data_at = entry.data_offset() as usize;
    assert!(data_at != 0 && data_at % 4096 == 0);
    // Bit n covers guest bytes [n * 64K, (n + 1) * 64K): bits 0 and 8 are dirty.
    assert_eq!(&bytes[data_at..data_at + 3], &[0x01, 0x01, 0x00]);
    insta::assert_debug_snapshot!("qcow2_bitmaps", (b, dir, entry));
}

#[test]
fn qcow2_snapshot_table_from_qemu() {
    // Snapshots "first" and "second" made by qemu-img snapshot -c on a 1 MiB image.
    let bytes = data("snapshots.qcow2");
    let h: Qcow2Header = view(&bytes, 0);
    assert_eq!(h.nb_snapshots, 2);
    let mut at = h.snapshots_offset;
    let mut seen = Vec::new();
    for (id, name) in [("1", "first"), ("2", "second")] {
        let s: SnapshotHeader = view(&bytes, at);
        s.validate(at).unwrap();
        assert_eq!(s.extra_data_size, 24, "QEMU writes 24 bytes of extra data");
        assert_eq!(s.l1_table_offset % 4096, 0);
        assert_eq!(s.l1_size, h.l1_size);
        let extra: SnapshotExtraData = view(&bytes, at + 40);
        assert_eq!(extra.disk_size, 1 << 20);
        assert_eq!(extra.vm_state_size_large, u64::from(s.vm_state_size));
        let strings = (at + 40 + 24) as usize;
        assert_eq!(
            &bytes[strings..strings + usize::from(s.id_str_size)],
            id.as_bytes()
        );
        let name_at = strings + usize::from(s.id_str_size);
        assert_eq!(
            &bytes[name_at..name_at + usize::from(s.name_size)],
            name.as_bytes()
        );
        at = (name_at + usize::from(s.name_size)).next_multiple_of(8) as u64;
        seen.push((
            s.l1_size,
            s.id_str_size,
            s.name_size,
            s.vm_state_size,
            extra.disk_size,
            extra.icount,
        ));
    }
    insta::assert_debug_snapshot!("qcow2_snapshots", seen);
}

#[test]
fn qcow2_l1_l2_refcount_entries_match_qemu_map() {
    // 8 KiB of data, a compressed cluster at 8K, a zero cluster at 64K; 4 KiB clusters.
    let path = data_path("sample.qcow2");
    let bytes = data("sample.qcow2");
    let h: Qcow2Header = view(&bytes, 0);
    let l1 = L1Entry::from_raw(be64(&bytes, h.l1_table_offset));
    assert!(l1.copied() && l1.reserved_bits() == 0);
    let l2_at = l1.l2_offset();
    let l2 = |guest: u64| L2Entry::from_raw(be64(&bytes, l2_at + (guest >> 12) * 8));
    let map = qemu_map(&path, "qcow2");
    let mut checked = 0;
    for range in &map {
        for guest in (range.start..range.start + range.length)
            .step_by(4096)
            .take(4)
        {
            let e = l2(guest);
            assert_eq!(e.reserved_bits(), 0);
            match range {
                MapEntry {
                    compressed: true, ..
                } => {
                    assert!(e.compressed() && !e.copied());
                    let d = Qcow2CompressedDescriptor::decode(e.raw() & ((1 << 62) - 1), 12);
                    let len = (d.additional_sectors + 1) * 512 - d.host_offset % 512;
                    let start = d.host_offset as usize;
                    let end = (start + len as usize).min(bytes.len());
                    assert_eq!(inflate_raw(&bytes[start..end], 4096), vec![0x12; 4096]);
                    assert_eq!(d.encode(12), Some(e.raw() & ((1 << 62) - 1)));
                }
                MapEntry {
                    data: true,
                    offset: Some(off),
                    ..
                } => {
                    assert_eq!(e.host_offset(), off + (guest - range.start));
                    assert!(e.copied() && !e.zero() && !e.compressed());
                }
                MapEntry {
                    present: true,
                    zero: true,
                    ..
                } => assert!(e.zero() && e.host_offset() == 0),
                _ => assert_eq!(e.raw(), 0),
            }
            checked += 1;
        }
    }
    assert!(checked >= 5);
    let rt = RefcountTableEntry::from_raw(be64(&bytes, h.refcount_table_offset));
    assert_eq!(rt.reserved_bits(), 0);
    // The header cluster is referenced once (16-bit refcounts).
    assert_eq!(
        u16::from_be_bytes([
            bytes[rt.block_offset() as usize],
            bytes[rt.block_offset() as usize + 1]
        ]),
        1
    );
    insta::assert_debug_snapshot!("qcow2_entries", (l1, l2(0), l2(8192), l2(65536), rt));
}

#[test]
fn qcow2_extended_l2_entries_match_qemu_map() {
    // 16 KiB clusters, 512-byte subclusters: 4 KiB written at 0, a compressed cluster at
    // 16K, 2 KiB of zeros written at 32K.
    let path = data_path("zstd-extl2.qcow2");
    let bytes = data("zstd-extl2.qcow2");
    let h: Qcow2Header = view(&bytes, 0);
    let l2_at = L1Entry::from_raw(be64(&bytes, h.l1_table_offset)).l2_offset();
    let entry = |i: u64| {
        (
            L2Entry::from_raw(be64(&bytes, l2_at + i * 16)),
            SubclusterBitmap::from_raw(be64(&bytes, l2_at + i * 16 + 8)),
        )
    };
    let map = qemu_map(&path, "qcow2");
    let (e0, b0) = entry(0);
    assert_eq!(Some(e0.host_offset()), map[0].offset);
    assert_eq!(
        (b0.allocated(), b0.zero()),
        (0xff, 0),
        "4 KiB = subclusters 0..8"
    );
    let (e1, b1) = entry(1);
    assert!(e1.compressed() && b1.raw() == 0 && map[2].compressed);
    let (e2, b2) = entry(2);
    assert_eq!(
        (e2.host_offset(), b2.allocated(), b2.zero()),
        (0, 0, 0xf),
        "2 KiB of zeros = subclusters 0..4"
    );
    assert!(map[3].zero && map[3].present && map[3].offset.is_none());
    insta::assert_debug_snapshot!("qcow2_extended_l2", [entry(0), entry(1), entry(2)]);
}

#[test]
fn qcow2_crypto_extension_from_qemu_luks() {
    let dir = Scratch::new("luks");
    let img = dir.str("luks.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "--object",
        "secret,id=s0,data=hunter2",
        "-o",
        "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10,cluster_size=65536",
        &img,
        "1M",
    ]);
    let bytes = std::fs::read(&img).unwrap();
    let h: Qcow2Header = view(&bytes, 0);
    assert_eq!(h.crypt_method, 2);
    let ext: ExtensionHeader = view(&bytes, 112);
    assert_eq!(
        ExtensionMagic::from_value(ext.magic),
        Some(ExtensionMagic::FullDiskEncryption)
    );
    let c: CryptoExtension = view(&bytes, 120);
    c.validate(120, 16).unwrap();
    assert_eq!(c.offset % 65536, 0);
    // The LUKS header starts there.
    assert_eq!(
        &bytes[c.offset as usize..c.offset as usize + 6],
        b"LUKS\xba\xbe"
    );
    assert!(c.length >= 592);
    let header = cowimg::header::Qcow2::read(&MemoryStorage::new(bytes)).unwrap();
    assert_eq!(header.crypto().unwrap(), Some(c.clone()));
    insta::assert_debug_snapshot!("qcow2_crypto_extension", c);
}

#[test]
fn qcow_v1_header_entries_and_compressed_descriptor_from_qemu() {
    // qemu-img create -f qcow 1M: cluster_bits 12, l2_bits 9; data at 0, compressed at 4K.
    let path = data_path("qcow1.qcow");
    let bytes = data("qcow1.qcow");
    let h: QcowHeader = view(&bytes, 0);
    assert_eq!(
        (h.magic, h.version, h.size, h.cluster_bits, h.l2_bits),
        (QFI, 1, 1 << 20, 12, 9)
    );
    assert_eq!((h.backing_file_offset, h.crypt_method), (0, 0));
    h.validate(0).unwrap();
    let l2_at = be64(&bytes, h.l1_table_offset);
    let map = qemu_map(&path, "qcow");
    let e0 = QcowL2Entry::from_raw(be64(&bytes, l2_at));
    assert!(!e0.compressed());
    assert_eq!(Some(e0.host_offset()), map[0].offset);
    let e1 = QcowL2Entry::from_raw(be64(&bytes, l2_at + 8));
    assert!(e1.compressed() && map[1].compressed);
    let d = QcowCompressedDescriptor::decode(e1.host_offset(), 12);
    let compressed = &bytes[d.host_offset as usize..(d.host_offset + d.compressed_size) as usize];
    assert_eq!(inflate_raw(compressed, 4096), vec![0x45; 4096]);
    assert_eq!(d.encode(12), Some(e1.host_offset()));
    insta::assert_debug_snapshot!("qcow_v1", (h, e0, e1, d));

    // With a backing file QEMU picks cluster_bits 9 and l2_bits 12; the name follows.
    let bytes = data("qcow1-backing.qcow");
    let h: QcowHeader = view(&bytes, 0);
    assert_eq!(
        (
            h.cluster_bits,
            h.l2_bits,
            h.backing_file_offset,
            h.backing_file_size
        ),
        (9, 12, 48, 8)
    );
    assert_eq!(&bytes[48..56], b"base.raw");
    let header = cowimg::header::Qcow::read(&MemoryStorage::new(bytes)).unwrap();
    assert_eq!(header.backing_file.as_deref(), Some(&b"base.raw"[..]));
}

// ---- cow: reference headers laid out here, byte by byte, from the documented layouts.

fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    buf[at..at + bytes.len()].copy_from_slice(bytes);
}

const COW_MAGIC: u32 = 0x4f4f4f4d;

#[test]
fn cow_v1_in_both_byte_orders() {
    for little in [true, false] {
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
        let mut b = vec![0u8; 1024];
        put(&mut b, 0, &w32(COW_MAGIC));
        put(&mut b, 4, &w32(1));
        put(&mut b, 8, b"/var/base.img");
        put(&mut b, 264, &w32(1_700_000_000));
        put(&mut b, 268, &w64(9 * 512));
        put(&mut b, 276, &w32(512));
        let endian = if little {
            binrw::Endian::Little
        } else {
            binrw::Endian::Big
        };
        let h = CowHeaderV1::parse_endian(&b, endian).unwrap();
        assert_eq!(h.to_bytes_endian(endian), &b[..280]);
        assert_eq!(
            (h.magic, h.version, h.mtime, h.size, h.sectorsize),
            (COW_MAGIC, 1, 1_700_000_000, 4608, 512)
        );
        assert_eq!(h.backing_file.until_nul(), b"/var/base.img");
        h.validate(0).unwrap();
        let header = cowimg::header::Cow::read(&MemoryStorage::new(b)).unwrap();
        // Bitmap right after the 280-byte header; its length floors (9 sectors → 1 byte);
        // data at the next sector boundary.
        assert_eq!(
            (header.bitmap_offset, header.bitmap_len, header.data_offset),
            (280, 1, 512)
        );
        if little {
            insta::assert_debug_snapshot!("cow_v1", h);
        }
    }
}

#[test]
fn cow_v2_kernel_layout() {
    let mut b = vec![0u8; 8192];
    put(&mut b, 0, &COW_MAGIC.to_be_bytes());
    put(&mut b, 4, &2u32.to_be_bytes());
    put(&mut b, 8, b"base.img");
    put(&mut b, 4104, &7u32.to_be_bytes());
    put(&mut b, 4108, &(1u64 << 20).to_be_bytes());
    put(&mut b, 4116, &512u32.to_be_bytes());
    let h: CowHeaderV2 = view(&b, 0);
    assert_eq!(
        (h.version, h.mtime, h.size, h.sectorsize),
        (2, 7, 1 << 20, 512)
    );
    h.validate(0).unwrap();
    let header = cowimg::header::Cow::read(&MemoryStorage::new(b)).unwrap();
    assert_eq!(header.layout_name(), "v2");
    // 2048 sectors → 256 bitmap bytes after the 4120-byte header; data at 4608.
    assert_eq!(
        (header.bitmap_offset, header.bitmap_len, header.data_offset),
        (4120, 256, 4608)
    );
    insta::assert_debug_snapshot!("cow_v2", h);
}

#[test]
fn cow_v3_and_its_broken_64_bit_layout() {
    let mut b = vec![0u8; 16384];
    put(&mut b, 0, &COW_MAGIC.to_be_bytes());
    put(&mut b, 4, &3u32.to_be_bytes());
    put(&mut b, 8, &11u32.to_be_bytes());
    put(&mut b, 12, &(3u64 << 20).to_be_bytes());
    put(&mut b, 20, &512u32.to_be_bytes());
    put(&mut b, 24, &4096u32.to_be_bytes());
    put(&mut b, 28, &0u32.to_be_bytes());
    put(&mut b, 32, b"/images/root_fs");
    let h: CowHeaderV3 = view(&b, 0);
    assert_eq!(
        (h.mtime, h.size, h.sectorsize, h.alignment, h.cow_format),
        (11, 3 << 20, 512, 4096, 0)
    );
    h.validate(0).unwrap();
    let header = cowimg::header::Cow::read(&MemoryStorage::new(b)).unwrap();
    // 6144 sectors → 768 bitmap bytes at 8192 (4128 rounded to 4096); data at 12288.
    assert_eq!(
        (header.bitmap_offset, header.bitmap_len, header.data_offset),
        (8192, 768, 12288)
    );
    assert_eq!(header.backing_file, b"/images/root_fs");
    insta::assert_debug_snapshot!("cow_v3", h);

    let mut b = vec![0u8; 16384];
    put(&mut b, 0, &COW_MAGIC.to_be_bytes());
    put(&mut b, 4, &3u32.to_be_bytes());
    put(&mut b, 8, &11u32.to_be_bytes());
    put(&mut b, 16, &(3u64 << 20).to_be_bytes());
    put(&mut b, 24, &512u32.to_be_bytes());
    put(&mut b, 28, &4096u32.to_be_bytes());
    put(&mut b, 32, &0u32.to_be_bytes());
    put(&mut b, 36, b"/images/root_fs");
    let h: CowHeaderV3Broken = view(&b, 0);
    assert_eq!(
        (h.mtime, h.size, h.sectorsize, h.alignment),
        (11, 3 << 20, 512, 4096)
    );
    h.validate(0).unwrap();
    let header = cowimg::header::Cow::read(&MemoryStorage::new(b)).unwrap();
    assert_eq!(header.layout_name(), "v3 (64-bit broken layout)");
    insta::assert_debug_snapshot!("cow_v3_broken", h);
    assert_eq!((header.bitmap_offset, header.data_offset), (8192, 12288));
    assert_eq!(header.backing_file, b"/images/root_fs");
}

#[test]
fn qemu_cow_layout() {
    // block/cow.c's struct on x86-64: path[1024], mtime@1032, size@1040, sectorsize@1048.
    let mut b = vec![0u8; 2048];
    put(&mut b, 0, &COW_MAGIC.to_be_bytes());
    put(&mut b, 4, &2u32.to_be_bytes());
    put(&mut b, 8, b"backing.raw");
    put(&mut b, 1032, &5i32.to_be_bytes());
    put(&mut b, 1040, &(1u64 << 20).to_be_bytes());
    put(&mut b, 1048, &512u32.to_be_bytes());
    let h: QemuCowHeader = view(&b, 0);
    assert_eq!((h.mtime, h.size, h.sectorsize), (5, 1 << 20, 512));
    h.validate(0).unwrap();
    let header = cowimg::header::Cow::read(&MemoryStorage::new(b)).unwrap();
    assert_eq!(header.layout_name(), "v2 (QEMU layout)");
    // 2048 sectors → 256 bytes of bitmap after 1056; data at (1056 + 256 + 511) & !511.
    assert_eq!(
        (header.bitmap_offset, header.bitmap_len, header.data_offset),
        (1056, 256, 1536)
    );
    insta::assert_debug_snapshot!("qemu_cow", h);
}

#[test]
fn byte_array_fields_keep_every_byte() {
    let name = ByteArray::<46>::from_slice(b"dirty bit").unwrap();
    let e = FeatureNameEntry {
        feature_type: 0,
        bit: 0,
        name,
    };
    assert_eq!(FeatureNameEntry::parse(&e.to_bytes()).unwrap(), e);
}
