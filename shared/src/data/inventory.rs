//! What a site's data folder holds, before any training: every exam found
//! (format, planes, slices, shape, spacing, label) and every file or series
//! that cannot be used, with the reason. No patient identifiers: DICOM studies
//! are named by scan position and series by their one-way key.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::dicom::{self, Plane};
use super::source::SourceFormat;
use super::{folder, mrnet, nifti};

#[derive(Debug, Clone, Serialize)]
pub struct ExamEntry {
    pub format: &'static str,
    /// MRNet `train/0000`, DICOM `study 3 / series 1a2b3c4d5e6f`, NIfTI file path.
    pub source: String,
    /// Every plane the exam has a series in.
    pub planes: Vec<String>,
    /// The volume training would use (the sagittal one), as slices × rows × columns.
    pub shape: Option<[usize; 3]>,
    /// Slice, row and column spacing in mm, where the format records it.
    pub spacing_mm: Option<[f64; 3]>,
    pub label: Option<bool>,
    /// Whether training can use this exam; if not, `note` says why.
    pub usable: bool,
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SkippedEntry {
    pub path: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Inventory {
    pub root: String,
    pub exams: Vec<ExamEntry>,
    pub skipped: Vec<SkippedEntry>,
}

fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

fn is_nifti(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    name.ends_with(".nii") || name.ends_with(".nii.gz") || name.ends_with(".hdr")
}

fn is_nifti_image_half(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("img"))
        && path.with_extension("hdr").is_file()
}

fn mrnet_inventory(root: &Path, plane: Plane) -> Inventory {
    let mut inventory = Inventory {
        root: root.display().to_string(),
        exams: Vec::new(),
        skipped: Vec::new(),
    };
    match mrnet::list_site_plane(root, plane) {
        Ok(cases) => {
            // One unreadable array is that case's problem, not the site's.
            for case in cases {
                match mrnet::read_npy(&case.path) {
                    Ok(v) => inventory.exams.push(ExamEntry {
                        format: "mrnet",
                        source: case.id.clone(),
                        planes: vec![plane.to_string()],
                        shape: Some([v.depth, v.height, v.width]),
                        spacing_mm: None,
                        label: case.label,
                        usable: v.depth > 0,
                        note: None,
                    }),
                    Err(e) => inventory.skipped.push(SkippedEntry {
                        path: relative(root, &case.path),
                        reason: e.to_string(),
                    }),
                }
            }
        }
        Err(e) => inventory.skipped.push(SkippedEntry {
            path: ".".into(),
            reason: e.to_string(),
        }),
    }
    inventory
}

/// Inventories `root`: an MRNet-layout site, an exam-folder site (see
/// [`super::folder`]), or any tree of DICOM and NIfTI files. Never fails on a
/// bad file; only an unreadable `root` is an error. Exams are judged on
/// their sagittal series.
pub fn inspect(root: &Path) -> Result<Inventory, dicom::DicomError> {
    inspect_in(root, Plane::Sagittal)
}

/// [`inspect`], judging exams on their series in `plane`.
pub fn inspect_in(root: &Path, plane: Plane) -> Result<Inventory, dicom::DicomError> {
    if mrnet::is_mrnet_dir(root) {
        return Ok(mrnet_inventory(root, plane));
    }
    let mut inventory = Inventory {
        root: root.display().to_string(),
        exams: Vec::new(),
        skipped: Vec::new(),
    };
    if folder::is_folder_site(root) {
        match folder::list_site(root, plane) {
            Ok(exams) => {
                for exam in exams {
                    let first = inventory.exams.len();
                    match exam.format {
                        SourceFormat::Nifti => {
                            inspect_nifti(root, &exam.path, plane, &mut inventory);
                        }
                        // One unreadable exam folder is that exam's problem.
                        _ => match dicom::scan_dir(&exam.path) {
                            Ok(scan) => {
                                inspect_dicom(root, scan, plane, &mut inventory);
                            }
                            Err(e) => inventory.skipped.push(SkippedEntry {
                                path: relative(root, &exam.path),
                                reason: e.to_string(),
                            }),
                        },
                    }
                    let found = inventory.exams.len() - first;
                    for entry in &mut inventory.exams[first..] {
                        entry.label = exam.label;
                        entry.source = if found == 1 {
                            exam.id.clone()
                        } else {
                            format!("{} / {}", exam.id, entry.source)
                        };
                    }
                    if found > 1 {
                        for entry in &mut inventory.exams[first..] {
                            entry.note.get_or_insert_with(|| {
                                format!(
                                    "exam folder holds {found} studies; training uses the \
                                     {plane} series with the most slices among them"
                                )
                            });
                        }
                    }
                }
            }
            Err(e) => inventory.skipped.push(SkippedEntry {
                path: ".".into(),
                reason: e.to_string(),
            }),
        }
        return Ok(inventory);
    }
    let scan = dicom::scan_dir(root)?;
    let nifti_files = inspect_dicom(root, scan, plane, &mut inventory);
    for path in nifti_files {
        inspect_nifti(root, &path, plane, &mut inventory);
    }
    Ok(inventory)
}

/// Adds the scan's studies and unusable files; returns the NIfTI files the
/// DICOM scan passed over.
fn inspect_dicom(
    root: &Path,
    scan: dicom::DicomScan,
    plane: Plane,
    inventory: &mut Inventory,
) -> Vec<PathBuf> {
    for study in &scan.studies {
        let mut planes: Vec<String> = Vec::new();
        for series in &study.series {
            match &series.layout {
                Ok(layout) => {
                    let plane = layout.info.plane.to_string();
                    if !planes.contains(&plane) {
                        planes.push(plane);
                    }
                }
                Err(e) => inventory.skipped.push(SkippedEntry {
                    path: series
                        .files
                        .first()
                        .map_or_else(|| format!("study {}", study.index), |p| relative(root, p)),
                    reason: format!("series {} ({} files): {e}", series.key, series.files.len()),
                }),
            }
        }
        let best = study.best_in_plane(plane);
        inventory.exams.push(ExamEntry {
            format: "dicom",
            source: match best {
                Some(l) => format!("study {} / series {}", study.index, l.info.key),
                None => format!("study {}", study.index),
            },
            planes: planes.clone(),
            shape: best.map(|l| [l.info.depth, l.info.height, l.info.width]),
            spacing_mm: best
                .map(|l| [l.info.spacing.slice, l.info.spacing.row, l.info.spacing.col]),
            label: None,
            usable: best.is_some(),
            note: best.is_none().then(|| {
                if planes.is_empty() {
                    "no readable series".to_string()
                } else {
                    format!("no {plane} series (found: {})", planes.join(", "))
                }
            }),
        });
    }
    let mut nifti_files: Vec<PathBuf> = Vec::new();
    for skipped in scan.skipped {
        if is_nifti(&skipped.path) {
            nifti_files.push(skipped.path);
        } else if !is_nifti_image_half(&skipped.path) {
            inventory.skipped.push(SkippedEntry {
                path: relative(root, &skipped.path),
                reason: skipped.error.to_string(),
            });
        }
    }
    nifti_files
}

fn inspect_nifti(root: &Path, path: &Path, plane: Plane, inventory: &mut Inventory) {
    match nifti::read_nifti_plane(path, plane) {
        Ok(n) => {
            let v = &n.volume;
            inventory.exams.push(ExamEntry {
                format: "nifti",
                source: relative(root, path),
                planes: vec![n.plane.to_string()],
                shape: Some([v.depth, v.height, v.width]),
                spacing_mm: Some([n.spacing.slice, n.spacing.row, n.spacing.col]),
                label: None,
                usable: true,
                note: (n.volumes_in_file > 1)
                    .then(|| format!("first of {} volumes", n.volumes_in_file)),
            });
        }
        Err(e) => inventory.skipped.push(SkippedEntry {
            path: relative(root, path),
            reason: e.to_string(),
        }),
    }
}
