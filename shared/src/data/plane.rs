//! The anatomical plane a volume is sliced in. The knee task reads sagittal
//! series by default; a site or a researcher may choose another plane, and
//! every reader (MRNet folders, DICOM orientation, NIfTI affine) honours it.

use std::fmt;

/// The anatomical plane of a series.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Plane {
    /// Normal mostly along left–right: the knee task's default.
    #[default]
    Sagittal,
    /// Normal mostly along anterior–posterior.
    Coronal,
    /// Normal mostly along superior–inferior.
    Axial,
    /// The header carries no orientation (e.g. enhanced MR with its functional
    /// groups stripped); such a series is never chosen for a specific plane.
    #[serde(rename = "unknown-plane")]
    Unknown,
}

impl fmt::Display for Plane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Plane::Sagittal => "sagittal",
            Plane::Coronal => "coronal",
            Plane::Axial => "axial",
            Plane::Unknown => "unknown-plane",
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown plane {0:?} (sagittal, coronal or axial)")]
pub struct UnknownPlane(pub String);

impl std::str::FromStr for Plane {
    type Err = UnknownPlane;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sagittal" => Ok(Plane::Sagittal),
            "coronal" => Ok(Plane::Coronal),
            "axial" => Ok(Plane::Axial),
            other => Err(UnknownPlane(other.to_string())),
        }
    }
}
