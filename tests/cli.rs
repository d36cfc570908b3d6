//! The `fedslice` binary end to end: phantom → train → report and model files.

use std::process::Command;

fn fedslice() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fedslice"))
}

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
