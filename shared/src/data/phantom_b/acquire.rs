//! The scanner: patient pose in the magnet, coil bias, wrap-around, motion ghosts,
//! Rician noise and 12-bit quantisation.

use super::contrast::{SignalTable, TISSUES};
use super::geom::{Affine, M3, v3};
use super::protocol::{PhaseAxis, SiteProtocol};
use super::render::Grid;
use super::rng::{Rng, derive, key, normal_pair};

/// Largest value a 12-bit scanner stores.
pub(crate) const MAX_VALUE: f32 = 4095.0;

/// Per-exam acquisition draws: everything about the exam that is not anatomy or lesion.
#[derive(Debug, Clone)]
pub(crate) struct Acquisition {
    pub pose: Affine,
    /// Polynomial log-bias coefficients per axis (slice, row, column), on [−1, 1].
    bias: [[f32; 2]; 3],
    /// Coil-element bump: amplitude, centre and width per axis (normalised units).
    bump: (f32, [f32; 3], f32),
    /// Ghost strength and replica shift as a fraction of the phase field of view.
    pub ghost: Option<(f32, f32)>,
    /// Wrap margin as a fraction of the phase field of view on each side.
    pub wrap: Option<f32>,
    pub jitter: [f32; TISSUES],
    pub fat_sat: f32,
}

impl Acquisition {
    pub fn draw(p: &SiteProtocol, exam_seed: u64) -> Self {
        let mut r = Rng::stream(exam_seed, key::ACQUIRE, 0);
        let mirror = if r.chance(0.5) { -1.0 } else { 1.0 };
        let rot = M3::rot_x(r.sym(10.0))
            .mul(&M3::rot_z(r.sym(6.0)))
            .mul(&M3::rot_y(r.sym(4.0)))
            .mul(&M3::from_rows(
                v3(mirror, 0.0, 0.0),
                v3(0.0, 1.0, 0.0),
                v3(0.0, 0.0, 1.0),
            ));
        let pose = Affine {
            rot,
            t: v3(r.sym(10.0), r.sym(20.0), r.sym(20.0)),
        };
        let b = p.bias as f32;
        let bias = [0, 1, 2].map(|_| [r.sym(b * 0.5), r.sym(b * 0.4)]);
        let bump = (
            r.rf(0.0, b),
            [r.sym(0.8), r.sym(0.8), r.sym(0.8)],
            r.rf(0.5, 1.0),
        );
        let ghost = r
            .chance(p.ghost_probability)
            .then(|| (r.rf(0.03, 0.12), 1.0 / r.rf(2.5, 6.0)));
        let wrap = (r.chance(p.wrap_probability) && p.phase_axis == PhaseAxis::AnteriorPosterior)
            .then(|| r.rf(0.15, 0.3));
        let jitter = [0; TISSUES].map(|_| 1.0 + 0.06 * r.normal().clamp(-2.5, 2.5) as f32);
        let fat_sat = (p.fat_sat_efficiency as f32 + r.sym(0.03)).clamp(0.7, 0.995);
        Self {
            pose,
            bias,
            bump,
            ghost,
            wrap,
            jitter,
            fat_sat,
        }
    }

    pub fn grid(&self, p: &SiteProtocol) -> Grid {
        let cols = p.matrix;
        let margin = self.wrap.map_or(0, |f| (cols as f32 * f).ceil() as usize);
        Grid {
            depth: p.slices,
            rows: p.matrix,
            cols: cols + 2 * margin,
            col0: -(margin as isize),
            image_cols: cols,
            px: (p.fov_mm / p.matrix as f64) as f32,
            spacing: p.slice_spacing_mm as f32,
            thickness: p.slice_thickness_mm as f32,
            pose: self.pose,
        }
    }

    pub fn table(&self, p: &SiteProtocol) -> SignalTable {
        SignalTable::new(p.contrast, self.fat_sat, &self.jitter)
    }

    /// Log-bias profile along one axis sampled at `n` points.
    fn profile(&self, axis: usize, n: usize) -> Vec<(f32, f32)> {
        let [c1, c2] = self.bias[axis];
        let (_, centre, width) = self.bump;
        (0..n)
            .map(|i| {
                let u = if n > 1 {
                    2.0 * i as f32 / (n - 1) as f32 - 1.0
                } else {
                    0.0
                };
                let g = (-((u - centre[axis]) / width).powi(2)).exp();
                ((c1 * u + c2 * u * u).exp(), g)
            })
            .collect()
    }

    /// Ideal rendered signal → stored 12-bit image.
    pub fn acquire(
        &self,
        signal: Vec<f32>,
        grid: &Grid,
        p: &SiteProtocol,
        exam_seed: u64,
    ) -> Vec<f32> {
        let (d, h, wr, w) = (grid.depth, grid.rows, grid.cols, grid.image_cols);
        let margin = (-grid.col0) as usize;
        let (pk, pi, pj) = (self.profile(0, d), self.profile(1, h), self.profile(2, wr));
        let amp = self.bump.0;
        let sigma = 0.8 / p.snr as f32;
        let gain = p.gain as f32;
        let mut out = vec![0.0f32; d * h * w];
        let mut slice = vec![0.0f32; h * w];
        let mut ghosted = vec![0.0f32; h * w];
        for k in 0..d {
            let src = &signal[k * h * wr..(k + 1) * h * wr];
            slice.fill(0.0);
            for i in 0..h {
                for jr in 0..wr {
                    let b =
                        pk[k].0 * pi[i].0 * pj[jr].0 * (1.0 + amp * pk[k].1 * pi[i].1 * pj[jr].1);
                    // Columns outside the phase field of view fold back onto it.
                    let j = (jr as isize - margin as isize).rem_euclid(w as isize) as usize;
                    slice[i * w + j] += src[i * wr + jr] * b;
                }
            }
            let img = match self.ghost {
                Some((a, frac)) => {
                    ghost(&slice, &mut ghosted, h, w, p.phase_axis, a, frac);
                    &ghosted
                }
                None => &slice,
            };
            let mut r = Rng::stream(exam_seed, key::NOISE, k as u64);
            for (o, &m) in out[k * h * w..(k + 1) * h * w].iter_mut().zip(img.iter()) {
                let (n1, n2) = normal_pair(&mut r);
                let re = m + sigma * n1;
                let im = sigma * n2;
                *o = ((re * re + im * im).sqrt() * gain)
                    .round()
                    .clamp(0.0, MAX_VALUE);
            }
        }
        out
    }
}

/// Periodic motion puts attenuated replicas of the image at multiples of a shift along
/// the phase-encode axis, wrapping around the field of view.
fn ghost(src: &[f32], dst: &mut [f32], h: usize, w: usize, axis: PhaseAxis, a: f32, frac: f32) {
    let (n, stride_of) = match axis {
        PhaseAxis::AnteriorPosterior => (w, 1usize),
        PhaseAxis::SuperiorInferior => (h, w),
    };
    let s = ((n as f32 * frac).round() as usize).clamp(1, n - 1);
    for i in 0..h {
        for j in 0..w {
            let pos = if stride_of == 1 { j } else { i };
            let at = |q: usize| {
                if stride_of == 1 {
                    src[i * w + q]
                } else {
                    src[q * w + j]
                }
            };
            let (p1, m1) = ((pos + s) % n, (pos + n - s) % n);
            let (p2, m2) = ((pos + 2 * s) % n, (pos + 2 * n - 2 * s % n) % n);
            dst[i * w + j] =
                src[i * w + j] + a * 0.5 * (at(p1) + at(m1)) + a * 0.15 * (at(p2) + at(m2));
        }
    }
}

/// Seed of the grain field, kept with the other per-exam streams.
pub(crate) fn grain_seed(exam_seed: u64) -> u64 {
    derive(exam_seed, key::GRAIN, 0)
}
