//! The `fedslice` binary end to end: phantom → train → report and model
//! bundle → export, and an older run's checkpoint converted by export.

mod common;

use std::path::Path;

use burn::tensor::{Device, Distribution, Tensor};
use fedslice::data::plane::Plane;
use fedslice::data::preprocess::PreprocessConfig;
use fedslice::experiment::ExperimentReport;
use fedslice::export::{Bundle, BundleError};
use fedslice::model::{
    ClassifierConfig, ExamClassifier, SlicePooling, VitConfig, save_safetensors,
};

use common::{fedslice, run_ok};

#[test]
fn phantom_then_train_writes_report_and_model() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("cohort");
    let status = fedslice()
        .args(["phantom", "--out"])
        .arg(&data)
        .args([
            "--sites",
            "2",
            "--exams-per-site",
            "12",
            "--seed",
            "3",
            "--image-size",
            "64",
            "--preview",
        ])
        .status()
        .expect("run phantom");
    assert!(status.success());
    for axis in [
        "contrast",
        "fov_matrix",
        "thickness",
        "pose",
        "flexion",
        "tears",
        "mimics",
        "artefacts",
        "sites",
    ] {
        let png = data.join("preview").join(format!("{axis}.png"));
        assert!(png.is_file(), "{} missing", png.display());
    }
    assert!(data.join("site-00/train-acl.csv").is_file());

    let run = dir.path().join("run");
    let report = dir.path().join("report.json");
    let output = fedslice()
        .args(["train", "--data"])
        .arg(&data)
        .args([
            "--preset",
            "test",
            "--pretrain-epochs",
            "1",
            "--finetune-epochs",
            "1",
            "--batch-size",
            "16",
            "--out",
        ])
        .arg(&run)
        .arg("--report")
        .arg(&report)
        .output()
        .expect("run train");
    assert!(
        output.status.success(),
        "train failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).expect("report written"))
            .expect("valid JSON");
    for key in [
        "auc",
        "auc_ci",
        "accuracy",
        "sensitivity",
        "specificity",
        "threshold",
        "pretrain_loss_first",
        "pretrain_loss_last",
    ] {
        assert!(!json[key].is_null(), "report lacks {key}: {json}");
    }
    let auc = json["auc"].as_f64().expect("auc is a number");
    assert!((0.0..=1.0).contains(&auc));
    assert!(run.join("model/model.safetensors").is_file());
    assert!(run.join("model/config.json").is_file());
}

#[test]
fn bad_arguments_fail_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = fedslice()
        .args(["train", "--preset", "vit-huge", "--data"])
        .arg(dir.path())
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("unknown model preset `vit-huge`"),
        "{stderr}"
    );

    let output = fedslice()
        .args(["train", "--data"])
        .arg(dir.path())
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no site data here"), "{stderr}");
    assert!(stderr.contains("train/sagittal/*.npy"), "{stderr}");

    #[cfg(not(feature = "wgpu"))]
    {
        let output = fedslice()
            .args(["train", "--device", "wgpu"])
            .output()
            .expect("run");
        assert!(String::from_utf8_lossy(&output.stderr).contains("built without GPU support"));
    }
}

/// `--log-format json`: every log line is one JSON object a log shipper can
/// read, with the event's fields; an unknown format is refused by name.
#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = fedslice()
        .args([
            "--log-format",
            "json",
            "phantom",
            "--sites",
            "1",
            "--exams-per-site",
            "2",
        ])
        .args(["--image-size", "64", "--out"])
        .arg(dir.path().join("cohort"))
        .output()
        .expect("run");
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: not JSON: {l}")))
        .collect();
    let written = lines
        .iter()
        .find(|l| l["fields"]["message"] == "site written")
        .unwrap_or_else(|| panic!("no `site written` event in {stderr}"));
    assert_eq!(written["level"], "INFO");
    assert_eq!(written["fields"]["site"], "site-00");
    assert!(written["timestamp"].is_string());

    for program in [
        &["--log-format", "yaml", "phantom", "--out", "unused"][..],
        &["aggregator", "--log-format", "yaml", "status"],
    ] {
        let output = fedslice().args(program).output().expect("run");
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("unknown log format \"yaml\""), "{stderr}");
    }
}

const BUNDLE_FILES: [&str; 6] = [
    "model.safetensors",
    "model.onnx",
    "config.json",
    "MODEL_CARD.md",
    "provenance.json",
    "SHA256SUMS",
];

/// README's sequence: the report written outside the run folder must not
/// stop `export` (it once failed reading RUN_DIR/report.json).
#[test]
fn train_with_report_elsewhere_then_export() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("cohort");
    run_ok(
        fedslice().args(["phantom", "--out"]).arg(&data).args([
            "--sites",
            "2",
            "--exams-per-site",
            "12",
            "--seed",
            "5",
            "--image-size",
            "64",
        ]),
        "phantom",
    );
    let run = dir.path().join("run");
    let report = dir.path().join("r.json");
    run_ok(
        fedslice()
            .args(["train", "--data"])
            .arg(&data)
            .args([
                "--preset",
                "test",
                "--pretrain-epochs",
                "1",
                "--finetune-epochs",
                "1",
                "--batch-size",
                "16",
                "--out",
            ])
            .arg(&run)
            .arg("--report")
            .arg(&report),
        "train",
    );
    assert!(!run.join("report.json").exists());
    let bundle = dir.path().join("b");
    run_ok(
        fedslice()
            .args(["export", "--from"])
            .arg(&run)
            .arg("--out")
            .arg(&bundle),
        "export",
    );
    for file in BUNDLE_FILES {
        assert!(
            run.join("model").join(file).is_file(),
            "run/model lacks {file}"
        );
        assert!(bundle.join(file).is_file(), "bundle lacks {file}");
    }

    let d = Device::flex();
    let trained = Bundle::open(&run.join("model"), &d).expect("train wrote a bundle");
    let exported = Bundle::open(&bundle, &d).expect("export wrote a bundle");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).expect("report")).expect("report JSON");
    assert_eq!(json["threshold"].as_f64(), Some(exported.config.threshold));
    assert_eq!(exported.config, trained.config);
    assert_eq!(exported.weights_sha256, trained.weights_sha256);
    // Both sites and the pooled row, from the report train recorded in the bundle.
    let scopes: Vec<&str> = exported
        .provenance
        .validation
        .iter()
        .map(|r| r.scope.as_str())
        .collect();
    assert_eq!(scopes, ["site-00", "site-01", "pooled"]);
    assert_eq!(
        exported.provenance.validation,
        trained.provenance.validation
    );
    // --report recomputes the validation from the report: the same rows.
    let again = dir.path().join("b2");
    run_ok(
        fedslice()
            .args(["export", "--from"])
            .arg(&run)
            .arg("--report")
            .arg(&report)
            .arg("--out")
            .arg(&again),
        "export --report",
    );
    let again = Bundle::open(&again, &d).expect("export --report wrote a bundle");
    assert_eq!(again.provenance.validation, trained.provenance.validation);

    // `evaluate --model RUN_DIR/model`, as README shows, reads the bundle.
    let out = run_ok(
        fedslice()
            .args(["evaluate", "--json", "--model"])
            .arg(run.join("model"))
            .arg("--data")
            .arg(&data),
        "evaluate",
    );
    assert!(out.contains("auc"), "{out}");
}

/// A run folder as `fedslice train` wrote it before it wrote bundles:
/// burn-named weights and the old `config.json` in RUN_DIR/model, the report
/// beside it.
fn write_legacy_run(run: &Path, model: &ExamClassifier, config: &ClassifierConfig) {
    let model_dir = run.join("model");
    std::fs::create_dir_all(&model_dir).expect("mkdir");
    save_safetensors(model, &model_dir.join("model.safetensors")).expect("weights");
    let old_config = serde_json::json!({
        "format_version": 1,
        "model": config,
        "preprocess": PreprocessConfig::new(64),
        "threshold": 0.42,
        "labels": ["intact", "acl_tear"],
        "plane": Plane::Sagittal,
    });
    std::fs::write(
        model_dir.join("config.json"),
        serde_json::to_vec_pretty(&old_config).expect("json"),
    )
    .expect("config");
    let report = ExperimentReport {
        auc: 0.75,
        auc_ci: [0.5, 1.0],
        accuracy: 0.75,
        sensitivity: 0.5,
        specificity: 1.0,
        threshold: 0.42,
        pretrain_loss_first: None,
        pretrain_loss_last: None,
        pretrain_epoch_losses: vec![],
        finetune_epoch_losses: vec![],
        validation_auc: None,
        pretrain_exams: 20,
        pretrain_slices: 400,
        labelled_train_exams: 16,
        validation_exams: 4,
        test_exams: 4,
        test_positives: 2,
        pretrain_seconds: 1.0,
        finetune_seconds: 1.0,
        test_predictions: vec![
            ("site-00/0001".into(), true, 0.9),
            ("site-00/0002".into(), false, 0.2),
            ("site-01/0003".into(), true, 0.3),
            ("site-01/0004".into(), false, 0.6),
        ],
    };
    std::fs::write(
        run.join("report.json"),
        serde_json::to_vec(&serde_json::json!({ "report": report })).expect("json"),
    )
    .expect("report");
}

/// Older runs are converted by `export` to a bundle that computes exactly
/// what the old weights did; every other reader refuses the old folder and
/// names the conversion.
#[test]
fn an_older_train_checkpoint_is_converted_by_export_and_refused_elsewhere() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = Device::flex();
    let config = ClassifierConfig::new(
        VitConfig::preset("test").expect("preset"),
        SlicePooling::Transformer,
    );
    let model = ExamClassifier::new(&config, &d);
    let run = dir.path().join("old-run");
    write_legacy_run(&run, &model, &config);

    match Bundle::open(&run.join("model"), &d) {
        Err(BundleError::LegacyCheckpoint { path }) => {
            assert_eq!(path, run.join("model/config.json"))
        }
        Err(e) => panic!("expected LegacyCheckpoint, got {e}"),
        Ok(_) => panic!("an old checkpoint opened as a bundle"),
    }
    let output = fedslice()
        .args(["evaluate", "--model"])
        .arg(run.join("model"))
        .arg("--data")
        .arg(dir.path().join("no-data"))
        .output()
        .expect("run evaluate");
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains("model/config.json") && err.contains("fedslice export --from"),
        "{err}"
    );

    let bundle = dir.path().join("converted");
    run_ok(
        fedslice()
            .args(["export", "--from"])
            .arg(&run)
            .arg("--out")
            .arg(&bundle),
        "export of an older run",
    );
    let converted = Bundle::open(&bundle, &d).expect("converted bundle opens");
    assert_eq!(converted.config.threshold, 0.42);
    assert_eq!(converted.config.architecture, config);
    assert_eq!(converted.provenance.validation.len(), 3);
    let exam = Tensor::<4>::random([9, 1, 64, 64], Distribution::Normal(0.0, 1.0), &d);
    let values = |t: Tensor<1>| t.into_data().iter::<f32>().collect::<Vec<_>>();
    assert_eq!(
        values(converted.model.forward(exam.clone(), &[9])),
        values(model.forward(exam, &[9]))
    );
}
