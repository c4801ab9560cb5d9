//! Bytes only: the generated views of every on-disk structure, and how to parse and
//! serialise them. Nothing here knows about clusters, files or images.
//!
//! Every fixed-size structure implements [`Layout`]: parse it from exactly its bytes,
//! serialise it back, then call its generated `validate` for the spec's checks.
//! Parsing never validates, so a damaged image can still be inspected field by field.

pub mod generated;
pub mod support;

pub use generated::{cow, luks, qcow, qcow2};
pub use support::ByteArray;

use crate::error::{Error, ErrorKind, Result};
use binrw::{BinRead, BinWrite, Endian};
use std::io::Cursor;

/// A fixed-size on-disk structure with a binrw view.
pub trait Layout: Sized + for<'a> BinRead<Args<'a> = ()> + for<'a> BinWrite<Args<'a> = ()> {
    /// Bytes on disk.
    const SIZE: usize;
    /// What errors call it, as the spec titles it.
    const NAME: &'static str;
    /// Each field's name and byte offset within the structure.
    const FIELD_OFFSETS: &'static [(&'static str, u64)];

    /// Parses the structure from the start of `bytes` (big-endian unless the spec makes
    /// its byte order the caller's, when it is read big-endian).
    fn parse(bytes: &[u8]) -> Result<Self> {
        Self::parse_endian(bytes, Endian::Big)
    }

    /// Parses with an explicit byte order, for structures whose order is decided at
    /// run time (UML cow v1). Fixed-order structures ignore `endian`.
    fn parse_endian(bytes: &[u8], endian: Endian) -> Result<Self> {
        let Some(bytes) = bytes.get(..Self::SIZE) else {
            return Err(Error::new(
                ErrorKind::InvalidFormat,
                format!(
                    "{} truncated: {} bytes, {} needed",
                    Self::NAME,
                    bytes.len(),
                    Self::SIZE
                ),
            ));
        };
        Self::read_options(&mut Cursor::new(bytes), endian, ()).map_err(|e| from_binrw::<Self>(e))
    }

    /// Reads and parses the structure at byte `at` of `storage` (big-endian; a file
    /// that ends early gives the truncation error naming the structure).
    fn read_from(storage: &dyn crate::storage::Storage, at: u64) -> Result<Self> {
        let mut bytes = vec![0u8; Self::SIZE];
        let got = storage
            .read_full(&mut bytes, at)
            .map_err(|e| Error::io(format!("reading the {}", Self::NAME), e))?;
        Self::parse(&bytes[..got])
    }

    /// The structure's bytes (big-endian unless its byte order is the caller's).
    fn to_bytes(&self) -> Vec<u8> {
        self.to_bytes_endian(Endian::Big)
    }

    /// The structure's bytes in an explicit byte order.
    fn to_bytes_endian(&self, endian: Endian) -> Vec<u8> {
        let mut out = Cursor::new(Vec::with_capacity(Self::SIZE));
        // Writing plain integers and byte arrays into a Vec cannot fail.
        match self.write_options(&mut out, endian, ()) {
            Ok(()) => out.into_inner(),
            Err(_) => Vec::new(),
        }
    }

    /// Byte offset of a field within the structure (0 for an unknown name).
    fn offset_of(field: &str) -> u64 {
        Self::FIELD_OFFSETS
            .iter()
            .find(|(name, _)| *name == field)
            .map_or(0, |(_, off)| *off)
    }
}

/// binrw's errors, in our terms: no colour codes, no source paths. Only a short input
/// can fail a parse of plain integers, and `parse_endian` rules that out first, so this
/// is a safety net.
fn from_binrw<T: Layout>(e: binrw::Error) -> Error {
    match e {
        binrw::Error::Io(io) => Error::io(format!("reading {}", T::NAME), io),
        other => Error::new(
            ErrorKind::InvalidFormat,
            format!(
                "{} could not be parsed at byte {}",
                T::NAME,
                binrw_position(&other)
            ),
        ),
    }
}

fn binrw_position(e: &binrw::Error) -> u64 {
    match e {
        binrw::Error::BadMagic { pos, .. }
        | binrw::Error::AssertFail { pos, .. }
        | binrw::Error::Custom { pos, .. }
        | binrw::Error::NoVariantMatch { pos }
        | binrw::Error::EnumErrors { pos, .. } => *pos,
        _ => 0,
    }
}
