//! qcow, version 1.

pub mod header;

pub use header::Header;
