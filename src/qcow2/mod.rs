//! qcow2, versions 2 and 3.

pub mod header;

pub use header::Header;
