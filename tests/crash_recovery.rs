//! The aggregator is killed with SIGKILL while a round is half-reported and
//! restarted on the same state folder. The job must finish, every round must
//! count each site exactly once, and every published model must equal the
//! FedAvg recomputed independently from the stored updates.

mod common;

use std::time::{Duration, Instant};

use aggregator::blobs::BlobStore;
use common::{Consortium, phantom, wait_for};
use fedslice::aggregate::FedAvg;
use fedslice::wire::{self, DecodeLimits, TensorMap};

fn decode(blobs: &BlobStore, digest: &str) -> TensorMap {
    let bytes = blobs.get(digest).expect("blob present and intact");
    wire::decode(&bytes, &DecodeLimits::DEFAULT)
        .expect("decodes")
        .1
}

#[test]
fn aggregator_killed_mid_round_resumes_without_losing_or_double_counting() {
    let mut consortium = Consortium::init();
    let data = consortium.dir.path().join("data");
    phantom(&data, 3, 16, 5, 64);
    let bundles: Vec<_> = ["site-00", "site-01", "site-02"]
        .iter()
        .map(|name| consortium.add_site(name, &data.join(name)))
        .collect();
    let job = consortium
        .aggregator(&[
            "job",
            "create",
            "--phase",
            "pretrain",
            "--rounds",
            "3",
            "--min-sites",
            "3",
            "--local-epochs",
            "1",
            "--round-timeout",
            "10m",
        ])
        .trim()
        .to_string();
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

    for (agent, bundle) in agents.into_iter().zip(&bundles) {
        let output = wait_for(agent, Duration::from_secs(600), "site agent");
        assert!(
            output.status.success(),
            "agent failed:\n{}\naggregator:\n{}",
            std::fs::read_to_string(bundle.join("agent.log")).unwrap_or_default(),
            consortium.server_log()
        );
    }

    let status = consortium.status();
    let entry = &status["jobs"][0];
    assert_eq!(entry["job"]["id"], job.as_str());
    assert_eq!(entry["job"]["status"], "finished", "{entry}");
    let blobs = BlobStore::open(&consortium.state.join("blobs")).expect("blob store");
    for round in entry["rounds"].as_array().expect("rounds") {
        let updates = round["updates"].as_array().expect("updates");
        let mut sites: Vec<&str> = updates.iter().filter_map(|u| u["site"].as_str()).collect();
        sites.sort();
        assert_eq!(
            sites,
            ["site-00", "site-01", "site-02"],
            "each site counted once: {round}"
        );
        // Recompute the round's model from its base and the stored updates.
        let mut global = decode(
            &blobs,
            round["round"]["base_digest"].as_str().expect("base"),
        );
        let mut fedavg = FedAvg::new(global.schema());
        for update in updates {
            let delta = decode(&blobs, update["digest"].as_str().expect("digest"));
            fedavg
                .add(&delta, update["samples"].as_f64().expect("samples"))
                .expect("add");
        }
        global
            .add_scaled(&fedavg.finish().expect("mean"), 1.0)
            .expect("apply");
        let published = decode(
            &blobs,
            round["round"]["result_digest"].as_str().expect("result"),
        );
        for ((name, a), (_, b)) in published.iter().zip(global.iter()) {
            assert_eq!(
                a.data(),
                b.data(),
                "round {}: {name} differs from the recomputed FedAvg",
                round["round"]["round"]
            );
        }
    }
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
