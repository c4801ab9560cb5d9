//! The legacy qcow/qcow2 cipher (crypt_method 1): AES-128-CBC over each 512-byte
//! sector, the key being the passphrase truncated or zero-padded to 16 bytes, the IV
//! the little-endian guest sector number ("plain64").

use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};

type Dec = cbc::Decryptor<aes::Aes128>;
type Enc = cbc::Encryptor<aes::Aes128>;

/// Bytes a legacy-AES sector covers.
pub const SECTOR: usize = 512;

/// A legacy AES key.
#[derive(Clone)]
pub struct LegacyAes {
    key: [u8; 16],
}

impl std::fmt::Debug for LegacyAes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LegacyAes { .. }")
    }
}

impl LegacyAes {
    /// The key QEMU derives from a passphrase: its first 16 bytes, zero-padded.
    pub fn from_passphrase(passphrase: &[u8]) -> LegacyAes {
        let mut key = [0u8; 16];
        let n = passphrase.len().min(16);
        key[..n].copy_from_slice(&passphrase[..n]);
        LegacyAes { key }
    }

    fn iv(sector: u64) -> [u8; 16] {
        let mut iv = [0u8; 16];
        iv[..8].copy_from_slice(&sector.to_le_bytes());
        iv
    }

    /// Decrypts whole sectors in place; `first_sector` is the guest sector of `data[0]`.
    pub fn decrypt(&self, first_sector: u64, data: &mut [u8]) {
        for (i, sector) in data.chunks_exact_mut(SECTOR).enumerate() {
            let dec = Dec::new(&self.key.into(), &Self::iv(first_sector + i as u64).into());
            // Cannot fail: a sector is 32 whole cipher blocks and no padding is asked for.
            let _ = dec.decrypt_padded_mut::<aes::cipher::block_padding::NoPadding>(sector);
        }
    }

    /// Encrypts whole sectors in place; `first_sector` is the guest sector of `data[0]`.
    pub fn encrypt(&self, first_sector: u64, data: &mut [u8]) {
        for (i, sector) in data.chunks_exact_mut(SECTOR).enumerate() {
            let enc = Enc::new(&self.key.into(), &Self::iv(first_sector + i as u64).into());
            // Cannot fail, as above.
            let _ = enc.encrypt_padded_mut::<aes::cipher::block_padding::NoPadding>(sector, SECTOR);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sectors_round_trip_and_depend_on_their_number() {
        let key = LegacyAes::from_passphrase(b"hunter2");
        let plain = vec![0x5a; 1024];
        let mut a = plain.clone();
        key.encrypt(7, &mut a);
        assert_ne!(a[..512], a[512..], "each sector has its own IV");
        let mut b = a.clone();
        key.decrypt(7, &mut b);
        assert_eq!(b, plain);
        key.decrypt(8, &mut a);
        assert_ne!(a, plain);
    }
}
