//! `aggregator export`: a finished finetune job's global classifier as the
//! radiology bundle (see `fedslice::export`), with the job's provenance and
//! the sites' reported validation numbers in its model card. The threshold's
//! route (site reports and their consensus) lives in `fedslice::federated`.

use std::path::Path;

use anyhow::{Context, bail};
use fedslice::export::{BundleConfig, Origin, Provenance, ValidationRow, unix_now, write_bundle};
use fedslice::federated::{
    CONSENSUS_THRESHOLD_METHOD, SiteReport, consensus_threshold, from_tensor_map,
};
use fedslice::model::ExamClassifier;
use fedslice::protocol::Phase;
use fedslice::wire::{self, DecodeLimits};

use crate::blobs::BlobStore;
use crate::engine::StatePaths;
use crate::state::State;

/// The sites' reports for one round. A stored report that fails validation
/// (accepted before reports were checked on receipt) is left out with a
/// warning, and with its reason, so an old bad round cannot reach the bundle.
fn site_reports(
    state: &State,
    job: &str,
    round: u32,
) -> anyhow::Result<Vec<(String, Result<SiteReport, String>)>> {
    let mut out = Vec::new();
    for update in state.updates(job, round)? {
        let report = serde_json::from_value::<SiteReport>(update.metrics).map_err(|e| {
            tracing::warn!(site = %update.site, job, round, "stored site report left out: {e}");
            e.to_string()
        });
        out.push((update.site, report));
    }
    Ok(out)
}

/// The sites' validation rows from the latest round in which they reported
/// an AUC, and that round's number. Sites send aggregates only.
fn site_validation(
    state: &State,
    job: &str,
    rounds: &[u32],
) -> anyhow::Result<(Vec<ValidationRow>, Option<u32>)> {
    for &round in rounds.iter().rev() {
        let rows: Vec<ValidationRow> = site_reports(state, job, round)?
            .iter()
            .map(|(site, report)| match report {
                Ok(report) => report.validation_row(site),
                Err(why) => ValidationRow::counts_only(
                    site,
                    0,
                    None,
                    &format!("the site's stored report failed validation ({why})"),
                ),
            })
            .collect();
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
    // The evaluation round scored the exported model itself; a job finished
    // before that round existed has only the reports of its last training
    // round, which scored the model entering it (one round behind).
    let evaluation_round = job.spec.rounds.saturating_add(1);
    let mut last_reports = site_reports(&state, job_id, evaluation_round)?;
    if last_reports.is_empty() {
        tracing::warn!(
            "{job_id} has no evaluation round; the threshold comes from round {version}, \
             which scored the model before the final one"
        );
        last_reports = site_reports(&state, job_id, version)?;
    }
    let threshold = consensus_threshold(last_reports.iter().filter_map(|(_, r)| r.as_ref().ok()));
    if threshold.is_none() {
        tracing::warn!("no site reported a validation threshold; using 0.5");
    }
    let mut config = BundleConfig::new(
        job.spec.model.clone(),
        job.spec.preprocess.clone(),
        // Sites pick their plane in site.toml; the consortium task is sagittal.
        fedslice::data::plane::Plane::default(),
        threshold.unwrap_or(0.5),
        if threshold.is_some() {
            CONSENSUS_THRESHOLD_METHOD
        } else {
            "default 0.5 (no site reported one)"
        },
    );

    config.privacy = crate::ledger::report(&state, &job)?;
    let rounds = state.rounds(job_id)?;
    let round_numbers: Vec<u32> = rounds.iter().map(|r| r.round).collect();
    let mut per_round = Vec::new();
    let mut sites = std::collections::BTreeSet::new();
    let mut last_samples = None;
    for r in &rounds {
        let updates = state.updates(job_id, r.round)?;
        sites.extend(updates.iter().map(|u| u.site.clone()));
        if !updates.is_empty() && !job.spec.is_evaluation_round(r.round) {
            // Checked: samples are self-reported, and a wrapped sum in the
            // card reads as a plausible number (security review M6).
            last_samples = updates.iter().try_fold(0usize, |sum, u| {
                sum.checked_add(usize::try_from(u.samples).ok()?)
            });
            if last_samples.is_none() {
                tracing::warn!(
                    round = r.round,
                    "the sites' sample counts overflow; the card says \"not recorded\""
                );
            }
        }
        per_round.push(serde_json::json!({
            "round": r.round,
            "sites": updates.iter().map(|u| serde_json::json!({"site": u.site, "samples": u.samples, "metrics": u.metrics})).collect::<Vec<_>>(),
        }));
    }
    let (mut validation, validated_round) = site_validation(&state, job_id, &round_numbers)?;
    if !validation.is_empty() {
        match ValidationRow::pooled_fixed_effect(&validation) {
            Some(pooled) => validation.push(pooled),
            None => tracing::warn!("the sites' validation counts overflow; no pooled row"),
        }
    }
    let provenance = Provenance {
        origin: Origin::Federated {
            job: job_id.to_owned(),
            init_from: job.spec.init_from.clone(),
            rounds: rounds
                .iter()
                .filter(|r| !job.spec.is_evaluation_round(r.round))
                .count() as u32,
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
            "validation_note": if validated_round.is_some_and(|r| job.spec.is_evaluation_round(r)) {
                "each site scored the exported model on its own validation exams in the job's evaluation round"
            } else {
                "each site scores the global model it receives at the start of a round on its own validation exams, so these numbers describe the model entering that round"
            },
            "rounds": per_round,
        }),
    };
    write_bundle(out, &model, &config, &provenance)
        .with_context(|| format!("writing the bundle to {}", out.display()))?;
    println!("exported {job_id} (model v{version}) to {}", out.display());
    Ok(())
}
