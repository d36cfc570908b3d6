//! Training loops: GMML pretraining and exam-classifier fine-tuning. Each takes
//! a model and prepared exams and returns weights and metrics; none of them
//! knows where the data came from or where the weights go.

mod checkpoint;
mod finetune;
mod optimizer;
mod pretrain;
mod progress;
mod schedule;

pub use checkpoint::{
    CheckpointError, CheckpointFile, EpochCheckpoints, NoCheckpoints, TrainState,
};
pub use finetune::{FinetuneConfig, FinetuneReport, finetune, predict};
pub use optimizer::{Optimizer, ProximalAnchor};
pub use pretrain::{PretrainConfig, PretrainReport, pretrain};
pub use progress::{NoProgress, Progress};
pub use schedule::{CosineSchedule, ScheduleWindow};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("no training data: {0}")]
    NoData(String),
    #[error("loss became {value} at step {step}; lower the learning rate or check the inputs")]
    Diverged { step: usize, value: f64 },
    #[error("all {count} exams carry the same label ({label}); the classifier needs both classes")]
    SingleClass { count: usize, label: bool },
}
