//! The site's preprocessing cache: prepared exams on disk, keyed by the
//! SHA-256 of the exam's input files and the preprocessing recipe, so that
//! after the first time an exam is prepared no later round, run or restart
//! decodes its DICOM again.
//!
//! An entry is `FSPX | u32 LE header length | header JSON | f32 LE pixels`.
//! The header repeats the key and carries the pixels' SHA-256; an entry whose
//! magic, format, key, length, digest or values do not check out is rebuilt
//! from the source and overwritten, never used. Labels are not cached: they
//! come from the site's labels file every time, so relabelling needs no
//! rebuild.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::preprocess::{PreparedExam, PreprocessConfig, PreprocessError, prepare};
use super::source::{ExamSource, SourceError};

/// Bumped whenever preprocessing changes meaning: old entries become misses.
pub const CACHE_FORMAT: u32 = 1;
const MAGIC: &[u8; 4] = b"FSPX";
const MAX_HEADER: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Preprocess(#[from] PreprocessError),
    #[error("preprocessing cache {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What a lookup did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Read from the cache; the source was not decoded.
    Hit,
    /// Not cached yet: decoded, prepared and stored.
    Built,
    /// An entry was there but corrupt or stale: decoded again and replaced.
    Rebuilt,
}

#[derive(Debug, Serialize, Deserialize)]
struct EntryHeader {
    format: u32,
    key: String,
    depth: usize,
    side: usize,
    pixels_sha256: String,
}

/// A folder of prepared exams.
#[derive(Debug, Clone)]
pub struct PreparedCache {
    dir: PathBuf,
}

impl PreparedCache {
    pub fn open(dir: &Path) -> Result<Self, CacheError> {
        std::fs::create_dir_all(dir).map_err(|source| CacheError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// The entry key of an exam whose inputs hash to `digest`, prepared with `config`.
    pub fn key(digest: &str, config: &PreprocessConfig) -> String {
        let mut h = Sha256::new();
        h.update(format!("fedslice-prepared/{CACHE_FORMAT}\0{digest}\0").as_bytes());
        // serde_json writes struct fields in declaration order: a stable encoding.
        h.update(serde_json::to_vec(config).unwrap_or_default());
        hex::encode(h.finalize())
    }

    pub fn entry_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.fsp"))
    }

    /// The prepared exam from the cache, or from the source (then stored).
    /// `digest` is [`ExamSource::digest`], passed in so a caller preparing
    /// several recipes hashes each exam once.
    pub fn get_or_prepare(
        &self,
        source: &ExamSource,
        digest: &str,
        config: &PreprocessConfig,
    ) -> Result<(PreparedExam, Lookup), CacheError> {
        let key = Self::key(digest, config);
        let path = self.entry_path(&key);
        let lookup = match std::fs::read(&path) {
            Ok(bytes) => match decode_entry(&bytes, &key) {
                Ok((depth, side, pixels)) => {
                    return Ok((
                        PreparedExam {
                            id: source.id.clone(),
                            depth,
                            side,
                            pixels,
                            label: source.label,
                        },
                        Lookup::Hit,
                    ));
                }
                Err(why) => {
                    tracing::warn!(exam = %source.id, entry = %path.display(), "cache entry {why}; rebuilding it");
                    Lookup::Rebuilt
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Lookup::Built,
            Err(source) => return Err(CacheError::Io { path, source }),
        };
        let exam = source.load()?;
        let prepared = prepare(&exam.id, &exam.volume, exam.spacing, exam.label, config)?;
        self.store(&key, &prepared)?;
        Ok((prepared, lookup))
    }

    fn store(&self, key: &str, exam: &PreparedExam) -> Result<(), CacheError> {
        let mut pixels = Vec::with_capacity(exam.pixels.len() * 4);
        for p in &exam.pixels {
            pixels.extend_from_slice(&p.to_le_bytes());
        }
        let header = EntryHeader {
            format: CACHE_FORMAT,
            key: key.to_string(),
            depth: exam.depth,
            side: exam.side,
            pixels_sha256: hex::encode(Sha256::digest(&pixels)),
        };
        let header = serde_json::to_vec(&header).unwrap_or_default();
        let path = self.entry_path(key);
        let io = |source| CacheError::Io {
            path: path.clone(),
            source,
        };
        crate::atomic_file::write_with(&path, |file| {
            file.write_all(MAGIC)?;
            file.write_all(&(header.len() as u32).to_le_bytes())?;
            file.write_all(&header)?;
            file.write_all(&pixels)
        })
        .map_err(io)
    }
}

/// What [`PreparedCache::prepare_all`] did, exam by exam.
#[derive(Debug, Default, Clone)]
pub struct PrepareSummary {
    pub hits: usize,
    pub built: usize,
    pub rebuilt: usize,
    /// Exams that could not be prepared: id and reason.
    pub failed: Vec<(String, String)>,
}

impl PreparedCache {
    /// Prepares every exam (in parallel, order kept), each from the cache
    /// when it can be. An exam that cannot be read or prepared is left out
    /// and reported in the summary; it never stops the others. `tick` is
    /// called once per exam, for progress display.
    pub fn prepare_all(
        &self,
        exams: &[(ExamSource, String)],
        config: &PreprocessConfig,
        tick: &(dyn Fn() + Sync),
    ) -> (Vec<PreparedExam>, PrepareSummary) {
        use rayon::prelude::*;
        let results: Vec<_> = exams
            .par_iter()
            .map(|(source, digest)| {
                let r = self.get_or_prepare(source, digest, config);
                tick();
                (source.id.clone(), r)
            })
            .collect();
        let mut summary = PrepareSummary::default();
        let mut prepared = Vec::with_capacity(results.len());
        for (id, result) in results {
            match result {
                Ok((exam, lookup)) => {
                    match lookup {
                        Lookup::Hit => summary.hits += 1,
                        Lookup::Built => summary.built += 1,
                        Lookup::Rebuilt => summary.rebuilt += 1,
                    }
                    prepared.push(exam);
                }
                Err(e) => summary.failed.push((id, e.to_string())),
            }
        }
        (prepared, summary)
    }
}

/// The entry's shape and pixels, or why it cannot be trusted.
fn decode_entry(bytes: &[u8], key: &str) -> Result<(usize, usize, Vec<f32>), String> {
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        return Err("has no FSPX magic".into());
    }
    let header_len = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
    if header_len > MAX_HEADER || bytes.len() < 8 + header_len {
        return Err(format!("declares a {header_len}-byte header"));
    }
    let header: EntryHeader = serde_json::from_slice(&bytes[8..8 + header_len])
        .map_err(|e| format!("has an unreadable header ({e})"))?;
    if header.format != CACHE_FORMAT {
        return Err(format!("is format {}, not {CACHE_FORMAT}", header.format));
    }
    if header.key != key {
        return Err("belongs to other inputs or another recipe".into());
    }
    let body = &bytes[8 + header_len..];
    let expected = header
        .depth
        .checked_mul(header.side)
        .and_then(|n| n.checked_mul(header.side))
        .and_then(|n| n.checked_mul(4));
    if expected != Some(body.len()) || header.depth == 0 {
        return Err(format!(
            "holds {} bytes of pixels for {}×{}²",
            body.len(),
            header.depth,
            header.side
        ));
    }
    if hex::encode(Sha256::digest(body)) != header.pixels_sha256 {
        return Err("fails its SHA-256 check".into());
    }
    let pixels: Vec<f32> = body
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if pixels.iter().any(|p| !p.is_finite()) {
        return Err("holds non-finite pixels".into());
    }
    Ok((header.depth, header.side, pixels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::source::{SourceFormat, Split};
    use crate::data::{Exam, Volume, mrnet};

    fn site(dir: &Path) -> ExamSource {
        let mut volume = Volume::zeros(4, 16, 16);
        for (i, v) in volume.voxels.iter_mut().enumerate() {
            *v = (i * 7 % 251) as f32;
        }
        let exam = Exam {
            id: "train/0000".into(),
            volume,
            label: Some(true),
            spacing: None,
        };
        mrnet::write_site(dir, &[exam], &[]).unwrap();
        ExamSource {
            id: "train/0000".into(),
            split: Split::Train,
            label: Some(true),
            format: SourceFormat::Mrnet,
            path: dir.join("train/sagittal/0000.npy"),
            plane: crate::data::plane::Plane::Sagittal,
        }
    }

    #[test]
    fn second_lookup_hits_and_returns_the_same_pixels() {
        let tmp = tempfile::tempdir().unwrap();
        let source = site(&tmp.path().join("site"));
        let cache = PreparedCache::open(&tmp.path().join("cache")).unwrap();
        let config = PreprocessConfig::new(8);
        let digest = source.digest().unwrap();
        let (a, first) = cache.get_or_prepare(&source, &digest, &config).unwrap();
        // The source is gone: a hit must not read it.
        std::fs::remove_file(&source.path).unwrap();
        let (b, second) = cache.get_or_prepare(&source, &digest, &config).unwrap();
        assert_eq!((first, second), (Lookup::Built, Lookup::Hit));
        assert_eq!(a.pixels, b.pixels);
        assert_eq!((b.depth, b.side, b.label), (4, 8, Some(true)));
    }

    #[test]
    fn corrupt_or_stale_entries_are_rebuilt() {
        let tmp = tempfile::tempdir().unwrap();
        let source = site(&tmp.path().join("site"));
        let cache = PreparedCache::open(&tmp.path().join("cache")).unwrap();
        let config = PreprocessConfig::new(8);
        let digest = source.digest().unwrap();
        let (good, _) = cache.get_or_prepare(&source, &digest, &config).unwrap();
        let entry = cache.entry_path(&PreparedCache::key(&digest, &config));
        let pristine = std::fs::read(&entry).unwrap();

        let mut flipped = pristine.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        let truncated = pristine[..pristine.len() - 4].to_vec();
        let other_config = PreprocessConfig::new(9);
        let other_entry = cache.entry_path(&PreparedCache::key(&digest, &other_config));
        for (what, bytes) in [("bit flip", flipped), ("truncation", truncated)] {
            std::fs::write(&entry, &bytes).unwrap();
            let (again, lookup) = cache.get_or_prepare(&source, &digest, &config).unwrap();
            assert_eq!(lookup, Lookup::Rebuilt, "{what}");
            assert_eq!(again.pixels, good.pixels, "{what}");
            assert_eq!(std::fs::read(&entry).unwrap(), pristine, "{what}");
        }
        // An entry copied under another recipe's name names its own key.
        std::fs::write(&other_entry, &pristine).unwrap();
        let (_, lookup) = cache
            .get_or_prepare(&source, &digest, &other_config)
            .unwrap();
        assert_eq!(lookup, Lookup::Rebuilt);
    }

    #[test]
    fn changed_inputs_change_the_key() {
        let tmp = tempfile::tempdir().unwrap();
        let source = site(&tmp.path().join("site"));
        let before = source.digest().unwrap();
        let mut bytes = std::fs::read(&source.path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&source.path, bytes).unwrap();
        assert_ne!(before, source.digest().unwrap());
    }
}
