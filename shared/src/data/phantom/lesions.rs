//! The anterior cruciate ligament in its three states (intact, degenerated mimic, torn)
//! and the bone bruise that often accompanies a tear.
//!
//! Sizes are chosen so the signs survive resampling to 64×64: the band is ~4.5 % of the
//! image wide and a tear gap spans 26–40 % of the ligament, i.e. 3+ pixels at 64 px.

use rand::Rng;

use super::shapes::{V2, smoothstep};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AclCondition {
    Intact,
    /// Mucoid degeneration: thick and brighter but continuous and taut, so "bright ACL"
    /// alone does not mean "torn".
    Mimic,
    Torn,
}

/// Every lesion parameter, drawn in full for every exam so that the label decides only
/// which of them are used, never what else in the exam looks like.
#[derive(Debug, Clone)]
pub(crate) struct LesionDraws {
    pub mimic: bool,
    pub mimic_thickening: f32,
    pub mimic_signal: f32,
    pub gap_centre: f32,
    pub gap_length: f32,
    pub gap_signal: f32,
    pub stump_signal: f32,
    pub wave_amplitude: f32,
    pub wave_length: f32,
    pub wave_phase: f32,
    pub droop: f32,
    pub bruise: bool,
    pub bruise_femur: (V2, f32),
    pub bruise_tibia: (V2, f32),
}

impl LesionDraws {
    pub(crate) fn sample(rng: &mut impl Rng, mimic_rate: f64) -> Self {
        let mimic = rng.random_bool(mimic_rate.clamp(0.0, 1.0));
        Self {
            mimic,
            mimic_thickening: rng.random_range(1.35..1.6),
            mimic_signal: rng.random_range(0.22..0.36),
            gap_centre: rng.random_range(0.45..0.56),
            gap_length: rng.random_range(0.26..0.4),
            gap_signal: rng.random_range(0.6..0.98),
            stump_signal: rng.random_range(0.3..0.42),
            wave_amplitude: rng.random_range(0.006..0.012),
            wave_length: rng.random_range(0.04..0.07),
            wave_phase: rng.random_range(0.0..std::f32::consts::TAU),
            droop: rng.random_range(0.1..0.25),
            bruise: rng.random_bool(0.4),
            bruise_femur: (
                V2::new(rng.random_range(-0.05..0.0), rng.random_range(-0.07..-0.04)),
                rng.random_range(0.04..0.06),
            ),
            bruise_tibia: (
                V2::new(rng.random_range(0.08..0.13), rng.random_range(0.045..0.07)),
                rng.random_range(0.035..0.05),
            ),
        }
    }
}

/// One ACL in anatomy coordinates, from its femoral to its tibial attachment.
#[derive(Debug, Clone)]
pub(crate) struct Acl {
    femoral: V2,
    tibial: V2,
    dir: V2,
    normal: V2,
    len: f32,
    half: f32,
    signal: f32,
    condition: AclCondition,
    draws: LesionDraws,
}

/// What the renderer needs at one point of the ligament.
pub(crate) struct AclSample {
    pub signal: f32,
    /// How strongly marrow-like texture should modulate the signal (degenerate tissue is
    /// heterogeneous, healthy fibres are not).
    pub heterogeneity: f32,
}

impl Acl {
    pub(crate) fn new(
        femoral: V2,
        tibial: V2,
        thickness: f32,
        signal: f32,
        condition: AclCondition,
        draws: LesionDraws,
    ) -> Self {
        let d = tibial.sub(femoral);
        let len = d.len().max(1e-6);
        let dir = d.scale(1.0 / len);
        Self {
            femoral,
            tibial,
            dir,
            normal: dir.perp(),
            len,
            half: thickness / 2.0,
            signal,
            condition,
            draws,
        }
    }

    pub(crate) fn condition(&self) -> AclCondition {
        self.condition
    }

    /// Bounding box `(min, max)` of the ligament's territory. It depends on the anatomy
    /// only, so intact and torn versions of one knee share it.
    pub(crate) fn territory(&self) -> (V2, V2) {
        let m = self.half + 0.01;
        (
            V2::new(
                self.femoral.x.min(self.tibial.x) - m,
                self.femoral.y.min(self.tibial.y) - m,
            ),
            V2::new(
                self.femoral.x.max(self.tibial.x) + m,
                self.femoral.y.max(self.tibial.y) + m,
            ),
        )
    }

    /// Signal at `q`, or `None` outside the ligament. `width` scales the band on the
    /// edge slices of the ligament, where it is cut obliquely.
    pub(crate) fn sample(&self, q: V2, width: f32) -> Option<AclSample> {
        let rel = q.sub(self.femoral);
        let s = rel.dot(self.dir) / self.len;
        let d = rel.dot(self.normal);
        if !(-0.08..=1.08).contains(&s) {
            return None;
        }
        let half = self.half * width;
        let dr = &self.draws;
        match self.condition {
            AclCondition::Intact => (d.abs() < half).then_some(AclSample {
                signal: self.signal,
                heterogeneity: 0.0,
            }),
            AclCondition::Mimic => {
                // Fusiform swelling, widest mid-substance, like mucoid degeneration.
                let bulge = 1.0
                    + (dr.mimic_thickening - 1.0)
                        * (std::f32::consts::PI * s.clamp(0.0, 1.0)).sin();
                (d.abs() < half * bulge).then_some(AclSample {
                    signal: dr.mimic_signal,
                    heterogeneity: 0.35,
                })
            }
            AclCondition::Torn => {
                let g0 = dr.gap_centre - dr.gap_length / 2.0;
                let g1 = dr.gap_centre + dr.gap_length / 2.0;
                if s < g0 {
                    // Swollen proximal stump whose free end frays towards the gap.
                    let fray = 1.0 - 0.35 * smoothstep(g0 - 0.12, g0, s);
                    (d.abs() < half * 1.15 * fray).then_some(AclSample {
                        signal: dr.stump_signal,
                        heterogeneity: 0.5,
                    })
                } else if s <= g1 {
                    // Fluid filling the defect, a little wider than the ligament.
                    let u = (s - dr.gap_centre) / (dr.gap_length / 2.0);
                    let w = half * 1.35 * (1.0 - 0.3 * u * u);
                    (d.abs() < w).then_some(AclSample {
                        signal: dr.gap_signal,
                        heterogeneity: 0.3,
                    })
                } else {
                    // Lax distal stump: sagging towards the plateau and wavy.
                    let from_tibia = (1.0 - s).max(0.0) * self.len;
                    let taper = smoothstep(0.0, 0.05, from_tibia);
                    let centre = -dr.droop * from_tibia
                        + dr.wave_amplitude
                            * taper
                            * (from_tibia / dr.wave_length * std::f32::consts::TAU + dr.wave_phase)
                                .sin();
                    (((d - centre).abs()) < half * 0.95).then_some(AclSample {
                        signal: dr.stump_signal,
                        heterogeneity: 0.5,
                    })
                }
            }
        }
    }

    /// Marrow oedema weight in `[0, 1]` at a point in femur (`qf`) and tibia (`q`)
    /// coordinates; zero unless this knee is torn and bruised.
    pub(crate) fn bruise_weight(&self, qf: V2, q: V2) -> f32 {
        if self.condition != AclCondition::Torn || !self.draws.bruise {
            return 0.0;
        }
        let blob = |p: V2, (c, r): (V2, f32)| 1.0 - smoothstep(0.5 * r, r, p.sub(c).len());
        blob(qf, self.draws.bruise_femur).max(blob(q, self.draws.bruise_tibia))
    }

    pub(crate) fn has_bruise(&self) -> bool {
        self.condition == AclCondition::Torn && self.draws.bruise
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn acl(condition: AclCondition) -> Acl {
        let draws = LesionDraws::sample(&mut StdRng::seed_from_u64(1), 0.25);
        Acl::new(
            V2::new(0.1, -0.15),
            V2::new(-0.03, 0.02),
            0.045,
            0.1,
            condition,
            draws,
        )
    }

    #[test]
    fn torn_ligament_has_a_bright_gap_where_intact_is_dark() {
        let intact = acl(AclCondition::Intact);
        let torn = acl(AclCondition::Torn);
        let mid = V2::new(0.1, -0.15).add(V2::new(-0.13, 0.17).scale(torn.draws.gap_centre));
        let a = intact.sample(mid, 1.0).map(|s| s.signal);
        let b = torn.sample(mid, 1.0).map(|s| s.signal);
        assert_eq!(a, Some(0.1));
        assert!(b.is_some_and(|v| v >= 0.6), "{b:?}");
        assert_eq!(intact.territory(), torn.territory());
    }

    #[test]
    fn far_points_are_outside() {
        assert!(
            acl(AclCondition::Torn)
                .sample(V2::new(0.4, 0.4), 1.0)
                .is_none()
        );
        assert_eq!(
            acl(AclCondition::Intact).bruise_weight(V2::new(0.0, 0.0), V2::new(0.0, 0.0)),
            0.0
        );
    }
}
