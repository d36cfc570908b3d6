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
