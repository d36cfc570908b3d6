//! The anterior cruciate ligament in every state the phantom draws, and the lesions
//! that travel with it: five tear appearances, four mimics of an intact knee, the bone
//! bruise, and the joint effusion.
//!
//! A real cohort does not show one kind of tear: complete tears with a fluid-filled
//! gap, partial tears, lax wavy remnants, an empty notch and a remnant lying on the
//! tibial plateau are all common, with signal from faint to strong. Intact knees carry
//! their own confounders (mucoid degeneration, a ganglion cyst beside the ligament,
//! the PCL's partial volume, an effusion), so neither "bright" nor "fluid in the notch"
//! alone means "torn".
//!
//! The ligament lives in anatomy coordinates in-plane (see `anatomy`) and in
//! millimetres along the slice axis (`m`, lateral positive, 0 at the notch centre), so
//! thick slices cut it the way they cut a real one.

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::palette::Palette;
use super::shapes::{V2, capsule, smoothstep};

/// How a torn ACL looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TearKind {
    /// Fibres interrupted by a fluid-filled gap, proximal stump swollen, distal lax.
    Complete,
    /// Thinned over a segment: part of the fibres continuous, the rest bright.
    Partial,
    /// Detached from the femur: a continuous but sagging, wavy, bright remnant.
    Lax,
    /// No fibres at all on the notch slices: fat and fluid where the ligament was.
    EmptyNotch,
    /// The tibial stump folded down, lying flat on the plateau.
    Horizontal,
}

impl TearKind {
    pub const ALL: [TearKind; 5] = [
        TearKind::Complete,
        TearKind::Partial,
        TearKind::Lax,
        TearKind::EmptyNotch,
        TearKind::Horizontal,
    ];

    fn draw(rng: &mut impl Rng) -> Self {
        match rng.random_range(0..100) {
            0..30 => TearKind::Complete,
            30..50 => TearKind::Partial,
            50..70 => TearKind::Lax,
            70..85 => TearKind::EmptyNotch,
            _ => TearKind::Horizontal,
        }
    }
}

/// What makes an intact knee look suspicious.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MimicKind {
    /// Mucoid degeneration: thick, bright, but continuous and taut.
    Mucoid,
    /// A fluid-bright cyst beside the ligament.
    Ganglion,
    /// The PCL reaching into the ACL slices, greying the notch.
    PclPartialVolume,
    /// A large joint effusion, fluid around the ligament.
    Effusion,
}

impl MimicKind {
    pub const ALL: [MimicKind; 4] = [
        MimicKind::Mucoid,
        MimicKind::Ganglion,
        MimicKind::PclPartialVolume,
        MimicKind::Effusion,
    ];

    fn draw(rng: &mut impl Rng) -> Self {
        match rng.random_range(0..100) {
            0..30 => MimicKind::Mucoid,
            30..50 => MimicKind::Ganglion,
            50..75 => MimicKind::PclPartialVolume,
            _ => MimicKind::Effusion,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AclCondition {
    Intact,
    Mimic(MimicKind),
    Torn(TearKind),
}

/// Every lesion parameter, drawn in full for every exam so that the label decides only
/// which of them are used, never what else in the exam looks like.
#[derive(Debug, Clone)]
pub(crate) struct LesionDraws {
    pub mimic: Option<MimicKind>,
    pub tear: TearKind,
    /// How loudly the tear shows: 0 barely, 1 textbook.
    pub strength: f32,
    pub mimic_thickening: f32,
    pub mimic_strength: f32,
    pub gap_centre: f32,
    pub gap_length: f32,
    pub wave_amplitude: f32,
    pub wave_length: f32,
    pub wave_phase: f32,
    pub droop: f32,
    pub partial_centre: f32,
    pub partial_length: f32,
    /// Share of the band's thickness whose fibres stay continuous.
    pub partial_keep: f32,
    /// Across the ligament's medio-lateral extent (0 medial edge … 1 lateral edge),
    /// the torn bundle reaches from the medial edge to `0.5 + partial_ml_split`.
    pub partial_ml_split: f32,
    pub lax_detach: f32,
    pub lax_sag: f32,
    pub remnant_length: f32,
    pub stub: bool,
    pub bruise: bool,
    pub bruise_femur: (V2, f32),
    pub bruise_tibia: (V2, f32),
    /// Bruise centre within the lateral compartment (0 notch edge, 1 outer edge) and
    /// medio-lateral radius in mm.
    pub bruise_ml: (f32, f32),
    /// A torn knee's haemarthrosis; intact knees get an effusion only as a mimic.
    pub haemarthrosis: bool,
    pub ganglion_at: f32,
    pub ganglion_side: f32,
    pub ganglion_radius: f32,
    pub ganglion_ml_radius: f32,
    pub ganglion_lobes: f32,
    pub pcl_reach_mm: f32,
}

impl LesionDraws {
    pub(crate) fn sample(rng: &mut impl Rng, mimic_rate: f64) -> Self {
        let mimic_draw = rng.random_bool(mimic_rate.clamp(0.0, 1.0));
        let mimic_kind = MimicKind::draw(rng);
        Self {
            mimic: mimic_draw.then_some(mimic_kind),
            tear: TearKind::draw(rng),
            strength: rng.random_range(0.15..1.0),
            mimic_thickening: rng.random_range(1.3..1.6),
            mimic_strength: rng.random_range(0.5..1.0),
            gap_centre: rng.random_range(0.3..0.62),
            gap_length: rng.random_range(0.22..0.4),
            wave_amplitude: rng.random_range(0.006..0.012),
            wave_length: rng.random_range(0.04..0.07),
            wave_phase: rng.random_range(0.0..std::f32::consts::TAU),
            droop: rng.random_range(0.1..0.25),
            partial_centre: rng.random_range(0.35..0.65),
            partial_length: rng.random_range(0.3..0.5),
            partial_keep: rng.random_range(0.3..0.5),
            partial_ml_split: rng.random_range(0.1..0.5),
            lax_detach: rng.random_range(0.12..0.25),
            lax_sag: rng.random_range(0.02..0.04),
            remnant_length: rng.random_range(0.5..0.75),
            stub: rng.random_bool(0.5),
            bruise: rng.random_bool(0.45),
            bruise_femur: (
                V2::new(rng.random_range(-0.05..0.0), rng.random_range(-0.07..-0.04)),
                rng.random_range(0.04..0.065),
            ),
            bruise_tibia: (
                V2::new(rng.random_range(0.08..0.13), rng.random_range(0.045..0.07)),
                rng.random_range(0.035..0.055),
            ),
            bruise_ml: (rng.random_range(0.3..0.65), rng.random_range(9.0..15.0)),
            haemarthrosis: rng.random_bool(0.5),
            ganglion_at: rng.random_range(0.3..0.7),
            ganglion_side: if rng.random_bool(0.6) { -1.0 } else { 1.0 },
            ganglion_radius: rng.random_range(0.025..0.045),
            ganglion_ml_radius: rng.random_range(4.0..7.0),
            ganglion_lobes: rng.random_range(0.0..std::f32::consts::TAU),
            pcl_reach_mm: rng.random_range(2.5..5.0),
        }
    }
}

/// Where the anatomy put the ligament: attachments in-plane, extent along the slice
/// axis (mm from the notch centre, lateral positive).
pub(crate) struct AclPlacement {
    pub femoral: V2,
    pub tibial: V2,
    pub thickness: f32,
    pub ml_centre: f32,
    pub ml_half: f32,
    /// How far the ligament's medio-lateral centre moves from femur to tibia (mm).
    pub twist: f32,
    /// The lateral compartment's medio-lateral span, for the bone bruise.
    pub lateral: (f32, f32),
}

/// One ACL from its femoral to its tibial attachment.
#[derive(Debug, Clone)]
pub(crate) struct Acl {
    femoral: V2,
    tibial: V2,
    dir: V2,
    normal: V2,
    len: f32,
    half: f32,
    ml_centre: f32,
    ml_half: f32,
    twist: f32,
    bruise_ml_centre: f32,
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

/// Extra margin of the ACL territory around its attachments, wide enough for the
/// sagging lax remnant and the fluid that replaces a missing ligament.
const TERRITORY_MARGIN: f32 = 0.03;

impl Acl {
    pub(crate) fn new(p: AclPlacement, condition: AclCondition, draws: LesionDraws) -> Self {
        let d = p.tibial.sub(p.femoral);
        let len = d.len().max(1e-6);
        let dir = d.scale(1.0 / len);
        let (lo, hi) = p.lateral;
        Self {
            femoral: p.femoral,
            tibial: p.tibial,
            dir,
            normal: dir.perp(),
            len,
            half: p.thickness / 2.0,
            ml_centre: p.ml_centre,
            ml_half: p.ml_half,
            twist: p.twist,
            bruise_ml_centre: lo + (hi - lo) * draws.bruise_ml.0,
            condition,
            draws,
        }
    }

    pub(crate) fn torn(&self) -> bool {
        matches!(self.condition, AclCondition::Torn(_))
    }

    pub(crate) fn mimic(&self) -> Option<MimicKind> {
        match self.condition {
            AclCondition::Mimic(k) => Some(k),
            _ => None,
        }
    }

    pub(crate) fn tear(&self) -> Option<TearKind> {
        match self.condition {
            AclCondition::Torn(k) => Some(k),
            _ => None,
        }
    }

    /// Whether this knee has a large effusion (a mimic, or a tear's haemarthrosis).
    pub(crate) fn effusion(&self) -> bool {
        match self.condition {
            AclCondition::Mimic(MimicKind::Effusion) => true,
            AclCondition::Torn(_) => self.draws.haemarthrosis,
            _ => false,
        }
    }

    /// How far the PCL reaches into the ACL's slices (mm), zero unless that is the mimic.
    pub(crate) fn pcl_reach(&self) -> f32 {
        if self.condition == AclCondition::Mimic(MimicKind::PclPartialVolume) {
            self.draws.pcl_reach_mm
        } else {
            0.0
        }
    }

    /// Medio-lateral span (mm from the notch centre) on which the ligament is drawn.
    pub(crate) fn ml_span(&self) -> (f32, f32) {
        let t = self.twist.abs() / 2.0;
        (
            self.ml_centre - self.ml_half - t,
            self.ml_centre + self.ml_half + t,
        )
    }

    /// Medio-lateral span where the ligament is at least half its full thickness.
    pub(crate) fn ml_core(&self) -> (f32, f32) {
        let r = self.ml_half * 0.866;
        (self.ml_centre - r, self.ml_centre + r)
    }

    /// The ligament's thickness on the plane at `m` relative to its full thickness
    /// (elliptical cross-section, twist ignored): what a slice averages to decide
    /// whether a reader would call it an "ACL slice".
    pub(crate) fn presence(&self, m: f32) -> f32 {
        self.ml_width(m, 0.5)
    }

    /// Bounding box `(min, max)` of the ligament's territory. It depends on the anatomy
    /// only, so intact and torn versions of one knee share it.
    pub(crate) fn territory(&self) -> (V2, V2) {
        let m = self.half + TERRITORY_MARGIN;
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

    /// Thickness factor of the ligament on the plane at `m` (mm) at position `s` along
    /// it: an elliptical cross-section, with the centre drifting by the twist.
    fn ml_width(&self, m: f32, s: f32) -> f32 {
        let centre = self.ml_centre + self.twist * (0.5 - s.clamp(0.0, 1.0));
        let u = (m - centre) / self.ml_half;
        if u.abs() >= 1.0 {
            0.0
        } else {
            (1.0 - u * u).sqrt()
        }
    }

    /// Signal at `q` on the plane at `m`, or `None` where the ligament leaves the
    /// surrounding tissue alone.
    pub(crate) fn sample(&self, q: V2, m: f32, pal: &Palette) -> Option<AclSample> {
        let rel = q.sub(self.femoral);
        let s = rel.dot(self.dir) / self.len;
        let d = rel.dot(self.normal);
        let dr = &self.draws;
        let k = dr.strength;
        // Oedematous stump and fluid-or-fat where fibres are missing, both scaled by
        // how loudly this tear shows.
        let stump = pal.ligament + (pal.torn_fibres - pal.ligament) * (0.3 + 0.7 * k);
        let fill = pal.fat + (pal.fluid - pal.fat) * (0.25 + 0.75 * k);
        let fibres = |signal: f32, heterogeneity: f32| {
            Some(AclSample {
                signal,
                heterogeneity,
            })
        };

        if self.condition == AclCondition::Torn(TearKind::Horizontal) {
            let w = self.ml_width(m, 1.0);
            if w > 0.05 {
                // Lying on the plateau, above the tibial spines.
                let r = self.half * 0.8 * w.sqrt();
                let start = self.tibial.add(V2::new(0.0, -0.022));
                let end = start.add(V2::new(dr.remnant_length * self.len * 0.75, -0.008));
                if capsule(q, start, end, r) < 0.0 {
                    return fibres(stump, 0.5);
                }
            }
        }
        if !(-0.08..=1.08).contains(&s) || d.abs() > 3.0 * self.half {
            return None;
        }
        let w = self.ml_width(m, s);
        if w <= 0.05 {
            return None;
        }
        let half = self.half * w;
        let intact = pal.ligament;
        match self.condition {
            AclCondition::Mimic(MimicKind::Mucoid) => {
                // Fusiform swelling, widest mid-substance, like mucoid degeneration.
                let bulge = 1.0
                    + (dr.mimic_thickening - 1.0)
                        * (std::f32::consts::PI * s.clamp(0.0, 1.0)).sin();
                let signal = intact + (pal.mucoid - intact) * dr.mimic_strength;
                (d.abs() < half * bulge).then_some(AclSample {
                    signal,
                    heterogeneity: 0.35,
                })
            }
            AclCondition::Intact | AclCondition::Mimic(_) => {
                (d.abs() < half).then_some(AclSample {
                    signal: intact,
                    heterogeneity: 0.1,
                })
            }
            AclCondition::Torn(TearKind::Complete) => {
                let g0 = dr.gap_centre - dr.gap_length / 2.0;
                let g1 = dr.gap_centre + dr.gap_length / 2.0;
                if s < g0 {
                    // Swollen proximal stump whose free end frays towards the gap.
                    let fray = 1.0 - 0.35 * smoothstep(g0 - 0.12, g0, s);
                    (d.abs() < half * 1.15 * fray).then_some(AclSample {
                        signal: stump,
                        heterogeneity: 0.5,
                    })
                } else if s <= g1 {
                    // Fluid filling the defect, a little wider than the ligament.
                    let u = (s - dr.gap_centre) / (dr.gap_length / 2.0);
                    let width = half * 1.35 * (1.0 - 0.3 * u * u);
                    (d.abs() < width).then_some(AclSample {
                        signal: fill,
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
                    ((d - centre).abs() < half * 0.95).then_some(AclSample {
                        signal: stump,
                        heterogeneity: 0.5,
                    })
                }
            }
            AclCondition::Torn(TearKind::Partial) => {
                let u = (self.ml_coordinate(m, s) + 1.0) / 2.0;
                let torn_bundle = u < 0.5 + dr.partial_ml_split;
                let p0 = dr.partial_centre - dr.partial_length / 2.0;
                let p1 = dr.partial_centre + dr.partial_length / 2.0;
                let within = (p0..=p1).contains(&s);
                if d.abs() >= half * 1.15 {
                    return None;
                }
                if within && torn_bundle {
                    // The surviving fibres hug one side of the band; the rest is a
                    // bright defect.
                    let keep = -half + 2.0 * half * dr.partial_keep;
                    if d < keep {
                        fibres(intact + (stump - intact) * 0.3, 0.2)
                    } else {
                        fibres(fill * 0.6 + stump * 0.4, 0.4)
                    }
                } else {
                    (d.abs() < half * 1.08).then_some(AclSample {
                        signal: intact + (stump - intact) * 0.45,
                        heterogeneity: 0.35,
                    })
                }
            }
            AclCondition::Torn(TearKind::Lax) => {
                let detach = dr.lax_detach;
                if s < detach {
                    return (d.abs() < half * 1.1).then_some(AclSample {
                        signal: fill,
                        heterogeneity: 0.3,
                    });
                }
                let t = (s - detach) / (1.0 - detach);
                let from_tibia = (1.0 - s).max(0.0) * self.len;
                let centre = -dr.lax_sag * (std::f32::consts::PI * t.clamp(0.0, 1.0)).sin()
                    + dr.wave_amplitude
                        * smoothstep(0.0, 0.04, from_tibia)
                        * (from_tibia / dr.wave_length * std::f32::consts::TAU + dr.wave_phase)
                            .sin();
                if (d - centre).abs() < half * 0.85 {
                    fibres(stump, 0.5)
                } else if d.abs() < half {
                    // Where the taut ligament would have run: notch fat and some fluid.
                    fibres(pal.fat + (fill - pal.fat) * 0.5, 0.3)
                } else {
                    None
                }
            }
            AclCondition::Torn(TearKind::EmptyNotch) => {
                if dr.stub && s > 0.88 && d.abs() < half * 0.8 {
                    return fibres(stump, 0.4);
                }
                (d.abs() < half * 1.25).then_some(AclSample {
                    signal: fill,
                    heterogeneity: 0.35,
                })
            }
            AclCondition::Torn(TearKind::Horizontal) => {
                // Nothing left along the ligament's course but fluid and fat.
                (d.abs() < half * 1.15 && s < 0.9).then_some(AclSample {
                    signal: fill,
                    heterogeneity: 0.35,
                })
            }
        }
    }

    /// The plane's position across the ligament's medio-lateral extent, -1 (medial
    /// edge) to 1 (lateral edge).
    fn ml_coordinate(&self, m: f32, s: f32) -> f32 {
        let centre = self.ml_centre + self.twist * (0.5 - s.clamp(0.0, 1.0));
        ((m - centre) / self.ml_half).clamp(-1.0, 1.0)
    }

    /// Whether `q` on the plane at `m` lies in the lobulated ganglion cyst beside the
    /// ligament; never unless that is this knee's mimic.
    pub(crate) fn ganglion(&self, q: V2, m: f32) -> bool {
        if self.condition != AclCondition::Mimic(MimicKind::Ganglion) {
            return false;
        }
        let dr = &self.draws;
        let dm = (m - self.ml_centre) / dr.ganglion_ml_radius;
        if dm.abs() >= 1.0 {
            return false;
        }
        let r = dr.ganglion_radius * (1.0 - dm * dm).sqrt();
        let centre = self
            .femoral
            .add(self.dir.scale(dr.ganglion_at * self.len))
            .add(
                self.normal
                    .scale(dr.ganglion_side * (self.half + dr.ganglion_radius * 0.8)),
            );
        let rel = q.sub(centre);
        let theta = rel.y.atan2(rel.x);
        rel.len() < r * (1.0 + 0.18 * (3.0 * theta + dr.ganglion_lobes).sin())
    }

    /// Marrow oedema weight in `[0, 1]` at a point in femur (`qf`) and tibia (`q`)
    /// coordinates on the plane at `m`; zero unless this knee is torn and bruised.
    pub(crate) fn bruise_weight(&self, qf: V2, q: V2, m: f32) -> f32 {
        if !self.has_bruise() {
            return 0.0;
        }
        let (_, ml_radius) = self.draws.bruise_ml;
        let across = (m - self.bruise_ml_centre).abs();
        if across >= ml_radius {
            return 0.0;
        }
        let depth = 1.0 - smoothstep(0.2 * ml_radius, ml_radius, across);
        // Ill-defined, not a disc: the edge wanders with the angle around the centre.
        let blob = |p: V2, (c, r): (V2, f32)| {
            let rel = p.sub(c);
            let wobble = 1.0 + 0.25 * (3.0 * rel.y.atan2(rel.x) + r * 90.0).sin();
            1.0 - smoothstep(0.1 * r, r * wobble, rel.len())
        };
        depth * blob(qf, self.draws.bruise_femur).max(blob(q, self.draws.bruise_tibia))
    }

    pub(crate) fn has_bruise(&self) -> bool {
        self.torn() && self.draws.bruise
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::phantom::palette::Contrast;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn acl(condition: AclCondition) -> Acl {
        let mut draws = LesionDraws::sample(&mut StdRng::seed_from_u64(1), 0.25);
        draws.strength = 0.8;
        Acl::new(
            AclPlacement {
                femoral: V2::new(0.1, -0.15),
                tibial: V2::new(-0.03, 0.02),
                thickness: 0.045,
                ml_centre: 3.0,
                ml_half: 4.0,
                twist: 1.0,
                lateral: (10.0, 40.0),
            },
            condition,
            draws,
        )
    }

    fn signal(a: &Acl, s: f32, m: f32) -> Option<f32> {
        let pal = Palette::of(Contrast::Pd);
        let p = V2::new(0.1, -0.15).add(V2::new(-0.13, 0.17).scale(s));
        a.sample(p, m, &pal).map(|x| x.signal)
    }

    #[test]
    fn every_tear_changes_the_ligament_and_keeps_its_territory() {
        let pal = Palette::of(Contrast::Pd);
        let intact = acl(AclCondition::Intact);
        assert_eq!(signal(&intact, 0.5, 3.0), Some(pal.ligament));
        for kind in TearKind::ALL {
            let torn = acl(AclCondition::Torn(kind));
            assert_eq!(intact.territory(), torn.territory());
            // Somewhere along the ligament the signal is clearly not a healthy fibre.
            let changed = (0..40)
                .map(|i| i as f32 / 40.0)
                .filter(|&s| signal(&torn, s, 3.0).is_none_or(|v| v > pal.ligament + 0.15))
                .count();
            assert!(changed >= 8, "{kind:?}: {changed} of 40 points changed");
        }
    }

    #[test]
    fn the_ligament_ends_medio_laterally_and_far_points_are_outside() {
        let a = acl(AclCondition::Intact);
        assert!(signal(&a, 0.5, 3.0).is_some());
        assert!(signal(&a, 0.5, 9.0).is_none() && signal(&a, 0.5, -3.0).is_none());
        assert!(
            acl(AclCondition::Torn(TearKind::Complete))
                .sample(V2::new(0.4, 0.4), 3.0, &Palette::of(Contrast::Pd))
                .is_none()
        );
        assert_eq!(
            a.bruise_weight(V2::new(0.0, 0.0), V2::new(0.0, 0.0), 20.0),
            0.0
        );
        let (lo, hi) = a.ml_core();
        assert!(lo > -1.0 && hi < 7.0 && lo < hi);
    }

    #[test]
    fn ganglion_only_for_that_mimic() {
        let g = acl(AclCondition::Mimic(MimicKind::Ganglion));
        let i = acl(AclCondition::Intact);
        let hits = |a: &Acl| {
            (0..400)
                .filter(|k| {
                    let q = V2::new(
                        -0.1 + (k % 20) as f32 * 0.015,
                        -0.2 + (k / 20) as f32 * 0.015,
                    );
                    a.ganglion(q, 3.0)
                })
                .count()
        };
        assert!(hits(&g) > 3, "{}", hits(&g));
        assert_eq!(hits(&i), 0);
    }
}
