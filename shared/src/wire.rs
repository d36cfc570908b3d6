//! The wire format for everything a site and the aggregator exchange about a
//! model: named f32 tensors ([`TensorMap`]), their layout ([`Schema`]), and the
//! self-checking payload that carries them ([`encode`] / [`decode`]).
//!
//! A payload is
//!
//! ```text
//! b"FSLW" | u32 LE header length | header JSON (≤ 64 KiB) | body = zstd(safetensors)
//! ```
//!
//! Threat model: sites are authenticated but may send broken or hostile
//! updates, and a payload may be cut short by the network or a crash. So
//! [`decode`] trusts nothing it has not checked: it rejects a foreign or
//! future protocol before reading further, checks the body against the
//! SHA-256 in the header before decompressing it, bounds decompression so a
//! zip bomb cannot exhaust memory, and refuses non-finite values, which would
//! silently poison an average. Every failure is a distinct [`WireError`]
//! whose message names the tensor or field at fault, because these messages
//! end up in an audit log read by people.
//!
//! What this module does not do: decide whether an update belongs to the
//! current job and round, or whether its norm is plausible. That is policy,
//! and it lives with the aggregator.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The protocol version this build writes and the only one it reads.
pub const PROTOCOL_VERSION: u32 = 1;

/// The four bytes every payload starts with.
pub const MAGIC: [u8; 4] = *b"FSLW";

/// Largest header JSON accepted. Headers hold a handful of fields and a few
/// metrics; anything bigger is a bug or an attack, and refusing it early keeps
/// [`decode_header`] cheap.
pub const MAX_HEADER_LEN: usize = 64 * 1024;

/// Magic plus the u32 header length.
const PREFIX_LEN: usize = MAGIC.len() + 4;

/// Safetensors reserves this key for its free-form metadata; a tensor with
/// this name would be misread on the other side.
const RESERVED_NAME: &str = "__metadata__";

/// Every way a payload, a tensor map or a schema can be wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    #[error("payload is {len} bytes, over the {limit}-byte limit")]
    PayloadTooLarge { len: u64, limit: u64 },
    #[error(
        "payload is truncated: the {part} needs {needed} bytes but only {available} are present"
    )]
    Truncated {
        part: &'static str,
        needed: u64,
        available: u64,
    },
    #[error("not a fedslice payload: it starts with \"{found}\", expected \"FSLW\"")]
    BadMagic { found: String },
    #[error("payload header is {len} bytes, over the {limit}-byte limit")]
    HeaderTooLarge { len: u64, limit: u64 },
    #[error("payload header is not valid: {0}")]
    InvalidHeader(String),
    #[error("payload protocol version {found} is not supported (this build speaks {supported})")]
    UnsupportedProtocol { found: u64, supported: u32 },
    #[error("payload body is {actual} bytes, but the header says {expected}")]
    BodyLength { expected: u64, actual: u64 },
    #[error("body digest mismatch: the header says {expected}, the body hashes to {actual}")]
    BodyDigestMismatch { expected: String, actual: String },
    #[error("payload body is not valid zstd: {0}")]
    Decompress(#[source] std::io::Error),
    #[error("payload body decompresses to more than the {limit}-byte limit")]
    DecompressedTooLarge { limit: u64 },
    #[error("compressing the payload body failed: {0}")]
    Compress(#[source] std::io::Error),
    #[error("safetensors data is not valid: {0}")]
    SafeTensors(String),
    #[error("tensor `{name}` has dtype {found}; only F32, F16 and BF16 are accepted")]
    UnsupportedDtype { name: String, found: String },
    #[error("tensor `{name}` is stored as {found}, but the header says {expected}")]
    DtypeMismatch {
        name: String,
        found: Dtype,
        expected: Dtype,
    },
    #[error("payload holds {actual} tensors, but the header says {expected}")]
    TensorCount { expected: usize, actual: usize },
    #[error("tensor `{name}` contains a non-finite value (NaN or Inf)")]
    NonFinite { name: String },
    #[error("tensor `{name}` holds {value}, which is outside the {dtype} range")]
    OutOfRange {
        name: String,
        value: f32,
        dtype: Dtype,
    },
    #[error("metric `{name}` is {value}; metrics must be finite")]
    NonFiniteMetric { name: String, value: f64 },
    #[error(
        "tensor `{name}` has shape {shape:?} ({expected} values) but {actual} values were given"
    )]
    DataLength {
        name: String,
        shape: Vec<usize>,
        expected: usize,
        actual: usize,
    },
    #[error("tensor `{name}` has shape {shape:?}, whose element count overflows")]
    ShapeOverflow { name: String, shape: Vec<usize> },
    #[error("tensor name `{name}` is not allowed: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("tensor `{name}` is missing")]
    MissingTensor { name: String },
    #[error("unexpected tensor `{name}`")]
    UnexpectedTensor { name: String },
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("`{field}` is not a SHA-256 hex digest: `{value}`")]
    InvalidDigest { field: &'static str, value: String },
    #[error("unknown dtype `{0}` (expected f32, f16 or bf16)")]
    UnknownDtype(String),
}

/// Element type of the tensors inside a payload body. Values are always f32
/// in memory; F16 and BF16 halve the upload at the cost of precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    #[default]
    F32,
    F16,
    Bf16,
}

impl Dtype {
    pub fn as_str(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
        }
    }

    /// Bytes per element in a safetensors body.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::Bf16 => 2,
        }
    }

    fn to_safetensors(self) -> safetensors::Dtype {
        match self {
            Dtype::F32 => safetensors::Dtype::F32,
            Dtype::F16 => safetensors::Dtype::F16,
            Dtype::Bf16 => safetensors::Dtype::BF16,
        }
    }

    fn from_safetensors(dtype: safetensors::Dtype) -> Option<Self> {
        match dtype {
            safetensors::Dtype::F32 => Some(Dtype::F32),
            safetensors::Dtype::F16 => Some(Dtype::F16),
            safetensors::Dtype::BF16 => Some(Dtype::Bf16),
            _ => None,
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Dtype {
    type Err = WireError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(Dtype::F32),
            "f16" => Ok(Dtype::F16),
            "bf16" => Ok(Dtype::Bf16),
            _ => Err(WireError::UnknownDtype(s.to_owned())),
        }
    }
}

/// Element count of `shape`, or an error naming `name` if it overflows usize.
fn element_count(name: &str, shape: &[usize]) -> Result<usize, WireError> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| WireError::ShapeOverflow {
            name: name.to_owned(),
            shape: shape.to_vec(),
        })
}

/// Checks a tensor name and shape and returns the element count.
fn validate_entry(name: &str, shape: &[usize]) -> Result<usize, WireError> {
    if name.is_empty() {
        return Err(WireError::InvalidName {
            name: name.to_owned(),
            reason: "tensor names must not be empty",
        });
    }
    if name == RESERVED_NAME {
        return Err(WireError::InvalidName {
            name: name.to_owned(),
            reason: "safetensors reserves it for metadata",
        });
    }
    element_count(name, shape)
}

/// One dense row-major f32 tensor. The fields are private so that
/// `shape.product() == data.len()` always holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl Tensor {
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// Mutable values; the length cannot change, so the shape stays right.
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn into_parts(self) -> (Vec<usize>, Vec<f32>) {
        (self.shape, self.data)
    }
}

/// Named tensors in name order. Name order makes serialisation, iteration
/// and schema comparison deterministic, which digests and lock-step
/// aggregation rely on.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TensorMap {
    tensors: BTreeMap<String, Tensor>,
}

impl TensorMap {
    pub fn new() -> Self {
        Self::default()
    }

    /// All-zero tensors with the names and shapes of `schema`.
    pub fn zeros(schema: &Schema) -> Self {
        let tensors = schema
            .iter()
            .map(|(name, shape)| {
                let tensor = Tensor {
                    shape: shape.to_vec(),
                    // Cannot overflow: `Schema` validates element counts.
                    data: vec![0.0; shape.iter().product()],
                };
                (name.to_owned(), tensor)
            })
            .collect();
        TensorMap { tensors }
    }

    /// Adds or replaces a tensor. Fails if the shape does not describe exactly
    /// `data.len()` values or the name cannot round-trip through safetensors.
    pub fn insert(
        &mut self,
        name: impl Into<String>,
        shape: Vec<usize>,
        data: Vec<f32>,
    ) -> Result<(), WireError> {
        let name = name.into();
        let expected = validate_entry(&name, &shape)?;
        if expected != data.len() {
            return Err(WireError::DataLength {
                name,
                shape,
                expected,
                actual: data.len(),
            });
        }
        self.tensors.insert(name, Tensor { shape, data });
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut Tensor> {
        self.tensors.get_mut(name)
    }

    pub fn remove(&mut self, name: &str) -> Option<Tensor> {
        self.tensors.remove(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> + Clone {
        self.tensors.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&str, &mut Tensor)> {
        self.tensors.iter_mut().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Total number of scalar values across all tensors.
    pub fn num_values(&self) -> usize {
        self.tensors.values().map(Tensor::len).sum()
    }

    pub fn schema(&self) -> Schema {
        Schema {
            tensors: self
                .tensors
                .iter()
                .map(|(k, v)| (k.clone(), v.shape.clone()))
                .collect(),
        }
    }

    /// Checks that `other` has exactly this map's names and shapes; errors
    /// are phrased from this map's point of view ("`other` is missing x").
    pub fn check_same_schema(&self, other: &TensorMap) -> Result<(), WireError> {
        check_layout(self.iter().map(|(n, t)| (n, t.shape())), other)
    }

    /// Global L2 norm over every value, accumulated in f64 so that large
    /// models do not lose precision or overflow.
    /// A map with this one's names and shapes, filled with deterministic
    /// pseudo-random values in [−amplitude, amplitude): an update of
    /// realistic, incompressible size for benchmarks and tests.
    pub fn pseudo_random_like(&self, seed: u64, amplitude: f32) -> TensorMap {
        let mut state = seed | 1;
        let mut out = TensorMap::new();
        for (name, t) in self.iter() {
            let data = (0..t.data().len())
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amplitude
                })
                .collect();
            let tensor = Tensor {
                shape: t.shape().to_vec(),
                data,
            };
            out.tensors.insert(name.to_string(), tensor);
        }
        out
    }

    pub fn l2_norm(&self) -> f64 {
        self.tensors
            .values()
            .flat_map(|t| t.data.iter())
            .map(|&x| f64::from(x) * f64::from(x))
            .sum::<f64>()
            .sqrt()
    }

    /// `self − other`, tensor by tensor; the schemas must match. This is how
    /// a site turns its locally trained weights into an update Δ.
    pub fn sub(&self, other: &TensorMap) -> Result<TensorMap, WireError> {
        self.check_same_schema(other)?;
        let tensors = self
            .tensors
            .iter()
            .zip(other.tensors.values())
            .map(|((name, a), b)| {
                let data = a.data.iter().zip(&b.data).map(|(x, y)| x - y).collect();
                (
                    name.clone(),
                    Tensor {
                        shape: a.shape.clone(),
                        data,
                    },
                )
            })
            .collect();
        Ok(TensorMap { tensors })
    }

    /// `self += scale · other`; the schemas must match.
    pub fn add_scaled(&mut self, other: &TensorMap, scale: f32) -> Result<(), WireError> {
        self.check_same_schema(other)?;
        for (a, b) in self.tensors.values_mut().zip(other.tensors.values()) {
            for (x, y) in a.data.iter_mut().zip(&b.data) {
                *x += scale * y;
            }
        }
        Ok(())
    }

    /// Multiplies every value by `factor`.
    pub fn scale(&mut self, factor: f32) {
        for t in self.tensors.values_mut() {
            for x in &mut t.data {
                *x *= factor;
            }
        }
    }

    pub fn all_finite(&self) -> bool {
        self.first_non_finite().is_none()
    }

    /// Name of the first tensor (in name order) holding a NaN or an infinity.
    pub fn first_non_finite(&self) -> Option<&str> {
        self.tensors
            .iter()
            .find(|(_, t)| t.data.iter().any(|x| !x.is_finite()))
            .map(|(k, _)| k.as_str())
    }

    /// Errors with [`WireError::NonFinite`] naming the first bad tensor.
    pub fn check_finite(&self) -> Result<(), WireError> {
        match self.first_non_finite() {
            Some(name) => Err(WireError::NonFinite {
                name: name.to_owned(),
            }),
            None => Ok(()),
        }
    }

    /// Reads a safetensors file whose tensors are F32, F16 or BF16 (converted
    /// to f32). Values are not checked for finiteness here; [`decode`] does.
    pub fn from_safetensors(bytes: &[u8]) -> Result<Self, WireError> {
        Self::from_safetensors_checked(bytes, None)
    }

    fn from_safetensors_checked(bytes: &[u8], expect: Option<Dtype>) -> Result<Self, WireError> {
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| WireError::SafeTensors(e.to_string()))?;
        let mut map = TensorMap::new();
        for (name, view) in st.iter() {
            let dtype = Dtype::from_safetensors(view.dtype()).ok_or_else(|| {
                WireError::UnsupportedDtype {
                    name: name.to_owned(),
                    found: view.dtype().to_string(),
                }
            })?;
            if let Some(expected) = expect
                && dtype != expected
            {
                return Err(WireError::DtypeMismatch {
                    name: name.to_owned(),
                    found: dtype,
                    expected,
                });
            }
            // Byte-wise decoding: the body buffer carries no alignment guarantee.
            let raw = view.data();
            let data: Vec<f32> = match dtype {
                Dtype::F32 => raw
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
                Dtype::F16 => raw
                    .chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                Dtype::Bf16 => raw
                    .chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
            };
            map.insert(name, view.shape().to_vec(), data)?;
        }
        Ok(map)
    }

    /// Writes a safetensors file in `dtype`. Fails with
    /// [`WireError::OutOfRange`] if narrowing would turn a finite value into
    /// an infinity (f16 tops out at 65504), because the receiver would then
    /// reject the payload for a reason the sender never saw.
    pub fn to_safetensors(&self, dtype: Dtype) -> Result<Vec<u8>, WireError> {
        let mut buffers: Vec<(&str, &[usize], Vec<u8>)> = Vec::with_capacity(self.len());
        for (name, t) in self.iter() {
            let mut bytes = Vec::with_capacity(t.len() * dtype.size());
            match dtype {
                Dtype::F32 => {
                    for &x in &t.data {
                        bytes.extend_from_slice(&x.to_le_bytes());
                    }
                }
                Dtype::F16 => {
                    for &x in &t.data {
                        let h = half::f16::from_f32(x);
                        check_narrowing(name, x, h.to_f32(), dtype)?;
                        bytes.extend_from_slice(&h.to_le_bytes());
                    }
                }
                Dtype::Bf16 => {
                    for &x in &t.data {
                        let h = half::bf16::from_f32(x);
                        check_narrowing(name, x, h.to_f32(), dtype)?;
                        bytes.extend_from_slice(&h.to_le_bytes());
                    }
                }
            }
            buffers.push((name, t.shape(), bytes));
        }
        let mut views = Vec::with_capacity(buffers.len());
        for (name, shape, bytes) in &buffers {
            let view =
                safetensors::tensor::TensorView::new(dtype.to_safetensors(), shape.to_vec(), bytes)
                    .map_err(|e| WireError::SafeTensors(e.to_string()))?;
            views.push((*name, view));
        }
        safetensors::serialize(views, None).map_err(|e| WireError::SafeTensors(e.to_string()))
    }
}

fn check_narrowing(name: &str, before: f32, after: f32, dtype: Dtype) -> Result<(), WireError> {
    if before.is_finite() && !after.is_finite() {
        return Err(WireError::OutOfRange {
            name: name.to_owned(),
            value: before,
            dtype,
        });
    }
    Ok(())
}

impl IntoIterator for TensorMap {
    type Item = (String, Tensor);
    type IntoIter = std::collections::btree_map::IntoIter<String, Tensor>;

    fn into_iter(self) -> Self::IntoIter {
        self.tensors.into_iter()
    }
}

/// Shared by [`Schema::check`] and [`TensorMap::check_same_schema`]: walks
/// the expected layout first so that a missing or mis-shaped tensor is
/// reported before an extra one.
fn check_layout<'a, I>(expected: I, found: &TensorMap) -> Result<(), WireError>
where
    I: Iterator<Item = (&'a str, &'a [usize])> + Clone,
{
    let mut matched = 0usize;
    for (name, shape) in expected.clone() {
        match found.get(name) {
            None => {
                return Err(WireError::MissingTensor {
                    name: name.to_owned(),
                });
            }
            Some(t) if t.shape() != shape => {
                return Err(WireError::ShapeMismatch {
                    name: name.to_owned(),
                    found: t.shape().to_vec(),
                    expected: shape.to_vec(),
                });
            }
            Some(_) => matched += 1,
        }
    }
    if matched != found.len() {
        // Only reached on the error path, so the quadratic search is fine.
        if let Some(extra) = found
            .names()
            .find(|n| !expected.clone().any(|(e, _)| e == *n))
        {
            return Err(WireError::UnexpectedTensor {
                name: extra.to_owned(),
            });
        }
    }
    Ok(())
}

/// Tensor names and shapes of a model: what every update for a job must
/// match exactly. Entries are validated like [`TensorMap::insert`] (names
/// that round-trip through safetensors, element counts that fit a usize), on
/// deserialisation too, so code holding a `Schema` can allocate from it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(
    try_from = "BTreeMap<String, Vec<usize>>",
    into = "BTreeMap<String, Vec<usize>>"
)]
pub struct Schema {
    tensors: BTreeMap<String, Vec<usize>>,
}

impl Schema {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, name: impl Into<String>, shape: Vec<usize>) -> Result<(), WireError> {
        let name = name.into();
        validate_entry(&name, &shape)?;
        self.tensors.insert(name, shape);
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(Vec::as_slice)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &[usize])> + Clone {
        self.tensors.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Total scalar count (saturating, though no real model gets near).
    pub fn num_values(&self) -> usize {
        self.tensors
            .values()
            .map(|s| s.iter().product::<usize>())
            .fold(0usize, usize::saturating_add)
    }

    /// Checks that `map` has exactly these names and shapes, naming the first
    /// missing, mis-shaped or unexpected tensor.
    pub fn check(&self, map: &TensorMap) -> Result<(), WireError> {
        check_layout(self.iter(), map)
    }
}

impl TryFrom<BTreeMap<String, Vec<usize>>> for Schema {
    type Error = WireError;

    fn try_from(tensors: BTreeMap<String, Vec<usize>>) -> Result<Self, Self::Error> {
        for (name, shape) in &tensors {
            validate_entry(name, shape)?;
        }
        Ok(Schema { tensors })
    }
}

impl From<Schema> for BTreeMap<String, Vec<usize>> {
    fn from(schema: Schema) -> Self {
        schema.tensors
    }
}

/// What a payload carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadKind {
    /// Global model weights (aggregator → sites).
    Model,
    /// A site's update Δ = w_local − w_global (site → aggregator).
    Update,
}

/// The caller-supplied part of a header; [`encode`] fills in the rest.
#[derive(Debug, Clone, PartialEq)]
pub struct PayloadMeta {
    pub kind: PayloadKind,
    pub job: String,
    pub round: u32,
    /// Digest (see [`digest`]) of the global model payload the update was
    /// computed from, so the aggregator can refuse stale updates.
    pub base_digest: Option<String>,
    /// Local training samples behind an update: its FedAvg weight.
    pub samples: u64,
    pub metrics: BTreeMap<String, f64>,
}

/// The JSON header of a payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadHeader {
    pub protocol: u32,
    pub kind: PayloadKind,
    pub job: String,
    pub round: u32,
    pub base_digest: Option<String>,
    pub samples: u64,
    pub dtype: Dtype,
    pub metrics: BTreeMap<String, f64>,
    /// SHA-256 hex of the compressed body.
    pub body_sha256: String,
    pub body_len: u64,
    pub num_tensors: usize,
}

/// Resource bounds for [`decode`]. Everything a peer sends is bounded before
/// it is allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest whole payload accepted (magic + header + compressed body).
    pub max_payload_bytes: u64,
    /// Largest decompressed safetensors body accepted.
    pub max_decompressed_bytes: u64,
}

impl DecodeLimits {
    /// Defaults: 512 MiB payload, 1 GiB decompressed, room for a ViT-Base
    /// (86 M parameters, 344 MB as f32) with margin. Prefer
    /// [`DecodeLimits::for_schema`] when the model is known.
    pub const DEFAULT: DecodeLimits = DecodeLimits {
        max_payload_bytes: 512 * 1024 * 1024,
        max_decompressed_bytes: 1024 * 1024 * 1024,
    };

    /// Tight limits for a payload of `schema` in any dtype: an honest f32
    /// body of this model plus room for the safetensors header, and the
    /// worst-case zstd size of that plus the frame header.
    pub fn for_schema(schema: &Schema) -> DecodeLimits {
        let values = schema.num_values() as u64;
        // safetensors header: per tensor, the name and a JSON entry with
        // dtype, shape and offsets; 128 bytes covers the entry generously.
        let st_header: u64 = schema
            .names()
            .map(|n| n.len() as u64 + 128)
            .fold(64, u64::saturating_add);
        let max_decompressed = values.saturating_mul(4).saturating_add(st_header);
        let body_bound = zstd::zstd_safe::compress_bound(
            usize::try_from(max_decompressed).unwrap_or(usize::MAX),
        ) as u64;
        DecodeLimits {
            max_payload_bytes: body_bound
                .saturating_add(MAX_HEADER_LEN as u64)
                .saturating_add(PREFIX_LEN as u64),
            max_decompressed_bytes: max_decompressed,
        }
    }
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// SHA-256 hex of `bytes`. Applied to a whole payload it is that payload's
/// content address (model versions are fetched and cached by it).
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Whether `s` is a digest as [`digest`] writes it: 64 lowercase hex digits.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn check_digest_field(field: &'static str, value: &str) -> Result<(), WireError> {
    if is_sha256_hex(value) {
        Ok(())
    } else {
        Err(WireError::InvalidDigest {
            field,
            value: value.chars().take(80).collect(),
        })
    }
}

/// Builds a payload. Refuses non-finite tensors or metrics up front so a site
/// learns about a diverged model locally instead of from a rejection.
pub fn encode(
    meta: PayloadMeta,
    tensors: &TensorMap,
    dtype: Dtype,
    zstd_level: i32,
) -> Result<Vec<u8>, WireError> {
    if let Some(d) = &meta.base_digest {
        check_digest_field("base_digest", d)?;
    }
    if let Some((name, &value)) = meta.metrics.iter().find(|(_, v)| !v.is_finite()) {
        // serde_json would write a NaN as `null`, which the receiver then
        // cannot parse: catch it here with a better message.
        return Err(WireError::NonFiniteMetric {
            name: name.clone(),
            value,
        });
    }
    tensors.check_finite()?;
    let st = tensors.to_safetensors(dtype)?;
    let body = zstd::bulk::compress(&st, zstd_level).map_err(WireError::Compress)?;
    drop(st);
    let header = PayloadHeader {
        protocol: PROTOCOL_VERSION,
        kind: meta.kind,
        job: meta.job,
        round: meta.round,
        base_digest: meta.base_digest,
        samples: meta.samples,
        dtype,
        metrics: meta.metrics,
        body_sha256: digest(&body),
        body_len: body.len() as u64,
        num_tensors: tensors.len(),
    };
    frame(&header, &body)
}

/// Lays out magic, header length, header JSON and body.
fn frame(header: &PayloadHeader, body: &[u8]) -> Result<Vec<u8>, WireError> {
    let json = serde_json::to_vec(header).map_err(|e| WireError::InvalidHeader(e.to_string()))?;
    if json.len() > MAX_HEADER_LEN {
        return Err(WireError::HeaderTooLarge {
            len: json.len() as u64,
            limit: MAX_HEADER_LEN as u64,
        });
    }
    let json_len = u32::try_from(json.len()).map_err(|_| WireError::HeaderTooLarge {
        len: json.len() as u64,
        limit: MAX_HEADER_LEN as u64,
    })?;
    let mut out = Vec::with_capacity(PREFIX_LEN + json.len() + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&json_len.to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(body);
    Ok(out)
}

/// Parses magic, header length and header; returns the header and whatever
/// follows it (the body, possibly incomplete).
fn parse_frame(bytes: &[u8]) -> Result<(PayloadHeader, &[u8]), WireError> {
    let truncated = |part, needed: usize| WireError::Truncated {
        part,
        needed: needed as u64,
        available: bytes.len() as u64,
    };
    let magic = bytes
        .get(..MAGIC.len())
        .ok_or_else(|| truncated("magic", MAGIC.len()))?;
    if magic != MAGIC {
        return Err(WireError::BadMagic {
            found: magic.escape_ascii().to_string(),
        });
    }
    let len_bytes = bytes
        .get(MAGIC.len()..PREFIX_LEN)
        .ok_or_else(|| truncated("header length", PREFIX_LEN))?;
    let header_len = u32::from_le_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]);
    let header_len = usize::try_from(header_len).unwrap_or(usize::MAX);
    if header_len > MAX_HEADER_LEN {
        return Err(WireError::HeaderTooLarge {
            len: header_len as u64,
            limit: MAX_HEADER_LEN as u64,
        });
    }
    let header_end = PREFIX_LEN + header_len;
    let json = bytes
        .get(PREFIX_LEN..header_end)
        .ok_or_else(|| truncated("header", header_end))?;

    // The version is read from a generic JSON value before the typed parse,
    // so a newer peer whose header has other fields gets "version 2 is not
    // supported" rather than a confusing "unknown field".
    let value: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| WireError::InvalidHeader(e.to_string()))?;
    let protocol = value
        .get("protocol")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| {
            WireError::InvalidHeader("missing or non-integer `protocol` field".to_owned())
        })?;
    if protocol != u64::from(PROTOCOL_VERSION) {
        return Err(WireError::UnsupportedProtocol {
            found: protocol,
            supported: PROTOCOL_VERSION,
        });
    }
    let header: PayloadHeader =
        serde_json::from_value(value).map_err(|e| WireError::InvalidHeader(e.to_string()))?;
    check_digest_field("body_sha256", &header.body_sha256)?;
    if let Some(d) = &header.base_digest {
        check_digest_field("base_digest", d)?;
    }
    Ok((header, &bytes[header_end..]))
}

/// Reads and validates only the header: no digest check, no decompression.
/// `bytes` may be just a prefix of the payload (the first
/// `8 + MAX_HEADER_LEN` bytes always suffice), so a stored blob can be
/// described without loading it.
pub fn decode_header(bytes: &[u8]) -> Result<PayloadHeader, WireError> {
    parse_frame(bytes).map(|(header, _)| header)
}

/// Fully validates a payload and returns its header and tensors. The checks
/// run cheapest first, and nothing is decompressed before the digest matches.
pub fn decode(
    bytes: &[u8],
    limits: &DecodeLimits,
) -> Result<(PayloadHeader, TensorMap), WireError> {
    if bytes.len() as u64 > limits.max_payload_bytes {
        return Err(WireError::PayloadTooLarge {
            len: bytes.len() as u64,
            limit: limits.max_payload_bytes,
        });
    }
    let (header, body) = parse_frame(bytes)?;
    if body.len() as u64 != header.body_len {
        return Err(WireError::BodyLength {
            expected: header.body_len,
            actual: body.len() as u64,
        });
    }
    let actual = digest(body);
    if actual != header.body_sha256 {
        return Err(WireError::BodyDigestMismatch {
            expected: header.body_sha256,
            actual,
        });
    }
    let st = decompress_bounded(body, limits.max_decompressed_bytes)?;
    let tensors = TensorMap::from_safetensors_checked(&st, Some(header.dtype))?;
    drop(st);
    if tensors.len() != header.num_tensors {
        return Err(WireError::TensorCount {
            expected: header.num_tensors,
            actual: tensors.len(),
        });
    }
    tensors.check_finite()?;
    Ok((header, tensors))
}

/// Decompresses at most `limit` bytes. The declared frame size is only a
/// hint (an attacker controls it), so the stream itself is capped too.
fn decompress_bounded(body: &[u8], limit: u64) -> Result<Vec<u8>, WireError> {
    let declared = zstd::zstd_safe::get_frame_content_size(body).ok().flatten();
    if let Some(n) = declared
        && n > limit
    {
        return Err(WireError::DecompressedTooLarge { limit });
    }
    let capacity = declared.and_then(|n| usize::try_from(n).ok()).unwrap_or(0);
    let decoder = zstd::stream::read::Decoder::with_buffer(body).map_err(WireError::Decompress)?;
    read_capped(decoder, limit, capacity)
}

/// Reads `reader` to the end but pulls at most `limit + 1` bytes from it: one
/// byte past the limit is enough to know it is over.
fn read_capped(reader: impl Read, limit: u64, capacity: usize) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::with_capacity(capacity);
    reader
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(WireError::Decompress)?;
    if out.len() as u64 > limit {
        return Err(WireError::DecompressedTooLarge { limit });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::io::Write;

    const HASH_A: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    fn meta() -> PayloadMeta {
        PayloadMeta {
            kind: PayloadKind::Update,
            job: "knee-pretrain".to_owned(),
            round: 7,
            base_digest: Some(HASH_A.to_owned()),
            samples: 1234,
            metrics: BTreeMap::from([("val_loss".to_owned(), 0.25), ("auc".to_owned(), 0.875)]),
        }
    }

    fn random_map(seed: u64, scale: f32) -> TensorMap {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut map = TensorMap::new();
        for (name, shape) in [
            ("encoder.blocks.0.attn.qkv.weight", vec![12, 4]),
            ("encoder.blocks.0.attn.qkv.bias", vec![12]),
            ("encoder.norm.weight", vec![4]),
            ("head.scale", vec![]),
        ] {
            let n: usize = shape.iter().product();
            let data = (0..n).map(|_| rng.random_range(-scale..scale)).collect();
            map.insert(name, shape, data).unwrap();
        }
        map
    }

    /// Re-frames `payload` after editing its header JSON, keeping the body.
    fn reframe(payload: &[u8], edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
        let len = u32::from_le_bytes(payload[4..8].try_into().unwrap()) as usize;
        let mut header: serde_json::Value = serde_json::from_slice(&payload[8..8 + len]).unwrap();
        edit(&mut header);
        let json = serde_json::to_vec(&header).unwrap();
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&(json.len() as u32).to_le_bytes());
        out.extend_from_slice(&json);
        out.extend_from_slice(&payload[8 + len..]);
        out
    }

    /// A correctly framed and digested payload around an arbitrary body, to
    /// reach the checks that come after the digest.
    fn framed_body(body: Vec<u8>, dtype: Dtype, num_tensors: usize) -> Vec<u8> {
        let header = PayloadHeader {
            protocol: PROTOCOL_VERSION,
            kind: PayloadKind::Update,
            job: "j".to_owned(),
            round: 1,
            base_digest: None,
            samples: 1,
            dtype,
            metrics: BTreeMap::new(),
            body_sha256: digest(&body),
            body_len: body.len() as u64,
            num_tensors,
        };
        frame(&header, &body).unwrap()
    }

    fn framed_safetensors(map: &TensorMap, dtype: Dtype) -> Vec<u8> {
        let st = map.to_safetensors(dtype).unwrap();
        framed_body(zstd::bulk::compress(&st, 3).unwrap(), dtype, map.len())
    }

    #[test]
    fn f32_round_trip_is_bit_exact_and_keeps_the_header() {
        let mut map = random_map(1, 3.0);
        let specials = vec![
            -0.0,
            0.0,
            f32::MIN_POSITIVE / 8.0, // subnormal
            f32::MAX,
            f32::MIN,
            1e-30,
            std::f32::consts::PI,
            -1.5e7,
        ];
        map.insert("specials", vec![2, 4], specials).unwrap();
        let payload = encode(meta(), &map, Dtype::F32, 3).unwrap();
        let (header, back) = decode(&payload, &DecodeLimits::default()).unwrap();

        assert_eq!(back.schema(), map.schema());
        for ((_, a), (_, b)) in map.iter().zip(back.iter()) {
            let a: Vec<u32> = a.data().iter().map(|x| x.to_bits()).collect();
            let b: Vec<u32> = b.data().iter().map(|x| x.to_bits()).collect();
            assert_eq!(a, b);
        }
        let m = meta();
        assert_eq!(header.protocol, PROTOCOL_VERSION);
        assert_eq!(header.kind, m.kind);
        assert_eq!(header.job, m.job);
        assert_eq!(header.round, m.round);
        assert_eq!(header.base_digest, m.base_digest);
        assert_eq!(header.samples, m.samples);
        assert_eq!(header.metrics, m.metrics);
        assert_eq!(header.dtype, Dtype::F32);
        assert_eq!(header.num_tensors, 5);
        assert_eq!(decode_header(&payload).unwrap(), header);
    }

    fn assert_narrow_round_trip(dtype: Dtype, scale: f32, rel: f32, abs: f32) {
        let map = random_map(2, scale);
        let payload = encode(meta(), &map, dtype, 3).unwrap();
        let (header, back) = decode(&payload, &DecodeLimits::default()).unwrap();
        assert_eq!(header.dtype, dtype);
        assert_eq!(back.schema(), map.schema());
        let mut changed = 0;
        for ((name, a), (_, b)) in map.iter().zip(back.iter()) {
            for (&x, &y) in a.data().iter().zip(b.data()) {
                assert!(
                    (x - y).abs() <= x.abs() * rel + abs,
                    "{dtype} `{name}`: {x} came back as {y}"
                );
                changed += usize::from(x != y);
            }
        }
        // Guards against a "narrow" path that silently kept f32.
        assert!(
            changed > map.num_values() / 2,
            "only {changed} values were rounded"
        );
    }

    #[test]
    fn f16_round_trip_is_within_half_precision() {
        // Round-to-nearest: relative error ≤ 2^-11 for normals, ≤ 2^-25
        // absolute in the subnormal range.
        assert_narrow_round_trip(Dtype::F16, 100.0, 2f32.powi(-11), 2f32.powi(-25));
    }

    #[test]
    fn bf16_round_trip_is_within_bfloat_precision() {
        assert_narrow_round_trip(Dtype::Bf16, 1e6, 2f32.powi(-8), 0.0);
    }

    #[test]
    fn f16_encode_refuses_values_it_cannot_represent() {
        let mut map = TensorMap::new();
        map.insert("big", vec![2], vec![1.0, 70000.0]).unwrap();
        let err = encode(meta(), &map, Dtype::F16, 3).unwrap_err();
        assert!(
            matches!(err, WireError::OutOfRange { ref name, dtype: Dtype::F16, .. } if name == "big")
        );
        assert_eq!(
            err.to_string(),
            "tensor `big` holds 70000, which is outside the f16 range"
        );
        // bf16 has f32's exponent range, so the same map is fine there.
        encode(meta(), &map, Dtype::Bf16, 3).unwrap();
    }

    #[test]
    fn zstd_shrinks_a_compressible_map() {
        let mut map = TensorMap::new();
        let data: Vec<f32> = (0..65536).map(|i| (i % 16) as f32 * 0.5).collect();
        map.insert("w", vec![256, 256], data).unwrap();
        let raw = map.to_safetensors(Dtype::F32).unwrap().len();
        let payload = encode(meta(), &map, Dtype::F32, 3).unwrap();
        assert!(raw >= 65536 * 4);
        assert!(
            payload.len() * 20 < raw,
            "payload {} vs raw {raw}",
            payload.len()
        );
        let (_, back) = decode(&payload, &DecodeLimits::default()).unwrap();
        assert_eq!(back, map);
    }

    #[test]
    fn rejects_wrong_magic() {
        let mut payload = encode(meta(), &random_map(3, 1.0), Dtype::F32, 3).unwrap();
        payload[..4].copy_from_slice(b"PK\x03\x04");
        let err = decode(&payload, &DecodeLimits::default()).unwrap_err();
        assert!(matches!(err, WireError::BadMagic { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "not a fedslice payload: it starts with \"PK\\x03\\x04\", expected \"FSLW\""
        );
        assert!(matches!(
            decode_header(&payload),
            Err(WireError::BadMagic { .. })
        ));
    }

    #[test]
    fn rejects_every_truncation() {
        let payload = encode(meta(), &random_map(4, 1.0), Dtype::F32, 3).unwrap();
        let header_len = u32::from_le_bytes(payload[4..8].try_into().unwrap()) as usize;
        let header_end = 8 + header_len;
        for cut in 0..payload.len() {
            let err = decode(&payload[..cut], &DecodeLimits::default()).unwrap_err();
            if cut < header_end {
                assert!(
                    matches!(err, WireError::Truncated { .. }),
                    "cut {cut}: {err}"
                );
            } else {
                assert!(
                    matches!(err, WireError::BodyLength { actual, .. } if actual == (cut - header_end) as u64),
                    "cut {cut}: {err}"
                );
            }
        }
        // A header-only prefix is enough for decode_header.
        assert!(decode_header(&payload[..header_end]).is_ok());
        assert!(decode_header(&payload[..header_end - 1]).is_err());
    }

    #[test]
    fn rejects_a_header_over_the_limit() {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&(MAX_HEADER_LEN as u32 + 1).to_le_bytes());
        bytes.extend(std::iter::repeat_n(b' ', MAX_HEADER_LEN + 1));
        let err = decode(&bytes, &DecodeLimits::default()).unwrap_err();
        assert!(
            matches!(err, WireError::HeaderTooLarge { len, limit } if len == 65537 && limit == 65536),
            "{err}"
        );
        // The encoder refuses to produce one in the first place.
        let mut m = meta();
        for i in 0..5000 {
            m.metrics
                .insert(format!("metric_with_a_long_name_{i}"), 1.0);
        }
        let err = encode(m, &random_map(5, 1.0), Dtype::F32, 3).unwrap_err();
        assert!(matches!(err, WireError::HeaderTooLarge { .. }), "{err}");
    }

    #[test]
    fn rejects_protocol_version_2_with_both_versions_in_the_message() {
        let payload = encode(meta(), &random_map(6, 1.0), Dtype::F32, 3).unwrap();
        let v2 = reframe(&payload, |h| h["protocol"] = 2.into());
        let err = decode(&v2, &DecodeLimits::default()).unwrap_err();
        assert!(
            matches!(
                err,
                WireError::UnsupportedProtocol {
                    found: 2,
                    supported: 1
                }
            ),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "payload protocol version 2 is not supported (this build speaks 1)"
        );
        // A future header with fields this build does not know still gets the
        // version message, not a parse error.
        let v2_new_fields = reframe(&payload, |h| {
            h["protocol"] = 2.into();
            h["secure_aggregation"] = serde_json::json!({"masks": 3});
        });
        assert!(matches!(
            decode_header(&v2_new_fields),
            Err(WireError::UnsupportedProtocol { found: 2, .. })
        ));
        let unknown_v1 = reframe(&payload, |h| h["surprise"] = 1.into());
        assert!(matches!(
            decode_header(&unknown_v1),
            Err(WireError::InvalidHeader(_))
        ));
        let no_version = reframe(&payload, |h| {
            h.as_object_mut().unwrap().remove("protocol");
        });
        assert!(matches!(
            decode_header(&no_version),
            Err(WireError::InvalidHeader(_))
        ));
    }

    #[test]
    fn rejects_a_flipped_body_byte() {
        let payload = encode(meta(), &random_map(7, 1.0), Dtype::F32, 3).unwrap();
        for pos in [payload.len() - 1, payload.len() - 40] {
            let mut bad = payload.clone();
            bad[pos] ^= 0x01;
            let err = decode(&bad, &DecodeLimits::default()).unwrap_err();
            assert!(matches!(err, WireError::BodyDigestMismatch { .. }), "{err}");
            assert!(err.to_string().starts_with("body digest mismatch"));
        }
    }

    #[test]
    fn rejects_a_malformed_digest_field() {
        let payload = encode(meta(), &random_map(7, 1.0), Dtype::F32, 3).unwrap();
        let bad = reframe(&payload, |h| h["base_digest"] = "not-a-digest".into());
        assert!(matches!(
            decode_header(&bad),
            Err(WireError::InvalidDigest {
                field: "base_digest",
                ..
            })
        ));
        let mut m = meta();
        m.base_digest = Some(HASH_A.to_uppercase());
        assert!(matches!(
            encode(m, &random_map(7, 1.0), Dtype::F32, 3),
            Err(WireError::InvalidDigest { .. })
        ));
    }

    #[test]
    fn rejects_nan_and_inf_tensors_naming_them() {
        for (bad_value, dtype) in [
            (f32::NAN, Dtype::F32),
            (f32::INFINITY, Dtype::F32),
            (f32::NEG_INFINITY, Dtype::F16),
            (f32::NAN, Dtype::Bf16),
        ] {
            let mut map = random_map(8, 1.0);
            let mut data = vec![0.5; 4];
            data[2] = bad_value;
            map.insert("encoder.norm.weight", vec![4], data).unwrap();

            let err = encode(meta(), &map, dtype, 3).unwrap_err();
            assert!(matches!(err, WireError::NonFinite { .. }), "{err}");

            // A peer that skipped the check: decode must catch it.
            let payload = framed_safetensors(&map, dtype);
            let err = decode(&payload, &DecodeLimits::default()).unwrap_err();
            assert!(
                matches!(err, WireError::NonFinite { ref name } if name == "encoder.norm.weight"),
                "{err}"
            );
            assert_eq!(
                err.to_string(),
                "tensor `encoder.norm.weight` contains a non-finite value (NaN or Inf)"
            );
        }
    }

    #[test]
    fn rejects_non_finite_metrics_on_encode() {
        let mut m = meta();
        m.metrics.insert("loss".to_owned(), f64::NAN);
        let err = encode(m, &random_map(9, 1.0), Dtype::F32, 3).unwrap_err();
        assert!(matches!(err, WireError::NonFiniteMetric { ref name, .. } if name == "loss"));
    }

    fn zeros_declared(len: usize) -> Vec<u8> {
        zstd::bulk::compress(&vec![0u8; len], 3).unwrap()
    }

    fn zeros_streamed(len: usize) -> Vec<u8> {
        // A streaming encoder does not record the content size, so the
        // decoder cannot refuse up front and must rely on its running cap.
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..len / chunk.len() {
            enc.write_all(&chunk).unwrap();
        }
        enc.finish().unwrap()
    }

    #[test]
    fn rejects_a_decompression_bomb() {
        let bomb_len = 64 << 20;
        let limits = DecodeLimits {
            max_payload_bytes: 1 << 20,
            max_decompressed_bytes: 1 << 20,
        };
        let declared = zeros_declared(bomb_len);
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&declared).unwrap(),
            Some(bomb_len as u64)
        );
        let streamed = zeros_streamed(bomb_len);
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&streamed).unwrap(),
            None
        );
        for body in [declared, streamed] {
            assert!(body.len() < 64 << 10, "bomb body is {} bytes", body.len());
            let payload = framed_body(body, Dtype::F32, 1);
            assert!((payload.len() as u64) < limits.max_payload_bytes);
            let err = decode(&payload, &limits).unwrap_err();
            assert!(
                matches!(err, WireError::DecompressedTooLarge { limit } if limit == 1 << 20),
                "{err}"
            );
        }
    }

    #[test]
    fn decompression_stops_reading_at_the_limit() {
        // The bomb test above only sees the error; this pins down that the
        // stream is abandoned at the limit instead of inflated in full.
        struct Counting<R>(R, std::rc::Rc<std::cell::Cell<u64>>);
        impl<R: Read> Read for Counting<R> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = self.0.read(buf)?;
                self.1.set(self.1.get() + n as u64);
                Ok(n)
            }
        }
        let pulled = std::rc::Rc::new(std::cell::Cell::new(0));
        let source = Counting(std::io::repeat(0).take(256 << 20), pulled.clone());
        let err = read_capped(source, 1 << 20, 0).unwrap_err();
        assert!(
            matches!(err, WireError::DecompressedTooLarge { .. }),
            "{err}"
        );
        assert_eq!(pulled.get(), (1 << 20) + 1);

        let exact = read_capped(&[7u8; 100][..], 100, 0).unwrap();
        assert_eq!(exact.len(), 100);
    }

    #[test]
    fn rejects_a_payload_over_the_size_limit() {
        let payload = encode(meta(), &random_map(10, 1.0), Dtype::F32, 3).unwrap();
        let limits = DecodeLimits {
            max_payload_bytes: payload.len() as u64 - 1,
            ..DecodeLimits::default()
        };
        assert!(matches!(
            decode(&payload, &limits),
            Err(WireError::PayloadTooLarge { .. })
        ));
    }

    #[test]
    fn limits_for_schema_fit_an_honest_payload_only() {
        let map = random_map(11, 1.0);
        let limits = DecodeLimits::for_schema(&map.schema());
        // Level 1 on random data: barely compressible, so the body is close
        // to its worst case.
        let payload = encode(meta(), &map, Dtype::F32, 1).unwrap();
        decode(&payload, &limits).unwrap();
        let mut bigger = map.clone();
        bigger
            .insert("extra", vec![64, 64], vec![0.25; 4096])
            .unwrap();
        let payload = encode(meta(), &bigger, Dtype::F32, 1).unwrap();
        assert!(matches!(
            decode(&payload, &limits),
            Err(WireError::DecompressedTooLarge { .. })
        ));
    }

    #[test]
    fn rejects_body_that_disagrees_with_the_header() {
        let map = random_map(12, 1.0);
        let st = map.to_safetensors(Dtype::F16).unwrap();
        let body = zstd::bulk::compress(&st, 3).unwrap();
        let err = decode(
            &framed_body(body.clone(), Dtype::F32, map.len()),
            &DecodeLimits::default(),
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                WireError::DtypeMismatch {
                    found: Dtype::F16,
                    expected: Dtype::F32,
                    ..
                }
            ),
            "{err}"
        );
        let err = decode(
            &framed_body(body, Dtype::F16, map.len() + 1),
            &DecodeLimits::default(),
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                WireError::TensorCount {
                    expected: 5,
                    actual: 4
                }
            ),
            "{err}"
        );

        let not_zstd = framed_body(st, Dtype::F16, map.len());
        assert!(matches!(
            decode(&not_zstd, &DecodeLimits::default()),
            Err(WireError::Decompress(_))
        ));
        let not_safetensors =
            framed_body(zstd::bulk::compress(b"hello", 3).unwrap(), Dtype::F32, 0);
        assert!(matches!(
            decode(&not_safetensors, &DecodeLimits::default()),
            Err(WireError::SafeTensors(_))
        ));
    }

    #[test]
    fn from_safetensors_rejects_other_dtypes() {
        let bytes: Vec<u8> = [1i32, 2].iter().flat_map(|x| x.to_le_bytes()).collect();
        let view =
            safetensors::tensor::TensorView::new(safetensors::Dtype::I32, vec![2], &bytes).unwrap();
        let st = safetensors::serialize([("step", view)], None).unwrap();
        let err = TensorMap::from_safetensors(&st).unwrap_err();
        assert!(
            matches!(err, WireError::UnsupportedDtype { ref name, .. } if name == "step"),
            "{err}"
        );
    }

    #[test]
    fn schema_check_names_the_first_problem() {
        let map = random_map(13, 1.0);
        let schema = map.schema();
        schema.check(&map).unwrap();

        let mut missing = map.clone();
        missing.remove("encoder.norm.weight");
        let err = schema.check(&missing).unwrap_err();
        assert_eq!(err.to_string(), "tensor `encoder.norm.weight` is missing");

        let mut extra = map.clone();
        extra
            .insert("decoder.weight", vec![2], vec![0.0; 2])
            .unwrap();
        let err = schema.check(&extra).unwrap_err();
        assert_eq!(err.to_string(), "unexpected tensor `decoder.weight`");

        let mut reshaped = map.clone();
        reshaped
            .insert(
                "encoder.blocks.0.attn.qkv.weight",
                vec![4, 12],
                vec![0.0; 48],
            )
            .unwrap();
        let err = schema.check(&reshaped).unwrap_err();
        assert_eq!(
            err.to_string(),
            "tensor `encoder.blocks.0.attn.qkv.weight` has shape [4, 12], expected [12, 4]"
        );

        // The same checks guard arithmetic between maps.
        assert!(matches!(
            map.sub(&missing),
            Err(WireError::MissingTensor { .. })
        ));
        assert!(matches!(
            map.sub(&extra),
            Err(WireError::UnexpectedTensor { .. })
        ));
        let mut m = map.clone();
        assert!(matches!(
            m.add_scaled(&reshaped, 1.0),
            Err(WireError::ShapeMismatch { .. })
        ));
        assert_eq!(m, map, "a failed add_scaled must not change anything");
    }

    #[test]
    fn insert_enforces_shape_and_name() {
        let mut map = TensorMap::new();
        let err = map.insert("x", vec![3, 4], vec![0.0; 11]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "tensor `x` has shape [3, 4] (12 values) but 11 values were given"
        );
        assert!(matches!(
            map.insert("__metadata__", vec![1], vec![0.0]),
            Err(WireError::InvalidName { .. })
        ));
        assert!(matches!(
            map.insert("", vec![1], vec![0.0]),
            Err(WireError::InvalidName { .. })
        ));
        assert!(matches!(
            map.insert("huge", vec![usize::MAX, 2], vec![]),
            Err(WireError::ShapeOverflow { .. })
        ));
        assert!(map.is_empty());
        let bad_schema: Result<Schema, _> =
            serde_json::from_str(&format!("{{\"huge\": [{}, 2]}}", usize::MAX));
        assert!(bad_schema.is_err());
        let schema: Schema = serde_json::from_str("{\"a\": [2, 3], \"b\": []}").unwrap();
        assert_eq!(schema.num_values(), 7);
        assert_eq!(
            serde_json::to_string(&schema).unwrap(),
            "{\"a\":[2,3],\"b\":[]}"
        );
    }

    #[test]
    fn tensor_arithmetic() {
        let mut a = TensorMap::new();
        a.insert("x", vec![2], vec![3.0, 4.0]).unwrap();
        a.insert("y", vec![], vec![12.0]).unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a.num_values(), 3);
        assert_eq!(a.names().collect::<Vec<_>>(), ["x", "y"]);
        assert_eq!(a.l2_norm(), 13.0);
        let mut b = TensorMap::zeros(&a.schema());
        b.add_scaled(&a, 0.5).unwrap();
        assert_eq!(b.get("x").unwrap().data(), [1.5, 2.0]);
        let d = a.sub(&b).unwrap();
        assert_eq!(d.get("x").unwrap().data(), [1.5, 2.0]);
        assert_eq!(d.get("y").unwrap().data(), [6.0]);
        assert!(d.all_finite());
        b.get_mut("y").unwrap().data_mut()[0] = f32::NAN;
        assert_eq!(b.first_non_finite(), Some("y"));
        assert!(!b.all_finite());
    }

    #[test]
    fn digest_is_sha256_hex_of_the_whole_payload() {
        assert_eq!(digest(b"abc"), HASH_A);
        let payload = encode(meta(), &random_map(14, 1.0), Dtype::F32, 3).unwrap();
        let again = encode(meta(), &random_map(14, 1.0), Dtype::F32, 3).unwrap();
        assert_eq!(
            digest(&payload),
            digest(&again),
            "encoding must be deterministic"
        );
        let mut other = meta();
        other.round += 1;
        let moved = encode(other, &random_map(14, 1.0), Dtype::F32, 3).unwrap();
        assert_ne!(digest(&payload), digest(&moved));
    }

    #[test]
    fn enums_serialise_lowercase() {
        assert_eq!(serde_json::to_string(&Dtype::Bf16).unwrap(), "\"bf16\"");
        assert_eq!(
            serde_json::to_string(&PayloadKind::Update).unwrap(),
            "\"update\""
        );
        assert_eq!(
            serde_json::to_string(&PayloadKind::Model).unwrap(),
            "\"model\""
        );
        assert_eq!("F16".parse::<Dtype>().unwrap(), Dtype::F16);
        assert_eq!("bf16".parse::<Dtype>().unwrap(), Dtype::Bf16);
        assert_eq!(Dtype::F32.to_string(), "f32");
        assert!(matches!(
            "f64".parse::<Dtype>(),
            Err(WireError::UnknownDtype(_))
        ));
        assert!(serde_json::from_str::<Dtype>("\"F32\"").is_err());
    }
}
