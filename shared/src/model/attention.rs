//! Multi-head self-attention in timm's layout (`qkv` then `proj`), so encoder
//! weights map one-to-one onto `timm.models.vision_transformer.Attention`.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Tensor};

#[derive(Module, Debug)]
pub struct Attention {
    pub qkv: Linear,
    pub proj: Linear,
    #[module(skip)]
    num_heads: usize,
}

impl Attention {
    pub fn new(dim: usize, num_heads: usize, device: &Device) -> Self {
        Self {
            qkv: LinearConfig::new(dim, 3 * dim).init(device),
            proj: LinearConfig::new(dim, dim).init(device),
            num_heads,
        }
    }

    /// `x`: `[batch, tokens, dim]` → `[batch, tokens, dim]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [batch, tokens, dim] = x.dims();
        let heads = self.num_heads;
        let head_dim = dim / heads;
        // [B, N, 3D] → [3, B, H, N, hd], the same split timm uses.
        let qkv = self
            .qkv
            .forward(x)
            .reshape([batch, tokens, 3, heads, head_dim])
            .permute([2, 0, 3, 1, 4]);
        let take = |i: usize| -> Tensor<4> { qkv.clone().narrow(0, i, 1).squeeze_dim(0) };
        let context = attention(
            take(0),
            take(1),
            take(2),
            None,
            None,
            AttentionModuleOptions::default(),
        );
        let merged = context.swap_dims(1, 2).reshape([batch, tokens, dim]);
        self.proj.forward(merged)
    }
}
