//! `aggregator export`: a finished finetune job's global classifier as
//! `model.safetensors` + `config.json` (the format `fedslice train` writes),
//! plus `provenance.json`. The full radiology bundle is the export issue's.

use std::path::Path;

use anyhow::{Context, bail};
use fedslice::federated::from_tensor_map;
use fedslice::model::{ClassifierMeta, ExamClassifier, save_classifier};
use fedslice::protocol::Phase;
use fedslice::wire::{self, DecodeLimits};

use crate::blobs::BlobStore;
use crate::engine::StatePaths;
use crate::state::State;

/// The decision threshold: the mean of the sites' Youden thresholds on their
/// validation exams in the last round, weighted by validation exams. Sites
/// report only these aggregates, never per-exam scores.
pub fn consensus_threshold(state: &State, job: &str, round: u32) -> anyhow::Result<Option<f64>> {
    let (mut sum, mut weight) = (0.0, 0.0);
    for update in state.updates(job, round)? {
        let t = update.metrics.get("val_threshold").and_then(|v| v.as_f64());
        let n = update
            .metrics
            .get("val_exams")
            .and_then(|v| v.as_f64())
            .unwrap_or(1.0);
        if let Some(t) = t {
            sum += t * n;
            weight += n;
        }
    }
    Ok((weight > 0.0).then(|| sum / weight))
}

pub fn export(dir: &Path, job_id: &str, out: &Path) -> anyhow::Result<()> {
    let state = crate::cli::open_state(dir)?;
    let job = state
        .job(job_id)?
        .with_context(|| format!("no job `{job_id}` (see `aggregator status`)"))?;
    if job.spec.phase != Phase::Finetune {
        bail!(
            "{job_id} is a {} job; only a finetune job yields a classifier",
            job.spec.phase
        );
    }
    if job.status != "finished" {
        bail!("{job_id} is {}; export it once it has finished", job.status);
    }
    let digest = job
        .model_digest
        .clone()
        .context("finished job has no model")?;
    let version = job.model_version.unwrap_or(0);
    let blobs = BlobStore::open(&StatePaths::new(dir).blobs())?;
    let bytes = blobs.get(&digest)?;
    let (_, tensors) = wire::decode(&bytes, &DecodeLimits::DEFAULT)?;
    let device = fedslice::device::open(fedslice::device::BackendKind::Flex)?;
    let model = from_tensor_map(ExamClassifier::new(&job.spec.model, &device), &tensors)?;
    let threshold = consensus_threshold(&state, job_id, version)?;
    if threshold.is_none() {
        tracing::warn!("no site reported a validation threshold; using 0.5");
    }
    let meta = ClassifierMeta::new(
        job.spec.model.clone(),
        job.spec.preprocess.clone(),
        threshold.unwrap_or(0.5),
    );
    save_classifier(out, &model, &meta).with_context(|| format!("writing {}", out.display()))?;
    let rounds = state.rounds(job_id)?;
    let mut per_round = Vec::new();
    for r in &rounds {
        let updates = state.updates(job_id, r.round)?;
        per_round.push(serde_json::json!({
            "round": r.round,
            "sites": updates.iter().map(|u| serde_json::json!({"site": u.site, "samples": u.samples, "metrics": u.metrics})).collect::<Vec<_>>(),
        }));
    }
    let provenance = serde_json::json!({
        "job": job_id,
        "phase": "finetune",
        "init_from": job.spec.init_from,
        "model_version": version,
        "model_digest": digest,
        "threshold": meta.threshold,
        "threshold_source": if threshold.is_some() { "validation-exam-weighted mean of the sites' Youden thresholds, last round" } else { "default 0.5 (no site reported one)" },
        "rounds": per_round,
        "fedslice_version": env!("CARGO_PKG_VERSION"),
    });
    let path = out.join("provenance.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&provenance)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("exported {job_id} (model v{version}) to {}", out.display());
    Ok(())
}
