//! `cowimg info`: what an image is, in qemu-img's words.

use crate::human;
use cowimg::format::qcow2::ExtensionMagic;
use cowimg::qcow2::header::{autoclear, compat, incompat};
use cowimg::storage::FileStorage;
use cowimg::{cow, qcow, qcow2, Error, ErrorKind, Format};
use std::fmt::Write;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Image format (qcow2, qcow, cow, raw); probed when absent.
    #[arg(short = 'f', long = "format")]
    format: Option<String>,
    /// Also print every header field as parsed.
    #[arg(long)]
    header: bool,
    /// The image file.
    filename: PathBuf,
}

pub fn run(args: &Args) -> Result<ExitCode, Error> {
    let path = &args.filename;
    let storage = FileStorage::open(path, false)
        .map_err(|e| Error::io(format!("Could not open '{}'", path.display()), e))?;
    let format = match &args.format {
        Some(name) => Format::from_name(name).ok_or_else(|| {
            Error::new(
                ErrorKind::BadArgument,
                format!("Unknown file format '{name}'"),
            )
        })?,
        None => cowimg::probe(&storage).map_err(|e| Error::io("probing the image format", e))?,
    };
    let disk_size = std::fs::metadata(path)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0);
    let mut out = String::new();
    let _ = writeln!(out, "image: {}\nfile format: {format}", path.display());
    let size_line = |out: &mut String, size: u64| {
        let _ = writeln!(
            out,
            "virtual size: {} ({size} bytes)\ndisk size: {}",
            human::size(size),
            human::size(disk_size)
        );
    };
    match format {
        Format::Qcow2 => {
            let h = qcow2::Header::read(&storage)?;
            size_line(&mut out, h.common.size / 512 * 512);
            let _ = writeln!(out, "cluster_size: {}", h.cluster_size());
            if let Some(name) = &h.backing_file {
                let _ = writeln!(out, "backing file: {}", String::from_utf8_lossy(name));
            }
            if let Some(fmt) = h.backing_format() {
                let _ = writeln!(out, "backing file format: {}", String::from_utf8_lossy(fmt));
            }
            if h.common.crypt_method != 0 {
                out.push_str("encrypted: yes\n");
            }
            out.push_str("Format specific information:\n");
            let v3 = h.version() >= 3;
            let _ = writeln!(out, "    compat: {}", if v3 { "1.1" } else { "0.10" });
            let _ = writeln!(
                out,
                "    compression type: {}",
                if h.compression_type() == 1 {
                    "zstd"
                } else {
                    "zlib"
                }
            );
            if v3 {
                let _ = writeln!(
                    out,
                    "    lazy refcounts: {}",
                    h.compatible_features() & compat::LAZY_REFCOUNTS != 0
                );
            }
            if h.extension(ExtensionMagic::Bitmaps).is_some()
                && h.autoclear_features() & autoclear::BITMAPS != 0
            {
                out.push_str("    bitmaps: present\n");
            }
            let _ = writeln!(out, "    refcount bits: {}", 1u32 << h.refcount_order());
            if let Some(name) = h.data_file() {
                let _ = writeln!(out, "    data file: {}", String::from_utf8_lossy(name));
                let _ = writeln!(
                    out,
                    "    data file raw: {}",
                    h.autoclear_features() & autoclear::DATA_FILE_RAW != 0
                );
            }
            if v3 {
                let _ = writeln!(
                    out,
                    "    corrupt: {}",
                    h.incompatible_features() & incompat::CORRUPT != 0
                );
            }
            if v3 {
                let _ = writeln!(
                    out,
                    "    extended l2: {}",
                    h.incompatible_features() & incompat::EXTENDED_L2 != 0
                );
            }
            if args.header {
                let _ = writeln!(out, "Header:\n{h:#?}");
            }
        }
        Format::Qcow => {
            let h = qcow::Header::read(&storage)?;
            size_line(&mut out, h.virtual_size());
            let _ = writeln!(out, "cluster_size: {}", 1u32 << h.cluster_bits());
            if let Some(name) = &h.backing_file {
                let _ = writeln!(out, "backing file: {}", String::from_utf8_lossy(name));
            }
            if h.fields.crypt_method != 0 {
                out.push_str("encrypted: yes\n");
            }
            if args.header {
                let _ = writeln!(out, "Header:\n{h:#?}");
            }
        }
        Format::Cow => {
            let h = cow::Header::read(&storage)?;
            size_line(&mut out, h.size);
            if !h.backing_file.is_empty() {
                let _ = writeln!(
                    out,
                    "backing file: {}",
                    String::from_utf8_lossy(&h.backing_file)
                );
            }
            let _ = writeln!(out, "cow layout: {}", h.layout_name());
            if args.header {
                let _ = writeln!(out, "Header:\n{h:#?}");
            }
        }
        Format::Raw => {
            let len = std::fs::metadata(path)
                .map_err(|e| Error::io("reading the file size", e))?
                .len();
            size_line(&mut out, len);
        }
    }
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}
