//! The operator's hand on jobs (issue 16): a finetune job must say where it
//! starts; a job cancelled while a site's update is on its way leaves the
//! state consistent (round closed without a result, the update refused and
//! dropped by the agent, which says why); a paused job waits and a resumed
//! one runs to the end. All on loopback.

mod common;

use std::time::{Duration, Instant};

use common::{Consortium, phantom, wait_for};

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn job_list(consortium: &Consortium) -> Vec<serde_json::Value> {
    serde_json::from_str(&consortium.aggregator(&["job", "list", "--json"])).expect("job list JSON")
}

fn state_of(consortium: &Consortium, job: &str) -> String {
    job_list(consortium)
        .iter()
        .find(|j| j["id"] == job)
        .and_then(|j| j["state"].as_str())
        .unwrap_or("(missing)")
        .to_string()
}

#[test]
fn a_finetune_job_says_where_it_starts() {
    let consortium = Consortium::init();
    let out = consortium.aggregator_output(&["job", "create", "--phase", "finetune"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted without --init-from");
    assert!(stderr.contains("--from-scratch"), "{stderr}");
    assert!(job_list(&consortium).is_empty(), "a job was created anyway");
    let id = consortium.aggregator(&["job", "create", "--phase", "finetune", "--from-scratch"]);
    assert_eq!(id.trim(), "job-1");
    let out =
        consortium.aggregator_output(&["job", "create", "--phase", "pretrain", "--from-scratch"]);
    assert!(
        !out.status.success(),
        "--from-scratch accepted for pretrain"
    );
}

#[test]
fn cancelling_mid_upload_drops_the_work_and_the_queue_goes_on() {
    let mut consortium = Consortium::init();
    let data = consortium.dir.path().join("data");
    phantom(&data, 1, 6, 21, 48);
    let bundle = consortium.add_site("site-00", &data.join("site-00"));
    let doomed = consortium.pretrain_job(3, 1, "10m");
    let next = consortium.pretrain_job(1, 1, "10m");
    // Held before it starts: the queue must not run it until resumed.
    consortium.aggregator(&["job", "pause", &next]);
    assert_eq!(state_of(&consortium, &next), "paused");

    // The site's first upload is held half-way until the gate goes.
    let gate = consortium.dir.path().join("gate");
    std::fs::write(&gate, b"").expect("gate");
    let pause = format!("upload:mid_body@1={}", gate.display());
    consortium.serve_with_env(&[("FEDSLICE_PAUSE_AT", pause.as_str())]);
    let agent = consortium.spawn_agent_with(&bundle, &["--until-idle", "--poll-wait", "1"]);
    wait_until("the site's upload to reach the aggregator", || {
        consortium
            .server_log()
            .contains("fault injection: paused at upload:mid_body")
    });

    consortium.aggregator(&["job", "cancel", &doomed, "--reason", "wrong preset"]);
    std::fs::remove_file(&gate).expect("open the gate");

    // The paused job holds the queue; the agent waits for it.
    wait_until("the agent to drop its work", || {
        std::fs::read_to_string(bundle.join("agent.log"))
            .unwrap_or_default()
            .contains("dropping this round's work")
    });
    let log = std::fs::read_to_string(bundle.join("agent.log")).unwrap_or_default();
    assert!(
        log.contains("cancelled by the operator: wrong preset"),
        "the agent does not say why:\n{log}"
    );
    assert_eq!(state_of(&consortium, &next), "paused");
    let status = consortium.status();
    let doomed_entry = &status["jobs"][0];
    assert_eq!(doomed_entry["job"]["status"], "failed", "{doomed_entry}");
    assert_eq!(
        doomed_entry["job"]["error"], "cancelled by the operator: wrong preset",
        "{doomed_entry}"
    );
    assert_eq!(doomed_entry["job"]["model_version"], 0, "{doomed_entry}");
    let rounds = doomed_entry["rounds"].as_array().expect("rounds");
    assert_eq!(rounds.len(), 1, "{doomed_entry}");
    assert_eq!(rounds[0]["round"]["status"], "closed", "{doomed_entry}");
    assert!(
        rounds[0]["round"]["result_digest"].is_null(),
        "{doomed_entry}"
    );
    assert_eq!(
        rounds[0]["updates"].as_array().map(Vec::len),
        Some(0),
        "the refused update was recorded: {doomed_entry}"
    );
    assert_eq!(status["jobs"][1]["job"]["status"], "pending");
    let outbox = std::fs::read_dir(bundle.join("cache/outbox"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(outbox, 0, "the dropped update is still in the outbox");

    consortium.aggregator(&["job", "resume", &next]);
    let agent = wait_for(agent, Duration::from_secs(300), "site agent");
    assert!(
        agent.status.success(),
        "agent failed:\n{}",
        std::fs::read_to_string(bundle.join("agent.log")).unwrap_or_default()
    );
    assert_eq!(state_of(&consortium, &doomed), "cancelled");
    assert_eq!(state_of(&consortium, &next), "finished");
    let listing = job_list(&consortium);
    assert_eq!(listing[1]["rounds_closed"], 1, "{listing:?}");
    let audit = consortium.audit();
    for event in ["job_cancelled", "job_paused", "job_resumed"] {
        assert!(
            audit.iter().any(|e| e["event"] == event),
            "no {event} in the audit log"
        );
    }
    let text = consortium.aggregator(&["job", "list"]);
    assert!(
        text.lines()
            .any(|l| l.starts_with(&doomed) && l.contains("cancelled")),
        "{text}"
    );
}
