//! The exam classifier as an ONNX model, so a bundle runs in any ONNX
//! runtime without fedslice or Python.
//!
//! The graph computes what [`ExamClassifier::forward_exam_with_slices`]
//! computes for one exam (tests/onnx_export.rs checks it against burn with
//! tract, a pure-Rust runtime, to within 1e-4):
//!
//! - input [`INPUT`] (`slices`): float32 `[S, 1, H, W]`, `S` symbolic
//!   ([`SLICE_COUNT_DIM`]), `H = W = image_size` of the config;
//! - output [`OUTPUT_LOGIT`] `[1]`: the exam logit (before the sigmoid);
//! - output [`OUTPUT_SLICE_LOGITS`] `[S]`: each slice's logit as a one-slice
//!   exam at its place in the exam;
//! - outputs [`OUTPUT_PROBABILITY`] `[1]` and [`OUTPUT_SLICE_SCORES`] `[S]`:
//!   the sigmoids of those two.
//!
//! Weights are initializers named and laid out as the bundle's tensors
//! ([`super::timm`]: timm names, `Linear` weights `[out, in]`), so
//! `model.onnx` and `model.safetensors` can be checked against each other
//! name by name; each `Linear` multiplies by a `Transpose` of its weight,
//! which runtimes fold at load time. The slice-position indices (the
//! classifier's `relative_positions`) are computed in the graph from `S` in
//! int32 arithmetic, so one file serves every slice count.
//!
//! Operator set [`OPSET`] (17, the first with `LayerNormalization`), IR
//! version [`IR_VERSION`]; GELU is the exact (erf) form, spelled out with
//! `Erf`. The protobuf is written by the small encoder in [`proto`], no
//! protobuf compiler involved.
//!
//! [`ExamClassifier::forward_exam_with_slices`]: crate::model::ExamClassifier::forward_exam_with_slices

mod proto;

use std::collections::{BTreeSet, HashMap};

use proto::{Attribute, AttributeValue, DataType, Dim, Graph, Model, Node, TensorValue, ValueInfo};

use super::bundle::{ONNX_FILE, OnnxSpec};
use crate::model::{ClassifierConfig, SliceEmbedding, SlicePooling};
use crate::wire::TensorMap;

/// ONNX operator set (default domain) the graph uses.
pub const OPSET: i64 = 17;
/// ONNX IR version written in the model (IR 8 goes with opsets 15 to 18).
pub const IR_VERSION: i64 = 8;
/// The graph input: float32 `[S, 1, H, W]`.
pub const INPUT: &str = "slices";
/// Name of the symbolic slice-count dimension `S` of the input and the per-slice outputs.
pub const SLICE_COUNT_DIM: &str = "num_slices";
/// Exam logit `[1]`, before the sigmoid.
pub const OUTPUT_LOGIT: &str = "logit";
/// Per-slice logits `[S]`.
pub const OUTPUT_SLICE_LOGITS: &str = "slice_logits";
/// `sigmoid(logit)`, `[1]`.
pub const OUTPUT_PROBABILITY: &str = "probability";
/// `sigmoid(slice_logits)`, `[S]`.
pub const OUTPUT_SLICE_SCORES: &str = "slice_scores";
/// The graph outputs, in graph order.
pub const OUTPUTS: [&str; 4] = [
    OUTPUT_LOGIT,
    OUTPUT_SLICE_LOGITS,
    OUTPUT_PROBABILITY,
    OUTPUT_SLICE_SCORES,
];

/// timm's LayerNorm epsilon, as the burn model uses.
const LAYER_NORM_EPSILON: f32 = 1e-6;
/// Largest slice-position table the int32 index arithmetic takes.
const MAX_TABLE_LEN: usize = 1 << 20;
/// Protobuf messages must stay under 2 GiB.
const PROTOBUF_LIMIT: usize = i32::MAX as usize;

#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("the classifier config cannot be exported: {0}")]
    InvalidConfig(String),
    #[error("tensor `{0}` is missing from the bundle tensors")]
    Missing(String),
    #[error("tensor `{name}` has shape {found:?}; the config implies {expected}")]
    Shape {
        name: String,
        expected: String,
        found: Vec<usize>,
    },
    #[error(
        "tensor `{0}` is not part of the classifier the config describes (another pooling or pool depth?)"
    )]
    Unexpected(String),
    #[error("the model takes {0} bytes; an ONNX protobuf must stay under 2 GiB")]
    TooLarge(usize),
}

/// What `model.onnx` computes, for the bundle's `config.json`.
pub fn spec() -> OnnxSpec {
    OnnxSpec {
        file: ONNX_FILE.into(),
        opset: OPSET,
        input: INPUT.into(),
        outputs: OUTPUTS.iter().map(|s| (*s).to_owned()).collect(),
    }
}

/// Serialises the classifier described by `config`, with the weights in
/// `bundle_tensors` (bundle names and layouts, as
/// [`super::timm::to_bundle_layout`] gives them), as an ONNX `ModelProto`.
/// Every tensor must be present with the shape the config implies, and no
/// other tensor may be there.
pub fn classifier_to_onnx(
    config: &ClassifierConfig,
    bundle_tensors: &TensorMap,
) -> Result<Vec<u8>, OnnxError> {
    let vit = &config.encoder;
    vit.validate().map_err(OnnxError::InvalidConfig)?;
    if config.pooling == SlicePooling::Transformer
        && !(1..=MAX_TABLE_LEN).contains(&config.max_slices)
    {
        return Err(OnnxError::InvalidConfig(format!(
            "max_slices is {}; the exporter takes 1 to {MAX_TABLE_LEN}",
            config.max_slices
        )));
    }
    let weight_bytes = bundle_tensors.num_values().saturating_mul(4);
    if weight_bytes >= PROTOBUF_LIMIT {
        return Err(OnnxError::TooLarge(weight_bytes));
    }

    let mut b = Builder::new(bundle_tensors);
    let embeddings = encoder(&mut b, config)?;
    let (exam, each) = match config.pooling {
        SlicePooling::Transformer => slice_transformer(&mut b, config, &embeddings)?,
        SlicePooling::Max => {
            let max = b.op(
                "ReduceMax",
                &[&embeddings],
                vec![ints("axes", &[0]), int("keepdims", 1)],
                "exam.max",
            );
            (max, embeddings)
        }
    };
    let d = vit.embed_dim;
    head(&mut b, &exam, d, OUTPUT_LOGIT)?;
    head(&mut b, &each, d, OUTPUT_SLICE_LOGITS)?;
    b.op_to("Sigmoid", &[OUTPUT_LOGIT], vec![], OUTPUT_PROBABILITY);
    b.op_to(
        "Sigmoid",
        &[OUTPUT_SLICE_LOGITS],
        vec![],
        OUTPUT_SLICE_SCORES,
    );
    if let Some(extra) = bundle_tensors.names().find(|n| !b.used.contains(*n)) {
        return Err(OnnxError::Unexpected(extra.to_owned()));
    }

    let side = vit.image_size as i64;
    let slices = || Dim::Symbolic(SLICE_COUNT_DIM);
    let float = |name, dims| ValueInfo {
        name,
        data_type: DataType::Float,
        dims,
    };
    let graph = Graph {
        name: "fedslice_exam_classifier",
        nodes: b.nodes,
        initializers: b.initializers,
        inputs: vec![float(
            INPUT,
            vec![slices(), Dim::Fixed(1), Dim::Fixed(side), Dim::Fixed(side)],
        )],
        outputs: vec![
            float(OUTPUT_LOGIT, vec![Dim::Fixed(1)]),
            float(OUTPUT_SLICE_LOGITS, vec![slices()]),
            float(OUTPUT_PROBABILITY, vec![Dim::Fixed(1)]),
            float(OUTPUT_SLICE_SCORES, vec![slices()]),
        ],
    };
    let pooling = match config.pooling {
        SlicePooling::Transformer => "transformer",
        SlicePooling::Max => "max",
    };
    let model = Model {
        ir_version: IR_VERSION,
        opset: OPSET,
        producer_name: "fedslice",
        producer_version: env!("CARGO_PKG_VERSION"),
        doc_string: format!(
            "fedslice ACL-tear exam classifier (ViT {}x{} patch {}, dim {}, depth {}, {} slice pooling). \
             Input `{INPUT}`: one exam's slices, float32 [S, 1, {side}, {side}], preprocessed as the \
             bundle's config.json says. Outputs: `{OUTPUT_LOGIT}` [1] exam logit, \
             `{OUTPUT_SLICE_LOGITS}` [S] per-slice logits, `{OUTPUT_PROBABILITY}` and \
             `{OUTPUT_SLICE_SCORES}` their sigmoids.",
            vit.image_size, vit.image_size, vit.patch_size, vit.embed_dim, vit.depth, pooling
        ),
        graph,
    };
    let bytes = model.encode();
    if bytes.len() >= PROTOBUF_LIMIT {
        return Err(OnnxError::TooLarge(bytes.len()));
    }
    Ok(bytes)
}

/// Slices `[S, 1, H, W]` → slice embeddings `[S, D]` (timm `VisionTransformer`
/// features: the CLS token or the mean patch token, as the config says).
fn encoder(b: &mut Builder, config: &ClassifierConfig) -> Result<String, OnnxError> {
    let vit = &config.encoder;
    let (d, p, n) = (vit.embed_dim, vit.patch_size, vit.num_patches());
    let weight = b.weight("patch_embed.proj.weight", &[d, 1, p, p])?;
    let bias = b.weight("patch_embed.proj.bias", &[d])?;
    let kernel = [p as i64, p as i64];
    let conv = b.op(
        "Conv",
        &[INPUT, &weight, &bias],
        vec![ints("kernel_shape", &kernel), ints("strides", &kernel)],
        "patch_embed.proj",
    );
    let flat_shape = b.const_i64(&[0, d as i64, n as i64]);
    let flat = b.op("Reshape", &[&conv, &flat_shape], vec![], "patch_embed.flat");
    let patches = b.op(
        "Transpose",
        &[&flat],
        vec![ints("perm", &[0, 2, 1])],
        "patch_embed.tokens",
    );
    // The CLS token, repeated for every slice: Expand to [S, 1, D].
    let count = b.op(
        "Shape",
        &[INPUT],
        vec![int("start", 0), int("end", 1)],
        "slice_count",
    );
    let cls_tail = b.const_i64(&[1, d as i64]);
    let cls_shape = b.op(
        "Concat",
        &[&count, &cls_tail],
        vec![int("axis", 0)],
        "cls_token.shape",
    );
    let cls_token = b.weight("cls_token", &[1, 1, d])?;
    let cls = b.op(
        "Expand",
        &[&cls_token, &cls_shape],
        vec![],
        "cls_token.expanded",
    );
    let tokens = b.op("Concat", &[&cls, &patches], vec![int("axis", 1)], "tokens");
    let pos_embed = b.weight("pos_embed", &[1, 1 + n, d])?;
    let mut x = b.op("Add", &[&tokens, &pos_embed], vec![], "tokens.positioned");
    for i in 0..vit.depth {
        x = block(b, &x, &format!("blocks.{i}"), d, vit.num_heads)?;
    }
    let x = layer_norm(b, &x, "norm", d)?;
    Ok(match config.slice_embedding {
        SliceEmbedding::Cls => first_token(b, &x, "cls"),
        SliceEmbedding::MeanPatch => reduce_patch_tokens(b, &x, n, "ReduceMean", "mean_patch"),
        SliceEmbedding::MaxPatch => reduce_patch_tokens(b, &x, n, "ReduceMax", "max_patch"),
    })
}

/// `op` (a Reduce* taking its axes as an attribute, as opset 17's ReduceMean
/// and ReduceMax still do) over the `n` patch tokens of `x` `[B, 1 + n, D]`.
fn reduce_patch_tokens(b: &mut Builder, x: &str, n: usize, op: &'static str, name: &str) -> String {
    let starts = b.const_i64(&[1]);
    let ends = b.const_i64(&[1 + n as i64]);
    let axes = b.const_i64(&[1]);
    let patches = b.op("Slice", &[x, &starts, &ends, &axes], vec![], "patch_tokens");
    b.op(
        op,
        &[&patches],
        vec![ints("axes", &[1]), int("keepdims", 0)],
        name,
    )
}

/// The SB-SSL slice pooler on embeddings `[S, D]`: (the whole exam `[1, D]`,
/// each slice as a one-slice exam at its position `[S, D]`).
fn slice_transformer(
    b: &mut Builder,
    config: &ClassifierConfig,
    embeddings: &str,
) -> Result<(String, String), OnnxError> {
    const P: &str = "exam.pool";
    let d = config.encoder.embed_dim;
    let heads = config.encoder.num_heads;
    let table_len = config.max_slices;
    let table = b.weight(&format!("{P}.slice_pos"), &[table_len, d])?;
    let exam_token = b.weight(&format!("{P}.exam_token"), &[1, d])?;

    // At most MAX_TABLE_LEN, checked by `classifier_to_onnx`.
    let index = relative_positions(b, embeddings, table_len as i32);
    let positions = b.op(
        "Gather",
        &[&table, &index],
        vec![int("axis", 0)],
        "exam.slice_pos",
    );
    let positioned = b.op(
        "Add",
        &[embeddings, &positions],
        vec![],
        "exam.slices.positioned",
    );

    // Whole exam: [exam_token + max over slices; slices + positions] as one sequence.
    let max = b.op(
        "ReduceMax",
        &[embeddings],
        vec![ints("axes", &[0]), int("keepdims", 1)],
        "exam.max",
    );
    let exam = b.op("Add", &[&exam_token, &max], vec![], "exam.token");
    let sequence = b.op(
        "Concat",
        &[&exam, &positioned],
        vec![int("axis", 0)],
        "exam.sequence",
    );
    let axis0 = b.const_i64(&[0]);
    let sequence = b.op("Unsqueeze", &[&sequence, &axis0], vec![], "exam.sequence");
    let pooled = pooler_blocks(b, &sequence, config, d, heads)?;

    // Each slice alone: [S, 2, D] pairs (exam_token + slice, slice + position).
    let alone = b.op("Add", &[embeddings, &exam_token], vec![], "each.token");
    let axis1 = b.const_i64(&[1]);
    let alone = b.op("Unsqueeze", &[&alone, &axis1], vec![], "each.token");
    let slice = b.op("Unsqueeze", &[&positioned, &axis1], vec![], "each.slice");
    let pairs = b.op(
        "Concat",
        &[&alone, &slice],
        vec![int("axis", 1)],
        "each.sequence",
    );
    let each = pooler_blocks(b, &pairs, config, d, heads)?;
    Ok((pooled, each))
}

/// The pooler's blocks and norm on `[B, L, D]`, then token 0: `[B, D]`.
fn pooler_blocks(
    b: &mut Builder,
    x: &str,
    config: &ClassifierConfig,
    d: usize,
    heads: usize,
) -> Result<String, OnnxError> {
    let mut x = x.to_owned();
    for i in 0..config.pool_depth {
        x = block(b, &x, &format!("exam.pool.blocks.{i}"), d, heads)?;
    }
    let x = layer_norm(b, &x, "exam.pool.norm", d)?;
    Ok(first_token(b, &x, "exam.pool.token"))
}

/// The classifier's `relative_positions(S, table_len)` in graph ops: slice
/// `i` of `S` takes row `round(i * (table_len - 1) / (S - 1))`, rounding
/// halves up, and a lone slice takes row `table_len / 2`. Computed exactly
/// in integers as `(2 i (table_len - 1) + m) / (2 m)` with `m = max(S - 1, 1)`
/// (every operand is non-negative, so the division is a floor; ONNX `Round`
/// would round halves to even instead).
///
/// The arithmetic is int32, exact while `2 S table_len < 2^31` (16 million
/// slices for a 64-row table). int32 rather than int64 because tract keeps
/// int64 values taken from shapes symbolic and cannot divide them; a cast to
/// int32 makes it use the concrete slice count.
fn relative_positions(b: &mut Builder, embeddings: &str, table_len: i32) -> String {
    let count = b.op(
        "Shape",
        &[embeddings],
        vec![int("start", 0), int("end", 1)],
        "pos.count",
    );
    let first = b.scalar_i64(0);
    let count = b.op(
        "Gather",
        &[&count, &first],
        vec![int("axis", 0)],
        "pos.count",
    );
    let count = b.op(
        "Cast",
        &[&count],
        vec![int("to", DataType::Int32 as i64)],
        "pos.count",
    );
    let zero = b.scalar_i32(0);
    let one = b.scalar_i32(1);
    let i = b.op("Range", &[&zero, &count, &one], vec![], "pos.i");
    let gaps = b.op("Sub", &[&count, &one], vec![], "pos.gaps");
    let gaps = b.op("Max", &[&gaps, &one], vec![], "pos.gaps");
    let span = b.scalar_i32(2 * (table_len - 1));
    let numerator = b.op("Mul", &[&i, &span], vec![], "pos.num");
    let numerator = b.op("Add", &[&numerator, &gaps], vec![], "pos.num");
    let two = b.scalar_i32(2);
    let denominator = b.op("Mul", &[&gaps, &two], vec![], "pos.den");
    let spread = b.op("Div", &[&numerator, &denominator], vec![], "pos.spread");
    let alone = b.op("Equal", &[&count, &one], vec![], "pos.alone");
    let middle = b.scalar_i32(table_len / 2);
    b.op("Where", &[&alone, &middle, &spread], vec![], "pos.index")
}

/// `head` (Linear D → 1) on `[K, D]`, flattened to `[K]` under the name `output`.
fn head(b: &mut Builder, x: &str, d: usize, output: &'static str) -> Result<(), OnnxError> {
    let logits = linear(b, x, "exam.head", d, 1)?;
    let flat = b.const_i64(&[-1]);
    b.op_to("Reshape", &[&logits, &flat], vec![], output);
    Ok(())
}

/// Pre-norm transformer block on `[B, L, D]`.
fn block(
    b: &mut Builder,
    x: &str,
    prefix: &str,
    d: usize,
    heads: usize,
) -> Result<String, OnnxError> {
    let h = layer_norm(b, x, &format!("{prefix}.norm1"), d)?;
    let h = attention(b, &h, &format!("{prefix}.attn"), d, heads)?;
    let x = b.op("Add", &[x, &h], vec![], &format!("{prefix}.residual1"));
    let h = layer_norm(b, &x, &format!("{prefix}.norm2"), d)?;
    let h = mlp(b, &h, &format!("{prefix}.mlp"), d)?;
    Ok(b.op("Add", &[&x, &h], vec![], &format!("{prefix}.residual2")))
}

/// timm `Attention`: qkv split as `reshape [B, L, 3, H, hd]`,
/// `permute [2, 0, 3, 1, 4]`; softmax(q kᵀ / √hd) v; heads merged; proj.
fn attention(
    b: &mut Builder,
    x: &str,
    prefix: &str,
    d: usize,
    heads: usize,
) -> Result<String, OnnxError> {
    let head_dim = d / heads;
    let qkv = linear(b, x, &format!("{prefix}.qkv"), d, 3 * d)?;
    let split = b.const_i64(&[0, 0, 3, heads as i64, head_dim as i64]);
    let qkv = b.op(
        "Reshape",
        &[&qkv, &split],
        vec![],
        &format!("{prefix}.split"),
    );
    let qkv = b.op(
        "Transpose",
        &[&qkv],
        vec![ints("perm", &[2, 0, 3, 1, 4])],
        &format!("{prefix}.heads"),
    );
    let mut take = |i: i64, name: &str| {
        let index = b.scalar_i64(i);
        b.op(
            "Gather",
            &[&qkv, &index],
            vec![int("axis", 0)],
            &format!("{prefix}.{name}"),
        )
    };
    let (q, k, v) = (take(0, "q"), take(1, "k"), take(2, "v"));
    let k_t = b.op(
        "Transpose",
        &[&k],
        vec![ints("perm", &[0, 1, 3, 2])],
        &format!("{prefix}.k_t"),
    );
    let scores = b.op("MatMul", &[&q, &k_t], vec![], &format!("{prefix}.scores"));
    let scale = b.scalar_f32(1.0 / (head_dim as f32).sqrt());
    let scores = b.op(
        "Mul",
        &[&scores, &scale],
        vec![],
        &format!("{prefix}.scores"),
    );
    let weights = b.op(
        "Softmax",
        &[&scores],
        vec![int("axis", -1)],
        &format!("{prefix}.weights"),
    );
    let context = b.op(
        "MatMul",
        &[&weights, &v],
        vec![],
        &format!("{prefix}.context"),
    );
    let context = b.op(
        "Transpose",
        &[&context],
        vec![ints("perm", &[0, 2, 1, 3])],
        &format!("{prefix}.context"),
    );
    let merge = b.const_i64(&[0, 0, d as i64]);
    let merged = b.op(
        "Reshape",
        &[&context, &merge],
        vec![],
        &format!("{prefix}.merged"),
    );
    linear(b, &merged, &format!("{prefix}.proj"), d, d)
}

/// `fc1`, exact GELU `x (1 + erf(x / √2)) / 2`, `fc2`; the hidden width is
/// read from `fc1.weight`.
fn mlp(b: &mut Builder, x: &str, prefix: &str, d: usize) -> Result<String, OnnxError> {
    let fc1 = format!("{prefix}.fc1.weight");
    let hidden = match b.shape(&fc1)? {
        &[hidden, cols] if cols == d && hidden > 0 => hidden,
        other => {
            return Err(OnnxError::Shape {
                name: fc1,
                expected: format!("[hidden, {d}]"),
                found: other.to_vec(),
            });
        }
    };
    let h = linear(b, x, &format!("{prefix}.fc1"), d, hidden)?;
    let sqrt2 = b.scalar_f32(std::f32::consts::SQRT_2);
    let one = b.scalar_f32(1.0);
    let two = b.scalar_f32(2.0);
    let g = b.op("Div", &[&h, &sqrt2], vec![], &format!("{prefix}.gelu"));
    let g = b.op("Erf", &[&g], vec![], &format!("{prefix}.gelu"));
    let g = b.op("Add", &[&g, &one], vec![], &format!("{prefix}.gelu"));
    let g = b.op("Mul", &[&h, &g], vec![], &format!("{prefix}.gelu"));
    let g = b.op("Div", &[&g, &two], vec![], &format!("{prefix}.gelu"));
    linear(b, &g, &format!("{prefix}.fc2"), hidden, d)
}

/// PyTorch `Linear` with weight `[d_out, d_in]`: `x Wᵀ + b`.
fn linear(
    b: &mut Builder,
    x: &str,
    prefix: &str,
    d_in: usize,
    d_out: usize,
) -> Result<String, OnnxError> {
    let weight = b.weight(&format!("{prefix}.weight"), &[d_out, d_in])?;
    let bias = b.weight(&format!("{prefix}.bias"), &[d_out])?;
    let weight_t = match b.transposed.get(&weight) {
        Some(t) => t.clone(),
        None => {
            let t = b.op(
                "Transpose",
                &[&weight],
                vec![ints("perm", &[1, 0])],
                &format!("{prefix}.weight_t"),
            );
            b.transposed.insert(weight, t.clone());
            t
        }
    };
    let y = b.op("MatMul", &[x, &weight_t], vec![], prefix);
    Ok(b.op("Add", &[&y, &bias], vec![], prefix))
}

/// `LayerNorm(eps = 1e-6)` over the last axis.
fn layer_norm(b: &mut Builder, x: &str, prefix: &str, d: usize) -> Result<String, OnnxError> {
    let scale = b.weight(&format!("{prefix}.weight"), &[d])?;
    let bias = b.weight(&format!("{prefix}.bias"), &[d])?;
    Ok(b.op(
        "LayerNormalization",
        &[x, &scale, &bias],
        vec![int("axis", -1), float("epsilon", LAYER_NORM_EPSILON)],
        prefix,
    ))
}

/// `[B, L, D]` → token 0, `[B, D]`.
fn first_token(b: &mut Builder, x: &str, name: &str) -> String {
    let zero = b.scalar_i64(0);
    b.op("Gather", &[x, &zero], vec![int("axis", 1)], name)
}

fn int(name: &'static str, value: i64) -> Attribute<'static> {
    Attribute {
        name,
        value: AttributeValue::Int(value),
    }
}

fn ints(name: &'static str, values: &[i64]) -> Attribute<'static> {
    Attribute {
        name,
        value: AttributeValue::Ints(values.to_vec()),
    }
}

fn float(name: &'static str, value: f32) -> Attribute<'static> {
    Attribute {
        name,
        value: AttributeValue::Float(value),
    }
}

/// Accumulates nodes and initializers, naming every value uniquely.
struct Builder<'a> {
    tensors: &'a TensorMap,
    /// Bundle tensors already placed as initializers.
    used: BTreeSet<String>,
    initializers: Vec<TensorValue<'a>>,
    nodes: Vec<Node<'a>>,
    /// Weight name → the output of its `Transpose`, so shared weights are transposed once.
    transposed: HashMap<String, String>,
    /// Constant key → the `Constant` node's output, so equal constants are emitted once.
    constants: HashMap<String, String>,
    next_id: usize,
}

impl<'a> Builder<'a> {
    fn new(tensors: &'a TensorMap) -> Self {
        Self {
            tensors,
            used: BTreeSet::new(),
            initializers: Vec::new(),
            nodes: Vec::new(),
            transposed: HashMap::new(),
            constants: HashMap::new(),
            next_id: 0,
        }
    }

    fn shape(&self, name: &str) -> Result<&'a [usize], OnnxError> {
        self.tensors
            .get(name)
            .map(|t| t.shape())
            .ok_or_else(|| OnnxError::Missing(name.to_owned()))
    }

    /// The bundle tensor `name` as an initializer, checked to have `shape`.
    fn weight(&mut self, name: &str, shape: &[usize]) -> Result<String, OnnxError> {
        let tensor = self
            .tensors
            .get(name)
            .ok_or_else(|| OnnxError::Missing(name.to_owned()))?;
        if tensor.shape() != shape {
            return Err(OnnxError::Shape {
                name: name.to_owned(),
                expected: format!("{shape:?}"),
                found: tensor.shape().to_vec(),
            });
        }
        if self.used.insert(name.to_owned()) {
            self.initializers.push(TensorValue {
                name: name.to_owned(),
                dims: shape.iter().map(|&s| s as i64).collect(),
                values: proto::Values::F32(tensor.data()),
            });
        }
        Ok(name.to_owned())
    }

    fn fresh(&mut self, hint: &str) -> String {
        self.next_id += 1;
        format!("{hint}_{}", self.next_id)
    }

    /// Adds a node; its one output gets a fresh name derived from `hint`.
    fn op(
        &mut self,
        op_type: &'static str,
        inputs: &[&str],
        attributes: Vec<Attribute<'a>>,
        hint: &str,
    ) -> String {
        let output = self.fresh(hint);
        self.op_to(op_type, inputs, attributes, &output);
        output
    }

    /// Adds a node writing to `output` (a graph output's fixed name).
    fn op_to(
        &mut self,
        op_type: &'static str,
        inputs: &[&str],
        attributes: Vec<Attribute<'a>>,
        output: &str,
    ) {
        self.nodes.push(Node {
            op_type,
            name: format!("{op_type}:{output}"),
            inputs: inputs.iter().map(|s| (*s).to_owned()).collect(),
            outputs: vec![output.to_owned()],
            attributes,
        });
    }

    fn constant(&mut self, key: String, dims: Vec<i64>, values: proto::Values<'a>) -> String {
        if let Some(name) = self.constants.get(&key) {
            return name.clone();
        }
        let name = self.fresh("const");
        let value = TensorValue {
            name: String::new(),
            dims,
            values,
        };
        self.op_to(
            "Constant",
            &[],
            vec![Attribute {
                name: "value",
                value: AttributeValue::Tensor(value),
            }],
            &name,
        );
        self.constants.insert(key, name.clone());
        name
    }

    /// A 1-D int64 constant.
    fn const_i64(&mut self, values: &[i64]) -> String {
        self.constant(
            format!("i64{values:?}"),
            vec![values.len() as i64],
            proto::Values::I64(values.to_vec()),
        )
    }

    /// A 0-D int64 constant.
    fn scalar_i64(&mut self, value: i64) -> String {
        self.constant(
            format!("i64 {value}"),
            vec![],
            proto::Values::I64(vec![value]),
        )
    }

    /// A 0-D int32 constant.
    fn scalar_i32(&mut self, value: i32) -> String {
        self.constant(
            format!("i32 {value}"),
            vec![],
            proto::Values::I32(vec![value]),
        )
    }

    /// A 0-D float32 constant.
    fn scalar_f32(&mut self, value: f32) -> String {
        self.constant(
            format!("f32 {:08x}", value.to_bits()),
            vec![],
            proto::Values::OwnedF32(vec![value]),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::timm::to_bundle_layout;
    use crate::federated::to_tensor_map;
    use crate::model::{ExamClassifier, VitConfig};

    fn bundle_tensors(config: &ClassifierConfig) -> TensorMap {
        let device = crate::device::open(crate::device::BackendKind::Flex).unwrap();
        to_bundle_layout(&to_tensor_map(&ExamClassifier::new(config, &device)).unwrap()).unwrap()
    }

    fn config(pooling: SlicePooling) -> ClassifierConfig {
        ClassifierConfig::new(VitConfig::preset("test").unwrap(), pooling)
    }

    /// Every bundle tensor becomes an initializer of the same name.
    #[test]
    fn every_tensor_is_an_initializer() {
        for pooling in [SlicePooling::Transformer, SlicePooling::Max] {
            let config = config(pooling);
            let tensors = bundle_tensors(&config);
            let bytes = classifier_to_onnx(&config, &tensors).unwrap();
            let weights: usize = tensors.num_values() * 4;
            assert!(bytes.len() > weights && bytes.len() < weights + 64 * 1024);
            for name in tensors.names() {
                let needle = [&[name.len() as u8][..], name.as_bytes()].concat();
                assert!(
                    bytes.windows(needle.len()).any(|w| w == needle),
                    "{name} not in the model"
                );
            }
        }
    }

    #[test]
    fn tensors_must_fit_the_config() {
        let transformer = config(SlicePooling::Transformer);
        let max = config(SlicePooling::Max);
        // Pooler tensors without a pooler in the config.
        assert!(matches!(
            classifier_to_onnx(&max, &bundle_tensors(&transformer)),
            Err(OnnxError::Unexpected(name)) if name.starts_with("exam.pool.")
        ));
        // A pooler in the config but not in the tensors.
        assert!(matches!(
            classifier_to_onnx(&transformer, &bundle_tensors(&max)),
            Err(OnnxError::Missing(name)) if name.starts_with("exam.pool.")
        ));
        // Another position-table size.
        let mut longer = transformer.clone();
        longer.max_slices = 32;
        assert!(matches!(
            classifier_to_onnx(&longer, &bundle_tensors(&transformer)),
            Err(OnnxError::Shape { name, .. }) if name == "exam.pool.slice_pos"
        ));
    }

    #[test]
    fn the_spec_names_the_graph_ends() {
        let spec = spec();
        assert_eq!(spec.file, ONNX_FILE);
        assert_eq!(spec.opset, OPSET);
        assert_eq!(spec.input, "slices");
        assert_eq!(spec.outputs[..2], ["logit", "slice_logits"]);
    }
}
