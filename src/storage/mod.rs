//! Positioned I/O under every format: a file, or memory. Formats never seek; they say
//! where. Nothing here knows about images.

mod fault;
mod file;
pub mod lock;
mod memory;
mod null;
#[cfg(feature = "remote")]
pub mod remote;

pub use fault::{Fault, FaultStorage};
pub use file::FileStorage;
pub use lock::{Access, LockConflict};
pub use memory::MemoryStorage;
pub use null::NullStorage;

use std::io;

/// The URL schemes read remotely (with the `remote` feature). Other `x://` names are
/// local paths.
const REMOTE_SCHEMES: [&str; 10] = [
    "s3", "s3a", "gs", "az", "azure", "abfs", "abfss", "adl", "http", "https",
];

/// Whether `name` is a URL of a scheme read remotely (`s3://…`, `https://…`).
pub fn is_remote(name: &str) -> bool {
    name.split_once("://")
        .is_some_and(|(scheme, _)| REMOTE_SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()))
}

/// `path` as a URL of a scheme read remotely, if it is one.
pub fn remote_url(path: &std::path::Path) -> Option<&str> {
    path.to_str().filter(|p| is_remote(p))
}

/// An image name as messages and reports show it: a remote URL without a user,
/// password, query (where signatures live) or fragment; any other name unchanged.
pub fn display_url(url: &str) -> String {
    if !is_remote(url) {
        return url.to_string();
    }
    let url = url.split(['?', '#']).next().unwrap_or(url);
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    format!("{scheme}://{host}{path}")
}

/// A run of stored data or of a hole, from some offset up to `end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Run {
    /// Whether the run holds data (else it is a hole).
    pub data: bool,
    /// Where the run ends.
    pub end: u64,
}

/// Byte storage with positioned reads and writes. Shared references suffice, so one
/// backend can serve several readers at once.
pub trait Storage: Send + Sync + std::fmt::Debug {
    /// Reads into `buf` from `offset`; returns how many bytes were read, fewer than
    /// asked only at the end of the storage.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;

    /// Writes all of `buf` at `offset`, growing the storage if needed.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;

    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;

    /// Grows (with zeros) or shrinks the storage.
    fn set_len(&self, len: u64) -> io::Result<()>;

    /// Makes every completed write durable.
    fn flush(&self) -> io::Result<()>;

    /// Makes `[offset, offset + len)` read as zeros without writing them, growing the
    /// storage if needed, when the storage can do that cheaply (a file system's
    /// zero-range). Returns false, having changed nothing, when it cannot.
    fn zero_range(&self, offset: u64, len: u64) -> io::Result<bool> {
        let _ = (offset, len);
        Ok(false)
    }

    /// Deallocates `[offset, offset + len)` so that it reads as zeros, the length kept
    /// (a raw image's discard, as QEMU's file driver punches holes). Returns false,
    /// having changed nothing, when the storage cannot.
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<bool> {
        let _ = (offset, len);
        Ok(false)
    }

    /// Bytes the storage really takes (a sparse file's allocated blocks), when known.
    fn allocated_size(&self) -> io::Result<Option<u64>> {
        Ok(None)
    }

    /// Whether the bytes from `offset` are stored data or a hole (reading as zeros and
    /// taking no space), and where that run ends; `None` when the storage cannot tell.
    fn allocation(&self, offset: u64) -> io::Result<Option<Run>> {
        let _ = offset;
        Ok(None)
    }

    /// True when the storage holds no bytes.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Fills `buf` from `offset`, failing with `UnexpectedEof` if the storage ends first.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let n = self.read_full(buf, offset)?;
        if n < buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{} bytes at offset {offset} run past the end of the file",
                    buf.len()
                ),
            ));
        }
        Ok(())
    }

    /// Fills `buf` from `offset`, with zeros past the end of the storage (as QEMU's
    /// protocol layer pads short reads). Returns how many bytes came from storage.
    fn read_zero_padded(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let n = self.read_full(buf, offset)?;
        buf[n..].fill(0);
        Ok(n)
    }

    /// Reads until `buf` is full or the storage ends; returns the count.
    fn read_full(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            let Some(at) = offset.checked_add(done as u64) else {
                break;
            };
            match self.read_at(&mut buf[done..], at) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }
}

/// Storage behind a pointer is that storage.
macro_rules! forward {
    ($($pointer:ident)::+) => {
        impl<S: Storage + ?Sized> Storage for $($pointer)::+<S> {
            fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
                (**self).read_at(buf, offset)
            }
            fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
                (**self).write_at(buf, offset)
            }
            fn len(&self) -> io::Result<u64> {
                (**self).len()
            }
            fn set_len(&self, len: u64) -> io::Result<()> {
                (**self).set_len(len)
            }
            fn flush(&self) -> io::Result<()> {
                (**self).flush()
            }
            fn allocation(&self, offset: u64) -> io::Result<Option<Run>> {
                (**self).allocation(offset)
            }
            fn zero_range(&self, offset: u64, len: u64) -> io::Result<bool> {
                (**self).zero_range(offset, len)
            }
            fn punch_hole(&self, offset: u64, len: u64) -> io::Result<bool> {
                (**self).punch_hole(offset, len)
            }
            fn allocated_size(&self) -> io::Result<Option<u64>> {
                (**self).allocated_size()
            }
        }
    };
}

forward!(Box);
forward!(std::sync::Arc);

/// `text` with every URL in it shown as [`display_url`] shows it: for messages of
/// libraries that name the request they sent, user, password and signature included.
pub fn scrub_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let scheme_len = rest[..at]
            .chars()
            .rev()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '-'))
            .count();
        let start = at - scheme_len;
        let end = rest[at..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>'))
            .map_or(rest.len(), |n| at + n);
        out.push_str(&rest[..start]);
        out.push_str(&display_url(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_names() {
        assert!(is_remote("s3://b/k") && is_remote("HTTPS://h/x") && is_remote("gs://b/o"));
        assert!(!is_remote("/tmp/x") && !is_remote("file:///x") && !is_remote("nbd://h"));
        assert_eq!(
            display_url("https://user:pw@h:8/a/b.qcow2?sig=SECRET#x"),
            "https://h:8/a/b.qcow2"
        );
        assert_eq!(display_url("s3://bucket/k"), "s3://bucket/k");
        assert_eq!(display_url("/tmp/a?b#c"), "/tmp/a?b#c");
        assert_eq!(
            scrub_urls("GET https://u:p@h/x?sig=1 in 5ms, then s3://b/k?X=y."),
            "GET https://h/x in 5ms, then s3://b/k"
        );
    }
}
