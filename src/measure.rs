//! How large a new image would be: `qemu-img measure` for raw and qcow2 targets, from
//! a size alone or from an existing image's data.

use crate::error::{Error, ErrorKind, Result};
use crate::image::{Image, Layer};
use crate::probe::Format;
use crate::qcow2::create::{CreateOptions, Encryption, Preallocation};
use crate::qcow2::measure::{bitmaps_size, fully_allocated, Target};

/// What `qemu-img measure` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Measurement {
    /// Bytes the new image needs for `source`'s data (or an empty image).
    pub required: u64,
    /// Bytes it needs with every cluster allocated.
    pub fully_allocated: u64,
    /// Bytes for the source's persistent bitmaps (version 3 qcow2 on both sides).
    pub bitmaps: Option<u64>,
}

/// Measures a new image of `format` made with `options` (its size taken from `source`
/// when there is one, else from `options.size`).
pub fn measure(
    source: Option<&Image>,
    format: Format,
    options: &CreateOptions,
) -> Result<Measurement> {
    let size = source.map_or(options.size, Image::size);
    match format {
        Format::Raw => {
            let size = size.next_multiple_of(512);
            Ok(Measurement {
                required: size,
                fully_allocated: size,
                bitmaps: None,
            })
        }
        Format::Qcow2 => {
            let mut options = options.clone();
            options.size = size;
            options.check()?;
            let t = Target {
                cluster_size: options.cluster_size,
                refcount_bits: options.refcount_bits,
                extended_l2: options.extended_l2,
            };
            let virtual_size = size.next_multiple_of(t.cluster_size);
            let fully = fully_allocated(size, t);
            let data = match (source, options.preallocation) {
                (_, Preallocation::Full | Preallocation::Falloc) => virtual_size,
                (Some(image), _) => data_clusters(image, t.cluster_size)? * t.cluster_size,
                (None, _) => 0,
            };
            // Only a version 3 qcow2 source and target both keep persistent bitmaps.
            let bitmaps = match source.map(Image::top) {
                Some(Layer::Qcow2(q)) if options.version >= 3 && q.header().v3.is_some() => {
                    let list = crate::qcow2::bitmaps::read_directory(q.storage(), q.header())?;
                    Some(bitmaps_size(&list, size, t.cluster_size))
                }
                _ => None,
            };
            // A LUKS header and its key material take whole clusters of their own.
            let luks = luks_area(&options)?.map_or(0, |len| len.next_multiple_of(t.cluster_size));
            Ok(Measurement {
                required: fully - virtual_size + data + luks,
                fully_allocated: fully + luks,
                bitmaps,
            })
        }
        Format::Luks => {
            let Some(header) = luks_area(options)? else {
                return Err(Error::new(
                    ErrorKind::BadArgument,
                    "Parameter 'key-secret' is required for cipher",
                ));
            };
            let total = header + size.next_multiple_of(512);
            Ok(Measurement {
                required: total,
                fully_allocated: total,
                bitmaps: None,
            })
        }
        other => Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "Block driver '{}' does not support size measurement",
                other.name()
            ),
        )),
    }
}

/// Bytes of the LUKS header and key material a new image with `options` holds, if
/// it is LUKS-encrypted.
fn luks_area(options: &CreateOptions) -> Result<Option<u64>> {
    match &options.encryption {
        Encryption::Luks(luks) => {
            let (spec, _) = luks.resolve()?;
            Ok(Some(crate::luks::area_len(spec.key_len())))
        }
        _ => Ok(None),
    }
}

/// Clusters of the target's size holding any data of the source (zeros and holes need
/// none), as QEMU counts them from block status.
fn data_clusters(image: &Image, cs: u64) -> Result<u64> {
    let mut count = 0;
    let mut offset = 0;
    let size = image.size();
    while offset < size {
        let status = image.block_status(offset, size - offset)?;
        let end = offset + status.len;
        if status.data && !status.zero {
            let first = offset / cs;
            let last = end.div_ceil(cs);
            count += last - first;
            offset = (last * cs).min(size);
        } else {
            offset = end;
        }
    }
    Ok(count)
}
