//! Writes a volume as an MR Image Storage series, one file per slice.
//!
//! The phantom must travel through the same DICOM path as real data, so this
//! writes what a scanner would: explicit VR little endian Part 10 files with
//! a sagittal ImageOrientationPatient, positions that sort the slices into
//! volume order, spacing, fresh `2.25.` UIDs and an unmistakably synthetic
//! patient. Pixels are 16-bit unsigned without rescale, so only volumes of
//! integers in 0..=65535 can be written — anything else is refused rather than
//! rounded, so reading back is bit-exact.

use std::path::{Path, PathBuf};

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;
use dicom_object::meta::FileMetaTableBuilder;

use crate::data::Volume;

use super::geometry::Spacing;

/// Row direction posterior (+y), column direction inferior (−z): the usual
/// sagittal display, with the slice normal (−1, 0, 0) pointing to the right.
pub const SAGITTAL_IOP: [f64; 6] = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0];

/// The patient name on every synthetic file.
pub const SYNTHETIC_PATIENT_NAME: &str = "PHANTOM^SYNTHETIC";

/// Why a volume could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DicomWriteError {
    #[error("volume has no voxels ({depth}x{height}x{width})")]
    Empty {
        depth: usize,
        height: usize,
        width: usize,
    },
    #[error("volume is {height}x{width} per slice; DICOM allows at most 65535 rows and columns")]
    TooLarge { height: usize, width: usize },
    #[error("voxel {index} is {value}, not an integer in 0..=65535 (16-bit unsigned, no rescale)")]
    NotRepresentable { index: usize, value: f32 },
    #[error("spacing must be finite and positive, got {0:?}")]
    InvalidSpacing(Spacing),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: cannot encode DICOM: {reason}")]
    Encode { path: PathBuf, reason: String },
}

/// What to put in the header besides geometry and pixels.
#[derive(Debug, Clone)]
pub struct SeriesWriteOptions {
    /// A synthetic identifier, e.g. the phantom's exam id.
    pub patient_id: String,
    pub series_description: String,
    pub series_number: u32,
    /// Reuse a study UID to put several series in one study; `None` makes one.
    pub study_uid: Option<String>,
}

impl Default for SeriesWriteOptions {
    fn default() -> Self {
        Self {
            patient_id: "PHANTOM".into(),
            series_description: "SYNTHETIC SAG PD".into(),
            series_number: 1,
            study_uid: None,
        }
    }
}

/// The files and UIDs of a written series.
#[derive(Debug, Clone)]
pub struct WrittenSeries {
    pub files: Vec<PathBuf>,
    pub study_uid: String,
    pub series_uid: String,
}

/// A fresh UID under the UUID-derived root 2.25 (PS3.5 B.2): no registered
/// organisation root is needed and collisions are negligible.
pub fn new_uid() -> String {
    format!("2.25.{}", uuid::Uuid::new_v4().as_u128())
}

/// A Decimal String of at most 16 characters.
fn ds(v: f64) -> String {
    for precision in (0..=6).rev() {
        let mut s = format!("{v:.precision$}");
        if s.contains('.') {
            s = s.trim_end_matches('0').trim_end_matches('.').to_string();
        }
        if s == "-0" {
            s = "0".into();
        }
        if s.len() <= 16 {
            return s;
        }
    }
    format!("{v:.0}")
}

fn multi(values: &[f64]) -> String {
    values.iter().map(|v| ds(*v)).collect::<Vec<_>>().join("\\")
}

/// Writes `volume` as `dir/IM00001.dcm`, `dir/IM00002.dcm`, … (slice z → file
/// z+1), creating `dir`. Slice z sits at x = x0 − z·spacing.slice, so a reader
/// sorting along the normal restores volume order.
pub fn write_dicom_series(
    dir: &Path,
    volume: &Volume,
    spacing: Spacing,
    options: &SeriesWriteOptions,
) -> Result<WrittenSeries, DicomWriteError> {
    let (d, h, w) = (volume.depth, volume.height, volume.width);
    if d == 0 || h == 0 || w == 0 || volume.voxels.len() != d * h * w {
        return Err(DicomWriteError::Empty {
            depth: d,
            height: h,
            width: w,
        });
    }
    if h > 65535 || w > 65535 {
        return Err(DicomWriteError::TooLarge {
            height: h,
            width: w,
        });
    }
    if [spacing.slice, spacing.row, spacing.col]
        .iter()
        .any(|s| !s.is_finite() || *s <= 0.0)
    {
        return Err(DicomWriteError::InvalidSpacing(spacing));
    }
    let mut pixels = Vec::with_capacity(volume.voxels.len());
    for (index, &value) in volume.voxels.iter().enumerate() {
        if !(value.is_finite() && value.fract() == 0.0 && (0.0..=65535.0).contains(&value)) {
            return Err(DicomWriteError::NotRepresentable { index, value });
        }
        pixels.push(value as u16);
    }

    std::fs::create_dir_all(dir).map_err(|source| DicomWriteError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let study_uid = options.study_uid.clone().unwrap_or_else(new_uid);
    let series_uid = new_uid();
    let frame_of_reference = new_uid();
    // Centre the volume on the isocentre.
    let x0 = (d - 1) as f64 * spacing.slice / 2.0;
    let y0 = -((w - 1) as f64) * spacing.col / 2.0;
    let z0 = (h - 1) as f64 * spacing.row / 2.0;

    let mut files = Vec::with_capacity(d);
    for z in 0..d {
        let path = dir.join(format!("IM{:05}.dcm", z + 1));
        let sop_uid = new_uid();
        let slice = &pixels[z * h * w..(z + 1) * h * w];
        let text = |tag, vr, s: &str| DataElement::new(tag, vr, PrimitiveValue::from(s));
        let us = |tag, v: u16| DataElement::new(tag, VR::US, PrimitiveValue::from(v));
        let obj = InMemDicomObject::from_element_iter([
            text(tags::IMAGE_TYPE, VR::CS, "DERIVED\\SECONDARY"),
            text(tags::SOP_CLASS_UID, VR::UI, uids::MR_IMAGE_STORAGE),
            text(tags::SOP_INSTANCE_UID, VR::UI, &sop_uid),
            text(tags::STUDY_DATE, VR::DA, ""),
            text(tags::ACCESSION_NUMBER, VR::SH, ""),
            text(tags::MODALITY, VR::CS, "MR"),
            text(tags::MANUFACTURER, VR::LO, "fedslice synthetic phantom"),
            text(
                tags::SERIES_DESCRIPTION,
                VR::LO,
                &options.series_description,
            ),
            text(tags::PATIENT_NAME, VR::PN, SYNTHETIC_PATIENT_NAME),
            text(tags::PATIENT_ID, VR::LO, &options.patient_id),
            text(tags::PATIENT_BIRTH_DATE, VR::DA, ""),
            text(tags::PATIENT_SEX, VR::CS, "O"),
            text(tags::SLICE_THICKNESS, VR::DS, &ds(spacing.slice)),
            text(tags::SPACING_BETWEEN_SLICES, VR::DS, &ds(spacing.slice)),
            text(tags::STUDY_INSTANCE_UID, VR::UI, &study_uid),
            text(tags::SERIES_INSTANCE_UID, VR::UI, &series_uid),
            text(tags::STUDY_ID, VR::SH, "PHANTOM"),
            text(
                tags::SERIES_NUMBER,
                VR::IS,
                &options.series_number.to_string(),
            ),
            text(tags::INSTANCE_NUMBER, VR::IS, &(z + 1).to_string()),
            text(
                tags::IMAGE_POSITION_PATIENT,
                VR::DS,
                &multi(&[x0 - z as f64 * spacing.slice, y0, z0]),
            ),
            text(
                tags::IMAGE_ORIENTATION_PATIENT,
                VR::DS,
                &multi(&SAGITTAL_IOP),
            ),
            text(tags::FRAME_OF_REFERENCE_UID, VR::UI, &frame_of_reference),
            us(tags::SAMPLES_PER_PIXEL, 1),
            text(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
            us(tags::ROWS, h as u16),
            us(tags::COLUMNS, w as u16),
            text(
                tags::PIXEL_SPACING,
                VR::DS,
                &multi(&[spacing.row, spacing.col]),
            ),
            us(tags::BITS_ALLOCATED, 16),
            us(tags::BITS_STORED, 16),
            us(tags::HIGH_BIT, 15),
            us(tags::PIXEL_REPRESENTATION, 0),
            DataElement::new(
                tags::PIXEL_DATA,
                VR::OW,
                PrimitiveValue::U16(slice.iter().copied().collect()),
            ),
        ]);
        let encode = |reason: String| DicomWriteError::Encode {
            path: path.clone(),
            reason,
        };
        let file = obj
            .with_meta(
                FileMetaTableBuilder::new()
                    .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
                    .media_storage_sop_class_uid(uids::MR_IMAGE_STORAGE)
                    .media_storage_sop_instance_uid(&sop_uid),
            )
            .map_err(|e| encode(e.to_string()))?;
        file.write_to_file(&path)
            .map_err(|e| encode(e.to_string()))?;
        files.push(path);
    }
    Ok(WrittenSeries {
        files,
        study_uid,
        series_uid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_strings_fit_sixteen_chars() {
        assert_eq!(ds(0.5), "0.5");
        assert_eq!(ds(3.0), "3");
        assert_eq!(ds(-0.0), "0");
        assert_eq!(ds(-123.4567891234), "-123.456789");
        assert!(ds(1.0e12 / 3.0).len() <= 16);
    }

    #[test]
    fn uids_are_valid() {
        let u = new_uid();
        assert!(u.starts_with("2.25."));
        assert!(u.len() <= 64);
        assert!(u[5..].chars().all(|c| c.is_ascii_digit()));
    }

    #[test]
    fn refuses_non_integer_voxels() {
        let mut v = Volume::zeros(1, 2, 2);
        v.voxels[3] = 0.5;
        let dir = std::env::temp_dir().join("fedslice-never-written");
        let r = write_dicom_series(
            &dir,
            &v,
            Spacing {
                slice: 1.0,
                row: 1.0,
                col: 1.0,
            },
            &SeriesWriteOptions::default(),
        );
        assert!(matches!(
            r,
            Err(DicomWriteError::NotRepresentable { index: 3, .. })
        ));
    }
}
