//! Creating a qcow (version 1) image laid out as QEMU lays it out.

use crate::error::{Error, ErrorKind, Result};
use crate::format::qcow::QcowHeader;
use crate::format::Layout;
use crate::storage::Storage;

/// Writes a new qcow image: the 48-byte header, the backing file name (padded to 8),
/// then a zeroed L1 table in whole 512-byte sectors. Like QEMU: 4 KiB clusters and 512
/// entries an L2 table without a backing file, 512-byte clusters and 4096 with one.
pub fn create(
    storage: &dyn Storage,
    size: u64,
    backing: Option<&str>,
    encrypt_aes: bool,
) -> Result<()> {
    let size = size.next_multiple_of(512);
    if size < 2 {
        return Err(Error::new(
            ErrorKind::BadArgument,
            "Image size is too small (must be at least 2 bytes)",
        ));
    }
    let name = backing.unwrap_or("");
    if name.len() > crate::format::qcow::MAX_BACKING_NAME_LEN as usize {
        return Err(Error::new(
            ErrorKind::BadArgument,
            "Backing file name too long",
        ));
    }
    let (cluster_bits, l2_bits) = if name.is_empty() {
        (12u8, 9u8)
    } else {
        (9, 12)
    };
    let shift = u32::from(cluster_bits) + u32::from(l2_bits);
    let l1_size = size.div_ceil(1 << shift);
    let l1_offset = (QcowHeader::SIZE as u64 + name.len() as u64).next_multiple_of(8);
    let header = QcowHeader {
        magic: QcowHeader::MAGIC_REQUIRED,
        version: 1,
        backing_file_offset: if name.is_empty() {
            0
        } else {
            QcowHeader::SIZE as u64
        },
        backing_file_size: name.len() as u32,
        mtime: 0,
        size,
        cluster_bits,
        l2_bits,
        padding: 0,
        crypt_method: u32::from(encrypt_aes),
        l1_table_offset: l1_offset,
    };
    header.validate(0)?;
    let mut bytes = header.to_bytes();
    bytes.extend_from_slice(name.as_bytes());
    bytes.resize(l1_offset as usize, 0);
    bytes.resize(
        (l1_offset + (l1_size * 8).next_multiple_of(512)) as usize,
        0,
    );
    storage
        .write_at(&bytes, 0)
        .map_err(|e| Error::io("writing the qcow image", e))?;
    storage
        .flush()
        .map_err(|e| Error::io("flushing the new image", e))
}
