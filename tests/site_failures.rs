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
    consortium.aggregator(&[
        "job",
        "create",
        "--phase",
        "pretrain",
        "--rounds",
        "2",
        "--min-sites",
        "2",
        "--local-epochs",
        "1",
        "--round-timeout",
        "3s",
    ]);
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
