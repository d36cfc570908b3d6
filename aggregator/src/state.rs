//! The aggregator's durable state: sites, jobs, rounds, received updates,
//! model versions and the audit log, in one SQLite database (WAL, full sync).
//!
//! Every state change that spans tables is one transaction, so a crash leaves
//! the database either before or after it. Blobs live beside it in
//! [`crate::blobs::BlobStore`]; a row refers to a blob only after the blob is durable.

use std::collections::HashMap;
use std::path::Path;

use fedslice::protocol::{Heartbeat, JobSpec};
use rusqlite::{Connection, OptionalExtension, params};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("state database: stored job spec is unreadable: {0}")]
    Spec(#[from] serde_json::Error),
    #[error("{0}")]
    Invalid(String),
    #[error(
        "the state database has schema version {found}, but this aggregator knows only up to \
         {supported}: a newer aggregator wrote it; run that version or a later one (there is \
         no downgrade)"
    )]
    NewerSchema { found: u32, supported: u32 },
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The tables as schema version 1 has them; later versions change them by
/// steps (crate::schema), so this text stays as it is.
pub(crate) const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sites (
    name TEXT PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('active', 'revoked')),
    fingerprint TEXT NOT NULL,
    serial TEXT NOT NULL,
    not_after INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER,
    last_contact INTEGER
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL UNIQUE,
    spec TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'finished', 'failed')),
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    model_version INTEGER,
    model_digest TEXT,
    optimizer_state TEXT,
    error TEXT
);
CREATE TABLE IF NOT EXISTS models (
    job TEXT NOT NULL REFERENCES jobs(id),
    version INTEGER NOT NULL,
    digest TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (job, version)
);
CREATE INDEX IF NOT EXISTS models_digest ON models(digest);
CREATE TABLE IF NOT EXISTS rounds (
    job TEXT NOT NULL REFERENCES jobs(id),
    round INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('open', 'closed')),
    base_digest TEXT NOT NULL,
    opened_at INTEGER NOT NULL,
    deadline INTEGER NOT NULL,
    closed_at INTEGER,
    result_digest TEXT,
    note TEXT,
    PRIMARY KEY (job, round)
);
CREATE TABLE IF NOT EXISTS updates (
    job TEXT NOT NULL,
    round INTEGER NOT NULL,
    site TEXT NOT NULL,
    digest TEXT NOT NULL,
    samples INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    metrics TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (job, round, site),
    FOREIGN KEY (job, round) REFERENCES rounds(job, round)
);
-- The last heartbeat (issue 15) of each site, as validated JSON.
CREATE TABLE IF NOT EXISTS heartbeats (
    site TEXT PRIMARY KEY,
    at INTEGER NOT NULL,
    heartbeat TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    event TEXT NOT NULL,
    site TEXT,
    detail TEXT NOT NULL
);
";

#[derive(Debug, Clone, serde::Serialize)]
pub struct SiteRow {
    pub name: String,
    pub status: String,
    pub fingerprint: String,
    pub serial: String,
    pub not_after: i64,
    pub created_at: i64,
    pub last_contact: Option<i64>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelRow {
    pub job: String,
    pub version: u32,
    pub digest: String,
    pub created_at: i64,
}

/// A site's last heartbeat and when the aggregator received it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SiteHeartbeat {
    pub at: i64,
    #[serde(flatten)]
    pub beat: Heartbeat,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct JobRow {
    pub id: String,
    pub spec: JobSpec,
    pub status: String,
    pub created_at: i64,
    pub model_version: Option<u32>,
    pub model_digest: Option<String>,
    pub optimizer_state: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RoundRow {
    pub job: String,
    pub round: u32,
    pub status: String,
    pub base_digest: String,
    pub opened_at: i64,
    pub deadline: i64,
    pub closed_at: Option<i64>,
    pub result_digest: Option<String>,
    pub note: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct UpdateRow {
    pub site: String,
    pub digest: String,
    pub samples: u64,
    pub bytes: u64,
    pub metrics: serde_json::Value,
    pub received_at: i64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct AuditRow {
    pub id: i64,
    pub at: i64,
    pub event: String,
    pub site: Option<String>,
    pub detail: String,
    /// Occurrences this row stands for (coalesced refusals); 1 otherwise.
    pub count: u64,
}

/// Outcome of recording an update for (job, round, site).
#[derive(Debug, Clone, PartialEq)]
pub enum Recorded {
    Inserted,
    /// The same bytes were already recorded: an idempotent retry.
    Duplicate,
    /// A different update was already recorded for this site and round.
    Conflict {
        existing: String,
    },
    /// The round closed between validation and recording: not counted.
    RoundClosed,
}

/// What closing a round leads to.
#[derive(Debug, Clone, PartialEq)]
pub enum AfterClose {
    NextRound {
        deadline: i64,
    },
    Finished,
    /// A finetune job's evaluation round closed: the job finishes with the
    /// model the round scored, and no new model version is made.
    Evaluated,
}

pub struct State {
    pub(crate) conn: Connection,
}

impl State {
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        // Before anything writes to it: a newer aggregator's database is left as it is.
        crate::schema::refuse_newer(crate::schema::version(&conn)?)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        crate::schema::migrate(&mut conn)?;
        Ok(Self { conn })
    }

    /// For the privacy ledger's own queries (`crate::ledger`).
    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>, StateError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StateError> {
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    pub fn audit(&self, event: &str, site: Option<&str>, detail: &str) -> Result<(), StateError> {
        self.audit_counted(event, site, detail, 1)
    }

    /// One audit row standing for `count` occurrences of the same event.
    pub fn audit_counted(
        &self,
        event: &str,
        site: Option<&str>,
        detail: &str,
        count: u64,
    ) -> Result<(), StateError> {
        // Details embed site-controlled text (a job name, say): bounded and
        // escaped here so no caller can forget (security review M4, L3).
        let detail = fedslice::text::bounded(detail, fedslice::text::MAX_DETAIL_CHARS);
        self.conn.execute(
            "INSERT INTO audit (at, event, site, detail, count) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                now(),
                event,
                site,
                detail,
                i64::try_from(count).unwrap_or(i64::MAX)
            ],
        )?;
        Ok(())
    }

    pub fn audit_log(&self, limit: usize) -> Result<Vec<AuditRow>, StateError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, at, event, site, detail, count FROM
               (SELECT * FROM audit ORDER BY id DESC LIMIT ?1) ORDER BY id",
        )?;
        let rows = stmt.query_map([limit as i64], |r| {
            Ok(AuditRow {
                id: r.get(0)?,
                at: r.get(1)?,
                event: r.get(2)?,
                site: r.get(3)?,
                detail: r.get(4)?,
                count: r.get::<_, i64>(5)?.max(1) as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    // ---- sites ----

    /// Registers `name` with its certificate; a revoked name may be re-enrolled
    /// with a new certificate, an active one may not be silently replaced.
    pub fn add_site(
        &self,
        name: &str,
        fingerprint: &str,
        serial: &str,
        not_after: i64,
    ) -> Result<(), StateError> {
        if let Some(site) = self.site(name)?
            && site.status == "active"
        {
            return Err(StateError::Invalid(format!(
                "site `{name}` is already enrolled; revoke it first to issue a new certificate"
            )));
        }
        self.conn.execute(
            "INSERT INTO sites (name, status, fingerprint, serial, not_after, created_at)
             VALUES (?1, 'active', ?2, ?3, ?4, ?5)
             ON CONFLICT(name) DO UPDATE SET status = 'active', fingerprint = excluded.fingerprint,
               serial = excluded.serial, not_after = excluded.not_after,
               created_at = excluded.created_at, revoked_at = NULL",
            params![name, fingerprint, serial, not_after, now()],
        )?;
        self.audit(
            "site_enrolled",
            Some(name),
            &format!("certificate serial {serial}"),
        )
    }

    pub fn revoke_site(&self, name: &str) -> Result<(), StateError> {
        let changed = self.conn.execute(
            "UPDATE sites SET status = 'revoked', revoked_at = ?2 WHERE name = ?1 AND status = 'active'",
            params![name, now()],
        )?;
        if changed == 0 {
            return Err(StateError::Invalid(format!(
                "no active site named `{name}` (see `aggregator site list`)"
            )));
        }
        self.audit("site_revoked", Some(name), "certificate no longer accepted")
    }

    fn site_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SiteRow> {
        Ok(SiteRow {
            name: r.get(0)?,
            status: r.get(1)?,
            fingerprint: r.get(2)?,
            serial: r.get(3)?,
            not_after: r.get(4)?,
            created_at: r.get(5)?,
            last_contact: r.get(6)?,
        })
    }

    pub fn site(&self, name: &str) -> Result<Option<SiteRow>, StateError> {
        Ok(self
            .conn
            .query_row(
                "SELECT name, status, fingerprint, serial, not_after, created_at, last_contact
                 FROM sites WHERE name = ?1",
                [name],
                Self::site_from_row,
            )
            .optional()?)
    }

    pub fn sites(&self) -> Result<Vec<SiteRow>, StateError> {
        let mut stmt = self.conn.prepare(
            "SELECT name, status, fingerprint, serial, not_after, created_at, last_contact
             FROM sites ORDER BY name",
        )?;
        let rows = stmt.query_map([], Self::site_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn active_sites(&self) -> Result<u32, StateError> {
        Ok(self.conn.query_row(
            "SELECT COUNT(*) FROM sites WHERE status = 'active'",
            [],
            |r| r.get(0),
        )?)
    }

    pub fn touch_site(&self, name: &str) -> Result<(), StateError> {
        self.conn.execute(
            "UPDATE sites SET last_contact = ?2 WHERE name = ?1",
            params![name, now()],
        )?;
        Ok(())
    }

    /// Keeps `beat` as `site`'s last heartbeat.
    pub fn record_heartbeat(&self, site: &str, beat: &Heartbeat) -> Result<(), StateError> {
        self.conn.execute(
            "INSERT INTO heartbeats (site, at, heartbeat) VALUES (?1, ?2, ?3)
             ON CONFLICT(site) DO UPDATE SET at = excluded.at, heartbeat = excluded.heartbeat",
            params![site, now(), serde_json::to_string(beat)?],
        )?;
        Ok(())
    }

    /// Each site's last heartbeat and when it came. One that no longer
    /// reads (written by another version) is left out, not an error.
    pub fn heartbeats(&self) -> Result<HashMap<String, SiteHeartbeat>, StateError> {
        let mut stmt = self
            .conn
            .prepare("SELECT site, at, heartbeat FROM heartbeats")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut out = HashMap::new();
        for row in rows {
            let (site, at, text) = row?;
            if let Ok(beat) = serde_json::from_str(&text) {
                out.insert(site, SiteHeartbeat { at, beat });
            }
        }
        Ok(out)
    }

    /// Every model version: (job, version, digest, created_at), oldest first.
    pub fn models(&self) -> Result<Vec<ModelRow>, StateError> {
        let mut stmt = self.conn.prepare(
            "SELECT m.job, m.version, m.digest, m.created_at FROM models m
             JOIN jobs j ON j.id = m.job ORDER BY j.seq, m.version",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(ModelRow {
                job: r.get(0)?,
                version: r.get(1)?,
                digest: r.get(2)?,
                created_at: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// How many rounds each site has an update counted in.
    pub fn rounds_per_site(&self) -> Result<HashMap<String, u32>, StateError> {
        let mut stmt = self
            .conn
            .prepare("SELECT site, COUNT(*) FROM updates GROUP BY site")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    // ---- jobs ----

    pub fn create_job(&self, spec: &JobSpec) -> Result<String, StateError> {
        if let Some(from) = &spec.init_from {
            let job = self.job(from)?.ok_or_else(|| {
                StateError::Invalid(format!(
                    "--init-from: no job `{from}` (see `aggregator status`)"
                ))
            })?;
            if job.spec.phase != fedslice::protocol::Phase::Pretrain {
                return Err(StateError::Invalid(format!(
                    "--init-from: job `{from}` is a {} job; a finetune job starts from a pretrain job",
                    job.spec.phase
                )));
            }
            if job.status == "failed" {
                return Err(StateError::Invalid(format!(
                    "--init-from: job `{from}` failed"
                )));
            }
        }
        let seq: i64 =
            self.conn
                .query_row("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs", [], |r| {
                    r.get(0)
                })?;
        let id = format!("job-{seq}");
        self.conn.execute(
            "INSERT INTO jobs (id, seq, spec, status, created_at) VALUES (?1, ?2, ?3, 'pending', ?4)",
            params![id, seq, serde_json::to_string(spec)?, now()],
        )?;
        self.audit(
            "job_created",
            None,
            &format!(
                "{id}: {} {} rounds={} min_sites={}",
                spec.phase, spec.preset, spec.rounds, spec.min_sites
            ),
        )?;
        Ok(id)
    }

    fn jobs_where(&self, clause: &str, arg: &str) -> Result<Vec<JobRow>, StateError> {
        let sql = format!(
            "SELECT id, spec, status, created_at, model_version, model_digest, optimizer_state, error
             FROM jobs WHERE {clause} ORDER BY seq"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let mut rows = stmt.query([arg])?;
        let mut jobs = Vec::new();
        while let Some(r) = rows.next()? {
            let spec: String = r.get(1)?;
            jobs.push(JobRow {
                id: r.get(0)?,
                spec: serde_json::from_str(&spec)?,
                status: r.get(2)?,
                created_at: r.get(3)?,
                model_version: r.get(4)?,
                model_digest: r.get(5)?,
                optimizer_state: r.get(6)?,
                error: r.get(7)?,
            });
        }
        Ok(jobs)
    }

    pub fn job(&self, id: &str) -> Result<Option<JobRow>, StateError> {
        Ok(self.jobs_where("id = ?1", id)?.into_iter().next())
    }

    pub fn jobs(&self) -> Result<Vec<JobRow>, StateError> {
        self.jobs_where("?1 = ?1", "")
    }

    pub fn running_job(&self) -> Result<Option<JobRow>, StateError> {
        Ok(self
            .jobs_where("status = ?1", "running")?
            .into_iter()
            .next())
    }

    /// The oldest pending job the operator has not paused.
    pub fn next_pending_job(&self) -> Result<Option<JobRow>, StateError> {
        Ok(self
            .jobs_where(
                "status = ?1 AND NOT EXISTS (SELECT 1 FROM meta WHERE key = 'pause:' || jobs.id)",
                "pending",
            )?
            .into_iter()
            .next())
    }

    pub fn open_jobs(&self) -> Result<u32, StateError> {
        Ok(self.conn.query_row(
            "SELECT COUNT(*) FROM jobs WHERE status IN ('pending', 'running')",
            [],
            |r| r.get(0),
        )?)
    }

    /// Publishes version 0 and opens round 1, atomically.
    pub fn start_job(&mut self, id: &str, digest: &str, deadline: i64) -> Result<(), StateError> {
        let tx = self.conn.transaction()?;
        let t = now();
        tx.execute(
            "UPDATE jobs SET status = 'running', started_at = ?2, model_version = 0, model_digest = ?3
             WHERE id = ?1 AND status = 'pending'",
            params![id, t, digest],
        )?;
        tx.execute(
            "INSERT OR IGNORE INTO models (job, version, digest, created_at) VALUES (?1, 0, ?2, ?3)",
            params![id, digest, t],
        )?;
        tx.execute(
            "INSERT INTO rounds (job, round, status, base_digest, opened_at, deadline)
             VALUES (?1, 1, 'open', ?2, ?3, ?4)",
            params![id, digest, t, deadline],
        )?;
        tx.execute(
            "INSERT INTO audit (at, event, site, detail) VALUES (?1, 'job_started', NULL, ?2)",
            params![t, format!("{id}: model v0 {digest}; round 1 open")],
        )?;
        tx.commit()?;
        Ok(())
    }

    pub fn fail_job(&self, id: &str, error: &str) -> Result<(), StateError> {
        self.conn.execute(
            "UPDATE jobs SET status = 'failed', finished_at = ?2, error = ?3 WHERE id = ?1",
            params![id, now(), error],
        )?;
        self.audit("job_failed", None, &format!("{id}: {error}"))
    }

    // ---- rounds and updates ----

    fn round_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RoundRow> {
        Ok(RoundRow {
            job: r.get(0)?,
            round: r.get(1)?,
            status: r.get(2)?,
            base_digest: r.get(3)?,
            opened_at: r.get(4)?,
            deadline: r.get(5)?,
            closed_at: r.get(6)?,
            result_digest: r.get(7)?,
            note: r.get(8)?,
        })
    }

    const ROUND_COLUMNS: &str =
        "job, round, status, base_digest, opened_at, deadline, closed_at, result_digest, note";

    pub fn open_round(&self, job: &str) -> Result<Option<RoundRow>, StateError> {
        let sql = format!(
            "SELECT {} FROM rounds WHERE job = ?1 AND status = 'open'",
            Self::ROUND_COLUMNS
        );
        Ok(self
            .conn
            .query_row(&sql, [job], Self::round_from_row)
            .optional()?)
    }

    pub fn round(&self, job: &str, round: u32) -> Result<Option<RoundRow>, StateError> {
        let sql = format!(
            "SELECT {} FROM rounds WHERE job = ?1 AND round = ?2",
            Self::ROUND_COLUMNS
        );
        Ok(self
            .conn
            .query_row(&sql, params![job, round], Self::round_from_row)
            .optional()?)
    }

    pub fn rounds(&self, job: &str) -> Result<Vec<RoundRow>, StateError> {
        let sql = format!(
            "SELECT {} FROM rounds WHERE job = ?1 ORDER BY round",
            Self::ROUND_COLUMNS
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map([job], Self::round_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The round's updates, ordered by site name so aggregation is repeatable.
    pub fn updates(&self, job: &str, round: u32) -> Result<Vec<UpdateRow>, StateError> {
        let mut stmt = self.conn.prepare(
            "SELECT site, digest, samples, bytes, metrics, received_at FROM updates
             WHERE job = ?1 AND round = ?2 ORDER BY site",
        )?;
        let rows = stmt.query_map(params![job, round], |r| {
            let metrics: String = r.get(4)?;
            Ok(UpdateRow {
                site: r.get(0)?,
                digest: r.get(1)?,
                samples: r.get(2)?,
                bytes: r.get(3)?,
                metrics: serde_json::from_str(&metrics).unwrap_or(serde_json::Value::Null),
                received_at: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The digest of the update `site` sent for (job, round), if any.
    pub fn update_digest(
        &self,
        job: &str,
        round: u32,
        site: &str,
    ) -> Result<Option<String>, StateError> {
        Ok(self
            .conn
            .query_row(
                "SELECT digest FROM updates WHERE job = ?1 AND round = ?2 AND site = ?3",
                params![job, round, site],
                |r| r.get(0),
            )
            .optional()?)
    }

    pub fn has_update(&self, job: &str, round: u32, site: &str) -> Result<bool, StateError> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM updates WHERE job = ?1 AND round = ?2 AND site = ?3",
                params![job, round, site],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    #[allow(clippy::too_many_arguments)]
    pub fn record_update(
        &mut self,
        job: &str,
        round: u32,
        site: &str,
        digest: &str,
        samples: u64,
        bytes: u64,
        metrics: &serde_json::Value,
    ) -> Result<Recorded, StateError> {
        let tx = self.conn.transaction()?;
        let status: Option<String> = tx
            .query_row(
                "SELECT status FROM rounds WHERE job = ?1 AND round = ?2",
                params![job, round],
                |r| r.get(0),
            )
            .optional()?;
        if status.as_deref() != Some("open") {
            return Ok(Recorded::RoundClosed);
        }
        let existing: Option<String> = tx
            .query_row(
                "SELECT digest FROM updates WHERE job = ?1 AND round = ?2 AND site = ?3",
                params![job, round, site],
                |r| r.get(0),
            )
            .optional()?;
        let outcome = match existing {
            Some(d) if d == digest => Recorded::Duplicate,
            Some(existing) => Recorded::Conflict { existing },
            None => {
                let t = now();
                tx.execute(
                    "INSERT INTO updates (job, round, site, digest, samples, bytes, metrics, received_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![job, round, site, digest, samples, bytes, metrics.to_string(), t],
                )?;
                tx.execute(
                    "INSERT INTO audit (at, event, site, detail) VALUES (?1, 'update_accepted', ?2, ?3)",
                    params![
                        t,
                        site,
                        format!("{job} round {round}: {samples} samples, {bytes} bytes, {digest}")
                    ],
                )?;
                Recorded::Inserted
            }
        };
        tx.commit()?;
        Ok(outcome)
    }

    /// Publishes the round's result as the next model version and opens the
    /// next round (or finishes the job), atomically. `aggregated` is how many
    /// updates the result includes: if another arrived meanwhile, nothing is
    /// published (`Ok(false)`) and the caller aggregates again, so an
    /// acknowledged update is never left out.
    pub fn close_round(
        &mut self,
        round: &RoundRow,
        aggregated: usize,
        result_digest: &str,
        optimizer_state: Option<&str>,
        note: &str,
        after: &AfterClose,
    ) -> Result<bool, StateError> {
        let tx = self.conn.transaction()?;
        let t = now();
        let job = round.job.as_str();
        let recorded: i64 = tx.query_row(
            "SELECT COUNT(*) FROM updates WHERE job = ?1 AND round = ?2",
            params![job, round.round],
            |r| r.get(0),
        )?;
        if recorded as usize != aggregated {
            return Ok(false);
        }
        // Cancelled while the round was being aggregated: publish nothing.
        let running: bool = tx.query_row(
            "SELECT status = 'running' FROM jobs WHERE id = ?1",
            params![job],
            |r| r.get(0),
        )?;
        if !running {
            return Ok(false);
        }
        let changed = tx.execute(
            "UPDATE rounds SET status = 'closed', closed_at = ?3, result_digest = ?4, note = ?5
             WHERE job = ?1 AND round = ?2 AND status = 'open'",
            params![job, round.round, t, result_digest, note],
        )?;
        if changed == 0 {
            return Err(StateError::Invalid(format!(
                "{job} round {} is not open",
                round.round
            )));
        }
        let detail = if matches!(after, AfterClose::Evaluated) {
            format!(
                "{job} evaluation round {}: {note}; scored model {result_digest}",
                round.round
            )
        } else {
            tx.execute(
                "INSERT OR REPLACE INTO models (job, version, digest, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![job, round.round, result_digest, t],
            )?;
            tx.execute(
                "UPDATE jobs SET model_version = ?2, model_digest = ?3, optimizer_state = ?4 WHERE id = ?1",
                params![job, round.round, result_digest, optimizer_state],
            )?;
            format!(
                "{job} round {}: {note}; model v{} {result_digest}",
                round.round, round.round
            )
        };
        tx.execute(
            "INSERT INTO audit (at, event, site, detail) VALUES (?1, 'round_closed', NULL, ?2)",
            params![t, detail],
        )?;
        match after {
            AfterClose::NextRound { deadline } => {
                tx.execute(
                    "INSERT INTO rounds (job, round, status, base_digest, opened_at, deadline)
                     VALUES (?1, ?2, 'open', ?3, ?4, ?5)",
                    params![job, round.round + 1, result_digest, t, deadline],
                )?;
            }
            AfterClose::Finished | AfterClose::Evaluated => {
                tx.execute(
                    "UPDATE jobs SET status = 'finished', finished_at = ?2 WHERE id = ?1",
                    params![job, t],
                )?;
                let version: Option<i64> = tx.query_row(
                    "SELECT model_version FROM jobs WHERE id = ?1",
                    params![job],
                    |r| r.get(0),
                )?;
                let version = version.map_or("-".to_string(), |v| v.to_string());
                tx.execute(
                    "INSERT INTO audit (at, event, site, detail) VALUES (?1, 'job_finished', NULL, ?2)",
                    params![t, format!("{job}: final model v{version} {result_digest}")],
                )?;
            }
        }
        tx.commit()?;
        Ok(true)
    }

    pub fn set_round_note(&self, job: &str, round: u32, note: &str) -> Result<(), StateError> {
        self.conn.execute(
            "UPDATE rounds SET note = ?3 WHERE job = ?1 AND round = ?2",
            params![job, round, note],
        )?;
        Ok(())
    }

    /// Whether `digest` is a published global model (sites may download only these).
    pub fn is_model(&self, digest: &str) -> Result<bool, StateError> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM models WHERE digest = ?1 LIMIT 1",
                [digest],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }
}
