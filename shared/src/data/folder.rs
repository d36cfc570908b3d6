//! The exam-folder layout, for sites whose exams are DICOM series or NIfTI
//! files rather than MRNet `.npy` arrays:
//!
//! ```text
//! SITE/
//!   labels.csv                 exam,label   (header row; label 1 = ACL tear, 0 = intact, empty = unlabelled)
//!   train/<exam>/…             one exam: any tree of DICOM files (every series of one study)
//!   train/<exam>.nii[.gz]      one exam: a NIfTI volume (or <exam>.hdr + <exam>.img)
//!   valid/…                    the same, held out for evaluation (optional)
//! ```
//!
//! An exam's id is `"{split}/{exam}"`, the same shape as MRNet's, and is the
//! key in `labels.csv`. The folder names are the site's own choice; they are
//! never sent anywhere, but they should not be patient identifiers. A
//! `labels.csv` row naming an exam that is not there is an error rather than
//! a silently unlabelled exam, because that is almost always a typo.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::plane::Plane;
use super::source::{ExamSource, SourceError, SourceFormat, Split};

/// The labels file of a folder-layout site.
pub const LABELS_FILE: &str = "labels.csv";

const SPLITS: [(Split, &str); 2] = [(Split::Train, "train"), (Split::Valid, "valid")];

/// A NIfTI exam's name without its extension, or `None` for other files.
/// `.img` halves of Analyze-style pairs are found through their `.hdr`.
fn nifti_stem(name: &str) -> Option<&str> {
    let lower = name.to_ascii_lowercase();
    [".nii.gz", ".nii", ".hdr"]
        .iter()
        .find(|ext| lower.ends_with(*ext))
        .map(|ext| &name[..name.len() - ext.len()])
}

fn split_entries(dir: &Path) -> Result<Vec<PathBuf>, SourceError> {
    let io = |source| SourceError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        entries.push(entry.map_err(io)?.path());
    }
    entries.sort();
    Ok(entries)
}

/// Whether `dir` is a folder-layout site: a `train/` or `valid/` folder that
/// holds at least one exam folder or NIfTI file.
pub fn is_folder_site(dir: &Path) -> bool {
    SPLITS.iter().any(|(_, split)| {
        std::fs::read_dir(dir.join(split)).is_ok_and(|mut entries| {
            entries.any(|e| {
                e.is_ok_and(|e| {
                    let path = e.path();
                    path.is_dir()
                        || path
                            .file_name()
                            .and_then(|n| n.to_str())
                            .and_then(nifti_stem)
                            .is_some()
                })
            })
        })
    })
}

/// Lists the exams of a folder-layout site, train first, each split sorted by
/// name, with their labels; each will be read in `plane`. Reads no image data.
pub fn list_site(dir: &Path, plane: Plane) -> Result<Vec<ExamSource>, SourceError> {
    let mut exams = Vec::new();
    for (split, split_name) in SPLITS {
        let folder = dir.join(split_name);
        if !folder.is_dir() {
            continue;
        }
        for path in split_entries(&folder)? {
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                tracing::warn!(path = %path.display(), "skipping a file whose name is not UTF-8");
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            let (exam, format) = if path.is_dir() {
                (name, SourceFormat::Dicom)
            } else if let Some(stem) = nifti_stem(name) {
                (stem, SourceFormat::Nifti)
            } else {
                // .img halves, notes, checksums: not exams.
                continue;
            };
            exams.push(ExamSource {
                id: format!("{split_name}/{exam}"),
                split,
                label: None,
                format,
                path,
                plane,
            });
        }
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, exam) in exams.iter().enumerate() {
        if let Some(first) = seen.insert(&exam.id, i) {
            return Err(SourceError::Layout {
                path: dir.to_path_buf(),
                message: format!(
                    "exam {} appears twice ({} and {})",
                    exam.id,
                    exams[first].path.display(),
                    exam.path.display()
                ),
            });
        }
    }
    let labels = read_labels(&dir.join(LABELS_FILE))?;
    let index: HashMap<String, usize> = exams
        .iter()
        .enumerate()
        .map(|(i, e)| (e.id.clone(), i))
        .collect();
    for (id, label) in labels {
        let Some(&i) = index.get(&id) else {
            return Err(SourceError::Labels {
                path: dir.join(LABELS_FILE),
                message: format!(
                    "exam {id} is labelled but there is no train/ or valid/ entry for it"
                ),
            });
        };
        exams[i].label = label;
    }
    Ok(exams)
}

/// `exam,label` rows; an absent file means every exam is unlabelled.
fn read_labels(path: &Path) -> Result<Vec<(String, Option<bool>)>, SourceError> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let bad = |message: String| SourceError::Labels {
        path: path.to_path_buf(),
        message,
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(|e| bad(e.to_string()))?;
    let headers = reader.headers().map_err(|e| bad(e.to_string()))?.clone();
    if headers.len() < 2 || &headers[0] != "exam" || &headers[1] != "label" {
        return Err(bad(format!(
            "the first row must be the header `exam,label`, found `{}`",
            headers.iter().collect::<Vec<_>>().join(",")
        )));
    }
    let mut rows = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (line, record) in reader.records().enumerate() {
        let row = line + 2;
        let record = record.map_err(|e| bad(e.to_string()))?;
        let id = record.get(0).unwrap_or_default().to_string();
        let label = match record.get(1).unwrap_or_default() {
            "" => None,
            "0" | "0.0" => Some(false),
            "1" | "1.0" => Some(true),
            other => {
                return Err(bad(format!(
                    "row {row}: label {other:?} is not 0, 1 or empty"
                )));
            }
        };
        if !seen.insert(id.clone()) {
            return Err(bad(format!("row {row}: exam {id} labelled twice")));
        }
        rows.push((id, label));
    }
    Ok(rows)
}

#[cfg(feature = "readers")]
pub use writer::{FolderFormat, FolderWriteError, write_site};

#[cfg(feature = "readers")]
mod writer {
    use std::io::Write;
    use std::path::{Path, PathBuf};

    use crate::data::Exam;
    use crate::data::dicom::{SeriesWriteOptions, Spacing, write_dicom_series};
    use crate::data::nifti::write_nifti;

    use super::LABELS_FILE;

    /// How a folder-layout site stores its exams.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum FolderFormat {
        /// `train/<exam>/IM00001.dcm …`, one MR Image Storage file per slice.
        Dicom,
        /// `train/<exam>.nii.gz`, float32.
        Nifti,
    }

    #[derive(Debug, thiserror::Error)]
    pub enum FolderWriteError {
        #[error("exam id {0:?} is not `train/NAME` or `valid/NAME`")]
        BadId(String),
        #[error("{path}: already exists; refusing to mix cohorts")]
        Exists { path: PathBuf },
        #[error("{path}: {source}")]
        Io {
            path: PathBuf,
            #[source]
            source: std::io::Error,
        },
        #[error(transparent)]
        Dicom(#[from] crate::data::dicom::DicomWriteError),
        #[error(transparent)]
        Nifti(#[from] crate::data::nifti::NiftiWriteError),
    }

    /// Writes exams (ids `train/NAME` or `valid/NAME`) as a folder-layout
    /// site, with a `labels.csv` row for every exam (empty label when
    /// unlabelled). Each exam is written with its own spacing, or `fallback`
    /// when it has none.
    pub fn write_site(
        dir: &Path,
        format: FolderFormat,
        exams: &[Exam],
        fallback: Spacing,
    ) -> Result<(), FolderWriteError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| FolderWriteError::Io { path, source }
        };
        for exam in exams {
            match exam.id.split_once('/') {
                Some(("train" | "valid", name)) if !name.is_empty() && !name.contains('/') => {}
                _ => return Err(FolderWriteError::BadId(exam.id.clone())),
            }
        }
        let labels_path = dir.join(LABELS_FILE);
        if labels_path.exists() {
            return Err(FolderWriteError::Exists { path: labels_path });
        }
        for exam in exams {
            let target = dir.join(&exam.id);
            let spacing = exam.spacing.unwrap_or(fallback);
            match format {
                FolderFormat::Dicom => {
                    let options = SeriesWriteOptions {
                        patient_id: format!("PHANTOM-{}", exam.id.replace('/', "-")),
                        ..SeriesWriteOptions::default()
                    };
                    write_dicom_series(&target, &exam.volume, spacing, &options)?;
                }
                FolderFormat::Nifti => {
                    let path = target.with_file_name(format!(
                        "{}.nii.gz",
                        target
                            .file_name()
                            .and_then(|n| n.to_str())
                            .unwrap_or("exam")
                    ));
                    if let Some(parent) = path.parent() {
                        std::fs::create_dir_all(parent).map_err(io(parent))?;
                    }
                    write_nifti(&path, &exam.volume, spacing)?;
                }
            }
        }
        let mut csv = String::from("exam,label\n");
        for exam in exams {
            let label = match exam.label {
                Some(true) => "1",
                Some(false) => "0",
                None => "",
            };
            csv.push_str(&format!("{},{label}\n", exam.id));
        }
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut file = std::fs::File::create(&labels_path).map_err(io(&labels_path))?;
        file.write_all(csv.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io(&labels_path))
    }
}
