//! `check`: every cluster's references counted from the metadata and compared with
//! its refcount, COPIED flags checked, with QEMU's classification (corruptions,
//! leaks, check errors) and messages. What it repairs is in `repair.rs`.

use super::entry::ClusterEntry;
use super::geometry::Geometry;
use super::header::Header;
use super::refcount::Refcounts;
use super::snapshot;
use crate::error::{Error, Result};
use crate::format::qcow2::{autoclear, incompatible};
use crate::format::qcow2::{BitmapTableEntry, L1Entry, L2Entry, SubclusterBitmap};
use crate::storage::Storage;

mod repair;
pub(crate) use repair::repair_if_dirty;
use repair::{clear_flags, compare_and_repair};

/// What `-r` asks to repair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Repair {
    /// Report only.
    None,
    /// Free leaked clusters (`-r leaks`).
    Leaks,
    /// Repair leaks and corruptions (`-r all`).
    All,
}

/// The outcome of a check, as qemu-img reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckResult {
    /// References that disagree with the metadata in a way that can lose data.
    pub corruptions: u64,
    /// Clusters counted as used that nothing references (harmless; space lost).
    pub leaks: u64,
    /// Metadata that could not be read at all.
    pub check_errors: u64,
    /// Corruptions repaired.
    pub corruptions_fixed: u64,
    /// Leaks repaired.
    pub leaks_fixed: u64,
    /// Where the last used cluster ends.
    pub image_end_offset: u64,
    /// Clusters the guest disk has.
    pub total_clusters: u64,
    /// Of those, clusters allocated in the active state.
    pub allocated_clusters: u64,
    /// Allocated clusters not right after the previous one in the file.
    pub fragmented_clusters: u64,
    /// Allocated clusters stored compressed.
    pub compressed_clusters: u64,
    /// The lines QEMU prints on standard error, in its order.
    pub messages: Vec<String>,
    /// Repairs were made (the image was re-checked afterwards).
    pub repaired: bool,
    /// The check could not be completed (qemu-img: "Check failed", exit 1).
    pub failed: Option<String>,
}

/// Per-pass state: reference counts of every cluster inside the file.
struct Pass<'a> {
    storage: &'a dyn Storage,
    header: &'a Header,
    cs: u64,
    refs: Vec<u32>,
    res: CheckResult,
    /// The refcount structures need rebuilding.
    rebuild: bool,
    /// (L1 index, L2 offset) of the active tables, for the COPIED check.
    active_l2: Vec<(u64, u64)>,
    data_file: bool,
    /// Told (tables walked, tables in all) as the active L1's tables are walked.
    progress: &'a dyn Fn(u64, u64),
}

impl Pass<'_> {
    /// A COPIED flag that disagrees with its refcount: reported, and with `fix` the
    /// entry rewritten as `fixed` at `at` (else counted as a corruption).
    fn copied_flag_wrong(&mut self, fix: bool, what: &str, fixed: u64, at: u64) -> Result<()> {
        let verb = if fix { "Repairing" } else { "ERROR" };
        self.res
            .messages
            .push(format!("{verb} OFLAG_COPIED {what}"));
        if !fix {
            self.res.corruptions += 1;
            return Ok(());
        }
        self.storage
            .write_at(&fixed.to_be_bytes(), at)
            .map_err(io("repairing a COPIED flag"))?;
        self.res.corruptions_fixed += 1;
        Ok(())
    }

    fn error(&mut self, message: String) {
        self.res.messages.push(message);
        self.res.corruptions += 1;
    }

    /// Counts one reference to every cluster `[offset, offset + len)` touches.
    fn reference(&mut self, offset: u64, len: u64) {
        self.reference_n(offset, len, 1);
    }

    /// Counts `n` references to every cluster `[offset, offset + len)` touches.
    fn reference_n(&mut self, offset: u64, len: u64, n: u64) {
        if len == 0 || n == 0 {
            return;
        }
        let first = offset / self.cs;
        let last = (offset + len - 1) / self.cs;
        if last >= self.refs.len() as u64 {
            self.error(format!(
                "ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset {offset:#x} size {len:#x}"
            ));
            return;
        }
        // A count stops at the widest refcount the image can store: each reference past
        // it is an error of its own, as QEMU counts them (amend can widen the entries).
        let bits = 1u32 << self.header.refcount_order();
        let max = u64::from(u32::MAX).min(u64::MAX >> (64 - bits.min(64)));
        for c in first..=last {
            let now = u64::from(self.refs[c as usize]);
            let over = (now + n).saturating_sub(max);
            for _ in 0..over.min(n) {
                self.error(format!(
                    "ERROR: overflow cluster offset={:#x}\nUse qemu-img amend to increase the refcount entry width or qemu-img convert to create a clean copy if the image cannot be opened for writing",
                    c * self.cs
                ));
            }
            self.refs[c as usize] = (now + n).min(max) as u32;
        }
    }

    fn read_u64s(&mut self, offset: u64, count: u64) -> Option<Vec<u64>> {
        let mut bytes = vec![0u8; (count * 8) as usize];
        if self.storage.read_zero_padded(&mut bytes, offset).is_err() {
            self.res
                .messages
                .push(format!("ERROR: I/O error reading the table at {offset:#x}"));
            self.res.check_errors += 1;
            return None;
        }
        Some(crate::tables::from_be_bytes(&bytes))
    }

    /// Counts an L1 table's L2 tables and their clusters. Block-fragmentation figures
    /// come from the active table only. Each distinct table is walked once, its
    /// references weighted by how many L1 entries name it: a hostile L1 naming one table
    /// a million times stays cheap.
    fn l1(&mut self, l1_offset: u64, l1_size: u64, active: bool) {
        let Some(l1) = self.read_u64s(l1_offset, l1_size) else {
            return;
        };
        let extended = self.header.incompatible_features() & incompatible::EXTENDED_L2 != 0;
        let geometry = Geometry::new(self.header.cluster_bits(), extended);
        let words = geometry.entry_words();
        let entries = geometry.l2_entries();
        // (table offset, how many L1 entries name it, index of the first)
        let mut tables: Vec<(u64, u64, u64)> = Vec::new();
        let mut seen = std::collections::HashMap::new();
        for (i, raw) in l1.iter().enumerate() {
            let e = L1Entry::from_raw(*raw);
            if e.reserved_bits() != 0 {
                self.error(format!(
                    "ERROR found L1 entry with reserved bits set: {raw:x}"
                ));
            }
            let l2 = e.l2_offset();
            if l2 == 0 {
                continue;
            }
            if l2 % self.cs != 0 {
                self.error(format!(
                    "ERROR l2_offset={l2:x}: Table is not cluster aligned; L1 entry corrupted"
                ));
                continue;
            }
            if active {
                self.active_l2.push((i as u64, l2));
            }
            match seen.get(&l2) {
                Some(&at) => {
                    let t: &mut (u64, u64, u64) = &mut tables[at];
                    t.1 += 1;
                }
                None => {
                    seen.insert(l2, tables.len());
                    tables.push((l2, 1, i as u64));
                }
            }
        }
        let total = tables.len() as u64;
        for (walked, (l2, weight, i)) in tables.into_iter().enumerate() {
            if active {
                (self.progress)(walked as u64 + 1, total);
            }
            self.reference_n(l2, self.cs, weight);
            let Some(table) = self.read_u64s(l2, entries * words) else {
                continue;
            };
            let mut next_contiguous = 0;
            for j in 0..entries {
                let raw = table[(j * words) as usize];
                let bitmap = if extended {
                    table[(j * words + 1) as usize]
                } else {
                    0
                };
                let entry = ClusterEntry::decode(raw, geometry, self.data_file);
                if let ClusterEntry::Compressed { host, len, copied } = entry {
                    if copied {
                        self.error(format!(
                            "ERROR: coffset=0x{host:x}: copied flag must never be set for compressed clusters"
                        ));
                    }
                    if bitmap != 0 {
                        self.error(format!(
                            "ERROR compressed cluster {} with non-zero subcluster allocation bitmap, entry=0x{raw:x}",
                            i * entries + j
                        ));
                    }
                    self.reference_n(host, len, weight);
                    if active {
                        self.res.allocated_clusters += weight;
                        self.res.compressed_clusters += weight;
                        self.res.fragmented_clusters += weight;
                    }
                    continue;
                }
                if L2Entry::from_raw(raw).reserved_bits() != 0 {
                    self.error(format!(
                        "ERROR found l2 entry with reserved bits set: {raw:x}"
                    ));
                }
                let host = entry.standard_host().unwrap_or_default();
                let allocated = entry.standard_host().is_some();
                if extended {
                    let b = SubclusterBitmap::from_raw(bitmap);
                    if !allocated && b.allocated() != 0 {
                        self.error(
                            "ERROR: Unallocated cluster has non-zero subcluster allocation map"
                                .into(),
                        );
                    } else if allocated && b.allocated() & b.zero() != 0 {
                        self.error(format!(
                            "ERROR offset={host:x}: Allocated cluster has corrupted subcluster allocation bitmap"
                        ));
                    }
                }
                if !allocated {
                    continue;
                }
                if host % self.cs != 0 {
                    self.error(format!("ERROR offset={host:x}: Cluster is not properly aligned; L2 entry corrupted."));
                    continue;
                }
                if active {
                    self.res.allocated_clusters += weight;
                    if next_contiguous != 0 && host != next_contiguous {
                        self.res.fragmented_clusters += weight;
                    }
                    next_contiguous = host + self.cs;
                }
                if !self.data_file {
                    self.reference_n(host, self.cs, weight);
                }
            }
        }
    }
}

fn io(what: &str) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::io(what.to_string(), e)
}

/// Checks the image in `storage` (re-reading its header), repairing as asked. With
/// repairs, the image is checked again afterwards and that second result returned
/// with the repair counts.
pub fn check(storage: &dyn Storage, has_data_file: bool, repair: Repair) -> Result<CheckResult> {
    check_with_progress(storage, has_data_file, repair, &|_, _| {})
}

/// [`check`], telling `progress` (tables walked, tables in all) as it goes.
pub fn check_with_progress(
    storage: &dyn Storage,
    has_data_file: bool,
    repair: Repair,
    progress: &dyn Fn(u64, u64),
) -> Result<CheckResult> {
    let first = check_once(storage, has_data_file, repair, progress)?;
    let repaired = first.leaks_fixed > 0 || first.corruptions_fixed > 0 || first.repaired;
    let result = if repair == Repair::None || first.failed.is_some() || !repaired {
        first
    } else {
        let mut second = check_once(storage, has_data_file, Repair::None, &|_, _| {})?;
        second.leaks_fixed = first.leaks_fixed;
        second.corruptions_fixed = first.corruptions_fixed;
        second.repaired = true;
        let mut messages = first.messages;
        messages.append(&mut second.messages);
        second.messages = messages;
        second
    };
    // As QEMU: any repair that leaves the image without errors marks it clean and
    // consistent.
    if repair != Repair::None
        && result.failed.is_none()
        && result.corruptions == 0
        && result.check_errors == 0
    {
        clear_flags(storage)?;
    }
    Ok(result)
}

fn check_once(
    storage: &dyn Storage,
    data_file: bool,
    repair: Repair,
    progress: &dyn Fn(u64, u64),
) -> Result<CheckResult> {
    let header = Header::read(storage)?;
    let cs = header.cluster_size();
    let file_len = storage.len().map_err(io("reading the file size"))?;
    let nb = file_len.div_ceil(cs);
    let mut p = Pass {
        storage,
        header: &header,
        cs,
        refs: vec![0; nb as usize],
        res: CheckResult::default(),
        rebuild: false,
        active_l2: Vec::new(),
        data_file,
        progress,
    };
    p.res.total_clusters = header.common.size.div_ceil(cs);

    p.reference(0, cs);
    let l1_bytes = u64::from(header.common.l1_size) * 8;
    p.reference(header.common.l1_table_offset, l1_bytes);
    p.l1(
        header.common.l1_table_offset,
        u64::from(header.common.l1_size),
        true,
    );

    let snapshots = snapshot::read_table(
        storage,
        header.common.snapshots_offset,
        header.common.nb_snapshots,
        header.common.size,
    )?;
    p.reference(
        header.common.snapshots_offset,
        snapshot::table_len(&snapshots),
    );
    count_snapshot_tables(&mut p, &snapshots);

    // Refcount structures.
    let table_bytes = u64::from(header.common.refcount_table_clusters) * cs;
    p.reference(header.common.refcount_table_offset, table_bytes);
    count_bitmaps_and_crypto(&mut p);
    let mut refcounts = count_refcount_blocks(&mut p, nb)?;
    let Some(highest) = compare_and_repair(&mut p, &mut refcounts, repair)? else {
        return Ok(p.res);
    };
    check_copied_flags(&mut p, &mut refcounts, repair)?;
    if p.res.leaks_fixed + p.res.corruptions_fixed > 0 {
        storage.flush().map_err(io("flushing repairs"))?;
    }
    p.res.image_end_offset = highest * cs;
    Ok(p.res)
}

/// The L1 tables of the snapshots, and what they reach; a broken entry is reported and
/// skipped.
fn count_snapshot_tables(p: &mut Pass, snapshots: &[snapshot::Snapshot]) {
    let (header, cs) = (p.header, p.cs);
    for (i, s) in snapshots.iter().enumerate() {
        if header.version() >= 3 && s.header.extra_data_size < snapshot::v3_required_extra() {
            p.error(format!("ERROR snapshot table entry {i} is incomplete"));
        }
        let (offset, size) = (s.header.l1_table_offset, u64::from(s.header.l1_size));
        if offset % cs != 0 {
            p.error(format!(
                "ERROR snapshot {} ({}) l1_offset={offset:#x}: L1 table is not cluster aligned; snapshot table entry corrupted",
                s.id, s.name
            ));
            continue;
        }
        if size * 8 > crate::format::qcow2::MAX_L1_BYTES {
            p.error(format!(
                "ERROR snapshot {} ({}) l1_size={size:#x}: L1 table is too large; snapshot table entry corrupted",
                s.id, s.name
            ));
            continue;
        }
        p.reference(offset, size * 8);
        p.l1(offset, size, false);
    }
}

/// Bitmaps (when consistent) and the encryption header.
fn count_bitmaps_and_crypto(p: &mut Pass) {
    let (storage, header, cs) = (p.storage, p.header, p.cs);
    if let (Ok(Some(ext)), true) = (
        header.bitmaps(),
        header.autoclear_features() & autoclear::BITMAPS != 0,
    ) {
        p.reference(ext.bitmap_directory_offset, ext.bitmap_directory_size);
        if let Ok(bitmaps) = super::bitmaps::read_directory(storage, header) {
            for b in bitmaps {
                let (table, n) = (
                    b.entry.bitmap_table_offset,
                    u64::from(b.entry.bitmap_table_size),
                );
                p.reference(table, n * 8);
                if let Some(entries) = p.read_u64s(table, n.min(1 << 20)) {
                    for e in entries {
                        let data = BitmapTableEntry::from_raw(e).data_offset();
                        if data != 0 {
                            p.reference(data, cs);
                        }
                    }
                }
            }
        }
    }
    if let Ok(Some(c)) = header.crypto() {
        p.reference(c.offset, c.length);
    }
}

/// The refcount blocks, last (as QEMU): each must be referenced exactly once. Returns
/// the refcounts as they are on disk.
fn count_refcount_blocks(p: &mut Pass, nb: u64) -> Result<Refcounts> {
    let (storage, header, cs) = (p.storage, p.header, p.cs);
    let refcounts = Refcounts::load(
        storage,
        header.cluster_bits(),
        header.refcount_order(),
        header.common.refcount_table_offset,
        header.common.refcount_table_clusters,
    )?;
    for (i, raw) in refcounts.table().to_vec().into_iter().enumerate() {
        let block = raw & !0x1ff;
        if block == 0 {
            continue;
        }
        if block % cs != 0 {
            p.error(format!(
                "ERROR refcount block {i} is not cluster aligned; refcount table entry corrupted"
            ));
            p.rebuild = true;
            continue;
        }
        if block / cs >= nb {
            p.error(format!("ERROR refcount block {i} is outside image"));
            p.rebuild = true;
            continue;
        }
        p.reference(block, cs);
        let refs = p.refs[(block / cs) as usize];
        if refs != 1 {
            p.error(format!("ERROR refcount block {i} refcount={refs}"));
            p.rebuild = true;
        }
    }

    Ok(refcounts)
}

/// COPIED flags of the active tables: set exactly where a cluster's refcount is 1.
fn check_copied_flags(p: &mut Pass, refcounts: &mut Refcounts, repair: Repair) -> Result<()> {
    let (storage, header, cs) = (p.storage, p.header, p.cs);
    let l1 = p
        .read_u64s(
            header.common.l1_table_offset,
            u64::from(header.common.l1_size),
        )
        .unwrap_or_default();
    let extended = header.incompatible_features() & incompatible::EXTENDED_L2 != 0;
    let geometry = Geometry::new(header.cluster_bits(), extended);
    let words = geometry.entry_words();
    let active = std::mem::take(&mut p.active_l2);
    // With -r leaks, QEMU repairs COPIED flags too, but only on an otherwise
    // healthy image (a wrong flag with refcount > 1 is not a leak).
    let fix = match repair {
        Repair::All => true,
        Repair::Leaks => p.res.check_errors == 0 && p.res.corruptions == 0 && p.res.leaks == 0,
        Repair::None => false,
    };
    for (index, l2) in active {
        // An L1 table that cannot be read again (a read error) was counted once
        // already; its flags go unchecked.
        let Some(&raw) = l1.get(index as usize) else {
            continue;
        };
        // A refcount that cannot be read was reported by the comparison already;
        // QEMU skips the flag then, and so do we.
        let Ok(rc) = refcounts.get(storage, l2 / cs) else {
            continue;
        };
        let l1_entry = L1Entry::from_raw(raw);
        if (rc == 1) != l1_entry.copied() {
            let what = format!("L2 cluster: l1_index={index} l1_entry={raw:x} refcount={rc}");
            let fixed = l1_entry.with_copied(rc == 1).raw();
            let at = header.common.l1_table_offset + index * 8;
            p.copied_flag_wrong(fix, &what, fixed, at)?;
        }
        if p.data_file {
            continue;
        }
        let Some(table) = p.read_u64s(l2, cs / 8) else {
            continue;
        };
        for j in 0..geometry.l2_entries() {
            let raw = table[(j * words) as usize];
            let entry = ClusterEntry::decode(raw, geometry, false);
            let Some(host) = entry.standard_host().filter(|h| h % cs == 0) else {
                continue;
            };
            let Ok(rc) = refcounts.get(storage, host / cs) else {
                continue;
            };
            if (rc == 1) != entry.copied() {
                let what = format!("data cluster: l2_entry={raw:x} refcount={rc}");
                let fixed = L2Entry::from_raw(raw).with_copied(rc == 1).raw();
                p.copied_flag_wrong(fix, &what, fixed, l2 + j * words * 8)?;
            }
        }
    }
    Ok(())
}
