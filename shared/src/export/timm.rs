//! The bundle's tensor names and layouts: the encoder exactly as timm's
//! `VisionTransformer` state dict (`cls_token`, `patch_embed.proj.weight`
//! `[D,1,p,p]`, `blocks.{i}.attn.qkv.weight` `[3D,D]`, …), so
//! `timm.create_model(..., in_chans=1, num_classes=0).load_state_dict()` takes
//! it; the slice pooler and the head under `exam.pool.` and `exam.head.`.
//!
//! burn keeps `Linear` weights as `[in, out]` and `LayerNorm` as
//! `gamma`/`beta`; PyTorch as `[out, in]` and `weight`/`bias`. Every other
//! tensor is stored as is.

use crate::wire::{TensorMap, WireError};

/// Prefix of the exam-level (pooling and head) tensors in a bundle.
pub const EXAM_PREFIX: &str = "exam.";

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error(
        "tensor `{0}` belongs to no part of the classifier (expected encoder., pooler. or head.)"
    )]
    UnknownBurnName(String),
    #[error("tensor `{0}` is not a timm encoder tensor nor under `exam.`")]
    UnknownTimmName(String),
    #[error("tensor `{name}`: a linear weight must have 2 dimensions, found {shape:?}")]
    NotAMatrix { name: String, shape: Vec<usize> },
    #[error(transparent)]
    Wire(#[from] WireError),
}

/// burn classifier names (`encoder.*`, `pooler.*`, `head.*`) → bundle names.
pub fn to_bundle_layout(burn: &TensorMap) -> Result<TensorMap, LayoutError> {
    let mut out = TensorMap::new();
    for (name, tensor) in burn.iter() {
        let renamed = if let Some(rest) = name.strip_prefix("encoder.") {
            rest.to_owned()
        } else if let Some(rest) = name.strip_prefix("pooler.") {
            format!("{EXAM_PREFIX}pool.{rest}")
        } else if let Some(rest) = name.strip_prefix("head.") {
            format!("{EXAM_PREFIX}head.{rest}")
        } else {
            return Err(LayoutError::UnknownBurnName(name.to_owned()));
        };
        let renamed = rename_leaf(&renamed, "gamma", "weight")
            .or_else(|| rename_leaf(&renamed, "beta", "bias"))
            .unwrap_or(renamed);
        insert_converted(&mut out, renamed, name, tensor)?;
    }
    Ok(out)
}

/// Bundle names → burn classifier names; the inverse of [`to_bundle_layout`].
pub fn from_bundle_layout(bundle: &TensorMap) -> Result<TensorMap, LayoutError> {
    let mut out = TensorMap::new();
    for (name, tensor) in bundle.iter() {
        let (prefix, rest) = if let Some(rest) = name.strip_prefix("exam.pool.") {
            ("pooler.", rest)
        } else if let Some(rest) = name.strip_prefix("exam.head.") {
            ("head.", rest)
        } else if name.starts_with(EXAM_PREFIX) {
            return Err(LayoutError::UnknownTimmName(name.to_owned()));
        } else {
            ("encoder.", name)
        };
        let mut renamed = format!("{prefix}{rest}");
        if is_layer_norm(&renamed) {
            renamed = rename_leaf(&renamed, "weight", "gamma")
                .or_else(|| rename_leaf(&renamed, "bias", "beta"))
                .unwrap_or(renamed);
        }
        insert_converted(&mut out, renamed, name, tensor)?;
    }
    Ok(out)
}

/// LayerNorms are the `norm`, `norm1` and `norm2` modules.
fn is_layer_norm(name: &str) -> bool {
    let mut parts = name.rsplit('.');
    let _leaf = parts.next();
    matches!(parts.next(), Some("norm" | "norm1" | "norm2"))
}

fn rename_leaf(name: &str, from: &str, to: &str) -> Option<String> {
    name.strip_suffix(from)
        .filter(|stem| stem.ends_with('.'))
        .map(|stem| format!("{stem}{to}"))
}

/// Linear layers are the only rank-2 tensors named `weight`; they swap
/// `[in, out]` ↔ `[out, in]`. Everything else is copied.
fn insert_converted(
    out: &mut TensorMap,
    name: String,
    source_name: &str,
    tensor: &crate::wire::Tensor,
) -> Result<(), LayoutError> {
    let shape = tensor.shape();
    if name.ends_with(".weight") && !is_layer_norm(&name) && shape.len() != 4 {
        let &[rows, cols] = shape else {
            return Err(LayoutError::NotAMatrix {
                name: source_name.to_owned(),
                shape: shape.to_vec(),
            });
        };
        out.insert(name, vec![cols, rows], transpose(tensor.data(), rows, cols))?;
    } else {
        out.insert(name, shape.to_vec(), tensor.data().to_vec())?;
    }
    Ok(())
}

fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = data[r * cols + c];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::federated::to_tensor_map;
    use crate::model::{ClassifierConfig, ExamClassifier, SlicePooling, VitConfig};

    fn classifier_map(pooling: SlicePooling) -> TensorMap {
        let device = crate::device::open(crate::device::BackendKind::Flex).unwrap();
        let config = ClassifierConfig::new(VitConfig::preset("test").unwrap(), pooling);
        to_tensor_map(&ExamClassifier::new(&config, &device)).unwrap()
    }

    #[test]
    fn encoder_tensors_take_timm_names_and_layouts() {
        let burn = classifier_map(SlicePooling::Transformer);
        let timm = to_bundle_layout(&burn).unwrap();
        let shape = |n: &str| timm.get(n).map(|t| t.shape().to_vec());
        assert_eq!(shape("cls_token"), Some(vec![1, 1, 64]));
        assert_eq!(shape("pos_embed"), Some(vec![1, 65, 64]));
        assert_eq!(shape("patch_embed.proj.weight"), Some(vec![64, 1, 8, 8]));
        assert_eq!(shape("blocks.1.attn.qkv.weight"), Some(vec![192, 64]));
        assert_eq!(shape("blocks.0.mlp.fc1.weight"), Some(vec![256, 64]));
        assert_eq!(shape("blocks.0.mlp.fc2.weight"), Some(vec![64, 256]));
        assert_eq!(shape("blocks.0.norm1.weight"), Some(vec![64]));
        assert_eq!(shape("norm.bias"), Some(vec![64]));
        assert_eq!(shape("exam.head.weight"), Some(vec![1, 64]));
        assert_eq!(shape("exam.pool.slice_pos"), Some(vec![64, 64]));
        assert_eq!(
            shape("exam.pool.blocks.0.attn.proj.weight"),
            Some(vec![64, 64])
        );
        assert!(
            timm.names()
                .all(|n| !n.contains("gamma") && !n.contains("beta"))
        );
        // [in, out] → [out, in]: element (i, o) moves to (o, i).
        let b = burn.get("encoder.blocks.0.mlp.fc1.weight").unwrap();
        let t = timm.get("blocks.0.mlp.fc1.weight").unwrap();
        assert_eq!(t.data()[3 * 64 + 5], b.data()[5 * 256 + 3]);
    }

    #[test]
    fn the_layout_round_trips_bit_exactly() {
        for pooling in [SlicePooling::Transformer, SlicePooling::Max] {
            let burn = classifier_map(pooling);
            let back = from_bundle_layout(&to_bundle_layout(&burn).unwrap()).unwrap();
            assert_eq!(back.len(), burn.len());
            for (name, tensor) in burn.iter() {
                let other = back.get(name).unwrap_or_else(|| panic!("{name} lost"));
                assert_eq!(other.shape(), tensor.shape(), "{name}");
                assert_eq!(other.data(), tensor.data(), "{name}");
            }
        }
    }

    #[test]
    fn foreign_names_are_refused() {
        let mut map = TensorMap::new();
        map.insert("exam.other.x", vec![1], vec![0.0]).unwrap();
        assert!(matches!(
            from_bundle_layout(&map),
            Err(LayoutError::UnknownTimmName(_))
        ));
        let mut map = TensorMap::new();
        map.insert("decoder.x", vec![1], vec![0.0]).unwrap();
        assert!(matches!(
            to_bundle_layout(&map),
            Err(LayoutError::UnknownBurnName(_))
        ));
    }
}
