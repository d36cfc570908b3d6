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

/// What a site's `site.toml` `[privacy]` table demands of every job it trains for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SitePolicy {
    /// Refuse jobs without differential privacy.
    #[serde(default)]
    pub require_dp: bool,
    /// Refuse DP jobs whose ε budget (the most the consortium's ledger may
    /// reach through the job) is above this.
    #[serde(default)]
    pub max_epsilon: Option<f64>,
}

impl SitePolicy {
    /// `Err(reason)` if a job with `dp` breaks this policy.
    pub fn check(&self, dp: Option<&DpConfig>) -> Result<(), String> {
        match dp {
            None if self.require_dp || self.max_epsilon.is_some() => {
                Err("this site's policy requires differential privacy and the job has none".into())
            }
            None => Ok(()),
            Some(dp) => {
                dp.validate().map_err(|e| e.to_string())?;
                match self.max_epsilon {
                    Some(max) if max.is_nan() || dp.epsilon_budget > max => Err(format!(
                        "the job's epsilon budget {} is above this site's max_epsilon {max}",
                        dp.epsilon_budget
                    )),
                    _ => Ok(()),
                }
            }
        }
    }
}

/// The privacy statement of a released model, for status, model cards and
/// bundles: everything a reader needs to check the number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrivacyReport {
    /// ε of everything the consortium released up to this model, at `delta`.
    pub epsilon: f64,
    pub delta: f64,
    pub accountant: String,
    pub noise_multiplier: f64,
    pub clip_norm: f64,
    /// Rounds of this job that were released with noise.
    pub rounds: u64,
    /// Noised releases in the consortium's ledger (every job, this one included).
    pub ledger_releases: u64,
    pub sampling: String,
    pub expected_sites: u32,
    pub epsilon_budget: f64,
    pub unit: String,
    /// What the guarantee does not cover.
    pub not_covered: String,
}

/// The unit of privacy, in words.
pub const UNIT: &str =
    "one site's whole contribution in one round (every exam of one hospital, add/remove)";
/// What ε does not cover, in words.
pub const NOT_COVERED: &str = "the per-site metrics sent in plaintext with every update (sample counts, local losses, validation AUC, counts and threshold), which are released without noise; the aggregator itself sees each site's clipped update before noise";

impl PrivacyReport {
    pub fn new(dp: &DpConfig, spent: &Spent, rounds: u64, ledger_releases: u64) -> Self {
        PrivacyReport {
            epsilon: spent.epsilon,
            delta: spent.delta,
            accountant: spent.accountant.clone(),
            noise_multiplier: dp.noise_multiplier,
            clip_norm: dp.clip_norm,
            rounds,
            ledger_releases,
            sampling: if dp.sampling_rate >= 1.0 {
                "none: every site in every round (no amplification claimed)".into()
            } else {
                format!("Poisson, q = {}", dp.sampling_rate)
            },
            expected_sites: dp.expected_sites,
            epsilon_budget: dp.epsilon_budget,
            unit: UNIT.into(),
            not_covered: NOT_COVERED.into(),
        }
    }

    /// One sentence a privacy officer can check.
    pub fn meaning(&self) -> String {
        format!(
            "For any one site, everything the consortium released is almost as likely with or \
             without that site's data in any round: no outcome becomes more than e^{:.3} = {:.3e} \
             times more likely, except with probability at most {:e}.",
            self.epsilon,
            self.epsilon.exp(),
            self.delta
        )
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
    fn site_policy_refuses_jobs_that_break_it() {
        let strict = SitePolicy {
            require_dp: true,
            max_epsilon: Some(8.0),
        };
        assert!(strict.check(None).unwrap_err().contains("requires"));
        assert!(strict.check(Some(&config())).is_ok());
        let loose = DpConfig {
            epsilon_budget: 20.0,
            ..config()
        };
        assert!(
            strict
                .check(Some(&loose))
                .unwrap_err()
                .contains("max_epsilon")
        );
        // A max_epsilon alone also implies DP; no policy allows anything.
        let cap = SitePolicy {
            require_dp: false,
            max_epsilon: Some(8.0),
        };
        assert!(cap.check(None).is_err());
        assert!(SitePolicy::default().check(None).is_ok());
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
