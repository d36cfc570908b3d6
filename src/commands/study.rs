//! `fedslice study`: the recipe over several seeds on both phantom styles.

use anyhow::Context;
use fedslice::atomic_file;
use fedslice::data::phantom::PhantomConfig;
use fedslice::device::{self, BackendKind};
use fedslice::study::{self, ArmGroup, RunRecord, StudyConfig, StudyReport};
use fedslice::train::PretrainConfig;

use crate::cli::StudyArgs;
use site_agent::progress::Bars;

pub fn run(args: StudyArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.seeds > 0, "--seeds must be at least 1");
    anyhow::ensure!(
        args.low_label_fraction > 0.0 && args.low_label_fraction <= 1.0,
        "--low-label-fraction must be in (0, 1]"
    );
    let mut recipe = args.recipe.clone();
    let (mut a_exams, mut b_exams, mut curve) = (
        args.a_exams_per_site,
        args.b_exams_per_site,
        args.curve.clone(),
    );
    if args.quick {
        recipe.pretrain_epochs = recipe.pretrain_epochs.min(2);
        recipe.finetune_epochs = recipe.finetune_epochs.min(8);
        a_exams = a_exams.min(20);
        b_exams = b_exams.min(20);
        curve = vec![20, 40];
    }
    let experiment = super::recipe::experiment_config(&recipe, args.first_seed, 1.0, true)?;
    let preprocess = super::recipe::preprocess(&recipe, experiment.model.encoder.image_size)?;
    let groups = args
        .arms
        .iter()
        .map(|g| g.parse::<ArmGroup>().map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let cohort = |sites, exams_per_site| PhantomConfig {
        sites,
        exams_per_site,
        image_size: args.image_size,
        ..PhantomConfig::default()
    };
    let config = StudyConfig {
        seeds: (args.first_seed..args.first_seed + args.seeds as u64).collect(),
        cohort_a: cohort(args.a_sites, a_exams),
        cohort_b: cohort(args.b_sites, b_exams),
        preprocess,
        pretrain: experiment
            .pretrain
            .clone()
            .unwrap_or_else(PretrainConfig::default),
        experiment,
        low_label_fraction: args.low_label_fraction,
        curve,
        groups,
    };
    let backend: BackendKind = recipe.device.parse()?;
    let device = device::open(backend)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let json_path = args.out.join("study.json");

    // Partial results are saved after every run: a study that stops keeps
    // everything it measured.
    let mut partial: Vec<RunRecord> = Vec::new();
    let mut save_partial = |r: &RunRecord| {
        println!(
            "seed {:>2}  {:<26} AUC {:.3}  ({} train, {} labelled, {} test, {:.0} s)",
            r.seed, r.arm, r.auc, r.train_exams, r.labelled_exams, r.test_exams, r.seconds
        );
        partial.push(r.clone());
        let report = StudyReport {
            config: config.clone(),
            arms: study::summarise(&partial, &config.curve),
            runs: partial.clone(),
            seconds: 0.0,
        };
        if let Err(e) = serde_json::to_vec_pretty(&report)
            .map_err(std::io::Error::other)
            .and_then(|bytes| atomic_file::write(&json_path, &bytes))
        {
            tracing::warn!("saving partial results to {}: {e}", json_path.display());
        }
        if let Err(e) = study::write_plot(&args.out.join("study.png"), &report) {
            tracing::warn!("saving the partial plot: {e}");
        }
    };
    let report = study::run(&config, &device, &mut Bars::new(), &mut save_partial)?;
    atomic_file::write(&json_path, &serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    println!();
    println!(
        "{:<26} {:>7} {:>7} {:>7}  seeds",
        "arm", "mean", "sd", "min"
    );
    for arm in &report.arms {
        println!(
            "{:<26} {:>7.3} {:>7.3} {:>7.3}  {}",
            arm.arm,
            arm.mean,
            arm.sd,
            arm.min,
            arm.aucs
                .iter()
                .map(|a| format!("{a:.3}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    let png_path = args.out.join("study.png");
    study::write_plot(&png_path, &report)
        .with_context(|| format!("writing {}", png_path.display()))?;
    println!("results: {}", json_path.display());
    println!("plot:    {}", png_path.display());
    Ok(())
}
