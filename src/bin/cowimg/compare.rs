//! `cowimg compare`: whether two images hold the same guest content, in qemu-img's
//! words and exit codes (0 identical, 1 different, 2 error).

use crate::source::{format_named, SourceArgs};
use cowimg::{Error, Image};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    source: SourceArgs,
    /// Format of the second image.
    #[arg(short = 'F', value_name = "FMT")]
    second_format: Option<String>,
    /// Strict: images of different sizes are different.
    #[arg(short = 's')]
    strict: bool,
    /// Quiet.
    #[arg(short = 'q')]
    quiet: bool,
    /// The first image.
    first: String,
    /// The second image.
    second: String,
}

const CHUNK: u64 = 1 << 20;

/// The start of the first 512-byte sector where `a` and `b` differ.
fn first_difference(a: &[u8], b: &[u8]) -> Option<u64> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .map(|i| i as u64 / 512 * 512)
}

fn open(source: &SourceArgs, name: &str, format: Option<&str>) -> Result<Image, Error> {
    let (path, mut options) = source.resolve(name)?;
    if let Some(f) = format {
        options.format = Some(format_named(f)?);
    }
    Image::open(&path, &options)
}

pub fn run(args: &Args) -> Result<ExitCode, Error> {
    let say = |text: &str| {
        if !args.quiet {
            crate::print_out(&format!("{text}\n"));
        }
    };
    let (a, b) = match (
        open(&args.source, &args.first, None),
        open(&args.source, &args.second, args.second_format.as_deref()),
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("cowimg: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let (size_a, size_b) = (a.size(), b.size());
    if size_a != size_b && args.strict {
        say("Strict mode: Image size mismatch!");
        return Ok(ExitCode::from(1));
    }
    let common = size_a.min(size_b);
    let mut buf_a = vec![0u8; CHUNK as usize];
    let mut buf_b = vec![0u8; CHUNK as usize];
    let mut offset = 0;
    while offset < common {
        let len = CHUNK.min(common - offset);
        let (sa, sb) = (a.block_status(offset, len)?, b.block_status(offset, len)?);
        // Both known zeros: nothing to read.
        if sa.zero && sb.zero {
            offset += sa.len.min(sb.len);
            continue;
        }
        let n = len as usize;
        a.read_at(&mut buf_a[..n], offset)?;
        b.read_at(&mut buf_b[..n], offset)?;
        if let Some(at) = first_difference(&buf_a[..n], &buf_b[..n]) {
            say(&format!("Content mismatch at offset {}!", offset + at));
            return Ok(ExitCode::from(1));
        }
        offset += len;
    }
    // The rest of the larger image must read as zeros (qemu-img warns only here).
    if size_a != size_b {
        say("Warning: Image size mismatch!");
    }
    let (larger, size) = if size_a > size_b {
        (&a, size_a)
    } else {
        (&b, size_b)
    };
    let zeros = vec![0u8; CHUNK as usize];
    while offset < size {
        let len = CHUNK.min(size - offset);
        let s = larger.block_status(offset, len)?;
        if s.zero {
            offset += s.len;
            continue;
        }
        let n = len as usize;
        larger.read_at(&mut buf_a[..n], offset)?;
        if let Some(at) = first_difference(&buf_a[..n], &zeros[..n]) {
            say(&format!("Content mismatch at offset {}!", offset + at));
            return Ok(ExitCode::from(1));
        }
        offset += len;
    }
    say("Images are identical.");
    Ok(ExitCode::SUCCESS)
}
