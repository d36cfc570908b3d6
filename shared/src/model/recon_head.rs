//! GMML's reconstruction head: each output patch token becomes its p×p pixels.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::activation::gelu;
use burn::tensor::{Device, Tensor};

use super::vit::vit_linear;

/// `3 × [Linear(D, D) + GELU]` then `Linear(D, p·p)` (DESIGN.md §4). The last
/// projection is linear; a transposed convolution with kernel = stride = p is the
/// same map, so the linear form is used and the output stays in patch space
/// `[B, N, p·p]`, where the masked L1 loss is computed without un-patchifying.
#[derive(Module, Debug)]
pub struct ReconstructionHead {
    pub hidden: Vec<Linear>,
    pub out: Linear,
}

impl ReconstructionHead {
    pub fn new(embed_dim: usize, patch_size: usize, device: &Device) -> Self {
        Self {
            hidden: (0..3)
                .map(|_| vit_linear(embed_dim, embed_dim, device))
                .collect(),
            out: vit_linear(embed_dim, patch_size * patch_size, device),
        }
    }

    /// `tokens`: encoder output `[B, 1 + N, D]` (CLS first) → `[B, N, p·p]`.
    pub fn forward(&self, tokens: Tensor<3>) -> Tensor<3> {
        let [_, n_tokens, _] = tokens.dims();
        let mut x = tokens.narrow(1, 1, n_tokens - 1);
        for layer in &self.hidden {
            x = gelu(layer.forward(x));
        }
        self.out.forward(x)
    }
}
