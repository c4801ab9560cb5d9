//! `cowimg partitions`: the guest disk's partition table (GPT or MBR), with offsets in
//! bytes, so that nobody computes them by hand.

use crate::flags::OutputArgs;
use crate::source::SnapshotSourceArgs;
use cowimg::partitions::partitions;
use cowimg::report::Json;
use cowimg::Error;
use std::fmt::Write;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    input: SnapshotSourceArgs,
    #[command(flatten)]
    output: OutputArgs,
    /// The image file.
    filename: String,
}

pub fn run(args: &Args) -> Result<ExitCode, Error> {
    let image = args.input.open(&args.filename)?;
    let (kind, list) = partitions(&image)?;
    let text = if args.output.json() {
        let entries = list
            .iter()
            .map(|p| {
                Json::Object(vec![
                    ("number", Json::int(p.number)),
                    ("start", Json::int(p.start)),
                    ("length", Json::int(p.len)),
                    ("type", Json::str(&p.kind)),
                    ("name", Json::str(&p.name)),
                    ("bootable", Json::Bool(p.bootable)),
                ])
            })
            .collect();
        Json::Object(vec![
            ("label", Json::str(kind.name())),
            ("partitions", Json::Array(entries)),
        ])
        .pretty()
            + "\n"
    } else {
        let mut out = format!("label: {}\n", kind.name());
        let _ = writeln!(
            out,
            "{:>3} {:>14} {:>14}  {:<36} name",
            "#", "start", "length", "type"
        );
        for p in &list {
            let _ = writeln!(
                out,
                "{:>3} {:>14} {:>14}  {:<36} {}{}",
                p.number,
                p.start,
                p.len,
                p.kind,
                p.name,
                if p.bootable { " (boot)" } else { "" }
            );
        }
        out
    };
    crate::print_out(&text);
    Ok(ExitCode::SUCCESS)
}
