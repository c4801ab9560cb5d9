//! `cowimg carve IMG OUTDIR`: every run of host clusters the image's current state does
//! not reach, written to OUTDIR with its host offset in the name, each snapshot's saved
//! VM state as its own file, and a manifest (carve.json) saying why each run is
//! unreferenced and where it was in the guest when a snapshot or stale table says.

use crate::flags::ReportArgs;
use cowimg::carve::{carve, read_vm_state, vm_states, Piece};
use cowimg::report::Json;
use cowimg::storage::Storage;
use cowimg::{Backing, Error, Image};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    report: ReportArgs,
    /// The image file.
    filename: String,
    /// Where to write the carved runs (created if missing).
    outdir: PathBuf,
}

pub fn run(args: &Args) -> Result<ExitCode, Error> {
    let (path, mut options) = args.report.source.resolve(&args.filename)?;
    options.backing = Backing::Ignore;
    let io_options = options.clone();
    options.metadata_only = true;
    let image = crate::source::opened(&args.filename, Image::open(&path, &options))?;
    let runs = carve(&image)?;
    // A snapshot entry with impossible sizes costs the VM states, not the carving.
    let (states, mut failed) = match vm_states(&image) {
        Ok(states) => (states, false),
        Err(e) => {
            complain!("VM states not extracted: {e}");
            (Vec::new(), true)
        }
    };
    drop(image);
    std::fs::create_dir_all(&args.outdir)
        .map_err(|e| Error::io(format!("creating '{}'", args.outdir.display()), e))?;
    let file = cowimg::image::open_file(&path, false, false)?;
    let mut entries = Vec::new();
    let mut text = format!(
        "{:>14} {:>10}  {:<22} {}\n",
        "host offset", "length", "why", "file"
    );
    for r in &runs {
        let name = format!("{:016x}-{}.bin", r.host, r.reason.name());
        copy_run(&file, r.host, r.len, &args.outdir.join(&name))?;
        let mut fields = vec![
            ("file", Json::str(&name)),
            ("host-offset", Json::int(r.host)),
            ("length", Json::int(r.len)),
            ("reason", Json::str(r.reason.name())),
        ];
        let mut why = r.reason.name().to_string();
        if let Some(id) = &r.snapshot {
            fields.push(("snapshot-id", Json::str(id)));
            why = format!("{why}, snapshot {id}");
        }
        if let Some(table) = r.stale_table {
            fields.push(("stale-table-offset", Json::int(table)));
            why = format!("{why}, stale table at {table}");
        }
        if let Some(guest) = r.guest {
            fields.push(("guest-offset", Json::int(guest)));
            why = format!("{why}, guest {guest}");
        }
        text.push_str(&format!(
            "{:>14} {:>10}  {:<22} {name}\n",
            r.host, r.len, why
        ));
        entries.push(Json::Object(fields));
    }
    let mut vm_entries = Vec::new();
    if !states.is_empty() {
        // Reading the state's data may need what a metadata open does not (a key).
        let image = Image::open(&path, &io_options)?;
        for s in &states {
            let name = format!("vmstate-{}.bin", s.snapshot_id);
            let out = args.outdir.join(&name);
            if let Err(e) = write_vm_state(&image, &s.snapshot_id, &out) {
                complain!("VM state of snapshot {}: {e}", s.snapshot_id);
                failed = true;
                continue;
            }
            text.push_str(&format!(
                "VM state of snapshot {} ({}): {} bytes in {name}\n",
                s.snapshot_id, s.snapshot_name, s.len
            ));
            vm_entries.push(Json::Object(vec![
                ("file", Json::str(&name)),
                ("snapshot-id", Json::str(&s.snapshot_id)),
                ("snapshot-name", Json::str(&s.snapshot_name)),
                ("offset", Json::int(s.offset)),
                ("length", Json::int(s.len)),
            ]));
        }
    }
    let manifest = Json::Object(vec![
        (
            "image",
            Json::str(cowimg::storage::display_url(&path.to_string_lossy())),
        ),
        ("carved", Json::Array(entries)),
        ("vm-states", Json::Array(vm_entries)),
    ])
    .pretty()
        + "\n";
    write_file(&args.outdir.join("carve.json"), manifest.as_bytes())?;
    crate::print_out(if args.report.output.json() {
        &manifest
    } else {
        &text
    });
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Writes one snapshot's VM state to `path`, its unallocated runs as holes.
fn write_vm_state(image: &Image, id: &str, path: &Path) -> Result<(), Error> {
    let mut f = std::fs::File::create(path)
        .map_err(|e| Error::io(format!("creating '{}'", path.display()), e))?;
    let mut at = 0u64;
    read_vm_state(image, id, |piece| {
        let written = match piece {
            Piece::Data(bytes) => f.write_all(bytes).map(|_| bytes.len() as u64),
            Piece::Zeros(n) => f.seek(SeekFrom::Current(n as i64)).map(|_| n),
        };
        at += written.map_err(|e| Error::io(format!("writing '{}'", path.display()), e))?;
        Ok(())
    })?;
    f.set_len(at)
        .map_err(|e| Error::io(format!("writing '{}'", path.display()), e))
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    std::fs::write(path, bytes).map_err(|e| Error::io(format!("writing '{}'", path.display()), e))
}

/// Copies `len` bytes at `host` of `file` into a new file at `path`, a piece at a time
/// (a run of free clusters may be most of the image).
fn copy_run(file: &dyn Storage, host: u64, len: u64, path: &Path) -> Result<(), Error> {
    let mut out = std::fs::File::create(path)
        .map_err(|e| Error::io(format!("creating '{}'", path.display()), e))?;
    let mut buf = vec![0u8; len.min(4 << 20) as usize];
    let mut done = 0;
    while done < len {
        let piece = &mut buf[..(len - done).min(4 << 20) as usize];
        file.read_zero_padded(piece, host + done).map_err(|e| {
            Error::io(
                format!("reading {} bytes at {}", piece.len(), host + done),
                e,
            )
        })?;
        out.write_all(piece)
            .map_err(|e| Error::io(format!("writing '{}'", path.display()), e))?;
        done += piece.len() as u64;
    }
    Ok(())
}
