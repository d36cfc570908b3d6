//! Data at a site: the exam type, the synthetic knee phantom, file formats,
//! splits and preprocessing.

mod volume;
pub use volume::{Exam, Spacing, Volume};

pub mod cache;
pub mod cohort;
#[cfg(feature = "readers")]
pub mod dicom;
pub mod folder;
#[cfg(feature = "readers")]
pub mod inventory;
pub mod mrnet;
#[cfg(feature = "readers")]
pub mod nifti;
#[cfg(feature = "phantom")]
pub mod phantom;
#[cfg(feature = "phantom")]
pub mod phantom_b;
pub mod plane;
pub mod preprocess;
#[cfg(feature = "phantom")]
pub mod preview;
pub mod source;
pub mod split;
