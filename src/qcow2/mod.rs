//! qcow2, versions 2 and 3.

pub mod bitmap_writer;
pub mod bitmaps;
pub(crate) mod carve;
pub mod check;
pub mod create;
pub mod edit;
mod entry;
mod geometry;
pub mod header;
mod header_fields;
pub mod layer;
pub mod measure;
mod open;
pub mod refcount;
mod resize;
pub mod snapshot;
mod snapshot_ops;
mod vm_state;
pub mod write;
mod writeback;
mod zeros;

pub use bitmap_writer::BitmapContent;
pub use header::Header;
pub use layer::Qcow2;
pub use open::{CacheSizes, Qcow2Options, SnapshotRef};
pub use snapshot::Snapshot;
