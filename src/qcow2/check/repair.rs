//! Repairs check makes: reference counts set to what was counted, or the refcount
//! structure rebuilt from scratch when it cannot be trusted, and the dirty and corrupt
//! bits cleared once the image is clean. Every write is ordered so that a crash leaves
//! an image a second check can still repair.

use super::{io, Pass, Repair};
use crate::error::{Error, ErrorKind, Result};
use crate::format::qcow2::incompatible;
use crate::qcow2::header::Header;
use crate::qcow2::refcount::Refcounts;
use crate::storage::Storage;

/// Clears the dirty and corrupt bits once an image is clean.
pub(super) fn clear_flags(storage: &dyn Storage) -> Result<()> {
    let mut header = Header::read(storage)?;
    let bits = header.incompatible_features();
    if header.version() >= 3 && bits & (incompatible::DIRTY | incompatible::CORRUPT) != 0 {
        let cleared = bits & !(incompatible::DIRTY | incompatible::CORRUPT);
        header.write_incompatible_features(storage, cleared)?;
        storage.flush().map_err(io("flushing the header"))?;
    }
    Ok(())
}

/// Compares, as QEMU: first only to report; then, when repairing, either rebuilds the
/// refcount structures (a referenced cluster has refcount 0) or compares again, fixing.
/// Returns the end of the last cluster in use (in clusters), or None when the check
/// cannot go on (structures to rebuild without `-r all`).
pub(super) fn compare_and_repair(
    p: &mut Pass,
    refcounts: &mut Refcounts,
    repair: Repair,
) -> Result<Option<u64>> {
    let (storage, header, cs) = (p.storage, p.header, p.cs);
    if repair != Repair::None && p.res.check_errors > 0 {
        // A table that could not be read left its references uncounted: repairing
        // from this count would free clusters still in use. As QEMU, the check ends
        // without repairing anything.
        p.res.failed = Some("Input/output error".into());
        return Ok(None);
    }
    let refs = std::mem::take(&mut p.refs);
    let before = p.res.clone();
    let mut highest = compare(p, storage, refcounts, &refs, Repair::None)?;
    if p.rebuild && repair == Repair::All {
        p.res.messages.push("Rebuilding refcount structure".into());
        let (old_table, old_clusters) = (
            header.common.refcount_table_offset,
            header.common.refcount_table_clusters,
        );
        let old_blocks: Vec<u64> = refcounts
            .table()
            .iter()
            .map(|e| e & !0x1ff)
            .filter(|b| *b != 0 && b % cs == 0)
            .collect();
        let mut new_header = header.clone();
        let (start, end) = rebuild(storage, &mut new_header, &refs)?;
        p.res.repaired = true;
        p.res.corruptions_fixed += p.res.corruptions;
        p.res.leaks_fixed += p.res.leaks;
        p.res.corruptions = 0;
        p.res.leaks = 0;
        *refcounts = Refcounts::load(
            storage,
            header.cluster_bits(),
            header.refcount_order(),
            new_header.common.refcount_table_offset,
            new_header.common.refcount_table_clusters,
        )?;
        // The old structures are now leaked: free them. These repairs are the
        // rebuild's own and are not counted.
        // The new structures start after the last cluster in use, which may be inside
        // the old file (spare space at its end): each of their clusters counts once.
        let mut now = refs.clone();
        now.resize(now.len().max((end / cs) as usize), 0);
        for c in start / cs..end / cs {
            now[c as usize] = 1;
        }
        let old = (old_table..old_table + u64::from(old_clusters) * cs)
            .step_by(cs as usize)
            .chain(old_blocks);
        for at in old {
            if let Some(r) = now.get_mut((at / cs) as usize) {
                *r = r.saturating_sub(1);
            }
        }
        let saved = p.res.clone();
        highest = compare(p, storage, refcounts, &now, Repair::Leaks)?;
        let messages = std::mem::take(&mut p.res.messages);
        p.res = saved;
        p.res.messages = messages;
    } else if repair != Repair::None {
        if p.rebuild {
            p.res
                .messages
                .push("ERROR need to rebuild refcount structures".into());
            p.res.check_errors += 1;
            p.res.failed = Some("Input/output error".into());
            return Ok(None);
        }
        if p.res.leaks > 0 || p.res.corruptions > 0 {
            let messages = std::mem::take(&mut p.res.messages);
            p.res = before;
            p.res.messages = messages;
            highest = compare(p, storage, refcounts, &refs, repair)?;
        }
    }

    Ok(Some(highest))
}

/// Compares every cluster's refcount with its references, reporting each mismatch
/// and fixing what `fix` allows; returns the end of the last cluster in use (in
/// clusters). A referenced cluster with refcount 0 means the structures need a rebuild.
fn compare(
    p: &mut Pass,
    storage: &dyn Storage,
    refcounts: &mut Refcounts,
    refs: &[u32],
    fix: Repair,
) -> Result<u64> {
    let max = refcounts.max();
    let mut highest = 0;
    for (i, &refs) in refs.iter().enumerate() {
        let (i, refs) = (i as u64, u64::from(refs));
        let rc = match refcounts.get(storage, i) {
            Ok(v) => v,
            Err(e) => {
                p.res
                    .messages
                    .push(format!("Can't get refcount for cluster {i}: {e}"));
                p.res.check_errors += 1;
                continue;
            }
        };
        if rc > 0 || refs > 0 {
            highest = i + 1;
        }
        if rc == refs {
            continue;
        }
        let fixing = if rc == 0 {
            p.rebuild = true;
            false
        } else if rc > refs {
            fix != Repair::None
        } else {
            fix == Repair::All
        };
        let label = if fixing {
            "Repairing"
        } else if rc < refs {
            "ERROR"
        } else {
            "Leaked"
        };
        p.res.messages.push(format!(
            "{label} cluster {i} refcount={rc} reference={refs}"
        ));
        if fixing {
            refcounts.set(storage, i, refs.min(max))?;
            if rc > refs {
                p.res.leaks_fixed += 1;
            } else {
                p.res.corruptions_fixed += 1;
            }
            if refs == 0 && highest == i + 1 {
                highest = i;
            }
            continue;
        }
        if rc < refs {
            p.res.corruptions += 1;
        } else {
            p.res.leaks += 1;
        }
    }
    Ok(highest)
}

/// Writes new refcount structures computed from `refs` after the last cluster in use
/// and switches the header to them. Returns where they start and end.
fn rebuild(storage: &dyn Storage, header: &mut Header, refs: &[u32]) -> Result<(u64, u64)> {
    let counts: Vec<u64> = refs.iter().map(|&r| u64::from(r)).collect();
    let (table_at, table_clusters, start, end) = crate::qcow2::refcount::write_structures(
        storage,
        header.cluster_bits(),
        header.refcount_order(),
        &counts,
        0,
    )?;
    header.write_refcount_table(storage, table_at, table_clusters)?;
    storage.flush().map_err(io("flushing the header"))?;
    Ok((start, end))
}

/// As QEMU, before a qcow2 image with the dirty bit is written to: its refcounts may be
/// stale, so it is checked and repaired (which clears the bit) first.
pub(crate) fn repair_if_dirty(storage: &dyn Storage) -> Result<()> {
    let header = Header::read(storage)?;
    let bits = header.incompatible_features();
    if bits & incompatible::DIRTY == 0 {
        return Ok(());
    }
    let result = super::check(storage, bits & incompatible::DATA_FILE != 0, Repair::All)?;
    if result.corruptions > 0 || result.check_errors > 0 || result.failed.is_some() {
        return Err(Error::new(
            ErrorKind::Corrupt,
            format!(
                "Could not repair dirty image: {} errors remain",
                result.corruptions + result.check_errors
            ),
        ));
    }
    Ok(())
}
