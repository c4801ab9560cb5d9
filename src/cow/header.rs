//! Which of the five cow header layouts a file has, its fields, and where its bitmap and
//! data start.

use crate::error::{Error, ErrorKind, Result};
use crate::format::cow::{CowHeaderV1, CowHeaderV2, CowHeaderV3, CowHeaderV3Broken, QemuCowHeader};
use crate::format::Layout;
use crate::storage::Storage;
use binrw::Endian;

/// The magic number, in either byte order; every cow layout shares it.
pub const MAGIC: u32 = CowHeaderV1::MAGIC_REQUIRED;

/// A cow header in the layout it was found in.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fields {
    /// Version 1 in the writer's byte order.
    V1(CowHeaderV1, Endian),
    /// The kernel's packed version 2.
    V2(CowHeaderV2),
    /// The kernel's packed version 3, what UML writes.
    V3(CowHeaderV3),
    /// Version 3 as pre-2006 64-bit UML wrote it.
    V3Broken(CowHeaderV3Broken),
    /// QEMU's own version 2 layout.
    Qemu(QemuCowHeader),
}

/// A cow header and the geometry it implies.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Header {
    /// The fields, in the layout they were found in.
    pub fields: Fields,
    /// Backing file path, up to its NUL.
    pub backing_file: Vec<u8>,
    /// Modification time of the backing file when the cow file was made.
    pub mtime: u32,
    /// Virtual size in bytes.
    pub size: u64,
    /// Bytes one bitmap bit covers.
    pub sector_size: u32,
    /// Byte offset of the bitmap.
    pub bitmap_offset: u64,
    /// Length of the bitmap as the writer computed it.
    pub bitmap_len: u64,
    /// Byte offset of sector 0's data.
    pub data_offset: u64,
}

impl Header {
    /// Recognises the layout and reads it. Version 2 has two incompatible layouts with
    /// the same magic and version: the kernel's (4096-byte path, sector size at byte
    /// 4116) and QEMU's (1024-byte path, size at 1040, sector size 512 at 1048). A
    /// valid sector size at 4116 means the kernel's; otherwise 512 at 1048 means QEMU's.
    pub fn read(storage: &dyn Storage) -> Result<Header> {
        let mut bytes = vec![0u8; CowHeaderV3Broken::SIZE];
        let got = storage
            .read_full(&mut bytes, 0)
            .map_err(|e| Error::io("reading the cow header", e))?;
        bytes.truncate(got);
        let Some(head) = bytes.get(..8) else {
            return Err(Error::new(
                ErrorKind::InvalidFormat,
                "Image not in COW format (file shorter than 8 bytes)",
            ));
        };
        let word = |b: &[u8], endian: Endian| {
            // Callers pass four bytes.
            let b: [u8; 4] = b.try_into().unwrap_or_default();
            match endian {
                Endian::Big => u32::from_be_bytes(b),
                Endian::Little => u32::from_le_bytes(b),
            }
        };
        let endian = if word(&head[..4], Endian::Big) == MAGIC {
            Endian::Big
        } else if word(&head[..4], Endian::Little) == MAGIC {
            Endian::Little
        } else {
            return Err(Error::field(
                ErrorKind::InvalidFormat,
                CowHeaderV3::NAME,
                "magic",
                0,
                u64::from(word(&head[..4], Endian::Big)),
                "Image not in COW format",
            ));
        };
        let version = word(&head[4..8], endian);
        let sector_size_at = |off: usize| bytes.get(off..off + 4).map(|b| word(b, Endian::Big));
        let fields = match version {
            1 => {
                let h = CowHeaderV1::parse_endian(&bytes, endian)?;
                h.validate(0)?;
                Fields::V1(h, endian)
            }
            2 if endian == Endian::Big => {
                let kernel = sector_size_at(4116)
                    .is_some_and(|s| s.is_power_of_two() && (512..=65536).contains(&s));
                if !kernel && sector_size_at(1048) == Some(512) {
                    let h = QemuCowHeader::parse(&bytes)?;
                    h.validate(0)?;
                    Fields::Qemu(h)
                } else {
                    let h = CowHeaderV2::parse(&bytes)?;
                    h.validate(0)?;
                    Fields::V2(h)
                }
            }
            3 if endian == Endian::Big => {
                // Zeros at 32 are the broken layout's cow_format, or an empty backing
                // file name in the kernel's layout. Read as the kernel's layout, a broken
                // header has its alignment where cow_format must be 0, so whichever
                // layout validates is the one.
                let kernel = CowHeaderV3::parse(&bytes).and_then(|h| h.validate(0).map(|()| h));
                let broken_marker = bytes.get(32..36).is_some_and(|b| b == [0, 0, 0, 0]);
                match kernel {
                    Ok(h) => Fields::V3(h),
                    Err(_) if broken_marker => {
                        let h = CowHeaderV3Broken::parse(&bytes)?;
                        h.validate(0)?;
                        Fields::V3Broken(h)
                    }
                    Err(e) => return Err(e),
                }
            }
            other => {
                return Err(Error::field(
                    ErrorKind::InvalidFormat,
                    CowHeaderV3::NAME,
                    "version",
                    4,
                    u64::from(other),
                    format!("invalid COW version {other}"),
                ))
            }
        };
        Ok(Header::with_geometry(fields))
    }

    /// The version number on disk.
    pub fn version(&self) -> u32 {
        match self.fields {
            Fields::V1(..) => 1,
            Fields::V2(_) | Fields::Qemu(_) => 2,
            Fields::V3(_) | Fields::V3Broken(_) => 3,
        }
    }

    /// A short name of the layout, for people.
    pub fn layout_name(&self) -> &'static str {
        match self.fields {
            Fields::V1(_, Endian::Big) => "v1 (big-endian)",
            Fields::V1(_, Endian::Little) => "v1 (little-endian)",
            Fields::V2(_) => "v2",
            Fields::V3(_) => "v3",
            Fields::V3Broken(_) => "v3 (64-bit broken layout)",
            Fields::Qemu(_) => "v2 (QEMU layout)",
        }
    }

    fn with_geometry(fields: Fields) -> Header {
        // The kernel's sizes(): versions 1 and 2 floor the bitmap length and round the
        // data up to a sector; version 3 rounds both up, the data to `alignment`.
        let old = |size: u64, ss: u32, bitmap_offset: u64| {
            let ss = u64::from(ss);
            let len = size.saturating_add(ss - 1) / (8 * ss);
            (len, (bitmap_offset + len).next_multiple_of(ss))
        };
        let v3 = |size: u64, ss: u32, align: u32, bitmap_offset: u64| {
            let len = size.div_ceil(u64::from(ss)).div_ceil(8);
            (
                len,
                (bitmap_offset + len).next_multiple_of(u64::from(align)),
            )
        };
        // The layouts name these fields alike; only their types and places differ.
        macro_rules! common {
            ($h:expr, $off:expr, $geometry:expr) => {
                (
                    $h.backing_file.until_nul().to_vec(),
                    $h.mtime,
                    $h.size,
                    $h.sectorsize,
                    $off,
                    $geometry,
                )
            };
        }
        let (backing, mtime, size, ss, bitmap_offset, (bitmap_len, data_offset)) = match &fields {
            Fields::V1(h, _) => {
                let off = CowHeaderV1::SIZE as u64;
                common!(h, off, old(h.size, h.sectorsize, off))
            }
            Fields::V2(h) => {
                let off = CowHeaderV2::SIZE as u64;
                common!(h, off, old(h.size, h.sectorsize, off))
            }
            Fields::V3(h) => {
                let off = (CowHeaderV3::SIZE as u64).next_multiple_of(u64::from(h.alignment));
                common!(h, off, v3(h.size, h.sectorsize, h.alignment, off))
            }
            Fields::V3Broken(h) => {
                let off = (CowHeaderV3Broken::SIZE as u64).next_multiple_of(u64::from(h.alignment));
                common!(h, off, v3(h.size, h.sectorsize, h.alignment, off))
            }
            Fields::Qemu(h) => {
                // QEMU ignores the stored sector size and uses 512.
                let off = QemuCowHeader::SIZE as u64;
                let len = (h.size / 512).div_ceil(8);
                (
                    h.backing_file.until_nul().to_vec(),
                    h.mtime as u32,
                    h.size,
                    512,
                    off,
                    (len, (off + len).next_multiple_of(512)),
                )
            }
        };
        Header {
            fields,
            backing_file: backing,
            mtime,
            size,
            sector_size: ss,
            bitmap_offset,
            bitmap_len,
            data_offset,
        }
    }
}
