//! Making and changing LUKS1 volumes as QEMU does: a new volume's header, master key
//! and first key slot (qemu-img create's `encrypt.*` options and defaults), and key
//! slots added or erased (qemu-img amend's `state`, `new-secret`, `old-secret`,
//! `keyslot`). Iteration counts are measured here, as QEMU measures them, so that
//! deriving a key takes `iter-time` milliseconds on this machine.

use super::{LuksVolume, HEADER_LEN};
use crate::codec::cipher::{CipherAlg, CipherMode, CipherSpec, HashAlg, IvGenAlg, SectorCipher};
use crate::error::{Error, ErrorKind, Result};
use crate::format::luks::{
    LuksHeader, LuksKeySlot, KEY_MATERIAL_ALIGN, KEY_SLOTS_AT, MAX_ITERATIONS, NUM_KEY_SLOTS,
    SECTOR_SIZE, SLOT_ACTIVE, SLOT_DISABLED, STRIPES,
};
use crate::format::{ByteArray, Layout};
use crate::storage::Storage;
use crate::Secret;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// QEMU's floor for slot and master key digest iterations.
const MIN_ITERATIONS: u64 = 1000;
/// QEMU's default time for deriving a slot key.
pub const DEFAULT_ITER_TIME_MS: u64 = 2000;

/// A new LUKS volume, as qemu-img create's `encrypt.*` options (for `-f luks`, the same
/// names without the prefix) describe it. Names are QEMU's; defaults are QEMU's:
/// aes-256, xts, plain64, sha256, 2000 ms.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LuksOptions {
    /// What unlocks key slot 0.
    pub passphrase: Secret,
    /// aes-128/192/256, serpent-128/192/256, twofish-128/192/256, cast5-128.
    pub cipher_alg: String,
    /// ecb, cbc, xts or ctr.
    pub cipher_mode: String,
    /// plain, plain64 or essiv.
    pub ivgen_alg: String,
    /// The ESSIV hash (sha256 when essiv is chosen without one).
    pub ivgen_hash_alg: Option<String>,
    /// The hash of PBKDF2 and the anti-forensic splitter.
    pub hash_alg: String,
    /// Milliseconds a slot key's derivation should take here.
    pub iter_time_ms: u64,
}

impl LuksOptions {
    /// QEMU's defaults, with `passphrase` in slot 0.
    pub fn new(passphrase: Secret) -> LuksOptions {
        LuksOptions {
            passphrase,
            cipher_alg: "aes-256".into(),
            cipher_mode: "xts".into(),
            ivgen_alg: "plain64".into(),
            ivgen_hash_alg: None,
            hash_alg: "sha256".into(),
            iter_time_ms: DEFAULT_ITER_TIME_MS,
        }
    }

    setters! {
        plain {
            /// The cipher (QEMU's name, such as aes-256).
            cipher_alg: String;
            /// The mode (ecb, cbc, xts, ctr).
            cipher_mode: String;
            /// The IV generator (plain, plain64, essiv).
            ivgen_alg: String;
            /// The PBKDF2 and splitter hash.
            hash_alg: String;
            /// Milliseconds a slot key's derivation should take.
            iter_time_ms: u64;
        }
        optional {
            /// The ESSIV hash.
            ivgen_hash_alg: String;
        }
    }

    /// The cipher and hash the names describe, refused as QEMU refuses them (and where
    /// QEMU itself could not open the result).
    pub(crate) fn resolve(&self) -> Result<(CipherSpec, HashAlg)> {
        let refuse = |param: &str, value: &str| {
            Error::new(
                ErrorKind::BadArgument,
                format!("Parameter '{param}' does not accept value '{value}'"),
            )
        };
        let unsupported = |m: String| Error::new(ErrorKind::Unsupported, m);
        let alg = CipherAlg::from_qemu_name(&self.cipher_alg)
            .ok_or_else(|| refuse("cipher-alg", &self.cipher_alg))?;
        let mode = CipherMode::from_name(&self.cipher_mode)
            .ok_or_else(|| refuse("cipher-mode", &self.cipher_mode))?;
        let hash =
            HashAlg::from_name(&self.hash_alg).ok_or_else(|| refuse("hash-alg", &self.hash_alg))?;
        let ivgen = match self.ivgen_alg.as_str() {
            "plain" => IvGenAlg::Plain,
            "plain64" => IvGenAlg::Plain64,
            "essiv" => {
                let h = self.ivgen_hash_alg.as_deref().unwrap_or("sha256");
                IvGenAlg::Essiv(HashAlg::from_name(h).ok_or_else(|| refuse("ivgen-hash-alg", h))?)
            }
            other => return Err(refuse("ivgen-alg", other)),
        };
        if alg == CipherAlg::Sm4 {
            // QEMU 10 as Debian builds it has no SM4: it could not open the volume.
            return Err(unsupported("Algorithm 'sm4' not supported".into()));
        }
        if alg.block_len() != 16 && mode == CipherMode::Xts {
            return Err(unsupported(format!(
                "Unsupported cipher mode {}",
                mode.name()
            )));
        }
        if let IvGenAlg::Essiv(h) = ivgen {
            if alg == CipherAlg::Cast5_128 {
                return Err(unsupported(format!(
                    "Cipher {} not supported with essiv",
                    alg.qemu_name()
                )));
            }
            if CipherAlg::from_luks_name(alg.luks_name(), h.len()).is_none() {
                return Err(unsupported(format!(
                    "No {} cipher with key size {} available",
                    alg.luks_name(),
                    h.len()
                )));
            }
        }
        let spec = CipherSpec {
            alg,
            mode,
            ivgen: Some(ivgen),
        };
        if (spec.key_len() as u64 * u64::from(STRIPES)) % SECTOR_SIZE != 0 {
            // The split key would end mid-sector, which QEMU cannot encrypt (it aborts).
            return Err(unsupported(format!(
                "{} in {} mode: its key material is no whole number of sectors, which QEMU cannot open",
                alg.qemu_name(),
                mode.name()
            )));
        }
        Ok((spec, hash))
    }
}

/// Sectors of one slot's key material, rounded up to the slot alignment.
fn slot_sectors(key_bytes: u64) -> u64 {
    (key_bytes * u64::from(STRIPES))
        .div_ceil(SECTOR_SIZE)
        .next_multiple_of(KEY_MATERIAL_ALIGN / SECTOR_SIZE)
}

/// Bytes from the header's start to the payload for a master key of `key_bytes`: the
/// header padded to 4 KiB, then eight slots of key material (what a qcow2 image
/// allocates for its LUKS header, and where a raw volume's data starts).
pub(crate) fn area_len(key_bytes: usize) -> u64 {
    KEY_MATERIAL_ALIGN + slot_sectors(key_bytes as u64) * SECTOR_SIZE * NUM_KEY_SLOTS as u64
}

/// Bytes from the operating system's random source.
fn random(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf).map_err(|e| {
        Error::new(
            ErrorKind::Io,
            format!("reading random bytes for a LUKS key: {e}"),
        )
    })
}

/// A random (version 4) UUID as text, as a LUKS header stores it.
fn random_uuid() -> Result<String> {
    let mut b = [0u8; 16];
    random(&mut b)?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    ))
}

/// PBKDF2 iterations of `hash` that take `ms` milliseconds here for this password,
/// salt and output length (QEMU times the same derivation), divided by `divisor`
/// (QEMU's master key digest takes an eighth), at least QEMU's floor.
fn iterations(
    hash: HashAlg,
    password: &[u8],
    salt: &[u8],
    out_len: usize,
    ms: u64,
    divisor: u64,
) -> Result<u32> {
    let mut out = Zeroizing::new(vec![0u8; out_len]);
    let mut rounds: u32 = 1 << 10;
    let per_second = loop {
        let start = Instant::now();
        hash.pbkdf2(password, salt, rounds, &mut out);
        let took = start.elapsed();
        if took >= Duration::from_millis(100) || rounds >= 1 << 30 {
            break (f64::from(rounds) / took.as_secs_f64().max(1e-9)) as u64;
        }
        rounds *= 2;
    };
    let n = (per_second.saturating_mul(ms) / 1000 / divisor).max(MIN_ITERATIONS);
    if n > u64::from(MAX_ITERATIONS) {
        return Err(Error::new(
            ErrorKind::BadArgument,
            format!(
                "iter-time {ms} ms means {n} PBKDF2 iterations here, more than the {MAX_ITERATIONS} cowimg opens"
            ),
        ));
    }
    Ok(n as u32)
}

/// The anti-forensic split: `stripes` - 1 random stripes, each folded into a running
/// sum diffused with `hash`, and a last stripe that XORs that sum to `key`.
fn af_split(key: &[u8], stripes: u32, hash: HashAlg) -> Result<Zeroizing<Vec<u8>>> {
    let n = key.len();
    let mut out = Zeroizing::new(vec![0u8; n * stripes as usize]);
    let (random_part, last) = out.split_at_mut(n * (stripes as usize - 1));
    random(random_part)?;
    let mut sum = Zeroizing::new(vec![0u8; n]);
    for stripe in random_part.chunks_exact(n) {
        sum.iter_mut().zip(stripe).for_each(|(d, s)| *d ^= s);
        super::diffuse(&mut sum, hash);
    }
    last.iter_mut()
        .zip(sum.iter().zip(key))
        .for_each(|(o, (d, k))| *o = d ^ k);
    Ok(out)
}

/// A NUL-padded name field holding `text` (with room for the NUL, as QEMU requires).
fn field<const N: usize>(text: &str) -> Result<ByteArray<N>> {
    ByteArray::from_slice(text.as_bytes())
        .filter(|_| text.len() < N)
        .ok_or_else(|| {
            Error::new(
                ErrorKind::BadArgument,
                format!("'{text}' is too long for the LUKS header"),
            )
        })
}

/// Makes what was written durable before what depends on it is written: disks
/// complete writes in any order between flushes.
fn barrier(storage: &dyn Storage, before: &str) -> Result<()> {
    storage
        .flush()
        .map_err(|e| Error::io(format!("flushing before writing the LUKS {before}"), e))
}

/// Writes `bytes` at byte `at` of `storage`, naming what they are on failure.
fn write(storage: &dyn Storage, bytes: &[u8], at: u64, what: &str) -> Result<()> {
    storage
        .write_at(bytes, at)
        .map_err(|e| Error::io(format!("writing the LUKS {what}"), e))
}

impl LuksVolume {
    /// Writes a new volume at byte `at` of `storage` (which must hold `area_len` bytes
    /// from there): a random master key in slot 0 under `opts.passphrase`, the other
    /// slots empty. The key material goes out before the header that makes it a volume.
    /// `payload_follows`: the payload starts after the key material (raw luks); in a
    /// qcow2 image it lives in clusters, and the header says where its own area ends.
    /// Returns the volume and its data cipher (`iv_from_host` as for `unlock`).
    pub(crate) fn format(
        storage: &dyn Storage,
        at: u64,
        opts: &LuksOptions,
        iv_from_host: bool,
    ) -> Result<(LuksVolume, SectorCipher)> {
        let (spec, hash) = opts.resolve()?;
        let key_bytes = spec.key_len();
        let mut master = Zeroizing::new(vec![0u8; key_bytes]);
        random(&mut master)?;
        let mut mk_salt = [0u8; 32];
        random(&mut mk_salt)?;
        let mk_iterations = iterations(hash, &master, &mk_salt, 20, opts.iter_time_ms, 8)?;
        let mut mk_digest = [0u8; 20];
        hash.pbkdf2(&master, &mk_salt, mk_iterations, &mut mk_digest);
        let ivgen = spec.ivgen.map(|iv| match iv {
            IvGenAlg::Essiv(h) => format!("-essiv:{}", h.name()),
            other => format!("-{}", other.name()),
        });
        let mode_text = format!("{}{}", spec.mode.name(), ivgen.unwrap_or_default());
        let area = area_len(key_bytes);
        let stride = slot_sectors(key_bytes as u64);
        let header = LuksHeader {
            magic: LuksHeader::MAGIC_REQUIRED,
            magic_tail: LuksHeader::MAGIC_TAIL_REQUIRED,
            version: LuksHeader::VERSION_REQUIRED,
            cipher_name: field(spec.alg.luks_name())?,
            cipher_mode: field(&mode_text)?,
            hash_spec: field(hash.name())?,
            payload_offset: (area / SECTOR_SIZE) as u32,
            key_bytes: key_bytes as u32,
            mk_digest: ByteArray(mk_digest),
            mk_digest_salt: ByteArray(mk_salt),
            mk_digest_iterations: mk_iterations,
            uuid: field(&random_uuid()?)?,
        };
        let slots = (0..NUM_KEY_SLOTS as u64)
            .map(|i| LuksKeySlot {
                active: SLOT_DISABLED,
                iterations: 0,
                salt: ByteArray([0; 32]),
                key_offset: (KEY_MATERIAL_ALIGN / SECTOR_SIZE + i * stride) as u32,
                stripes: STRIPES,
            })
            .collect();
        let mut volume = LuksVolume {
            header,
            slots,
            spec,
            hash,
        };
        volume.store_key(storage, at, 0, &opts.passphrase, &master, opts.iter_time_ms)?;
        let cipher = SectorCipher::new(spec, &master, iv_from_host)
            .map_err(|e| Error::new(ErrorKind::Unsupported, e))?;
        Ok((volume, cipher))
    }

    /// The header and its eight slots, as written at the volume's start.
    fn write_header(&self, storage: &dyn Storage, at: u64) -> Result<()> {
        let mut bytes = self.header.to_bytes();
        for slot in &self.slots {
            bytes.extend_from_slice(&slot.to_bytes());
        }
        debug_assert_eq!(bytes.len() as u64, HEADER_LEN);
        debug_assert_eq!(KEY_SLOTS_AT, LuksHeader::SIZE as u64);
        write(storage, &bytes, at, "header")
    }

    /// Puts `master` into slot `index` under `passphrase`: new salt, iterations for
    /// `iter_time_ms`, the split key encrypted and written and flushed, then the header
    /// that marks the slot active (a crash between the two leaves the slot as it was).
    fn store_key(
        &mut self,
        storage: &dyn Storage,
        at: u64,
        index: usize,
        passphrase: &Secret,
        master: &[u8],
        iter_time_ms: u64,
    ) -> Result<()> {
        let key_bytes = master.len();
        let mut salt = [0u8; 32];
        random(&mut salt)?;
        let rounds = iterations(
            self.hash,
            passphrase.as_bytes(),
            &salt,
            key_bytes,
            iter_time_ms,
            1,
        )?;
        let mut slot_key = Zeroizing::new(vec![0u8; key_bytes]);
        self.hash
            .pbkdf2(passphrase.as_bytes(), &salt, rounds, &mut slot_key);
        let mut split = af_split(master, STRIPES, self.hash)?;
        SectorCipher::new(self.spec, &slot_key, false)
            .map_err(|e| Error::new(ErrorKind::Unsupported, e))?
            .encrypt(0, &mut split);
        let slot = &mut self.slots[index];
        write(
            storage,
            &split,
            at + u64::from(slot.key_offset) * SECTOR_SIZE,
            "key material",
        )?;
        barrier(storage, "header")?;
        slot.active = SLOT_ACTIVE;
        slot.iterations = rounds;
        slot.salt = ByteArray(salt);
        self.write_header(storage, at)
    }

    /// Marks slot `index` disabled in the header and flushes, then overwrites its key
    /// material with random bytes (one pass: the header no longer points a passphrase
    /// at it).
    fn erase_key(&mut self, storage: &dyn Storage, at: u64, index: usize) -> Result<()> {
        let slot = &mut self.slots[index];
        slot.active = SLOT_DISABLED;
        slot.iterations = 0;
        slot.salt = ByteArray([0; 32]);
        let material_at = at + u64::from(slot.key_offset) * SECTOR_SIZE;
        let len = self.header.key_bytes as usize * slot.stripes as usize;
        self.write_header(storage, at)?;
        barrier(storage, "erased key material")?;
        let mut garbage = vec![0u8; len];
        random(&mut garbage)?;
        write(storage, &garbage, material_at, "key material")
    }

    fn active_slots(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.active == SLOT_ACTIVE)
            .count()
    }

    /// Adds or erases key slots as qemu-img amend does (`secret` unlocks the volume
    /// when a slot is added); the last active slot is never erased.
    pub(crate) fn amend(
        &mut self,
        storage: &dyn Storage,
        at: u64,
        secret: Option<&Secret>,
        change: &KeySlotChange,
    ) -> Result<()> {
        let bad = |m: String| Error::new(ErrorKind::BadArgument, m);
        let index = match change.keyslot {
            Some(i) if i >= NUM_KEY_SLOTS => {
                return Err(bad(format!(
                    "Invalid keyslot {i} specified, must be between 0 and {}",
                    NUM_KEY_SLOTS - 1
                )))
            }
            other => other,
        };
        if change.active {
            let new = change
                .new_secret
                .as_ref()
                .ok_or_else(|| bad("'new-secret' is required to activate a keyslot".into()))?;
            if change.old_secret.is_some() {
                return Err(bad(
                    "'old-secret' must not be given when activating keyslots".into(),
                ));
            }
            let index = match index {
                Some(i) => i,
                None => self
                    .slots
                    .iter()
                    .position(|s| s.active != SLOT_ACTIVE)
                    .ok_or_else(|| bad("Can't add a keyslot - all keyslots are in use".into()))?,
            };
            if self.slots[index].active == SLOT_ACTIVE && !change.force {
                return Err(bad(format!(
                    "Refusing to overwrite active keyslot {index} - please erase it first"
                )));
            }
            let secret = secret.ok_or_else(|| {
                bad("Parameter 'key-secret' is required to unlock the volume".into())
            })?;
            let (_, master) = self.find_master_key(storage, at, secret.as_bytes())?;
            let ms = change.iter_time_ms.unwrap_or(DEFAULT_ITER_TIME_MS);
            return self.store_key(storage, at, index, new, &master, ms);
        }
        if change.new_secret.is_some() {
            return Err(bad(
                "'new-secret' must not be given when erasing keyslots".into()
            ));
        }
        if change.iter_time_ms.is_some() {
            return Err(bad(
                "'iter-time' must not be given when erasing keyslots".into()
            ));
        }
        let old = change.old_secret.as_ref();
        let to_erase: Vec<usize> = match (index, old) {
            (Some(i), old) => {
                if let Some(old) = old {
                    if self.slot_master_key(storage, at, i, old.as_bytes())?.is_none() {
                        return Err(bad(format!(
                            "Given keyslot {i} doesn't contain the given old password for erase operation"
                        )));
                    }
                }
                if self.slots[i].active != SLOT_ACTIVE && !change.force {
                    return Err(bad(format!("Given keyslot {i} is already erased (inactive) ")));
                }
                if self.active_slots() == 1 && !change.force {
                    return Err(bad(format!(
                        "Attempt to erase the only active keyslot {i} which will erase all the data in the image irreversibly - refusing operation"
                    )));
                }
                vec![i]
            }
            (None, Some(old)) => {
                let mut matching = Vec::new();
                for i in 0..NUM_KEY_SLOTS {
                    if self.slot_master_key(storage, at, i, old.as_bytes())?.is_some() {
                        matching.push(i);
                    }
                }
                if matching.is_empty() {
                    return Err(bad(
                        "No keyslots match given (old) password for erase operation".into(),
                    ));
                }
                if matching.len() == self.active_slots() && !change.force {
                    return Err(bad("All the active keyslots match the (old) password that was given and erasing them will erase all the data in the image irreversibly - refusing operation".into()));
                }
                matching
            }
            (None, None) => {
                return Err(bad("To erase keyslot(s), either explicit keyslot index or the password currently contained in them must be given".into()))
            }
        };
        for i in to_erase {
            self.erase_key(storage, at, i)?;
        }
        Ok(())
    }
}

/// A change to a volume's key slots: qemu-img amend's `encrypt.state` and friends.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct KeySlotChange {
    /// `state=active` (add `new_secret`) or `state=inactive` (erase).
    pub active: bool,
    /// The passphrase the new slot takes.
    pub new_secret: Option<Secret>,
    /// Erase the slots this passphrase opens.
    pub old_secret: Option<Secret>,
    /// The slot to fill or erase (the first free one when adding, if not given).
    pub keyslot: Option<usize>,
    /// Milliseconds the new slot's key derivation should take.
    pub iter_time_ms: Option<u64>,
    /// What qemu-img amend allows only with `--force`: overwriting an active slot, and
    /// erasing the last active slots (the data is then lost for good).
    pub force: bool,
}
