//! The NBD wire format (the NetworkBlockDevice project's proto.md): magics, option and
//! command numbers, and the messages a server reads and writes, as bytes. Nothing here
//! knows images or sockets.

use std::io::{self, Read, Write};

/// "NBDMAGIC", the first thing a server says.
pub const INIT_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// "IHAVEOPT": starts every option request (and the newstyle greeting).
pub const OPTION_MAGIC: u64 = 0x4948_4156_454f_5054;
/// Starts every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Starts every transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Starts a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Starts each chunk of a structured reply.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flags (server) and client flags.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;

/// Transmission flags.
pub mod transmission {
    pub const HAS_FLAGS: u16 = 1 << 0;
    pub const READ_ONLY: u16 = 1 << 1;
    pub const SEND_FLUSH: u16 = 1 << 2;
    pub const SEND_FUA: u16 = 1 << 3;
    pub const SEND_TRIM: u16 = 1 << 5;
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    pub const SEND_DF: u16 = 1 << 7;
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
    pub const SEND_CACHE: u16 = 1 << 10;
    pub const SEND_FAST_ZERO: u16 = 1 << 11;
}

/// Option numbers.
pub mod option {
    pub const EXPORT_NAME: u32 = 1;
    pub const ABORT: u32 = 2;
    pub const LIST: u32 = 3;
    pub const STARTTLS: u32 = 5;
    pub const INFO: u32 = 6;
    pub const GO: u32 = 7;
    pub const STRUCTURED_REPLY: u32 = 8;
    pub const LIST_META_CONTEXT: u32 = 9;
    pub const SET_META_CONTEXT: u32 = 10;
}

/// Option reply types.
pub mod reply {
    pub const ACK: u32 = 1;
    pub const SERVER: u32 = 2;
    pub const INFO: u32 = 3;
    pub const META_CONTEXT: u32 = 4;
    pub const ERR_UNSUP: u32 = (1 << 31) + 1;
    pub const ERR_POLICY: u32 = (1 << 31) + 2;
    pub const ERR_INVALID: u32 = (1 << 31) + 3;
    pub const ERR_UNKNOWN: u32 = (1 << 31) + 6;
    pub const ERR_TOO_BIG: u32 = (1 << 31) + 9;
}

/// `NBD_INFO_*` information types.
pub mod info {
    pub const EXPORT: u16 = 0;
    pub const NAME: u16 = 1;
    pub const DESCRIPTION: u16 = 2;
    pub const BLOCK_SIZE: u16 = 3;
}

/// Command types.
pub mod command {
    pub const READ: u16 = 0;
    pub const WRITE: u16 = 1;
    pub const DISC: u16 = 2;
    pub const FLUSH: u16 = 3;
    pub const TRIM: u16 = 4;
    pub const CACHE: u16 = 5;
    pub const WRITE_ZEROES: u16 = 6;
    pub const BLOCK_STATUS: u16 = 7;
}

/// Command flags.
pub mod command_flag {
    pub const FUA: u16 = 1 << 0;
    pub const NO_HOLE: u16 = 1 << 1;
    pub const DF: u16 = 1 << 2;
    pub const REQ_ONE: u16 = 1 << 3;
    pub const FAST_ZERO: u16 = 1 << 4;
}

/// Structured reply chunk types and flags.
pub mod chunk {
    pub const FLAG_DONE: u16 = 1;
    pub const NONE: u16 = 0;
    pub const OFFSET_DATA: u16 = 1;
    pub const OFFSET_HOLE: u16 = 2;
    pub const BLOCK_STATUS: u16 = 5;
    pub const ERROR: u16 = (1 << 15) + 1;
}

/// Error numbers on the wire.
pub mod errno {
    pub const EPERM: u32 = 1;
    pub const EIO: u32 = 5;
    pub const EINVAL: u32 = 22;
    pub const ENOSPC: u32 = 28;
    pub const EOVERFLOW: u32 = 75;
    pub const ENOTSUP: u32 = 95;
    pub const ESHUTDOWN: u32 = 108;
}

/// `base:allocation` state bits.
pub const STATE_HOLE: u32 = 1;
pub const STATE_ZERO: u32 = 2;

/// The longest option payload accepted: names and queries are at most 4 KiB each, and
/// no client needs more than a handful.
pub const MAX_OPTION_LENGTH: u32 = 64 << 10;
/// The largest READ or WRITE payload (what NBD_INFO_BLOCK_SIZE advertises): 32 MiB, as
/// qemu-nbd.
pub const MAX_PAYLOAD: u32 = 32 << 20;

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}
fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}
fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// A malformed message: the connection cannot go on.
fn broken(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// An option request: its number and payload (at most `MAX_OPTION_LENGTH` bytes; a
/// longer one is refused before anything is allocated).
#[derive(Debug, PartialEq, Eq)]
pub struct OptionRequest {
    pub option: u32,
    pub data: Vec<u8>,
}

/// Reads one option request. An option too long to hold is skipped and reported with
/// `Ok(Err(length))`, so the caller can answer `ERR_TOO_BIG` and go on.
pub fn read_option(r: &mut impl Read) -> io::Result<Result<OptionRequest, (u32, u32)>> {
    let mut head = [0u8; 16];
    r.read_exact(&mut head)?;
    if be64(&head) != OPTION_MAGIC {
        return Err(broken(format!(
            "option request magic {:#x} is not IHAVEOPT",
            be64(&head)
        )));
    }
    let (option, len) = (be32(&head[8..]), be32(&head[12..]));
    if len > MAX_OPTION_LENGTH {
        io::copy(&mut r.take(u64::from(len)), &mut io::sink())?;
        return Ok(Err((option, len)));
    }
    let mut data = vec![0u8; len as usize];
    r.read_exact(&mut data)?;
    Ok(Ok(OptionRequest { option, data }))
}

/// Writes one option reply.
pub fn write_option_reply(
    w: &mut impl Write,
    option: u32,
    kind: u32,
    data: &[u8],
) -> io::Result<()> {
    let mut out = Vec::with_capacity(20 + data.len());
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    w.write_all(&out)
}

/// A reader over an option's payload that fails cleanly where the payload ends.
pub struct Payload<'a>(&'a [u8]);

impl<'a> Payload<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Payload(data)
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    pub fn u16(&mut self) -> Option<u16> {
        self.take(2).map(be16)
    }

    pub fn u32(&mut self) -> Option<u32> {
        self.take(4).map(be32)
    }

    /// A string with a 32-bit length in front, at most 4096 bytes (the spec's limit).
    pub fn string(&mut self) -> Option<String> {
        let len = self.u32()? as usize;
        if len > 4096 {
            return None;
        }
        Some(String::from_utf8_lossy(self.take(len)?).into_owned())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What NBD_OPT_INFO and NBD_OPT_GO ask: an export and the information wanted.
pub fn parse_info_request(data: &[u8]) -> Option<(String, Vec<u16>)> {
    let mut p = Payload::new(data);
    let name = p.string()?;
    let n = p.u16()?;
    let wanted = (0..n).map(|_| p.u16()).collect::<Option<Vec<_>>>()?;
    p.is_empty().then_some((name, wanted))
}

/// What NBD_OPT_LIST_META_CONTEXT and SET_META_CONTEXT ask: an export and queries.
pub fn parse_meta_request(data: &[u8]) -> Option<(String, Vec<String>)> {
    let mut p = Payload::new(data);
    let name = p.string()?;
    let n = p.u32()?;
    // Each query takes at least its 4-byte length: bounds the count by the payload.
    if n as usize > data.len() / 4 {
        return None;
    }
    let queries = (0..n).map(|_| p.string()).collect::<Option<Vec<_>>>()?;
    p.is_empty().then_some((name, queries))
}

/// One transmission request, its payload not yet read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

/// Reads one request header; a wrong magic is a broken connection.
pub fn read_request(r: &mut impl Read) -> io::Result<Request> {
    let mut head = [0u8; 28];
    r.read_exact(&mut head)?;
    if be32(&head) != REQUEST_MAGIC {
        return Err(broken(format!(
            "request magic {:#x} is not NBD's",
            be32(&head)
        )));
    }
    Ok(Request {
        flags: be16(&head[4..]),
        kind: be16(&head[6..]),
        cookie: be64(&head[8..]),
        offset: be64(&head[16..]),
        length: be32(&head[24..]),
    })
}

/// A simple reply header (the payload, for a successful read, follows).
pub fn simple_reply(error: u32, cookie: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out[4..8].copy_from_slice(&error.to_be_bytes());
    out[8..].copy_from_slice(&cookie.to_be_bytes());
    out
}

/// A structured reply chunk header for `len` bytes of chunk payload.
pub fn chunk_header(flags: u16, kind: u16, cookie: u64, len: u32) -> [u8; 20] {
    let mut out = [0u8; 20];
    out[..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    out[4..6].copy_from_slice(&flags.to_be_bytes());
    out[6..8].copy_from_slice(&kind.to_be_bytes());
    out[8..16].copy_from_slice(&cookie.to_be_bytes());
    out[16..].copy_from_slice(&len.to_be_bytes());
    out
}

/// An error chunk's payload: the error and a message (trimmed to fit 16 bits).
pub fn error_payload(error: u32, message: &str) -> Vec<u8> {
    let message = &message.as_bytes()[..message.len().min(4096)];
    let mut out = Vec::with_capacity(6 + message.len());
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&(message.len() as u16).to_be_bytes());
    out.extend_from_slice(message);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_readers_stop_at_the_end_instead_of_panicking() {
        let mut one = vec![0, 0, 0, 3];
        one.extend_from_slice(b"abc");
        one.extend_from_slice(&[0, 1, 0, 3]);
        assert_eq!(parse_info_request(&one), Some(("abc".into(), vec![3])));
        assert_eq!(parse_info_request(&one[..one.len() - 1]), None);
        assert_eq!(parse_info_request(&[0xff, 0xff, 0xff, 0xff]), None);
        // A query count no payload could hold.
        assert_eq!(
            parse_meta_request(&[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]),
            None
        );
    }

    #[test]
    fn oversized_options_are_skipped_not_held() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&OPTION_MAGIC.to_be_bytes());
        wire.extend_from_slice(&option::GO.to_be_bytes());
        wire.extend_from_slice(&(MAX_OPTION_LENGTH + 1).to_be_bytes());
        wire.extend(std::iter::repeat_n(7u8, MAX_OPTION_LENGTH as usize + 1));
        let mut r = io::Cursor::new(wire);
        assert_eq!(
            read_option(&mut r).unwrap(),
            Err((option::GO, MAX_OPTION_LENGTH + 1))
        );
    }
}
