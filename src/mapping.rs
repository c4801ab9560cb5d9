//! Where a guest range lives in one layer of a chain: the answer every format's
//! runtime gives and every I/O path matches on.

/// A byte offset in a layer's file (or its external data file), as opposed to a guest
/// offset in the virtual disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostOffset(pub u64);

impl std::ops::Add<u64> for HostOffset {
    type Output = HostOffset;

    fn add(self, n: u64) -> HostOffset {
        HostOffset(self.0 + n)
    }
}

/// Reads guest bytes at an offset from the layers below a layer being written (zeros
/// where there are none): how a write that needs old content sees the backing chain.
pub type Below<'a> = dyn Fn(u64, &mut [u8]) -> crate::Result<()> + 'a;

/// A byte offset in the virtual disk, as the guest sees it, as opposed to where a
/// layer stores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GuestOffset(pub u64);

/// How one layer stores a guest range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mapping {
    /// The bytes are stored plainly or (legacy AES) encrypted.
    Data {
        /// Where the range's first byte is.
        host: HostOffset,
    },
    /// The range lies in one compressed cluster.
    Compressed {
        /// Guest offset of the compressed cluster.
        cluster: u64,
        /// Where its compressed bytes start.
        host: HostOffset,
        /// How many compressed bytes there are (whole sectors, as QEMU reads them).
        len: u64,
    },
    /// The range reads as zeros here, whatever the backing file says.
    Zero {
        /// The cluster preallocated for it, if any.
        host: Option<HostOffset>,
    },
    /// This layer does not have the range: the backing file supplies it, or zeros.
    Unallocated {
        /// Space this layer has already allocated for it, if any.
        host: Option<HostOffset>,
    },
}

impl Mapping {
    /// The host offset of the range's first byte, where the layer has one.
    pub fn host(&self) -> Option<HostOffset> {
        match *self {
            Mapping::Data { host } => Some(host),
            Mapping::Zero { host } | Mapping::Unallocated { host } => host,
            Mapping::Compressed { .. } => None,
        }
    }

    /// The mapping `n` bytes further on, for extending a run.
    pub fn advanced(&self, n: u64) -> Mapping {
        match *self {
            Mapping::Data { host } => Mapping::Data { host: host + n },
            Mapping::Zero { host } => Mapping::Zero {
                host: host.map(|h| h + n),
            },
            Mapping::Unallocated { host } => Mapping::Unallocated {
                host: host.map(|h| h + n),
            },
            m @ Mapping::Compressed { .. } => m,
        }
    }

    /// Whether a run mapped as `self` and `len` bytes long continues with `next`.
    pub fn continues(&self, len: u64, next: &Mapping) -> bool {
        match (self, next) {
            (Mapping::Compressed { .. }, _) | (_, Mapping::Compressed { .. }) => false,
            _ => {
                std::mem::discriminant(self) == std::mem::discriminant(next)
                    && self.advanced(len) == *next
            }
        }
    }
}

/// A run of guest bytes with one mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Extent {
    /// Guest offset of the first byte.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// How the layer stores the run.
    pub mapping: Mapping,
}

/// The longest run from `offset` (below `end`) with one mapping, given a classifier that
/// maps the (sub)cluster holding a guest offset and says where that unit ends.
pub fn extent_from(
    offset: u64,
    end: u64,
    mut classify: impl FnMut(u64) -> crate::Result<(Mapping, u64)>,
) -> crate::Result<Extent> {
    // A run is at most this many (sub)clusters long: a hostile image whose every L1
    // entry names the same table could otherwise make one call walk the whole disk.
    const MAX_UNITS: u32 = 1 << 16;
    let (mapping, mut run_end) = classify(offset)?;
    let mut units = 1;
    while run_end < end && units < MAX_UNITS && !matches!(mapping, Mapping::Compressed { .. }) {
        units += 1;
        let (next, next_end) = classify(run_end)?;
        if !mapping.continues(run_end - offset, &next) {
            break;
        }
        run_end = next_end;
    }
    Ok(Extent {
        start: offset,
        len: run_end.min(end) - offset,
        mapping,
    })
}
