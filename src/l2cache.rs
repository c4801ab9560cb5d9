//! A bounded least-recently-used cache of L2 tables (qcow and qcow2), keyed by host
//! offset, and the tables changed but not yet written (write-back: they are never
//! evicted, only written out by their owner in the order crash safety asks for).

use crate::error::{Error, Result};
use crate::storage::Storage;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// L2 tables as host-order u64 words (two per entry with extended L2).
pub type Table = Arc<[u64]>;

#[derive(Debug)]
pub struct L2Cache {
    capacity: usize,
    clock: u64,
    tables: HashMap<u64, (Table, u64)>,
    /// Tables newer than the file's copy, by offset; they answer before `tables`.
    dirty: BTreeMap<u64, Table>,
}

impl L2Cache {
    /// A cache holding at most `capacity` tables (at least one).
    pub fn new(capacity: usize) -> L2Cache {
        L2Cache {
            capacity: capacity.max(1),
            clock: 0,
            tables: HashMap::new(),
            dirty: BTreeMap::new(),
        }
    }

    pub fn get(&mut self, offset: u64) -> Option<Table> {
        if let Some(t) = self.dirty.get(&offset) {
            return Some(t.clone());
        }
        self.clock += 1;
        let clock = self.clock;
        self.tables.get_mut(&offset).map(|(table, used)| {
            *used = clock;
            table.clone()
        })
    }

    /// Caches `table` as the file holds it at `offset` (replacing any unwritten change).
    pub fn insert(&mut self, offset: u64, table: Table) {
        self.dirty.remove(&offset);
        if self.tables.len() >= self.capacity && !self.tables.contains_key(&offset) {
            if let Some(oldest) = self
                .tables
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| *k)
            {
                self.tables.remove(&oldest);
            }
        }
        self.clock += 1;
        self.tables.insert(offset, (table, self.clock));
    }

    /// Holds `table` as the new content at `offset`, to be written by the owner later.
    pub fn insert_dirty(&mut self, offset: u64, table: Table) {
        self.tables.remove(&offset);
        self.dirty.insert(offset, table);
    }

    /// How many tables the cache holds when full.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many tables wait to be written.
    pub fn dirty_len(&self) -> usize {
        self.dirty.len()
    }

    /// The tables waiting to be written, in offset order; the cache forgets that they
    /// were changed (the caller writes them and `insert`s them back).
    pub fn take_dirty(&mut self) -> Vec<(u64, Table)> {
        std::mem::take(&mut self.dirty).into_iter().collect()
    }

    /// Forgets a table, changed or not (after it was rewritten or freed).
    pub fn remove(&mut self, offset: u64) {
        self.tables.remove(&offset);
        self.dirty.remove(&offset);
    }
}

/// The table of `len` bytes at `offset`: from `cache`, or read from `storage` (a short
/// file reads as zeros) and cached.
pub fn load(
    cache: &Mutex<L2Cache>,
    storage: &dyn Storage,
    offset: u64,
    len: usize,
) -> Result<Table> {
    let lock = || cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(t) = lock().get(offset) {
        return Ok(t);
    }
    let mut bytes = vec![0u8; len];
    storage
        .read_zero_padded(&mut bytes, offset)
        .map_err(|e| Error::io(format!("reading the L2 table at {offset:#x}"), e))?;
    let table: Table = crate::tables::from_be_bytes(&bytes).into();
    lock().insert(offset, table.clone());
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_least_recently_used() {
        let mut c = L2Cache::new(2);
        c.insert(1, Arc::from(vec![1u64]));
        c.insert(2, Arc::from(vec![2u64]));
        assert!(c.get(1).is_some());
        c.insert(3, Arc::from(vec![3u64]));
        assert_eq!(c.tables.len(), 2);
        assert!(c.get(2).is_none() && c.get(1).is_some() && c.get(3).is_some());
    }

    #[test]
    fn changed_tables_are_never_evicted_and_answer_first() {
        let mut c = L2Cache::new(1);
        c.insert(1, Arc::from(vec![1u64]));
        c.insert_dirty(1, Arc::from(vec![10u64]));
        for k in 2..5 {
            c.insert(k, Arc::from(vec![k]));
        }
        assert_eq!(c.get(1).unwrap()[0], 10);
        assert_eq!(c.dirty_len(), 1);
        let taken = c.take_dirty();
        assert_eq!(taken.len(), 1);
        assert_eq!((taken[0].0, taken[0].1[0]), (1, 10));
        assert_eq!(c.dirty_len(), 0);
        // A clean copy replaces a pending change.
        c.insert_dirty(7, Arc::from(vec![70u64]));
        c.insert(7, Arc::from(vec![71u64]));
        assert_eq!((c.dirty_len(), c.get(7).unwrap()[0]), (0, 71));
    }
}
