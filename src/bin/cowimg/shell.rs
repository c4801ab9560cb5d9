//! Shell completions and man pages, generated from the same clap definitions that parse
//! the command line, so they cannot drift from it.

use std::path::PathBuf;
use std::process::ExitCode;

/// `completions SHELL`: a completion script for this program's name (cowimg, or
/// qemu-img/qemu-io/qemu-nbd when installed as one) on standard output.
#[derive(clap::Args)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh, fish, elvish or powershell.
    shell: clap_complete::Shell,
}

/// `manpages DIR`: one roff page for the program and one per subcommand, written to DIR.
#[derive(clap::Args)]
pub struct ManpagesArgs {
    /// The folder the pages are written to (man1 style: `cowimg.1`, `cowimg-info.1`, …).
    dir: PathBuf,
}

pub fn completions(args: &CompletionsArgs) -> Result<ExitCode, cowimg::Error> {
    let mut command = crate::command_line();
    let name = command.get_name().to_string();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut command, name, &mut out);
    crate::print_out(&String::from_utf8_lossy(&out));
    Ok(ExitCode::SUCCESS)
}

pub fn manpages(args: &ManpagesArgs) -> Result<ExitCode, cowimg::Error> {
    let command = crate::command_line();
    let written = |what: &str, e: std::io::Error| cowimg::Error::io(what.to_string(), e);
    std::fs::create_dir_all(&args.dir).map_err(|e| written("creating the man page folder", e))?;
    let name = command.get_name().to_string();
    let mut pages = vec![(name.clone(), command.clone())];
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let page = format!("{name}-{}", sub.get_name());
        let spelled = format!("{name} {}", sub.get_name());
        pages.push((page.clone(), sub.clone().name(page).bin_name(spelled)));
    }
    for (page, command) in pages {
        let mut out = Vec::new();
        clap_mangen::Man::new(command)
            .render(&mut out)
            .map_err(|e| written("rendering a man page", e))?;
        let path = args.dir.join(format!("{page}.1"));
        std::fs::write(&path, out)
            .map_err(|e| written(&format!("writing {}", path.display()), e))?;
    }
    Ok(ExitCode::SUCCESS)
}
