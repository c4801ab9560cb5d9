//! `--help` laid out as QEMU's tools lay theirs out, when installed as one of them: the
//! same sections in the same order (usage line, "Arguments:" with each option's
//! spellings above its meaning, the command list, the supported formats), rendered from
//! the clap definitions that parse the command line, in cowimg's own words.

use clap::Command;

/// One option as QEMU's help shows it: "  -f, --format FMT", then its meaning indented.
fn option_lines(arg: &clap::Arg) -> String {
    let value = match arg.get_action().takes_values() {
        true => arg
            .get_value_names()
            .and_then(|names| names.first())
            .map(|name| format!(" {name}"))
            .unwrap_or_default(),
        false => String::new(),
    };
    let spelled = match (arg.get_short(), arg.get_long()) {
        (Some(s), Some(l)) => format!("-{s}, --{l}{value}"),
        (Some(s), None) => format!("-{s}{value}"),
        (None, Some(l)) => format!("--{l}{value}"),
        (None, None) => arg
            .get_value_names()
            .and_then(|names| names.first())
            .map(|n| n.to_string())
            .unwrap_or_else(|| arg.get_id().to_string().to_uppercase()),
    };
    let mut meaning = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
    if let Some(aliases) = arg.get_visible_aliases().filter(|a| !a.is_empty()) {
        let spelled: Vec<String> = aliases.iter().map(|a| format!("--{a}")).collect();
        meaning.push_str(&format!(" [aliases: {}]", spelled.join(", ")));
    }
    format!("  {spelled}\n     {meaning}\n")
}

/// The options of `command` (hidden ones left out), help first, as QEMU lists them.
fn arguments(command: &Command) -> String {
    let mut out = String::from("  -h, --help\n     print this help and exit\n");
    for arg in command.get_arguments() {
        if arg.is_hide_set() || arg.get_id() == "help" || arg.get_id() == "version" {
            continue;
        }
        out.push_str(&option_lines(arg));
    }
    out
}

/// The usage line clap renders, without its "Usage: " label.
fn synopsis(command: &mut Command) -> String {
    let usage = command.render_usage().to_string();
    usage.trim_start_matches("Usage:").trim().to_string()
}

/// `qemu-img SUB --help`, `qemu-io --help` or `qemu-img --help`, laid out as QEMU's.
pub fn render(mut root: Command, sub: Option<&str>) -> String {
    let program = root.get_name().to_string();
    let formats = root
        .get_after_help()
        .map(|h| h.to_string())
        .unwrap_or_default();
    if let Some(name) = sub {
        if let Some(command) = root.find_subcommand_mut(name) {
            let mut command = command.clone().bin_name(match program.as_str() {
                "qemu-img" => format!("{program} {name}"),
                _ => program.clone(),
            });
            let about = command
                .get_about()
                .map(|a| a.to_string().trim_end_matches('.').to_string())
                .unwrap_or_default();
            return format!(
                "Usage:\n{about}.  Usage:\n\n  {}\n\nArguments:\n{}",
                synopsis(&mut command),
                arguments(&command)
            );
        }
    }
    let version = root
        .get_version()
        .map(|v| v.to_string())
        .unwrap_or_default();
    let mut out = format!(
        "{program} {version}\nDisk image utility (cowimg).  Usage:\n\n  {program} [standard options] COMMAND [--help | command options]\n\nStandard options:\n  -h, --help\n     display this help and exit\n  -V, --version\n     display version info and exit\n  -T, --trace TRACE\n     accepted; nothing is traced\n\nRecognized commands (run {program} COMMAND --help for command-specific help):\n\n"
    );
    for command in root.get_subcommands().filter(|c| !c.is_hide_set()) {
        let about = command
            .get_about()
            .map(|a| a.to_string())
            .unwrap_or_default();
        out.push_str(&format!("  {} - {about}\n", command.get_name()));
    }
    out.push('\n');
    out.push_str(&formats);
    out.push('\n');
    out
}
