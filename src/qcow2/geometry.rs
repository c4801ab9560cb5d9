//! How a qcow2 image cuts a guest offset into L1 index, L2 index and offset within the
//! cluster. Fixed by the header at open and never changed while the image is open.

use crate::mapping::GuestOffset;

/// Cluster size, L2 table size and entry width of one image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    /// log2 of the cluster size.
    pub(crate) cluster_bits: u32,
    /// log2 of the entries in an L2 table.
    pub(crate) l2_bits: u32,
    /// L2 entries are 128 bits: the entry, then a 32-subcluster bitmap.
    pub(crate) extended_l2: bool,
}

impl Geometry {
    pub(crate) fn new(cluster_bits: u32, extended_l2: bool) -> Geometry {
        // An entry is 8 bytes, or 16 with the subcluster bitmap.
        let l2_bits = cluster_bits - if extended_l2 { 4 } else { 3 };
        Geometry {
            cluster_bits,
            l2_bits,
            extended_l2,
        }
    }

    pub(crate) fn cluster_size(self) -> u64 {
        1 << self.cluster_bits
    }

    /// Entries in one L2 table.
    pub(crate) fn l2_entries(self) -> u64 {
        1 << self.l2_bits
    }

    /// Guest bytes one L2 table (one L1 entry) covers.
    pub(crate) fn l2_span(self) -> u64 {
        1 << (self.cluster_bits + self.l2_bits)
    }

    /// Where the VM state of a disk of `disk_size` bytes starts: the first L1 entry the
    /// disk does not use, as QEMU places it.
    pub(crate) fn vm_state_start(self, disk_size: u64) -> u64 {
        let span = self.l2_span();
        disk_size.div_ceil(span).saturating_mul(span)
    }

    /// 64-bit words per L2 entry: 2 with the subcluster bitmap.
    pub(crate) fn entry_words(self) -> u64 {
        if self.extended_l2 {
            2
        } else {
            1
        }
    }

    /// log2 of a subcluster's size (a thirty-second of a cluster).
    pub(crate) fn subcluster_bits(self) -> u32 {
        self.cluster_bits - 5
    }

    pub(crate) fn l1_index(self, guest: GuestOffset) -> u64 {
        guest.0 >> (self.cluster_bits + self.l2_bits)
    }

    pub(crate) fn l2_index(self, guest: GuestOffset) -> u64 {
        (guest.0 >> self.cluster_bits) & (self.l2_entries() - 1)
    }

    /// Guest offset of the cluster holding `guest`.
    pub(crate) fn cluster_start(self, guest: GuestOffset) -> u64 {
        guest.0 & !(self.cluster_size() - 1)
    }

    /// Offset of `guest` within its cluster.
    pub(crate) fn in_cluster(self, guest: GuestOffset) -> u64 {
        guest.0 & (self.cluster_size() - 1)
    }
}
