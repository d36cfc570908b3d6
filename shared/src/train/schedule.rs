//! Linear warm-up followed by a half-cosine, the schedule GMML/DINO use for the
//! learning rate (and, without warm-up, for weight decay 0.04→0.4).

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CosineSchedule {
    pub start: f64,
    pub end: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
}

impl CosineSchedule {
    pub fn value(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.start * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let t = ((step - self.warmup_steps) as f64 / span as f64).min(1.0);
        self.end + 0.5 * (self.start - self.end) * (1.0 + (std::f64::consts::PI * t).cos())
    }
}

/// Which part of a longer schedule one call to a training loop covers.
///
/// Federated rounds each train a few local epochs, but the learning-rate and
/// weight-decay schedules must span the whole job: round r of R trains epochs
/// `[first_epoch, first_epoch + epochs)` of a schedule `total_epochs` long, so
/// warm-up happens once and the cosine decays across rounds, not within each.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ScheduleWindow {
    pub first_epoch: usize,
    /// `None`: the schedule spans exactly this call's epochs.
    pub total_epochs: Option<usize>,
}

impl ScheduleWindow {
    /// (step offset, total steps) for a call training `epochs` epochs of `per_epoch` steps.
    pub fn steps(&self, epochs: usize, per_epoch: usize) -> (usize, usize) {
        let total = self
            .total_epochs
            .unwrap_or(self.first_epoch + epochs)
            .max(self.first_epoch + epochs);
        (self.first_epoch * per_epoch, total * per_epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_then_decays_to_end() {
        let s = CosineSchedule {
            start: 1.0,
            end: 0.1,
            warmup_steps: 10,
            total_steps: 110,
        };
        assert!((s.value(0) - 0.1).abs() < 1e-12);
        assert!((s.value(9) - 1.0).abs() < 1e-12);
        assert!((s.value(10) - 1.0).abs() < 1e-12);
        assert!((s.value(60) - 0.55).abs() < 1e-12);
        assert!((s.value(110) - 0.1).abs() < 1e-12);
        assert!(s.value(30) > s.value(31));
    }

    #[test]
    fn window_continues_one_schedule_across_calls() {
        let window = ScheduleWindow {
            first_epoch: 2,
            total_epochs: Some(10),
        };
        assert_eq!(window.steps(1, 5), (10, 50));
        assert_eq!(ScheduleWindow::default().steps(3, 5), (0, 15));
    }

    #[test]
    fn increasing_schedule_for_weight_decay() {
        let s = CosineSchedule {
            start: 0.04,
            end: 0.4,
            warmup_steps: 0,
            total_steps: 100,
        };
        assert!((s.value(0) - 0.04).abs() < 1e-12);
        assert!((s.value(100) - 0.4).abs() < 1e-12);
        assert!(s.value(50) > s.value(10));
    }
}
