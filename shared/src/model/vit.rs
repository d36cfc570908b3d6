//! The ViT encoder, laid out like timm's `VisionTransformer` (field names and
//! tensor shapes match its state dict, except that burn keeps `Linear` weights as
//! `[in, out]`; export transposes them).

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::gelu;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{Device, Distribution, Tensor};

use super::attention::Attention;
use super::config::{SliceEmbedding, VitConfig};

/// timm's `LayerNorm(eps=1e-6)`.
pub(crate) fn layer_norm(dim: usize, device: &Device) -> LayerNorm {
    LayerNormConfig::new(dim).with_epsilon(1e-6).init(device)
}

/// timm initialises linear layers with a truncated normal (std 0.02); the
/// default Kaiming init trains noticeably worse for ViTs.
pub(crate) fn vit_linear(d_in: usize, d_out: usize, device: &Device) -> Linear {
    LinearConfig::new(d_in, d_out)
        .with_initializer(Initializer::Normal {
            mean: 0.0,
            std: 0.02,
        })
        .init(device)
}

#[derive(Module, Debug)]
pub struct Mlp {
    pub fc1: Linear,
    pub fc2: Linear,
}

impl Mlp {
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.fc2.forward(gelu(self.fc1.forward(x)))
    }
}

/// Pre-norm transformer block: `x + attn(norm1(x))`, then `x + mlp(norm2(x))`.
#[derive(Module, Debug)]
pub struct Block {
    pub norm1: LayerNorm,
    pub attn: Attention,
    pub norm2: LayerNorm,
    pub mlp: Mlp,
}

impl Block {
    pub fn new(dim: usize, num_heads: usize, mlp_ratio: usize, device: &Device) -> Self {
        let mut attn = Attention::new(dim, num_heads, device);
        attn.qkv = vit_linear(dim, 3 * dim, device);
        attn.proj = vit_linear(dim, dim, device);
        Self {
            norm1: layer_norm(dim, device),
            attn,
            norm2: layer_norm(dim, device),
            mlp: Mlp {
                fc1: vit_linear(dim, dim * mlp_ratio, device),
                fc2: vit_linear(dim * mlp_ratio, dim, device),
            },
        }
    }

    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x = x.clone() + self.attn.forward(self.norm1.forward(x));
        x.clone() + self.mlp.forward(self.norm2.forward(x))
    }
}

/// timm's `PatchEmbed`: a stride-p convolution, so `proj.weight` is `[D, 1, p, p]`.
#[derive(Module, Debug)]
pub struct PatchEmbed {
    pub proj: Conv2d,
}

#[derive(Module, Debug)]
pub struct VisionTransformer {
    pub patch_embed: PatchEmbed,
    /// `[1, 1, D]`
    pub cls_token: Param<Tensor<3>>,
    /// `[1, 1 + N, D]`, for the configured image size.
    pub pos_embed: Param<Tensor<3>>,
    pub blocks: Vec<Block>,
    pub norm: LayerNorm,
    #[module(skip)]
    config: VitConfig,
}

impl VisionTransformer {
    pub fn new(config: &VitConfig, device: &Device) -> Self {
        let d = config.embed_dim;
        let p = config.patch_size;
        let trunc = Distribution::Normal(0.0, 0.02);
        Self {
            patch_embed: PatchEmbed {
                proj: Conv2dConfig::new([1, d], [p, p])
                    .with_stride([p, p])
                    .init(device),
            },
            cls_token: Param::from_tensor(Tensor::random([1, 1, d], trunc, device)),
            pos_embed: Param::from_tensor(Tensor::random(
                [1, 1 + config.num_patches(), d],
                trunc,
                device,
            )),
            blocks: (0..config.depth)
                .map(|_| Block::new(d, config.num_heads, config.mlp_ratio, device))
                .collect(),
            norm: layer_norm(d, device),
            config: config.clone(),
        }
    }

    pub fn config(&self) -> &VitConfig {
        &self.config
    }

    /// `images`: `[B, 1, H, W]` (H = W, a multiple of the patch size) →
    /// normalised tokens `[B, 1 + N, D]`; token 0 is CLS.
    pub fn forward_tokens(&self, images: Tensor<4>) -> Tensor<3> {
        let [batch, _, height, width] = images.dims();
        let d = self.config.embed_dim;
        let patches = self.patch_embed.proj.forward(images); // [B, D, h, w]
        let [_, _, gh, gw] = patches.dims();
        let patches = patches.reshape([batch, d, gh * gw]).swap_dims(1, 2);
        let cls = self.cls_token.val().expand([batch, 1, d]);
        let pos = self.position_embedding(height, width);
        let mut x = Tensor::cat(vec![cls, patches], 1) + pos;
        for block in &self.blocks {
            x = block.forward(x);
        }
        self.norm.forward(x)
    }

    /// CLS embedding `[B, D]`.
    pub fn forward_cls(&self, images: Tensor<4>) -> Tensor<2> {
        let [batch, ..] = images.dims();
        let d = self.config.embed_dim;
        self.forward_tokens(images)
            .narrow(1, 0, 1)
            .reshape([batch, d])
    }

    /// Mean of the normalised patch tokens (CLS excluded), `[B, D]`.
    pub fn forward_mean_patch(&self, images: Tensor<4>) -> Tensor<2> {
        let tokens = self.forward_tokens(images);
        let [batch, count, d] = tokens.dims();
        tokens
            .narrow(1, 1, count - 1)
            .mean_dim(1)
            .reshape([batch, d])
    }

    /// Element-wise max of the normalised patch tokens (CLS excluded), `[B, D]`.
    pub fn forward_max_patch(&self, images: Tensor<4>) -> Tensor<2> {
        let tokens = self.forward_tokens(images);
        let [batch, count, d] = tokens.dims();
        tokens
            .narrow(1, 1, count - 1)
            .max_dim(1)
            .reshape([batch, d])
    }

    /// The embedding `kind` names, `[B, D]`.
    pub fn forward_embedding(&self, images: Tensor<4>, kind: SliceEmbedding) -> Tensor<2> {
        match kind {
            SliceEmbedding::MeanPatch => self.forward_mean_patch(images),
            SliceEmbedding::MaxPatch => self.forward_max_patch(images),
            SliceEmbedding::Cls => self.forward_cls(images),
        }
    }

    /// The learned position table, bicubically resampled (as timm does) when the
    /// input grid differs from the one the model was built for.
    fn position_embedding(&self, height: usize, width: usize) -> Tensor<3> {
        let p = self.config.patch_size;
        let (gh, gw) = (height / p, width / p);
        let g = self.config.grid();
        let pos = self.pos_embed.val();
        if gh == g && gw == g {
            return pos;
        }
        let d = self.config.embed_dim;
        let cls_pos = pos.clone().narrow(1, 0, 1);
        let grid = pos
            .narrow(1, 1, g * g)
            .reshape([1, g, g, d])
            .permute([0, 3, 1, 2]);
        let resized = interpolate(
            grid,
            InterpolateOptions::new(InterpolateMode::Bicubic)
                .with_align_corners(false)
                .with_output_size([gh, gw]),
        )
        .permute([0, 2, 3, 1])
        .reshape([1, gh * gw, d]);
        Tensor::cat(vec![cls_pos, resized], 1)
    }
}
