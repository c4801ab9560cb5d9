//! qemu-img's `-p`. Installed as qemu-img, the program prints qemu-img's own lines on
//! standard output ("    (42.00/100%)" ending in a carriage return, a step of at
//! least 1% apart, 100% again and a newline at the end), which scripts parse; as cowimg
//! it draws a bar on standard error (only on a terminal, so logs and pipes stay
//! clean).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::sync::{Arc, Mutex};

/// A bar, qemu-img's lines, or nothing when progress was not asked for.
#[derive(Clone)]
pub struct Progress(Shown);

#[derive(Clone)]
enum Shown {
    Off,
    Bar(ProgressBar),
    Lines(Arc<Mutex<Lines>>),
}

/// qemu-img's printer: the percentage so far and the one last printed.
struct Lines {
    done: u64,
    total: u64,
    last_printed: Option<f64>,
}

impl Lines {
    /// Prints the percentage when it moved a whole step (or is 0 or 100), as
    /// qemu-img's progress printer does.
    fn show(&mut self, force: bool) {
        let percent = match self.total {
            0 => 100.0,
            total => (self.done.min(total) as f64 * 100.0 / total as f64) as f32 as f64,
        };
        let moved = self.last_printed.is_none_or(|last| percent >= last + 1.0);
        if force || moved || percent == 100.0 || percent == 0.0 {
            self.last_printed = Some(percent);
            crate::print_out(&format!("    ({percent:3.2}/100%)\r"));
        }
    }
}

impl Progress {
    /// Progress over `total` bytes.
    pub fn new(enabled: bool, total: u64) -> Progress {
        Self::styled(enabled, total, "{bytes}/{total_bytes}")
    }

    /// Progress over a count of `what` (its length set as it becomes known).
    pub fn counting(enabled: bool, what: &str) -> Progress {
        Self::styled(enabled, 0, &format!("{{pos}}/{{len}} {what}"))
    }

    fn styled(enabled: bool, total: u64, amount: &str) -> Progress {
        if !enabled {
            return Progress(Shown::Off);
        }
        if crate::program() == "qemu-img" {
            let mut lines = Lines {
                done: 0,
                total,
                last_printed: None,
            };
            lines.show(true);
            return Progress(Shown::Lines(Arc::new(Mutex::new(lines))));
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        let template = format!("    {{bar:40}} {{percent:>3}}%  {amount}");
        if let Ok(style) = ProgressStyle::with_template(&template) {
            bar.set_style(style);
        }
        Progress(Shown::Bar(bar))
    }

    fn lines(lines: &Mutex<Lines>) -> std::sync::MutexGuard<'_, Lines> {
        lines.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `n` more done.
    pub fn advance(&self, n: u64) {
        match &self.0 {
            Shown::Off => {}
            Shown::Bar(bar) => bar.inc(n),
            Shown::Lines(lines) => {
                let mut lines = Self::lines(lines);
                lines.done += n;
                lines.show(false);
            }
        }
    }

    /// `done` of `total` done.
    pub fn set(&self, done: u64, total: u64) {
        match &self.0 {
            Shown::Off => {}
            Shown::Bar(bar) => {
                bar.set_length(total);
                bar.set_position(done);
            }
            Shown::Lines(lines) => {
                let mut lines = Self::lines(lines);
                lines.done = done;
                lines.total = total;
                lines.show(false);
            }
        }
    }

    /// All done: qemu-img prints 100% once more and ends the line.
    pub fn finish(&self) {
        match &self.0 {
            Shown::Off => {}
            Shown::Bar(bar) => bar.finish(),
            Shown::Lines(lines) => {
                let mut lines = Self::lines(lines);
                lines.done = lines.total;
                lines.show(true);
                crate::print_out("\n");
            }
        }
    }
}
