//! The persistent bitmap directory (what `info` lists; bitmaps are not otherwise used).

use super::Header;
use crate::error::{Error, ErrorKind, Result};
use crate::format::qcow2::BitmapDirectoryEntry;
use crate::format::Layout;
use crate::storage::Storage;

/// One persistent bitmap.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Bitmap {
    /// The bitmap's name.
    pub name: String,
    /// Bytes one bit covers.
    pub granularity: u64,
    /// QEMU had the bitmap open for writing and did not close it cleanly: its bits cannot
    /// be trusted.
    pub in_use: bool,
    /// QEMU keeps the bitmap up to date with every write.
    pub auto: bool,
    /// The directory entry as stored.
    pub entry: BitmapDirectoryEntry,
}

/// The bitmaps of an image whose bitmaps extension is present and consistent (autoclear
/// bit 0 set); an empty list otherwise, as QEMU ignores inconsistent bitmaps.
pub fn read_directory(storage: &dyn Storage, header: &Header) -> Result<Vec<Bitmap>> {
    let Some(ext) = header.bitmaps()? else {
        return Ok(Vec::new());
    };
    if header.autoclear_features() & crate::format::qcow2::autoclear::BITMAPS == 0 {
        return Ok(Vec::new());
    }
    // validate() bounded the directory to 1024 × 65535 bytes.
    let mut dir = vec![0u8; ext.bitmap_directory_size as usize];
    storage
        .read_exact_at(&mut dir, ext.bitmap_directory_offset)
        .map_err(|e| Error::io("reading the bitmap directory", e))?;
    let mut out = Vec::new();
    let mut at = 0usize;
    for i in 0..ext.nb_bitmaps {
        let entry = BitmapDirectoryEntry::parse(dir.get(at..).unwrap_or_default())
            .map_err(|e| e.context(format_args!("bitmap directory entry {i}")))?;
        entry.validate(
            ext.bitmap_directory_offset + at as u64,
            header.cluster_bits(),
        )?;
        let name_at = at + BitmapDirectoryEntry::SIZE + entry.extra_data_size as usize;
        let name = dir
            .get(name_at..name_at + usize::from(entry.name_size))
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Corrupt,
                    format!("bitmap directory entry {i} runs past the directory"),
                )
            })?;
        at = (name_at + usize::from(entry.name_size)).next_multiple_of(8);
        out.push(Bitmap {
            name: String::from_utf8_lossy(name).into_owned(),
            granularity: 1 << entry.granularity_bits,
            in_use: entry.flags & 1 != 0,
            auto: entry.flags & 2 != 0,
            entry,
        });
    }
    Ok(out)
}
