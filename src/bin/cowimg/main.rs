//! The `cowimg` command: qemu-img's subcommands, flags and output shapes.

mod human;
mod info;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "cowimg",
    version,
    about = "Inspect, check and convert qcow2, qcow, cow and raw disk images"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show what an image is: format, sizes, backing file and its header.
    Info(info::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info(args) => info::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cowimg: {e}");
            ExitCode::FAILURE
        }
    }
}
