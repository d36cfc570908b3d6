//! Tissue signal per MR contrast: the only place tissue brightness is decided.
//!
//! A knee looks different on every sequence a site might run (fat and marrow bright on
//! PD and T1 and dark with fat suppression; fluid bright on the fat-suppressed
//! sequences, intermediate on PD and dark on T1; ligaments, tendons, menisci and cortex
//! dark on all). The anatomy asks for a tissue, the palette of the site's contrast
//! answers with a level in about `0..1` before the scanner's gain and gamma.

use rand::Rng;
use serde::{Deserialize, Serialize};

/// The sequence a site runs for its sagittal knee series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Contrast {
    /// Proton density without fat suppression.
    Pd,
    /// Proton density with fat suppression.
    PdFs,
    /// T2-weighted with fat suppression.
    T2Fs,
    /// T1-weighted.
    T1,
}

impl Contrast {
    pub const ALL: [Contrast; 4] = [Contrast::Pd, Contrast::PdFs, Contrast::T2Fs, Contrast::T1];

    pub fn name(self) -> &'static str {
        match self {
            Contrast::Pd => "PD",
            Contrast::PdFs => "PD-FS",
            Contrast::T2Fs => "T2-FS",
            Contrast::T1 => "T1",
        }
    }
}

/// Signal of every tissue the anatomy draws.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Palette {
    pub skin: f32,
    pub fat: f32,
    pub marrow: f32,
    pub fluid: f32,
    pub cartilage: f32,
    pub muscle: f32,
    pub ligament: f32,
    pub tendon: f32,
    pub meniscus: f32,
    pub cortex: f32,
    pub flow_void: f32,
    pub vein: f32,
    /// Marrow oedema (bone bruise).
    pub oedema: f32,
    /// Oedematous, haemorrhagic torn fibres.
    pub torn_fibres: f32,
    /// Mucoid degeneration of an intact ligament.
    pub mucoid: f32,
}

impl Palette {
    /// Nominal levels of one contrast.
    pub(crate) fn of(contrast: Contrast) -> Self {
        match contrast {
            Contrast::Pd => Self {
                skin: 0.5,
                fat: 0.85,
                marrow: 0.74,
                fluid: 0.6,
                cartilage: 0.5,
                muscle: 0.32,
                ligament: 0.08,
                tendon: 0.06,
                meniscus: 0.05,
                cortex: 0.05,
                flow_void: 0.03,
                vein: 0.45,
                oedema: 0.42,
                torn_fibres: 0.45,
                mucoid: 0.42,
            },
            Contrast::PdFs => Self {
                skin: 0.32,
                fat: 0.2,
                marrow: 0.15,
                fluid: 0.95,
                cartilage: 0.52,
                muscle: 0.3,
                ligament: 0.07,
                tendon: 0.05,
                meniscus: 0.05,
                cortex: 0.04,
                flow_void: 0.03,
                vein: 0.42,
                oedema: 0.82,
                torn_fibres: 0.62,
                mucoid: 0.5,
            },
            Contrast::T2Fs => Self {
                skin: 0.25,
                fat: 0.14,
                marrow: 0.1,
                fluid: 1.0,
                cartilage: 0.34,
                muscle: 0.2,
                ligament: 0.05,
                tendon: 0.04,
                meniscus: 0.04,
                cortex: 0.03,
                flow_void: 0.03,
                vein: 0.45,
                oedema: 0.85,
                torn_fibres: 0.62,
                mucoid: 0.45,
            },
            Contrast::T1 => Self {
                skin: 0.55,
                fat: 0.92,
                marrow: 0.82,
                fluid: 0.13,
                cartilage: 0.38,
                muscle: 0.34,
                ligament: 0.12,
                tendon: 0.07,
                meniscus: 0.06,
                cortex: 0.05,
                flow_void: 0.03,
                vein: 0.25,
                oedema: 0.3,
                torn_fibres: 0.32,
                mucoid: 0.3,
            },
        }
    }

    /// The contrast's levels with per-patient differences (marrow conversion, fat
    /// suppression quality, muscle and cartilage composition). Draws the same number
    /// of values for every contrast so the stream after it does not depend on it.
    pub(crate) fn jittered(contrast: Contrast, rng: &mut impl Rng) -> Self {
        let mut p = Self::of(contrast);
        let mut j = |v: &mut f32, rel: f32| *v *= 1.0 + rng.random_range(-rel..rel);
        j(&mut p.fat, 0.06);
        j(&mut p.marrow, 0.08);
        j(&mut p.fluid, 0.06);
        j(&mut p.cartilage, 0.1);
        j(&mut p.muscle, 0.12);
        j(&mut p.ligament, 0.25);
        j(&mut p.oedema, 0.1);
        j(&mut p.torn_fibres, 0.12);
        j(&mut p.mucoid, 0.12);
        // Fat suppression is never perfect and differs from knee to knee.
        let residual = rng.random_range(0.75..1.35);
        if matches!(contrast, Contrast::PdFs | Contrast::T2Fs) {
            p.fat *= residual;
            p.marrow *= residual;
            p.skin *= residual;
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contrasts_order_tissues_as_mr_does() {
        let [pd, pdfs, t2fs, t1] = Contrast::ALL.map(Palette::of);
        // Fat and marrow bright without fat suppression, dark with it.
        for bright in [pd, t1] {
            for dark in [pdfs, t2fs] {
                assert!(bright.fat > 3.0 * dark.fat && bright.marrow > 3.0 * dark.marrow);
            }
        }
        // Fluid bright with fat suppression, intermediate on PD, dark on T1.
        assert!(t2fs.fluid >= pdfs.fluid && pdfs.fluid > pd.fluid && pd.fluid > 2.0 * t1.fluid);
        assert!(pdfs.fluid > 2.0 * pdfs.fat && t1.fat > 4.0 * t1.fluid);
        // Bruise: dark on T1, bright with fat suppression.
        assert!(t1.oedema < t1.marrow && pdfs.oedema > 3.0 * pdfs.marrow);
        // Ligaments dark on every contrast, darker than the tissue around them.
        for p in [pd, pdfs, t2fs, t1] {
            assert!(p.ligament < 0.15 && p.ligament < 0.5 * p.fat.max(p.fluid));
            assert!(p.torn_fibres > 2.0 * p.ligament);
        }
    }
}
