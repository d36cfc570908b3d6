//! Terminal progress bars for training loops (hidden when stderr is not a terminal).

use std::io::IsTerminal;

use fedslice::train::Progress;
use indicatif::{ProgressBar, ProgressStyle};

pub struct Bars {
    bar: Option<ProgressBar>,
    phase: String,
    recent: f64,
}

impl Default for Bars {
    fn default() -> Self {
        Self::new()
    }
}

impl Bars {
    pub fn new() -> Self {
        Self {
            bar: None,
            phase: String::new(),
            recent: f64::NAN,
        }
    }
}

impl Progress for Bars {
    fn start(&mut self, phase: &str, total_steps: usize) {
        self.phase = phase.to_string();
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total_steps as u64);
            let style = ProgressStyle::with_template(
                "{prefix:>9} [{elapsed_precise}] {wide_bar} {pos}/{len} steps  {msg}  eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_prefix(phase.to_string());
            self.bar = Some(bar);
        } else {
            tracing::info!(phase, total_steps, "started");
        }
    }

    fn step(&mut self, loss: f64) {
        self.recent = if self.recent.is_nan() {
            loss
        } else {
            0.9 * self.recent + 0.1 * loss
        };
        if let Some(bar) = &self.bar {
            bar.set_message(format!("loss {:.4}", self.recent));
            bar.inc(1);
        }
    }

    fn epoch(&mut self, epoch: usize, mean_loss: f64) {
        match &self.bar {
            Some(bar) => bar.println(format!(
                "{} epoch {:>3}: mean loss {mean_loss:.4}",
                self.phase,
                epoch + 1
            )),
            None => tracing::info!(phase = %self.phase, epoch = epoch + 1, mean_loss, "epoch done"),
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
