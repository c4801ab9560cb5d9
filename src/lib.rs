//! cowimg reads, writes, checks and converts QEMU's copy-on-write disk images: UML cow,
//! qcow (version 1), qcow2 (versions 2 and 3) and raw.
//!
//! Data flows one way: bytes ([`storage`]) → typed views ([`format`](mod@format),
//! generated from `spec/`) → each format's runtime (qcow2, qcow, cow, raw; private),
//! which knows clusters → the [`Image`], a chain of layers read as one disk → the
//! caller. What qemu-img reports is computed here too: [`Image::info`],
//! [`check::check`], [`measure::measure`].
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

/// `Debug` for a type that shows only the named fields (the rest hold files, caches
/// or locks that say nothing useful): `debug_fields!(Cow: header)`.
macro_rules! debug_fields {
    ($ty:ident: $($field:ident),+) => {
        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($ty))
                    $(.field(stringify!($field), &self.$field))+
                    .finish_non_exhaustive()
            }
        }
    };
}

/// Builder methods that set the option of the same name: `plain` ones take the value,
/// `optional` ones anything that converts into an `Option` of it.
macro_rules! setters {
    (plain { $($(#[$doc:meta])* $name:ident: $ty:ty;)* } optional { $($(#[$odoc:meta])* $oname:ident: $oty:ty;)* }) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, $name: $ty) -> Self {
                self.$name = $name;
                self
            }
        )*
        $(
            $(#[$odoc])*
            pub fn $oname(mut self, $oname: impl Into<Option<$oty>>) -> Self {
                self.$oname = $oname.into();
                self
            }
        )*
    };
}

pub mod carve;
pub mod check;
mod codec;
pub mod compare;
mod compressed;
pub mod convert;
pub mod copy;
mod cow;
pub mod create;
pub mod error;
pub mod format;
#[cfg(feature = "fuzzing")]
pub mod fuzz;
pub mod hash;
pub mod header;
pub mod image;
pub mod info;
mod l2cache;
mod luks;
pub mod mapping;
pub mod measure;
pub mod nbd;
pub mod partitions;
mod probe;
mod qcow;
mod qcow2;
mod raw;
pub mod report;
mod secret;
mod sector_io;
mod shared;
pub mod storage;
mod tables;

pub use codec::Compression;
pub use create::{Compat, CreateOptions, Preallocation};
pub use error::{Error, ErrorKind, Result};
pub use image::{Backing, BlockStatus, Image, ImageReader, ImageWriter, OpenOptions};
pub use probe::{probe, Format};
pub use qcow2::{BitmapContent, CacheSizes, Snapshot, SnapshotRef};
pub use secret::Secret;
pub use shared::SharedImage;
