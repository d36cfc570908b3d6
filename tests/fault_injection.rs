//! The aggregator dies at every point that matters (issue 5 §1): idle between
//! rounds, mid-upload, with an update stored but not recorded, recorded but
//! not acknowledged, and before and after writing the new global model. It is
//! restarted on the same state folder each time, and the job's final global
//! model must be bit-for-bit the one an undisturbed run of the same job
//! produces, with every round counting each site exactly once.
//!
//! Crashes are injected with `FEDSLICE_CRASH_AT` (aggregator/src/crash_points.rs),
//! which aborts the process at a named line, as abruptly as SIGKILL.

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use aggregator::blobs::BlobStore;
use common::{Consortium, assert_bit_identical, phantom};
use fedslice::wire::{self, DecodeLimits, TensorMap};

const SITES: [&str; 3] = ["site-00", "site-01", "site-02"];

enum Fault {
    None,
    /// SIGKILL once round 1 has closed, while the sites train round 2.
    KillWhenIdleAfterRound1,
    /// `FEDSLICE_CRASH_AT` value.
    CrashAt(&'static str),
}

/// The cohort every run trains on, generated once.
fn data() -> &'static std::path::Path {
    static DATA: OnceLock<tempfile::TempDir> = OnceLock::new();
    DATA.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        phantom(dir.path(), 3, 8, 21, 64);
        dir
    })
    .path()
}

/// Runs a 2-round pretraining job under `fault`; returns the final global model.
fn run(fault: Fault) -> TensorMap {
    let mut consortium = Consortium::init();
    let bundles: Vec<_> = SITES
        .iter()
        .map(|name| consortium.add_site(name, &data().join(name)))
        .collect();
    consortium.pretrain_job(2, 3, "10m");
    match fault {
        Fault::CrashAt(point) => consortium.serve_with_env(&[("FEDSLICE_CRASH_AT", point)]),
        _ => consortium.serve(),
    }
    let agents: Vec<_> = bundles.iter().map(|b| consortium.spawn_agent(b)).collect();
    match fault {
        Fault::None => {}
        Fault::KillWhenIdleAfterRound1 => {
            consortium.wait_round_closed(1, Duration::from_secs(300));
            consortium.kill_server();
            consortium.serve();
        }
        Fault::CrashAt(point) => {
            let status = consortium.wait_server_exit(Duration::from_secs(300));
            assert!(
                !status.success(),
                "the server was meant to abort at {point}, but exited with {status}"
            );
            let name = point.split('@').next().unwrap_or(point);
            assert!(
                consortium
                    .server_log()
                    .contains(&format!("fault injection: aborting at {name}")),
                "{}",
                consortium.server_log()
            );
            std::thread::sleep(Duration::from_millis(500));
            consortium.serve();
        }
    }
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

fn undisturbed() -> &'static TensorMap {
    static MODEL: OnceLock<TensorMap> = OnceLock::new();
    MODEL.get_or_init(|| run(Fault::None))
}

fn assert_same_as_undisturbed(fault: Fault) {
    assert_bit_identical(&run(fault), undisturbed(), "the undisturbed run");
}

#[test]
fn killed_while_idle_between_rounds() {
    assert_same_as_undisturbed(Fault::KillWhenIdleAfterRound1);
}

#[test]
fn crash_while_an_update_is_streaming_in() {
    assert_same_as_undisturbed(Fault::CrashAt("upload:mid_body"));
}

#[test]
fn crash_after_an_update_is_stored_but_before_it_is_recorded() {
    assert_same_as_undisturbed(Fault::CrashAt("upload:after_blob"));
}

#[test]
fn crash_after_some_updates_are_recorded_but_before_the_acknowledgement() {
    // The second update of round 1: one is counted, one is not yet acknowledged.
    assert_same_as_undisturbed(Fault::CrashAt("upload:after_record@2"));
}

#[test]
fn crash_before_the_new_global_model_is_written() {
    assert_same_as_undisturbed(Fault::CrashAt("close:before_model"));
}

#[test]
fn crash_after_the_model_is_written_but_before_the_round_is_committed() {
    assert_same_as_undisturbed(Fault::CrashAt("close:after_model@2"));
}
