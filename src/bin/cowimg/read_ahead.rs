//! Reading ahead: workers on every core read the source piece by piece while one
//! writer consumes the pieces in order (an image's metadata takes one writer; qemu-img
//! convert likewise keeps several reads in flight and writes in order).

use crate::progress::Progress;
use cowimg::{Error, Image};
use std::collections::BTreeMap;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Mutex;

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
    progress: &Progress,
    mut consume: impl FnMut(u64, &[u8]) -> Result<(), Error>,
) -> Result<(), Error> {
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
                let claimed = claim(image, from, len, chunk, cursor, progress);
                let piece = match claimed {
                    Ok(None) => return,
                    Ok(Some((seq, at, n))) => {
                        buf.resize(n as usize, 0);
                        image
                            .read_at(&mut buf, from + at)
                            .map(|()| Piece { seq, at, buf })
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
            progress.advance(piece.buf.len() as u64);
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
/// as zeros, or `None` at the end.
fn claim(
    image: &Image,
    from: u64,
    len: u64,
    chunk: u64,
    cursor: &Mutex<Cursor>,
    progress: &Progress,
) -> Result<Option<(u64, u64, u64)>, Error> {
    let mut c = cursor.lock().unwrap_or_else(|e| e.into_inner());
    while c.at < len {
        let n = (len - c.at).min(chunk);
        let status = image.block_status(from + c.at, n);
        let at = c.at;
        c.at += n;
        match status {
            Ok(s) if s.zero && s.len == n => progress.advance(n),
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
    mut write: impl FnMut(Piece) -> Result<(), Error>,
) -> Result<(), Error> {
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
