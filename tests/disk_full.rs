//! The aggregator's disk fills up at the moment it writes a new global model
//! (a real ENOSPC from a small tmpfs holding its state folder). It must say
//! so clearly (log and audit), keep the previous model and the round's
//! updates intact, keep the round open, and close it as soon as space
//! returns; the finished job's models must all equal the FedAvg recomputed
//! from the stored updates.
//!
//! Mounting a tmpfs needs root with CAP_SYS_ADMIN (as on the CI machine).
//! Where that is refused the test says so on stderr and does nothing else.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Consortium, phantom, verify_rounds};

const SITES: [&str; 3] = ["site-00", "site-01", "site-02"];

/// Unmounts on drop, after everything using it has been stopped.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn mount_tmpfs(at: &Path, size: &str) -> bool {
    Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(at)
        .status()
        .is_ok_and(|s| s.success())
}

/// Writes until the filesystem refuses: returns the filler's path.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).expect("filler");
    let chunk = vec![0x5Au8; 64 * 1024];
    loop {
        match file.write_all(&chunk).and_then(|()| file.sync_all()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(28) => return path,
            Err(e) => panic!("filling the disk: {e}"),
        }
    }
}

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

#[test]
fn disk_full_while_writing_a_model_keeps_the_previous_one_and_resumes() {
    let mut mount = None;
    let mut consortium = Consortium::init_with(|state| {
        if mount_tmpfs(state, "64m") {
            mount = Some(Mount(state.to_path_buf()));
        }
    });
    let Some(_mount) = mount else {
        eprintln!("disk_full: cannot mount a tmpfs here (needs CAP_SYS_ADMIN); not run");
        return;
    };
    let data = consortium.dir.path().join("data");
    phantom(&data, 3, 6, 17, 48);
    let bundles: Vec<_> = SITES
        .iter()
        .map(|name| consortium.add_site(name, &data.join(name)))
        .collect();
    consortium.pretrain_job(3, 3, "10m");
    // Hold the aggregator just before it writes round 2's model.
    let gate = consortium.dir.path().join("gate");
    std::fs::write(&gate, b"").expect("gate");
    let pause = format!("close:before_model@2={}", gate.display());
    consortium.serve_with_env(&[("FEDSLICE_PAUSE_AT", pause.as_str())]);
    let agents: Vec<_> = bundles.iter().map(|b| consortium.spawn_agent(b)).collect();
    wait_until("the pause before round 2's model", || {
        consortium
            .server_log()
            .contains("fault injection: paused at close:before_model")
    });

    let filler = fill(&consortium.state);
    std::fs::remove_file(&gate).expect("open the gate");
    wait_until("the write to fail", || {
        consortium.server_log().contains("No space left on device")
    });
    let log = consortium.server_log();
    assert!(
        log.contains("writing the global model of round 2"),
        "the error must say what failed: {log}"
    );
    // Still failing a few ticks later: the round stays open, round 1's model
    // is intact, and the error was logged once, not once per retry.
    std::thread::sleep(Duration::from_secs(2));
    let status = consortium.status();
    let rounds = status["jobs"][0]["rounds"].as_array().expect("rounds");
    assert_eq!(rounds.len(), 2, "{status}");
    assert_eq!(rounds[0]["round"]["status"], "closed");
    assert_eq!(rounds[1]["round"]["status"], "open", "{status}");
    assert_eq!(rounds[1]["updates"].as_array().map(Vec::len), Some(3));
    let log = consortium.server_log();
    assert_eq!(
        log.matches("writing the global model of round 2").count(),
        1,
        "{log}"
    );

    std::fs::remove_file(&filler).expect("free the disk");
    consortium.expect_agents_succeed(agents, &bundles, Duration::from_secs(300));
    assert!(consortium.server_log().contains("round engine recovered"));
    verify_rounds(&consortium, &SITES);
    let audit = consortium.audit();
    let events: Vec<&str> = audit.iter().filter_map(|e| e["event"].as_str()).collect();
    assert!(events.contains(&"engine_recovered"), "{events:?}");
    assert_eq!(events.iter().filter(|e| **e == "round_closed").count(), 3);
    consortium.kill_server();
}
