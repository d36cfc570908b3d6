//! `fedslice demo`: the one-machine federated consortium. It generates a
//! non-IID 3-site phantom cohort, initialises an aggregator, enrols the sites,
//! runs the aggregator and one site agent per site as separate processes over
//! mutual TLS on loopback, runs federated GMML pretraining then federated
//! fine-tuning, exports the classifier, and compares it with local-only and
//! centralised training on the same data and budget.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};
use fedslice::data::cohort::{self, SiteData};
use fedslice::data::preprocess::PreparedExam;
use fedslice::device::{self, BackendKind};
use fedslice::experiment::{self, ExperimentConfig};
use fedslice::export::Bundle;
use fedslice::federated_study::{baseline_recipe, steps_matched_epochs};
use fedslice::metrics;
use fedslice::protocol::JobSpec;
use fedslice::train;
use site_agent::payload_log::PayloadLog;
use site_agent::progress::Bars;

use crate::cli::{CohortArgs, DemoArgs};

/// Training budget of one demo run, which `fedslice study --federated`
/// measures too. Fine-tuning gives every arm the same number of optimisation
/// steps: the pooled baseline runs `finetune_epochs_per_round` epochs per
/// round over all exams, a site alone and each site in a federated round as
/// many steps over its own exams (with equal sites, `sites` times the epochs).
/// With equal epochs instead, a federated site took a third of the pooled
/// run's steps, and on three tuning seeds (100–102, `study --federated
/// --quick`) federated AUC was 0.607 ± 0.069 against 0.677 ± 0.039 with
/// matched steps.
pub(crate) struct Budget {
    pub(crate) exams_per_site: usize,
    pub(crate) image_size: usize,
    pub(crate) pretrain_rounds: u32,
    pub(crate) pretrain_local_epochs: usize,
    pub(crate) finetune_rounds: u32,
    pub(crate) finetune_epochs_per_round: usize,
}

impl Budget {
    fn for_args(args: &DemoArgs) -> Self {
        Self::new(args.quick, args.exams_per_site)
    }

    pub(crate) fn new(quick: bool, exams_per_site: Option<usize>) -> Self {
        if quick {
            Self {
                exams_per_site: exams_per_site.unwrap_or(40),
                image_size: 128,
                pretrain_rounds: 2,
                pretrain_local_epochs: 2,
                finetune_rounds: 4,
                finetune_epochs_per_round: 5,
            }
        } else {
            Self {
                exams_per_site: exams_per_site.unwrap_or(60),
                image_size: 256,
                pretrain_rounds: 4,
                pretrain_local_epochs: 2,
                finetune_rounds: 8,
                finetune_epochs_per_round: 5,
            }
        }
    }
}

impl Budget {
    /// Epochs of the pooled baseline over all its rounds.
    pub(crate) fn pooled_finetune_epochs(&self) -> usize {
        self.finetune_epochs_per_round * self.finetune_rounds as usize
    }

    /// Local epochs per finetune round for a consortium of `sites` equal sites.
    pub(crate) fn finetune_local_epochs(&self, sites: usize) -> usize {
        self.finetune_epochs_per_round * sites.max(1)
    }
}

/// Share of each site's exams held out to score every arm.
pub(crate) const HELD_OUT_FRACTION: f64 = 0.25;

fn exe() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("locating the fedslice executable")
}

/// Runs `fedslice <args>` to completion and returns its stdout.
fn run_tool(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(exe()?)
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running fedslice {}", args.join(" ")))?;
    if !output.status.success() {
        bail!("`fedslice {}` failed ({})", args.join(" "), output.status);
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn spawn_logged(args: &[&str], log: &Path, inherit_stdout: bool) -> anyhow::Result<Child> {
    let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    Command::new(exe()?)
        .args(args)
        .stdout(if inherit_stdout {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .stderr(file)
        .spawn()
        .with_context(|| format!("starting fedslice {}", args.join(" ")))
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Kills the aggregator when the demo ends, however it ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn site_toml(name: &str, url: &str, data: &Path, cache: &Path) -> String {
    format!(
        "site = \"{name}\"\naggregator_url = \"{url}\"\nca_cert = \"ca.pem\"\ncert = \"site.pem\"\nkey = \"site.key\"\ndata = \"{}\"\ndevice = \"flex\"\ncache_dir = \"{}\"\n",
        data.display(),
        cache.display()
    )
}

#[derive(serde::Serialize)]
struct SiteRow {
    site: String,
    train_exams: usize,
    test_exams: usize,
    local_auc: f64,
    bytes_sent: u64,
    payloads_sent: usize,
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let budget = Budget::for_args(&args);
    let work = match &args.workdir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("fedslice-demo-{}", std::process::id())),
    };
    if work.exists() {
        bail!("{} already exists; pass a new --workdir", work.display());
    }
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    println!("demo folder: {}", work.display());

    // 1. A non-IID consortium: each site has its own scanner profile and prevalence.
    let data = work.join("data");
    super::phantom::write(
        &data,
        &CohortArgs {
            sites: args.sites,
            exams_per_site: budget.exams_per_site,
            seed: args.seed,
            image_size: budget.image_size,
            valid_fraction: HELD_OUT_FRACTION,
            textbook: false,
            label_skew: 0.0,
            scanner_skew: 1.0,
            size_jitter: 0.0,
        },
    )?;
    let sites = cohort::load_sites(&data).with_context(|| format!("loading {}", data.display()))?;

    // 2. Aggregator state, site bundles and the two jobs.
    let port = free_port()?;
    let url = format!("https://127.0.0.1:{port}");
    let state = work.join("aggregator-state");
    let state_s = state.display().to_string();
    run_tool(&["aggregator", "--dir", &state_s, "init", "--url", &url])?;
    let mut configs = Vec::new();
    for site in &sites {
        let bundle = work.join("sites").join(&site.name);
        run_tool(&[
            "aggregator",
            "--dir",
            &state_s,
            "site",
            "add",
            &site.name,
            "--out",
            &bundle.display().to_string(),
        ])?;
        let config = bundle.join("site.toml");
        std::fs::write(
            &config,
            site_toml(
                &site.name,
                &url,
                &data.join(&site.name),
                &bundle.join("cache"),
            ),
        )
        .with_context(|| format!("writing {}", config.display()))?;
        configs.push((site.name.clone(), bundle));
    }
    let n = sites.len() as u32;
    let pre_id = run_tool(&[
        "aggregator",
        "--dir",
        &state_s,
        "job",
        "create",
        "--phase",
        "pretrain",
        "--preset",
        "test",
        "--rounds",
        &budget.pretrain_rounds.to_string(),
        "--min-sites",
        &n.to_string(),
        "--local-epochs",
        &budget.pretrain_local_epochs.to_string(),
        "--round-timeout",
        "30m",
    ])?
    .trim()
    .to_string();
    let fine_id = run_tool(&[
        "aggregator",
        "--dir",
        &state_s,
        "job",
        "create",
        "--phase",
        "finetune",
        "--preset",
        "test",
        "--rounds",
        &budget.finetune_rounds.to_string(),
        "--min-sites",
        &n.to_string(),
        "--local-epochs",
        &budget.finetune_local_epochs(sites.len()).to_string(),
        "--round-timeout",
        "30m",
        "--init-from",
        &pre_id,
    ])?
    .trim()
    .to_string();

    // The baselines use exactly the recipes the aggregator stored for the jobs.
    let status: serde_json::Value = serde_json::from_str(&run_tool(&[
        "aggregator",
        "--dir",
        &state_s,
        "status",
        "--json",
    ])?)
    .context("reading the aggregator's status")?;
    let spec_of = |id: &str| -> anyhow::Result<JobSpec> {
        let job = status["jobs"]
            .as_array()
            .and_then(|jobs| jobs.iter().find(|j| j["job"]["id"] == id))
            .with_context(|| format!("job {id} missing from the aggregator's status"))?;
        Ok(serde_json::from_value(job["job"]["spec"].clone())?)
    };
    let (pretrain, finetune) = (spec_of(&pre_id)?, spec_of(&fine_id)?);

    // 3. The consortium: one aggregator and one agent per site, separate processes.
    let logs = work.join("logs");
    std::fs::create_dir_all(&logs)?;
    let listen = format!("127.0.0.1:{port}");
    let _aggregator = KillOnDrop(spawn_logged(
        &[
            "aggregator",
            "--dir",
            &state_s,
            "serve",
            "--listen",
            &listen,
        ],
        &logs.join("aggregator.log"),
        false,
    )?);
    println!(
        "federated: {} pretrain rounds × {} local epochs, then {} finetune rounds × {} local epochs, {} sites over mutual TLS ({url})",
        budget.pretrain_rounds,
        budget.pretrain_local_epochs,
        budget.finetune_rounds,
        budget.finetune_local_epochs(sites.len()),
        n
    );
    let federated_started = Instant::now();
    let mut agents = Vec::new();
    for (name, bundle) in &configs {
        let config = bundle.join("site.toml").display().to_string();
        let child = spawn_logged(
            &[
                "site-agent",
                "run",
                "--config",
                &config,
                "--until-idle",
                "--poll-wait",
                "5",
            ],
            &logs.join(format!("{name}.log")),
            true,
        )?;
        agents.push((name.clone(), child));
    }
    for (name, mut child) in agents {
        let status = child
            .wait()
            .with_context(|| format!("waiting for site agent {name}"))?;
        if !status.success() {
            bail!(
                "site agent {name} failed ({status}); see {}",
                logs.join(format!("{name}.log")).display()
            );
        }
    }
    let federated_seconds = federated_started.elapsed().as_secs_f64();
    drop(_aggregator);

    // 4. Export the global classifier and evaluate it on every site's held-out exams.
    let model_dir = work.join("model");
    run_tool(&[
        "aggregator",
        "--dir",
        &state_s,
        "export",
        "--job",
        &fine_id,
        "--out",
        &model_dir.display().to_string(),
    ])?;
    let device = device::open(BackendKind::Flex)?;
    let Bundle {
        model: classifier,
        config: meta,
        ..
    } = Bundle::open(&model_dir, &device)?;
    let test = super::evaluate::held_out(&sites, &meta.preprocess);
    let labels: Vec<bool> = test.iter().filter_map(|e| e.label).collect();
    let scores = train::predict(&classifier, &test, &device);
    let federated = metrics::evaluate(&scores, &labels, meta.threshold, 1000, 0)?;

    // 5. Baselines with the same recipe and epochs: each site alone, and all data pooled.
    let pooled_epochs = budget.pooled_finetune_epochs();
    let pooled_exams: usize = sites.iter().map(|s| s.train.len()).sum();
    let recipe = |epochs| baseline_recipe(Some(&pretrain), &finetune, epochs, 0);
    let mut rows = Vec::new();
    for (site, (name, bundle)) in sites.iter().zip(&configs) {
        println!("local-only baseline: {name}");
        let local_train =
            super::evaluate::prepare_site(&site.train, &site.name, &finetune.preprocess);
        let epochs = steps_matched_epochs(pooled_epochs, pooled_exams, local_train.len());
        let auc = train_and_score(local_train, &test, &recipe(epochs), &device)?;
        let sent = PayloadLog::read(&bundle.join("cache"))?;
        rows.push(SiteRow {
            site: name.clone(),
            train_exams: site.train.len(),
            test_exams: site.valid.len(),
            local_auc: auc,
            bytes_sent: sent.iter().map(|p| p.bytes).sum(),
            payloads_sent: sent.len(),
        });
    }
    println!("centralised baseline (all sites' exams pooled)");
    let pooled: Vec<PreparedExam> = sites
        .iter()
        .flat_map(|s: &SiteData| {
            super::evaluate::prepare_site(&s.train, &s.name, &finetune.preprocess)
        })
        .collect();
    let centralised_auc = train_and_score(pooled, &test, &recipe(pooled_epochs), &device)?;

    let wall = started.elapsed().as_secs_f64();
    print_table(
        &rows,
        federated.auc,
        federated.auc_ci,
        centralised_auc,
        test.len(),
        federated_seconds,
        wall,
    );
    let best_site = rows
        .iter()
        .max_by(|a, b| a.local_auc.total_cmp(&b.local_auc))
        .map(|r| (r.site.clone(), r.local_auc));
    let verdict = verdict_line(federated.auc, best_site.as_ref(), centralised_auc);
    println!("{verdict}");
    println!();
    let report = serde_json::json!({
        "verdict": verdict,
        "federated_minus_best_site": best_site.as_ref().map(|(_, auc)| federated.auc - auc),
        "federated_minus_centralised": federated.auc - centralised_auc,
        "federated_auc": federated.auc,
        "federated_auc_ci": [federated.auc_ci.0, federated.auc_ci.1],
        "federated_accuracy": federated.accuracy,
        "federated_sensitivity": federated.sensitivity,
        "federated_specificity": federated.specificity,
        "threshold": meta.threshold,
        "centralised_auc": centralised_auc,
        "sites": rows,
        "test_exams": test.len(),
        "pretrain_job": pre_id,
        "finetune_job": fine_id,
        "federated_seconds": federated_seconds,
        "wall_seconds": wall,
        "quick": args.quick,
        "workdir": work.display().to_string(),
        "model_dir": model_dir.display().to_string(),
    });
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("report: {}", path.display());
    }
    println!("model:  {}", model_dir.display());
    Ok(())
}

/// One line that says whether joining the consortium paid off on this run.
fn verdict_line(federated: f64, best_site: Option<&(String, f64)>, centralised: f64) -> String {
    let gap = |other: f64| {
        let d = federated - other;
        format!(
            "{:.3} {}",
            d.abs(),
            if d >= 0.0 { "above" } else { "below" }
        )
    };
    let site = best_site.map_or(String::new(), |(name, auc)| {
        format!("{} the best site alone ({name}, {auc:.3}) and ", gap(*auc))
    });
    format!(
        "verdict: federated AUC {federated:.3} is {site}{} pooling all data ({centralised:.3}); one run, see `fedslice study --federated` for the spread over seeds",
        gap(centralised)
    )
}

fn train_and_score(
    train_exams: Vec<PreparedExam>,
    test: &[PreparedExam],
    config: &ExperimentConfig,
    device: &burn::tensor::Device,
) -> anyhow::Result<f64> {
    device.seed(config.seed);
    let (_, report) =
        experiment::run(train_exams, test.to_vec(), config, device, &mut Bars::new())?;
    Ok(report.auc)
}

fn print_table(
    rows: &[SiteRow],
    federated_auc: f64,
    ci: (f64, f64),
    centralised_auc: f64,
    test_exams: usize,
    federated_seconds: f64,
    wall: f64,
) {
    println!();
    println!("  AUC on the {test_exams} held-out exams of all sites");
    println!(
        "  {:<12} {:>12} {:>14} {:>10}",
        "site", "train exams", "local-only AUC", "bytes sent"
    );
    for r in rows {
        println!(
            "  {:<12} {:>12} {:>14.3} {:>10}",
            r.site, r.train_exams, r.local_auc, r.bytes_sent
        );
    }
    println!(
        "  federated AUC     {federated_auc:.3}  (95% CI {:.3}–{:.3})",
        ci.0, ci.1
    );
    println!("  centralised AUC   {centralised_auc:.3}");
    println!("  federated wall time {federated_seconds:.0} s; demo total {wall:.0} s");
    println!();
}
