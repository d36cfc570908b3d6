//! Retention: `aggregator prune` and the blob garbage collector, and the
//! sizes `status` shows. Without it a state folder only grows (102 MB after
//! three toy jobs; tens of GB per job at vit-small scale).
//!
//! What must stay is decided by the database alone ([`live_blobs`]): every
//! model version still listed, each job's current model and optimizer state,
//! each open round's base model, and every update whose blob was not dropped.
//! Closed rounds keep the digests they recorded as history, but not their blobs.
//!
//! While `aggregator serve` runs, a blob is written before the row that
//! refers to it, so the collector then spares blobs younger than
//! [`GRACE_WHILE_SERVING`] (the store refreshes a blob's time when it takes an
//! existing one into use again); with the service stopped nothing is in flight.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use rusqlite::{Connection, params};

use crate::blobs::BlobStore;
use crate::engine::StatePaths;
use crate::state::{State, now};

pub const GRACE_WHILE_SERVING: Duration = Duration::from_secs(3600);

/// Every blob digest the database still needs.
pub fn live_blobs(conn: &Connection) -> rusqlite::Result<BTreeSet<String>> {
    let mut digests = BTreeSet::new();
    for sql in [
        "SELECT digest FROM models",
        "SELECT model_digest FROM jobs WHERE model_digest IS NOT NULL",
        "SELECT optimizer_state FROM jobs WHERE optimizer_state IS NOT NULL",
        "SELECT base_digest FROM rounds WHERE status = 'open'",
        "SELECT digest FROM updates WHERE pruned_at IS NULL",
    ] {
        let mut stmt = conn.prepare(sql)?;
        for digest in stmt.query_map([], |r| r.get::<_, String>(0))? {
            digests.insert(digest?);
        }
    }
    Ok(digests)
}

/// How much room a state folder takes.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Storage {
    /// The database with its write-ahead log.
    pub database_bytes: u64,
    pub blobs: usize,
    pub blob_bytes: u64,
}

pub fn storage(paths: &StatePaths) -> anyhow::Result<Storage> {
    let db = paths.db();
    let mut database_bytes = 0;
    for suffix in ["", "-wal"] {
        let path = std::path::PathBuf::from(format!("{}{suffix}", db.display()));
        match std::fs::metadata(&path) {
            Ok(meta) => database_bytes += meta.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
    let blobs = BlobStore::open(&paths.blobs())?.list()?;
    Ok(Storage {
        database_bytes,
        blobs: blobs.len(),
        blob_bytes: blobs.iter().map(|b| b.bytes).sum(),
    })
}

pub struct PruneOptions {
    /// Model versions kept per job, newest first (at least 1).
    pub keep_models: u32,
    /// Drop the update blobs of rounds closed at least this long ago.
    pub drop_updates_after: Option<Duration>,
}

/// What [`prune`] did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Pruned {
    pub models_dropped: usize,
    pub updates_dropped: usize,
    pub blobs_removed: usize,
    pub bytes_freed: u64,
    /// Unreferenced blobs spared because the service may still be about to use them.
    pub blobs_spared: usize,
    pub after: Storage,
}

/// Drops old model versions and old rounds' updates from the database (one
/// transaction), then removes the blobs nothing needs any more.
pub fn prune(dir: &Path, options: &PruneOptions) -> anyhow::Result<Pruned> {
    anyhow::ensure!(
        options.keep_models >= 1,
        "--keep-models must be at least 1: a job's latest model is always kept"
    );
    let paths = StatePaths::new(dir);
    let mut state = crate::cli::open_state(dir)?;
    let t = now();
    let tx = state.conn.transaction()?;
    // Never a job's current model (sites and `export` fetch it, a finetune
    // job starts from it) nor an open round's base (its sites download it).
    let models_dropped = tx.execute(
        "DELETE FROM models WHERE rowid IN (
             SELECT rowid FROM (
                 SELECT rowid, digest,
                        ROW_NUMBER() OVER (PARTITION BY job ORDER BY version DESC) AS newest
                 FROM models)
             WHERE newest > ?1
               AND digest NOT IN (SELECT model_digest FROM jobs WHERE model_digest IS NOT NULL)
               AND digest NOT IN (SELECT base_digest FROM rounds WHERE status = 'open'))",
        params![options.keep_models],
    )?;
    let updates_dropped = match options.drop_updates_after {
        Some(age) => {
            let cutoff = t.saturating_sub(i64::try_from(age.as_secs()).unwrap_or(i64::MAX));
            tx.execute(
                "UPDATE updates SET pruned_at = ?1 WHERE pruned_at IS NULL AND EXISTS (
                     SELECT 1 FROM rounds r WHERE r.job = updates.job AND r.round = updates.round
                       AND r.status = 'closed' AND COALESCE(r.closed_at, 0) <= ?2)",
                params![t, cutoff],
            )?
        }
        None => 0,
    };
    tx.execute(
        "INSERT INTO audit (at, event, site, detail) VALUES (?1, 'pruned', NULL, ?2)",
        params![
            t,
            format!(
                "kept {} model version(s) per job: dropped {models_dropped}; dropped the blobs of \
                 {updates_dropped} update(s) of closed rounds",
                options.keep_models
            )
        ],
    )?;
    tx.commit()?;
    let service = crate::operator::probe(&paths)?;
    let grace = if service.running {
        GRACE_WHILE_SERVING
    } else {
        Duration::ZERO
    };
    let collected = collect(&state, &paths, grace)?;
    Ok(Pruned {
        models_dropped,
        updates_dropped,
        blobs_removed: collected.removed,
        bytes_freed: collected.bytes,
        blobs_spared: collected.spared,
        after: storage(&paths)?,
    })
}

struct Collected {
    removed: usize,
    bytes: u64,
    spared: usize,
}

/// Removes every blob the database does not need and every unfinished write
/// that is at least `grace` old.
fn collect(state: &State, paths: &StatePaths, grace: Duration) -> anyhow::Result<Collected> {
    let store = BlobStore::open(&paths.blobs())?;
    // Listed before the database is read: a blob written after this listing
    // is not looked at, and one listed whose row comes later is young.
    let stored = store.list()?;
    let live = live_blobs(&state.conn)?;
    let old_enough = |modified: SystemTime| {
        SystemTime::now()
            .duration_since(modified)
            .is_ok_and(|age| age >= grace)
    };
    let mut collected = Collected {
        removed: 0,
        bytes: 0,
        spared: 0,
    };
    for blob in stored.iter().filter(|b| !live.contains(&b.digest)) {
        if !old_enough(blob.modified) {
            collected.spared += 1;
            continue;
        }
        match std::fs::remove_file(&blob.path) {
            Ok(()) => {
                collected.removed += 1;
                collected.bytes += blob.bytes;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", blob.path.display())),
        }
    }
    let tmp = store.tmp_dir();
    for entry in std::fs::read_dir(&tmp).with_context(|| format!("listing {}", tmp.display()))? {
        let entry = entry.with_context(|| format!("listing {}", tmp.display()))?;
        let meta = entry
            .metadata()
            .with_context(|| format!("reading {}", entry.path().display()))?;
        if meta.is_file() && meta.modified().is_ok_and(old_enough) {
            std::fs::remove_file(entry.path())
                .with_context(|| format!("removing {}", entry.path().display()))?;
            collected.removed += 1;
            collected.bytes += meta.len();
        }
    }
    Ok(collected)
}

/// `aggregator prune`.
pub fn run_prune(dir: &Path, args: &crate::cli::PruneArgs) -> anyhow::Result<()> {
    let pruned = prune(
        dir,
        &PruneOptions {
            keep_models: args.keep_models,
            drop_updates_after: args
                .drop_updates_after
                .map(|days| Duration::from_secs(days.saturating_mul(86_400))),
        },
    )?;
    tracing::info!(
        models = pruned.models_dropped,
        updates = pruned.updates_dropped,
        files = pruned.blobs_removed,
        bytes = pruned.bytes_freed,
        "pruned"
    );
    if args.json {
        println!("{}", serde_json::to_string_pretty(&pruned)?);
        return Ok(());
    }
    println!(
        "dropped {} model version(s) (kept the newest {} per job) and the blobs of {} site update(s)",
        pruned.models_dropped, args.keep_models, pruned.updates_dropped
    );
    println!(
        "removed {} file(s), freed {}",
        pruned.blobs_removed,
        human_bytes(pruned.bytes_freed)
    );
    if pruned.blobs_spared > 0 {
        println!(
            "spared {} unreferenced blob(s) younger than {} min: the service is running and may \
             be about to use them; prune again later",
            pruned.blobs_spared,
            GRACE_WHILE_SERVING.as_secs() / 60
        );
    }
    println!("now: {}", describe(&pruned.after));
    Ok(())
}

/// "database 96.0 KiB, 14 blobs 2.3 MiB".
pub fn describe(storage: &Storage) -> String {
    format!(
        "database {}, {} blob(s) {}",
        human_bytes(storage.database_bytes),
        storage.blobs,
        human_bytes(storage.blob_bytes)
    )
}

/// Bytes for people: "1.5 MiB".
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state with two jobs: job-1 finished with models v0..v3; job-2
    /// running with models v0..v2, whose open round 3 (made to start from v1,
    /// to tell "open round's base" from "newest") has an update. Returns the
    /// store and each model's and update's digest by name.
    fn state_with_history(dir: &Path) -> (BlobStore, std::collections::HashMap<String, String>) {
        let paths = StatePaths::new(dir);
        let state = State::open(&paths.db()).unwrap();
        let store = BlobStore::open(&paths.blobs()).unwrap();
        let mut digest = std::collections::HashMap::new();
        let put = |digest: &mut std::collections::HashMap<String, String>, name: &str| {
            let d = store.put(name.as_bytes()).unwrap();
            digest.insert(name.to_string(), d.clone());
            d
        };
        let t = now();
        let old = t - 10 * 86_400;
        for (job, seq, versions, status) in
            [("job-1", 1, 3, "finished"), ("job-2", 2, 2, "running")]
        {
            let current = put(&mut digest, &format!("{job} v{versions}"));
            state
                .conn
                .execute(
                    "INSERT INTO jobs (id, seq, spec, status, created_at, model_version, model_digest)
                     VALUES (?1, ?2, '{}', ?3, ?4, ?5, ?6)",
                    params![job, seq, status, old, versions, current],
                )
                .unwrap();
            for v in 0..=versions {
                let d = put(&mut digest, &format!("{job} v{v}"));
                state
                    .conn
                    .execute(
                        "INSERT INTO models (job, version, digest, created_at) VALUES (?1, ?2, ?3, ?4)",
                        params![job, v, d, old],
                    )
                    .unwrap();
            }
            for round in 1..=versions {
                let base = digest[&format!("{job} v{}", round - 1)].clone();
                let result = digest[&format!("{job} v{round}")].clone();
                // job-1's rounds closed 10 days ago, job-2's an hour ago.
                let closed_at = if job == "job-1" { old } else { t - 3600 };
                state
                    .conn
                    .execute(
                        "INSERT INTO rounds (job, round, status, base_digest, opened_at, deadline, closed_at, result_digest)
                         VALUES (?1, ?2, 'closed', ?3, ?4, ?4, ?5, ?6)",
                        params![job, round, base, old, closed_at, result],
                    )
                    .unwrap();
                let u = put(&mut digest, &format!("{job} r{round} update"));
                state
                    .conn
                    .execute(
                        "INSERT INTO updates (job, round, site, digest, samples, bytes, metrics, received_at)
                         VALUES (?1, ?2, 'site-00', ?3, 1, 1, '{}', ?4)",
                        params![job, round, u, old],
                    )
                    .unwrap();
            }
        }
        let base = digest["job-2 v1"].clone();
        state
            .conn
            .execute(
                "INSERT INTO rounds (job, round, status, base_digest, opened_at, deadline)
                 VALUES ('job-2', 3, 'open', ?1, ?2, ?2)",
                params![base, t],
            )
            .unwrap();
        let u = put(&mut digest, "job-2 r3 update");
        state
            .conn
            .execute(
                "INSERT INTO updates (job, round, site, digest, samples, bytes, metrics, received_at)
                 VALUES ('job-2', 3, 'site-00', ?1, 1, 1, '{}', ?2)",
                params![u, t],
            )
            .unwrap();
        // Written by a round that crashed before its row: nothing refers to it.
        put(&mut digest, "orphan");
        (store, digest)
    }

    #[test]
    fn prune_keeps_the_newest_the_current_and_what_open_rounds_need() {
        let dir = tempfile::tempdir().unwrap();
        let (store, digest) = state_with_history(dir.path());
        let pruned = prune(
            dir.path(),
            &PruneOptions {
                keep_models: 1,
                drop_updates_after: Some(Duration::from_secs(86_400)),
            },
        )
        .unwrap();
        let kept = |name: &str| store.contains(&digest[name]);
        // job-1: v3 only. job-2: v2 (newest, current) and v1 (the open round's base).
        for name in ["job-1 v3", "job-2 v2", "job-2 v1"] {
            assert!(kept(name), "{name} was removed");
        }
        for name in ["job-1 v0", "job-1 v1", "job-1 v2", "job-2 v0", "orphan"] {
            assert!(!kept(name), "{name} was kept");
        }
        // Updates: job-1's rounds closed 10 days ago go; job-2's closed an
        // hour ago stay, and so does its open round's.
        for round in 1..=3 {
            assert!(!kept(&format!("job-1 r{round} update")));
        }
        for round in 1..=3 {
            assert!(kept(&format!("job-2 r{round} update")));
        }
        assert_eq!(pruned.models_dropped, 4);
        assert_eq!(pruned.updates_dropped, 3);
        assert_eq!(pruned.blobs_removed, 8);
        assert_eq!(pruned.after.blobs, 6);
        assert_eq!(pruned.blobs_spared, 0);
        // The update rows stay, marked, for the reports they carry.
        let state = State::open(&StatePaths::new(dir.path()).db()).unwrap();
        let marked: i64 = state
            .conn
            .query_row(
                "SELECT COUNT(*) FROM updates WHERE pruned_at IS NOT NULL",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(marked, 3);
        assert_eq!(
            state
                .conn
                .query_row("SELECT COUNT(*) FROM updates", [], |r| r.get::<_, i64>(0))
                .unwrap(),
            6
        );
    }

    #[test]
    fn keep_models_zero_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        state_with_history(dir.path());
        let refused = prune(
            dir.path(),
            &PruneOptions {
                keep_models: 0,
                drop_updates_after: None,
            },
        );
        assert!(refused.is_err());
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(102 * 1024 * 1024), "102.0 MiB");
    }
}
