//! What one image object says about its frames: identity, size, pixel format,
//! and per-frame geometry and rescale.
//!
//! Classic MR objects carry one frame with top-level attributes; enhanced MR
//! objects carry many frames whose position, orientation, spacing and rescale
//! live in the Shared and Per-frame Functional Groups. This module flattens
//! both into one per-frame list so the series code never needs to know which
//! kind it was given; a per-frame value overrides a shared one, which
//! overrides a top-level one.

use std::path::{Path, PathBuf};

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::{DefaultDicomObject, InMemDicomObject};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

use super::error::DicomError;
use super::geometry::validate_orientation;
use super::identity::Identifier;

/// A bound on NumberOfFrames, so a corrupt header cannot make the reader plan
/// for billions of frames; real enhanced MR objects have a few thousand.
pub(crate) const MAX_FRAMES: u32 = 65_536;

/// Modality LUT: stored value × slope + intercept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Rescale {
    pub slope: f64,
    pub intercept: f64,
}

impl Rescale {
    pub const IDENTITY: Self = Self {
        slope: 1.0,
        intercept: 0.0,
    };
}

/// Geometry and rescale of one frame.
#[derive(Debug, Clone)]
pub(crate) struct FrameInfo {
    pub position: Option<[f64; 3]>,
    pub orientation: Option<[f64; 6]>,
    pub pixel_spacing: Option<[f64; 2]>,
    pub rescale: Rescale,
}

/// How stored samples are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PixelFormat {
    pub bits_allocated: u16,
    pub bits_stored: u16,
    pub signed: bool,
}

/// Everything about one file except its pixels.
#[derive(Debug, Clone)]
pub(crate) struct InstanceHeader {
    pub path: PathBuf,
    pub study_uid: Identifier,
    pub series_uid: Identifier,
    /// SOPInstanceUID: two files with the same one are copies of one object
    /// (e.g. the same slice exported in two transfer syntaxes).
    pub sop_uid: Identifier,
    pub patient_id: Identifier,
    pub modality: Option<String>,
    pub transfer_syntax: String,
    pub rows: u32,
    pub cols: u32,
    pub format: PixelFormat,
    pub instance_number: Option<i64>,
    pub slice_thickness: Option<f64>,
    pub spacing_between_slices: Option<f64>,
    pub frames: Vec<FrameInfo>,
}

fn text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let s = obj.get(tag)?.to_str().ok()?;
    let s = s.trim_matches(['\0', ' ']).to_string();
    (!s.is_empty()).then_some(s)
}

fn floats(
    path: &Path,
    obj: &InMemDicomObject,
    tag: Tag,
    name: &'static str,
) -> Result<Option<Vec<f64>>, DicomError> {
    let Some(elem) = obj.get(tag) else {
        return Ok(None);
    };
    if elem.header().len.0 == 0 {
        return Ok(None);
    }
    let v = elem
        .to_multi_float64()
        .map_err(|e| DicomError::invalid(path, name, e.to_string()))?;
    if v.iter().any(|x| !x.is_finite()) {
        return Err(DicomError::invalid(path, name, "non-finite number"));
    }
    Ok((!v.is_empty()).then_some(v))
}

fn fixed<const N: usize>(
    path: &Path,
    obj: &InMemDicomObject,
    tag: Tag,
    name: &'static str,
) -> Result<Option<[f64; N]>, DicomError> {
    match floats(path, obj, tag, name)? {
        None => Ok(None),
        Some(v) => <[f64; N]>::try_from(&v[..]).map(Some).map_err(|_| {
            DicomError::invalid(path, name, format!("{} values, {N} expected", v.len()))
        }),
    }
}

fn scalar(
    path: &Path,
    obj: &InMemDicomObject,
    tag: Tag,
    name: &'static str,
) -> Result<Option<f64>, DicomError> {
    Ok(floats(path, obj, tag, name)?.and_then(|v| v.first().copied()))
}

fn uint(
    path: &Path,
    obj: &InMemDicomObject,
    tag: Tag,
    name: &'static str,
) -> Result<Option<u32>, DicomError> {
    let Some(elem) = obj.get(tag) else {
        return Ok(None);
    };
    elem.to_int::<u32>()
        .map(Some)
        .map_err(|e| DicomError::invalid(path, name, e.to_string()))
}

/// The first item of a functional-group macro sequence inside `group`.
fn macro_item(group: Option<&InMemDicomObject>, tag: Tag) -> Option<&InMemDicomObject> {
    group?.get(tag)?.items()?.first()
}

/// Looks a value up in the per-frame group, then the shared group, then the
/// top level, as PS3.3 C.7.6.16 prescribes.
fn layered<T>(
    per_frame: Option<&InMemDicomObject>,
    shared: Option<&InMemDicomObject>,
    top: &InMemDicomObject,
    macro_seq: Tag,
    mut read: impl FnMut(&InMemDicomObject) -> Result<Option<T>, DicomError>,
) -> Result<Option<T>, DicomError> {
    for group in [per_frame, shared] {
        if let Some(item) = macro_item(group, macro_seq)
            && let Some(v) = read(item)?
        {
            return Ok(Some(v));
        }
    }
    read(top)
}

fn rescale_of(path: &Path, obj: &InMemDicomObject) -> Result<Option<Rescale>, DicomError> {
    let slope = scalar(path, obj, tags::RESCALE_SLOPE, "RescaleSlope")?;
    let intercept = scalar(path, obj, tags::RESCALE_INTERCEPT, "RescaleIntercept")?;
    if slope.is_none() && intercept.is_none() {
        return Ok(None);
    }
    let slope = slope.unwrap_or(1.0);
    if slope == 0.0 {
        // A zero slope would turn every slice into a constant: refuse rather
        // than hand training a silent flat image.
        return Err(DicomError::invalid(path, "RescaleSlope", "zero"));
    }
    Ok(Some(Rescale {
        slope,
        intercept: intercept.unwrap_or(0.0),
    }))
}

/// Checks the rescale against the stored values the format allows, as the
/// f32 volume will hold them: a huge slope or intercept would turn pixels
/// into infinities (finite in f64, not in f32), and a tiny slope would map
/// every stored value to one number (a zero slope is refused for the same
/// reason).
fn check_rescale_range(
    path: &Path,
    format: PixelFormat,
    rescale: Rescale,
) -> Result<(), DicomError> {
    let bits = i32::from(format.bits_stored);
    let (lo, hi) = if format.signed {
        (-(2f64.powi(bits - 1)), 2f64.powi(bits - 1) - 1.0)
    } else {
        (0.0, 2f64.powi(bits) - 1.0)
    };
    let apply = |stored: f64| (stored * rescale.slope + rescale.intercept) as f32;
    let (a, b) = (apply(lo), apply(hi));
    let reason = if !a.is_finite() || !b.is_finite() {
        "beyond the 32-bit float range"
    } else if a == b {
        "all to one value"
    } else {
        return Ok(());
    };
    Err(DicomError::invalid(
        path,
        "RescaleSlope/RescaleIntercept",
        format!(
            "slope {} with intercept {} takes stored values {lo}..={hi} {reason}",
            rescale.slope, rescale.intercept
        ),
    ))
}

/// Reads the header of an opened object.
pub(crate) fn read_header(
    path: &Path,
    file: &DefaultDicomObject,
) -> Result<InstanceHeader, DicomError> {
    let obj: &InMemDicomObject = file;
    let transfer_syntax = file
        .meta()
        .transfer_syntax()
        .trim_end_matches(['\0', ' '])
        .to_string();

    // Non-image objects (SR, presentation states, DICOMDIR) have no Rows.
    let Some(rows) = uint(path, obj, tags::ROWS, "Rows")? else {
        return Err(DicomError::NoPixelData {
            path: path.to_path_buf(),
        });
    };
    let cols = uint(path, obj, tags::COLUMNS, "Columns")?
        .ok_or_else(|| DicomError::missing(path, "Columns"))?;
    if rows == 0 {
        return Err(DicomError::invalid(path, "Rows", "zero"));
    }
    if cols == 0 {
        return Err(DicomError::invalid(path, "Columns", "zero"));
    }

    let ts = TransferSyntaxRegistry.get(&transfer_syntax);
    match ts {
        Some(ts) if ts.can_decode_all() => {}
        Some(ts) => {
            return Err(DicomError::UnsupportedTransferSyntax {
                path: path.to_path_buf(),
                uid: transfer_syntax.clone(),
                name: ts.name().to_string(),
            });
        }
        None => {
            return Err(DicomError::UnsupportedTransferSyntax {
                path: path.to_path_buf(),
                uid: transfer_syntax.clone(),
                name: "unknown".into(),
            });
        }
    }

    let samples = uint(path, obj, tags::SAMPLES_PER_PIXEL, "SamplesPerPixel")?.unwrap_or(1);
    if samples != 1 {
        return Err(DicomError::UnsupportedPixelFormat {
            path: path.to_path_buf(),
            reason: format!("{samples} samples per pixel (only greyscale MR is read)"),
        });
    }
    let bits_allocated = uint(path, obj, tags::BITS_ALLOCATED, "BitsAllocated")?
        .ok_or_else(|| DicomError::missing(path, "BitsAllocated"))?;
    if !matches!(bits_allocated, 8 | 16 | 32) {
        return Err(DicomError::UnsupportedPixelFormat {
            path: path.to_path_buf(),
            reason: format!("BitsAllocated {bits_allocated}"),
        });
    }
    let bits_stored = uint(path, obj, tags::BITS_STORED, "BitsStored")?.unwrap_or(bits_allocated);
    if bits_stored == 0 || bits_stored > bits_allocated {
        return Err(DicomError::invalid(
            path,
            "BitsStored",
            format!("{bits_stored} with BitsAllocated {bits_allocated}"),
        ));
    }
    let signed = match uint(path, obj, tags::PIXEL_REPRESENTATION, "PixelRepresentation")? {
        None | Some(0) => false,
        Some(1) => true,
        Some(v) => {
            return Err(DicomError::invalid(
                path,
                "PixelRepresentation",
                v.to_string(),
            ));
        }
    };

    let format = PixelFormat {
        bits_allocated: bits_allocated as u16,
        bits_stored: bits_stored as u16,
        signed,
    };

    let n_frames = match text(obj, tags::NUMBER_OF_FRAMES) {
        None => 1,
        Some(s) => s
            .parse::<u32>()
            .map_err(|_| DicomError::invalid(path, "NumberOfFrames", "not an integer"))?,
    };
    if n_frames == 0 || n_frames > MAX_FRAMES {
        return Err(DicomError::invalid(
            path,
            "NumberOfFrames",
            format!("{n_frames} (1..={MAX_FRAMES} accepted)"),
        ));
    }

    let shared = obj
        .get(tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE)
        .and_then(|e| e.items())
        .and_then(|items| items.first());
    let per_frame_items = obj
        .get(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .and_then(|e| e.items());
    if let Some(items) = per_frame_items
        && items.len() != n_frames as usize
    {
        return Err(DicomError::invalid(
            path,
            "PerFrameFunctionalGroupsSequence",
            format!("{} items for {n_frames} frames", items.len()),
        ));
    }

    let mut frames = Vec::with_capacity(n_frames as usize);
    for f in 0..n_frames as usize {
        let pf = per_frame_items.and_then(|items| items.get(f));
        let position = layered(pf, shared, obj, tags::PLANE_POSITION_SEQUENCE, |o| {
            fixed::<3>(
                path,
                o,
                tags::IMAGE_POSITION_PATIENT,
                "ImagePositionPatient",
            )
        })?;
        let orientation = layered(pf, shared, obj, tags::PLANE_ORIENTATION_SEQUENCE, |o| {
            fixed::<6>(
                path,
                o,
                tags::IMAGE_ORIENTATION_PATIENT,
                "ImageOrientationPatient",
            )
        })?;
        if let Some(iop) = &orientation {
            validate_orientation(iop)
                .map_err(|r| DicomError::invalid(path, "ImageOrientationPatient", r))?;
        }
        let pixel_spacing = layered(pf, shared, obj, tags::PIXEL_MEASURES_SEQUENCE, |o| {
            fixed::<2>(path, o, tags::PIXEL_SPACING, "PixelSpacing")
        })?;
        if let Some(ps) = &pixel_spacing
            && ps.iter().any(|v| *v <= 0.0)
        {
            return Err(DicomError::invalid(path, "PixelSpacing", "not positive"));
        }
        let rescale = layered(
            pf,
            shared,
            obj,
            tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE,
            |o| rescale_of(path, o),
        )?
        .unwrap_or(Rescale::IDENTITY);
        check_rescale_range(path, format, rescale)?;
        frames.push(FrameInfo {
            position,
            orientation,
            pixel_spacing,
            rescale,
        });
    }

    let slice_thickness = layered(None, shared, obj, tags::PIXEL_MEASURES_SEQUENCE, |o| {
        scalar(path, o, tags::SLICE_THICKNESS, "SliceThickness")
    })?;
    let spacing_between_slices = layered(None, shared, obj, tags::PIXEL_MEASURES_SEQUENCE, |o| {
        scalar(
            path,
            o,
            tags::SPACING_BETWEEN_SLICES,
            "SpacingBetweenSlices",
        )
    })?;
    let instance_number = text(obj, tags::INSTANCE_NUMBER).and_then(|s| s.parse::<i64>().ok());

    Ok(InstanceHeader {
        path: path.to_path_buf(),
        study_uid: Identifier::new(text(obj, tags::STUDY_INSTANCE_UID).unwrap_or_default()),
        series_uid: Identifier::new(text(obj, tags::SERIES_INSTANCE_UID).unwrap_or_default()),
        sop_uid: Identifier::new(text(obj, tags::SOP_INSTANCE_UID).unwrap_or_default()),
        patient_id: Identifier::new(text(obj, tags::PATIENT_ID).unwrap_or_default()),
        modality: text(obj, tags::MODALITY),
        transfer_syntax,
        rows,
        cols,
        format,
        instance_number,
        slice_thickness,
        spacing_between_slices,
        frames,
    })
}
