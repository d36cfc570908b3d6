//! Progress reporting without tying the library to a terminal.

/// Receives progress from a training loop; the CLI draws bars, tests ignore it.
pub trait Progress {
    fn start(&mut self, _phase: &str, _total_steps: usize) {}
    fn step(&mut self, _loss: f64) {}
    fn epoch(&mut self, _epoch: usize, _mean_loss: f64) {}
    fn finish(&mut self) {}
}

pub struct NoProgress;
impl Progress for NoProgress {}
