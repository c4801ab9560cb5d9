//! The qcow (version 1) header and the backing file name after it.

use crate::error::{Error, ErrorKind, Result};
use crate::format::qcow::QcowHeader;
use crate::format::Layout;
use crate::storage::Storage;

/// The parsed header of a qcow image.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Header {
    /// The fixed-size header.
    pub fields: QcowHeader,
    /// The backing file name as stored (not NUL-terminated).
    pub backing_file: Option<Vec<u8>>,
}

impl Header {
    /// Reads and validates the header as QEMU's qcow driver does.
    pub fn read(storage: &dyn Storage) -> Result<Header> {
        let fields = QcowHeader::read_from(storage, 0)?;
        fields.validate(0)?;
        let backing_file = if fields.backing_file_offset != 0 && fields.backing_file_size != 0 {
            // validate() capped the size at 1023 bytes.
            let mut name = vec![0u8; fields.backing_file_size as usize];
            storage
                .read_exact_at(&mut name, fields.backing_file_offset)
                .map_err(|e| {
                    Error::field(
                        ErrorKind::InvalidFormat,
                        QcowHeader::NAME,
                        "backing_file_offset",
                        QcowHeader::offset_of("backing_file_offset"),
                        fields.backing_file_offset,
                        format!("cannot read the backing file name: {e}"),
                    )
                })?;
            Some(name)
        } else {
            None
        };
        Ok(Header {
            fields,
            backing_file,
        })
    }

    /// log2 of the cluster size.
    pub fn cluster_bits(&self) -> u32 {
        u32::from(self.fields.cluster_bits)
    }

    /// log2 of the entries in an L2 table.
    pub fn l2_bits(&self) -> u32 {
        u32::from(self.fields.l2_bits)
    }

    /// Whole 512-byte sectors of the header's size, as QEMU sees it.
    pub fn virtual_size(&self) -> u64 {
        self.fields.size / 512 * 512
    }

    /// Entries in the L1 table: one per 2^(cluster_bits + l2_bits) bytes of disk.
    pub fn l1_size(&self) -> u64 {
        self.fields
            .size
            .div_ceil(1 << (self.cluster_bits() + self.l2_bits()))
    }
}
