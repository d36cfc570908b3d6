//! Site-level differential privacy (DP-FedAvg, McMahan et al. 2018).
//!
//! The unit of privacy is **one site's whole contribution in a round**: the
//! guarantee covers adding or removing every exam of one hospital at once.
//!
//! - [`clip`]: each site scales its update Δ (not its weights) to L2 norm ≤ C.
//! - [`mean`]: the aggregator averages the clipped updates with uniform
//!   weights over a fixed denominator m and adds N(0, (zC/m)²) once per round.
//! - [`noise`]: that noise, from an exact discrete-Gaussian sampler on a
//!   fixed grid and a ChaCha20 generator seeded by the operating system.
//! - [`accountant`]: ε at δ for any sequence of such releases (RDP, and the
//!   exact Gaussian composition when every site takes part in every round).

pub mod accountant;
pub mod clip;
pub mod mean;
pub mod noise;

use serde::{Deserialize, Serialize};

use accountant::{Release, Spent};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PrivacyError {
    #[error("invalid differential-privacy setting: {0}")]
    Config(String),
    #[error(transparent)]
    Accountant(#[from] accountant::AccountantError),
    #[error("DP noise: {0}")]
    Noise(String),
    #[error("no entropy from the operating system for DP noise: {0}")]
    Entropy(String),
    #[error("update rejected: {0}")]
    Wire(#[from] crate::wire::WireError),
}

/// A job's differential-privacy recipe, fixed when the job is created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DpConfig {
    /// z: noise standard deviation over the L2 sensitivity.
    pub noise_multiplier: f64,
    /// C: L2 norm every site's update is clipped to.
    pub clip_norm: f64,
    /// δ of the reported (ε, δ).
    pub delta: f64,
    /// The ε this job may bring the consortium's ledger to; a round that would
    /// pass it is not run.
    pub epsilon_budget: f64,
    /// q: Poisson rate at which sites are sampled each round (1 = every site).
    pub sampling_rate: f64,
    /// m: the fixed denominator, the number of sites expected per round.
    pub expected_sites: u32,
}

impl DpConfig {
    pub fn validate(&self) -> Result<(), PrivacyError> {
        let bad = |what: String| Err(PrivacyError::Config(what));
        if !(self.noise_multiplier.is_finite() && self.noise_multiplier > 0.0) {
            return bad(format!(
                "noise multiplier z = {} must be greater than 0",
                self.noise_multiplier
            ));
        }
        if !(self.clip_norm.is_finite() && self.clip_norm > 0.0) {
            return bad(format!(
                "clip norm C = {} must be greater than 0",
                self.clip_norm
            ));
        }
        if !(self.delta > 0.0 && self.delta < 1.0) {
            return bad(format!("delta = {} must be in (0, 1)", self.delta));
        }
        if !(self.epsilon_budget.is_finite() && self.epsilon_budget > 0.0) {
            return bad(format!(
                "epsilon budget = {} must be greater than 0",
                self.epsilon_budget
            ));
        }
        if !(self.sampling_rate > 0.0 && self.sampling_rate <= 1.0) {
            return bad(format!(
                "sampling rate q = {} must be in (0, 1]",
                self.sampling_rate
            ));
        }
        if self.expected_sites == 0 {
            return bad("the expected number of sites per round m must be at least 1".into());
        }
        Ok(())
    }

    /// `rounds` releases of this job's mechanism.
    pub fn release(&self, rounds: u64) -> Release {
        Release {
            z: self.noise_multiplier,
            q: self.sampling_rate,
            count: rounds,
        }
    }

    /// Nominal noise sd per coordinate of the round mean, z·C/m.
    pub fn noise_sd(&self) -> f64 {
        self.noise_multiplier * self.clip_norm / f64::from(self.expected_sites)
    }

    /// Noise norm over the largest possible signal norm, z·√d/m: above 1 the
    /// noise outweighs even a round in which every site pushes the same way
    /// as hard as its clip allows.
    pub fn noise_to_signal(&self, parameters: usize) -> f64 {
        self.noise_multiplier * (parameters as f64).sqrt() / f64::from(self.expected_sites)
    }

    /// ε after `earlier` releases plus `rounds` of this job.
    pub fn epsilon_after(&self, earlier: &[Release], rounds: u64) -> Result<Spent, PrivacyError> {
        let mut all = earlier.to_vec();
        all.push(self.release(rounds));
        Ok(accountant::epsilon(&all, self.delta)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> DpConfig {
        DpConfig {
            noise_multiplier: 1.0,
            clip_norm: 0.5,
            delta: 1e-5,
            epsilon_budget: 8.0,
            sampling_rate: 1.0,
            expected_sites: 3,
        }
    }

    #[test]
    fn validation_refuses_meaningless_settings() {
        assert!(config().validate().is_ok());
        for bad in [
            DpConfig {
                noise_multiplier: 0.0,
                ..config()
            },
            DpConfig {
                clip_norm: f64::NAN,
                ..config()
            },
            DpConfig {
                delta: 1.0,
                ..config()
            },
            DpConfig {
                epsilon_budget: f64::INFINITY,
                ..config()
            },
            DpConfig {
                sampling_rate: 0.0,
                ..config()
            },
            DpConfig {
                expected_sites: 0,
                ..config()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_ratio_matches_the_review_table() {
        // Review §0: vit-tiny (~5.4 M), z = 2.68, m = 3 → 2079.
        let c = DpConfig {
            noise_multiplier: 2.68,
            ..config()
        };
        assert!((c.noise_to_signal(5_400_000) - 2076.0).abs() < 5.0);
        assert!((c.noise_sd() - 2.68 * 0.5 / 3.0).abs() < 1e-12);
    }
}
