//! The consortium's privacy ledger: one row per noised release (a DP round's
//! published model), composed by the accountant into the ε of everything the
//! consortium has released about its sites. Pretraining and fine-tuning jobs
//! share it: a fine-tuned model carries the pretrained encoder it started from.
//!
//! A release is recorded *before* its model is published and keyed by (job,
//! round), so a crash in between, or a round re-aggregated because an update
//! arrived meanwhile, can only over-count (a noised model that nobody could
//! fetch), never publish a model the ledger does not hold.

use fedslice::privacy::accountant::{self, Release, Spent};
use fedslice::privacy::{DpConfig, PrivacyReport};
use rusqlite::params;

use crate::state::{JobRow, State, StateError, now};

/// Part of schema version 1 (crate::schema): a later change is a new step
/// there, since databases already past version 1 never run this text again.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS dp_releases (
    job TEXT NOT NULL,
    round INTEGER NOT NULL,
    noise_multiplier REAL NOT NULL,
    sampling_rate REAL NOT NULL,
    clip_norm REAL NOT NULL,
    expected_sites INTEGER NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (job, round)
);
";

/// Records round `round` of `job` as released with `dp`'s mechanism (idempotent).
pub fn record(state: &State, job: &str, round: u32, dp: &DpConfig) -> Result<(), StateError> {
    state.conn().execute(
        "INSERT OR IGNORE INTO dp_releases
         (job, round, noise_multiplier, sampling_rate, clip_norm, expected_sites, at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            job,
            round,
            dp.noise_multiplier,
            dp.sampling_rate,
            dp.clip_norm,
            dp.expected_sites,
            now()
        ],
    )?;
    Ok(())
}

/// Every release so far, grouped by mechanism, optionally only `job`'s.
pub fn releases(state: &State, job: Option<&str>) -> Result<Vec<Release>, StateError> {
    let mut stmt = state.conn().prepare(
        "SELECT noise_multiplier, sampling_rate, COUNT(*) FROM dp_releases
         WHERE ?1 IS NULL OR job = ?1
         GROUP BY noise_multiplier, sampling_rate ORDER BY noise_multiplier, sampling_rate",
    )?;
    let rows = stmt.query_map([job], |r| {
        Ok(Release {
            z: r.get(0)?,
            q: r.get(1)?,
            count: r.get::<_, i64>(2)?.max(0) as u64,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn count(releases: &[Release]) -> u64 {
    releases.iter().map(|r| r.count).sum()
}

/// Why the next round of `job` must not run, if its release would take the
/// consortium's ε past the job's budget.
pub fn refuse_next(state: &State, job: &JobRow, round: u32) -> anyhow::Result<Option<String>> {
    let Some(dp) = &job.spec.dp else {
        return Ok(None);
    };
    let earlier = releases(state, None)?;
    let after = dp.epsilon_after(&earlier, 1)?;
    if after.epsilon <= dp.epsilon_budget {
        return Ok(None);
    }
    let before = if earlier.is_empty() {
        0.0
    } else {
        accountant::epsilon(&earlier, dp.delta)?.epsilon
    };
    Ok(Some(format!(
        "{} round {round} not run: its release would take the consortium's epsilon from {before:.4} \
         to {:.4} (delta {:e}), past the job's budget {}",
        job.id, after.epsilon, dp.delta, dp.epsilon_budget
    )))
}

/// The consortium's ε so far at `delta` (`None` before any noised release).
pub fn spent(state: &State, delta: f64) -> anyhow::Result<Option<(Spent, u64)>> {
    let all = releases(state, None)?;
    if all.is_empty() {
        return Ok(None);
    }
    Ok(Some((accountant::epsilon(&all, delta)?, count(&all))))
}

/// The privacy statement of `job`'s current model: the consortium's ε up to
/// now. `None` for a job without DP.
pub fn report(state: &State, job: &JobRow) -> anyhow::Result<Option<PrivacyReport>> {
    let Some(dp) = &job.spec.dp else {
        return Ok(None);
    };
    let all = releases(state, None)?;
    let own = count(&releases(state, Some(&job.id))?);
    let spent = if all.is_empty() {
        Spent {
            epsilon: 0.0,
            delta: dp.delta,
            accountant: accountant::GDP_NAME.into(),
            order: None,
            mu: Some(0.0),
        }
    } else {
        accountant::epsilon(&all, dp.delta)?
    };
    Ok(Some(PrivacyReport::new(dp, &spent, own, count(&all))))
}
