//! Export and the predictor end to end, through the executables: a model
//! trained with `fedslice train` on a DICOM cohort is exported as a bundle,
//! and `site-agent predict` on each held-out exam reproduces the probability
//! training's evaluation gave it from DICOM and NIfTI (which record the voxel
//! spacing) and answers from an MRNet .npy (which does not); the DICOM SR it
//! writes is read by DCMTK and passes dicom3tools' IOD check.

mod common;

use std::path::Path;
use std::process::Command;

use common::{
    dicom_tools_required, fedslice, phantom_as, run_ok, tool_available, train_and_export,
};

fn predict(bundle: &Path, input: &Path, json: &Path, sr: Option<&Path>) -> serde_json::Value {
    let mut cmd = fedslice();
    cmd.args(["site-agent", "predict", "--model"])
        .arg(bundle)
        .arg("--input")
        .arg(input)
        .arg("--json")
        .arg(json);
    if let Some(sr) = sr {
        cmd.arg("--sr").arg(sr);
    }
    run_ok(&mut cmd, &format!("predict {}", input.display()));
    serde_json::from_slice(&std::fs::read(json).expect("json written")).expect("valid JSON")
}

#[test]
fn exported_model_predicts_what_training_evaluated_and_reports_in_dicom() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    for format in ["dicom", "nifti", "mrnet"] {
        phantom_as(format, &root.join(format), 2, 12, 3, 64);
    }
    let (run, bundle) = train_and_export(&root.join("dicom"), root);
    for file in [
        "model.safetensors",
        "model.onnx",
        "config.json",
        "MODEL_CARD.md",
        "provenance.json",
        "SHA256SUMS",
    ] {
        assert!(bundle.join(file).is_file(), "bundle lacks {file}");
    }

    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("report.json")).expect("report"))
            .expect("report JSON");
    let evaluated = report["report"]["test_predictions"]
        .as_array()
        .expect("test predictions");
    assert!(evaluated.len() >= 4, "{evaluated:?}");
    let threshold = report["threshold"].as_f64().expect("threshold");

    let mut worst = 0.0f64;
    for (i, row) in evaluated.iter().enumerate() {
        let id = row[0].as_str().expect("id"); // site-00/valid/0009
        let expected = row[2].as_f64().expect("probability");
        let (site, exam) = id.split_once("/valid/").expect("site/valid/exam");
        let sr = root.join(format!("sr-{i}.dcm"));
        let inputs = [
            root.join("dicom").join(site).join("valid").join(exam),
            root.join("nifti")
                .join(site)
                .join("valid")
                .join(format!("{exam}.nii.gz")),
            root.join("mrnet")
                .join(site)
                .join("valid/sagittal")
                .join(format!("{exam}.npy")),
        ];
        for (k, input) in inputs.iter().enumerate() {
            let json = root.join(format!("p-{i}-{k}.json"));
            let dicom = k == 0;
            let answer = predict(&bundle, input, &json, dicom.then_some(sr.as_path()));
            let p = answer["probability"].as_f64().expect("probability");
            // An MRNet .npy records no voxel spacing (and the phantom's
            // full scale is rescaled to 8 bits for it), so the knee framing
            // assumes a field of view there and need not reproduce the
            // DICOM-trained score; DICOM and NIfTI carry the spacing and must.
            let mrnet = k == 2;
            if mrnet {
                assert!((0.0..=1.0).contains(&p), "{id} via .npy: probability {p}");
            } else {
                worst = worst.max((p - expected).abs());
                assert!(
                    (p - expected).abs() < 1e-5,
                    "{id} via {}: predictor {p}, training {expected}",
                    input.display()
                );
            }
            assert_eq!(answer["threshold"].as_f64(), Some(threshold));
            assert_eq!(answer["positive"].as_bool(), Some(p >= threshold));
            let label = if p >= threshold { "acl_tear" } else { "intact" };
            assert_eq!(answer["label"].as_str(), Some(label));
            let slices = answer["slice_scores"].as_array().expect("slice scores");
            assert_eq!(
                Some(slices.len() as u64),
                answer["input"]["slices_used"].as_u64()
            );
            assert!(
                answer["model"]["weights_sha256"]
                    .as_str()
                    .is_some_and(|s| s.len() == 64)
            );
            assert!(answer["timing"]["total_ms"].as_f64().is_some());
            if dicom {
                assert!(
                    answer["input"]["series"]["series_instance_uid"]
                        .as_str()
                        .is_some()
                );
            }
        }
        check_sr(&sr, expected);
    }
    eprintln!(
        "{} exams, max |predictor − training| = {worst:.2e}",
        evaluated.len()
    );
}

fn check_sr(sr: &Path, probability: f64) {
    assert!(sr.is_file(), "no SR written");
    let have = tool_available("dsrdump") && tool_available("dciodvfy");
    if !have {
        assert!(
            !dicom_tools_required(),
            "DCMTK (dsrdump) and dicom3tools (dciodvfy) are required here"
        );
        eprintln!("SKIPPED SR validation: install dcmtk and dicom3tools to run it");
        return;
    }
    let dump = run_ok(Command::new("dsrdump").arg(sr), "dsrdump");
    assert!(dump.contains("Comprehensive SR Document"), "{dump}");
    assert!(
        dump.contains(&format!("{probability:.4}")[..5]),
        "probability not in SR:\n{dump}"
    );
    assert!(dump.contains("Not for"), "{dump}");
    let out = Command::new("dciodvfy").arg(sr).output().expect("dciodvfy");
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("Error")).collect();
    assert!(errors.is_empty(), "dciodvfy errors:\n{text}");
}

#[test]
fn predict_explains_inputs_it_cannot_use() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let not_dicom = root.join("notes");
    std::fs::create_dir_all(&not_dicom).expect("mkdir");
    std::fs::write(not_dicom.join("a.txt"), "hello").expect("write");
    let out = fedslice()
        .args(["site-agent", "predict", "--model"])
        .arg(root.join("no-bundle"))
        .arg("--input")
        .arg(&not_dicom)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no-bundle") && err.contains("SHA256SUMS"),
        "{err}"
    );
}
