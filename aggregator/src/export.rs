//! `aggregator export`: a finished finetune job's global classifier as the
//! radiology bundle (see `fedslice::export`), with the job's provenance and
//! the sites' reported validation numbers in its model card.

use std::path::Path;

use anyhow::{Context, bail};
use fedslice::export::{BundleConfig, Origin, Provenance, ValidationRow, unix_now, write_bundle};
use fedslice::federated::from_tensor_map;
use fedslice::model::ExamClassifier;
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

/// The sites' validation numbers from the latest round in which they
/// reported them, and that round's number. Sites send aggregates only.
fn site_validation(
    state: &State,
    job: &str,
    rounds: &[u32],
) -> anyhow::Result<(Vec<ValidationRow>, Option<u32>)> {
    for &round in rounds.iter().rev() {
        let updates = state.updates(job, round)?;
        let mut rows = Vec::new();
        for u in &updates {
            let metric = |k: &str| u.metrics.get(k).and_then(|v| v.as_f64());
            let exams = metric("val_exams").unwrap_or(0.0) as usize;
            match (metric("val_auc"), metric("val_positives")) {
                (Some(auc), Some(pos)) => rows.push(ValidationRow::from_site_auc(
                    &u.site,
                    auc,
                    pos as usize,
                    exams,
                )),
                (Some(auc), None) => {
                    let mut row = ValidationRow::counts_only(&u.site, exams, None, "");
                    row.auc = Some(auc);
                    row.method = "site's validation exams; the site did not report its class counts, so no CI".into();
                    rows.push(row);
                }
                _ => rows.push(ValidationRow::counts_only(
                    &u.site,
                    exams,
                    metric("val_positives").map(|p| p as usize),
                    "the site's validation exams do not hold both classes",
                )),
            }
        }
        if rows.iter().any(|r| r.auc.is_some()) {
            return Ok((rows, Some(round)));
        }
    }
    Ok((Vec::new(), None))
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
    let config = BundleConfig::new(
        job.spec.model.clone(),
        job.spec.preprocess.clone(),
        // Sites pick their plane in site.toml; the consortium task is sagittal.
        fedslice::data::plane::Plane::default(),
        threshold.unwrap_or(0.5),
        if threshold.is_some() {
            "validation-exam-weighted mean of the sites' Youden thresholds, last round"
        } else {
            "default 0.5 (no site reported one)"
        },
    );

    let rounds = state.rounds(job_id)?;
    let round_numbers: Vec<u32> = rounds.iter().map(|r| r.round).collect();
    let mut per_round = Vec::new();
    let mut sites = std::collections::BTreeSet::new();
    let mut last_samples = None;
    for r in &rounds {
        let updates = state.updates(job_id, r.round)?;
        sites.extend(updates.iter().map(|u| u.site.clone()));
        if !updates.is_empty() {
            last_samples = Some(updates.iter().map(|u| u.samples as usize).sum::<usize>());
        }
        per_round.push(serde_json::json!({
            "round": r.round,
            "sites": updates.iter().map(|u| serde_json::json!({"site": u.site, "samples": u.samples, "metrics": u.metrics})).collect::<Vec<_>>(),
        }));
    }
    let (mut validation, validated_round) = site_validation(&state, job_id, &round_numbers)?;
    if !validation.is_empty() {
        let pooled = ValidationRow::pooled_fixed_effect(&validation);
        validation.push(pooled);
    }
    let provenance = Provenance {
        origin: Origin::Federated {
            job: job_id.to_owned(),
            init_from: job.spec.init_from.clone(),
            rounds: rounds.len() as u32,
            model_version: version,
            model_digest: digest.clone(),
        },
        sites: sites.len(),
        pretrain_exams: None,
        labelled_exams: last_samples,
        validation,
        exported_at: unix_now(),
        details: serde_json::json!({
            "validation_round": validated_round,
            "validation_note": "each site scores the global model it receives at the start of a round on its own validation exams, so these numbers describe the model entering that round",
            "rounds": per_round,
        }),
    };
    write_bundle(out, &model, &config, &provenance)
        .with_context(|| format!("writing the bundle to {}", out.display()))?;
    println!("exported {job_id} (model v{version}) to {}", out.display());
    Ok(())
}
