//! qemu-io's command table as `help` shows it: each command's synopsis line (the same
//! line a command answers wrong arguments with) and its longer help.

/// One qemu-io command this program runs.
pub struct IoCommand {
    /// The name `help` lists it under.
    pub name: &'static str,
    /// Other spellings (`r` for read…).
    pub aliases: &'static [&'static str],
    /// The synopsis line: name, arguments, and what it does after " -- ".
    pub synopsis: &'static str,
    /// What `help NAME` adds below the synopsis (empty for simple commands).
    pub details: &'static str,
}

/// Every command of qemu-io that applies to an image file, in `help`'s order (the
/// breakpoint commands need blkdebug and the zone commands a zoned device).
pub const COMMANDS: &[IoCommand] = &[
    IoCommand {
        name: "abort",
        aliases: &[],
        synopsis: "abort -- simulate a program crash using abort(3)",
        details: "",
    },
    IoCommand {
        name: "aio_flush",
        aliases: &[],
        synopsis: "aio_flush -- completes all outstanding aio requests",
        details: "",
    },
    IoCommand {
        name: "aio_read",
        aliases: &[],
        synopsis: "aio_read [-Ciqrv] [-P pattern] off len [len..] -- asynchronously reads a number of bytes",
        details: "\n Like readv; requests run one after another, in the order given, so each has\n finished (and printed its report) before the next command starts.\n -C, -- print statistics in a machine-readable form\n -i, -- accepted for compatibility; the request runs normally\n -P, -- check that every byte read equals the pattern\n -q, -- print no report\n -r, -- accepted for compatibility\n -v, -- hex dump of what was read\n",
    },
    IoCommand {
        name: "aio_write",
        aliases: &[],
        synopsis: "aio_write [-Cfiqruz] [-P pattern] off len [len..] -- asynchronously writes a number of bytes",
        details: "\n Like writev; requests run one after another, in the order given.\n -C, -- print statistics in a machine-readable form\n -f, -- accepted for compatibility (every write reaches the file)\n -i, -- accepted for compatibility; the request runs normally\n -P, -- the byte to fill the range with (default 0xcd)\n -q, -- print no report\n -r, -- accepted for compatibility\n -u, -- with -z, the range may be deallocated\n -z, -- write zeros\n",
    },
    IoCommand {
        name: "alloc",
        aliases: &[],
        synopsis: "alloc offset [count] -- checks if offset is allocated in the file",
        details: "\n Says how many of the `count` sectors (512 bytes; default 1) from `offset` are\n allocated in the top image, or how many are not, up to the first change.\n",
    },
    IoCommand {
        name: "close",
        aliases: &["c"],
        synopsis: "close -- close the current open file",
        details: "",
    },
    IoCommand {
        name: "discard",
        aliases: &["d"],
        synopsis: "discard [-Cq] off len -- discards a number of bytes at a specified offset",
        details: "\n Deallocates the range; it reads as zeros, or from the backing file when the\n image has one and the format cannot record zeros.\n -C, -- print statistics in a machine-readable form\n -q, -- print no report\n",
    },
    IoCommand {
        name: "flush",
        aliases: &["f"],
        synopsis: "flush -- flush all in-core file state to disk",
        details: "",
    },
    IoCommand {
        name: "help",
        aliases: &["?"],
        synopsis: "help [command] -- help for one or all commands",
        details: "",
    },
    IoCommand {
        name: "info",
        aliases: &["i"],
        synopsis: "info -- prints information about the current file",
        details: "",
    },
    IoCommand {
        name: "length",
        aliases: &["l"],
        synopsis: "length -- gets the length of the current file",
        details: "",
    },
    IoCommand {
        name: "map",
        aliases: &[],
        synopsis: "map  -- prints the allocated areas of a file",
        details: "",
    },
    IoCommand {
        name: "open",
        aliases: &["o"],
        synopsis: "open [-rsCnkU] [-t cache] [-d discard] [-o options] [path] -- open the file specified by path",
        details: "\n Opens an image for the commands that follow (only when none is open).\n -r, -- read-only\n -s, -- writes go to a temporary overlay, dropped at close\n -C, -- copy what is read from backing files into the image\n -n, -- the same as -t none\n -U, -- share the image with other writers (no locks taken)\n -k, -- the same as -i native\n -i, -- the AIO mode: threads, native or io_uring\n -t, -- the cache mode: none, off, writeback, writethrough, directsync, unsafe\n -d, -- the discard mode: ignore/off or unmap/on\n -o, -- block driver options (driver=, file.filename=, backing=, …)\n",
    },
    IoCommand {
        name: "quit",
        aliases: &["exit", "q"],
        synopsis: "quit -- exit the program",
        details: "",
    },
    IoCommand {
        name: "read",
        aliases: &["r"],
        synopsis: "read [-abCqrv] [-P pattern [-s off] [-l len]] off len -- reads a number of bytes at a specified offset",
        details: "\n Reads the range and prints how much was read and how fast.\n -b, -- read the VM state area instead of the guest disk\n -C, -- print statistics in a machine-readable form\n -l, -- with -P, how many bytes to check\n -p, -- accepted for compatibility\n -P, -- check that every byte read equals the pattern\n -q, -- print no report\n -r, -- accepted for compatibility\n -s, -- with -P, where in the range checking starts\n -v, -- hex dump of what was read\n",
    },
    IoCommand {
        name: "readv",
        aliases: &[],
        synopsis: "readv [-Cqrv] [-P pattern] off len [len..] -- reads a number of bytes at a specified offset",
        details: "\n Like read, for pieces lying end to end from `off`.\n -C, -- print statistics in a machine-readable form\n -P, -- check that every byte read equals the pattern\n -q, -- print no report\n -r, -- accepted for compatibility\n -v, -- hex dump of what was read\n",
    },
    IoCommand {
        name: "reopen",
        aliases: &[],
        synopsis: "reopen [(-r|-w)] [-c cache] [-o options] -- reopens an image with new options",
        details: "\n Opens the current image again with changed options; if that fails, the image\n stays open as it was.\n -r, -- read-only from now on\n -w, -- read-write from now on\n -c, -- the cache mode\n -o, -- block driver options, as open takes them\n",
    },
    IoCommand {
        name: "sigraise",
        aliases: &[],
        synopsis: "sigraise signal -- raises a signal",
        details: "\n Sends the program the signal numbered `signal` (9 ends it as a crash would).\n",
    },
    IoCommand {
        name: "sleep",
        aliases: &[],
        synopsis: "sleep -- waits for the given value in milliseconds",
        details: "",
    },
    IoCommand {
        name: "truncate",
        aliases: &["t"],
        synopsis: "truncate [-m prealloc_mode] off -- truncates the current file at the given offset",
        details: "",
    },
    IoCommand {
        name: "write",
        aliases: &["w"],
        synopsis: "write [-bcCfnqruz] [-P pattern | -s source_file] off len -- writes a number of bytes at a specified offset",
        details: "\n Fills the range with a pattern byte (default 0xcd) and prints how much was\n written and how fast.\n -b, -- write the VM state area instead of the guest disk\n -c, -- write compressed clusters\n -C, -- print statistics in a machine-readable form\n -f, -- accepted for compatibility (every write reaches the file)\n -n, -- with -z, fail rather than write zeros out\n -p, -- accepted for compatibility\n -P, -- the pattern byte\n -q, -- print no report\n -r, -- accepted for compatibility\n -s, -- take the data from this file instead of a pattern\n -u, -- with -z, the range may be deallocated\n -z, -- write zeros\n",
    },
    IoCommand {
        name: "writev",
        aliases: &[],
        synopsis: "writev [-Cfqr] [-P pattern] off len [len..] -- writes a number of bytes at a specified offset",
        details: "\n Like write, for pieces lying end to end from `off`.\n -C, -- print statistics in a machine-readable form\n -f, -- accepted for compatibility\n -P, -- the pattern byte\n -q, -- print no report\n -r, -- accepted for compatibility\n",
    },
];

/// The command `name` is (by its name or an alias).
pub fn find(name: &str) -> Option<&'static IoCommand> {
    COMMANDS
        .iter()
        .find(|c| c.name == name || c.aliases.contains(&name))
}

/// What `help` (no argument) or `help NAME` prints; `None` for a command that does not
/// exist.
pub fn help(topic: Option<&str>) -> Option<String> {
    let Some(name) = topic else {
        let mut out: String = COMMANDS
            .iter()
            .map(|c| format!("{}\n", c.synopsis))
            .collect();
        out.push_str("\nUse 'help commandname' for extended help.\n");
        return Some(out);
    };
    let command = find(name)?;
    Some(format!("{}\n{}", command.synopsis, command.details))
}
