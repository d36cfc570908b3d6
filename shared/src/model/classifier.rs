//! SB-SSL's exam classifier: the encoder embeds each slice, the slice pooler
//! turns an exam's slice embeddings into one, and a linear head gives the
//! ACL-tear logit.
//!
//! DESIGN.md embeds a slice by its CLS token; the default here is the
//! element-wise max of the patch tokens ([`SliceEmbedding`](super::SliceEmbedding)):
//! GMML pretraining leaves the CLS output untrained and nearly constant across
//! slices, and the mean of the patch tokens dilutes a small tear. `Cls` and
//! `MeanPatch` stay available.

use burn::module::{Module, Param};
use burn::nn::{LayerNorm, Linear};
use burn::tensor::{Device, Distribution, Int, Tensor};

use super::config::{ClassifierConfig, SlicePooling};
use super::vit::{Block, VisionTransformer, layer_norm, vit_linear};

/// Transformer pooling over slices with an exam CLS token.
#[derive(Module, Debug)]
pub struct SliceTransformer {
    /// `[1, D]`
    pub exam_token: Param<Tensor<2>>,
    /// `[max_slices, D]`
    pub slice_pos: Param<Tensor<2>>,
    pub blocks: Vec<Block>,
    pub norm: LayerNorm,
}

impl SliceTransformer {
    fn new(config: &ClassifierConfig, device: &Device) -> Self {
        let d = config.encoder.embed_dim;
        let init = Distribution::Normal(0.0, 0.02);
        Self {
            exam_token: Param::from_tensor(Tensor::random([1, d], init, device)),
            slice_pos: Param::from_tensor(Tensor::random([config.max_slices, d], init, device)),
            blocks: (0..config.pool_depth)
                .map(|_| Block::new(d, config.encoder.num_heads, 4, device))
                .collect(),
            norm: layer_norm(d, device),
        }
    }

    /// The position embedding of each of `count` slices, `[count, D]`.
    fn positions(&self, count: usize, device: &Device) -> Tensor<2> {
        let table = self.slice_pos.val();
        let [table_len, _] = table.dims();
        let index =
            Tensor::<1, Int>::from_ints(relative_positions(count, table_len).as_slice(), device);
        table.select(0, index)
    }

    /// `slices`: `[S, D]` → exam embedding `[1, D]`.
    fn forward(&self, slices: Tensor<2>) -> Tensor<2> {
        let [count, d] = slices.dims();
        let positions = self.positions(count, &slices.device());
        // The exam token starts from the element-wise max over slices (MRNet's
        // pooling) plus a learned offset: with a purely learned token the pooled
        // output is nearly the same for every exam at initialisation, and
        // fine-tuning collapsed to a constant prediction.
        let exam = self.exam_token.val() + slices.clone().max_dim(0);
        let tokens = Tensor::cat(vec![exam, slices + positions], 0).reshape([1, count + 1, d]);
        let mut x = tokens;
        for block in &self.blocks {
            x = block.forward(x);
        }
        self.norm.forward(x).narrow(1, 0, 1).reshape([1, d])
    }

    /// Each slice pooled alone, as a one-slice exam that keeps the slice's
    /// position in the whole exam: `[S, D]` → `[S, D]`, batched over slices.
    fn forward_each(&self, slices: Tensor<2>) -> Tensor<2> {
        let [count, d] = slices.dims();
        let positions = self.positions(count, &slices.device());
        let exam = self.exam_token.val().expand([count, d]) + slices.clone();
        let positioned = slices + positions;
        let mut x = Tensor::stack::<3>(vec![exam, positioned], 1); // [S, 2, D]
        for block in &self.blocks {
            x = block.forward(x);
        }
        self.norm.forward(x).narrow(1, 0, 1).reshape([count, d])
    }
}

/// Maps slice i of `count` onto the position table by relative location, so
/// exams with different slice counts share one medial→lateral coordinate.
fn relative_positions(count: usize, table_len: usize) -> Vec<i64> {
    if count <= 1 {
        return vec![(table_len / 2) as i64; count];
    }
    (0..count)
        .map(|i| ((i * (table_len - 1)) as f64 / (count - 1) as f64).round() as i64)
        .collect()
}

#[derive(Module, Debug)]
pub struct ExamClassifier {
    pub encoder: VisionTransformer,
    /// `None` means max pooling over slices.
    pub pooler: Option<SliceTransformer>,
    pub head: Linear,
    #[module(skip)]
    config: ClassifierConfig,
}

impl ExamClassifier {
    pub fn new(config: &ClassifierConfig, device: &Device) -> Self {
        Self::from_encoder(VisionTransformer::new(&config.encoder, device), config)
    }

    /// Wraps a (pretrained) encoder with fresh pooling and head.
    pub fn from_encoder(encoder: VisionTransformer, config: &ClassifierConfig) -> Self {
        let device = encoder.cls_token.val().device();
        let pooler = match config.pooling {
            SlicePooling::Transformer => Some(SliceTransformer::new(config, &device)),
            SlicePooling::Max => None,
        };
        Self {
            head: vit_linear(config.encoder.embed_dim, 1, &device),
            encoder,
            pooler,
            config: config.clone(),
        }
    }

    pub fn config(&self) -> &ClassifierConfig {
        &self.config
    }

    /// `slices`: every slice of every exam stacked, `[ΣS, 1, H, W]`;
    /// `counts[e]`: number of slices of exam e, in order. Returns logits `[E]`.
    pub fn forward(&self, slices: Tensor<4>, counts: &[usize]) -> Tensor<1> {
        let embeddings = self
            .encoder
            .forward_embedding(slices, self.config.slice_embedding);
        let mut offset = 0;
        let exams: Vec<Tensor<2>> = counts
            .iter()
            .map(|&count| {
                let exam = embeddings.clone().narrow(0, offset, count);
                offset += count;
                match &self.pooler {
                    Some(pooler) => pooler.forward(exam),
                    None => exam.max_dim(0),
                }
            })
            .collect();
        let pooled = Tensor::cat(exams, 0);
        let logits = self.head.forward(pooled);
        let [n, _] = logits.dims();
        logits.reshape([n])
    }

    /// One exam, `[S, 1, H, W]` → (exam logit `[1]`, slice logits `[S]`). A
    /// slice's logit is the classifier's logit for that slice alone, at its
    /// place in the exam: a pointer for review, not a localisation.
    pub fn forward_exam_with_slices(&self, slices: Tensor<4>) -> (Tensor<1>, Tensor<1>) {
        let [count, ..] = slices.dims();
        let embeddings = self
            .encoder
            .forward_embedding(slices, self.config.slice_embedding);
        let (exam, each) = match &self.pooler {
            Some(pooler) => (
                pooler.forward(embeddings.clone()),
                pooler.forward_each(embeddings),
            ),
            None => (embeddings.clone().max_dim(0), embeddings),
        };
        let exam_logit = self.head.forward(exam).reshape([1]);
        let slice_logits = self.head.forward(each).reshape([count]);
        (exam_logit, slice_logits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_positions_span_the_table() {
        assert_eq!(relative_positions(3, 5), vec![0, 2, 4]);
        assert_eq!(relative_positions(1, 64), vec![32]);
        let many = relative_positions(100, 64);
        assert_eq!(many.first(), Some(&0));
        assert_eq!(many.last(), Some(&63));
    }
}
