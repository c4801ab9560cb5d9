//! `-r RATE` of convert and commit: the copy kept at or below RATE bytes per second,
//! as qemu-img's throttle keeps its writes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Sleeps the copying thread whenever more bytes went by than the rate allows so far.
pub struct Throttle {
    rate: Option<u64>,
    started: Instant,
    done: AtomicU64,
}

impl Throttle {
    /// `rate` from `-r` (a size: "10M" is 10 MiB per second); none for no limit.
    pub fn new(rate: Option<&str>) -> Result<Throttle, cowimg::Error> {
        let rate = rate
            .map(|text| {
                crate::create::parse_size(text).map_err(|_| {
                    cowimg::Error::new(
                        cowimg::ErrorKind::BadArgument,
                        format!("Invalid rate limit specified: '{text}'."),
                    )
                })
            })
            .transpose()?
            .filter(|&r| r > 0);
        Ok(Throttle {
            rate,
            started: Instant::now(),
            done: AtomicU64::new(0),
        })
    }

    /// `n` more bytes were copied.
    pub fn advance(&self, n: u64) {
        let Some(rate) = self.rate else {
            return;
        };
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        let due = Duration::from_secs_f64(done as f64 / rate as f64);
        if let Some(wait) = due.checked_sub(self.started.elapsed()) {
            std::thread::sleep(wait);
        }
    }

    /// The copy reached `done` bytes in all (for callers that report totals).
    pub fn reached(&self, done: u64) {
        let before = self.done.load(Ordering::Relaxed);
        self.advance(done.saturating_sub(before));
    }
}
