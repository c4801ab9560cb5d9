//! Refcounts: reading and writing entries of any width (1 to 64 bits), and handing out
//! free clusters. Changes are written at once, or (while deferring, within one request)
//! by `write_deferred` before the request's next barrier; either way in an order that
//! leaves the image consistent after a crash at any point: a cluster's refcount is
//! raised before anything points at it, and lowered only after nothing does (so the
//! worst case is a leak).

use crate::error::{Error, ErrorKind, Result};
use crate::format::qcow2::RefcountTableEntry;
use crate::storage::Storage;
use std::collections::HashMap;

/// Refcount blocks kept in memory (a block's held changes are written before it is
/// evicted, so eviction loses nothing).
const BLOCK_CACHE: usize = 64;

/// The refcount structures of an open image.
#[derive(Debug)]
pub struct Refcounts {
    cluster_bits: u32,
    /// log2 of the refcount width in bits.
    order: u32,
    /// log2 of the entries in a refcount block.
    block_bits: u32,
    table_offset: u64,
    /// Refcount table entries (raw, with reserved bits as found).
    table: Vec<u64>,
    /// Entries past this many are all zero (the table is filled from the start).
    used: usize,
    blocks: HashMap<u64, Vec<u8>>,
    /// No free cluster lies below this index.
    free_hint: u64,
    /// How many times a refcount was set to zero: space remembered for later use (the
    /// tail of the last compressed cluster) is only trusted while this is unchanged.
    frees: u64,
    /// While set, changed entries are written out by `write_deferred`, not at once.
    deferring: bool,
    /// Byte ranges of cached blocks changed but not yet written, by block offset.
    dirty: HashMap<u64, (usize, usize)>,
}

fn io(what: &str) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::io(what.to_string(), e)
}

impl Refcounts {
    /// Loads the refcount table (at most 8 MiB, checked by the header's validation).
    pub fn load(
        storage: &dyn Storage,
        cluster_bits: u32,
        order: u32,
        table_offset: u64,
        table_clusters: u32,
    ) -> Result<Refcounts> {
        let bytes = u64::from(table_clusters) << cluster_bits;
        let mut table =
            crate::tables::read_be64(storage, table_offset, bytes / 8, "refcount table")?;
        table.resize((bytes / 8) as usize, 0);
        Ok(Refcounts {
            cluster_bits,
            order,
            block_bits: cluster_bits + 3 - order,
            table_offset,
            used: used_len(&table),
            table,
            blocks: HashMap::new(),
            free_hint: 0,
            frees: 0,
            deferring: false,
            dirty: HashMap::new(),
        })
    }

    pub fn bits(&self) -> u32 {
        1 << self.order
    }

    /// The largest refcount an entry can hold.
    pub fn max(&self) -> u64 {
        if self.order == 6 {
            u64::MAX
        } else {
            (1 << self.bits()) - 1
        }
    }

    pub fn table_offset(&self) -> u64 {
        self.table_offset
    }

    /// The refcount table's length in clusters (it always fills whole clusters).
    pub fn table_clusters(&self) -> u32 {
        ((self.table.len() as u64 * 8) >> self.cluster_bits) as u32
    }

    /// The refcount table's entries.
    pub fn table(&self) -> &[u64] {
        &self.table
    }

    /// Host offsets of the refcount blocks in use (for the overlap check on every
    /// allocation: only the filled start of the table is walked).
    pub fn blocks(&self) -> impl Iterator<Item = u64> + '_ {
        self.table[..self.used]
            .iter()
            .map(|&raw| RefcountTableEntry::from_raw(raw).block_offset())
            .filter(|&offset| offset != 0)
    }

    /// Clusters one refcount block covers.
    pub fn block_entries(&self) -> u64 {
        1 << self.block_bits
    }

    fn block_offset(&self, table_index: u64) -> Option<u64> {
        let raw = *self.table.get(table_index as usize)?;
        let offset = RefcountTableEntry::from_raw(raw).block_offset();
        (offset != 0).then_some(offset)
    }

    fn block<'a>(&'a mut self, storage: &dyn Storage, offset: u64) -> Result<&'a mut Vec<u8>> {
        if !self.blocks.contains_key(&offset) {
            if let Some(&victim) = self.blocks.keys().next() {
                if self.blocks.len() >= BLOCK_CACHE {
                    self.write_dirty(storage, victim)?;
                    self.blocks.remove(&victim);
                }
            }
            let mut bytes = vec![0u8; 1 << self.cluster_bits];
            storage
                .read_zero_padded(&mut bytes, offset)
                .map_err(io("reading a refcount block"))?;
            self.blocks.insert(offset, bytes);
        }
        self.blocks
            .get_mut(&offset)
            .ok_or_else(|| Error::new(ErrorKind::Io, "a refcount block left the cache"))
    }
}

/// Sets entry `index` of a block of `bits`-wide entries to `value` (which fits);
/// returns the bytes changed (start, length).
pub(super) fn set_entry(bits: u32, block: &mut [u8], index: u64, value: u64) -> (usize, usize) {
    let bits = u64::from(bits);
    if bits >= 8 {
        let len = (bits / 8) as usize;
        let at = index as usize * len;
        for (i, b) in block[at..at + len].iter_mut().enumerate() {
            *b = (value >> (8 * (len - 1 - i))) as u8;
        }
        (at, len)
    } else {
        let bit = index * bits;
        let at = (bit / 8) as usize;
        let mask = ((1u64 << bits) - 1) << (bit % 8);
        block[at] = ((u64::from(block[at]) & !mask) | ((value << (bit % 8)) & mask)) as u8;
        (at, 1)
    }
}

/// Writes each `(bytes, at)` of a refcount structure, then flushes: what comes next
/// (a table entry, a header switch) may only point at it once it is on disk.
pub(super) fn write_then_flush(
    storage: &dyn Storage,
    parts: &[(&[u8], u64)],
    what: &str,
) -> Result<()> {
    for (bytes, at) in parts {
        storage
            .write_at(bytes, *at)
            .map_err(|e| Error::io(format!("writing {what}"), e))?;
    }
    storage
        .flush()
        .map_err(|e| Error::io(format!("flushing {what}"), e))
}

/// New refcount structures (blocks, then the table) holding `counts` (one per cluster,
/// each fitting `1 << order` bits), written from cluster `floor` or after the last
/// cluster in use, whichever is later, counting themselves; on disk and flushed, not
/// yet named by the header. Returns where the table is, its clusters, and the byte
/// range the structures take.
pub(super) fn write_structures(
    storage: &dyn Storage,
    cluster_bits: u32,
    order: u32,
    counts: &[u64],
    floor: u64,
) -> Result<(u64, u32, u64, u64)> {
    let cs = 1u64 << cluster_bits;
    let entries_per_block = (cs * 8) >> order;
    let used = counts
        .iter()
        .rposition(|r| *r > 0)
        .map_or(1, |i| i as u64 + 1)
        .max(floor);
    // Blocks and table go after everything in use; they must count themselves too.
    let (mut blocks, mut table_clusters);
    let mut total = used;
    loop {
        blocks = total.div_ceil(entries_per_block);
        table_clusters = (blocks * 8).div_ceil(cs);
        let need = used + blocks + table_clusters;
        if need <= total {
            break;
        }
        total = need;
    }
    let start = used;
    let mut counts = counts.to_vec();
    counts.resize(total as usize, 0);
    for c in start..start + blocks + table_clusters {
        counts[c as usize] = 1;
    }
    let mut table = vec![0u8; (table_clusters * cs) as usize];
    for b in 0..blocks {
        let block_at = (start + b) * cs;
        table[(b * 8) as usize..(b * 8 + 8) as usize].copy_from_slice(&block_at.to_be_bytes());
        let mut block = vec![0u8; cs as usize];
        for k in 0..entries_per_block {
            let c = b * entries_per_block + k;
            let Some(&v) = counts.get(c as usize) else {
                break;
            };
            if v != 0 {
                set_entry(1 << order, &mut block, k, v);
            }
        }
        storage
            .write_at(&block, block_at)
            .map_err(|e| Error::io("writing a new refcount block", e))?;
    }
    let table_at = (start + blocks) * cs;
    write_then_flush(
        storage,
        &[(&table, table_at)],
        "the new refcount structures",
    )?;
    Ok((
        table_at,
        table_clusters as u32,
        start * cs,
        (start + blocks + table_clusters) * cs,
    ))
}

/// The length of the table's prefix holding every nonzero entry.
fn used_len(table: &[u64]) -> usize {
    table.iter().rposition(|&e| e != 0).map_or(0, |i| i + 1)
}

/// Entry `index` of a refcount block of `bits`-wide entries: (value, byte, length).
/// Wider entries are big-endian; narrower ones fill each byte from bit 0.
fn entry_at(bits: u32, block: &[u8], index: u64) -> (u64, usize, usize) {
    {
        let bits = u64::from(bits);
        if bits >= 8 {
            let len = (bits / 8) as usize;
            let at = index as usize * len;
            let v = block[at..at + len]
                .iter()
                .fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
            (v, at, len)
        } else {
            let bit = index * bits;
            let at = (bit / 8) as usize;
            let v = (u64::from(block[at]) >> (bit % 8)) & ((1 << bits) - 1);
            (v, at, 1)
        }
    }
}

impl Refcounts {
    /// The refcount of host cluster `cluster` (0 where no block covers it).
    pub fn get(&mut self, storage: &dyn Storage, cluster: u64) -> Result<u64> {
        let Some(block_at) = self.block_offset(cluster >> self.block_bits) else {
            return Ok(0);
        };
        self.check_block(block_at, cluster >> self.block_bits)?;
        let index = cluster & (self.block_entries() - 1);
        let bits = self.bits();
        Ok(entry_at(bits, self.block(storage, block_at)?, index).0)
    }

    fn check_block(&self, block_at: u64, table_index: u64) -> Result<()> {
        if block_at & ((1 << self.cluster_bits) - 1) != 0 {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!(
                    "Refblock offset {block_at:#x} unaligned (reftable index: {table_index:#x})"
                ),
            ));
        }
        Ok(())
    }

    /// Sets the refcount of `cluster`, creating the refcount block (and growing the
    /// table) first if none covers it. Written at once unless deferring.
    pub fn set(&mut self, storage: &dyn Storage, cluster: u64, value: u64) -> Result<()> {
        if value > self.max() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "refcount of cluster {cluster} would exceed {} (refcount_bits {})",
                    self.max(),
                    self.bits()
                ),
            ));
        }
        let table_index = cluster >> self.block_bits;
        let block_at = match self.block_offset(table_index) {
            Some(at) => at,
            None => self.new_block(storage, table_index)?,
        };
        self.check_block(block_at, table_index)?;
        let index = cluster & (self.block_entries() - 1);
        let bits = self.bits();
        let (at, len) = set_entry(bits, self.block(storage, block_at)?, index, value);
        if self.deferring {
            let range = self.dirty.entry(block_at).or_insert((at, at + len));
            *range = (range.0.min(at), range.1.max(at + len));
        } else {
            storage
                .write_at(&self.blocks[&block_at][at..at + len], block_at + at as u64)
                .map_err(io("writing a refcount block"))?;
        }
        if value == 0 {
            self.frees += 1;
            self.free_hint = self.free_hint.min(cluster);
        }
        Ok(())
    }

    /// Adds `delta` to the refcount of every cluster touched by `[offset, offset + len)`.
    pub fn update_range(
        &mut self,
        storage: &dyn Storage,
        offset: u64,
        len: u64,
        delta: i64,
    ) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let first = offset >> self.cluster_bits;
        let last = (offset + len - 1) >> self.cluster_bits;
        for cluster in first..=last {
            let now = self.get(storage, cluster)?;
            let new = now.checked_add_signed(delta).ok_or_else(|| {
                Error::new(
                    ErrorKind::Corrupt,
                    format!("refcount of cluster {cluster} ({now}) cannot change by {delta}"),
                )
            })?;
            self.set(storage, cluster, new)?;
        }
        Ok(())
    }

    /// Holds changed entries in memory (`true`) until `write_deferred`, so that a run
    /// of allocations costs one write per block, not one per cluster. The caller writes
    /// them out before any barrier that orders later metadata after them.
    pub fn defer(&mut self, on: bool) {
        self.deferring = on;
    }

    /// Writes out every entry changed while deferring.
    pub fn write_deferred(&mut self, storage: &dyn Storage) -> Result<()> {
        let blocks: Vec<u64> = self.dirty.keys().copied().collect();
        for block_at in blocks {
            self.write_dirty(storage, block_at)?;
        }
        Ok(())
    }

    fn write_dirty(&mut self, storage: &dyn Storage, block_at: u64) -> Result<()> {
        if let Some((lo, hi)) = self.dirty.remove(&block_at) {
            let block = &self.blocks[&block_at];
            storage
                .write_at(&block[lo..hi], block_at + lo as u64)
                .map_err(io("writing a refcount block"))?;
        }
        Ok(())
    }

    /// How many times a refcount has been set to zero since the image was opened.
    pub fn frees(&self) -> u64 {
        self.frees
    }

    /// Finds `n` contiguous clusters with refcount 0, sets their refcounts to 1, and
    /// returns the host offset of the first. Nothing points at them yet.
    pub fn alloc(&mut self, storage: &dyn Storage, n: u64) -> Result<u64> {
        let bits = self.block_bits;
        // Every pass creates a block (or grows the table); a run needs a block per
        // range it crosses, so this many passes always suffice.
        let mut tries = 2 * (n / self.block_entries() + 4);
        loop {
            let first = self.find_free(storage, n)?;
            let missing: Vec<u64> = ((first >> bits)..=((first + n - 1) >> bits))
                .filter(|&i| self.block_offset(i).is_none())
                .collect();
            if missing.is_empty() {
                for c in first..first + n {
                    self.set(storage, c, 1)?;
                }
                self.free_hint = first + n;
                return Ok(first << self.cluster_bits);
            }
            tries -= 1;
            if tries == 0 {
                return Err(Error::new(
                    ErrorKind::Corrupt,
                    format!("no run of {n} free clusters could be made"),
                ));
            }
            // Clusters in ranges without a refcount block need one first; creating it
            // takes a cluster, so look again afterwards. A block normally sits at the
            // start of the range it covers; a run that long would always be split by
            // its own blocks, so its blocks go outside it.
            let long = n >= self.block_entries() / 2;
            let last = (first + n - 1) >> bits;
            let room = (last + 1) << bits;
            if missing.last() == Some(&last)
                && (last as usize) < self.table.len()
                && first + n + missing.len() as u64 <= room
            {
                self.blocks_after(storage, &missing, first + n)?;
            } else if !long {
                for table_index in missing {
                    self.new_block(storage, table_index)?;
                }
            } else {
                for table_index in missing {
                    self.new_block_outside(storage, table_index, (first, first + n))?;
                }
            }
        }
    }

    /// Creates the blocks for table entries `missing` (ascending, the last one covering
    /// `at`) in consecutive clusters from `at`, in QEMU's order after a long run: the
    /// first range's block at `at`, then the last range's (which counts itself and all
    /// of them: QEMU needs it as soon as the first one lands in its range), then the
    /// rest. Blocks written and flushed, then the table entries.
    fn blocks_after(&mut self, storage: &dyn Storage, missing: &[u64], at: u64) -> Result<()> {
        let zeros = vec![0u8; 1 << self.cluster_bits];
        let mut holder = zeros.clone();
        let mask = self.block_entries() - 1;
        let k = missing.len() as u64;
        for i in 0..k {
            set_entry(self.bits(), &mut holder, (at + i) & mask, 1);
        }
        // Cluster for missing[i]: the last goes second (or first, when alone).
        let places: Vec<u64> = (0..k)
            .map(|i| match i {
                0 => at,
                _ if i + 1 == k => at + 1,
                _ => at + i + 1,
            })
            .map(|c| c << self.cluster_bits)
            .collect();
        for (i, &place) in places.iter().enumerate() {
            let bytes = if i + 1 == missing.len() {
                holder.clone()
            } else {
                zeros.clone()
            };
            storage
                .write_at(&bytes, place)
                .map_err(io("writing a new refcount block"))?;
            self.blocks.insert(place, bytes);
        }
        storage
            .flush()
            .map_err(io("flushing new refcount blocks"))?;
        for (&index, place) in missing.iter().zip(places) {
            self.write_table_entry(storage, index, place)?;
        }
        Ok(())
    }

    /// Creates the refcount block for table entry `table_index` in a free cluster
    /// outside `[avoid.0, avoid.1)` that an existing block counts: block written,
    /// its refcount written, flushed, then the table entry.
    fn new_block_outside(
        &mut self,
        storage: &dyn Storage,
        table_index: u64,
        avoid: (u64, u64),
    ) -> Result<u64> {
        if table_index as usize >= self.table.len() {
            self.grow_table(storage, table_index + 1)?;
            if let Some(at) = self.block_offset(table_index) {
                return Ok(at);
            }
        }
        if let Some(at) = self.block_offset(table_index) {
            return Ok(at);
        }
        let c = match self.free_counted(storage, avoid)? {
            Some(c) => c,
            None => {
                // No room where blocks exist: the range after the run's gets one.
                let past = ((avoid.1 - 1) >> self.block_bits) + 1;
                if self.block_offset(past).is_none() {
                    self.new_block(storage, past)?;
                }
                self.free_counted(storage, avoid)?.ok_or_else(|| {
                    Error::new(ErrorKind::Corrupt, "no free cluster for a refcount block")
                })?
            }
        };
        self.set(storage, c, 1)?;
        let holder = self.block_offset(c >> self.block_bits).ok_or_else(|| {
            Error::new(
                ErrorKind::Corrupt,
                format!("cluster {c} has no refcount block after counting it"),
            )
        })?;
        self.write_dirty(storage, holder)?;
        let block_at = c << self.cluster_bits;
        self.install_block(
            storage,
            table_index,
            block_at,
            vec![0u8; 1 << self.cluster_bits],
        )
    }

    /// Writes a new refcount block's bytes, flushes (with whatever counts it), then
    /// points table entry `table_index` at it.
    fn install_block(
        &mut self,
        storage: &dyn Storage,
        table_index: u64,
        block_at: u64,
        bytes: Vec<u8>,
    ) -> Result<u64> {
        write_then_flush(storage, &[(&bytes, block_at)], "a new refcount block")?;
        self.blocks.insert(block_at, bytes);
        self.write_table_entry(storage, table_index, block_at)?;
        Ok(block_at)
    }

    /// The first free cluster (from the free hint on) outside `[avoid.0, avoid.1)` in
    /// a range some block covers.
    fn free_counted(&mut self, storage: &dyn Storage, avoid: (u64, u64)) -> Result<Option<u64>> {
        let from = self.free_hint.max(1);
        for index in (from >> self.block_bits)..self.used as u64 {
            if self.block_offset(index).is_none() {
                continue;
            }
            let start = (index << self.block_bits).max(from);
            for c in start..(index + 1) << self.block_bits {
                if (avoid.0..avoid.1).contains(&c) {
                    continue;
                }
                if self.get(storage, c)? == 0 {
                    return Ok(Some(c));
                }
            }
        }
        Ok(None)
    }

    fn find_free(&mut self, storage: &dyn Storage, n: u64) -> Result<u64> {
        let limit = (1u64 << 56) >> self.cluster_bits;
        let mut first = self.free_hint.max(1);
        let mut c = first;
        while c < first + n {
            if c >= limit {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    "no free cluster below 64 PiB",
                ));
            }
            if self.get(storage, c)? != 0 {
                first = c + 1;
            }
            c += 1;
        }
        Ok(first)
    }

    /// Creates the refcount block for table entry `table_index`, inside the range it
    /// covers so that it counts itself: block written first, then the table entry.
    fn new_block(&mut self, storage: &dyn Storage, table_index: u64) -> Result<u64> {
        if table_index as usize >= self.table.len() {
            // Growing places a block of its own; it may be the one wanted.
            self.grow_table(storage, table_index + 1)?;
            if let Some(at) = self.block_offset(table_index) {
                return Ok(at);
            }
        }
        let block_at = table_index << (self.block_bits + self.cluster_bits);
        let mut bytes = vec![0u8; 1 << self.cluster_bits];
        set_entry(self.bits(), &mut bytes, 0, 1); // its own refcount (entry 0 of its range)
        self.install_block(storage, table_index, block_at, bytes)
    }

    fn write_table_entry(
        &mut self,
        storage: &dyn Storage,
        table_index: u64,
        block_at: u64,
    ) -> Result<()> {
        self.table[table_index as usize] = block_at;
        self.used = self.used.max(table_index as usize + 1);
        storage
            .write_at(&block_at.to_be_bytes(), self.table_offset + table_index * 8)
            .map_err(io("writing the refcount table"))
    }

    /// Replaces the refcount table by a larger one with at least `entries` entries:
    /// new refcount blocks and the new table are laid out together in a range no block
    /// covers yet (the blocks count themselves and the table; more than one when the
    /// table outgrows what one block counts, as with small clusters and wide
    /// refcounts), then the header is switched over in one write, then the old table
    /// is freed.
    fn grow_table(&mut self, storage: &dyn Storage, entries: u64) -> Result<()> {
        let cluster_size = 1u64 << self.cluster_bits;
        let per_block = self.block_entries();
        let file_end = storage.len().map_err(io("reading the file size"))?;
        let end_cluster = file_end.div_ceil(cluster_size);
        let range = end_cluster.div_ceil(per_block).max(self.table.len() as u64);
        let mut new_entries = entries
            .max(range + 1)
            .max(self.table.len() as u64 * 3 / 2 + 1);
        // Blocks enough to count themselves and the table, entries enough for them.
        let (table_clusters, blocks) = loop {
            let table_clusters = (new_entries * 8).div_ceil(cluster_size);
            let blocks = table_clusters.div_ceil(per_block - 1);
            if new_entries >= range + blocks {
                break (table_clusters, blocks);
            }
            new_entries = range + blocks;
        };
        let new_entries = table_clusters * cluster_size / 8;
        if table_clusters << self.cluster_bits > crate::format::qcow2::MAX_REFCOUNT_TABLE_BYTES {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "Reference count table too large",
            ));
        }
        let first_cluster = range << self.block_bits;
        let table_at = (first_cluster + blocks) << self.cluster_bits;

        let mut new_blocks = vec![vec![0u8; cluster_size as usize]; blocks as usize];
        for i in 0..blocks + table_clusters {
            set_entry(
                self.bits(),
                &mut new_blocks[(i / per_block) as usize],
                i % per_block,
                1,
            );
        }
        let mut table = self.table.clone();
        table.resize(new_entries as usize, 0);
        for j in 0..blocks {
            table[(range + j) as usize] = (first_cluster + j) << self.cluster_bits;
        }
        let bytes: Vec<u8> = table.iter().flat_map(|e| e.to_be_bytes()).collect();
        let mut parts: Vec<(&[u8], u64)> = new_blocks
            .iter()
            .enumerate()
            .map(|(j, b)| {
                (
                    b.as_slice(),
                    (first_cluster + j as u64) << self.cluster_bits,
                )
            })
            .collect();
        parts.push((&bytes, table_at));
        write_then_flush(storage, &parts, "the new refcount table")?;

        super::header::Header::write_refcount_table_in_file(
            storage,
            table_at,
            table_clusters as u32,
        )?;
        storage.flush().map_err(io("flushing the header"))?;

        let old_at = self.table_offset;
        let old_len = self.table.len() as u64 * 8;
        self.used = used_len(&table);
        self.table = table;
        self.table_offset = table_at;
        for (j, block) in new_blocks.into_iter().enumerate() {
            self.blocks
                .insert((first_cluster + j as u64) << self.cluster_bits, block);
        }
        self.update_range(storage, old_at, old_len, -1)?;
        // The old table's clusters may be handed out again as data clusters that
        // metadata preallocation never writes: they must read as zeros.
        if !storage
            .zero_range(old_at, old_len)
            .map_err(io("zeroing the old refcount table"))?
        {
            storage
                .write_at(&vec![0u8; old_len as usize], old_at)
                .map_err(io("zeroing the old refcount table"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryStorage;

    /// A bare refcount structure: table at cluster 1, block at cluster 2, clusters 0–2 used.
    fn fresh(order: u32) -> (MemoryStorage, Refcounts) {
        let cs = 512u64;
        let storage = MemoryStorage::new(vec![0u8; 3 * cs as usize]);
        storage.write_at(&(2 * cs).to_be_bytes(), cs).unwrap();
        let mut r = Refcounts::load(&storage, 9, order, cs, 1).unwrap();
        for c in 0..3 {
            r.set(&storage, c, 1).unwrap();
        }
        (storage, r)
    }

    #[test]
    fn every_width_round_trips_and_allocation_grows_the_table() {
        for order in 0..=6 {
            let (storage, mut r) = fresh(order);
            let max = r.max();
            r.set(&storage, 5, max).unwrap();
            assert_eq!(r.get(&storage, 5).unwrap(), max);
            assert_eq!(r.get(&storage, 4).unwrap(), 0);
            assert_eq!(r.get(&storage, 6).unwrap(), 0);
            r.set(&storage, 5, 0).unwrap();
            // Enough allocations to need new blocks and a bigger table.
            let mut seen = std::collections::HashSet::new();
            for _ in 0..3000 {
                let at = r.alloc(&storage, 1).unwrap();
                assert!(
                    seen.insert(at),
                    "cluster {at:#x} handed out twice (order {order})"
                );
            }
            // Reload from disk: what was written is what is read.
            let table_offset = r.table_offset();
            let clusters = (r.table().len() as u64 * 8).div_ceil(512) as u32;
            let mut again = Refcounts::load(&storage, 9, order, table_offset, clusters).unwrap();
            for at in &seen {
                assert_eq!(again.get(&storage, at >> 9).unwrap(), 1, "order {order}");
            }
        }
    }

    #[test]
    fn runs_longer_than_a_block_range_get_blocks_outside_them() {
        // Clusters 0-2 are in use: a run of 5 ranges and 3 leaves room after it for
        // its blocks (QEMU's placement); one of 2 ranges less 3 ends on a range
        // boundary, so its block goes elsewhere.
        for (order, ranges, less) in [(0, 5, 0), (4, 5, 0), (6, 5, 0), (6, 2, 6), (4, 2, 6)] {
            let (storage, mut r) = fresh(order);
            let n = ranges * r.block_entries() + 3 - less;
            let first = r.alloc(&storage, n).unwrap() >> 9;
            let blocks: Vec<u64> = r.blocks().map(|b| b >> 9).collect();
            assert!(
                blocks.iter().all(|b| !(first..first + n).contains(b)),
                "order {order}: a block inside the run"
            );
            let clusters = (r.table().len() as u64 * 8).div_ceil(512) as u32;
            let mut again =
                Refcounts::load(&storage, 9, order, r.table_offset(), clusters).unwrap();
            for c in (first..first + n).chain(blocks) {
                assert_eq!(
                    again.get(&storage, c).unwrap(),
                    1,
                    "order {order}, cluster {c}"
                );
            }
        }
    }
}
