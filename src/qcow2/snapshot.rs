//! The internal snapshot table: read entry by entry, every length bounded before it
//! is used, and written back whole. Taking, applying and deleting snapshots is in
//! `snapshot_ops.rs`.

use crate::error::{Error, ErrorKind, Result};
use crate::format::qcow2::{SnapshotExtraData, SnapshotHeader};
use crate::format::qcow2::{MAX_SNAPSHOTS, MAX_SNAPSHOT_TABLE_BYTES};
use crate::format::Layout;
use crate::storage::Storage;

/// One snapshot as the table describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Snapshot {
    /// The table entry's fixed part as stored.
    pub header: SnapshotHeader,
    /// Full VM state size (from the extra data, else the 32-bit field).
    pub vm_state_size: u64,
    /// Virtual size when taken (from the extra data, else the image's size).
    pub disk_size: u64,
    /// Instruction count, if recorded.
    pub icount: Option<u64>,
    /// Its unique ID string.
    pub id: String,
    /// Its name (not necessarily unique).
    pub name: String,
    /// Extra data bytes past the fields cowimg knows, kept for rewrites.
    pub unknown_extra: Vec<u8>,
    /// Byte offset of the entry in the file.
    pub offset: u64,
}

impl Snapshot {
    /// When the snapshot was taken (QEMU records seconds and nanoseconds since the
    /// Unix epoch).
    pub fn created(&self) -> std::time::SystemTime {
        let nanos = self.header.date_nsec.min(999_999_999);
        std::time::UNIX_EPOCH + std::time::Duration::new(u64::from(self.header.date_sec), nanos)
    }

    /// How long the guest had run when the snapshot was taken.
    pub fn vm_clock(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.header.vm_clock_nsec)
    }

    /// When it was taken: seconds since the epoch (see `created`).
    pub fn date_sec(&self) -> u32 {
        self.header.date_sec
    }
    /// The nanoseconds part of when it was taken.
    pub fn date_nsec(&self) -> u32 {
        self.header.date_nsec
    }
    /// The guest clock when it was taken, in nanoseconds.
    pub fn vm_clock_nsec(&self) -> u64 {
        self.header.vm_clock_nsec
    }
}

/// Extra data bytes a version 3 entry must have: its first two fields, up to where
/// `icount` starts (the spec's words).
pub(crate) fn v3_required_extra() -> u32 {
    use crate::format::Layout;
    let mut fields = SnapshotExtraData::FIELD_OFFSETS.iter();
    fields
        .find(|(name, _)| *name == "icount")
        .map_or(SnapshotExtraData::SIZE as u32, |&(_, at)| at as u32)
}

/// Bytes the snapshot table occupies on disk: every entry, each padded to 8.
pub fn table_len(snapshots: &[Snapshot]) -> u64 {
    snapshots
        .iter()
        .map(|s| {
            (40 + u64::from(s.header.extra_data_size)
                + u64::from(s.header.id_str_size)
                + u64::from(s.header.name_size))
            .next_multiple_of(8)
        })
        .sum()
}

/// Reads the `count` entries at `offset`. `image_size` is the default disk size. Bytes
/// past the end of the file read as zeros, as QEMU's file driver returns them: a table
/// cut short holds empty (incomplete) entries, which check reports.
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
        if at - offset > MAX_SNAPSHOT_TABLE_BYTES {
            return Err(Error::new(
                ErrorKind::InvalidFormat,
                format!(
                    "Snapshot table is too big (You can force-remove all {} overhanging snapshots with qemu-img check -r all)",
                    count - i
                ),
            ));
        }
        let mut fixed = [0u8; SnapshotHeader::SIZE];
        storage.read_zero_padded(&mut fixed, at).map_err(io)?;
        let header = SnapshotHeader::parse(&fixed)?;
        header
            .validate(at)
            .map_err(|e| e.context(format_args!("snapshot table entry {i}")))?;
        let extra_len = header.extra_data_size as usize; // ≤ 1024, checked above
        let mut extra = vec![0u8; extra_len];
        storage.read_zero_padded(&mut extra, at + 40).map_err(io)?;
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
            .read_zero_padded(&mut strings, strings_at)
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

/// Serialises one snapshot table entry (padded to 8 bytes).
pub(super) fn entry_bytes(s: &Snapshot) -> Vec<u8> {
    let mut header = s.header.clone();
    header.id_str_size = s.id.len() as u16;
    header.name_size = s.name.len() as u16;
    header.extra_data_size = (SnapshotExtraData::SIZE + s.unknown_extra.len()) as u32;
    header.vm_state_size = u32::try_from(s.vm_state_size).unwrap_or(0);
    let mut out = header.to_bytes();
    let extra = SnapshotExtraData {
        vm_state_size_large: s.vm_state_size,
        disk_size: s.disk_size,
        icount: s.icount.unwrap_or(u64::MAX),
    };
    out.extend(extra.to_bytes());
    out.extend_from_slice(&s.unknown_extra);
    out.extend_from_slice(s.id.as_bytes());
    out.extend_from_slice(s.name.as_bytes());
    out.resize(out.len().next_multiple_of(8), 0);
    out
}
