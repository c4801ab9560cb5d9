//! One NBD client, from the greeting to the last reply: fixed newstyle negotiation
//! (LIST, INFO, GO, EXPORT_NAME, structured replies, metadata contexts) and the
//! transmission phase (READ, WRITE, FLUSH, TRIM, WRITE_ZEROES, CACHE, BLOCK_STATUS,
//! DISC). Requests are answered in order. A malformed message ends the connection; a
//! request that is merely wrong gets the protocol's error and the connection goes on.

use super::protocol::{
    chunk, command, command_flag, errno, info, option, reply, transmission, Request,
    FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, INIT_MAGIC, MAX_PAYLOAD, OPTION_MAGIC, STATE_HOLE,
    STATE_ZERO,
};
use super::protocol::{
    chunk_header, error_payload, parse_info_request, parse_meta_request, read_option, read_request,
    simple_reply, write_option_reply,
};
use crate::error::ErrorKind;
use crate::shared::SharedImage;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// One image offered under a name.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Export {
    /// What clients ask for ("" is the default export).
    pub name: String,
    /// Shown by NBD_OPT_LIST and NBD_INFO_DESCRIPTION.
    pub description: String,
    /// The image, shared with every other connection to it.
    pub image: Arc<SharedImage>,
    /// Writes, trims and zeroing are refused with EPERM.
    pub read_only: bool,
    /// Offer `qemu:allocation-depth` (qemu-nbd's `-A`).
    pub allocation_depth: bool,
    /// Advertise that several connections may be used at once (a flush on one covers
    /// writes made on all: they share one image handle).
    pub multi_conn: bool,
}

impl Export {
    /// A read-only export of `image` named `name`.
    pub fn new(name: impl Into<String>, image: Arc<SharedImage>) -> Export {
        Export {
            name: name.into(),
            description: String::new(),
            image,
            read_only: true,
            allocation_depth: false,
            multi_conn: false,
        }
    }

    setters! {
        plain {
        /// Writes, trims and zeroing are refused with EPERM.
        read_only: bool;
        /// Offer `qemu:allocation-depth`.
        allocation_depth: bool;
        /// Advertise multi-connection consistency.
        multi_conn: bool;
        /// Shown by NBD_OPT_LIST and NBD_INFO_DESCRIPTION.
        description: String;
        }
        optional {
        }
    }

    fn flags(&self) -> u16 {
        use transmission::*;
        let mut flags = HAS_FLAGS | SEND_FLUSH | SEND_FUA | SEND_DF | SEND_CACHE;
        if self.multi_conn {
            flags |= CAN_MULTI_CONN;
        }
        if self.read_only {
            flags |= READ_ONLY;
        } else {
            flags |= SEND_TRIM | SEND_WRITE_ZEROES | SEND_FAST_ZERO;
        }
        flags
    }
}

/// The metadata contexts this server knows, by the IDs it gives them.
const BASE_ALLOCATION: (u32, &str) = (1, "base:allocation");
const ALLOCATION_DEPTH: (u32, &str) = (2, "qemu:allocation-depth");

/// The most extents one BLOCK_STATUS reply describes per context.
const MAX_EXTENTS: usize = 4096;

/// Serves one client over `reader` and `writer` until it leaves, the connection
/// breaks, or `stop` is set (then requests are refused with ESHUTDOWN). Returns an
/// error only for a broken connection or malformed message.
pub fn serve(
    reader: impl Read,
    writer: impl Write,
    exports: &[Export],
    stop: &AtomicBool,
) -> io::Result<()> {
    let mut session = Session {
        reader,
        writer: io::BufWriter::with_capacity(256 << 10, writer),
        exports,
        structured: false,
        contexts: Vec::new(),
        contexts_for: None,
        stop,
    };
    let Some(export) = session.negotiate()? else {
        return session.writer.flush();
    };
    session.transmit(&exports[export])
}

struct Session<'a, R, W: Write> {
    reader: R,
    writer: io::BufWriter<W>,
    exports: &'a [Export],
    structured: bool,
    /// The metadata contexts selected, and the export they were selected for.
    contexts: Vec<(u32, &'static str)>,
    contexts_for: Option<String>,
    stop: &'a AtomicBool,
}

impl<R: Read, W: Write> Session<'_, R, W> {
    fn find(&self, name: &str) -> Option<usize> {
        self.exports.iter().position(|e| e.name == name)
    }

    /// The greeting and option haggling. Returns the export chosen, or None when the
    /// client aborted or asked for an export that does not exist by EXPORT_NAME.
    fn negotiate(&mut self) -> io::Result<Option<usize>> {
        let mut hello = Vec::with_capacity(18);
        hello.extend_from_slice(&INIT_MAGIC.to_be_bytes());
        hello.extend_from_slice(&OPTION_MAGIC.to_be_bytes());
        hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
        self.writer.write_all(&hello)?;
        self.writer.flush()?;
        let mut client = [0u8; 4];
        self.reader.read_exact(&mut client)?;
        let client = u32::from_be_bytes(client);
        if client & !u32::from(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES) != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unknown client flags {client:#x}"),
            ));
        }
        let no_zeroes = client & u32::from(FLAG_NO_ZEROES) != 0;
        loop {
            self.writer.flush()?;
            let request = match read_option(&mut self.reader)? {
                Ok(r) => r,
                Err((opt, len)) => {
                    let why = format!("option of {len} bytes is too long");
                    self.option_error(opt, reply::ERR_TOO_BIG, &why)?;
                    continue;
                }
            };
            let (opt, data) = (request.option, request.data);
            match opt {
                option::EXPORT_NAME => {
                    let name = String::from_utf8_lossy(&data);
                    let Some(i) = self.find(&name) else {
                        // No way to say why: the spec closes the connection.
                        return Ok(None);
                    };
                    let e = &self.exports[i];
                    let mut out = Vec::with_capacity(134);
                    out.extend_from_slice(&e.image.size().to_be_bytes());
                    out.extend_from_slice(&e.flags().to_be_bytes());
                    if !no_zeroes {
                        out.extend_from_slice(&[0u8; 124]);
                    }
                    self.writer.write_all(&out)?;
                    return Ok(Some(i));
                }
                option::ABORT => {
                    write_option_reply(&mut self.writer, opt, reply::ACK, &[])?;
                    return Ok(None);
                }
                option::LIST if !data.is_empty() => {
                    self.option_error(opt, reply::ERR_INVALID, "LIST takes no data")?
                }
                option::LIST => {
                    for e in self.exports {
                        let mut entry = Vec::new();
                        entry.extend_from_slice(&(e.name.len() as u32).to_be_bytes());
                        entry.extend_from_slice(e.name.as_bytes());
                        entry.extend_from_slice(e.description.as_bytes());
                        write_option_reply(&mut self.writer, opt, reply::SERVER, &entry)?;
                    }
                    write_option_reply(&mut self.writer, opt, reply::ACK, &[])?;
                }
                option::INFO | option::GO => {
                    if let Some(i) = self.info(opt, &data)? {
                        if opt == option::GO {
                            return Ok(Some(i));
                        }
                    }
                }
                option::STRUCTURED_REPLY if !data.is_empty() || self.structured => {
                    self.option_error(opt, reply::ERR_INVALID, "structured replies are on")?
                }
                option::STRUCTURED_REPLY => {
                    self.structured = true;
                    write_option_reply(&mut self.writer, opt, reply::ACK, &[])?;
                }
                option::LIST_META_CONTEXT | option::SET_META_CONTEXT => {
                    self.meta_context(opt, &data)?
                }
                option::STARTTLS => {
                    self.option_error(opt, reply::ERR_POLICY, "TLS is not configured")?
                }
                _ => self.option_error(opt, reply::ERR_UNSUP, "option not supported")?,
            }
        }
    }

    fn option_error(&mut self, opt: u32, kind: u32, message: &str) -> io::Result<()> {
        write_option_reply(&mut self.writer, opt, kind, message.as_bytes())
    }

    /// INFO and GO: the export's details, or why there are none. Returns the export
    /// when the answer was a success.
    fn info(&mut self, opt: u32, data: &[u8]) -> io::Result<Option<usize>> {
        let Some((name, wanted)) = parse_info_request(data) else {
            self.option_error(opt, reply::ERR_INVALID, "malformed information request")?;
            return Ok(None);
        };
        let Some(i) = self.find(&name) else {
            let why = format!("export '{name}' not present");
            self.option_error(opt, reply::ERR_UNKNOWN, &why)?;
            return Ok(None);
        };
        let e = &self.exports[i];
        let mut export = info::EXPORT.to_be_bytes().to_vec();
        export.extend_from_slice(&e.image.size().to_be_bytes());
        export.extend_from_slice(&e.flags().to_be_bytes());
        let mut infos = vec![export];
        if wanted.contains(&info::NAME) {
            let mut v = info::NAME.to_be_bytes().to_vec();
            v.extend_from_slice(e.name.as_bytes());
            infos.push(v);
        }
        if wanted.contains(&info::DESCRIPTION) && !e.description.is_empty() {
            let mut v = info::DESCRIPTION.to_be_bytes().to_vec();
            v.extend_from_slice(e.description.as_bytes());
            infos.push(v);
        }
        // Sizes are always sent: any alignment works; 4 KiB is best; 32 MiB at most.
        let mut sizes = info::BLOCK_SIZE.to_be_bytes().to_vec();
        for n in [1u32, 4096, MAX_PAYLOAD] {
            sizes.extend_from_slice(&n.to_be_bytes());
        }
        infos.push(sizes);
        for payload in infos {
            write_option_reply(&mut self.writer, opt, reply::INFO, &payload)?;
        }
        write_option_reply(&mut self.writer, opt, reply::ACK, &[])?;
        if opt == option::GO && self.contexts_for.as_deref() != Some(name.as_str()) {
            // Contexts chosen for another export do not carry over.
            self.contexts.clear();
        }
        Ok(Some(i))
    }

    /// LIST_META_CONTEXT and SET_META_CONTEXT.
    fn meta_context(&mut self, opt: u32, data: &[u8]) -> io::Result<()> {
        if !self.structured {
            return self.option_error(opt, reply::ERR_INVALID, "structured replies first");
        }
        let Some((name, queries)) = parse_meta_request(data) else {
            return self.option_error(opt, reply::ERR_INVALID, "malformed context request");
        };
        let Some(i) = self.find(&name) else {
            return self.option_error(opt, reply::ERR_UNKNOWN, "no such export");
        };
        let mut known = vec![BASE_ALLOCATION];
        if self.exports[i].allocation_depth {
            known.push(ALLOCATION_DEPTH);
        }
        let list_all = opt == option::LIST_META_CONTEXT && queries.is_empty();
        let chosen: Vec<(u32, &'static str)> = known
            .into_iter()
            .filter(|(_, ctx)| {
                list_all
                    || queries.iter().any(|q| {
                        q == ctx
                            || (opt == option::LIST_META_CONTEXT
                                && q.ends_with(':')
                                && ctx.starts_with(q.as_str()))
                    })
            })
            .collect();
        for (id, ctx) in &chosen {
            let mut payload = id.to_be_bytes().to_vec();
            payload.extend_from_slice(ctx.as_bytes());
            write_option_reply(&mut self.writer, opt, reply::META_CONTEXT, &payload)?;
        }
        if opt == option::SET_META_CONTEXT {
            self.contexts = chosen;
            self.contexts_for = Some(name);
        }
        write_option_reply(&mut self.writer, opt, reply::ACK, &[])
    }

    /// Requests until DISC or the end of the connection.
    fn transmit(&mut self, export: &Export) -> io::Result<()> {
        loop {
            self.writer.flush()?;
            let request = match read_request(&mut self.reader) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            };
            if request.kind == command::DISC {
                return self.writer.flush();
            }
            // A write's payload is read before anything else is decided, so that the
            // stream stays in step; one longer than the limit cannot be skipped safely.
            let payload = if request.kind == command::WRITE {
                if request.length > MAX_PAYLOAD {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("write of {} bytes is over the limit", request.length),
                    ));
                }
                let mut data = vec![0u8; request.length as usize];
                self.reader.read_exact(&mut data)?;
                data
            } else {
                Vec::new()
            };
            match self.handle(export, &request, &payload) {
                Ok(()) => {}
                Err(Failure::Io(e)) => return Err(e),
                Err(Failure::Refused(error, message)) => self.refuse(&request, error, &message)?,
            }
        }
    }

    fn handle(&mut self, export: &Export, r: &Request, payload: &[u8]) -> Result<(), Failure> {
        if self.stop.load(Ordering::Relaxed) {
            return Err(Failure::Refused(
                errno::ESHUTDOWN,
                "the server is shutting down".into(),
            ));
        }
        let known = command_flag::FUA
            | command_flag::NO_HOLE
            | command_flag::DF
            | command_flag::REQ_ONE
            | command_flag::FAST_ZERO;
        if r.flags & !known != 0 {
            return Err(invalid(format!("unknown command flags {:#x}", r.flags)));
        }
        let image = &export.image;
        let size = image.size();
        if r.offset
            .checked_add(u64::from(r.length))
            .is_none_or(|end| end > size)
        {
            return Err(Failure::Refused(
                if r.kind == command::WRITE {
                    errno::ENOSPC
                } else {
                    errno::EINVAL
                },
                format!(
                    "{} bytes at {} are past the end of the export ({size})",
                    r.length, r.offset
                ),
            ));
        }
        let writes = matches!(
            r.kind,
            command::WRITE | command::TRIM | command::WRITE_ZEROES
        );
        if writes && export.read_only {
            return Err(Failure::Refused(
                errno::EPERM,
                "the export is read-only".into(),
            ));
        }
        let (at, len) = (r.offset, u64::from(r.length));
        match r.kind {
            command::READ => return self.read(export, r),
            command::BLOCK_STATUS => return self.block_status(export, r),
            command::WRITE => image.write_at(payload, at).map_err(refused)?,
            command::TRIM => image.discard(at, len).map_err(refused)?,
            command::WRITE_ZEROES => {
                if r.flags & command_flag::FAST_ZERO != 0 {
                    // cowimg cannot promise that zeroing never falls back to writing.
                    return Err(Failure::Refused(
                        errno::ENOTSUP,
                        "fast zeroing is not promised".into(),
                    ));
                }
                let unmap = r.flags & command_flag::NO_HOLE == 0;
                image.write_zeroes(at, len, unmap).map_err(refused)?
            }
            command::FLUSH => image.flush().map_err(refused)?,
            // Advisory: there is no cache to warm beyond what reads fill.
            command::CACHE => {}
            other => return Err(invalid(format!("unknown command {other}"))),
        }
        if writes && r.flags & command_flag::FUA != 0 {
            image.flush().map_err(refused)?;
        }
        self.writer
            .write_all(&simple_reply(0, r.cookie))
            .map_err(Failure::Io)
    }

    fn read(&mut self, export: &Export, r: &Request) -> Result<(), Failure> {
        if r.length > MAX_PAYLOAD {
            return Err(Failure::Refused(
                errno::EOVERFLOW,
                "read over the limit".into(),
            ));
        }
        if !self.structured {
            let mut data = vec![0u8; r.length as usize];
            export.image.read_at(&mut data, r.offset).map_err(refused)?;
            let w = &mut self.writer;
            w.write_all(&simple_reply(0, r.cookie))
                .map_err(Failure::Io)?;
            return w.write_all(&data).map_err(Failure::Io);
        }
        // Structured: ranges that read as zeros go as holes (unless the client asked
        // for one piece), the rest as data; then an empty chunk that ends the reply.
        let (mut at, end) = (r.offset, r.offset + u64::from(r.length));
        let whole = r.flags & command_flag::DF != 0;
        let mut chunks: Vec<(u16, u64, Vec<u8>)> = Vec::new();
        while at < end {
            let s = export.image.block_status(at, end - at).map_err(refused)?;
            let len = if whole { end - at } else { s.len.min(end - at) };
            if s.zero && !whole {
                chunks.push((chunk::OFFSET_HOLE, at, (len as u32).to_be_bytes().to_vec()));
            } else {
                let mut data = vec![0u8; len as usize];
                export.image.read_at(&mut data, at).map_err(refused)?;
                chunks.push((chunk::OFFSET_DATA, at, data));
            }
            at += len;
        }
        let w = &mut self.writer;
        for (kind, offset, body) in chunks {
            let header = chunk_header(0, kind, r.cookie, 8 + body.len() as u32);
            w.write_all(&header).map_err(Failure::Io)?;
            w.write_all(&offset.to_be_bytes()).map_err(Failure::Io)?;
            w.write_all(&body).map_err(Failure::Io)?;
        }
        let done = chunk_header(chunk::FLAG_DONE, chunk::NONE, r.cookie, 0);
        w.write_all(&done).map_err(Failure::Io)
    }

    /// One chunk per selected context, describing extents from the request's offset
    /// (at most its length; with REQ_ONE, one extent).
    fn block_status(&mut self, export: &Export, r: &Request) -> Result<(), Failure> {
        if !self.structured || self.contexts.is_empty() {
            return Err(invalid("no metadata context was negotiated".into()));
        }
        if r.length == 0 {
            return Err(invalid("block status of zero bytes".into()));
        }
        let one = r.flags & command_flag::REQ_ONE != 0;
        let end = r.offset + u64::from(r.length);
        // (length, base:allocation flags, allocation depth)
        let mut extents: Vec<(u32, u32, u32)> = Vec::new();
        let mut at = r.offset;
        let most = if one { 1 } else { MAX_EXTENTS };
        while at < end && extents.len() < most {
            let s = export.image.block_status(at, end - at).map_err(refused)?;
            let len = s.len.min(end - at).min(u64::from(u32::MAX) & !511).max(1);
            let flags = if s.data { 0 } else { STATE_HOLE } | if s.zero { STATE_ZERO } else { 0 };
            let depth = if s.present { s.depth as u32 + 1 } else { 0 };
            extents.push((len as u32, flags, depth));
            at += len;
        }
        let contexts = self.contexts.clone();
        for (n, (id, _)) in contexts.iter().enumerate() {
            let mut body = id.to_be_bytes().to_vec();
            for &(len, flags, depth) in &extents {
                body.extend_from_slice(&len.to_be_bytes());
                let value = if *id == ALLOCATION_DEPTH.0 {
                    depth
                } else {
                    flags
                };
                body.extend_from_slice(&value.to_be_bytes());
            }
            let done = if n + 1 == contexts.len() {
                chunk::FLAG_DONE
            } else {
                0
            };
            let header = chunk_header(done, chunk::BLOCK_STATUS, r.cookie, body.len() as u32);
            self.writer.write_all(&header).map_err(Failure::Io)?;
            self.writer.write_all(&body).map_err(Failure::Io)?;
        }
        Ok(())
    }

    /// An error reply: a structured error chunk where the request expected a
    /// structured reply, else a simple reply.
    fn refuse(&mut self, r: &Request, error: u32, message: &str) -> io::Result<()> {
        if self.structured && matches!(r.kind, command::READ | command::BLOCK_STATUS) {
            let body = error_payload(error, message);
            let header = chunk_header(chunk::FLAG_DONE, chunk::ERROR, r.cookie, body.len() as u32);
            self.writer.write_all(&header)?;
            self.writer.write_all(&body)
        } else {
            self.writer.write_all(&simple_reply(error, r.cookie))
        }
    }
}

/// Why a request failed: the connection broke, or the protocol error to answer with.
enum Failure {
    Io(io::Error),
    Refused(u32, String),
}

fn invalid(message: String) -> Failure {
    Failure::Refused(errno::EINVAL, message)
}

/// cowimg's error as the NBD error number a client understands.
fn refused(e: crate::Error) -> Failure {
    let error = match e.kind() {
        ErrorKind::BadArgument => errno::EINVAL,
        ErrorKind::Unsupported => errno::ENOTSUP,
        ErrorKind::InUse => errno::EPERM,
        ErrorKind::Io
            if std::error::Error::source(&e)
                .and_then(|s| s.downcast_ref::<io::Error>())
                .is_some_and(|io| io.kind() == io::ErrorKind::StorageFull) =>
        {
            errno::ENOSPC
        }
        _ => errno::EIO,
    };
    Failure::Refused(error, e.to_string())
}
