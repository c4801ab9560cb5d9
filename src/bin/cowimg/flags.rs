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
    #[arg(short = 'p', long = "progress")]
    progress: bool,
    /// Quiet.
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,
}

impl ProgressArgs {
    /// Whether to draw the progress bar.
    pub fn bar(&self) -> bool {
        self.progress && !self.quiet
    }
}

/// The cache modes qemu-img takes for `-t`/`-T`. They change how QEMU flushes, never
/// what lands in the image; cowimg writes and flushes the same way under each.
pub const CACHE_MODES: [&str; 6] = [
    "none",
    "off",
    "writeback",
    "writethrough",
    "directsync",
    "unsafe",
];

/// `--partition N`: one partition of the guest disk instead of the whole disk.
#[derive(clap::Args)]
pub struct PartitionArgs {
    /// Only this partition of the guest disk (its number as `cowimg partitions` lists it).
    #[arg(long = "partition", value_name = "N")]
    partition: Option<u32>,
}

impl PartitionArgs {
    /// Opens the image at `path` at internal snapshot `id`, narrowed to the partition.
    pub fn open_snapshot(
        &self,
        path: &std::path::Path,
        options: &cowimg::OpenOptions,
        id: &str,
    ) -> Result<cowimg::Image, cowimg::Error> {
        let at = options
            .clone()
            .snapshot(cowimg::SnapshotRef::Id(id.to_string()));
        let mut image = cowimg::Image::open(path, &at)?;
        self.apply(&mut image)?;
        Ok(image)
    }

    /// Narrows `image` to the partition, if one was asked for.
    pub fn apply(&self, image: &mut cowimg::Image) -> Result<(), cowimg::Error> {
        match self.partition {
            Some(n) => image.select_partition(n),
            None => Ok(()),
        }
    }
}

/// What every reporting command takes: how to open the image, and `--output`.
#[derive(clap::Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub source: crate::source::SourceArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}
