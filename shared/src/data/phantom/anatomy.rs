//! A knee in millimetres, drawn as tissue signal on any sagittal plane through it.
//!
//! In-plane, anatomy coordinates are fractions of the knee's size (`size_mm`, about
//! 160 mm) with the joint centre at the origin, `x` growing posteriorly (anterior is on
//! the left, as knee sagittals are displayed) and `y` inferiorly. The tibia defines the
//! frame; the femur lives in a frame rotated by the flexion angle about its condyles,
//! the patella in one that follows the patellar tendon. Along the slice axis positions
//! are millimetres from the centre of the intercondylar notch, lateral positive: the
//! notch, the condyles, the patella, the fibula, the cruciates and the leg itself each
//! have a medio-lateral extent, so a plane shows only what really crosses it.
//!
//! Where the knee lies in the field of view (offset, rotation, flexion, position along
//! the slab) is the [`Pose`], kept apart from the knee so the same knee can be imaged
//! under any protocol.

use std::ops::Range;

use rand::Rng;

use super::lesions::{Acl, AclPlacement};
use super::palette::Palette;
use super::shapes::{
    Rot, V2, capsule, circle, ellipse, polyline, round_box, smooth_intersection, smooth_union,
    smoothstep,
};
use super::texture::SliceNoise;

/// Where the knee lies in the scanner's field of view.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Pose {
    /// Joint centre relative to the image centre in mm (`x` posterior, `y` inferior).
    pub offset_mm: V2,
    /// In-plane rotation, radians.
    pub rotation: f32,
    /// Knee flexion, radians (0 = straight).
    pub flexion: f32,
    /// How far the slab's centre misses the knee's bony centre, mm (lateral positive).
    pub ml_shift_mm: f32,
}

impl Pose {
    /// A positioning as technologists achieve it: the joint near but not at the image
    /// centre, a little rotated, the knee somewhat flexed, the slab roughly centred on
    /// the knee.
    pub(crate) fn sample(rng: &mut impl Rng) -> Self {
        Self {
            offset_mm: V2::new(
                -6.0 + rng.random_range(-18.0..18.0),
                rng.random_range(-17.0..17.0),
            ),
            rotation: rng.random_range(-10.0f32..10.0).to_radians(),
            flexion: rng.random_range(0.0f32..30.0).to_radians(),
            ml_shift_mm: rng.random_range(-16.0..16.0),
        }
    }
}

/// The pixels one render covers: a `matrix × matrix` image of a square field of view,
/// possibly extended beyond it (rows or columns outside `0..matrix`) so that anatomy
/// outside the field can be folded back in as wrap-around.
#[derive(Debug, Clone)]
pub(crate) struct Grid {
    pub fov_mm: f32,
    pub matrix: usize,
    pub rows: Range<i64>,
    pub cols: Range<i64>,
}

impl Grid {
    pub(crate) fn square(fov_mm: f32, matrix: usize) -> Self {
        Self {
            fov_mm,
            matrix,
            rows: 0..matrix as i64,
            cols: 0..matrix as i64,
        }
    }

    pub(crate) fn pixel_mm(&self) -> f32 {
        self.fov_mm / self.matrix.max(1) as f32
    }

    pub(crate) fn height(&self) -> usize {
        (self.rows.end - self.rows.start).max(0) as usize
    }

    pub(crate) fn width(&self) -> usize {
        (self.cols.end - self.cols.start).max(0) as usize
    }
}

/// Which part of the knee a plane cuts through.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Side {
    Medial,
    Notch,
    Lateral,
}

/// Medio-lateral extents (mm from the notch centre, lateral positive).
#[derive(Debug, Clone)]
struct Layout {
    notch_half: f32,
    medial_width: f32,
    lateral_width: f32,
    shaft_radius: f32,
    leg_centre: f32,
    leg_half: f32,
    patella_centre: f32,
    patella_half: f32,
    fibula_centre: f32,
    fibula_half: f32,
    pcl_centre: f32,
    pcl_half: f32,
}

/// One exam's knee: geometry, tissue levels, pose and the ACL, fixed before any plane
/// is drawn.
pub(crate) struct Knee {
    size_mm: f32,
    layout: Layout,
    offset_mm: V2,
    ml_offset: f32,
    rot: Rot,
    flex: Rot,
    patella_rot: Rot,
    /// Flexion pivot in the femur's frame, and where it sits in the tibia's (the
    /// femur rolls back as the knee bends).
    pivot: V2,
    pivot_tibia: V2,
    pal: Palette,
    cartilage: f32,
    rim: f32,
    pouch: f32,
    recess: f32,
    notch_fluid: f32,
    condyle_radius: f32,
    condyle_aspect: f32,
    shaft_half: f32,
    plateau_half: f32,
    slope: Rot,
    roof_a: V2,
    roof_normal: V2,
    pcl: Vec<V2>,
    acl: Acl,
    /// Box around the ACL's territory wide enough for a ganglion beside it: outside
    /// it the ligament and its lesions need not be asked.
    acl_zone: (V2, V2),
    texture_seed: u64,
}

impl Knee {
    /// Draws the exam's anatomy with tissue levels `pal` and places it by `pose`;
    /// `make_acl` receives the ligament's placement and returns it in whatever
    /// condition the label asks for. `slab_half_mm` (centre of the slab to the centre of
    /// its outermost slice) bounds the slab's miss so the ligament is always imaged.
    pub(crate) fn sample(
        rng: &mut impl Rng,
        pal: Palette,
        pose: Pose,
        slab_half_mm: f32,
        texture_seed: u64,
        make_acl: impl FnOnce(AclPlacement) -> Acl,
    ) -> Self {
        let size_mm = rng.random_range(148.0f32..176.0);
        let k = size_mm / 160.0;
        let notch_half = rng.random_range(9.0..12.0) * k;
        let medial_width = rng.random_range(28.0..34.0) * k;
        let lateral_width = rng.random_range(26.0..32.0) * k;
        let (medial_edge, lateral_edge) = (-notch_half - medial_width, notch_half + lateral_width);
        let bone_centre = (lateral_edge + medial_edge) / 2.0;
        let leg_half = (lateral_edge - medial_edge) / 2.0 + rng.random_range(14.0..28.0) * k;
        let leg_centre = bone_centre + rng.random_range(-4.0..4.0);

        let acl_half = rng.random_range(3.0..4.5) * k;
        let acl_centre = notch_half - rng.random_range(1.0..2.0) - acl_half;
        let acl_lo = acl_centre - acl_half;
        let pcl_lo = -notch_half + rng.random_range(0.5..1.5);
        let pcl_half = rng
            .random_range(4.0..6.0f32)
            .min((acl_lo - 0.8 - pcl_lo) / 2.0)
            .max(1.5);
        let layout = Layout {
            notch_half,
            medial_width,
            lateral_width,
            shaft_radius: rng.random_range(17.0..21.0) * k,
            leg_centre,
            leg_half,
            patella_centre: rng.random_range(1.0..6.0),
            patella_half: rng.random_range(19.0..24.0) * k,
            fibula_centre: lateral_edge - rng.random_range(5.0..9.0),
            fibula_half: rng.random_range(8.0..11.0) * k,
            pcl_centre: pcl_lo + pcl_half,
            pcl_half,
        };

        let condyle_radius = rng.random_range(0.125..0.155);
        let condyle_aspect = rng.random_range(0.9..1.12);
        let roof_a = V2::new(-0.07 + rng.random_range(-0.012..0.012), -0.03);
        let roof_b = V2::new(0.15, -0.2 + rng.random_range(-0.025..0.025));
        let along = roof_b.sub(roof_a);
        let roof_normal = along.perp().scale(1.0 / along.len());
        let femoral_f = V2::new(
            0.1 + rng.random_range(-0.012..0.012),
            -0.155 + rng.random_range(-0.01..0.01),
        );
        let tibial = V2::new(
            -0.045 + rng.random_range(-0.018..0.018),
            0.02 + rng.random_range(-0.004..0.004),
        );
        let thickness = rng.random_range(0.04..0.058);
        let twist = rng.random_range(-1.5..1.5);
        let pcl_femoral = V2::new(-0.01 + rng.random_range(-0.01..0.01), -0.075);
        let pcl_bend = V2::new(0.17 + rng.random_range(-0.02..0.02), -0.09);
        let pcl_tibial = V2::new(0.15 + rng.random_range(-0.015..0.015), 0.1);
        let cartilage = rng.random_range(0.01..0.015);
        let rim = rng.random_range(0.003..0.009);
        let small_pouch = rng.random_range(0.0..0.01);
        let big_pouch = rng.random_range(0.022..0.045);
        let recess = rng.random_range(0.01..0.022);
        let notch_fluid = rng.random_range(0.35..0.75);
        let shaft_half = rng.random_range(0.095..0.115);
        let plateau_half = rng.random_range(0.145..0.165);
        let slope = Rot::new(rng.random_range(2.0f32..11.0).to_radians());

        let pivot = V2::new(0.04, -0.16);
        let pivot_tibia = pivot.add(V2::new(0.035 * pose.flexion, 0.0));
        let flex = Rot::new(pose.flexion);
        let to_tibia = |p: V2| pivot_tibia.add(flex.apply(p.sub(pivot)));
        let acl = make_acl(AclPlacement {
            femoral: to_tibia(femoral_f),
            tibial,
            thickness,
            ml_centre: acl_centre,
            ml_half: acl_half,
            twist,
            lateral: (notch_half, lateral_edge),
        });
        let (pouch, recess, notch_fluid) = if acl.effusion() {
            (big_pouch, recess, notch_fluid)
        } else {
            (small_pouch, 0.0, 0.0)
        };
        // The slab misses the knee's bony centre by the pose's shift, but never so far
        // that the ligament falls outside it.
        let (core_lo, core_hi) = acl.ml_core();
        let (lo, hi) = (-slab_half_mm + 1.0 - core_lo, slab_half_mm - 1.0 - core_hi);
        let wanted = -bone_centre + pose.ml_shift_mm;
        let ml_offset = if lo <= hi {
            wanted.clamp(lo, hi)
        } else {
            (lo + hi) / 2.0
        };
        let pcl = super::shapes::bezier(to_tibia(pcl_femoral), pcl_bend, pcl_tibial, 16);
        let (t_lo, t_hi) = acl.territory();
        let acl_zone = (t_lo.sub(V2::new(0.12, 0.12)), t_hi.add(V2::new(0.12, 0.12)));
        Self {
            size_mm,
            layout,
            offset_mm: pose.offset_mm,
            ml_offset,
            rot: Rot::new(pose.rotation),
            flex,
            patella_rot: Rot::new(pose.flexion * 0.25),
            pivot,
            pivot_tibia,
            pal,
            cartilage,
            rim,
            pouch,
            recess,
            notch_fluid,
            condyle_radius,
            condyle_aspect,
            shaft_half,
            plateau_half,
            slope,
            roof_a,
            roof_normal,
            pcl,
            acl,
            acl_zone,
            texture_seed,
        }
    }

    pub(crate) fn acl(&self) -> &Acl {
        &self.acl
    }

    /// The ligament's relative thickness on the plane `m_slab` mm from the slab centre.
    pub(crate) fn acl_presence(&self, m_slab: f32) -> f32 {
        self.acl.presence(m_slab - self.ml_offset)
    }

    /// The intercondylar notch's span in slab millimetres.
    pub(crate) fn notch_in_slab(&self) -> (f32, f32) {
        let h = self.layout.notch_half;
        (self.ml_offset - h, self.ml_offset + h)
    }

    fn femur_to_tibia(&self, p: V2) -> V2 {
        self.pivot_tibia.add(self.flex.apply(p.sub(self.pivot)))
    }

    fn patella_to_tibia(&self, p: V2) -> V2 {
        self.pivot_tibia
            .add(self.patella_rot.apply(p.sub(self.pivot)))
    }

    /// Image millimetres (from the image centre) to anatomy coordinates.
    fn to_anatomy(&self, p_mm: V2) -> V2 {
        self.rot
            .inverse(p_mm.sub(self.offset_mm))
            .scale(1.0 / self.size_mm)
    }

    /// Anatomy coordinates to pixel coordinates of `grid`.
    fn to_pixel(&self, q: V2, grid: &Grid) -> V2 {
        let p = self.rot.apply(q.scale(self.size_mm)).add(self.offset_mm);
        let (px, half) = (grid.pixel_mm(), grid.fov_mm / 2.0);
        V2::new((p.x + half) / px - 0.5, (p.y + half) / px - 0.5)
    }

    /// Pixel box `[y0, x0, y1, x1]` (end-exclusive) of the ACL's territory in a
    /// `matrix × matrix` image of `fov_mm`.
    pub(crate) fn acl_box(&self, fov_mm: f32, matrix: usize) -> [usize; 4] {
        let grid = Grid::square(fov_mm, matrix);
        let (lo, hi) = self.acl.territory();
        let corners =
            [lo, hi, V2::new(lo.x, hi.y), V2::new(hi.x, lo.y)].map(|c| self.to_pixel(c, &grid));
        let n = matrix as f32;
        let fold = |f: fn(f32, f32) -> f32, init: f32, get: fn(&V2) -> f32| {
            corners.iter().map(get).fold(init, f).clamp(0.0, n)
        };
        let (min_x, max_x) = (
            fold(f32::min, f32::INFINITY, |c| c.x),
            fold(f32::max, f32::NEG_INFINITY, |c| c.x),
        );
        let (min_y, max_y) = (
            fold(f32::min, f32::INFINITY, |c| c.y),
            fold(f32::max, f32::NEG_INFINITY, |c| c.y),
        );
        let (y0, x0) = (
            (min_y.floor() as usize).min(matrix - 1),
            (min_x.floor() as usize).min(matrix - 1),
        );
        [
            y0,
            x0,
            (max_y.ceil() as usize).max(y0 + 1).min(matrix),
            (max_x.ceil() as usize).max(x0 + 1).min(matrix),
        ]
    }

    /// What a plane at `m_slab` (mm from the slab's centre) cuts through.
    fn plane(&self, m_slab: f32) -> Plane {
        let m = m_slab - self.ml_offset;
        let l = &self.layout;
        let (side, d) = if m.abs() < l.notch_half {
            (Side::Notch, 0.0)
        } else if m < 0.0 {
            (Side::Medial, (-m - l.notch_half) / l.medial_width)
        } else {
            (Side::Lateral, (m - l.notch_half) / l.lateral_width)
        };
        let round = |centre: f32, half: f32| {
            let u = (m - centre) / half;
            if u.abs() < 1.0 {
                (1.0 - u * u).sqrt()
            } else {
                0.0
            }
        };
        let e = ((m - l.leg_centre) / l.leg_half).abs();
        let reach = self.acl.pcl_reach();
        let (span_lo, span_hi) = self.acl.ml_span();
        Plane {
            m,
            side,
            d,
            bone: (d < 1.0).then(|| (1.0 - d * d * d).sqrt()),
            shaft: round(0.0, l.shaft_radius),
            leg: if e < 1.0 {
                (1.0 - e.powi(4)).powf(0.25)
            } else {
                0.0
            },
            patella: round(l.patella_centre, l.patella_half),
            fibula: if side == Side::Lateral {
                round(l.fibula_centre, l.fibula_half)
            } else {
                0.0
            },
            pcl: round(l.pcl_centre + reach / 2.0, l.pcl_half + reach / 2.0),
            acl: m > span_lo - 8.0 && m < span_hi + 8.0,
            artery: round(0.5, 3.5),
            vein: round(4.5, 4.5),
        }
    }

    /// Tissue signal (about 0..1) on the plane `m_slab` mm from the slab's centre, for
    /// the pixels of `grid`, row-major into `out` (`grid.height() × grid.width()`).
    pub(crate) fn render_plane(&self, m_slab: f32, grid: &Grid, out: &mut [f32]) {
        let pl = self.plane(m_slab);
        if pl.leg <= 0.0 {
            out.fill(0.0);
            return;
        }
        let coarse = SliceNoise::new(self.texture_seed, pl.m / 6.0, 22);
        let fine = SliceNoise::new(self.texture_seed ^ 0x9e37, pl.m / 2.5, 68);
        let pixel = grid.pixel_mm();
        let half = grid.fov_mm / 2.0;
        let at = |x: i64, y: i64| {
            self.to_anatomy(V2::new(
                (x as f32 + 0.5) * pixel - half,
                (y as f32 + 0.5) * pixel - half,
            ))
        };
        // Pixel positions from absolute indices, so a grid extended for wrap-around
        // computes bit-identical values for the pixels it shares with the plain one.
        let origin = at(0, 0);
        let step_x = at(1, 0).sub(origin);
        let step_y = at(0, 1).sub(origin);
        let (w, h) = (grid.width(), grid.height());
        let hints = self.bone_hints(&pl, grid, origin, step_x, step_y);
        let cell = |i: i64| i.div_euclid(CELL as i64);
        let (cy0, cx0) = (cell(grid.rows.start), cell(grid.cols.start));
        let cells = (cell(grid.cols.end - 1) - cx0 + 1) as usize;
        let tex = |q: V2| ((q.x + 0.6) / 1.2, (q.y + 0.6) / 1.2);
        for (row, yi) in out.chunks_mut(w.max(1)).take(h).zip(grid.rows.clone()) {
            let row_start = origin.add(step_y.scale(yi as f32));
            let hint_row = (cell(yi) - cy0) as usize * cells;
            for (px, xi) in row.iter_mut().zip(grid.cols.clone()) {
                let q = row_start.add(step_x.scale(xi as f32));
                let t = self.tissue(q, &pl, hints[hint_row + (cell(xi) - cx0) as usize]);
                let mut k = 1.0;
                if t.coarse != 0.0 || t.fine != 0.0 {
                    let (u, v) = tex(q);
                    k += t.coarse * coarse.at(u, v) + t.fine * fine.at(u, v);
                }
                *px = t.signal * k;
            }
        }
    }

    /// Femur and tibia distances only matter within a few percent of their surfaces.
    /// Evaluating them once per `CELL × CELL` block decides, for most blocks, that every
    /// pixel is far outside or deep inside, which is exact for every use the renderer
    /// makes of them and saves most of the distance evaluations.
    fn bone_hints(
        &self,
        pl: &Plane,
        grid: &Grid,
        origin: V2,
        step_x: V2,
        step_y: V2,
    ) -> Vec<BoneHint> {
        let cell = |i: i64| i.div_euclid(CELL as i64);
        let ys = cell(grid.rows.start)..=cell(grid.rows.end - 1);
        let xs = cell(grid.cols.start)..=cell(grid.cols.end - 1);
        let spacing = step_x.len();
        // Half-diagonal of a block, doubled because the smooth unions, ellipses and the
        // tibial spines make the distances up to ~1.6-Lipschitz rather than exactly 1.
        let reach = 2.0 * 0.71 * CELL as f32 * spacing + BAND + self.pouch.max(self.recess);
        let classify = |d: f32| {
            if d > reach {
                Some(FAR)
            } else if d < -reach {
                Some(-FAR)
            } else {
                None
            }
        };
        let mut hints = Vec::with_capacity(ys.clone().count() * xs.clone().count());
        for cy in ys {
            for cx in xs.clone() {
                let c = |i: i64| (i * CELL as i64) as f32 + CELL as f32 / 2.0 - 0.5;
                let q = origin.add(step_x.scale(c(cx))).add(step_y.scale(c(cy)));
                let qf = self.to_femur(q);
                hints.push(BoneHint {
                    femur: classify(self.femur(qf, pl)),
                    tibia: classify(self.tibia(q, pl)),
                });
            }
        }
        hints
    }

    fn to_femur(&self, q: V2) -> V2 {
        self.pivot.add(self.flex.inverse(q.sub(self.pivot_tibia)))
    }

    fn to_patella(&self, q: V2) -> V2 {
        self.pivot
            .add(self.patella_rot.inverse(q.sub(self.pivot_tibia)))
    }

    /// The tissue at `q`; texture is applied by the caller only where it is asked for,
    /// because sampling noise for every pixel doubled generation time.
    fn tissue(&self, q: V2, pl: &Plane, hint: BoneHint) -> Tissue {
        let pal = &self.pal;
        let qf = self.to_femur(q);
        // Soft tissue bends smoothly with the knee: femur frame above the joint line,
        // tibia frame below, blended across it.
        let blend = smoothstep(-0.12, 0.12, q.y);
        let qb = qf.scale(1.0 - blend).add(q.scale(blend));
        let leg = leg_outline(qb, pl.leg);
        if leg > 0.0 {
            return Tissue::plain(0.0);
        }
        if leg > -0.006 {
            return Tissue::plain(pal.skin);
        }
        let mut t = Tissue::plain(pal.fat);
        let subcutaneous = leg > -0.035;

        // Muscles: calf and hamstrings posteriorly, quadriceps anteriorly above the patella.
        let posterior_muscle = qb.x > 0.2 + 0.06 * (-(qb.y / 0.1).powi(2)).exp();
        let quadriceps = qf.x < -0.13 && qf.y < -0.33;
        if !subcutaneous && (posterior_muscle || quadriceps) {
            t = Tissue::textured(pal.muscle, 0.15, 0.08);
        }
        if (pl.artery > 0.0 || pl.vein > 0.0) && qb.x > 0.2 && qb.x < 0.36 && qb.y.abs() < 0.2 {
            // Popliteal vessels run along the leg through the fossa: short tubes on a
            // sagittal plane, lost in the muscles above and below.
            let (v0, v1) = (V2::new(0.29, -0.16), V2::new(0.3, 0.16));
            if capsule(qb, v0, v1, 0.014 * pl.vein) < 0.0 {
                t = Tissue::textured(pal.vein, 0.3, 0.0);
            }
            let (a0, a1) = (V2::new(0.265, -0.16), V2::new(0.272, 0.16));
            if capsule(qb, a0, a1, 0.011 * pl.artery) < 0.0 {
                t = Tissue::plain(pal.flow_void);
            }
        }

        let qp = self.to_patella(q);
        // Extensor tendons.
        if pl.patella > 0.25 && q.x < -0.08 {
            let quad = capsule(
                q,
                self.patella_to_tibia(V2::new(-0.215, -0.26)),
                self.femur_to_tibia(V2::new(-0.165, -0.7)),
                0.016,
            );
            let patellar = capsule(
                q,
                self.patella_to_tibia(V2::new(-0.22, -0.075)),
                V2::new(-0.135, 0.2),
                0.012,
            );
            if quad < 0.0 || patellar < 0.0 {
                t = Tissue::plain(pal.tendon);
            }
        }

        let femur = hint.femur.unwrap_or_else(|| self.femur(qf, pl));
        let tibia = hint.tibia.unwrap_or_else(|| self.tibia(q, pl));
        let patella = if pl.patella > 0.0 && qp.x < -0.12 && qp.y > -0.3 && qp.y < -0.03 {
            ellipse(
                qp,
                V2::new(-0.205, -0.165),
                V2::new(0.05 * pl.patella, 0.095 * pl.patella.sqrt()),
                Rot::new(0.15),
            )
        } else {
            FAR
        };
        let ct = self.cartilage;

        // Joint fluid: a rim over the articular surfaces, the suprapatellar pouch and,
        // with an effusion, the posterior recess.
        let in_capsule = qf.y > -0.45 - self.pouch && q.y < 0.05 && q.x > -0.23 && q.x < 0.24;
        if in_capsule {
            let rim = |dist: f32, width: f32| dist >= ct && dist < ct + width;
            let anterior = qf.x < -0.04;
            let pouch = self.pouch * smoothstep(-0.2, -0.3, qf.y);
            if (rim(femur, self.rim + if anterior { pouch } else { 0.0 })
                && (anterior || qf.y > -0.22))
                || (rim(tibia, self.rim * 0.6) && q.y < 0.03)
                || rim(patella, self.rim)
                || (self.recess > 0.0 && qf.x > 0.1 && rim(femur, self.recess))
            {
                t = Tissue::plain(pal.fluid);
            }
        }

        if pl.side != Side::Notch
            && pl.d < 0.95
            && let Some(bs) = pl.bone
            && self.meniscus(q, tibia, femur, bs)
        {
            t = Tissue::plain(pal.meniscus);
        }

        if pl.side == Side::Notch
            && self.notch_fluid > 0.0
            && femur > 0.0
            && tibia > 0.0
            && ellipse(q, V2::new(0.04, -0.07), V2::new(0.12, 0.085), Rot::new(0.0)) < 0.0
        {
            t = Tissue::plain(pal.fat + (pal.fluid - pal.fat) * self.notch_fluid);
        }
        let (zone_lo, zone_hi) = self.acl_zone;
        let near_acl =
            pl.acl && q.x > zone_lo.x && q.x < zone_hi.x && q.y > zone_lo.y && q.y < zone_hi.y;
        if near_acl && self.acl.ganglion(q, pl.m) {
            t = Tissue::plain(pal.fluid);
        }
        if pl.pcl > 0.0
            && q.x > -0.08
            && q.x < 0.24
            && q.y > -0.18
            && q.y < 0.14
            && polyline(q, &self.pcl) < 0.03 * pl.pcl
        {
            t = Tissue::plain(pal.ligament * 0.85);
        }
        if near_acl && let Some(s) = self.acl.sample(q, pl.m, pal) {
            t = Tissue::textured(s.signal, 0.4 * s.heterogeneity, 0.3 * s.heterogeneity);
        }

        // Bones last: they hide the ligament attachments and own everything they overlap.
        let bone = |dist: f32, scar: bool| {
            if dist > -0.008 {
                return Tissue::plain(pal.cortex);
            }
            let mut m = pal.marrow;
            if scar {
                m *= 0.6;
            }
            let bruise = self.acl.bruise_weight(qf, q, pl.m);
            if bruise > 0.0 {
                m += (pal.oedema - m) * bruise;
            }
            Tissue::textured(m, 0.1, 0.07)
        };
        let cartilage = Tissue::textured(pal.cartilage, 0.0, 0.05);
        if femur < 0.0 {
            t = bone(
                femur,
                (qf.y + 0.2 + 0.015 * (qf.x * 25.0).sin()).abs() < 0.004,
            );
        } else if femur < ct && qf.y > -0.3 && (pl.side != Side::Notch || qf.x < -0.06) {
            t = cartilage;
        }
        if tibia < 0.0 {
            t = bone(tibia, (q.y - 0.13).abs() < 0.004);
        } else if tibia < ct && q.y < 0.035 && pl.side != Side::Notch {
            t = cartilage;
        }
        if patella < 0.0 {
            t = bone(patella, false);
        } else if patella < ct * 1.3 && qp.x > -0.2 && femur > 0.0 {
            t = cartilage;
        }
        if pl.fibula > 0.0 && q.y > 0.1 && q.y < 0.26 {
            let fibula = circle(q, V2::new(0.12, 0.175), 0.045 * pl.fibula);
            if fibula < 0.0 && tibia > 0.0 {
                t = bone(fibula, false);
            }
        }
        t
    }

    fn femur(&self, qf: V2, pl: &Plane) -> f32 {
        let mut bone = FAR;
        if let Some(bs) = pl.bone {
            let r = self.condyle_radius * bs;
            let condyle = ellipse(
                qf,
                V2::new(0.04, -0.16),
                V2::new(r * self.condyle_aspect, r / self.condyle_aspect),
                Rot::new(0.0),
            );
            let trochlea = circle(qf, V2::new(-0.03, -0.17), 0.085 * bs);
            // The metaphysis flares from the shaft to the condyles: on planes through
            // the condyles' outer parts only its lower end is cut.
            let height = 0.08 + 0.3 * bs * bs;
            let metaphysis = round_box(
                qf,
                V2::new(0.0, -0.2 - height / 2.0),
                V2::new(0.1 * bs, height / 2.0 + 0.02),
                0.04,
            );
            bone = smooth_union(smooth_union(condyle, trochlea, 0.03), metaphysis, 0.05);
        }
        if pl.shaft > 0.0 {
            let shaft = round_box(
                qf,
                V2::new(-0.005, -0.6),
                V2::new(self.shaft_half * pl.shaft.sqrt(), 0.5),
                0.02,
            );
            bone = smooth_union(shaft, bone, 0.06);
        }
        if pl.side == Side::Notch {
            // The intercondylar roof (Blumensaat's line): below it is the notch.
            let roof = qf.sub(self.roof_a).dot(self.roof_normal);
            smooth_intersection(bone, roof, 0.015)
        } else {
            bone
        }
    }

    fn tibia(&self, q: V2, pl: &Plane) -> f32 {
        let mut bone = FAR;
        if let Some(bs) = pl.bone {
            // The plateau slopes down posteriorly relative to the shaft.
            let qs = self.slope.inverse(q);
            let depth = 0.05 + 0.05 * bs;
            let epiphysis = round_box(
                qs,
                V2::new(0.015, 0.015 + depth),
                V2::new(self.plateau_half * bs, depth),
                0.035,
            );
            bone = epiphysis;
            if pl.shaft > 0.3 {
                let tubercle = circle(q, V2::new(0.015 - 0.14 * bs, 0.2), 0.035 * bs);
                bone = smooth_union(bone, tubercle, 0.04);
            }
        }
        if pl.shaft > 0.0 {
            let shaft = round_box(
                q,
                V2::new(0.0, 0.6),
                V2::new(0.105 * pl.shaft.sqrt(), 0.5),
                0.02,
            );
            bone = smooth_union(bone, shaft, 0.08);
        }
        if pl.side == Side::Notch && q.y < 0.08 {
            // Tibial spines rise into the notch.
            bone - 0.015 * (-((q.x - 0.04) / 0.03).powi(2)).exp()
        } else {
            bone
        }
    }

    /// Dark meniscal horns wedged between condyle and plateau at the joint margins.
    fn meniscus(&self, q: V2, tibia: f32, femur: f32, bs: f32) -> bool {
        if tibia < 0.0 || femur < 0.003 || q.y > 0.04 || q.y < -0.08 {
            return false;
        }
        let half = self.plateau_half * bs;
        let (front, back) = (0.015 - half, 0.015 + half);
        let horn = |outer: f32, inner: f32| {
            let t = (q.x - inner) / (outer - inner);
            (0.0..=1.0).contains(&t) && tibia < 0.06 * t + 0.004
        };
        horn(front, front + 0.07) || horn(back, back - 0.09)
    }
}

/// Pixels per side of the blocks on which bone distances are pre-classified.
const CELL: usize = 8;
/// Stand-in distance for "far outside" (and, negated, "deep inside") a bone.
const FAR: f32 = 1.0;
/// Widest band around a bone surface that the renderer tests distances against
/// (the meniscal wedge's 0.064, cartilage plus the thickest rim, with room to spare);
/// the suprapatellar pouch is added per knee.
const BAND: f32 = 0.07;

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

/// What one plane cuts through; factors are 0 where a structure is absent and 1
/// through its middle.
struct Plane {
    /// mm from the notch centre, lateral positive.
    m: f32,
    side: Side,
    /// 0 in the notch, 1 at the condyles' outer edge.
    d: f32,
    /// How much of the condyles' and plateau's sagittal extent the plane cuts; `None`
    /// beyond the bones.
    bone: Option<f32>,
    shaft: f32,
    /// Antero-posterior extent of the leg relative to its middle.
    leg: f32,
    patella: f32,
    fibula: f32,
    pcl: f32,
    /// The plane may cross the ACL or a lesion beside it.
    acl: bool,
    artery: f32,
    vein: f32,
}

/// Skin surface: negative inside the leg, whose antero-posterior extent shrinks by
/// `g` towards its medial and lateral edges.
fn leg_outline(p: V2, g: f32) -> f32 {
    let anterior = 0.05 - 0.35 * g + 0.025 * (p.y / 0.35).powi(2);
    let posterior = 0.05 + 0.35 * g - 0.04 * (p.y / 0.5).powi(2);
    (anterior - p.x).max(p.x - posterior)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::phantom::lesions::{AclCondition, LesionDraws};
    use crate::data::phantom::palette::Contrast;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn knee(pose: Pose) -> Knee {
        let mut rng = StdRng::seed_from_u64(3);
        let draws = LesionDraws::sample(&mut StdRng::seed_from_u64(4), 0.0);
        Knee::sample(&mut rng, Palette::of(Contrast::Pd), pose, 40.0, 5, |p| {
            Acl::new(p, AclCondition::Intact, draws)
        })
    }

    #[test]
    fn planes_beyond_the_leg_are_empty_and_the_notch_has_bone() {
        let pose = Pose {
            offset_mm: V2::new(0.0, 0.0),
            rotation: 0.0,
            flexion: 0.2,
            ml_shift_mm: 0.0,
        };
        let k = knee(pose);
        let grid = Grid::square(160.0, 48);
        let mut out = vec![1.0; 48 * 48];
        k.render_plane(200.0, &grid, &mut out);
        assert!(out.iter().all(|&v| v == 0.0));
        let (lo, hi) = k.notch_in_slab();
        k.render_plane((lo + hi) / 2.0, &grid, &mut out);
        assert!(out.iter().any(|&v| v > 0.6) && out.iter().any(|&v| v < 0.1));
        // The ACL is in the notch, inside the slab.
        let ms: Vec<f32> = (-80..=80).map(|i| i as f32 * 0.5).collect();
        let present: Vec<f32> = ms
            .iter()
            .copied()
            .filter(|&m| k.acl_presence(m) > 0.0)
            .collect();
        assert!(
            !present.is_empty() && present.len() < 20,
            "{} planes",
            present.len()
        );
        assert!(present.iter().all(|&m| m > lo && m < hi));
    }

    #[test]
    fn pose_moves_the_acl_box() {
        let base = Pose {
            offset_mm: V2::new(0.0, 0.0),
            rotation: 0.0,
            flexion: 0.0,
            ml_shift_mm: 0.0,
        };
        let moved = Pose {
            offset_mm: V2::new(16.0, -16.0),
            ..base
        };
        let (a, b) = (
            knee(base).acl_box(160.0, 160),
            knee(moved).acl_box(160.0, 160),
        );
        // 16 mm at 1 mm pixels.
        assert!((b[1] as i64 - a[1] as i64 - 16).abs() <= 1, "{a:?} {b:?}");
        assert!((b[0] as i64 - a[0] as i64 + 16).abs() <= 1, "{a:?} {b:?}");
    }
}
