//! cowimg reads, writes, checks and converts QEMU's copy-on-write disk images: UML cow,
//! qcow (version 1), qcow2 (versions 2 and 3) and raw.
//!
//! Data flows one way: bytes ([`storage`]) → typed views ([`format`], generated from
//! `spec/`) → each format's runtime ([`qcow2`], [`qcow`], [`cow`]), which knows
//! clusters → the caller.
//!
//! Reading what the guest sees, and where it is stored:
//!
//! ```no_run
//! use cowimg::{Image, OpenOptions};
//!
//! let image = Image::open("disk.qcow2", &OpenOptions::default())?;
//! let mut sector = vec![0u8; 512];
//! image.read_at(&mut sector, 0)?;
//! for range in image.map()? {
//!     println!("{} +{}: data={} zero={}", range.start, range.len, range.data, range.zero);
//! }
//! # Ok::<(), cowimg::Error>(())
//! ```
//!
//! Writing needs the format named (a probed format is never trusted for writing), and
//! errors say what kind of failure they are:
//!
//! ```no_run
//! use cowimg::{ErrorKind, Format, Image, OpenOptions};
//!
//! let options = OpenOptions::new().format(Format::Qcow2).writable(true);
//! match Image::open("disk.qcow2", &options) {
//!     Ok(mut image) => {
//!         image.write_at(&[0xab; 4096], 65536)?;
//!         image.flush()?;
//!     }
//!     Err(e) if e.kind() == ErrorKind::Unsupported => eprintln!("cannot write this image: {e}"),
//!     Err(e) => return Err(e),
//! }
//! # Ok::<(), cowimg::Error>(())
//! ```

pub mod codec;
pub mod copy;
pub mod cow;
pub mod create;
pub mod error;
pub mod format;
pub mod fuzz;
pub mod image;
pub mod mapping;
pub mod probe;
pub mod qcow;
pub mod qcow2;
pub mod raw;
pub mod sector_io;
pub mod shared;
pub mod storage;
pub mod tables;

pub use error::{Error, ErrorKind, Result};
pub use image::{Backing, BlockStatus, Image, ImageReader, ImageWriter, OpenOptions};
pub use probe::{probe, Format};
pub use qcow2::{Snapshot, SnapshotRef};
pub use shared::SharedImage;
