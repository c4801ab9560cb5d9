//! The raw `luks` format (qemu-img's `-f luks`): a LUKS1 header and key material, then
//! the guest disk encrypted sector by sector, IVs numbered from the payload's start.

use super::LuksVolume;
use crate::codec::SectorCipher;
use crate::error::{Error, ErrorKind, Result};
use crate::format::luks::{LuksHeader, SECTOR_SIZE};
use crate::format::Layout;
use crate::image::ReadLayer;
use crate::mapping::{HostOffset, Mapping};
use crate::storage::Storage;
use crate::Secret;
use std::sync::Arc;

/// An opened LUKS volume.
#[derive(Debug)]
pub struct Luks {
    storage: Arc<dyn Storage>,
    volume: LuksVolume,
    /// None when opened for metadata only (info): nothing was unlocked.
    cipher: Option<SectorCipher>,
    /// Where the payload starts, in bytes.
    payload: u64,
    size: u64,
}

impl Luks {
    /// Reads and checks the header, then unlocks it with `passphrase` (unless `io` is
    /// false: then only the header is read, as qemu-img info reads it).
    pub fn open(storage: Arc<dyn Storage>, passphrase: Option<&Secret>, io: bool) -> Result<Luks> {
        let len = storage
            .len()
            .map_err(|e| Error::io("reading the size of the LUKS volume", e))?;
        let volume = LuksVolume::read(storage.as_ref(), 0, len)?;
        let payload = volume.payload_offset();
        if payload > len || payload < super::HEADER_LEN {
            return Err(Error::field(
                ErrorKind::Corrupt,
                LuksHeader::NAME,
                "payload_offset",
                LuksHeader::offset_of("payload_offset"),
                payload / SECTOR_SIZE,
                format!(
                    "The LUKS payload offset {payload} lies outside the volume ({len} bytes, header {})",
                    super::HEADER_LEN
                ),
            ));
        }
        let cipher = if io {
            let passphrase = passphrase.ok_or_else(|| {
                Error::new(
                    ErrorKind::BadArgument,
                    "Parameter 'key-secret' is required for cipher",
                )
            })?;
            Some(volume.unlock(storage.as_ref(), 0, passphrase.as_bytes(), false)?)
        } else {
            None
        };
        Ok(Luks {
            storage,
            volume,
            cipher,
            payload,
            size: (len - payload) / 512 * 512,
        })
    }

    /// The header as read.
    pub fn volume(&self) -> &LuksVolume {
        &self.volume
    }

    fn cipher(&self) -> Result<&SectorCipher> {
        self.cipher.as_ref().ok_or_else(|| {
            Error::new(
                ErrorKind::BadArgument,
                "the LUKS volume was opened without its passphrase",
            )
        })
    }

    /// Encrypts and writes guest bytes at `guest`.
    pub fn write_at(&mut self, guest: u64, buf: &[u8]) -> Result<()> {
        let cipher = self.cipher()?;
        crate::sector_io::write(
            self.storage.as_ref(),
            Some(cipher),
            self.payload + guest,
            guest,
            buf,
        )
    }

    /// Writes encrypted zeros over a range (the file holds ciphertext: a hole would
    /// read as noise).
    pub fn write_zeroes(&mut self, guest: u64, len: u64) -> Result<()> {
        crate::image::write_zero_buffers(guest, len, |at, zeros| self.write_at(at, zeros))
    }

    /// Changes the payload's size; a grown range is written as encrypted zeros.
    pub fn resize(&mut self, new_size: u64) -> Result<()> {
        if new_size % 512 != 0 {
            return Err(Error::new(
                ErrorKind::BadArgument,
                "The new size must be a multiple of 512",
            ));
        }
        let old = self.size;
        self.storage
            .set_len(self.payload + new_size)
            .map_err(|e| Error::io("resizing the LUKS volume", e))?;
        self.size = new_size;
        if new_size > old {
            self.write_zeroes(old, new_size - old)?;
        }
        Ok(())
    }

    /// Adds or erases key slots (qemu-img amend), unlocking with the passphrase the
    /// volume was opened with.
    pub fn amend(&mut self, secret: Option<&Secret>, change: &super::KeySlotChange) -> Result<()> {
        self.volume
            .amend(self.storage.as_ref(), 0, secret, change)?;
        self.storage
            .flush()
            .map_err(|e| Error::io("flushing the LUKS header", e))
    }
}

impl ReadLayer for Luks {
    fn file(&self) -> &dyn Storage {
        self.storage.as_ref()
    }

    fn size(&self) -> u64 {
        self.size
    }

    /// Every sector is data (ciphertext gives no hint of zeros), as QEMU maps it.
    fn classify(&self, guest: u64) -> Result<(Mapping, u64)> {
        Ok((
            Mapping::Data {
                host: HostOffset(self.payload + guest),
            },
            self.size,
        ))
    }

    fn read_data(&self, host: u64, guest: u64, buf: &mut [u8]) -> Result<()> {
        crate::sector_io::read(
            self.storage.as_ref(),
            Some(self.cipher()?),
            host,
            guest,
            buf,
        )
    }

    fn is_encrypted(&self) -> bool {
        true
    }
}
