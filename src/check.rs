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

use crate::error::{Error, ErrorKind, Result};
use crate::format::qcow2::incompatible;
use crate::image::{Image, Layer};

impl Image {
    /// Checks the image's own file (not its backing files) as `qemu-img check` does,
    /// repairing nothing. Only qcow2 images can be checked.
    pub fn check(&self) -> Result<CheckResult> {
        let Layer::Qcow2(q) = self.top() else {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "This image format does not support checks",
            ));
        };
        let data_file = q.header().incompatible_features() & incompatible::DATA_FILE != 0;
        check(q.storage(), data_file, Repair::None)
    }
}
