use std::path::PathBuf;

use anyhow::Context;
use fedslice::data::cohort;
use fedslice::data::preprocess::{PreparedExam, PreprocessConfig, prepare};
use fedslice::device::{self, BackendKind};
use fedslice::experiment::{self, ExperimentConfig, ExperimentReport};
use fedslice::model::{ClassifierConfig, ClassifierMeta, VitConfig, save_classifier};
use fedslice::ssl::augment::ExamAugment;
use fedslice::train::{FinetuneConfig, PretrainConfig};

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
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.labelled_fraction) && args.labelled_fraction > 0.0,
        "--labelled-fraction must be in (0, 1], got {}",
        args.labelled_fraction
    );
    anyhow::ensure!(
        args.augment_min_scale > 0.0 && args.augment_min_scale <= 1.0,
        "--augment-min-scale must be in (0, 1], got {}",
        args.augment_min_scale
    );
    let vit = VitConfig::preset(&args.preset)?;
    let pooling = args.pooling.parse().map_err(anyhow::Error::msg)?;
    let backend: BackendKind = args.device.parse()?;
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
    anyhow::ensure!(
        args.crop_fraction > 0.0 && args.crop_fraction <= 1.0,
        "--crop-fraction must be in (0, 1], got {}",
        args.crop_fraction
    );
    let preprocess = PreprocessConfig {
        crop_fraction: args.crop_fraction,
        central_slices: args.central_slices,
        ..PreprocessConfig::new(vit.image_size)
    };
    let mut train = Vec::new();
    let mut test = Vec::new();
    for site in &sites {
        for (exams, into) in [(&site.train, &mut train), (&site.valid, &mut test)] {
            for exam in exams {
                let id = format!("{}/{}", site.name, exam.id);
                match prepare(&id, &exam.volume, exam.label, &preprocess) {
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

    let config = ExperimentConfig {
        model: ClassifierConfig {
            slice_embedding: args.slice_embedding,
            ..ClassifierConfig::new(vit, pooling)
        },
        pretrain: (!args.no_pretrain).then(|| PretrainConfig {
            epochs: args.pretrain_epochs,
            batch_size: args.batch_size,
            lr_per_256: args.pretrain_lr,
            seed: args.train_seed,
            ..PretrainConfig::default()
        }),
        finetune: FinetuneConfig {
            epochs: args.finetune_epochs,
            lr: args.finetune_lr,
            exams_per_step: args.exams_per_step,
            augment: (!args.no_augment).then(|| ExamAugment {
                min_scale: args.augment_min_scale,
                ..ExamAugment::default()
            }),
            seed: args.train_seed,
            ..FinetuneConfig::default()
        },
        labelled_fraction: args.labelled_fraction,
        validation_fraction: 0.2,
        bootstrap_resamples: 1000,
        seed: args.train_seed,
    };
    let (classifier, report) = experiment::run(train, test, &config, &device, &mut Bars::new())?;

    let model_dir = run_dir.join("model");
    save_classifier(
        &model_dir,
        &classifier,
        &ClassifierMeta {
            plane: args.plane,
            ..ClassifierMeta::new(config.model.clone(), preprocess, report.threshold)
        },
    )?;
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
        "preset": args.preset,
        "pooling": args.pooling,
        "slice_embedding": args.slice_embedding,
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
