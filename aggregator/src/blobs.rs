//! Content-addressed blob store for global models and received updates.
//!
//! A blob is written to a temporary file, fsynced, renamed to its digest and the
//! folder fsynced, so a crash leaves either the whole blob or nothing; reading
//! re-checks the digest, so a corrupted blob is detected, never used.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use fedslice::wire;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    // The I/O error is part of the message, not a `source`: printed with its
    // chain (`{:#}`) it would otherwise appear twice.
    #[error("blob store {path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("blob {digest} is corrupt: its content hashes to {actual}")]
    Corrupt { digest: String, actual: String },
    #[error("`{0}` is not a blob digest (64 hex characters)")]
    BadDigest(String),
}

/// One blob file as [`BlobStore::list`] finds it.
#[derive(Debug, Clone)]
pub struct StoredBlob {
    pub digest: String,
    pub path: PathBuf,
    pub bytes: u64,
    pub modified: SystemTime,
}

#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

fn is_digest(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl BlobStore {
    pub fn open(root: &Path) -> Result<Self, BlobError> {
        let io = |cause| BlobError::Io {
            path: root.to_path_buf(),
            cause,
        };
        std::fs::create_dir_all(root.join("tmp")).map_err(io)?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    pub fn path(&self, digest: &str) -> Result<PathBuf, BlobError> {
        if !is_digest(digest) {
            return Err(BlobError::BadDigest(digest.to_string()));
        }
        Ok(self.root.join(&digest[..2]).join(digest))
    }

    pub fn contains(&self, digest: &str) -> bool {
        self.path(digest).is_ok_and(|p| p.is_file())
    }

    /// Stores `bytes` durably and returns their digest (idempotent).
    pub fn put(&self, bytes: &[u8]) -> Result<String, BlobError> {
        let digest = wire::digest(bytes);
        let path = self.path(&digest)?;
        if path.is_file() {
            // A blob is written before the row that refers to it, so the
            // garbage collector spares young blobs (crate::retention); one
            // taken into use again must look young too.
            if let Err(cause) =
                std::fs::File::open(&path).and_then(|f| f.set_modified(SystemTime::now()))
            {
                return Err(BlobError::Io { path, cause });
            }
            return Ok(digest);
        }
        let io = |cause| BlobError::Io {
            path: path.clone(),
            cause,
        };
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        std::fs::create_dir_all(&dir).map_err(io)?;
        // Unique per writer: two sites may upload identical bytes at once.
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let tmp = self.root.join("tmp").join(format!(
            "{digest}.{}.{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let result = (|| {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(io)?;
        Ok(digest)
    }

    /// Every complete blob, by digest (`tmp/` holds writes in progress),
    /// with its size and when it was last written or taken into use.
    pub fn list(&self) -> Result<Vec<StoredBlob>, BlobError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |cause| BlobError::Io { path, cause }
        };
        let mut found = Vec::new();
        let shards = match std::fs::read_dir(&self.root) {
            Ok(shards) => shards,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
            Err(e) => return Err(io(&self.root)(e)),
        };
        for shard in shards {
            let shard = shard.map_err(io(&self.root))?;
            if shard.file_name() == "tmp" || !shard.file_type().map_err(io(&shard.path()))?.is_dir()
            {
                continue;
            }
            for entry in std::fs::read_dir(shard.path()).map_err(io(&shard.path()))? {
                let entry = entry.map_err(io(&shard.path()))?;
                let digest = entry.file_name().to_string_lossy().into_owned();
                if !is_digest(&digest) {
                    continue;
                }
                let meta = entry.metadata().map_err(io(&entry.path()))?;
                found.push(StoredBlob {
                    digest,
                    path: entry.path(),
                    bytes: meta.len(),
                    modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                });
            }
        }
        found.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(found)
    }

    /// Where unfinished writes live; what a crash left there is garbage.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Reads a blob and verifies that it still hashes to its name.
    pub fn get(&self, digest: &str) -> Result<Vec<u8>, BlobError> {
        let path = self.path(digest)?;
        let bytes = std::fs::read(&path).map_err(|cause| BlobError::Io {
            path: path.clone(),
            cause,
        })?;
        let actual = wire::digest(&bytes);
        if actual != digest {
            return Err(BlobError::Corrupt {
                digest: digest.to_string(),
                actual,
            });
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_detects_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let digest = store.put(b"global model v1").unwrap();
        assert_eq!(store.put(b"global model v1").unwrap(), digest);
        assert_eq!(store.get(&digest).unwrap(), b"global model v1");
        std::fs::write(store.path(&digest).unwrap(), b"global model v2").unwrap();
        assert!(matches!(store.get(&digest), Err(BlobError::Corrupt { .. })));
        assert!(matches!(
            store.get("../etc/passwd"),
            Err(BlobError::BadDigest(_))
        ));
    }
}
