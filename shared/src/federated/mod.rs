//! The model side of federation: turning burn modules into the wire's tensor
//! maps and back, building a job's initial global model, and one site's local
//! work for a round (train, then report the delta Δ = w_local − w_global and a
//! [`SiteReport`]), and how the aggregator combines the sites' reports.
//!
//! Nothing here touches the network or the disk: the site agent decides where
//! the global model comes from and where the update goes.

mod local;
mod model_io;
mod recipe;
mod report;
mod simulate;

use local::labelled_split;
pub use local::{LocalUpdate, SiteExams, evaluate_global, site_salt, train_round};
pub use model_io::{from_tensor_map, to_tensor_map};
pub use recipe::{JobOptions, initial_model, job_spec};
pub use report::{
    CONSENSUS_THRESHOLD_METHOD, Discrimination, EpochLosses, MAX_REPORTED_EXAMS,
    MAX_REPORTED_STEPS, ReportError, SiteReport, ValidationSummary, consensus_threshold,
};
pub use simulate::{SimulatedJob, SimulatedRound, evaluate_round, run_job};

#[derive(Debug, thiserror::Error)]
pub enum FederatedError {
    #[error(transparent)]
    Wire(#[from] crate::wire::WireError),
    #[error(transparent)]
    Train(#[from] crate::train::TrainError),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    #[error("model tensors: {0}")]
    Model(String),
    #[error(transparent)]
    Aggregate(#[from] crate::aggregate::AggregateError),
    #[error("job recipe: {0}")]
    Recipe(String),
}
