//! Finding the exams under a data folder: one MRNet-layout site, or a folder
//! of sites (what `fedslice phantom` writes).

use std::path::{Path, PathBuf};

use super::Exam;
use super::mrnet::{self, MrnetError};

/// The exams of one site, with MRNet's split: `train` for learning, `valid`
/// held out for evaluation.
#[derive(Debug, Clone)]
pub struct SiteData {
    pub name: String,
    pub train: Vec<Exam>,
    pub valid: Vec<Exam>,
}

#[derive(Debug, thiserror::Error)]
pub enum CohortError {
    #[error("{0}: no MRNet-layout data here or in its sub-folders (expected train/sagittal/*.npy)")]
    NotFound(PathBuf),
    #[error("cannot list {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Mrnet(#[from] MrnetError),
}

/// Loads `dir` as one site if it is MRNet layout, else every MRNet-layout
/// sub-folder as a site (sorted by name).
pub fn load_sites(dir: &Path) -> Result<Vec<SiteData>, CohortError> {
    let site_name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "site".into())
    };
    if mrnet::is_mrnet_dir(dir) {
        let site = mrnet::read_site(dir)?;
        return Ok(vec![SiteData {
            name: site_name(dir),
            train: site.train,
            valid: site.valid,
        }]);
    }
    let entries = std::fs::read_dir(dir).map_err(|source| CohortError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && mrnet::is_mrnet_dir(p))
        .collect();
    dirs.sort();
    if dirs.is_empty() {
        return Err(CohortError::NotFound(dir.to_path_buf()));
    }
    dirs.iter()
        .map(|d| {
            let site = mrnet::read_site(d)?;
            Ok(SiteData {
                name: site_name(d),
                train: site.train,
                valid: site.valid,
            })
        })
        .collect()
}
