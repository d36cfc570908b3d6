//! The exported ONNX graph, run by an independent runtime (tract, pure Rust),
//! gives the burn classifier's exam and slice logits, for both poolings, both
//! slice embeddings and several slice counts from one file (the slice count
//! is symbolic).

use std::error::Error;
use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use fedslice::export::onnx::{
    INPUT, OUTPUT_LOGIT, OUTPUT_PROBABILITY, OUTPUT_SLICE_LOGITS, OUTPUT_SLICE_SCORES, OUTPUTS,
    classifier_to_onnx,
};
use fedslice::export::timm::to_bundle_layout;
use fedslice::federated::{from_tensor_map, to_tensor_map};
use fedslice::model::{ClassifierConfig, ExamClassifier, SliceEmbedding, SlicePooling, VitConfig};
use tract_onnx::prelude::{
    Framework, InferenceModelExt, IntoRunnable, IntoTValue, TValue, Tensor as TractTensor, tvec,
};

type TestResult = Result<(), Box<dyn Error>>;

const TOLERANCE: f32 = 1e-4;
/// Slice counts to check; 1 takes the lone-slice branch of the position indices.
const SLICE_COUNTS: [usize; 3] = [7, 1, 12];

/// A `test`-preset classifier whose every tensor (LayerNorm gains and biases
/// included) is moved off its initial value, so no term of the graph hides
/// behind a one or a zero.
fn perturbed_classifier(
    pooling: SlicePooling,
    embedding: SliceEmbedding,
    device: &Device,
) -> (ClassifierConfig, ExamClassifier) {
    let config = ClassifierConfig {
        slice_embedding: embedding,
        ..ClassifierConfig::new(VitConfig::preset("test").expect("preset"), pooling)
    };
    device.seed(31);
    let model = ExamClassifier::new(&config, device);
    let mut tensors = to_tensor_map(&model).expect("tensor map");
    let noise = tensors.pseudo_random_like(7, 0.2);
    tensors.add_scaled(&noise, 1.0).expect("same schema");
    let model = from_tensor_map(model, &tensors).expect("load perturbed tensors");
    (config, model)
}

fn values(tensor: Tensor<1>) -> Vec<f32> {
    tensor.into_data().try_to_vec::<f32>().expect("f32 values")
}

fn tract_values(value: &TValue) -> Result<Vec<f32>, Box<dyn Error>> {
    Ok(value
        .to_plain_array_view::<f32>()?
        .iter()
        .copied()
        .collect())
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

fn burn_and_tract_agree(pooling: SlicePooling, embedding: SliceEmbedding) -> TestResult {
    let device = Device::flex();
    let (config, model) = perturbed_classifier(pooling, embedding, &device);
    let tensors = to_bundle_layout(&to_tensor_map(&model)?)?;

    let started = Instant::now();
    let onnx = classifier_to_onnx(&config, &tensors)?;
    let exported = started.elapsed();

    // One plan, typed with the slice count still symbolic, serves every count.
    let started = Instant::now();
    let plan = tract_onnx::onnx()
        .model_for_read(&mut onnx.as_slice())?
        .into_optimized()?
        .into_runnable()?;
    let loaded = started.elapsed();
    assert_eq!(plan.model().inputs.len(), 1);
    assert_eq!(plan.model().outputs.len(), OUTPUTS.len());

    let side = config.encoder.image_size;
    let mut worst = 0.0f32;
    for (round, count) in SLICE_COUNTS.into_iter().enumerate() {
        device.seed(100 + round as u64);
        let slices = Tensor::<4>::random(
            [count, 1, side, side],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let pixels = slices
            .clone()
            .into_data()
            .try_to_vec::<f32>()
            .expect("f32 pixels");

        let (exam, each) = model.forward_exam_with_slices(slices);
        let (exam, each) = (values(exam), values(each));

        let input = TractTensor::from_shape(&[count, 1, side, side], &pixels)?;
        let outputs = plan.run(tvec!(input.into_tvalue()))?;
        let got = |name: &str| -> Result<Vec<f32>, Box<dyn Error>> {
            let at = OUTPUTS
                .iter()
                .position(|o| *o == name)
                .ok_or("unknown output")?;
            tract_values(&outputs[at])
        };
        let (logit, slice_logits) = (got(OUTPUT_LOGIT)?, got(OUTPUT_SLICE_LOGITS)?);
        assert_eq!(logit.len(), 1);
        assert_eq!(slice_logits.len(), count);
        let exam_diff = max_abs_diff(&exam, &logit);
        let slice_diff = max_abs_diff(&each, &slice_logits);
        println!(
            "{pooling:?}/{embedding:?} S={count}: exam logit {:.4} (burn), max |burn - tract| exam logit {exam_diff:.2e}, slice logits {slice_diff:.2e}",
            exam[0]
        );
        assert!(
            exam_diff <= TOLERANCE && slice_diff <= TOLERANCE,
            "{pooling:?}/{embedding:?}, {count} slices: burn exam {exam:?} slices {each:?}, onnx exam {logit:?} slices {slice_logits:?}"
        );
        worst = worst.max(exam_diff).max(slice_diff);

        let probability = got(OUTPUT_PROBABILITY)?;
        let scores = got(OUTPUT_SLICE_SCORES)?;
        let expected: Vec<f32> = slice_logits.iter().map(|&x| sigmoid(x)).collect();
        assert!(max_abs_diff(&probability, &[sigmoid(logit[0])]) <= 1e-6);
        assert!(max_abs_diff(&scores, &expected) <= 1e-6);
    }
    println!(
        "{pooling:?}/{embedding:?}: {} bytes of ONNX, exported in {exported:.1?}, loaded and optimised by tract in {loaded:.1?}; worst difference {worst:.2e} (input `{INPUT}`)",
        onnx.len()
    );
    Ok(())
}

#[test]
fn transformer_pooling_matches_burn() -> TestResult {
    burn_and_tract_agree(SlicePooling::Transformer, SliceEmbedding::MeanPatch)
}

#[test]
fn max_pooling_matches_burn() -> TestResult {
    burn_and_tract_agree(SlicePooling::Max, SliceEmbedding::MeanPatch)
}

#[test]
fn cls_slice_embedding_matches_burn() -> TestResult {
    burn_and_tract_agree(SlicePooling::Transformer, SliceEmbedding::Cls)
}

#[test]
fn max_patch_slice_embedding_matches_burn() -> TestResult {
    burn_and_tract_agree(SlicePooling::Transformer, SliceEmbedding::MaxPatch)
}
