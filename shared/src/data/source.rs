//! Where each exam of a site lives, before anything is decoded: an MRNet
//! `.npy`, a DICOM exam folder or a NIfTI file, with its split and label.
//!
//! Listing is cheap (directory walks and a labels file), so a site can hash
//! its inputs and look them up in the preprocessing cache
//! ([`super::cache`]) before paying for DICOM decoding.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::Exam;
use super::folder;
use super::mrnet::{self, MrnetError};
use super::plane::Plane;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Used for learning.
    Train,
    /// Held out for evaluation.
    Valid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceFormat {
    Mrnet,
    Dicom,
    Nifti,
}

impl std::fmt::Display for SourceFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Mrnet => "mrnet",
            Self::Dicom => "dicom",
            Self::Nifti => "nifti",
        })
    }
}

/// One exam, located but not read.
#[derive(Debug, Clone)]
pub struct ExamSource {
    /// `"{split}/{name}"`; local to the site, never a patient identifier.
    pub id: String,
    pub split: Split,
    pub label: Option<bool>,
    pub format: SourceFormat,
    /// The `.npy` file, the DICOM exam folder or the NIfTI file.
    pub path: PathBuf,
    /// The plane read from it.
    pub plane: Plane,
}

/// The exams of one site.
#[derive(Debug, Clone)]
pub struct SiteSources {
    pub name: String,
    pub root: PathBuf,
    pub exams: Vec<ExamSource>,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(
        "{0}: no site data here or in its sub-folders (expected MRNet train/sagittal/*.npy, \
         or train/<exam>/ DICOM folders or train/<exam>.nii[.gz] files)"
    )]
    NotFound(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Layout { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Labels { path: PathBuf, message: String },
    #[error(transparent)]
    Mrnet(#[from] MrnetError),
    #[cfg(feature = "readers")]
    #[error("exam {id}: {source}")]
    Dicom {
        id: String,
        #[source]
        source: super::dicom::DicomError,
    },
    #[cfg(feature = "readers")]
    #[error("exam {id}: {source}")]
    Nifti {
        id: String,
        #[source]
        source: super::nifti::NiftiReadError,
    },
    #[error("exam {id} is {format}, and this binary was built without the DICOM/NIfTI readers")]
    ReadersNotBuilt { id: String, format: SourceFormat },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SourceError + '_ {
    move |source| SourceError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl ExamSource {
    /// Decodes the exam's sagittal volume.
    pub fn load(&self) -> Result<Exam, SourceError> {
        let (volume, spacing) =
            match self.format {
                SourceFormat::Mrnet => (mrnet::read_npy(&self.path)?, None),
                #[cfg(feature = "readers")]
                SourceFormat::Dicom => {
                    let series = super::dicom::read_exam_plane(&self.path, self.plane).map_err(
                        |source| SourceError::Dicom {
                            id: self.id.clone(),
                            source,
                        },
                    )?;
                    // A series without PixelSpacing gets 1 mm assumed by the
                    // reader; preprocessing should assume a field of view instead.
                    let spacing = series
                        .info
                        .pixel_spacing_known
                        .then_some(series.info.spacing);
                    (series.volume, spacing)
                }
                #[cfg(feature = "readers")]
                SourceFormat::Nifti => {
                    let nifti = super::nifti::read_nifti_plane(&self.path, self.plane).map_err(
                        |source| SourceError::Nifti {
                            id: self.id.clone(),
                            source,
                        },
                    )?;
                    (nifti.volume, Some(nifti.spacing))
                }
                #[cfg(not(feature = "readers"))]
                format => {
                    return Err(SourceError::ReadersNotBuilt {
                        id: self.id.clone(),
                        format,
                    });
                }
            };
        Ok(Exam {
            id: self.id.clone(),
            volume,
            label: self.label,
            spacing: spacing.filter(super::Spacing::is_valid),
        })
    }

    /// Every file the exam's volume is read from, sorted.
    pub fn files(&self) -> Result<Vec<PathBuf>, SourceError> {
        match self.format {
            SourceFormat::Mrnet => Ok(vec![self.path.clone()]),
            SourceFormat::Nifti => {
                let mut files = vec![self.path.clone()];
                // An Analyze-style pair: the voxels are in the .img beside the .hdr.
                if self
                    .path
                    .extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("hdr"))
                {
                    files.extend(
                        ["img", "img.gz"]
                            .map(|ext| self.path.with_extension(ext))
                            .into_iter()
                            .filter(|pair| pair.is_file()),
                    );
                }
                Ok(files)
            }
            SourceFormat::Dicom => {
                let mut files = Vec::new();
                let mut pending = vec![self.path.clone()];
                while let Some(dir) = pending.pop() {
                    for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
                        let path = entry.map_err(io_err(&dir))?.path();
                        if path.is_dir() {
                            pending.push(path);
                        } else {
                            files.push(path);
                        }
                    }
                }
                files.sort();
                Ok(files)
            }
        }
    }

    /// SHA-256 over the plane read and every input file's name (relative to
    /// the exam) and bytes: what the preprocessing cache is keyed by, so that
    /// any change to the exam's files makes a cached entry stale.
    pub fn digest(&self) -> Result<String, SourceError> {
        let mut hasher = Sha256::new();
        hasher.update(format!("plane={}\0", self.plane).as_bytes());
        let base = match self.format {
            SourceFormat::Dicom => self.path.as_path(),
            _ => self.path.parent().unwrap_or(Path::new("")),
        };
        let mut buf = vec![0u8; 1 << 20];
        for file in self.files()? {
            let name = file.strip_prefix(base).unwrap_or(&file).to_string_lossy();
            hasher.update((name.len() as u64).to_le_bytes());
            hasher.update(name.as_bytes());
            let mut f = std::fs::File::open(&file).map_err(io_err(&file))?;
            let len = f.metadata().map_err(io_err(&file))?.len();
            hasher.update(len.to_le_bytes());
            loop {
                let n = f.read(&mut buf).map_err(io_err(&file))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
        }
        Ok(hex::encode(hasher.finalize()))
    }
}

/// Hashed exams (ready for the cache) and those whose files could not be read.
pub type Digested = (Vec<(ExamSource, String)>, Vec<(ExamSource, SourceError)>);

/// Hashes every exam's files (in parallel, order kept): the cache key input.
pub fn digest_all(exams: Vec<ExamSource>) -> Digested {
    use rayon::prelude::*;
    let hashed: Vec<_> = exams.into_par_iter().map(|e| (e.digest(), e)).collect();
    let mut ok = Vec::with_capacity(hashed.len());
    let mut failed = Vec::new();
    for (digest, exam) in hashed {
        match digest {
            Ok(d) => ok.push((exam, d)),
            Err(e) => failed.push((exam, e)),
        }
    }
    (ok, failed)
}

fn site_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "site".into())
}

/// Whether `dir` holds one site's data in either layout.
pub fn is_site_dir(dir: &Path) -> bool {
    mrnet::is_mrnet_dir(dir) || folder::is_folder_site(dir)
}

/// Lists one site's sagittal exams: MRNet layout if `dir` has one, else the
/// exam-folder layout ([`folder`]).
pub fn list_site(dir: &Path) -> Result<SiteSources, SourceError> {
    list_site_in(dir, Plane::Sagittal)
}

/// [`list_site`] reading `plane`.
pub fn list_site_in(dir: &Path, plane: Plane) -> Result<SiteSources, SourceError> {
    if plane == Plane::Unknown {
        return Err(SourceError::Layout {
            path: dir.to_path_buf(),
            message: "choose sagittal, coronal or axial".into(),
        });
    }
    let exams = if mrnet::is_mrnet_dir(dir) {
        mrnet::list_site_plane(dir, plane)?
            .into_iter()
            .map(|case| ExamSource {
                id: case.id,
                split: if case.split == "valid" {
                    Split::Valid
                } else {
                    Split::Train
                },
                label: case.label,
                format: SourceFormat::Mrnet,
                path: case.path,
                plane,
            })
            .collect()
    } else if folder::is_folder_site(dir) {
        folder::list_site(dir, plane)?
    } else {
        return Err(SourceError::NotFound(dir.to_path_buf()));
    };
    Ok(SiteSources {
        name: site_name(dir),
        root: dir.to_path_buf(),
        exams,
    })
}

/// `dir` as one site if it is one, else each sub-folder that is a site
/// (sorted by name), sagittal series.
pub fn list_sites(dir: &Path) -> Result<Vec<SiteSources>, SourceError> {
    list_sites_in(dir, Plane::Sagittal)
}

/// [`list_sites`] reading `plane`.
pub fn list_sites_in(dir: &Path, plane: Plane) -> Result<Vec<SiteSources>, SourceError> {
    if is_site_dir(dir) {
        return Ok(vec![list_site_in(dir, plane)?]);
    }
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        if path.is_dir() && is_site_dir(&path) {
            dirs.push(path);
        }
    }
    dirs.sort();
    if dirs.is_empty() {
        return Err(SourceError::NotFound(dir.to_path_buf()));
    }
    dirs.iter().map(|d| list_site_in(d, plane)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Volume;

    fn exam(id: &str, label: Option<bool>) -> Exam {
        let mut volume = Volume::zeros(2, 8, 8);
        for (i, v) in volume.voxels.iter_mut().enumerate() {
            *v = (i % 200) as f32;
        }
        Exam {
            id: id.into(),
            volume,
            label,
            spacing: None,
        }
    }

    #[test]
    fn the_chosen_plane_is_read_and_enters_the_digest() {
        let tmp = tempfile::tempdir().unwrap();
        let site = tmp.path().join("site-a");
        mrnet::write_site(&site, &[exam("train/0000", Some(true))], &[]).unwrap();
        std::fs::rename(site.join("train/sagittal"), site.join("train/coronal")).unwrap();

        let sagittal = list_site(&site).unwrap();
        assert!(sagittal.exams.is_empty());
        let coronal = list_site_in(&site, Plane::Coronal).unwrap();
        assert_eq!(coronal.exams.len(), 1);
        let e = &coronal.exams[0];
        assert_eq!(
            (e.id.as_str(), e.label, e.plane),
            ("train/0000", Some(true), Plane::Coronal)
        );
        assert_eq!(e.load().unwrap().volume.depth, 2);

        let mut other = e.clone();
        other.plane = Plane::Axial;
        assert_ne!(e.digest().unwrap(), other.digest().unwrap());
    }

    #[test]
    fn a_folder_of_sites_lists_each_site_in_name_order() {
        let tmp = tempfile::tempdir().unwrap();
        for name in ["b", "a"] {
            mrnet::write_site(&tmp.path().join(name), &[exam("train/0000", None)], &[]).unwrap();
        }
        std::fs::create_dir(tmp.path().join("not-a-site")).unwrap();
        let sites = list_sites(tmp.path()).unwrap();
        let names: Vec<_> = sites.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            list_sites(empty.path()),
            Err(SourceError::NotFound(_))
        ));
    }
}
