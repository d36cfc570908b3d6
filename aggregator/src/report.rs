//! `aggregator status`, `site list` and `audit`: what an operator reads.

use crate::cli::{ago, expiry, utc, when};
use crate::operator::ServiceState;
use crate::retention::Storage;
use crate::state::State;

pub fn list_sites(state: &State, json: bool) -> anyhow::Result<()> {
    let sites = state.sites()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&sites)?);
        return Ok(());
    }
    println!(
        "{:<20} {:<8} {:<16} {:<24} {:<34}",
        "site", "status", "last contact", "certificate expires", "certificate serial"
    );
    for s in sites {
        println!(
            "{:<20} {:<8} {:<16} {:<24} {:<34}",
            s.name,
            s.status,
            ago(s.last_contact),
            utc(s.not_after),
            s.serial
        );
    }
    Ok(())
}

/// `aggregator job list`.
pub fn list_jobs(state: &State, json: bool) -> anyhow::Result<()> {
    let jobs = state.job_listing()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&jobs)?);
        return Ok(());
    }
    println!(
        "{:<10} {:<9} {:<11} {:<10} {:<8} {:<24} note",
        "job", "phase", "preset", "state", "rounds", "created"
    );
    for j in jobs {
        let note = match (&j.job.error, j.paused_at, &j.job.spec.init_from) {
            (Some(error), _, _) => error.clone(),
            (None, Some(at), _) => format!("paused {}", ago(Some(at))),
            (None, None, Some(from)) => format!("from {from}"),
            (None, None, None) => String::new(),
        };
        println!(
            "{:<10} {:<9} {:<11} {:<10} {:<8} {:<24} {note}",
            j.job.id,
            j.job.spec.phase.to_string(),
            j.job.spec.preset,
            j.state,
            format!("{}/{}", j.rounds_closed, j.job.spec.rounds),
            utc(j.job.created_at),
        );
    }
    Ok(())
}

pub fn status(
    state: &State,
    service: &ServiceState,
    storage: &Storage,
    json: bool,
) -> anyhow::Result<()> {
    let jobs = state.jobs()?;
    let sites = state.sites()?;
    if json {
        let mut out = Vec::new();
        for job in &jobs {
            let rounds = state.rounds(&job.id)?;
            let mut round_json = Vec::new();
            for r in rounds {
                let updates = state.updates(&job.id, r.round)?;
                round_json.push(serde_json::json!({
                    "evaluation": job.spec.is_evaluation_round(r.round),
                    "round": r,
                    "updates": updates,
                }));
            }
            let privacy = crate::ledger::report(state, job)?;
            out.push(serde_json::json!({ "job": job, "rounds": round_json, "privacy": privacy }));
        }
        let ledger = crate::ledger::spent(state, 1e-5)?.map(|(spent, releases)| {
            serde_json::json!({ "spent_at_delta_1e-5": spent, "releases": releases })
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "service": service,
                "storage": storage,
                "jobs": out,
                "sites": sites,
                "privacy_ledger": ledger,
                "heartbeats": state.heartbeats()?,
            }))?
        );
        return Ok(());
    }
    // A job's "running" is the database's view; whether anything is serving
    // it is this line's (from the serve lock, which dies with the process).
    match (service.running, service.pid, &service.operator_url) {
        (false, _, _) => println!(
            "service: stopped (no `aggregator serve` holds this state folder; jobs below wait for it)"
        ),
        (true, pid, operator) => println!(
            "service: running (pid {}{})",
            pid.map_or("?".into(), |p| p.to_string()),
            operator
                .as_ref()
                .map_or(String::new(), |url| format!(", operator listener {url}"))
        ),
    }
    println!(
        "storage: {} (`aggregator prune` frees old models and updates)",
        crate::retention::describe(storage)
    );
    println!();
    if jobs.is_empty() {
        println!("no jobs (create one with `aggregator job create`)");
    }
    for job in &jobs {
        let rounds = state.rounds(&job.id)?;
        let open = rounds.iter().find(|r| r.status == "open");
        println!(
            "{}  {} {}  {}  rounds {}/{}  model v{}{}",
            job.id,
            job.spec.phase,
            job.spec.preset,
            job.status,
            rounds.iter().filter(|r| r.status == "closed").count(),
            job.spec.total_rounds(),
            job.model_version.map_or("-".into(), |v| v.to_string()),
            job.error
                .as_ref()
                .map_or(String::new(), |e| format!("  error: {e}"))
        );
        if let Some(p) = crate::ledger::report(state, job)? {
            println!(
                "    DP: consortium epsilon {:.4} at delta {:e} ({}); z {}, C {}, m {}, {} noised round(s) of this job, {} in the ledger; sampling: {}; budget {}",
                p.epsilon,
                p.delta,
                p.accountant,
                p.noise_multiplier,
                p.clip_norm,
                p.expected_sites,
                p.rounds,
                p.ledger_releases,
                p.sampling,
                p.epsilon_budget
            );
        }
        if let Some(r) = open {
            let updates = state.updates(&job.id, r.round)?;
            let names: Vec<&str> = updates.iter().map(|u| u.site.as_str()).collect();
            println!(
                "    {}round {} open since {}: {} update(s) [{}], deadline {} (in {} s){}",
                if job.spec.is_evaluation_round(r.round) {
                    "evaluation "
                } else {
                    ""
                },
                r.round,
                utc(r.opened_at),
                updates.len(),
                names.join(", "),
                utc(r.deadline),
                (r.deadline - crate::state::now()).max(0),
                r.note
                    .as_ref()
                    .map_or(String::new(), |n| format!("  ({n})"))
            );
        }
    }
    println!();
    site_states(state)
}

/// Each site with what its agent last said it was doing, how long ago, and
/// when its certificate runs out.
fn site_states(state: &State) -> anyhow::Result<()> {
    let sites = state.sites()?;
    let beats = state.heartbeats()?;
    let rounds = state.rounds_per_site()?;
    if sites.is_empty() {
        println!("no sites (enrol one with `aggregator site add`)");
    }
    for s in sites {
        let beat = beats.get(&s.name);
        println!(
            "{}  {}  {}",
            s.name,
            s.status,
            beat.map_or(
                "no heartbeat yet (never connected, or an agent that sends none)".into(),
                |b| { b.beat.activity.describe() }
            )
        );
        if let Some(b) = beat {
            println!(
                "    agent {} on {}, heartbeat {}",
                b.beat.agent_version,
                b.beat.device,
                when(Some(b.at))
            );
        }
        println!(
            "    last contact {}, rounds taken part in {}, certificate expires {}",
            when(s.last_contact),
            rounds.get(&s.name).copied().unwrap_or(0),
            expiry(s.not_after)
        );
    }
    Ok(())
}

pub fn audit(state: &State, limit: usize, json: bool) -> anyhow::Result<()> {
    let rows = state.audit_log(limit)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    for r in rows {
        println!("{}", audit_line(&r));
    }
    Ok(())
}

/// One audit row as `aggregator audit` prints it.
fn audit_line(r: &crate::state::AuditRow) -> String {
    format!(
        "{:>6} {} {:<18} {:<12} {}{}",
        r.id,
        utc(r.at),
        r.event,
        // Rows written before details were escaped on the way in
        // (security review L3) are shown escaped all the same.
        fedslice::text::escape_controls(r.site.as_deref().unwrap_or("-")),
        fedslice::text::escape_controls(&r.detail),
        if r.count > 1 {
            format!(" [x{}]", r.count)
        } else {
            String::new()
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_audit_row_prints_as_one_line_whatever_its_detail_holds() {
        // As an older version stored it: raw, with a terminal escape and a
        // forged second line (the review's L3 reproduction).
        let row = crate::state::AuditRow {
            id: 7,
            at: 1_780_000_000,
            event: "request_refused".into(),
            site: Some("site-a".into()),
            detail: "unknown job job-1\u{1b}[31mRED\u{1b}[0m\n2026 FAKE site_revoked site-b".into(),
            count: 3,
        };
        let line = audit_line(&row);
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert!(
            line.contains("job-1\\u{1b}[31mRED") && line.contains("\\n2026 FAKE"),
            "{line}"
        );
        assert!(line.ends_with(" [x3]"), "{line}");
    }
}
