//! UML copy-on-write files (versions 1, 2, 3) and QEMU's old cow layout.

pub mod create;
pub mod header;
pub mod layer;

pub use header::Header;
pub use layer::Cow;
