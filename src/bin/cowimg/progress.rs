//! qemu-img's `-p`: a progress bar on standard error, drawn only when asked for (and
//! only on a terminal, so logs and pipes stay clean).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar, or nothing when progress was not asked for.
#[derive(Clone)]
pub struct Progress(Option<ProgressBar>);

impl Progress {
    /// A bar over `total` bytes.
    pub fn new(enabled: bool, total: u64) -> Progress {
        Self::styled(enabled, total, "{bytes}/{total_bytes}")
    }

    /// A bar over a count of `what` (its length set as it becomes known).
    pub fn counting(enabled: bool, what: &str) -> Progress {
        Self::styled(enabled, 0, &format!("{{pos}}/{{len}} {what}"))
    }

    fn styled(enabled: bool, total: u64, amount: &str) -> Progress {
        Progress(enabled.then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let template = format!("    {{bar:40}} {{percent:>3}}%  {amount}");
            if let Ok(style) = ProgressStyle::with_template(&template) {
                bar.set_style(style);
            }
            bar
        }))
    }

    /// `n` more done.
    pub fn advance(&self, n: u64) {
        if let Some(bar) = &self.0 {
            bar.inc(n);
        }
    }

    /// `done` of `total` done.
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
