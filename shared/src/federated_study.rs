//! The federated quality study (`fedslice study --federated`): whether the
//! consortium's model beats each hospital alone and how far it stays from
//! pooling the data, over several seeds.
//!
//! Per seed it draws one non-IID phantom consortium (each site its own
//! scanner profile and prevalence, as in the demo) and scores three kinds of
//! arm on the held-out exams of all sites together:
//! - `federated`: the pretrain then finetune jobs, run by
//!   [`federated::run_job`] (the sites' and the aggregator's own code, in one
//!   process);
//! - `local/<site>`: the same recipe and epochs on one site's exams
//!   (`best-local` is the best site of the seed);
//! - `centralised`: the same recipe and epochs on all sites' exams pooled.
//!
//! It owns no training code: the baselines are [`experiment::run`], exactly
//! what `fedslice train` and the demo's baselines do.

use std::sync::Arc;

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::data::phantom::PhantomConfig;
use crate::data::preprocess::PreparedExam;
use crate::experiment::{self, ExperimentConfig, ExperimentError};
use crate::federated::{self, SimulatedJob, SiteExams};
use crate::metrics;
use crate::model::ExamClassifier;
use crate::protocol::JobSpec;
use crate::study::{ArmSummary, PreparedSite, RunRecord, Style, prepared_sites, summarise_arms};
use crate::train::{self, Progress};

/// Arm groups of the federated study.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FederatedArm {
    Federated,
    Centralised,
    Local,
}

impl std::str::FromStr for FederatedArm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "federated" => Ok(Self::Federated),
            "centralised" => Ok(Self::Centralised),
            "local" => Ok(Self::Local),
            other => Err(format!(
                "unknown federated study arm {other:?} (federated, centralised, local)"
            )),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FederatedStudyConfig {
    pub seeds: Vec<u64>,
    /// The consortium; `seed` is replaced by each study seed.
    pub cohort: PhantomConfig,
    /// The pretrain job (`None`: the finetune job starts from scratch).
    pub pretrain: Option<JobSpec>,
    pub finetune: JobSpec,
    /// Fine-tuning epochs of the pooled baseline; a site alone gets as many
    /// steps ([`steps_matched_epochs`]).
    pub pooled_finetune_epochs: usize,
    /// Arm groups to run (every one when empty).
    pub arms: Vec<FederatedArm>,
}

/// Per-round means over the sites of a federated run, for seeing how a
/// recipe learns (or stalls) across rounds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoundSummary {
    pub seed: u64,
    pub phase: String,
    pub round: u32,
    /// Mean over sites of the last local epoch's loss.
    pub mean_local_loss: Option<f64>,
    /// Mean over sites of the entering global model's validation AUC.
    pub mean_validation_auc: Option<f64>,
}

/// How the federated model compares, over the seeds, with the best site
/// alone and with pooling (positive: federated is better).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verdict {
    pub federated_minus_best_local: Option<f64>,
    pub federated_minus_centralised: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FederatedStudyReport {
    pub config: FederatedStudyConfig,
    pub arms: Vec<ArmSummary>,
    pub verdict: Verdict,
    pub runs: Vec<RunRecord>,
    pub rounds: Vec<RoundSummary>,
    pub seconds: f64,
}

/// The baselines' recipe for a federated job pair: the same model and local
/// recipe, pretraining for as many epochs as the pretrain job runs in all its
/// rounds, and fine-tuning for `finetune_epochs`.
pub fn baseline_recipe(
    pretrain: Option<&JobSpec>,
    finetune: &JobSpec,
    finetune_epochs: usize,
    seed: u64,
) -> ExperimentConfig {
    ExperimentConfig {
        model: finetune.model.clone(),
        pretrain: pretrain.map(|p| train::PretrainConfig {
            epochs: p.pretrain.epochs * p.rounds as usize,
            seed,
            ..p.pretrain.clone()
        }),
        finetune: train::FinetuneConfig {
            epochs: finetune_epochs,
            seed,
            ..finetune.finetune.clone()
        },
        labelled_fraction: 1.0,
        validation_fraction: finetune.validation_fraction,
        bootstrap_resamples: 1000,
        seed,
    }
}

/// Epochs over `exams` that take as many optimisation steps as
/// `pooled_epochs` over `pooled_exams` (at least one): how every arm of a
/// comparison gets the same number of steps.
pub fn steps_matched_epochs(pooled_epochs: usize, pooled_exams: usize, exams: usize) -> usize {
    if exams == 0 {
        return pooled_epochs.max(1);
    }
    ((pooled_epochs * pooled_exams) as f64 / exams as f64)
        .round()
        .max(1.0) as usize
}

fn with_seed(spec: &JobSpec, seed: u64) -> JobSpec {
    let mut spec = spec.clone();
    spec.seed = seed;
    spec.pretrain.seed = seed;
    spec.finetune.seed = seed;
    spec
}

fn round_summaries(seed: u64, phase: &str, job: &SimulatedJob) -> Vec<RoundSummary> {
    let mean = |values: Vec<f64>| {
        (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
    };
    job.rounds
        .iter()
        .map(|r| RoundSummary {
            seed,
            phase: phase.into(),
            round: r.round,
            mean_local_loss: mean(
                r.reports
                    .iter()
                    .filter_map(|x| x.losses)
                    .map(|l| l.last)
                    .collect(),
            ),
            mean_validation_auc: mean(r.reports.iter().filter_map(|x| x.auc()).collect()),
        })
        .collect()
}

/// The federated model of one seed: pretrain job (if any), then finetune.
fn federated_classifier(
    config: &FederatedStudyConfig,
    seed: u64,
    sites: &[PreparedSite],
    device: &Device,
    progress: &mut dyn Progress,
    rounds: &mut Vec<RoundSummary>,
) -> Result<ExamClassifier, ExperimentError> {
    let site_exams: Vec<SiteExams> = sites
        .iter()
        .map(|s| SiteExams {
            exams: Arc::new(s.train.clone()),
            salt: federated::site_salt(s.name.as_bytes()),
        })
        .collect();
    let fed = |e: federated::FederatedError| ExperimentError::Data(format!("federated run: {e}"));
    let encoder = match &config.pretrain {
        Some(spec) => {
            let job =
                federated::run_job(&with_seed(spec, seed), None, &site_exams, device, progress)
                    .map_err(fed)?;
            rounds.extend(round_summaries(seed, "pretrain", &job));
            Some(job.global)
        }
        None => None,
    };
    let job = federated::run_job(
        &with_seed(&config.finetune, seed),
        encoder.as_ref(),
        &site_exams,
        device,
        progress,
    )
    .map_err(fed)?;
    rounds.extend(round_summaries(seed, "finetune", &job));
    federated::from_tensor_map(
        ExamClassifier::new(&config.finetune.model, device),
        &job.global,
    )
    .map_err(fed)
}

/// Runs the study; `on_run` sees every record as it is made.
pub fn run(
    config: &FederatedStudyConfig,
    device: &Device,
    progress: &mut dyn Progress,
    on_run: &mut dyn FnMut(&RunRecord),
) -> Result<FederatedStudyReport, ExperimentError> {
    let started = std::time::Instant::now();
    let wants = |a: FederatedArm| config.arms.is_empty() || config.arms.contains(&a);
    let mut runs: Vec<RunRecord> = Vec::new();
    let mut rounds = Vec::new();
    let mut site_names: Vec<String> = Vec::new();
    for &seed in &config.seeds {
        let cohort = PhantomConfig {
            seed,
            ..config.cohort.clone()
        };
        let sites = prepared_sites(Style::A, &cohort, &config.finetune.preprocess)?;
        let test: Vec<PreparedExam> = sites.iter().flat_map(|s| s.test.clone()).collect();
        let labels: Vec<bool> = test.iter().filter_map(|e| e.label).collect();
        let train_total: usize = sites.iter().map(|s| s.train.len()).sum();
        if site_names.is_empty() {
            site_names = sites.iter().map(|s| s.name.clone()).collect();
        }
        let mut record = |arm: String, auc: f64, train_exams: usize, seconds: f64| {
            let r = RunRecord {
                arm,
                seed,
                auc,
                auc_ci: None,
                train_exams,
                labelled_exams: train_exams,
                test_exams: test.len(),
                seconds,
            };
            on_run(&r);
            runs.push(r);
        };
        if wants(FederatedArm::Federated) {
            let t = std::time::Instant::now();
            let classifier =
                federated_classifier(config, seed, &sites, device, progress, &mut rounds)?;
            let scores = train::predict(&classifier, &test, device);
            let auc = metrics::roc_auc(&scores, &labels)?;
            record(
                "federated".into(),
                auc,
                train_total,
                t.elapsed().as_secs_f64(),
            );
        }
        let mut baseline = |train: Vec<PreparedExam>| -> Result<(f64, f64), ExperimentError> {
            let t = std::time::Instant::now();
            let epochs =
                steps_matched_epochs(config.pooled_finetune_epochs, train_total, train.len());
            let recipe = baseline_recipe(config.pretrain.as_ref(), &config.finetune, epochs, seed);
            device.seed(seed);
            let (_, report) = experiment::run(train, test.clone(), &recipe, device, progress)?;
            Ok((report.auc, t.elapsed().as_secs_f64()))
        };
        if wants(FederatedArm::Local) {
            let mut best = f64::NEG_INFINITY;
            for site in &sites {
                let (auc, seconds) = baseline(site.train.clone())?;
                best = best.max(auc);
                record(
                    format!("local/{}", site.name),
                    auc,
                    site.train.len(),
                    seconds,
                );
            }
            record("best-local".into(), best, 0, 0.0);
        }
        if wants(FederatedArm::Centralised) {
            let pooled: Vec<PreparedExam> = sites.iter().flat_map(|s| s.train.clone()).collect();
            let (auc, seconds) = baseline(pooled)?;
            record("centralised".into(), auc, train_total, seconds);
        }
    }
    let mut names = vec![
        (
            "federated".to_string(),
            "federated pretrain + finetune over all sites".to_string(),
        ),
        (
            "best-local".to_string(),
            "the best single site of each seed, alone".to_string(),
        ),
        (
            "centralised".to_string(),
            "all sites' exams pooled".to_string(),
        ),
    ];
    names.extend(
        site_names
            .iter()
            .map(|s| (format!("local/{s}"), format!("{s} alone"))),
    );
    let arms = summarise_arms(&runs, names);
    let mean_of = |arm: &str| arms.iter().find(|a| a.arm == arm).map(|a| a.mean);
    let federated = mean_of("federated");
    let verdict = Verdict {
        federated_minus_best_local: federated.zip(mean_of("best-local")).map(|(f, b)| f - b),
        federated_minus_centralised: federated.zip(mean_of("centralised")).map(|(f, c)| f - c),
    };
    Ok(FederatedStudyReport {
        config: config.clone(),
        arms,
        verdict,
        runs,
        rounds,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The study as a strip chart: one row per arm, a dot per seed.
pub fn write_plot(
    path: &std::path::Path,
    report: &FederatedStudyReport,
) -> Result<(), crate::plot::PlotError> {
    let group = |arm: &str| match arm {
        "federated" => "federated",
        "centralised" => "pooled",
        _ => "site alone",
    };
    let title = format!(
        "fedslice federated study: {} sites, AUC on all sites' held-out exams, {} seed(s)",
        report.config.cohort.sites,
        report.config.seeds.len()
    );
    crate::plot::write_strip_chart(
        path,
        &crate::plot::StripChart {
            title: &title,
            x_label: "AUC on held-out exams",
            x_range: (0.3, 1.0),
            reference_lines: vec![(0.5, "chance".into()), (0.8, "floor".into())],
            rows: report
                .arms
                .iter()
                .map(|a| crate::plot::StripRow {
                    label: a.arm.clone(),
                    values: a.aucs.clone(),
                    group: Some(group(&a.arm).into()),
                })
                .collect(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_arm_gets_the_pooled_runs_steps() {
        // 20 epochs over 90 pooled exams = 1800 steps; a site of 30 needs 60 epochs.
        assert_eq!(steps_matched_epochs(20, 90, 30), 60);
        assert_eq!(steps_matched_epochs(20, 90, 90), 20);
        // Unequal sites: 20 × 300 / 20 = 300 epochs for the smallest.
        assert_eq!(steps_matched_epochs(20, 300, 20), 300);
        assert_eq!(steps_matched_epochs(20, 300, 200), 30);
        assert_eq!(steps_matched_epochs(1, 1, 1000), 1, "never zero epochs");
    }
}
