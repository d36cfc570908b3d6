//! Per-site acquisition protocol and case mix: what makes the sites non-IID.

use super::contrast::Contrast;
use super::rng::{Rng, derive, key};
use crate::data::phantom::PhantomConfig;

/// Direction of phase encoding in the sagittal plane: where ghosts and wrap-around go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PhaseAxis {
    /// Anterior-posterior (image columns): the usual choice for a sagittal knee.
    AnteriorPosterior,
    /// Superior-inferior (image rows).
    SuperiorInferior,
}

/// One site's acquisition protocol and case mix (serialisable, goes into cohort.json).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SiteProtocol {
    pub site: usize,
    /// Parent of every exam seed at this site.
    pub seed: u64,
    pub contrast: Contrast,
    /// Square in-plane field of view, mm.
    pub fov_mm: f64,
    /// In-plane matrix (rows = columns).
    pub matrix: usize,
    pub slice_thickness_mm: f64,
    /// Centre-to-centre slice distance (thickness plus the gap).
    pub slice_spacing_mm: f64,
    pub slices: usize,
    pub phase_axis: PhaseAxis,
    /// Fat signal over noise standard deviation at this protocol's voxel size.
    pub snr: f64,
    /// Coil bias field strength (peak log-amplitude).
    pub bias: f64,
    /// Chance an exam shows motion ghosts along the phase axis.
    pub ghost_probability: f64,
    /// Chance an exam is wrapped (phase field of view too small, no oversampling).
    pub wrap_probability: f64,
    /// Fraction of fat signal suppressed on fat-saturated contrasts.
    pub fat_sat_efficiency: f64,
    /// Scanner units for relative signal 1.0 (the output is 12-bit, 0–4095).
    pub gain: f64,
    /// Share of exams with a torn ACL.
    pub prevalence: f64,
    /// Share of intact exams given a tear mimic.
    pub mimic_rate: f64,
    pub exams: usize,
}

/// Matrices real knee protocols use.
const MATRICES: [usize; 9] = [160, 192, 224, 256, 288, 320, 384, 448, 512];
/// Voxel volume (mm³) at which `snr` equals the site's drawn base SNR.
const REFERENCE_VOXEL_MM3: f64 = 0.75;

/// Site `site`'s protocol; deterministic in `(cfg.seed, site)` (and `cfg.image_size`,
/// `cfg.exams_per_site`, `cfg.size_jitter`, which it honours).
pub fn site_protocol(cfg: &PhantomConfig, site: usize) -> SiteProtocol {
    let seed = derive(cfg.seed, key::PROTOCOL, site as u64);
    let mut r = Rng::new(seed);
    let contrast = Contrast::ALL[r.int(0, 3)];
    let fov_mm = round_to(r.range(120.0, 180.0), 2.0);
    let drawn = MATRICES[r.int(0, MATRICES.len() - 1)];
    let matrix = if cfg.image_size > 0 {
        cfg.image_size
    } else {
        drawn
    };
    let slice_thickness_mm = round_to(r.range(2.5, 4.5), 0.5);
    let slice_spacing_mm = slice_thickness_mm * (1.0 + round_to(r.range(0.0, 0.2), 0.05));
    let coverage = r.range(75.0, 140.0);
    let slices = ((coverage / slice_spacing_mm).round() as usize).clamp(16, 50);
    let phase_axis = if r.chance(0.7) {
        PhaseAxis::AnteriorPosterior
    } else {
        PhaseAxis::SuperiorInferior
    };
    let base_snr = r.range(14.0, 34.0);
    let px = fov_mm / drawn as f64;
    let voxel = px * px * slice_thickness_mm;
    let snr = (base_snr * (voxel / REFERENCE_VOXEL_MM3).sqrt()).clamp(6.0, 60.0);
    let bias = r.range(0.1, 0.5);
    let ghost_probability = r.range(0.0, 0.35);
    let wrap_probability = r.range(0.0, 0.3);
    let fat_sat_efficiency = r.range(0.85, 0.98);
    let gain = r.range(1800.0, 3400.0);
    let prevalence = r.range(0.25, 0.5);
    let mimic_rate = r.range(0.2, 0.35);
    let jitter = if cfg.size_jitter > 0.0 {
        1.0 + cfg.size_jitter * r.range(-1.0, 1.0)
    } else {
        1.0
    };
    let exams = if cfg.exams_per_site == 0 {
        0
    } else {
        ((cfg.exams_per_site as f64 * jitter).round() as usize).max(2)
    };
    SiteProtocol {
        site,
        seed,
        contrast,
        fov_mm,
        matrix,
        slice_thickness_mm,
        slice_spacing_mm,
        slices,
        phase_axis,
        snr,
        bias,
        ghost_probability,
        wrap_probability,
        fat_sat_efficiency,
        gain,
        prevalence,
        mimic_rate,
        exams,
    }
}

fn round_to(v: f64, step: f64) -> f64 {
    (v / step).round() * step
}
