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

/// Every site request may carry the agent's state (issue 15); see [`crate::heartbeat`].
pub use crate::heartbeat::{Activity, HEARTBEAT_HEADER, Heartbeat};

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
    /// `POST`: a site declines a job its local policy does not allow ([`super::WorkRefusal`]).
    pub const REFUSALS: &str = "/v1/refusals";
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
    /// Site-level differential privacy (DP-FedAvg); `None` for a job without it.
    /// Absent in specs stored before it existed.
    #[serde(default)]
    pub dp: Option<crate::privacy::DpConfig>,
}

impl JobSpec {
    /// Refuses DP settings that would void the guarantee, with the reason.
    pub fn check_dp(&self) -> Result<(), String> {
        let Some(dp) = &self.dp else { return Ok(()) };
        dp.validate().map_err(|e| e.to_string())?;
        if self.aggregation != Aggregation::Fedavg {
            return Err(format!(
                "a DP job must use --aggregation fedavg: the accountant's sensitivity C/m holds for \
                 the clipped mean only, and a {:?} of the updates has no such bound",
                self.aggregation
            ));
        }
        if self.clip_update_norm.is_some() {
            return Err(
                "a DP job clips every update to --dp-clip; --clip-update-norm would be a \
                 second, conflicting clip"
                    .into(),
            );
        }
        if dp.sampling_rate < 1.0 {
            return Err(
                "site sampling (--dp-sampling-rate < 1) is not implemented by the round \
                 engine: every site trains every round, and claiming amplification by sampling \
                 that did not happen would understate epsilon"
                    .into(),
            );
        }
        Ok(())
    }

    /// Whether `round` is a finetune job's evaluation round: the one after
    /// its last training round, in which every site scores the final global
    /// classifier on its validation exams and reports only those numbers
    /// (with a zero delta). The exported threshold and model card use it, so
    /// they describe the model that is exported rather than the one before.
    pub fn is_evaluation_round(&self, round: u32) -> bool {
        self.phase == Phase::Finetune && round == self.rounds.saturating_add(1)
    }

    /// Training rounds plus, for a finetune job, its evaluation round.
    pub fn total_rounds(&self) -> u32 {
        match self.phase {
            Phase::Pretrain => self.rounds,
            Phase::Finetune => self.rounds.saturating_add(1),
        }
    }

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

/// The longest job id a site accepts (the aggregator's own are `job-N`).
pub const MAX_JOB_ID_LEN: usize = 64;

/// Whether `id` can be a job id: 1 to [`MAX_JOB_ID_LEN`] ASCII letters,
/// digits, `-` and `_`. No such string can name a directory or leave one.
pub fn is_job_id(id: &str) -> bool {
    (1..=MAX_JOB_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Identifiers in a work item that a site must not use.
#[derive(Debug, thiserror::Error)]
pub enum WorkIdError {
    #[error("job id `{0}` is not 1 to {MAX_JOB_ID_LEN} ASCII letters, digits, `-` or `_`")]
    JobId(String),
    #[error("model digest `{0}` is not 64 lowercase hex digits")]
    ModelDigest(String),
}

/// Checks the identifiers of a work item, which the site puts in URLs and
/// log lines and derives file names from.
pub fn check_work_ids(job: &str, model_digest: &str) -> Result<(), WorkIdError> {
    // Shown escaped and cut short: the value may be hostile.
    let shown = |s: &str| crate::text::bounded(s, 80);
    if !is_job_id(job) {
        return Err(WorkIdError::JobId(shown(job)));
    }
    if !crate::wire::is_sha256_hex(model_digest) {
        return Err(WorkIdError::ModelDigest(shown(model_digest)));
    }
    Ok(())
}

impl Work {
    /// [`check_work_ids`] on this work item. The aggregator is trusted with
    /// model content, not with paths on the site's hosts.
    pub fn check_ids(&self) -> Result<(), WorkIdError> {
        check_work_ids(&self.job, &self.model_digest)
    }

    /// The upload payload of this work's result: `delta` from the round's
    /// global model, in the job's dtype, with the site's report as the
    /// header's `metrics`.
    pub fn encode_update(
        &self,
        delta: &crate::wire::TensorMap,
        samples: u64,
        report: crate::federated::SiteReport,
    ) -> Result<Vec<u8>, crate::wire::WireError> {
        let meta = crate::wire::PayloadMeta {
            kind: crate::wire::PayloadKind::Update,
            job: self.job.clone(),
            round: self.round,
            base_digest: Some(self.model_digest.clone()),
            samples,
            metrics: report.to_metrics(),
        };
        crate::wire::encode(meta, delta, self.spec.dtype, 3)
    }
}

/// A site declining a job because its local policy (`site.toml` `[privacy]`)
/// does not allow it; the aggregator audits it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkRefusal {
    pub job: String,
    pub round: u32,
    pub reason: String,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_ids_that_could_name_paths_are_refused() {
        let digest = crate::wire::digest(b"model");
        assert!(check_work_ids("job-1", &digest).is_ok());
        assert!(check_work_ids("knee_pretrain-2", &digest).is_ok());
        let long = "j".repeat(MAX_JOB_ID_LEN + 1);
        for job in [
            "",
            "..",
            "../../../../tmp/x",
            "/etc/cron.d/x",
            "a/b",
            "a\\b",
            "job-1\0",
            "job 1",
            "job-1\n",
            "jöb",
            long.as_str(),
        ] {
            assert!(
                matches!(check_work_ids(job, &digest), Err(WorkIdError::JobId(_))),
                "{job:?}"
            );
        }
        for bad in [
            "",
            "../x",
            &digest[..63],
            &digest.to_uppercase(),
            &format!("{digest}0"),
            &format!("{}/", &digest[..63]),
        ] {
            assert!(
                matches!(
                    check_work_ids("job-1", bad),
                    Err(WorkIdError::ModelDigest(_))
                ),
                "{bad:?}"
            );
        }
        let e = check_work_ids("\x1b[2J../x", &digest).unwrap_err();
        assert!(!e.to_string().contains('\x1b'), "{e}");
    }
}
