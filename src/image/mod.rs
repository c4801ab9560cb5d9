//! The format-independent image: a chain of layers (the image, its backing file, that
//! file's backing file…), read as one virtual disk.

use crate::codec::SectorCipher;
use crate::cow::{self, Cow};
use crate::error::{Error, ErrorKind, Result};
use crate::mapping::{Below, Mapping};
use crate::probe::{probe, Format};
use crate::qcow::{self, Qcow};
use crate::qcow2::{self, Qcow2, Qcow2Options, SnapshotRef};
use crate::raw::Raw;
use crate::storage::{Access, FileStorage, Storage};
use std::collections::HashSet;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod edit;
pub use edit::BitmapChange;
mod layer;
mod nested;
mod open;
mod views;

pub(crate) use layer::{Layer, ReadLayer};

pub use open::{
    check_backing_name, create_locked_file, file_error, file_id, open_file, refuse_overwrite,
    resolve_backing, Backing, OpenOptions,
};
pub use views::{ImageReader, ImageWriter};

/// A layer and where it came from.
#[derive(Debug)]
#[non_exhaustive]
pub struct ChainEntry {
    pub(crate) layer: Layer,
    /// The path it was opened at (relative names resolved against the image's folder).
    pub path: PathBuf,
    /// The external data file holding its data clusters, if it has one.
    pub data_path: Option<PathBuf>,
    /// True when its format was guessed rather than stated.
    pub probed: bool,
    /// What QEMU (or UML) would warn about when opening it.
    pub warnings: Vec<String>,
}

impl ChainEntry {
    /// The file's format.
    pub fn format(&self) -> Format {
        self.layer.format()
    }

    /// The backing file as its header names it (not resolved), and the backing format
    /// if the header names one.
    pub fn backing_name(&self) -> Option<(String, Option<String>)> {
        self.layer.backing_name()
    }
}

/// What a range is, as `qemu-img map` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BlockStatus {
    /// Guest offset of the first byte.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// Which layer decided: 0 the top image, 1 its backing file…
    pub depth: usize,
    /// That layer supplies the bytes (false: unallocated down to the bottom).
    pub present: bool,
    /// Known to read as zeros.
    pub zero: bool,
    /// Read from a file (not zeros, not unallocated).
    pub data: bool,
    /// The range is compressed in the layer that holds it.
    pub compressed: bool,
    /// Host offset in that layer's file, where meaningful.
    pub offset: Option<u64>,
}

impl BlockStatus {
    /// qemu-img map's rule for joining `next` onto `self`.
    fn mergeable(&self, next: &BlockStatus) -> bool {
        self.start + self.len == next.start
            && (
                self.depth,
                self.present,
                self.zero,
                self.data,
                self.compressed,
            ) == (
                next.depth,
                next.present,
                next.zero,
                next.data,
                next.compressed,
            )
            && match (self.offset, next.offset) {
                (None, None) => true,
                (Some(a), Some(b)) => a + self.len == b,
                _ => false,
            }
    }
}

/// Told how far a long operation (rebase, commit) has come: bytes done of the total.
pub type Progress = Box<dyn Fn(u64, u64) + Send + Sync>;

/// A virtual disk: the top image and its backing chain.
pub struct Image {
    chain: Vec<ChainEntry>,
    progress: Option<Progress>,
    /// The part of the disk this handle shows (start, length), when one partition was
    /// selected; the whole disk otherwise.
    window: Option<(u64, u64)>,
    /// What the chain was opened with, for reopening part of it (commit).
    options: OpenOptions,
}

debug_fields!(Image: chain);

impl Image {
    /// Has rebase and commit report their progress to `progress` as they go.
    pub fn on_progress(&mut self, progress: impl Fn(u64, u64) + Send + Sync + 'static) {
        self.progress = Some(Box::new(progress));
    }

    fn report(&self, done: u64, total: u64) {
        if let Some(p) = &self.progress {
            p(done, total);
        }
    }

    /// The images of the chain, top first.
    pub fn chain(&self) -> &[ChainEntry] {
        &self.chain
    }

    pub(crate) fn top(&self) -> &Layer {
        &self.chain[0].layer
    }

    /// Virtual size in bytes.
    pub fn size(&self) -> u64 {
        self.window
            .map_or_else(|| self.top().size(), |(_, len)| len)
    }

    /// Where this handle's offset 0 is on the whole disk.
    fn base(&self) -> u64 {
        self.window.map_or(0, |(start, _)| start)
    }

    /// Shows only partition `number` of the guest disk from now on: offset 0 is the
    /// partition's first byte and the size is the partition's. Reads, writes and block
    /// status stay inside it; operations on the whole image are then refused.
    pub fn select_partition(&mut self, number: u32) -> Result<()> {
        let (_, list) = crate::partitions::partitions(self)?;
        let p = list.iter().find(|p| p.number == number).ok_or_else(|| {
            Error::new(
                ErrorKind::BadArgument,
                format!("the guest disk has no partition {number}"),
            )
        })?;
        self.window = Some((p.start, p.len));
        Ok(())
    }

    /// Shows only `[offset, offset + size)` of a raw image's file (to its end when no
    /// size), as QEMU's raw `offset` and `size` options do; refused past the file's end
    /// in QEMU's words.
    fn select_raw_range(&mut self, offset: u64, size: Option<u64>) -> Result<()> {
        if self.format() != Format::Raw {
            return Err(Error::new(
                ErrorKind::BadArgument,
                format!(
                    "Block format '{}' does not support the option 'offset'",
                    self.format()
                ),
            ));
        }
        let file = self.top().size();
        if offset > file {
            return Err(Error::new(
                ErrorKind::BadArgument,
                format!(
                    "Offset ({offset}) cannot be greater than size of the containing file ({file})"
                ),
            ));
        }
        let size = size.unwrap_or(file - offset);
        if offset.checked_add(size).is_none_or(|end| end > file) {
            return Err(Error::new(
                ErrorKind::BadArgument,
                format!("The sum of offset ({offset}) and size ({size}) is greater than the file size ({file})"),
            ));
        }
        self.window = Some((offset, size));
        Ok(())
    }

    /// Refuses what changes the whole image while a partition is selected.
    pub(crate) fn whole_disk(&self, what: &str) -> Result<()> {
        match self.window {
            Some(_) => Err(Error::new(
                ErrorKind::BadArgument,
                format!("{what} works on the whole image, not on a selected partition"),
            )),
            None => Ok(()),
        }
    }

    /// Whether the image was opened for writing.
    pub fn is_writable(&self) -> bool {
        self.options.writable
    }

    /// The image's format (the top file's).
    pub fn format(&self) -> Format {
        self.top().format()
    }

    /// The image's cluster size, for the formats that have clusters (qcow, qcow2).
    pub fn cluster_size(&self) -> Option<u64> {
        match self.top() {
            Layer::Qcow2(q) => Some(q.cluster_size()),
            Layer::Qcow(q) => Some(q.cluster_size()),
            Layer::Cow(_) | Layer::Raw(_) | Layer::Luks(_) => None,
        }
    }

    /// Fills `buf` with the guest bytes at `offset`, the chain resolved.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|end| end > self.size()) {
            return Err(Error::new(
                ErrorKind::BadArgument,
                format!(
                    "read of {} bytes at {offset} is past the end of the image ({})",
                    buf.len(),
                    self.size()
                ),
            ));
        }
        self.read_layer(0, self.base() + offset, buf)
    }

    fn read_layer(&self, depth: usize, offset: u64, buf: &mut [u8]) -> Result<()> {
        read_chain(self.chain.get(depth..).unwrap_or_default(), offset, buf)
    }

    /// The top layer for writing, and the layers below it for copy-on-write reads.
    fn split_top(&mut self) -> Result<(&mut Layer, &[ChainEntry])> {
        let (top, below) = self
            .chain
            .split_first_mut()
            .ok_or_else(|| Error::new(ErrorKind::BadArgument, "the image has no layers"))?;
        Ok((&mut top.layer, below))
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        if offset.checked_add(len).is_none_or(|end| end > self.size()) {
            return Err(Error::new(
                ErrorKind::BadArgument,
                format!(
                    "request of {len} bytes at {offset} is past the end of the image ({})",
                    self.size()
                ),
            ));
        }
        Ok(())
    }

    /// Runs `op` on the top layer for the range `[offset, offset + len)` (checked
    /// against the disk, handed to `op` as an offset of the whole disk).
    fn on_range(
        &mut self,
        offset: u64,
        len: u64,
        op: impl FnOnce(&mut Layer, &Below, u64) -> Result<()>,
    ) -> Result<()> {
        self.check_range(offset, len)?;
        let offset = self.base() + offset;
        self.on_top(|top, below| op(top, below, offset))
    }

    /// Runs `op` on the top layer, with the layers below it as copy-on-write reads.
    pub(super) fn on_top<T>(
        &mut self,
        op: impl FnOnce(&mut Layer, &Below) -> Result<T>,
    ) -> Result<T> {
        let (top, below) = self.split_top()?;
        op(top, &|at: u64, b: &mut [u8]| read_chain(below, at, b))
    }

    /// Writes `buf` at guest offset `offset` of the top image.
    pub fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        if let Some(unmap) = self.options.detect_zeroes {
            if crate::copy::is_zero(buf) {
                return self.write_zeroes(offset, buf.len() as u64, unmap);
            }
        }
        self.write_data(buf, offset)
    }

    /// Writes zeros over `[offset, offset + len)` as data: allocated, never zero flags
    /// (what preallocation=full and convert -S 0 write), whatever detect-zeroes says.
    pub fn write_zeros_as_data(&mut self, offset: u64, len: u64) -> Result<()> {
        write_zero_buffers(offset, len, |at, zeros| self.write_data(zeros, at))
    }

    /// `write_at` without detect-zeroes: the bytes go to the top image as data.
    fn write_data(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.on_range(offset, buf.len() as u64, |top, below, offset| match top {
            Layer::Qcow2(q) => q.write_at(offset, buf, below),
            Layer::Qcow(q) => q.write_at(offset, buf, below),
            Layer::Cow(c) => c.write_at(offset, buf, below),
            Layer::Raw(r) => r.write_at(offset, buf),
            Layer::Luks(l) => l.write_at(offset, buf),
        })
    }

    /// Makes a range read as zeros; `unmap` lets the image release its space.
    pub fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> Result<()> {
        self.on_range(offset, len, |top, below, offset| match top {
            Layer::Qcow2(q) => q.write_zeroes(offset, len, unmap, below),
            // qcow has no zero flag: zeros are written (as QEMU's generic fallback does).
            Layer::Qcow(q) => {
                write_zero_buffers(offset, len, |at, zeros| q.write_at(at, zeros, below))
            }
            Layer::Cow(c) => {
                write_zero_buffers(offset, len, |at, zeros| c.write_at(at, zeros, below))
            }
            Layer::Raw(r) => r.write_zeroes(offset, len),
            Layer::Luks(l) => l.write_zeroes(offset, len),
        })
    }

    /// Discards a range: whole clusters stop holding data (what they then read as
    /// depends on the format, as in QEMU).
    pub fn discard(&mut self, offset: u64, len: u64) -> Result<()> {
        self.on_range(offset, len, |top, below, offset| match top {
            Layer::Qcow2(q) => q.discard(offset, len, below),
            // qcow cannot discard; QEMU ignores the request and so does cowimg. A LUKS
            // volume's sectors stay ciphertext of what they held.
            Layer::Qcow(_) | Layer::Cow(_) | Layer::Luks(_) => Ok(()),
            Layer::Raw(r) => r.discard(offset, len),
        })
    }

    /// Writes whole clusters compressed.
    pub fn write_compressed(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.on_range(offset, buf.len() as u64, |top, below, offset| match top {
            Layer::Qcow2(q) => q.write_compressed(offset, buf, below),
            Layer::Qcow(q) => q.write_compressed(offset, buf, below),
            Layer::Cow(_) | Layer::Raw(_) | Layer::Luks(_) => Err(Error::new(
                ErrorKind::Unsupported,
                "Compression not supported for this file format",
            )),
        })
    }

    /// Changes the virtual size of the top image (growing reads as zeros; shrinking
    /// drops everything past the new end).
    pub fn resize(&mut self, new_size: u64) -> Result<()> {
        self.whole_disk("resize")?;
        self.on_top(|top, below| match top {
            Layer::Qcow2(q) => q.resize(new_size, below),
            Layer::Qcow(_) | Layer::Cow(_) => Err(Error::new(
                ErrorKind::Unsupported,
                "Image format driver does not support resize",
            )),
            Layer::Raw(r) => r.resize(new_size),
            Layer::Luks(l) => l.resize(new_size),
        })
    }

    /// Makes every completed write durable. qcow2 metadata changed by writes is held
    /// in memory until then (as in QEMU); dropping the image writes it too, but only
    /// `flush` reports a failure.
    pub fn flush(&mut self) -> Result<()> {
        match self.split_top()?.0 {
            Layer::Qcow2(q) => q.flush(),
            // The other formats hold nothing back: their file is flushed.
            other => other
                .reader()
                .file()
                .flush()
                .map_err(|e| Error::io("flushing the image", e)),
        }
    }

    /// What the range from `offset` (at most `len` bytes) is, as far as one answer
    /// covers it: QEMU's block status, descending the chain through unallocated ranges.
    pub fn block_status(&self, offset: u64, len: u64) -> Result<BlockStatus> {
        let len = len.min(self.size().saturating_sub(offset));
        if len == 0 {
            return Err(Error::new(
                ErrorKind::BadArgument,
                format!("offset {offset} is past the end of the image"),
            ));
        }
        let base = self.base();
        let mut status = self.whole_disk_status(base + offset, len)?;
        status.start -= base;
        Ok(status)
    }

    /// `block_status` at an offset of the whole disk.
    fn whole_disk_status(&self, offset: u64, mut len: u64) -> Result<BlockStatus> {
        let mut depth = 0;
        loop {
            let layer = &self.chain[depth].layer;
            let extent = layer.map(offset, len)?;
            let hide = layer.is_encrypted();
            let host = extent.mapping.host().filter(|_| !hide).map(|h| h.0);
            let (host_zeros, span) = match (extent.mapping, host) {
                (Mapping::Data { .. }, Some(h)) => layer.host_zeros(h, extent.len),
                _ => (false, extent.len),
            };
            let status = |present, zero, data, compressed, offset| BlockStatus {
                start: extent.start,
                len: span,
                depth,
                present,
                zero,
                data,
                compressed,
                offset,
            };
            return Ok(match extent.mapping {
                Mapping::Data { .. } => status(true, host_zeros, true, false, host),
                Mapping::Compressed { .. } => status(true, false, true, true, None),
                Mapping::Zero { .. } => status(true, true, false, false, host),
                Mapping::Unallocated { .. } => match self.chain.get(depth + 1) {
                    Some(below) if offset < below.layer.size() => {
                        len = extent.len.min(below.layer.size() - offset);
                        depth += 1;
                        continue;
                    }
                    _ => status(false, true, false, false, host),
                },
            });
        }
    }

    /// The whole disk as `qemu-img map` lists it: block status from start to end,
    /// adjacent ranges merged when every attribute agrees and host offsets continue.
    pub fn map(&self) -> Result<Vec<BlockStatus>> {
        let mut out: Vec<BlockStatus> = Vec::new();
        let mut offset = 0;
        while offset < self.size() {
            let s = self.block_status(offset, self.size() - offset)?;
            offset += s.len;
            if let Some(last) = out.last_mut() {
                if last.mergeable(&s) {
                    last.len += s.len;
                    continue;
                }
            }
            out.push(s);
        }
        Ok(out)
    }

    /// Whether the top image itself holds the range from `offset` (data, zeros or
    /// compressed, as opposed to deferring to its backing file), and for how many bytes.
    pub fn top_status(&self, offset: u64, len: u64) -> Result<(bool, u64)> {
        let extent = self.top().map(self.base() + offset, len)?;
        Ok((
            !matches!(extent.mapping, Mapping::Unallocated { .. }),
            extent.len,
        ))
    }
}

/// Writes zeros over a range a megabyte at a time through `write`.
pub(crate) fn write_zero_buffers(
    offset: u64,
    len: u64,
    mut write: impl FnMut(u64, &[u8]) -> Result<()>,
) -> Result<()> {
    let zeros = vec![0u8; len.min(1 << 20) as usize];
    let mut at = offset;
    while at < offset + len {
        let n = (offset + len - at).min(zeros.len() as u64) as usize;
        write(at, &zeros[..n])?;
        at += n as u64;
    }
    Ok(())
}

/// Reads guest bytes from `chain[0]`, falling through unallocated ranges to the layers
/// below it; zeros past the end of a layer and below the last one.
fn read_chain(chain: &[ChainEntry], offset: u64, buf: &mut [u8]) -> Result<()> {
    let Some((entry, below)) = chain.split_first() else {
        buf.fill(0);
        return Ok(());
    };
    let layer = &entry.layer;
    let inside = layer.size().saturating_sub(offset).min(buf.len() as u64) as usize;
    buf[inside..].fill(0);
    let mut done = 0;
    while done < inside {
        let at = offset + done as u64;
        let extent = layer.map(at, (inside - done) as u64)?;
        let part = &mut buf[done..done + extent.len as usize];
        match extent.mapping {
            Mapping::Zero { .. } => part.fill(0),
            Mapping::Unallocated { .. } => read_chain(below, at, part)?,
            Mapping::Data { .. } | Mapping::Compressed { .. } => {
                layer.read_mapped(&extent, at, part)?
            }
        }
        done += extent.len as usize;
    }
    Ok(())
}
