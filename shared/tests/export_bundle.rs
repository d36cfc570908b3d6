//! The classifier bundle: written, verified and reloaded to identical outputs;
//! every kind of damage or disagreement refused with its own error.

use std::path::Path;

use burn::tensor::{Device, Distribution, Tensor};
use fedslice::data::plane::Plane;
use fedslice::data::preprocess::PreprocessConfig;
use fedslice::export::bundle::{self, BundleError, CONFIG_FILE, SUMS_FILE, WEIGHTS_FILE};
use fedslice::export::{Bundle, BundleConfig, Origin, Provenance, ValidationRow, write_bundle};
use fedslice::model::{ClassifierConfig, ExamClassifier, SlicePooling, VitConfig};
use fedslice::wire::{TensorMap, digest};

fn classifier(d: &Device, pooling: SlicePooling) -> (ExamClassifier, BundleConfig) {
    d.seed(11);
    let config = ClassifierConfig::new(VitConfig::preset("test").expect("preset"), pooling);
    let model = ExamClassifier::new(&config, d);
    let bundle = BundleConfig::new(
        config,
        PreprocessConfig::new(64),
        Plane::Sagittal,
        0.42,
        "test",
    );
    (model, bundle)
}

fn provenance() -> Provenance {
    Provenance {
        origin: Origin::Centralised {
            run: "runs/x".into(),
        },
        sites: 2,
        pretrain_exams: Some(40),
        labelled_exams: Some(8),
        validation: vec![ValidationRow::from_scores(
            "pooled",
            &[0.1, 0.8, 0.3, 0.9],
            &[false, true, false, true],
            0.42,
        )],
        exported_at: 0,
        details: serde_json::Value::Null,
    }
}

fn exam(d: &Device, slices: usize) -> Tensor<4> {
    Tensor::random([slices, 1, 64, 64], Distribution::Normal(0.0, 1.0), d)
}

fn values(t: Tensor<1>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}

fn write(dir: &Path, d: &Device, pooling: SlicePooling) -> ExamClassifier {
    let (model, config) = classifier(d, pooling);
    write_bundle(dir, &model, &config, &provenance()).expect("write bundle");
    model
}

/// Rewrites SHA256SUMS so that only the edited content is wrong, not its digest.
fn resign(dir: &Path) {
    let sums = std::fs::read_to_string(dir.join(SUMS_FILE)).expect("sums");
    let mut out = String::new();
    for line in sums.lines() {
        let (_, name) = line.split_once("  ").expect("sum line");
        let bytes = std::fs::read(dir.join(name)).expect("listed file");
        out.push_str(&format!("{}  {name}\n", digest(&bytes)));
    }
    std::fs::write(dir.join(SUMS_FILE), out).expect("write sums");
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join(CONFIG_FILE);
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("config")).expect("json");
    edit(&mut json);
    std::fs::write(&path, serde_json::to_vec_pretty(&json).expect("json")).expect("write");
    resign(dir);
}

#[test]
fn a_reloaded_bundle_gives_identical_outputs() {
    let d = Device::flex();
    for pooling in [SlicePooling::Transformer, SlicePooling::Max] {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("bundle");
        let model = write(&out, &d, pooling);
        let loaded = Bundle::open(&out, &d).expect("open bundle");
        assert_eq!(loaded.config.threshold, 0.42);
        let input = exam(&d, 11);
        let (logit, slices) = model.forward_exam_with_slices(input.clone());
        let (logit2, slices2) = loaded.model.forward_exam_with_slices(input.clone());
        let logit = values(logit);
        assert_eq!(logit, values(logit2), "{pooling:?}");
        let (slices, slices2) = (values(slices), values(slices2));
        assert_eq!(slices.len(), 11);
        assert_eq!(slices, slices2, "{pooling:?}");
        // The one-exam forward the predictor uses gives the training forward's logit.
        assert_eq!(
            values(loaded.model.forward(input, &[11])),
            logit,
            "{pooling:?}"
        );
        assert_eq!(loaded.config.plane, Plane::Sagittal);
        assert_eq!(loaded.provenance, provenance());
    }
}

#[test]
fn the_weights_use_timm_names_and_the_card_states_its_limits() {
    let d = Device::flex();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("bundle");
    write(&out, &d, SlicePooling::Transformer);
    let tensors =
        TensorMap::from_safetensors(&std::fs::read(out.join(WEIGHTS_FILE)).expect("weights"))
            .expect("safetensors");
    for name in [
        "cls_token",
        "pos_embed",
        "patch_embed.proj.weight",
        "blocks.0.norm1.weight",
        "blocks.1.attn.qkv.bias",
        "blocks.1.mlp.fc2.weight",
        "norm.bias",
        "exam.pool.exam_token",
        "exam.head.weight",
    ] {
        assert!(tensors.get(name).is_some(), "{name} missing");
    }
    assert_eq!(
        tensors
            .get("patch_embed.proj.weight")
            .map(|t| t.shape().to_vec()),
        Some(vec![64, 1, 8, 8])
    );
    let card = std::fs::read_to_string(out.join(bundle::CARD_FILE)).expect("card");
    for needle in [
        "Intended use",
        "Not intended for",
        "Not for diagnostic use",
        "Known limits",
        "| pooled | 4 | 2 | 1.000 |",
    ] {
        assert!(card.contains(needle), "card lacks {needle:?}:\n{card}");
    }
    // `sha256sum -c` format.
    let sums = std::fs::read_to_string(out.join(SUMS_FILE)).expect("sums");
    assert!(
        sums.lines().all(|l| l.len() > 66 && &l[64..66] == "  "),
        "{sums}"
    );
}

#[test]
fn a_damaged_or_inconsistent_bundle_is_refused() {
    let d = Device::flex();
    let fresh = |name: &str| {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join(name);
        write(&out, &d, SlicePooling::Transformer);
        (dir, out)
    };

    // One flipped bit in the weights.
    let (_keep, out) = fresh("flip");
    let path = out.join(WEIGHTS_FILE);
    let mut bytes = std::fs::read(&path).expect("weights");
    let at = bytes.len() - 100;
    bytes[at] ^= 0x01;
    std::fs::write(&path, bytes).expect("write");
    let err = Bundle::open(&out, &d)
        .err()
        .expect("tampered weights must be refused");
    assert!(matches!(err, BundleError::DigestMismatch { .. }), "{err}");

    // An edited threshold without a new digest.
    let (_keep, out) = fresh("threshold");
    let path = out.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path)
        .expect("config")
        .replace("0.42", "0.05");
    std::fs::write(&path, text).expect("write");
    assert!(matches!(
        Bundle::open(&out, &d),
        Err(BundleError::DigestMismatch { .. })
    ));

    // A format from the future, even with matching digests.
    let (_keep, out) = fresh("version");
    edit_config(&out, |c| c["format_version"] = 99.into());
    let err = Bundle::open(&out, &d).err().expect("unknown version");
    assert!(
        matches!(err, BundleError::UnknownVersion { found: 99, .. }),
        "{err}"
    );

    // A config that describes another architecture than the tensors.
    let (_keep, out) = fresh("arch");
    edit_config(&out, |c| c["architecture"]["encoder"]["depth"] = 3.into());
    let err = Bundle::open(&out, &d)
        .err()
        .expect("config/tensor disagreement");
    assert!(matches!(err, BundleError::ConfigMismatch { .. }), "{err}");

    // A config that disagrees with itself.
    let (_keep, out) = fresh("size");
    edit_config(&out, |c| c["preprocess"]["image_size"] = 128.into());
    let err = Bundle::open(&out, &d)
        .err()
        .expect("input size disagreement");
    assert!(matches!(err, BundleError::Invalid { .. }), "{err}");

    // A required file dropped from the digest list.
    let (_keep, out) = fresh("unlisted");
    let sums = std::fs::read_to_string(out.join(SUMS_FILE)).expect("sums");
    let kept: String = sums
        .lines()
        .filter(|l| !l.ends_with("MODEL_CARD.md"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(out.join(SUMS_FILE), kept).expect("write");
    assert!(matches!(
        Bundle::open(&out, &d),
        Err(BundleError::Unlisted { .. })
    ));

    // A digest list that points outside the bundle.
    let (_keep, out) = fresh("escape");
    let mut sums = std::fs::read_to_string(out.join(SUMS_FILE)).expect("sums");
    sums.push_str(&format!("{}  ../secret\n", "0".repeat(64)));
    std::fs::write(out.join(SUMS_FILE), sums).expect("write");
    assert!(matches!(
        Bundle::open(&out, &d),
        Err(BundleError::Invalid { .. })
    ));
}

#[test]
fn rewriting_a_bundle_replaces_it_whole() {
    let d = Device::flex();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("bundle");
    write(&out, &d, SlicePooling::Transformer);
    std::fs::write(out.join("stray.txt"), "old").expect("write");
    write(&out, &d, SlicePooling::Max);
    assert!(!out.join("stray.txt").exists());
    let loaded = Bundle::open(&out, &d).expect("open");
    assert_eq!(loaded.config.architecture.pooling, SlicePooling::Max);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("bundle")]);
}
