//! qemu-img's `-p`: a progress bar on standard error, drawn only when asked for (and
//! only on a terminal, so logs and pipes stay clean).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar, or nothing when progress was not asked for.
#[derive(Clone)]
pub struct Progress(Option<ProgressBar>);

impl Progress {
    pub fn new(enabled: bool, total: u64) -> Progress {
        Progress(enabled.then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            if let Ok(style) =
                ProgressStyle::with_template("    {bar:40} {percent:>3}%  {bytes}/{total_bytes}")
            {
                bar.set_style(style);
            }
            bar
        }))
    }

    /// `n` more bytes done.
    pub fn advance(&self, n: u64) {
        if let Some(bar) = &self.0 {
            bar.inc(n);
        }
    }

    /// `done` bytes of `total` done.
    pub fn set(&self, done: u64, total: u64) {
        if let Some(bar) = &self.0 {
            bar.set_length(total);
            bar.set_position(done);
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish();
        }
    }
}
