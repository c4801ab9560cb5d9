//! `cowimg bench`: qemu-img bench's request pattern and report, to compare the two on
//! the same image. Reads run on up to `depth` threads (the image reads through shared
//! references); writes need the image exclusively, so they run one after another.

use crate::create::parse_size;
use crate::source::SourceArgs;
use cowimg::{Backing, Error, ErrorKind, Image};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    source: SourceArgs,
    /// Number of requests.
    #[arg(short = 'c', long = "count", default_value = "75000")]
    count: String,
    /// Requests in flight at once.
    #[arg(short = 'd', long = "depth", default_value = "64")]
    depth: String,
    /// Bytes per request.
    #[arg(short = 's', long = "buffer-size", default_value = "4096")]
    buffer_size: String,
    /// Offset of the first request.
    #[arg(short = 'o', long = "offset", default_value = "0")]
    offset: String,
    /// Distance from one request to the next (0: the buffer size).
    #[arg(short = 'S', long = "step-size", default_value = "0")]
    step: String,
    /// Cache mode: writeback; unsafe (as writeback: metadata stays ordered);
    /// writethrough (a flush after every write). none and directsync need O_DIRECT,
    /// which cowimg does not use.
    #[arg(short = 't', long = "cache", default_value = "writeback")]
    cache: String,
    /// Asynchronous I/O backend: threads is what cowimg has.
    #[arg(short = 'i', long = "aio", default_value = "threads")]
    aio: String,
    /// The same as `-i native`.
    #[arg(short = 'n', long = "native")]
    native: bool,
    /// Write instead of read.
    #[arg(short = 'w', long = "write")]
    write: bool,
    /// Byte to write.
    #[arg(long = "pattern", default_value = "0")]
    pattern: String,
    /// Flush after this many write requests.
    #[arg(long = "flush-interval")]
    flush_interval: Option<String>,
    /// Accepted for compatibility: cowimg's flushes always wait.
    #[arg(long = "no-drain")]
    no_drain: bool,
    /// Accepted for compatibility; qemu-img bench prints its report regardless.
    #[arg(short = 'q', long = "quiet")]
    quiet: bool,
    /// The image.
    filename: String,
}

fn bad(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::BadArgument, message)
}

/// A count between `min` and `max`, in qemu-img's words when it is not.
fn number(what: &str, text: &str, min: u64, max: u64, sized: bool) -> Result<u64, Error> {
    let n = if sized {
        parse_size(text).ok()
    } else {
        text.parse::<i128>()
            .ok()
            .map(|n| n.clamp(-1, u64::MAX as i128) as i64 as u64)
    };
    let n = n.ok_or_else(|| bad(format!("Invalid {what} specified: '{text}'.")))?;
    if !(min..=max).contains(&n) || text.starts_with('-') {
        return Err(bad(format!(
            "Invalid {what} specified. Must be between {min} and {max}."
        )));
    }
    Ok(n)
}

pub fn run(args: &Args) -> Result<ExitCode, Error> {
    let int_max = i32::MAX as u64;
    let count = number("request count", &args.count, 1, int_max, false)?;
    let depth = number("queue depth", &args.depth, 1, int_max, false)?;
    let size = number("buffer size", &args.buffer_size, 1, int_max, true)?;
    let offset = number("offset", &args.offset, 0, i64::MAX as u64, true)?;
    let step = match number("step size", &args.step, 0, int_max, true)? {
        0 => size,
        s => s,
    };
    let pattern = number("pattern byte", &args.pattern, 0, 255, false)? as u8;
    let flush_every = match &args.flush_interval {
        Some(_) if !args.write => {
            return Err(bad("--flush-interval is only available in write tests"))
        }
        Some(text) => {
            let n = number("flush interval", text, 0, int_max, false)?;
            if n < depth {
                return Err(bad("Flush interval can't be smaller than depth"));
            }
            Some(n)
        }
        None => None,
    };
    let write_through = match args.cache.as_str() {
        "writeback" | "unsafe" => false,
        "writethrough" => true,
        "none" | "directsync" => {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "cache mode '{}' needs O_DIRECT, which cowimg does not use",
                    args.cache
                ),
            ))
        }
        _ => return Err(bad("Invalid cache mode")),
    };
    let aio = if args.native {
        "native"
    } else {
        args.aio.as_str()
    };
    if aio != "threads" {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!("aio={aio} is not supported; cowimg uses threads"),
        ));
    }

    let mut image = if args.write {
        args.source.open_writable(&args.filename, Backing::Follow)?
    } else {
        let (path, options) = args.source.resolve(&args.filename)?;
        Image::open(&path, &options)?
    };
    crate::print_warnings(&image);

    let mut report = format!(
        "Sending {count} {} requests, {size} bytes each, {depth} in parallel (starting at offset {offset}, step size {step})\n",
        if args.write { "write" } else { "read" }
    );
    if let Some(n) = flush_every {
        report += &format!("Sending flush every {n} requests\n");
    }
    crate::print_out(&report);

    let image_size = image.size();
    let at = |i: u64| match image_size {
        0 => 0,
        n => (offset as u128 + i as u128 * step as u128) as u64 % n,
    };
    // Request i starts at offset + i × step, wrapped at the end of the image, as in
    // qemu-img (the first request starts at the offset itself).
    let first = offset;
    let request_at = |i: u64| if i == 0 { first } else { at(i) };
    let failed = |e: Error| Error::new(e.kind(), format!("Failed request: {e}"));
    let start = Instant::now();
    if args.write {
        let buf = vec![pattern; size as usize];
        for i in 0..count {
            image.write_at(&buf, request_at(i)).map_err(failed)?;
            let flush_now = write_through || flush_every.is_some_and(|n| (i + 1) % n == 0);
            if flush_now {
                image.flush().map_err(failed)?;
            }
        }
        image.flush()?;
    } else {
        let workers = depth.min(std::thread::available_parallelism().map_or(1, |n| n.get() as u64));
        let next = AtomicU64::new(0);
        let image = &image;
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    scope.spawn(|| -> Result<(), Error> {
                        let mut buf = vec![0u8; size as usize];
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= count {
                                return Ok(());
                            }
                            image.read_at(&mut buf, request_at(i)).map_err(failed)?;
                        }
                    })
                })
                .collect();
            handles.into_iter().try_for_each(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(Error::new(
                        ErrorKind::Io,
                        "a bench worker stopped unexpectedly",
                    ))
                })
            })
        })?;
    }
    crate::print_out(&format!(
        "Run completed in {:.3} seconds.\n",
        start.elapsed().as_secs_f64()
    ));
    Ok(ExitCode::SUCCESS)
}
