//! Guest data at host offsets, through the legacy AES cipher when the image has one.
//! Encryption works on whole 512-byte sectors numbered by guest offset, so partial
//! sectors are read, changed and written back whole.

use crate::codec::LegacyAes;
use crate::error::{Error, Result};
use crate::storage::Storage;

/// Reads guest bytes starting at guest offset `guest`, stored from host offset `host`.
/// Past the end of the file the bytes are zeros (as QEMU's protocol layer pads reads).
pub fn read(
    storage: &dyn Storage,
    key: Option<&LegacyAes>,
    host: u64,
    guest: u64,
    buf: &mut [u8],
) -> Result<()> {
    let io = |e| Error::io(format!("reading data at {host:#x}"), e);
    let Some(key) = key else {
        storage.read_zero_padded(buf, host).map_err(io)?;
        return Ok(());
    };
    let lead = guest % 512;
    let span = (lead + buf.len() as u64).next_multiple_of(512);
    let mut sectors = vec![0u8; span as usize];
    storage
        .read_zero_padded(&mut sectors, host - lead)
        .map_err(io)?;
    key.decrypt((guest - lead) / 512, &mut sectors);
    buf.copy_from_slice(&sectors[lead as usize..lead as usize + buf.len()]);
    Ok(())
}

/// Writes guest bytes starting at guest offset `guest` to host offset `host`.
pub fn write(
    storage: &dyn Storage,
    key: Option<&LegacyAes>,
    host: u64,
    guest: u64,
    data: &[u8],
) -> Result<()> {
    let io = |e| Error::io(format!("writing data at {host:#x}"), e);
    let Some(key) = key else {
        return storage.write_at(data, host).map_err(io);
    };
    let lead = guest % 512;
    let span = (lead + data.len() as u64).next_multiple_of(512);
    let mut sectors = vec![0u8; span as usize];
    if lead != 0 || span != data.len() as u64 {
        storage
            .read_zero_padded(&mut sectors, host - lead)
            .map_err(io)?;
        key.decrypt((guest - lead) / 512, &mut sectors);
    }
    sectors[lead as usize..lead as usize + data.len()].copy_from_slice(data);
    key.encrypt((guest - lead) / 512, &mut sectors);
    storage.write_at(&sectors, host - lead).map_err(io)
}
