//! LUKS1 volumes as QEMU keeps them (inside qcow2 with crypt_method 2, or as the raw
//! `luks` format): the header and key slots read through their generated views and
//! checked as QEMU checks them, and a passphrase turned into the sector cipher — each
//! active slot's key derived with PBKDF2, its key material decrypted and merged by the
//! anti-forensic splitter, the result checked against the master key digest.
//! Every size a header names is bounded before anything is allocated or iterated.

use crate::codec::cipher::{CipherAlg, CipherMode, CipherSpec, HashAlg, IvGenAlg, SectorCipher};
use crate::error::{Error, ErrorKind, Result};
use crate::format::luks::{
    LuksHeader, LuksKeySlot, KEY_SLOTS_AT, MAX_ITERATIONS, NUM_KEY_SLOTS, SECTOR_SIZE, SLOT_ACTIVE,
    STRIPES,
};
use crate::format::Layout;
use crate::storage::Storage;
use zeroize::Zeroizing;

mod keyslots;
mod layer;
pub(crate) use keyslots::area_len;
pub use keyslots::{KeySlotChange, LuksOptions};
pub use layer::Luks;

/// Bytes of the header with its key slots.
pub const HEADER_LEN: u64 = KEY_SLOTS_AT + NUM_KEY_SLOTS as u64 * 48;

/// A LUKS1 header: its fields as read, the algorithms they name, its key slots.
#[derive(Clone, Debug)]
pub struct LuksVolume {
    /// The fixed part.
    pub header: LuksHeader,
    /// The eight key slots.
    pub slots: Vec<LuksKeySlot>,
    /// The data cipher the header names.
    pub spec: CipherSpec,
    /// The hash of PBKDF2 and the splitter.
    pub hash: HashAlg,
}

/// A NUL-terminated name field as text.
pub(super) fn name<const N: usize>(field: &crate::format::ByteArray<N>) -> String {
    String::from_utf8_lossy(field.until_nul()).into_owned()
}

pub(super) fn corrupt(message: String) -> Error {
    Error::new(ErrorKind::Corrupt, message)
}

impl LuksVolume {
    /// Reads and checks the header at byte `at` of `storage`, whose key material must
    /// lie within `area` bytes from `at` (the qcow2 crypto extension's length, or the
    /// raw file's size).
    pub fn read(storage: &dyn Storage, at: u64, area: u64) -> Result<LuksVolume> {
        let header = LuksHeader::read_from(storage, at)?;
        header.validate(at)?;
        let mut slots = Vec::with_capacity(NUM_KEY_SLOTS);
        for i in 0..NUM_KEY_SLOTS as u64 {
            let slot = LuksKeySlot::read_from(storage, at + KEY_SLOTS_AT + i * 48)?;
            slot.validate(at + KEY_SLOTS_AT + i * 48)?;
            slots.push(slot);
        }
        let cipher_name = name(&header.cipher_name);
        let mode_name = name(&header.cipher_mode);
        let hash_name = name(&header.hash_spec);
        let hash = HashAlg::from_name(&hash_name).ok_or_else(|| {
            Error::new(
                ErrorKind::Unsupported,
                format!("Hash algorithm '{hash_name}' is not supported"),
            )
        })?;
        let (mode_part, ivgen_part) = match mode_name.split_once('-') {
            Some((m, iv)) => (m, Some(iv)),
            None => (mode_name.as_str(), None),
        };
        let mode = CipherMode::from_name(mode_part).ok_or_else(|| {
            Error::new(
                ErrorKind::Unsupported,
                format!("Cipher mode '{mode_part}' is not supported"),
            )
        })?;
        let ivgen = match ivgen_part {
            None if mode == CipherMode::Ecb => None,
            None => {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!("Cipher mode '{mode_name}' names no IV generator"),
                ))
            }
            Some("plain") => Some(IvGenAlg::Plain),
            Some("plain64") => Some(IvGenAlg::Plain64),
            Some(other) => match other.split_once(':') {
                Some(("essiv", h)) => {
                    Some(IvGenAlg::Essiv(HashAlg::from_name(h).ok_or_else(|| {
                        Error::new(
                            ErrorKind::Unsupported,
                            format!("Hash algorithm '{h}' is not supported"),
                        )
                    })?))
                }
                _ => {
                    return Err(Error::new(
                        ErrorKind::Unsupported,
                        format!("IV generator '{other}' is not supported"),
                    ))
                }
            },
        };
        let key_bytes = header.key_bytes as usize;
        let cipher_key = if mode == CipherMode::Xts {
            key_bytes / 2
        } else {
            key_bytes
        };
        let alg = CipherAlg::from_luks_name(&cipher_name, cipher_key)
            .filter(|_| mode != CipherMode::Xts || key_bytes % 2 == 0)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "Algorithm '{cipher_name}' with key size {key_bytes} bytes not supported"
                    ),
                )
            })?;
        if mode == CipherMode::Xts && alg.block_len() != 16 {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("Cipher '{cipher_name}' cannot be used in xts mode"),
            ));
        }
        let volume = LuksVolume {
            spec: CipherSpec { alg, mode, ivgen },
            hash,
            header,
            slots,
        };
        volume.check_slots(area)?;
        Ok(volume)
    }

    /// QEMU's layout checks: 4000 stripes, key material after the header, before the
    /// payload, inside the area, slots apart; and iterations cowimg will run.
    fn check_slots(&self, area: u64) -> Result<()> {
        let material = |s: &LuksKeySlot| {
            let start = u64::from(s.key_offset) * SECTOR_SIZE;
            (
                start,
                start + u64::from(self.header.key_bytes) * u64::from(s.stripes),
            )
        };
        let payload = u64::from(self.header.payload_offset) * SECTOR_SIZE;
        for (i, s) in self.slots.iter().enumerate() {
            if s.stripes != STRIPES {
                return Err(corrupt(format!(
                    "Keyslot {i} is corrupted (stripes {} != {STRIPES})",
                    s.stripes
                )));
            }
            let (start, end) = material(s);
            if start < HEADER_LEN {
                return Err(corrupt(format!(
                    "Keyslot {i} is overlapping with the LUKS header"
                )));
            }
            if payload > 0 && end > payload {
                return Err(corrupt(format!(
                    "Keyslot {i} is overlapping with the encrypted payload"
                )));
            }
            if end > area {
                return Err(corrupt(format!(
                    "Keyslot {i} key material ({start}..{end}) runs past the LUKS area ({area} bytes)"
                )));
            }
            if s.active == SLOT_ACTIVE && !(1..=MAX_ITERATIONS).contains(&s.iterations) {
                return Err(corrupt(format!(
                    "Keyslot {i} iterations {} out of range (1 to {MAX_ITERATIONS})",
                    s.iterations
                )));
            }
            for (j, t) in self.slots.iter().enumerate().skip(i + 1) {
                let (a, b) = material(t);
                if start < b && a < end {
                    return Err(corrupt(format!(
                        "Keyslots {i} and {j} are overlapping in the header"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The sector cipher the passphrase unlocks, trying each active slot in turn
    /// (`iv_from_host`: LUKS in qcow2 numbers IVs by host sector).
    pub fn unlock(
        &self,
        storage: &dyn Storage,
        at: u64,
        passphrase: &[u8],
        iv_from_host: bool,
    ) -> Result<SectorCipher> {
        let (_, master) = self.find_master_key(storage, at, passphrase)?;
        SectorCipher::new(self.spec, &master, iv_from_host)
            .map_err(|e| Error::new(ErrorKind::Unsupported, e))
    }

    /// The first active slot the passphrase opens, and the master key from it.
    pub(crate) fn find_master_key(
        &self,
        storage: &dyn Storage,
        at: u64,
        passphrase: &[u8],
    ) -> Result<(usize, Zeroizing<Vec<u8>>)> {
        for index in 0..self.slots.len() {
            if let Some(master) = self.slot_master_key(storage, at, index, passphrase)? {
                return Ok((index, master));
            }
        }
        Err(Error::new(
            ErrorKind::BadArgument,
            "Invalid password, cannot unlock any keyslot",
        ))
    }

    /// The master key, if slot `index` is active and `passphrase` opens it.
    pub(crate) fn slot_master_key(
        &self,
        storage: &dyn Storage,
        at: u64,
        index: usize,
        passphrase: &[u8],
    ) -> Result<Option<Zeroizing<Vec<u8>>>> {
        let slot = &self.slots[index];
        if slot.active != SLOT_ACTIVE {
            return Ok(None);
        }
        let key_bytes = self.header.key_bytes as usize;
        let mut slot_key = Zeroizing::new(vec![0u8; key_bytes]);
        self.hash
            .pbkdf2(passphrase, &slot.salt.0, slot.iterations, &mut slot_key);
        let mut split = Zeroizing::new(vec![0u8; key_bytes * STRIPES as usize]);
        let from = at + u64::from(slot.key_offset) * SECTOR_SIZE;
        let got = storage
            .read_full(&mut split, from)
            .map_err(|e| Error::io("reading LUKS key material", e))?;
        if got < split.len() {
            return Err(corrupt(format!(
                "LUKS key material at {from} is cut short: {got} of {} bytes",
                split.len()
            )));
        }
        let slot_cipher = SectorCipher::new(self.spec, &slot_key, false)
            .map_err(|e| Error::new(ErrorKind::Unsupported, e))?;
        slot_cipher.decrypt(0, &mut split);
        let candidate = af_merge(&split, key_bytes, self.hash);
        Ok(self.is_master_key(&candidate).then_some(candidate))
    }

    fn is_master_key(&self, key: &[u8]) -> bool {
        let mut digest = [0u8; 20];
        self.hash.pbkdf2(
            key,
            &self.header.mk_digest_salt.0,
            self.header.mk_digest_iterations,
            &mut digest,
        );
        digest[..] == self.header.mk_digest.0[..]
    }

    /// Where the encrypted data starts, in bytes from the header (raw luks).
    pub fn payload_offset(&self) -> u64 {
        u64::from(self.header.payload_offset) * SECTOR_SIZE
    }

    /// The volume's UUID as text.
    pub fn uuid(&self) -> String {
        name(&self.header.uuid)
    }
}

/// The anti-forensic merge: the stripes XORed in turn, each sum but the last diffused
/// with `hash`, gives the key.
fn af_merge(split: &[u8], key_len: usize, hash: HashAlg) -> Zeroizing<Vec<u8>> {
    let mut key = Zeroizing::new(vec![0u8; key_len]);
    let stripes: Vec<&[u8]> = split.chunks_exact(key_len).collect();
    for (i, stripe) in stripes.iter().enumerate() {
        key.iter_mut().zip(*stripe).for_each(|(k, s)| *k ^= s);
        if i + 1 < stripes.len() {
            diffuse(&mut key, hash);
        }
    }
    key
}

/// Each digest-sized piece of `buf` replaced by the hash of its index and itself.
pub(super) fn diffuse(buf: &mut [u8], hash: HashAlg) {
    for (i, piece) in buf.chunks_mut(hash.len()).enumerate() {
        let d = hash.digest(&[&(i as u32).to_be_bytes(), piece]);
        let n = piece.len();
        piece.copy_from_slice(&d[..n]);
    }
}
