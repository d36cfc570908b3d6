//! Gaussian noise for the DP mean, drawn exactly on a fixed grid.
//!
//! Why not `rand_distr::Normal` on f32/f64: floating-point samplers leave
//! gaps and uneven spacing in the set of values they can output, and the set
//! shifts with the value being protected, so the low-order bits of a noised
//! number can reveal it (Mironov 2012; Opacus #616, diffprivlib #19/#94).
//! Instead each coordinate is
//!
//! 1. snapped to a fixed grid of step `g` (a deterministic function of the
//!    data, so a post-processing of the sum with sensitivity raised by at
//!    most `g·√d`, which [`GridNoise::new`] pays for),
//! 2. given integer noise from the **discrete Gaussian** N_ℤ(0, σ²) with
//!    σ = 2^k, sampled exactly with integer arithmetic and a CSPRNG
//!    (Canonne, Kamath, Steinke 2020, Algorithms 1–3: no floating point
//!    anywhere in the sampler), and
//! 3. scaled back by `g` in f64.
//!
//! The output always lies on the grid gℤ whatever the data, so its bits carry
//! nothing beyond the noised value. With σ ≥ 2^20 grid steps the discrete
//! Gaussian's Rényi divergences equal the continuous Gaussian's up to a term
//! of order exp(−2π²σ²) (CKS 2020, §4), so the continuous accountant in
//! [`super::accountant`] applies.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::PrivacyError;

/// Largest useful σ = 2^k: the sampler's (|Y|·t − σ²)² must fit in u128.
const MAX_LOG2_SIGMA: u32 = 30;
const MIN_LOG2_SIGMA: u32 = 20;
/// The snapping slack may cost at most this fraction of the noise multiplier.
const MAX_SLACK: f64 = 1e-3;

/// The generator every production noise draw uses: ChaCha20 seeded from the
/// operating system. Never seeded from the job, the round or the clock, so two
/// rounds (or a re-aggregated round) never repeat or predict noise.
pub fn os_rng() -> Result<ChaCha20Rng, PrivacyError> {
    ChaCha20Rng::try_from_os_rng().map_err(|e| PrivacyError::Entropy(e.to_string()))
}

/// Bernoulli(num/den), exactly.
fn bernoulli<R: Rng + ?Sized>(rng: &mut R, num: u128, den: u128) -> bool {
    rng.random_range(0..den) < num
}

/// Bernoulli(exp(−num/den)) for num ≤ den (CKS Algorithm 1, first case).
fn bernoulli_exp_unit<R: Rng + ?Sized>(rng: &mut R, num: u128, den: u128) -> bool {
    let mut k: u128 = 1;
    // Bernoulli(γ/k) as Bernoulli(γ) ∧ Bernoulli(1/k): no product to overflow.
    while bernoulli(rng, num, den) && rng.random_range(0..k) == 0 {
        k += 1;
    }
    k % 2 == 1
}

/// Bernoulli(exp(−num/den)) for any num ≥ 0 (CKS Algorithm 1).
fn bernoulli_exp<R: Rng + ?Sized>(rng: &mut R, num: u128, den: u128) -> bool {
    let whole = num / den;
    let mut i = 0;
    while i < whole {
        if !bernoulli_exp_unit(rng, 1, 1) {
            return false;
        }
        i += 1;
    }
    bernoulli_exp_unit(rng, num % den, den)
}

/// Discrete Laplace with scale t: P(x) ∝ exp(−|x|/t) (CKS Algorithm 2).
fn discrete_laplace<R: Rng + ?Sized>(rng: &mut R, t: u128) -> i128 {
    loop {
        let u = rng.random_range(0..t);
        if !bernoulli_exp(rng, u, t) {
            continue;
        }
        let mut v: u128 = 0;
        while bernoulli_exp(rng, 1, 1) {
            v += 1;
        }
        let Some(x) = t.checked_mul(v).and_then(|tv| tv.checked_add(u)) else {
            continue;
        };
        let negative: bool = rng.random();
        if negative && x == 0 {
            continue;
        }
        let x = x as i128;
        return if negative { -x } else { x };
    }
}

/// The discrete Gaussian N_ℤ(0, σ²) with σ = 2^k (CKS Algorithm 3).
#[derive(Debug, Clone, Copy)]
pub struct DiscreteGaussian {
    sigma2: u128,
    t: u128,
}

impl DiscreteGaussian {
    pub fn with_log2_sigma(k: u32) -> Result<Self, PrivacyError> {
        if k > MAX_LOG2_SIGMA {
            return Err(PrivacyError::Noise(format!(
                "discrete Gaussian sigma 2^{k} is above the sampler's 2^{MAX_LOG2_SIGMA}"
            )));
        }
        let sigma = 1u128 << k;
        Ok(DiscreteGaussian {
            sigma2: sigma * sigma,
            t: sigma + 1,
        })
    }

    pub fn sigma(&self) -> f64 {
        (self.sigma2 as f64).sqrt()
    }

    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> i128 {
        let den = 2 * self.t * self.t * self.sigma2;
        loop {
            let y = discrete_laplace(rng, self.t);
            let scaled = y.unsigned_abs().checked_mul(self.t);
            let num = scaled
                .map(|s| s.abs_diff(self.sigma2))
                .and_then(|d| d.checked_mul(d));
            // Past u128, γ = num/den > 2^128/2^122 = 64: accepting with
            // probability 0 instead of e^-64 or less changes nothing measurable.
            let Some(num) = num else { continue };
            if bernoulli_exp(rng, num, den) {
                return y;
            }
        }
    }
}

/// Gaussian noise of a DP mean: grid step and discrete Gaussian such that the
/// released mean is (z, sensitivity)-Gaussian after snapping.
#[derive(Debug, Clone, Copy)]
pub struct GridNoise {
    pub sampler: DiscreteGaussian,
    /// Grid step, in model units.
    pub grid: f64,
    /// Standard deviation of the noise per coordinate, in model units: z·C/m
    /// times 1/(1 − slack), slack ≤ [`MAX_SLACK`].
    pub sd: f64,
}

impl GridNoise {
    /// Noise for a mean whose L2 sensitivity is `sensitivity` (C/m) over `d`
    /// coordinates, at noise multiplier `z`.
    ///
    /// Snapping can move two neighbouring means apart by up to `g·√d` more
    /// (half a step per coordinate each), plus f64 summation error, which the
    /// `+ 1` step absorbs. So the grid is chosen with
    /// σ_grid = z·(sensitivity/g + √d + 1): the accountant's z holds for the
    /// snapped mean, and the noise is larger than z·C/m by the factor
    /// 1/(1 − z(√d+1)/σ_grid) ≤ 1 + [`MAX_SLACK`].
    pub fn new(z: f64, sensitivity: f64, d: usize) -> Result<Self, PrivacyError> {
        if !(z.is_finite() && z > 0.0 && sensitivity.is_finite() && sensitivity > 0.0) {
            return Err(PrivacyError::Noise(format!(
                "noise needs z > 0 and sensitivity > 0 (got z={z}, sensitivity={sensitivity})"
            )));
        }
        let extra = z * ((d as f64).sqrt() + 1.0);
        let k = (MIN_LOG2_SIGMA..=MAX_LOG2_SIGMA)
            .find(|&k| extra / 2f64.powi(k as i32) <= MAX_SLACK)
            .ok_or_else(|| {
                PrivacyError::Noise(format!(
                    "z={z} over {d} coordinates needs a finer noise grid than 2^{MAX_LOG2_SIGMA}"
                ))
            })?;
        let sampler = DiscreteGaussian::with_log2_sigma(k)?;
        let sigma = sampler.sigma();
        let grid = sensitivity * z / (sigma - extra);
        Ok(GridNoise {
            sampler,
            grid,
            sd: sigma * grid,
        })
    }

    /// `value` snapped to the grid, plus one draw of noise.
    pub fn noised<R: Rng + ?Sized>(&self, value: f64, rng: &mut R) -> f64 {
        let snapped = (value / self.grid).round() as i128;
        (snapped + self.sampler.sample(rng)) as f64 * self.grid
    }
}

/// A seeded generator for tests, so statistical assertions cannot flake.
pub fn seeded_rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// χ² bounds on a sample variance: (n−1)s²/σ² ~ χ²(n−1) ≈ N(n−1, 2(n−1))
    /// for large n. Six standard deviations: a correct sampler passes
    /// essentially always (and the seed is fixed), a 3% error in σ does not.
    pub(crate) fn sd_check(values: &[f64], want_sd: f64) -> Result<(), String> {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
        let stat = (n - 1.0) * var / (want_sd * want_sd);
        let bound = 6.0 * (2.0 * (n - 1.0)).sqrt();
        if (stat - (n - 1.0)).abs() >= bound {
            return Err(format!(
                "sd {} vs configured {want_sd}: chi2 {stat} outside {} ± {bound}",
                var.sqrt(),
                n - 1.0
            ));
        }
        if mean.abs() >= 6.0 * want_sd / n.sqrt() {
            return Err(format!("mean {mean} is not 0 (sd {want_sd})"));
        }
        Ok(())
    }

    #[test]
    fn discrete_gaussian_has_the_configured_sd() {
        let dg = DiscreteGaussian::with_log2_sigma(20).unwrap();
        let mut rng = seeded_rng(7);
        let xs: Vec<f64> = (0..100_000).map(|_| dg.sample(&mut rng) as f64).collect();
        sd_check(&xs, dg.sigma()).unwrap();
        // The same check fails a sampler 3% off, so it has teeth.
        let scaled: Vec<f64> = xs.iter().map(|x| x * 1.03).collect();
        assert!(sd_check(&scaled, dg.sigma()).is_err());
    }

    #[test]
    fn grid_noise_costs_at_most_the_slack() {
        let noise = GridNoise::new(2.0, 1.0 / 3.0, 110_000).unwrap();
        let nominal = 2.0 / 3.0;
        assert!(noise.sd >= nominal && noise.sd <= nominal * (1.0 + 1.01 * MAX_SLACK));
        // Outputs are grid points whatever the input.
        let mut rng = seeded_rng(1);
        for v in [0.0, 0.123456789, -5.5, 1e-9] {
            let out = noise.noised(v, &mut rng) / noise.grid;
            assert!((out - out.round()).abs() < 1e-6, "{out}");
        }
    }

    #[test]
    fn bernoulli_exp_has_the_right_rate() {
        let mut rng = seeded_rng(3);
        let n = 200_000;
        for (num, den) in [(1u128, 2u128), (1, 1), (5, 2)] {
            let p = (-(num as f64) / den as f64).exp();
            let hits = (0..n).filter(|_| bernoulli_exp(&mut rng, num, den)).count() as f64;
            let sd = (p * (1.0 - p) * n as f64).sqrt();
            assert!(
                (hits - p * n as f64).abs() < 6.0 * sd,
                "exp(-{num}/{den}): {hits} of {n}"
            );
        }
    }
}
