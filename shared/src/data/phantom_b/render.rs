//! Scene → ideal (noise-free) magnitude image, with partial volume.
//!
//! Each voxel averages the tissue signal over sample points spread through the slice
//! thickness (3 sub-planes) and, for coarse pixels, 2×2 in-plane. Cost is kept down by
//! culling in levels: a 32-pixel block keeps only the objects that may reach it, 8- and
//! 4-pixel tiles narrow that list again, and a tile that no surface crosses is filled
//! with one tissue without sampling at all.

use super::contrast::{Grain, SignalTable, Tissue};
use super::geom::{Affine, V3, v3};
use super::grain::GrainField;
use super::scene::Scene;

/// Region sizes (pixels) of the successive culling levels.
const LEVELS: [usize; 3] = [32, 8, 4];
/// Slack on the cull radius for fields that are not exactly 1-Lipschitz.
const LIPSCHITZ_SLACK: f32 = 1.25;
/// In-plane supersampling only where pixels are coarser than this (mm).
const FINE_PIXEL: f32 = 0.8;

/// Where the voxels are: the scanner grid and its pose relative to the knee.
#[derive(Debug, Clone)]
pub(crate) struct Grid {
    pub depth: usize,
    pub rows: usize,
    /// Columns rendered (the image's, plus any wrap-around margin on both sides).
    pub cols: usize,
    /// Image column of rendered column 0 (negative with a wrap margin).
    pub col0: isize,
    /// Columns of the final image.
    pub image_cols: usize,
    pub px: f32,
    pub spacing: f32,
    pub thickness: f32,
    /// Knee → scanner.
    pub pose: Affine,
}

impl Grid {
    /// Scanner coordinates (mm) of continuous voxel index (slice, row, image column).
    pub fn scanner(&self, k: f32, i: f32, j: f32) -> V3 {
        v3(
            (k - (self.depth as f32 - 1.0) * 0.5) * self.spacing,
            (self.image_cols as f32 * 0.5 - j - 0.5) * self.px,
            (self.rows as f32 * 0.5 - i - 0.5) * self.px,
        )
    }
}

/// What the renderer produces: ideal signal, and per voxel the tissue when all its
/// samples agree (`u8::MAX` for mixed voxels), used by tests.
pub(crate) struct Rendered {
    pub signal: Vec<f32>,
    pub labels: Option<Vec<u8>>,
}

struct Sampler<'a> {
    scene: &'a Scene,
    table: &'a SignalTable,
    grain: &'a GrainField,
    subs: Vec<V3>,
}

/// One slice being rendered: knee coordinates of its pixels and where they go.
struct Slice<'a> {
    origin: V3,
    step_i: V3,
    step_j: V3,
    cols: usize,
    out: &'a mut [f32],
    labels: Option<&'a mut [u8]>,
}

impl Slice<'_> {
    fn at(&self, i: f32, j: f32) -> V3 {
        self.origin + self.step_i * i + self.step_j * j
    }
}

impl Sampler<'_> {
    /// Renders the pixel rectangle `[y, x, h, w]` given the objects that may reach it:
    /// narrows the list, then either splits into the next level's regions, fills one
    /// tissue, or samples each voxel.
    #[allow(clippy::too_many_arguments)]
    fn region(
        &self,
        s: &mut Slice,
        radius: &dyn Fn(usize, usize) -> f32,
        [y, x, h, w]: [usize; 4],
        level: usize,
        input: &[u16],
        rest: Tissue,
        lists: &mut [Vec<u16>],
    ) {
        let c = s.at(
            y as f32 + (h as f32 - 1.0) * 0.5,
            x as f32 + (w as f32 - 1.0) * 0.5,
        );
        let (mine, deeper) = lists.split_at_mut(1);
        let cands = &mut mine[0];
        let rest = self.cull(c, radius(h, w), input, rest, cands);
        if !cands.is_empty() && level + 1 < LEVELS.len() {
            let step = LEVELS[level + 1];
            for ty in (y..y + h).step_by(step) {
                for tx in (x..x + w).step_by(step) {
                    let r = [ty, tx, step.min(y + h - ty), step.min(x + w - tx)];
                    self.region(s, radius, r, level + 1, cands, rest, deeper);
                }
            }
            return;
        }
        for yy in y..y + h {
            for xx in x..x + w {
                let p = s.at(yy as f32, xx as f32);
                let mut g = None;
                let (v, t) = if cands.is_empty() {
                    (self.textured(rest, p, &mut g), rest as u8)
                } else {
                    let mut acc = 0.0;
                    let mut first = None;
                    let mut mixed = false;
                    for off in &self.subs {
                        let t = self.scene.classify(p + *off, cands, rest);
                        acc += self.textured(t, p, &mut g);
                        match first {
                            None => first = Some(t),
                            Some(f) if f != t => mixed = true,
                            _ => {}
                        }
                    }
                    let t = if mixed {
                        u8::MAX
                    } else {
                        first.map_or(0, |t| t as u8)
                    };
                    (acc / self.subs.len() as f32, t)
                };
                s.out[yy * s.cols + xx] = v;
                if let Some(l) = s.labels.as_deref_mut() {
                    l[yy * s.cols + xx] = t;
                }
            }
        }
    }

    /// Objects that may matter within `radius` of `c`, in priority order, and the tissue
    /// everywhere else there.
    fn cull(&self, c: V3, radius: f32, input: &[u16], rest: Tissue, out: &mut Vec<u16>) -> Tissue {
        out.clear();
        let margin = radius * LIPSCHITZ_SLACK + 0.3;
        for &i in input {
            let obj = &self.scene.objects[i as usize];
            if obj.aabb.dist2(c) > margin * margin {
                continue;
            }
            let d = obj.shape.eval(c);
            if d > margin {
                continue;
            }
            if d < -(margin + obj.solid_depth()) {
                return obj.tissue;
            }
            out.push(i);
            if d < -margin {
                return rest;
            }
        }
        rest
    }

    fn textured(&self, t: Tissue, p: V3, g: &mut Option<(f32, f32)>) -> f32 {
        let base = self.table.of(t);
        let (kind, amp) = self.table.grain[t as usize];
        if kind == Grain::None {
            return base;
        }
        let (iso, fib) = *g.get_or_insert_with(|| (self.grain.iso(p), self.grain.fibre(p)));
        base * (1.0 + amp * if kind == Grain::Iso { iso } else { fib })
    }
}

/// Renders the ideal magnitude of every voxel (slice-major, row-major).
pub(crate) fn render(
    scene: &Scene,
    grid: &Grid,
    table: &SignalTable,
    grain: &GrainField,
    want_labels: bool,
) -> Rendered {
    let (rows, cols) = (grid.rows, grid.cols);
    let n = rows * cols;
    let mut signal = vec![0.0f32; grid.depth * n];
    let mut labels = want_labels.then(|| vec![0u8; grid.depth * n]);
    let to_knee = grid.pose.rot.transpose();
    let step_i = to_knee.apply(v3(0.0, 0.0, -grid.px));
    let step_j = to_knee.apply(v3(0.0, -grid.px, 0.0));
    let normal = to_knee.apply(v3(grid.thickness / 3.0, 0.0, 0.0));
    let ss = if grid.px > FINE_PIXEL { 2 } else { 1 };
    let mut subs = Vec::new();
    for s in [-1.0f32, 0.0, 1.0] {
        for a in 0..ss {
            for b in 0..ss {
                let off = |q: usize| {
                    if ss == 1 {
                        0.0
                    } else {
                        (q as f32 + 0.5) / ss as f32 - 0.5
                    }
                };
                subs.push(normal * s + step_i * off(a) + step_j * off(b));
            }
        }
    }
    let sampler = Sampler {
        scene,
        table,
        grain,
        subs,
    };
    let all: Vec<u16> = (0..scene.objects.len() as u16).collect();
    let half_slab = grid.thickness * 0.5;
    let radius = |h: usize, w: usize| {
        let (a, b) = (h as f32 * grid.px * 0.5, w as f32 * grid.px * 0.5);
        (a * a + b * b + half_slab * half_slab).sqrt()
    };
    let mut lists = vec![Vec::new(); LEVELS.len()];
    for k in 0..grid.depth {
        let origin = grid
            .pose
            .unapply(grid.scanner(k as f32, 0.0, grid.col0 as f32));
        let mut slice = Slice {
            origin,
            step_i,
            step_j,
            cols,
            out: &mut signal[k * n..(k + 1) * n],
            labels: labels.as_mut().map(|l| &mut l[k * n..(k + 1) * n]),
        };
        for by in (0..rows).step_by(LEVELS[0]) {
            for bx in (0..cols).step_by(LEVELS[0]) {
                let (bh, bw) = (LEVELS[0].min(rows - by), LEVELS[0].min(cols - bx));
                sampler.region(
                    &mut slice,
                    &radius,
                    [by, bx, bh, bw],
                    0,
                    &all,
                    Tissue::Air,
                    &mut lists,
                );
            }
        }
    }
    Rendered { signal, labels }
}
