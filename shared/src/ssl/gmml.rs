//! The GMML pretraining model and its loss.

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use crate::model::{ReconstructionHead, VisionTransformer, VitConfig};

/// Encoder plus reconstruction head. The head reads the last block's
/// (normalised) tokens; GMML's variant that averages the last blocks is not used,
/// which keeps the encoder's forward identical between pretraining and fine-tuning.
#[derive(Module, Debug)]
pub struct GmmlModel {
    pub encoder: VisionTransformer,
    pub head: ReconstructionHead,
}

impl GmmlModel {
    pub fn new(config: &VitConfig, device: &Device) -> Self {
        Self {
            encoder: VisionTransformer::new(config, device),
            head: ReconstructionHead::new(config.embed_dim, config.patch_size, device),
        }
    }

    /// `corrupted`: `[B, 1, H, W]` → reconstruction in patch space `[B, N, p·p]`.
    pub fn reconstruct(&self, corrupted: Tensor<4>) -> Tensor<3> {
        self.head.forward(self.encoder.forward_tokens(corrupted))
    }

    /// Mean L1 over masked pixels only.
    pub fn loss(&self, corrupted: Tensor<4>, target: Tensor<3>, mask: Tensor<3>) -> Tensor<1> {
        masked_l1(self.reconstruct(corrupted), target, mask)
    }
}

/// `Σ |pred − target| · mask / Σ mask`; unmasked pixels contribute nothing.
pub fn masked_l1(pred: Tensor<3>, target: Tensor<3>, mask: Tensor<3>) -> Tensor<1> {
    let denominator = mask.clone().sum().clamp_min(1.0);
    ((pred - target).abs() * mask).sum() / denominator
}
