//! Running a bundle on one exam as a radiology department has it: a DICOM
//! series or study folder, a NIfTI file or an MRNet `.npy` volume. The exam is
//! preprocessed exactly as in training (the bundle's own recipe), so the
//! probability equals the one training's evaluation gave the same exam.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::activation::sigmoid;
use burn::tensor::{Device, Tensor, TensorData};
use serde::Serialize;

use super::bundle::{Bundle, BundleError};
use crate::data::dicom::{self, DicomError};
use crate::data::mrnet;
use crate::data::nifti::{self, NiftiReadError};
use crate::data::plane::Plane;
use crate::data::preprocess::{PreparedExam, PreprocessError, prepare};
use crate::data::{Spacing, Volume};

pub const DISCLAIMER: &str = "Research use only. Not for diagnostic use.";

#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    #[error("{0}: no such file or folder")]
    Missing(PathBuf),
    #[error("{0}: not a DICOM folder, a NIfTI file (.nii, .nii.gz) or an MRNet .npy volume")]
    UnknownInput(PathBuf),
    #[error("{path}: no DICOM images found ({skipped} files skipped as not DICOM or unreadable)")]
    NoDicom { path: PathBuf, skipped: usize },
    #[error(
        "{path}: none of the {series} series found is {plane}; this model reads {plane} series"
    )]
    NoSeriesInPlane {
        path: PathBuf,
        plane: Plane,
        series: usize,
    },
    #[error(transparent)]
    Dicom(#[from] DicomError),
    #[error(transparent)]
    Nifti(#[from] NiftiReadError),
    #[error(transparent)]
    Npy(#[from] mrnet::MrnetError),
    #[error(transparent)]
    Preprocess(#[from] PreprocessError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    Dicom,
    Nifti,
    Npy,
}

/// The DICOM series a prediction was made on (local use: these are the
/// input's own UIDs, returned to the PACS/RIS that sent it).
#[derive(Debug, Clone, Serialize)]
pub struct SeriesUsed {
    pub study_instance_uid: String,
    pub series_instance_uid: String,
    /// Non-reversible key, safe for logs.
    pub series_key: String,
    pub plane: Plane,
    pub slices: usize,
    /// Series found under the input path, in all studies.
    pub series_found: usize,
    pub studies_found: usize,
    #[serde(skip)]
    pub files: Vec<PathBuf>,
}

/// A decoded input volume and where it came from.
#[derive(Debug, Clone)]
pub struct LoadedInput {
    pub path: PathBuf,
    pub format: InputFormat,
    pub volume: Volume,
    /// Voxel spacing when the format records it (preprocessing frames the
    /// knee in millimetres).
    pub spacing: Option<Spacing>,
    pub series: Option<SeriesUsed>,
}

/// Reads `path` as one exam in `plane`.
pub fn read_input(path: &Path, plane: Plane) -> Result<LoadedInput, PredictError> {
    if !path.exists() {
        return Err(PredictError::Missing(path.to_path_buf()));
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let loaded = |format, (volume, spacing), series| LoadedInput {
        path: path.to_path_buf(),
        format,
        volume,
        spacing,
        series,
    };
    if path.is_dir() {
        let (series, volume) = read_dicom_dir(path, plane)?;
        return Ok(loaded(InputFormat::Dicom, volume, Some(series)));
    }
    if name.ends_with(".nii") || name.ends_with(".nii.gz") || name.ends_with(".hdr") {
        let nifti = nifti::read_nifti_plane(path, plane)?;
        return Ok(loaded(
            InputFormat::Nifti,
            (nifti.volume, Some(nifti.spacing)),
            None,
        ));
    }
    if name.ends_with(".npy") {
        return Ok(loaded(
            InputFormat::Npy,
            (mrnet::read_npy(path)?, None),
            None,
        ));
    }
    // A single DICOM file (e.g. a multi-frame series).
    let (series, volume) = dicom_series_of(dicom::scan_files([path.to_path_buf()]), path, plane)
        .map_err(|e| match e {
            PredictError::NoDicom { .. } => PredictError::UnknownInput(path.to_path_buf()),
            other => other,
        })?;
    Ok(loaded(InputFormat::Dicom, volume, Some(series)))
}

/// A decoded volume and its spacing, when recorded.
type VolumeAndSpacing = (Volume, Option<Spacing>);

fn read_dicom_dir(
    dir: &Path,
    plane: Plane,
) -> Result<(SeriesUsed, VolumeAndSpacing), PredictError> {
    dicom_series_of(dicom::scan_dir(dir)?, dir, plane)
}

/// The series in `plane` with the most slices across every study scanned.
fn dicom_series_of(
    mut scan: dicom::DicomScan,
    path: &Path,
    plane: Plane,
) -> Result<(SeriesUsed, VolumeAndSpacing), PredictError> {
    let series_found: usize = scan.studies.iter().map(|s| s.series.len()).sum();
    if series_found == 0 {
        return Err(PredictError::NoDicom {
            path: path.to_path_buf(),
            skipped: scan.skipped.len(),
        });
    }
    let mut best: Option<(usize, usize, usize)> = None;
    for (i, study) in scan.studies.iter().enumerate() {
        for (j, entry) in study.series.iter().enumerate() {
            if let Ok(layout) = &entry.layout
                && layout.info.plane == plane
                && best.is_none_or(|(_, _, depth)| layout.info.depth > depth)
            {
                best = Some((i, j, layout.info.depth));
            }
        }
    }
    let Some((i, j, _)) = best else {
        // One series that failed to assemble explains itself better.
        if series_found == 1
            && let Some(dicom::SeriesEntry { layout: Err(e), .. }) = scan
                .studies
                .iter_mut()
                .flat_map(|s| s.series.drain(..))
                .next()
        {
            return Err(PredictError::Dicom(e));
        }
        return Err(PredictError::NoSeriesInPlane {
            path: path.to_path_buf(),
            plane,
            series: series_found,
        });
    };
    let study = &scan.studies[i];
    let entry = &study.series[j];
    let Ok(layout) = &entry.layout else {
        unreachable!("chosen above only among assembled series")
    };
    let decoded = layout.load()?;
    let used = SeriesUsed {
        study_instance_uid: study.study_uid.reveal().to_owned(),
        series_instance_uid: entry.series_uid.reveal().to_owned(),
        series_key: entry.key.as_str().to_owned(),
        plane,
        slices: decoded.volume.depth,
        series_found,
        studies_found: scan.studies.len(),
        files: layout.files(),
    };
    let spacing = decoded
        .info
        .pixel_spacing_known
        .then_some(decoded.info.spacing);
    Ok((used, (decoded.volume, spacing)))
}

/// Where the time went, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    pub read_ms: f64,
    pub preprocess_ms: f64,
    pub inference_ms: f64,
    pub total_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub bundle: String,
    pub weights_sha256: String,
    pub bundle_sha256: String,
    pub fedslice_version: String,
    pub plane: Plane,
}

#[derive(Debug, Clone, Serialize)]
pub struct InputInfo {
    pub path: String,
    pub format: InputFormat,
    pub series: Option<SeriesUsed>,
    pub slices_read: usize,
    pub slices_used: usize,
}

/// The predictor's answer: what `site-agent predict --json` writes.
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    /// Probability of an ACL tear.
    pub probability: f64,
    /// `labels[1]` when `probability >= threshold`, else `labels[0]`.
    pub label: String,
    pub positive: bool,
    pub threshold: f64,
    /// Per slice (in the order used), the probability for that slice alone.
    pub slice_scores: Vec<f64>,
    pub input: InputInfo,
    pub model: ModelInfo,
    pub timing: Timing,
    pub disclaimer: String,
}

/// Scores of one prepared exam.
#[derive(Debug, Clone)]
pub struct ExamScores {
    pub probability: f64,
    pub slice_scores: Vec<f64>,
}

pub struct Predictor {
    pub bundle: Bundle,
    device: Device,
}

impl Predictor {
    pub fn open(dir: &Path, device: &Device) -> Result<Self, BundleError> {
        Ok(Self {
            bundle: Bundle::open(dir, device)?,
            device: device.clone(),
        })
    }

    pub fn plane(&self) -> Plane {
        self.bundle.config.plane
    }

    /// Runs the model on an exam already preprocessed with the bundle's recipe.
    pub fn score(&self, exam: &PreparedExam) -> ExamScores {
        let side = exam.side;
        let slices = Tensor::from_data(
            TensorData::new(exam.pixels.clone(), [exam.depth, 1, side, side]),
            &self.device,
        );
        let (logit, slice_logits) = self.bundle.model.forward_exam_with_slices(slices);
        let to_vec =
            |t: Tensor<1>| -> Vec<f64> { t.into_data().iter::<f32>().map(f64::from).collect() };
        ExamScores {
            probability: to_vec(sigmoid(logit)).first().copied().unwrap_or(f64::NAN),
            slice_scores: to_vec(sigmoid(slice_logits)),
        }
    }

    /// Preprocesses a decoded volume with the bundle's recipe.
    pub fn prepare(
        &self,
        volume: &Volume,
        spacing: Option<Spacing>,
    ) -> Result<PreparedExam, PreprocessError> {
        prepare(
            "input",
            volume,
            spacing,
            None,
            &self.bundle.config.preprocess,
        )
    }

    /// Reads, preprocesses and scores the exam at `path`.
    pub fn predict_path(&self, path: &Path) -> Result<(Prediction, LoadedInput), PredictError> {
        let start = Instant::now();
        let input = read_input(path, self.plane())?;
        let read = start.elapsed();
        let prediction = self.predict_loaded(&input, read.as_secs_f64() * 1e3)?;
        Ok((prediction, input))
    }

    /// Preprocesses and scores an input that is already decoded.
    pub fn predict_loaded(
        &self,
        input: &LoadedInput,
        read_ms: f64,
    ) -> Result<Prediction, PredictError> {
        let t0 = Instant::now();
        let exam = self.prepare(&input.volume, input.spacing)?;
        let t1 = Instant::now();
        let scores = self.score(&exam);
        let t2 = Instant::now();
        let config = &self.bundle.config;
        let positive = scores.probability >= config.threshold;
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        Ok(Prediction {
            probability: scores.probability,
            label: config.labels[usize::from(positive)].clone(),
            positive,
            threshold: config.threshold,
            slice_scores: scores.slice_scores,
            input: InputInfo {
                path: input.path.display().to_string(),
                format: input.format,
                series: input.series.clone(),
                slices_read: input.volume.depth,
                slices_used: exam.depth,
            },
            model: ModelInfo {
                bundle: self.bundle.dir.display().to_string(),
                weights_sha256: self.bundle.weights_sha256.clone(),
                bundle_sha256: self.bundle.bundle_sha256.clone(),
                fedslice_version: config.fedslice_version.clone(),
                plane: config.plane,
            },
            timing: Timing {
                read_ms,
                preprocess_ms: ms(t1 - t0),
                inference_ms: ms(t2 - t1),
                total_ms: read_ms + ms(t2 - t0),
            },
            disclaimer: DISCLAIMER.into(),
        })
    }
}
