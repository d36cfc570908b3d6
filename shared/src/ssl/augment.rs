//! Slice augmentations for pretraining: random resized crop (scale 0.25–1),
//! horizontal flip, light intensity jitter (DESIGN.md §4).

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::data::preprocess::{Crop, resample};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AugmentConfig {
    pub min_scale: f64,
    pub max_scale: f64,
    pub flip_probability: f64,
    /// Multiplicative and additive jitter amplitude, in normalised units.
    pub intensity_jitter: f64,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            min_scale: 0.25,
            max_scale: 1.0,
            flip_probability: 0.5,
            intensity_jitter: 0.1,
        }
    }
}

/// Draws a crop of `scale` of the area with aspect ratio in [3/4, 4/3]
/// (torchvision's RandomResizedCrop), falling back to the full image.
fn random_crop<R: Rng>(rng: &mut R, side: usize, config: &AugmentConfig) -> Crop {
    let area = (side * side) as f64;
    for _ in 0..10 {
        let scale = rng.random_range(config.min_scale..=config.max_scale);
        let log_ratio = rng.random_range((3f64 / 4.0).ln()..=(4f64 / 3.0).ln());
        let ratio = log_ratio.exp();
        let w = (area * scale * ratio).sqrt();
        let h = (area * scale / ratio).sqrt();
        if w <= side as f64 && h <= side as f64 {
            return Crop {
                y0: rng.random_range(0.0..=side as f64 - h),
                x0: rng.random_range(0.0..=side as f64 - w),
                h,
                w,
            };
        }
    }
    Crop::full(side, side)
}

/// Multiplicative and additive intensity jitter of amplitude `j`: (gain, offset).
fn draw_jitter<R: Rng>(rng: &mut R, j: f64) -> (f32, f32) {
    if j <= 0.0 {
        return (1.0, 0.0);
    }
    (
        1.0 + rng.random_range(-j..=j) as f32,
        rng.random_range(-j..=j) as f32,
    )
}

fn apply_jitter(image: &mut [f32], (gain, offset): (f32, f32)) {
    if (gain, offset) != (1.0, 0.0) {
        for p in image {
            *p = *p * gain + offset;
        }
    }
}

/// Augments one normalised `side × side` slice.
pub fn augment<R: Rng>(
    rng: &mut R,
    image: &[f32],
    side: usize,
    config: &AugmentConfig,
) -> Vec<f32> {
    let crop = random_crop(rng, side, config);
    let mut out = resample(image, side, side, crop, side);
    if rng.random_bool(config.flip_probability.clamp(0.0, 1.0)) {
        for row in out.chunks_mut(side) {
            row.reverse();
        }
    }
    apply_jitter(&mut out, draw_jitter(rng, config.intensity_jitter));
    out
}

/// Fine-tuning augmentation, drawn once per exam and applied to every slice
/// alike (cropping slices differently would misalign what the slice pooler
/// compares). No flip here: see `FinetuneConfig::flip`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExamAugment {
    /// Smallest crop area, as a fraction of the slice (the largest is 1).
    pub min_scale: f64,
    pub intensity_jitter: f64,
}

impl Default for ExamAugment {
    fn default() -> Self {
        Self {
            min_scale: 0.7,
            intensity_jitter: 0.1,
        }
    }
}

/// One exam's draw of [`ExamAugment`].
#[derive(Debug, Clone, PartialEq)]
pub struct ExamTransform {
    crop: Crop,
    jitter: (f32, f32),
}

impl ExamTransform {
    pub fn draw<R: Rng>(rng: &mut R, side: usize, config: &ExamAugment) -> Self {
        let crop = random_crop(
            rng,
            side,
            &AugmentConfig {
                min_scale: config.min_scale.clamp(0.05, 1.0),
                max_scale: 1.0,
                flip_probability: 0.0,
                intensity_jitter: 0.0,
            },
        );
        Self {
            crop,
            jitter: draw_jitter(rng, config.intensity_jitter),
        }
    }

    /// Applies the transform to one `side × side` slice.
    pub fn apply(&self, image: &[f32], side: usize) -> Vec<f32> {
        let mut out = resample(image, side, side, self.crop, side);
        apply_jitter(&mut out, self.jitter);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn crops_stay_inside_and_respect_scale() {
        let mut rng = StdRng::seed_from_u64(1);
        let config = AugmentConfig::default();
        for _ in 0..1000 {
            let c = random_crop(&mut rng, 64, &config);
            assert!(
                c.y0 >= 0.0
                    && c.x0 >= 0.0
                    && c.y0 + c.h <= 64.0 + 1e-9
                    && c.x0 + c.w <= 64.0 + 1e-9
            );
            let scale = c.h * c.w / 4096.0;
            assert!((0.25 - 1e-9..=1.0 + 1e-9).contains(&scale), "scale {scale}");
        }
    }

    #[test]
    fn augment_keeps_shape_and_varies_output() {
        let mut rng = StdRng::seed_from_u64(2);
        let image: Vec<f32> = (0..32 * 32).map(|i| (i % 32) as f32 / 32.0).collect();
        let a = augment(&mut rng, &image, 32, &AugmentConfig::default());
        let b = augment(&mut rng, &image, 32, &AugmentConfig::default());
        assert_eq!(a.len(), image.len());
        assert_ne!(a, b);
    }

    #[test]
    fn an_exam_transform_treats_every_slice_alike() {
        let mut rng = StdRng::seed_from_u64(3);
        let slice: Vec<f32> = (0..32 * 32).map(|i| ((i * 7) % 32) as f32 / 32.0).collect();
        let other: Vec<f32> = slice.iter().map(|v| 1.0 - v).collect();
        let config = ExamAugment::default();
        let t = ExamTransform::draw(&mut rng, 32, &config);
        let (a, b) = (t.apply(&slice, 32), t.apply(&slice, 32));
        assert_eq!(a, b, "one exam, one transform");
        assert_eq!(a.len(), slice.len());
        assert_ne!(a, slice, "the transform changed the slice");
        // Linear in the pixels: the same crop and jitter on every slice.
        let (c, sum) = (t.apply(&other, 32), t.apply(&vec![1.0; 32 * 32], 32));
        for ((x, y), s) in a.iter().zip(&c).zip(&sum) {
            assert!((x + y - s - t.jitter.1).abs() < 1e-4);
        }
        let u = ExamTransform::draw(&mut rng, 32, &config);
        assert_ne!(t, u, "each exam draws its own");
        let identity = ExamTransform::draw(
            &mut rng,
            32,
            &ExamAugment {
                min_scale: 1.0,
                intensity_jitter: 0.0,
            },
        );
        assert_eq!(identity.apply(&slice, 32), slice);
    }
}
