//! Small pieces the generated code leans on: fixed byte arrays that print readably,
//! and bit arithmetic that cannot panic whatever a hostile header says.

use binrw::{BinRead, BinResult, BinWrite, Endian};
use std::fmt;
use std::io::{Read, Seek, Write};

/// 2^bits, saturating at u64::MAX for 64 and more, so checks on unvalidated shift
/// counts cannot overflow.
pub const fn pow2(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        1 << bits
    }
}

/// Bits `lsb .. lsb + width` of `raw`. Positions outside 0..64 contribute nothing, so a
/// descriptor decoded with a nonsense parameter yields zeros, never a panic.
pub fn bits_at(raw: u64, lsb: i64, width: i64) -> u64 {
    if !(0..64).contains(&lsb) || width <= 0 {
        return 0;
    }
    let width = width.min(64 - lsb) as u32;
    let mask = if width == 64 {
        u64::MAX
    } else {
        (1u64 << width) - 1
    };
    (raw >> lsb) & mask
}

/// `value` placed at bits `lsb .. lsb + width`, or None when it does not fit.
pub fn put_bits(value: u64, lsb: i64, width: i64) -> Option<u64> {
    if value == 0 {
        return Some(0);
    }
    if !(0..64).contains(&lsb) || width <= 0 || lsb + width > 64 {
        return None;
    }
    let width = width as u32;
    if width < 64 && value >> width != 0 {
        return None;
    }
    Some(value << lsb)
}

/// A fixed-length byte field (names, paths, padding). Its Debug form is the text up to
/// the trailing zeros, so snapshots of 4 KiB path fields stay readable.
#[derive(Clone, PartialEq, Eq)]
pub struct ByteArray<const N: usize>(pub [u8; N]);

impl<const N: usize> ByteArray<N> {
    /// The bytes before the first NUL (all of them if there is none).
    pub fn until_nul(&self) -> &[u8] {
        let end = self.0.iter().position(|b| *b == 0).unwrap_or(N);
        &self.0[..end]
    }

    /// A field holding `bytes` followed by zeros, or None if they do not fit.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let mut out = [0u8; N];
        out.get_mut(..bytes.len())?.copy_from_slice(bytes);
        Some(ByteArray(out))
    }

    /// All zero bytes.
    pub fn zeroed() -> Self {
        ByteArray([0; N])
    }
}

impl<const N: usize> fmt::Debug for ByteArray<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = self.0.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
        write!(f, "b\"{}\"", self.0[..end].escape_ascii())?;
        if end < N {
            write!(f, " + {} zero bytes", N - end)?;
        }
        Ok(())
    }
}

impl<const N: usize> BinRead for ByteArray<N> {
    type Args<'a> = ();

    fn read_options<R: Read + Seek>(reader: &mut R, _: Endian, _: ()) -> BinResult<Self> {
        let mut out = [0u8; N];
        reader.read_exact(&mut out)?;
        Ok(ByteArray(out))
    }
}

impl<const N: usize> BinWrite for ByteArray<N> {
    type Args<'a> = ();

    fn write_options<W: Write + Seek>(&self, writer: &mut W, _: Endian, _: ()) -> BinResult<()> {
        writer.write_all(&self.0)?;
        Ok(())
    }
}

#[cfg(feature = "fuzzing")]
impl<'a, const N: usize> arbitrary::Arbitrary<'a> for ByteArray<N> {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        let mut out = [0u8; N];
        u.fill_buffer(&mut out)?;
        Ok(ByteArray(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_survive_nonsense_positions() {
        assert_eq!(bits_at(u64::MAX, 70, 5), 0);
        assert_eq!(bits_at(u64::MAX, -3, 5), 0);
        assert_eq!(bits_at(u64::MAX, 60, 10), 0xf);
        assert_eq!(bits_at(0xabcd, 4, 8), 0xbc);
        assert_eq!(put_bits(0x1ff, 0, 8), None);
        assert_eq!(put_bits(0xff, 8, 8), Some(0xff00));
        assert_eq!(pow2(64), u64::MAX);
        assert_eq!(pow2(9), 512);
    }

    #[test]
    fn byte_array_debug_trims_zeros() {
        let a = ByteArray::<8>::from_slice(b"ab").unwrap();
        assert_eq!(format!("{a:?}"), "b\"ab\" + 6 zero bytes");
        assert_eq!(a.until_nul(), b"ab");
        assert!(ByteArray::<1>::from_slice(b"ab").is_none());
    }
}
