//! Saving and loading model weights as safetensors.

use std::path::Path;

use burn::module::Module;
use burn::store::{ModuleSnapshot, SafetensorsStore, SafetensorsStoreError};

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot write weights to {path}: {reason}")]
    Save { path: String, reason: String },
    #[error("cannot read weights from {path}: {reason}")]
    Load { path: String, reason: String },
    #[error("weights in {path} do not fit the model: {reason}")]
    Mismatch { path: String, reason: String },
}

pub fn save_safetensors<M: Module>(model: &M, path: &Path) -> Result<(), CheckpointError> {
    let mut store = SafetensorsStore::from_file(path).overwrite(true);
    model
        .save_into(&mut store)
        .map_err(|e| CheckpointError::Save {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
}

/// Loads every tensor of `model` from `path`; a missing, unexpected or
/// mis-shaped tensor is an error, never a silently half-loaded model.
pub fn load_safetensors<M: Module>(mut model: M, path: &Path) -> Result<M, CheckpointError> {
    let mut store = SafetensorsStore::from_file(path).allow_partial(false);
    let result = model.load_from(&mut store).map_err(|e| {
        let path = path.display().to_string();
        match e {
            SafetensorsStoreError::TensorNotFound(_)
            | SafetensorsStoreError::ValidationFailed(_) => CheckpointError::Mismatch {
                path,
                reason: e.to_string(),
            },
            _ => CheckpointError::Load {
                path,
                reason: e.to_string(),
            },
        }
    })?;
    if !result.errors.is_empty() || !result.missing.is_empty() || !result.unused.is_empty() {
        return Err(CheckpointError::Mismatch {
            path: path.display().to_string(),
            reason: format!(
                "errors: {:?}; missing: {:?}; unexpected: {:?}",
                result.errors, result.missing, result.unused
            ),
        });
    }
    Ok(model)
}
