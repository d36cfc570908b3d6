//! The classifier bundle on disk: `model.safetensors` (timm layout, see
//! [`super::timm`]), `config.json`, `MODEL_CARD.md`, `provenance.json`,
//! optionally `model.onnx`, and `SHA256SUMS` over all of them in
//! `sha256sum -c` format. Opening a bundle checks every digest, the format
//! version, and that the config describes exactly the tensors present.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::card::{Provenance, render_model_card};
use super::onnx;
use super::timm::{LayoutError, from_bundle_layout, to_bundle_layout};
use crate::data::plane::Plane;
use crate::data::preprocess::PreprocessConfig;
use crate::federated::{from_tensor_map, to_tensor_map};
use crate::model::{ClassifierConfig, ExamClassifier, SliceEmbedding, VitConfig};
use crate::wire::{self, Dtype, TensorMap};

pub const FORMAT: &str = "fedslice-classifier-bundle";
pub const FORMAT_VERSION: u32 = 1;
pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const ONNX_FILE: &str = "model.onnx";
pub const CARD_FILE: &str = "MODEL_CARD.md";
pub const PROVENANCE_FILE: &str = "provenance.json";
pub const SUMS_FILE: &str = "SHA256SUMS";

/// Files a bundle must carry (and list in `SHA256SUMS`).
const REQUIRED: [&str; 4] = [CONFIG_FILE, WEIGHTS_FILE, CARD_FILE, PROVENANCE_FILE];

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "{path}: SHA-256 is {actual}, but SHA256SUMS says {expected}; the bundle was altered or damaged"
    )]
    DigestMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("{dir}: `{file}` is not listed in SHA256SUMS")]
    Unlisted { dir: PathBuf, file: String },
    #[error(
        "{path}: bundle format version {found} is not supported (this build reads {FORMAT_VERSION})"
    )]
    UnknownVersion { path: PathBuf, found: u32 },
    #[error(
        "{path} was written by `fedslice train` before it saved bundles; convert the run with `fedslice export --from RUN_DIR --out BUNDLE` and use BUNDLE"
    )]
    LegacyCheckpoint { path: PathBuf },
    #[error("{dir}: config.json does not describe the tensors in model.safetensors: {reason}")]
    ConfigMismatch { dir: PathBuf, reason: String },
    #[error(transparent)]
    Layout(#[from] LayoutError),
}

/// timm's description of the encoder, so Python users can rebuild it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimmSpec {
    /// A timm registry name when the encoder matches one (vit-tiny, vit-small).
    pub model_name: Option<String>,
    /// `timm.models.vision_transformer.VisionTransformer(**kwargs)` builds the encoder.
    pub kwargs: serde_json::Value,
}

impl TimmSpec {
    pub fn for_encoder(vit: &VitConfig, embedding: SliceEmbedding) -> Self {
        let width = match (vit.embed_dim, vit.num_heads) {
            (192, 3) => Some("tiny"),
            (384, 6) => Some("small"),
            (768, 12) => Some("base"),
            _ => None,
        };
        let model_name = width
            .filter(|_| vit.depth == 12 && vit.mlp_ratio == 4)
            .map(|w| format!("vit_{w}_patch{}_{}", vit.patch_size, vit.image_size));
        Self {
            model_name,
            kwargs: serde_json::json!({
                "img_size": vit.image_size,
                "patch_size": vit.patch_size,
                "in_chans": 1,
                "num_classes": 0,
                "embed_dim": vit.embed_dim,
                "depth": vit.depth,
                "num_heads": vit.num_heads,
                "mlp_ratio": vit.mlp_ratio,
                "qkv_bias": true,
                "class_token": true,
                "global_pool": embedding.timm_global_pool(),
                // timm normalises after pooling for "avg" unless told not to;
                // fedslice normalises every token first, under the name `norm`.
                "fc_norm": false,
            }),
        }
    }
}

/// What one exam looks like to the model after preprocessing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    /// `[slices, 1, image_size, image_size]`, float32, z-scored per exam.
    pub layout: String,
    pub channels: usize,
    pub image_size: usize,
    pub dtype: String,
}

/// `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundleConfig {
    pub format: String,
    pub format_version: u32,
    pub fedslice_version: String,
    pub architecture: ClassifierConfig,
    pub timm: TimmSpec,
    /// Tensor naming in model.safetensors.
    pub tensor_layout: String,
    pub input: InputSpec,
    pub preprocess: PreprocessConfig,
    pub plane: Plane,
    /// `probability >= threshold` ⇒ `labels[1]`.
    pub threshold: f64,
    pub threshold_source: String,
    pub labels: [String; 2],
    /// What `model.onnx` computes, when the bundle carries one.
    pub onnx: Option<OnnxSpec>,
    /// The differential-privacy guarantee of the weights (ε, δ, z, C, rounds,
    /// sampling, accountant); absent when they were trained without DP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy: Option<crate::privacy::PrivacyReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OnnxSpec {
    pub file: String,
    pub opset: i64,
    pub input: String,
    pub outputs: Vec<String>,
}

impl BundleConfig {
    pub fn new(
        architecture: ClassifierConfig,
        preprocess: PreprocessConfig,
        plane: Plane,
        threshold: f64,
        threshold_source: impl Into<String>,
    ) -> Self {
        let image_size = architecture.encoder.image_size;
        Self {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            fedslice_version: env!("CARGO_PKG_VERSION").into(),
            timm: TimmSpec::for_encoder(&architecture.encoder, architecture.slice_embedding),
            architecture,
            tensor_layout: "timm VisionTransformer; exam pooling and head under `exam.`".into(),
            input: InputSpec {
                layout: "[slices, 1, H, W]".into(),
                channels: 1,
                image_size,
                dtype: "float32".into(),
            },
            preprocess,
            plane,
            threshold,
            threshold_source: threshold_source.into(),
            labels: ["intact".into(), "acl_tear".into()],
            onnx: None,
            privacy: None,
        }
    }

    /// Inconsistencies inside the config itself.
    fn check(&self) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!("format is `{}`, expected `{FORMAT}`", self.format));
        }
        self.architecture.encoder.validate()?;
        let size = self.architecture.encoder.image_size;
        if self.input.image_size != size || self.preprocess.image_size != size {
            return Err(format!(
                "input size {} / preprocessing size {} differ from the encoder's {size}",
                self.input.image_size, self.preprocess.image_size
            ));
        }
        if self.input.channels != 1 {
            return Err(format!(
                "{} input channels; the encoder takes 1",
                self.input.channels
            ));
        }
        if !(0.0..=1.0).contains(&self.threshold) {
            return Err(format!("threshold {} is not a probability", self.threshold));
        }
        Ok(())
    }
}

/// Writes the bundle into `dir`, `model.onnx` included (its spec is recorded
/// in the written `config.json`). Files are written to a sibling temporary
/// folder first and renamed into place, so a crash leaves either the old
/// bundle or the new one, never a mix.
pub fn write_bundle(
    dir: &Path,
    model: &ExamClassifier,
    config: &BundleConfig,
    provenance: &Provenance,
) -> Result<(), BundleError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |cause| BundleError::Io { path, cause }
    };
    let invalid = |path: &Path, reason: String| BundleError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    config.check().map_err(|r| invalid(dir, r))?;
    let burn = to_tensor_map(model).map_err(|e| invalid(dir, e.to_string()))?;
    let tensors = to_bundle_layout(&burn)?;
    let weights = tensors
        .to_safetensors(Dtype::F32)
        .map_err(|e| invalid(dir, e.to_string()))?;
    let onnx_bytes = onnx::classifier_to_onnx(&config.architecture, &tensors)
        .map_err(|e| invalid(&dir.join(ONNX_FILE), e.to_string()))?;
    let config = BundleConfig {
        onnx: Some(onnx::spec()),
        ..config.clone()
    };
    let config_json =
        serde_json::to_vec_pretty(&config).map_err(|e| invalid(dir, e.to_string()))?;
    let provenance_json =
        serde_json::to_vec_pretty(provenance).map_err(|e| invalid(dir, e.to_string()))?;
    let card = render_model_card(&config, provenance);

    let mut files: Vec<(&str, &[u8])> = vec![
        (CONFIG_FILE, &config_json),
        (WEIGHTS_FILE, &weights),
        (ONNX_FILE, &onnx_bytes),
        (CARD_FILE, card.as_bytes()),
        (PROVENANCE_FILE, &provenance_json),
    ];
    let sums: String = files
        .iter()
        .map(|(name, bytes)| format!("{}  {name}\n", wire::digest(bytes)))
        .collect();
    files.push((SUMS_FILE, sums.as_bytes()));

    let staging = staging_dir(dir);
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io(&staging))?;
    }
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;
    for (name, bytes) in &files {
        let path = staging.join(name);
        std::fs::write(&path, bytes).map_err(io(&path))?;
    }
    if dir.exists() {
        let old = dir.with_extension("replaced");
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(io(&old))?;
        }
        std::fs::rename(dir, &old).map_err(io(dir))?;
        std::fs::rename(&staging, dir).map_err(io(dir))?;
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    } else {
        std::fs::rename(&staging, dir).map_err(io(dir))?;
    }
    Ok(())
}

fn staging_dir(dir: &Path) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "bundle".into());
    dir.with_file_name(format!(".{name}.partial"))
}

/// A verified bundle, loaded.
pub struct Bundle {
    pub dir: PathBuf,
    pub config: BundleConfig,
    pub model: ExamClassifier,
    pub provenance: Provenance,
    /// SHA-256 of `model.safetensors`.
    pub weights_sha256: String,
    /// SHA-256 of `SHA256SUMS`, which covers every file: one id for the whole bundle.
    pub bundle_sha256: String,
}

impl Bundle {
    /// Verifies and loads the bundle in `dir` onto `device`.
    pub fn open(dir: &Path, device: &Device) -> Result<Self, BundleError> {
        if is_legacy_checkpoint(dir) {
            return Err(BundleError::LegacyCheckpoint {
                path: dir.join(CONFIG_FILE),
            });
        }
        let files = verify_digests(dir)?;
        let config_path = dir.join(CONFIG_FILE);
        let config_bytes = &files[CONFIG_FILE];
        let version = serde_json::from_slice::<serde_json::Value>(config_bytes)
            .ok()
            .and_then(|v| v.get("format_version").and_then(|v| v.as_u64()));
        match version {
            Some(v) if v == u64::from(FORMAT_VERSION) => {}
            Some(v) => {
                return Err(BundleError::UnknownVersion {
                    path: config_path,
                    found: u32::try_from(v).unwrap_or(u32::MAX),
                });
            }
            None => {
                return Err(BundleError::Invalid {
                    path: config_path,
                    reason: "no format_version".into(),
                });
            }
        }
        let config: BundleConfig =
            serde_json::from_slice(config_bytes).map_err(|e| BundleError::Invalid {
                path: config_path.clone(),
                reason: e.to_string(),
            })?;
        config.check().map_err(|reason| BundleError::Invalid {
            path: config_path,
            reason,
        })?;
        if let Some(onnx) = &config.onnx
            && !files.contains_key(&onnx.file)
        {
            return Err(BundleError::Unlisted {
                dir: dir.to_path_buf(),
                file: onnx.file.clone(),
            });
        }
        let provenance_path = dir.join(PROVENANCE_FILE);
        let provenance =
            serde_json::from_slice(&files[PROVENANCE_FILE]).map_err(|e| BundleError::Invalid {
                path: provenance_path,
                reason: e.to_string(),
            })?;
        let mismatch = |reason: String| BundleError::ConfigMismatch {
            dir: dir.to_path_buf(),
            reason,
        };
        let tensors = TensorMap::from_safetensors(&files[WEIGHTS_FILE])
            .map_err(|e| mismatch(e.to_string()))?;
        let burn = from_bundle_layout(&tensors)?;
        let model = from_tensor_map(ExamClassifier::new(&config.architecture, device), &burn)
            .map_err(|e| mismatch(e.to_string()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            weights_sha256: wire::digest(&files[WEIGHTS_FILE]),
            bundle_sha256: wire::digest(&files[SUMS_FILE]),
            config,
            model,
            provenance,
        })
    }
}

/// Whether `dir` holds the classifier format `fedslice train` wrote before it
/// wrote bundles: no `SHA256SUMS`, and a `config.json` with the old `model`
/// key instead of `format`. Only to name the problem and its fix; such a
/// folder is never loaded as a bundle.
fn is_legacy_checkpoint(dir: &Path) -> bool {
    if dir.join(SUMS_FILE).exists() {
        return false;
    }
    std::fs::read(dir.join(CONFIG_FILE))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .is_some_and(|v| v.get("model").is_some() && v.get("format").is_none())
}

/// Reads `SHA256SUMS` and every file it lists, checking each digest. Returns
/// the files' bytes by name (SHA256SUMS included).
pub fn verify_digests(dir: &Path) -> Result<BTreeMap<String, Vec<u8>>, BundleError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|cause| BundleError::Io {
            path: path.to_path_buf(),
            cause,
        })
    };
    let sums_path = dir.join(SUMS_FILE);
    let sums = read(&sums_path)?;
    let text = std::str::from_utf8(&sums).map_err(|_| BundleError::Invalid {
        path: sums_path.clone(),
        reason: "not UTF-8 text".into(),
    })?;
    let mut files = BTreeMap::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let bad = |reason: &str| BundleError::Invalid {
            path: sums_path.clone(),
            reason: format!("line {}: {reason}", i + 1),
        };
        let (expected, name) = line
            .split_once("  ")
            .ok_or_else(|| bad("expected `<sha256>  <file>`"))?;
        if expected.len() != 64 || !expected.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("not a SHA-256 hex digest"));
        }
        // Only plain names: a digest list must not reach outside the bundle.
        if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
            return Err(bad("file names must be plain names inside the bundle"));
        }
        let path = dir.join(name);
        let bytes = read(&path)?;
        let actual = wire::digest(&bytes);
        if !actual.eq_ignore_ascii_case(expected) {
            return Err(BundleError::DigestMismatch {
                path,
                expected: expected.to_owned(),
                actual,
            });
        }
        files.insert(name.to_owned(), bytes);
    }
    let known = REQUIRED.iter().chain([&ONNX_FILE]);
    for name in known {
        let required = REQUIRED.contains(name);
        if !files.contains_key(*name) && (required || dir.join(name).exists()) {
            return Err(BundleError::Unlisted {
                dir: dir.to_path_buf(),
                file: (*name).to_owned(),
            });
        }
    }
    files.insert(SUMS_FILE.to_owned(), sums);
    Ok(files)
}
