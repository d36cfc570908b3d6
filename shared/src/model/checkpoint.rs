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

/// What `config.json` beside `model.safetensors` records, so a saved classifier
/// can be rebuilt and used with exactly its training-time preprocessing.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClassifierMeta {
    pub format_version: u32,
    pub model: super::ClassifierConfig,
    pub preprocess: crate::data::preprocess::PreprocessConfig,
    /// Decision threshold on the tear probability (`p >= threshold` ⇒ tear).
    pub threshold: f64,
    pub labels: [String; 2],
    /// The plane the classifier was trained on.
    #[serde(default)]
    pub plane: crate::data::plane::Plane,
}

impl ClassifierMeta {
    pub const FORMAT_VERSION: u32 = 1;

    pub fn new(
        model: super::ClassifierConfig,
        preprocess: crate::data::preprocess::PreprocessConfig,
        threshold: f64,
    ) -> Self {
        Self {
            format_version: Self::FORMAT_VERSION,
            model,
            preprocess,
            threshold,
            labels: ["intact".into(), "acl_tear".into()],
            plane: crate::data::plane::Plane::default(),
        }
    }
}

/// Writes `model.safetensors` and `config.json` into `dir` (created if needed).
pub fn save_classifier(
    dir: &Path,
    model: &super::ExamClassifier,
    meta: &ClassifierMeta,
) -> Result<(), CheckpointError> {
    let save_err = |reason: String| CheckpointError::Save {
        path: dir.display().to_string(),
        reason,
    };
    std::fs::create_dir_all(dir).map_err(|e| save_err(e.to_string()))?;
    let json = serde_json::to_vec_pretty(meta).map_err(|e| save_err(e.to_string()))?;
    std::fs::write(dir.join("config.json"), json).map_err(|e| save_err(e.to_string()))?;
    save_safetensors(model, &dir.join("model.safetensors"))
}

/// Rebuilds the classifier saved in `dir` on `device`.
pub fn load_classifier(
    dir: &Path,
    device: &burn::tensor::Device,
) -> Result<(super::ExamClassifier, ClassifierMeta), CheckpointError> {
    let config_path = dir.join("config.json");
    let load_err = |reason: String| CheckpointError::Load {
        path: config_path.display().to_string(),
        reason,
    };
    let bytes = std::fs::read(&config_path).map_err(|e| load_err(e.to_string()))?;
    let meta: ClassifierMeta =
        serde_json::from_slice(&bytes).map_err(|e| load_err(e.to_string()))?;
    if meta.format_version != ClassifierMeta::FORMAT_VERSION {
        return Err(load_err(format!(
            "format version {} is not supported (expected {})",
            meta.format_version,
            ClassifierMeta::FORMAT_VERSION
        )));
    }
    meta.model.encoder.validate().map_err(load_err)?;
    let model = super::ExamClassifier::new(&meta.model, device);
    let model = load_safetensors(model, &dir.join("model.safetensors"))?;
    Ok((model, meta))
}
