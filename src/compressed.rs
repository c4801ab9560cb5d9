//! Compressed clusters as qcow and qcow2 read them: the compressed bytes read (a short
//! file reads as zeros), inflated into exactly one cluster, and the last one kept, so a
//! cluster read piecewise is inflated once.

use crate::codec::Compression;
use crate::error::{Error, Result};
use crate::storage::Storage;
use std::sync::{Arc, Mutex};

/// The last cluster decompressed, by the host offset of its compressed bytes.
#[derive(Debug, Default)]
pub(crate) struct LastCluster(Mutex<Option<(u64, Arc<[u8]>)>>);

impl LastCluster {
    /// The cluster whose `len` compressed bytes are at `host`. `len` is bounded by the
    /// entry's size field (at most two clusters), so the read buffer is too.
    pub(crate) fn get(
        &self,
        storage: &dyn Storage,
        compression: Compression,
        host: u64,
        len: u64,
        cluster_size: usize,
    ) -> Result<Arc<[u8]>> {
        if let Some((at, data)) = &*self.0.lock().unwrap_or_else(|e| e.into_inner()) {
            if *at == host {
                return Ok(data.clone());
            }
        }
        let mut input = vec![0u8; len as usize];
        storage
            .read_zero_padded(&mut input, host)
            .map_err(|e| Error::io(format!("reading the compressed cluster at {host:#x}"), e))?;
        let mut out = vec![0u8; cluster_size];
        compression
            .decompress(&input, &mut out)
            .map_err(|e| e.context(format_args!("compressed cluster at host offset {host:#x}")))?;
        let data: Arc<[u8]> = out.into();
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some((host, data.clone()));
        Ok(data)
    }

    /// Forgets the kept cluster: its host bytes were freed and may be reused.
    pub(crate) fn clear(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}
