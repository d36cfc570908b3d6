//! The JSON messages the aggregator and the site agents exchange, and the job
//! recipe both sides must agree on. Model tensors travel separately, in the
//! binary format of [`crate::wire`]; nothing here can carry pixels or patient
//! identifiers.

use serde::{Deserialize, Serialize};

use crate::aggregate::ServerOptimizer;
use crate::data::preprocess::PreprocessConfig;
use crate::model::ClassifierConfig;
use crate::train::{FinetuneConfig, PretrainConfig};
use crate::wire::Dtype;

/// URL paths of the aggregator's API, so both sides use the same strings.
pub mod paths {
    pub const WORK: &str = "/v1/work";
    pub const UPDATES: &str = "/v1/updates";
    pub const MODELS: &str = "/v1/models";
    pub const HEALTH: &str = "/v1/health";
    /// Resumable update uploads: `GET {UPLOADS}/{digest}` says how many bytes
    /// the aggregator holds; `PATCH {UPLOADS}/{digest}` appends from
    /// [`super::UPLOAD_OFFSET`] towards [`super::UPLOAD_LENGTH`].
    pub const UPLOADS: &str = "/v1/uploads";
}

/// Header of a resumable upload chunk: where it starts in the payload.
pub const UPLOAD_OFFSET: &str = "upload-offset";
/// Header of a resumable upload chunk: the whole payload's length.
pub const UPLOAD_LENGTH: &str = "upload-length";

/// How much of a resumable upload the aggregator holds (answer to `GET` and
/// to a `PATCH` that leaves the upload incomplete, with 202).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadProgress {
    pub received: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// GMML self-supervised pretraining of the encoder (labels unused).
    Pretrain,
    /// Exam-classifier fine-tuning on the sites' labelled exams.
    Finetune,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Pretrain => "pretrain",
            Self::Finetune => "finetune",
        })
    }
}

impl std::str::FromStr for Phase {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pretrain" => Ok(Self::Pretrain),
            "finetune" => Ok(Self::Finetune),
            other => Err(format!(
                "unknown phase `{other}` (expected pretrain or finetune)"
            )),
        }
    }
}

/// How the aggregator combines the round's updates.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Aggregation {
    /// Sample-weighted mean, streamed: memory O(model) whatever the number of sites.
    Fedavg,
    /// Coordinate-wise median (robust to a minority of hostile sites; holds every update in memory).
    Median,
    /// Per coordinate, drop the `trim` largest and smallest values, average the rest.
    TrimmedMean { trim: usize },
}

/// Everything a site needs to train its part of a round, fixed when the job is created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub phase: Phase,
    pub preset: String,
    pub model: ClassifierConfig,
    pub preprocess: PreprocessConfig,
    /// Local GMML recipe; `epochs` is the local epochs per round.
    pub pretrain: PretrainConfig,
    /// Local fine-tuning recipe; `epochs` is the local epochs per round.
    pub finetune: FinetuneConfig,
    pub rounds: u32,
    pub min_sites: u32,
    pub round_timeout_s: u64,
    /// The finished pretrain job whose global encoder initialises this one.
    pub init_from: Option<String>,
    pub dtype: Dtype,
    pub aggregation: Aggregation,
    pub server_optimizer: ServerOptimizer,
    /// Each site's update is scaled down to this L2 norm before it counts.
    pub clip_update_norm: Option<f64>,
    /// Updates with a larger L2 norm are refused outright (broken or hostile).
    pub max_update_norm: f64,
    /// Fraction of a site's labelled exams held back to evaluate the global model.
    pub validation_fraction: f64,
    pub seed: u64,
}

impl JobSpec {
    pub fn local_epochs(&self) -> usize {
        match self.phase {
            Phase::Pretrain => self.pretrain.epochs,
            Phase::Finetune => self.finetune.epochs,
        }
    }
}

/// One round's task for a site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Work {
    pub job: String,
    pub spec: JobSpec,
    /// 1-based; the global model is version `round - 1`.
    pub round: u32,
    /// Content digest of the global model to train from (`GET /v1/models/{digest}`).
    pub model_digest: String,
    pub deadline_unix_s: u64,
}

impl Work {
    /// The upload payload of this work's result: `delta` from the round's
    /// global model, in the job's dtype.
    pub fn encode_update(
        &self,
        delta: &crate::wire::TensorMap,
        samples: u64,
        metrics: std::collections::BTreeMap<String, f64>,
    ) -> Result<Vec<u8>, crate::wire::WireError> {
        let meta = crate::wire::PayloadMeta {
            kind: crate::wire::PayloadKind::Update,
            job: self.job.clone(),
            round: self.round,
            base_digest: Some(self.model_digest.clone()),
            samples,
            metrics,
        };
        crate::wire::encode(meta, delta, self.spec.dtype, 3)
    }
}

/// Answer to a long-poll for work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PollResponse {
    pub work: Option<Work>,
    /// Jobs not yet finished (pending or running); 0 means the consortium is idle.
    pub open_jobs: u32,
    /// Why there is no work for this site right now, for the agent's log.
    pub waiting_for: Option<String>,
}

/// Answer to an accepted upload; sent only after the update is durable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadReceipt {
    pub job: String,
    pub round: u32,
    pub digest: String,
    /// The same update had already been received (an idempotent retry).
    pub duplicate: bool,
    pub reported: u32,
    pub expected: u32,
}

/// Body of every 4xx/5xx answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}
