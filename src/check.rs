//! `qemu-img check` for qcow2: every cluster's references counted from the metadata and
//! compared with its refcount, with QEMU's classification and messages, and repairs.
//!
//! ```no_run
//! use cowimg::check::{check, Repair};
//! use cowimg::storage::FileStorage;
//!
//! let storage = FileStorage::open("disk.qcow2".as_ref(), false)?;
//! let report = check(&storage, false, Repair::None)?;
//! println!("{} corruptions, {} leaks", report.corruptions, report.leaks);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub use crate::qcow2::check::{check, check_with_progress, CheckResult, Repair};
