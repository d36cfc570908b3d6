//! The centralised experiment: GMML-pretrain on every training exam, fine-tune
//! on the labelled fraction, choose the threshold on a validation split, and
//! evaluate on held-out exams. `fedslice train` and the demo's centralised
//! baseline are this function.

use std::sync::Arc;
use std::time::Instant;

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::data::preprocess::PreparedExam;
use crate::data::split::stratified_split;
use crate::metrics::{self, Evaluation, MetricsError};
use crate::model::{ClassifierConfig, ExamClassifier};
use crate::ssl::GmmlModel;
use crate::train::{self, FinetuneConfig, NoCheckpoints, PretrainConfig, Progress, TrainError};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExperimentConfig {
    pub model: ClassifierConfig,
    /// `None` trains the classifier from scratch (`--no-pretrain`).
    pub pretrain: Option<PretrainConfig>,
    pub finetune: FinetuneConfig,
    /// Fraction of training exams whose labels are used for fine-tuning.
    pub labelled_fraction: f64,
    /// Fraction of the labelled exams held back to choose the threshold.
    pub validation_fraction: f64,
    pub bootstrap_resamples: usize,
    pub seed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExperimentReport {
    pub auc: f64,
    pub auc_ci: [f64; 2],
    pub accuracy: f64,
    pub sensitivity: f64,
    pub specificity: f64,
    pub threshold: f64,
    pub pretrain_loss_first: Option<f64>,
    pub pretrain_loss_last: Option<f64>,
    pub pretrain_epoch_losses: Vec<f64>,
    pub finetune_epoch_losses: Vec<f64>,
    pub validation_auc: Option<f64>,
    pub pretrain_exams: usize,
    pub pretrain_slices: usize,
    pub labelled_train_exams: usize,
    pub validation_exams: usize,
    pub test_exams: usize,
    pub test_positives: usize,
    pub pretrain_seconds: f64,
    pub finetune_seconds: f64,
    /// Per held-out exam: (id, label, probability).
    pub test_predictions: Vec<(String, bool, f64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error("evaluation: {0}")]
    Metrics(#[from] MetricsError),
    #[error("{0}")]
    Data(String),
}

/// An encoder ready for fine-tuning: GMML-pretrained on a set of exams, or
/// freshly initialised.
#[derive(Clone)]
pub struct Encoder {
    pub encoder: crate::model::VisionTransformer,
    pub epoch_losses: Vec<f64>,
    pub pretrain_exams: usize,
    pub pretrain_slices: usize,
    pub seconds: f64,
}

/// GMML-pretrains an encoder on every exam of `train` (labels unused), or
/// initialises one when `pretrain` is `None`. Several fine-tuning runs can
/// then start from one pretraining (the study's labelled fractions).
pub fn prepare_encoder(
    train: Arc<Vec<PreparedExam>>,
    model: &ClassifierConfig,
    pretrain: Option<&PretrainConfig>,
    device: &Device,
    progress: &mut dyn Progress,
) -> Result<Encoder, ExperimentError> {
    let started = Instant::now();
    match pretrain {
        Some(pretrain_config) => {
            let gmml = GmmlModel::new(&model.encoder, device);
            let exams = train.len();
            let slices = train.iter().map(|e| e.depth).sum();
            let (gmml, report) = train::pretrain(
                gmml,
                train,
                pretrain_config,
                device,
                progress,
                &mut NoCheckpoints,
            )?;
            Ok(Encoder {
                encoder: gmml.encoder,
                epoch_losses: report.epoch_losses,
                pretrain_exams: exams,
                pretrain_slices: slices,
                seconds: started.elapsed().as_secs_f64(),
            })
        }
        None => Ok(Encoder {
            encoder: crate::model::VisionTransformer::new(&model.encoder, device),
            epoch_losses: Vec::new(),
            pretrain_exams: 0,
            pretrain_slices: 0,
            seconds: 0.0,
        }),
    }
}

fn require_labels(test: &[PreparedExam]) -> Result<(), ExperimentError> {
    if test.iter().any(|e| e.label.is_none()) {
        return Err(ExperimentError::Data(
            "every held-out exam needs a label to be evaluated".into(),
        ));
    }
    Ok(())
}

/// Runs the experiment. `train` exams may be unlabelled (pretraining only);
/// every `test` exam must be labelled.
pub fn run(
    train: Vec<PreparedExam>,
    test: Vec<PreparedExam>,
    config: &ExperimentConfig,
    device: &Device,
    progress: &mut dyn Progress,
) -> Result<(ExamClassifier, ExperimentReport), ExperimentError> {
    require_labels(test.as_slice())?;
    let train = Arc::new(train);
    let encoder = prepare_encoder(
        train.clone(),
        &config.model,
        config.pretrain.as_ref(),
        device,
        progress,
    )?;
    finetune_and_evaluate(encoder, &train, &test, config, device, progress)
}

/// Fine-tunes `encoder` on the labelled fraction of `train`, chooses the
/// threshold on a validation split of it and evaluates on `test`.
pub fn finetune_and_evaluate(
    encoder: Encoder,
    train: &[PreparedExam],
    test: &[PreparedExam],
    config: &ExperimentConfig,
    device: &Device,
    progress: &mut dyn Progress,
) -> Result<(ExamClassifier, ExperimentReport), ExperimentError> {
    require_labels(test)?;
    let Encoder {
        encoder,
        epoch_losses: pretrain_losses,
        pretrain_exams,
        pretrain_slices,
        seconds: pretrain_seconds,
    } = encoder;

    // Labels beyond the labelled fraction are hidden, as if those exams had none.
    let labelled: Vec<PreparedExam> = train
        .iter()
        .filter(|e| e.label.is_some())
        .cloned()
        .collect();
    let (_, labelled) =
        stratified_split(labelled, |e| e.label, config.labelled_fraction, config.seed);
    let (fit, validation) = stratified_split(
        labelled,
        |e| e.label,
        config.validation_fraction,
        config.seed.wrapping_add(1),
    );

    let started = Instant::now();
    let classifier = ExamClassifier::from_encoder(encoder, &config.model);
    let (classifier, finetune_report) = train::finetune(
        classifier,
        &fit,
        &config.finetune,
        device,
        progress,
        &mut NoCheckpoints,
    )?;
    let finetune_seconds = started.elapsed().as_secs_f64();

    // The threshold comes from validation exams; with too few of them (tiny
    // labelled fractions) it falls back to the fitted exams, and says so.
    let val_labels: Vec<bool> = validation.iter().filter_map(|e| e.label).collect();
    let has_both = val_labels.iter().any(|&l| l) && val_labels.iter().any(|&l| !l);
    let (threshold, validation_auc) = if has_both {
        let scores = train::predict(&classifier, &validation, device);
        (
            metrics::youden_threshold(&scores, &val_labels)?,
            Some(metrics::roc_auc(&scores, &val_labels)?),
        )
    } else {
        tracing::warn!(
            validation = validation.len(),
            "validation split lacks one class; threshold chosen on the fine-tuning exams"
        );
        let labels: Vec<bool> = fit.iter().filter_map(|e| e.label).collect();
        let scores = train::predict(&classifier, &fit, device);
        (metrics::youden_threshold(&scores, &labels)?, None)
    };

    let test_labels: Vec<bool> = test.iter().filter_map(|e| e.label).collect();
    let scores = train::predict(&classifier, test, device);
    let Evaluation {
        auc,
        auc_ci,
        accuracy,
        sensitivity,
        specificity,
        ..
    } = metrics::evaluate(
        &scores,
        &test_labels,
        threshold,
        config.bootstrap_resamples,
        config.seed,
    )?;
    let report = ExperimentReport {
        auc,
        auc_ci: [auc_ci.0, auc_ci.1],
        accuracy,
        sensitivity,
        specificity,
        threshold,
        pretrain_loss_first: pretrain_losses.first().copied(),
        pretrain_loss_last: pretrain_losses.last().copied(),
        pretrain_epoch_losses: pretrain_losses,
        finetune_epoch_losses: finetune_report.epoch_losses,
        validation_auc,
        pretrain_exams,
        pretrain_slices,
        labelled_train_exams: fit.len(),
        validation_exams: validation.len(),
        test_exams: test.len(),
        test_positives: test_labels.iter().filter(|&&l| l).count(),
        pretrain_seconds,
        finetune_seconds,
        test_predictions: test
            .iter()
            .zip(&scores)
            .map(|(e, &p)| (e.id.clone(), e.label.unwrap_or(false), p))
            .collect(),
    };
    Ok((classifier, report))
}
