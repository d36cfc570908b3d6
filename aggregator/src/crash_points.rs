//! Named places where the fault-injection tests make the aggregator die as
//! abruptly as a power cut, to prove that no acknowledged work is lost at any
//! of them. Inert unless `FEDSLICE_CRASH_AT=<point>[@<n>]` is set, in which
//! case the process aborts (no destructors, no flushing) the n-th time (default
//! the first) execution reaches `<point>`.
//!
//! `FEDSLICE_PAUSE_AT=<point>[@<n>]=<file>` instead holds execution at the
//! n-th visit for as long as `<file>` exists, so a test can change the world
//! (fill the disk, say) at exactly that moment.
//!
//! Points: `upload:mid_body` (part of an update's body received),
//! `upload:after_blob` (update stored, not yet recorded), `upload:after_record`
//! (recorded, not yet acknowledged), `close:before_model` (aggregated, new
//! global model not yet written), `close:after_model` (model blob written,
//! round not yet committed).

use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

pub const ENV: &str = "FEDSLICE_CRASH_AT";
pub const PAUSE_ENV: &str = "FEDSLICE_PAUSE_AT";

/// `<point>[@<n>]` → (point, n).
fn parse(spec: &str) -> (String, u64) {
    match spec.split_once('@') {
        Some((name, n)) => (name.to_string(), n.parse().unwrap_or(1)),
        None => (spec.to_string(), 1),
    }
}

fn crash_target() -> &'static Option<(String, u64)> {
    static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
    TARGET.get_or_init(|| {
        let target = parse(&std::env::var(ENV).ok()?);
        tracing::warn!(point = %target.0, nth = target.1, "fault injection armed: crash");
        Some(target)
    })
}

fn pause_target() -> &'static Option<(String, u64, PathBuf)> {
    static TARGET: OnceLock<Option<(String, u64, PathBuf)>> = OnceLock::new();
    TARGET.get_or_init(|| {
        let spec = std::env::var(PAUSE_ENV).ok()?;
        let (point, gate) = spec.split_once('=')?;
        let (name, nth) = parse(point);
        tracing::warn!(point = %name, nth, gate, "fault injection armed: pause");
        Some((name, nth, PathBuf::from(gate)))
    })
}

/// Aborts the process, or holds it, if this is an armed point's n-th visit.
pub fn reached(point: &str) {
    static CRASH_VISITS: AtomicU64 = AtomicU64::new(0);
    static PAUSE_VISITS: AtomicU64 = AtomicU64::new(0);
    if let Some((name, nth)) = crash_target()
        && name == point
        && CRASH_VISITS.fetch_add(1, Ordering::SeqCst) + 1 == *nth
    {
        eprintln!("fault injection: aborting at {point}");
        std::process::abort();
    }
    if let Some((name, nth, gate)) = pause_target()
        && name == point
        && PAUSE_VISITS.fetch_add(1, Ordering::SeqCst) + 1 == *nth
    {
        eprintln!(
            "fault injection: paused at {point} while {} exists",
            gate.display()
        );
        while gate.exists() {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        eprintln!("fault injection: resumed at {point}");
    }
}
