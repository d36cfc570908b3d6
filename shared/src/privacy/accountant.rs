//! Privacy accounting for the (Poisson-subsampled) Gaussian mechanism.
//!
//! Two accountants, both for the add/remove-one-site neighbouring relation:
//!
//! - **RDP** (Rényi DP, Mironov 2017) at Google dp-accounting's default orders,
//!   converted to (ε, δ) with the improved bound of Canonne–Kamath–Steinke /
//!   Asoodeh et al. (arXiv:2004.00010, Prop. 12), as dp-accounting 0.6.0
//!   `RdpAccountant.get_epsilon_and_optimal_order` does. For q = 1 the per-round
//!   RDP is exactly α/(2z²) at every order; for q < 1 it is the binomial closed
//!   form at integer orders (dp-accounting's `_compute_log_a_int`). Fractional
//!   orders are left out for q < 1: dp-accounting evaluates them with a
//!   truncated series, and a bound only over the integer orders is still a
//!   valid (slightly looser) upper bound.
//! - **Exact Gaussian composition** (μ-GDP, Dong–Roth–Su 2019) for full
//!   participation: T Gaussian releases at noise multipliers zᵢ are exactly
//!   μ-GDP with μ = √(Σ 1/zᵢ²), and ε at δ is the root of the analytical
//!   Gaussian trade-off (Balle & Wang 2018). It is tight, so it is what
//!   fedslice reports whenever every release used q = 1.
//!
//! Everything here is a pure function of the releases, so a ledger replayed
//! from durable state gives a bit-identical ε.

use serde::{Deserialize, Serialize};

/// dp-accounting 0.6.0's `DEFAULT_RDP_ORDERS`:
/// `[1 + x / 10 for x in 1..100] + [11..64] + [128, 256, 512, 1024]`,
/// computed with the same floating-point operations so the orders (and the
/// reported optimal order) are bit-identical to the reference.
pub fn default_orders() -> Vec<f64> {
    let mut orders: Vec<f64> = (1..100).map(|x| 1.0 + f64::from(x) / 10.0).collect();
    orders.extend((11..64).map(f64::from));
    orders.extend([128.0, 256.0, 512.0, 1024.0]);
    orders
}

/// Name of the accountant that produced an ε, as reported to users.
pub const RDP_NAME: &str = "rdp (dp-accounting 0.6.0 default orders, improved conversion)";
/// Name of the exact Gaussian composition path.
pub const GDP_NAME: &str = "exact gaussian composition (mu-GDP, Balle-Wang conversion)";

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum AccountantError {
    #[error("noise multiplier {0} must be a finite number greater than 0")]
    NoiseMultiplier(f64),
    #[error("sampling rate {0} must be in (0, 1]")]
    SamplingRate(f64),
    #[error("delta {0} must be in (0, 1)")]
    Delta(f64),
}

/// `count` releases of the Gaussian mechanism with noise multiplier `z`
/// (noise sd / L2 sensitivity), each over a Poisson sample of sites at rate `q`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Release {
    pub z: f64,
    pub q: f64,
    pub count: u64,
}

impl Release {
    pub fn check(&self) -> Result<(), AccountantError> {
        if !(self.z.is_finite() && self.z > 0.0) {
            return Err(AccountantError::NoiseMultiplier(self.z));
        }
        if !(self.q > 0.0 && self.q <= 1.0) {
            return Err(AccountantError::SamplingRate(self.q));
        }
        Ok(())
    }
}

/// An (ε, δ) guarantee and how it was obtained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spent {
    pub epsilon: f64,
    pub delta: f64,
    /// [`RDP_NAME`] or [`GDP_NAME`].
    pub accountant: String,
    /// RDP order at the optimum (RDP only).
    pub order: Option<f64>,
    /// μ of the composition (exact Gaussian only).
    pub mu: Option<f64>,
}

fn log_add(a: f64, b: f64) -> f64 {
    let (hi, lo) = if a > b { (a, b) } else { (b, a) };
    if lo == f64::NEG_INFINITY {
        return hi;
    }
    hi + (lo - hi).exp().ln_1p()
}

/// ln A_α of the sampled Gaussian at integer order α (dp-accounting
/// `_compute_log_a_int`): A_α = Σᵢ C(α,i) qⁱ (1−q)^(α−i) exp((i²−i)/(2z²)).
fn log_a_int(q: f64, z: f64, alpha: u32) -> f64 {
    let a = f64::from(alpha);
    let mut log_a = f64::NEG_INFINITY;
    for i in 0..=alpha {
        let i = f64::from(i);
        let log_binom = libm::lgamma(a + 1.0) - libm::lgamma(i + 1.0) - libm::lgamma(a - i + 1.0);
        let log_coef = log_binom + i * q.ln() + (a - i) * (-q).ln_1p();
        log_a = log_add(log_a, log_coef + (i * i - i) / (2.0 * z * z));
    }
    log_a
}

/// Per-release RDP of the Poisson-subsampled Gaussian at `order`; +∞ where
/// this module has no bound (fractional orders with q < 1), which removes the
/// order from the minimum exactly as dp-accounting drops orders it cannot
/// evaluate.
pub fn rdp_subsampled_gaussian(q: f64, z: f64, order: f64) -> f64 {
    if q >= 1.0 {
        return order / (2.0 * z * z);
    }
    if order.fract() != 0.0 || order < 2.0 || order > f64::from(u32::MAX) {
        return f64::INFINITY;
    }
    log_a_int(q, z, order as u32) / (order - 1.0)
}

/// The RDP curve of `releases` at `orders` (RDP composes by addition per order).
pub fn rdp_curve(releases: &[Release], orders: &[f64]) -> Vec<f64> {
    orders
        .iter()
        .map(|&a| {
            releases
                .iter()
                .map(|r| r.count as f64 * rdp_subsampled_gaussian(r.q, r.z, a))
                .sum()
        })
        .collect()
}

/// dp-accounting's `compute_epsilon` (improved conversion): the smallest ε
/// over the orders, and the order that gives it.
pub fn rdp_to_epsilon(orders: &[f64], rdp: &[f64], delta: f64) -> (f64, f64) {
    let mut best = (f64::INFINITY, orders.first().copied().unwrap_or(f64::NAN));
    for (&a, &r) in orders.iter().zip(rdp) {
        let eps = if delta * delta + (-r).exp_m1() > 0.0 {
            0.0
        } else if a > 1.01 {
            r + (-1.0 / a).ln_1p() - (delta * a).ln() / (a - 1.0)
        } else {
            f64::INFINITY
        };
        // Strict `<` keeps the first minimum, as numpy's argmin does.
        if eps < best.0 {
            best = (eps, a);
        }
    }
    (best.0.max(0.0), best.1)
}

/// ε at `delta` by RDP over dp-accounting's default orders.
pub fn rdp_epsilon(releases: &[Release], delta: f64) -> Result<Spent, AccountantError> {
    check(releases, delta)?;
    let orders = default_orders();
    let rdp = rdp_curve(releases, &orders);
    let (epsilon, order) = rdp_to_epsilon(&orders, &rdp, delta);
    Ok(Spent {
        epsilon,
        delta,
        accountant: RDP_NAME.to_owned(),
        order: Some(order),
        mu: None,
    })
}

/// ln Φ(x), accurate far into the lower tail where Φ underflows.
pub fn log_ndtr(x: f64) -> f64 {
    if x > -20.0 {
        return (0.5 * libm::erfc(-x / std::f64::consts::SQRT_2)).ln();
    }
    // Asymptotic series Φ(x) = φ(x)/|x| · Σₙ (−1)ⁿ (2n−1)!!/x²ⁿ; at x ≤ −20
    // its terms shrink below 1e-20 long before they diverge.
    let x2 = x * x;
    let mut term = 1.0;
    let mut sum = 1.0;
    for n in 1..=12 {
        term *= -f64::from(2 * n - 1) / x2;
        sum += term;
    }
    -0.5 * x2 - (-x).ln() - 0.5 * (2.0 * std::f64::consts::PI).ln() + sum.ln()
}

/// δ(ε) of μ-GDP: Φ(−ε/μ + μ/2) − e^ε Φ(−ε/μ − μ/2), with the second term
/// formed in log space so large ε does not overflow.
pub fn gdp_delta(mu: f64, epsilon: f64) -> f64 {
    let a = -epsilon / mu + mu / 2.0;
    let b = -epsilon / mu - mu / 2.0;
    log_ndtr(a).exp() - (epsilon + log_ndtr(b)).exp()
}

/// The ε at which μ-GDP gives `delta` (δ(ε) is strictly decreasing).
pub fn gdp_epsilon_for(mu: f64, delta: f64) -> f64 {
    if gdp_delta(mu, 0.0) <= delta {
        return 0.0;
    }
    let mut hi = 1.0;
    while gdp_delta(mu, hi) > delta {
        hi *= 2.0;
    }
    let mut lo = 0.0;
    // Bisection to adjacent floats: a fixed, reproducible answer.
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if gdp_delta(mu, mid) > delta {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    hi
}

/// μ of the exact composition, or `None` when some release was subsampled
/// (q < 1), where the Gaussian-DP CLT would only approximate it.
pub fn gdp_mu(releases: &[Release]) -> Option<f64> {
    if releases.iter().any(|r| r.q < 1.0) {
        return None;
    }
    Some(
        releases
            .iter()
            .map(|r| r.count as f64 / (r.z * r.z))
            .sum::<f64>()
            .sqrt(),
    )
}

/// ε at `delta` by exact Gaussian composition; `None` if some release was subsampled.
pub fn gdp_epsilon(releases: &[Release], delta: f64) -> Result<Option<Spent>, AccountantError> {
    check(releases, delta)?;
    Ok(gdp_mu(releases).map(|mu| Spent {
        epsilon: gdp_epsilon_for(mu, delta),
        delta,
        accountant: GDP_NAME.to_owned(),
        order: None,
        mu: Some(mu),
    }))
}

/// The tightest valid ε this module can state for `releases`: exact Gaussian
/// composition with full participation, RDP otherwise.
pub fn epsilon(releases: &[Release], delta: f64) -> Result<Spent, AccountantError> {
    match gdp_epsilon(releases, delta)? {
        Some(spent) => Ok(spent),
        None => rdp_epsilon(releases, delta),
    }
}

/// The smallest noise multiplier z (to ~1e-9 relative) at which `earlier`
/// plus `rounds` releases at sampling rate `q` stay within `epsilon` at
/// `delta`, by bisection on the monotone accountant; `None` if even z = 1e6
/// does not (the earlier releases alone spend the budget).
pub fn calibrate_z(
    earlier: &[Release],
    rounds: u64,
    q: f64,
    epsilon_budget: f64,
    delta: f64,
) -> Result<Option<f64>, AccountantError> {
    let spend = |z: f64| -> Result<f64, AccountantError> {
        let mut all = earlier.to_vec();
        all.push(Release {
            z,
            q,
            count: rounds,
        });
        Ok(epsilon(&all, delta)?.epsilon)
    };
    let mut hi = 1.0;
    while spend(hi)? > epsilon_budget {
        hi *= 2.0;
        if hi > 1e6 {
            return Ok(None);
        }
    }
    let mut lo = hi / 2.0;
    while lo > 1e-6 && spend(lo)? <= epsilon_budget {
        lo /= 2.0;
    }
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if spend(mid)? <= epsilon_budget {
            hi = mid;
        } else {
            lo = mid;
        }
        if hi - lo <= 1e-10 * hi {
            break;
        }
    }
    Ok(Some(hi))
}

fn check(releases: &[Release], delta: f64) -> Result<(), AccountantError> {
    if !(delta > 0.0 && delta < 1.0) {
        return Err(AccountantError::Delta(delta));
    }
    releases.iter().try_for_each(Release::check)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference grid (dp-accounting 0.6.0, Opacus 1.6.0), copied with
    /// its provenance from the review's `../shared/privacy/`.
    const REFERENCE: &str =
        include_str!("../../../tests/fixtures/privacy/dp-epsilon-reference.json");

    #[derive(Deserialize)]
    struct Row {
        z: f64,
        q: f64,
        #[serde(rename = "T")]
        t: u64,
        rdp_default: f64,
        rdp_default_order: f64,
        rdp_int: f64,
        rdp_int_order: f64,
        exact_gaussian: Option<f64>,
    }

    fn reference() -> Vec<Row> {
        let rows: Vec<Row> = serde_json::from_str(REFERENCE).expect("fixture parses");
        assert_eq!(rows.len(), 27, "the 3x3x3 grid");
        rows
    }

    fn rel(a: f64, b: f64) -> f64 {
        (a - b).abs() / b.abs()
    }

    fn one(z: f64, q: f64, t: u64) -> [Release; 1] {
        [Release { z, q, count: t }]
    }

    #[test]
    fn default_orders_are_dp_accountings() {
        let o = default_orders();
        assert_eq!(o.len(), 99 + 53 + 4);
        assert_eq!(o[0], 1.1);
        assert_eq!(o[6], 1.7);
        assert_eq!(o[98], 10.9);
        assert_eq!(o[99], 11.0);
        assert_eq!(*o.last().unwrap(), 1024.0);
    }

    #[test]
    fn rdp_default_orders_match_dp_accounting_for_full_participation() {
        let mut checked = 0;
        for r in reference().iter().filter(|r| r.q == 1.0) {
            let s = rdp_epsilon(&one(r.z, r.q, r.t), 1e-5).unwrap();
            assert!(
                rel(s.epsilon, r.rdp_default) < 1e-9,
                "z={} T={}: {} vs {}",
                r.z,
                r.t,
                s.epsilon,
                r.rdp_default
            );
            assert_eq!(s.order, Some(r.rdp_default_order));
            checked += 1;
        }
        assert_eq!(checked, 9);
    }

    #[test]
    fn rdp_integer_orders_match_dp_accounting_when_subsampled() {
        let mut checked = 0;
        for r in reference().iter().filter(|r| r.q < 1.0) {
            let s = rdp_epsilon(&one(r.z, r.q, r.t), 1e-5).unwrap();
            assert!(
                rel(s.epsilon, r.rdp_int) < 1e-6,
                "z={} q={} T={}: {} vs {}",
                r.z,
                r.q,
                r.t,
                s.epsilon,
                r.rdp_int
            );
            assert_eq!(s.order, Some(r.rdp_int_order));
            // Never below what dp-accounting's fractional orders give.
            assert!(s.epsilon >= r.rdp_default * (1.0 - 1e-9));
            checked += 1;
        }
        assert_eq!(checked, 18);
    }

    #[test]
    fn per_round_rdp_matches_the_review_table() {
        // Review §2.2 (dp-accounting `_compute_rdp_poisson_subsampled_gaussian`).
        for (q, z, a, want) in [
            (0.1, 1.0, 2.0, 0.0170368632361766),
            (0.1, 1.0, 32.0, 13.6231379685226),
            (0.1, 2.0, 8.0, 0.01372543010322),
            (0.5, 1.0, 256.0, 127.304134595203),
            (0.5, 2.0, 3.0, 0.110023193357623),
            (0.1, 0.5, 3.0, 2.55358128002049),
            (0.01, 1.0, 8.0, 0.000893643907606041),
            (0.01, 1.0, 256.0, 123.376770323086),
        ] {
            let got = rdp_subsampled_gaussian(q, z, a);
            assert!(rel(got, want) < 1e-9, "q={q} z={z} a={a}: {got} vs {want}");
        }
        assert_eq!(rdp_subsampled_gaussian(1.0, 1.0, 2.0), 1.0);
    }

    #[test]
    fn exact_gaussian_matches_the_reference() {
        let mut checked = 0;
        for r in reference().iter().filter(|r| r.q == 1.0) {
            let want = r.exact_gaussian.expect("q = 1 rows carry exact_gaussian");
            let s = gdp_epsilon(&one(r.z, r.q, r.t), 1e-5).unwrap().unwrap();
            assert!(
                rel(s.epsilon, want) < 1e-9,
                "z={} T={}: {} vs {want}",
                r.z,
                r.t,
                s.epsilon
            );
            checked += 1;
        }
        assert_eq!(checked, 9);
    }

    #[test]
    fn heterogeneous_and_lineage_composition_match_the_review() {
        // Review §2.3: 50 rounds at z = 1 then 50 at z = 2, q = 1.
        let mixed = [
            Release {
                z: 1.0,
                q: 1.0,
                count: 50,
            },
            Release {
                z: 2.0,
                q: 1.0,
                count: 50,
            },
        ];
        let gdp = gdp_epsilon(&mixed, 1e-5).unwrap().unwrap();
        assert!((gdp.mu.unwrap() - 7.9056941504).abs() < 1e-9);
        assert!((gdp.epsilon - 64.168810).abs() < 1e-6, "{}", gdp.epsilon);
        let rdp = rdp_epsilon(&mixed, 1e-5).unwrap();
        assert!((rdp.epsilon - 67.424040).abs() < 1e-6, "{}", rdp.epsilon);
        // Pretrain 4 rounds + finetune 8 rounds at z = 4.
        let lineage = [
            Release {
                z: 4.0,
                q: 1.0,
                count: 4,
            },
            Release {
                z: 4.0,
                q: 1.0,
                count: 8,
            },
        ];
        let e = epsilon(&lineage, 1e-5).unwrap();
        assert_eq!(e.accountant, GDP_NAME);
        assert!((e.epsilon - 3.7086).abs() < 5e-5, "{}", e.epsilon);
        assert!((rdp_epsilon(&lineage, 1e-5).unwrap().epsilon - 4.0113).abs() < 5e-5);
    }

    #[test]
    fn calibration_point_of_the_review_inverts() {
        // z = 6.002291 over 100 rounds is ε = 8 at δ = 1e-5 (review §2.3).
        let s = gdp_epsilon(&one(6.002291, 1.0, 100), 1e-5)
            .unwrap()
            .unwrap();
        assert!((s.epsilon - 8.0).abs() < 1e-5, "{}", s.epsilon);
    }

    #[test]
    fn calibration_matches_the_review_table() {
        // Review §2.3: z for a target ε at δ = 1e-5, q = 1 (exact Gaussian).
        for (eps, t, want) in [
            (8.0, 100, 6.002291),
            (1.0, 10, 11.797293),
            (3.0, 1000, 43.974426),
            (10.0, 10, 1.580787),
        ] {
            let z = calibrate_z(&[], t, 1.0, eps, 1e-5).unwrap().unwrap();
            assert!((z - want).abs() < 1e-6, "eps {eps} T {t}: {z} vs {want}");
            assert!(epsilon(&one(z, 1.0, t), 1e-5).unwrap().epsilon <= eps);
        }
        // Earlier releases leave less room: more noise for the same budget.
        let earlier = one(1.0, 1.0, 10);
        let z = calibrate_z(&earlier, 10, 1.0, 20.0, 1e-5).unwrap().unwrap();
        assert!(z > calibrate_z(&[], 10, 1.0, 20.0, 1e-5).unwrap().unwrap());
        // A budget the earlier releases already spent cannot be met.
        assert_eq!(calibrate_z(&earlier, 1, 1.0, 5.0, 1e-5).unwrap(), None);
    }

    #[test]
    fn epsilon_grows_with_rounds_and_shrinks_with_noise() {
        for q in [1.0, 0.1] {
            let e = |z, t| epsilon(&one(z, q, t), 1e-5).unwrap().epsilon;
            assert!(e(1.0, 2) > e(1.0, 1));
            assert!(e(1.0, 3) > e(1.0, 2));
            assert!(e(2.0, 2) < e(1.0, 2));
        }
        // The exact composition is never looser than RDP.
        let gdp = gdp_epsilon(&one(1.0, 1.0, 10), 1e-5).unwrap().unwrap();
        assert!(gdp.epsilon < rdp_epsilon(&one(1.0, 1.0, 10), 1e-5).unwrap().epsilon);
    }

    #[test]
    fn invalid_parameters_are_refused() {
        assert!(epsilon(&one(0.0, 1.0, 1), 1e-5).is_err());
        assert!(epsilon(&one(1.0, 0.0, 1), 1e-5).is_err());
        assert!(epsilon(&one(1.0, 1.5, 1), 1e-5).is_err());
        assert!(epsilon(&one(1.0, 1.0, 1), 0.0).is_err());
        assert!(epsilon(&one(f64::NAN, 1.0, 1), 1e-5).is_err());
    }
}
