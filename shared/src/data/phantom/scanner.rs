//! What a site's scanner and protocol do to the same anatomy: the non-IID part.
//!
//! Hospitals differ less in knees than in machines and protocols: sequence (contrast),
//! field of view, matrix, slice thickness and count, output scale, gain, coil shading,
//! sharpness, noise, and how often patients move (ghosting) or the field of view is
//! too small for the leg (wrap-around); and in who gets referred (prevalence, cohort
//! size). Each site draws one `ScannerProfile`; each exam draws its own positioning in
//! the coil and its own artefacts from the site's rates.

use std::ops::RangeInclusive;

use rand::{Rng, RngCore};
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use super::PhantomConfig;
use super::palette::Contrast;
use super::random::{SplitMix64, mix, salt, std_rng};

/// Field of view (square, mm) a site's protocol may use.
pub const FOV_MM: RangeInclusive<f64> = 120.0..=180.0;
/// In-plane matrix a site's protocol may use when the configuration leaves it open.
pub const MATRIX_RANGE: RangeInclusive<usize> = 160..=512;
/// Slice thickness (mm) a site's protocol may use.
pub const THICKNESS_MM: RangeInclusive<f64> = 2.5..=4.5;
/// Fewest and most slices any exam may have.
pub const SLICE_RANGE: RangeInclusive<usize> = 16..=50;

/// Along which image axis phase is encoded: where motion ghosts and wrap-around go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PhaseAxis {
    /// Superior-inferior (image rows).
    Rows,
    /// Anterior-posterior (image columns).
    Cols,
}

/// One site's protocol, acquisition characteristics and case mix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScannerProfile {
    pub contrast: Contrast,
    /// Side of the square field of view, mm.
    pub fov_mm: f64,
    /// Pixels per side of every slice.
    pub matrix: usize,
    pub slice_thickness_mm: f64,
    /// Centre-to-centre distance of neighbouring slices (thickness plus any gap), mm.
    pub slice_spacing_mm: f64,
    /// Typical number of sagittal slices in this site's protocol.
    pub slices: usize,
    /// Largest value the scanner writes; voxels are integers in `0..=full_scale`.
    pub full_scale: u32,
    /// Share of full scale that tissue signal 1.0 is mapped to.
    pub gain: f64,
    /// Gamma applied to tissue signal; >1 darkens mid-greys (stiffer contrast).
    pub gamma: f64,
    /// Peak relative amplitude of the smooth multiplicative coil shading.
    pub bias_field_strength: f64,
    /// In-plane direction (radians) in which the coil shading brightens.
    pub bias_field_angle: f64,
    /// Standard deviation of each complex noise channel, as a fraction of signal 1.0.
    pub noise_sigma: f64,
    /// Gaussian point-spread in mm (acquired resolution coarser than the matrix).
    pub blur_mm: f64,
    pub phase_axis: PhaseAxis,
    /// Share of exams with motion ghosts.
    pub ghosting_rate: f64,
    /// Share of exams whose anatomy beyond the field of view wraps around.
    pub wrap_rate: f64,
    /// Probability that an exam at this site shows an ACL tear.
    pub prevalence: f64,
    /// Share of intact exams with a mimic (degenerated ACL, ganglion, PCL partial
    /// volume, effusion).
    pub mimic_rate: f64,
    /// Number of exams in this site's cohort.
    pub exams: usize,
}

impl ScannerProfile {
    /// In-plane pixel size, mm.
    pub fn pixel_mm(&self) -> f64 {
        self.fov_mm / self.matrix.max(1) as f64
    }
}

/// Matrices protocols use, with weights that keep the average exam cheap to generate
/// while still producing some 448–512 sites.
const MATRICES: [(usize, u32); 9] = [
    (160, 10),
    (192, 14),
    (224, 14),
    (256, 20),
    (288, 12),
    (320, 12),
    (384, 8),
    (448, 5),
    (512, 5),
];

/// Deterministic in `(cfg.seed, site)` only, so adding sites never changes earlier ones.
/// `cfg.image_size > 0` fixes the matrix; everything else is drawn the same either way.
/// `cfg.scanner_skew` and `cfg.label_skew` move the drawn profile towards or away
/// from the other sites' ([`with_scanner_skew`], [`skewed_prevalence`]).
pub fn site_profile(cfg: &PhantomConfig, site: usize) -> ScannerProfile {
    let mut profile = drawn_profile(cfg, site);
    if cfg.scanner_skew != 1.0 {
        profile = with_scanner_skew(cfg, site, profile);
    }
    if cfg.label_skew > 0.0 {
        profile.prevalence = skewed_prevalence(cfg.label_skew, site);
    }
    profile
}

/// Tear prevalence of `site` under label skew `skew` in (0, 1]: the sites spread
/// over 0.375 ± 0.35·skew, site 0 lowest, site 1 highest, later sites filling
/// the gaps (van der Corput order), so every prefix of sites is spread evenly
/// and adding sites never moves earlier ones. Without skew each site draws its
/// prevalence from 0.25–0.5.
pub fn skewed_prevalence(skew: f64, site: usize) -> f64 {
    let position = match site {
        0 => 0.0,
        1 => 1.0,
        k => {
            // Radical inverse of k - 1 in base 2: 0.5, 0.25, 0.75, 0.125, ...
            let (mut n, mut x, mut base) = (k - 1, 0.0, 0.5);
            while n > 0 {
                if n & 1 == 1 {
                    x += base;
                }
                n >>= 1;
                base /= 2.0;
            }
            x
        }
    };
    0.375 + 0.35 * skew.clamp(0.0, 1.0) * (2.0 * position - 1.0)
}

/// Moves a drawn profile's scanner towards (`scanner_skew` < 1) or away from
/// (> 1) a common one. Intensity characteristics (gain, gamma, coil shading,
/// noise, blur, artefact rates) scale their distance from the middle of their
/// range; below 1 a site keeps its own protocol (contrast, field of view,
/// matrix, slices, output scale) with probability `scanner_skew` and otherwise
/// scans with site 0's. At 0 every site has the same scanner: no scanner skew,
/// only the case mix differs.
fn with_scanner_skew(cfg: &PhantomConfig, site: usize, drawn: ScannerProfile) -> ScannerProfile {
    let skew = cfg.scanner_skew.max(0.0);
    let mut p = drawn;
    let keeps_protocol = super::random::unit(mix(mix(cfg.seed, site as u64), salt::SKEW)) < skew;
    if site > 0 && !keeps_protocol {
        let reference = drawn_profile(cfg, 0);
        p.contrast = reference.contrast;
        p.fov_mm = reference.fov_mm;
        p.matrix = reference.matrix;
        p.slice_thickness_mm = reference.slice_thickness_mm;
        p.slice_spacing_mm = reference.slice_spacing_mm;
        p.slices = reference.slices;
        p.full_scale = reference.full_scale;
        p.phase_axis = reference.phase_axis;
    }
    let scale = |value: f64, middle: f64, lo: f64, hi: f64| {
        (middle + skew * (value - middle)).clamp(lo, hi)
    };
    p.gain = scale(p.gain, 0.75, 0.3, 1.0);
    p.gamma = scale(p.gamma, 1.0, 0.6, 1.6);
    p.bias_field_strength = scale(p.bias_field_strength, 0.225, 0.0, 0.6);
    p.noise_sigma = scale(p.noise_sigma, 0.03, 0.003, 0.08);
    p.blur_mm = scale(p.blur_mm, 0.425, 0.05, 1.0);
    p.ghosting_rate = scale(p.ghosting_rate, 0.225, 0.0, 0.8);
    p.wrap_rate = scale(p.wrap_rate, 0.21, 0.0, 0.8);
    p
}

/// The profile as drawn, before any skew.
fn drawn_profile(cfg: &PhantomConfig, site: usize) -> ScannerProfile {
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
    let mut proto = std_rng(mix(cfg.seed, site as u64), salt::PROTOCOL);
    let contrast = match proto.random_range(0..100) {
        0..30 => Contrast::Pd,
        30..60 => Contrast::PdFs,
        60..80 => Contrast::T2Fs,
        _ => Contrast::T1,
    };
    let fov_mm = proto.random_range(FOV_MM);
    let total: u32 = MATRICES.iter().map(|m| m.1).sum();
    let mut pick = proto.random_range(0..total);
    let mut matrix = MATRICES[0].0;
    for (m, w) in MATRICES {
        if pick < w {
            matrix = m;
            break;
        }
        pick -= w;
    }
    if cfg.image_size > 0 {
        matrix = cfg.image_size;
    }
    let thickness = proto.random_range(THICKNESS_MM);
    let gap = if proto.random_bool(0.5) {
        0.0
    } else {
        thickness * proto.random_range(0.0..0.12)
    };
    let spacing = thickness + gap;
    let coverage = proto.random_range(60.0..140.0);
    let slices = ((coverage / spacing).round() as usize)
        .clamp(*SLICE_RANGE.start() + 2, *SLICE_RANGE.end() - 2);
    let full_scale = match proto.random_range(0..100) {
        0..35 => 255,
        35..50 => 4095,
        _ => proto.random_range(400..=4000),
    };
    let phase_axis = if proto.random_bool(0.5) {
        PhaseAxis::Rows
    } else {
        PhaseAxis::Cols
    };
    let ghosting_rate = proto.random_range(0.0..0.45);
    let wrap_rate = if proto.random_bool(0.4) {
        0.0
    } else {
        proto.random_range(0.1..0.6)
    };
    ScannerProfile {
        contrast,
        fov_mm,
        matrix,
        slice_thickness_mm: thickness,
        slice_spacing_mm: spacing,
        slices,
        full_scale,
        gain: rng.random_range(0.55..0.95),
        gamma: rng.random_range(0.8..1.25),
        bias_field_strength: rng.random_range(0.05..0.4),
        bias_field_angle: rng.random_range(0.0..std::f64::consts::TAU),
        noise_sigma: rng.random_range(0.01..0.05),
        blur_mm: rng.random_range(0.15..0.7),
        phase_axis,
        ghosting_rate,
        wrap_rate,
        prevalence: rng.random_range(0.25..0.5),
        mimic_rate: rng.random_range(0.2..0.35),
        exams,
    }
}

/// Motion ghosts: faint copies of the image shifted along the phase axis.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Ghosting {
    /// Shift of the first copy as a fraction of the matrix.
    pub shift: f32,
    /// Amplitude of the first copy relative to the image.
    pub amplitude: f32,
    /// Copies on each side, each weaker than the last.
    pub copies: usize,
}

/// Per-exam deviations from the site profile (patient positioning in the coil,
/// motion, slab size).
#[derive(Debug, Clone)]
pub(crate) struct ExamScan {
    pub slices: usize,
    bias_angle: f64,
    bias_curvature: f64,
    bias_through_plane: f64,
    noise_seed: u64,
    pub ghosting: Option<Ghosting>,
    /// Pixels of anatomy beyond each phase-encode edge that fold back in.
    pub wrap: usize,
}

impl ExamScan {
    pub(crate) fn sample(profile: &ScannerProfile, exam_seed: u64) -> Self {
        let mut rng = std_rng(exam_seed, salt::SCANNER);
        let lo = (*SLICE_RANGE.start()).max(profile.slices.saturating_sub(2));
        let hi = (*SLICE_RANGE.end()).min(profile.slices + 2).max(lo);
        let slices = rng.random_range(lo..=hi);
        let ghost_draw = rng.random_bool(profile.ghosting_rate.clamp(0.0, 1.0));
        let ghost = Ghosting {
            shift: rng.random_range(0.08..0.35),
            amplitude: rng.random_range(0.04..0.14),
            copies: rng.random_range(1..=3),
        };
        let wrap_draw = rng.random_bool(profile.wrap_rate.clamp(0.0, 1.0));
        let wrap = (profile.matrix as f64 * rng.random_range(0.1..0.28)).round() as usize;
        Self {
            slices,
            bias_angle: profile.bias_field_angle + rng.random_range(-0.4..0.4),
            bias_curvature: rng.random_range(-0.5..0.5),
            bias_through_plane: rng.random_range(-0.3..0.3),
            noise_seed: mix(exam_seed, salt::NOISE),
            ghosting: ghost_draw.then_some(ghost),
            wrap: if wrap_draw { wrap.max(1) } else { 0 },
        }
    }

    /// Forces ghosting on (with this exam's drawn look) or off.
    pub(crate) fn set_ghosting(&mut self, on: bool, exam_seed: u64) {
        self.ghosting = on.then(|| {
            self.ghosting.unwrap_or_else(|| {
                let mut rng = std_rng(exam_seed, salt::SCANNER ^ 1);
                Ghosting {
                    shift: rng.random_range(0.08..0.35),
                    amplitude: rng.random_range(0.06..0.14),
                    copies: rng.random_range(1..=3),
                }
            })
        });
    }

    /// Forces wrap-around on or off.
    pub(crate) fn set_wrap(&mut self, on: bool, profile: &ScannerProfile) {
        self.wrap = if on {
            self.wrap
                .max((profile.matrix as f64 * 0.2).round() as usize)
        } else {
            0
        };
    }
}

/// Folds anatomy rendered beyond the phase-encode edges (`extra` pixels on each side
/// of an `n × n` field) back into the field, fading with the coil's sensitivity, as
/// an undersampled phase field of view does. `canvas` is `(n + 2·extra) × n` for rows,
/// `n × (n + 2·extra)` for columns; the result is `n × n`.
pub(crate) fn fold(canvas: &[f32], n: usize, extra: usize, axis: PhaseAxis) -> Vec<f32> {
    let m = n + 2 * extra;
    let get = |a: usize, b: usize| match axis {
        PhaseAxis::Rows => canvas[a * n + b],
        PhaseAxis::Cols => canvas[b * m + a],
    };
    let weight = |beyond: usize| 0.85 * (1.0 - beyond as f32 / extra.max(1) as f32);
    let mut out = vec![0.0f32; n * n];
    for a in 0..n {
        for b in 0..n {
            let mut v = get(a + extra, b);
            // Beyond the far edge lands near the near edge, and the other way round.
            if a < extra {
                v += weight(a) * get(extra + n + a, b);
            }
            if a + extra >= n {
                let k = a + extra - n;
                v += weight(extra - 1 - k) * get(k, b);
            }
            match axis {
                PhaseAxis::Rows => out[a * n + b] = v,
                PhaseAxis::Cols => out[b * n + a] = v,
            }
        }
    }
    out
}

/// Turns tissue signal (about 0..1) of slice `z` of `depth` into scanner integers
/// `0..=profile.full_scale`: gamma, coil shading, blur, motion ghosts, Rician noise.
pub(crate) fn acquire_slice(
    profile: &ScannerProfile,
    scan: &ExamScan,
    slice: &mut [f32],
    size: usize,
    z: usize,
    depth: usize,
) {
    let gamma = profile.gamma as f32;
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
    blur(slice, size, profile.blur_mm / profile.pixel_mm());
    if let Some(g) = scan.ghosting {
        ghost(slice, size, g, profile.phase_axis);
    }
    let sigma = profile.noise_sigma as f32;
    let mut rng = SplitMix64::new(mix(scan.noise_seed, z as u64));
    let top = profile.full_scale as f32;
    let full = (profile.gain * f64::from(profile.full_scale)) as f32;
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
            *px = ((m * full).min(top) + 0.5) as u32 as f32;
        }
    }
}

/// Adds faint copies of the slice shifted (circularly, as ghosts wrap in k-space)
/// along the phase axis, on both sides, each copy weaker than the one before.
fn ghost(slice: &mut [f32], size: usize, g: Ghosting, axis: PhaseAxis) {
    let src = slice.to_vec();
    for c in 1..=g.copies {
        let shift = ((g.shift * c as f32 * size as f32).round() as usize) % size.max(1);
        if shift == 0 {
            continue;
        }
        let a = g.amplitude / c as f32 / 2.0;
        for y in 0..size {
            for x in 0..size {
                let (y1, x1, y2, x2) = match axis {
                    PhaseAxis::Rows => ((y + shift) % size, x, (y + size - shift) % size, x),
                    PhaseAxis::Cols => (y, (x + shift) % size, y, (x + size - shift) % size),
                };
                slice[y * size + x] += a * (src[y1 * size + x1] + src[y2 * size + x2]);
            }
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
        let mut p = p;
        p.matrix = 32;
        p.full_scale = 1000;
        p.gain = 0.9;
        let mut scan = ExamScan::sample(&p, 5);
        scan.set_ghosting(true, 5);
        let mut s = vec![1.4f32; 32 * 32];
        acquire_slice(&p, &scan, &mut s, 32, 0, 20);
        assert!(
            s.iter()
                .all(|v| v.fract() == 0.0 && (0.0..=1000.0).contains(v))
        );
        assert!(s.contains(&1000.0));
    }

    #[test]
    fn fold_brings_anatomy_beyond_the_edges_back_in() {
        let (n, extra) = (8, 2);
        for axis in [PhaseAxis::Rows, PhaseAxis::Cols] {
            // Only the first pixel row (or column) beyond the far edge is lit.
            let mut canvas = vec![0.0f32; n * (n + 2 * extra)];
            for b in 0..n {
                let i = match axis {
                    PhaseAxis::Rows => (extra + n) * n + b,
                    PhaseAxis::Cols => b * (n + 2 * extra) + extra + n,
                };
                canvas[i] = 1.0;
            }
            let out = fold(&canvas, n, extra, axis);
            let lit: Vec<usize> = (0..n * n).filter(|&i| out[i] > 0.0).collect();
            assert_eq!(lit.len(), n, "{axis:?}");
            // It lands on the near edge.
            assert!(lit.iter().all(|&i| match axis {
                PhaseAxis::Rows => i / n == 0,
                PhaseAxis::Cols => i % n == 0,
            }));
        }
    }

    #[test]
    fn ghosts_copy_the_image_along_the_phase_axis_only() {
        let n = 16;
        let mut s = vec![0.0f32; n * n];
        s[8 * n + 8] = 1.0;
        let g = Ghosting {
            shift: 0.25,
            amplitude: 0.2,
            copies: 1,
        };
        ghost(&mut s, n, g, PhaseAxis::Rows);
        assert!(s[12 * n + 8] > 0.05 && s[4 * n + 8] > 0.05);
        assert_eq!(s[8 * n + 12], 0.0);
    }
}
