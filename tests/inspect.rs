//! `site-agent inspect` on the third-party reader fixtures: every exam and
//! every unusable file is listed with a precise reason, bad files do not stop
//! the run, and no patient identifier reaches the report.

mod common;

use common::{fedslice, phantom_as};

#[test]
fn inspect_lists_exams_and_reasons_without_identifiers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let report_path = dir.path().join("report.json");
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let output = fedslice()
        .args(["site-agent", "inspect", "--data", fixtures, "--json"])
        .arg(&report_path)
        .output()
        .expect("run inspect");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(&report_path).expect("report written");
    let report: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let exams = report["exams"].as_array().expect("exams");
    let skipped = report["skipped"].as_array().expect("skipped");

    let nifti: Vec<_> = exams.iter().filter(|e| e["format"] == "nifti").collect();
    assert_eq!(nifti.len(), 4, "{text}");
    assert!(nifti.iter().all(|e| e["usable"] == true));
    let four_d = nifti
        .iter()
        .find(|e| {
            e["source"]
                .as_str()
                .is_some_and(|s| s.ends_with("functional.nii"))
        })
        .expect("4-D file listed");
    assert_eq!(four_d["note"], "first of 20 volumes");

    // DICOM studies without a sagittal series are listed, not trained on.
    let dicom: Vec<_> = exams.iter().filter(|e| e["format"] == "dicom").collect();
    assert!(!dicom.is_empty());
    assert!(dicom.iter().all(|e| {
        e["usable"] == false
            && e["note"]
                .as_str()
                .is_some_and(|n| n.contains("sagittal") || n.contains("no readable"))
    }));
    let reason = |needle: &str| {
        skipped
            .iter()
            .any(|s| s["reason"].as_str().is_some_and(|r| r.contains(needle)))
    };
    assert!(reason("truncated pixel data"), "{text}");
    assert!(reason("not a DICOM file"), "{text}");

    // MR_small.dcm's patient name and ID never appear.
    assert!(
        !text.contains("CompressedSamples"),
        "identifier leaked into the report"
    );
    assert!(!String::from_utf8_lossy(&output.stdout).contains("CompressedSamples"));
}

#[test]
fn inspect_reads_an_exam_folder_site_with_labels_and_a_bad_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cohort = dir.path().join("cohort");
    phantom_as("dicom", &cohort, 1, 4, 2, 48);
    let site = cohort.join("site-00");
    let labels = std::fs::read_to_string(site.join("labels.csv")).expect("labels.csv");
    // A file cut short in the middle of one exam's folder.
    let victim = site.join("train/0000/IM00002.dcm");
    let bytes = std::fs::read(&victim).expect("slice");
    std::fs::write(
        site.join("train/0000/broken.dcm"),
        &bytes[..bytes.len() / 2],
    )
    .expect("write");

    let report_path = dir.path().join("report.json");
    let output = fedslice()
        .args(["site-agent", "inspect", "--data"])
        .arg(&site)
        .arg("--json")
        .arg(&report_path)
        .output()
        .expect("run inspect");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(&report_path).expect("report written");
    let report: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let exams = report["exams"].as_array().expect("exams");
    assert_eq!(exams.len(), labels.lines().count() - 1, "{text}");
    for row in labels.lines().skip(1) {
        let (id, label) = row.split_once(',').expect("exam,label");
        let exam = exams
            .iter()
            .find(|e| e["source"] == id)
            .unwrap_or_else(|| panic!("{id} not listed: {text}"));
        assert_eq!(exam["format"], "dicom");
        assert_eq!(exam["usable"], true, "{exam}");
        assert_eq!(exam["label"], serde_json::json!(label == "1"), "{exam}");
        assert_eq!(exam["planes"], serde_json::json!(["sagittal"]));
    }
    let skipped = report["skipped"].as_array().expect("skipped");
    assert!(
        skipped.iter().any(|s| s["path"]
            .as_str()
            .is_some_and(|p| p.ends_with("broken.dcm"))),
        "{text}"
    );
    assert!(!text.contains("PHANTOM^SYNTHETIC"), "patient name leaked");
}
