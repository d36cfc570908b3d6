//! Site-level differential privacy end to end on loopback (issue 17): a DP
//! job whose budget covers 2 of its 3 rounds stops after round 2 and the
//! audit says why; sites clip their updates; the published model carries
//! noise of the configured size; a fine-tuning job's ε composes with the
//! pretraining job's in the ledger, and the exported bundle states it. And a
//! site whose policy requires DP refuses a job without it.

mod common;

use std::time::Duration;

use common::{Consortium, phantom};
use fedslice::privacy::accountant::{self, Release};
use fedslice::privacy::noise::GridNoise;
use fedslice::wire::{DecodeLimits, TensorMap, decode};

const Z: f64 = 1.0;
const C: f64 = 0.01;
const DELTA: f64 = 1e-5;

fn eps(rounds: u64) -> f64 {
    accountant::epsilon(
        &[Release {
            z: Z,
            q: 1.0,
            count: rounds,
        }],
        DELTA,
    )
    .expect("accountant")
    .epsilon
}

fn blob(consortium: &Consortium, digest: &str) -> TensorMap {
    let blobs = aggregator::blobs::BlobStore::open(&consortium.state.join("blobs")).expect("blobs");
    decode(&blobs.get(digest).expect("blob"), &DecodeLimits::DEFAULT)
        .expect("decodes")
        .1
}

/// `GET /metrics` from the operator listener (plain HTTP on loopback).
fn metrics(base: &str) -> String {
    use std::io::{Read, Write};
    let authority = base
        .strip_prefix("http://")
        .expect("http URL")
        .replace("0.0.0.0", "127.0.0.1");
    let mut stream = std::net::TcpStream::connect(&authority).expect("operator listener");
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    response
        .split_once("\r\n\r\n")
        .expect("HTTP response")
        .1
        .to_string()
}

fn audit_events<'a>(audit: &'a [serde_json::Value], event: &str) -> Vec<&'a serde_json::Value> {
    audit.iter().filter(|e| e["event"] == event).collect()
}

#[test]
fn a_dp_job_stops_at_its_budget_and_reports_epsilon() {
    let mut consortium = Consortium::init();
    let data = consortium.dir.path().join("data");
    phantom(&data, 2, 6, 17, 48);
    let bundles: Vec<_> = ["site-00", "site-01"]
        .iter()
        .map(|s| consortium.add_site(s, &data.join(s)))
        .collect();
    // Between ε(2 rounds) and ε(3 rounds): round 3 must be refused.
    let budget = (eps(2) + eps(3)) / 2.0;
    let dp = |budget: f64| {
        vec![
            "--dp-noise-multiplier".to_string(),
            Z.to_string(),
            "--dp-clip".into(),
            C.to_string(),
            "--dp-epsilon".into(),
            budget.to_string(),
            "--dp-sites".into(),
            "2".into(),
        ]
    };
    let job_args = |phase: &str, rounds: &str, extra: Vec<String>| {
        let mut args: Vec<String> = [
            "job",
            "create",
            "--phase",
            phase,
            "--preset",
            "test",
            "--rounds",
            rounds,
            "--min-sites",
            "2",
            "--local-epochs",
            "1",
            "--round-timeout",
            "10m",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra);
        args
    };
    let run = |args: &[String]| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        consortium.aggregator_output(&refs)
    };

    // Robust aggregation has no sensitivity bound: refused, with the reason.
    let mut median = job_args("pretrain", "3", dp(budget));
    median.extend(["--aggregation".into(), "median".into()]);
    let refused = run(&median);
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("must use --aggregation fedavg"), "{why}");

    let created = run(&job_args("pretrain", "3", dp(budget)));
    assert!(created.status.success(), "{created:?}");
    let pretrain = String::from_utf8_lossy(&created.stdout).trim().to_string();
    let plan = String::from_utf8_lossy(&created.stderr);
    assert!(plan.contains("only 2 of 3 rounds fit the budget"), "{plan}");
    assert!(plan.contains(&format!("{:.4}", eps(3))), "{plan}");
    assert!(plan.contains("utility warning"), "{plan}");
    let z_all = accountant::calibrate_z(&[], 3, 1.0, budget, DELTA)
        .expect("calibrates")
        .expect("a z fits");
    assert!(z_all > Z);
    assert!(
        plan.contains(&format!("z >= {z_all:.4} would fit all 3 rounds")),
        "{plan}"
    );
    let mut finetune_args = job_args("finetune", "1", dp(1000.0));
    finetune_args.extend(["--init-from".into(), pretrain.clone()]);
    let finetune = run(&finetune_args);
    assert!(finetune.status.success(), "{finetune:?}");
    let finetune = String::from_utf8_lossy(&finetune.stdout).trim().to_string();

    consortium.serve();
    let agents: Vec<_> = bundles.iter().map(|b| consortium.spawn_agent(b)).collect();
    consortium.expect_agents_succeed(agents, &bundles, Duration::from_secs(900));

    let status = consortium.status();
    let job = &status["jobs"][0];
    assert_eq!(job["job"]["id"], pretrain.as_str());
    assert_eq!(job["job"]["status"], "finished", "{job}");
    let rounds = job["rounds"].as_array().expect("rounds");
    assert_eq!(rounds.len(), 2, "round 3 must not run: {job}");
    assert_eq!(job["job"]["model_version"], 2);
    let refusals = consortium.audit();
    let refusals = audit_events(&refusals, "dp_budget_refused");
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    let detail = refusals[0]["detail"].as_str().expect("detail");
    assert!(
        detail.contains(&format!("{pretrain} round 3 not run")),
        "{detail}"
    );

    // Sites clipped their updates to C; the published model is base + the
    // clipped mean over m = 2 + noise of sd ≈ zC/m (χ², 6 sd).
    for round in rounds {
        let base = blob(
            &consortium,
            round["round"]["base_digest"].as_str().expect("base"),
        );
        let published = blob(
            &consortium,
            round["round"]["result_digest"].as_str().expect("result"),
        );
        let mut sum: Vec<f64> = vec![0.0; base.num_values()];
        let updates = round["updates"].as_array().expect("updates");
        assert_eq!(updates.len(), 2);
        for u in updates {
            let delta = blob(&consortium, u["digest"].as_str().expect("digest"));
            assert!(
                delta.l2_norm() <= C * (1.0 + 1e-6),
                "the site did not clip: norm {}",
                delta.l2_norm()
            );
            let flat = delta.iter().flat_map(|(_, t)| t.data().iter());
            for (s, &x) in sum.iter_mut().zip(flat) {
                *s += f64::from(x);
            }
        }
        let residual: Vec<f64> = published
            .iter()
            .flat_map(|(_, t)| t.data().iter())
            .zip(base.iter().flat_map(|(_, t)| t.data().iter()))
            .zip(&sum)
            .map(|((&p, &b), s)| f64::from(p) - f64::from(b) - s / 2.0)
            .collect();
        let n = residual.len() as f64;
        let sd = GridNoise::new(Z, C / 2.0, residual.len())
            .expect("noise")
            .sd;
        let var = residual.iter().map(|r| r * r).sum::<f64>() / n;
        let stat = n * var / (sd * sd);
        assert!(
            (stat - n).abs() < 6.0 * (2.0 * n).sqrt(),
            "round {}: residual sd {} vs configured {sd}",
            round["round"]["round"],
            var.sqrt()
        );
    }

    // The ledger composes both jobs: after the finetune round, 3 releases.
    let ft = &status["jobs"][1];
    assert_eq!(ft["job"]["id"], finetune.as_str());
    assert_eq!(ft["job"]["status"], "finished", "{ft}");
    let privacy = &ft["privacy"];
    let spent = privacy["epsilon"].as_f64().expect("epsilon");
    assert!((spent - eps(3)).abs() <= 1e-9 * eps(3), "{privacy}");
    assert_eq!(privacy["ledger_releases"], 3);
    assert_eq!(privacy["rounds"], 1);
    assert_eq!(privacy["noise_multiplier"], Z);
    assert_eq!(privacy["clip_norm"], C);
    assert_eq!(privacy["delta"], DELTA);
    let pre = status["jobs"][0]["privacy"]["epsilon"]
        .as_f64()
        .expect("epsilon");
    // The status reports the consortium's ε as of now for every DP job.
    assert_eq!(pre, spent);
    // The operator's /metrics carries the same number.
    let metrics = metrics(&consortium.operator_url());
    let line = format!("fedslice_dp_epsilon{{job=\"{finetune}\"}} ");
    let scraped: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(&line))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {line} in {metrics}"));
    assert!(
        (scraped - spent).abs() <= 1e-9 * spent,
        "{scraped} vs {spent}"
    );
    assert!(
        metrics.contains(&format!(
            "fedslice_dp_noised_rounds{{job=\"{pretrain}\"}} 2"
        )),
        "{metrics}"
    );
    let text = consortium.aggregator(&["status"]);
    assert!(
        text.contains(&format!("DP: consortium epsilon {spent:.4}")),
        "{text}"
    );

    let out = consortium.dir.path().join("bundle");
    consortium.aggregator(&[
        "export",
        "--job",
        &finetune,
        "--out",
        &out.display().to_string(),
    ]);
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).expect("config.json"))
            .expect("config JSON");
    assert_eq!(config["privacy"]["epsilon"].as_f64(), Some(spent));
    assert_eq!(config["privacy"]["delta"].as_f64(), Some(DELTA));
    assert!(
        config["privacy"]["accountant"]
            .as_str()
            .is_some_and(|a| a.contains("gaussian")),
        "{config}"
    );
    let card = std::fs::read_to_string(out.join("MODEL_CARD.md")).expect("card");
    assert!(card.contains("## Privacy"), "{card}");
    assert!(card.contains(&format!("{spent:.4}")), "{card}");
    assert!(
        card.contains("one site's whole contribution in one round"),
        "{card}"
    );
    assert!(card.contains("released without noise"), "{card}");
}

#[test]
fn a_site_that_requires_dp_refuses_a_job_without_it() {
    let mut consortium = Consortium::init();
    let data = consortium.dir.path().join("data");
    phantom(&data, 2, 6, 18, 48);
    let open = consortium.add_site("site-00", &data.join("site-00"));
    let strict = consortium.add_site("site-01", &data.join("site-01"));
    let toml = strict.join("site.toml");
    let mut text = std::fs::read_to_string(&toml).expect("site.toml");
    text.push_str("\n[privacy]\nrequire_dp = true\nmax_epsilon = 8.0\n");
    std::fs::write(&toml, text).expect("site.toml");
    // Closes at the deadline with the one site that trains.
    let job = consortium.pretrain_job(1, 1, "5s");
    consortium.serve();
    let bundles = [open, strict];
    let agents: Vec<_> = bundles.iter().map(|b| consortium.spawn_agent(b)).collect();
    consortium.expect_agents_succeed(agents, &bundles, Duration::from_secs(600));

    let log = std::fs::read_to_string(bundles[1].join("agent.log")).expect("agent log");
    assert!(log.contains("refusing the job"), "{log}");
    assert!(log.contains("requires differential privacy"), "{log}");
    let audit = consortium.audit();
    let refusals = audit_events(&audit, "site_refused_job");
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert_eq!(refusals[0]["site"], "site-01");
    let detail = refusals[0]["detail"].as_str().expect("detail");
    assert!(detail.contains(&format!("{job} round 1")), "{detail}");
    assert!(detail.contains("requires differential privacy"), "{detail}");
    let status = consortium.status();
    let updates = status["jobs"][0]["rounds"][0]["updates"]
        .as_array()
        .expect("updates");
    let sites: Vec<&str> = updates.iter().filter_map(|u| u["site"].as_str()).collect();
    assert_eq!(sites, ["site-00"], "the refusing site sent nothing");
}
