//! `cowimg snapshot`: list, create, apply and delete internal snapshots.

use crate::source::SourceArgs;
use cowimg::{Backing, Error, ErrorKind, Format, Image};
use std::process::ExitCode;

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("action").args(["list", "create", "apply", "delete"])))]
pub struct Args {
    #[command(flatten)]
    source: SourceArgs,
    /// List the snapshots.
    #[arg(short = 'l', long = "list")]
    list: bool,
    /// Create a snapshot with this name.
    #[arg(short = 'c', long = "create", value_name = "SNAPSHOT")]
    create: Option<String>,
    /// Make this snapshot (id or name) the current state.
    #[arg(short = 'a', long = "apply", value_name = "SNAPSHOT")]
    apply: Option<String>,
    /// Delete the snapshot of this name (qemu-img takes no ID here).
    #[arg(short = 'd', long = "delete", value_name = "SNAPSHOT")]
    delete: Option<String>,
    /// Quiet.
    #[arg(short = 'q', long = "quiet")]
    quiet: bool,
    /// The image file.
    filename: String,
}

pub fn run(args: &Args) -> Result<ExitCode, Error> {
    let (path, mut options) = args.source.resolve(&args.filename)?;
    options.backing = Backing::Ignore;
    let writing =
        !args.list && (args.create.is_some() || args.apply.is_some() || args.delete.is_some());
    if writing {
        // Snapshots exist only in qcow2; the format of an image being changed must be
        // known, and a qcow2 header says what it is unambiguously.
        if options.format.is_none() {
            let storage = cowimg::image::open_file(&path, false, true)?;
            if cowimg::probe(&storage).map_err(|e| Error::io("probing", e))? != Format::Qcow2 {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    "snapshots need a qcow2 image",
                ));
            }
            options.format = Some(Format::Qcow2);
        }
        options.writable = true;
    } else {
        options.metadata_only = true;
    }
    let mut image = crate::source::opened(&args.filename, Image::open(&path, &options))?;
    if let Some(name) = &args.create {
        image
            .snapshot_create(name)
            .map_err(|e| e.context(format_args!("Could not create snapshot '{name}'")))?;
    } else if let Some(name) = &args.apply {
        image
            .snapshot_apply(name)
            .map_err(|e| e.context(format_args!("Could not apply snapshot '{name}'")))?;
    } else if let Some(name) = &args.delete {
        // By name only, as qemu-img deletes: "-d 1" does not mean the snapshot with ID 1.
        let id = image
            .snapshot_names()
            .into_iter()
            .find(|(_, n)| n == name)
            .map(|(id, _)| id)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::BadArgument,
                    format!("Could not delete snapshot '{name}': snapshot not found"),
                )
            })?;
        image.snapshot_delete(&id)?;
    } else {
        let snapshots = image.snapshots();
        if !snapshots.is_empty() {
            crate::print_out(&format!(
                "Snapshot list:\n{}",
                crate::info::snapshot_table(snapshots)
            ));
        }
        return Ok(ExitCode::SUCCESS);
    }
    // Closed, not dropped: what closing stores (bitmaps) can fail, and says so.
    image.close()?;
    Ok(ExitCode::SUCCESS)
}
