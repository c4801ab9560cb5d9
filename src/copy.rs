//! The copy engine: an image's content into another image, read ahead on every core
//! while one writer writes in order (an image's metadata takes one writer; qemu-img
//! convert likewise keeps several reads in flight and writes in order). convert and dd
//! use it, and so will the bindings.

use crate::error::{Error, Result};
use crate::image::Image;
use std::collections::BTreeMap;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Mutex;

/// Bytes read and written at a time.
pub const CHUNK: u64 = 2 << 20;

/// The unit a salvaging read retries in, once a larger read failed.
const SALVAGE_UNIT: u64 = 4096;

/// A range that could not be read while salvaging: it was read as zeros.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Unreadable {
    /// Guest offset of its first byte.
    pub start: u64,
    /// Its length.
    pub len: u64,
    /// Why it could not be read.
    pub error: String,
}

/// Reading as qemu-img's `--salvage` does: what cannot be read reads as zeros, and is
/// listed, instead of ending the copy at the first bad table or cluster.
#[derive(Debug, Default)]
pub struct Salvage {
    ranges: Mutex<Vec<Unreadable>>,
}

impl Salvage {
    /// A salvage with nothing found yet.
    pub fn new() -> Salvage {
        Salvage::default()
    }

    /// Reads `buf` at `offset`; when that fails, again 4 KiB at a time, each piece that
    /// still fails reading as zeros and recorded.
    pub fn read(&self, image: &Image, buf: &mut [u8], offset: u64) -> Result<()> {
        if image.read_at(buf, offset).is_ok() {
            return Ok(());
        }
        for (i, piece) in buf.chunks_mut(SALVAGE_UNIT as usize).enumerate() {
            let at = offset + i as u64 * SALVAGE_UNIT;
            if let Err(e) = image.read_at(piece, at) {
                piece.fill(0);
                self.record(at, piece.len() as u64, e.to_string());
            }
        }
        Ok(())
    }

    fn record(&self, start: u64, len: u64, error: String) {
        let mut ranges = self.ranges.lock().unwrap_or_else(|e| e.into_inner());
        ranges.push(Unreadable { start, len, error });
    }

    /// The ranges that could not be read, in offset order, adjacent ones with the same
    /// error merged.
    pub fn into_ranges(self) -> Vec<Unreadable> {
        let mut list = self.ranges.into_inner().unwrap_or_else(|e| e.into_inner());
        list.sort_by_key(|r| r.start);
        let mut out: Vec<Unreadable> = Vec::new();
        for r in list {
            match out.last_mut() {
                Some(last) if last.start + last.len == r.start && last.error == r.error => {
                    last.len += r.len
                }
                _ => out.push(r),
            }
        }
        out
    }
}

/// Reads the whole guest disk of `image` as a salvaging convert or hash would, and
/// lists what could not be read: the same ranges, found the same way, without writing
/// or hashing anything.
pub fn unreadable_ranges(
    image: &Image,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Vec<Unreadable>> {
    let salvage = Salvage::new();
    let size = image.size();
    read_ahead(
        image,
        (0, size),
        CHUNK,
        workers(),
        Some(&salvage),
        progress,
        |_, _| Ok(()),
    )?;
    Ok(salvage.into_ranges())
}

/// Reads `buf` at `offset`, salvaging when asked.
pub(crate) fn read_into(
    image: &Image,
    salvage: Option<&Salvage>,
    buf: &mut [u8],
    offset: u64,
) -> Result<()> {
    match salvage {
        Some(s) => s.read(image, buf, offset),
        None => image.read_at(buf, offset),
    }
}

/// What one cluster of the copy needs in the target.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Need {
    /// The target reads so already.
    Nothing,
    /// Zeros over what the target's backing file gives.
    Zeros,
    /// The data written.
    Data,
}

/// Copies the `(from, len)` bytes of `image` to `target` from byte `to`, whose clusters
/// of `cs` bytes read as zeros (when `zero_init`; else zeros are written too), or as its
/// backing file gives them: only clusters that read otherwise are written, plainly or,
/// with `compress`, compressed (zeros over backing data are written as zeros). With
/// `sparse` 0 zeros are written as data (all allocated); else a zero cluster stays a
/// hole only inside an all-zero aligned block of `sparse` bytes (qemu-img's -S). `progress` hears of every byte
/// done, written or skipped. With `salvage`, what cannot be read is copied as zeros
/// and recorded there.
pub fn copy_into(
    image: &Image,
    (from, len): (u64, u64),
    (target, to): (&mut Image, u64),
    cs: u64,
    (compress, zero_init, sparse): (bool, bool, u64),
    salvage: Option<&Salvage>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<()> {
    let cs_us = cs as usize;
    // Compression keeps every core busy on its own: one reader and smaller pieces then
    // keep the memory below qemu-img's.
    let (piece, readers) = if compress {
        (CHUNK / 2, 1)
    } else {
        (CHUNK, workers())
    };
    let backed = target.chain().len() > 1;
    // -S 0: zeros written as data. Otherwise a zero cluster stays a hole only where the
    // whole `sparse`-byte block (aligned on the target) holding it is zeros, as
    // qemu-img decides (compression ignores it, as qemu-img's does).
    let zeros_as_data = sparse == 0;
    let block = if compress { 0 } else { sparse.max(cs) };
    let mut below = vec![0u8; cs_us];
    let range = (from, len);
    // Where the pieces read so far end: the wholly zero ones between are skipped by the
    // reader, and a target that does not read as zeros gets them written.
    let mut next = 0;
    read_ahead(
        image,
        range,
        piece,
        readers,
        salvage,
        progress,
        |done, chunk| {
            if done > next && zeros_as_data {
                write_zero_data(target, to + next, done - next, (compress, cs))?;
            } else if done > next {
                zero_skipped((image, from), (target, to), (next, done), zero_init, backed)?;
            }
            next = done + chunk.len() as u64;
            // Runs of clusters that need the same are written in one call each (so a
            // compressed run is compressed on every core).
            let mut run: Option<(usize, Need)> = None;
            let clusters = chunk.chunks(cs_us).map(Some).chain([None]);
            for (i, cluster) in clusters.enumerate() {
                let need = match cluster {
                    None => Need::Nothing,
                    Some(c) if backed => {
                        let now = &mut below[..c.len()];
                        target.read_at(now, to + done + (i * cs_us) as u64)?;
                        if now == c {
                            Need::Nothing
                        } else if is_zero(c) {
                            Need::Zeros
                        } else {
                            Need::Data
                        }
                    }
                    Some(_) if zeros_as_data => Need::Data,
                    Some(c) if is_zero(c) && zero_init && block > cs => {
                        // The block around this cluster, within this chunk.
                        let at = to + done + (i * cs_us) as u64;
                        let start = (at - at % block).max(to + done) - (to + done);
                        let end = (at - at % block + block - (to + done)).min(chunk.len() as u64);
                        if is_zero(&chunk[start as usize..end as usize]) {
                            Need::Nothing
                        } else {
                            Need::Data
                        }
                    }
                    Some(c) if is_zero(c) && zero_init => Need::Nothing,
                    Some(c) if is_zero(c) => Need::Zeros,
                    Some(_) => Need::Data,
                };
                if run.is_some_and(|(_, kind)| kind == need) {
                    continue;
                }
                if let Some((first, kind)) = run.take() {
                    let bytes = &chunk[first * cs_us..(i * cs_us).min(chunk.len())];
                    let at = to + done + (first * cs_us) as u64;
                    match kind {
                        Need::Zeros => target.write_zeroes(at, bytes.len() as u64, false)?,
                        Need::Data if compress => target.write_compressed(bytes, at)?,
                        Need::Data => target.write_at(bytes, at)?,
                        Need::Nothing => {}
                    }
                }
                run = Some((i, need));
            }
            Ok(())
        },
    )?;
    if len > next && zeros_as_data {
        write_zero_data(target, to + next, len - next, (compress, cs))?;
    } else if len > next {
        zero_skipped((image, from), (target, to), (next, len), zero_init, backed)?;
    }
    Ok(())
}

/// Zeros written into `target` as data (qemu-img convert -S 0: everything allocated),
/// compressed cluster by cluster with `compress` (of `cs`-byte clusters), as qemu-img
/// -c -S 0 writes them.
fn write_zero_data(
    target: &mut Image,
    offset: u64,
    len: u64,
    (compress, cs): (bool, u64),
) -> Result<()> {
    if !compress {
        return target.write_zeros_as_data(offset, len);
    }
    let zeros = vec![0u8; cs as usize];
    let mut at = offset;
    while at < offset + len {
        let n = (cs - at % cs).min(offset + len - at);
        target.write_compressed(&zeros[..n as usize], at)?;
        at += n;
    }
    Ok(())
}

/// Makes `[from, to)` of the copy (at `source_from + from` in `source`, which reads
/// zeros there and whose reader skipped it; at `base + from` in `target`) read as
/// zeros: written whole unless the target is zero-initialised. Over a backing file, as
/// qemu-img convert -B writes them: zeros the source's own top holds are written, and
/// zeros from below it only where the target reads anything else.
fn zero_skipped(
    (source, source_from): (&Image, u64),
    (target, base): (&mut Image, u64),
    (from, to): (u64, u64),
    zero_init: bool,
    backed: bool,
) -> Result<()> {
    if !zero_init {
        return target.write_zeroes(base + from, to - from, false);
    }
    let mut at = from;
    while backed && at < to {
        let held = source.block_status(source_from + at, to - at)?;
        let end = at + held.len;
        if held.present && held.depth == 0 {
            target.write_zeroes(base + at, held.len, false)?;
        }
        while !(held.present && held.depth == 0) && at < end {
            let status = target.block_status(base + at, end - at)?;
            if !status.zero {
                target.write_zeroes(base + at, status.len, false)?;
            }
            at += status.len;
        }
        at = end;
    }
    Ok(())
}

/// Threads for copying: one per core, at most eight.
pub fn workers() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8)
}

/// Whether every byte is zero. OR-ing whole pieces (no early exit inside one) lets the
/// compiler use vector instructions; this runs over every byte converted.
pub fn is_zero(buf: &[u8]) -> bool {
    buf.chunks(4096)
        .all(|piece| piece.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// Where the workers are: the next offset to look at and the next piece's number.
struct Cursor {
    at: u64,
    seq: u64,
}

/// A piece read: its number, where it starts (relative to the copy) and its bytes.
struct Piece {
    seq: u64,
    at: u64,
    buf: Vec<u8>,
}

/// Calls `consume(offset, bytes)` in offset order for every `chunk`-aligned piece of
/// `[from, from + len)` that is not wholly known zeros (`offset` relative to `from`),
/// read by up to `workers` threads. At most two pieces per worker are in memory.
pub fn read_ahead(
    image: &Image,
    (from, len): (u64, u64),
    chunk: u64,
    workers: usize,
    salvage: Option<&Salvage>,
    progress: &(dyn Fn(u64) + Sync),
    mut consume: impl FnMut(u64, &[u8]) -> Result<()>,
) -> Result<()> {
    let workers = workers.max(1);
    let buffers = 2 * workers;
    let (pool_tx, pool_rx) = sync_channel::<Vec<u8>>(buffers);
    for _ in 0..buffers {
        // The receiver is held here, so the send cannot fail.
        let _ = pool_tx.send(Vec::with_capacity(chunk.min(len) as usize));
    }
    let pool_rx = Mutex::new(pool_rx);
    let cursor = Mutex::new(Cursor { at: 0, seq: 0 });
    let (done_tx, done_rx) = sync_channel::<Result<Piece, Error>>(buffers);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let done_tx = done_tx.clone();
            let (pool_rx, cursor) = (&pool_rx, &cursor);
            scope.spawn(move || loop {
                // A buffer first, then a piece: every numbered piece has its buffer,
                // so the writer's next piece always arrives.
                let Ok(mut buf) = pool_rx.lock().unwrap_or_else(|e| e.into_inner()).recv() else {
                    return;
                };
                let claimed = claim(image, from, len, chunk, cursor, salvage.is_some(), progress);
                let piece = match claimed {
                    Ok(None) => return,
                    Ok(Some((seq, at, n))) => {
                        buf.resize(n as usize, 0);
                        read_into(image, salvage, &mut buf, from + at).map(|()| Piece {
                            seq,
                            at,
                            buf,
                        })
                    }
                    Err(e) => Err(e),
                };
                let failed = piece.is_err();
                if done_tx.send(piece).is_err() || failed {
                    return;
                }
            });
        }
        drop(done_tx);
        let result = write_in_order(done_rx, |piece| {
            consume(piece.at, &piece.buf)?;
            progress(piece.buf.len() as u64);
            // The writer may have stopped taking buffers back: then nothing waits.
            let _ = pool_tx.try_send(piece.buf);
            Ok(())
        });
        // Dropping the channels (on return) releases workers waiting on them.
        drop(pool_tx);
        result
    })
}

/// The next piece for a worker: (number, offset, length), skipping chunks that read
/// as zeros, or `None` at the end. When `salvaging`, a chunk whose status cannot be
/// told is read (the read salvages it).
fn claim(
    image: &Image,
    from: u64,
    len: u64,
    chunk: u64,
    cursor: &Mutex<Cursor>,
    salvaging: bool,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Option<(u64, u64, u64)>> {
    let mut c = cursor.lock().unwrap_or_else(|e| e.into_inner());
    while c.at < len {
        let n = (len - c.at).min(chunk);
        let status = image.block_status(from + c.at, n);
        let at = c.at;
        c.at += n;
        match status {
            Ok(s) if s.zero && s.len == n => progress(n),
            Err(_) if salvaging => {
                c.seq += 1;
                return Ok(Some((c.seq - 1, at, n)));
            }
            Ok(_) => {
                c.seq += 1;
                return Ok(Some((c.seq - 1, at, n)));
            }
            Err(e) => {
                c.at = len;
                return Err(e);
            }
        }
    }
    Ok(None)
}

/// Hands the pieces to `write` in number order, holding the early ones; the first
/// error (a worker's or the writer's) ends it.
fn write_in_order(
    done: Receiver<Result<Piece, Error>>,
    mut write: impl FnMut(Piece) -> Result<()>,
) -> Result<()> {
    let mut early = BTreeMap::new();
    let mut next = 0;
    for piece in done {
        let piece = piece?;
        early.insert(piece.seq, piece);
        while let Some(piece) = early.remove(&next) {
            write(piece)?;
            next += 1;
        }
    }
    Ok(())
}
