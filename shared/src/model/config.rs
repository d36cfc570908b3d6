//! Architecture settings and the named presets.

use serde::{Deserialize, Serialize};

/// ViT encoder architecture (timm `VisionTransformer` with one input channel).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VitConfig {
    pub image_size: usize,
    pub patch_size: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_ratio: usize,
}

/// Error for an unknown preset name.
#[derive(Debug, thiserror::Error)]
#[error("unknown model preset `{0}` (expected one of: test, vit-tiny, vit-small)")]
pub struct UnknownPreset(pub String);

impl VitConfig {
    /// The presets that tests, benchmarks and sites use (DESIGN.md §4).
    pub const PRESETS: [&'static str; 3] = ["test", "vit-tiny", "vit-small"];

    pub fn preset(name: &str) -> Result<Self, UnknownPreset> {
        let (image_size, patch_size, embed_dim, depth, num_heads) = match name {
            "test" => (64, 8, 64, 2, 2),
            "vit-tiny" => (224, 16, 192, 12, 3),
            "vit-small" => (224, 16, 384, 12, 6),
            other => return Err(UnknownPreset(other.to_string())),
        };
        Ok(Self {
            image_size,
            patch_size,
            embed_dim,
            depth,
            num_heads,
            mlp_ratio: 4,
        })
    }

    /// Patches along one side of the image.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    pub fn num_patches(&self) -> usize {
        self.grid() * self.grid()
    }

    /// Checks the invariants the model code relies on, so a bad config file fails
    /// with a message instead of a shape panic deep inside a forward pass.
    pub fn validate(&self) -> Result<(), String> {
        if self.patch_size == 0 || !self.image_size.is_multiple_of(self.patch_size) {
            return Err(format!(
                "image_size {} is not a multiple of patch_size {}",
                self.image_size, self.patch_size
            ));
        }
        if self.num_heads == 0 || !self.embed_dim.is_multiple_of(self.num_heads) {
            return Err(format!(
                "embed_dim {} is not divisible by num_heads {}",
                self.embed_dim, self.num_heads
            ));
        }
        if self.depth == 0 {
            return Err("depth must be at least 1".into());
        }
        Ok(())
    }
}

/// How slice embeddings become one exam embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SlicePooling {
    /// SB-SSL: a small transformer over slice embeddings with an exam CLS token.
    #[default]
    Transformer,
    /// MRNet's baseline: element-wise max over slices.
    Max,
}

impl std::str::FromStr for SlicePooling {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "transformer" => Ok(Self::Transformer),
            "max" => Ok(Self::Max),
            other => Err(format!(
                "unknown pooling `{other}` (expected transformer or max)"
            )),
        }
    }
}

/// Which encoder output stands for a slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SliceEmbedding {
    /// The mean of the normalised patch tokens (timm `global_pool="avg"`,
    /// `fc_norm=False`). GMML's loss never reads the CLS token, so after
    /// pretraining the CLS output is nearly the same for every slice (its
    /// spread across slices fell from 0.068 to 0.004 of its norm in 8 epochs)
    /// while the patch tokens carry what was learned.
    MeanPatch,
    /// The element-wise max of the normalised patch tokens (timm
    /// `global_pool="max"`). The default: a tear covers a few of a slice's
    /// patches, and the mean over all of them hid it. Fine-tuning from the
    /// mean sat at the constant-prediction loss until epoch 12–33 (or never),
    /// from the max it left it by epoch 3–9 (README, Quality).
    #[default]
    MaxPatch,
    /// The CLS token (timm `global_pool="token"`). Models written before this
    /// option existed use it.
    Cls,
}

impl SliceEmbedding {
    /// The name in configs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::MeanPatch => "mean-patch",
            Self::MaxPatch => "max-patch",
            Self::Cls => "cls",
        }
    }

    /// timm's name for this pooling.
    pub fn timm_global_pool(self) -> &'static str {
        match self {
            Self::MeanPatch => "avg",
            Self::MaxPatch => "max",
            Self::Cls => "token",
        }
    }

    /// What configs that predate the field were trained with.
    fn before_the_option_existed() -> Self {
        Self::Cls
    }
}

impl std::fmt::Display for SliceEmbedding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for SliceEmbedding {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Self::MeanPatch, Self::MaxPatch, Self::Cls]
            .into_iter()
            .find(|kind| kind.name() == s)
            .ok_or_else(|| {
                format!("unknown slice embedding `{s}` (expected mean-patch, max-patch or cls)")
            })
    }
}

/// Exam-level classifier: encoder plus slice pooling and a one-logit head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifierConfig {
    pub encoder: VitConfig,
    /// Which encoder output embeds a slice.
    #[serde(default = "SliceEmbedding::before_the_option_existed")]
    pub slice_embedding: SliceEmbedding,
    pub pooling: SlicePooling,
    /// Transformer blocks in the slice pooler (ignored for max pooling).
    pub pool_depth: usize,
    /// Slice-position table size; exams with other slice counts map their slices
    /// onto it by relative position (medial→lateral), so any count works.
    pub max_slices: usize,
}

impl ClassifierConfig {
    pub fn new(encoder: VitConfig, pooling: SlicePooling) -> Self {
        Self {
            encoder,
            slice_embedding: SliceEmbedding::default(),
            pooling,
            pool_depth: 1,
            max_slices: 64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn configs_written_before_slice_embedding_existed_keep_the_cls_token() {
        let mut json = serde_json::to_value(ClassifierConfig::new(
            VitConfig::preset("test").unwrap(),
            SlicePooling::Max,
        ))
        .unwrap();
        assert_eq!(json["slice_embedding"], "max-patch");
        json.as_object_mut().unwrap().remove("slice_embedding");
        let old: ClassifierConfig = serde_json::from_value(json).unwrap();
        assert_eq!(old.slice_embedding, SliceEmbedding::Cls);
        for kind in [
            SliceEmbedding::MeanPatch,
            SliceEmbedding::MaxPatch,
            SliceEmbedding::Cls,
        ] {
            assert_eq!(kind.to_string().parse(), Ok(kind));
            assert_eq!(json!(kind), json!(kind.to_string()));
        }
        assert!("avg".parse::<SliceEmbedding>().is_err());
    }
}
