//! Whether two images hold the same guest content, as `qemu-img compare` answers it:
//! the first 512-byte sector where they differ, past the smaller image's end the
//! larger one compared with zeros. Pieces are compared on every core (compressed or
//! encrypted images are inflated and decrypted in parallel); ranges both images know
//! to be zeros are never read.

use crate::copy::workers;
use crate::error::{Error, Result};
use crate::image::Image;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Bytes compared at a time by one worker.
const PIECE: u64 = 2 << 20;

/// The guest offset of the first 512-byte sector where `a` and `b` differ (the
/// smaller read as zeros past its end), or None when they hold the same content.
pub fn first_difference(a: &Image, b: &Image) -> Result<Option<u64>> {
    let size = a.size().max(b.size());
    // Pieces are claimed in order; no piece at or past `stop` (the lowest difference
    // or failure found so far) is started, so every piece before it is compared.
    let next = AtomicU64::new(0);
    let stop = AtomicU64::new(u64::MAX);
    let lowest_failure: Mutex<Option<(u64, Error)>> = Mutex::new(None);
    let lowest_difference = AtomicU64::new(u64::MAX);
    std::thread::scope(|scope| {
        for _ in 0..workers() {
            scope.spawn(|| {
                let (mut buf_a, mut buf_b) = (Vec::new(), Vec::new());
                loop {
                    let at = next.fetch_add(1, Ordering::Relaxed).saturating_mul(PIECE);
                    if at >= size || at >= stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let len = PIECE.min(size - at);
                    match compare_piece(a, b, at, len, &mut buf_a, &mut buf_b) {
                        Ok(None) => {}
                        Ok(Some(offset)) => {
                            lowest_difference.fetch_min(offset, Ordering::Relaxed);
                            stop.fetch_min(offset, Ordering::Relaxed);
                        }
                        Err(e) => {
                            let mut failure =
                                lowest_failure.lock().unwrap_or_else(|p| p.into_inner());
                            if failure.as_ref().is_none_or(|(first, _)| at < *first) {
                                *failure = Some((at, e));
                            }
                            stop.fetch_min(at, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    let difference = lowest_difference.into_inner();
    match lowest_failure
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
    {
        // A failure before the first difference is what a serial compare meets first.
        Some((at, e)) if at <= difference => Err(e),
        _ => Ok((difference != u64::MAX).then_some(difference)),
    }
}

/// Compares `len` bytes at `at`: the first differing sector, if any.
fn compare_piece(
    a: &Image,
    b: &Image,
    at: u64,
    len: u64,
    buf_a: &mut Vec<u8>,
    buf_b: &mut Vec<u8>,
) -> Result<Option<u64>> {
    if reads_as_zeros(a, at, len)? && reads_as_zeros(b, at, len)? {
        return Ok(None);
    }
    read_padded(a, buf_a, at, len)?;
    read_padded(b, buf_b, at, len)?;
    Ok(buf_a
        .iter()
        .zip(buf_b.iter())
        .position(|(x, y)| x != y)
        .map(|i| at + i as u64 / 512 * 512))
}

/// Whether `image` is known, from its metadata, to read `len` zeros at `at` (past its
/// end it does).
fn reads_as_zeros(image: &Image, at: u64, len: u64) -> Result<bool> {
    let mut offset = at;
    let end = (at + len).min(image.size());
    while offset < end {
        let status = image.block_status(offset, end - offset)?;
        if !status.zero {
            return Ok(false);
        }
        offset += status.len;
    }
    Ok(true)
}

/// Reads `len` bytes at `at` into `buf`, zeros past the image's end.
fn read_padded(image: &Image, buf: &mut Vec<u8>, at: u64, len: u64) -> Result<()> {
    buf.clear();
    buf.resize(len as usize, 0);
    let inside = image.size().saturating_sub(at).min(len) as usize;
    match inside {
        // Wholly past the end (of the smaller image): zeros, nothing to read.
        0 => Ok(()),
        _ => image.read_at(&mut buf[..inside], at),
    }
}

/// The first offset where `a` and `b` (of one size) answer block status differently,
/// as `qemu-img compare -s` tests it: allocated, zero, data, host offset known,
/// compressed, and whether the answer runs to the end of the image.
pub fn first_status_difference(a: &Image, b: &Image) -> Result<Option<u64>> {
    let size = a.size().min(b.size());
    let flags = |s: &crate::image::BlockStatus, size: u64| {
        (
            s.present,
            s.zero,
            s.data,
            s.offset.is_some(),
            s.compressed,
            s.start + s.len == size,
        )
    };
    let mut offset = 0;
    while offset < size {
        let sa = a.block_status(offset, a.size() - offset)?;
        let sb = b.block_status(offset, b.size() - offset)?;
        if flags(&sa, a.size()) != flags(&sb, b.size()) {
            return Ok(Some(offset));
        }
        offset += sa.len.min(sb.len).max(1);
    }
    Ok(None)
}
