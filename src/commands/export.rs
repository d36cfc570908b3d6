//! `fedslice export --from RUN_DIR --out DIR`: a centrally trained classifier
//! as the same radiology bundle `aggregator export` writes, with per-site and
//! pooled held-out metrics (bootstrap CIs) from the run's report.

use std::collections::BTreeMap;

use anyhow::Context;
use fedslice::device::{self, BackendKind};
use fedslice::export::{BundleConfig, Origin, Provenance, ValidationRow, unix_now, write_bundle};
use fedslice::model::load_classifier;

use crate::cli::ExportArgs;

/// The parts of `report.json` the bundle needs.
#[derive(serde::Deserialize)]
struct RunReport {
    report: fedslice::experiment::ExperimentReport,
}

pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    let model_dir = args.from.join("model");
    let report_path = args
        .report
        .clone()
        .unwrap_or_else(|| args.from.join("report.json"));
    let device = device::open(BackendKind::Flex)?;
    let (model, meta) = load_classifier(&model_dir, &device)
        .with_context(|| format!("loading the classifier in {}", model_dir.display()))?;
    let bytes = std::fs::read(&report_path)
        .with_context(|| format!("reading the training report {}", report_path.display()))?;
    let run: RunReport = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a `fedslice train` report", report_path.display()))?;
    let report = run.report;

    let mut by_site: BTreeMap<&str, (Vec<f64>, Vec<bool>)> = BTreeMap::new();
    for (id, label, p) in &report.test_predictions {
        let site = id.split_once('/').map_or("site", |(s, _)| s);
        let entry = by_site.entry(site).or_default();
        entry.0.push(*p);
        entry.1.push(*label);
    }
    let mut validation: Vec<ValidationRow> = by_site
        .iter()
        .map(|(site, (scores, labels))| {
            ValidationRow::from_scores(site, scores, labels, meta.threshold)
        })
        .collect();
    let (scores, labels): (Vec<f64>, Vec<bool>) = report
        .test_predictions
        .iter()
        .map(|(_, l, p)| (*p, *l))
        .unzip();
    validation.push(ValidationRow::from_scores(
        "pooled",
        &scores,
        &labels,
        meta.threshold,
    ));

    let config = BundleConfig::from_meta(
        &meta,
        "Youden-optimal threshold on the run's validation exams",
    );
    let provenance = Provenance {
        origin: Origin::Centralised {
            run: args.from.display().to_string(),
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
    };
    write_bundle(&args.out, &model, &config, &provenance)
        .with_context(|| format!("writing the bundle to {}", args.out.display()))?;
    println!("exported {} to {}", args.from.display(), args.out.display());
    Ok(())
}
