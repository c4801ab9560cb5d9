//! Cluster codecs: compression (raw deflate, zstd) and the legacy AES-CBC sector
//! cipher. They know bytes and sectors, not images.

pub mod aes;
pub mod compress;

pub use self::aes::LegacyAes;
pub use compress::Compression;
