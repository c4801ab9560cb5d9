//! `cowimg dd`: dd's operands (bs, count, skip, if, of) over images, as qemu-img dd.

use crate::create::parse_size;
use crate::source::{format_named, SourceArgs};
use cowimg::copy::copy_into;
use cowimg::create::create_file;
use cowimg::create::CreateOptions;
use cowimg::{Backing, Error, ErrorKind, Format, Image, OpenOptions};
use std::path::Path;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    source: SourceArgs,
    /// Format of the output (default raw).
    #[arg(
        short = 'O',
        long = "output-format",
        value_name = "OUTPUT_FMT",
        default_value = "raw"
    )]
    output_format: String,
    /// Operands: if=INPUT of=OUTPUT [bs=BLOCK_SIZE] [count=BLOCKS] [skip=BLOCKS].
    #[arg(value_name = "OPERAND")]
    operands: Vec<String>,
}

fn bad(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::BadArgument, message)
}

/// What the operands ask for.
#[derive(Debug, Default)]
struct Operands {
    input: Option<String>,
    output: Option<String>,
    block_size: Option<u64>,
    count: Option<u64>,
    skip: Option<u64>,
}

fn parse_operands(texts: &[String]) -> Result<Operands, Error> {
    let mut ops = Operands::default();
    // count and skip are plain block counts, from 0 to INT64_MAX.
    let blocks = |name: &str, value: &str| -> Result<u64, Error> {
        let n: i128 = value
            .parse()
            .map_err(|_| bad(format!("Invalid {name} specified: '{value}'.")))?;
        u64::try_from(n)
            .ok()
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| {
                bad(format!(
                    "Invalid {name} specified. Must be between 0 and {}.",
                    i64::MAX
                ))
            })
    };
    for text in texts {
        let Some((key, value)) = text.split_once('=') else {
            return Err(bad(format!("unrecognized operand {text}")));
        };
        match key {
            "if" => ops.input = Some(value.to_string()),
            "of" => ops.output = Some(value.to_string()),
            "bs" => {
                let bs = parse_size(value)
                    .map_err(|_| bad(format!("Invalid bs specified: '{value}'.")))?;
                if !(1..=i32::MAX as u64).contains(&bs) {
                    return Err(bad(format!(
                        "Invalid bs specified. Must be between 1 and {}.",
                        i32::MAX
                    )));
                }
                ops.block_size = Some(bs);
            }
            "count" => ops.count = Some(blocks("count", value)?),
            "skip" => ops.skip = Some(blocks("skip", value)?),
            _ => return Err(bad(format!("unrecognized operand {text}"))),
        }
    }
    Ok(ops)
}

pub fn run(args: &Args) -> Result<ExitCode, Error> {
    let ops = parse_operands(&args.operands)?;
    let (Some(input), Some(output)) = (&ops.input, &ops.output) else {
        return Err(bad("Must specify both input and output files"));
    };
    let format = format_named(&args.output_format)?;
    let (path, options) = args.source.resolve(input)?;
    let image = crate::source::opened(input, Image::open(&path, &options))?;
    crate::print_warnings(&image);

    // The output holds `count` blocks (or the whole input), less the skipped ones.
    let bs = ops.block_size.unwrap_or(512);
    let in_size = image.size();
    let mut size = match ops.count {
        Some(count) if count <= in_size / bs => count * bs,
        _ => in_size,
    };
    let from = match ops.skip {
        Some(skip) => {
            let from = skip
                .checked_mul(bs)
                .filter(|&from| from <= size)
                .ok_or_else(|| bad(format!("{input}: cannot skip to specified offset")))?;
            size -= from;
            from
        }
        None => 0,
    };

    let opts = CreateOptions::new(size.next_multiple_of(512));
    let out = Path::new(output);
    cowimg::image::refuse_overwrite(out, &[&image])?;
    create_file(format, out, &opts, 3)?;
    let mut target = Image::open(
        out,
        &OpenOptions::new()
            .format(format)
            .backing(Backing::Ignore)
            .writable(true)
            .barriers(false),
    )?;
    // A qcow target compresses in its own clusters; the others in the ones asked for.
    let cs = match (target.format(), target.cluster_size()) {
        (Format::Qcow, Some(cs)) => cs,
        _ => opts.cluster_size,
    };
    let zero_init = target.format().zero_initialised();
    copy_into(
        &image,
        (from, size),
        (&mut target, 0),
        cs,
        (false, zero_init, cs),
        None,
        &|_| {},
    )?;
    target.flush()?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operands_in_qemu_img_words() {
        let parse = |t: &[&str]| {
            parse_operands(&t.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .map_err(|e| e.to_string())
        };
        let ops = parse(&["if=a", "of=b", "bs=4k", "count=3", "skip=1"]).unwrap();
        assert_eq!(
            (ops.block_size, ops.count, ops.skip),
            (Some(4096), Some(3), Some(1))
        );
        assert!(parse(&["count=1k"])
            .unwrap_err()
            .contains("Invalid count specified: '1k'."));
        assert!(parse(&["skip=-1"])
            .unwrap_err()
            .contains("Must be between 0 and"));
        assert!(parse(&["bs=3G"])
            .unwrap_err()
            .contains("Must be between 1 and 2147483647"));
        assert!(parse(&["ifoo"])
            .unwrap_err()
            .contains("unrecognized operand ifoo"));
    }
}
