//! A federated job run in one process: every site's local round
//! ([`train_round`]), the wire round trip of its update in the job's dtype,
//! and the aggregator's combination ([`aggregate::combine`] then the job's
//! server optimiser), with no network, disk or processes between them.
//!
//! Studies use it to measure federated recipes over many seeds in minutes.
//! It runs the same code as the consortium, so what it measures is what the
//! aggregator and agents would do with the same job spec; what it leaves out
//! is only transport (TLS, retries, deadlines), which changes no number.

use burn::tensor::Device;

use super::{
    FederatedError, SiteExams, SiteReport, evaluate_global, from_tensor_map, initial_model,
    labelled_split, train_round,
};
use crate::aggregate::{self, ServerState};
use crate::model::ExamClassifier;
use crate::protocol::{JobSpec, Phase, Work};
use crate::train::{NoCheckpoints, Progress};
use crate::wire::{self, DecodeLimits, TensorMap};

/// What every site reported in one round of a simulated job.
#[derive(Debug, Clone)]
pub struct SimulatedRound {
    pub round: u32,
    /// In the order of the `sites` given to [`run_job`].
    pub reports: Vec<SiteReport>,
}

/// A finished simulated job: the final global model and every round's reports.
#[derive(Debug, Clone)]
pub struct SimulatedJob {
    pub global: TensorMap,
    pub rounds: Vec<SimulatedRound>,
}

/// Runs `spec` from its version-0 model (built from `init` as the aggregator
/// does) to its last round, with every site taking part in every round.
pub fn run_job(
    spec: &JobSpec,
    init: Option<&TensorMap>,
    sites: &[SiteExams],
    device: &Device,
    progress: &mut dyn Progress,
) -> Result<SimulatedJob, FederatedError> {
    if sites.is_empty() {
        return Err(FederatedError::Recipe(
            "a job needs at least one site".into(),
        ));
    }
    if spec.dp.is_some() {
        // The aggregator's DP mean, noise and ledger are not reproduced here.
        return Err(FederatedError::Recipe(
            "a differentially private job cannot be simulated; run it on an aggregator".into(),
        ));
    }
    let mut global = initial_model(spec, init, device)?;
    let schema = global.schema();
    let limits = DecodeLimits::for_schema(&schema);
    let mut server = ServerState::new(spec.server_optimizer, &schema)?;
    let mut rounds = Vec::new();
    for round in 1..=spec.rounds {
        let work = Work {
            job: "simulated".into(),
            spec: spec.clone(),
            round,
            // Names no stored model; the header only needs a well-formed digest.
            model_digest: wire::digest(format!("simulated round {round}").as_bytes()),
            deadline_unix_s: 0,
        };
        let mut reports = Vec::with_capacity(sites.len());
        let mut updates = Vec::with_capacity(sites.len());
        for site in sites {
            let update = train_round(&work, &global, site, device, progress, &mut NoCheckpoints)?;
            // Through the wire as an agent sends it, so a reduced-precision
            // dtype rounds the delta here exactly as it does in a real round.
            let payload =
                work.encode_update(&update.delta, update.samples, update.report.clone())?;
            let (_, delta) = wire::decode(&payload, &limits)?;
            updates.push((delta, update.samples as f64));
            reports.push(update.report);
        }
        let mean = aggregate::combine(
            spec.aggregation,
            schema.clone(),
            spec.clip_update_norm,
            updates.into_iter().map(Ok::<_, FederatedError>),
        )?;
        server.apply(&mut global, &mean)?;
        tracing::debug!(round, sites = sites.len(), "simulated round closed");
        rounds.push(SimulatedRound { round, reports });
    }
    Ok(SimulatedJob { global, rounds })
}

/// The evaluation round of a finetune job: each site scores the final global
/// classifier on its validation exams (the same split every training round
/// held back) and reports only the aggregate numbers.
pub fn evaluate_round(
    spec: &JobSpec,
    global: &TensorMap,
    site: &SiteExams,
    device: &Device,
) -> Result<SiteReport, FederatedError> {
    if spec.phase != Phase::Finetune {
        return Err(FederatedError::Recipe(
            "only a finetune job has an evaluation round".into(),
        ));
    }
    let model = from_tensor_map(ExamClassifier::new(&spec.model, device), global)?;
    let (_, validation) = labelled_split(spec, &site.exams);
    Ok(SiteReport {
        validation: Some(evaluate_global(&model, &validation, device)?),
        ..SiteReport::default()
    })
}
