//! A site whose exams are DICOM series: the agent trains on them, and a
//! restarted agent prepares every exam from its preprocessing cache without
//! decoding DICOM again; a corrupted cache entry is rebuilt, not trusted.

mod common;

use std::time::Duration;

use common::{Consortium, phantom_as, wait_for};

fn job(consortium: &Consortium) {
    consortium.pretrain_job(1, 1, "10m");
}

fn run_agent(consortium: &Consortium, bundle: &std::path::Path) -> String {
    let output = wait_for(
        consortium.spawn_agent(bundle),
        Duration::from_secs(300),
        "site agent",
    );
    let log = std::fs::read_to_string(bundle.join("agent.log")).unwrap_or_default();
    assert!(
        output.status.success(),
        "{log}\n{}",
        consortium.server_log()
    );
    log
}

#[test]
fn agent_trains_on_dicom_and_reuses_its_preprocessing_cache() {
    let mut consortium = Consortium::init();
    let data = consortium.dir.path().join("data");
    phantom_as("dicom", &data, 1, 6, 3, 48);
    let train = std::fs::read_dir(data.join("site-00/train"))
        .expect("train folder")
        .count();
    assert!(train >= 2, "{train} training exams");
    let bundle = consortium.add_site("site-00", &data.join("site-00"));
    job(&consortium);
    consortium.serve();

    let first = run_agent(&consortium, &bundle);
    assert!(
        first.contains(&format!("from_cache=0 decoded={train}")),
        "{first}"
    );
    let status = consortium.status();
    assert_eq!(status["jobs"][0]["job"]["status"], "finished", "{status}");
    assert_eq!(
        status["jobs"][0]["rounds"][0]["updates"][0]["samples"]
            .as_u64()
            .map(|n| n > 0),
        Some(true),
        "{status}"
    );

    // Same recipe, new process: nothing is decoded.
    job(&consortium);
    std::fs::remove_file(bundle.join("agent.log")).expect("clear log");
    let second = run_agent(&consortium, &bundle);
    assert!(
        second.contains(&format!("from_cache={train} decoded=0")),
        "{second}"
    );

    // One entry damaged on disk: rebuilt from its DICOM, the others still hit.
    let entries: Vec<_> = std::fs::read_dir(bundle.join("cache/prepared"))
        .expect("cache folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "fsp"))
        .collect();
    assert_eq!(entries.len(), train);
    let mut bytes = std::fs::read(&entries[0]).expect("entry");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x10;
    std::fs::write(&entries[0], bytes).expect("corrupt entry");
    job(&consortium);
    std::fs::remove_file(bundle.join("agent.log")).expect("clear log");
    let third = run_agent(&consortium, &bundle);
    assert!(
        third.contains(&format!(
            "from_cache={} decoded=1 rebuilt_corrupt=1",
            train - 1
        )),
        "{third}"
    );
}
