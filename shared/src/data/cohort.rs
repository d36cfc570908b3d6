//! Loading every exam under a data folder into memory: one site (MRNet or
//! exam-folder layout, see [`super::source`]) or a folder of sites (what
//! `fedslice phantom` writes).

use std::path::Path;

use rayon::prelude::*;

use super::Exam;
use super::plane::Plane;
use super::source::{self, SourceError, Split};

/// The exams of one site, with its split: `train` for learning, `valid` held
/// out for evaluation.
#[derive(Debug, Clone)]
pub struct SiteData {
    pub name: String,
    pub train: Vec<Exam>,
    pub valid: Vec<Exam>,
}

pub type CohortError = SourceError;

/// Loads `dir` as one site if it is one, else every site sub-folder (sorted
/// by name). An exam that cannot be read is logged with its reason and left
/// out (`site-agent inspect` lists them all); a site none of whose exams can
/// be read is an error, as is a malformed layout or labels file.
pub fn load_sites(dir: &Path) -> Result<Vec<SiteData>, CohortError> {
    load_sites_in(dir, Plane::Sagittal)
}

/// [`load_sites`] reading `plane`.
pub fn load_sites_in(dir: &Path, plane: Plane) -> Result<Vec<SiteData>, CohortError> {
    source::list_sites_in(dir, plane)?
        .into_iter()
        .map(|site| {
            let loaded: Vec<_> = site
                .exams
                .par_iter()
                .map(|s| s.load().map(|exam| (s.split, exam)))
                .collect();
            let mut exams = Vec::with_capacity(loaded.len());
            let mut first_error = None;
            for result in loaded {
                match result {
                    Ok(exam) => exams.push(exam),
                    Err(e) => {
                        tracing::warn!(site = %site.name, "exam left out: {e}");
                        first_error.get_or_insert(e);
                    }
                }
            }
            if exams.is_empty()
                && let Some(e) = first_error
            {
                return Err(e);
            }
            let (train, valid): (Vec<_>, Vec<_>) = exams
                .into_iter()
                .partition(|(split, _)| *split == Split::Train);
            Ok(SiteData {
                name: site.name,
                train: train.into_iter().map(|(_, e)| e).collect(),
                valid: valid.into_iter().map(|(_, e)| e).collect(),
            })
        })
        .collect()
}
