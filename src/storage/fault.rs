//! Memory that fails on purpose, for crash-safety tests: at a chosen write it starts
//! failing, crashes (losing or reordering what was not flushed) or runs out of space.

use super::Storage;
use std::io;
use std::sync::Mutex;

/// What happens at the chosen write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// That write and every later one fail with an I/O error.
    Fail,
    /// The machine "crashes": everything since the last flush is lost and every later
    /// request fails. `durable()` is what survived.
    Drop,
    /// As `Drop`, except that of the writes since the last flush the latest one did
    /// reach the disk (disks complete writes in any order): whatever a write depends
    /// on must have been flushed before it. A flush after the write before the chosen
    /// one is where the crash strikes, if one comes first.
    Reorder,
    /// The file system is full from that write on: every write reaching past the
    /// storage's length at that moment fails with ENOSPC, and so does growing it;
    /// writes inside it still succeed, as on a full disk.
    NoSpace,
    /// Counted over reads instead: that read and every later one fail with EIO (a
    /// failing disk), for opening, reading and checking under read errors. Writes are
    /// not affected.
    ReadFail,
    /// As `ReadFail`, but only that one read fails (a transient error): later reads
    /// succeed, so a reader that goes on does so with a gap in what it read.
    ReadGlitch,
}

#[derive(Debug)]
struct State {
    current: Vec<u8>,
    durable: Vec<u8>,
    writes: u64,
    reads: u64,
    /// The latest write since the last flush: (offset, bytes).
    latest: Option<(usize, Vec<u8>)>,
    at: Option<(u64, Fault)>,
    tripped: bool,
    /// Under `NoSpace`, the length nothing may grow past once tripped.
    capacity: Option<usize>,
}

/// Memory that fails on purpose, for crash-safety tests: it counts writes and, at the
/// chosen one, starts failing or drops everything not yet flushed.
#[derive(Debug)]
pub struct FaultStorage {
    state: Mutex<State>,
}

impl FaultStorage {
    /// `bytes` as already flushed; the fault (if any) strikes at write number `at`
    /// (counting from 0).
    pub fn new(bytes: Vec<u8>, at: Option<(u64, Fault)>) -> FaultStorage {
        FaultStorage {
            state: Mutex::new(State {
                durable: bytes.clone(),
                current: bytes,
                writes: 0,
                reads: 0,
                latest: None,
                at,
                tripped: false,
                capacity: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many writes were attempted.
    pub fn writes(&self) -> u64 {
        self.lock().writes
    }

    /// How many reads were attempted.
    pub fn reads(&self) -> u64 {
        self.lock().reads
    }

    /// Whether the fault struck.
    pub fn tripped(&self) -> bool {
        self.lock().tripped
    }

    /// The bytes that would survive a crash now: as of the last flush.
    pub fn durable(&self) -> Vec<u8> {
        self.lock().durable.clone()
    }

    /// The bytes as the writer sees them.
    pub fn current(&self) -> Vec<u8> {
        self.lock().current.clone()
    }
}

impl State {
    /// Whether a tripped fault fails every write now (not a full disk, not reads).
    fn writes_fail(&self) -> bool {
        self.tripped
            && self.capacity.is_none()
            && !matches!(self.at, Some((_, Fault::ReadFail | Fault::ReadGlitch)))
    }

    /// The fault strikes (once): a crash leaves only what is durable.
    fn trip(&mut self, fault: Fault) {
        if fault == Fault::NoSpace {
            self.capacity.get_or_insert(self.current.len());
        } else if !self.tripped && fault != Fault::Fail {
            if let (Fault::Reorder, Some((start, bytes))) = (fault, self.latest.take()) {
                put(&mut self.durable, start, &bytes);
            }
            self.current = self.durable.clone();
        }
        self.tripped = true;
    }
}

fn failed() -> io::Error {
    io::Error::other("injected fault")
}

fn no_space() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOSPC)
}

impl Storage for FaultStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut s = self.lock();
        s.reads += 1;
        if let Some((at, fault @ (Fault::ReadFail | Fault::ReadGlitch))) = s.at {
            if s.reads > at && (fault == Fault::ReadFail || s.reads == at + 1) {
                s.tripped = true;
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
        }
        if s.tripped && matches!(s.at, Some((_, Fault::Drop | Fault::Reorder))) {
            return Err(failed());
        }
        let Ok(start) = usize::try_from(offset) else {
            return Ok(0);
        };
        let Some(src) = s.current.get(start..) else {
            return Ok(0);
        };
        let n = src.len().min(buf.len());
        buf[..n].copy_from_slice(&src[..n]);
        Ok(n)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut s = self.lock();
        let n = s.writes;
        s.writes += 1;
        let start = usize::try_from(offset).map_err(|_| failed())?;
        let on_writes = |f: &Fault| !matches!(f, Fault::ReadFail | Fault::ReadGlitch);
        if let Some((at, fault)) = s.at.filter(|(_, f)| on_writes(f)) {
            if n >= at {
                s.trip(fault);
                match s.capacity {
                    Some(room) if start + buf.len() > room => return Err(no_space()),
                    Some(_) => {}
                    None => return Err(failed()),
                }
            }
        }
        put(&mut s.current, start, buf);
        s.latest = Some((start, buf.to_vec()));
        Ok(())
    }

    /// Zeros written, so that the fault counts it as the write it stands for.
    fn zero_range(&self, offset: u64, len: u64) -> io::Result<bool> {
        let len = usize::try_from(len).map_err(|_| failed())?;
        self.write_at(&vec![0; len], offset).map(|()| true)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.lock().current.len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut s = self.lock();
        let len = usize::try_from(len).map_err(|_| failed())?;
        match s.capacity {
            Some(room) if len > room => return Err(no_space()),
            Some(_) => {}
            None if s.writes_fail() => return Err(failed()),
            None => {}
        }
        s.current.resize(len, 0);
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        let mut s = self.lock();
        if let Some((at, Fault::Reorder)) = s.at {
            if s.writes >= at {
                s.trip(Fault::Reorder);
            }
        }
        if s.writes_fail() {
            return Err(failed());
        }
        s.durable = s.current.clone();
        s.latest = None;
        Ok(())
    }
}

/// `bytes` written into `image` at `start`, growing it as a file grows.
fn put(image: &mut Vec<u8>, start: usize, bytes: &[u8]) {
    let end = start + bytes.len();
    if image.len() < end {
        image.resize(end, 0);
    }
    image[start..end].copy_from_slice(bytes);
}
