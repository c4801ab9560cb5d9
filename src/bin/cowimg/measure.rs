//! `cowimg measure`: how large a new image would be, with qemu-img's arithmetic.

use crate::create::{apply_options, parse_size};
use crate::flags::OutputArgs;
use crate::source::{format_named, SnapshotSourceArgs, TargetArgs};
use cowimg::create::CreateOptions;
use cowimg::measure::measure;
use cowimg::report::Json;
use cowimg::{Error, ErrorKind};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    input: SnapshotSourceArgs,
    #[command(flatten)]
    target: TargetArgs,
    /// Measure an empty image of this size instead of an existing image.
    #[arg(short = 's', long = "size", value_name = "SIZE")]
    size: Option<String>,
    #[command(flatten)]
    output: OutputArgs,
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
    // As qemu-img, a LUKS target wants its key-secret even to be measured.
    let secrets = args.input.source.secrets()?;
    apply_options(
        &args.target.options,
        target,
        &mut opts,
        &mut size,
        Some(&secrets),
    )?;
    let image = match (&args.filename, given_size) {
        (None, false) => return Err(bad("Either --size N or one filename must be specified.")),
        (Some(_), true) => return Err(bad("--size N cannot be used together with a filename.")),
        (None, true) => None,
        (Some(name), false) => Some(args.input.open(name)?),
    };
    opts.size = size.unwrap_or(0);
    let m = measure(image.as_ref(), target, &opts)?;
    let (required, fully, bitmaps) = (m.required, m.fully_allocated, m.bitmaps);
    let text = if args.output.json() {
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
