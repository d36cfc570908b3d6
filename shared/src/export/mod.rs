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

pub use bundle::{Bundle, BundleConfig, BundleError, ExtraFile, open_classifier, write_bundle};
pub use card::{Origin, Provenance, ValidationRow};

/// The bundle's `model.onnx` (one exam in, exam and slice logits and
/// probabilities out), recorded in `config.onnx`.
pub fn onnx_extra(
    model: &crate::model::ExamClassifier,
    config: &mut BundleConfig,
) -> Result<Vec<ExtraFile>, BundleError> {
    let invalid = |reason: String| BundleError::Invalid {
        path: std::path::PathBuf::from(bundle::ONNX_FILE),
        reason,
    };
    let burn = crate::federated::to_tensor_map(model).map_err(|e| invalid(e.to_string()))?;
    let tensors = timm::to_bundle_layout(&burn)?;
    let bytes = onnx::classifier_to_onnx(&config.architecture, &tensors)
        .map_err(|e| invalid(e.to_string()))?;
    config.onnx = Some(onnx::spec());
    Ok(vec![ExtraFile {
        name: bundle::ONNX_FILE,
        bytes,
    }])
}
