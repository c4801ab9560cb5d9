//! Persistent bitmaps while a handle writes. Before the first change (a guest write, a
//! resize, a bitmap command) every bitmap is read and the consistent ones are marked in
//! use on disk, as QEMU marks them when it opens an image read-write; every guest write
//! then sets the bits of the enabled ones; at close they are stored back (new tables
//! and data, a new directory, the header switched to it, the old clusters freed) and
//! the in-use marks are gone. A crash in between leaves them marked in use: QEMU then
//! treats them as inconsistent, never as true.

use super::bitmaps::{read_bits, read_directory, table_entries, Bitmap, Bits};
use super::layer::Qcow2;
use crate::error::{Error, ErrorKind, Result};
use crate::format::qcow2::{
    autoclear, BitmapDirectoryEntry, BitmapsExtension, ExtensionMagic, BITMAP_AUTO, BITMAP_IN_USE,
    MAX_BITMAPS, MAX_BITMAP_BYTES, MAX_BITMAP_GRANULARITY_BITS, MAX_BITMAP_NAME_LEN,
    MAX_BITMAP_TABLE_ENTRIES, MIN_BITMAP_GRANULARITY_BITS,
};
use crate::format::Layout;

/// QEMU's largest bitmap directory.
const MAX_DIRECTORY_BYTES: u64 = 1024 * MAX_BITMAPS as u64;

/// The bitmaps a writing handle holds.
#[derive(Debug, Default)]
pub(super) struct HeldBitmaps {
    list: Vec<Held>,
    /// The directory and the tables as they were on disk when read: freed once the
    /// header names their replacements (an in-use bitmap's table, kept, excepted).
    old_directory: Option<(u64, u64)>,
    old_tables: Vec<(u64, u32)>,
}

#[derive(Debug)]
struct Held {
    name: String,
    granularity_bits: u8,
    enabled: bool,
    /// `None` for a bitmap that was in use on disk: its bits cannot be trusted, so it is
    /// kept exactly as stored and never written (QEMU's "inconsistent").
    bits: Option<Bits>,
    /// Its table on disk, for a bitmap read from the image.
    table: Option<(u64, u32)>,
}

/// What a caller reads of one bitmap: its granularity and its bits.
#[derive(Clone, Debug)]
pub struct BitmapContent {
    /// Bytes one bit covers, as a power of two.
    pub granularity_bits: u8,
    pub(crate) bits: Bits,
    /// The disk size the bitmap covers.
    pub disk_size: u64,
}

impl BitmapContent {
    /// The guest byte ranges (start, length) the set bits cover.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        let g = self.granularity_bits;
        self.bits
            .runs()
            .into_iter()
            .map(|(first, last)| {
                let start = first << g;
                let end = ((last + 1) << g).min(self.disk_size);
                (start, end.saturating_sub(start))
            })
            .filter(|&(_, len)| len > 0)
            .collect()
    }
}

fn bad(message: String) -> Error {
    Error::new(ErrorKind::BadArgument, message)
}

fn inconsistent(name: &str) -> Error {
    bad(format!(
        "Bitmap '{name}' is inconsistent and cannot be used\nTry block-dirty-bitmap-remove to delete this bitmap from disk"
    ))
}

impl Qcow2 {
    /// Whether the file has bitmaps QEMU would load (its extension, marked consistent).
    fn has_stored_bitmaps(&self) -> bool {
        self.header.autoclear_features() & autoclear::BITMAPS != 0
            && self.header.extension(ExtensionMagic::Bitmaps).is_some()
    }

    /// The bitmaps, read and marked in use on first call (see the module comment).
    fn held_bitmaps(&mut self) -> Result<&mut HeldBitmaps> {
        if self.held_bitmaps.is_none() {
            self.is_writable()?;
            let held = self.read_bitmaps_for_writing()?;
            self.held_bitmaps = Some(held);
        }
        self.held_bitmaps
            .as_mut()
            .ok_or_else(|| Error::new(ErrorKind::Io, "bitmaps not held"))
    }

    fn read_bitmaps_for_writing(&mut self) -> Result<HeldBitmaps> {
        let mut held = HeldBitmaps::default();
        if !self.has_stored_bitmaps() {
            return Ok(held);
        }
        let stored = read_directory(self.storage.as_ref(), &self.header)?;
        let mut budget = self
            .storage
            .len()
            .map_err(|e| Error::io("reading the image size", e))?;
        let (size, cs) = (self.header.common.size, self.cs());
        for b in &stored {
            let bits = match b.in_use {
                true => None,
                false => Some(read_bits(self.storage.as_ref(), b, size, cs, &mut budget)?),
            };
            held.list.push(Held {
                name: b.name.clone(),
                granularity_bits: b.entry.granularity_bits,
                enabled: b.auto,
                bits,
                table: Some((b.entry.bitmap_table_offset, b.entry.bitmap_table_size)),
            });
            held.old_tables
                .push((b.entry.bitmap_table_offset, b.entry.bitmap_table_size));
        }
        if let Some(ext) = self.header.bitmaps()? {
            held.old_directory = Some((ext.bitmap_directory_offset, ext.bitmap_directory_size));
        }
        self.mark_in_use(&stored)?;
        Ok(held)
    }

    /// Sets the in-use flag of every consistent bitmap in place, with the consistency
    /// bit off while the directory is being written (as QEMU does it): a torn write
    /// leaves bitmaps QEMU drops, never ones it believes.
    fn mark_in_use(&mut self, stored: &[Bitmap]) -> Result<()> {
        if stored.iter().all(|b| b.in_use) {
            return Ok(());
        }
        let bits = self.header.autoclear_features();
        self.header
            .write_autoclear_features(self.storage.as_ref(), bits & !autoclear::BITMAPS)?;
        self.sync_files()?;
        for b in stored.iter().filter(|b| !b.in_use) {
            let mut entry = b.entry.clone();
            entry.flags |= BITMAP_IN_USE;
            self.storage
                .write_at(&entry.to_bytes(), b.entry_at)
                .map_err(|e| Error::io(format!("marking bitmap '{}' in use", b.name), e))?;
        }
        self.sync_files()?;
        self.header
            .write_autoclear_features(self.storage.as_ref(), bits | autoclear::BITMAPS)?;
        self.sync_files()
    }

    /// Sets the bits of the enabled bitmaps that cover guest bytes `[guest, guest + len)`
    /// (called by every guest write before it changes anything).
    pub(super) fn track_change(&mut self, guest: u64, len: u64) -> Result<()> {
        if len == 0 || (self.held_bitmaps.is_none() && !self.has_stored_bitmaps()) {
            return Ok(());
        }
        for b in &mut self.held_bitmaps()?.list {
            if let (true, Some(bits)) = (b.enabled, &mut b.bits) {
                let g = b.granularity_bits;
                bits.set(guest >> g, (guest + len - 1) >> g);
            }
        }
        Ok(())
    }

    /// Before a resize: every bitmap must be consistent (QEMU resizes them all). Their
    /// bits past the end are dropped when they are stored, at the size the disk has
    /// then, so a resize that fails loses no bit.
    pub(super) fn resize_bitmaps(&mut self) -> Result<()> {
        if self.held_bitmaps.is_none() && !self.has_stored_bitmaps() {
            return Ok(());
        }
        match self.held_bitmaps()?.list.iter().find(|b| b.bits.is_none()) {
            Some(b) => Err(inconsistent(&b.name)),
            None => Ok(()),
        }
    }

    fn held(&mut self, name: &str) -> Result<&mut Held> {
        self.held_bitmaps()?
            .list
            .iter_mut()
            .find(|b| b.name == name)
            .ok_or_else(|| bad(format!("Dirty bitmap '{name}' not found")))
    }

    /// A new persistent bitmap with no bit set (`qemu-img bitmap --add`); the granularity
    /// defaults to the cluster size within 4 KiB..64 KiB, as QEMU's does.
    pub fn add_bitmap(
        &mut self,
        name: &str,
        granularity: Option<u64>,
        enabled: bool,
    ) -> Result<()> {
        if name.is_empty() {
            return Err(bad("Bitmap name cannot be empty".into()));
        }
        let granularity = match granularity {
            Some(g) if g < 512 || !g.is_power_of_two() => {
                return Err(bad("Granularity must be power of 2 and at least 512".into()))
            }
            Some(g) => g,
            None => self.cs().clamp(4096, 65536),
        };
        let refuse = |why: &str| bad(format!("Can't make bitmap '{name}' persistent: {why}"));
        if self.held_bitmaps()?.list.iter().any(|b| b.name == name) {
            return Err(bad(format!("Bitmap already exists: {name}")));
        }
        if self.header.version() < 3 {
            return Err(refuse("Cannot store dirty bitmaps in qcow2 v2 files"));
        }
        let granularity_bits = granularity.trailing_zeros();
        if granularity_bits > MAX_BITMAP_GRANULARITY_BITS {
            return Err(refuse(&format!(
                "Granularity exceeds maximum ({} bytes)",
                1u64 << MAX_BITMAP_GRANULARITY_BITS
            )));
        }
        debug_assert!(granularity_bits >= MIN_BITMAP_GRANULARITY_BITS);
        let bytes = self.header.common.size.div_ceil(granularity).div_ceil(8);
        if bytes > MAX_BITMAP_BYTES || bytes > MAX_BITMAP_TABLE_ENTRIES * self.cs() {
            return Err(refuse(
                "Too much space will be occupied by the bitmap. Use larger granularity",
            ));
        }
        if name.len() > MAX_BITMAP_NAME_LEN as usize {
            return Err(refuse(&format!(
                "Name length exceeds maximum ({MAX_BITMAP_NAME_LEN} characters)"
            )));
        }
        let cs = self.cs();
        let list = &mut self.held_bitmaps()?.list;
        if list.len() >= MAX_BITMAPS as usize {
            return Err(refuse(
                "Maximum number of persistent bitmaps is already reached",
            ));
        }
        let directory: u64 = list.iter().map(|b| entry_size(&b.name)).sum();
        if directory + entry_size(name) > MAX_DIRECTORY_BYTES {
            return Err(refuse("Not enough space in the bitmap directory"));
        }
        list.push(Held {
            name: name.to_string(),
            granularity_bits: granularity_bits as u8,
            enabled,
            bits: Some(Bits::new(cs)),
            table: None,
        });
        Ok(())
    }

    /// Removes a bitmap (an inconsistent one too).
    pub fn remove_bitmap(&mut self, name: &str) -> Result<()> {
        self.held(name)?;
        self.held_bitmaps()?.list.retain(|b| b.name != name);
        Ok(())
    }

    /// Clears every bit of a bitmap.
    pub fn clear_bitmap(&mut self, name: &str) -> Result<()> {
        let cs = self.cs();
        let b = self.held(name)?;
        match &mut b.bits {
            Some(bits) => *bits = Bits::new(cs),
            None => return Err(inconsistent(name)),
        }
        Ok(())
    }

    /// Enables (guest writes set its bits) or disables a bitmap.
    pub fn set_bitmap_enabled(&mut self, name: &str, enabled: bool) -> Result<()> {
        let b = self.held(name)?;
        if b.bits.is_none() {
            return Err(inconsistent(name));
        }
        b.enabled = enabled;
        Ok(())
    }

    /// Sets in bitmap `name` every bit covering a range `source` has set (of this image or
    /// another of the same size), as `qemu-img bitmap --merge` does.
    pub fn merge_into_bitmap(&mut self, name: &str, source: &BitmapContent) -> Result<()> {
        let size = self.header.common.size;
        let b = self.held(name)?;
        let g = b.granularity_bits;
        let Some(bits) = &mut b.bits else {
            return Err(inconsistent(name));
        };
        if source.disk_size != size {
            return Err(bad(format!(
                "Bitmaps are of different sizes (destination size is {size}, source size is {}) and can't be merged",
                source.disk_size
            )));
        }
        for (start, len) in source.ranges() {
            bits.set(start >> g, (start + len - 1) >> g);
        }
        Ok(())
    }

    /// A bitmap's content: as held by this handle if it writes, else as stored.
    pub fn bitmap_content(&self, name: &str) -> Result<BitmapContent> {
        let size = self.header.common.size;
        if let Some(held) = &self.held_bitmaps {
            let b = held
                .list
                .iter()
                .find(|b| b.name == name)
                .ok_or_else(|| bad(format!("Dirty bitmap '{name}' not found")))?;
            let bits = b.bits.clone().ok_or_else(|| inconsistent(name))?;
            return Ok(BitmapContent {
                granularity_bits: b.granularity_bits,
                bits,
                disk_size: size,
            });
        }
        let stored = read_directory(self.storage.as_ref(), &self.header)?;
        let b = stored
            .iter()
            .find(|b| b.name == name)
            .ok_or_else(|| bad(format!("Dirty bitmap '{name}' not found")))?;
        if b.in_use {
            return Err(inconsistent(name));
        }
        let mut budget = self
            .storage
            .len()
            .map_err(|e| Error::io("reading the image size", e))?;
        Ok(BitmapContent {
            granularity_bits: b.entry.granularity_bits,
            bits: read_bits(self.storage.as_ref(), b, size, self.cs(), &mut budget)?,
            disk_size: size,
        })
    }

    /// Stores the held bitmaps back (see the module comment); nothing when none were
    /// read. Called at close.
    pub(super) fn store_bitmaps(&mut self) -> Result<()> {
        let Some(held) = self.held_bitmaps.take() else {
            return Ok(());
        };
        let result = self.write_bitmaps(&held);
        if result.is_err() {
            // Left marked in use on disk: inconsistent, as after a crash.
            self.held_bitmaps = None;
        }
        result
    }

    fn write_bitmaps(&mut self, held: &HeldBitmaps) -> Result<()> {
        // Nothing to store; or the image became version 2 (amend compat=0.10), which
        // has no consistency bit to keep bitmaps by: QEMU drops them then too.
        if (held.list.is_empty() && held.old_directory.is_none()) || self.header.version() < 3 {
            return Ok(());
        }
        self.write_back()?;
        let cs = self.cs();
        let size = self.header.common.size;
        let mut directory = Vec::new();
        for b in &held.list {
            let (table, flags) = match &b.bits {
                Some(bits) => {
                    let table = self.store_table(b, bits, size).map_err(|e| {
                        e.context(format_args!("Failed to write bitmap '{}' to file", b.name))
                    })?;
                    (table, if b.enabled { BITMAP_AUTO } else { 0 })
                }
                None => {
                    let auto = if b.enabled { BITMAP_AUTO } else { 0 };
                    (b.table.unwrap_or_default(), BITMAP_IN_USE | auto)
                }
            };
            let entry = BitmapDirectoryEntry {
                bitmap_table_offset: table.0,
                bitmap_table_size: table.1,
                flags,
                bitmap_type: BitmapDirectoryEntry::BITMAP_TYPE_REQUIRED,
                granularity_bits: b.granularity_bits,
                name_size: b.name.len() as u16,
                extra_data_size: 0,
            };
            directory.extend(entry.to_bytes());
            directory.extend_from_slice(b.name.as_bytes());
            directory.resize(directory.len().next_multiple_of(8), 0);
        }
        let extension = if directory.is_empty() {
            None
        } else {
            let at = self.alloc((directory.len() as u64).div_ceil(cs))?;
            self.storage
                .write_at(&directory, at)
                .map_err(|e| Error::io("writing the bitmap directory", e))?;
            Some(BitmapsExtension {
                nb_bitmaps: held.list.len() as u32,
                reserved: 0,
                bitmap_directory_size: directory.len() as u64,
                bitmap_directory_offset: at,
            })
        };
        // Everything the new directory names is on disk, with its refcounts, before the
        // header names it.
        self.write_back()?;
        self.sync_files()?;
        self.rewrite_header(|h| {
            h.set_bitmaps(extension.as_ref());
            Ok(())
        })?;
        // Then the old copies go.
        let kept: Vec<(u64, u32)> = held
            .list
            .iter()
            .filter(|b| b.bits.is_none())
            .filter_map(|b| b.table)
            .collect();
        if let Some((at, len)) = held.old_directory {
            self.release(at, len)?;
        }
        for &(at, entries) in held.old_tables.iter().filter(|t| !kept.contains(t)) {
            self.release_table(at, entries)?;
        }
        self.write_back()?;
        self.sync()
    }

    /// Writes one bitmap's data clusters and table (its bits past the disk's end
    /// dropped); returns where the table is and its entry count.
    fn store_table(&mut self, b: &Held, bits: &Bits, size: u64) -> Result<(u64, u32)> {
        let mut bits = bits.clone();
        bits.clear_from(size.div_ceil(1 << b.granularity_bits));
        let cs = self.cs();
        let entries = table_entries(size, b.granularity_bits, cs);
        if entries > MAX_BITMAP_TABLE_ENTRIES || entries * cs > MAX_BITMAP_BYTES {
            return Err(bad(format!("Bitmap '{}' is too big", b.name)));
        }
        if entries == 0 {
            return Ok((0, 0));
        }
        let mut table = vec![0u64; entries as usize];
        for (index, chunk) in bits.stored_chunks().filter(|&(i, _)| i < entries) {
            table[index as usize] = match chunk {
                None => 1,
                Some(bytes) => {
                    let at = self.alloc(1)?;
                    self.storage
                        .write_at(bytes, at)
                        .map_err(|e| Error::io("writing bitmap data", e))?;
                    at
                }
            };
        }
        let bytes = crate::tables::to_be_bytes(&table);
        let at = self.alloc((bytes.len() as u64).div_ceil(cs))?;
        self.storage
            .write_at(&bytes, at)
            .map_err(|e| Error::io("writing a bitmap table", e))?;
        Ok((at, entries as u32))
    }

    /// Frees a stored bitmap table and the data clusters it names.
    fn release_table(&mut self, at: u64, entries: u32) -> Result<()> {
        if at == 0 {
            return Ok(());
        }
        let table = crate::tables::read_be64(
            self.storage.as_ref(),
            at,
            u64::from(entries),
            "bitmap table",
        )?;
        let cs = self.cs();
        for raw in table {
            let data = crate::format::qcow2::BitmapTableEntry::from_raw(raw).data_offset();
            if data != 0 {
                self.release(data, cs)?;
            }
        }
        self.release(at, u64::from(entries) * 8)
    }
}

/// Bytes one directory entry takes with this name (no extra data), padded to 8.
fn entry_size(name: &str) -> u64 {
    (BitmapDirectoryEntry::SIZE + name.len()).next_multiple_of(8) as u64
}
