//! The aggregator's acceptance rules for uploaded updates, driven directly on
//! the engine (no network): every broken or hostile update is refused with a
//! precise reason and an audit entry, and none of them changes the global
//! model, which ends up exactly `base + Δ` of the one honest update.

use std::collections::BTreeMap;
use std::path::Path;

use aggregator::engine::{Engine, Rejection};
use clap::Parser;
use fedslice::wire::{self, Dtype, PayloadHeader, PayloadKind, PayloadMeta, TensorMap};
use sha2::Digest;

fn cli(dir: &Path, args: &[&str]) {
    let mut argv = vec!["aggregator", "--dir", dir.to_str().expect("utf-8 path")];
    argv.extend_from_slice(args);
    aggregator::cli::run(aggregator::cli::Cli::try_parse_from(argv).expect("arguments"))
        .expect("command");
}

fn update(job: &str, round: u32, base: &str, delta: &TensorMap) -> Vec<u8> {
    reporting(job, round, base, delta, BTreeMap::new())
}

/// An update whose header carries `metrics`, the site's report.
fn reporting(
    job: &str,
    round: u32,
    base: &str,
    delta: &TensorMap,
    metrics: BTreeMap<String, f64>,
) -> Vec<u8> {
    wire::encode(
        PayloadMeta {
            kind: PayloadKind::Update,
            job: job.into(),
            round,
            base_digest: Some(base.into()),
            samples: 10,
            metrics,
        },
        delta,
        Dtype::F32,
        3,
    )
    .expect("encode")
}

/// A payload built by hand, bypassing the encoder's own checks (as a hostile site would).
fn raw_update(job: &str, round: u32, base: &str, delta: &TensorMap) -> Vec<u8> {
    let body = zstd::encode_all(
        &delta.to_safetensors(Dtype::F32).expect("safetensors")[..],
        3,
    )
    .expect("zstd");
    let header = PayloadHeader {
        protocol: wire::PROTOCOL_VERSION,
        kind: PayloadKind::Update,
        job: job.into(),
        round,
        base_digest: Some(base.into()),
        samples: 10,
        dtype: Dtype::F32,
        metrics: BTreeMap::new(),
        body_sha256: hex::encode(sha2::Sha256::digest(&body)),
        body_len: body.len() as u64,
        num_tensors: delta.len(),
    };
    let json = serde_json::to_vec(&header).expect("header");
    let mut out = b"FSLW".to_vec();
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&body);
    out
}

fn filled(schema_of: &TensorMap, value: f32) -> TensorMap {
    let mut map = TensorMap::new();
    for (name, t) in schema_of.iter() {
        map.insert(name, t.shape().to_vec(), vec![value; t.data().len()])
            .expect("insert");
    }
    map
}

/// A consortium of one site, `site-a`, with a two-round pretraining job
/// running: the engine, the job's id, round 1's base digest and global model.
fn one_site_running(dir: &Path) -> (Engine, String, String, TensorMap) {
    let state = dir.join("state");
    cli(&state, &["init", "--url", "https://127.0.0.1:9"]);
    cli(
        &state,
        &[
            "site",
            "add",
            "site-a",
            "--out",
            dir.join("a").to_str().expect("path"),
        ],
    );
    cli(
        &state,
        &[
            "job",
            "create",
            "--phase",
            "pretrain",
            "--rounds",
            "2",
            "--min-sites",
            "1",
        ],
    );
    let engine = Engine::open(&state, 64 << 20).expect("engine");
    assert!(engine.tick().expect("start job"), "the pending job starts");
    let job = engine
        .state()
        .running_job()
        .expect("db")
        .expect("running job");
    let round = engine
        .state()
        .open_round(&job.id)
        .expect("db")
        .expect("round 1");
    let base = round.base_digest.clone();
    let (_, global) = engine.load_model(&base).expect("global model");
    (engine, job.id, base, global)
}

#[test]
fn hostile_updates_are_refused_and_leave_the_model_alone() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (engine, job_id, base, global) = one_site_running(dir.path());
    let job = engine
        .state()
        .job(&job_id)
        .expect("db")
        .expect("running job");

    let honest = filled(&global, 1e-3);
    let accept = |bytes: &[u8]| engine.accept_update("site-a", bytes);
    let refused = |bytes: &[u8], expect: &str| match accept(bytes) {
        Err(rejection) => {
            let message = rejection.to_string();
            assert!(
                message.contains(expect),
                "expected `{expect}` in: {message}"
            );
            engine.record_rejection("site-a", &rejection);
            rejection
        }
        Ok(receipt) => panic!("accepted a hostile update: {receipt:?}"),
    };

    // Wrong job, wrong round, wrong base model.
    refused(&update("job-9", 1, &base, &honest), "does not exist");
    refused(&update(&job.id, 2, &base, &honest), "round 1 is open");
    refused(
        &update(&job.id, 1, &"0".repeat(64), &honest),
        "was computed from model",
    );
    // Broken content: a flipped byte, a wrong protocol version, NaN, Inf, wrong names or shapes, absurd norm.
    let mut flipped = update(&job.id, 1, &base, &honest);
    let last = flipped.len() - 1;
    flipped[last] ^= 0xff;
    refused(&flipped, "digest");
    let mut versioned = update(&job.id, 1, &base, &honest);
    let text = String::from_utf8_lossy(&versioned).replace("\"protocol\":1", "\"protocol\":7");
    versioned = text.into_bytes();
    refused(&versioned, "version 7");
    let mut nan = honest.clone();
    let first = nan.names().next().expect("a tensor").to_string();
    nan.get_mut(&first).expect("tensor").data_mut()[0] = f32::NAN;
    refused(&raw_update(&job.id, 1, &base, &nan), "non-finite");
    let mut inf = honest.clone();
    inf.get_mut(&first).expect("tensor").data_mut()[0] = f32::INFINITY;
    refused(&raw_update(&job.id, 1, &base, &inf), "non-finite");
    let mut renamed = honest.clone();
    let tensor = renamed.remove(&first).expect("tensor");
    let (shape, data) = tensor.into_parts();
    renamed
        .insert("encoder.evil", shape.clone(), data.clone())
        .expect("insert");
    refused(
        &raw_update(&job.id, 1, &base, &renamed),
        &format!("`{first}` is missing"),
    );
    let mut reshaped = honest.clone();
    reshaped.remove(&first);
    reshaped
        .insert(first.clone(), vec![1, data.len()], data)
        .expect("insert");
    let rejection = refused(&raw_update(&job.id, 1, &base, &reshaped), &first);
    assert!(matches!(rejection, Rejection::Unprocessable(_)));
    refused(
        &update(&job.id, 1, &base, &filled(&global, 1e3)),
        "exceeds the job's bound",
    );

    // The honest update counts; a retry is a duplicate; a different one is refused.
    let honest_bytes = update(&job.id, 1, &base, &honest);
    let receipt = accept(&honest_bytes).expect("honest update");
    assert!(!receipt.duplicate);
    assert!(accept(&honest_bytes).expect("retry").duplicate);
    refused(
        &update(&job.id, 1, &base, &filled(&global, 2e-3)),
        "already sent a different update",
    );

    // One active site reported: the round closes with base + Δ exactly.
    assert!(engine.tick().expect("close round"));
    let closed = engine
        .state()
        .round(&job.id, 1)
        .expect("db")
        .expect("round 1");
    assert_eq!(closed.status, "closed");
    let (_, next) = engine
        .load_model(closed.result_digest.as_deref().expect("result"))
        .expect("new model");
    let mut expected = global.clone();
    expected.add_scaled(&honest, 1.0).expect("add");
    for ((name, a), (_, b)) in next.iter().zip(expected.iter()) {
        assert_eq!(a.data(), b.data(), "{name} differs from base + Δ");
    }
    // A retry of the counted update after the round closed is a duplicate (its
    // acknowledgement may have been lost); any other update for it is stale.
    assert!(accept(&honest_bytes).expect("late retry").duplicate);
    refused(&update(&job.id, 1, &base, &filled(&global, 3e-3)), "stale");

    let audit = engine.state().audit_log(1000).expect("audit");
    let refusals = audit
        .iter()
        .filter(|a| a.event == "request_refused")
        .count();
    assert_eq!(refusals, 12, "every refusal is audited: {audit:#?}");
}

/// Security review M6: a site's metrics reach the exported decision threshold
/// and the model card, and only the site vouches for them. Out-of-range ones
/// are refused on receipt with the reason, audited, and never stored.
#[test]
fn updates_with_out_of_range_metrics_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (engine, job, base, global) = one_site_running(dir.path());
    let delta = filled(&global, 1e-3);
    let metrics = |pairs: &[(&str, f64)]| -> BTreeMap<String, f64> {
        pairs.iter().map(|&(k, v)| (k.to_owned(), v)).collect()
    };
    let refused = |pairs: &[(&str, f64)], expect: &str| match engine
        .accept_update("site-a", &reporting(&job, 1, &base, &delta, metrics(pairs)))
    {
        Err(rejection) => {
            assert!(
                matches!(rejection, Rejection::Unprocessable(_)),
                "{rejection:?}"
            );
            let message = rejection.to_string();
            assert!(
                message.contains(expect),
                "expected `{expect}` in: {message}"
            );
            engine.record_rejection("site-a", &rejection);
        }
        Ok(receipt) => panic!("accepted metrics {pairs:?}: {receipt:?}"),
    };

    // The review's site-c: AUC 7.5, an exam count that wrapped in the card,
    // negative positives; and a misspelt key that used to be ignored.
    let valid = [
        ("val_exams", 12.0),
        ("val_positives", 5.0),
        ("val_auc", 0.8125),
        ("val_threshold", 0.47),
        ("loss_first", 0.69),
        ("loss_last", 0.41),
        ("steps", 30.0),
    ];
    let with = |key: &str, value: f64| -> Vec<(&'static str, f64)> {
        valid
            .iter()
            .map(|&(k, v)| (k, if k == key { value } else { v }))
            .collect()
    };
    refused(
        &with("val_auc", 7.5),
        "metric `val_auc` is 7.5; it lies in [0, 1]",
    );
    refused(&with("val_exams", 1e300), "metric `val_exams` is 1e300");
    refused(
        &with("val_positives", -5.0),
        "metric `val_positives` is -5.0",
    );
    refused(&with("loss_last", -1.0), "metric `loss_last` is -1.0");
    refused(&[("val_treshold", 0.47)], "unknown metric `val_treshold`");
    assert!(
        engine.state().updates(&job, 1).expect("db").is_empty(),
        "no refused report is stored"
    );
    let audit = engine.state().audit_log(1000).expect("audit");
    let reasons: Vec<&str> = audit
        .iter()
        .filter(|a| a.event == "request_refused")
        .map(|a| a.detail.as_str())
        .collect();
    assert_eq!(reasons.len(), 5, "every refusal is audited: {audit:#?}");
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("site report refused: metric `val_auc` is 7.5")),
        "the audit says why: {reasons:#?}"
    );

    // A valid report is accepted and stored as the same JSON object agents
    // have always sent.
    engine
        .accept_update(
            "site-a",
            &reporting(&job, 1, &base, &delta, metrics(&valid)),
        )
        .expect("a valid report");
    let stored = engine.state().updates(&job, 1).expect("db");
    assert_eq!(
        stored[0].metrics.to_string(),
        r#"{"loss_first":0.69,"loss_last":0.41,"steps":30.0,"val_auc":0.8125,"val_exams":12.0,"val_positives":5.0,"val_threshold":0.47}"#
    );
}

/// A finetune job's evaluation round takes scores and nothing else: a delta
/// with any weight in it, or a report without validation, is refused; the
/// round then closes without a new model version, and the job finishes with
/// the model the site scored.
#[test]
fn the_evaluation_round_accepts_scores_only() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    cli(&state, &["init", "--url", "https://127.0.0.1:9"]);
    cli(
        &state,
        &[
            "site",
            "add",
            "site-a",
            "--out",
            dir.path().join("a").to_str().expect("path"),
        ],
    );
    cli(
        &state,
        &[
            "job",
            "create",
            "--phase",
            "finetune",
            "--rounds",
            "1",
            "--min-sites",
            "1",
            "--from-scratch",
        ],
    );
    let engine = Engine::open(&state, 64 << 20).expect("engine");
    assert!(engine.tick().expect("start job"));
    let job = engine
        .state()
        .running_job()
        .expect("db")
        .expect("running job");
    let round = engine
        .state()
        .open_round(&job.id)
        .expect("db")
        .expect("round 1");
    let (_, global) = engine.load_model(&round.base_digest).expect("global model");
    let scores: BTreeMap<String, f64> = [
        ("val_exams", 12.0),
        ("val_positives", 5.0),
        ("val_auc", 0.75),
        ("val_threshold", 0.4),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();

    engine
        .accept_update(
            "site-a",
            &reporting(
                &job.id,
                1,
                &round.base_digest,
                &filled(&global, 1e-3),
                scores.clone(),
            ),
        )
        .expect("training update");
    assert!(engine.tick().expect("close round 1"));
    let evaluation = engine
        .state()
        .open_round(&job.id)
        .expect("db")
        .expect("round 2");
    assert_eq!(
        evaluation.round, 2,
        "the evaluation round follows the last training round"
    );
    let final_model = evaluation.base_digest.clone();

    let refusal = |bytes: Vec<u8>| {
        engine
            .accept_update("site-a", &bytes)
            .expect_err("refused")
            .to_string()
    };
    let trained = refusal(reporting(
        &job.id,
        2,
        &final_model,
        &filled(&global, 1e-3),
        scores.clone(),
    ));
    assert!(trained.contains("evaluation round"), "{trained}");
    let silent = refusal(update(&job.id, 2, &final_model, &filled(&global, 0.0)));
    assert!(silent.contains("no validation"), "{silent}");

    engine
        .accept_update(
            "site-a",
            &reporting(&job.id, 2, &final_model, &filled(&global, 0.0), scores),
        )
        .expect("the site's scores");
    assert!(engine.tick().expect("close the evaluation round"));
    let finished = engine.state().job(&job.id).expect("db").expect("job");
    assert_eq!(finished.status, "finished");
    assert_eq!(finished.model_version, Some(1), "no new model version");
    assert_eq!(finished.model_digest.as_deref(), Some(final_model.as_str()));
}

#[test]
fn an_overflowing_sample_count_is_refused_before_anything_is_stored() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (engine, job_id, base, global) = one_site_running(dir.path());
    let blobs = || {
        std::fs::read_dir(dir.path().join("state/blobs"))
            .expect("blobs")
            .flatten()
            .map(|e| std::fs::read_dir(e.path()).map(|d| d.count()).unwrap_or(1))
            .sum::<usize>()
    };
    let before = blobs();
    let overflowing = wire::encode(
        PayloadMeta {
            kind: PayloadKind::Update,
            job: job_id.clone(),
            round: 1,
            base_digest: Some(base.clone()),
            samples: u64::MAX,
            metrics: BTreeMap::new(),
        },
        &filled(&global, 1e-3),
        Dtype::F32,
        3,
    )
    .expect("encode");
    match engine.accept_update("site-a", &overflowing) {
        Err(Rejection::Unprocessable(message)) => {
            assert!(message.contains("training samples"), "{message}")
        }
        other => panic!("expected a 422 refusal, got {other:?}"),
    }
    assert_eq!(blobs(), before, "no orphan blob");

    // A 60 000-character job name with a forged line: the audit row stays
    // short, marks the cut and escapes the control characters.
    let long_job = format!("job\u{1b}[31m\n2026 FAKE{}", "J".repeat(60_000));
    let rejection = engine
        .accept_update(
            "site-a",
            &update(&long_job, 1, &base, &filled(&global, 1e-3)),
        )
        .expect_err("unknown job");
    engine.record_rejection("site-a", &rejection);
    let audit = engine.state().audit_log(10).expect("audit");
    let row = audit.last().expect("a row");
    assert!(row.detail.len() < 1200, "{} bytes", row.detail.len());
    assert!(row.detail.contains("[truncated: "), "{}", row.detail);
    assert!(!row.detail.chars().any(char::is_control), "{}", row.detail);
}
