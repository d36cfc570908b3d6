//! Why a DICOM file or series could not become a volume.
//!
//! The ingestion report shows these messages to hospital IT, so each variant
//! names the file (by path) or the series (by its digest key) and the precise
//! reason. Messages never contain header values that could identify a patient:
//! no names, IDs, UIDs or dates — transfer syntax UIDs are the only UIDs shown,
//! because they identify an encoding, not a person.

use std::path::PathBuf;

use super::geometry::Plane;
use super::identity::SeriesKey;

/// A failure to read one DICOM file or to assemble one series.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DicomError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a DICOM file: {reason}")]
    NotDicom { path: PathBuf, reason: String },
    #[error("{path}: unreadable DICOM data set: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("{path}: file is {size} bytes, over the {limit}-byte limit")]
    FileTooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error(
        "{path}: element ({group:04X},{element:04X}) at byte {offset} declares {declared} bytes but only {remaining} remain in the file"
    )]
    DeclaredLengthTooLarge {
        path: PathBuf,
        group: u16,
        element: u16,
        offset: u64,
        declared: u64,
        remaining: u64,
    },
    #[error("{path}: the deflated data set inflates to more than {limit} bytes")]
    InflatedTooLarge { path: PathBuf, limit: u64 },
    #[error("{path}: no pixel data (not an image object)")]
    NoPixelData { path: PathBuf },
    #[error("{path}: missing required attribute {attribute}")]
    MissingAttribute {
        path: PathBuf,
        attribute: &'static str,
    },
    #[error("{path}: invalid {attribute}: {reason}")]
    InvalidAttribute {
        path: PathBuf,
        attribute: &'static str,
        reason: String,
    },
    #[error("{path}: unsupported transfer syntax {uid} ({name}): no pure-Rust decoder is built in")]
    UnsupportedTransferSyntax {
        path: PathBuf,
        uid: String,
        name: String,
    },
    #[error("{path}: unsupported pixel format: {reason}")]
    UnsupportedPixelFormat { path: PathBuf, reason: String },
    #[error("{path}: truncated pixel data: {actual} bytes, {expected} expected")]
    TruncatedPixelData {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("{path}: pixel data would need {bytes} bytes decoded, over the {limit}-byte limit")]
    PixelDataTooLarge {
        path: PathBuf,
        bytes: u64,
        limit: u64,
    },
    #[error("{path}: pixel data could not be decoded: {reason}")]
    Decode { path: PathBuf, reason: String },

    #[error(
        "series {series}: inconsistent slice sizes: {first_rows}x{first_cols} and {rows}x{cols} ({path})"
    )]
    InconsistentSliceSize {
        series: SeriesKey,
        first_rows: u32,
        first_cols: u32,
        rows: u32,
        cols: u32,
        path: PathBuf,
    },
    #[error("series {series}: mixed orientations (ImageOrientationPatient differs in {path})")]
    MixedOrientations { series: SeriesKey, path: PathBuf },
    #[error(
        "series {series}: {count} slices share position {position:.3} mm along the slice normal"
    )]
    DuplicateSlicePositions {
        series: SeriesKey,
        position: f64,
        count: usize,
    },
    /// Two files hold the same SOP instance (same SOPInstanceUID) but not the
    /// same image: which one is right cannot be told, so neither is used.
    #[error("series {series}: {first} and {second} are the same SOP instance but differ: {reason}")]
    ConflictingDuplicate {
        series: SeriesKey,
        first: PathBuf,
        second: PathBuf,
        reason: String,
    },
    #[error("series {series}: inconsistent pixel spacing ({path})")]
    InconsistentPixelSpacing { series: SeriesKey, path: PathBuf },
    #[error("series {series}: file changed since the scan: {reason} ({path})")]
    ChangedSinceScan {
        series: SeriesKey,
        path: PathBuf,
        reason: String,
    },
    #[error("{dir}: no {plane} series among {series_found} series found")]
    NoSeriesInPlane {
        dir: PathBuf,
        plane: Plane,
        series_found: usize,
    },
    #[error("{dir}: expected one series, found {count}")]
    NotOneSeries { dir: PathBuf, count: usize },
    #[error("{dir}: no readable DICOM image: {skipped} files skipped{first}")]
    NoImages {
        dir: PathBuf,
        skipped: usize,
        /// The first skip reason, so a one-file folder explains itself.
        first: String,
    },
}

impl DicomError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn invalid(
        path: &std::path::Path,
        attribute: &'static str,
        reason: impl Into<String>,
    ) -> Self {
        Self::InvalidAttribute {
            path: path.to_path_buf(),
            attribute,
            reason: reason.into(),
        }
    }

    pub(crate) fn missing(path: &std::path::Path, attribute: &'static str) -> Self {
        Self::MissingAttribute {
            path: path.to_path_buf(),
            attribute,
        }
    }
}
