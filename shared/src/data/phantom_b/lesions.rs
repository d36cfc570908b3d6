//! What a tear (or a tear mimic) does to the scene.
//!
//! The tear types are the ones radiologists name: a discontinuity with a fluid-filled
//! gap and a lax, wavy distal stump; an empty notch; a flat remnant lying on the tibia;
//! a partial tear of one bundle. Mimics in intact knees are the things that make
//! readers call a tear that is not there: mucoid degeneration, a ganglion cyst beside
//! the ACL, the PCL straying into the ACL slices, an effusion.

use super::contrast::Tissue;
use super::geom::{Frame, M3, V3, v3};
use super::knee::Knee;
use super::ligament::Ligament;
use super::rng::Rng;
use super::sdf::{Prim, Shape};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tear {
    CompleteGap,
    EmptyNotch,
    FlatRemnant,
    Partial,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mimic {
    Mucoid,
    Ganglion,
    PclPartialVolume,
    Effusion,
}

/// Objects and settings that depend on the label.
#[derive(Debug, Clone)]
pub(crate) struct Lesions {
    /// Inside bone, drawn over the marrow (bone bruises).
    pub bone: Vec<(Shape, Tissue)>,
    /// The ACL, intact or torn.
    pub acl: Vec<(Shape, Tissue)>,
    pub pcl: Ligament,
    /// Fluid and oedema that ligaments and cartilage cover.
    pub soft: Vec<(Shape, Tissue)>,
    /// Joint fluid layer beyond the cartilage, mm.
    pub effusion: f32,
    /// Suprapatellar recess thickness, mm.
    pub pouch: f32,
    pub tear: Option<Tear>,
    pub mimic: Option<Mimic>,
    pub bruise: bool,
}

fn sphere(c: V3, r: f32) -> Shape {
    Prim::Ellipsoid {
        f: Frame {
            origin: c,
            rot: M3::IDENTITY,
        },
        r: v3(r, r, r),
    }
    .into()
}

/// The two bundles (anteromedial, posterolateral) over `t0..t1`, diverging towards the
/// tibia, so an intact ACL shows its striation.
fn bundles(
    acl: &Ligament,
    t0: f32,
    t1: f32,
    shift: impl Fn(f32) -> V3 + Copy,
    scale: f32,
    which: [bool; 2],
) -> Vec<Shape> {
    [1.0f32, -1.0]
        .into_iter()
        .zip(which)
        .filter(|(_, keep)| *keep)
        .map(|(side, _)| {
            acl.tube(
                t0,
                t1,
                |t, c| {
                    c + acl.across(t) * (side * acl.radius(t) * scale * (0.25 + 0.2 * t)) + shift(t)
                },
                |_| 0.75 * scale,
            )
            .into()
        })
        .collect()
}

fn no_shift(_: f32) -> V3 {
    V3::default()
}

fn along(acl: &Ligament, t0: f32, t1: f32, grow: f32) -> Shape {
    let a = acl.point(t0);
    let b = acl.point(t1);
    Prim::Capsule {
        a,
        b,
        ra: acl.radius(t0) + grow,
        rb: acl.radius(t1) + grow,
    }
    .into()
}

/// Draws the label-dependent part of a knee.
pub(crate) fn draw(r: &mut Rng, knee: &Knee, torn: bool, mimic_rate: f64) -> Lesions {
    let acl = &knee.acl;
    let len = acl.length();
    let mut out = Lesions {
        bone: vec![],
        acl: vec![],
        pcl: knee.pcl.clone(),
        soft: vec![],
        effusion: r.rf(0.2, 0.8),
        pouch: r.rf(0.5, 2.5),
        tear: None,
        mimic: None,
        bruise: false,
    };
    let big_effusion = |r: &mut Rng, out: &mut Lesions| {
        out.effusion = r.rf(1.5, 4.0);
        out.pouch = r.rf(6.0, 16.0);
    };
    if !torn {
        if r.chance(mimic_rate) {
            out.mimic = Some(
                [
                    Mimic::Mucoid,
                    Mimic::Ganglion,
                    Mimic::PclPartialVolume,
                    Mimic::Effusion,
                ][r.pick(&[0.35, 0.25, 0.2, 0.2])],
            );
        }
        match out.mimic {
            Some(Mimic::Mucoid) => {
                let s = r.rf(1.3, 1.55);
                out.acl
                    .push((acl.tube(0.0, 1.0, |_, c| c, |_| 0.28).into(), Tissue::Acl));
                for b in bundles(acl, 0.0, 1.0, no_shift, s, [true, true]) {
                    out.acl.push((b, Tissue::Mucoid));
                }
            }
            _ => {
                for b in bundles(acl, 0.0, 1.0, no_shift, 1.0, [true, true]) {
                    out.acl.push((b, Tissue::Acl));
                }
            }
        }
        match out.mimic {
            Some(Mimic::Ganglion) => {
                let t = r.rf(0.3, 0.7);
                let side = if r.chance(0.5) { 1.0 } else { -1.0 };
                let rc = r.rf(3.0, 7.0);
                let c = acl.point(t) + acl.across(t) * (side * (acl.radius(t) + rc - 0.5));
                let lobes = (0..r.int(1, 3))
                    .map(|_| {
                        sphere(
                            c + v3(r.sym(3.0), r.sym(4.0), r.sym(4.0)),
                            rc * r.rf(0.6, 1.0),
                        )
                    })
                    .chain(std::iter::once(sphere(c, rc)))
                    .collect();
                out.soft
                    .push((Shape::SmoothUnion(lobes, 2.0), Tissue::Fluid));
            }
            Some(Mimic::PclPartialVolume) => {
                let dx = r.rf(3.0, 6.0);
                for p in &mut out.pcl.p {
                    p.x += dx;
                }
                out.pcl.r0 *= 1.2;
                out.pcl.r1 *= 1.2;
            }
            Some(Mimic::Effusion) => big_effusion(r, &mut out),
            _ => {}
        }
        return out;
    }

    let tear = [
        Tear::CompleteGap,
        Tear::EmptyNotch,
        Tear::FlatRemnant,
        Tear::Partial,
    ][r.pick(&[0.4, 0.15, 0.15, 0.3])];
    out.tear = Some(tear);
    let acute = r.chance(0.7);
    match tear {
        Tear::CompleteGap => {
            let tb = r.rf(0.2, 0.65);
            let gap = r.rf(4.0, 10.0) / len;
            let (p_end, d_start) = (tb - gap * 0.5, (tb + gap * 0.5).min(0.9));
            if p_end > 0.1 {
                for b in bundles(acl, 0.0, p_end, no_shift, 1.1, [true, true]) {
                    out.acl.push((b, Tissue::Torn));
                }
            }
            // The distal stump sags and buckles, most at its free end.
            let sag = v3(r.sym(2.0), r.sym(3.0), -r.rf(3.0, 8.0));
            let (amp, wave, phase) = (r.rf(0.8, 1.6), r.rf(6.0, 10.0), r.rf(0.0, 6.3));
            let lax = move |t: f32| {
                let w = ((1.0 - t) / (1.0 - d_start)).clamp(0.0, 1.0);
                sag * (w * w)
                    + v3(0.0, 0.0, 1.0)
                        * (amp * w * (t * len / wave * std::f32::consts::TAU + phase).sin())
            };
            for b in bundles(acl, d_start, 1.0, lax, r.rf(1.05, 1.3), [true, true]) {
                out.acl.push((b, Tissue::Torn));
            }
            out.soft.push((
                along(
                    acl,
                    (tb - gap).max(0.0),
                    (tb + gap).min(1.0),
                    r.rf(1.5, 3.5),
                ),
                Tissue::Fluid,
            ));
        }
        Tear::EmptyNotch => {
            if r.chance(0.5) {
                for b in bundles(acl, r.rf(0.8, 0.88), 1.0, no_shift, 1.0, [true, true]) {
                    out.acl.push((b, Tissue::Torn));
                }
            }
            out.soft
                .push((along(acl, 0.1, 0.75, r.rf(0.0, 2.0)), Tissue::Fluid));
        }
        Tear::FlatRemnant => {
            let tib = &knee.tibia_frame;
            let t_loc = tib.unapply(acl.p[3]);
            let rr = acl.r1 * r.rf(0.6, 0.85);
            let lift = knee.plateau_z + 4.5 + rr;
            let rem_len = r.rf(12.0, 20.0);
            let end = tib.apply(v3(t_loc.x - r.rf(0.0, 3.0), t_loc.y - rem_len, lift));
            let mid = tib.apply(v3(t_loc.x, t_loc.y - rem_len * 0.5, lift + r.sym(1.0)));
            let rem = Ligament {
                p: [
                    end,
                    mid,
                    tib.apply(v3(t_loc.x, t_loc.y - 3.0, t_loc.z + rr)),
                    acl.p[3],
                ],
                r0: rr * 0.8,
                r1: rr,
            };
            out.acl
                .push((rem.tube(0.0, 1.0, |_, c| c, |_| 1.0).into(), Tissue::Torn));
            out.soft
                .push((along(acl, 0.05, 0.55, r.rf(0.0, 2.0)), Tissue::Fluid));
        }
        Tear::Partial => {
            let am_torn = r.chance(0.5);
            let tb = r.rf(0.3, 0.6);
            let gap = r.rf(3.0, 6.0) / len;
            let torn_side = [am_torn, !am_torn];
            let intact_side = [!am_torn, am_torn];
            let thin = r.rf(0.75, 0.95);
            let intact_tissue = if r.chance(0.5) {
                Tissue::Torn
            } else {
                Tissue::Acl
            };
            for b in bundles(acl, 0.0, 1.0, no_shift, thin, intact_side) {
                out.acl.push((b, intact_tissue));
            }
            for (t0, t1) in [(0.0, tb - gap * 0.5), (tb + gap * 0.5, 1.0)] {
                for b in bundles(acl, t0, t1, no_shift, 1.05, torn_side) {
                    out.acl.push((b, Tissue::Torn));
                }
            }
            out.soft.push((
                along(acl, tb - gap, tb + gap, r.rf(0.5, 2.0)),
                Tissue::Fluid,
            ));
        }
    }
    if acute {
        out.soft
            .push((along(acl, 0.0, 1.0, r.rf(2.5, 5.0)), Tissue::Oedema));
    }
    if r.chance(0.65) {
        big_effusion(r, &mut out);
    }
    if r.chance(0.55) {
        out.bruise = true;
        let fem = &knee.femur_frame;
        let tib = &knee.tibia_frame;
        let (lc, lr) = knee.lateral_condyle;
        let femoral = r.chance(0.75);
        let tibial = !femoral || r.chance(0.6);
        if femoral {
            let c = fem.apply(v3(
                lc.x + r.sym(lr.x * 0.3),
                lc.y + r.rf(2.0, 12.0),
                r.rf(2.0, 9.0),
            ));
            let blob = Prim::Ellipsoid {
                f: Frame::on(fem, fem.unapply(c), M3::IDENTITY),
                r: v3(r.rf(6.0, 11.0), r.rf(7.0, 13.0), r.rf(4.0, 8.0)),
            };
            out.bone.push((
                Shape::Intersect(vec![
                    blob.into(),
                    Shape::Offset(Box::new(knee.femur.clone()), -knee.cortex),
                ]),
                Tissue::BoneOedema,
            ));
        }
        if tibial {
            let c = tib.apply(v3(
                knee.half_width * r.rf(0.4, 0.7),
                knee.condyle_y - r.rf(12.0, 22.0),
                knee.plateau_z - r.rf(3.0, 9.0),
            ));
            out.bone.push((
                Shape::Intersect(vec![
                    sphere(c, r.rf(6.0, 11.0)),
                    Shape::Offset(Box::new(knee.tibia.clone()), -knee.cortex),
                ]),
                Tissue::BoneOedema,
            ));
        }
    }
    out
}
