//! How large a new qcow2 image would be: `qemu-img measure`'s arithmetic, so that the
//! figures agree byte for byte with QEMU's.

use super::bitmaps::Bitmap;

/// The target's layout choices that change its size.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    pub cluster_size: u64,
    pub refcount_bits: u32,
    pub extended_l2: bool,
}

/// Bytes of a qcow2 image of `size` with every cluster allocated: header, L1, L2,
/// refcount table and blocks, and the data itself.
pub fn fully_allocated(size: u64, t: Target) -> u64 {
    let cs = t.cluster_size;
    let data = size.next_multiple_of(cs);
    let l2_entry = if t.extended_l2 { 16 } else { 8 };
    let l2_entries = (data / cs).next_multiple_of(cs / l2_entry);
    let l1_entries = (l2_entries * l2_entry / cs).next_multiple_of(cs / 8);
    let meta = cs + l2_entries * l2_entry + l1_entries * 8;
    let refcounts = refcount_metadata_size((meta + data) / cs, cs, t.refcount_bits);
    meta + refcounts + data
}

/// Bytes of refcount blocks and table needed to count `clusters` clusters and
/// themselves: a fixed point, as each block may need counting by another.
fn refcount_metadata_size(clusters: u64, cs: u64, refcount_bits: u32) -> u64 {
    let per_block = cs * 8 / refcount_bits as u64;
    let per_table_cluster = cs / 8;
    let (mut blocks, mut table) = (0u64, 0u64);
    loop {
        let next_blocks = (clusters + table + blocks).div_ceil(per_block);
        let next_table = next_blocks.div_ceil(per_table_cluster);
        if (next_blocks, next_table) == (blocks, table) {
            return (blocks + table) * cs;
        }
        (blocks, table) = (next_blocks, next_table);
    }
}

/// Bytes needed by the source's persistent bitmaps in a target with clusters of `cs`:
/// every bitmap fully allocated, its table, and the directory.
pub fn bitmaps_size(bitmaps: &[Bitmap], size: u64, cs: u64) -> u64 {
    let mut total = 0;
    let mut directory = 0;
    for b in bitmaps {
        let bytes = size.div_ceil(b.granularity).div_ceil(8);
        let clusters = bytes.div_ceil(cs);
        total += clusters * cs + (clusters * 8).next_multiple_of(cs);
        directory += (24 + b.name.len() as u64).next_multiple_of(8);
    }
    total + directory.next_multiple_of(cs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An independent count for small images: lay out the clusters one by one.
    fn by_counting(size: u64, cs: u64, refcount_bits: u64) -> u64 {
        let data = size.div_ceil(cs);
        let l2 = data.div_ceil(cs / 8).max(1);
        let l1 = (l2 * 8).div_ceil(cs).max(1);
        let mut clusters = 1 + l1 + l2 + data;
        let mut rc = 0;
        // Grow refcount clusters one at a time until they cover everything.
        loop {
            let blocks = (clusters + rc).div_ceil(cs * 8 / refcount_bits);
            let table = blocks.div_ceil(cs / 8);
            if blocks + table <= rc {
                break;
            }
            rc += 1;
        }
        clusters += rc;
        clusters * cs
    }

    #[test]
    fn agrees_with_a_cluster_by_cluster_count() {
        for (size, cs, bits) in [
            (1u64 << 30, 65536u64, 16u32),
            (512 << 20, 4096, 16),
            (8 << 30, 65536, 64),
            (100 << 30, 512, 1),
            (1000, 65536, 16),
        ] {
            let t = Target {
                cluster_size: cs,
                refcount_bits: bits,
                extended_l2: false,
            };
            assert_eq!(
                fully_allocated(size, t),
                by_counting(size, cs, bits as u64),
                "{size} {cs} {bits}"
            );
        }
    }
}
