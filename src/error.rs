//! One error type for the whole library. Callers branch on [`ErrorKind`]; people read the
//! message, which names the structure, field, file offset and value when a byte on disk
//! is to blame.

use std::fmt;
use std::io;

/// What went wrong, in the terms a caller acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The bytes are not an image of the format asked for (bad magic, impossible field).
    InvalidFormat,
    /// A valid image uses something cowimg refuses to handle (a feature bit, a version).
    Unsupported,
    /// The image's metadata contradicts itself (tables pointing outside the file,
    /// misaligned offsets, overlapping metadata).
    Corrupt,
    /// The storage underneath failed.
    Io,
    /// The caller asked for something impossible (a bad option, a read past the end).
    BadArgument,
    /// Another process (QEMU, or another cowimg) uses the image in a way this use
    /// conflicts with: its lock refuses this open.
    InUse,
}

impl ErrorKind {
    /// The short label a CLI may print in front of the message.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidFormat => "invalid format",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Corrupt => "corrupt image",
            ErrorKind::Io => "I/O error",
            ErrorKind::BadArgument => "bad argument",
            ErrorKind::InUse => "image in use",
        }
    }
}

/// Where on disk an error was found.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Location {
    /// The structure, as the spec titles it: "qcow2 header".
    pub structure: &'static str,
    /// The field, as the spec names it: "cluster_bits".
    pub field: &'static str,
    /// Byte offset of the field in the file.
    pub offset: u64,
    /// The value found there.
    pub value: u64,
}

/// A cowimg error: a kind, a message, and where known the on-disk location.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    location: Option<Location>,
    source: Option<io::Error>,
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error with a message and no location.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            location: None,
            source: None,
        }
    }

    /// An error blamed on one field of one on-disk structure.
    pub fn field(
        kind: ErrorKind,
        structure: &'static str,
        field: &'static str,
        offset: u64,
        value: u64,
        message: impl Into<String>,
    ) -> Self {
        Error {
            kind,
            message: message.into(),
            location: Some(Location {
                structure,
                field,
                offset,
                value,
            }),
            source: None,
        }
    }

    /// An I/O failure, with what was being done.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error {
            kind: ErrorKind::Io,
            message: context.into(),
            location: None,
            source: Some(source),
        }
    }

    /// What kind of failure this is, for callers that branch on it.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message alone, as QEMU would word it where QEMU has a message for the case.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The structure, field and byte offset a format error is about, when it is about one.
    pub fn location(&self) -> Option<&Location> {
        self.location.as_ref()
    }

    /// The same error with more context in front: "opening backing file x: …".
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        // The alternate form (`{:#}`) leaves the location out: QEMU's words alone, for
        // programs standing in for QEMU's tools.
        if let Some(loc) = self.location.as_ref().filter(|_| !f.alternate()) {
            write!(
                f,
                " ({}: {} = {:#x} at byte {})",
                loc.structure, loc.field, loc.value, loc.offset
            )?;
        }
        if let Some(source) = &self.source {
            // strerror's words, as QEMU prints them, without Rust's "(os error N)".
            let text = source.to_string();
            let text = match (source.raw_os_error(), text.rfind(" (os error ")) {
                (Some(_), Some(at)) => &text[..at],
                _ => &text,
            };
            write!(f, ": {text}")?;
        }
        Ok(())
    }
}

/// An [`Error`] where an `io::Error` is wanted (an `ImageReader` or `ImageWriter`, a
/// `Read` consumer): its kind mapped to the nearest I/O kind, the error kept inside.
impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        let kind = match e.kind {
            ErrorKind::Io => e
                .source
                .as_ref()
                .map_or(io::ErrorKind::Other, io::Error::kind),
            ErrorKind::InvalidFormat | ErrorKind::Corrupt => io::ErrorKind::InvalidData,
            ErrorKind::Unsupported => io::ErrorKind::Unsupported,
            ErrorKind::BadArgument => io::ErrorKind::InvalidInput,
            ErrorKind::InUse => io::ErrorKind::ResourceBusy,
        };
        io::Error::new(kind, e)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as _)
    }
}
