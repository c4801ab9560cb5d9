//! One qcow (version 1) file: mapping through L1 and L2 (raw offsets, bit 63 marking a
//! compressed cluster), reads, and writes that allocate at the end of the file as QEMU
//! does. There are no refcounts: replaced clusters are simply abandoned.

use super::header::Header;
use crate::codec::{Compression, SectorCipher};
use crate::error::{Error, ErrorKind, Result};
use crate::format::qcow::{QcowCompressedDescriptor, QcowL2Entry};
use crate::image::ReadLayer;
use crate::l2cache::{self, L2Cache, Table};
use crate::mapping::{HostOffset, Mapping};
use crate::storage::Storage;
use std::sync::{Arc, Mutex};

pub use crate::mapping::Below;

/// A qcow layer.
pub struct Qcow {
    header: Header,
    storage: Arc<dyn Storage>,
    cluster_bits: u32,
    l2_bits: u32,
    size: u64,
    l1: Vec<u64>,
    l2_cache: Mutex<L2Cache>,
    key: Option<SectorCipher>,
    decompressed: crate::compressed::LastCluster,
    writable: bool,
}

debug_fields!(Qcow: header);

fn corrupt(message: String) -> Error {
    Error::new(ErrorKind::Corrupt, message)
}

impl Qcow {
    /// Opens a layer whose header was read already. `io` false opens for metadata only
    /// (no key needed).
    pub fn open(
        storage: Arc<dyn Storage>,
        header: Header,
        key: Option<SectorCipher>,
        io: bool,
        writable: bool,
    ) -> Result<Qcow> {
        if io && header.fields.crypt_method == 1 && key.is_none() {
            return Err(Error::new(
                ErrorKind::BadArgument,
                "Parameter 'encrypt.key-secret' is required for cipher",
            ));
        }
        let l1_size = header.l1_size();
        let l1 = crate::tables::read_be64(
            storage.as_ref(),
            header.fields.l1_table_offset,
            l1_size,
            "L1 table",
        )?;
        let cluster_bits = header.cluster_bits();
        let l2_bits = header.l2_bits();
        let table_bytes = 8u64 << l2_bits;
        Ok(Qcow {
            size: header.virtual_size(),
            cluster_bits,
            l2_bits,
            l1,
            l2_cache: Mutex::new(L2Cache::new(((4 << 20) / table_bytes).max(2) as usize)),
            key: if header.fields.crypt_method == 1 {
                key
            } else {
                None
            },
            decompressed: Default::default(),
            writable,
            storage,
            header,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    pub fn is_encrypted(&self) -> bool {
        self.header.fields.crypt_method != 0
    }

    fn l2_table(&self, offset: u64) -> Result<Table> {
        l2cache::load(
            &self.l2_cache,
            self.storage.as_ref(),
            offset,
            8 << self.l2_bits,
        )
    }

    /// The L2 table offset and entry index for `guest` (offset 0: no table).
    fn locate(&self, guest: u64) -> (usize, u64, u64) {
        let l1_index = (guest >> (self.cluster_bits + self.l2_bits)) as usize;
        let l2_index = (guest >> self.cluster_bits) & ((1 << self.l2_bits) - 1);
        (
            l1_index,
            self.l1.get(l1_index).copied().unwrap_or(0),
            l2_index,
        )
    }

    fn read_compressed(&self, at: (u64, u64), from: usize, buf: &mut [u8]) -> Result<()> {
        // The size field has cluster_bits bits: at most one cluster of input.
        let cs = 1usize << self.cluster_bits;
        let storage = self.storage.as_ref();
        (self.decompressed).read(storage, Compression::Deflate, at, cs, from, buf)
    }

    // ---- Writing.

    fn writable(&self) -> Result<()> {
        if !self.writable {
            return Err(Error::new(
                ErrorKind::BadArgument,
                "the image was opened read-only",
            ));
        }
        Ok(())
    }

    fn file_len(&self) -> Result<u64> {
        self.storage
            .len()
            .map_err(|e| Error::io("reading the file size", e))
    }

    /// The end of the file rounded up to a cluster: where QEMU puts new tables and clusters.
    fn next_cluster_at_end(&self) -> Result<u64> {
        Ok(self.file_len()?.next_multiple_of(1 << self.cluster_bits))
    }

    /// The L2 table for `guest`, allocated at the end of the file if absent: the zeroed
    /// table is written before the L1 entry that points at it.
    fn writable_l2(&mut self, guest: u64) -> Result<(u64, u64)> {
        let (l1_index, l2_offset, l2_index) = self.locate(guest);
        if l2_offset != 0 {
            return Ok((l2_offset, l2_index));
        }
        if l1_index >= self.header.l1_size() as usize {
            return Err(Error::new(
                ErrorKind::BadArgument,
                "write past the L1 table",
            ));
        }
        let at = self.next_cluster_at_end()?;
        self.storage
            .write_at(&vec![0u8; 8 << self.l2_bits], at)
            .map_err(|e| Error::io("writing an L2 table", e))?;
        self.storage.flush().map_err(|e| Error::io("flushing", e))?;
        self.storage
            .write_at(
                &at.to_be_bytes(),
                self.header.fields.l1_table_offset + l1_index as u64 * 8,
            )
            .map_err(|e| Error::io("writing the L1 table", e))?;
        if self.l1.len() <= l1_index {
            self.l1.resize(l1_index + 1, 0);
        }
        self.l1[l1_index] = at;
        Ok((at, l2_index))
    }

    fn set_entry(&mut self, l2_offset: u64, index: u64, raw: u64) -> Result<()> {
        self.storage.flush().map_err(|e| Error::io("flushing", e))?;
        self.storage
            .write_at(&raw.to_be_bytes(), l2_offset + index * 8)
            .map_err(|e| Error::io("writing an L2 table", e))?;
        let mut table = self.l2_table(l2_offset)?.to_vec();
        table[index as usize] = raw;
        self.l2_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(l2_offset, table.into());
        Ok(())
    }

    /// Writes `data` at `guest`: in place into allocated clusters; otherwise into a new
    /// cluster at the end of the file holding the old content (backing data, or the
    /// decompressed cluster) around what `data` covers.
    pub fn write_at(&mut self, guest: u64, data: &[u8], below: &Below) -> Result<()> {
        self.writable()?;
        let end = guest + data.len() as u64;
        if end > self.size {
            return Err(Error::new(
                ErrorKind::BadArgument,
                "write past the end of the image",
            ));
        }
        let cs = 1u64 << self.cluster_bits;
        let mut at = guest;
        while at < end {
            let cluster = at & !(cs - 1);
            let stop = end.min(cluster + cs);
            let src = &data[(at - guest) as usize..(stop - guest) as usize];
            let (mapping, _) = self.classify(at)?;
            match mapping {
                Mapping::Data { host } => {
                    crate::sector_io::write(
                        self.storage.as_ref(),
                        self.key.as_ref(),
                        host.0,
                        at,
                        src,
                    )?;
                }
                _ => {
                    let mut buf = vec![0u8; cs as usize];
                    match mapping {
                        Mapping::Compressed { host, len, .. } => {
                            self.read_compressed((host.0, len), 0, &mut buf)?
                        }
                        _ if at == cluster && stop == cluster + cs => {}
                        _ => below(cluster, &mut buf)?,
                    }
                    buf[(at - cluster) as usize..(stop - cluster) as usize].copy_from_slice(src);
                    let (l2_offset, index) = self.writable_l2(at)?;
                    let host = self.next_cluster_at_end()?;
                    crate::sector_io::write(
                        self.storage.as_ref(),
                        self.key.as_ref(),
                        host,
                        cluster,
                        &buf,
                    )?;
                    self.set_entry(l2_offset, index, host)?;
                }
            }
            at = stop;
        }
        Ok(())
    }

    /// Writes one whole cluster compressed, its bytes appended at the exact end of the
    /// file as QEMU does; a cluster that does not shrink is written normally.
    pub fn write_compressed(&mut self, guest: u64, data: &[u8], below: &Below) -> Result<()> {
        self.writable()?;
        let cs = 1u64 << self.cluster_bits;
        if guest % cs != 0
            || (data.len() as u64 % cs != 0 && guest + data.len() as u64 != self.size)
        {
            return Err(Error::new(
                ErrorKind::BadArgument,
                "compressed writes must cover whole clusters",
            ));
        }
        if self.key.is_some() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "compressed clusters are not possible in encrypted images",
            ));
        }
        for (i, chunk) in data.chunks(cs as usize).enumerate() {
            let gc = guest + i as u64 * cs;
            let mut cluster = chunk.to_vec();
            cluster.resize(cs as usize, 0);
            let Some(compressed) = Compression::Deflate.compress(&cluster, cs as usize)? else {
                self.write_at(gc, chunk, below)?;
                continue;
            };
            let (l2_offset, index) = self.writable_l2(gc)?;
            let host = self.file_len()?;
            let d = QcowCompressedDescriptor {
                host_offset: host,
                compressed_size: compressed.len() as u64,
            };
            let Some(bits) = d.encode(self.cluster_bits) else {
                self.write_at(gc, chunk, below)?;
                continue;
            };
            self.storage
                .write_at(&compressed, host)
                .map_err(|e| Error::io("writing a compressed cluster", e))?;
            self.set_entry(
                l2_offset,
                index,
                QcowL2Entry::new()
                    .with_host_offset(bits)
                    .with_compressed(true)
                    .raw(),
            )?;
        }
        Ok(())
    }

    /// Empties the image: a zeroed L1 table, the file cut after it (QEMU's make_empty).
    pub fn make_empty(&mut self) -> Result<()> {
        self.writable()?;
        let l1_bytes = (self.header.l1_size() * 8).next_multiple_of(512);
        let l1_at = self.header.fields.l1_table_offset;
        self.storage
            .write_at(&vec![0u8; l1_bytes as usize], l1_at)
            .map_err(|e| Error::io("clearing the L1 table", e))?;
        self.storage.flush().map_err(|e| Error::io("flushing", e))?;
        self.storage
            .set_len(l1_at + l1_bytes)
            .map_err(|e| Error::io("truncating the image", e))?;
        self.l1.iter_mut().for_each(|e| *e = 0);
        *self.l2_cache.lock().unwrap_or_else(|e| e.into_inner()) = L2Cache::new(2);
        Ok(())
    }
}

impl ReadLayer for Qcow {
    fn file(&self) -> &dyn Storage {
        self.storage.as_ref()
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn classify(&self, guest: u64) -> Result<(Mapping, u64)> {
        let cs = 1u64 << self.cluster_bits;
        let cluster = guest & !(cs - 1);
        let (l1_index, l2_offset, l2_index) = self.locate(guest);
        if l2_offset == 0 {
            let end = (l1_index as u64 + 1) << (self.cluster_bits + self.l2_bits);
            return Ok((Mapping::Unallocated { host: None }, end));
        }
        let raw = self.l2_table(l2_offset)?[l2_index as usize];
        let entry = QcowL2Entry::from_raw(raw);
        if entry.compressed() {
            let d = QcowCompressedDescriptor::decode(entry.host_offset(), self.cluster_bits);
            let mapping = Mapping::Compressed {
                cluster,
                host: HostOffset(d.host_offset),
                len: d.compressed_size,
            };
            return Ok((mapping, cluster + cs));
        }
        let host = entry.host_offset();
        if host == 0 {
            return Ok((Mapping::Unallocated { host: None }, cluster + cs));
        }
        if host % 512 != 0 {
            return Err(corrupt(format!(
                "qcow cluster offset {host:#x} is not sector-aligned (L2 index {l2_index})"
            )));
        }
        Ok((
            Mapping::Data {
                host: HostOffset(host + (guest - cluster)),
            },
            cluster + cs,
        ))
    }

    fn read_data(&self, host: u64, guest: u64, buf: &mut [u8]) -> Result<()> {
        crate::sector_io::read(self.storage.as_ref(), self.key.as_ref(), host, guest, buf)
    }

    fn read_compressed(&self, at: (u64, u64), from: usize, buf: &mut [u8]) -> Result<()> {
        Qcow::read_compressed(self, at, from, buf)
    }

    fn is_encrypted(&self) -> bool {
        Qcow::is_encrypted(self)
    }

    /// qcow names no backing format: it is probed, as QEMU does.
    fn backing_name(&self) -> Option<(String, Option<String>)> {
        self.header()
            .backing_file
            .as_ref()
            .map(|n| (String::from_utf8_lossy(n).into_owned(), None))
    }
}
