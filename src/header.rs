//! Each format's header as parsed from the first bytes of a file, every field checked
//! as QEMU checks it: for tools that look at a file without opening it as an image.

/// The UML cow header, in whichever of its layouts the file has.
pub use crate::cow::Header as Cow;
/// The qcow (version 1) header and backing file name.
pub use crate::qcow::Header as Qcow;
/// One qcow2 header extension as found on disk.
pub use crate::qcow2::header::Extension as Qcow2Extension;
/// The qcow2 header: version 2 and 3 parts, extensions, backing file name.
pub use crate::qcow2::Header as Qcow2;
