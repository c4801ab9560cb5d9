//! cowimg reads, writes, checks and converts QEMU's copy-on-write disk images: UML cow,
//! qcow (version 1), qcow2 (versions 2 and 3) and raw.
//!
//! Data flows one way: bytes ([`storage`]) → typed views ([`format`], generated from
//! `spec/`) → each format's runtime ([`qcow2`], [`qcow`], [`cow`]), which knows
//! clusters → the caller.

pub mod codec;
pub mod cow;
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
pub mod storage;
pub mod tables;

pub use error::{Error, ErrorKind, Result};
pub use image::{Backing, BlockStatus, Image, OpenOptions};
pub use probe::{probe, Format};
