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

use std::time::Duration;

use common::Consortium;
use common::two_rounds::assert_same_as_undisturbed;

enum Fault {
    /// SIGKILL once round 1 has closed, while the sites train round 2.
    KillWhenIdleAfterRound1,
    /// `FEDSLICE_CRASH_AT` value.
    CrashAt(&'static str),
}

/// What the aggregator suffers once the agents run; it is serving the job again after.
fn inflict(fault: &Fault, consortium: &mut Consortium) {
    match fault {
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
}

fn assert_same_as_undisturbed_under(fault: Fault) {
    let env: Vec<(&str, &str)> = match &fault {
        Fault::CrashAt(point) => vec![("FEDSLICE_CRASH_AT", *point)],
        Fault::KillWhenIdleAfterRound1 => Vec::new(),
    };
    assert_same_as_undisturbed(&env, |consortium| inflict(&fault, consortium));
}

#[test]
fn killed_while_idle_between_rounds() {
    assert_same_as_undisturbed_under(Fault::KillWhenIdleAfterRound1);
}

#[test]
fn crash_while_an_update_is_streaming_in() {
    assert_same_as_undisturbed_under(Fault::CrashAt("upload:mid_body"));
}

#[test]
fn crash_after_an_update_is_stored_but_before_it_is_recorded() {
    assert_same_as_undisturbed_under(Fault::CrashAt("upload:after_blob"));
}

#[test]
fn crash_after_some_updates_are_recorded_but_before_the_acknowledgement() {
    // The second update of round 1: one is counted, one is not yet acknowledged.
    assert_same_as_undisturbed_under(Fault::CrashAt("upload:after_record@2"));
}

#[test]
fn crash_before_the_new_global_model_is_written() {
    assert_same_as_undisturbed_under(Fault::CrashAt("close:before_model"));
}

#[test]
fn crash_after_the_model_is_written_but_before_the_round_is_committed() {
    assert_same_as_undisturbed_under(Fault::CrashAt("close:after_model@2"));
}
