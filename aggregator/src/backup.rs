//! `aggregator backup` and `restore`: a consistent copy of a state folder,
//! taken while it serves.
//!
//! The database is copied with SQLite's online backup API in one step, which
//! reads one consistent snapshot however the service writes meanwhile. Blobs
//! are immutable and named by their digest, and a row refers to a blob only
//! after the blob is durable, so listing the blob folder *after* the
//! snapshot finds every blob the snapshot needs (and perhaps a few newer
//! ones, which nothing in it refers to). The PKI folder goes too: it holds the
//! CA key, so the archive is created 0600 and must be kept like that key.
//! The manifest goes last, so an archive cut short has none and is refused.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use rusqlite::{Connection, OpenFlags};
use sha2::{Digest, Sha256};

use crate::blobs::BlobStore;
use crate::engine::StatePaths;

/// Names a backup archive's contents and the format they follow.
const MANIFEST: &str = "fedslice-backup.json";
const FORMAT: u32 = 1;
const DATABASE: &str = "fedslice.db";

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Manifest {
    format: u32,
    created_at: i64,
    aggregator_version: String,
    schema_version: u32,
    database_sha256: String,
    blobs: usize,
}

/// What [`backup`] wrote.
pub struct BackupSummary {
    pub blobs: usize,
    pub bytes: u64,
    pub schema_version: u32,
}

/// What [`restore`] brought back.
pub struct RestoreSummary {
    pub blobs: usize,
    pub created_at: i64,
    pub migrated_from: u32,
}

fn append_file(
    tar: &mut tar::Builder<std::fs::File>,
    name: &str,
    path: &Path,
) -> anyhow::Result<()> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    tar.append_file(name, &mut file)
        .with_context(|| format!("archiving {}", path.display()))
}

fn sha256_of(path: &Path) -> anyhow::Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex::encode(hasher.finalize()))
}

/// One consistent copy of the database at `db`, written to `to`.
fn snapshot(db: &Path, to: &Path) -> anyhow::Result<u32> {
    let source = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("opening {}", db.display()))?;
    source.busy_timeout(std::time::Duration::from_secs(30))?;
    let mut copy = Connection::open(to).with_context(|| format!("creating {}", to.display()))?;
    {
        use rusqlite::backup::{Backup, StepResult};
        let backup = Backup::new(&source, &mut copy)
            .with_context(|| format!("starting a backup of {}", db.display()))?;
        // All pages in one step: a step-wise copy restarts whenever the
        // service writes between steps, and may never finish while it is busy.
        let started = std::time::Instant::now();
        loop {
            match backup
                .step(-1)
                .with_context(|| format!("copying {}", db.display()))?
            {
                StepResult::Done => break,
                _ if started.elapsed() > std::time::Duration::from_secs(60) => {
                    bail!("{} stayed locked for a minute; try again", db.display())
                }
                _ => std::thread::sleep(std::time::Duration::from_millis(100)),
            }
        }
    }
    let version = crate::schema::version(&copy)?;
    // The copy must stand alone in the archive, without a write-ahead log.
    copy.pragma_update(None, "journal_mode", "DELETE")?;
    copy.close()
        .map_err(|(_, e)| e)
        .with_context(|| format!("writing {}", to.display()))?;
    Ok(version)
}

fn create_private(path: &Path) -> anyhow::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))
}

/// Snapshot of the state folder `dir` into the archive `out` (written beside
/// it under another name, then renamed, so `out` is whole or absent).
pub fn backup(dir: &Path, out: &Path) -> anyhow::Result<BackupSummary> {
    let paths = StatePaths::new(dir);
    anyhow::ensure!(
        paths.db().is_file(),
        "{} is not an aggregator state folder",
        dir.display()
    );
    anyhow::ensure!(
        !out.exists(),
        "{} exists; choose a new name for the backup",
        out.display()
    );
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let scratch = tempfile::Builder::new()
        .prefix(".fedslice-backup")
        .tempdir_in(parent)
        .with_context(|| format!("creating a scratch folder in {}", parent.display()))?;
    let db_copy = scratch.path().join(DATABASE);
    let schema_version = snapshot(&paths.db(), &db_copy)?;
    let partial = scratch.path().join("archive.tar");
    let mut tar = tar::Builder::new(create_private(&partial)?);
    append_file(&mut tar, DATABASE, &db_copy)?;
    let pki = paths.pki();
    for entry in std::fs::read_dir(&pki).with_context(|| format!("listing {}", pki.display()))? {
        let entry = entry.with_context(|| format!("listing {}", pki.display()))?;
        if entry.file_type()?.is_file() {
            let name = entry.file_name().to_string_lossy().into_owned();
            anyhow::ensure!(
                is_plain_name(&name),
                "{}: unexpected file name `{name}`",
                pki.display()
            );
            append_file(&mut tar, &format!("pki/{name}"), &entry.path())?;
        }
    }
    let blobs = BlobStore::open(&paths.blobs())?.list()?;
    for blob in &blobs {
        append_file(
            &mut tar,
            &format!("blobs/{}/{}", &blob.digest[..2], blob.digest),
            &blob.path,
        )?;
    }
    let manifest = serde_json::to_vec_pretty(&Manifest {
        format: FORMAT,
        created_at: crate::state::now(),
        aggregator_version: env!("CARGO_PKG_VERSION").to_string(),
        schema_version,
        database_sha256: sha256_of(&db_copy)?,
        blobs: blobs.len(),
    })?;
    let mut header = tar::Header::new_gnu();
    header.set_size(manifest.len() as u64);
    header.set_mode(0o600);
    header.set_mtime(crate::state::now().max(0) as u64);
    header.set_cksum();
    tar.append_data(&mut header, MANIFEST, manifest.as_slice())
        .context("archiving the manifest")?;
    let mut file = tar.into_inner().context("finishing the archive")?;
    file.flush()?;
    file.sync_all()
        .with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, out).with_context(|| format!("writing {}", out.display()))?;
    let bytes = std::fs::metadata(out)
        .with_context(|| format!("reading {}", out.display()))?
        .len();
    Ok(BackupSummary {
        blobs: blobs.len(),
        bytes,
        schema_version,
    })
}

/// `aggregator backup`.
pub fn run_backup(dir: &Path, out: &Path) -> anyhow::Result<()> {
    let summary = backup(dir, out)?;
    tracing::info!(out = %out.display(), blobs = summary.blobs, bytes = summary.bytes, "backup written");
    println!(
        "backed up {} to {}: database (schema version {}), {} blob(s), PKI; {}",
        dir.display(),
        out.display(),
        summary.schema_version,
        summary.blobs,
        crate::retention::human_bytes(summary.bytes)
    );
    println!("the archive holds the consortium CA key (created 0600): keep it like the key");
    Ok(())
}

/// `aggregator restore`.
pub fn run_restore(archive: &Path, dir: &Path) -> anyhow::Result<()> {
    let summary = restore(archive, dir)?;
    let migrated = if summary.migrated_from < crate::schema::CURRENT {
        format!(
            "; its database was migrated from schema version {} to {}",
            summary.migrated_from,
            crate::schema::CURRENT
        )
    } else {
        String::new()
    };
    println!(
        "restored {} (taken {}) into {}: {} blob(s), each checked against its digest{migrated}",
        archive.display(),
        crate::cli::utc(summary.created_at),
        dir.display(),
        summary.blobs
    );
    println!(
        "next: aggregator --dir {} serve; sites re-send (or redo) any work the backup does not hold",
        dir.display()
    );
    Ok(())
}

/// Where an archive entry goes under the restored folder, or why it may not
/// be there: only the names a backup writes, so nothing lands outside it.
enum Entry {
    Manifest,
    File(PathBuf),
}

fn place(paths: &StatePaths, name: &str) -> Option<Entry> {
    match name.split('/').collect::<Vec<_>>().as_slice() {
        [MANIFEST] => Some(Entry::Manifest),
        [DATABASE] => Some(Entry::File(paths.db())),
        ["pki", file] if is_plain_name(file) => Some(Entry::File(paths.pki().join(file))),
        ["blobs", shard, digest]
            if shard.len() == 2
                && fedslice::wire::is_sha256_hex(digest)
                && digest.starts_with(shard) =>
        {
            Some(Entry::File(paths.blobs().join(shard).join(digest)))
        }
        _ => None,
    }
}

/// Unpacks a [`backup`] archive into `dir`, which must be empty or absent.
/// It is unpacked beside the final place and checked first: the manifest's
/// format, the database's digest, every blob's content against its name, and
/// that every blob the database needs is there. Only then is it moved into
/// `dir`; a failed restore leaves `dir` as it was.
pub fn restore(archive: &Path, dir: &Path) -> anyhow::Result<RestoreSummary> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "{} is not empty; restore into a new or empty folder (a restore never \
                     overwrites a state)",
                    dir.display()
                );
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    }
    let staging = tempfile::Builder::new()
        .prefix(".restoring")
        .tempdir_in(dir)
        .with_context(|| format!("creating a staging folder in {}", dir.display()))?;
    let staged = StatePaths::new(staging.path());
    let summary = unpack_and_check(archive, &staged)
        .with_context(|| format!("restoring {}", archive.display()))?;
    // The log too, should closing the checked database have left one.
    for name in [DATABASE, "fedslice.db-wal", "pki", "blobs"] {
        let from = staging.path().join(name);
        if from.exists() {
            std::fs::rename(&from, dir.join(name))
                .with_context(|| format!("moving {} into {}", name, dir.display()))?;
        }
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))?;
    Ok(summary)
}

fn unpack_and_check(archive: &Path, staged: &StatePaths) -> anyhow::Result<RestoreSummary> {
    let file =
        std::fs::File::open(archive).with_context(|| format!("reading {}", archive.display()))?;
    let mut tar = tar::Archive::new(file);
    let mut manifest = None;
    let mut blobs = 0;
    for entry in tar.entries().context("reading the archive")? {
        let mut entry = entry.context("reading the archive")?;
        let name = entry.path()?.to_string_lossy().into_owned();
        let target = match place(staged, &name) {
            Some(Entry::Manifest) => {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut entry, &mut text)
                    .context("reading the manifest")?;
                manifest = Some(
                    serde_json::from_str::<Manifest>(&text)
                        .context("the manifest is not a fedslice backup manifest")?,
                );
                continue;
            }
            Some(Entry::File(target)) => target,
            None => bail!("unexpected entry `{name}`: not a fedslice backup"),
        };
        anyhow::ensure!(
            entry.header().entry_type().is_file(),
            "`{name}` is not a plain file"
        );
        if target.starts_with(staged.blobs()) {
            blobs += 1;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let mut out = create_private(&target)?;
        std::io::copy(&mut entry, &mut out).with_context(|| format!("unpacking `{name}`"))?;
        out.sync_all()
            .with_context(|| format!("writing {}", target.display()))?;
    }
    let manifest = manifest
        .with_context(|| format!("no {MANIFEST}: not a fedslice backup, or one cut short"))?;
    anyhow::ensure!(
        manifest.format == FORMAT,
        "backup format {} (this aggregator reads format {FORMAT})",
        manifest.format
    );
    crate::schema::refuse_newer(manifest.schema_version)?;
    anyhow::ensure!(staged.db().is_file(), "the archive holds no database");
    let digest = sha256_of(&staged.db())?;
    anyhow::ensure!(
        digest == manifest.database_sha256,
        "the database hashes to {digest}, but the manifest says {}: the archive is damaged",
        manifest.database_sha256
    );
    anyhow::ensure!(
        blobs == manifest.blobs,
        "the archive holds {blobs} blobs, but the manifest lists {}",
        manifest.blobs
    );
    let store = BlobStore::open(&staged.blobs())?;
    for blob in store.list()? {
        store.get(&blob.digest)?;
    }
    // Brings an older backup's database up to this aggregator's schema.
    let state = crate::state::State::open(&staged.db())?;
    let migrated_from = manifest.schema_version;
    let live = crate::retention::live_blobs(&state.conn)?;
    drop(state);
    let missing: Vec<&String> = live.iter().filter(|d| !store.contains(d)).collect();
    anyhow::ensure!(
        missing.is_empty(),
        "the database needs {} blob(s) the archive lacks, {} among them",
        missing.len(),
        missing.first().map_or("", |d| d.as_str())
    );
    anyhow::ensure!(
        staged.ca_cert().is_file() && staged.ca_key().is_file(),
        "the archive lacks the consortium CA (pki/ca.pem, pki/ca.key)"
    );
    Ok(RestoreSummary {
        blobs,
        created_at: manifest.created_at,
        migrated_from,
    })
}

fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_names_a_backup_writes_are_placed() {
        let paths = StatePaths::new(Path::new("/restored"));
        let digest = "ab".to_string() + &"0".repeat(62);
        let file = |name: &str| match place(&paths, name) {
            Some(Entry::File(p)) => Some(p),
            _ => None,
        };
        assert_eq!(file("fedslice.db"), Some(paths.db()));
        assert_eq!(file("pki/ca.key"), Some(paths.ca_key()));
        assert_eq!(
            file(&format!("blobs/ab/{digest}")),
            Some(paths.blobs().join("ab").join(&digest))
        );
        assert!(matches!(place(&paths, MANIFEST), Some(Entry::Manifest)));
        let elsewhere = format!("blobs/cd/{digest}");
        let nested = format!("blobs/ab/{digest}/x");
        let short_shard = format!("blobs/a/{digest}");
        for hostile in [
            "../fedslice.db",
            "pki/../../etc/passwd",
            "pki/..",
            "/etc/passwd",
            "blobs/cd/ab00",
            elsewhere.as_str(),
            nested.as_str(),
            short_shard.as_str(),
            "serve.lock",
        ] {
            assert!(place(&paths, hostile).is_none(), "{hostile} was placed");
        }
    }
}
