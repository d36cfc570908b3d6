//! Content-addressed blob store for global models and received updates.
//!
//! A blob is written to a temporary file, fsynced, renamed to its digest and the
//! folder fsynced, so a crash leaves either the whole blob or nothing; reading
//! re-checks the digest, so a corrupted blob is detected, never used.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

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
