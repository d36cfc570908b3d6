//! The method end to end on a small generated cohort.

use std::sync::Arc;

use burn::tensor::Device;
use fedslice::data::phantom::{PhantomConfig, generate_site};
use fedslice::data::preprocess::{PreparedExam, PreprocessConfig, prepare};
use fedslice::experiment::{self, ExperimentConfig};
use fedslice::model::{ClassifierConfig, SlicePooling, VitConfig};
use fedslice::ssl::GmmlModel;
use fedslice::train::{FinetuneConfig, NoCheckpoints, NoProgress, PretrainConfig, pretrain};

/// Textbook tears (`PhantomConfig::textbook`) at randomised protocols: a
/// regression guard of the training code, apart from the full phantom's
/// difficulty, which `fedslice study` measures.
fn cohort(sites: usize, exams: usize, seed: u64) -> (Vec<PreparedExam>, Vec<PreparedExam>) {
    let cfg = PhantomConfig {
        sites,
        exams_per_site: exams,
        seed,
        image_size: 128,
        valid_fraction: 0.3,
        textbook: true,
        ..PhantomConfig::default()
    };
    let pre = PreprocessConfig::knee(64);
    let mut train = Vec::new();
    let mut test = Vec::new();
    for site in 0..sites {
        let cohort = generate_site(&cfg, site);
        for (exams, into) in [(cohort.train, &mut train), (cohort.valid, &mut test)] {
            for e in exams {
                let p = prepare(
                    &e.exam.id,
                    &e.exam.volume,
                    e.exam.spacing,
                    e.exam.label,
                    &pre,
                )
                .expect("phantom exams are valid");
                into.push(p);
            }
        }
    }
    (train, test)
}

/// GMML on phantom slices: the masked-reconstruction loss must fall clearly
/// within a few epochs (a higher learning rate than the default keeps the test short).
#[test]
fn gmml_pretraining_loss_falls_on_phantom_slices() {
    let (train, _) = cohort(1, 30, 11);
    let config = PretrainConfig {
        epochs: 10,
        batch_size: 32,
        lr_per_256: 1.6e-2,
        warmup_epochs: 0.5,
        ..PretrainConfig::default()
    };
    let device = Device::flex();
    device.seed(7);
    let model = GmmlModel::new(&VitConfig::preset("test").expect("preset"), &device);
    let (_, report) = pretrain(
        model,
        Arc::new(train),
        &config,
        &Device::flex(),
        &mut NoProgress,
        &mut NoCheckpoints,
    )
    .expect("pretraining runs");
    let first = report.first_loss().expect("an epoch");
    let last = report.last_loss().expect("an epoch");
    assert_eq!(report.epoch_losses.len(), 10);
    assert!(
        last < 0.9 * first,
        "pretraining loss {first} → {last} did not fall by 10%"
    );
}

/// The method's main path: GMML pretraining on every training slice (default
/// rate), then fine-tuning the exam classifier (default slice embedding,
/// default per-exam augmentation, knee framing), separates torn from intact
/// ACLs on held-out exams of textbook tears at randomised protocols. On the
/// earlier fixed-protocol phantom with a centre crop this reached 0.965 and
/// was held to > 0.9; on randomised protocols (contrast, field of view,
/// slices, pose) the same budget gave 0.718 and 0.680 here (two runs: flex's
/// threaded reductions are not bit-stable run to run; CI 0.49–0.86), 0.864 on
/// another draw of textbook tears and 0.702 with tears of drawn strength (all
/// with the mean-patch embedding; with max-patch, the default since, one run
/// gave 0.904, CI 0.79–0.98). The
/// bar is > 0.6: above chance, guarding against a regression to it, and far
/// from good (issue 12; `fedslice study` measures the rest).
#[test]
fn pretrained_classifier_separates_held_out_phantom_exams() {
    let (train, test) = cohort(3, 50, 11);
    let device = Device::flex();
    device.seed(4);
    let config = ExperimentConfig {
        model: ClassifierConfig::new(
            VitConfig::preset("test").expect("preset"),
            SlicePooling::Transformer,
        ),
        pretrain: Some(PretrainConfig {
            epochs: 8,
            batch_size: 32,
            ..PretrainConfig::default()
        }),
        finetune: FinetuneConfig {
            epochs: 40,
            exams_per_step: 1,
            lr: 3e-4,
            ..FinetuneConfig::default()
        },
        labelled_fraction: 1.0,
        validation_fraction: 0.2,
        bootstrap_resamples: 200,
        seed: 1,
    };
    let (_, report) =
        experiment::run(train, test, &config, &device, &mut NoProgress).expect("experiment runs");
    eprintln!(
        "held-out AUC {:.3} (CI {:?}); fine-tuning loss {:?}",
        report.auc, report.auc_ci, report.finetune_epoch_losses
    );
    let first = report.finetune_epoch_losses[0];
    let last = *report.finetune_epoch_losses.last().expect("epochs");
    assert!(last < 0.7 * first, "fine-tuning loss {first} → {last}");
    let (first_pre, last_pre) = (
        report.pretrain_loss_first.expect("pretrained"),
        report.pretrain_loss_last.expect("pretrained"),
    );
    assert!(
        last_pre < 0.95 * first_pre,
        "pretraining loss {first_pre} → {last_pre}"
    );
    assert!(
        report.auc > 0.6,
        "held-out AUC {} (CI {:?}) is below 0.6",
        report.auc,
        report.auc_ci
    );
    assert!(report.auc_ci[0] <= report.auc && report.auc <= report.auc_ci[1]);
}
