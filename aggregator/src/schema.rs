//! The state database's schema version (`PRAGMA user_version`) and the steps
//! that bring an older database up to it, run whenever the database is opened.
//!
//! Version 0 is a database made before versions were kept, or a new one: step
//! 1 creates whatever it lacks (every table is `CREATE TABLE IF NOT EXISTS`).
//! Each step runs in its own immediate transaction that also sets the
//! version, so a crash leaves the database at one version or the next, and
//! two processes opening it at once migrate it once. A database from a newer
//! aggregator is refused: this one cannot know what its columns mean.

use rusqlite::{Connection, Transaction, TransactionBehavior};

use crate::state::StateError;

/// The version this aggregator writes.
pub const CURRENT: u32 = 2;

type Step = fn(&Transaction<'_>) -> rusqlite::Result<()>;

/// `STEPS[v]` takes a database from version `v` to `v + 1`.
const STEPS: [Step; CURRENT as usize] = [to_1_tables, to_2_pruned_updates];

fn to_1_tables(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(crate::state::SCHEMA_V1)?;
    tx.execute_batch(crate::ledger::SCHEMA)?;
    // Coalesced refusals (security review M2) record how many attempts one
    // row stands for; databases from before that gain the column here.
    let has_count: bool = tx.query_row(
        "SELECT COUNT(*) FROM pragma_table_info('audit') WHERE name = 'count'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if !has_count {
        tx.execute_batch("ALTER TABLE audit ADD COLUMN count INTEGER NOT NULL DEFAULT 1")?;
    }
    Ok(())
}

/// Retention drops a closed round's update blobs but keeps the rows: their
/// site reports feed `status` and `export`'s model card.
fn to_2_pruned_updates(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch("ALTER TABLE updates ADD COLUMN pruned_at INTEGER")
}

pub fn version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
}

pub fn refuse_newer(found: u32) -> Result<(), StateError> {
    if found > CURRENT {
        return Err(StateError::NewerSchema {
            found,
            supported: CURRENT,
        });
    }
    Ok(())
}

/// Brings `conn`'s database to [`CURRENT`]; returns the version it had.
pub fn migrate(conn: &mut Connection) -> Result<u32, StateError> {
    let found = version(conn)?;
    refuse_newer(found)?;
    // Version 0 with tables in it was written before versions were kept.
    let legacy = found == 0
        && conn.query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'jobs'",
            [],
            |r| r.get::<_, i64>(0),
        )? > 0;
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Read again under the write lock: another process may have migrated.
        let at = version(&tx)?;
        refuse_newer(at)?;
        if at == CURRENT {
            return Ok(found);
        }
        STEPS[at as usize](&tx)?;
        tx.pragma_update(None, "user_version", at + 1)?;
        tx.commit()?;
        if found > 0 || legacy {
            tracing::info!(from = at, to = at + 1, "state database schema migrated");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns(conn: &Connection, table: &str) -> Vec<String> {
        let mut stmt = conn
            .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn an_unversioned_database_is_brought_up_to_date_keeping_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fedslice.db");
        {
            // As the aggregator left it before versions were kept: no
            // `audit.count`, no `updates.pruned_at`, user_version 0.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(crate::state::SCHEMA_V1).unwrap();
            conn.execute_batch(
                "INSERT INTO audit (at, event, detail) VALUES (1, 'initialised', 'old');
                 INSERT INTO jobs (id, seq, spec, status, created_at) VALUES ('job-1', 1, '{}', 'finished', 1);
                 INSERT INTO rounds (job, round, status, base_digest, opened_at, deadline)
                   VALUES ('job-1', 1, 'closed', 'b', 1, 2);
                 INSERT INTO updates (job, round, site, digest, samples, bytes, metrics, received_at)
                   VALUES ('job-1', 1, 'site-00', 'd', 3, 4, '{}', 1);",
            )
            .unwrap();
            assert!(!columns(&conn, "audit").contains(&"count".to_string()));
        }
        let mut conn = Connection::open(&path).unwrap();
        assert_eq!(migrate(&mut conn).unwrap(), 0);
        assert_eq!(version(&conn).unwrap(), CURRENT);
        assert!(columns(&conn, "audit").contains(&"count".to_string()));
        assert!(columns(&conn, "updates").contains(&"pruned_at".to_string()));
        let (count, pruned): (i64, Option<i64>) = conn
            .query_row(
                "SELECT a.count, u.pruned_at FROM audit a, updates u",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((count, pruned), (1, None));
        // Opening it again changes nothing.
        assert_eq!(migrate(&mut conn).unwrap(), CURRENT);
    }

    #[test]
    fn a_database_from_a_newer_aggregator_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fedslice.db");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", CURRENT + 1)
            .unwrap();
        let error = crate::state::State::open(&path).err().expect("refused");
        let text = error.to_string();
        assert!(
            text.contains(&format!("schema version {}", CURRENT + 1))
                && text.contains("newer aggregator"),
            "{text}"
        );
        let conn = Connection::open(&path).unwrap();
        assert_eq!(version(&conn).unwrap(), CURRENT + 1);
        assert!(columns(&conn, "jobs").is_empty(), "no table was created");
    }
}
