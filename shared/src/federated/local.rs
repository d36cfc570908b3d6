//! One site's part of a round: load the global model, train locally for the
//! job's local epochs, and return Δ = w_local − w_global with the sample count
//! and a [`SiteReport`] of aggregate metrics. Only these leave the site.

use std::sync::Arc;

use burn::tensor::Device;

use super::{
    Discrimination, EpochLosses, FederatedError, SiteReport, ValidationSummary, from_tensor_map,
    to_tensor_map,
};
use crate::data::preprocess::PreparedExam;
use crate::data::split::stratified_split;
use crate::metrics;
use crate::model::ExamClassifier;
use crate::protocol::{JobSpec, Phase, Work};
use crate::ssl::GmmlModel;
use crate::train::{
    self, EpochCheckpoints, FinetuneConfig, PretrainConfig, Progress, ScheduleWindow,
};
use crate::wire::TensorMap;

/// A site's prepared training exams (its held-out exams never enter a round).
#[derive(Debug, Clone)]
pub struct SiteExams {
    pub exams: Arc<Vec<PreparedExam>>,
    /// Distinguishes this site's random streams from the other sites' in the same round.
    pub salt: u64,
}

#[derive(Debug, Clone)]
pub struct LocalUpdate {
    pub delta: TensorMap,
    /// FedAvg weight: slices for pretraining, labelled exams for fine-tuning.
    pub samples: u64,
    pub report: SiteReport,
}

/// A site's salt for its random streams, from its name (or, without one, its
/// certificate), so that two sites never draw the same augmentation and
/// masking and one site draws the same ones from run to run.
pub fn site_salt(source: &[u8]) -> u64 {
    u64::from_str_radix(&crate::wire::digest(source)[..16], 16).unwrap_or(0)
}

fn round_window(spec: &JobSpec, round: u32) -> ScheduleWindow {
    let epochs = spec.local_epochs();
    ScheduleWindow {
        first_epoch: (round.saturating_sub(1) as usize) * epochs,
        total_epochs: Some(spec.rounds as usize * epochs),
    }
}

fn round_seed(spec: &JobSpec, round: u32, salt: u64) -> u64 {
    spec.seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(u64::from(round).wrapping_mul(0xBF58_476D_1CE4_E5B9))
        ^ salt
}

/// The labelled exams split into (fit, validation) the same way every round.
pub(super) fn labelled_split(
    spec: &JobSpec,
    exams: &[PreparedExam],
) -> (Vec<PreparedExam>, Vec<PreparedExam>) {
    let labelled: Vec<PreparedExam> = exams
        .iter()
        .filter(|e| e.label.is_some())
        .cloned()
        .collect();
    stratified_split(labelled, |e| e.label, spec.validation_fraction, spec.seed)
}

/// The global classifier's AUC and Youden threshold on `validation`, when it
/// holds both classes; these aggregate numbers are all a site reports about it.
pub fn evaluate_global(
    model: &ExamClassifier,
    validation: &[PreparedExam],
    device: &Device,
) -> Result<ValidationSummary, FederatedError> {
    let labels: Vec<bool> = validation.iter().filter_map(|e| e.label).collect();
    let positives = labels.iter().filter(|&&l| l).count();
    let discrimination = if labels.iter().any(|&l| l) && labels.iter().any(|&l| !l) {
        let scores = train::predict(model, validation, device);
        Some(Discrimination {
            auc: metrics::roc_auc(&scores, &labels)?,
            threshold: metrics::youden_threshold(&scores, &labels)?,
        })
    } else {
        None
    };
    Ok(ValidationSummary {
        exams: labels.len() as u64,
        positives: Some(positives as u64),
        discrimination,
    })
}

/// Trains this site's part of `work`, continuing from the state `checkpoints`
/// offers (a restart mid-round) and handing it one after each local epoch.
pub fn train_round(
    work: &Work,
    global: &TensorMap,
    site: &SiteExams,
    device: &Device,
    progress: &mut dyn Progress,
    checkpoints: &mut dyn EpochCheckpoints,
) -> Result<LocalUpdate, FederatedError> {
    let spec = &work.spec;
    let seed = round_seed(spec, work.round, site.salt);
    let window = round_window(spec, work.round);
    let mut report = SiteReport::default();
    let (local, samples) = match spec.phase {
        Phase::Pretrain => {
            let model = from_tensor_map(GmmlModel::new(&spec.model.encoder, device), global)?;
            let config = PretrainConfig {
                schedule: window,
                seed,
                ..spec.pretrain.clone()
            };
            let (model, trained) = train::pretrain(
                model,
                site.exams.clone(),
                &config,
                device,
                progress,
                checkpoints,
            )?;
            if let (Some(first), Some(last)) = (trained.first_loss(), trained.last_loss()) {
                report.losses = Some(EpochLosses { first, last });
            }
            report.steps = Some(trained.steps as u64);
            (to_tensor_map(&model)?, trained.slices as u64)
        }
        Phase::Finetune => {
            let model = from_tensor_map(ExamClassifier::new(&spec.model, device), global)?;
            let (fit, validation) = labelled_split(spec, &site.exams);
            report.validation = Some(evaluate_global(&model, &validation, device)?);
            let config = FinetuneConfig {
                schedule: window,
                seed,
                ..spec.finetune.clone()
            };
            let (model, trained) =
                train::finetune(model, &fit, &config, device, progress, checkpoints)?;
            if let (Some(&first), Some(&last)) =
                (trained.epoch_losses.first(), trained.epoch_losses.last())
            {
                report.losses = Some(EpochLosses { first, last });
            }
            report.steps = Some(trained.steps as u64);
            (to_tensor_map(&model)?, fit.len() as u64)
        }
    };
    Ok(LocalUpdate {
        delta: local.sub(global)?,
        samples,
        report,
    })
}
