//! A site that never shows up: rounds close at the deadline once `min-sites`
//! have reported, and say so; when the absent site finally starts, the job is
//! over and it sends nothing.

mod common;

use std::time::Duration;

use common::{Consortium, phantom, wait_for};
use site_agent::payload_log::PayloadLog;

#[test]
fn rounds_close_at_the_deadline_without_an_absent_site() {
    let mut consortium = Consortium::init();
    let data = consortium.dir.path().join("data");
    phantom(&data, 3, 12, 9, 64);
    let bundles: Vec<_> = ["site-00", "site-01", "site-02"]
        .iter()
        .map(|name| consortium.add_site(name, &data.join(name)))
        .collect();
    consortium.pretrain_job(2, 2, "3s");
    consortium.serve();
    let present: Vec<_> = bundles[..2]
        .iter()
        .map(|b| consortium.spawn_agent(b))
        .collect();
    for agent in present {
        let output = wait_for(agent, Duration::from_secs(300), "site agent");
        assert!(
            output.status.success(),
            "agent failed: {}",
            consortium.server_log()
        );
    }
    let status = consortium.status();
    let rounds = status["jobs"][0]["rounds"].as_array().expect("rounds");
    assert_eq!(status["jobs"][0]["job"]["status"], "finished");
    assert_eq!(rounds.len(), 2);
    for round in rounds {
        assert_eq!(
            round["updates"].as_array().map(Vec::len),
            Some(2),
            "{round}"
        );
        let note = round["round"]["note"].as_str().unwrap_or_default();
        assert!(
            note.contains("2 of 3 active sites") && note.contains("at the deadline"),
            "{note}"
        );
    }

    // The absent site comes back after the job closed: nothing to do, nothing sent.
    let late = wait_for(
        consortium.spawn_agent(&bundles[2]),
        Duration::from_secs(60),
        "late agent",
    );
    assert!(late.status.success());
    assert!(PayloadLog::read(&bundles[2].join("cache")).map_or(true, |sent| sent.is_empty()));
}

/// Through the shell's built-in `kill`, which every system has (procps's
/// `/bin/kill` may be missing from a minimal image).
fn signal(child: &std::process::Child, sig: &str) {
    let status = std::process::Command::new("sh")
        .args(["-c", &format!("kill {sig} {}", child.id())])
        .status()
        .expect("run sh");
    assert!(status.success(), "kill {sig} failed");
}

/// A site frozen mid-round (SIGSTOP: alive, but silent) wakes up after its
/// round closed without it. Its late update is refused as stale, with the
/// reason in its log and in the audit log; it then fetches the new model and
/// takes part in a later round.
#[test]
fn a_site_back_after_its_round_closed_is_refused_then_carries_on() {
    let mut consortium = Consortium::init();
    let data = consortium.dir.path().join("data");
    phantom(&data, 3, 8, 13, 48);
    let bundles: Vec<_> = ["site-00", "site-01", "site-02"]
        .iter()
        .map(|name| consortium.add_site(name, &data.join(name)))
        .collect();
    consortium.pretrain_job(3, 2, "4s");
    consortium.serve();
    let agents: Vec<_> = bundles.iter().map(|b| consortium.spawn_agent(b)).collect();
    let late = &agents[2];
    let models = bundles[2].join("cache/models");
    let started = std::time::Instant::now();
    while std::fs::read_dir(&models).map_or(true, |mut d| {
        !d.any(|e| e.is_ok_and(|e| e.path().extension().is_some_and(|x| x == "fslw")))
    }) {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no model download"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    signal(late, "-STOP");
    consortium.wait_round_closed(1, Duration::from_secs(120));
    signal(late, "-CONT");
    consortium.expect_agents_succeed(agents, &bundles, Duration::from_secs(300));
    let log = std::fs::read_to_string(bundles[2].join("agent.log")).unwrap_or_default();
    assert!(
        log.contains("update is for round 1") && log.contains("a stale update is never counted"),
        "{log}"
    );
    let audit = consortium.audit();
    assert!(
        audit.iter().any(|e| e["site"] == "site-02"
            && e["detail"]
                .as_str()
                .is_some_and(|d| d.contains("stale update"))),
        "{audit:?}"
    );
    let status = consortium.status();
    assert_eq!(status["jobs"][0]["job"]["status"], "finished", "{status}");
    let rounds = status["jobs"][0]["rounds"].as_array().expect("rounds");
    let counted = |round: &serde_json::Value| {
        round["updates"]
            .as_array()
            .is_some_and(|u| u.iter().any(|u| u["site"] == "site-02"))
    };
    assert!(!counted(&rounds[0]), "the stale update must not count");
    assert!(
        rounds[1..].iter().any(counted),
        "site-02 never took part again: {status}"
    );
}
