//! The quality study behind README's numbers (`fedslice study`): the same
//! recipe over several seeds on two independently written phantom styles, so
//! that a number says how the recipe does on knee MRI in general rather than
//! on one run of one generator.
//!
//! Style A is the project's phantom and the only one defaults are chosen on;
//! style B is written independently and used only to test transfer. Per seed
//! the study draws a cohort of each style, then runs the arms below and
//! records each held-out AUC. It owns no training code of its own: every arm
//! is [`experiment::finetune_and_evaluate`] from an encoder made by
//! [`experiment::prepare_encoder`], so it measures exactly what `fedslice
//! train` does.

use std::sync::Arc;

use burn::tensor::Device;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::phantom::{self, PhantomConfig, PhantomExam};
use crate::data::phantom_b;
use crate::data::preprocess::{PreparedExam, PreprocessConfig, prepare};
use crate::data::split::stratified_split;
use crate::experiment::{self, Encoder, ExperimentConfig, ExperimentError};
use crate::metrics;
use crate::train::{self, PretrainConfig, Progress};

/// Which phantom generator a cohort comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Style {
    A,
    B,
}

impl std::fmt::Display for Style {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::A => "a",
            Self::B => "b",
        })
    }
}

impl std::str::FromStr for Style {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "a" | "A" => Ok(Self::A),
            "b" | "B" => Ok(Self::B),
            other => Err(format!("unknown phantom style {other:?} (a or b)")),
        }
    }
}

/// Prepares one site's phantom exams with `preprocess` (in parallel); ids
/// are `site/split/NNNN`.
pub fn prepare_site_exams(
    site: &str,
    exams: &[PhantomExam],
    preprocess: &PreprocessConfig,
) -> Result<Vec<PreparedExam>, ExperimentError> {
    exams
        .par_iter()
        .map(|e: &PhantomExam| {
            let id = format!("{site}/{}", e.exam.id);
            prepare(
                &id,
                &e.exam.volume,
                e.exam.spacing,
                e.exam.label,
                preprocess,
            )
        })
        .collect::<Result<_, _>>()
        .map_err(|e| ExperimentError::Data(format!("phantom site {site}: {e}")))
}

/// One site of a prepared cohort: its training and held-out exams.
#[derive(Debug, Clone)]
pub struct PreparedSite {
    pub name: String,
    pub train: Vec<PreparedExam>,
    pub test: Vec<PreparedExam>,
}

/// Generates a cohort of `style` site by site and prepares every exam with
/// `preprocess`, so that memory holds one site's raw volumes at a time.
pub fn prepared_sites(
    style: Style,
    cohort: &PhantomConfig,
    preprocess: &PreprocessConfig,
) -> Result<Vec<PreparedSite>, ExperimentError> {
    (0..cohort.sites)
        .map(|site| {
            let (name, train, test) = match style {
                Style::A => {
                    let c = phantom::generate_site(cohort, site);
                    (c.name, c.train, c.valid)
                }
                Style::B => {
                    let c = phantom_b::generate_site(cohort, site);
                    (c.name, c.train, c.valid)
                }
            };
            Ok(PreparedSite {
                train: prepare_site_exams(&name, &train, preprocess)?,
                test: prepare_site_exams(&name, &test, preprocess)?,
                name,
            })
        })
        .collect()
}

/// [`prepared_sites`] with the sites pooled: (training exams, held-out exams).
pub fn prepared_cohort(
    style: Style,
    cohort: &PhantomConfig,
    preprocess: &PreprocessConfig,
) -> Result<(Vec<PreparedExam>, Vec<PreparedExam>), ExperimentError> {
    let mut train = Vec::new();
    let mut test = Vec::new();
    for site in prepared_sites(style, cohort, preprocess)? {
        train.extend(site.train);
        test.extend(site.test);
    }
    Ok((train, test))
}

/// What one study runs, per seed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StudyConfig {
    pub seeds: Vec<u64>,
    /// Style A cohort (training and held-out exams of every site); `seed` is
    /// replaced by each study seed.
    pub cohort_a: PhantomConfig,
    /// Style B cohort, likewise.
    pub cohort_b: PhantomConfig,
    pub preprocess: PreprocessConfig,
    /// Recipe of every arm; `pretrain` is used by the pretrained arms,
    /// `labelled_fraction` is set per arm.
    pub experiment: ExperimentConfig,
    pub pretrain: PretrainConfig,
    /// Labelled fraction of the low-label arms (the 10%).
    pub low_label_fraction: f64,
    /// Style B training-set sizes of the from-scratch learning curve.
    pub curve: Vec<usize>,
    /// Arm groups to run (every one when empty).
    pub groups: Vec<ArmGroup>,
}

/// Groups of arms that can be run alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArmGroup {
    /// Style A, all labels, pretrained and from scratch (and both cross-style
    /// onto B).
    Centralised,
    /// Pretrained vs from scratch at the low labelled fraction, both styles.
    LowLabels,
    /// Trained on style B with the default (pretrained) recipe, tested on A.
    CrossBToA,
    /// From scratch on growing style B training sets.
    Curve,
}

impl std::str::FromStr for ArmGroup {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "centralised" => Ok(Self::Centralised),
            "low-labels" => Ok(Self::LowLabels),
            "cross-b-to-a" => Ok(Self::CrossBToA),
            "curve" => Ok(Self::Curve),
            other => Err(format!(
                "unknown arm group {other:?} (centralised, low-labels, cross-b-to-a, curve)"
            )),
        }
    }
}

/// One arm on one seed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub arm: String,
    pub seed: u64,
    pub auc: f64,
    /// Bootstrap 95% CI of the AUC on the arm's own held-out exams (absent for
    /// cross-style scores, which are computed on the other style's exams).
    pub auc_ci: Option<[f64; 2]>,
    pub train_exams: usize,
    pub labelled_exams: usize,
    pub test_exams: usize,
    pub seconds: f64,
}

/// Mean and spread of one arm over the seeds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArmSummary {
    pub arm: String,
    pub description: String,
    pub aucs: Vec<f64>,
    pub mean: f64,
    /// Sample standard deviation (n − 1); 0 with one seed.
    pub sd: f64,
    pub min: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StudyReport {
    pub config: StudyConfig,
    pub arms: Vec<ArmSummary>,
    pub runs: Vec<RunRecord>,
    pub seconds: f64,
}

/// Arm names (JSON keys scripts rely on) and what each measures.
pub const ARMS: &[(&str, &str)] = &[
    (
        "a/pretrained",
        "style A, all labels, GMML-pretrained (the default recipe)",
    ),
    ("a/scratch", "style A, all labels, from scratch"),
    (
        "a->b/pretrained",
        "trained as a/pretrained, tested on style B",
    ),
    ("a->b/scratch", "trained as a/scratch, tested on style B"),
    (
        "a/pretrained/low-labels",
        "style A, low labelled fraction, pretrained on all A exams",
    ),
    (
        "a/scratch/low-labels",
        "style A, low labelled fraction, from scratch",
    ),
    (
        "b/pretrained/low-labels",
        "style B, low labelled fraction, pretrained on all B exams",
    ),
    (
        "b/scratch/low-labels",
        "style B, low labelled fraction, from scratch",
    ),
    (
        "b/pretrained",
        "style B, all labels, pretrained (the default recipe)",
    ),
    (
        "b->a/pretrained",
        "trained as b/pretrained, tested on style A",
    ),
];

fn curve_arm(n: usize) -> String {
    format!("b/scratch/n={n}")
}

fn mean_sd(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mean = values.iter().sum::<f64>() / n;
    let sd = if values.len() > 1 {
        (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    (mean, sd)
}

/// Summarises records by arm, in [`ARMS`] order then the curve.
pub fn summarise(runs: &[RunRecord], curve: &[usize]) -> Vec<ArmSummary> {
    let names: Vec<(String, String)> = ARMS
        .iter()
        .map(|(a, d)| (a.to_string(), d.to_string()))
        .chain(curve.iter().map(|&n| {
            (
                curve_arm(n),
                format!("style B, from scratch, {n} training exams"),
            )
        }))
        .collect();
    summarise_arms(runs, names)
}

/// Mean, sd and minimum per arm of `names` (arm, description), in that
/// order; arms without records are left out.
pub fn summarise_arms(runs: &[RunRecord], names: Vec<(String, String)>) -> Vec<ArmSummary> {
    names
        .into_iter()
        .filter_map(|(arm, description)| {
            let aucs: Vec<f64> = runs
                .iter()
                .filter(|r| r.arm == arm)
                .map(|r| r.auc)
                .collect();
            if aucs.is_empty() {
                return None;
            }
            let (mean, sd) = mean_sd(&aucs);
            let min = aucs.iter().copied().fold(f64::INFINITY, f64::min);
            Some(ArmSummary {
                arm,
                description,
                aucs,
                mean,
                sd,
                min,
            })
        })
        .collect()
}

/// The study as a strip chart: one row per arm, a dot per seed, mean ± sd.
/// Rows are coloured by what they measure (same style, cross-style, low
/// labels, learning curve).
pub fn write_plot(
    path: &std::path::Path,
    report: &StudyReport,
) -> Result<(), crate::plot::PlotError> {
    let group = |arm: &str| {
        if arm.contains("->") {
            "cross-style"
        } else if arm.ends_with("low-labels") {
            "low labels"
        } else if arm.contains("/n=") {
            "learning curve (B)"
        } else {
            "all labels"
        }
    };
    let seeds = report.config.seeds.len();
    let title = format!("fedslice study: held-out AUC per arm, {seeds} seed(s)");
    crate::plot::write_strip_chart(
        path,
        &crate::plot::StripChart {
            title: &title,
            x_label: "AUC on held-out exams",
            x_range: (0.3, 1.0),
            reference_lines: vec![(0.5, "chance".into()), (0.85, "target".into())],
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

/// AUC of `classifier` on `exams`.
fn auc_on(
    classifier: &crate::model::ExamClassifier,
    exams: &[PreparedExam],
    device: &Device,
) -> Result<f64, ExperimentError> {
    let labels: Vec<bool> = exams.iter().filter_map(|e| e.label).collect();
    let scores = train::predict(classifier, exams, device);
    Ok(metrics::roc_auc(&scores, &labels)?)
}

/// Runs the study. `on_run` sees every record as it is made (for progress
/// lines and for saving partial results).
pub fn run(
    config: &StudyConfig,
    device: &Device,
    progress: &mut dyn Progress,
    on_run: &mut dyn FnMut(&RunRecord),
) -> Result<StudyReport, ExperimentError> {
    let started = std::time::Instant::now();
    let wants = |g: ArmGroup| config.groups.is_empty() || config.groups.contains(&g);
    let mut runs = Vec::new();
    for &seed in &config.seeds {
        let cohort = |base: &PhantomConfig| PhantomConfig {
            seed,
            ..base.clone()
        };
        // Every group reads style B (the centralised arms score on it); only
        // the learning curve can skip style A.
        let need_a = wants(ArmGroup::Centralised)
            || wants(ArmGroup::LowLabels)
            || wants(ArmGroup::CrossBToA);
        let t = std::time::Instant::now();
        let (a_train, a_test) = if need_a {
            prepared_cohort(Style::A, &cohort(&config.cohort_a), &config.preprocess)?
        } else {
            (Vec::new(), Vec::new())
        };
        let (b_train, b_test) =
            prepared_cohort(Style::B, &cohort(&config.cohort_b), &config.preprocess)?;
        tracing::info!(
            seed,
            a_train = a_train.len(),
            a_test = a_test.len(),
            b_train = b_train.len(),
            b_test = b_test.len(),
            seconds = format!("{:.1}", t.elapsed().as_secs_f64()),
            "cohorts prepared"
        );
        let experiment = ExperimentConfig {
            seed,
            pretrain: Some(PretrainConfig {
                seed,
                ..config.pretrain.clone()
            }),
            finetune: crate::train::FinetuneConfig {
                seed,
                ..config.experiment.finetune.clone()
            },
            ..config.experiment.clone()
        };
        let at = |fraction: f64| ExperimentConfig {
            labelled_fraction: fraction,
            ..experiment.clone()
        };
        let mut record = |arm: &str,
                          seed: u64,
                          auc: f64,
                          ci: Option<[f64; 2]>,
                          train: usize,
                          labelled: usize,
                          test: usize,
                          seconds: f64| {
            let r = RunRecord {
                arm: arm.into(),
                seed,
                auc,
                auc_ci: ci,
                train_exams: train,
                labelled_exams: labelled,
                test_exams: test,
                seconds,
            };
            on_run(&r);
            runs.push(r);
        };
        // One finetune from `encoder`: the record of its own test set, plus
        // the cross-style AUC when `cross` names another set.
        let mut arm = |name: &str,
                       encoder: Encoder,
                       train: &[PreparedExam],
                       test: &[PreparedExam],
                       config: &ExperimentConfig,
                       cross: Option<(&str, &[PreparedExam])>,
                       progress: &mut dyn Progress|
         -> Result<(), ExperimentError> {
            let t = std::time::Instant::now();
            let (classifier, report) =
                experiment::finetune_and_evaluate(encoder, train, test, config, device, progress)?;
            let seconds = t.elapsed().as_secs_f64() + report.pretrain_seconds;
            record(
                name,
                seed,
                report.auc,
                Some(report.auc_ci),
                train.len(),
                report.labelled_train_exams + report.validation_exams,
                test.len(),
                seconds,
            );
            if let Some((cross_name, other)) = cross {
                let auc = auc_on(&classifier, other, device)?;
                record(
                    cross_name,
                    seed,
                    auc,
                    None,
                    train.len(),
                    report.labelled_train_exams + report.validation_exams,
                    other.len(),
                    seconds,
                );
            }
            Ok(())
        };
        let scratch = |progress: &mut dyn Progress| {
            experiment::prepare_encoder(
                Arc::new(Vec::new()),
                &config.experiment.model,
                None,
                device,
                progress,
            )
        };

        if wants(ArmGroup::Centralised) || wants(ArmGroup::LowLabels) {
            let a_shared = Arc::new(a_train.clone());
            let pretrained_a = experiment::prepare_encoder(
                a_shared,
                &config.experiment.model,
                experiment.pretrain.as_ref(),
                device,
                progress,
            )?;
            if wants(ArmGroup::Centralised) {
                arm(
                    "a/pretrained",
                    pretrained_a.clone(),
                    &a_train,
                    &a_test,
                    &at(1.0),
                    Some(("a->b/pretrained", &b_test)),
                    progress,
                )?;
                arm(
                    "a/scratch",
                    scratch(progress)?,
                    &a_train,
                    &a_test,
                    &at(1.0),
                    Some(("a->b/scratch", &b_test)),
                    progress,
                )?;
            }
            if wants(ArmGroup::LowLabels) {
                let low = at(config.low_label_fraction);
                arm(
                    "a/pretrained/low-labels",
                    pretrained_a,
                    &a_train,
                    &a_test,
                    &low,
                    None,
                    progress,
                )?;
                arm(
                    "a/scratch/low-labels",
                    scratch(progress)?,
                    &a_train,
                    &a_test,
                    &low,
                    None,
                    progress,
                )?;
            }
        }
        if wants(ArmGroup::LowLabels) || wants(ArmGroup::CrossBToA) {
            let pretrained_b = experiment::prepare_encoder(
                Arc::new(b_train.clone()),
                &config.experiment.model,
                experiment.pretrain.as_ref(),
                device,
                progress,
            )?;
            if wants(ArmGroup::CrossBToA) {
                arm(
                    "b/pretrained",
                    pretrained_b.clone(),
                    &b_train,
                    &b_test,
                    &at(1.0),
                    Some(("b->a/pretrained", &a_test)),
                    progress,
                )?;
            }
            if wants(ArmGroup::LowLabels) {
                let low = at(config.low_label_fraction);
                arm(
                    "b/pretrained/low-labels",
                    pretrained_b,
                    &b_train,
                    &b_test,
                    &low,
                    None,
                    progress,
                )?;
                arm(
                    "b/scratch/low-labels",
                    scratch(progress)?,
                    &b_train,
                    &b_test,
                    &low,
                    None,
                    progress,
                )?;
            }
        }
        if wants(ArmGroup::Curve) {
            for &n in &config.curve {
                if n > b_train.len() {
                    tracing::warn!(
                        n,
                        available = b_train.len(),
                        "learning-curve point larger than the style B training set; skipped"
                    );
                    continue;
                }
                // A stratified subset of n training exams (same for every arm
                // of this seed and size).
                let fraction = n as f64 / b_train.len() as f64;
                let (_, subset) =
                    stratified_split(b_train.clone(), |e| e.label, fraction, seed ^ n as u64);
                arm(
                    &curve_arm(n),
                    scratch(progress)?,
                    &subset,
                    &b_test,
                    &at(1.0),
                    None,
                    progress,
                )?;
            }
        }
    }
    let arms = summarise(&runs, &config.curve);
    Ok(StudyReport {
        config: config.clone(),
        arms,
        runs,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(arm: &str, seed: u64, auc: f64) -> RunRecord {
        RunRecord {
            arm: arm.into(),
            seed,
            auc,
            auc_ci: None,
            train_exams: 1,
            labelled_exams: 1,
            test_exams: 1,
            seconds: 0.0,
        }
    }

    #[test]
    fn summaries_are_mean_and_sample_sd_per_arm_in_order() {
        let runs = vec![
            record("a/scratch", 0, 0.8),
            record("a/pretrained", 0, 0.9),
            record("a/pretrained", 1, 0.7),
            record("b/scratch/n=50", 0, 0.6),
        ];
        let s = summarise(&runs, &[50, 100]);
        let names: Vec<&str> = s.iter().map(|a| a.arm.as_str()).collect();
        assert_eq!(names, ["a/pretrained", "a/scratch", "b/scratch/n=50"]);
        assert!((s[0].mean - 0.8).abs() < 1e-12);
        assert!((s[0].sd - 0.02f64.sqrt()).abs() < 1e-12);
        assert!((s[0].min - 0.7).abs() < 1e-12);
        assert_eq!(s[1].sd, 0.0);
    }
}
