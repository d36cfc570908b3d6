//! AdamW as GMML uses it: per-parameter gradient-norm clipping, decoupled
//! weight decay on weight matrices only (biases, norms: rank-1 tensors are not
//! decayed), and a weight decay that changes every step.
//!
//! burn's AdamW takes a fixed decay, so the Adam update runs with decay 0 and the
//! decay `w ← w·(1 − lr·wd)` is applied right after it by a module mapper.

use burn::module::{Module, ModuleMapper, Param};
use burn::optim::grad_clipping::GradientClippingConfig;
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::Tensor;

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
