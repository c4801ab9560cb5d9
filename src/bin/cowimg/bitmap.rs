//! `cowimg bitmap`: add, remove, clear, enable, disable and merge a qcow2 image's
//! persistent bitmaps, as `qemu-img bitmap` does (the actions run in the order given,
//! on the one bitmap named).

use crate::source::SourceArgs;
use cowimg::image::BitmapChange;
use cowimg::{Backing, Error, ErrorKind, Image};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    source: SourceArgs,
    /// Add the bitmap (no bit set; enabled unless --disable follows).
    #[arg(long = "add")]
    add: bool,
    /// Remove the bitmap.
    #[arg(long = "remove")]
    remove: bool,
    /// Clear every bit.
    #[arg(long = "clear")]
    clear: bool,
    /// Let guest writes mark the bitmap.
    #[arg(long = "enable")]
    enable: bool,
    /// Stop guest writes marking the bitmap.
    #[arg(long = "disable")]
    disable: bool,
    /// Set every bit the bitmap SOURCE has set (of this image, or of -b's).
    #[arg(long = "merge", value_name = "SOURCE")]
    merge: Vec<String>,
    /// With --add: bytes one bit covers (a power of two, at least 512).
    #[arg(short = 'g', long = "granularity", value_name = "SIZE")]
    granularity: Option<String>,
    /// With --merge: the image the source bitmap is in.
    #[arg(short = 'b', long = "source-file", value_name = "SOURCE_FILE")]
    source_file: Option<String>,
    /// The format of that image.
    #[arg(short = 'F', long = "source-format", value_name = "SOURCE_FMT")]
    source_format: Option<String>,
    /// The image, then the bitmap's name.
    #[arg(value_name = "FILENAME BITMAP")]
    files: Vec<String>,
}

/// One action, in command-line order.
#[derive(Clone, Copy)]
enum Action<'a> {
    Add,
    Remove,
    Clear,
    Enable,
    Disable,
    Merge(&'a str),
}

impl Action<'_> {
    fn name(&self) -> &'static str {
        match self {
            Action::Add => "add",
            Action::Remove => "remove",
            Action::Clear => "clear",
            Action::Enable => "enable",
            Action::Disable => "disable",
            Action::Merge(_) => "merge",
        }
    }
}

fn bad(message: &str) -> Error {
    Error::new(ErrorKind::BadArgument, message)
}

/// The actions in the order the command line gave them (`matches` says where each flag
/// stood).
fn actions<'a>(args: &'a Args, matches: &clap::ArgMatches) -> Vec<Action<'a>> {
    // Flags left out still have (default) values; only those given count.
    let at = |id: &str| -> Vec<usize> {
        match matches.value_source(id) {
            Some(clap::parser::ValueSource::CommandLine) => matches
                .indices_of(id)
                .map(|i| i.collect())
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    };
    let mut ordered: Vec<(usize, Action<'a>)> = Vec::new();
    let flags = [
        ("add", Action::Add),
        ("remove", Action::Remove),
        ("clear", Action::Clear),
        ("enable", Action::Enable),
        ("disable", Action::Disable),
    ];
    for (id, action) in flags {
        ordered.extend(at(id).into_iter().map(|i| (i, action)));
    }
    let merges = at("merge").into_iter().zip(&args.merge);
    ordered.extend(merges.map(|(i, source)| (i, Action::Merge(source.as_str()))));
    ordered.sort_by_key(|(i, _)| *i);
    ordered.into_iter().map(|(_, a)| a).collect()
}

pub fn run(args: &Args, matches: &clap::ArgMatches) -> Result<ExitCode, Error> {
    let actions = actions(args, matches);
    if actions.is_empty() {
        return Err(bad(
            "Need at least one of --add, --remove, --clear, --enable, --disable, or --merge",
        ));
    }
    if args.granularity.is_some() && !args.add {
        return Err(bad("granularity only supported with --add"));
    }
    if args.source_format.is_some() && args.source_file.is_none() {
        return Err(bad("-F only supported with -b"));
    }
    if args.source_file.is_some() && args.merge.is_empty() {
        return Err(bad("Merge bitmap source file only supported with --merge"));
    }
    let [filename, bitmap] = args.files.as_slice() else {
        return Err(bad("Expecting filename and bitmap name"));
    };
    let granularity = args
        .granularity
        .as_deref()
        .map(|g| {
            crate::create::parse_size(g)
                .map_err(|_| bad(&format!("Invalid granularity specified: '{g}'.")))
        })
        .transpose()?;
    let mut image = args.source.open_writable(filename, Backing::Ignore)?;
    let source = match &args.source_file {
        Some(name) => {
            let mut source = args.source.clone();
            source.format = args.source_format.clone();
            source.image_opts = false;
            Some(source.open_metadata(name)?)
        }
        None => None,
    };
    for action in &actions {
        let done = match action {
            Action::Add => image.change_bitmap(
                bitmap,
                BitmapChange::Add {
                    granularity,
                    enabled: true,
                },
            ),
            Action::Remove => image.change_bitmap(bitmap, BitmapChange::Remove),
            Action::Clear => image.change_bitmap(bitmap, BitmapChange::Clear),
            Action::Enable => image.change_bitmap(bitmap, BitmapChange::Enable),
            Action::Disable => image.change_bitmap(bitmap, BitmapChange::Disable),
            Action::Merge(from) => source
                .as_ref()
                .unwrap_or(&image)
                .bitmap_content(from)
                .and_then(|content| image.change_bitmap(bitmap, BitmapChange::Merge(&content))),
        };
        if let Err(e) = done {
            complain!(
                "Operation {} on bitmap {bitmap} failed: {}",
                action.name(),
                crate::shown(&e)
            );
            close(image);
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(match close(image) {
        true => ExitCode::SUCCESS,
        false => ExitCode::FAILURE,
    })
}

/// Closes the image, saying so when storing it back failed (as qemu-img does).
fn close(image: Image) -> bool {
    match image.close() {
        Ok(()) => true,
        Err(e) => {
            complain!("Error while closing the image: {}", crate::shown(&e));
            false
        }
    }
}
