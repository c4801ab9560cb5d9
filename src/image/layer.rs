//! One opened file of a chain, of any format: the [`Layer`] enum, and the
//! [`ReadLayer`] trait every format's runtime implements so that the chain reads them
//! alike. The range check and the run-building of `map` are defined here, once.

use crate::cow::Cow;
use crate::error::{Error, ErrorKind, Result};
use crate::luks::Luks;
use crate::mapping::{Extent, Mapping};
use crate::probe::Format;
use crate::qcow::Qcow;
use crate::qcow2::Qcow2;
use crate::raw::Raw;
use crate::storage::Storage;

/// What the chain asks of a format's runtime.
pub(crate) trait ReadLayer {
    /// The image file itself (not an external data file).
    fn file(&self) -> &dyn Storage;

    /// The virtual size of the state it reads.
    fn size(&self) -> u64;

    /// The mapping of the unit holding `guest` (a cluster, subcluster, bitmap page or
    /// file run; `guest` < size), and the guest offset where that unit ends.
    fn classify(&self, guest: u64) -> Result<(Mapping, u64)>;

    /// As `classify`, but the unit may run on towards `end` (which the caller wants no
    /// further than) where the format can tell a longer run cheaply.
    fn classify_until(&self, guest: u64, _end: u64) -> Result<(Mapping, u64)> {
        self.classify(guest)
    }

    /// Reads `buf.len()` bytes of data stored at `host`: the guest bytes at `guest`
    /// (which encrypted formats need to decrypt them).
    fn read_data(&self, host: u64, guest: u64, buf: &mut [u8]) -> Result<()>;

    /// Fills `buf` with the bytes from `from` of the cluster whose `len` compressed
    /// bytes are at `host`, inflated. Formats without compression never map a range as
    /// compressed.
    fn read_compressed(
        &self,
        (host, _len): (u64, u64),
        _from: usize,
        _buf: &mut [u8],
    ) -> Result<()> {
        Err(Error::new(
            ErrorKind::Corrupt,
            format!("compressed cluster at {host:#x} in a format without compression"),
        ))
    }

    /// Reads `buf.len()` guest bytes at `guest`, all inside `extent` (which this layer
    /// returned, mapped as data or compressed).
    fn read_mapped(&self, extent: &Extent, guest: u64, buf: &mut [u8]) -> Result<()> {
        match extent.mapping {
            Mapping::Data { host } => self.read_data(host.0 + (guest - extent.start), guest, buf),
            Mapping::Compressed { cluster, host, len } => {
                self.read_compressed((host.0, len), (guest - cluster) as usize, buf)
            }
            _ => Err(Error::new(
                ErrorKind::BadArgument,
                "read_mapped takes data or compressed extents",
            )),
        }
    }

    /// Host offsets of encrypted data are not reported (as QEMU).
    fn is_encrypted(&self) -> bool {
        false
    }

    /// The backing file as the header names it, and its format if named.
    fn backing_name(&self) -> Option<(String, Option<String>)> {
        None
    }

    /// The longest run from `offset`, at most `len` bytes, that one mapping covers.
    fn map(&self, offset: u64, len: u64) -> Result<Extent> {
        let end = offset.saturating_add(len).min(self.size());
        if offset >= end {
            return Err(Error::new(
                ErrorKind::BadArgument,
                format!("offset {offset} is past the end of the image"),
            ));
        }
        crate::mapping::extent_from(offset, end, |guest| self.classify_until(guest, end))
    }
}

/// One opened file of a chain.
#[derive(Debug)]
pub enum Layer {
    Qcow2(Box<Qcow2>),
    Qcow(Box<Qcow>),
    Cow(Box<Cow>),
    Raw(Raw),
    Luks(Box<Luks>),
}

impl Layer {
    /// The runtime behind the layer, as the chain reads it.
    pub(crate) fn reader(&self) -> &dyn ReadLayer {
        match self {
            Layer::Qcow2(l) => l.as_ref(),
            Layer::Qcow(l) => l.as_ref(),
            Layer::Cow(l) => l.as_ref(),
            Layer::Raw(l) => l,
            Layer::Luks(l) => l.as_ref(),
        }
    }

    pub fn format(&self) -> Format {
        match self {
            Layer::Qcow2(_) => Format::Qcow2,
            Layer::Qcow(_) => Format::Qcow,
            Layer::Cow(_) => Format::Cow,
            Layer::Raw(_) => Format::Raw,
            Layer::Luks(_) => Format::Luks,
        }
    }

    pub fn size(&self) -> u64 {
        self.reader().size()
    }

    pub fn map(&self, offset: u64, len: u64) -> Result<Extent> {
        self.reader().map(offset, len)
    }

    pub(super) fn read_mapped(&self, extent: &Extent, guest: u64, buf: &mut [u8]) -> Result<()> {
        self.reader().read_mapped(extent, guest, buf)
    }

    pub(super) fn is_encrypted(&self) -> bool {
        self.reader().is_encrypted()
    }

    /// The backing file as the header names it, and its format if named.
    pub fn backing_name(&self) -> Option<(String, Option<String>)> {
        self.reader().backing_name()
    }

    /// For data stored at `host` (`len` bytes): whether the file holding it has a hole
    /// there (or ends before it), and how far that answer holds. QEMU asks the file
    /// this only for metadata-preallocated qcow2 images and reports such data as
    /// zeros; a raw layer answers in its own map.
    pub(super) fn host_zeros(&self, host: u64, len: u64) -> (bool, u64) {
        let storage = match self {
            Layer::Qcow2(l) if l.metadata_preallocated() => l.data_storage().as_ref(),
            _ => return (false, len),
        };
        match storage.allocation(host) {
            Ok(Some(run)) => (!run.data, len.min(run.end.saturating_sub(host)).max(1)),
            Ok(None) => (storage.len().is_ok_and(|end| host >= end), len),
            Err(_) => (false, len),
        }
    }
}
