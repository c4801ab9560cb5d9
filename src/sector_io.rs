//! Guest data at host offsets, through the image's sector cipher when it has one.
//! Encryption works on whole 512-byte sectors, numbered by guest offset (legacy AES)
//! or host offset (LUKS in qcow2), so partial sectors are read, changed and written
//! back whole.

use crate::codec::SectorCipher;
use crate::error::{Error, Result};
use crate::storage::Storage;

/// Reads guest bytes starting at guest offset `guest`, stored from host offset `host`.
/// Past the end of the file the bytes are zeros (as QEMU's protocol layer pads reads).
pub fn read(
    storage: &dyn Storage,
    key: Option<&SectorCipher>,
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
    key.decrypt(first_sector(key, host, guest, lead), &mut sectors);
    buf.copy_from_slice(&sectors[lead as usize..lead as usize + buf.len()]);
    Ok(())
}

/// The number of the sector that starts `lead` bytes before `host` (guest `guest`).
fn first_sector(key: &SectorCipher, host: u64, guest: u64, lead: u64) -> u64 {
    if key.iv_from_host() {
        (host - lead) / 512
    } else {
        (guest - lead) / 512
    }
}

/// Writes guest bytes starting at guest offset `guest` to host offset `host`.
pub fn write(
    storage: &dyn Storage,
    key: Option<&SectorCipher>,
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
        key.decrypt(first_sector(key, host, guest, lead), &mut sectors);
    }
    sectors[lead as usize..lead as usize + data.len()].copy_from_slice(data);
    key.encrypt(first_sector(key, host, guest, lead), &mut sectors);
    storage.write_at(&sectors, host - lead).map_err(io)
}

/// The bytes `[start, end)` widened to whole units of `unit` bytes (sectors,
/// subclusters): a buffer from the first unit's start holding `data` where it goes,
/// and each partly covered end unit first filled by `old(unit index, its bytes)`.
/// Returns the buffer and the index of its first unit.
pub(crate) fn widen_to_units(
    start: u64,
    data: &[u8],
    unit: u64,
    mut old: impl FnMut(u64, &mut [u8]) -> Result<()>,
) -> Result<(Vec<u8>, u64)> {
    let end = start + data.len() as u64;
    let (first, last) = (start / unit, end.div_ceil(unit));
    let mut span = vec![0u8; ((last - first) * unit) as usize];
    for k in [first, last - 1] {
        if start <= k * unit && end >= (k + 1) * unit {
            continue;
        }
        let at = ((k - first) * unit) as usize;
        old(k, &mut span[at..at + unit as usize])?;
    }
    let from = (start - first * unit) as usize;
    span[from..from + data.len()].copy_from_slice(data);
    Ok((span, first))
}

#[cfg(test)]
mod widen_tests {
    use super::widen_to_units;

    #[test]
    fn partial_end_units_are_filled_from_old_content_and_whole_ones_are_not() {
        let mut asked = Vec::new();
        // Bytes 5..21 in units of 8: unit 0 partly, unit 1 wholly, unit 2 partly.
        let (span, first) = widen_to_units(5, &[0xaa; 16], 8, |k, part| {
            asked.push(k);
            part.fill(k as u8 + 1);
            Ok(())
        })
        .unwrap();
        assert_eq!((first, asked), (0, vec![0, 2]));
        let mut want = vec![1u8; 5];
        want.extend([0xaa; 16]);
        want.extend([3u8; 3]);
        assert_eq!(span, want);
    }
}
