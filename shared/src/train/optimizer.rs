//! AdamW as GMML uses it: per-parameter gradient-norm clipping, decoupled
//! weight decay on weight matrices only (biases, norms: rank-1 tensors are not
//! decayed), and a weight decay that changes every step.
//!
//! burn's AdamW takes a fixed decay, so the Adam update runs with decay 0 and the
//! decay `w ← w·(1 − lr·wd)` is applied right after it by a module mapper.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::grad_clipping::GradientClippingConfig;
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Bytes, Tensor};

pub struct Optimizer {
    inner: ModuleOptimizer,
}

impl Optimizer {
    pub fn adamw(clip_grad_norm: f32) -> Self {
        let mut config = AdamWConfig::new().with_weight_decay(0.0).with_epsilon(1e-8);
        if clip_grad_norm > 0.0 {
            config = config.with_grad_clipping(Some(GradientClippingConfig::Norm(clip_grad_norm)));
        }
        Self {
            inner: config.init(),
        }
    }

    /// The AdamW moments and step counts, as burnpack bytes keyed by `ParamId`.
    pub fn state_bytes(&self) -> Result<Vec<u8>, String> {
        self.inner
            .into_bytes()
            .map(|bytes| bytes.to_vec())
            .map_err(|e| format!("serialising the optimiser state: {e}"))
    }

    /// Restores what [`Optimizer::state_bytes`] saved. The model being
    /// trained must carry the same `ParamId`s as when it was saved.
    pub fn load_state_bytes(self, bytes: &[u8]) -> Result<Self, String> {
        let inner = self
            .inner
            .from_bytes(Bytes::from_bytes_vec(bytes.to_vec()))
            .map_err(|e| format!("loading the optimiser state: {e}"))?;
        Ok(Self { inner })
    }

    /// Back-propagates `loss` and updates `model`.
    pub fn step<M: Module>(&mut self, model: M, loss: Tensor<1>, lr: f64, weight_decay: f64) -> M {
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let model = self.inner.step(lr, model, grads);
        let factor = (1.0 - lr * weight_decay) as f32;
        if factor == 1.0 {
            return model;
        }
        model.map(&mut DecayWeights { factor })
    }
}

struct DecayWeights {
    factor: f32,
}

impl ModuleMapper for DecayWeights {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if D < 2 {
            return param;
        }
        let factor = self.factor;
        // Scale the plain tensor and re-wrap it as a fresh leaf, as burn's own
        // optimiser does; scaling the tracked tensor would make it a graph node.
        param.map(|t| Tensor::from_inner(t.inner().mul_scalar(factor)).require_grad())
    }
}

/// FedProx's proximal term μ/2·‖w − w_global‖², applied as a decoupled step
/// after each optimiser update, `w ← w − lr·μ·(w − w_global)`, so local
/// training on non-IID data cannot drift arbitrarily far from the global model
/// (Li et al., 2020). The anchor is the model as it was when training started.
///
/// Anchors are matched to parameters by their place in the module's traversal
/// order, not by `ParamId`: a resumed run loads its parameters (and their ids)
/// from a checkpoint, while the anchor comes from the global model.
pub struct ProximalAnchor {
    anchors: Vec<Tensor<1>>,
}

impl ProximalAnchor {
    pub fn capture<M: Module>(model: &M) -> Self {
        let mut collect = CollectAnchors {
            anchors: Vec::new(),
        };
        model.visit(&mut collect);
        Self {
            anchors: collect.anchors,
        }
    }

    /// Pulls every parameter towards its anchor by `rate` (= lr·μ).
    pub fn pull<M: Module>(&self, model: M, rate: f64) -> M {
        if rate <= 0.0 {
            return model;
        }
        model.map(&mut PullTowards {
            anchors: &self.anchors,
            next: 0,
            rate: rate.min(1.0) as f32,
        })
    }
}

struct CollectAnchors {
    anchors: Vec<Tensor<1>>,
}

impl ModuleVisitor for CollectAnchors {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let value = param.val();
        let n = value.shape().num_elements();
        self.anchors
            .push(Tensor::from_inner(value.inner().reshape([n])));
    }
}

struct PullTowards<'a> {
    anchors: &'a [Tensor<1>],
    next: usize,
    rate: f32,
}

impl ModuleMapper for PullTowards<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(anchor) = self.anchors.get(self.next) else {
            return param;
        };
        self.next += 1;
        let rate = self.rate;
        let anchor = anchor.clone();
        param.map(|t| {
            let w = t.inner();
            let a = anchor.reshape(w.shape());
            Tensor::from_inner(w.clone() - (w - a) * rate).require_grad()
        })
    }
}
