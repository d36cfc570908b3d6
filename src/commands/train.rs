use std::path::PathBuf;

use anyhow::Context;
use fedslice::data::cohort;
use fedslice::data::preprocess::{PreparedExam, prepare};
use fedslice::device::{self, BackendKind};
use fedslice::experiment::{self, ExperimentReport};
use fedslice::export::{BundleConfig, write_bundle};

use crate::cli::TrainArgs;
use site_agent::progress::Bars;

fn default_run_dir() -> PathBuf {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    PathBuf::from("runs").join(format!("train-{stamp}"))
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let recipe = &args.recipe;
    let config = super::recipe::experiment_config(
        recipe,
        args.train_seed,
        args.labelled_fraction,
        !args.no_pretrain,
    )?;
    let backend: BackendKind = recipe.device.parse()?;
    let device = device::open(backend)?;
    // Weight initialisation draws from the device's generator: seed it so a
    // run is repeatable with the same --train-seed.
    device.seed(args.train_seed);
    let run_dir = args.out.clone().unwrap_or_else(default_run_dir);
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("creating run folder {}", run_dir.display()))?;

    let data_dir = match &args.data {
        Some(dir) => dir.clone(),
        None => {
            let dir = run_dir.join("data");
            tracing::info!(dir = %dir.display(), "no --data given: generating a phantom cohort");
            super::phantom::write(&dir, &args.cohort)?;
            dir
        }
    };
    let sites = cohort::load_sites_in(&data_dir, args.plane)
        .with_context(|| format!("loading exams from {}", data_dir.display()))?;
    let preprocess = super::recipe::preprocess(recipe, config.model.encoder.image_size)?;
    let mut train = Vec::new();
    let mut test = Vec::new();
    for site in &sites {
        for (exams, into) in [(&site.train, &mut train), (&site.valid, &mut test)] {
            for exam in exams {
                let id = format!("{}/{}", site.name, exam.id);
                match prepare(&id, &exam.volume, exam.spacing, exam.label, &preprocess) {
                    Ok(p) => into.push(p),
                    Err(e) => tracing::warn!("skipping exam: {e}"),
                }
            }
        }
    }
    let test: Vec<PreparedExam> = test.into_iter().filter(|e| e.label.is_some()).collect();
    anyhow::ensure!(
        !train.is_empty(),
        "no usable training exams in {}",
        data_dir.display()
    );
    anyhow::ensure!(
        !test.is_empty(),
        "no labelled held-out (valid/) exams in {}",
        data_dir.display()
    );
    tracing::info!(
        sites = sites.len(),
        train = train.len(),
        test = test.len(),
        "data ready"
    );

    let (classifier, report) = experiment::run(train, test, &config, &device, &mut Bars::new())?;

    // The run's model is a full bundle, the one format predict, evaluate and
    // export read, with its validation already in provenance.json: it does
    // not depend on the report staying beside it.
    let model_dir = run_dir.join("model");
    let bundle_config = BundleConfig::new(
        config.model.clone(),
        preprocess,
        args.plane,
        report.threshold,
        super::export::THRESHOLD_SOURCE,
    );
    let provenance = super::export::provenance(&run_dir, &report, report.threshold);
    write_bundle(&model_dir, &classifier, &bundle_config, &provenance)
        .with_context(|| format!("writing the model bundle to {}", model_dir.display()))?;
    let report_path = args
        .report
        .clone()
        .unwrap_or_else(|| run_dir.join("report.json"));
    let json = serde_json::json!({
        "report": &report,
        "auc": report.auc,
        "auc_ci": report.auc_ci,
        "accuracy": report.accuracy,
        "sensitivity": report.sensitivity,
        "specificity": report.specificity,
        "threshold": report.threshold,
        "pretrain_loss_first": report.pretrain_loss_first,
        "pretrain_loss_last": report.pretrain_loss_last,
        "preset": recipe.preset,
        "pooling": recipe.pooling,
        "slice_embedding": recipe.slice_embedding,
        "device": backend.to_string(),
        "labelled_fraction": args.labelled_fraction,
        "no_pretrain": args.no_pretrain,
        "data": data_dir.display().to_string(),
        "model_dir": model_dir.display().to_string(),
        "config": &config,
    });
    if let Some(parent) = report_path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(&report_path, serde_json::to_vec_pretty(&json)?)
        .with_context(|| format!("writing report {}", report_path.display()))?;
    print_table(&report);
    println!("model:  {}", model_dir.display());
    println!("report: {}", report_path.display());
    Ok(())
}

fn print_table(r: &ExperimentReport) {
    let loss = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
    println!();
    println!(
        "  held-out exams       {:>8}  ({} torn)",
        r.test_exams, r.test_positives
    );
    println!(
        "  AUC                  {:>8.3}  (95% CI {:.3}–{:.3})",
        r.auc, r.auc_ci[0], r.auc_ci[1]
    );
    println!("  accuracy             {:>8.3}", r.accuracy);
    println!("  sensitivity          {:>8.3}", r.sensitivity);
    println!("  specificity          {:>8.3}", r.specificity);
    println!("  threshold            {:>8.3}", r.threshold);
    println!(
        "  pretrain loss        {:>8} → {}",
        loss(r.pretrain_loss_first),
        loss(r.pretrain_loss_last)
    );
    println!(
        "  labelled / val exams {:>8} / {}",
        r.labelled_train_exams, r.validation_exams
    );
    println!(
        "  time (s)             {:>8.1} pretrain, {:.1} fine-tune",
        r.pretrain_seconds, r.finetune_seconds
    );
    println!();
}
