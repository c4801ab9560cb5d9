//! qcow, version 1.

pub mod create;
pub mod header;
pub mod layer;

pub use header::Header;
pub use layer::Qcow;
