//! UML copy-on-write files (versions 1, 2, 3) and QEMU's old cow layout.

pub mod header;

pub use header::Header;
