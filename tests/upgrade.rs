//! Upgrades (issue 16 item 7): a state folder written before the database
//! kept a schema version opens with this aggregator, is migrated, and its job
//! goes on to the end.
//!
//! tests/fixtures/state-v0 holds the database and blobs of a 2-round
//! pretraining job of two sites, stopped with round 1 open and only
//! site-00's update in (tests/fixtures/README.md says how it was made). It
//! carries no certificates, which would expire: this consortium issues its
//! own and re-enrols the two sites.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Consortium, phantom, verify_rounds};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/state-v0");
/// site-00's round-1 update, as the old aggregator recorded it.
const STORED_UPDATE: &str = "eb3f6d07975100f23976de93934c6e51424a30688c724540ed6afaf7e3f26493";

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create folder");
    for entry in std::fs::read_dir(from).expect("read fixture") {
        let entry = entry.expect("fixture entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy fixture file");
        }
    }
}

#[test]
fn a_state_from_before_schema_versions_is_migrated_and_its_job_finishes() {
    let mut consortium = Consortium::init();
    for leftover in ["fedslice.db", "fedslice.db-wal", "fedslice.db-shm"] {
        let _ = std::fs::remove_file(consortium.state.join(leftover));
    }
    copy_tree(Path::new(FIXTURE), &consortium.state);

    // The first command to open it migrates it, and says so.
    let out = consortium.aggregator_output(&["site", "revoke", "site-00"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("schema migrated"), "{stderr}");
    consortium.aggregator(&["site", "revoke", "site-01"]);
    let data = consortium.dir.path().join("data");
    phantom(&data, 2, 8, 3, 64);
    let bundles: Vec<_> = ["site-00", "site-01"]
        .iter()
        .map(|name| consortium.add_site(name, &data.join(name)))
        .collect();

    let status = consortium.status();
    let round = &status["jobs"][0]["rounds"][0];
    assert_eq!(round["round"]["status"], "open", "{status}");
    assert_eq!(round["updates"][0]["digest"], STORED_UPDATE, "{round}");

    consortium.serve();
    let agents: Vec<_> = bundles.iter().map(|b| consortium.spawn_agent(b)).collect();
    consortium.expect_agents_succeed(agents, &bundles, Duration::from_secs(600));
    // Both rounds closed with both sites, each model the FedAvg of its
    // updates; round 1 counted the update stored before the upgrade.
    verify_rounds(&consortium, &["site-00", "site-01"]);
    let status = consortium.status();
    let round1 = status["jobs"][0]["rounds"][0]["updates"]
        .as_array()
        .expect("updates");
    assert!(
        round1
            .iter()
            .any(|u| u["site"] == "site-00" && u["digest"] == STORED_UPDATE),
        "{round1:?}"
    );
}
