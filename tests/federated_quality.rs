//! Federation earns its keep: on an easy, quantity-skewed consortium the
//! federated model beats the weakest hospital training alone, and the same
//! seed gives the same federated model (issue 13). `fedslice study
//! --federated` measures the full recipe over seeds; this guards the
//! simulation and aggregation code with the `test` preset, in seconds.

use burn::tensor::Device;
use fedslice::aggregate::ServerOptimizer;
use fedslice::data::phantom::PhantomConfig;
use fedslice::federated::{JobOptions, job_spec};
use fedslice::federated_study::{self, FederatedArm, FederatedStudyConfig, FederatedStudyReport};
use fedslice::model::SlicePooling;
use fedslice::protocol::{Aggregation, Phase};
use fedslice::train::NoProgress;
use fedslice::wire::Dtype;

const SITES: usize = 3;
const ROUNDS: u32 = 3;
/// Epochs of the pooled baseline per round; a site in a round takes as many
/// steps over its own exams (`SITES` times the epochs with equal sites).
const POOLED_EPOCHS_PER_ROUND: usize = 4;

/// Textbook tears at randomised protocols, 3 sites whose cohort sizes differ
/// (quantity skew 0.7: from 30% to 170% of 24 exams), no pretraining.
fn config(seed: u64, arms: Vec<FederatedArm>) -> FederatedStudyConfig {
    let finetune = job_spec(&JobOptions {
        phase: Phase::Finetune,
        preset: "test".into(),
        pooling: SlicePooling::default(),
        slice_embedding: Default::default(),
        rounds: ROUNDS,
        min_sites: SITES as u32,
        local_epochs: POOLED_EPOCHS_PER_ROUND * SITES,
        round_timeout_s: 600,
        init_from: None,
        dtype: Dtype::F32,
        aggregation: Aggregation::Fedavg,
        server_optimizer: ServerOptimizer::FEDAVG,
        clip_update_norm: None,
        fedprox_mu: 0.0,
        seed: 0,
    })
    .expect("a valid job");
    FederatedStudyConfig {
        seeds: vec![seed],
        cohort: PhantomConfig {
            sites: SITES,
            exams_per_site: 24,
            image_size: 96,
            valid_fraction: 0.3,
            size_jitter: 0.7,
            textbook: true,
            ..PhantomConfig::default()
        },
        pretrain: None,
        finetune,
        pooled_finetune_epochs: POOLED_EPOCHS_PER_ROUND * ROUNDS as usize,
        arms,
    }
}

fn auc(report: &FederatedStudyReport, arm: &str) -> f64 {
    report
        .runs
        .iter()
        .find(|r| r.arm == arm)
        .unwrap_or_else(|| panic!("no {arm} run"))
        .auc
}

#[test]
fn federated_beats_the_weakest_site_alone() {
    let device = Device::flex();
    let report = federated_study::run(
        &config(0, vec![FederatedArm::Federated, FederatedArm::Local]),
        &device,
        &mut NoProgress,
        &mut |r| eprintln!("{} ({} exams): AUC {:.3}", r.arm, r.train_exams, r.auc),
    )
    .expect("study runs");
    let locals: Vec<f64> = report
        .runs
        .iter()
        .filter(|r| r.arm.starts_with("local/"))
        .map(|r| r.auc)
        .collect();
    assert_eq!(locals.len(), SITES);
    let worst = locals.iter().copied().fold(f64::INFINITY, f64::min);
    let federated = auc(&report, "federated");
    assert!(
        federated >= worst + 0.1,
        "federated AUC {federated:.3} does not beat the weakest site alone ({worst:.3}) by 0.1; sites {locals:?}"
    );
}

#[test]
fn the_same_seed_gives_the_same_federated_model() {
    let device = Device::flex();
    let run = || {
        federated_study::run(
            &config(1, vec![FederatedArm::Federated]),
            &device,
            &mut NoProgress,
            &mut |_| {},
        )
        .expect("study runs")
    };
    let (first, second) = (run(), run());
    let (a, b) = (auc(&first, "federated"), auc(&second, "federated"));
    assert_eq!(a.to_bits(), b.to_bits(), "AUC {a} then {b}");
    let losses = |r: &FederatedStudyReport| -> Vec<Option<f64>> {
        r.rounds.iter().map(|x| x.mean_local_loss).collect()
    };
    assert_eq!(losses(&first), losses(&second));
    assert!(losses(&first).iter().all(Option::is_some));
}
