//! Sector ciphers: a block cipher (AES, Serpent, Twofish, CAST5, SM4) in a mode (ECB,
//! CBC, XTS, CTR) with an IV generator (plain, plain64, ESSIV), over 512-byte sectors,
//! as QEMU's LUKS and legacy AES encrypt them; and the hashes LUKS derives keys with.
//! They know bytes and sectors, not images or headers.

use cipher::generic_array::{typenum::U16, GenericArray};
use cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use digest::Digest;

/// Bytes a sector covers: the unit of encryption and of IV numbering.
pub const SECTOR: usize = 512;

/// A block cipher algorithm with its key size, by QEMU's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CipherAlg {
    Aes128,
    Aes192,
    Aes256,
    Serpent128,
    Serpent192,
    Serpent256,
    Twofish128,
    Twofish192,
    Twofish256,
    Cast5_128,
    Sm4,
}

impl CipherAlg {
    /// The algorithm LUKS means by `name` with a key of `key_len` bytes.
    pub fn from_luks_name(name: &str, key_len: usize) -> Option<CipherAlg> {
        use CipherAlg::*;
        Some(match (name, key_len) {
            ("aes", 16) => Aes128,
            ("aes", 24) => Aes192,
            ("aes", 32) => Aes256,
            ("serpent", 16) => Serpent128,
            ("serpent", 24) => Serpent192,
            ("serpent", 32) => Serpent256,
            ("twofish", 16) => Twofish128,
            ("twofish", 24) => Twofish192,
            ("twofish", 32) => Twofish256,
            ("cast5", 16) => Cast5_128,
            ("sm4", 16) => Sm4,
            _ => return None,
        })
    }

    /// The algorithm QEMU names `name` (aes-256, serpent-128, cast5-128, sm4…).
    pub fn from_qemu_name(name: &str) -> Option<CipherAlg> {
        use CipherAlg::*;
        [
            Aes128, Aes192, Aes256, Serpent128, Serpent192, Serpent256, Twofish128, Twofish192,
            Twofish256, Cast5_128, Sm4,
        ]
        .into_iter()
        .find(|alg| alg.qemu_name() == name)
    }

    /// The family name a LUKS header stores (aes, serpent, twofish, cast5, sm4).
    pub fn luks_name(self) -> &'static str {
        self.qemu_name().split('-').next().unwrap_or_default()
    }

    /// QEMU's name, as `qemu-img info` shows it (aes-256, serpent-128, cast5-128…).
    pub fn qemu_name(self) -> &'static str {
        use CipherAlg::*;
        match self {
            Aes128 => "aes-128",
            Aes192 => "aes-192",
            Aes256 => "aes-256",
            Serpent128 => "serpent-128",
            Serpent192 => "serpent-192",
            Serpent256 => "serpent-256",
            Twofish128 => "twofish-128",
            Twofish192 => "twofish-192",
            Twofish256 => "twofish-256",
            Cast5_128 => "cast5-128",
            Sm4 => "sm4",
        }
    }

    /// The key length in bytes.
    pub fn key_len(self) -> usize {
        use CipherAlg::*;
        match self {
            Aes128 | Serpent128 | Twofish128 | Cast5_128 | Sm4 => 16,
            Aes192 | Serpent192 | Twofish192 => 24,
            Aes256 | Serpent256 | Twofish256 => 32,
        }
    }

    /// The block length in bytes.
    pub fn block_len(self) -> usize {
        if self == CipherAlg::Cast5_128 {
            8
        } else {
            16
        }
    }

    /// The same family with a `key_len`-byte key (ESSIV keys its cipher with a digest).
    fn with_key_len(self, key_len: usize) -> Option<CipherAlg> {
        CipherAlg::from_luks_name(self.luks_name(), key_len)
    }
}

/// A keyed block cipher.
#[derive(Clone)]
enum Block {
    Aes128(aes::Aes128),
    Aes192(aes::Aes192),
    Aes256(aes::Aes256),
    Serpent(serpent::Serpent),
    Twofish(twofish::Twofish),
    Cast5(cast5::Cast5),
    Sm4(sm4::Sm4),
}

impl Block {
    /// The cipher under `key`, which must be `alg.key_len()` bytes.
    fn new(alg: CipherAlg, key: &[u8]) -> Result<Block, String> {
        use CipherAlg::*;
        if key.len() != alg.key_len() {
            return Err(format!(
                "a {} key is {} bytes, not {}",
                alg.qemu_name(),
                alg.key_len(),
                key.len()
            ));
        }
        // The length is checked above; the crates' own check agrees.
        let wrong = |_| format!("{} refused a {}-byte key", alg.qemu_name(), key.len());
        Ok(match alg {
            Aes128 => Block::Aes128(aes::Aes128::new_from_slice(key).map_err(wrong)?),
            Aes192 => Block::Aes192(aes::Aes192::new_from_slice(key).map_err(wrong)?),
            Aes256 => Block::Aes256(aes::Aes256::new_from_slice(key).map_err(wrong)?),
            Serpent128 | Serpent192 | Serpent256 => {
                Block::Serpent(serpent::Serpent::new_from_slice(key).map_err(wrong)?)
            }
            Twofish128 | Twofish192 | Twofish256 => {
                Block::Twofish(twofish::Twofish::new_from_slice(key).map_err(wrong)?)
            }
            Cast5_128 => Block::Cast5(cast5::Cast5::new_from_slice(key).map_err(wrong)?),
            Sm4 => Block::Sm4(sm4::Sm4::new_from_slice(key).map_err(wrong)?),
        })
    }

    /// Runs the cipher over many 16-byte blocks in one call, which AES-NI and the
    /// bitsliced ciphers pipeline; false (nothing done) for CAST5's 8-byte blocks.
    fn run_blocks(&self, blocks: &mut [Block16], encrypt: bool) -> bool {
        macro_rules! run {
            ($c:expr) => {
                if encrypt {
                    $c.encrypt_blocks(blocks)
                } else {
                    $c.decrypt_blocks(blocks)
                }
            };
        }
        match self {
            Block::Aes128(c) => run!(c),
            Block::Aes192(c) => run!(c),
            Block::Aes256(c) => run!(c),
            Block::Serpent(c) => run!(c),
            Block::Twofish(c) => run!(c),
            Block::Sm4(c) => run!(c),
            Block::Cast5(_) => return false,
        }
        true
    }

    fn encrypt(&self, block: &mut [u8]) {
        match self {
            Block::Aes128(c) => c.encrypt_block(block.into()),
            Block::Aes192(c) => c.encrypt_block(block.into()),
            Block::Aes256(c) => c.encrypt_block(block.into()),
            Block::Serpent(c) => c.encrypt_block(block.into()),
            Block::Twofish(c) => c.encrypt_block(block.into()),
            Block::Cast5(c) => c.encrypt_block(block.into()),
            Block::Sm4(c) => c.encrypt_block(block.into()),
        }
    }

    fn decrypt(&self, block: &mut [u8]) {
        match self {
            Block::Aes128(c) => c.decrypt_block(block.into()),
            Block::Aes192(c) => c.decrypt_block(block.into()),
            Block::Aes256(c) => c.decrypt_block(block.into()),
            Block::Serpent(c) => c.decrypt_block(block.into()),
            Block::Twofish(c) => c.decrypt_block(block.into()),
            Block::Cast5(c) => c.decrypt_block(block.into()),
            Block::Sm4(c) => c.decrypt_block(block.into()),
        }
    }
}

/// How blocks of a sector are chained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CipherMode {
    Ecb,
    Cbc,
    Xts,
    Ctr,
}

impl CipherMode {
    /// The mode by its LUKS (and QEMU) name.
    pub fn from_name(name: &str) -> Option<CipherMode> {
        Some(match name {
            "ecb" => CipherMode::Ecb,
            "cbc" => CipherMode::Cbc,
            "xts" => CipherMode::Xts,
            "ctr" => CipherMode::Ctr,
            _ => return None,
        })
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            CipherMode::Ecb => "ecb",
            CipherMode::Cbc => "cbc",
            CipherMode::Xts => "xts",
            CipherMode::Ctr => "ctr",
        }
    }
}

/// A hash algorithm, by QEMU's names: for PBKDF2, the anti-forensic splitter and ESSIV.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HashAlg {
    Md5,
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
    Ripemd160,
    Sm3,
}

impl HashAlg {
    /// The hash by its LUKS (and QEMU) name.
    pub fn from_name(name: &str) -> Option<HashAlg> {
        use HashAlg::*;
        Some(match name {
            "md5" => Md5,
            "sha1" => Sha1,
            "sha224" => Sha224,
            "sha256" => Sha256,
            "sha384" => Sha384,
            "sha512" => Sha512,
            "ripemd160" => Ripemd160,
            "sm3" => Sm3,
            _ => return None,
        })
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        use HashAlg::*;
        match self {
            Md5 => "md5",
            Sha1 => "sha1",
            Sha224 => "sha224",
            Sha256 => "sha256",
            Sha384 => "sha384",
            Sha512 => "sha512",
            Ripemd160 => "ripemd160",
            Sm3 => "sm3",
        }
    }

    /// The digest of the concatenated `parts`.
    pub fn digest(self, parts: &[&[u8]]) -> Vec<u8> {
        fn run<D: Digest>(parts: &[&[u8]]) -> Vec<u8> {
            let mut d = D::new();
            for p in parts {
                d.update(p);
            }
            d.finalize().to_vec()
        }
        use HashAlg::*;
        match self {
            Md5 => run::<md5::Md5>(parts),
            Sha1 => run::<sha1::Sha1>(parts),
            Sha224 => run::<sha2::Sha224>(parts),
            Sha256 => run::<sha2::Sha256>(parts),
            Sha384 => run::<sha2::Sha384>(parts),
            Sha512 => run::<sha2::Sha512>(parts),
            Ripemd160 => run::<ripemd::Ripemd160>(parts),
            Sm3 => run::<sm3::Sm3>(parts),
        }
    }

    /// The digest length in bytes.
    pub fn len(self) -> usize {
        use HashAlg::*;
        match self {
            Md5 => 16,
            Sha1 | Ripemd160 => 20,
            Sha224 => 28,
            Sha256 | Sm3 => 32,
            Sha384 => 48,
            Sha512 => 64,
        }
    }

    /// PBKDF2 with HMAC of this hash: `out.len()` bytes.
    pub fn pbkdf2(self, password: &[u8], salt: &[u8], rounds: u32, out: &mut [u8]) {
        use pbkdf2::pbkdf2_hmac;
        use HashAlg::*;
        match self {
            Md5 => pbkdf2_hmac::<md5::Md5>(password, salt, rounds, out),
            Sha1 => pbkdf2_hmac::<sha1::Sha1>(password, salt, rounds, out),
            Sha224 => pbkdf2_hmac::<sha2::Sha224>(password, salt, rounds, out),
            Sha256 => pbkdf2_hmac::<sha2::Sha256>(password, salt, rounds, out),
            Sha384 => pbkdf2_hmac::<sha2::Sha384>(password, salt, rounds, out),
            Sha512 => pbkdf2_hmac::<sha2::Sha512>(password, salt, rounds, out),
            Ripemd160 => pbkdf2_hmac::<ripemd::Ripemd160>(password, salt, rounds, out),
            Sm3 => pbkdf2_hmac::<sm3::Sm3>(password, salt, rounds, out),
        }
    }
}

/// How each sector's IV is made from its number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum IvGenAlg {
    /// The sector number's low 32 bits, little-endian.
    Plain,
    /// The sector number, little-endian.
    Plain64,
    /// The sector number encrypted with a key that hashes the master key.
    Essiv(HashAlg),
}

impl IvGenAlg {
    /// QEMU's name of the generator (without its hash).
    pub fn name(self) -> &'static str {
        match self {
            IvGenAlg::Plain => "plain",
            IvGenAlg::Plain64 => "plain64",
            IvGenAlg::Essiv(_) => "essiv",
        }
    }
}

/// What a sector cipher is, before it has a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CipherSpec {
    /// The block cipher (for XTS: each of its two keys').
    pub alg: CipherAlg,
    /// The chaining mode.
    pub mode: CipherMode,
    /// The IV generator (None with ECB).
    pub ivgen: Option<IvGenAlg>,
}

impl CipherSpec {
    /// The master key length this spec takes (XTS takes two cipher keys).
    pub fn key_len(self) -> usize {
        self.alg.key_len() * if self.mode == CipherMode::Xts { 2 } else { 1 }
    }
}

/// A keyed sector cipher.
#[derive(Clone)]
pub struct SectorCipher {
    spec: CipherSpec,
    data: Block,
    /// XTS: the tweak cipher.
    tweak: Option<Block>,
    /// ESSIV: the cipher that encrypts sector numbers into IVs.
    essiv: Option<Block>,
    /// IVs number sectors by their host offset (LUKS in qcow2) rather than the guest's.
    iv_from_host: bool,
}

impl std::fmt::Debug for SectorCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SectorCipher {{ {:?}, .. }}", self.spec)
    }
}

impl SectorCipher {
    /// The cipher of `spec` under `key` (`spec.key_len()` bytes). Fails only for an
    /// ESSIV hash whose digest keys no cipher of the family (QEMU's rule).
    pub fn new(spec: CipherSpec, key: &[u8], iv_from_host: bool) -> Result<SectorCipher, String> {
        if key.len() != spec.key_len() {
            return Err(format!(
                "a {} key is {} bytes, not {}",
                spec.alg.qemu_name(),
                spec.key_len(),
                key.len()
            ));
        }
        let half = spec.alg.key_len();
        let (data, tweak) = match spec.mode {
            CipherMode::Xts => (
                Block::new(spec.alg, &key[..half])?,
                Some(Block::new(spec.alg, &key[half..])?),
            ),
            _ => (Block::new(spec.alg, key)?, None),
        };
        let essiv = match spec.ivgen {
            Some(IvGenAlg::Essiv(hash)) => {
                let salt = zeroize::Zeroizing::new(hash.digest(&[key]));
                let alg = spec.alg.with_key_len(salt.len()).ok_or_else(|| {
                    format!(
                        "no {} cipher takes the {}-byte {} digest as its ESSIV key",
                        spec.alg.qemu_name(),
                        salt.len(),
                        hash.name()
                    )
                })?;
                if alg.block_len() != spec.alg.block_len() {
                    return Err("the ESSIV cipher's block differs from the data cipher's".into());
                }
                Some(Block::new(alg, &salt)?)
            }
            _ => None,
        };
        Ok(SectorCipher {
            spec,
            data,
            tweak,
            essiv,
            iv_from_host,
        })
    }

    /// The legacy qcow/qcow2 cipher (crypt_method 1): AES-128-CBC, plain64 IVs of the
    /// guest sector, the key the passphrase truncated or zero-padded to 16 bytes.
    pub fn legacy_aes(passphrase: &[u8]) -> SectorCipher {
        let mut key = zeroize::Zeroizing::new([0u8; 16]);
        let n = passphrase.len().min(16);
        key[..n].copy_from_slice(&passphrase[..n]);
        SectorCipher {
            spec: CipherSpec {
                alg: CipherAlg::Aes128,
                mode: CipherMode::Cbc,
                ivgen: Some(IvGenAlg::Plain64),
            },
            data: Block::Aes128(aes::Aes128::new(&(*key).into())),
            tweak: None,
            essiv: None,
            iv_from_host: false,
        }
    }

    /// Whether IVs number sectors by host offset (LUKS in qcow2) instead of guest.
    pub fn iv_from_host(&self) -> bool {
        self.iv_from_host
    }

    fn iv(&self, sector: u64) -> [u8; 16] {
        let mut iv = [0u8; 16];
        match self.spec.ivgen {
            None => {}
            Some(IvGenAlg::Plain) => iv[..4].copy_from_slice(&(sector as u32).to_le_bytes()),
            Some(IvGenAlg::Plain64) => iv[..8].copy_from_slice(&sector.to_le_bytes()),
            Some(IvGenAlg::Essiv(_)) => {
                iv[..8].copy_from_slice(&sector.to_le_bytes());
                if let Some(essiv) = &self.essiv {
                    essiv.encrypt(&mut iv[..self.spec.alg.block_len()]);
                }
            }
        }
        iv
    }

    /// Decrypts whole sectors in place; `first_sector` numbers `data[0]`'s sector.
    pub fn decrypt(&self, first_sector: u64, data: &mut [u8]) {
        for (i, sector) in data.chunks_mut(SECTOR).enumerate() {
            self.sector(first_sector + i as u64, sector, false);
        }
    }

    /// Encrypts whole sectors in place; `first_sector` numbers `data[0]`'s sector.
    pub fn encrypt(&self, first_sector: u64, data: &mut [u8]) {
        for (i, sector) in data.chunks_mut(SECTOR).enumerate() {
            self.sector(first_sector + i as u64, sector, true);
        }
    }

    fn sector(&self, number: u64, sector: &mut [u8], encrypt: bool) {
        if self.sector_batched(number, sector, encrypt) {
            return;
        }
        let bl = self.spec.alg.block_len();
        let mut iv = self.iv(number);
        let iv = &mut iv[..bl];
        let run = |b: &mut [u8]| {
            if encrypt {
                self.data.encrypt(b)
            } else {
                self.data.decrypt(b)
            }
        };
        match self.spec.mode {
            CipherMode::Ecb => sector.chunks_exact_mut(bl).for_each(run),
            CipherMode::Cbc => {
                let mut chain = iv.to_vec();
                for b in sector.chunks_exact_mut(bl) {
                    if encrypt {
                        xor(b, &chain);
                        run(b);
                        chain.copy_from_slice(b);
                    } else {
                        let cipher_text = b.to_vec();
                        run(b);
                        xor(b, &chain);
                        chain = cipher_text;
                    }
                }
            }
            CipherMode::Ctr => {
                let mut pad = vec![0u8; bl];
                for b in sector.chunks_exact_mut(bl) {
                    pad.copy_from_slice(iv);
                    self.data.encrypt(&mut pad);
                    xor(b, &pad);
                    // The counter is the IV as one big-endian number.
                    for byte in iv.iter_mut().rev() {
                        *byte = byte.wrapping_add(1);
                        if *byte != 0 {
                            break;
                        }
                    }
                }
            }
            CipherMode::Xts => {
                let mut t = iv.to_vec();
                if let Some(tweak) = &self.tweak {
                    tweak.encrypt(&mut t);
                }
                for b in sector.chunks_exact_mut(bl) {
                    xor(b, &t);
                    run(b);
                    xor(b, &t);
                    times_x(&mut t);
                }
            }
        }
    }
}

/// A 16-byte cipher block, as the cipher crates take them in batches.
type Block16 = GenericArray<u8, U16>;

/// Blocks in a sector of 16-byte blocks.
const SECTOR_BLOCKS: usize = SECTOR / 16;

impl SectorCipher {
    /// The modes whose blocks are independent once their IVs or tweaks are known (all
    /// but CBC encryption), for 16-byte ciphers: one batched cipher call per sector.
    /// False when the sector must go block by block.
    fn sector_batched(&self, number: u64, sector: &mut [u8], encrypt: bool) -> bool {
        let n = sector.len() / 16;
        if self.spec.alg.block_len() != 16
            || n > SECTOR_BLOCKS
            || sector.len() % 16 != 0
            || (self.spec.mode == CipherMode::Cbc && encrypt)
        {
            return false;
        }
        let mut blocks = [Block16::default(); SECTOR_BLOCKS];
        let blocks = &mut blocks[..n];
        let mut iv = self.iv(number);
        match self.spec.mode {
            CipherMode::Ecb | CipherMode::Cbc => {
                for (b, s) in blocks.iter_mut().zip(sector.chunks_exact(16)) {
                    b.copy_from_slice(s);
                }
                if !self.data.run_blocks(blocks, encrypt) {
                    return false;
                }
                if self.spec.mode == CipherMode::Cbc {
                    // Decrypting: each block XORs the ciphertext before it (the IV first).
                    for i in (0..n).rev() {
                        let before = if i == 0 { iv } else { block_at(sector, i - 1) };
                        xor(&mut blocks[i], &before);
                    }
                }
                write_blocks(sector, blocks);
            }
            CipherMode::Ctr => {
                // The counter is the IV as one big-endian number.
                for b in blocks.iter_mut() {
                    b.copy_from_slice(&iv);
                    for byte in iv.iter_mut().rev() {
                        *byte = byte.wrapping_add(1);
                        if *byte != 0 {
                            break;
                        }
                    }
                }
                if !self.data.run_blocks(blocks, true) {
                    return false;
                }
                for (s, pad) in sector.chunks_exact_mut(16).zip(blocks.iter()) {
                    xor(s, pad);
                }
            }
            CipherMode::Xts => {
                let Some(tweak) = &self.tweak else {
                    return false;
                };
                tweak.encrypt(&mut iv);
                let mut tweaks = [[0u8; 16]; SECTOR_BLOCKS];
                for (i, b) in blocks.iter_mut().enumerate() {
                    tweaks[i] = iv;
                    b.copy_from_slice(&block_at(sector, i));
                    xor(b, &iv);
                    times_x(&mut iv);
                }
                if !self.data.run_blocks(blocks, encrypt) {
                    return false;
                }
                for (i, b) in blocks.iter_mut().enumerate() {
                    xor(b, &tweaks[i]);
                }
                write_blocks(sector, blocks);
            }
        }
        true
    }
}

/// The `i`th 16-byte block of `sector`.
fn block_at(sector: &[u8], i: usize) -> [u8; 16] {
    let mut b = [0u8; 16];
    b.copy_from_slice(&sector[i * 16..i * 16 + 16]);
    b
}

fn write_blocks(sector: &mut [u8], blocks: &[Block16]) {
    for (s, b) in sector.chunks_exact_mut(16).zip(blocks) {
        s.copy_from_slice(b);
    }
}

/// The XTS tweak times x in GF(2^128), little-endian.
fn times_x(t: &mut [u8]) {
    let last = t.len() - 1;
    let carry = t[last] >> 7;
    for k in (1..t.len()).rev() {
        t[k] = (t[k] << 1) | (t[k - 1] >> 7);
    }
    t[0] = (t[0] << 1) ^ (0x87 * carry);
}

fn xor(a: &mut [u8], b: &[u8]) {
    a.iter_mut().zip(b).for_each(|(x, y)| *x ^= y);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(alg: CipherAlg, mode: CipherMode, ivgen: Option<IvGenAlg>) -> CipherSpec {
        CipherSpec { alg, mode, ivgen }
    }

    #[test]
    fn every_combination_round_trips_and_numbers_its_sectors() {
        use CipherAlg::*;
        for alg in [Aes128, Aes256, Serpent192, Twofish256, Cast5_128, Sm4] {
            for mode in [
                CipherMode::Ecb,
                CipherMode::Cbc,
                CipherMode::Xts,
                CipherMode::Ctr,
            ] {
                if mode == CipherMode::Xts && alg.block_len() != 16 {
                    continue;
                }
                let ivgen = (mode != CipherMode::Ecb).then_some(IvGenAlg::Essiv(HashAlg::Sha256));
                let s = spec(alg, mode, ivgen);
                let Ok(c) = SectorCipher::new(s, &vec![7u8; s.key_len()], false) else {
                    continue;
                };
                let plain = vec![0x5a; 1024];
                let mut data = plain.clone();
                c.encrypt(9, &mut data);
                assert_ne!(data, plain, "{s:?}");
                if mode != CipherMode::Ecb {
                    assert_ne!(
                        data[..512],
                        data[512..],
                        "{s:?}: each sector has its own IV"
                    );
                }
                c.decrypt(9, &mut data);
                assert_eq!(data, plain, "{s:?}");
            }
        }
    }

    #[test]
    fn legacy_aes_is_cbc_plain64_of_the_padded_passphrase() {
        // AES-128 (FIPS-197 C.1 key) of one block with a zero IV: CBC of sector 0.
        let mut key = [0u8; 16];
        key.copy_from_slice(&(0u8..16).collect::<Vec<_>>());
        let c = SectorCipher::legacy_aes(&key);
        let mut sector = vec![0u8; 512];
        sector[..16].copy_from_slice(&[
            0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
            0xee, 0xff,
        ]);
        c.encrypt(0, &mut sector);
        assert_eq!(
            sector[..16],
            [
                0x69, 0xc4, 0xe0, 0xd8, 0x6a, 0x7b, 0x04, 0x30, 0xd8, 0xcd, 0xb7, 0x80, 0x70, 0xb4,
                0xc5, 0x5a
            ]
        );
    }
}
