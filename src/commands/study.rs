//! `fedslice study`: the recipe over several seeds on both phantom styles.

use anyhow::Context;
use fedslice::aggregate::ServerOptimizer;
use fedslice::atomic_file;
use fedslice::data::phantom::PhantomConfig;
use fedslice::device::{self, BackendKind};
use fedslice::federated::{JobOptions, job_spec};
use fedslice::federated_study::{self, FederatedArm, FederatedStudyConfig};
use fedslice::model::SlicePooling;
use fedslice::protocol::{Aggregation, JobSpec, Phase};
use fedslice::study::{self, ArmGroup, RunRecord, StudyConfig, StudyReport};
use fedslice::train::PretrainConfig;
use fedslice::wire::Dtype;

use crate::cli::{FederatedStudyArgs, StudyArgs};
use site_agent::progress::Bars;

pub fn run(args: StudyArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.seeds > 0, "--seeds must be at least 1");
    if args.federated.federated {
        return run_federated(&args);
    }
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
    print_summary(&report.arms);
    let png_path = args.out.join("study.png");
    study::write_plot(&png_path, &report)
        .with_context(|| format!("writing {}", png_path.display()))?;
    println!("results: {}", json_path.display());
    println!("plot:    {}", png_path.display());
    Ok(())
}

/// A job of the federated study, built as `aggregator job create` builds it
/// from the same flags.
fn job(
    phase: Phase,
    rounds: u32,
    local_epochs: usize,
    fed: &FederatedStudyArgs,
    server_optimizer: ServerOptimizer,
    preset: &str,
) -> anyhow::Result<JobSpec> {
    Ok(job_spec(&JobOptions {
        phase,
        preset: preset.into(),
        pooling: SlicePooling::default(),
        slice_embedding: Default::default(),
        rounds,
        min_sites: fed.sites as u32,
        local_epochs,
        round_timeout_s: 1800,
        init_from: (phase == Phase::Finetune).then(|| "pretrain".to_string()),
        dtype: Dtype::F32,
        aggregation: Aggregation::Fedavg,
        server_optimizer,
        clip_update_norm: None,
        fedprox_mu: fed.fedprox_mu,
        seed: 0,
    })?)
}

fn run_federated(args: &StudyArgs) -> anyhow::Result<()> {
    let fed = &args.federated;
    anyhow::ensure!(
        fed.sites >= 2,
        "--sites must be at least 2 for a federated study"
    );
    let budget = super::demo::Budget::new(args.quick, fed.exams_per_site);
    let arms = args
        .arms
        .iter()
        .map(|a| a.parse::<FederatedArm>().map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let pretrain_rounds = fed.pretrain_rounds.unwrap_or(budget.pretrain_rounds);
    let preset = args.recipe.preset.as_str();
    let pretrain = (pretrain_rounds > 0)
        .then(|| {
            job(
                Phase::Pretrain,
                pretrain_rounds,
                budget.pretrain_local_epochs,
                fed,
                ServerOptimizer::FEDAVG,
                preset,
            )
        })
        .transpose()?;
    let finetune = job(
        Phase::Finetune,
        fed.rounds.unwrap_or(budget.finetune_rounds),
        fed.local_epochs
            .unwrap_or(budget.finetune_local_epochs(fed.sites)),
        fed,
        ServerOptimizer::named(&fed.server_optimizer, fed.server_lr)?,
        preset,
    )?;
    // The training exams stay the demo's; extra held-out exams only sharpen the score.
    let (exams_per_site, valid_fraction) = match fed.test_exams_per_site {
        None => (budget.exams_per_site, super::demo::HELD_OUT_FRACTION),
        Some(test) => {
            let train = budget.exams_per_site
                - (budget.exams_per_site as f64 * super::demo::HELD_OUT_FRACTION).round() as usize;
            (train + test, test as f64 / (train + test) as f64)
        }
    };
    let config = FederatedStudyConfig {
        seeds: (args.first_seed..args.first_seed + args.seeds as u64).collect(),
        cohort: PhantomConfig {
            sites: fed.sites,
            exams_per_site,
            image_size: budget.image_size,
            valid_fraction,
            size_jitter: fed.size_jitter,
            label_skew: fed.label_skew,
            scanner_skew: fed.scanner_skew,
            ..PhantomConfig::default()
        },
        pretrain,
        finetune,
        pooled_finetune_epochs: budget.pooled_finetune_epochs(),
        arms,
    };
    config.cohort.validate()?;
    let backend: BackendKind = args.recipe.device.parse()?;
    let device = device::open(backend)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let json_path = args.out.join("federated-study.json");
    let png_path = args.out.join("federated-study.png");
    println!(
        "federated study: {} sites x {} exams, {} seed(s); pretrain {} x {} local epochs, finetune {} x {}",
        config.cohort.sites,
        config.cohort.exams_per_site,
        config.seeds.len(),
        pretrain_rounds,
        budget.pretrain_local_epochs,
        config.finetune.rounds,
        config.finetune.finetune.epochs,
    );
    let mut partial: Vec<RunRecord> = Vec::new();
    let mut save_partial = |r: &RunRecord| {
        println!(
            "seed {:>2}  {:<16} AUC {:.3}  ({} train, {} test, {:.0} s)",
            r.seed, r.arm, r.auc, r.train_exams, r.test_exams, r.seconds
        );
        partial.push(r.clone());
        if let Err(e) = serde_json::to_vec_pretty(&partial)
            .map_err(std::io::Error::other)
            .and_then(|bytes| atomic_file::write(&json_path, &bytes))
        {
            tracing::warn!("saving partial results to {}: {e}", json_path.display());
        }
    };
    let report = federated_study::run(&config, &device, &mut Bars::new(), &mut save_partial)?;
    atomic_file::write(&json_path, &serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    print_summary(&report.arms);
    let gap = |g: Option<f64>| g.map_or("-".to_string(), |g| format!("{g:+.3}"));
    println!(
        "verdict: federated minus best single site {}, minus pooled {} (mean AUC over {} seed(s))",
        gap(report.verdict.federated_minus_best_local),
        gap(report.verdict.federated_minus_centralised),
        config.seeds.len()
    );
    federated_study::write_plot(&png_path, &report)
        .with_context(|| format!("writing {}", png_path.display()))?;
    println!("results: {}", json_path.display());
    println!("plot:    {}", png_path.display());
    Ok(())
}

fn print_summary(arms: &[study::ArmSummary]) {
    println!();
    println!(
        "{:<26} {:>7} {:>7} {:>7}  seeds",
        "arm", "mean", "sd", "min"
    );
    for arm in arms {
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
}
