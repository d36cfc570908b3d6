//! The method works end to end on a small generated cohort: GMML lowers its
//! loss, and the fine-tuned exam classifier separates torn from intact ACLs on
//! held-out exams well above chance.

use burn::tensor::Device;
use fedslice::data::phantom::{PhantomConfig, generate_site};
use fedslice::data::preprocess::{PreparedExam, PreprocessConfig, prepare};
use fedslice::experiment::{self, ExperimentConfig};
use fedslice::model::{ClassifierConfig, SlicePooling, VitConfig};
use fedslice::train::{FinetuneConfig, NoProgress, PretrainConfig};

fn cohort(sites: usize, exams: usize, seed: u64) -> (Vec<PreparedExam>, Vec<PreparedExam>) {
    let cfg = PhantomConfig {
        sites,
        exams_per_site: exams,
        seed,
        image_size: 128,
        valid_fraction: 0.3,
        ..PhantomConfig::default()
    };
    let pre = PreprocessConfig::new(64);
    let mut train = Vec::new();
    let mut test = Vec::new();
    for site in 0..sites {
        let cohort = generate_site(&cfg, site);
        for (exams, into) in [(cohort.train, &mut train), (cohort.valid, &mut test)] {
            for e in exams {
                let p = prepare(&e.exam.id, &e.exam.volume, e.exam.label, &pre)
                    .expect("phantom exams are valid");
                into.push(p);
            }
        }
    }
    (train, test)
}

#[test]
fn pretraining_lowers_loss_and_classifier_beats_chance() {
    let (train, test) = cohort(2, 40, 11);
    let config = ExperimentConfig {
        model: ClassifierConfig::new(
            VitConfig::preset("test").expect("preset"),
            SlicePooling::Transformer,
        ),
        pretrain: Some(PretrainConfig {
            epochs: 3,
            batch_size: 32,
            ..PretrainConfig::default()
        }),
        finetune: FinetuneConfig {
            epochs: 8,
            ..FinetuneConfig::default()
        },
        labelled_fraction: 1.0,
        validation_fraction: 0.2,
        bootstrap_resamples: 200,
        seed: 1,
    };
    let (_, report) = experiment::run(train, test, &config, &Device::flex(), &mut NoProgress)
        .expect("experiment runs");
    let first = report.pretrain_loss_first.expect("pretrained");
    let last = report.pretrain_loss_last.expect("pretrained");
    assert!(
        last < 0.9 * first,
        "pretraining loss {first} → {last} did not fall by 10%"
    );
    assert!(
        report.auc > 0.75,
        "held-out AUC {} (CI {:?}) is not well above chance",
        report.auc,
        report.auc_ci
    );
    assert!(report.auc_ci[0] <= report.auc && report.auc <= report.auc_ci[1]);
}
