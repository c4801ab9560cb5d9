//! Tables of big-endian u64 entries (L1 tables, refcount tables), read with the
//! allocation bounded by what the file holds: entries past its end read as 0 and take
//! no memory.

use crate::error::{Error, Result};
use crate::storage::Storage;

/// Reads up to `entries` entries at `offset`; the result holds only the entries that
/// lie inside the file (callers treat missing ones as 0).
pub fn read_be64(storage: &dyn Storage, offset: u64, entries: u64, what: &str) -> Result<Vec<u64>> {
    let file_len = storage
        .len()
        .map_err(|e| Error::io("reading the file size", e))?;
    let in_file = file_len.saturating_sub(offset) / 8;
    let mut bytes = vec![0u8; (entries.min(in_file) * 8) as usize];
    storage
        .read_zero_padded(&mut bytes, offset)
        .map_err(|e| Error::io(format!("reading the {what} at {offset:#x}"), e))?;
    Ok(from_be_bytes(&bytes))
}

/// Entries from their big-endian bytes (a trailing partial entry is ignored).
pub fn from_be_bytes(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes(c.try_into().unwrap_or_default()))
        .collect()
}

/// The entries as bytes to store.
pub fn to_be_bytes(entries: &[u64]) -> Vec<u8> {
    entries.iter().flat_map(|e| e.to_be_bytes()).collect()
}
