//! Creating a UML cow file: version 3 as UML writes it (big-endian, 512-byte sectors,
//! 4 KiB alignment), or the kernel's version 2 on request.

use crate::error::{Error, ErrorKind, Result};
use crate::format::cow::{CowHeaderV2, CowHeaderV3};
use crate::format::{ByteArray, Layout};
use crate::storage::Storage;

/// Which layout to write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CowVersion {
    V2,
    #[default]
    V3,
}

/// Writes a cow header for a disk of `size` bytes over `backing` (a path, stored as
/// given), with the backing file's modification time `mtime`. The bitmap is zeroed;
/// the data area stays sparse.
pub fn create(
    storage: &dyn Storage,
    size: u64,
    backing: &str,
    mtime: u32,
    version: CowVersion,
) -> Result<()> {
    let io = |e| Error::io("writing the cow header", e);
    // Both layouts hold the name NUL-terminated in 4096 bytes.
    let backing_file = ByteArray::<4096>::from_slice(backing.as_bytes())
        .filter(|_| backing.len() < 4096)
        .ok_or_else(|| Error::new(ErrorKind::BadArgument, "Backing file name too long"))?;
    match version {
        CowVersion::V3 => {
            let h = CowHeaderV3 {
                magic: super::header::MAGIC,
                version: 3,
                mtime,
                size,
                sectorsize: 512,
                alignment: 4096,
                cow_format: 0,
                backing_file,
            };
            h.validate(0)?;
            let bitmap_at = (CowHeaderV3::SIZE as u64).next_multiple_of(4096);
            let bitmap_len = size.div_ceil(512).div_ceil(8);
            let data_at = (bitmap_at + bitmap_len).next_multiple_of(4096);
            storage.write_at(&h.to_bytes(), 0).map_err(io)?;
            storage.set_len(data_at).map_err(io)?;
        }
        CowVersion::V2 => {
            let h = CowHeaderV2 {
                magic: super::header::MAGIC,
                version: 2,
                backing_file,
                mtime,
                size,
                sectorsize: 512,
            };
            h.validate(0)?;
            // The kernel's rounding for versions 1 and 2.
            let bitmap_len = (size + 511) / (8 * 512);
            let data_at = (CowHeaderV2::SIZE as u64 + bitmap_len).next_multiple_of(512);
            storage.write_at(&h.to_bytes(), 0).map_err(io)?;
            storage
                .set_len(data_at.max(CowHeaderV2::SIZE as u64 + bitmap_len + 1))
                .map_err(io)?;
        }
    }
    storage
        .flush()
        .map_err(|e| Error::io("flushing the new image", e))
}
