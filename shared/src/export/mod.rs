//! The trained classifier leaving the training system: the self-describing
//! bundle (timm-layout safetensors, config, model card, digests), and, with
//! the DICOM/NIfTI readers built, the predictor that runs a bundle on an exam
//! and the DICOM Structured Report that carries its answer back to a PACS.

pub mod bundle;
pub mod card;
pub mod onnx;
#[cfg(feature = "readers")]
pub mod predict;
#[cfg(feature = "readers")]
pub mod sr;
pub mod timm;

pub use bundle::{Bundle, BundleConfig, BundleError, write_bundle};
pub use card::{Origin, Provenance, ValidationRow, unix_now};
