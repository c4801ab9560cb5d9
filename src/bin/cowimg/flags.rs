//! Flags several subcommands share, declared once: `--output` and `-p`/`-q`.

/// `--output human|json`, as qemu-img takes it.
#[derive(clap::Args)]
pub struct OutputArgs {
    /// Output format: human or json.
    #[arg(long = "output", default_value = "human", value_parser = ["human", "json"])]
    output: String,
}

impl OutputArgs {
    /// Whether JSON was asked for.
    pub fn json(&self) -> bool {
        self.output == "json"
    }
}

/// `-p` (a progress bar) and `-q` (quiet, which also hides the bar).
#[derive(clap::Args)]
pub struct ProgressArgs {
    /// Show a progress bar.
    #[arg(short = 'p')]
    progress: bool,
    /// Quiet.
    #[arg(short = 'q')]
    pub quiet: bool,
}

impl ProgressArgs {
    /// Whether to draw the progress bar.
    pub fn bar(&self) -> bool {
        self.progress && !self.quiet
    }
}
