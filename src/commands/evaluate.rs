//! `fedslice evaluate`: a saved classifier (from `train` or `aggregator
//! export`) on the held-out (`valid/`) exams of a cohort, with the
//! preprocessing and threshold stored beside its weights.

use std::path::Path;

use anyhow::Context;
use fedslice::data::Exam;
use fedslice::data::cohort::{self, SiteData};
use fedslice::data::preprocess::{PreparedExam, PreprocessConfig, prepare};
use fedslice::device::{self, BackendKind};
use fedslice::export::Bundle;
use fedslice::metrics::{self, Evaluation};

use crate::cli::EvaluateArgs;

/// `exams` of `site` prepared with `config`, ids `site/exam`; an exam that
/// cannot be prepared is skipped with a warning.
pub fn prepare_site(exams: &[Exam], site: &str, config: &PreprocessConfig) -> Vec<PreparedExam> {
    exams
        .iter()
        .filter_map(|e| {
            match prepare(
                &format!("{site}/{}", e.id),
                &e.volume,
                e.spacing,
                e.label,
                config,
            ) {
                Ok(p) => Some(p),
                Err(err) => {
                    tracing::warn!("skipping exam: {err}");
                    None
                }
            }
        })
        .collect()
}

/// The labelled held-out exams of `sites`, prepared with `config`.
pub fn held_out(sites: &[SiteData], config: &PreprocessConfig) -> Vec<PreparedExam> {
    sites
        .iter()
        .flat_map(|s| prepare_site(&s.valid, &s.name, config))
        .filter(|e| e.label.is_some())
        .collect()
}

/// Scores `model_dir`'s classifier on the held-out exams of `data`.
pub fn evaluate(
    model_dir: &Path,
    data: &Path,
    device: &burn::tensor::Device,
) -> anyhow::Result<(Evaluation, usize, f64)> {
    let Bundle {
        model: classifier,
        config: meta,
        ..
    } = Bundle::open(model_dir, device)
        .with_context(|| format!("loading the classifier in {}", model_dir.display()))?;
    let sites = cohort::load_sites(data)
        .with_context(|| format!("loading exams from {}", data.display()))?;
    let test = held_out(&sites, &meta.preprocess);
    anyhow::ensure!(
        !test.is_empty(),
        "no labelled held-out (valid/) exams in {}",
        data.display()
    );
    let labels: Vec<bool> = test.iter().filter_map(|e| e.label).collect();
    let scores = fedslice::train::predict(&classifier, &test, device);
    let evaluation = metrics::evaluate(&scores, &labels, meta.threshold, 1000, 0)?;
    Ok((evaluation, test.len(), meta.threshold))
}

pub fn run(args: EvaluateArgs) -> anyhow::Result<()> {
    let backend: BackendKind = args.device.parse()?;
    let device = device::open(backend)?;
    let (e, exams, threshold) = evaluate(&args.model, &args.data, &device)?;
    let json = serde_json::json!({
        "auc": e.auc,
        "auc_ci": [e.auc_ci.0, e.auc_ci.1],
        "accuracy": e.accuracy,
        "sensitivity": e.sensitivity,
        "specificity": e.specificity,
        "threshold": threshold,
        "exams": exams,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        println!(
            "{exams} held-out exams: AUC {:.3} (95% CI {:.3}–{:.3}), accuracy {:.3}, sensitivity {:.3}, specificity {:.3} at threshold {threshold:.3}",
            e.auc, e.auc_ci.0, e.auc_ci.1, e.accuracy, e.sensitivity, e.specificity
        );
    }
    Ok(())
}
