//! One UML cow file (any of its layouts): a sector bitmap says which sectors the file
//! holds; the rest come from the backing file. Writes put the data in place first, then
//! set the bitmap bits, a 512-byte block of the bitmap at a time.

use super::header::Header;
use crate::error::{Error, ErrorKind, Result};
use crate::image::ReadLayer;
use crate::mapping::{HostOffset, Mapping};
use crate::storage::Storage;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub use crate::mapping::Below;

/// Bitmap bytes read and cached at a time; also the unit in which it is rewritten.
const PAGE: u64 = 512;
/// Bitmap pages kept in memory (256 KiB of bitmap: 1 GiB of guest data at 512 B sectors).
const PAGES: usize = 512;

/// A cow layer.
pub struct Cow {
    header: Header,
    storage: Arc<dyn Storage>,
    pages: Mutex<HashMap<u64, Arc<[u8]>>>,
    writable: bool,
}

debug_fields!(Cow: header);

impl Cow {
    pub fn open(storage: Arc<dyn Storage>, header: Header, writable: bool) -> Result<Cow> {
        Ok(Cow {
            header,
            storage,
            pages: Mutex::new(HashMap::new()),
            writable,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    fn ss(&self) -> u64 {
        u64::from(self.header.sector_size)
    }

    /// The bitmap page `index` (bytes `index * PAGE ..`), from the cache or the file.
    fn page(&self, index: u64) -> Result<Arc<[u8]>> {
        if let Some(p) = self
            .pages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&index)
        {
            return Ok(p.clone());
        }
        let mut bytes = vec![0u8; PAGE as usize];
        self.storage
            .read_zero_padded(&mut bytes, self.header.bitmap_offset + index * PAGE)
            .map_err(|e| Error::io("reading the cow bitmap", e))?;
        let page: Arc<[u8]> = bytes.into();
        let mut pages = self.pages.lock().unwrap_or_else(|e| e.into_inner());
        if pages.len() >= PAGES {
            pages.clear();
        }
        pages.insert(index, page.clone());
        Ok(page)
    }

    /// Whether the file holds sector `s` (bit s % 8 of byte s / 8, least significant first).
    fn present(&self, s: u64) -> Result<bool> {
        let byte = s / 8;
        Ok(self.page(byte / PAGE)?[(byte % PAGE) as usize] & (1 << (s % 8)) != 0)
    }

    /// Writes `data` at `guest`. A partly written sector the file did not hold gets the
    /// rest of its bytes from below first. The data goes in place; then, behind a
    /// barrier, the bitmap blocks covering the new bits are rewritten whole.
    pub fn write_at(&mut self, guest: u64, data: &[u8], below: &Below) -> Result<()> {
        if !self.writable {
            return Err(Error::new(
                ErrorKind::BadArgument,
                "the image was opened read-only",
            ));
        }
        let end = guest + data.len() as u64;
        if end > self.size() {
            return Err(Error::new(
                ErrorKind::BadArgument,
                "write past the end of the image",
            ));
        }
        if data.is_empty() {
            return Ok(());
        }
        let ss = self.ss();
        let (s0, s1) = (guest / ss, end.div_ceil(ss));
        if self.header.bitmap_offset + (s1 - 1) / 8 >= self.header.data_offset {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("sector {} has no bit inside this cow file's bitmap (the v1/v2 layout's rounding)", s1 - 1),
            ));
        }
        let (span, _) = crate::sector_io::widen_to_units(guest, data, ss, |s, part| {
            if self.present(s)? {
                self.storage
                    .read_zero_padded(part, self.header.data_offset + s * ss)
                    .map_err(|e| Error::io("reading cow data", e))?;
                Ok(())
            } else {
                below(s * ss, part)
            }
        })?;
        self.storage
            .write_at(&span, self.header.data_offset + s0 * ss)
            .map_err(|e| Error::io("writing cow data", e))?;
        self.storage
            .flush()
            .map_err(|e| Error::io("flushing cow data", e))?;
        // The bits, by whole bitmap blocks.
        let (first_page, last_page) = ((s0 / 8) / PAGE, ((s1 - 1) / 8) / PAGE);
        for index in first_page..=last_page {
            let mut page = self.page(index)?.to_vec();
            let mut changed = false;
            for s in s0.max(index * PAGE * 8)..s1.min((index + 1) * PAGE * 8) {
                let byte = ((s / 8) % PAGE) as usize;
                if page[byte] & (1 << (s % 8)) == 0 {
                    page[byte] |= 1 << (s % 8);
                    changed = true;
                }
            }
            if changed {
                // Only the bitmap's own bytes: in the older layouts a block can reach
                // into the data area.
                let at = self.header.bitmap_offset + index * PAGE;
                let room = self.header.data_offset.saturating_sub(at).min(PAGE) as usize;
                self.storage
                    .write_at(&page[..room], at)
                    .map_err(|e| Error::io("writing the cow bitmap", e))?;
                self.pages
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(index, page.into());
            }
        }
        Ok(())
    }
}

impl Cow {
    /// UML records the backing file's modification time in a cow header and complains
    /// when it changed (the backing file may no longer be what the cow file was made
    /// over); QEMU's layout does not keep it. `backing` is the backing file's path.
    pub fn backing_mtime_warning(&self, backing: &std::path::Path) -> Option<String> {
        let h = &self.header;
        if matches!(h.fields, super::header::Fields::Qemu(_)) || h.backing_file.is_empty() {
            return None;
        }
        let modified = std::fs::metadata(backing).ok()?.modified().ok()?;
        let secs = modified
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs() as u32;
        (secs != h.mtime).then(|| {
            format!(
                "backing file '{}' was modified (mtime {secs}) since the cow file was made over it (mtime {})",
                backing.display(),
                h.mtime
            )
        })
    }
}

impl ReadLayer for Cow {
    fn file(&self) -> &dyn Storage {
        self.storage.as_ref()
    }

    fn size(&self) -> u64 {
        self.header.size
    }

    fn classify(&self, guest: u64) -> Result<(Mapping, u64)> {
        let s = guest / self.ss();
        let present = self.present(s)?;
        // Sectors to the end of this bitmap byte share the answer when the byte is all
        // ones or all zeros: step a byte at a time, not a bit.
        let byte = self.page((s / 8) / PAGE)?[((s / 8) % PAGE) as usize];
        let uniform = (present && byte == 0xff) || (!present && byte == 0);
        let end = if uniform {
            (s / 8 + 1) * 8 * self.ss()
        } else {
            (s + 1) * self.ss()
        };
        if present {
            Ok((
                Mapping::Data {
                    host: HostOffset(self.header.data_offset + guest),
                },
                end,
            ))
        } else {
            Ok((Mapping::Unallocated { host: None }, end))
        }
    }

    fn read_data(&self, host: u64, guest: u64, buf: &mut [u8]) -> Result<()> {
        crate::sector_io::read(self.storage.as_ref(), None, host, guest, buf)
    }

    fn backing_name(&self) -> Option<(String, Option<String>)> {
        let name = &self.header().backing_file;
        (!name.is_empty()).then(|| (String::from_utf8_lossy(name).into_owned(), None))
    }
}
