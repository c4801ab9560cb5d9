//! cowimg reads, writes, checks and converts QEMU's copy-on-write disk images: UML cow,
//! qcow (version 1), qcow2 (versions 2 and 3) and raw.
//!
//! Data flows one way: bytes ([`storage`]) → typed views ([`format`], generated from
//! `spec/`) → each format's runtime, which knows clusters → the caller.

pub mod error;
pub mod format;
pub mod storage;

pub use error::{Error, ErrorKind, Result};
