//! Cluster codecs: compression (raw deflate, zstd) and sector ciphers (LUKS's and
//! the legacy AES-CBC). They know bytes and sectors, not images.

pub mod cipher;
pub mod compress;

pub use self::cipher::SectorCipher;
pub use compress::Compression;
