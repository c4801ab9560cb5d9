//! Completions and man pages come from the clap definitions: a shell completes the
//! subcommands and options the program takes, and every option `--help` lists is in its
//! subcommand's page.

mod common;

use common::*;
use std::process::Command;

/// `cowimg --help`'s or `cowimg SUB --help`'s long options, read from the help text.
fn long_options(sub: Option<&str>) -> Vec<String> {
    let mut args: Vec<&str> = sub.into_iter().collect();
    args.push("--help");
    // Other spellings ("[alias: --x]", "[aliases: --x, --y]") are not options of their own.
    let help: String = cowimg(&args)
        .lines()
        .map(|l| l.split(" [alias").next().unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out: Vec<String> = help
        .split(|c: char| c.is_whitespace() || c == ',' || c == '=' || c == '[')
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| {
            w.trim_end_matches(|c: char| !c.is_alphanumeric())
                .to_string()
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// What bash completes `words` to, the completion script loaded as a user would.
fn bash_completes(script: &std::path::Path, words: &[&str]) -> Vec<String> {
    let line = words.join(" ");
    let program = format!(
        "source {}\nCOMP_WORDS=({line})\nCOMP_CWORD={}\nCOMP_LINE='{line}'\nCOMP_POINT=${{#COMP_LINE}}\n_cowimg cowimg '{}' '{}'\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        script.display(),
        words.len() - 1,
        words[words.len() - 1],
        words[words.len() - 2],
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(program)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn bash_completes_subcommands_and_their_options() {
    let dir = Scratch::new("completions");
    let script = dir.path("cowimg.bash");
    std::fs::write(&script, cowimg(&["completions", "bash"])).unwrap();
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .status()
        .unwrap();
    assert!(syntax.success());

    assert_eq!(bash_completes(&script, &["cowimg", "conv"]), ["convert"]);
    let mut snap = bash_completes(&script, &["cowimg", "s"]);
    snap.sort();
    assert_eq!(snap, ["snapshot"]);
    let convert = bash_completes(&script, &["cowimg", "convert", "--target-is"]);
    assert_eq!(convert, ["--target-is-zero"]);
}

#[test]
fn every_subcommand_has_a_page_naming_each_of_its_options() {
    let dir = Scratch::new("manpages");
    cowimg(&["manpages", &dir.str("man")]);
    let help = cowimg(&["--help"]);
    let subcommands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|s| *s != "help")
        .collect();
    assert!(
        subcommands.contains(&"convert") && subcommands.len() > 20,
        "{subcommands:?}"
    );
    for sub in subcommands {
        let page = std::fs::read_to_string(dir.path(&format!("man/cowimg-{sub}.1")))
            .unwrap_or_else(|e| panic!("no page for {sub}: {e}"));
        assert!(
            page.contains(&format!(".TH cowimg-{sub} 1")),
            "{sub}: {page}"
        );
        // roff escapes '-' as "\-".
        let page = page.replace("\\-", "-");
        for option in long_options(Some(sub)) {
            assert!(page.contains(&option), "cowimg-{sub}.1 lacks {option}");
        }
    }
    let top = std::fs::read_to_string(dir.path("man/cowimg.1")).unwrap();
    assert!(top.contains("cowimg\\-convert(1)") || top.contains("cowimg-convert(1)"));
}
