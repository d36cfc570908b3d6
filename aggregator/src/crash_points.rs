//! Named places where the fault-injection tests make the aggregator die as
//! abruptly as a power cut, to prove that no acknowledged work is lost at any
//! of them. Inert unless `FEDSLICE_CRASH_AT=<point>[@<n>]` is set, in which
//! case the process aborts (no destructors, no flushing) the n-th time (default
//! the first) execution reaches `<point>`.
//!
//! Points: `upload:mid_body` (part of an update's body received),
//! `upload:after_blob` (update stored, not yet recorded), `upload:after_record`
//! (recorded, not yet acknowledged), `close:before_model` (aggregated, new
//! global model not yet written), `close:after_model` (model blob written,
//! round not yet committed).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

pub const ENV: &str = "FEDSLICE_CRASH_AT";

fn target() -> &'static Option<(String, u64)> {
    static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
    TARGET.get_or_init(|| {
        let spec = std::env::var(ENV).ok()?;
        let (name, nth) = match spec.split_once('@') {
            Some((name, n)) => (name.to_string(), n.parse().unwrap_or(1)),
            None => (spec, 1),
        };
        tracing::warn!(point = %name, nth, "fault injection armed");
        Some((name, nth))
    })
}

/// Aborts the process if this is the armed point's n-th visit.
pub fn reached(point: &str) {
    static VISITS: AtomicU64 = AtomicU64::new(0);
    if let Some((name, nth)) = target()
        && name == point
        && VISITS.fetch_add(1, Ordering::SeqCst) + 1 == *nth
    {
        eprintln!("fault injection: aborting at {point}");
        std::process::abort();
    }
}
