//! Which format a file holds, from its first bytes, as QEMU's probes decide.

use crate::format::luks::LuksHeader;
use crate::format::qcow::QcowHeader;
use crate::format::qcow2::Qcow2Header;
use crate::storage::Storage;
use std::fmt;
use std::io;

/// The formats cowimg knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Format {
    /// QEMU's native copy-on-write format, versions 2 and 3.
    Qcow2,
    /// The older qcow format (version 1).
    Qcow,
    /// User-mode Linux copy-on-write files.
    Cow,
    /// A plain disk image: the guest bytes, nothing else.
    Raw,
    /// A LUKS1 volume: the guest bytes encrypted after a LUKS header.
    Luks,
}

impl Format {
    /// The name qemu-img uses (`-f` values and the `format` key of its JSON).
    pub fn name(self) -> &'static str {
        match self {
            Format::Qcow2 => "qcow2",
            Format::Qcow => "qcow",
            Format::Cow => "cow",
            Format::Raw => "raw",
            Format::Luks => "luks",
        }
    }

    /// Whether a newly created image of this format reads as zeros where nothing was
    /// written (a LUKS volume's unwritten sectors decrypt to noise).
    pub fn zero_initialised(self) -> bool {
        self != Format::Luks
    }

    /// The format named `name`, as `-f` takes it.
    pub fn from_name(name: &str) -> Option<Format> {
        [
            Format::Qcow2,
            Format::Qcow,
            Format::Cow,
            Format::Raw,
            Format::Luks,
        ]
        .into_iter()
        .find(|f| f.name() == name)
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Guesses the format: "QFI\xfb" with version 1 is qcow and with a higher version
/// qcow2; the cow magic in either byte order is cow; "LUKS\xba\xbe" with version 1
/// is luks; anything else is raw. A guess is
/// for reading only: writing needs the format stated.
pub fn probe(storage: &dyn Storage) -> io::Result<Format> {
    let mut head = [0u8; 8];
    let got = storage.read_full(&mut head, 0)?;
    if got < 8 {
        return Ok(Format::Raw);
    }
    let magic = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let version = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    Ok(match magic {
        QcowHeader::MAGIC_REQUIRED if version == 1 => Format::Qcow,
        LuksHeader::MAGIC_REQUIRED
            if u16::from_be_bytes([head[4], head[5]]) == LuksHeader::MAGIC_TAIL_REQUIRED
                && u16::from_be_bytes([head[6], head[7]]) == LuksHeader::VERSION_REQUIRED =>
        {
            Format::Luks
        }
        Qcow2Header::MAGIC_REQUIRED if version >= 2 => Format::Qcow2,
        // cow: the magic in either byte order with a version it has (1 is host-endian).
        crate::cow::header::MAGIC if (1..=3).contains(&version) => Format::Cow,
        _ if u32::from_le_bytes([head[0], head[1], head[2], head[3]])
            == crate::cow::header::MAGIC
            && u32::from_le_bytes([head[4], head[5], head[6], head[7]]) == 1 =>
        {
            Format::Cow
        }
        _ => Format::Raw,
    })
}
