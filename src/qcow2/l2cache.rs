//! A bounded least-recently-used cache of L2 tables, keyed by host offset.

use crate::error::{Error, Result};
use crate::storage::Storage;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// L2 tables as host-order u64 words (two per entry with extended L2).
pub type Table = Arc<[u64]>;

#[derive(Debug)]
pub struct L2Cache {
    capacity: usize,
    clock: u64,
    tables: HashMap<u64, (Table, u64)>,
}

impl L2Cache {
    /// A cache holding at most `capacity` tables (at least one).
    pub fn new(capacity: usize) -> L2Cache {
        L2Cache {
            capacity: capacity.max(1),
            clock: 0,
            tables: HashMap::new(),
        }
    }

    pub fn get(&mut self, offset: u64) -> Option<Table> {
        self.clock += 1;
        let clock = self.clock;
        self.tables.get_mut(&offset).map(|(table, used)| {
            *used = clock;
            table.clone()
        })
    }

    pub fn insert(&mut self, offset: u64, table: Table) {
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

    /// Forgets a table (after it was rewritten or freed).
    pub fn remove(&mut self, offset: u64) {
        self.tables.remove(&offset);
    }

    pub fn len(&self) -> usize {
        self.tables.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
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
        assert_eq!(c.len(), 2);
        assert!(c.get(2).is_none() && c.get(1).is_some() && c.get(3).is_some());
    }
}
