//! What each file of an image's chain is: the facts `qemu-img info` reports, gathered
//! by the library so that the command, the bindings and the exports tell one story.

use crate::codec::Compression;
use crate::error::{Error, Result};
use crate::format::qcow2::{autoclear, compatible, incompatible};
use crate::image::{ChainEntry, Image, Layer};
use crate::probe::Format;
use crate::qcow2::Snapshot;
use crate::storage::display_url;
use std::path::PathBuf;

pub use crate::qcow2::bitmaps::Bitmap;

/// One file of the chain, as `qemu-img info` describes it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ImageInfo {
    /// The path the file was opened at.
    pub filename: PathBuf,
    /// The format of this file.
    pub format: Format,
    /// Guest-visible size in bytes.
    pub virtual_size: u64,
    /// The file's length, in whole 512-byte sectors as QEMU's file layer counts it.
    pub file_length: u64,
    /// Bytes the file occupies on disk; None where the storage cannot tell (a remote
    /// object), which qemu-img shows as "unavailable".
    pub actual_size: Option<u64>,
    /// The protocol the file is read by, as qemu-img names its driver: `file`, or a
    /// remote URL's scheme (`https`, `s3`, …).
    pub protocol: String,
    /// qcow and qcow2 only.
    pub cluster_size: Option<u64>,
    /// Whether its data is encrypted.
    pub encrypted: bool,
    /// The qcow2 dirty bit (lazy refcounts not yet written back).
    pub dirty: bool,
    /// The backing file as the header names it.
    pub backing_file: Option<String>,
    /// The backing file resolved against this file's folder.
    pub full_backing_file: Option<PathBuf>,
    /// The backing file's format as the header names it.
    pub backing_format: Option<String>,
    /// Internal snapshots (qcow2).
    pub snapshots: Vec<Snapshot>,
    /// qcow2's format-specific facts.
    pub qcow2: Option<Qcow2Info>,
    /// Which UML cow header layout the file has (cow only).
    pub cow_layout: Option<&'static str>,
    /// A raw LUKS volume's header facts (luks only; qcow2 lists its own under `qcow2`).
    pub luks: Option<LuksInfo>,
}

/// What `qemu-img info` lists of a LUKS header.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LuksInfo {
    /// QEMU's name of the cipher and key size ("aes-256").
    pub cipher_alg: &'static str,
    /// "xts", "cbc", "ecb" or "ctr".
    pub cipher_mode: &'static str,
    /// "plain", "plain64" or "essiv" (None with ecb).
    pub ivgen_alg: Option<&'static str>,
    /// ESSIV's hash.
    pub ivgen_hash_alg: Option<&'static str>,
    /// The PBKDF2 and splitter hash.
    pub hash_alg: &'static str,
    /// The volume UUID.
    pub uuid: String,
    /// Byte offset of the payload from the header.
    pub payload_offset: u64,
    /// PBKDF2 iterations of the master key digest.
    pub master_key_iters: u32,
    /// The eight key slots: (active, iterations, key material offset in bytes, stripes).
    pub slots: Vec<(bool, u32, u64, u32)>,
}

/// What `qemu-img info` lists under "Format specific information" for qcow2.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Qcow2Info {
    /// 2 (compat 0.10) or 3 (compat 1.1).
    pub version: u32,
    /// How compressed clusters are compressed.
    pub compression: Compression,
    /// Version 3 only.
    pub lazy_refcounts: Option<bool>,
    /// Persistent bitmaps (consistent ones only, as QEMU lists them).
    pub bitmaps: Vec<Bitmap>,
    /// Width of a reference count.
    pub refcount_bits: u64,
    /// "aes" or "luks" when encrypted.
    pub encryption: Option<&'static str>,
    /// The LUKS header's facts (no secrets), when it can be read.
    pub luks: Option<LuksInfo>,
    /// The external data file as the header names it.
    pub data_file: Option<String>,
    /// The external data file reads as a raw image of the guest disk.
    pub data_file_raw: bool,
    /// Version 3 only.
    pub corrupt: Option<bool>,
    /// Version 3 only.
    pub extended_l2: Option<bool>,
}

impl Qcow2Info {
    /// qemu-img's name for the version: "0.10" or "1.1".
    pub fn compat(&self) -> &'static str {
        if self.version >= 3 {
            "1.1"
        } else {
            "0.10"
        }
    }
}

impl Image {
    /// Describes every file of the chain, the image first.
    pub fn info(&self) -> Result<Vec<ImageInfo>> {
        self.chain().iter().map(describe).collect()
    }

    /// Every header field as parsed, for each file of the chain (for forensic dumps).
    pub fn header_dumps(&self) -> Vec<String> {
        self.chain()
            .iter()
            .map(|entry| match &entry.layer {
                Layer::Qcow2(q) => format!("{:#?}", q.header()),
                Layer::Qcow(q) => format!("{:#?}", q.header()),
                Layer::Cow(c) => format!("{:#?}", c.header()),
                Layer::Raw(_) => String::new(),
                Layer::Luks(l) => format!("{:#?}", l.volume()),
            })
            .collect()
    }
}

fn describe(entry: &ChainEntry) -> Result<ImageInfo> {
    let path = &entry.path;
    // Asked of the storage, not the path: an image need not be a local file.
    let file = entry.layer.reader().file();
    // Reports show a URL without the credentials or signature it may carry.
    let shown = |p: &std::path::Path| PathBuf::from(display_url(&p.to_string_lossy()));
    let stat = |e| Error::io(format!("Could not open '{}'", shown(path).display()), e);
    let file_length = file.len().map_err(stat)?;
    let path_text = path.to_string_lossy();
    let protocol = match path_text.split_once("://") {
        Some((scheme, _)) if crate::storage::is_remote(&path_text) => scheme.to_ascii_lowercase(),
        _ => "file".to_string(),
    };
    let actual_size = match protocol.as_str() {
        "file" => Some(file.allocated_size().map_err(stat)?.unwrap_or(file_length)),
        _ => None,
    };
    let backing = entry.layer.backing_name();
    let (backing_file, backing_format) = backing.map_or((None, None), |(n, f)| (Some(n), f));
    let mut info = ImageInfo {
        filename: shown(path),
        format: entry.layer.format(),
        virtual_size: entry.layer.size(),
        file_length: file_length.next_multiple_of(512),
        actual_size,
        protocol,
        cluster_size: None,
        encrypted: false,
        dirty: false,
        full_backing_file: backing_file
            .as_deref()
            .map(|n| shown(&crate::image::resolve_backing(path, n))),
        backing_file,
        backing_format,
        snapshots: Vec::new(),
        qcow2: None,
        cow_layout: None,
        luks: None,
    };
    match &entry.layer {
        Layer::Raw(_) => {}
        Layer::Luks(l) => {
            info.encrypted = true;
            info.luks = Some(luks_info(l.volume()));
        }
        Layer::Cow(c) => info.cow_layout = Some(c.header().layout_name()),
        Layer::Qcow(q) => {
            info.cluster_size = Some(q.cluster_size());
            info.encrypted = q.is_encrypted();
        }
        Layer::Qcow2(q) => {
            let h = q.header();
            // QEMU reports whole sectors of the size field.
            info.virtual_size = h.common.size / 512 * 512;
            info.cluster_size = Some(h.cluster_size());
            info.encrypted = h.common.crypt_method != 0;
            info.dirty = h.incompatible_features() & incompatible::DIRTY != 0;
            info.snapshots = q.snapshots().to_vec();
            info.qcow2 = Some(qcow2_info(q)?);
        }
    }
    Ok(info)
}

/// The LUKS header a qcow2 file's crypto extension locates, as info lists it (None
/// when there is none or it cannot be read: info still answers).
fn qcow2_luks_info(q: &crate::qcow2::Qcow2) -> Option<LuksInfo> {
    let ext = q.header().crypto().ok()??;
    let v = crate::luks::LuksVolume::read(q.storage(), ext.offset, ext.length).ok()?;
    Some(luks_info(&v))
}

/// A LUKS header as info lists it.
fn luks_info(v: &crate::luks::LuksVolume) -> LuksInfo {
    use crate::codec::cipher::IvGenAlg;
    LuksInfo {
        cipher_alg: v.spec.alg.qemu_name(),
        cipher_mode: v.spec.mode.name(),
        ivgen_alg: v.spec.ivgen.map(IvGenAlg::name),
        ivgen_hash_alg: match v.spec.ivgen {
            Some(IvGenAlg::Essiv(h)) => Some(h.name()),
            _ => None,
        },
        hash_alg: v.hash.name(),
        uuid: v.uuid(),
        payload_offset: v.payload_offset(),
        master_key_iters: v.header.mk_digest_iterations,
        slots: v
            .slots
            .iter()
            .map(|s| {
                let active = s.active == crate::format::luks::SLOT_ACTIVE;
                (
                    active,
                    s.iterations,
                    u64::from(s.key_offset) * 512,
                    s.stripes,
                )
            })
            .collect(),
    }
}

fn qcow2_info(q: &crate::qcow2::Qcow2) -> Result<Qcow2Info> {
    let h = q.header();
    let v3 = h.version() >= 3;
    let incompatible_bit = |bit: u64| v3.then_some(h.incompatible_features() & bit != 0);
    Ok(Qcow2Info {
        version: h.version(),
        compression: Compression::from_header(h.compression_type()).unwrap_or(Compression::Deflate),
        lazy_refcounts: v3.then_some(h.compatible_features() & compatible::LAZY_REFCOUNTS != 0),
        bitmaps: crate::qcow2::bitmaps::read_directory(q.storage(), h)?,
        refcount_bits: 1u64 << h.refcount_order(),
        encryption: match h.common.crypt_method {
            1 => Some("aes"),
            2 => Some("luks"),
            _ => None,
        },
        luks: qcow2_luks_info(q),
        data_file: h
            .data_file()
            .map(|n| String::from_utf8_lossy(n).into_owned()),
        data_file_raw: h.autoclear_features() & autoclear::DATA_FILE_RAW != 0,
        corrupt: incompatible_bit(incompatible::CORRUPT),
        extended_l2: incompatible_bit(incompatible::EXTENDED_L2),
    })
}
