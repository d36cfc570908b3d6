//! The agent's heartbeat (issue 15): what it is doing, attached to every
//! request it makes, and sent on its own (a `GET /v1/health`) when the state
//! changes or while training keeps the agent from polling, so the operator
//! can tell a training site from a dead one.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fedslice::protocol::{Activity, Heartbeat};
use fedslice::train::Progress;

use crate::progress::Bars;

/// While busy, a heartbeat at least this often. The aggregator sees a site
/// as silent only after several of these are missing.
pub const BUSY_EVERY: Duration = Duration::from_secs(15);

struct Inner {
    activity: Activity,
    /// State name of the last heartbeat sent, and when it went.
    sent: Option<(&'static str, Instant)>,
}

/// The agent's current activity, shared by the loop, the training thread and
/// the client.
pub struct Reporter {
    inner: Mutex<Inner>,
    version: String,
    device: String,
    /// Woken on every change of state, so a state is reported as it starts.
    pub changed: tokio::sync::Notify,
}

impl Reporter {
    pub fn new(device: &str) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner {
                activity: Activity::Idle,
                sent: None,
            }),
            version: env!("CARGO_PKG_VERSION").to_string(),
            device: device.to_string(),
            changed: tokio::sync::Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere cannot leave an Activity half-written.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set(&self, activity: Activity) {
        let changed = {
            let mut inner = self.lock();
            let changed = inner.activity.name() != activity.name();
            inner.activity = activity;
            changed
        };
        if changed {
            self.changed.notify_one();
        }
    }

    pub fn activity(&self) -> Activity {
        self.lock().activity.clone()
    }

    /// The header value for a request about to go out; counts as sent.
    pub fn header(&self) -> String {
        let mut inner = self.lock();
        inner.sent = Some((inner.activity.name(), Instant::now()));
        Heartbeat::new(inner.activity.clone(), &self.version, &self.device).to_header()
    }

    /// Whether a heartbeat of its own should go now: the state changed since
    /// the last one, or the agent is busy and has said nothing for `every`.
    pub fn due(&self, every: Duration) -> bool {
        let inner = self.lock();
        match inner.sent {
            None => true,
            Some((name, _)) if name != inner.activity.name() => true,
            Some((_, at)) => !matches!(inner.activity, Activity::Idle) && at.elapsed() >= every,
        }
    }
}

/// The terminal bars plus the heartbeat's training state.
pub struct TrainingProgress {
    bars: Bars,
    reporter: Arc<Reporter>,
    job: String,
    round: u32,
    epochs: u32,
    epoch: u32,
    step: u64,
    steps: u64,
    started: Instant,
}

impl TrainingProgress {
    pub fn new(reporter: Arc<Reporter>, job: &str, round: u32, epochs: usize) -> Self {
        Self {
            bars: Bars::new(),
            reporter,
            job: job.to_string(),
            round,
            epochs: (epochs as u32).max(1),
            epoch: 1,
            step: 0,
            steps: 0,
            started: Instant::now(),
        }
    }

    fn report(&self) {
        let eta_s = (self.step > 0).then(|| {
            let per_step = self.started.elapsed().as_secs_f64() / self.step as f64;
            (per_step * self.steps.saturating_sub(self.step) as f64).round() as u64
        });
        self.reporter.set(Activity::Training {
            job: self.job.clone(),
            round: self.round,
            epoch: self.epoch.min(self.epochs),
            epochs: self.epochs,
            step: self.step.min(self.steps),
            steps: self.steps,
            eta_s,
        });
    }
}

impl Progress for TrainingProgress {
    fn start(&mut self, phase: &str, total_steps: usize) {
        self.bars.start(phase, total_steps);
        self.steps = total_steps as u64;
        self.step = 0;
        self.started = Instant::now();
        self.report();
    }

    fn step(&mut self, loss: f64) {
        self.bars.step(loss);
        self.step += 1;
        self.report();
    }

    fn epoch(&mut self, epoch: usize, mean_loss: f64) {
        self.bars.epoch(epoch, mean_loss);
        // `epoch` is 0-based and done: the next one is under way.
        self.epoch = epoch as u32 + 2;
        self.report();
    }

    fn finish(&mut self) {
        self.bars.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_of_state_is_due_at_once_and_idle_is_not_repeated() {
        let reporter = Reporter::new("ndarray");
        assert!(reporter.due(BUSY_EVERY), "nothing sent yet");
        let _ = reporter.header();
        assert!(!reporter.due(Duration::ZERO), "idle: the polls carry it");
        reporter.set(Activity::Preparing { done: 0, total: 4 });
        assert!(reporter.due(BUSY_EVERY));
        let _ = reporter.header();
        assert!(!reporter.due(BUSY_EVERY));
        assert!(reporter.due(Duration::ZERO), "busy: repeated when quiet");
    }

    #[test]
    fn training_progress_reads_as_epochs_and_steps() {
        let reporter = Reporter::new("ndarray");
        let mut progress = TrainingProgress::new(reporter.clone(), "job-1", 2, 2);
        progress.start("finetune", 10);
        for _ in 0..5 {
            progress.step(0.5);
        }
        progress.epoch(0, 0.5);
        progress.step(0.4);
        match reporter.activity() {
            Activity::Training {
                job,
                round,
                epoch,
                epochs,
                step,
                steps,
                eta_s,
            } => {
                assert_eq!((job.as_str(), round), ("job-1", 2));
                assert_eq!((epoch, epochs, step, steps), (2, 2, 6, 10));
                assert!(eta_s.is_some());
            }
            other => panic!("{other:?}"),
        }
        let header = Heartbeat::parse(&reporter.header()).expect("valid heartbeat");
        assert_eq!(header.device, "ndarray");
    }
}
