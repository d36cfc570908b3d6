//! The DP-FedAvg round mean (McMahan et al. 2018, fixed-denominator estimator
//! with uniform weights): Σ clip_C(Δᵢ) / m + N(0, (zC/m)²) per coordinate.
//!
//! Uniform weights and the fixed denominator m are what make the L2
//! sensitivity C/m whatever the sites report: a sample-count weight or a
//! denominator equal to the number of updates received would both depend on
//! the private data. A round closed with fewer than m updates still divides
//! by m, and still counts as a full release.

use rand::Rng;

use super::PrivacyError;
use super::noise::GridNoise;
use crate::wire::{Schema, TensorMap};

#[derive(Debug, Clone)]
pub struct DpMean {
    schema: Schema,
    clip: f64,
    sums: Vec<Vec<f64>>,
    count: usize,
    clipped: usize,
}

/// What the DP mean did, for the round's audit line and the metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpRound {
    pub updates: usize,
    /// Updates the aggregator had to clip (their site did not, or clipped to a larger C).
    pub clipped_here: usize,
    pub noise_sd: f64,
}

impl DpMean {
    pub fn new(schema: Schema, clip: f64) -> Self {
        let sums = schema
            .iter()
            .map(|(_, shape)| vec![0.0; shape.iter().product()])
            .collect();
        DpMean {
            schema,
            clip,
            sums,
            count: 0,
            clipped: 0,
        }
    }

    /// Folds in one site's update, clipped in f64 to norm C here whatever the
    /// site did: the sensitivity must not rest on the sites' honesty.
    pub fn add(&mut self, delta: &TensorMap) -> Result<(), PrivacyError> {
        self.schema.check(delta)?;
        delta.check_finite()?;
        let norm = delta.l2_norm();
        let factor = if norm > self.clip {
            self.clipped += 1;
            self.clip / norm
        } else {
            1.0
        };
        for (sum, (_, t)) in self.sums.iter_mut().zip(delta.iter()) {
            for (s, &x) in sum.iter_mut().zip(t.data()) {
                *s += factor * f64::from(x);
            }
        }
        self.count += 1;
        Ok(())
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// Σ clip(Δᵢ)/m plus Gaussian noise with multiplier `z`, cast to f32 last
    /// (post-processing).
    pub fn finish<R: Rng + ?Sized>(
        self,
        m: u32,
        z: f64,
        rng: &mut R,
    ) -> Result<(TensorMap, DpRound), PrivacyError> {
        if m == 0 {
            return Err(PrivacyError::Config(
                "the fixed denominator m must be at least 1".into(),
            ));
        }
        let m = f64::from(m);
        let noise = GridNoise::new(z, self.clip / m, self.schema.num_values())?;
        let mut out = TensorMap::new();
        for ((name, shape), sum) in self.schema.iter().zip(self.sums) {
            let data = sum
                .into_iter()
                .map(|s| noise.noised(s / m, rng) as f32)
                .collect();
            out.insert(name, shape.to_vec(), data)?;
        }
        Ok((
            out,
            DpRound {
                updates: self.count,
                clipped_here: self.clipped,
                noise_sd: noise.sd,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::privacy::noise::{seeded_rng, tests::sd_check};

    fn zeros(d: usize) -> TensorMap {
        let mut m = TensorMap::new();
        m.insert("w", vec![d], vec![0.0; d]).unwrap();
        m
    }

    #[test]
    fn noise_on_zero_updates_has_the_configured_sd() {
        // Review §5.6 item 7: three zero updates, C = 1, z = 2, m = 3.
        let d = 200_000;
        let mut mean = DpMean::new(zeros(d).schema(), 1.0);
        for _ in 0..3 {
            mean.add(&zeros(d)).unwrap();
        }
        let (out, round) = mean.finish(3, 2.0, &mut seeded_rng(11)).unwrap();
        let nominal = 2.0 * 1.0 / 3.0;
        assert!(round.noise_sd >= nominal && round.noise_sd < nominal * 1.001);
        let xs: Vec<f64> = out
            .get("w")
            .unwrap()
            .data()
            .iter()
            .map(|&x| f64::from(x))
            .collect();
        sd_check(&xs, round.noise_sd).unwrap();
        // A sampler at half (or double) the noise would fail the same check.
        assert!(sd_check(&xs, round.noise_sd * 1.03).is_err());
        assert!(sd_check(&xs, round.noise_sd / 1.03).is_err());
        // Two rounds never draw the same noise (the production generator is OS-seeded).
        let mut again = DpMean::new(zeros(8).schema(), 1.0);
        again.add(&zeros(8)).unwrap();
        let mut first = DpMean::new(zeros(8).schema(), 1.0);
        first.add(&zeros(8)).unwrap();
        let a = first.finish(3, 2.0, &mut crate::privacy::noise::os_rng().unwrap());
        let b = again.finish(3, 2.0, &mut crate::privacy::noise::os_rng().unwrap());
        assert_ne!(a.unwrap().0, b.unwrap().0);
    }

    #[test]
    fn one_huge_update_moves_the_aggregate_by_at_most_c_over_m_plus_noise() {
        let (d, m, c, z) = (50_000, 4u32, 0.5, 1.0);
        let mut huge = zeros(d);
        huge.get_mut("w").unwrap().data_mut()[0] = 1e6; // norm 1e6
        let run = |with_huge: bool, seed| {
            let mut mean = DpMean::new(zeros(d).schema(), c);
            for _ in 0..3 {
                mean.add(&zeros(d)).unwrap();
            }
            if with_huge {
                mean.add(&huge).unwrap();
            }
            mean.finish(m, z, &mut seeded_rng(seed)).unwrap()
        };
        let (with, round) = run(true, 5);
        assert_eq!(round.clipped_here, 1);
        let (without, _) = run(false, 5);
        // Same seed, same noise draws: the difference is the clipped update's
        // share, C/m, up to grid snapping (≤ one grid step per coordinate).
        let diff = with.sub(&without).unwrap();
        let grid_slack = round.noise_sd / 2f64.powi(20) * (d as f64).sqrt();
        assert!(
            diff.l2_norm() <= c / f64::from(m) + grid_slack,
            "moved {} > C/m = {}",
            diff.l2_norm(),
            c / f64::from(m)
        );
        assert!(diff.l2_norm() > 0.9 * c / f64::from(m));
        // And the whole aggregate is C/m plus noise: its norm is what the noise
        // alone gives (sd·√d), not anything near 1e6/m.
        let expected = round.noise_sd * (d as f64).sqrt();
        assert!(with.l2_norm() < expected * 1.05 + c / f64::from(m));
    }

    #[test]
    fn the_denominator_is_fixed() {
        // One site of m = 4 reports Δ = (1, 0) with C = 10: the mean is 1/4,
        // not 1, before noise (noise here is tiny: z = 1e-6).
        let mut u = TensorMap::new();
        u.insert("w", vec![2], vec![1.0, 0.0]).unwrap();
        let mut mean = DpMean::new(u.schema(), 10.0);
        mean.add(&u).unwrap();
        let (out, _) = mean.finish(4, 1e-6, &mut seeded_rng(2)).unwrap();
        let w = out.get("w").unwrap().data();
        assert!((w[0] - 0.25).abs() < 1e-4, "{w:?}");
    }
}
