//! `fedslice export --from RUN_DIR --out DIR`: a centrally trained classifier
//! as the same radiology bundle `aggregator export` writes, with per-site and
//! pooled held-out metrics (bootstrap CIs) from the run's report.
//!
//! `fedslice train` already writes RUN_DIR/model as a bundle, so this copies
//! it (verified) to DIR. It also converts run folders saved by older
//! versions, whose RUN_DIR/model held burn-layout weights and a different
//! `config.json`; that read-only loader is the only place the old format lives.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use fedslice::data::plane::Plane;
use fedslice::data::preprocess::PreprocessConfig;
use fedslice::device::{self, BackendKind};
use fedslice::experiment::ExperimentReport;
use fedslice::export::{
    Bundle, BundleConfig, BundleError, Origin, Provenance, ValidationRow, unix_now, write_bundle,
};
use fedslice::model::{ClassifierConfig, ExamClassifier, load_safetensors};

use crate::cli::ExportArgs;

/// How a centrally trained bundle's threshold was chosen.
pub const THRESHOLD_SOURCE: &str = "Youden-optimal threshold on the run's validation exams";

/// The parts of `report.json` the bundle needs.
#[derive(serde::Deserialize)]
struct RunReport {
    report: ExperimentReport,
}

pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    let model_dir = args.from.join("model");
    let device = device::open(BackendKind::Flex)?;
    let (model, config, provenance) = match Bundle::open(&model_dir, &device) {
        Ok(bundle) => {
            // The bundle carries the provenance train derived from its report;
            // an explicit --report recomputes the validation rows from that file.
            let provenance = match &args.report {
                Some(path) => provenance(&args.from, &read_report(path)?, bundle.config.threshold),
                None => Provenance {
                    origin: Origin::Centralised {
                        run: args.from.display().to_string(),
                    },
                    exported_at: unix_now(),
                    ..bundle.provenance
                },
            };
            (bundle.model, bundle.config, provenance)
        }
        Err(BundleError::LegacyCheckpoint { path }) => {
            let (model, config) = legacy::load(&model_dir, &device).with_context(|| {
                format!(
                    "converting the older training checkpoint {}",
                    path.display()
                )
            })?;
            // Old runs kept their metrics only in the report.
            let report_path = args
                .report
                .clone()
                .unwrap_or_else(|| args.from.join("report.json"));
            let report = read_report(&report_path)?;
            let provenance = provenance(&args.from, &report, config.threshold);
            (model, config, provenance)
        }
        Err(e) => {
            return Err(e)
                .with_context(|| format!("loading the classifier in {}", model_dir.display()));
        }
    };
    write_bundle(&args.out, &model, &config, &provenance)
        .with_context(|| format!("writing the bundle to {}", args.out.display()))?;
    println!("exported {} to {}", args.from.display(), args.out.display());
    Ok(())
}

fn read_report(path: &Path) -> anyhow::Result<ExperimentReport> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("reading the training report {}", path.display()))?;
    let run: RunReport = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a `fedslice train` report", path.display()))?;
    Ok(run.report)
}

/// The provenance of a classifier trained by `fedslice train` in `run`:
/// validation per site and pooled from the report's held-out predictions.
pub fn provenance(run: &Path, report: &ExperimentReport, threshold: f64) -> Provenance {
    let mut by_site: BTreeMap<&str, (Vec<f64>, Vec<bool>)> = BTreeMap::new();
    for (id, label, p) in &report.test_predictions {
        let site = id.split_once('/').map_or("site", |(s, _)| s);
        let entry = by_site.entry(site).or_default();
        entry.0.push(*p);
        entry.1.push(*label);
    }
    let mut validation: Vec<ValidationRow> = by_site
        .iter()
        .map(|(site, (scores, labels))| ValidationRow::from_scores(site, scores, labels, threshold))
        .collect();
    let (scores, labels): (Vec<f64>, Vec<bool>) = report
        .test_predictions
        .iter()
        .map(|(_, l, p)| (*p, *l))
        .unzip();
    validation.push(ValidationRow::from_scores(
        "pooled", &scores, &labels, threshold,
    ));
    Provenance {
        origin: Origin::Centralised {
            run: run.display().to_string(),
        },
        sites: by_site.len(),
        pretrain_exams: Some(report.pretrain_exams),
        labelled_exams: Some(report.labelled_train_exams),
        validation,
        exported_at: unix_now(),
        details: serde_json::json!({
            "pretrain_loss_first": report.pretrain_loss_first,
            "pretrain_loss_last": report.pretrain_loss_last,
            "validation_exams": report.validation_exams,
        }),
    }
}

/// The classifier format `fedslice train` wrote before it wrote bundles:
/// `config.json` below, and `model.safetensors` under burn's own tensor names.
/// Read only, so existing run folders can still be exported.
mod legacy {
    use super::*;

    /// The old `config.json`.
    #[derive(serde::Deserialize)]
    struct Config {
        format_version: u32,
        model: ClassifierConfig,
        preprocess: PreprocessConfig,
        threshold: f64,
        #[serde(default)]
        plane: Plane,
    }

    pub fn load(
        dir: &Path,
        device: &burn::tensor::Device,
    ) -> anyhow::Result<(ExamClassifier, BundleConfig)> {
        let config_path = dir.join("config.json");
        let bytes = std::fs::read(&config_path)
            .with_context(|| format!("reading {}", config_path.display()))?;
        let old: Config = serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{} is not an older fedslice checkpoint config",
                config_path.display()
            )
        })?;
        anyhow::ensure!(
            old.format_version == 1,
            "{}: checkpoint format version {} is not supported (expected 1)",
            config_path.display(),
            old.format_version
        );
        old.model
            .encoder
            .validate()
            .map_err(|reason| anyhow::anyhow!("{}: {reason}", config_path.display()))?;
        let model = load_safetensors(
            ExamClassifier::new(&old.model, device),
            &dir.join("model.safetensors"),
        )?;
        let config = BundleConfig::new(
            old.model,
            old.preprocess,
            old.plane,
            old.threshold,
            THRESHOLD_SOURCE,
        );
        Ok((model, config))
    }
}
