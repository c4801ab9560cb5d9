//! `cowimg resize`: change an image's virtual size.

use crate::create::parse_size;
use crate::source::SourceArgs;
use cowimg::{Backing, Error, ErrorKind};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    source: SourceArgs,
    /// Allow making the image smaller (everything past the new end is lost).
    #[arg(long)]
    shrink: bool,
    /// Quiet.
    #[arg(short = 'q', long = "quiet")]
    quiet: bool,
    /// How to allocate a grown raw image: off, falloc or full (written as zeros).
    #[arg(long = "preallocation", value_name = "PREALLOC")]
    preallocation: Option<String>,
    /// The image file.
    filename: String,
    /// New size, or +SIZE / -SIZE relative to the current one.
    #[arg(allow_hyphen_values = true)]
    size: String,
}

pub fn run(args: &Args) -> Result<ExitCode, Error> {
    // The backing chain is opened, as qemu-img opens it: a partial last cluster that
    // grows keeps what the backing file gives for its first part.
    let mut image = args.source.open_writable(&args.filename, Backing::Follow)?;
    let current = image.size();
    let (sign, number) = match args.size.as_bytes().first() {
        Some(b'+') => (1i8, &args.size[1..]),
        Some(b'-') => (-1, &args.size[1..]),
        _ => (0, args.size.as_str()),
    };
    let n = parse_size(number)?;
    let new_size = match sign {
        1 => current.checked_add(n),
        -1 => current.checked_sub(n),
        _ => Some(n),
    }
    .ok_or_else(|| Error::new(ErrorKind::BadArgument, "Invalid image size specified"))?;
    if new_size <= current
        && args
            .preallocation
            .as_deref()
            .is_some_and(|mode| mode != "off")
    {
        return Err(Error::new(
            ErrorKind::BadArgument,
            "Preallocation can only be used for growing images",
        ));
    }
    if new_size < current && !args.shrink {
        complain!("Use the --shrink option to perform a shrink operation.");
        complain!("warning: Shrinking an image will delete all data beyond the shrunken image's end. Before performing such an operation, make sure there is no important data there.");
        return Ok(ExitCode::FAILURE);
    }
    let prealloc = match args.preallocation.as_deref() {
        None | Some("off") => false,
        Some("falloc" | "full") if image.format() == cowimg::Format::Raw => true,
        // qcow2: the new clusters allocated with zeros written into them, for every
        // mode (metadata and falloc too: the space is taken, as full takes it).
        Some("metadata" | "falloc" | "full") if image.format() == cowimg::Format::Qcow2 => true,
        Some(mode @ ("metadata" | "falloc" | "full")) => {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "Preallocation mode '{mode}' is not supported by cowimg for {} resize",
                    image.format()
                ),
            ))
        }
        Some(other) => {
            return Err(Error::new(
                ErrorKind::BadArgument,
                format!("Invalid preallocation mode '{other}'"),
            ))
        }
    };
    image.resize(new_size)?;
    if prealloc && new_size > current {
        // The new range written out as zeros, as preallocation=full writes it.
        image.write_zeros_as_data(current, new_size - current)?;
    }
    image.close()?;
    if !args.quiet {
        crate::print_out("Image resized.\n");
    }
    Ok(ExitCode::SUCCESS)
}
