//! The operator's hand on jobs: list, cancel, pause, resume.
//!
//! A pause is a row in `meta` (`pause:JOB` = when), not a job status: the
//! status column's CHECK constraint predates it, and a paused job is still
//! running or pending, just held. A cancel ends the job as `failed` with the
//! reason, in one transaction with closing its open round, so a crash leaves
//! the job either running with its round open or cancelled with it closed;
//! updates that arrive later are refused with that reason, and the agents
//! drop their work for the round.

use rusqlite::{OptionalExtension, params};

use crate::state::{JobRow, State, StateError, now};

const PAUSE_PREFIX: &str = "pause:";
/// How a cancelled job's error starts; `job list` shows such a job as cancelled.
pub const CANCELLED: &str = "cancelled by the operator";

fn pause_key(job: &str) -> String {
    format!("{PAUSE_PREFIX}{job}")
}

/// A job as `job list` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct JobListing {
    #[serde(flatten)]
    pub job: JobRow,
    /// pending, running, paused, finished, cancelled or failed.
    pub state: String,
    pub rounds_closed: u32,
    pub paused_at: Option<i64>,
}

impl State {
    /// When `job` was paused, if it is.
    pub fn paused_at(&self, job: &str) -> Result<Option<i64>, StateError> {
        Ok(self
            .meta(&pause_key(job))?
            .and_then(|at| at.parse::<i64>().ok()))
    }

    fn open_job(&self, id: &str) -> Result<JobRow, StateError> {
        let job = self.job(id)?.ok_or_else(|| {
            StateError::Invalid(format!("no job `{id}` (see `aggregator job list`)"))
        })?;
        if job.status != "pending" && job.status != "running" {
            return Err(StateError::Invalid(format!(
                "{id} is already {}",
                job.status
            )));
        }
        Ok(job)
    }

    /// Holds a pending or running job: no work is handed out for it, its open
    /// round neither closes nor runs out of time, and no later job starts
    /// while a running job is held (jobs run one at a time, in order).
    pub fn pause_job(&self, id: &str) -> Result<(), StateError> {
        self.open_job(id)?;
        if self.paused_at(id)?.is_some() {
            return Err(StateError::Invalid(format!("{id} is already paused")));
        }
        self.set_meta(&pause_key(id), &now().to_string())?;
        self.audit("job_paused", None, &format!("{id}: paused by the operator"))
    }

    /// Lets a paused job go on; its open round gets back the time it had left.
    pub fn resume_job(&mut self, id: &str) -> Result<(), StateError> {
        self.open_job(id)?;
        let Some(paused_at) = self.paused_at(id)? else {
            return Err(StateError::Invalid(format!("{id} is not paused")));
        };
        let held = (now() - paused_at).max(0);
        let tx = self.conn.transaction()?;
        tx.execute(
            "UPDATE rounds SET deadline = deadline + ?2 WHERE job = ?1 AND status = 'open'",
            params![id, held],
        )?;
        tx.execute("DELETE FROM meta WHERE key = ?1", params![pause_key(id)])?;
        tx.execute(
            "INSERT INTO audit (at, event, site, detail) VALUES (?1, 'job_resumed', NULL, ?2)",
            params![
                now(),
                format!("{id}: resumed after {held} s; its open round's deadline moved as much")
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Ends a pending or running job for good. Its open round closes without
    /// a result (the last published model stays the job's model), and the
    /// updates it held are kept for the record but never aggregated.
    pub fn cancel_job(&mut self, id: &str, reason: &str) -> Result<(), StateError> {
        self.open_job(id)?;
        let error = if reason.is_empty() {
            CANCELLED.to_string()
        } else {
            format!("{CANCELLED}: {reason}")
        };
        let tx = self.conn.transaction()?;
        let t = now();
        let changed = tx.execute(
            "UPDATE jobs SET status = 'failed', finished_at = ?2, error = ?3
             WHERE id = ?1 AND status IN ('pending', 'running')",
            params![id, t, error],
        )?;
        if changed == 0 {
            return Err(StateError::Invalid(format!("{id} ended meanwhile")));
        }
        let open: Option<u32> = tx
            .query_row(
                "SELECT round FROM rounds WHERE job = ?1 AND status = 'open'",
                params![id],
                |r| r.get(0),
            )
            .optional()?;
        tx.execute(
            "UPDATE rounds SET status = 'closed', closed_at = ?2, note = ?3
             WHERE job = ?1 AND status = 'open'",
            params![
                id,
                t,
                format!("job {error}; this round's updates were not aggregated")
            ],
        )?;
        tx.execute("DELETE FROM meta WHERE key = ?1", params![pause_key(id)])?;
        let detail = match open {
            Some(round) => format!("{id}: {error}; round {round} closed without a result"),
            None => format!("{id}: {error}"),
        };
        tx.execute(
            "INSERT INTO audit (at, event, site, detail) VALUES (?1, 'job_cancelled', NULL, ?2)",
            params![t, detail],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Every job, oldest first, with what an operator needs to pick one.
    pub fn job_listing(&self) -> Result<Vec<JobListing>, StateError> {
        let mut listing = Vec::new();
        for job in self.jobs()? {
            let paused_at = self.paused_at(&job.id)?;
            let rounds_closed = self
                .rounds(&job.id)?
                .iter()
                .filter(|r| r.status == "closed" && r.result_digest.is_some())
                .count() as u32;
            let state = match (job.status.as_str(), paused_at) {
                ("pending" | "running", Some(_)) => "paused".to_string(),
                ("failed", _)
                    if job
                        .error
                        .as_deref()
                        .is_some_and(|e| e.starts_with(CANCELLED)) =>
                {
                    "cancelled".to_string()
                }
                (status, _) => status.to_string(),
            };
            listing.push(JobListing {
                job,
                state,
                rounds_closed,
                paused_at,
            });
        }
        Ok(listing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedslice::protocol::Phase;

    fn state() -> (tempfile::TempDir, State) {
        let dir = tempfile::tempdir().expect("temp dir");
        let state = State::open(&dir.path().join("db")).expect("state");
        (dir, state)
    }

    fn job(state: &State) -> String {
        let spec = fedslice::federated::job_spec(&fedslice::federated::JobOptions {
            phase: Phase::Pretrain,
            preset: "test".into(),
            pooling: Default::default(),
            slice_embedding: Default::default(),
            rounds: 3,
            min_sites: 1,
            local_epochs: 1,
            round_timeout_s: 600,
            init_from: None,
            dtype: fedslice::wire::Dtype::F32,
            aggregation: fedslice::protocol::Aggregation::Fedavg,
            server_optimizer: fedslice::aggregate::ServerOptimizer::Sgd { lr: 1.0 },
            clip_update_norm: None,
            fedprox_mu: 0.0,
            seed: 0,
        })
        .expect("spec");
        state.create_job(&spec).expect("job")
    }

    #[test]
    fn cancelling_a_running_job_closes_its_round_without_a_result() {
        let (_dir, mut state) = state();
        let id = job(&state);
        state
            .start_job(&id, &"a".repeat(64), now() + 600)
            .expect("start");
        state.cancel_job(&id, "wrong preset").expect("cancel");
        let listing = state.job_listing().expect("listing");
        assert_eq!(listing[0].state, "cancelled");
        assert_eq!(listing[0].rounds_closed, 0);
        assert!(state.running_job().expect("running").is_none());
        assert!(state.open_round(&id).expect("round").is_none());
        let round = state.round(&id, 1).expect("round 1").expect("exists");
        assert_eq!(round.status, "closed");
        assert_eq!(round.result_digest, None);
        assert_eq!(
            state
                .job(&id)
                .expect("job")
                .expect("exists")
                .error
                .as_deref(),
            Some("cancelled by the operator: wrong preset")
        );
        // The model the job had stays its model.
        assert_eq!(
            state.job(&id).expect("job").expect("exists").model_version,
            Some(0)
        );
        let err = state.cancel_job(&id, "").unwrap_err();
        assert!(err.to_string().contains("already failed"), "{err}");
    }

    #[test]
    fn a_resumed_round_gets_back_the_time_it_had_left() {
        let (_dir, mut state) = state();
        let id = job(&state);
        let deadline = now() + 600;
        state
            .start_job(&id, &"a".repeat(64), deadline)
            .expect("start");
        state.pause_job(&id).expect("pause");
        assert_eq!(state.job_listing().expect("listing")[0].state, "paused");
        assert!(state.pause_job(&id).is_err(), "paused twice");
        // As if the pause had lasted 100 s.
        state
            .set_meta(&pause_key(&id), &(now() - 100).to_string())
            .expect("backdate");
        state.resume_job(&id).expect("resume");
        let round = state.open_round(&id).expect("round").expect("open");
        assert!(
            (deadline + 100..=deadline + 160).contains(&round.deadline),
            "{} vs {deadline}",
            round.deadline
        );
        assert_eq!(state.paused_at(&id).expect("paused"), None);
        assert!(state.resume_job(&id).is_err(), "resumed twice");
    }
}
