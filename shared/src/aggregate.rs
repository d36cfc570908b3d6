//! Server-side aggregation: turning the sites' updates (deltas
//! Δ = w_local − w_global, see [`crate::wire`]) into the next global model.
//!
//! - [`FedAvg`]: the sample-weighted mean, streamed. Each update is folded
//!   into f64 running sums as it arrives and can be dropped at once, so memory
//!   is O(model) however many sites report, and the result does not depend on
//!   arrival order beyond f64 rounding.
//! - [`clip_norm`]: bounds one update's influence before it is averaged.
//! - [`coordinate_median`] and [`trimmed_mean`]: robust to a minority of
//!   hostile or broken sites, at the price of holding every delta at once.
//! - [`ServerState`]: applies the aggregated delta to the global model, either
//!   plainly (SGD, lr 1 = FedAvg) or with FedAdam, and owns the optimiser's
//!   moments so the aggregator can persist them between rounds.
//!
//! Every entry point re-checks schema and finiteness even though
//! [`crate::wire::decode`] already did: a single NaN accepted here would
//! poison the global model for every site.

use serde::{Deserialize, Serialize};

use crate::protocol::Aggregation;
use crate::wire::{Schema, TensorMap, WireError};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AggregateError {
    #[error("update rejected: {0}")]
    Wire(#[from] WireError),
    #[error("update weight {0} is not a finite number greater than zero")]
    InvalidWeight(f64),
    #[error("nothing to aggregate: no updates were given")]
    Empty,
    #[error(
        "trimmed mean drops {trim} updates from each end, which needs more than {} updates; got {count}",
        2 * trim
    )]
    TooFewForTrim { trim: usize, count: usize },
    #[error("invalid server optimiser setting: {0}")]
    InvalidOptimizer(String),
    #[error("server optimiser state does not fit the model: {0}")]
    StateMismatch(WireError),
}

/// Streaming weighted mean of deltas.
#[derive(Debug, Clone)]
pub struct FedAvg {
    schema: Schema,
    /// f64 sums of weight·delta, one buffer per tensor in name order (the
    /// same order as [`TensorMap::iter`], which lets `add` walk both in
    /// lock-step). f64 keeps a sum over many sites exact enough that the
    /// order of arrival does not matter.
    sums: Vec<Vec<f64>>,
    count: usize,
    total_weight: f64,
}

impl FedAvg {
    pub fn new(schema: Schema) -> Self {
        let sums = schema
            .iter()
            // Cannot overflow: `Schema` validates element counts.
            .map(|(_, shape)| vec![0.0; shape.iter().product()])
            .collect();
        FedAvg {
            schema,
            sums,
            count: 0,
            total_weight: 0.0,
        }
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Folds in one delta with `weight` (normally its sample count). The
    /// delta is checked completely before anything is accumulated, so a
    /// rejected update leaves the running mean untouched.
    pub fn add(&mut self, delta: &TensorMap, weight: f64) -> Result<(), AggregateError> {
        if !(weight.is_finite() && weight > 0.0) {
            return Err(AggregateError::InvalidWeight(weight));
        }
        self.schema.check(delta)?;
        delta.check_finite()?;
        for (sum, (_, t)) in self.sums.iter_mut().zip(delta.iter()) {
            for (s, &x) in sum.iter_mut().zip(t.data()) {
                *s += weight * f64::from(x);
            }
        }
        self.count += 1;
        self.total_weight += weight;
        Ok(())
    }

    /// Number of deltas added.
    pub fn count(&self) -> usize {
        self.count
    }

    pub fn total_weight(&self) -> f64 {
        self.total_weight
    }

    /// The weighted mean Σ wᵢΔᵢ / Σ wᵢ.
    pub fn finish(self) -> Result<TensorMap, AggregateError> {
        if self.count == 0 {
            return Err(AggregateError::Empty);
        }
        let mut out = TensorMap::new();
        for ((name, shape), sum) in self.schema.iter().zip(self.sums) {
            let data = sum
                .into_iter()
                .map(|s| (s / self.total_weight) as f32)
                .collect();
            out.insert(name, shape.to_vec(), data)?;
        }
        Ok(out)
    }
}

/// Largest sample count an update may report: above any real cohort's
/// slices × local epochs, and below where the aggregator's i64 storage and
/// f64 weights lose exactness.
pub const MAX_SAMPLES: u64 = 1 << 40;

/// How many times the round's median weight one site may count for.
pub const MAX_WEIGHT_OVER_MEDIAN: f64 = 2.0;

/// FedAvg weights from self-reported sample counts, each capped at
/// [`MAX_WEIGHT_OVER_MEDIAN`] × the lower median count of the round.
///
/// Why this bound (security review M6): the counts are only the sites' word,
/// and unbounded they let one site claiming 1e9 samples set the average
/// alone. A cap declared at enrolment would need the operator to know each
/// cohort in advance, in the unit of each phase (slices when pretraining,
/// exams when fine-tuning), and to keep it current; a cap on each site's
/// share of the total is lax in a large consortium (a liar keeps the whole
/// share). The median needs nothing declared and adapts to the round: with
/// one liar among n sites of similar size its share is at most
/// 2 / (n + 1) (a half with three sites, a fifth with nine), and honest
/// sites up to twice the median keep their exact weight. The lower median
/// of two sites is the smaller one, so neither can claim more than twice
/// the other. What it costs: a genuinely large site counts at most twice a
/// typical one. Robust modes (`median`, `trimmed-mean`) stay unweighted.
pub fn bounded_weights(samples: &[u64]) -> Vec<f64> {
    let mut sorted: Vec<u64> = samples.to_vec();
    sorted.sort_unstable();
    let Some(&median) = sorted.get(sorted.len().saturating_sub(1) / 2) else {
        return Vec::new();
    };
    let cap = median as f64 * MAX_WEIGHT_OVER_MEDIAN;
    samples.iter().map(|&n| (n as f64).min(cap)).collect()
}

/// Scales `delta` in place so its global L2 norm is at most `max_norm`, and
/// returns whether it did. Bounding each site's update caps how far one site,
/// broken or hostile, can move the average, and is the first step of
/// client-level differential privacy. A negative `max_norm` is treated as 0;
/// a NaN `max_norm` clips nothing.
pub fn clip_norm(delta: &mut TensorMap, max_norm: f64) -> bool {
    if max_norm.is_nan() {
        return false;
    }
    let max_norm = max_norm.max(0.0);
    let norm = delta.l2_norm();
    // A NaN norm means a non-finite delta, which validation rejects anyway;
    // scaling it would only spread the NaN.
    if norm.is_nan() || norm <= max_norm {
        return false;
    }
    delta.scale((max_norm / norm) as f32);
    true
}

/// Checks that every delta shares the first one's schema and is finite.
fn check_all(deltas: &[TensorMap]) -> Result<&TensorMap, AggregateError> {
    let first = deltas.first().ok_or(AggregateError::Empty)?;
    for d in deltas {
        first.check_same_schema(d)?;
        d.check_finite()?;
    }
    Ok(first)
}

/// Applies `reduce` to the sorted values of each coordinate across `deltas`.
fn per_coordinate(
    deltas: &[TensorMap],
    reduce: impl Fn(&[f32]) -> f64,
) -> Result<TensorMap, AggregateError> {
    let first = check_all(deltas)?;
    let mut out = TensorMap::new();
    let mut column: Vec<f32> = Vec::with_capacity(deltas.len());
    for (name, t0) in first.iter() {
        let slices = deltas
            .iter()
            .map(|d| {
                d.get(name).map(|t| t.data()).ok_or_else(|| {
                    AggregateError::Wire(WireError::MissingTensor {
                        name: name.to_owned(),
                    })
                })
            })
            .collect::<Result<Vec<&[f32]>, _>>()?;
        let mut data = Vec::with_capacity(t0.len());
        for i in 0..t0.len() {
            column.clear();
            column.extend(slices.iter().map(|s| s[i]));
            column.sort_unstable_by(f32::total_cmp);
            data.push(reduce(&column) as f32);
        }
        out.insert(name, t0.shape().to_vec(), data)?;
    }
    Ok(out)
}

/// One round's site deltas combined by the job's `aggregation` rule, each
/// first clipped to `clip` when the job sets one. The single place that
/// dispatches on the rule, for the aggregator and the in-process simulation
/// alike. FedAvg streams (one delta in memory at a time, weighted by its
/// sample count); the robust rules need every delta at once and ignore
/// the weights.
pub fn combine<E: From<AggregateError>>(
    aggregation: Aggregation,
    schema: Schema,
    clip: Option<f64>,
    updates: impl IntoIterator<Item = Result<(TensorMap, f64), E>>,
) -> Result<TensorMap, E> {
    let clipped = updates.into_iter().map(|update| {
        update.map(|(mut delta, weight)| {
            if let Some(max) = clip {
                clip_norm(&mut delta, max);
            }
            (delta, weight)
        })
    });
    match aggregation {
        Aggregation::Fedavg => {
            let mut fedavg = FedAvg::new(schema);
            for update in clipped {
                let (delta, weight) = update?;
                fedavg.add(&delta, weight)?;
            }
            Ok(fedavg.finish()?)
        }
        Aggregation::Median | Aggregation::TrimmedMean { .. } => {
            let deltas = clipped
                .map(|u| u.map(|(delta, _)| delta))
                .collect::<Result<Vec<_>, E>>()?;
            for delta in &deltas {
                schema.check(delta).map_err(AggregateError::from)?;
            }
            Ok(match aggregation {
                Aggregation::TrimmedMean { trim } => trimmed_mean(&deltas, trim)?,
                _ => coordinate_median(&deltas)?,
            })
        }
    }
}

/// Coordinate-wise median of `deltas` (mean of the two middle values for an
/// even count). Unweighted: sample counts are self-reported, and a robust rule
/// that let one site buy influence by claiming more samples would not be
/// robust. Tolerates fewer than half of the deltas being arbitrary.
///
/// Not streaming: it needs every delta in memory at once
/// (O(sites × model)), unlike [`FedAvg`].
pub fn coordinate_median(deltas: &[TensorMap]) -> Result<TensorMap, AggregateError> {
    per_coordinate(deltas, |sorted| {
        let n = sorted.len();
        if n % 2 == 1 {
            f64::from(sorted[n / 2])
        } else {
            (f64::from(sorted[n / 2 - 1]) + f64::from(sorted[n / 2])) / 2.0
        }
    })
}

/// Coordinate-wise trimmed mean: per coordinate, drops the `trim` largest and
/// `trim` smallest values and averages the rest. Unweighted, like
/// [`coordinate_median`]; tolerates up to `trim` arbitrary deltas. Needs more
/// than `2·trim` deltas.
///
/// Not streaming: it needs every delta in memory at once
/// (O(sites × model)), unlike [`FedAvg`].
pub fn trimmed_mean(deltas: &[TensorMap], trim: usize) -> Result<TensorMap, AggregateError> {
    let count = deltas.len();
    if count == 0 {
        return Err(AggregateError::Empty);
    }
    if count <= trim.saturating_mul(2) {
        return Err(AggregateError::TooFewForTrim { trim, count });
    }
    per_coordinate(deltas, |sorted| {
        let kept = &sorted[trim..sorted.len() - trim];
        kept.iter().map(|&x| f64::from(x)).sum::<f64>() / kept.len() as f64
    })
}

/// How the aggregated delta moves the global model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ServerOptimizer {
    /// `w += lr·Δ`; lr 1.0 is plain FedAvg.
    Sgd { lr: f32 },
    /// FedAdam (Reddi et al. 2021, "Adaptive Federated Optimization"):
    /// `m = β1·m + (1−β1)·Δ`, `v = β2·v + (1−β2)·Δ²`,
    /// `w += lr·m / (√v + eps)`. No bias correction, as in the paper; `eps`
    /// (the paper's τ) bounds the step where v is small.
    Adam {
        lr: f32,
        beta1: f32,
        beta2: f32,
        eps: f32,
    },
}

impl ServerOptimizer {
    /// Plain FedAvg.
    pub const FEDAVG: ServerOptimizer = ServerOptimizer::Sgd { lr: 1.0 };

    /// FedAdam with the paper's defaults (β1 0.9, β2 0.99, τ 1e-3).
    pub fn fedadam(lr: f32) -> Self {
        ServerOptimizer::Adam {
            lr,
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-3,
        }
    }

    /// The optimiser an operator names (`sgd` or `adam`, FedAdam with the
    /// paper's moments) at learning rate `lr`.
    pub fn named(name: &str, lr: f32) -> Result<Self, AggregateError> {
        match name {
            "sgd" => Ok(ServerOptimizer::Sgd { lr }),
            "adam" => Ok(ServerOptimizer::fedadam(lr)),
            other => Err(AggregateError::InvalidOptimizer(format!(
                "unknown server optimiser `{other}` (sgd or adam)"
            ))),
        }
    }

    pub fn validate(&self) -> Result<(), AggregateError> {
        let bad = |msg: String| Err(AggregateError::InvalidOptimizer(msg));
        let lr = match *self {
            ServerOptimizer::Sgd { lr } => lr,
            ServerOptimizer::Adam {
                lr,
                beta1,
                beta2,
                eps,
            } => {
                for (name, b) in [("beta1", beta1), ("beta2", beta2)] {
                    if !(0.0..1.0).contains(&b) {
                        return bad(format!("{name} is {b}; it must be in [0, 1)"));
                    }
                }
                if !(eps.is_finite() && eps > 0.0) {
                    return bad(format!("eps is {eps}; it must be finite and > 0"));
                }
                lr
            }
        };
        if !(lr.is_finite() && lr > 0.0) {
            return bad(format!("lr is {lr}; it must be finite and > 0"));
        }
        Ok(())
    }
}

impl Default for ServerOptimizer {
    fn default() -> Self {
        Self::FEDAVG
    }
}

/// Adam's first and second moments, one value per model value.
#[derive(Debug, Clone, PartialEq)]
struct Moments {
    m: TensorMap,
    v: TensorMap,
}

/// The server optimiser and its state across rounds.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerState {
    optimizer: ServerOptimizer,
    /// `Some` exactly when the optimiser is Adam.
    moments: Option<Moments>,
}

impl ServerState {
    /// Fresh state for a model of `schema`; Adam's moments start at zero.
    pub fn new(optimizer: ServerOptimizer, schema: &Schema) -> Result<Self, AggregateError> {
        optimizer.validate()?;
        let moments = match optimizer {
            ServerOptimizer::Sgd { .. } => None,
            ServerOptimizer::Adam { .. } => Some(Moments {
                m: TensorMap::zeros(schema),
                v: TensorMap::zeros(schema),
            }),
        };
        Ok(ServerState { optimizer, moments })
    }

    /// Restores Adam state persisted from [`ServerState::moments`] (for
    /// example via `to_safetensors(Dtype::F32)` / `from_safetensors`). `m`
    /// and `v` must both match `schema`, be finite, and `v` must be ≥ 0.
    pub fn with_moments(
        optimizer: ServerOptimizer,
        schema: &Schema,
        m: TensorMap,
        v: TensorMap,
    ) -> Result<Self, AggregateError> {
        optimizer.validate()?;
        if !matches!(optimizer, ServerOptimizer::Adam { .. }) {
            return Err(AggregateError::InvalidOptimizer(
                "only Adam keeps moments; SGD state has none to restore".to_owned(),
            ));
        }
        for map in [&m, &v] {
            schema.check(map).map_err(AggregateError::StateMismatch)?;
            map.check_finite().map_err(AggregateError::StateMismatch)?;
        }
        if let Some((name, _)) = v.iter().find(|(_, t)| t.data().iter().any(|&x| x < 0.0)) {
            return Err(AggregateError::InvalidOptimizer(format!(
                "second moment `{name}` holds a negative value"
            )));
        }
        Ok(ServerState {
            optimizer,
            moments: Some(Moments { m, v }),
        })
    }

    pub fn optimizer(&self) -> &ServerOptimizer {
        &self.optimizer
    }

    /// Adam's `(m, v)` for persistence; `None` for SGD.
    pub fn moments(&self) -> Option<(&TensorMap, &TensorMap)> {
        self.moments.as_ref().map(|s| (&s.m, &s.v))
    }

    /// Moves `global` by the aggregated `delta`. Nothing is changed if the
    /// delta or the global model does not fit the state.
    pub fn apply(
        &mut self,
        global: &mut TensorMap,
        delta: &TensorMap,
    ) -> Result<(), AggregateError> {
        global.check_same_schema(delta)?;
        delta.check_finite()?;
        match (self.optimizer, self.moments.as_mut()) {
            (ServerOptimizer::Sgd { lr }, _) => {
                global.add_scaled(delta, lr)?;
            }
            (
                ServerOptimizer::Adam {
                    lr,
                    beta1,
                    beta2,
                    eps,
                },
                Some(Moments { m, v }),
            ) => {
                m.check_same_schema(delta)
                    .map_err(AggregateError::StateMismatch)?;
                let (lr, b1, b2, eps) = (
                    f64::from(lr),
                    f64::from(beta1),
                    f64::from(beta2),
                    f64::from(eps),
                );
                let tensors = global
                    .iter_mut()
                    .zip(delta.iter())
                    .zip(m.iter_mut())
                    .zip(v.iter_mut());
                for ((((_, w), (_, d)), (_, m)), (_, v)) in tensors {
                    let values = w
                        .data_mut()
                        .iter_mut()
                        .zip(d.data())
                        .zip(m.data_mut())
                        .zip(v.data_mut());
                    for (((w, &d), m), v) in values {
                        let d = f64::from(d);
                        let m_new = b1 * f64::from(*m) + (1.0 - b1) * d;
                        let v_new = b2 * f64::from(*v) + (1.0 - b2) * d * d;
                        *m = m_new as f32;
                        *v = v_new as f32;
                        *w = (f64::from(*w) + lr * m_new / (v_new.sqrt() + eps)) as f32;
                    }
                }
            }
            (ServerOptimizer::Adam { .. }, None) => {
                // Unreachable through the constructors, which always pair
                // Adam with moments; refuse rather than panic.
                return Err(AggregateError::InvalidOptimizer(
                    "Adam state has no moments".to_owned(),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Dtype;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn map_from(shapes: &[Vec<usize>], values: &[Vec<f32>]) -> TensorMap {
        let mut map = TensorMap::new();
        for (i, (shape, data)) in shapes.iter().zip(values).enumerate() {
            map.insert(format!("layer.{i}.weight"), shape.clone(), data.clone())
                .unwrap();
        }
        map
    }

    fn close(got: f32, want: f64) -> bool {
        // 1e-5 relative; the 1e-12 floor only matters for a mean that cancels
        // to (almost) exactly zero, where f64 rounding noise dominates.
        (f64::from(got) - want).abs() <= 1e-5 * want.abs() + 1e-12
    }

    /// Shapes, then `n` deltas (values per tensor, weight), then an arrival order.
    #[allow(clippy::type_complexity)]
    fn fedavg_case()
    -> impl Strategy<Value = (Vec<Vec<usize>>, Vec<(Vec<Vec<f32>>, u64)>, Vec<usize>)> {
        let shapes = prop::collection::vec(prop::collection::vec(1usize..5, 0..3), 1..4);
        (shapes, 1usize..=8).prop_flat_map(|(shapes, n)| {
            let delta: Vec<_> = shapes
                .iter()
                .map(|s| prop::collection::vec(-10.0f32..10.0, s.iter().product::<usize>()))
                .collect();
            let deltas = prop::collection::vec((delta, 1u64..=1000), n);
            let order = Just((0..n).collect::<Vec<usize>>()).prop_shuffle();
            (Just(shapes), deltas, order)
        })
    }

    proptest! {
        #[test]
        fn fedavg_is_the_weighted_mean_in_any_order(
            (shapes, deltas, order) in fedavg_case()
        ) {
            let maps: Vec<TensorMap> = deltas.iter().map(|(v, _)| map_from(&shapes, v)).collect();
            let schema = maps[0].schema();

            let mut in_order = FedAvg::new(schema.clone());
            for (map, (_, w)) in maps.iter().zip(&deltas) {
                in_order.add(map, *w as f64).unwrap();
            }
            let mut shuffled = FedAvg::new(schema);
            for &i in &order {
                shuffled.add(&maps[i], deltas[i].1 as f64).unwrap();
            }
            prop_assert_eq!(in_order.count(), deltas.len());
            let total: u64 = deltas.iter().map(|(_, w)| w).sum();
            prop_assert_eq!(in_order.total_weight(), total as f64);
            let a = in_order.finish().unwrap();
            let b = shuffled.finish().unwrap();

            // Naive mean straight from the generated numbers, not via TensorMap.
            for (t, shape) in shapes.iter().enumerate() {
                let name = format!("layer.{t}.weight");
                let got_a = a.get(&name).unwrap().data();
                let got_b = b.get(&name).unwrap().data();
                prop_assert_eq!(got_a.len(), shape.iter().product::<usize>());
                for j in 0..got_a.len() {
                    let mut num = 0.0f64;
                    let mut den = 0.0f64;
                    for (values, w) in &deltas {
                        num += *w as f64 * f64::from(values[t][j]);
                        den += *w as f64;
                    }
                    let want = num / den;
                    prop_assert!(close(got_a[j], want), "{name}[{j}]: {} vs naive {want}", got_a[j]);
                    prop_assert!(
                        close(got_b[j], f64::from(got_a[j])),
                        "{name}[{j}]: order changed {} to {}", got_a[j], got_b[j]
                    );
                }
            }
        }
    }

    fn two_tensor_map(values: [f32; 5]) -> TensorMap {
        let mut m = TensorMap::new();
        m.insert("a", vec![2], values[..2].to_vec()).unwrap();
        m.insert("b", vec![3], values[2..].to_vec()).unwrap();
        m
    }

    #[test]
    fn fedavg_rejects_bad_updates_without_changing_state() {
        let good = two_tensor_map([1.0, 2.0, 3.0, 4.0, 5.0]);
        let mut agg = FedAvg::new(good.schema());
        agg.add(&good, 2.0).unwrap();

        for w in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                agg.add(&good, w),
                Err(AggregateError::InvalidWeight(_))
            ));
        }
        let mut missing = good.clone();
        missing.remove("b");
        let mut extra = good.clone();
        extra.insert("c", vec![1], vec![100.0]).unwrap();
        let mut reshaped = good.clone();
        reshaped.insert("b", vec![1, 3], vec![100.0; 3]).unwrap();
        let mut nan = good.clone();
        nan.get_mut("b").unwrap().data_mut()[1] = f32::NAN;
        assert!(matches!(
            agg.add(&missing, 1.0),
            Err(AggregateError::Wire(WireError::MissingTensor { .. }))
        ));
        assert!(matches!(
            agg.add(&extra, 1.0),
            Err(AggregateError::Wire(WireError::UnexpectedTensor { .. }))
        ));
        assert!(matches!(
            agg.add(&reshaped, 1.0),
            Err(AggregateError::Wire(WireError::ShapeMismatch { .. }))
        ));
        let err = agg.add(&nan, 1.0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "update rejected: tensor `b` contains a non-finite value (NaN or Inf)"
        );

        assert_eq!(agg.count(), 1);
        assert_eq!(agg.total_weight(), 2.0);
        assert_eq!(agg.finish().unwrap(), good);
        assert!(matches!(
            FedAvg::new(good.schema()).finish(),
            Err(AggregateError::Empty)
        ));
    }

    #[test]
    fn clip_norm_bounds_the_norm_and_keeps_the_direction() {
        let mut m = TensorMap::new();
        m.insert("x", vec![2], vec![3.0, 4.0]).unwrap();
        assert!(!clip_norm(&mut m, 5.0));
        assert_eq!(m.get("x").unwrap().data(), [3.0, 4.0]);
        assert!(!clip_norm(&mut m, f64::NAN));
        assert!(clip_norm(&mut m, 1.0));
        let d = m.get("x").unwrap().data();
        assert!(
            (d[0] - 0.6).abs() < 1e-6 && (d[1] - 0.8).abs() < 1e-6,
            "{d:?}"
        );
        assert!((m.l2_norm() - 1.0).abs() < 1e-6);
        assert!(clip_norm(&mut m, -3.0));
        assert_eq!(m.l2_norm(), 0.0);
    }

    /// 4 honest deltas near 1.0 and one attacker; returns (honest mean,
    /// median, trimmed mean, FedAvg) for every coordinate.
    fn attacked(attack_scale: f32, attacker_weight: f64) -> Vec<(f64, f32, f32, f32)> {
        let mut rng = StdRng::seed_from_u64(42);
        let shapes = [vec![4, 3], vec![5]];
        let honest: Vec<TensorMap> = (0..4)
            .map(|_| {
                let values: Vec<Vec<f32>> = shapes
                    .iter()
                    .map(|s| {
                        (0..s.iter().product::<usize>())
                            .map(|_| 1.0 + rng.random_range(-0.05f32..0.05))
                            .collect()
                    })
                    .collect();
                map_from(&shapes, &values)
            })
            .collect();
        let mut attacker = honest[0].clone();
        attacker.scale(attack_scale);
        let mut all = honest.clone();
        all.insert(2, attacker.clone());

        let median = coordinate_median(&all).unwrap();
        let trimmed = trimmed_mean(&all, 1).unwrap();
        let mut avg = FedAvg::new(attacker.schema());
        for h in &honest {
            avg.add(h, 1.0).unwrap();
        }
        avg.add(&attacker, attacker_weight).unwrap();
        let avg = avg.finish().unwrap();

        let mut out = Vec::new();
        for (name, t) in median.iter() {
            for j in 0..t.len() {
                let honest_mean = honest
                    .iter()
                    .map(|h| f64::from(h.get(name).unwrap().data()[j]))
                    .sum::<f64>()
                    / 4.0;
                out.push((
                    honest_mean,
                    t.data()[j],
                    trimmed.get(name).unwrap().data()[j],
                    avg.get(name).unwrap().data()[j],
                ));
            }
        }
        assert_eq!(out.len(), 17);
        out
    }

    fn assert_robust(attack_scale: f32, attacker_weight: f64) {
        for (honest, median, trimmed, avg) in attacked(attack_scale, attacker_weight) {
            assert!(
                (f64::from(median) - honest).abs() < 0.2,
                "median {median} vs {honest}"
            );
            assert!(
                (f64::from(trimmed) - honest).abs() < 0.2,
                "trimmed {trimmed} vs {honest}"
            );
            assert!(
                (f64::from(avg) - honest).abs() > 5.0,
                "FedAvg {avg} vs {honest}"
            );
        }
    }

    #[test]
    fn median_and_trimmed_mean_resist_a_scaled_update() {
        assert_robust(100.0, 1.0);
    }

    #[test]
    fn median_and_trimmed_mean_resist_a_sign_flipped_update() {
        // ×−10 alone moves an equal-weight mean by only ~2.2, so the attacker
        // also overstates its sample count (weight 10 against 1 each), which
        // the unweighted robust rules ignore.
        assert_robust(-10.0, 10.0);
    }

    #[test]
    fn median_and_trimmed_mean_exact_values() {
        let maps: Vec<TensorMap> = [
            [1.0, 9.0, 0.0, 0.0, 0.0],
            [4.0, 2.0, 0.0, 0.0, 7.0],
            [2.0, 3.0, 0.0, 1.0, 5.0],
            [8.0, 1.0, 0.0, 2.0, 6.0],
        ]
        .into_iter()
        .map(two_tensor_map)
        .collect();
        let median = coordinate_median(&maps).unwrap();
        assert_eq!(median.get("a").unwrap().data(), [3.0, 2.5]);
        assert_eq!(median.get("b").unwrap().data(), [0.0, 0.5, 5.5]);
        let odd = coordinate_median(&maps[..3]).unwrap();
        assert_eq!(odd.get("a").unwrap().data(), [2.0, 3.0]);
        let trimmed = trimmed_mean(&maps, 1).unwrap();
        assert_eq!(trimmed.get("a").unwrap().data(), [3.0, 2.5]);
        let untrimmed = trimmed_mean(&maps, 0).unwrap();
        assert_eq!(untrimmed.get("a").unwrap().data(), [3.75, 3.75]);
        assert_eq!(untrimmed.get("b").unwrap().data(), [0.0, 0.75, 4.5]);

        assert!(matches!(
            trimmed_mean(&maps, 2),
            Err(AggregateError::TooFewForTrim { trim: 2, count: 4 })
        ));
        assert!(matches!(coordinate_median(&[]), Err(AggregateError::Empty)));
        let mut wrong = maps.clone();
        wrong[3].remove("b");
        assert!(matches!(
            coordinate_median(&wrong),
            Err(AggregateError::Wire(_))
        ));
        assert!(matches!(
            trimmed_mean(&wrong, 1),
            Err(AggregateError::Wire(_))
        ));
        let mut nan = maps;
        nan[1].get_mut("a").unwrap().data_mut()[0] = f32::NAN;
        assert!(matches!(
            coordinate_median(&nan),
            Err(AggregateError::Wire(WireError::NonFinite { .. }))
        ));
    }

    #[test]
    fn sgd_with_lr_one_adds_the_delta() {
        let w = two_tensor_map([1.0, -2.0, 0.1, 3.5, 1e-3]);
        let d = two_tensor_map([0.25, 0.7, -0.3, 1e6, 2.0]);
        let mut state = ServerState::new(ServerOptimizer::FEDAVG, &w.schema()).unwrap();
        assert!(state.moments().is_none());
        let mut global = w.clone();
        state.apply(&mut global, &d).unwrap();
        for ((_, g), ((_, a), (_, b))) in global.iter().zip(w.iter().zip(d.iter())) {
            let want: Vec<f32> = a.data().iter().zip(b.data()).map(|(x, y)| x + y).collect();
            assert_eq!(g.data(), want.as_slice());
        }

        let mut half = ServerState::new(ServerOptimizer::Sgd { lr: 0.5 }, &w.schema()).unwrap();
        let mut global = w.clone();
        half.apply(&mut global, &d).unwrap();
        assert_eq!(global.get("a").unwrap().data(), [1.125, -1.65]);

        let mut wrong = d.clone();
        wrong.remove("a");
        let before = global.clone();
        assert!(half.apply(&mut global, &wrong).is_err());
        assert_eq!(global, before);
    }

    #[test]
    fn fedadam_moves_weights_along_the_delta() {
        let w = two_tensor_map([1.0, -2.0, 0.5, 3.0, 0.0]);
        let d = two_tensor_map([0.5, -0.02, 0.0, 3.0, -1e-4]);
        let opt = ServerOptimizer::fedadam(0.01);
        let mut state = ServerState::new(opt, &w.schema()).unwrap();
        let mut global = w.clone();
        state.apply(&mut global, &d).unwrap();

        let (m, v) = state.moments().unwrap();
        for (((name, g), (_, w0)), (_, dt)) in global.iter().zip(w.iter()).zip(d.iter()) {
            for j in 0..g.len() {
                let (g, w0, dj) = (g.data()[j], w0.data()[j], dt.data()[j]);
                let step = f64::from(g) - f64::from(w0);
                // First step from zero moments: m = 0.1Δ, v = 0.01Δ².
                let mj = 0.1 * f64::from(dj);
                let vj = 0.01 * f64::from(dj) * f64::from(dj);
                let want = 0.01 * mj / (vj.sqrt() + 1e-3);
                assert!(
                    (step - want).abs() < 1e-6,
                    "{name}[{j}]: step {step}, want {want}"
                );
                if dj == 0.0 {
                    assert_eq!(g, w0);
                } else {
                    assert_eq!(step.signum(), f64::from(dj).signum(), "{name}[{j}]");
                }
                // Relative: β is f32, so (1 − β) differs from the decimal by ~1e-6.
                let got_m = f64::from(m.get(name).unwrap().data()[j]);
                let got_v = f64::from(v.get(name).unwrap().data()[j]);
                assert!((got_m - mj).abs() <= 1e-5 * mj.abs(), "m {got_m} vs {mj}");
                assert!((got_v - vj).abs() <= 1e-5 * vj, "v {got_v} vs {vj}");
            }
        }
        // Large deltas move ~lr regardless of scale: Adam normalises.
        let big = f64::from(global.get("b").unwrap().data()[1]) - 3.0;
        assert!((big - 0.01).abs() < 1e-4, "{big}");

        // A restored state continues exactly like the uninterrupted one.
        let (m, v) = state.moments().unwrap();
        let m = TensorMap::from_safetensors(&m.to_safetensors(Dtype::F32).unwrap()).unwrap();
        let v = TensorMap::from_safetensors(&v.to_safetensors(Dtype::F32).unwrap()).unwrap();
        let mut restored = ServerState::with_moments(opt, &w.schema(), m, v).unwrap();
        let mut g1 = global.clone();
        let mut g2 = global.clone();
        state.apply(&mut g1, &d).unwrap();
        restored.apply(&mut g2, &d).unwrap();
        assert_eq!(g1, g2);
        assert_eq!(state, restored);
        // And keeps moving the same way.
        let next = f64::from(g1.get("a").unwrap().data()[0])
            - f64::from(global.get("a").unwrap().data()[0]);
        assert!(next > 0.0);
    }

    #[test]
    fn optimiser_settings_are_validated() {
        let schema = two_tensor_map([0.0; 5]).schema();
        for bad in [
            ServerOptimizer::Sgd { lr: 0.0 },
            ServerOptimizer::Sgd { lr: f32::NAN },
            ServerOptimizer::Adam {
                lr: 0.1,
                beta1: 1.0,
                beta2: 0.99,
                eps: 1e-3,
            },
            ServerOptimizer::Adam {
                lr: 0.1,
                beta1: 0.9,
                beta2: -0.1,
                eps: 1e-3,
            },
            ServerOptimizer::Adam {
                lr: 0.1,
                beta1: 0.9,
                beta2: 0.99,
                eps: 0.0,
            },
        ] {
            assert!(
                matches!(
                    ServerState::new(bad, &schema),
                    Err(AggregateError::InvalidOptimizer(_))
                ),
                "{bad:?}"
            );
        }
        let opt: ServerOptimizer = serde_json::from_str(
            r#"{"kind":"adam","lr":0.1,"beta1":0.9,"beta2":0.99,"eps":0.001}"#,
        )
        .unwrap();
        assert_eq!(opt, ServerOptimizer::fedadam(0.1));
        assert_eq!(
            serde_json::to_string(&ServerOptimizer::FEDAVG).unwrap(),
            r#"{"kind":"sgd","lr":1.0}"#
        );

        let zeros = TensorMap::zeros(&schema);
        let mut other = zeros.clone();
        other.remove("a");
        assert!(matches!(
            ServerState::with_moments(ServerOptimizer::fedadam(0.1), &schema, zeros.clone(), other),
            Err(AggregateError::StateMismatch(_))
        ));
        let mut negative = zeros.clone();
        negative.get_mut("b").unwrap().data_mut()[0] = -1.0;
        assert!(
            ServerState::with_moments(
                ServerOptimizer::fedadam(0.1),
                &schema,
                zeros.clone(),
                negative
            )
            .is_err()
        );
        assert!(
            ServerState::with_moments(ServerOptimizer::FEDAVG, &schema, zeros.clone(), zeros)
                .is_err()
        );
    }
}

#[cfg(test)]
mod weight_tests {
    use super::*;

    #[test]
    fn a_site_claiming_a_billion_samples_cannot_dominate_the_average() {
        let weights = bounded_weights(&[10, 10, 1_000_000_000]);
        assert_eq!(weights, vec![10.0, 10.0, 20.0]);
        // FedAvg of two honest Δ = 0.001 and one hostile Δ = 0.05.
        let delta = |v: f32| {
            let mut m = TensorMap::new();
            m.insert("w", vec![1], vec![v]).expect("insert");
            m
        };
        let mut fedavg = FedAvg::new(delta(0.0).schema());
        for (v, w) in [0.001, 0.001, 0.05].into_iter().zip(&weights) {
            fedavg.add(&delta(v), *w).expect("add");
        }
        let mean = fedavg.finish().expect("mean").get("w").expect("w").data()[0];
        let hostile_share = weights[2] / weights.iter().sum::<f64>();
        assert!(hostile_share <= 0.5, "{hostile_share}");
        // Unbounded, the hostile site would set the mean to 0.05 (its share
        // 1 - 2e-8); bounded, it moves it at most half way.
        assert!(mean < 0.026, "{mean}");
    }

    #[test]
    fn honest_sites_within_twice_the_median_keep_their_weights() {
        assert_eq!(bounded_weights(&[100, 150, 200]), vec![100.0, 150.0, 200.0]);
        assert_eq!(bounded_weights(&[7]), vec![7.0]);
        assert!(bounded_weights(&[]).is_empty());
        // Two sites: the larger counts at most twice the smaller.
        assert_eq!(bounded_weights(&[1_000_000, 10]), vec![20.0, 10.0]);
    }
}
