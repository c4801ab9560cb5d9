//! Carving: the parts of an image's file its current state does not reach (freed,
//! leaked, held only by snapshots, past the last allocation, stale tables), where
//! deleted data lives; and each snapshot's saved VM state, for memory forensics.
//! qcow2 only; the file is only read.

use crate::error::{Error, ErrorKind, Result};
use crate::image::{Image, Layer};
use crate::qcow2::Qcow2;

pub use crate::qcow2::carve::{Carved, Piece, Reason};

/// The qcow2 file on top of `image`, or why carving has nothing to look at.
fn qcow2(image: &Image) -> Result<&Qcow2> {
    match image.top() {
        Layer::Qcow2(q) => Ok(q),
        _ => Err(Error::new(
            ErrorKind::Unsupported,
            "carving needs a qcow2 image (other formats keep no freed clusters or VM state)",
        )),
    }
}

/// The non-zero runs of host clusters of `image`'s own file that its current state
/// does not reach, with why, in host order.
pub fn carve(image: &Image) -> Result<Vec<Carved>> {
    crate::qcow2::carve::carve(qcow2(image)?)
}

/// A snapshot's saved VM state (the guest's RAM and device state `savevm` wrote).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct VmState {
    /// The snapshot's ID.
    pub snapshot_id: String,
    /// The snapshot's name.
    pub snapshot_name: String,
    /// Where the state starts in the snapshot's tree (past its disk).
    pub offset: u64,
    /// Its length in bytes.
    pub len: u64,
}

/// The snapshots of `image`'s top file that saved a VM state, in table order; an
/// error naming the entry when one's sizes are impossible.
pub fn vm_states(image: &Image) -> Result<Vec<VmState>> {
    let q = qcow2(image)?;
    let mut states = Vec::new();
    for (i, s) in q.snapshots().iter().enumerate() {
        if let Some((offset, len)) = crate::qcow2::carve::vm_state_range(q, i)? {
            states.push(VmState {
                snapshot_id: s.id.clone(),
                snapshot_name: s.name.clone(),
                offset,
                len,
            });
        }
    }
    Ok(states)
}

/// Hands the saved VM state of the snapshot with ID `snapshot_id` to `sink`, in order,
/// in pieces.
pub fn read_vm_state(
    image: &Image,
    snapshot_id: &str,
    mut sink: impl FnMut(Piece) -> Result<()>,
) -> Result<()> {
    let q = qcow2(image)?;
    let index = q
        .snapshots()
        .iter()
        .position(|s| s.id == snapshot_id)
        .ok_or_else(|| {
            Error::new(
                ErrorKind::BadArgument,
                format!("Can't find snapshot with id '{snapshot_id}'"),
            )
        })?;
    crate::qcow2::carve::read_vm_state(q, index, &mut sink)
}
