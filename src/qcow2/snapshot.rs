//! The internal snapshot table: read entry by entry, every length bounded before it
//! is used.

use crate::error::{Error, ErrorKind, Result};
use crate::format::qcow2::{SnapshotExtraData, SnapshotHeader};
use crate::format::Layout;
use crate::storage::Storage;

/// QEMU's limits: 65536 snapshots, a 64 MiB table.
pub const MAX_SNAPSHOTS: u32 = 65536;
pub const MAX_TABLE_SIZE: u64 = 64 << 20;

/// One snapshot as the table describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub header: SnapshotHeader,
    /// Full VM state size (from the extra data, else the 32-bit field).
    pub vm_state_size: u64,
    /// Virtual size when taken (from the extra data, else the image's size).
    pub disk_size: u64,
    /// Instruction count, if recorded.
    pub icount: Option<u64>,
    pub id: String,
    pub name: String,
    /// Extra data bytes past the fields cowimg knows, kept for rewrites.
    pub unknown_extra: Vec<u8>,
    /// Byte offset of the entry in the file.
    pub offset: u64,
}

impl Snapshot {
    pub fn date_sec(&self) -> u32 {
        self.header.date_sec
    }
    pub fn date_nsec(&self) -> u32 {
        self.header.date_nsec
    }
    pub fn vm_clock_nsec(&self) -> u64 {
        self.header.vm_clock_nsec
    }
}

/// Reads the `count` entries at `offset`. `image_size` is the default disk size.
pub fn read_table(
    storage: &dyn Storage,
    offset: u64,
    count: u32,
    image_size: u64,
) -> Result<Vec<Snapshot>> {
    if count > MAX_SNAPSHOTS {
        return Err(Error::new(
            ErrorKind::InvalidFormat,
            "Snapshot table too large",
        ));
    }
    let io = |e| Error::io("reading the snapshot table", e);
    let mut out = Vec::with_capacity(count.min(1024) as usize);
    let mut at = offset;
    for i in 0..count {
        if at - offset > MAX_TABLE_SIZE {
            return Err(Error::new(
                ErrorKind::InvalidFormat,
                format!(
                    "Snapshot table is too big (You can force-remove all {} overhanging snapshots with qemu-img check -r all)",
                    count - i
                ),
            ));
        }
        let mut fixed = [0u8; SnapshotHeader::SIZE];
        storage.read_exact_at(&mut fixed, at).map_err(io)?;
        let header = SnapshotHeader::parse(&fixed)?;
        header
            .validate(at)
            .map_err(|e| e.context(format_args!("snapshot table entry {i}")))?;
        let extra_len = header.extra_data_size as usize; // ≤ 1024, checked above
        let mut extra = vec![0u8; extra_len];
        storage.read_exact_at(&mut extra, at + 40).map_err(io)?;
        let mut known = [0u8; SnapshotExtraData::SIZE];
        let n = extra_len.min(known.len());
        known[..n].copy_from_slice(&extra[..n]);
        let fields = SnapshotExtraData::parse(&known)?;
        let vm_state_size = if extra_len >= 8 {
            fields.vm_state_size_large
        } else {
            u64::from(header.vm_state_size)
        };
        let disk_size = if extra_len >= 16 {
            fields.disk_size
        } else {
            image_size
        };
        let icount = if extra_len >= 24 && fields.icount != u64::MAX {
            Some(fields.icount)
        } else {
            None
        };
        let unknown_extra = extra
            .get(SnapshotExtraData::SIZE..)
            .unwrap_or_default()
            .to_vec();

        let strings_at = at + 40 + extra_len as u64;
        let mut strings =
            vec![0u8; usize::from(header.id_str_size) + usize::from(header.name_size)];
        storage
            .read_exact_at(&mut strings, strings_at)
            .map_err(io)?;
        let (id, name) = strings.split_at(usize::from(header.id_str_size));
        out.push(Snapshot {
            vm_state_size,
            disk_size,
            icount,
            id: String::from_utf8_lossy(id).into_owned(),
            name: String::from_utf8_lossy(name).into_owned(),
            unknown_extra,
            offset: at,
            header,
        });
        at = (strings_at + strings.len() as u64).next_multiple_of(8);
    }
    Ok(out)
}
