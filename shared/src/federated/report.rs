//! What a site says about its round besides the update itself, and how the
//! aggregator combines those reports (Flower's `aggregate_evaluate`).
//!
//! On the wire a report is the payload header's `metrics` object of numbers,
//! with the same seven keys agents have always sent, so old payloads and the
//! rounds an aggregator stored before this type existed still read. Inside
//! the code it is [`SiteReport`], so a misspelt key is a compile error rather
//! than a bundle that silently falls back to threshold 0.5.
//!
//! A report is self-declared by a site the aggregator cannot check, so every
//! field is range-checked when it is parsed (security review M6: an AUC of
//! 7.5, a validation exam count of 1e300 and a threshold of 0.999 all used
//! to reach the model card and the bundle), and [`consensus_threshold`] is a
//! median that one site cannot drag.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::export::ValidationRow;

/// The JSON keys, in one place: the protocol since the first release.
mod key {
    pub const LOSS_FIRST: &str = "loss_first";
    pub const LOSS_LAST: &str = "loss_last";
    pub const STEPS: &str = "steps";
    pub const VAL_EXAMS: &str = "val_exams";
    pub const VAL_POSITIVES: &str = "val_positives";
    pub const VAL_AUC: &str = "val_auc";
    pub const VAL_THRESHOLD: &str = "val_threshold";
    pub const ALL: [&str; 7] = [
        LOSS_FIRST,
        LOSS_LAST,
        STEPS,
        VAL_EXAMS,
        VAL_POSITIVES,
        VAL_AUC,
        VAL_THRESHOLD,
    ];
}

/// Most validation exams one site may report. Real cohorts are thousands of
/// exams; the bound keeps a site's count from dominating a sum or wrapping
/// one (the review's 1e300 became `usize::MAX` in the card).
pub const MAX_REPORTED_EXAMS: u64 = 10_000_000;

/// Most optimisation steps one site may report for a round; far above any
/// real round, and small enough to be exact in an `f64`.
pub const MAX_REPORTED_STEPS: u64 = 1_000_000_000;

/// Mean training loss of a site's first and last local epoch of the round.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochLosses {
    pub first: f64,
    pub last: f64,
}

/// AUC and Youden threshold of the global model on the site's validation
/// exams; only computed when those exams hold both classes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Discrimination {
    pub auc: f64,
    pub threshold: f64,
}

/// How the global model the site received did on its validation exams
/// (fine-tuning only). Aggregates only: no per-exam scores leave a site.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ValidationSummary {
    pub exams: u64,
    /// Torn exams among them. `None` in reports from agents that predate
    /// `val_positives`, which stored rounds may still hold.
    pub positives: Option<u64>,
    pub discrimination: Option<Discrimination>,
}

/// One site's report for one round. Serialises to, and parses from, the
/// payload header's `metrics` object; parsing validates every field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "BTreeMap<String, f64>", into = "BTreeMap<String, f64>")]
pub struct SiteReport {
    pub losses: Option<EpochLosses>,
    pub steps: Option<u64>,
    pub validation: Option<ValidationSummary>,
}

/// Why a site's report is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReportError {
    #[error("unknown metric `{0}`; a site reports only {keys}", keys = key::ALL.join(", "))]
    Unknown(String),
    #[error("metric `{name}` is {value:?}; {expected}")]
    OutOfRange {
        name: &'static str,
        value: f64,
        expected: String,
    },
    #[error("metric `{present}` comes without `{missing}`")]
    Incomplete {
        present: &'static str,
        missing: &'static str,
    },
}

fn out_of_range(name: &'static str, value: f64, expected: impl Into<String>) -> ReportError {
    ReportError::OutOfRange {
        name,
        value,
        expected: expected.into(),
    }
}

/// A count sent as a JSON number: a whole number in `0..=max`. The range
/// check comes first so NaN, infinities and 1e300 never reach the cast.
fn count(name: &'static str, value: f64, max: u64) -> Result<u64, ReportError> {
    if value.is_finite() && value >= 0.0 && value <= max as f64 && value.fract() == 0.0 {
        Ok(value as u64)
    } else {
        Err(out_of_range(
            name,
            value,
            format!("a count is a whole number from 0 to {max}"),
        ))
    }
}

/// A probability-scale number (AUC, decision threshold) in [0, 1].
fn unit(name: &'static str, value: f64) -> Result<f64, ReportError> {
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(out_of_range(name, value, "it lies in [0, 1]"))
    }
}

/// A training loss: the site's losses (masked L1, binary cross-entropy) are
/// finite and never negative.
fn loss(name: &'static str, value: f64) -> Result<f64, ReportError> {
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(out_of_range(
            name,
            value,
            "a loss is finite and not negative",
        ))
    }
}

/// Both of a pair of keys, or neither.
fn pair(
    metrics: &BTreeMap<String, f64>,
    a: &'static str,
    b: &'static str,
) -> Result<Option<(f64, f64)>, ReportError> {
    match (metrics.get(a), metrics.get(b)) {
        (Some(&x), Some(&y)) => Ok(Some((x, y))),
        (None, None) => Ok(None),
        (Some(_), None) => Err(ReportError::Incomplete {
            present: a,
            missing: b,
        }),
        (None, Some(_)) => Err(ReportError::Incomplete {
            present: b,
            missing: a,
        }),
    }
}

impl SiteReport {
    /// Parses and validates a payload header's `metrics`: every key known,
    /// every number in range, and the numbers consistent with one another.
    pub fn from_metrics(metrics: &BTreeMap<String, f64>) -> Result<Self, ReportError> {
        if let Some(unknown) = metrics.keys().find(|k| !key::ALL.contains(&k.as_str())) {
            return Err(ReportError::Unknown(unknown.clone()));
        }
        let losses = pair(metrics, key::LOSS_FIRST, key::LOSS_LAST)?
            .map(|(first, last)| {
                Ok::<_, ReportError>(EpochLosses {
                    first: loss(key::LOSS_FIRST, first)?,
                    last: loss(key::LOSS_LAST, last)?,
                })
            })
            .transpose()?;
        let steps = metrics
            .get(key::STEPS)
            .map(|&v| count(key::STEPS, v, MAX_REPORTED_STEPS))
            .transpose()?;
        let discrimination = pair(metrics, key::VAL_AUC, key::VAL_THRESHOLD)?
            .map(|(auc, threshold)| {
                Ok::<_, ReportError>(Discrimination {
                    auc: unit(key::VAL_AUC, auc)?,
                    threshold: unit(key::VAL_THRESHOLD, threshold)?,
                })
            })
            .transpose()?;
        let validation = match metrics.get(key::VAL_EXAMS) {
            None => {
                for dependent in [key::VAL_POSITIVES, key::VAL_AUC] {
                    if metrics.contains_key(dependent) {
                        return Err(ReportError::Incomplete {
                            present: dependent,
                            missing: key::VAL_EXAMS,
                        });
                    }
                }
                None
            }
            Some(&exams) => {
                let exams = count(key::VAL_EXAMS, exams, MAX_REPORTED_EXAMS)?;
                let positives = metrics
                    .get(key::VAL_POSITIVES)
                    .map(|&p| {
                        let p = count(key::VAL_POSITIVES, p, MAX_REPORTED_EXAMS)?;
                        if p > exams {
                            return Err(out_of_range(
                                key::VAL_POSITIVES,
                                p as f64,
                                format!("it cannot exceed `{}` ({exams})", key::VAL_EXAMS),
                            ));
                        }
                        Ok(p)
                    })
                    .transpose()?;
                // An AUC needs a torn and an intact exam; a site computes one
                // only then, so anything else is not an honest report.
                if discrimination.is_some() {
                    let both_classes = match positives {
                        Some(p) => p > 0 && p < exams,
                        None => exams >= 2,
                    };
                    if !both_classes {
                        return Err(out_of_range(
                            key::VAL_AUC,
                            discrimination.map_or(f64::NAN, |d| d.auc),
                            format!(
                                "an AUC needs validation exams of both classes, but the site reports {exams} exams with {} torn",
                                positives.map_or("an unknown number".to_owned(), |p| p.to_string())
                            ),
                        ));
                    }
                }
                Some(ValidationSummary {
                    exams,
                    positives,
                    discrimination,
                })
            }
        };
        Ok(Self {
            losses,
            steps,
            validation,
        })
    }

    /// The payload header's `metrics`: the same keys and numbers agents have
    /// always sent.
    pub fn to_metrics(&self) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        if let Some(l) = self.losses {
            out.insert(key::LOSS_FIRST.into(), l.first);
            out.insert(key::LOSS_LAST.into(), l.last);
        }
        if let Some(steps) = self.steps {
            out.insert(key::STEPS.into(), steps as f64);
        }
        if let Some(v) = self.validation {
            out.insert(key::VAL_EXAMS.into(), v.exams as f64);
            if let Some(p) = v.positives {
                out.insert(key::VAL_POSITIVES.into(), p as f64);
            }
            if let Some(d) = v.discrimination {
                out.insert(key::VAL_AUC.into(), d.auc);
                out.insert(key::VAL_THRESHOLD.into(), d.threshold);
            }
        }
        out
    }

    /// The global model's validation AUC on this site, when it has one.
    pub fn auc(&self) -> Option<f64> {
        self.discrimination().map(|d| d.auc)
    }

    fn discrimination(&self) -> Option<Discrimination> {
        self.validation.and_then(|v| v.discrimination)
    }

    /// This site's row in the model card's validation table.
    pub fn validation_row(&self, site: &str) -> ValidationRow {
        // Counts are bounded by MAX_REPORTED_EXAMS once parsed; saturate
        // rather than wrap should a report built in code exceed usize.
        let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        let exams = self.validation.map_or(0, |v| size(v.exams));
        let positives = self.validation.and_then(|v| v.positives).map(size);
        match (self.auc(), positives) {
            (Some(auc), Some(pos)) => ValidationRow::from_site_auc(site, auc, pos, exams),
            (Some(auc), None) => {
                let mut row = ValidationRow::counts_only(site, exams, None, "");
                row.auc = Some(auc);
                row.method =
                    "site's validation exams; the site did not report its class counts, so no CI"
                        .into();
                row
            }
            (None, _) => ValidationRow::counts_only(
                site,
                exams,
                positives,
                "the site's validation exams do not hold both classes",
            ),
        }
    }
}

impl TryFrom<BTreeMap<String, f64>> for SiteReport {
    type Error = ReportError;
    fn try_from(metrics: BTreeMap<String, f64>) -> Result<Self, ReportError> {
        Self::from_metrics(&metrics)
    }
}

impl From<SiteReport> for BTreeMap<String, f64> {
    fn from(report: SiteReport) -> Self {
        report.to_metrics()
    }
}

/// How [`consensus_threshold`] is computed, for the bundle and model card.
pub const CONSENSUS_THRESHOLD_METHOD: &str = "median of the sites' Youden thresholds on their validation exams in the last round, each site weighted by its validation exams up to the median site's count";

/// The consortium's decision threshold from the sites' Youden thresholds:
/// their weighted median, each site weighted by its validation exams but at
/// most by the median site's count.
///
/// Why not the exam-weighted mean used before: a site controls both its
/// threshold and its count, so one site reporting 0.999 with a huge count
/// set the threshold alone (security review M6). With the weight capped at
/// the median site's, and a median taken, one site among three or more
/// moves the result at most to a neighbouring honest site's threshold;
/// small sites still weigh less, their thresholds being noisier. A tie at
/// exactly half the weight takes the midpoint, as the plain median does for
/// two sites. `None` when no site reported a threshold.
pub fn consensus_threshold<'a>(reports: impl IntoIterator<Item = &'a SiteReport>) -> Option<f64> {
    let mut points: Vec<(f64, u64)> = reports
        .into_iter()
        .filter_map(|r| {
            let v = r.validation?;
            Some((v.discrimination?.threshold, v.exams))
        })
        .collect();
    if points.is_empty() {
        return None;
    }
    let mut counts: Vec<u64> = points.iter().map(|&(_, n)| n).collect();
    counts.sort_unstable();
    let cap = counts[(counts.len() - 1) / 2];
    // Every reporting site counts at least once, even with no exams given.
    let weight = |n: u64| u128::from(n.min(cap).max(1));
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    // u128: even unvalidated u64 counts cannot overflow the sum.
    let total: u128 = points.iter().map(|&(_, n)| weight(n)).sum();
    let mut below = 0u128;
    for (i, &(threshold, n)) in points.iter().enumerate() {
        below += weight(n);
        if 2 * below > total {
            return Some(threshold);
        }
        if 2 * below == total {
            let next = points.get(i + 1).map_or(threshold, |p| p.0);
            return Some((threshold + next) / 2.0);
        }
    }
    points.last().map(|p| p.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finetune_report(threshold: f64, exams: u64, positives: u64) -> SiteReport {
        SiteReport {
            losses: Some(EpochLosses {
                first: 0.69,
                last: 0.41,
            }),
            steps: Some(30),
            validation: Some(ValidationSummary {
                exams,
                positives: Some(positives),
                discrimination: Some(Discrimination {
                    auc: 0.8125,
                    threshold,
                }),
            }),
        }
    }

    fn metrics(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|&(k, v)| (k.to_owned(), v)).collect()
    }

    fn refused(pairs: &[(&str, f64)], expect: &str) {
        match SiteReport::from_metrics(&metrics(pairs)) {
            Ok(r) => panic!("accepted {pairs:?} as {r:?}"),
            Err(e) => {
                let message = e.to_string();
                assert!(
                    message.contains(expect),
                    "expected `{expect}` in: {message}"
                );
            }
        }
    }

    #[test]
    fn a_valid_report_serialises_to_the_old_keys_and_back() {
        let report = finetune_report(0.47, 12, 5);
        let json = serde_json::to_string(&report).unwrap();
        // The exact object agents sent before the type existed (a
        // BTreeMap<String, f64>: sorted keys, counts as floats).
        assert_eq!(
            json,
            r#"{"loss_first":0.69,"loss_last":0.41,"steps":30.0,"val_auc":0.8125,"val_exams":12.0,"val_positives":5.0,"val_threshold":0.47}"#
        );
        let old: BTreeMap<String, f64> = serde_json::from_str(&json).unwrap();
        assert_eq!(old, report.to_metrics());
        assert_eq!(serde_json::from_str::<SiteReport>(&json).unwrap(), report);

        // A pretraining report, one without both classes, one from an agent
        // that predates val_positives, and an empty one all read back.
        for pairs in [
            &[("loss_first", 0.3), ("loss_last", 0.2), ("steps", 400.0)][..],
            &[("steps", 3.0), ("val_exams", 4.0), ("val_positives", 0.0)],
            &[
                ("val_exams", 9.0),
                ("val_auc", 0.75),
                ("val_threshold", 0.5),
            ],
            &[],
        ] {
            let m = metrics(pairs);
            let parsed = SiteReport::from_metrics(&m).unwrap();
            assert_eq!(parsed.to_metrics(), m, "{pairs:?}");
        }
    }

    #[test]
    fn out_of_range_metrics_are_refused_with_their_reason() {
        // The review's hostile site-c.
        refused(
            &[
                ("val_exams", 12.0),
                ("val_positives", 5.0),
                ("val_auc", 7.5),
                ("val_threshold", 0.4),
            ],
            "metric `val_auc` is 7.5; it lies in [0, 1]",
        );
        refused(
            &[("val_exams", 1e300), ("val_positives", 5.0)],
            "metric `val_exams` is 1e300; a count is a whole number",
        );
        refused(
            &[("val_exams", 12.0), ("val_positives", -5.0)],
            "`val_positives` is -5.0",
        );
        refused(
            &[("val_exams", 12.0), ("val_positives", 13.0)],
            "cannot exceed `val_exams` (12)",
        );
        refused(&[("val_exams", 12.5)], "`val_exams` is 12.5");
        refused(
            &[("loss_first", f64::NAN), ("loss_last", 0.2)],
            "`loss_first` is NaN",
        );
        refused(
            &[("loss_first", 0.3), ("loss_last", f64::INFINITY)],
            "`loss_last` is inf",
        );
        refused(&[("loss_first", -0.3), ("loss_last", 0.2)], "not negative");
        refused(
            &[
                ("val_exams", 12.0),
                ("val_auc", 0.8),
                ("val_threshold", 1.5),
            ],
            "`val_threshold` is 1.5",
        );
        refused(&[("steps", 1e17)], "`steps` is 1e17");
        refused(
            &[
                ("val_exams", 12.0),
                ("val_positives", 0.0),
                ("val_auc", 0.8),
                ("val_threshold", 0.5),
            ],
            "both classes",
        );
        refused(
            &[("val_auc", 0.8), ("val_threshold", 0.5)],
            "without `val_exams`",
        );
        refused(
            &[("val_exams", 8.0), ("val_threshold", 0.5)],
            "without `val_auc`",
        );
        refused(&[("loss_first", 0.3)], "without `loss_last`");
        refused(&[("val_treshold", 0.5)], "unknown metric `val_treshold`");
        // Parsing stored JSON goes through the same checks.
        assert!(
            serde_json::from_str::<SiteReport>(
                r#"{"val_exams":12.0,"val_auc":7.5,"val_threshold":0.5}"#
            )
            .is_err()
        );
    }

    #[test]
    fn one_outlier_site_cannot_drag_the_consensus_threshold() {
        let honest = [finetune_report(0.45, 12, 5), finetune_report(0.49, 14, 6)];
        // The review's site-c: threshold 0.999 with the largest count that
        // passes validation (the old weighted mean gave ~0.999).
        for outlier in [
            finetune_report(0.999, MAX_REPORTED_EXAMS, 1),
            finetune_report(0.0, MAX_REPORTED_EXAMS, 1),
            finetune_report(1.0, 2, 1),
        ] {
            let all = [honest[0].clone(), honest[1].clone(), outlier.clone()];
            let t = consensus_threshold(&all).unwrap();
            assert!((0.45..=0.49).contains(&t), "{t} with outlier {outlier:?}");
        }
        // Unchanged where there is nothing to resist: one site, equal sites.
        assert_eq!(consensus_threshold(&honest[..1]), Some(0.45));
        let equal = [finetune_report(0.4, 10, 5), finetune_report(0.6, 10, 5)];
        assert!((consensus_threshold(&equal).unwrap() - 0.5).abs() < 1e-12);
        // Sites without a threshold are left out; none at all gives None.
        let none = SiteReport::default();
        assert_eq!(consensus_threshold([&none, &honest[1]]), Some(0.49));
        assert_eq!(consensus_threshold([&none]), None);
        // A small site still weighs less than the typical one.
        let uneven = [
            finetune_report(0.3, 4, 2),
            finetune_report(0.5, 20, 5),
            finetune_report(0.52, 20, 5),
            finetune_report(0.54, 20, 5),
        ];
        assert_eq!(consensus_threshold(&uneven), Some(0.52));
    }
}
