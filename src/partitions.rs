//! The partition table of a guest disk, read through the image: GPT (with `gptman`)
//! or, failing that, MBR with its logical partitions (with `mbrman`). Offsets are in
//! bytes of the guest disk, ready for reading a partition's range.

use crate::error::{Error, ErrorKind, Result};
use crate::image::Image;

/// Which kind of table the disk holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TableKind {
    /// A GUID partition table (behind its protective MBR).
    Gpt,
    /// A DOS partition table: four primary entries, logical ones in extended chains.
    Mbr,
}

impl TableKind {
    /// "gpt" or "dos", as sfdisk names them.
    pub fn name(self) -> &'static str {
        match self {
            TableKind::Gpt => "gpt",
            TableKind::Mbr => "dos",
        }
    }
}

/// One partition.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Partition {
    /// Its number as the table counts (1-based; MBR logical partitions from 5).
    pub number: u32,
    /// Guest offset of its first byte.
    pub start: u64,
    /// Its length in bytes.
    pub len: u64,
    /// Its type: the GPT type GUID, or the MBR system id in hex ("83").
    pub kind: String,
    /// The GPT partition's name (empty for MBR).
    pub name: String,
    /// The MBR boot flag.
    pub bootable: bool,
}

/// The disk's sector size as partition tables count it here.
const SECTOR: u64 = 512;

fn guid(bytes: &[u8; 16]) -> String {
    // Mixed-endian, as GUIDs are printed.
    format!(
        "{:02X}{:02X}{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}{:02X}{:02X}{:02X}{:02X}",
        bytes[3], bytes[2], bytes[1], bytes[0], bytes[5], bytes[4], bytes[7], bytes[6],
        bytes[8], bytes[9], bytes[10], bytes[11], bytes[12], bytes[13], bytes[14], bytes[15]
    )
}

/// The table of `image`'s guest disk and its partitions, in table order (unused GPT
/// entries and MBR extended containers left out). A disk with neither table, or a
/// partition reaching past the disk, is refused.
pub fn partitions(image: &Image) -> Result<(TableKind, Vec<Partition>)> {
    let size = image.size();
    let mut reader = image.reader();
    let (kind, list) = if let Ok(gpt) = gptman::GPT::find_from(&mut reader) {
        let ss = gpt.sector_size;
        let list: Vec<Partition> = gpt
            .iter()
            .filter(|(_, p)| p.is_used())
            .map(|(n, p)| Partition {
                number: n,
                start: p.starting_lba.saturating_mul(ss),
                len: (p.ending_lba + 1)
                    .saturating_sub(p.starting_lba)
                    .saturating_mul(ss),
                kind: guid(&p.partition_type_guid),
                name: p.partition_name.as_str().to_string(),
                bootable: false,
            })
            .collect();
        (TableKind::Gpt, list)
    } else {
        let mbr = mbrman::MBR::read_from(&mut reader, SECTOR as u32).map_err(|e| {
            Error::new(
                ErrorKind::InvalidFormat,
                format!("the guest disk has no partition table cowimg can read: {e}"),
            )
        })?;
        let list: Vec<Partition> = mbr
            .iter()
            .filter(|(_, p)| p.is_used() && !p.is_extended())
            .map(|(n, p)| Partition {
                number: n as u32,
                start: u64::from(p.starting_lba) * SECTOR,
                len: u64::from(p.sectors) * SECTOR,
                kind: format!("{:x}", p.sys),
                name: String::new(),
                bootable: p.boot & 0x80 != 0,
            })
            .collect();
        (TableKind::Mbr, list)
    };
    if let Some(p) = list
        .iter()
        .find(|p: &&Partition| p.start.saturating_add(p.len) > size)
    {
        return Err(Error::new(
            ErrorKind::Corrupt,
            format!(
                "partition {} ({} bytes at {}) reaches past the end of the disk ({size})",
                p.number, p.len, p.start
            ),
        ));
    }
    Ok((kind, list))
}
