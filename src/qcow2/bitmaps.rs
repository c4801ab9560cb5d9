//! Persistent bitmaps on disk: the directory (what `info` lists) and a bitmap's bits,
//! read into the sparse form a writer keeps them in (`bitmap_writer.rs`).

use super::Header;
use crate::error::{Error, ErrorKind, Result};
use crate::format::qcow2::{BitmapDirectoryEntry, BitmapTableEntry, BITMAP_AUTO, BITMAP_IN_USE};
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
    /// Where the entry lies in the file (its flags are updated there in place).
    pub(crate) entry_at: u64,
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
        let entry_start = at;
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
            in_use: entry.flags & BITMAP_IN_USE != 0,
            auto: entry.flags & BITMAP_AUTO != 0,
            entry,
            entry_at: ext.bitmap_directory_offset + entry_start as u64,
        });
    }
    Ok(out)
}

/// A bitmap's bits, held sparsely: one chunk per cluster of bitmap data (as the bitmap
/// table cuts it); a chunk that is absent is all zeros. Memory grows with the data
/// clusters the file holds and the ranges written, never with the disk's size.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Bits {
    /// Bits one chunk holds: the cluster size times 8.
    chunk_bits: u64,
    chunks: std::collections::BTreeMap<u64, Chunk>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Chunk {
    /// Every bit set (a table entry with the all-ones flag).
    Ones,
    /// One cluster of bitmap data: bit i is bit i % 8 of byte i / 8.
    Data(Box<[u8]>),
}

impl Bits {
    /// No bit set, cut into chunks of `cluster_size` bytes.
    pub(crate) fn new(cluster_size: u64) -> Bits {
        Bits {
            chunk_bits: cluster_size * 8,
            chunks: Default::default(),
        }
    }

    /// Sets bits `first..=last`.
    pub(crate) fn set(&mut self, first: u64, last: u64) {
        let cb = self.chunk_bits;
        for index in first / cb..=last / cb {
            let from = first.max(index * cb) - index * cb;
            let to = last.min(index * cb + cb - 1) - index * cb;
            if from == 0 && to == cb - 1 {
                self.chunks.insert(index, Chunk::Ones);
                continue;
            }
            let chunk = self
                .chunks
                .entry(index)
                .or_insert_with(|| Chunk::Data(vec![0; (cb / 8) as usize].into()));
            if let Chunk::Data(bytes) = chunk {
                for bit in from..=to {
                    bytes[(bit / 8) as usize] |= 1 << (bit % 8);
                }
            }
        }
    }

    /// Clears every bit from `first` on (a shrunk disk's bitmap).
    pub(crate) fn clear_from(&mut self, first: u64) {
        let cb = self.chunk_bits;
        let index = first / cb;
        self.chunks.retain(|&i, _| i <= index);
        let from = first - index * cb;
        if from == 0 {
            self.chunks.remove(&index);
            return;
        }
        if let Some(chunk) = self.chunks.get_mut(&index) {
            if let Chunk::Ones = chunk {
                *chunk = Chunk::Data(vec![0xff; (cb / 8) as usize].into());
            }
            if let Chunk::Data(bytes) = chunk {
                for bit in from..cb {
                    bytes[(bit / 8) as usize] &= !(1 << (bit % 8));
                }
            }
        }
    }

    /// Every set bit's run, as (first, last) bit numbers, in order.
    pub(crate) fn runs(&self) -> Vec<(u64, u64)> {
        let cb = self.chunk_bits;
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let mut push = |first: u64, last: u64| match runs.last_mut() {
            Some(run) if run.1 + 1 == first => run.1 = last,
            _ => runs.push((first, last)),
        };
        for (&index, chunk) in &self.chunks {
            let base = index * cb;
            match chunk {
                Chunk::Ones => push(base, base + cb - 1),
                Chunk::Data(bytes) => {
                    for bit in 0..cb {
                        if bytes[(bit / 8) as usize] & (1 << (bit % 8)) != 0 {
                            push(base + bit, base + bit);
                        }
                    }
                }
            }
        }
        runs
    }

    /// The chunks to store, by table index: `None` for all ones, else the bytes (a
    /// chunk with no bit set is left out).
    pub(crate) fn stored_chunks(&self) -> impl Iterator<Item = (u64, Option<&[u8]>)> {
        self.chunks.iter().filter_map(|(&i, chunk)| match chunk {
            Chunk::Ones => Some((i, None)),
            Chunk::Data(bytes) if bytes.iter().any(|&b| b != 0) => Some((i, Some(&bytes[..]))),
            Chunk::Data(_) => None,
        })
    }
}

/// The number of bitmap table entries a bitmap of `granularity_bits` over a disk of
/// `disk_size` bytes has, with clusters of `cluster_size` bytes.
pub(crate) fn table_entries(disk_size: u64, granularity_bits: u8, cluster_size: u64) -> u64 {
    let bits = disk_size.div_ceil(1 << granularity_bits);
    bits.div_ceil(8).div_ceil(cluster_size)
}

/// Reads the bits of `bitmap` (whose entry `read_directory` validated). The table is
/// bounded by the file; the data clusters read are bounded by `budget` (the file's
/// length, shared by every bitmap read together), so a table naming one cluster many
/// times cannot make memory grow past the file's size.
pub(crate) fn read_bits(
    storage: &dyn Storage,
    bitmap: &Bitmap,
    disk_size: u64,
    cluster_size: u64,
    budget: &mut u64,
) -> Result<Bits> {
    let entry = &bitmap.entry;
    let file_len = storage
        .len()
        .map_err(|e| Error::io("reading the image size", e))?;
    let entries = u64::from(entry.bitmap_table_size);
    let expected = table_entries(disk_size, entry.granularity_bits, cluster_size);
    let corrupt = |what: String| {
        Error::new(
            ErrorKind::Corrupt,
            format!("Could not read bitmap '{}' from image: {what}", bitmap.name),
        )
    };
    if entries != expected {
        return Err(corrupt(format!(
            "its table has {entries} entries where a disk of {disk_size} bytes needs {expected}"
        )));
    }
    if entry.bitmap_table_offset + entries * 8 > file_len
        || entries > crate::format::qcow2::MAX_BITMAP_TABLE_ENTRIES
    {
        return Err(corrupt(format!(
            "its table at {:#x} ({entries} entries) lies past the end of the file",
            entry.bitmap_table_offset
        )));
    }
    let table =
        crate::tables::read_be64(storage, entry.bitmap_table_offset, entries, "bitmap table")?;
    let mut bits = Bits::new(cluster_size);
    for (index, raw) in table.into_iter().enumerate() {
        let e = BitmapTableEntry::from_raw(raw);
        let data = e.data_offset();
        if e.reserved_bits() != 0 || (data != 0 && (e.all_ones() || data % cluster_size != 0)) {
            return Err(corrupt(format!("table entry {index} is invalid: {raw:#x}")));
        }
        let index = index as u64;
        if data == 0 {
            if e.all_ones() {
                bits.chunks.insert(index, Chunk::Ones);
            }
            continue;
        }
        if data + cluster_size > file_len {
            return Err(corrupt(format!(
                "table entry {index} points past the end of the file: {data:#x}"
            )));
        }
        *budget = budget.checked_sub(cluster_size).ok_or_else(|| {
            corrupt("its data clusters add up to more than the file holds".to_string())
        })?;
        let mut bytes = vec![0u8; cluster_size as usize];
        storage
            .read_exact_at(&mut bytes, data)
            .map_err(|e| Error::io(format!("reading bitmap '{}'", bitmap.name), e))?;
        bits.chunks.insert(index, Chunk::Data(bytes.into()));
    }
    // Bits past the disk's end mean nothing; they are not kept.
    bits.clear_from(disk_size.div_ceil(1 << entry.granularity_bits));
    Ok(bits)
}
