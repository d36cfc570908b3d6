//! What a site's scanner and protocol do to the same anatomy: the non-IID part.
//!
//! Hospitals differ less in knees than in machines: gain, contrast, coil shading,
//! sharpness, noise, field of view, and who gets referred (prevalence, cohort size).
//! Each site draws one `ScannerProfile`; exams jitter slightly around it.

use rand::{Rng, RngCore};
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use super::PhantomConfig;
use super::random::{SplitMix64, mix, salt, std_rng};

/// One site's acquisition characteristics and case mix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScannerProfile {
    /// Full-scale multiplier: fat ends up near `gain × 0.8 × 255`.
    pub gain: f64,
    /// Gamma applied to tissue signal; >1 darkens mid-greys (stiffer contrast).
    pub contrast: f64,
    /// Peak relative amplitude of the smooth multiplicative coil shading.
    pub bias_field_strength: f64,
    /// In-plane direction (radians) in which the coil shading brightens.
    pub bias_field_angle: f64,
    /// Standard deviation of each complex noise channel, as a fraction of full scale.
    pub noise_sigma: f64,
    /// Gaussian blur in pixels at 256 px (scaled with the image size).
    pub blur_sigma: f64,
    /// Apparent anatomy size; >1 is a smaller field of view.
    pub fov_scale: f64,
    /// Probability that an exam at this site shows an ACL tear.
    pub prevalence: f64,
    /// Share of intact exams with a degenerated (mimic) ACL.
    pub mimic_rate: f64,
    /// Typical number of sagittal slices in this site's protocol.
    pub slices: usize,
    /// Number of exams in this site's cohort.
    pub exams: usize,
}

/// Fewest and most slices any exam may have.
pub const SLICE_RANGE: std::ops::RangeInclusive<usize> = 18..=30;

/// Deterministic in `(cfg.seed, site)` only, so adding sites never changes earlier ones.
pub fn site_profile(cfg: &PhantomConfig, site: usize) -> ScannerProfile {
    let mut rng = std_rng(mix(cfg.seed, site as u64), salt::PROFILE);
    let jitter = cfg.size_jitter.clamp(0.0, 0.95);
    let scale: f64 = rng.random_range(-1.0..=1.0);
    let exams = if jitter > 0.0 {
        ((cfg.exams_per_site as f64) * (1.0 + jitter * scale))
            .round()
            .max(1.0) as usize
    } else {
        cfg.exams_per_site
    };
    ScannerProfile {
        gain: rng.random_range(0.62..0.95),
        contrast: rng.random_range(0.75..1.35),
        bias_field_strength: rng.random_range(0.05..0.35),
        bias_field_angle: rng.random_range(0.0..std::f64::consts::TAU),
        noise_sigma: rng.random_range(0.012..0.045),
        blur_sigma: rng.random_range(0.3..1.4),
        fov_scale: rng.random_range(0.87..1.13),
        prevalence: rng.random_range(0.25..0.5),
        mimic_rate: rng.random_range(0.18..0.32),
        slices: rng.random_range(20..=28),
        exams,
    }
}

/// Per-exam deviations from the site profile (patient positioning in the coil).
#[derive(Debug, Clone)]
pub(crate) struct ExamScan {
    bias_angle: f64,
    bias_curvature: f64,
    bias_through_plane: f64,
    noise_seed: u64,
}

impl ExamScan {
    pub(crate) fn sample(profile: &ScannerProfile, exam_seed: u64) -> Self {
        let mut rng = std_rng(exam_seed, salt::SCANNER);
        Self {
            bias_angle: profile.bias_field_angle + rng.random_range(-0.4..0.4),
            bias_curvature: rng.random_range(-0.5..0.5),
            bias_through_plane: rng.random_range(-0.3..0.3),
            noise_seed: mix(exam_seed, salt::NOISE),
        }
    }
}

/// Turns tissue signal (about 0..1) of slice `z` into scanner integers 0..=255.
pub(crate) fn acquire_slice(
    profile: &ScannerProfile,
    scan: &ExamScan,
    slice: &mut [f32],
    size: usize,
    z: usize,
    depth: usize,
) {
    let gamma = profile.contrast as f32;
    let strength = profile.bias_field_strength as f32;
    let (ca, sa) = (scan.bias_angle.cos() as f32, scan.bias_angle.sin() as f32);
    let curve = scan.bias_curvature as f32 * 0.5;
    let w = if depth > 1 {
        2.0 * z as f32 / (depth - 1) as f32 - 1.0
    } else {
        0.0
    };
    let inv = 2.0 / size.max(1) as f32;
    let coord = |i: usize| (i as f32 + 0.5) * inv - 1.0;
    // The shading exponent is a sum of a column term and a row term, so the field is a
    // product of two 1-D factors: two `exp` per row and column instead of per pixel.
    let cols: Vec<f32> = (0..size)
        .map(|x| (strength * (ca * coord(x) + curve * coord(x) * coord(x))).exp())
        .collect();
    let lut = GammaLut::new(gamma);
    for (y, row) in slice.chunks_mut(size).enumerate() {
        let v = coord(y);
        let row_factor =
            (strength * (sa * v - curve * v * v + scan.bias_through_plane as f32 * w)).exp();
        for (px, c) in row.iter_mut().zip(&cols) {
            *px = lut.apply(*px) * c * row_factor;
        }
    }
    blur(slice, size, profile.blur_sigma * size as f64 / 256.0);
    let sigma = profile.noise_sigma as f32;
    let mut rng = SplitMix64::new(mix(scan.noise_seed, z as u64));
    let full = (profile.gain * 255.0) as f32;
    let normals = gaussian_table();
    for pair in slice.chunks_mut(2) {
        // One 64-bit draw gives four 16-bit table indices: two complex samples.
        let bits = rng.next_u64();
        for (k, px) in pair.iter_mut().enumerate() {
            let re = normals[(bits >> (32 * k)) as u16 as usize];
            let im = normals[(bits >> (32 * k + 16)) as u16 as usize];
            // Magnitude images of complex Gaussian noise: Rician, never negative.
            let m = ((*px + sigma * re).powi(2) + (sigma * im).powi(2)).sqrt();
            // `m` is non-negative, so adding one half and truncating rounds to nearest.
            *px = ((m * full).min(255.0) + 0.5) as u32 as f32;
        }
    }
}

/// 65 536 standard-normal samples, drawn once from a fixed seed. Indexing it with random
/// bits is several times cheaper than a sampler per voxel, and noise built from 2^16
/// Gaussian levels is indistinguishable from the real thing at 8-bit output.
fn gaussian_table() -> &'static [f32] {
    static TABLE: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut rng = SplitMix64::new(0x6761_7573_7369_616e);
        (0..1 << 16)
            .map(|_| StandardNormal.sample(&mut rng))
            .collect()
    })
}

/// `x^gamma` by table lookup: tissue signal spans a small range and `powf` per voxel
/// was a third of acquisition time.
struct GammaLut {
    table: Vec<f32>,
}

impl GammaLut {
    const MAX: f32 = 2.0;
    const STEPS: usize = 4096;

    fn new(gamma: f32) -> Self {
        let table = (0..=Self::STEPS + 1)
            .map(|i| (i as f32 * Self::MAX / Self::STEPS as f32).powf(gamma))
            .collect();
        Self { table }
    }

    fn apply(&self, x: f32) -> f32 {
        let f = (x.max(0.0) * (Self::STEPS as f32 / Self::MAX)).min(Self::STEPS as f32);
        let i = f as usize;
        let t = f - i as f32;
        self.table[i] * (1.0 - t) + self.table[i + 1] * t
    }
}

/// Separable Gaussian blur of one square slice, edges clamped.
fn blur(slice: &mut [f32], size: usize, sigma: f64) {
    if sigma < 0.25 || size < 2 {
        return;
    }
    let radius = (2.5 * sigma).ceil() as usize;
    let kernel: Vec<f32> = (0..=2 * radius)
        .map(|i| {
            let d = i as f64 - radius as f64;
            (-(d * d) / (2.0 * sigma * sigma)).exp() as f32
        })
        .collect();
    let norm: f32 = kernel.iter().sum();
    let kernel: Vec<f32> = kernel.iter().map(|k| k / norm).collect();
    let mut tmp = vec![0.0f32; slice.len()];
    let mut padded = vec![0.0f32; size + 2 * radius];
    for (row, out) in slice.chunks(size).zip(tmp.chunks_mut(size)) {
        padded[..radius].fill(row[0]);
        padded[radius..radius + size].copy_from_slice(row);
        padded[radius + size..].fill(row[size - 1]);
        for (x, o) in out.iter_mut().enumerate() {
            *o = kernel.iter().zip(&padded[x..]).map(|(w, p)| w * p).sum();
        }
    }
    let last = size - 1;
    for (y, out) in slice.chunks_mut(size).enumerate() {
        out.fill(0.0);
        for (k, w) in kernel.iter().enumerate() {
            let yy = (y + k).saturating_sub(radius).min(last);
            for (o, t) in out.iter_mut().zip(&tmp[yy * size..(yy + 1) * size]) {
                *o += w * t;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blur_preserves_mean_and_smooths() {
        let size = 16;
        let mut s = vec![0.0f32; size * size];
        s[8 * size + 8] = 1.0;
        blur(&mut s, size, 1.5);
        let total: f32 = s.iter().sum();
        assert!((total - 1.0).abs() < 1e-4);
        assert!(s[8 * size + 8] < 0.2 && s[8 * size + 9] > 0.0);
    }

    #[test]
    fn acquisition_yields_integers_in_range() {
        let cfg = PhantomConfig::default();
        let p = site_profile(&cfg, 0);
        let scan = ExamScan::sample(&p, 5);
        let mut s = vec![1.4f32; 32 * 32];
        acquire_slice(&p, &scan, &mut s, 32, 0, 20);
        assert!(
            s.iter()
                .all(|v| v.fract() == 0.0 && (0.0..=255.0).contains(v))
        );
    }
}
