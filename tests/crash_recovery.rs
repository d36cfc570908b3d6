//! The aggregator is killed with SIGKILL while a round is half-reported and
//! restarted on the same state folder. The job must finish, every round must
//! count each site exactly once, and every published model must equal the
//! FedAvg recomputed independently from the stored updates. A site agent
//! killed after computing its update re-sends it; one killed mid-training
//! continues from its last epoch checkpoint, and the round's model is bit for
//! bit the one an uninterrupted agent produces.

mod common;

use std::time::{Duration, Instant};

use common::{Consortium, phantom, verify_rounds, wait_for};

#[test]
fn aggregator_killed_mid_round_resumes_without_losing_or_double_counting() {
    let mut consortium = Consortium::init();
    let data = consortium.dir.path().join("data");
    phantom(&data, 3, 16, 5, 64);
    let bundles: Vec<_> = ["site-00", "site-01", "site-02"]
        .iter()
        .map(|name| consortium.add_site(name, &data.join(name)))
        .collect();
    let job = consortium.pretrain_job(3, 3, "10m");
    consortium.serve();
    let agents: Vec<_> = bundles.iter().map(|b| consortium.spawn_agent(b)).collect();

    // Kill the aggregator once round 2 has some but not all of its updates.
    let started = Instant::now();
    loop {
        let status = consortium.status();
        let rounds = status["jobs"][0]["rounds"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let partial = rounds.iter().any(|r| {
            r["round"]["round"] == 2
                && r["round"]["status"] == "open"
                && r["updates"]
                    .as_array()
                    .is_some_and(|u| !u.is_empty() && u.len() < 3)
        });
        if partial {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "round 2 never got a first update: {status}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    consortium.kill_server();
    std::thread::sleep(Duration::from_secs(2));
    consortium.serve();

    consortium.expect_agents_succeed(agents, &bundles, Duration::from_secs(600));

    let status = consortium.status();
    assert_eq!(status["jobs"][0]["job"]["id"], job.as_str());
    verify_rounds(&consortium, &["site-00", "site-01", "site-02"]);
    let audit = consortium.audit();
    let closes = audit
        .iter()
        .filter(|e| e["event"] == "round_closed")
        .count();
    assert_eq!(closes, 3, "each round closed exactly once");
    assert_eq!(
        audit
            .iter()
            .filter(|e| e["event"] == "service_started")
            .count(),
        2
    );
}

fn files_in(dir: &std::path::Path, ext: &str) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == ext))
                .collect()
        })
        .unwrap_or_default()
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A pretraining job of one round that one site completes alone.
fn one_round_one_site_job(consortium: &Consortium, local_epochs: u32) {
    consortium.aggregator(&[
        "job",
        "create",
        "--phase",
        "pretrain",
        "--rounds",
        "1",
        "--min-sites",
        "1",
        "--local-epochs",
        &local_epochs.to_string(),
    ]);
}

#[test]
fn a_restarted_agent_resends_its_computed_update_instead_of_retraining() {
    let mut consortium = Consortium::init();
    let data = consortium.dir.path().join("data");
    phantom(&data, 1, 12, 4, 64);
    let bundle = consortium.add_site("site-00", &data.join("site-00"));
    one_round_one_site_job(&consortium, 3);
    consortium.serve();
    let mut agent = consortium.spawn_agent(&bundle);
    // The agent has the global model and is training: take the aggregator away.
    wait_until("the model download", Duration::from_secs(120), || {
        !files_in(&bundle.join("cache/models"), "fslw").is_empty()
    });
    consortium.kill_server();
    // Training finishes, the update waits in the outbox, the upload fails: kill the agent too.
    wait_until("the outbox", Duration::from_secs(120), || {
        !files_in(&bundle.join("cache/outbox"), "fslw").is_empty()
    });
    std::thread::sleep(Duration::from_millis(500));
    let _ = agent.kill();
    let _ = agent.wait();
    let outbox = files_in(&bundle.join("cache/outbox"), "fslw");
    let computed = fedslice::wire::digest(&std::fs::read(&outbox[0]).expect("outbox update"));

    consortium.serve();
    let output = wait_for(
        consortium.spawn_agent(&bundle),
        Duration::from_secs(120),
        "restarted agent",
    );
    assert!(
        output.status.success(),
        "{}",
        std::fs::read_to_string(bundle.join("agent.log")).unwrap_or_default()
    );
    let log = std::fs::read_to_string(bundle.join("agent.log")).unwrap_or_default();
    assert!(
        log.contains("re-sending the update computed before a restart"),
        "{log}"
    );
    let status = consortium.status();
    let updates = status["jobs"][0]["rounds"][0]["updates"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(updates.len(), 1, "exactly one update counted: {status}");
    assert_eq!(
        updates[0]["digest"],
        computed.as_str(),
        "the update computed before the restart is the one counted"
    );
    assert!(
        files_in(&bundle.join("cache/outbox"), "fslw").is_empty(),
        "the outbox is emptied once acknowledged"
    );
}

/// Runs a one-site, one-round pretraining job of four local epochs; with
/// `kill_mid_training` the agent is SIGKILLed once its first epoch checkpoint
/// exists and started again. Returns the published model and the agent logs.
fn one_round_with_agent(
    data: &std::path::Path,
    kill_mid_training: bool,
) -> (fedslice::wire::TensorMap, String) {
    let mut consortium = Consortium::init();
    let bundle = consortium.add_site("site-00", &data.join("site-00"));
    one_round_one_site_job(&consortium, 4);
    consortium.serve();
    let mut agent = consortium.spawn_agent(&bundle);
    let mut logs = String::new();
    if kill_mid_training {
        let checkpoints = bundle.join("cache/checkpoints");
        wait_until("an epoch checkpoint", Duration::from_secs(120), || {
            !files_in(&checkpoints, "ckpt").is_empty()
        });
        let _ = agent.kill();
        let _ = agent.wait();
        assert!(
            files_in(&bundle.join("cache/outbox"), "fslw").is_empty(),
            "training had already finished: the kill came too late to test resuming"
        );
        logs = std::fs::read_to_string(bundle.join("agent.log")).unwrap_or_default();
        agent = consortium.spawn_agent(&bundle);
    }
    consortium.expect_agents_succeed(
        vec![agent],
        std::slice::from_ref(&bundle),
        Duration::from_secs(300),
    );
    logs.push_str(&std::fs::read_to_string(bundle.join("agent.log")).unwrap_or_default());
    assert!(
        files_in(&bundle.join("cache/checkpoints"), "ckpt").is_empty(),
        "the spent checkpoint is removed once the update is in the outbox"
    );
    (verify_rounds(&consortium, &["site-00"]), logs)
}

#[test]
fn an_agent_killed_mid_training_resumes_from_its_last_epoch_checkpoint() {
    let dir = tempfile::tempdir().expect("temp dir");
    phantom(dir.path(), 1, 12, 8, 64);
    let (undisturbed, _) = one_round_with_agent(dir.path(), false);
    let (resumed, logs) = one_round_with_agent(dir.path(), true);
    assert!(
        logs.contains("resuming local training after epoch"),
        "the restarted agent trained from scratch:\n{logs}"
    );
    common::assert_bit_identical(&resumed, &undisturbed, "the uninterrupted round");
}
