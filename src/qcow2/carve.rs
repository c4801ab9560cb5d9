//! Carving a qcow2 file: the host clusters the current state does not reach, and why —
//! held only by snapshots, leaked (counted, referenced by nothing), free (refcount 0),
//! past the last allocation, or a stale table (a freed cluster that still parses as an
//! L1 or L2 table) — each with the guest offset it had where a snapshot or a stale
//! table says. Deleted data lives there. Read-only: the file is only read.

use super::entry::ClusterEntry;
use super::geometry::Geometry;
use super::layer::Qcow2;
use super::refcount::Refcounts;
use crate::error::Result;
use crate::format::qcow2::{incompatible, L1Entry, L2Entry};
use crate::image::ReadLayer;
use crate::mapping::Mapping;
use crate::tables::read_be64;

/// Why a cluster is not part of the current state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Reason {
    /// Referenced by an internal snapshot only.
    SnapshotOnly,
    /// Counted in the refcounts but referenced by no table.
    Leaked,
    /// Refcount 0: freed (discarded, overwritten out of place, a deleted snapshot's).
    Free,
    /// After the last cluster anything counts or references.
    PastLastAllocation,
    /// Unreferenced, and every entry in it is a valid table entry pointing inside the
    /// file: an old L1 or L2 table (or refcount table), freed with what it mapped.
    StaleTable,
}

impl Reason {
    /// A short name for file names and reports.
    pub fn name(self) -> &'static str {
        match self {
            Reason::SnapshotOnly => "snapshot-only",
            Reason::Leaked => "leaked",
            Reason::Free => "free",
            Reason::PastLastAllocation => "past-last-allocation",
            Reason::StaleTable => "stale-table",
        }
    }
}

/// A run of unreachable host clusters with one reason.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Carved {
    /// Host offset of the run's first byte.
    pub host: u64,
    /// Its length.
    pub len: u64,
    /// Why the current state does not reach it.
    pub reason: Reason,
    /// The guest offset the run had, where a snapshot or a stale L1 → L2 path says.
    pub guest: Option<u64>,
    /// For snapshot-only data: the ID of the snapshot that maps it.
    pub snapshot: Option<String>,
    /// For data a stale L2 table maps: that table's host offset.
    pub stale_table: Option<u64>,
}

/// What each cluster of the file is, as far as carving cares.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Use {
    Current,
    Snapshot,
    Unreferenced,
}

/// Where a carved data cluster was, as its last mapping says.
#[derive(Clone, Copy, Default)]
struct Origin {
    guest: Option<u64>,
    snapshot: Option<usize>,
    stale_table: Option<u64>,
}

/// The unreachable, non-zero host clusters of `q`, as runs.
pub(crate) fn carve(q: &Qcow2) -> Result<Vec<Carved>> {
    let h = q.header();
    let storage = q.storage();
    let g = Geometry::new(
        h.cluster_bits(),
        h.incompatible_features() & incompatible::EXTENDED_L2 != 0,
    );
    let cs = g.cluster_size();
    let file_len = storage
        .len()
        .map_err(|e| crate::Error::io("reading the file size", e))?;
    let clusters = file_len.div_ceil(cs) as usize;
    let mut uses = vec![Use::Unreferenced; clusters];
    let mut origins = vec![Origin::default(); clusters];
    let mark = |host: u64, len: u64, u: Use, uses: &mut Vec<Use>| {
        let first = (host / cs) as usize;
        let last = (host.saturating_add(len.max(1) - 1) / cs) as usize;
        let end = (last + 1).min(uses.len());
        for slot in uses.get_mut(first..end).unwrap_or_default() {
            if *slot != Use::Current {
                *slot = u;
            }
        }
    };
    // Metadata the current state needs.
    mark(0, cs, Use::Current, &mut uses);
    let c = &h.common;
    let reftable_len = u64::from(c.refcount_table_clusters) * cs;
    mark(
        c.refcount_table_offset,
        reftable_len,
        Use::Current,
        &mut uses,
    );
    let mut refcounts = Refcounts::load(
        storage,
        g.cluster_bits,
        h.refcount_order(),
        c.refcount_table_offset,
        c.refcount_table_clusters,
    )?;
    for &block in refcounts.table() {
        if block != 0 {
            mark(block & !0x1ff, cs, Use::Current, &mut uses);
        }
    }
    mark(
        c.snapshots_offset,
        super::snapshot::table_len(q.snapshots()),
        Use::Current,
        &mut uses,
    );
    if let Ok(bitmaps) = super::bitmaps::read_directory(storage, h) {
        if let Ok(Some(ext)) = h.bitmaps() {
            mark(
                ext.bitmap_directory_offset,
                ext.bitmap_directory_size,
                Use::Current,
                &mut uses,
            );
        }
        for b in bitmaps {
            let table = b.entry.bitmap_table_offset;
            let n = u64::from(b.entry.bitmap_table_size);
            mark(table, n * 8, Use::Current, &mut uses);
            for e in read_be64(storage, table, n, "bitmap table").unwrap_or_default() {
                if e & 0x00ff_ffff_ffff_fe00 != 0 {
                    mark(e & 0x00ff_ffff_ffff_fe00, cs, Use::Current, &mut uses);
                }
            }
        }
    }
    if let Ok(Some(luks)) = h.crypto() {
        mark(luks.offset, luks.length, Use::Current, &mut uses);
    }
    let data_file = q.has_data_file();
    // The trees: the current state's first, then each snapshot's.
    let mut trees = vec![(None, c.l1_table_offset, u64::from(c.l1_size))];
    for (i, s) in q.snapshots().iter().enumerate() {
        trees.push((
            Some(i),
            s.header.l1_table_offset,
            u64::from(s.header.l1_size),
        ));
    }
    for (snapshot, l1_at, l1_size) in trees {
        let u = if snapshot.is_none() {
            Use::Current
        } else {
            Use::Snapshot
        };
        mark(l1_at, l1_size * 8, u, &mut uses);
        let l1 = read_be64(storage, l1_at, l1_size, "L1 table").unwrap_or_default();
        for (i, raw) in l1.iter().enumerate() {
            let l2 = L1Entry::from_raw(*raw).l2_offset();
            if l2 == 0 || l2 % cs != 0 {
                continue;
            }
            mark(l2, cs, u, &mut uses);
            let Ok(table) = q.l2_table(l2) else { continue };
            for j in 0..g.l2_entries() {
                let raw = table[(j * g.entry_words()) as usize];
                let entry = ClusterEntry::decode(raw, g, data_file);
                let Some((host, len)) = entry.refcounted_range(g, data_file) else {
                    continue;
                };
                mark(host, len, u, &mut uses);
                let first = (host / cs) as usize;
                if snapshot.is_some() && first < clusters && uses[first] == Use::Snapshot {
                    let o = &mut origins[first];
                    if o.snapshot.is_none() {
                        o.snapshot = snapshot;
                        o.guest = Some(i as u64 * g.l2_span() + j * cs);
                    }
                }
            }
        }
    }
    let stale = stale_tables(q, g, &uses, file_len, &mut origins);
    // The last cluster anything counts or references.
    let mut last_used = 0;
    let mut reasons = Vec::with_capacity(clusters);
    for (i, u) in uses.iter().enumerate() {
        let refcount = refcounts.get(storage, i as u64).unwrap_or(0);
        if *u != Use::Unreferenced || refcount > 0 {
            last_used = i;
        }
        reasons.push((*u, refcount));
    }
    let mut out: Vec<Carved> = Vec::new();
    let mut buf = vec![0u8; cs as usize];
    for (i, (u, refcount)) in reasons.into_iter().enumerate() {
        let reason = match u {
            Use::Current => continue,
            Use::Snapshot => Reason::SnapshotOnly,
            Use::Unreferenced if stale[i] => Reason::StaleTable,
            Use::Unreferenced if refcount > 0 => Reason::Leaked,
            Use::Unreferenced if i > last_used => Reason::PastLastAllocation,
            Use::Unreferenced => Reason::Free,
        };
        let host = i as u64 * cs;
        let n = storage.read_zero_padded(&mut buf, host).unwrap_or(0);
        if n == 0 || crate::copy::is_zero(&buf) {
            continue;
        }
        let o = origins[i];
        let located = o.guest.is_some() || o.stale_table.is_some();
        match out.last_mut() {
            Some(last)
                if last.host + last.len == host
                    && last.reason == reason
                    && !located
                    && last.guest.is_none()
                    && last.stale_table.is_none() =>
            {
                last.len += cs
            }
            _ => out.push(Carved {
                host,
                len: cs.min(file_len - host),
                reason,
                guest: o.guest,
                snapshot: o.snapshot.map(|s| q.snapshots()[s].id.clone()),
                stale_table: o.stale_table,
            }),
        }
    }
    Ok(out)
}

/// Which unreferenced clusters parse as tables, and the origins of the data clusters
/// stale L2 tables map (with the guest offset where a stale L1 table names the L2).
fn stale_tables(
    q: &Qcow2,
    g: Geometry,
    uses: &[Use],
    file_len: u64,
    origins: &mut [Origin],
) -> Vec<bool> {
    let cs = g.cluster_size();
    let storage = q.storage();
    let words = (cs / 8) as usize;
    let mut is_table = vec![false; uses.len()];
    // Every unreferenced cluster whose words are all valid L2 entries (standard L2
    // tables only: an extended table's bitmaps look like anything).
    let mut tables: Vec<(usize, Vec<u64>)> = Vec::new();
    for (i, u) in uses.iter().enumerate() {
        if *u != Use::Unreferenced || g.extended_l2 {
            continue;
        }
        let Ok(entries) = read_be64(storage, i as u64 * cs, words as u64, "carved cluster") else {
            continue;
        };
        let valid = |e: u64| {
            let entry = L2Entry::from_raw(e);
            if entry.compressed() {
                let d = crate::format::qcow2::Qcow2CompressedDescriptor::decode(e, g.cluster_bits);
                return d.host_offset != 0 && d.host_offset < file_len;
            }
            let host = entry.host_offset();
            entry.reserved_bits() == 0
                && host % cs == 0
                && host < file_len
                && host / cs != i as u64
                && (host != 0 || entry.zero())
        };
        if entries.iter().any(|&e| e != 0) && entries.iter().all(|&e| e == 0 || valid(e)) {
            is_table[i] = true;
            tables.push((i, entries));
        }
    }
    // A stale L1 table: a table whose entries are all plain offsets of tables. Runs of
    // them are one table, their entries numbered on.
    let points_at_table = |e: u64| {
        let entry = L1Entry::from_raw(e);
        let at = (entry.l2_offset() / cs) as usize;
        entry.reserved_bits() == 0 && e & 1 == 0 && at < uses.len() && is_table[at]
    };
    let mut l1_index_of: Vec<Option<u64>> = vec![None; uses.len()];
    let mut run: Option<(usize, u64)> = None; // (last cluster, entries before it)
    for (i, entries) in &tables {
        if !entries.iter().all(|&e| e == 0 || points_at_table(e)) {
            run = None;
            continue;
        }
        let base = match run {
            Some((last, before)) if last + 1 == *i => before + words as u64,
            _ => 0,
        };
        run = Some((*i, base));
        for (k, &e) in entries.iter().enumerate() {
            if e != 0 {
                let at = (L1Entry::from_raw(e).l2_offset() / cs) as usize;
                l1_index_of[at].get_or_insert(base + k as u64);
            }
        }
    }
    // The data the stale L2 tables map, where nothing newer says otherwise.
    for (i, entries) in &tables {
        for (j, &e) in entries.iter().enumerate() {
            let entry = ClusterEntry::decode(e, g, false);
            let Some((host, _)) = entry.host_range(g) else {
                continue;
            };
            let at = (host / cs) as usize;
            if at >= uses.len() || uses[at] != Use::Unreferenced || is_table[at] {
                continue;
            }
            let o = &mut origins[at];
            if o.stale_table.is_none() && o.snapshot.is_none() {
                o.stale_table = Some(*i as u64 * cs);
                o.guest = l1_index_of[*i].map(|l1| l1 * g.l2_span() + j as u64 * cs);
            }
        }
    }
    is_table
}

/// Where snapshot `index`'s saved VM state is in its tree (QEMU keeps it past the
/// disk, from the first L2 range after the disk's last) and how long it is: None when
/// the snapshot saved none; an error when the entry's sizes put it outside the
/// snapshot's own L1 table (savevm grows the table to hold all of it).
pub(crate) fn vm_state_range(q: &Qcow2, index: usize) -> Result<Option<(u64, u64)>> {
    let Some(s) = q.snapshots().get(index) else {
        return Ok(None);
    };
    if s.vm_state_size == 0 {
        return Ok(None);
    }
    let span = q.geometry.l2_span();
    let covered = u64::from(s.header.l1_size).saturating_mul(span);
    let start = q.geometry.vm_state_start(s.disk_size);
    if start.saturating_add(s.vm_state_size) > covered {
        return Err(crate::Error::new(
            crate::ErrorKind::Corrupt,
            format!(
                "snapshot table entry {index} (id '{}'): vm_state_size {} at offset {start} runs past its L1 table (l1_size {}, {covered} bytes)",
                s.id, s.vm_state_size, s.header.l1_size
            ),
        ));
    }
    Ok(Some((start, s.vm_state_size)))
}

/// A piece of a VM state, in order: bytes, or a run of zeros (not allocated).
pub enum Piece<'a> {
    /// Stored bytes.
    Data(&'a [u8]),
    /// This many zero bytes.
    Zeros(u64),
}

/// Hands snapshot `index`'s saved VM state to `sink` in order: data in pieces of at
/// most 4 MiB, unallocated runs as zeros (as QEMU reads them) of any length.
pub(crate) fn read_vm_state(
    q: &Qcow2,
    index: usize,
    sink: &mut dyn FnMut(Piece) -> Result<()>,
) -> Result<()> {
    let Some((start, len)) = vm_state_range(q, index)? else {
        return Ok(());
    };
    if q.is_encrypted() && q.key.is_none() {
        return Err(crate::Error::new(
            crate::ErrorKind::BadArgument,
            "the VM state is encrypted: open the image with its key to read it",
        ));
    }
    let s = &q.snapshots()[index];
    let l1 = read_be64(
        q.storage(),
        s.header.l1_table_offset,
        u64::from(s.header.l1_size),
        "snapshot L1 table",
    )?;
    let end = start + len;
    let mut buf = vec![0u8; (4 << 20).min(len) as usize];
    let mut guest = start;
    while guest < end {
        let extent = crate::mapping::extent_from(guest, end, |g| q.classify_in(&l1, g, end))?;
        let mut n = extent.start + extent.len - guest;
        match extent.mapping {
            Mapping::Data { .. } | Mapping::Compressed { .. } => {
                n = n.min(buf.len() as u64);
                if let Mapping::Compressed { cluster, .. } = extent.mapping {
                    n = n.min(cluster + q.geometry.cluster_size() - guest);
                }
                let piece = &mut buf[..n as usize];
                q.read_mapped(&extent, guest, piece)?;
                sink(Piece::Data(piece))?;
            }
            _ => sink(Piece::Zeros(n))?,
        }
        guest += n;
    }
    Ok(())
}
