//! The `cowimg` command: qemu-img's subcommands, flags and output shapes.

/// Prints a message to standard error after the program's name ("qemu-img: …" when
/// installed as qemu-img), as QEMU's tools print theirs.
macro_rules! complain {
    ($($arg:tt)*) => {
        eprintln!("{}: {}", $crate::program(), format_args!($($arg)*))
    };
}

mod bench;
mod bitmap;
mod carve;
mod check;
mod compare;
mod convert;
mod create;
mod dd;
mod edit;
mod flags;
mod hash;
mod human;
mod info;
mod inspect;
mod io;
mod io_help;
mod map;
mod measure;
mod mount;
mod nbd;
mod option_help;
mod partitions;
mod progress;
mod qemu_help;
mod resize;
mod shell;
mod snapshot;
mod source;
mod throttle;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::io::Write;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "cowimg",
    version,
    about = "Inspect, check and convert qcow2, qcow, cow and raw disk images",
    // The section qemu-img's help ends with, which scripts read to learn the formats.
    after_help = "Supported image formats:\n\n  cow file host_cdrom host_device http https luks null-aio null-co qcow qcow2 raw"
)]
struct Cli {
    /// QEMU's trace options (qemu-img -T before the command): accepted, nothing is
    /// traced.
    #[arg(short = 'T', long = "trace", value_name = "OPTIONS")]
    trace: Option<String>,
    #[command(subcommand)]
    command: Command,
}

/// The QEMU release whose tools cowimg stands in for: what `--version` reports when
/// installed as one of them (scripts read the version to know what the tool can do).
const QEMU_VERSION: &str = "10.0.2";

#[derive(Subcommand)]
enum Command {
    /// Show what an image is: format, sizes, backing file, snapshots.
    Info(info::Args),
    /// Show where each range of the virtual disk is stored.
    Map(map::Args),
    /// Give an image another backing file (-u: just rename it).
    Rebase(edit::RebaseArgs),
    /// Change an image's virtual size.
    Resize(resize::Args),
    /// List, create, apply or delete internal snapshots.
    Snapshot(snapshot::Args),
    /// Change options of an existing image: compat, lazy_refcounts, refcount_bits,
    /// data_file, size, LUKS key slots.
    Amend(edit::AmendArgs),
    /// Add, remove, clear, enable, disable or merge persistent bitmaps (qcow2 v3).
    Bitmap(bitmap::Args),
    /// Check an image's metadata, and repair it with -r.
    Check(check::Args),
    /// Compare the guest content of two images.
    Compare(compare::Args),
    /// Write an image's data into its backing file.
    Commit(edit::CommitArgs),
    /// Copy the virtual disk into a new image.
    Convert(convert::Args),
    /// Time a run of read or write requests, as qemu-img bench does.
    Bench(bench::Args),
    /// Copy blocks of an image into a new image, with dd's operands.
    Dd(dd::Args),
    /// How large a new image holding this data (or of this size) would be.
    Measure(measure::Args),
    /// Create a new image.
    Create(create::Args),
    /// Run qemu-io commands (read, write, discard, flush, map, length, abort…).
    Io(io::Args),
    /// Serve an image over NBD (qemu-nbd's options: -r, -x, -p, -b, -k, -t, -e, -l, -A).
    Nbd(nbd::Args),
    /// Digests of the guest disk and its snapshots (sha256, sha1, md5; per window too).
    Hash(hash::Args),
    /// Extract what the current state does not reach: freed, leaked, snapshot-only data.
    Carve(carve::Args),
    /// Every structure of every file, with host offsets, and what check finds.
    Inspect(inspect::Args),
    /// The guest disk's partition table (GPT or MBR), offsets in bytes.
    Partitions(partitions::Args),
    /// Mount the guest disk (and each snapshot) as files through FUSE.
    Mount(mount::Args),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(shell::CompletionsArgs),
    /// Write man pages (this program's and one per subcommand) into a folder.
    Manpages(shell::ManpagesArgs),
}

/// The name this program goes by: qemu-img, qemu-io or qemu-nbd when installed as
/// (or linked to) one of them, else cowimg.
pub fn program() -> &'static str {
    static NAME: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        let invoked = std::env::args_os().next().unwrap_or_default();
        let base = std::path::Path::new(&invoked)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        ["qemu-img", "qemu-io", "qemu-nbd"]
            .into_iter()
            .find(|p| *p == base)
            .unwrap_or("cowimg")
    })
}

/// An error as this program shows it: installed as a QEMU tool, in QEMU's words alone
/// (scripts match QEMU's lines), else with the on-disk structure, field and value that
/// cowimg names after them.
pub fn shown(e: &cowimg::Error) -> String {
    match program() {
        "cowimg" => e.to_string(),
        _ => format!("{e:#}"),
    }
}

/// The command line as cowimg parses it: installed as qemu-io or qemu-nbd, the `io` or
/// `nbd` subcommand is implied (qemu-img's subcommands are cowimg's).
fn arguments() -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let implied = match program() {
        "qemu-io" => Some("io"),
        "qemu-nbd" => Some("nbd"),
        _ => None,
    };
    if let Some(sub) = implied {
        args.insert(1.min(args.len()), sub.into());
    }
    args
}

/// Prints what the images of a chain warn about, as qemu-img prints its warnings.
pub fn print_warnings(image: &cowimg::Image) {
    for entry in image.chain() {
        for w in &entry.warnings {
            complain!("warning: {w}");
        }
    }
}

/// Prints to standard output; a reader that went away (`| head`) ends the program
/// quietly, as it would for qemu-img.
pub fn print_out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    if stdout
        .write_all(text.as_bytes())
        .and_then(|_| stdout.flush())
        .is_err()
    {
        std::process::exit(0);
    }
}

/// The command line's definition under this program's name, with getopt's rules: a
/// repeated option takes its last value, a long option may be abbreviated (what
/// parsing, completions and man pages share).
pub fn command_line() -> clap::Command {
    let names: Vec<String> = Cli::command()
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    // getopt_long also takes any unambiguous beginning of a long option (--progres).
    let mut command = Cli::command()
        .name(program())
        .bin_name(program())
        .args_override_self(true);
    if program() != "cowimg" {
        // "qemu-img version 10.0.2 (cowimg 0.1.0)" as qemu-img and qemu-io say theirs;
        // qemu-nbd's line has no "version".
        let word = if program() == "qemu-nbd" {
            ""
        } else {
            "version "
        };
        command = command
            .version(format!(
                "{word}{QEMU_VERSION} (cowimg {})",
                env!("CARGO_PKG_VERSION")
            ))
            .propagate_version(true);
        // qemu-io and qemu-nbd are their subcommand: it goes by the program's name.
        for implied in ["io", "nbd"] {
            command =
                command.mut_subcommand(implied, |s| s.display_name(program()).bin_name(program()));
        }
    }
    for name in names {
        command =
            command.mut_subcommand(name, |s| s.args_override_self(true).infer_long_args(true));
    }
    // bitmap's -F is --source-format: there -f has no other spellings.
    command.mut_subcommand("bitmap", |s| s.mut_arg("format", |a| a.visible_alias(None)))
}

/// A usage error as QEMU's tool says it, when installed as one (getopt's words, then
/// where help is); None to let clap say it.
fn qemu_usage_error(e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let program = program();
    if program == "cowimg" {
        return None;
    }
    let args: Vec<String> = std::env::args().collect();
    // qemu-img's messages name the subcommand; qemu-io's and qemu-nbd's have none.
    let (who, help) = match (program, args.get(1)) {
        ("qemu-img", Some(sub)) if !sub.starts_with('-') => (
            format!("{program} {sub}"),
            format!("Try '{program} {sub} --help' for more info"),
        ),
        _ => (
            program.to_string(),
            format!("Try '{program} --help' for more info"),
        ),
    };
    let context = |kind: ContextKind| match e.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    let line = match e.kind() {
        // (A word that is no option is an extra file name: clap words that one.)
        ErrorKind::UnknownArgument => {
            let arg = context(ContextKind::InvalidArg).filter(|a| a.starts_with('-'))?;
            match arg.strip_prefix("--") {
                Some(_) => format!("{who}: unrecognized option '{arg}'"),
                None => format!("{who}: invalid option -- '{}'", arg.trim_start_matches('-')),
            }
        }
        ErrorKind::InvalidValue if context(ContextKind::InvalidValue).as_deref() == Some("") => {
            // The option as typed last: its short letter, or its long name.
            let typed = args.last().cloned().unwrap_or_default();
            match typed.strip_prefix("--") {
                Some(long) => format!("{who}: option '--{long}' requires an argument"),
                None => format!(
                    "{who}: option requires an argument -- '{}'",
                    typed.trim_start_matches('-')
                ),
            }
        }
        ErrorKind::InvalidSubcommand => {
            let sub = context(ContextKind::InvalidSubcommand)?;
            return Some(format!(
                "{program}: Command not found: {sub}\nTry '{program} --help' for more info"
            ));
        }
        ErrorKind::MissingSubcommand | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            format!("{program}: Not enough arguments")
        }
        _ => return None,
    };
    Some(format!("{line}\n{help}"))
}

fn main() -> ExitCode {
    // A usage error exits 1, as qemu-img's do: 2 would tell a script that `check`
    // found corruption.
    let command = command_line();
    let parsed = command
        .try_get_matches_from(arguments())
        .and_then(|m| Cli::from_arg_matches(&m).map(|cli| (cli, m)));
    let (cli, matches) = match parsed {
        Ok(parsed) => parsed,
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp && program() != "cowimg" => {
            // QEMU's layout: the subcommand typed (qemu-img), or the implied one.
            let args: Vec<String> = std::env::args().collect();
            let sub = match program() {
                "qemu-io" => Some("io"),
                "qemu-nbd" => Some("nbd"),
                _ => args
                    .get(1)
                    .map(String::as_str)
                    .filter(|a| !a.starts_with('-')),
            };
            print_out(&qemu_help::render(command_line(), sub));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            match qemu_usage_error(&e) {
                Some(text) => eprintln!("{text}"),
                None => {
                    let _ = e.print();
                }
            }
            return ExitCode::from(if e.use_stderr() { 1 } else { 0 });
        }
    };
    let result = match cli.command {
        Command::Info(args) => info::run(&args),
        Command::Map(args) => map::run(&args),
        Command::Resize(args) => resize::run(&args),
        Command::Snapshot(args) => snapshot::run(&args),
        Command::Amend(args) => edit::amend(&args),
        // Its actions run in command-line order, which only the matches keep.
        Command::Bitmap(args) => match matches.subcommand_matches("bitmap") {
            Some(m) => bitmap::run(&args, m),
            None => Ok(ExitCode::FAILURE),
        },
        Command::Check(args) => check::run(&args),
        Command::Commit(args) => edit::commit(&args),
        Command::Compare(args) => compare::run(&args),
        Command::Rebase(args) => edit::rebase(&args),
        Command::Convert(args) => convert::run(&args),
        Command::Create(args) => create::run(&args),
        Command::Io(args) => io::run(&args),
        Command::Nbd(args) => nbd::run(&args),
        Command::Hash(args) => hash::run(&args),
        Command::Carve(args) => carve::run(&args),
        Command::Inspect(args) => inspect::run(&args),
        Command::Partitions(args) => partitions::run(&args),
        Command::Mount(args) => mount::run(&args),
        Command::Measure(args) => measure::run(&args),
        Command::Dd(args) => dd::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Completions(args) => shell::completions(&args),
        Command::Manpages(args) => shell::manpages(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            complain!("{}", shown(&e));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod definition_tests {
    /// clap's own checks of the whole definition (unique names, spellings, …): they run
    /// only in debug builds and only for the subcommand parsed, so a conflict elsewhere
    /// would hide until that subcommand is used.
    #[test]
    fn the_command_line_definition_is_consistent() {
        super::command_line().debug_assert();
    }
}
