//! The bundle in the Python ecosystem: timm loads model.safetensors into a
//! `VisionTransformer(in_chans=1)` with strict=True and its pooled features
//! match the Rust slice embeddings (mean patch token and CLS token);
//! onnxruntime runs model.onnx to the same logits (both to 1e-4, checked by
//! bench/timm_parity.py).
//!
//! Needs a Python with torch, timm, safetensors and onnxruntime: set
//! FEDSLICE_PYTHON to it (default `python3`). Without one the test says so
//! and passes, unless FEDSLICE_REQUIRE_PYTHON_PARITY is set.

use std::path::Path;
use std::process::Command;

use burn::tensor::{Device, Distribution, Tensor};
use fedslice::data::plane::Plane;
use fedslice::data::preprocess::PreprocessConfig;
use fedslice::export::{BundleConfig, Origin, Provenance, write_bundle};
use fedslice::model::{ClassifierConfig, ExamClassifier, SliceEmbedding, SlicePooling, VitConfig};

fn python() -> String {
    std::env::var("FEDSLICE_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn python_has_stack(python: &str) -> bool {
    Command::new(python)
        .args(["-c", "import torch, timm, safetensors, onnxruntime, numpy"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn write_f32(path: &Path, t: Tensor<2>) {
    let bytes: Vec<u8> = t
        .into_data()
        .iter::<f32>()
        .flat_map(f32::to_le_bytes)
        .collect();
    std::fs::write(path, bytes).expect("write f32 file");
}

#[test]
fn timm_and_onnxruntime_reproduce_the_rust_model() {
    let python = python();
    if !python_has_stack(&python) {
        assert!(
            std::env::var_os("FEDSLICE_REQUIRE_PYTHON_PARITY").is_none(),
            "{python} lacks torch/timm/safetensors/onnxruntime"
        );
        eprintln!(
            "SKIPPED: {python} lacks torch, timm, safetensors or onnxruntime; set FEDSLICE_PYTHON to a Python that has them"
        );
        return;
    }
    let d = Device::flex();
    d.seed(21);
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/timm_parity.py");
    for (name, preset, embedding) in [
        ("test-cls", "test", SliceEmbedding::Cls),
        ("test-mean", "test", SliceEmbedding::MeanPatch),
        ("tiny", "vit-tiny", SliceEmbedding::MeanPatch),
    ] {
        let vit = VitConfig::preset(preset).expect("preset");
        let size = vit.image_size;
        let arch = ClassifierConfig {
            slice_embedding: embedding,
            ..ClassifierConfig::new(vit, SlicePooling::Transformer)
        };
        let model = ExamClassifier::new(&arch, &d);
        let config = BundleConfig::new(
            arch,
            PreprocessConfig::new(size),
            Plane::Sagittal,
            0.5,
            "test",
        );
        let provenance = Provenance {
            origin: Origin::Centralised {
                run: "parity".into(),
            },
            sites: 1,
            pretrain_exams: None,
            labelled_exams: None,
            validation: Vec::new(),
            exported_at: 0,
            details: serde_json::Value::Null,
        };
        let bundle = root.join(name);
        write_bundle(&bundle, &model, &config, &provenance).expect("bundle");

        let slices = 5;
        let x = Tensor::<4>::random([slices, 1, size, size], Distribution::Normal(0.0, 1.0), &d);
        let features = model.encoder.forward_embedding(x.clone(), embedding);
        let (logit, slice_logits) = model.forward_exam_with_slices(x.clone());
        let logits = Tensor::cat(vec![logit, slice_logits], 0).reshape([1, 1 + slices]);
        let input = root.join(format!("{name}-input.f32"));
        write_f32(&input, x.reshape([slices, size * size]));
        write_f32(&root.join(format!("{name}-features.f32")), features);
        write_f32(&root.join(format!("{name}-logits.f32")), logits);
        let out = Command::new(&python)
            .arg(&script)
            .arg(&bundle)
            .arg(&input)
            .arg(slices.to_string())
            .arg(root.join(format!("{name}-features.f32")))
            .arg(root.join(format!("{name}-logits.f32")))
            .output()
            .expect("run python");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        eprintln!("{preset}: {text}");
        assert!(
            out.status.success(),
            "{preset}: parity check failed:\n{text}"
        );
    }
}
