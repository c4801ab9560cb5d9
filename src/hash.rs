//! Digests of a guest disk, as forensic tools record them: whole-disk digests in one
//! pass with several algorithms at once, and optionally one per window of the disk
//! (piecewise hashing, as dc3dd's hash windows). The disk is read ahead on every core
//! (decompression included) and hashed in order.

use crate::copy::{read_ahead, workers, Salvage, CHUNK};
use crate::error::{Error, ErrorKind, Result};
use crate::image::Image;
use digest::DynDigest;

/// A digest algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Algorithm {
    /// SHA-256.
    Sha256,
    /// SHA-1.
    Sha1,
    /// MD5.
    Md5,
}

impl Algorithm {
    /// The algorithm named `name` ("sha256", "sha1", "md5").
    pub fn from_name(name: &str) -> Option<Algorithm> {
        [Algorithm::Sha256, Algorithm::Sha1, Algorithm::Md5]
            .into_iter()
            .find(|a| a.name() == name)
    }

    /// Its name, as sha256sum and friends are named.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha1 => "sha1",
            Algorithm::Md5 => "md5",
        }
    }

    fn hasher(self) -> Box<dyn DynDigest + Send> {
        match self {
            Algorithm::Sha256 => Box::new(sha2::Sha256::default()),
            Algorithm::Sha1 => Box::new(sha1::Sha1::default()),
            Algorithm::Md5 => Box::new(md5::Md5::default()),
        }
    }
}

/// The digests of one range of the disk, in the order the algorithms were asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Digests {
    /// Guest offset of the range's first byte.
    pub start: u64,
    /// Its length.
    pub len: u64,
    /// (algorithm, digest in lower-case hex).
    pub digests: Vec<(Algorithm, String)>,
}

/// What [`hash`] found: the whole disk, and each window when windows were asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DiskDigests {
    /// The whole disk.
    pub whole: Digests,
    /// Consecutive windows of `window` bytes (the last may be shorter).
    pub windows: Vec<Digests>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn finish(hashers: &mut [(Algorithm, Box<dyn DynDigest + Send>)], start: u64, len: u64) -> Digests {
    Digests {
        start,
        len,
        digests: hashers
            .iter_mut()
            .map(|(a, h)| (*a, hex(&h.finalize_reset())))
            .collect(),
    }
}

/// Hashes the guest disk of `image` with every algorithm in `algorithms`, and per
/// `window` bytes when one is given. `progress` hears how many bytes each step read.
/// With `salvage`, what cannot be read is hashed as zeros and recorded there (the
/// digests then say what a salvaging convert would write).
pub fn hash(
    image: &Image,
    algorithms: &[Algorithm],
    window: Option<u64>,
    salvage: Option<&Salvage>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<DiskDigests> {
    if algorithms.is_empty() {
        return Err(Error::new(
            ErrorKind::BadArgument,
            "no digest algorithm given",
        ));
    }
    if window == Some(0) {
        return Err(Error::new(
            ErrorKind::BadArgument,
            "a hash window cannot be empty",
        ));
    }
    let size = image.size();
    let make = || -> Vec<_> { algorithms.iter().map(|a| (*a, a.hasher())).collect() };
    let mut whole = make();
    let mut piece = make();
    let mut windows = Vec::new();
    let mut window_start = 0;
    let mut pos = 0u64;
    // Feeds the next bytes of the disk (from `pos`) to every digest.
    let mut feed = |mut bytes: &[u8], pos: &mut u64| {
        for (_, h) in whole.iter_mut() {
            h.update(bytes);
        }
        let Some(w) = window else {
            *pos += bytes.len() as u64;
            return;
        };
        while !bytes.is_empty() {
            let room = (window_start + w - *pos) as usize;
            let (now, rest) = bytes.split_at(room.min(bytes.len()));
            for (_, h) in piece.iter_mut() {
                h.update(now);
            }
            *pos += now.len() as u64;
            bytes = rest;
            if *pos == window_start + w {
                windows.push(finish(&mut piece, window_start, w));
                window_start = *pos;
            }
        }
    };
    // Ranges that read as zeros are skipped by the reader: they are fed as zeros.
    let zeros = vec![0u8; CHUNK as usize];
    let fill = |to: u64, pos: &mut u64, feed: &mut dyn FnMut(&[u8], &mut u64)| {
        while *pos < to {
            let n = (to - *pos).min(CHUNK) as usize;
            feed(&zeros[..n], pos);
        }
    };
    read_ahead(
        image,
        (0, size),
        CHUNK,
        workers(),
        salvage,
        progress,
        |at, bytes| {
            fill(at, &mut pos, &mut feed);
            feed(bytes, &mut pos);
            Ok(())
        },
    )?;
    fill(size, &mut pos, &mut feed);
    if window.is_some() && window_start < size {
        windows.push(finish(&mut piece, window_start, size - window_start));
    }
    Ok(DiskDigests {
        whole: finish(&mut whole, 0, size),
        windows,
    })
}
