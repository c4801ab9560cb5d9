//! The one decoder and encoder of qcow2 L2 entries: reading, writing, check and
//! snapshots all see an entry as a [`ClusterEntry`].
//!
//! Decoding never fails. What may be wrong with an entry (an unaligned host offset, a
//! zero flag in a version 2 image, reserved bits) is judged by the caller, because each
//! answers it differently: reading refuses, writing marks the image corrupt, check
//! reports and counts.

use super::geometry::Geometry;
use crate::format::qcow2::{L2Entry, Qcow2CompressedDescriptor};

/// What an L2 entry says about its cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ClusterEntry {
    /// No cluster here: the backing file, or zeros, supply it.
    Unallocated,
    /// Reads as zeros and keeps no cluster (the version 3 zero flag alone).
    ZeroPlain,
    /// Reads as zeros; the cluster at `host` stays allocated for reuse.
    ZeroAlloc { host: u64, copied: bool },
    /// The cluster's data is at `host`.
    Normal { host: u64, copied: bool },
    /// The cluster is compressed into `len` bytes at `host`: whole 512-byte sectors from
    /// the one holding `host`, as QEMU reads them.
    Compressed { host: u64, len: u64, copied: bool },
}

/// Host bytes an entry stopped pointing at. Their refcounts must drop once the change
/// is on disk, or they leak.
#[must_use = "freed host space must be released once the new entry is written"]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Freed {
    pub(crate) host: u64,
    pub(crate) len: u64,
}

impl ClusterEntry {
    /// Decodes an entry. With an external data file, offset 0 with COPIED set is host
    /// offset 0 of that file; in extended L2 tables the zero flag means nothing (the
    /// subcluster bitmap says which parts are zero).
    pub(crate) fn decode(raw: u64, geometry: Geometry, data_file: bool) -> ClusterEntry {
        let entry = L2Entry::from_raw(raw);
        let copied = entry.copied();
        if entry.compressed() {
            let d = Qcow2CompressedDescriptor::decode(raw, geometry.cluster_bits);
            let len = (d.additional_sectors + 1) * 512 - (d.host_offset & 511);
            return ClusterEntry::Compressed {
                host: d.host_offset,
                len,
                copied,
            };
        }
        let host = entry.host_offset();
        let allocated = host != 0 || (data_file && copied);
        let zero = entry.zero() && !geometry.extended_l2;
        match (allocated, zero) {
            (false, false) => ClusterEntry::Unallocated,
            (false, true) => ClusterEntry::ZeroPlain,
            (true, true) => ClusterEntry::ZeroAlloc { host, copied },
            (true, false) => ClusterEntry::Normal { host, copied },
        }
    }

    /// The entry's bits, or None for a compressed cluster whose offset or length does
    /// not fit this cluster size's descriptor.
    pub(crate) fn encode(self, geometry: Geometry) -> Option<u64> {
        Some(match self {
            ClusterEntry::Unallocated => 0,
            ClusterEntry::ZeroPlain => Self::plain_zero(),
            ClusterEntry::ZeroAlloc { host, copied } => L2Entry::from_raw(Self::data(host, copied))
                .with_zero(true)
                .raw(),
            ClusterEntry::Normal { host, copied } => Self::data(host, copied),
            ClusterEntry::Compressed { host, len, copied } => {
                let descriptor = Qcow2CompressedDescriptor {
                    host_offset: host,
                    additional_sectors: (host + len.max(1) - 1) / 512 - host / 512,
                };
                let bits = descriptor.encode(geometry.cluster_bits)?;
                L2Entry::from_raw(bits)
                    .with_compressed(true)
                    .with_copied(copied)
                    .raw()
            }
        })
    }

    /// A data cluster at `host` that only this L2 table references: what every write
    /// publishes.
    pub(crate) fn owned_data(host: u64) -> u64 {
        Self::data(host, true)
    }

    /// A data cluster at `host`, COPIED when only this table references it.
    pub(crate) fn data(host: u64, copied: bool) -> u64 {
        L2Entry::new()
            .with_host_offset(host)
            .with_copied(copied)
            .raw()
    }

    /// A zero cluster that keeps its host cluster at `host` (referenced by this table
    /// alone) for the next write.
    pub(crate) fn owned_zero(host: u64) -> u64 {
        L2Entry::from_raw(Self::owned_data(host))
            .with_zero(true)
            .raw()
    }

    /// A zero cluster with no host cluster.
    pub(crate) fn plain_zero() -> u64 {
        L2Entry::new().with_zero(true).raw()
    }

    /// The host cluster or compressed bytes this entry holds, if any.
    pub(crate) fn host_range(self, geometry: Geometry) -> Option<(u64, u64)> {
        match self {
            ClusterEntry::Normal { host, .. } | ClusterEntry::ZeroAlloc { host, .. } => {
                Some((host, geometry.cluster_size()))
            }
            ClusterEntry::Compressed { host, len, .. } => Some((host, len)),
            ClusterEntry::Unallocated | ClusterEntry::ZeroPlain => None,
        }
    }

    /// The host bytes this entry holds that the image's refcounts count: none for a
    /// cluster in an external data file, which has no refcounts.
    pub(crate) fn refcounted_range(
        self,
        geometry: Geometry,
        data_file: bool,
    ) -> Option<(u64, u64)> {
        let range = self.host_range(geometry)?;
        let in_data_file = data_file && !matches!(self, ClusterEntry::Compressed { .. });
        (!in_data_file).then_some(range)
    }

    /// What replacing this entry frees: its refcounted host range.
    pub(crate) fn freed_by_replacing(self, geometry: Geometry, data_file: bool) -> Option<Freed> {
        let (host, len) = self.refcounted_range(geometry, data_file)?;
        Some(Freed { host, len })
    }

    /// The host offset of a standard (uncompressed) allocated cluster.
    pub(crate) fn standard_host(self) -> Option<u64> {
        match self {
            ClusterEntry::Normal { host, .. } | ClusterEntry::ZeroAlloc { host, .. } => Some(host),
            _ => None,
        }
    }

    /// The COPIED flag: this table is the only one referencing the cluster.
    pub(crate) fn copied(self) -> bool {
        match self {
            ClusterEntry::ZeroAlloc { copied, .. }
            | ClusterEntry::Normal { copied, .. }
            | ClusterEntry::Compressed { copied, .. } => copied,
            ClusterEntry::Unallocated | ClusterEntry::ZeroPlain => false,
        }
    }

    /// A standard cluster's host offset when it is not cluster-aligned (the entry is
    /// damaged).
    pub(crate) fn unaligned_host(self, geometry: Geometry) -> Option<u64> {
        match self {
            ClusterEntry::Normal { host, .. } | ClusterEntry::ZeroAlloc { host, .. }
                if host % geometry.cluster_size() != 0 =>
            {
                Some(host)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_survives_encode_and_decode() {
        let g = Geometry::new(16, false);
        for entry in [
            ClusterEntry::Unallocated,
            ClusterEntry::ZeroPlain,
            ClusterEntry::ZeroAlloc {
                host: 0x30000,
                copied: true,
            },
            ClusterEntry::Normal {
                host: 0x50000,
                copied: false,
            },
            ClusterEntry::Compressed {
                host: 0x50123,
                len: 1024 - 0x123,
                copied: false,
            },
        ] {
            let raw = entry.encode(g).unwrap();
            assert_eq!(ClusterEntry::decode(raw, g, false), entry, "{raw:#x}");
        }
    }

    #[test]
    fn the_zero_flag_is_ignored_in_extended_tables_and_offset_zero_is_data_file_space() {
        let zero_flag = L2Entry::new().with_zero(true).raw();
        assert_eq!(
            ClusterEntry::decode(zero_flag, Geometry::new(16, true), false),
            ClusterEntry::Unallocated
        );
        let copied_at_zero = L2Entry::new().with_copied(true).raw();
        assert_eq!(
            ClusterEntry::decode(copied_at_zero, Geometry::new(16, false), true),
            ClusterEntry::Normal {
                host: 0,
                copied: true
            }
        );
        assert_eq!(
            ClusterEntry::decode(copied_at_zero, Geometry::new(16, false), false),
            ClusterEntry::Unallocated
        );
    }
}
