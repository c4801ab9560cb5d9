//! `cowimg io`: qemu-io's command language (`-c 'write -P 0x55 0 64k'`…), with its
//! output strings, so one script can drive either tool.

use crate::create::parse_size;
use crate::source::SourceArgs;
use cowimg::{Error, ErrorKind, Image};
use std::fmt::Write;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    source: SourceArgs,
    /// A command to run (repeatable), in qemu-io's language; without any, commands are
    /// read from standard input.
    #[arg(short = 'c', long = "cmd", value_name = "COMMAND")]
    commands: Vec<String>,
    /// Open read-only.
    #[arg(short = 'r', long = "read-only")]
    read_only: bool,
    /// Writes go to a temporary overlay, dropped at exit: the image is only read.
    #[arg(short = 's', long = "snapshot")]
    snapshot: bool,
    /// Copy-on-read: accepted where it changes nothing (no backing file, or
    /// read-only); refused by name where it would copy backing data into the image.
    #[arg(short = 'C', long = "copy-on-read")]
    copy_on_read: bool,
    /// Host cache mode (none, writeback, writethrough, directsync, unsafe): every mode
    /// reads and writes the same bytes here.
    #[arg(short = 't', long = "cache", value_name = "MODE")]
    cache: Option<String>,
    /// Short for `-t none`.
    #[arg(short = 'n', long = "nocache")]
    nocache: bool,
    /// AIO mode (threads, native, io_uring): how QEMU submits I/O; the same here.
    #[arg(short = 'i', long = "aio", value_name = "MODE")]
    aio: Option<String>,
    /// Short for `-i native`.
    #[arg(short = 'k', long = "native-aio")]
    native_aio: bool,
    /// Misaligned buffers for O_DIRECT testing: the same I/O here.
    #[arg(short = 'm', long = "misalign")]
    misalign: bool,
    /// Discard mode: `ignore`/`off` make `discard` change nothing; `unmap`/`on` discard.
    #[arg(short = 'd', long = "discard", value_name = "MODE")]
    discard: Option<String>,
    /// QEMU's trace options: accepted, nothing is traced.
    #[arg(short = 'T', long = "trace", value_name = "OPTIONS")]
    trace: Option<String>,
    /// The image file (or none: then `open` names one).
    filename: Option<String>,
}

/// How qemu-io opens an image: from its program options or `open`'s flags.
#[derive(Clone, Debug, Default)]
struct OpenChoices {
    read_only: bool,
    snapshot: bool,
    copy_on_read: bool,
    /// `-d ignore` (or `off`): discards report success and change nothing.
    discard_ignored: bool,
    /// `locking=off`: no locks taken.
    unlocked: bool,
    /// The protocol driver named (`driver=file`, `host_device`, `host_cdrom`), whose
    /// kind of file is checked as QEMU checks it.
    protocol: Option<String>,
    /// qcow2 cache options given to `open -o`.
    caches: cowimg::CacheSizes,
    /// `file.driver=FORMAT`: the file is an image of that format holding this one.
    file_format: Option<cowimg::Format>,
    /// `backing.driver=FORMAT`: the backing file's format, whatever the header says.
    backing_format: Option<cowimg::Format>,
    /// A raw image's `offset` and `size`, as `reopen -o` changed them.
    raw_range: Option<(u64, Option<u64>)>,
}

/// The modes qemu-io checks by name, checked as it does (its words); returns whether
/// discards are ignored.
fn check_modes(
    cache: Option<&str>,
    aio: Option<&str>,
    discard: Option<&str>,
) -> Result<bool, Error> {
    let invalid = |what: &str, value: &str| {
        Error::new(
            ErrorKind::BadArgument,
            format!("Invalid {what} option: {value}"),
        )
    };
    if let Some(c) = cache {
        if !crate::flags::CACHE_MODES.contains(&c) {
            return Err(invalid("cache", c));
        }
    }
    if let Some(a) = aio {
        if !["threads", "native", "io_uring"].contains(&a) {
            return Err(invalid("aio", a));
        }
    }
    match discard {
        None | Some("unmap" | "on") => Ok(false),
        Some("ignore" | "off") => Ok(true),
        Some(d) => Err(invalid("discard", d)),
    }
}

/// An open image and how it was opened.
struct Opened {
    image: Image,
    discard_ignored: bool,
    /// How it was opened, for `reopen`.
    how: (SourceArgs, String, bool, OpenChoices),
}

/// qemu-io's `cvtstr`: "4 KiB", "1.500 MiB", "512 bytes".
fn cvtstr(value: u64) -> String {
    cvtstr_f64(value as f64)
}

/// `cvtstr` of a rate or any fractional amount, as qemu-io scales it.
fn cvtstr_f64(value: f64) -> String {
    const UNITS: [(i32, &str); 6] = [
        (60, "EiB"),
        (50, "PiB"),
        (40, "TiB"),
        (30, "GiB"),
        (20, "MiB"),
        (10, "KiB"),
    ];
    let (v, suffix) = UNITS
        .iter()
        .find(|(shift, _)| value >= 2f64.powi(*shift))
        .map_or((value, "bytes"), |(shift, s)| {
            (value / 2f64.powi(*shift), s)
        });
    let text = format!("{v:.3}");
    format!("{} {suffix}", text.strip_suffix(".000").unwrap_or(&text))
}

fn stats(out: &mut String, bytes: u64, started: Instant) {
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    let _ = writeln!(
        out,
        "{}, 1 ops; {:05.2} sec ({}/sec and {:.4} ops/sec)",
        cvtstr(bytes),
        secs,
        cvtstr_f64(bytes as f64 / secs),
        1.0 / secs
    );
}

fn number(text: &str) -> Result<u64, Error> {
    if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        return u64::from_str_radix(hex, 16).map_err(|_| {
            Error::new(
                ErrorKind::BadArgument,
                format!("non-numeric value '{text}'"),
            )
        });
    }
    parse_size(text).map_err(|_| {
        Error::new(
            ErrorKind::BadArgument,
            format!("non-numeric length argument -- {text}"),
        )
    })
}

/// `-P`'s byte, read as C's strtol reads it (decimal, `0x` hex, leading-0 octal), and
/// refused in qemu-io's words unless it is one byte.
fn pattern_byte(text: &str) -> Result<u8, Error> {
    let (digits, radix) = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => (hex, 16),
        None if text.len() > 1 && text.starts_with('0') => (&text[1..], 8),
        None => (text, 10),
    };
    u8::from_str_radix(digits, radix)
        .ok()
        .filter(|_| !digits.starts_with(['+', '-']))
        .ok_or_else(|| {
            Error::new(
                ErrorKind::BadArgument,
                format!("{text} is not a valid pattern byte"),
            )
        })
}

/// A command's flags: each letter, with its value for those that take one.
#[derive(Debug, Default, PartialEq)]
struct Flags<'a>(Vec<(char, Option<&'a str>)>);

impl<'a> Flags<'a> {
    /// Whether `-flag` was given.
    fn has(&self, flag: char) -> bool {
        self.0.iter().any(|(c, _)| *c == flag)
    }

    /// The value of the last `-flag VALUE` (getopt's: the last one counts).
    fn value(&self, flag: char) -> Option<&'a str> {
        self.0
            .iter()
            .rev()
            .find(|(c, _)| *c == flag)
            .and_then(|(_, v)| *v)
    }

    /// The values of every `-flag VALUE`, in order.
    fn values(&self, flag: char) -> impl Iterator<Item = &'a str> + '_ {
        self.0
            .iter()
            .filter(move |(c, _)| *c == flag)
            .filter_map(|(_, v)| *v)
    }
}

/// Flags (each `-x`, with a value for those in `with_value`) and positional words.
fn split_args<'a>(words: &[&'a str], with_value: &str) -> Result<(Flags<'a>, Vec<&'a str>), Error> {
    let mut flags = Flags::default();
    let mut rest = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let w = words[i];
        if w.len() >= 2 && w.starts_with('-') && !w[1..].starts_with(|c: char| c.is_ascii_digit()) {
            for (j, c) in w[1..].char_indices() {
                if with_value.contains(c) {
                    let value = if j + 2 < w.len() {
                        &w[j + 2..]
                    } else {
                        i += 1;
                        *words.get(i).ok_or_else(|| {
                            Error::new(ErrorKind::BadArgument, format!("option -{c} needs a value"))
                        })?
                    };
                    flags.0.push((c, Some(value)));
                    break;
                }
                flags.0.push((c, None));
            }
        } else {
            rest.push(w);
        }
        i += 1;
    }
    Ok((flags, rest))
}

/// A request outside the disk fails as the block layer fails it in qemu-io: with EIO
/// (and nothing allocated for it).
fn on_disk(image: &Image, off: u64, len: u64, verb: &str) -> Result<(), Error> {
    match off.checked_add(len) {
        Some(end) if end <= image.size() => Ok(()),
        _ => Err(Error::new(
            ErrorKind::Io,
            format!("{verb} failed: Input/output error"),
        )),
    }
}

fn offset_len(rest: &[&str]) -> Result<(u64, u64), Error> {
    match rest {
        [off, len] => Ok((number(off)?, number(len)?)),
        _ => Err(Error::new(ErrorKind::BadArgument, WRONG_ARGUMENTS)),
    }
}

/// qemu-io's `-v` dump: 16 bytes a line, a short last line not padded, and only
/// letters and digits shown as themselves (everything else a dot).
fn hexdump(out: &mut String, offset: u64, data: &[u8]) {
    for (i, line) in data.chunks(16).enumerate() {
        let _ = write!(out, "{:08x}:  ", offset + i as u64 * 16);
        for b in line {
            let _ = write!(out, "{b:02x} ");
        }
        out.push(' ');
        for b in line {
            out.push(if b.is_ascii_alphanumeric() {
                *b as char
            } else {
                '.'
            });
        }
        out.push('\n');
    }
}

/// Runs one command; its output goes to `out`. Errors are the command's failure.
/// Runs one qemu-io command line, its report appended to `out`. A command that ran
/// but found the data wrong (a pattern that did not verify) sets `failed`, and qemu-io
/// then exits 1 as for an error.
fn run_command(
    image: &mut Image,
    discard_ignored: bool,
    line: &str,
    out: &mut String,
    failed: &mut bool,
) -> Result<(), Error> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let Some((&name, args)) = words.split_first() else {
        return Ok(());
    };
    // A command that writes, on an image opened read-only: refused before it runs.
    let writes = [
        "write",
        "w",
        "aio_write",
        "writev",
        "discard",
        "d",
        "aio_discard",
        "truncate",
        "t",
    ];
    if writes.contains(&name) && !image.is_writable() {
        return Err(Error::new(ErrorKind::BadArgument, READ_ONLY));
    }
    // Wrong arguments: qemu-io answers with the command's one-line usage.
    dispatch(image, discard_ignored, name, args, out, failed).map_err(|e| {
        match (e.message() == WRONG_ARGUMENTS, crate::io_help::find(name)) {
            (true, Some(command)) => Error::new(ErrorKind::BadArgument, command.synopsis),
            _ => e,
        }
    })
}

/// What qemu-io says of a write to an image opened read-only.
const READ_ONLY: &str = "Block node is read-only";

/// What a command says when it did not get the words it takes.
const WRONG_ARGUMENTS: &str = "expected an offset and a length";

/// Runs the command `name` with its `args`.
fn dispatch(
    image: &mut Image,
    discard_ignored: bool,
    name: &str,
    args: &[&str],
    out: &mut String,
    failed: &mut bool,
) -> Result<(), Error> {
    match name {
        // The aio_ commands run synchronously, in order: their reports are the same.
        "read" | "r" | "aio_read" => read(image, args, out, failed),
        "write" | "w" | "aio_write" => write(image, args, out),
        "readv" | "writev" => {
            let words = vectored(args)?;
            let words: Vec<&str> = words.iter().map(String::as_str).collect();
            let done = if name == "readv" {
                read(image, &words, out, failed)
            } else {
                write(image, &words, out)
            };
            // Their failures carry their own names ("readv failed: …").
            done.map_err(|e| match e.message().split_once(" failed: ") {
                Some((_, why)) => Error::new(e.kind(), format!("{name} failed: {why}")),
                None => e,
            })
        }
        "aio_flush" => image.flush().map_err(|e| e.context("aio_flush failed")),
        "alloc" => alloc(image, args, out),
        "info" => info(image, out),
        "sleep" => {
            let [ms] = args else {
                return Err(Error::new(
                    ErrorKind::BadArgument,
                    "sleep takes a time in milliseconds",
                ));
            };
            let ms = number(ms)?;
            std::thread::sleep(std::time::Duration::from_millis(ms));
            Ok(())
        }
        "discard" | "d" => {
            let (flags, rest) = split_args(args, "")?;
            let (off, len) = offset_len(&rest)?;
            on_disk(image, off, len, "discard")?;
            let started = Instant::now();
            if !discard_ignored {
                image
                    .discard(off, len)
                    .map_err(|e| e.context("discard failed"))?;
            }
            if !flags.has('q') {
                let _ = writeln!(out, "discard {len}/{len} bytes at offset {off}");
                stats(out, len, started);
            }
            Ok(())
        }
        "flush" | "f" => image.flush().map_err(|e| e.context("flush failed")),
        "truncate" | "t" => {
            let (_, rest) = split_args(args, "m")?;
            let [size] = rest.as_slice() else {
                return Err(Error::new(
                    ErrorKind::BadArgument,
                    "truncate takes one size",
                ));
            };
            image
                .resize(number(size)?)
                .map_err(|e| e.context("truncate failed"))
        }
        "length" | "l" => {
            let _ = writeln!(out, "{}", cvtstr(image.size()));
            Ok(())
        }
        "map" => map(image, out),
        "sigraise" => {
            let [signal] = args else {
                return Err(Error::new(ErrorKind::BadArgument, WRONG_ARGUMENTS));
            };
            let signal = i32::try_from(number(signal)?).map_err(|_| {
                Error::new(ErrorKind::BadArgument, format!("invalid signal: {signal}"))
            })?;
            crate::print_out(out);
            out.clear();
            // SAFETY: raise(3) takes any number; an unknown one fails with EINVAL.
            unsafe { libc::raise(signal) };
            Ok(())
        }
        "abort" => {
            crate::print_out(out);
            std::process::abort();
        }
        other => Err(Error::new(
            ErrorKind::BadArgument,
            format!("command \"{other}\" not found"),
        )),
    }
}

/// readv/writev's `[flags] offset len1 len2 …` as read/write's `[flags] offset len`:
/// the pieces lie end to end, so they are one contiguous range.
fn vectored(args: &[&str]) -> Result<Vec<String>, Error> {
    let (flags_end, _) = args
        .iter()
        .enumerate()
        .find(|(i, w)| !w.starts_with('-') && (*i == 0 || !matches!(args[i - 1], "-P" | "-s")))
        .ok_or_else(|| Error::new(ErrorKind::BadArgument, "an offset and lengths are needed"))?;
    let (flags, rest) = args.split_at(flags_end);
    let [offset, lengths @ ..] = rest else {
        return Err(Error::new(ErrorKind::BadArgument, "an offset is needed"));
    };
    if lengths.is_empty() {
        return Err(Error::new(ErrorKind::BadArgument, "lengths are needed"));
    }
    let total = lengths
        .iter()
        .map(|l| number(l))
        .sum::<Result<u64, Error>>()?;
    Ok(flags
        .iter()
        .map(|f| f.to_string())
        .chain([offset.to_string(), total.to_string()])
        .collect())
}

/// `alloc offset [count]`: how much of the range the top image itself allocates.
fn alloc(image: &Image, args: &[&str], out: &mut String) -> Result<(), Error> {
    let (off, count) = match args {
        [off] => (number(off)?, 512),
        [off, count] => (number(off)?, number(count)?),
        _ => {
            return Err(Error::new(
                ErrorKind::BadArgument,
                "alloc takes an offset and a count",
            ))
        }
    };
    let end = off.saturating_add(count).min(image.size());
    let (mut at, mut allocated) = (off, 0);
    while at < end {
        let (is_allocated, len) = image.top_status(at, end - at)?;
        let len = len.min(end - at).max(1);
        if is_allocated {
            allocated += len;
        }
        at += len;
    }
    let _ = writeln!(
        out,
        "{allocated}/{} bytes allocated at offset {}",
        end.saturating_sub(off),
        cvtstr(off)
    );
    Ok(())
}

/// `info`: the format, its cluster size, where VM state would go, and the format's
/// own facts as qemu-img info lists them.
fn info(image: &Image, out: &mut String) -> Result<(), Error> {
    let described = image.info()?;
    let top = described.first();
    let cs = image.cluster_size().unwrap_or(0);
    let vm_state = image.vm_state_offset().unwrap_or(0);
    let _ = writeln!(out, "format name: {}", image.format());
    let _ = writeln!(out, "cluster size: {}", cvtstr(cs));
    let _ = writeln!(out, "vm state offset: {}", cvtstr(vm_state));
    if let Some(q) = top.and_then(|i| i.qcow2.as_ref()) {
        out.push_str("Format specific information:\n");
        cowimg::report::qcow2_specific(q).write_tree(out, 1);
    } else if let Some(l) = top.and_then(|i| i.luks.as_ref()) {
        out.push_str("Format specific information:\n");
        cowimg::report::luks_info(l, false).write_tree(out, 1);
    }
    Ok(())
}

/// `read [-P pattern] [-q] [-v] offset length`.
fn read(image: &Image, args: &[&str], out: &mut String, failed: &mut bool) -> Result<(), Error> {
    let (flags, rest) = split_args(args, "Psl")?;
    let (off, len) = offset_len(&rest)?;
    if !flags.has('b') {
        on_disk(image, off, len, "read")?;
    }
    // -s/-l: the part of the buffer the pattern is checked against (all by default).
    let check_from = flags.value('s').map(number).transpose()?.unwrap_or(0);
    let check_len = flags
        .value('l')
        .map(number)
        .transpose()?
        .unwrap_or(len.saturating_sub(check_from));
    if check_from
        .checked_add(check_len)
        .is_none_or(|end| end > len)
    {
        return Err(Error::new(
            ErrorKind::BadArgument,
            "pattern verification range exceeds end of read data",
        ));
    }
    let quiet = flags.has('q');
    let started = Instant::now();
    let mut buf = vec![0u8; len as usize];
    if flags.has('b') {
        image.read_vm_state(&mut buf, off)
    } else {
        image.read_at(&mut buf, off)
    }
    .map_err(|e| e.context("read failed"))?;
    if let Some(p) = flags.value('P') {
        let pattern = pattern_byte(p)?;
        let checked = &buf[check_from as usize..(check_from + check_len) as usize];
        // qemu-io names the range checked, not where it first differs.
        if checked.iter().any(|b| *b != pattern) {
            *failed = true;
            let _ = writeln!(
                out,
                "Pattern verification failed at offset {}, {check_len} bytes",
                off + check_from
            );
        }
    }
    if flags.has('v') {
        hexdump(out, off, &buf);
    }
    if !quiet {
        let _ = writeln!(out, "read {len}/{len} bytes at offset {off}");
        stats(out, len, started);
    }
    Ok(())
}

/// `write [-P pattern | -s file | -z [-u]] [-c] [-q] offset length`.
fn write(image: &mut Image, args: &[&str], out: &mut String) -> Result<(), Error> {
    let (flags, rest) = split_args(args, "Ps")?;
    let (off, len) = offset_len(&rest)?;
    if !flags.has('b') {
        on_disk(image, off, len, "write")?;
    }
    let started = Instant::now();
    let result = if flags.has('z') {
        if flags.has('P') || flags.has('c') {
            return Err(Error::new(
                ErrorKind::BadArgument,
                "-z supports neither -P nor -c",
            ));
        }
        image.write_zeroes(off, len, flags.has('u'))
    } else {
        let buf = match flags.value('s') {
            Some(file) => {
                let data =
                    std::fs::read(file).map_err(|e| Error::io(format!("reading '{file}'"), e))?;
                if (data.len() as u64) < len {
                    return Err(Error::new(
                        ErrorKind::BadArgument,
                        format!("'{file}' is shorter than {len} bytes"),
                    ));
                }
                data[..len as usize].to_vec()
            }
            _ => {
                let pattern = match flags.value('P') {
                    Some(p) => pattern_byte(p)?,
                    None => 0xcd,
                };
                vec![pattern; len as usize]
            }
        };
        if flags.has('b') {
            // The VM state area, past the disk (qcow2).
            image.write_vm_state(&buf, off)
        } else if flags.has('c') {
            image.write_compressed(&buf, off)
        } else {
            image.write_at(&buf, off)
        }
    };
    result.map_err(|e| e.context("write failed"))?;
    if !flags.has('q') {
        let _ = writeln!(out, "wrote {len}/{len} bytes at offset {off}");
        stats(out, len, started);
    }
    Ok(())
}

/// `map`: allocation in the top image alone, as qemu-io reports it.
fn map(image: &Image, out: &mut String) -> Result<(), Error> {
    let size = image.size();
    let mut at = 0;
    while at < size {
        let mut end = at;
        let mut allocated = None;
        while end < size {
            let s = image.top_status(end, size - end)?;
            match allocated {
                None => allocated = Some(s.0),
                Some(a) if a != s.0 => break,
                _ => {}
            }
            end += s.1;
        }
        let _ = writeln!(
            out,
            "{} ({:#x}) bytes {} at offset {} ({:#x})",
            cvtstr(end - at),
            end - at,
            if allocated == Some(true) {
                "    allocated"
            } else {
                "not allocated"
            },
            cvtstr(at),
            at
        );
        at = end;
    }
    Ok(())
}

/// Opens `filename` as qemu-io does: writable unless read-only, a probed format other
/// than qcow2 only for reading; with `-s`, writable through a temporary overlay.
fn open_image(
    source: &SourceArgs,
    filename: &str,
    named: bool,
    choices: &OpenChoices,
) -> Result<Opened, Error> {
    let device = (named && !source.image_opts).then_some(filename);
    let image = cannot_open(device, open_chain(source, filename, choices))?;
    crate::print_warnings(&image);
    Ok(Opened {
        image,
        discard_ignored: choices.discard_ignored,
        how: (source.clone(), filename.to_string(), named, choices.clone()),
    })
}

/// `reopen [-r|-w] [-c cache] [-o options]`: the image closed and opened again as it
/// was, read-only or writable as asked, with a raw image's `offset` and `size`
/// changed; other options cannot change here (there is no running guest to keep).
fn reopen_command(open: Opened, args: &[&str]) -> (Option<Opened>, Result<(), Error>) {
    let (source, filename, named, mut choices) = open.how.clone();
    let before = choices.clone();
    let parsed = split_args(args, "co").and_then(|(flags, rest)| {
        if !rest.is_empty() || (flags.has('r') && flags.has('w')) {
            return Err(Error::new(ErrorKind::BadArgument, WRONG_ARGUMENTS));
        }
        check_modes(flags.value('c'), None, None)?;
        if flags.has('r') || flags.has('w') {
            choices.read_only = flags.has('r');
        }
        let (mut offset, mut size) = choices
            .raw_range
            .map_or((None, None), |(o, s)| (Some(o), s));
        for value in flags.values('o') {
            for (key, value) in crate::source::parse_options(value) {
                match key.as_str() {
                    "offset" => offset = Some(crate::create::parse_size(&value)?),
                    "size" => size = Some(crate::create::parse_size(&value)?),
                    "driver"
                        if Some(open.image.format())
                            == crate::source::format_named(&value).ok() => {}
                    other => {
                        return Err(Error::new(
                            ErrorKind::Unsupported,
                            format!("Cannot change the option '{other}'"),
                        ))
                    }
                }
            }
        }
        if offset.is_some() || size.is_some() {
            choices.raw_range = Some((offset.unwrap_or(0), size));
        }
        Ok(())
    });
    if let Err(e) = parsed {
        return (Some(open), Err(e));
    }
    let mut open = open;
    if let Err(e) = open.image.flush() {
        return (Some(open), Err(e));
    }
    drop(open);
    // A reopen that fails leaves the image open as it was, as qemu-io leaves it, and
    // says why in reopen's words (no "can't open").
    let opened = |choices: &OpenChoices| {
        open_chain(&source, &filename, choices).map(|image| Opened {
            image,
            discard_ignored: choices.discard_ignored,
            how: (source.clone(), filename.clone(), named, choices.clone()),
        })
    };
    match opened(&choices) {
        Ok(again) => (Some(again), Ok(())),
        Err(e) => (opened(&before).ok(), Err(e)),
    }
}

/// The chain `open_image` opens, its failures in cowimg's words.
fn open_chain(source: &SourceArgs, filename: &str, choices: &OpenChoices) -> Result<Image, Error> {
    if choices.copy_on_read && choices.read_only {
        return Err(Error::new(
            ErrorKind::BadArgument,
            "Can't use copy-on-read on read-only device",
        ));
    }
    let (path, mut options) = source.resolve(filename)?;
    if let Some(protocol) = &choices.protocol {
        check_protocol(protocol, &path, choices.read_only)?;
    }
    options.locking = !choices.unlocked;
    options.file_format = options.file_format.or(choices.file_format);
    options.raw_range = choices.raw_range.or(options.raw_range);
    if let Some(format) = choices.backing_format {
        options.backing = cowimg::Backing::Format(format);
    }
    if choices.caches != cowimg::CacheSizes::default() {
        options.qcow2_caches = choices.caches.clone();
    }
    let image = if choices.snapshot && !choices.read_only {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let overlay = std::env::temp_dir().join(format!(
            "cowimg-io-snapshot-{}-{n}.qcow2",
            std::process::id()
        ));
        let image = crate::source::new_overlay(&overlay, &path, options.format, &options);
        // Open, it needs no name: nothing is left behind, whatever happens next.
        let _ = std::fs::remove_file(&overlay);
        image?
    } else {
        // Writing needs a stated format or one whose header names it; raw is only read.
        if !choices.read_only && options.format.is_none() {
            options.format = crate::source::probed_self_describing(&path)?;
        }
        options.writable = !choices.read_only && options.format.is_some();
        if !choices.read_only && !options.writable {
            eprintln!(
                "WARNING: Image format was not specified for '{filename}' and probing guessed raw: \
                 it is opened read-only. Specify the 'raw' format explicitly to write."
            );
        }
        Image::open(&path, &options)?
    };
    if choices.copy_on_read && !choices.read_only && image.chain().len() > 1 {
        return Err(Error::new(
            ErrorKind::Unsupported,
            "copy-on-read (-C) is not supported: reads would copy backing data into the image",
        ));
    }
    Ok(image)
}

/// Opens `path` as the protocol driver `protocol` would, failing in its words: the
/// file must open (for writing unless `read_only`), then be a regular file for `file`
/// and a character or block device for `host_device` and `host_cdrom`.
fn check_protocol(protocol: &str, path: &Path, read_only: bool) -> Result<(), Error> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(!read_only)
        .open(path)
        .map_err(|e| Error::io(format!("Could not open '{}'", path.display()), e))?;
    let kind = file
        .metadata()
        .map_err(|e| Error::io(format!("Could not stat '{}'", path.display()), e))?
        .file_type();
    let (fits, required) = match protocol {
        "file" => (kind.is_file(), "a regular file"),
        _ => (
            kind.is_char_device() || kind.is_block_device(),
            "either a character or block device",
        ),
    };
    match fits {
        true => Ok(()),
        false => Err(Error::new(
            ErrorKind::BadArgument,
            format!(
                "'{protocol}' driver requires '{}' to be {required}",
                path.display()
            ),
        )),
    }
}

/// A failed open in qemu-io's words: "can't open device NAME: why" ("can't open: why"
/// when the image was not named by a path), a lock conflict's why without the file's
/// name before it.
fn cannot_open(device: Option<&str>, opened: Result<Image, Error>) -> Result<Image, Error> {
    opened.map_err(|e| {
        let why = match e.kind() {
            ErrorKind::InUse => e
                .message()
                .strip_prefix("Could not open '")
                .and_then(|rest| rest.split_once("': "))
                .map(|(_, why)| why.to_string()),
            _ => None,
        };
        let what = match device {
            None => "can't open".to_string(),
            Some(name) => format!("can't open device {name}"),
        };
        match why {
            Some(why) => Error::new(e.kind(), format!("{what}: {why}")),
            None => e.context(what),
        }
    })
}

/// `open [-rsCnkU] [-t cache] [-d discard] [-o options] path`: the image the following
/// commands work on (`-o driver=FMT` names its format; the cache choice changes
/// nothing here).
fn open_command(source: &SourceArgs, args: &[&str]) -> Result<Opened, Error> {
    let (flags, rest) = split_args(args, "tdo")?;
    let mut path = match rest.as_slice() {
        [path] => Some(path.to_string()),
        [] => None,
        _ => return Err(Error::new(ErrorKind::BadArgument, "open takes one path")),
    };
    let named = path.is_some();
    let mut source = source.clone();
    source.force_share |= flags.has('U');
    let (mut protocol, mut unlocked) = (None, false);
    let mut caches = cowimg::CacheSizes::default();
    let (mut file_format, mut backing_format) = (None, None);
    for value in flags.values('o') {
        let pairs = crate::source::without_blkdebug_node(crate::source::parse_options(value))?;
        for (key, value) in pairs {
            match key.as_str() {
                // A protocol alone reads the bytes as they are: raw.
                "driver" if PROTOCOLS.contains(&value.as_str()) => {
                    source.format = Some("raw".to_string());
                    protocol = Some(value);
                }
                "driver" => source.format = Some(value),
                "filename" | "file.filename" => path = Some(value),
                "file.driver" if PROTOCOLS.contains(&value.as_str()) => protocol = Some(value),
                "file.driver" => file_format = Some(crate::source::format_named(&value)?),
                "file.file.filename" => path = Some(value),
                "backing.driver" => backing_format = Some(crate::source::format_named(&value)?),
                "file.file.driver" if value == "file" => {}
                "locking" | "file.locking" => unlocked = locking_off(&value)?,
                key if crate::source::cache_option(&mut caches, key, &value)? => {}
                key if crate::source::cache_mode_option(key, &value)? => {}
                // blkdebug's request alignment (for `blkdebug::IMAGE`, which reads as
                // the image itself): requests are split, never changed.
                "file.align" if path.as_deref().is_some_and(|p| p.starts_with("blkdebug:")) => {
                    let align = crate::create::parse_size(&value)?;
                    if !align.is_power_of_two() {
                        return Err(Error::new(
                            ErrorKind::BadArgument,
                            "Cannot meet constraints with align",
                        ));
                    }
                }
                other => {
                    return Err(Error::new(
                        ErrorKind::Unsupported,
                        format!("open: option '{other}' is not supported"),
                    ))
                }
            }
        }
    }
    let choices = OpenChoices {
        read_only: flags.has('r'),
        snapshot: flags.has('s'),
        copy_on_read: flags.has('C'),
        discard_ignored: check_modes(flags.value('t'), None, flags.value('d'))?,
        unlocked,
        protocol,
        caches,
        file_format,
        backing_format,
        raw_range: None,
    };
    let path = path.ok_or_else(|| {
        Error::new(
            ErrorKind::BadArgument,
            "open: no filename given (a path, or -o filename=…)",
        )
    })?;
    open_image(&source, &path, named, &choices)
}

/// The protocol drivers `open -o driver=…` names: all read a local file or device.
const PROTOCOLS: [&str; 3] = ["file", "host_device", "host_cdrom"];

/// Whether a `locking=` value turns the locks off, in QEMU's words when it is neither.
fn locking_off(value: &str) -> Result<bool, Error> {
    match value {
        "off" => Ok(true),
        "on" | "auto" => Ok(false),
        _ => Err(Error::new(
            ErrorKind::BadArgument,
            format!("Parameter 'locking' does not accept value '{value}'"),
        )),
    }
}

pub fn run(args: &Args) -> Result<ExitCode, Error> {
    let aio = args.aio.as_deref().or(args.native_aio.then_some("native"));
    let discard_ignored = check_modes(args.cache.as_deref(), aio, args.discard.as_deref())?;
    // -n, -m and -T change how QEMU does its I/O, not what is read or written.
    let _ = (args.nocache, args.misalign, &args.trace);
    let choices = OpenChoices {
        read_only: args.read_only,
        snapshot: args.snapshot,
        copy_on_read: args.copy_on_read,
        discard_ignored,
        unlocked: false,
        protocol: None,
        caches: Default::default(),
        file_format: None,
        backing_format: None,
        raw_range: None,
    };
    let mut image = match &args.filename {
        Some(name) => Some(open_image(&args.source, name, true, &choices)?),
        None => None,
    };
    let mut failed = false;
    // Without -c, commands come from standard input, each after qemu-io's prompt (and
    // one more prompt at the end).
    let interactive = args.commands.is_empty();
    let from_stdin: Box<dyn Iterator<Item = String>> = if interactive {
        Box::new(std::io::stdin().lines().map_while(|l| l.ok()))
    } else {
        Box::new(args.commands.iter().cloned())
    };
    let mut quit = false;
    for command in from_stdin {
        let mut out = String::new();
        if interactive {
            out.push_str("qemu-io> ");
        }
        let words: Vec<&str> = command.split_whitespace().collect();
        // qemu-io reports open's failures with its name, other commands' without.
        let opening = matches!(words.first(), Some(&"open" | &"reopen"));
        let result = match (words.split_first(), image.as_mut()) {
            (Some((&("help" | "?"), rest)), _) => match crate::io_help::help(rest.first().copied())
            {
                Some(text) => {
                    out.push_str(&text);
                    Ok(())
                }
                None => Err(Error::new(
                    ErrorKind::BadArgument,
                    format!("command {} not found", rest[0]),
                )),
            },
            (Some((&("quit" | "q"), _)), _) => {
                crate::print_out(&out);
                quit = true;
                break;
            }
            (Some((&"open", rest)), None) => {
                open_command(&args.source, rest).map(|opened| image = Some(opened))
            }
            (Some((&"open", _)), Some(_)) => Err(Error::new(
                ErrorKind::BadArgument,
                "file open already, try 'help close'",
            )),
            (Some((&"close", _)), Some(_)) => match image.take() {
                Some(open) => open.image.close(),
                None => Ok(()),
            },
            (Some((&"reopen", rest)), Some(_)) => {
                let (again, result) = match image.take() {
                    Some(open) => reopen_command(open, rest),
                    None => (None, Ok(())),
                };
                image = again;
                result
            }
            (Some(_), None) => Err(Error::new(
                ErrorKind::BadArgument,
                "no file open, try 'help open'",
            )),
            (_, Some(open)) => run_command(
                &mut open.image,
                open.discard_ignored,
                &command,
                &mut out,
                &mut failed,
            ),
            (None, None) => Ok(()),
        };
        crate::print_out(&out);
        match result {
            Err(e) if opening || e.message() == READ_ONLY => {
                failed = true;
                complain!("{}", crate::shown(&e));
            }
            // qemu-io's dispatcher complains on standard error; a command prints its own
            // failure on standard output, in order.
            Err(e) => {
                failed = true;
                let message = crate::shown(&e);
                let dispatcher = message.starts_with("no file open")
                    || (message.starts_with("command \"") && message.ends_with("not found"));
                match dispatcher {
                    true => eprintln!("{message}"),
                    false => crate::print_out(&format!("{message}\n")),
                }
            }
            Ok(()) => {}
        }
    }
    if interactive && !quit {
        crate::print_out("qemu-io> ");
    }
    // Closed, not just dropped: what closing stores (bitmaps) can fail, and says so.
    if let Some(open) = image {
        open.image.close()?;
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_io_number_forms() {
        assert_eq!(cvtstr(4096), "4 KiB");
        assert_eq!(cvtstr(512), "512 bytes");
        assert_eq!(cvtstr(1536), "1.500 KiB");
        assert_eq!(cvtstr(0), "0 bytes");
        assert_eq!(number("0x10").unwrap(), 16);
        assert_eq!(number("64k").unwrap(), 65536);
        assert_eq!(pattern_byte("0x41").unwrap(), 0x41);
        assert_eq!(pattern_byte("010").unwrap(), 8);
        assert_eq!(pattern_byte("255").unwrap(), 255);
        for bad in ["-1", "256", "0x", "x"] {
            assert!(pattern_byte(bad).is_err(), "{bad}");
        }
        let (flags, rest) = split_args(&["-P", "0x55", "-q", "0", "4k"], "P").unwrap();
        assert_eq!(flags, Flags(vec![('P', Some("0x55")), ('q', None)]));
        assert_eq!(rest, vec!["0", "4k"]);
    }
}
