//! The reference job of the tests that disturb the aggregator mid-job
//! (fault injection, backup and restore): three sites, two pretraining
//! rounds, one small cohort. Disturbed or not, it must end with a final model
//! bit for bit the undisturbed run's, every round counting each site once.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use aggregator::blobs::BlobStore;
use fedslice::wire::{self, DecodeLimits, TensorMap};

use super::{Consortium, assert_bit_identical, phantom};

pub const SITES: [&str; 3] = ["site-00", "site-01", "site-02"];

/// The cohort every run trains on, generated once per test binary.
pub fn cohort() -> &'static Path {
    static DATA: OnceLock<tempfile::TempDir> = OnceLock::new();
    DATA.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        phantom(dir.path(), 3, 8, 21, 64);
        dir
    })
    .path()
}

/// Runs the job, serving with `serve_env`; `disturb` gets the consortium once
/// the agents are running and must leave a server serving the job (on the
/// consortium's state folder, which it may change). Returns the final model.
pub fn run(serve_env: &[(&str, &str)], disturb: impl FnOnce(&mut Consortium)) -> TensorMap {
    let mut consortium = Consortium::init();
    let bundles: Vec<_> = SITES
        .iter()
        .map(|name| consortium.add_site(name, &cohort().join(name)))
        .collect();
    consortium.pretrain_job(2, 3, "10m");
    consortium.serve_with_env(serve_env);
    let agents: Vec<_> = bundles.iter().map(|b| consortium.spawn_agent(b)).collect();
    disturb(&mut consortium);
    consortium.expect_agents_succeed(agents, &bundles, Duration::from_secs(600));
    let status = consortium.status();
    let entry = &status["jobs"][0];
    assert_eq!(entry["job"]["status"], "finished", "{entry}");
    let rounds = entry["rounds"].as_array().expect("rounds");
    assert_eq!(rounds.len(), 2, "{entry}");
    for round in rounds {
        let mut sites: Vec<&str> = round["updates"]
            .as_array()
            .expect("updates")
            .iter()
            .filter_map(|u| u["site"].as_str())
            .collect();
        sites.sort();
        assert_eq!(sites, SITES, "each site counted exactly once: {round}");
    }
    let closes = consortium
        .audit()
        .iter()
        .filter(|e| e["event"] == "round_closed")
        .count();
    assert_eq!(closes, 2, "each round closed exactly once");
    let digest = rounds[1]["round"]["result_digest"]
        .as_str()
        .expect("final model digest");
    let blobs = BlobStore::open(&consortium.state.join("blobs")).expect("blob store");
    let load = |digest: &str| {
        let bytes = blobs.get(digest).expect("model present and intact");
        wire::decode(&bytes, &DecodeLimits::DEFAULT)
            .expect("model decodes")
            .1
    };
    let initial = load(rounds[0]["round"]["base_digest"].as_str().expect("base"));
    let last = load(digest);
    // Otherwise "equal to the undisturbed run" would prove nothing.
    assert!(
        last.sub(&initial).expect("same schema").l2_norm() > 0.0,
        "two rounds of training left the model unchanged"
    );
    last
}

pub fn undisturbed() -> &'static TensorMap {
    static MODEL: OnceLock<TensorMap> = OnceLock::new();
    MODEL.get_or_init(|| run(&[], |_| {}))
}

/// Runs the job disturbed and compares its final model with the undisturbed run's.
pub fn assert_same_as_undisturbed(
    serve_env: &[(&str, &str)],
    disturb: impl FnOnce(&mut Consortium),
) {
    assert_bit_identical(
        &run(serve_env, disturb),
        undisturbed(),
        "the undisturbed run",
    );
}
