//! The normal knee: bones, cartilage, menisci, cruciates, tendons, muscles and skin as
//! a 3-D scene in millimetres, every size drawn per exam.
//!
//! Each bone is built in its own local frame (femur and tibia coincide with knee
//! coordinates at full extension) and then placed by a flexion rotation about an axis
//! near the ACL's femoral footprint, which keeps the ACL nearly isometric the way the
//! real posterior-condyle geometry does.

use super::geom::{Affine, Frame, M3, V3, v3};
use super::ligament::Ligament;
use super::rng::Rng;
use super::sdf::{Prim, Shape};

#[derive(Debug, Clone)]
pub(crate) struct Knee {
    pub femur: Shape,
    pub tibia: Shape,
    pub patella: Shape,
    pub fibula: Shape,
    pub femoral_cartilage: Shape,
    pub tibial_cartilage: Shape,
    pub patellar_cartilage: Shape,
    pub menisci: Vec<Shape>,
    pub acl: Ligament,
    pub pcl: Ligament,
    pub tendons: Vec<Shape>,
    pub muscles: Vec<Shape>,
    pub artery: Shape,
    pub vein: Shape,
    pub leg: Shape,
    /// Articular surfaces (condyles ∪ plateau) that effusion coats.
    pub articular: Shape,
    pub joint_box: Shape,
    pub cortex: f32,
    pub cart_f: f32,
    pub femur_frame: Affine,
    pub tibia_frame: Affine,
    pub half_width: f32,
    /// AP centre of the condyles (femur local).
    pub condyle_y: f32,
    pub lateral_condyle: (V3, V3),
    /// Tibial plateau top (tibia local z).
    pub plateau_z: f32,
    /// Patella centre height and superior-inferior radius (femur local).
    pub patella_z: (f32, f32),
}

fn ell(bone: &Affine, c: V3, r: V3) -> Shape {
    Prim::Ellipsoid {
        f: Frame::on(bone, c, M3::IDENTITY),
        r,
    }
    .into()
}

fn rbox(bone: &Affine, c: V3, half: V3, round: f32) -> Shape {
    Prim::RoundBox {
        f: Frame::on(bone, c, M3::IDENTITY),
        half,
        round,
    }
    .into()
}

fn cap(bone: &Affine, a: V3, b: V3, ra: f32, rb: f32) -> Shape {
    Prim::Capsule {
        a: bone.apply(a),
        b: bone.apply(b),
        ra,
        rb,
    }
    .into()
}

/// Half-space `n · p ≤ d` given in a bone's local frame.
fn half(bone: &Affine, n: V3, d: f32) -> Shape {
    let nw = bone.rot.apply(n.normalized());
    let dw = d / n.len() + nw.dot(bone.t);
    Prim::HalfSpace { n: nw, d: dw }.into()
}

/// A flat band from `a` to `b` (knee coordinates): `width` across (medial-lateral),
/// `thick` front to back. Tendons are ribbons, not cylinders.
pub(crate) fn ribbon(a: V3, b: V3, width: f32, thick: f32) -> Shape {
    let along = (b - a).normalized();
    let ml = (v3(1.0, 0.0, 0.0) - along * along.x).normalized();
    let ap = along.cross(ml).normalized();
    Prim::RoundBox {
        f: Frame {
            origin: a.lerp(b, 0.5),
            rot: M3::from_rows(ml, ap, along),
        },
        half: v3(
            width * 0.5 - 1.0,
            (thick * 0.5 - 1.0).max(0.2),
            (b - a).len() * 0.5,
        ),
        round: 1.0,
    }
    .into()
}

/// Draws one knee.
pub(crate) fn draw(r: &mut Rng) -> Knee {
    let width = r.rf(75.0, 95.0);
    let hw = width * 0.5;
    let sz = width / 85.0;
    let notch = r.rf(18.0, 24.0);
    let cml = (hw - notch * 0.5) * 0.5;
    let cml_l = cml * r.rf(0.9, 1.0);
    let (cap_m, si_m) = (r.rf(25.0, 30.0) * sz, r.rf(18.0, 23.0) * sz);
    let (cap_l, si_l) = (cap_m * r.rf(0.9, 1.0), si_m * r.rf(0.92, 1.02));
    let cy = r.rf(-6.0, -2.0);
    let cart_f = r.rf(2.0, 3.0);
    let cart_t = r.rf(1.8, 2.8);
    let cart_p = r.rf(2.5, 4.0);
    let cortex = r.rf(1.2, 2.0);
    let zt = -(cart_f + cart_t + r.rf(0.0, 0.4));
    let flexion = r.rf(0.0, 30.0);
    let slope = r.rf(3.0, 10.0);

    let pivot = v3(0.0, cy - 5.0, si_m - 3.0);
    let fem = Affine::about_x(pivot, flexion * 0.5);
    let sloped = Affine::about_x(v3(0.0, cy, zt), slope);
    let tib = sloped.then(&Affine::about_x(pivot, -flexion * 0.5));

    // Femur: two condyles, a metaphyseal block and a tapered shaft, fused smoothly,
    // with the intercondylar notch cut under a Blumensaat roof.
    let xm = -(notch * 0.5 + cml);
    let xl = notch * 0.5 + cml_l;
    let condyle_m = ell(&fem, v3(xm, cy, si_m), v3(cml, cap_m, si_m));
    let lat_c = v3(xl, cy + r.rf(-1.5, 1.5), si_l);
    let condyle_l = ell(&fem, lat_c, v3(cml_l, cap_l, si_l));
    let meta = ell(
        &fem,
        v3(0.0, cy + 3.0, si_m + 22.0),
        v3(hw - 5.0, 20.0 * sz, 34.0 * sz),
    );
    let shaft = cap(
        &fem,
        v3(0.0, cy + 5.0, si_m + 30.0),
        v3(0.0, cy + 8.0, 230.0),
        20.0 * sz,
        14.0 * sz,
    );
    // Blumensaat roof: from the notch's anterior apex up and back at 30–40°.
    let y_ant = cy + r.rf(15.0, 21.0);
    let roof = r.rf(30.0, 40.0).to_radians().tan();
    let z_ant = r.rf(6.0, 10.0);
    let roof_z = |y: f32| z_ant + roof * (y_ant - y);
    let notch_shape = Shape::Intersect(vec![
        rbox(
            &fem,
            v3(0.0, (y_ant - 70.0) * 0.5, 15.0),
            v3(notch * 0.5 - 1.5, (y_ant + 70.0) * 0.5, 45.0),
            1.5,
        ),
        half(&fem, v3(0.0, roof, 1.0), z_ant + roof * y_ant),
    ]);
    let condyles = Shape::Union(vec![condyle_m.clone(), condyle_l.clone()]);
    let femur = Shape::Subtract(
        Box::new(Shape::SmoothUnion(
            vec![condyle_m, condyle_l, meta, shaft],
            12.0,
        )),
        Box::new(notch_shape.clone()),
    );
    let femoral_cartilage = Shape::Subtract(
        Box::new(Shape::Intersect(vec![
            Shape::Offset(Box::new(condyles.clone()), cart_f + 0.5),
            Shape::Band(Box::new(femur.clone()), 0.0, cart_f),
        ])),
        Box::new(notch_shape),
    );

    // Tibia: a rounded plateau slab with the eminence, tubercle and a tapered shaft.
    let plateau = rbox(
        &tib,
        v3(0.0, cy - 1.0, zt - 12.0),
        v3(hw * 0.93 - 8.0, 21.0 * sz - 5.0, 4.0),
        8.0,
    );
    let tibia = Shape::SmoothUnion(
        vec![
            plateau.clone(),
            ell(
                &tib,
                v3(0.0, cy - 3.0, zt - 30.0),
                v3(hw * 0.8, 21.0 * sz, 28.0),
            ),
            cap(
                &tib,
                v3(0.0, cy - 4.0, zt - 45.0),
                v3(0.0, cy - 6.0, zt - 230.0),
                19.0 * sz,
                14.0 * sz,
            ),
            ell(
                &tib,
                v3(hw * 0.1, cy + 19.0 * sz, zt - 32.0),
                v3(14.0, 8.0, 14.0),
            ),
            ell(&tib, v3(-4.5, cy + 1.0, zt), v3(3.5, 7.0, 4.5)),
            ell(&tib, v3(4.5, cy + 1.0, zt), v3(3.5, 7.0, 4.0)),
        ],
        10.0,
    );
    let tibial_cartilage = Shape::Subtract(
        Box::new(Shape::Intersect(vec![
            half(&tib, v3(0.0, 0.0, -1.0), -(zt - 3.0)),
            Shape::Band(Box::new(tibia.clone()), 0.0, cart_t),
        ])),
        Box::new(rbox(&tib, v3(0.0, cy, zt), v3(6.0, 40.0, 10.0), 0.5)),
    );
    let fibula = Shape::SmoothUnion(
        vec![
            ell(
                &tib,
                v3(hw - 5.0, cy - 20.0 * sz, zt - 26.0),
                v3(9.0, 9.0, 11.0),
            ),
            cap(
                &tib,
                v3(hw - 5.0, cy - 20.0 * sz, zt - 30.0),
                v3(hw - 8.0, cy - 18.0, zt - 230.0),
                7.0,
                6.0,
            ),
        ],
        4.0,
    );

    // Menisci sit on the plateau periphery of each compartment.
    let menisci = [(xm, cml, 1.0), (xl, cml_l, 0.92)]
        .into_iter()
        .map(|(x, ml, k)| {
            Prim::Wedge {
                f: Frame::on(&tib, v3(x, cy - 1.0, zt + cart_t - 0.5), M3::IDENTITY),
                rx: ml + 3.0,
                ry: r.rf(19.0, 23.0) * sz * k,
                inner: r.rf(0.42, 0.55),
                height: r.rf(5.0, 7.0),
            }
            .into()
        })
        .collect();

    // Patella in the trochlear groove, its cartilage on the articular (posterior) face.
    let (pml, pap, psi) = (
        r.rf(19.0, 24.0) * sz,
        r.rf(9.0, 11.5) * sz,
        r.rf(15.0, 20.0) * sz,
    );
    let front_of_femur = cy + cap_m.max(23.0 * sz);
    let y_pat = front_of_femur + cart_f + cart_p + pap - 0.5;
    let z_pat = si_m + r.rf(6.0, 18.0);
    let patella = ell(&fem, v3(3.0, y_pat, z_pat), v3(pml, pap, psi));
    let patellar_cartilage = Shape::Intersect(vec![
        Shape::Band(Box::new(patella.clone()), 0.0, cart_p),
        half(&fem, v3(0.0, 1.0, 0.0), y_pat - 2.0),
    ]);

    // Cruciates. ACL: lateral notch wall, posterior-superior → anterior intercondylar
    // area. PCL: medial notch wall, anterior → posterior tibia below the plateau.
    let thick = r.rf(7.0, 11.0);
    // The femoral footprint hugs the lateral wall just under the roof.
    let fy = cy - r.rf(5.0, 11.0);
    let f0 = fem.apply(v3(
        notch * 0.5 - thick * 0.4,
        fy,
        roof_z(fy) - r.rf(3.0, 6.0),
    ));
    let t0 = tib.apply(v3(r.rf(-1.0, 2.5), cy + 14.0 * sz + r.sym(3.0), zt + 0.5));
    let across = v3(1.0, 0.0, 0.0).cross(t0 - f0).normalized();
    let bow = r.sym(2.5);
    let acl = Ligament {
        p: [
            f0,
            f0.lerp(t0, 1.0 / 3.0) + across * bow,
            f0.lerp(t0, 2.0 / 3.0) + across * (bow * r.rf(0.3, 1.0)),
            t0,
        ],
        r0: thick * 0.5 * 0.88,
        r1: thick * 0.5 * 1.15,
    };
    let pr = r.rf(5.0, 6.5);
    let pcl = Ligament {
        p: [
            fem.apply(v3(
                -notch * 0.5 + 1.2,
                cy + 8.0 + r.sym(2.0),
                r.rf(9.0, 13.0),
            )),
            fem.apply(v3(-notch * 0.5 + 3.0, cy - 8.0, r.rf(15.0, 19.0))),
            tib.apply(v3(-1.5, cy - 20.0 * sz, zt + 2.0)),
            tib.apply(v3(-1.0, cy - 24.0 * sz + r.sym(2.0), zt - 11.0)),
        ],
        r0: pr,
        r1: pr * 0.95,
    };

    let tendons = vec![
        ribbon(
            fem.apply(v3(3.0, y_pat + 1.0, z_pat - psi + 3.0)),
            tib.apply(v3(hw * 0.1, cy + 26.0 * sz, zt - 34.0)),
            r.rf(22.0, 28.0),
            r.rf(4.0, 6.0),
        ),
        ribbon(
            fem.apply(v3(1.0, y_pat - 1.0, z_pat + psi - 4.0)),
            fem.apply(v3(0.0, y_pat - 9.0, z_pat + 80.0)),
            r.rf(26.0, 34.0),
            r.rf(5.0, 8.0),
        ),
    ];
    let muscles = vec![
        ell(
            &fem,
            v3(0.0, cy + 12.0, si_m + 100.0),
            v3(hw + 6.0, 38.0, 68.0),
        ),
        cap(
            &fem,
            v3(-hw + 9.0, cy - 33.0, 150.0),
            v3(-hw + 6.0, cy - 30.0, 8.0),
            17.0,
            9.0,
        ),
        cap(
            &fem,
            v3(hw - 7.0, cy - 31.0, 150.0),
            v3(hw - 3.0, cy - 26.0, -22.0),
            15.0,
            7.0,
        ),
        cap(
            &tib,
            v3(-hw * 0.5, cy - 33.0, si_m + 2.0 - zt),
            v3(-hw * 0.4, cy - 42.0, zt - 130.0),
            9.0,
            17.0,
        ),
        cap(
            &tib,
            v3(hw * 0.5, cy - 33.0, si_m + 2.0 - zt),
            v3(hw * 0.4, cy - 41.0, zt - 130.0),
            8.0,
            15.0,
        ),
        Prim::Ellipsoid {
            f: Frame::on(&tib, v3(-4.0, cy - 31.0 * sz, zt - 30.0), M3::rot_y(25.0)),
            r: v3(hw - 12.0, 6.0, 13.0),
        }
        .into(),
        ell(
            &tib,
            v3(0.0, cy - 30.0, zt - 125.0),
            v3(hw - 10.0, 13.0, 70.0),
        ),
        cap(
            &tib,
            v3(hw * 0.45, cy + 18.0, zt - 38.0),
            v3(hw * 0.35, cy + 16.0, zt - 200.0),
            9.0,
            13.0,
        ),
    ];
    let artery = cap(
        &fem,
        v3(-2.0, cy - 38.0, 160.0),
        v3(-1.0, cy - 40.0, zt - 70.0),
        3.2,
        3.0,
    );
    let vein = cap(
        &fem,
        v3(4.0, cy - 41.0, 160.0),
        v3(4.0, cy - 43.0, zt - 70.0),
        4.2,
        4.0,
    );
    let leg = Prim::Cylinder {
        f: Frame::on(&Affine::IDENTITY, v3(1.0, cy - 6.0, 0.0), M3::IDENTITY),
        rx: hw + r.rf(14.0, 24.0),
        ry: r.rf(60.0, 68.0),
    }
    .into();
    let articular = Shape::Union(vec![condyles, plateau]);
    // Effusion coats the articular surfaces above the plateau, not the tibial shaft.
    let joint_box = rbox(
        &Affine::IDENTITY,
        v3(0.0, cy, zt + 10.0),
        v3(hw + 6.0, 40.0, 11.0),
        2.0,
    );

    Knee {
        femur,
        tibia,
        patella,
        fibula,
        femoral_cartilage,
        tibial_cartilage,
        patellar_cartilage,
        menisci,
        acl,
        pcl,
        tendons,
        muscles,
        artery,
        vein,
        leg,
        articular,
        joint_box,
        cortex,
        cart_f,
        femur_frame: fem,
        tibia_frame: tib,
        half_width: hw,
        condyle_y: cy,
        lateral_condyle: (lat_c, v3(cml_l, cap_l, si_l)),
        plateau_z: zt,
        patella_z: (z_pat, psi),
    }
}
