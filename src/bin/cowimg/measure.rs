//! `cowimg measure`: how large a new image would be, with qemu-img's arithmetic.

use crate::create::{apply_options, parse_size};
use crate::json::Json;
use crate::source::{format_named, SnapshotSourceArgs, TargetArgs};
use cowimg::qcow2::bitmaps::read_directory;
use cowimg::qcow2::create::{CreateOptions, Preallocation};
use cowimg::qcow2::measure::{bitmaps_size, fully_allocated, Target};
use cowimg::{image::Layer, Error, ErrorKind, Format, Image};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    input: SnapshotSourceArgs,
    #[command(flatten)]
    target: TargetArgs,
    /// Measure an empty image of this size instead of an existing image.
    #[arg(long = "size", value_name = "SIZE")]
    size: Option<String>,
    /// Output format: human or json.
    #[arg(long = "output", default_value = "human", value_parser = ["human", "json"])]
    output: String,
    /// The image whose data the new image would hold.
    filename: Option<String>,
}

fn bad(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::BadArgument, message)
}

pub fn run(args: &Args) -> Result<ExitCode, Error> {
    let target = format_named(&args.target.output_format)?;
    let mut opts = CreateOptions::default();
    let mut size = args.size.as_deref().map(parse_size).transpose()?;
    let given_size = size.is_some();
    apply_options(&args.target.options, &mut opts, &mut size)?;
    let image = match (&args.filename, given_size) {
        (None, false) => return Err(bad("Either --size N or one filename must be specified.")),
        (Some(_), true) => return Err(bad("--size N cannot be used together with a filename.")),
        (None, true) => None,
        (Some(name), false) => Some(args.input.open(name)?),
    };
    let size = image.as_ref().map_or(size.unwrap_or(0), Image::size);
    let (required, fully, bitmaps) = match target {
        Format::Raw => {
            let size = size.next_multiple_of(512);
            (size, size, None)
        }
        Format::Qcow2 => {
            opts.size = size;
            opts.check()?;
            let t = Target {
                cluster_size: opts.cluster_size,
                refcount_bits: opts.refcount_bits,
                extended_l2: opts.extended_l2,
            };
            let virtual_size = size.next_multiple_of(t.cluster_size);
            let fully = fully_allocated(size, t);
            let data = match (&image, opts.preallocation) {
                (_, Preallocation::Full | Preallocation::Falloc) => virtual_size,
                (Some(image), _) => data_clusters(image, t.cluster_size)? * t.cluster_size,
                (None, _) => 0,
            };
            // Only a version 3 qcow2 source and target both keep persistent bitmaps.
            let bitmaps = match image.as_ref().map(Image::top) {
                Some(Layer::Qcow2(q)) if opts.version >= 3 && q.header().v3.is_some() => {
                    let list = read_directory(q.storage(), q.header())?;
                    Some(bitmaps_size(&list, size, t.cluster_size))
                }
                _ => None,
            };
            (fully - virtual_size + data, fully, bitmaps)
        }
        other => {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "Block driver '{}' does not support size measurement",
                    other.name()
                ),
            ))
        }
    };
    let text = if args.output == "json" {
        let mut fields = Vec::new();
        if let Some(b) = bitmaps {
            fields.push(("bitmaps", Json::int(b)));
        }
        fields.push(("required", Json::int(required)));
        fields.push(("fully-allocated", Json::int(fully)));
        Json::Object(fields).pretty() + "\n"
    } else {
        let mut text = format!("required size: {required}\nfully allocated size: {fully}\n");
        if let Some(b) = bitmaps {
            text += &format!("bitmaps size: {b}\n");
        }
        text
    };
    crate::print_out(&text);
    Ok(ExitCode::SUCCESS)
}

/// Clusters of the target's size holding any data of the source (zeros and holes need
/// none), as QEMU counts them from block status.
fn data_clusters(image: &Image, cs: u64) -> Result<u64, Error> {
    let mut count = 0;
    let mut offset = 0;
    let size = image.size();
    while offset < size {
        let status = image.block_status(offset, size - offset)?;
        let end = offset + status.len;
        if status.data && !status.zero {
            let first = offset / cs;
            let last = end.div_ceil(cs);
            count += last - first;
            offset = (last * cs).min(size);
        } else {
            offset = end;
        }
    }
    Ok(count)
}
