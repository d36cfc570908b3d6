//! Training provenance and the model card rendered from it. Provenance holds
//! only counts and aggregate metrics: no exam ids, no patient data.

use serde::{Deserialize, Serialize};

use super::bundle::BundleConfig;
use crate::metrics;
use crate::model::SliceEmbedding;

/// Where the bundle's weights came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Origin {
    /// A federated fine-tuning job on the aggregator.
    Federated {
        job: String,
        init_from: Option<String>,
        rounds: u32,
        model_version: u32,
        model_digest: String,
    },
    /// `fedslice train` on one machine.
    Centralised { run: String },
}

/// Validation of the exported model on one site's exams or all of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidationRow {
    /// A site name, or `pooled`.
    pub scope: String,
    pub exams: usize,
    pub positives: Option<usize>,
    pub auc: Option<f64>,
    pub auc_ci: Option<[f64; 2]>,
    pub accuracy: Option<f64>,
    pub sensitivity: Option<f64>,
    pub specificity: Option<f64>,
    /// How the numbers were obtained.
    pub method: String,
}

impl ValidationRow {
    /// From per-exam scores at `threshold`, with a bootstrap CI. A one-class
    /// set gives a row with counts only and says why.
    pub fn from_scores(scope: &str, scores: &[f64], labels: &[bool], threshold: f64) -> Self {
        let positives = labels.iter().filter(|&&l| l).count();
        let method = "held-out exams; AUC 95% CI by percentile bootstrap (1000 resamples)";
        match metrics::evaluate(scores, labels, threshold, 1000, 0) {
            Ok(e) => Self {
                scope: scope.into(),
                exams: labels.len(),
                positives: Some(positives),
                auc: Some(e.auc),
                auc_ci: Some([e.auc_ci.0, e.auc_ci.1]),
                accuracy: Some(e.accuracy),
                sensitivity: Some(e.sensitivity),
                specificity: Some(e.specificity),
                method: method.into(),
            },
            Err(err) => Self::counts_only(scope, labels.len(), Some(positives), &err.to_string()),
        }
    }

    /// From a site's reported AUC and class counts, with the Hanley–McNeil
    /// standard error (all a federated site reports: no per-exam scores).
    pub fn from_site_auc(scope: &str, auc: f64, positives: usize, exams: usize) -> Self {
        let ci = hanley_mcneil_se(auc, positives, exams.saturating_sub(positives))
            .map(|se| [(auc - 1.96 * se).max(0.0), (auc + 1.96 * se).min(1.0)]);
        Self {
            scope: scope.into(),
            exams,
            positives: Some(positives),
            auc: Some(auc),
            auc_ci: ci,
            accuracy: None,
            sensitivity: None,
            specificity: None,
            method: "the site's validation exams, scored on the global model the site received at the start of the latest round that reported them (one round before the exported model); 95% CI from the Hanley–McNeil standard error".into(),
        }
    }

    pub fn counts_only(scope: &str, exams: usize, positives: Option<usize>, why: &str) -> Self {
        Self {
            scope: scope.into(),
            exams,
            positives,
            auc: None,
            auc_ci: None,
            accuracy: None,
            sensitivity: None,
            specificity: None,
            method: format!("no AUC: {why}"),
        }
    }

    /// Fixed-effect (inverse-variance) pooling of site AUCs, for when only
    /// per-site aggregates exist. `None` when the sites' counts overflow a
    /// sum: they are self-reported, and a wrapped total reads as a plausible
    /// number in the card.
    pub fn pooled_fixed_effect(sites: &[ValidationRow]) -> Option<Self> {
        let mut weight_sum = 0.0;
        let mut weighted = 0.0;
        for row in sites {
            let (Some(auc), Some(pos)) = (row.auc, row.positives) else {
                continue;
            };
            if let Some(se) = hanley_mcneil_se(auc, pos, row.exams.saturating_sub(pos)) {
                let w = 1.0 / (se * se).max(1e-6);
                weight_sum += w;
                weighted += w * auc;
            }
        }
        let exams = sites
            .iter()
            .try_fold(0usize, |sum, r| sum.checked_add(r.exams))?;
        // Unknown (inner `None`) once a site did not report its positives;
        // an overflow gives up on the pooled row (outer `None`).
        let positives = sites
            .iter()
            .try_fold(Some(0usize), |sum, r| match (sum, r.positives) {
                (Some(sum), Some(p)) => sum.checked_add(p).map(Some),
                _ => Some(None),
            })?;
        if weight_sum == 0.0 {
            return Some(Self::counts_only(
                "pooled",
                exams,
                positives,
                "no site reported an AUC",
            ));
        }
        let auc = weighted / weight_sum;
        let se = (1.0 / weight_sum).sqrt();
        Some(Self {
            scope: "pooled".into(),
            exams,
            positives,
            auc: Some(auc),
            auc_ci: Some([(auc - 1.96 * se).max(0.0), (auc + 1.96 * se).min(1.0)]),
            accuracy: None,
            sensitivity: None,
            specificity: None,
            method: "fixed-effect (inverse-variance) pooling of the site AUCs".into(),
        })
    }
}

/// Hanley & McNeil (1982) standard error of an AUC; `None` without both classes.
pub fn hanley_mcneil_se(auc: f64, positives: usize, negatives: usize) -> Option<f64> {
    if positives == 0 || negatives == 0 {
        return None;
    }
    let (np, nn) = (positives as f64, negatives as f64);
    let q1 = auc / (2.0 - auc);
    let q2 = 2.0 * auc * auc / (1.0 + auc);
    let var = (auc * (1.0 - auc) + (np - 1.0) * (q1 - auc * auc) + (nn - 1.0) * (q2 - auc * auc))
        / (np * nn);
    Some(var.max(0.0).sqrt())
}

/// `provenance.json`: how the model was trained, in counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    pub origin: Origin,
    pub sites: usize,
    /// Exams used for self-supervised pretraining (labels unused), when known.
    pub pretrain_exams: Option<usize>,
    /// Labelled exams used for fine-tuning, when known.
    pub labelled_exams: Option<usize>,
    pub validation: Vec<ValidationRow>,
    /// Seconds since the Unix epoch.
    pub exported_at: u64,
    /// Free-form extras (per-round site counts, …).
    #[serde(default)]
    pub details: serde_json::Value,
}

/// Seconds since the Unix epoch, for `Provenance::exported_at`.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or("—".into(), |v| format!("{v:.3}"))
}

/// MODEL_CARD.md.
pub fn render_model_card(config: &BundleConfig, p: &Provenance) -> String {
    let arch = &config.architecture;
    let vit = &arch.encoder;
    let origin = match &p.origin {
        Origin::Federated {
            job,
            init_from,
            rounds,
            model_version,
            model_digest,
        } => format!(
            "Federated fine-tuning job `{job}` ({rounds} rounds, global model v{model_version}, digest `{model_digest}`), initialised from {}.",
            init_from
                .as_deref()
                .map_or("a randomly initialised encoder".to_owned(), |j| format!(
                    "the GMML-pretrained encoder of job `{j}`"
                ))
        ),
        Origin::Centralised { run } => {
            format!("Centralised training with `fedslice train` (run `{run}`).")
        }
    };
    let count = |v: Option<usize>| v.map_or("not recorded".into(), |n| n.to_string());
    let mut rows = String::new();
    for r in &p.validation {
        let ci = r
            .auc_ci
            .map_or("—".into(), |[lo, hi]| format!("{lo:.3}–{hi:.3}"));
        rows.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.scope,
            r.exams,
            r.positives.map_or("—".into(), |n| n.to_string()),
            fmt_opt(r.auc),
            ci,
            fmt_opt(r.accuracy),
            fmt_opt(r.sensitivity),
            fmt_opt(r.specificity),
        ));
    }
    let methods: Vec<String> = p
        .validation
        .iter()
        .map(|r| format!("- {}: {}", r.scope, r.method))
        .collect();
    let embedding = format!(
        "{} (timm global_pool=\"{}\")",
        match arch.slice_embedding {
            SliceEmbedding::MeanPatch => "mean of the encoder's normalised patch tokens",
            SliceEmbedding::MaxPatch => "element-wise max of the encoder's normalised patch tokens",
            SliceEmbedding::Cls => "the encoder's CLS token",
        },
        arch.slice_embedding.timm_global_pool()
    );
    format!(
        "# Model card: fedslice ACL-tear classifier\n\n\
         **Not for diagnostic use.** Research software; it has not been cleared or approved by any regulator.\n\n\
         ## Intended use\n\
         - Input: one knee MRI exam, the {plane} series, as DICOM, NIfTI or an MRNet `.npy` volume.\n\
         - Output: the probability that the anterior cruciate ligament is torn, a label at the stored threshold ({threshold:.4}), and a score for each slice.\n\
         - Users: research groups and radiology departments evaluating decision support, with a radiologist reading every exam.\n\n\
         ## Not intended for\n\
         - Diagnosis or triage without a radiologist's read; any use as a medical device.\n\
         - Other planes, other joints, other tears (PCL, meniscus), post-operative knees or paediatric knees, unless validated locally.\n\
         - Populations or scanners unlike the training sites' without local validation: check the per-site numbers below.\n\n\
         ## Model\n\
         - Encoder: Vision Transformer, {depth} blocks, width {dim}, {heads} heads, patch {patch}, input {size}×{size}, one channel (timm `{timm}`).\n\
         - Slice embedding: {embedding}.\n\
         - Exam pooling: {pooling:?} over slice embeddings ({pool_depth} block(s), slice table {max_slices}); one logit; probability = sigmoid(logit).\n\
         - Preprocessing: {framing}\n\
         - Self-supervised pretraining: GMML (group masked model learning) on unlabelled slices, then supervised fine-tuning.\n\n\
         ## Training provenance\n\
         - {origin}\n\
         - Sites: {sites}. Pretraining exams: {pretrain}. Labelled exams: {labelled}.\n\
         - No images, headers or patient identifiers left the sites; the aggregator saw only model updates and aggregate metrics.\n\
         - fedslice {version}; bundle format {format_version}. Threshold: {threshold_source}.\n\n\
         {privacy}\
         ## Validation\n\n\
         | scope | exams | torn | AUC | AUC 95% CI | accuracy | sensitivity | specificity |\n\
         |---|---|---|---|---|---|---|---|\n\
         {rows}\n\
         {methods}\n\n\
         ## Known limits\n\
         - Validated only on the exams above; small validation sets give wide intervals.\n\
         - A cohort generated by fedslice's phantom is synthetic: numbers on it say the software works, not that the model is clinically useful.\n\
         - The probability is not calibrated across sites; the threshold was chosen on validation exams and may need local adjustment.\n\
         - Per-slice scores are the model's probability for each slice taken alone: a pointer for review, not a localisation.\n",
        plane = format!("{:?}", config.plane).to_lowercase(),
        threshold = config.threshold,
        depth = vit.depth,
        dim = vit.embed_dim,
        heads = vit.num_heads,
        patch = vit.patch_size,
        size = vit.image_size,
        timm = config
            .timm
            .model_name
            .as_deref()
            .unwrap_or("VisionTransformer, custom size"),
        pooling = arch.pooling,
        pool_depth = arch.pool_depth,
        max_slices = arch.max_slices,
        framing = config.preprocess.describe(),
        sites = p.sites,
        pretrain = count(p.pretrain_exams),
        labelled = count(p.labelled_exams),
        version = config.fedslice_version,
        format_version = config.format_version,
        threshold_source = config.threshold_source,
        methods = methods.join("\n"),
        privacy = privacy_section(config),
    )
}

/// The card's Privacy section: the number, what it means, and what it does not cover.
fn privacy_section(config: &BundleConfig) -> String {
    let Some(p) = &config.privacy else {
        return "## Privacy\n\
                - No differential privacy: the weights were trained without clipping and noise, so \
                no bound is stated on what they reveal about any site or patient.\n\n"
            .into();
    };
    format!(
        "## Privacy\n\
         - (ε, δ) = ({eps:.4}, {delta:e}), site-level differential privacy (DP-FedAvg: clipped \
         updates, uniform weights, Gaussian noise added once per round by the aggregator).\n\
         - Unit of privacy: {unit}.\n\
         - What it means: {meaning}\n\
         - Mechanism: noise multiplier z = {z}, clip norm C = {c}, fixed denominator m = {m} sites, \
         {rounds} noised rounds of this job; {releases} noised releases in the consortium's ledger \
         (pretraining and fine-tuning jobs composed). Sampling: {sampling}. Budget: ε ≤ {budget}.\n\
         - Accountant: {accountant}.\n\
         - Not covered: {not_covered}.\n\n",
        eps = p.epsilon,
        delta = p.delta,
        unit = p.unit,
        meaning = p.meaning(),
        z = p.noise_multiplier,
        c = p.clip_norm,
        m = p.expected_sites,
        rounds = p.rounds,
        releases = p.ledger_releases,
        sampling = p.sampling,
        budget = p.epsilon_budget,
        accountant = p.accountant,
        not_covered = p.not_covered,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hanley_mcneil_matches_a_hand_computation() {
        // AUC 0.8, 50/50: Q1 = 0.8/1.2, Q2 = 1.28/1.8;
        // var = (0.16 + 49(Q1 − 0.64) + 49(Q2 − 0.64)) / 2500 = 0.0019804.
        let se = hanley_mcneil_se(0.8, 50, 50).unwrap();
        assert!((se - 0.0019804f64.sqrt()).abs() < 1e-6, "{se}");
        assert!(hanley_mcneil_se(0.8, 0, 10).is_none());
    }

    #[test]
    fn pooling_weights_the_more_certain_site() {
        let big = ValidationRow::from_site_auc("a", 0.9, 100, 200);
        let small = ValidationRow::from_site_auc("b", 0.6, 5, 10);
        let pooled = ValidationRow::pooled_fixed_effect(&[big, small]).unwrap();
        let auc = pooled.auc.unwrap();
        assert!(auc > 0.85 && auc < 0.9, "{auc}");
        let [lo, hi] = pooled.auc_ci.unwrap();
        assert!(lo < auc && auc < hi);
        assert_eq!((pooled.exams, pooled.positives), (210, Some(105)));
    }

    #[test]
    fn pooling_refuses_counts_that_overflow() {
        // Security review M6: a site's 1e300 exams became usize::MAX, and the
        // pooled total wrapped to a plausible 23 in release builds.
        let honest = ValidationRow::from_site_auc("a", 0.8, 5, 12);
        let hostile = ValidationRow::from_site_auc("c", 0.8, 1, usize::MAX);
        assert_eq!(ValidationRow::pooled_fixed_effect(&[honest, hostile]), None);
        let huge_positives = ValidationRow::counts_only("d", 1, Some(usize::MAX), "");
        let honest = ValidationRow::from_site_auc("a", 0.8, 5, 12);
        assert_eq!(
            ValidationRow::pooled_fixed_effect(&[honest, huge_positives]),
            None
        );
    }
}
