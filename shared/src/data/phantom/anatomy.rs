//! A sagittal knee as tissue signal, slice by slice, medial to lateral.
//!
//! Anatomy coordinates are fractions of the image width with the joint centre at the
//! origin, `x` growing posteriorly (anterior is on the left, as knee sagittals are
//! displayed) and `y` inferiorly. The tibia defines the frame; the femur and patella
//! live in a frame rotated by the flexion angle. Signal is proton-density-like without
//! fat suppression: fat and marrow bright, fluid brighter, cartilage intermediate,
//! muscle darker, tendons, ligaments, menisci and cortex near black.

use std::ops::Range;

use rand::Rng;

use super::lesions::Acl;
use super::scanner::{SLICE_RANGE, ScannerProfile};
use super::shapes::{
    Rot, V2, bezier, capsule, circle, ellipse, polyline, round_box, smooth_intersection,
    smooth_union,
};
use super::texture::SliceNoise;

/// Signal levels before the scanner: the only place tissue contrast is decided.
mod signal {
    pub const SKIN: f32 = 0.45;
    pub const CORTEX: f32 = 0.07;
    pub const CARTILAGE: f32 = 0.5;
    pub const FLUID: f32 = 0.95;
    pub const TENDON: f32 = 0.06;
    pub const MENISCUS: f32 = 0.05;
    pub const PCL: f32 = 0.07;
    pub const FLOW_VOID: f32 = 0.03;
    pub const VEIN: f32 = 0.7;
    pub const OEDEMA: f32 = 0.98;
}

/// Which part of the knee a slice cuts through.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Side {
    Medial,
    Notch,
    Lateral,
}

/// One exam's knee: geometry, tissue levels and the ACL, fixed before any slice is drawn.
pub(crate) struct Knee {
    size: usize,
    depth: usize,
    notch: Range<usize>,
    acl_slices: Range<usize>,
    pcl_slices: Range<usize>,
    centre: V2,
    scale: f32,
    rot: Rot,
    flex: Rot,
    cartilage: f32,
    effusion: f32,
    fat: f32,
    marrow: f32,
    muscle: f32,
    condyle_radius: f32,
    roof_a: V2,
    roof_normal: V2,
    pcl: Vec<V2>,
    acl: Acl,
    texture_seed: u64,
}

/// The ACL's attachments, drawn with the anatomy so that the lesion module only decides
/// what happens between them.
pub(crate) struct AclPlacement {
    pub femoral: V2,
    pub tibial: V2,
    pub thickness: f32,
    pub signal: f32,
}

impl Knee {
    /// Draws the exam's anatomy; `make_acl` receives the attachments in anatomy
    /// coordinates and returns the ligament in whatever condition the label asks for.
    pub(crate) fn sample(
        rng: &mut impl Rng,
        profile: &ScannerProfile,
        size: usize,
        texture_seed: u64,
        make_acl: impl FnOnce(AclPlacement) -> Acl,
    ) -> Self {
        let lo = (*SLICE_RANGE.start()).max(profile.slices.saturating_sub(2));
        let hi = (*SLICE_RANGE.end()).min(profile.slices + 2).max(lo);
        let depth = rng.random_range(lo..=hi);
        let notch_len = rng.random_range(4..=6usize);
        let mid = (depth / 2) as i64 + rng.random_range(-1..=1i64);
        let start = (mid - notch_len as i64 / 2).max(0) as usize;
        let notch = start..(start + notch_len).min(depth);
        let split = notch.start + notch_len / 2;
        let pcl_slices = notch.start..split;
        let acl_slices = split..notch.end;

        let scale = (profile.fov_scale * rng.random_range(0.9..1.1)) as f32;
        let centre = V2::new(
            -0.05 * scale + rng.random_range(-0.03..0.03),
            rng.random_range(-0.04..0.04),
        );
        let rot = Rot::new(rng.random_range(-0.1..0.1));
        let flex = Rot::new(rng.random_range(0.0..0.18));

        let roof_a = V2::new(-0.07 + rng.random_range(-0.01..0.01), -0.03);
        let roof_b = V2::new(0.15, -0.2 + rng.random_range(-0.015..0.015));
        let along = roof_b.sub(roof_a);
        let roof_normal = along.perp().scale(1.0 / along.len());

        let femoral_f = V2::new(
            0.1 + rng.random_range(-0.01..0.01),
            -0.155 + rng.random_range(-0.008..0.008),
        );
        let tibial = V2::new(-0.045 + rng.random_range(-0.012..0.012), 0.02);
        let thickness = rng.random_range(0.046..0.054);
        let acl_signal = rng.random_range(0.07..0.14);
        let pcl_origin = flex.apply(V2::new(-0.01, -0.075));
        let pcl = bezier(
            pcl_origin,
            V2::new(0.17 + rng.random_range(-0.015..0.015), -0.09),
            V2::new(0.15, 0.1),
            16,
        );

        let cartilage = rng.random_range(0.01..0.014);
        let effusion = rng.random_range(0.004..0.012);
        let fat = rng.random_range(0.78..0.86);
        let marrow = rng.random_range(0.66..0.76);
        let muscle = rng.random_range(0.28..0.38);
        let condyle_radius = rng.random_range(0.13..0.15);

        let acl = make_acl(AclPlacement {
            femoral: flex.apply(femoral_f),
            tibial,
            thickness,
            signal: acl_signal,
        });
        Self {
            size,
            depth,
            notch,
            acl_slices,
            pcl_slices,
            centre,
            scale,
            rot,
            flex,
            cartilage,
            effusion,
            fat,
            marrow,
            muscle,
            condyle_radius,
            roof_a,
            roof_normal,
            pcl,
            acl,
            texture_seed,
        }
    }

    pub(crate) fn depth(&self) -> usize {
        self.depth
    }

    pub(crate) fn acl(&self) -> &Acl {
        &self.acl
    }

    pub(crate) fn acl_slices(&self) -> Range<usize> {
        self.acl_slices.clone()
    }

    fn to_anatomy(&self, x: f32, y: f32) -> V2 {
        let n = self.size as f32;
        let p = V2::new((x + 0.5) / n - 0.5, (y + 0.5) / n - 0.5);
        self.rot.inverse(p.sub(self.centre)).scale(1.0 / self.scale)
    }

    fn to_pixel(&self, q: V2) -> V2 {
        let n = self.size as f32;
        let p = self.rot.apply(q.scale(self.scale)).add(self.centre);
        V2::new((p.x + 0.5) * n - 0.5, (p.y + 0.5) * n - 0.5)
    }

    /// Pixel box `[y0, x0, y1, x1]` (end-exclusive) around the ACL's territory.
    pub(crate) fn acl_box(&self) -> [usize; 4] {
        let (lo, hi) = self.acl.territory();
        let corners = [lo, hi, V2::new(lo.x, hi.y), V2::new(hi.x, lo.y)].map(|c| self.to_pixel(c));
        let n = self.size as f32;
        let min_x = corners
            .iter()
            .map(|c| c.x)
            .fold(f32::INFINITY, f32::min)
            .clamp(0.0, n);
        let max_x = corners
            .iter()
            .map(|c| c.x)
            .fold(f32::NEG_INFINITY, f32::max)
            .clamp(0.0, n);
        let min_y = corners
            .iter()
            .map(|c| c.y)
            .fold(f32::INFINITY, f32::min)
            .clamp(0.0, n);
        let max_y = corners
            .iter()
            .map(|c| c.y)
            .fold(f32::NEG_INFINITY, f32::max)
            .clamp(0.0, n);
        [
            min_y.floor() as usize,
            min_x.floor() as usize,
            (max_y.ceil() as usize)
                .max(min_y.floor() as usize + 1)
                .min(self.size),
            (max_x.ceil() as usize)
                .max(min_x.floor() as usize + 1)
                .min(self.size),
        ]
    }

    /// Where slice `z` lies: its side and how far (0 at the notch, 1 at the edge of the
    /// knee) it is from the notch.
    fn place(&self, z: usize) -> (Side, f32) {
        if self.notch.contains(&z) {
            (Side::Notch, 0.0)
        } else if z < self.notch.start {
            (
                Side::Medial,
                (self.notch.start - z) as f32 / self.notch.start.max(1) as f32,
            )
        } else {
            let span = (self.depth - self.notch.end + 1).max(1) as f32;
            (Side::Lateral, (z + 1 - self.notch.end) as f32 / span)
        }
    }

    /// Tissue signal (about 0..1) of slice `z`, row-major `size × size`.
    pub(crate) fn render_slice(&self, z: usize, out: &mut [f32]) {
        let (side, d) = self.place(z);
        let coarse = SliceNoise::new(self.texture_seed, z, 18);
        let fine = SliceNoise::new(self.texture_seed ^ 0x9e37, z, 56);
        let ctx = SliceContext {
            side,
            d,
            bone: (1.0 - (d * 0.92).powi(4)).max(0.0).sqrt().max(0.35),
            acl: self.acl_slices.contains(&z),
            pcl: self.pcl_slices.contains(&z),
            vessels: (z as isize - (self.notch.start + self.notch.end) as isize / 2).abs() <= 2,
        };
        let n = self.size as f32;
        let origin = self.to_anatomy(0.0, 0.0);
        let step_x = self.to_anatomy(1.0, 0.0).sub(origin);
        let step_y = self.to_anatomy(0.0, 1.0).sub(origin);
        let hints = self.bone_hints(&ctx);
        let cells = self.size.div_ceil(CELL);
        for (y, row) in out.chunks_mut(self.size).enumerate() {
            let row_start = origin.add(step_y.scale(y as f32));
            for (x, px) in row.iter_mut().enumerate() {
                let q = row_start.add(step_x.scale(x as f32));
                let t = self.tissue(q, &ctx, hints[(y / CELL) * cells + x / CELL]);
                let (u, v) = (x as f32 / n, y as f32 / n);
                let mut k = 1.0;
                if t.coarse != 0.0 {
                    k += t.coarse * coarse.at(u, v);
                }
                if t.fine != 0.0 {
                    k += t.fine * fine.at(u, v);
                }
                *px = t.signal * k;
            }
        }
    }

    /// Femur and tibia distances only matter within a few percent of their surfaces.
    /// Evaluating them once per `CELL × CELL` block decides, for most blocks, that every
    /// pixel is far outside or deep inside, which is exact for every use the renderer
    /// makes of them and saves most of the distance evaluations.
    fn bone_hints(&self, ctx: &SliceContext) -> Vec<BoneHint> {
        let cells = self.size.div_ceil(CELL);
        let spacing = 1.0 / (self.size as f32 * self.scale);
        // Half-diagonal of a block, doubled because the smooth unions and the tibial
        // spines make the distances up to ~1.6-Lipschitz rather than exactly 1.
        let reach = 2.0 * 0.71 * CELL as f32 * spacing + BAND;
        let classify = |d: f32| {
            if d > reach {
                Some(FAR)
            } else if d < -reach {
                Some(-FAR)
            } else {
                None
            }
        };
        let mut hints = Vec::with_capacity(cells * cells);
        for cy in 0..cells {
            for cx in 0..cells {
                let c = |i: usize| (i * CELL) as f32 + CELL as f32 / 2.0 - 0.5;
                let q = self.to_anatomy(c(cx) + 0.5, c(cy) + 0.5);
                let qf = self.flex.inverse(q);
                hints.push(BoneHint {
                    femur: classify(self.femur(qf, ctx)),
                    tibia: classify(self.tibia(q, ctx)),
                });
            }
        }
        hints
    }

    /// The tissue at `q`; texture is applied by the caller only where it is asked for,
    /// because sampling noise for every pixel doubled generation time.
    fn tissue(&self, q: V2, ctx: &SliceContext, hint: BoneHint) -> Tissue {
        let qf = self.flex.inverse(q);
        let leg = leg_outline(if q.y < 0.0 { qf } else { q }, ctx.d);
        if leg > 0.0 {
            return Tissue::plain(0.0);
        }
        if leg > -0.006 {
            return Tissue::plain(signal::SKIN);
        }
        let mut t = Tissue::plain(self.fat);
        let subcutaneous = leg > -0.035;

        // Muscles: calf and hamstrings posteriorly, quadriceps anteriorly above the patella.
        let posterior_muscle = q.x > 0.2 && q.x > 0.2 + 0.06 * (-(q.y / 0.1).powi(2)).exp();
        let quadriceps = qf.x < -0.13 && qf.y < -0.33;
        if !subcutaneous && (posterior_muscle || quadriceps) {
            t = Tissue::textured(self.muscle, 0.15, 0.08);
        }
        if ctx.vessels && q.x > 0.24 && q.x < 0.33 && q.y.abs() < 0.06 {
            if circle(q, V2::new(0.27, -0.02), 0.018) < 0.0 {
                t = Tissue::plain(signal::FLOW_VOID);
            }
            if circle(q, V2::new(0.3, 0.03), 0.02) < 0.0 {
                t = Tissue::plain(signal::VEIN);
            }
        }

        // Extensor tendons.
        if ctx.d < 0.55 && q.x < -0.1 {
            let quad = capsule(qf, V2::new(-0.215, -0.26), V2::new(-0.165, -0.7), 0.016);
            let patellar = capsule(
                q,
                self.flex.apply(V2::new(-0.22, -0.075)),
                V2::new(-0.135, 0.2),
                0.012,
            );
            if quad < 0.0 || patellar < 0.0 {
                t = Tissue::plain(signal::TENDON);
            }
        }

        let femur = hint.femur.unwrap_or_else(|| self.femur(qf, ctx));
        let tibia = hint.tibia.unwrap_or_else(|| self.tibia(q, ctx));
        let patella = if ctx.d < 0.7 && qf.x < -0.12 && qf.y > -0.3 && qf.y < -0.03 {
            ellipse(
                qf,
                V2::new(-0.205, -0.165),
                V2::new(0.05 * ctx.bone, 0.095),
                Rot::new(0.15),
            )
        } else {
            FAR
        };
        let ct = self.cartilage;

        // Joint fluid: a thin rim over the articular surfaces and the suprapatellar recess.
        let in_capsule = qf.y > -0.45 && q.y < 0.05 && q.x > -0.22 && q.x < 0.22;
        let rim = |dist: f32, width: f32| dist >= ct && dist < ct + width;
        if in_capsule
            && ((rim(femur, self.effusion) && (qf.x < -0.04 || qf.y > -0.22))
                || (rim(tibia, self.effusion * 0.6) && q.y < 0.03)
                || rim(patella, self.effusion))
        {
            t = Tissue::plain(signal::FLUID);
        }

        if ctx.side != Side::Notch
            && ctx.d < 0.92
            && let Some(m) = self.meniscus(q, tibia, femur, ctx)
        {
            t = Tissue::plain(m);
        }

        if ctx.pcl
            && q.x > -0.05
            && q.x < 0.22
            && q.y > -0.16
            && q.y < 0.14
            && polyline(q, &self.pcl) < 0.03
        {
            t = Tissue::plain(signal::PCL);
        }
        if ctx.acl
            && let Some(s) = self.acl.sample(q, 1.0)
        {
            t = Tissue::textured(s.signal, 0.4 * s.heterogeneity, 0.3 * s.heterogeneity);
        }

        // Bones last: they hide the ligament attachments and own everything they overlap.
        let bruisable = ctx.side == Side::Lateral && ctx.d > 0.12 && ctx.d < 0.8;
        let bone = |dist: f32, scar: bool| {
            if dist > -0.008 {
                return Tissue::plain(signal::CORTEX);
            }
            let mut m = self.marrow;
            if scar {
                m *= 0.6;
            }
            if bruisable {
                m += (signal::OEDEMA - m) * self.acl.bruise_weight(qf, q);
            }
            Tissue::textured(m, 0.1, 0.07)
        };
        let cartilage = Tissue::textured(signal::CARTILAGE, 0.0, 0.05);
        if femur < 0.0 {
            t = bone(
                femur,
                (qf.y + 0.2 + 0.015 * (qf.x * 25.0).sin()).abs() < 0.004,
            );
        } else if femur < ct && qf.y > -0.3 && (ctx.side != Side::Notch || qf.x < -0.06) {
            t = cartilage;
        }
        if tibia < 0.0 {
            t = bone(tibia, (q.y - 0.13).abs() < 0.004);
        } else if tibia < ct && q.y < 0.035 && ctx.side != Side::Notch {
            t = cartilage;
        }
        if patella < 0.0 {
            t = bone(patella, false);
        } else if patella < ct * 1.3 && qf.x > -0.2 && femur > 0.0 {
            t = cartilage;
        }
        if ctx.side == Side::Lateral && ctx.d > 0.55 && q.y > 0.1 && q.y < 0.24 {
            let fibula = circle(q, V2::new(0.12, 0.17), 0.045);
            if fibula < 0.0 && tibia > 0.0 {
                t = bone(fibula, false);
            }
        }
        t
    }

    fn femur(&self, qf: V2, ctx: &SliceContext) -> f32 {
        let bs = ctx.bone;
        let shaft = round_box(qf, V2::new(-0.005, -0.6), V2::new(0.105 * bs, 0.5), 0.02);
        let condyle = circle(qf, V2::new(0.04, -0.16), self.condyle_radius * bs);
        let trochlea = circle(qf, V2::new(-0.03, -0.17), 0.085 * bs);
        let bone = smooth_union(smooth_union(shaft, condyle, 0.06), trochlea, 0.03);
        if ctx.side == Side::Notch {
            // The intercondylar roof (Blumensaat's line): below it is the notch.
            let roof = qf.sub(self.roof_a).dot(self.roof_normal);
            smooth_intersection(bone, roof, 0.015)
        } else {
            bone
        }
    }

    fn tibia(&self, q: V2, ctx: &SliceContext) -> f32 {
        let bs = ctx.bone;
        let epiphysis = round_box(q, V2::new(0.015, 0.115), V2::new(0.155 * bs, 0.1), 0.035);
        let shaft = round_box(q, V2::new(0.0, 0.6), V2::new(0.105 * bs, 0.5), 0.02);
        let tubercle = circle(q, V2::new(0.015 - 0.14 * bs, 0.2), 0.035 * bs);
        let bone = smooth_union(smooth_union(epiphysis, shaft, 0.08), tubercle, 0.04);
        if ctx.side == Side::Notch && q.y < 0.08 {
            // Tibial spines rise into the notch.
            bone - 0.015 * (-((q.x - 0.04) / 0.03).powi(2)).exp()
        } else {
            bone
        }
    }

    /// Dark meniscal horns wedged between condyle and plateau at the joint margins.
    fn meniscus(&self, q: V2, tibia: f32, femur: f32, ctx: &SliceContext) -> Option<f32> {
        if tibia < 0.0 || femur < 0.003 || q.y > 0.03 || q.y < -0.08 {
            return None;
        }
        let bs = ctx.bone;
        let (front, back) = (0.015 - 0.15 * bs, 0.015 + 0.155 * bs);
        let horn = |outer: f32, inner: f32| {
            let t = (q.x - inner) / (outer - inner);
            ((0.0..=1.0).contains(&t) && tibia < 0.06 * t + 0.004).then_some(signal::MENISCUS)
        };
        horn(front, front + 0.07).or_else(|| horn(back, back - 0.09))
    }
}

/// Pixels per side of the blocks on which bone distances are pre-classified.
const CELL: usize = 8;
/// Stand-in distance for "far outside" (and, negated, "deep inside") a bone.
const FAR: f32 = 1.0;
/// Widest band around a bone surface that the renderer tests distances against
/// (cartilage plus the thickest fluid rim, with room to spare).
const BAND: f32 = 0.04;

/// Per-block knowledge of the bone distances: `Some` when the whole block is known to
/// be far outside or deep inside, `None` when pixels must be evaluated one by one.
#[derive(Clone, Copy)]
struct BoneHint {
    femur: Option<f32>,
    tibia: Option<f32>,
}

/// A tissue's signal and how strongly coarse and fine texture modulate it.
#[derive(Clone, Copy)]
struct Tissue {
    signal: f32,
    coarse: f32,
    fine: f32,
}

impl Tissue {
    fn plain(signal: f32) -> Self {
        Self::textured(signal, 0.0, 0.0)
    }

    fn textured(signal: f32, coarse: f32, fine: f32) -> Self {
        Self {
            signal,
            coarse,
            fine,
        }
    }
}

struct SliceContext {
    side: Side,
    /// 0 at the notch, 1 at the edge of the knee.
    d: f32,
    /// How much of the bones' full sagittal extent this slice cuts.
    bone: f32,
    acl: bool,
    pcl: bool,
    vessels: bool,
}

/// Skin surface: negative inside the leg, a little slimmer towards the knee's edges.
fn leg_outline(p: V2, d: f32) -> f32 {
    let anterior = -0.3 + 0.025 * (p.y / 0.35).powi(2) + 0.03 * d * d;
    let posterior = 0.4 - 0.04 * (p.y / 0.5).powi(2) - 0.04 * d * d;
    (anterior - p.x).max(p.x - posterior)
}
