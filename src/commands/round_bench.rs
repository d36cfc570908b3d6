//! `fedslice bench --round-overhead-sites N`: the cost of a federated round
//! apart from local training. An aggregator process and N in-process site
//! clients (each with its own certificate, over mutual TLS on loopback) run
//! rounds in which every site fetches the global model and at once uploads
//! an update of the model's size; the time from a round opening to the next one opening is
//! the protocol's overhead: polling, model download, encoding, upload,
//! validation, durable storage and aggregation.
//!
//! It doubles as the load test: with many sites (100) every request's latency
//! is recorded (p50 / p99 / max per kind), and at the end the aggregator's own
//! record must show every round closed with every site's update counted.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use fedslice::wire::{self, DecodeLimits};
use site_agent::client::Client;
use site_agent::config::SiteConfig;

#[derive(Debug, serde::Serialize)]
pub struct RoundOverhead {
    pub sites: usize,
    pub preset: String,
    pub rounds: u32,
    pub update_bytes: usize,
    pub round_seconds: Vec<f64>,
    /// Per request kind (`poll` with work, `model`, `upload`): latency in ms.
    pub latency_ms: BTreeMap<String, Latency>,
    /// Updates the aggregator counted in each round (must equal `sites`).
    pub updates_counted: Vec<usize>,
}

#[derive(Debug, serde::Serialize)]
pub struct Latency {
    pub requests: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// Request latencies, by kind, in seconds.
#[derive(Default)]
struct Timings(Mutex<BTreeMap<&'static str, Vec<f64>>>);

impl Timings {
    fn record(&self, kind: &'static str, since: Instant) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(kind)
            .or_default()
            .push(since.elapsed().as_secs_f64());
    }

    fn summary(self) -> BTreeMap<String, Latency> {
        let map = self.0.into_inner().unwrap_or_else(|p| p.into_inner());
        map.into_iter()
            .map(|(kind, mut v)| {
                v.sort_by(f64::total_cmp);
                let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize] * 1e3;
                let latency = Latency {
                    requests: v.len(),
                    p50: at(0.5),
                    p99: at(0.99),
                    max: at(1.0),
                };
                (kind.to_string(), latency)
            })
            .collect()
    }
}

fn fedslice(args: &[&str]) -> anyhow::Result<String> {
    let exe = std::env::current_exe()?;
    let out = Command::new(exe)
        .args(args)
        .stderr(Stdio::null())
        .output()?;
    anyhow::ensure!(out.status.success(), "fedslice {} failed", args.join(" "));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn site_round(
    client: &Client,
    partial: &Path,
    round: u32,
    timings: &Timings,
) -> anyhow::Result<usize> {
    loop {
        let t = Instant::now();
        let poll = client.poll(Duration::from_secs(5), false).await?;
        // A poll without work waited on purpose (long-poll): not a latency.
        let Some(work) = poll.work else {
            continue;
        };
        if work.round < round {
            continue;
        }
        timings.record("poll", t);
        let _ = tokio::fs::remove_file(partial).await;
        let t = Instant::now();
        let model = client.model(&work.model_digest, partial).await?;
        timings.record("model", t);
        let (_, global) = wire::decode(&model, &DecodeLimits::DEFAULT)?;
        let update = global.pseudo_random_like(0x9E37_79B9_7F4A_7C15, 1e-3);
        let payload = work.encode_update(&update, 1, Default::default())?;
        let bytes = payload.len();
        let t = Instant::now();
        client.upload(payload).await?;
        timings.record("upload", t);
        return Ok(bytes);
    }
}

pub fn run(sites: usize, preset: &str, rounds: u32, work: &Path) -> anyhow::Result<RoundOverhead> {
    std::fs::create_dir_all(work)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let url = format!("https://127.0.0.1:{port}");
    let state = work.join("state");
    let state_s = state.display().to_string();
    fedslice(&["aggregator", "--dir", &state_s, "init", "--url", &url])?;
    let mut clients = Vec::new();
    for i in 0..sites {
        let name = format!("site-{i:02}");
        let bundle = work.join(&name);
        fedslice(&[
            "aggregator",
            "--dir",
            &state_s,
            "site",
            "add",
            &name,
            "--out",
            &bundle.display().to_string(),
        ])?;
        clients.push(SiteConfig {
            site: Some(name.clone()),
            aggregator_url: url.clone(),
            ca_cert: bundle.join("ca.pem"),
            cert: bundle.join("site.pem"),
            key: bundle.join("site.key"),
            data: bundle.clone(),
            device: "flex".into(),
            cache_dir: bundle.join("cache"),
            plane: Default::default(),
            privacy: Default::default(),
        });
    }
    fedslice(&[
        "aggregator",
        "--dir",
        &state_s,
        "job",
        "create",
        "--phase",
        "pretrain",
        "--preset",
        preset,
        "--rounds",
        &rounds.to_string(),
        "--min-sites",
        &sites.to_string(),
    ])?;
    let mut server = Command::new(std::env::current_exe()?)
        .args([
            "aggregator",
            "--dir",
            &state_s,
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stderr(Stdio::null())
        .spawn()
        .context("starting the aggregator")?;
    let runtime = tokio::runtime::Runtime::new()?;
    let timings = Timings::default();
    let result = runtime.block_on(async {
        let partials: Vec<_> = clients
            .iter()
            .map(|c| c.data.join("model.download"))
            .collect();
        let clients = clients
            .iter()
            .map(Client::new)
            .collect::<anyhow::Result<Vec<_>>>()?;
        // Wait until the service answers.
        let started = Instant::now();
        while clients[0]
            .poll(Duration::from_secs(0), false)
            .await
            .is_err()
        {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(30),
                "aggregator did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut round_seconds = Vec::new();
        let mut update_bytes = 0;
        for round in 1..=rounds {
            let t = Instant::now();
            let sizes = futures_util::future::try_join_all(
                clients
                    .iter()
                    .zip(&partials)
                    .map(|(c, p)| site_round(c, p, round, &timings)),
            )
            .await?;
            update_bytes = sizes.first().copied().unwrap_or(0);
            // The round is over once the next one is open (or the job has
            // finished: `until_idle` has that answered at once, not after 5 s).
            loop {
                let poll = clients[0].poll(Duration::from_secs(5), true).await?;
                if poll.open_jobs == 0 || poll.work.as_ref().is_some_and(|w| w.round > round) {
                    break;
                }
            }
            round_seconds.push(t.elapsed().as_secs_f64());
        }
        Ok((update_bytes, round_seconds))
    });
    let _ = server.kill();
    let _ = server.wait();
    let (update_bytes, round_seconds) = result?;
    let status: serde_json::Value = serde_json::from_str(&fedslice(&[
        "aggregator",
        "--dir",
        &state_s,
        "status",
        "--json",
    ])?)?;
    let updates_counted: Vec<usize> = status["jobs"][0]["rounds"]
        .as_array()
        .map(|rounds| {
            rounds
                .iter()
                .map(|r| r["updates"].as_array().map_or(0, Vec::len))
                .collect()
        })
        .unwrap_or_default();
    anyhow::ensure!(
        updates_counted.len() == rounds as usize && updates_counted.iter().all(|&n| n == sites),
        "the aggregator counted {updates_counted:?} updates per round, expected {sites} in each of {rounds}"
    );
    Ok(RoundOverhead {
        sites,
        preset: preset.to_string(),
        rounds,
        update_bytes,
        round_seconds,
        latency_ms: timings.summary(),
        updates_counted,
    })
}
