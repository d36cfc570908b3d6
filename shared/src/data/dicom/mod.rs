//! DICOM ingestion: folder trees of files from a PACS or archive export into
//! ordered, validated series and [`Volume`](crate::data::Volume)s, plus a
//! writer that exports the synthetic phantom as a real MR series.
//!
//! Decoding uses dicom-rs with pure-Rust codecs only, so the site agent needs
//! no C libraries: native explicit/implicit VR little endian, explicit VR big
//! endian, deflated explicit VR little endian, RLE lossless, JPEG baseline /
//! extended / lossless (jpeg-decoder) and JPEG 2000 (openjp2, a Rust port of
//! OpenJPEG). JPEG-LS and JPEG XL are reported as unsupported transfer syntaxes
//! (their dicom-rs codecs need CharLS or are not built).
//!
//! Identifiers read from headers are held as [`Identifier`]s, whose Debug and
//! Display redact; series are named in messages by a [`SeriesKey`] digest.

mod error;
mod geometry;
mod guard;
mod header;
mod identity;
mod open;
mod pixels;
mod series;
pub mod vr;
mod writer;

pub use error::DicomError;
pub use geometry::{Plane, Spacing, plane_of, slice_normal};
pub use guard::{Encoding, LengthPastEnd, MAX_INFLATED_BYTES, check_data_set};
pub use identity::{Identifier, SeriesKey};
pub use open::MAX_FILE_BYTES;

/// Parses a file's header (everything before Pixel Data), whatever its layout.
pub fn open_header(path: &std::path::Path) -> Result<dicom_object::DefaultDicomObject, DicomError> {
    open::open(path, open::Depth::Header)
}
pub use pixels::MAX_DECODED_BYTES;
pub use series::{
    DicomScan, DicomSeries, SeriesEntry, SeriesInfo, SeriesLayout, SkippedFile, SliceOrder,
    SpacingSource, StudyEntry, read_exam_plane, read_series_dir, scan_dir, scan_files,
};
pub use writer::{
    DicomWriteError, SAGITTAL_IOP, SYNTHETIC_PATIENT_NAME, SeriesWriteOptions, WrittenSeries,
    new_uid, write_dicom_series,
};
