//! Binary classification metrics for the exam-level ACL-tear classifier.
//!
//! Every exam contributes one score (higher means "more likely torn") and one
//! label (`true` = tear). The design (§4, §9) reports ROC AUC with a bootstrap
//! 95% confidence interval, plus accuracy, sensitivity and specificity at a
//! decision threshold chosen on validation data with Youden's J. These are
//! computed per site and for the federation, so small and lopsided cohorts are
//! the normal case: the functions validate their input and return typed errors
//! rather than NaN, which would silently poison JSON reports and averages.
//!
//! Conventions shared by every function here:
//! * the prediction rule is `score >= threshold` ⇒ positive;
//! * tied scores between a positive and a negative exam count as half a
//!   correctly ordered pair (the Mann–Whitney convention, matching
//!   scikit-learn's `roc_auc_score`);
//! * non-finite scores are rejected, because a NaN logit means training
//!   diverged and must not be ranked as if it were a number.

use std::ops::Range;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// Confidence level of the interval reported by [`evaluate`] (the design's 95%).
pub const DEFAULT_CONFIDENCE: f64 = 0.95;

/// How many times one bootstrap resample may be redrawn because it contained a
/// single class. Even with one positive among many exams a draw misses it with
/// probability ≈ 1/e, so hitting this bound means a broken input, not bad luck.
const MAX_DRAWS_PER_RESAMPLE: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("scores and labels differ in length ({scores} scores, {labels} labels)")]
    LengthMismatch { scores: usize, labels: usize },
    #[error("no exams to evaluate")]
    Empty,
    #[error(
        "AUC is undefined when all exams have the same label ({positives} positives, {negatives} negatives)"
    )]
    SingleClass { positives: usize, negatives: usize },
    #[error("score at index {index} is not finite")]
    NonFinite { index: usize },
    #[error("decision threshold {threshold} is not finite")]
    NonFiniteThreshold { threshold: f64 },
    #[error("confidence level must lie strictly between 0 and 1, got {confidence}")]
    InvalidConfidence { confidence: f64 },
    #[error("the bootstrap needs at least one resample")]
    NoResamples,
    #[error(
        "bootstrap resample drew a single class {attempts} times in a row; the data set is too lopsided for a bootstrap CI"
    )]
    BootstrapExhausted { attempts: usize },
}

/// Checks the invariants every metric relies on and counts the classes, so the
/// callers can decide whether a single class is acceptable for them.
fn validate(scores: &[f64], labels: &[bool]) -> Result<(usize, usize), MetricsError> {
    if scores.len() != labels.len() {
        return Err(MetricsError::LengthMismatch {
            scores: scores.len(),
            labels: labels.len(),
        });
    }
    if scores.is_empty() {
        return Err(MetricsError::Empty);
    }
    if let Some(index) = scores.iter().position(|s| !s.is_finite()) {
        return Err(MetricsError::NonFinite { index });
    }
    let positives = labels.iter().filter(|&&l| l).count();
    Ok((positives, labels.len() - positives))
}

/// Like [`validate`], but also rejects single-class input, which AUC, its
/// bootstrap and Youden's J all need.
fn validate_two_class(scores: &[f64], labels: &[bool]) -> Result<(usize, usize), MetricsError> {
    let (positives, negatives) = validate(scores, labels)?;
    if positives == 0 || negatives == 0 {
        return Err(MetricsError::SingleClass {
            positives,
            negatives,
        });
    }
    Ok((positives, negatives))
}

/// Exam indices in ascending score order, cut into runs of equal score.
///
/// Sorting once and reusing the tie groups is what makes the AUC O(n log n)
/// and each bootstrap resample O(n).
struct Ranking {
    order: Vec<usize>,
    groups: Vec<Range<usize>>,
}

impl Ranking {
    /// Scores must already be validated as finite, so `total_cmp` agrees with
    /// numeric order except that it puts -0.0 just before 0.0; grouping with
    /// `==` still merges those two into one tie group because they are adjacent.
    fn new(scores: &[f64]) -> Self {
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
        let mut groups = Vec::new();
        let mut start = 0;
        for pos in 1..=order.len() {
            if pos == order.len() || scores[order[pos]] != scores[order[start]] {
                groups.push(start..pos);
                start = pos;
            }
        }
        Self { order, groups }
    }
}

/// Mann–Whitney AUC from per-tie-group (positive, negative) weights in
/// ascending score order.
///
/// Works on integer weights so that twice the U statistic is exact; only the
/// final division is rounded. Returns `None` when a class has zero weight.
fn auc_from_groups(groups: impl Iterator<Item = (u64, u64)>) -> Option<f64> {
    let mut negatives_below: u128 = 0;
    let mut positives: u128 = 0;
    // 2·U: each positive beats every lower negative (2) and ties with equal ones (1).
    let mut twice_u: u128 = 0;
    for (pos, neg) in groups {
        let (pos, neg) = (u128::from(pos), u128::from(neg));
        twice_u += pos * (2 * negatives_below + neg);
        negatives_below += neg;
        positives += pos;
    }
    let pairs = positives * negatives_below;
    if pairs == 0 {
        return None;
    }
    Some(twice_u as f64 / (2 * pairs) as f64)
}

/// Per-tie-group class counts of the unresampled data.
fn group_counts<'a>(
    ranking: &'a Ranking,
    labels: &'a [bool],
) -> impl Iterator<Item = (u64, u64)> + 'a {
    ranking.groups.iter().map(move |g| {
        let pos = ranking.order[g.clone()]
            .iter()
            .filter(|&&i| labels[i])
            .count();
        (pos as u64, (g.len() - pos) as u64)
    })
}

/// ROC AUC: the probability that a random positive exam scores higher than a
/// random negative one, ties counting 1/2.
///
/// Computed as the Mann–Whitney U statistic over tie groups in O(n log n), so
/// federation-wide evaluation over thousands of exams stays cheap.
pub fn roc_auc(scores: &[f64], labels: &[bool]) -> Result<f64, MetricsError> {
    let (positives, negatives) = validate_two_class(scores, labels)?;
    let ranking = Ranking::new(scores);
    auc_from_groups(group_counts(&ranking, labels)).ok_or(MetricsError::SingleClass {
        positives,
        negatives,
    })
}

/// Percentile-bootstrap confidence interval for the ROC AUC, resampling whole
/// exams with replacement.
///
/// A resample that happens to contain only one class has no AUC; it is
/// redrawn (up to an internal bound per resample, after which
/// [`MetricsError::BootstrapExhausted`] is returned) rather than skipped or
/// counted as 0.5, so every one of the `resamples` AUCs is a real AUC. This
/// conditions the bootstrap on both classes being present, which only matters
/// for cohorts with a handful of exams in one class — where any CI is rough.
///
/// The interval bounds are the `(1-confidence)/2` and `(1+confidence)/2`
/// quantiles of the resampled AUCs, linearly interpolated (NumPy's default),
/// so results can be compared with a Python reanalysis.
///
/// Deterministic for a given `seed` and a given version of `rand` (its
/// `StdRng` algorithm may change across major versions; Cargo.lock pins it).
pub fn bootstrap_auc_ci(
    scores: &[f64],
    labels: &[bool],
    resamples: usize,
    confidence: f64,
    seed: u64,
) -> Result<(f64, f64), MetricsError> {
    validate_two_class(scores, labels)?;
    if !(confidence > 0.0 && confidence < 1.0) {
        return Err(MetricsError::InvalidConfidence { confidence });
    }
    if resamples == 0 {
        return Err(MetricsError::NoResamples);
    }
    let n = scores.len();
    let ranking = Ranking::new(scores);
    let mut rng = StdRng::seed_from_u64(seed);
    // How often each original exam appears in the current resample; walking
    // the fixed ranking with these weights avoids re-sorting per resample.
    let mut multiplicity = vec![0u64; n];
    let mut aucs = Vec::with_capacity(resamples);
    for _ in 0..resamples {
        let mut auc = None;
        for _ in 0..MAX_DRAWS_PER_RESAMPLE {
            multiplicity.fill(0);
            for _ in 0..n {
                multiplicity[rng.random_range(0..n)] += 1;
            }
            auc = auc_from_groups(ranking.groups.iter().map(|g| {
                ranking.order[g.clone()]
                    .iter()
                    .fold((0, 0), |(pos, neg), &i| {
                        if labels[i] {
                            (pos + multiplicity[i], neg)
                        } else {
                            (pos, neg + multiplicity[i])
                        }
                    })
            }));
            if auc.is_some() {
                break;
            }
        }
        match auc {
            Some(a) => aucs.push(a),
            None => {
                return Err(MetricsError::BootstrapExhausted {
                    attempts: MAX_DRAWS_PER_RESAMPLE,
                });
            }
        }
    }
    aucs.sort_by(f64::total_cmp);
    let alpha = 1.0 - confidence;
    Ok((
        quantile_sorted(&aucs, alpha / 2.0),
        quantile_sorted(&aucs, 1.0 - alpha / 2.0),
    ))
}

/// Linear-interpolation quantile of a non-empty, ascending slice.
fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let frac = pos - lo as f64;
    sorted[lo] + (sorted[hi] - sorted[lo]) * frac
}

/// Decision threshold maximising Youden's J = sensitivity + specificity − 1.
///
/// Candidates are the lowest score (everything positive) and the midpoints
/// between consecutive distinct scores; with `score >= threshold` each
/// midpoint separates its two neighbours. The "everything negative" end is not
/// materialised: its J is 0, the same as the lowest score's, and ties go to
/// the lower threshold anyway.
///
/// Ties in J are broken towards the **lowest** threshold, i.e. the highest
/// sensitivity, because a missed ACL tear costs more than an extra review.
/// J is compared in exact integer arithmetic so that this tie-breaking is not
/// at the mercy of rounding.
pub fn youden_threshold(scores: &[f64], labels: &[bool]) -> Result<f64, MetricsError> {
    let (positives, negatives) = validate_two_class(scores, labels)?;
    let ranking = Ranking::new(scores);
    let score_at = |group: &Range<usize>| scores[ranking.order[group.start]];
    let (p, n) = (positives as u128, negatives as u128);
    // J·P·N + P·N = tp·N + tn·P, so comparing tp·N + tn·P compares J exactly.
    let objective = |tp: u128, tn: u128| tp * n + tn * p;

    let mut best_threshold = score_at(&ranking.groups[0]);
    let mut tp = p;
    let mut tn: u128 = 0;
    let mut best = objective(tp, tn);
    for ((group, (pos, neg)), next) in ranking
        .groups
        .iter()
        .zip(group_counts(&ranking, labels))
        .zip(ranking.groups.iter().skip(1))
    {
        // Moving the cut above `group` turns its exams negative.
        tp -= u128::from(pos);
        tn += u128::from(neg);
        let value = objective(tp, tn);
        if value > best {
            best = value;
            best_threshold = cut_between(score_at(group), score_at(next));
        }
    }
    Ok(best_threshold)
}

/// A threshold `t` with `lo < t <= hi`, preferably the midpoint.
///
/// Halving before adding avoids overflow at the extremes of f64; if the
/// midpoint rounds down onto `lo` (adjacent floats), `hi` itself still
/// separates the two scores under `score >= threshold`.
fn cut_between(lo: f64, hi: f64) -> f64 {
    let mid = lo / 2.0 + hi / 2.0;
    if mid > lo && mid <= hi { mid } else { hi }
}

/// Confusion counts and rates at one decision threshold.
///
/// Sensitivity and specificity are `None` when the cohort has no positive
/// (respectively no negative) exams: a per-site report may legitimately
/// contain a site without tears, and `None` serialises as JSON `null` instead
/// of a NaN that JSON cannot represent or a 0.0 that would read as "missed
/// every tear".
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BinaryStats {
    pub tp: usize,
    pub fp: usize,
    pub tn: usize,
    pub fn_: usize,
    pub accuracy: f64,
    pub sensitivity: Option<f64>,
    pub specificity: Option<f64>,
}

impl BinaryStats {
    /// Applies the `score >= threshold` ⇒ positive rule. Single-class input is
    /// accepted (see the type's note on `None` rates).
    pub fn at_threshold(
        scores: &[f64],
        labels: &[bool],
        threshold: f64,
    ) -> Result<Self, MetricsError> {
        validate(scores, labels)?;
        if !threshold.is_finite() {
            return Err(MetricsError::NonFiniteThreshold { threshold });
        }
        let (mut tp, mut fp, mut tn, mut fn_) = (0, 0, 0, 0);
        for (&score, &label) in scores.iter().zip(labels) {
            match (score >= threshold, label) {
                (true, true) => tp += 1,
                (true, false) => fp += 1,
                (false, false) => tn += 1,
                (false, true) => fn_ += 1,
            }
        }
        let rate = |hits: usize, total: usize| (total > 0).then(|| hits as f64 / total as f64);
        Ok(Self {
            tp,
            fp,
            tn,
            fn_,
            accuracy: (tp + tn) as f64 / scores.len() as f64,
            sensitivity: rate(tp, tp + fn_),
            specificity: rate(tn, tn + fp),
        })
    }
}

/// The metrics row reported per site and for the federation.
///
/// Unlike [`BinaryStats`] the rates are plain numbers: an evaluation needs an
/// AUC, hence both classes, hence both rates are defined.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evaluation {
    pub auc: f64,
    /// Percentile-bootstrap interval at [`DEFAULT_CONFIDENCE`].
    pub auc_ci: (f64, f64),
    /// The stored (validation-chosen) threshold the rates below were taken at.
    pub threshold: f64,
    pub accuracy: f64,
    pub sensitivity: f64,
    pub specificity: f64,
    pub n: usize,
    pub positives: usize,
}

/// Evaluates scores against labels at a threshold chosen beforehand (on
/// validation data, by [`youden_threshold`]) — choosing it on the evaluated
/// set itself would overstate accuracy.
pub fn evaluate(
    scores: &[f64],
    labels: &[bool],
    threshold: f64,
    resamples: usize,
    seed: u64,
) -> Result<Evaluation, MetricsError> {
    let (positives, negatives) = validate_two_class(scores, labels)?;
    let auc = roc_auc(scores, labels)?;
    let auc_ci = bootstrap_auc_ci(scores, labels, resamples, DEFAULT_CONFIDENCE, seed)?;
    let stats = BinaryStats::at_threshold(scores, labels, threshold)?;
    let (Some(sensitivity), Some(specificity)) = (stats.sensitivity, stats.specificity) else {
        // Unreachable after validate_two_class, but reported rather than panicking.
        return Err(MetricsError::SingleClass {
            positives,
            negatives,
        });
    };
    Ok(Evaluation {
        auc,
        auc_ci,
        threshold,
        accuracy: stats.accuracy,
        sensitivity,
        specificity,
        n: scores.len(),
        positives,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: bool = true;
    const F: bool = false;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    /// O(n²) reference: average over all positive/negative pairs.
    fn pairwise_auc(scores: &[f64], labels: &[bool]) -> f64 {
        let (mut sum, mut pairs) = (0.0, 0.0);
        for (i, &si) in scores.iter().enumerate() {
            for (j, &sj) in scores.iter().enumerate() {
                if labels[i] && !labels[j] {
                    pairs += 1.0;
                    sum += if si > sj {
                        1.0
                    } else if si == sj {
                        0.5
                    } else {
                        0.0
                    };
                }
            }
        }
        sum / pairs
    }

    /// Random cohort with heavy ties (scores on a 0.1 grid) and both classes.
    fn random_cohort(rng: &mut StdRng) -> (Vec<f64>, Vec<bool>) {
        let n = rng.random_range(2..60);
        let mut labels: Vec<bool> = (0..n).map(|_| rng.random_bool(0.4)).collect();
        labels[0] = true;
        labels[1] = false;
        let scores = labels
            .iter()
            .map(|&l| {
                let shift = if l { 3 } else { 0 };
                f64::from(rng.random_range(0..8) + shift) / 10.0
            })
            .collect();
        (scores, labels)
    }

    #[test]
    fn auc_perfect_separation_is_one() {
        let auc = roc_auc(&[0.1, 0.2, 0.8, 0.9], &[F, F, T, T]).unwrap();
        assert_eq!(auc, 1.0);
    }

    #[test]
    fn auc_reversed_is_zero() {
        let auc = roc_auc(&[0.9, 0.8, 0.2, 0.1], &[F, F, T, T]).unwrap();
        assert_eq!(auc, 0.0);
    }

    #[test]
    fn auc_mixed_hand_computed() {
        // Positive 0.35 beats 0.1 but not 0.4; positive 0.8 beats both: 3/4.
        let auc = roc_auc(&[0.1, 0.4, 0.35, 0.8], &[F, F, T, T]).unwrap();
        assert!(close(auc, 0.75), "{auc}");
    }

    #[test]
    fn auc_all_tied_is_half() {
        let auc = roc_auc(&[0.3; 5], &[T, F, T, F, F]).unwrap();
        assert!(close(auc, 0.5), "{auc}");
    }

    #[test]
    fn auc_partial_tie_hand_computed() {
        // Pairs: (0.5+ vs 0.2) 1, (0.5+ vs 0.5) ½, (0.9 vs 0.2) 1, (0.9 vs 0.5) 1 → 3.5/4.
        let auc = roc_auc(&[0.2, 0.5, 0.5, 0.9], &[F, F, T, T]).unwrap();
        assert!(close(auc, 0.875), "{auc}");
    }

    #[test]
    fn auc_treats_negative_and_positive_zero_as_tied() {
        let auc = roc_auc(&[-0.0, 0.0], &[T, F]).unwrap();
        assert!(close(auc, 0.5), "{auc}");
    }

    #[test]
    fn auc_single_class_is_an_error_with_counts() {
        let err = roc_auc(&[0.1, 0.2, 0.3], &[T, T, T]).unwrap_err();
        assert!(matches!(
            err,
            MetricsError::SingleClass {
                positives: 3,
                negatives: 0
            }
        ));
        assert_eq!(
            err.to_string(),
            "AUC is undefined when all exams have the same label (3 positives, 0 negatives)"
        );
        assert!(matches!(
            roc_auc(&[0.1, 0.2], &[F, F]),
            Err(MetricsError::SingleClass {
                positives: 0,
                negatives: 2
            })
        ));
    }

    #[test]
    fn length_mismatch_is_an_error() {
        assert!(matches!(
            roc_auc(&[0.1, 0.2, 0.3], &[T, F]),
            Err(MetricsError::LengthMismatch {
                scores: 3,
                labels: 2
            })
        ));
        assert!(matches!(
            BinaryStats::at_threshold(&[0.1], &[T, F], 0.5),
            Err(MetricsError::LengthMismatch { .. })
        ));
    }

    #[test]
    fn empty_input_is_an_error() {
        assert!(matches!(roc_auc(&[], &[]), Err(MetricsError::Empty)));
        assert!(matches!(
            BinaryStats::at_threshold(&[], &[], 0.5),
            Err(MetricsError::Empty)
        ));
    }

    #[test]
    fn non_finite_scores_are_errors_with_index() {
        assert!(matches!(
            roc_auc(&[0.1, f64::NAN, 0.3], &[T, F, T]),
            Err(MetricsError::NonFinite { index: 1 })
        ));
        assert!(matches!(
            youden_threshold(&[0.1, 0.2, f64::INFINITY], &[T, F, T]),
            Err(MetricsError::NonFinite { index: 2 })
        ));
        assert!(matches!(
            bootstrap_auc_ci(&[f64::NEG_INFINITY, 0.2], &[T, F], 10, 0.95, 1),
            Err(MetricsError::NonFinite { index: 0 })
        ));
        assert!(matches!(
            BinaryStats::at_threshold(&[0.1, 0.2], &[T, F], f64::NAN),
            Err(MetricsError::NonFiniteThreshold { .. })
        ));
    }

    #[test]
    fn auc_matches_pairwise_reference_on_random_tied_data() {
        let mut rng = StdRng::seed_from_u64(0x5eed);
        for case in 0..2000 {
            let (scores, labels) = random_cohort(&mut rng);
            let fast = roc_auc(&scores, &labels).unwrap();
            let slow = pairwise_auc(&scores, &labels);
            assert!(close(fast, slow), "case {case}: {fast} vs {slow}");
        }
    }

    /// Well-overlapping synthetic cohort: positives shifted up by 0.3.
    fn overlapping_cohort(n: usize, seed: u64) -> (Vec<f64>, Vec<bool>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let labels: Vec<bool> = (0..n).map(|i| i % 3 == 0).collect();
        let scores = labels
            .iter()
            .map(|&l| rng.random::<f64>() + if l { 0.3 } else { 0.0 })
            .collect();
        (scores, labels)
    }

    #[test]
    fn bootstrap_ci_contains_point_auc_and_shrinks_with_more_data() {
        let (small_s, small_l) = overlapping_cohort(60, 7);
        let (large_s, large_l) = overlapping_cohort(1500, 7);
        let small_auc = roc_auc(&small_s, &small_l).unwrap();
        let large_auc = roc_auc(&large_s, &large_l).unwrap();
        let (slo, shi) = bootstrap_auc_ci(&small_s, &small_l, 500, 0.95, 42).unwrap();
        let (llo, lhi) = bootstrap_auc_ci(&large_s, &large_l, 500, 0.95, 42).unwrap();
        assert!(
            slo < small_auc && small_auc < shi,
            "{slo} {small_auc} {shi}"
        );
        assert!(
            llo < large_auc && large_auc < lhi,
            "{llo} {large_auc} {lhi}"
        );
        // Width scales like 1/√n: 25× the data should give roughly 1/5 the width.
        let (small_w, large_w) = (shi - slo, lhi - llo);
        assert!(large_w < small_w / 3.0, "{small_w} vs {large_w}");
        assert!((0.0..=1.0).contains(&slo) && (0.0..=1.0).contains(&shi));
    }

    #[test]
    fn bootstrap_matches_naive_resampling_and_percentiles() {
        // Replays the same RNG stream with explicit resampled vectors and the
        // O(n²) AUC, then checks the bounds sit at the 2.5% / 97.5% ranks.
        let (s, l) = overlapping_cohort(40, 11);
        let (resamples, seed) = (400, 77);
        let (lo, hi) = bootstrap_auc_ci(&s, &l, resamples, 0.95, seed).unwrap();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut aucs = Vec::new();
        while aucs.len() < resamples {
            let idx: Vec<usize> = (0..s.len()).map(|_| rng.random_range(0..s.len())).collect();
            let rs: Vec<f64> = idx.iter().map(|&i| s[i]).collect();
            let rl: Vec<bool> = idx.iter().map(|&i| l[i]).collect();
            if rl.iter().any(|&x| x) && rl.iter().any(|&x| !x) {
                aucs.push(pairwise_auc(&rs, &rl));
            }
        }
        let below = |t: f64| aucs.iter().filter(|&&a| a < t - 1e-12).count();
        let at_most = |t: f64| aucs.iter().filter(|&&a| a <= t + 1e-12).count();
        // Rank 0.025·399 = 9.975 lies between sorted[9] and sorted[10];
        // rank 0.975·399 = 389.025 between sorted[389] and sorted[390].
        assert!(below(lo) <= 10 && at_most(lo) >= 10, "{lo}");
        assert!(below(hi) <= 390 && at_most(hi) >= 390, "{hi}");
        assert!(lo < hi);
    }

    #[test]
    fn bootstrap_is_deterministic_per_seed() {
        let (s, l) = overlapping_cohort(80, 3);
        let a = bootstrap_auc_ci(&s, &l, 200, 0.95, 9).unwrap();
        let b = bootstrap_auc_ci(&s, &l, 200, 0.95, 9).unwrap();
        let c = bootstrap_auc_ci(&s, &l, 200, 0.95, 10).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn bootstrap_redraws_single_class_resamples() {
        // One positive among ten: ~35% of plain draws miss it. Redrawing keeps
        // every resample defined; the positive outranks all negatives, so each
        // defined resample has AUC exactly 1.
        let mut scores = vec![0.0; 10];
        let mut labels = vec![F; 10];
        for (i, s) in scores.iter_mut().enumerate() {
            *s = i as f64;
        }
        labels[9] = T;
        let (lo, hi) = bootstrap_auc_ci(&scores, &labels, 300, 0.9, 5).unwrap();
        assert_eq!((lo, hi), (1.0, 1.0));
    }

    #[test]
    fn bootstrap_rejects_bad_parameters() {
        let (s, l) = ([0.1, 0.9], [F, T]);
        assert!(matches!(
            bootstrap_auc_ci(&s, &l, 0, 0.95, 1),
            Err(MetricsError::NoResamples)
        ));
        for confidence in [0.0, 1.0, -0.5, f64::NAN] {
            assert!(matches!(
                bootstrap_auc_ci(&s, &l, 10, confidence, 1),
                Err(MetricsError::InvalidConfidence { .. })
            ));
        }
        assert!(matches!(
            bootstrap_auc_ci(&s, &[T, T], 10, 0.95, 1),
            Err(MetricsError::SingleClass { .. })
        ));
    }

    #[test]
    fn quantile_interpolates_linearly() {
        let v = [0.0, 1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile_sorted(&v, 0.0), 0.0);
        assert_eq!(quantile_sorted(&v, 1.0), 4.0);
        assert!(close(quantile_sorted(&v, 0.125), 0.5));
        assert!(close(quantile_sorted(&v, 0.5), 2.0));
    }

    #[test]
    fn youden_on_separable_set_classifies_perfectly() {
        let scores = [0.9, 0.1, 0.7, 0.3, 0.2, 0.65];
        let labels = [T, F, T, F, F, T];
        let t = youden_threshold(&scores, &labels).unwrap();
        assert!(close(t, 0.475), "{t}");
        let stats = BinaryStats::at_threshold(&scores, &labels, t).unwrap();
        assert_eq!((stats.fp, stats.fn_), (0, 0));
        assert_eq!(stats.accuracy, 1.0);
    }

    #[test]
    fn youden_breaks_ties_towards_the_lower_threshold() {
        // Sorted: 0.1F 0.35T 0.4F 0.8T. J at cut 0.225 is 1+½−1 = ½, at 0.375
        // it is 0, at 0.6 it is ½+1−1 = ½: the lower of the two optima wins.
        let t = youden_threshold(&[0.1, 0.4, 0.35, 0.8], &[F, F, T, T]).unwrap();
        assert!(close(t, 0.225), "{t}");
    }

    #[test]
    fn youden_without_signal_labels_everything_positive() {
        // All cuts have J ≤ 0, so the lowest score (J = 0) is kept.
        let t = youden_threshold(&[0.9, 0.1, 0.5], &[F, T, F]).unwrap();
        assert_eq!(t, 0.1);
        assert!(matches!(
            youden_threshold(&[0.5, 0.6], &[T, T]),
            Err(MetricsError::SingleClass { .. })
        ));
    }

    #[test]
    fn youden_separates_adjacent_floats() {
        let lo = 0.5_f64;
        let hi = lo.next_up();
        let t = youden_threshold(&[lo, hi], &[F, T]).unwrap();
        let stats = BinaryStats::at_threshold(&[lo, hi], &[F, T], t).unwrap();
        assert_eq!(stats.accuracy, 1.0);
        assert_eq!(cut_between(-f64::MAX, f64::MAX), 0.0);
        assert_eq!(cut_between(f64::MAX.next_down(), f64::MAX), f64::MAX);
    }

    #[test]
    fn youden_is_optimal_against_brute_force() {
        let mut rng = StdRng::seed_from_u64(0xac1_dead);
        for case in 0..500 {
            let (scores, labels) = random_cohort(&mut rng);
            let j = |t: f64| {
                let s = BinaryStats::at_threshold(&scores, &labels, t).unwrap();
                s.sensitivity.unwrap() + s.specificity.unwrap() - 1.0
            };
            let t = youden_threshold(&scores, &labels).unwrap();
            let best = scores.iter().map(|&s| j(s)).fold(f64::MIN, f64::max);
            assert!(
                (j(t) - best).abs() < 1e-12,
                "case {case}: {} < {best}",
                j(t)
            );
            // No lower score reaches the same J (ties go to the lower threshold).
            for &s in scores.iter().filter(|&&s| s < t) {
                assert!(j(s) < best - 1e-12, "case {case}: lower cut {s} ties");
            }
        }
    }

    #[test]
    fn binary_stats_hand_computed() {
        // ≥0.4 ⇒ positive: 0.4F fp, 0.8T tp, 0.5F fp; 0.1F tn; 0.35T fn.
        let stats =
            BinaryStats::at_threshold(&[0.1, 0.4, 0.35, 0.8, 0.5], &[F, F, T, T, F], 0.4).unwrap();
        assert_eq!((stats.tp, stats.fp, stats.tn, stats.fn_), (1, 2, 1, 1));
        assert!(close(stats.accuracy, 0.4));
        assert_eq!(stats.sensitivity, Some(0.5));
        assert!(close(stats.specificity.unwrap(), 1.0 / 3.0));
    }

    #[test]
    fn binary_stats_single_class_has_no_undefined_rate() {
        let stats = BinaryStats::at_threshold(&[0.1, 0.9], &[F, F], 0.5).unwrap();
        assert_eq!((stats.tn, stats.fp), (1, 1));
        assert_eq!(stats.sensitivity, None);
        assert_eq!(stats.specificity, Some(0.5));
        assert_eq!(stats.accuracy, 0.5);
    }

    #[test]
    fn evaluate_combines_the_metrics() {
        let scores = [0.1, 0.4, 0.35, 0.8, 0.5, 0.2];
        let labels = [F, F, T, T, F, T];
        let e = evaluate(&scores, &labels, 0.4, 200, 1).unwrap();
        // Positives 0.35, 0.8, 0.2 vs negatives 0.1, 0.4, 0.5: 1+3+1 = 5 of 9.
        assert!(close(e.auc, 5.0 / 9.0), "{}", e.auc);
        assert_eq!((e.n, e.positives, e.threshold), (6, 3, 0.4));
        // ≥0.4: tp {0.8}, fp {0.4, 0.5}, tn {0.1}, fn {0.35, 0.2}.
        assert!(close(e.accuracy, 2.0 / 6.0));
        assert!(close(e.sensitivity, 1.0 / 3.0));
        assert!(close(e.specificity, 1.0 / 3.0));
        assert!(e.auc_ci.0 <= e.auc_ci.1);
        assert_eq!(
            e.auc_ci,
            bootstrap_auc_ci(&scores, &labels, 200, DEFAULT_CONFIDENCE, 1).unwrap()
        );
        assert!(matches!(
            evaluate(&scores, &[T; 6], 0.4, 200, 1),
            Err(MetricsError::SingleClass { .. })
        ));
    }
}
