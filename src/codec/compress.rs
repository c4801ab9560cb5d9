//! Compressed clusters: qcow2 type 0 ("zlib", really raw deflate with a 4 KiB window)
//! and type 1 (zstd frames). Output is always exactly one cluster; input past what
//! that cluster needs is ignored, as QEMU does.

use crate::error::{Error, ErrorKind, Result};
use std::cell::RefCell;

/// A compression type, as the qcow2 header numbers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Compression {
    /// zlib (deflate), type 0: every qcow2 image before compression types.
    Deflate,
    /// Zstandard, type 1 (version 3 images with the compression type bit).
    Zstd,
}

impl Compression {
    /// The type numbered `n` in a qcow2 header.
    pub fn from_header(n: u8) -> Option<Compression> {
        match n {
            0 => Some(Compression::Deflate),
            1 => Some(Compression::Zstd),
            _ => None,
        }
    }

    /// The type qemu-img names `name` ("zlib" or "zstd").
    pub fn from_name(name: &str) -> Option<Compression> {
        [Compression::Deflate, Compression::Zstd]
            .into_iter()
            .find(|c| c.name() == name)
    }

    /// The name qemu-img uses: "zlib" or "zstd".
    pub fn name(self) -> &'static str {
        match self {
            Compression::Deflate => "zlib",
            Compression::Zstd => "zstd",
        }
    }

    /// Fills `out` (one cluster) from `input`. Fails unless exactly `out.len()` bytes
    /// come out; never produces more.
    pub fn decompress(self, input: &[u8], out: &mut [u8]) -> Result<()> {
        let damaged = |e: std::io::Error| {
            Error::new(
                ErrorKind::Corrupt,
                format!("compressed cluster ({}) is damaged: {e}", self.name()),
            )
        };
        let got = match self {
            Compression::Deflate => inflate_into(input, out),
            Compression::Zstd => unzstd_into(input, out),
        }
        .map_err(damaged)?;
        if got != out.len() {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!(
                    "compressed cluster ({}) inflates to {got} bytes, {} expected",
                    self.name(),
                    out.len()
                ),
            ));
        }
        Ok(())
    }
}

impl Compression {
    /// Compresses one cluster as QEMU does (raw deflate with a 4 KiB window, or one zstd
    /// frame). None when the result would not be shorter than `limit` bytes: such a
    /// cluster is stored uncompressed.
    pub fn compress(self, input: &[u8], limit: usize) -> Result<Option<Vec<u8>>> {
        Compressor::new(self)?.compress(input, limit)
    }

    /// Compresses each of `clusters` (the last may be short: it is padded with zeros to
    /// `cs` bytes) as [`Compression::compress`] does with a limit of `cs - 1`, spread
    /// across the machine's cores; results in order.
    pub fn compress_clusters(self, clusters: &[&[u8]], cs: usize) -> Result<Vec<Option<Vec<u8>>>> {
        // One compressor per worker: setting one up costs more than a cluster's work.
        let run = |group: &[&[u8]]| -> Result<Vec<Option<Vec<u8>>>> {
            let mut engine = Compressor::new(self)?;
            let mut padded = Vec::new();
            group
                .iter()
                .map(|chunk| {
                    let input = if chunk.len() == cs {
                        *chunk
                    } else {
                        padded.clear();
                        padded.extend_from_slice(chunk);
                        padded.resize(cs, 0);
                        &padded[..]
                    };
                    engine.compress(input, cs - 1)
                })
                .collect()
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = cores.min(clusters.len());
        if workers <= 1 {
            return run(clusters);
        }
        let per_worker = clusters.len().div_ceil(workers);
        std::thread::scope(|scope| {
            let handles: Vec<_> = clusters
                .chunks(per_worker)
                .map(|group| scope.spawn(move || run(group)))
                .collect();
            let mut out = Vec::with_capacity(clusters.len());
            for handle in handles {
                let part = handle
                    .join()
                    .map_err(|_| Error::new(ErrorKind::Io, "a compression worker failed"))?;
                out.extend(part?);
            }
            Ok(out)
        })
    }
}

/// A compressor's state, kept from one cluster to the next.
enum Compressor {
    Deflate(flate2::Compress),
    Zstd(zstd::bulk::Compressor<'static>),
}

impl Compressor {
    fn new(kind: Compression) -> Result<Compressor> {
        Ok(match kind {
            Compression::Deflate => Compressor::Deflate(flate2::Compress::new_with_window_bits(
                flate2::Compression::default(),
                false,
                12,
            )),
            Compression::Zstd => Compressor::Zstd(
                zstd::bulk::Compressor::new(0)
                    .map_err(|e| Error::new(ErrorKind::Io, format!("zstd failed: {e}")))?,
            ),
        })
    }

    fn compress(&mut self, input: &[u8], limit: usize) -> Result<Option<Vec<u8>>> {
        match self {
            Compressor::Deflate(z) => {
                z.reset();
                let mut out = Vec::with_capacity(limit);
                let status = z
                    .compress_vec(input, &mut out, flate2::FlushCompress::Finish)
                    .map_err(|e| Error::new(ErrorKind::Io, format!("deflate failed: {e}")))?;
                Ok((status == flate2::Status::StreamEnd && out.len() < limit).then_some(out))
            }
            Compressor::Zstd(z) => {
                let out = z
                    .compress(input)
                    .map_err(|e| Error::new(ErrorKind::Io, format!("zstd failed: {e}")))?;
                Ok((out.len() < limit).then_some(out))
            }
        }
    }
}

thread_local! {
    /// Each thread's inflater and zstd context, reset per cluster: setting one up costs
    /// more than inflating a cluster, and bulk reads inflate on every core.
    static INFLATER: RefCell<flate2::Decompress> = RefCell::new(flate2::Decompress::new(false));
    static ZSTD_CONTEXT: RefCell<Option<zstd::zstd_safe::DCtx<'static>>> =
        const { RefCell::new(None) };
}

/// Inflates raw deflate from `input` straight into `out`, stopping when it is full;
/// the bytes produced.
fn inflate_into(input: &[u8], out: &mut [u8]) -> std::io::Result<usize> {
    INFLATER.with_borrow_mut(|z| {
        z.reset(false);
        while (z.total_out() as usize) < out.len() {
            let (read, wrote) = (z.total_in() as usize, z.total_out() as usize);
            let status = z
                .decompress(
                    &input[read..],
                    &mut out[wrote..],
                    flate2::FlushDecompress::Finish,
                )
                .map_err(std::io::Error::other)?;
            let stalled = z.total_in() as usize == read && z.total_out() as usize == wrote;
            if status == flate2::Status::StreamEnd || stalled {
                break;
            }
        }
        Ok(z.total_out() as usize)
    })
}

/// Decodes zstd frames, one after another, from `input` straight into `out` until it
/// is full (a frame whose size is known and whose bytes are all there is decoded in
/// one pass, without the context's window); the bytes produced.
fn unzstd_into(input: &[u8], out: &mut [u8]) -> std::io::Result<usize> {
    use zstd::zstd_safe::{DCtx, InBuffer, OutBuffer, ResetDirective};
    let failed = |code| std::io::Error::other(zstd::zstd_safe::get_error_name(code));
    ZSTD_CONTEXT.with_borrow_mut(|slot| {
        if slot.is_none() {
            *slot = DCtx::try_create();
        }
        let dctx = slot
            .as_mut()
            .ok_or_else(|| std::io::Error::other("no memory for a zstd context"))?;
        dctx.reset(ResetDirective::SessionOnly).map_err(failed)?;
        let mut source = InBuffer::around(input);
        let mut target = OutBuffer::around(out);
        while target.pos() < target.capacity() {
            let (read, wrote) = (source.pos(), target.pos());
            dctx.decompress_stream(&mut target, &mut source)
                .map_err(failed)?;
            if source.pos() == read && target.pos() == wrote {
                break;
            }
        }
        Ok(target.pos())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn raw_deflate_and_zstd_fill_exactly_one_cluster() {
        let cluster: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut enc =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&cluster).unwrap();
        let mut deflated = enc.finish().unwrap();
        deflated.extend_from_slice(&[0xaa; 100]); // trailing bytes of the next cluster
        let mut out = vec![0u8; 4096];
        Compression::Deflate
            .decompress(&deflated, &mut out)
            .unwrap();
        assert_eq!(out, cluster);

        let z = zstd::bulk::compress(&cluster, 3).unwrap();
        let mut out = vec![0u8; 4096];
        Compression::Zstd.decompress(&z, &mut out).unwrap();
        assert_eq!(out, cluster);
        let mut short = vec![0u8; 4096];
        assert_eq!(
            Compression::Zstd
                .decompress(&z[..z.len() / 2], &mut short)
                .unwrap_err()
                .kind(),
            ErrorKind::Corrupt
        );
        // Our own output inflates with QEMU's 4 KiB window.
        let ours = Compression::Deflate
            .compress(&cluster, 4095)
            .unwrap()
            .unwrap();
        let mut z = flate2::Decompress::new_with_window_bits(false, 12);
        let mut back = Vec::with_capacity(4096);
        z.decompress_vec(&ours, &mut back, flate2::FlushDecompress::Finish)
            .unwrap();
        assert_eq!(back, cluster);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        assert!(
            Compression::Deflate
                .compress(&noise, 4095)
                .unwrap()
                .is_none(),
            "incompressible"
        );
        let mut big = vec![0u8; 8192];
        assert_eq!(
            Compression::Deflate
                .decompress(&deflated, &mut big)
                .unwrap_err()
                .kind(),
            ErrorKind::Corrupt
        );
    }
}
