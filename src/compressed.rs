//! Compressed clusters as qcow and qcow2 read them: the compressed bytes read (a short
//! file reads as zeros), inflated into exactly one cluster, and the last one kept, so a
//! cluster read piecewise is inflated once.

use crate::codec::Compression;
use crate::error::{Error, ErrorKind, Result};
use crate::storage::Storage;
use std::cell::RefCell;
use std::sync::{Arc, Mutex};

/// The last cluster decompressed, by the host offset of its compressed bytes.
#[derive(Debug, Default)]
pub(crate) struct LastCluster(Mutex<Option<(u64, Arc<[u8]>)>>);

thread_local! {
    /// Each thread's buffer for compressed bytes: bulk reads inflate on every core.
    static COMPRESSED_BYTES: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Inflates the cluster whose `len` compressed bytes are at `host` into `out` (one
/// whole cluster). `len` is bounded by the entry's size field (at most two clusters),
/// so the read buffer is too.
fn inflate(
    storage: &dyn Storage,
    compression: Compression,
    host: u64,
    len: u64,
    out: &mut [u8],
) -> Result<()> {
    COMPRESSED_BYTES.with_borrow_mut(|input| {
        input.clear();
        input.resize(len as usize, 0);
        storage
            .read_zero_padded(input, host)
            .map_err(|e| Error::io(format!("reading the compressed cluster at {host:#x}"), e))?;
        compression
            .decompress(input, out)
            .map_err(|e| e.context(format_args!("compressed cluster at host offset {host:#x}")))
    })
}

impl LastCluster {
    /// Fills `buf` with the bytes from `from` of the cluster whose `len` compressed bytes
    /// are at `host`. A whole cluster is inflated straight into `buf`; a part comes from
    /// the kept cluster, inflated once for all its parts.
    pub(crate) fn read(
        &self,
        storage: &dyn Storage,
        compression: Compression,
        (host, len): (u64, u64),
        cluster_size: usize,
        from: usize,
        buf: &mut [u8],
    ) -> Result<()> {
        if from == 0 && buf.len() == cluster_size {
            return inflate(storage, compression, host, len, buf);
        }
        let kept = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let data = match kept {
            Some((at, data)) if at == host => data,
            _ => {
                let mut out = vec![0u8; cluster_size];
                inflate(storage, compression, host, len, &mut out)?;
                let data: Arc<[u8]> = out.into();
                *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some((host, data.clone()));
                data
            }
        };
        let part = data.get(from..from + buf.len()).ok_or_else(|| {
            Error::new(
                ErrorKind::BadArgument,
                format!("a read at byte {from} of a compressed cluster runs past its end"),
            )
        })?;
        buf.copy_from_slice(part);
        Ok(())
    }

    /// Forgets the kept cluster: its host bytes were freed and may be reused.
    pub(crate) fn clear(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}
