//! Cluster 0 of a qcow2 image: the header in its version 2 and 3 parts, the header
//! extensions between `header_length` and the backing file name, and that name.
//!
//! Reading is bounded by the cluster size (at most 2 MiB) and the file size before any
//! buffer is made; every length found on disk is checked against the room it has.

use crate::error::{Error, ErrorKind, Result};
use crate::format::qcow2::{
    BitmapsExtension, CryptoExtension, ExtensionHeader, ExtensionMagic, FeatureNameEntry,
    Qcow2Header, Qcow2HeaderCompression, Qcow2HeaderV3, FEATURE_NAMES, MAX_BACKING_NAME_LEN,
};
use crate::format::Layout;
use crate::storage::Storage;

/// The feature name table QEMU writes into version 3 headers with clusters over 4 KiB
/// (smaller header clusters keep the room for the backing file name), as the
/// extension's bytes: 48 per entry, names zero-padded.
pub fn qemu_feature_table() -> Vec<u8> {
    let mut out = Vec::with_capacity(FEATURE_NAMES.len() * FeatureNameEntry::SIZE);
    for (kind, bit, name) in FEATURE_NAMES {
        let mut entry = [0u8; FeatureNameEntry::SIZE];
        entry[0] = *kind;
        entry[1] = *bit;
        entry[2..2 + name.len()].copy_from_slice(name.as_bytes());
        out.extend_from_slice(&entry);
    }
    out
}

/// Length of a version 2 header, where its extensions start.
const V2_HEADER_LENGTH: u32 = Qcow2Header::SIZE as u32;

/// One header extension as found on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Extension {
    /// The extension's magic.
    pub magic: u32,
    /// Byte offset of its data in the file.
    pub offset: u64,
    /// Its data, without padding.
    pub data: Vec<u8>,
}

impl Extension {
    /// The known extension this is, if any.
    pub fn kind(&self) -> Option<ExtensionMagic> {
        ExtensionMagic::from_value(self.magic)
    }
}

/// The parsed contents of cluster 0.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Header {
    /// The part versions 2 and 3 share.
    pub common: Qcow2Header,
    /// Present for version 3 only.
    pub v3: Option<Qcow2HeaderV3>,
    /// Present when version 3 and header_length > 104.
    pub compression: Option<Qcow2HeaderCompression>,
    /// Header bytes past the fields cowimg knows, up to header_length; kept for rewrites.
    pub unknown_fields: Vec<u8>,
    /// Every extension, in file order, the end marker excluded.
    pub extensions: Vec<Extension>,
    /// The backing file name as stored (not NUL-terminated, not necessarily UTF-8).
    pub backing_file: Option<Vec<u8>>,
}

impl Header {
    /// Reads and validates cluster 0. Checks follow QEMU's open: the header fields, then
    /// the extension area, then the extensions themselves.
    pub fn read(storage: &dyn Storage) -> Result<Header> {
        let common = Qcow2Header::read_from(storage, 0)?;
        common.validate(0)?;
        let cluster_size = 1u64 << common.cluster_bits;

        // Cluster 0 as QEMU sees it: at most 2 MiB, zeros past the end of the file.
        let mut cluster0 = vec![0u8; cluster_size as usize];
        storage
            .read_zero_padded(&mut cluster0, 0)
            .map_err(|e| Error::io("reading cluster 0 of the qcow2 image", e))?;

        let (v3, compression, header_length) = if common.version >= 3 {
            let v3 = Qcow2HeaderV3::parse(&cluster0[Qcow2Header::SIZE..])?;
            v3.validate(Qcow2Header::SIZE as u64, common.cluster_bits)?;
            let compression = if v3.header_length > 104 {
                let c = Qcow2HeaderCompression::parse(cluster0.get(104..).unwrap_or_default())?;
                c.validate(104)?;
                Some(c)
            } else {
                None
            };
            let len = v3.header_length;
            (Some(v3), compression, len)
        } else {
            (None, None, V2_HEADER_LENGTH)
        };
        let known_end = match (&v3, &compression) {
            (Some(_), Some(_)) => 112,
            (Some(_), None) => 104,
            _ => V2_HEADER_LENGTH as usize,
        };
        let header_end = header_length as usize;
        let unknown_fields = cluster0
            .get(known_end..header_end)
            .unwrap_or_default()
            .to_vec();

        let area_end = if common.backing_file_offset != 0 {
            common.backing_file_offset
        } else {
            cluster_size
        };
        let extensions = read_extensions(&cluster0, header_length as u64, area_end)?;

        let backing_file = if common.backing_file_offset != 0 && common.backing_file_size != 0 {
            // validate() bounded offset + size by the cluster size.
            let start = common.backing_file_offset as usize;
            Some(cluster0[start..start + common.backing_file_size as usize].to_vec())
        } else {
            None
        };

        let header = Header {
            common,
            v3,
            compression,
            unknown_fields,
            extensions,
            backing_file,
        };
        header.check_extensions()?;
        Ok(header)
    }

    /// 2 or 3.
    pub fn version(&self) -> u32 {
        self.common.version
    }

    /// log2 of the cluster size.
    pub fn cluster_bits(&self) -> u32 {
        self.common.cluster_bits
    }

    /// Bytes per cluster.
    pub fn cluster_size(&self) -> u64 {
        1 << self.common.cluster_bits
    }

    /// Incompatible feature bits (0 for version 2).
    pub fn incompatible_features(&self) -> u64 {
        self.v3.as_ref().map_or(0, |v| v.incompatible_features)
    }

    /// Compatible feature bits (0 for version 2).
    pub fn compatible_features(&self) -> u64 {
        self.v3.as_ref().map_or(0, |v| v.compatible_features)
    }

    /// Autoclear feature bits (0 for version 2).
    pub fn autoclear_features(&self) -> u64 {
        self.v3.as_ref().map_or(0, |v| v.autoclear_features)
    }

    /// Refcount width is 2^refcount_order bits; version 2 means 16.
    pub fn refcount_order(&self) -> u32 {
        self.v3.as_ref().map_or(4, |v| v.refcount_order)
    }

    /// Length of the header proper, where the extensions start.
    pub fn header_length(&self) -> u32 {
        self.v3
            .as_ref()
            .map_or(V2_HEADER_LENGTH, |v| v.header_length)
    }

    /// 0 zlib, 1 zstd.
    pub fn compression_type(&self) -> u8 {
        self.compression.as_ref().map_or(0, |c| c.compression_type)
    }

    /// The payload of the first extension of a known type.
    pub fn extension(&self, kind: ExtensionMagic) -> Option<&Extension> {
        // A repeated extension: the last one counts, as QEMU reads each over the one
        // before.
        self.extensions
            .iter()
            .rev()
            .find(|e| e.magic == kind.value())
    }

    /// The backing file format named by its extension.
    pub fn backing_format(&self) -> Option<&[u8]> {
        self.extension(ExtensionMagic::BackingFormat)
            .map(|e| e.data.as_slice())
    }

    /// The external data file name from its extension.
    pub fn data_file(&self) -> Option<&[u8]> {
        self.extension(ExtensionMagic::DataFile)
            .map(|e| e.data.as_slice())
    }

    /// The feature name table's entries (empty when the image has none), read as QEMU
    /// reads them: a last, partial entry zero-padded, and the table ending at the
    /// first entry without a name.
    pub fn feature_table(&self) -> Vec<FeatureNameEntry> {
        self.extension(ExtensionMagic::FeatureTable)
            .map(|e| {
                e.data
                    .chunks(FeatureNameEntry::SIZE)
                    .map(|c| {
                        let mut entry = [0u8; FeatureNameEntry::SIZE];
                        entry[..c.len()].copy_from_slice(c);
                        entry
                    })
                    .filter_map(|c| FeatureNameEntry::parse(&c).ok())
                    .take_while(|entry| entry.name.0[0] != 0)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The bitmaps extension, if present (its consistency bit is a separate question).
    pub fn bitmaps(&self) -> Result<Option<BitmapsExtension>> {
        let Some(ext) = self.extension(ExtensionMagic::Bitmaps) else {
            return Ok(None);
        };
        let b = BitmapsExtension::parse(&ext.data)?;
        // Without the autoclear bit the extension is stale and QEMU checks none of it.
        if self.autoclear_features() & crate::format::qcow2::autoclear::BITMAPS != 0 {
            b.validate(ext.offset, self.cluster_bits())?;
        }
        Ok(Some(b))
    }

    /// The full disk encryption (LUKS) header pointer, if present.
    pub fn crypto(&self) -> Result<Option<CryptoExtension>> {
        let Some(ext) = self.extension(ExtensionMagic::FullDiskEncryption) else {
            return Ok(None);
        };
        let c = CryptoExtension::parse(&ext.data)?;
        c.validate(ext.offset, self.cluster_bits())?;
        Ok(Some(c))
    }

    /// Checks of individual extensions that QEMU makes at open.
    fn check_extensions(&self) -> Result<()> {
        for ext in &self.extensions {
            let Some(kind) = ext.kind() else { continue };
            let len = ext.data.len() as u64;
            let bad = |message: String| {
                Error::field(
                    ErrorKind::InvalidFormat,
                    ExtensionHeader::NAME,
                    "length",
                    ext.offset - 4,
                    len,
                    message,
                )
            };
            match kind {
                ExtensionMagic::BackingFormat if len > 15 => {
                    return Err(bad(format!(
                        "ERROR: ext_backing_format: len={len} too large (>=16)"
                    )))
                }
                ExtensionMagic::Bitmaps if len != BitmapsExtension::SIZE as u64 => {
                    return Err(bad("bitmaps_ext: Invalid extension length".into()))
                }
                ExtensionMagic::Bitmaps => {
                    self.bitmaps()?;
                }
                ExtensionMagic::FullDiskEncryption if self.common.crypt_method != 2 => {
                    return Err(bad(
                        "CRYPTO header extension only expected with LUKS encryption method".into(),
                    ))
                }
                ExtensionMagic::FullDiskEncryption if len != CryptoExtension::SIZE as u64 => {
                    return Err(bad("CRYPTO header extension size mismatch".into()))
                }
                ExtensionMagic::FullDiskEncryption => {
                    self.crypto()?;
                }
                ExtensionMagic::DataFile if len > 4095 => {
                    return Err(bad(format!("data file name of {len} bytes is too long")))
                }
                _ => {}
            }
        }
        if self.common.crypt_method == 2 && self.crypto()?.is_none() {
            return Err(Error::new(
                ErrorKind::InvalidFormat,
                "Missing CRYPTO header for crypt method 2",
            ));
        }
        Ok(())
    }
}

/// Walks the extension area `[start, end)` of cluster 0 (`end` ≤ its length). Bounds come first, as in QEMU:
/// an extension that does not fit is an error even if it is the end marker.
fn read_extensions(cluster0: &[u8], start: u64, end: u64) -> Result<Vec<Extension>> {
    let too_large = |at: u64, len: u64| {
        Error::field(
            ErrorKind::InvalidFormat,
            ExtensionHeader::NAME,
            "length",
            at + 4,
            len,
            "Header extension too large",
        )
    };
    let mut out = Vec::new();
    let mut at = start;
    while at < end {
        if end - at < ExtensionHeader::SIZE as u64 {
            return Err(too_large(at, end - at));
        }
        let ext = ExtensionHeader::parse(&cluster0[at as usize..])?;
        let data_at = at + ExtensionHeader::SIZE as u64;
        let len = u64::from(ext.length);
        if len > end - data_at {
            return Err(too_large(at, len));
        }
        if ext.magic == ExtensionMagic::End.value() {
            break;
        }
        let data = cluster0[data_at as usize..(data_at + len) as usize].to_vec();
        out.push(Extension {
            magic: ext.magic,
            offset: data_at,
            data,
        });
        at = data_at + len.next_multiple_of(8);
    }
    Ok(out)
}

impl Header {
    /// Replaces every extension of `kind` by one holding `data` (or by none), where the
    /// first stood or, when there was none, at the index `new_at` gives.
    fn replace_extension(
        &mut self,
        kind: ExtensionMagic,
        data: Option<Vec<u8>>,
        new_at: impl FnOnce(&[Extension]) -> usize,
    ) {
        let magic = kind.value();
        let at = self.extensions.iter().position(|e| e.magic == magic);
        self.extensions.retain(|e| e.magic != magic);
        if let Some(data) = data {
            let at = at.unwrap_or_else(|| new_at(&self.extensions));
            let extension = Extension {
                magic,
                offset: 0,
                data,
            };
            self.extensions.insert(at, extension);
        }
    }

    /// Names a new backing file (or none) and its format (or none), replacing the
    /// backing-format extensions as needed (repeats dropped, as QEMU writes one).
    /// Other extensions are kept as they are.
    pub fn set_backing(&mut self, name: Option<&str>, format: Option<&str>) {
        self.backing_file = name.map(|n| n.as_bytes().to_vec());
        let data = format.map(|f| f.as_bytes().to_vec());
        self.replace_extension(ExtensionMagic::BackingFormat, data, |_| 0);
    }

    /// Names the external data file (or no name: it is then given at open).
    pub(crate) fn set_data_file(&mut self, name: Option<&str>) {
        let data = name.map(|n| n.as_bytes().to_vec());
        self.replace_extension(ExtensionMagic::DataFile, data, |_| 0);
    }

    /// Names a new bitmap directory (or none), marking the bitmaps consistent (or
    /// clearing the mark). A new extension goes after the feature table, where QEMU
    /// writes it.
    pub(crate) fn set_bitmaps(&mut self, bitmaps: Option<&BitmapsExtension>) {
        let consistent = crate::format::qcow2::autoclear::BITMAPS;
        if let Some(v3) = &mut self.v3 {
            match bitmaps {
                Some(_) => v3.autoclear_features |= consistent,
                None => v3.autoclear_features &= !consistent,
            }
        }
        let after_table = |extensions: &[Extension]| {
            extensions
                .iter()
                .position(|e| e.magic == ExtensionMagic::FeatureTable.value())
                .map_or(extensions.len(), |i| i + 1)
        };
        let data = bitmaps.map(|ext| ext.to_bytes());
        self.replace_extension(ExtensionMagic::Bitmaps, data, after_table);
    }

    /// Cluster 0 as this header describes it: the fixed fields (version 2 or 3), the
    /// header bytes cowimg does not know, every extension (unknown ones included), the
    /// end marker, then the backing file name.
    pub fn to_cluster(&self) -> Result<Vec<u8>> {
        let cs = self.cluster_size() as usize;
        let mut common = self.common.clone();
        let mut out = Vec::with_capacity(cs);
        let mut tail = Vec::new();
        if let Some(v3) = &self.v3 {
            let mut v3 = v3.clone();
            let known = match &self.compression {
                Some(_) => 112,
                None => 104,
            };
            v3.header_length = (known + self.unknown_fields.len()) as u32;
            tail.extend(v3.to_bytes());
            if let Some(c) = &self.compression {
                tail.extend(c.to_bytes());
            }
            tail.extend_from_slice(&self.unknown_fields);
        }
        for e in &self.extensions {
            // The feature table describes version 3 features only.
            if self.v3.is_none() && e.magic == ExtensionMagic::FeatureTable.value() {
                continue;
            }
            tail.extend_from_slice(&e.magic.to_be_bytes());
            tail.extend_from_slice(&(e.data.len() as u32).to_be_bytes());
            tail.extend_from_slice(&e.data);
            tail.resize(tail.len().next_multiple_of(8), 0);
        }
        tail.extend_from_slice(&[0u8; 8]);
        let backing = self.backing_file.as_deref().unwrap_or_default();
        let backing_at = Qcow2Header::SIZE + tail.len();
        common.backing_file_offset = if backing.is_empty() {
            0
        } else {
            backing_at as u64
        };
        common.backing_file_size = backing.len() as u32;
        out.extend(common.to_bytes());
        out.extend(tail);
        out.extend_from_slice(backing);
        if out.len() > cs || backing.len() > MAX_BACKING_NAME_LEN as usize {
            return Err(Error::new(
                ErrorKind::BadArgument,
                "the header, its extensions and the backing file name do not fit in cluster 0",
            ));
        }
        out.resize(cs, 0);
        Ok(out)
    }
}
