//! Tissue classes and what each MR contrast makes of them.
//!
//! Values are relative signal (fat on PD ≈ 0.9) before the scanner's gain. They follow
//! the textbook ordering radiologists read tears by: fluid bright on fat-saturated PD
//! and T2, dark on T1; fat bright on PD and T1, dark once saturated; ligaments, menisci
//! and cortex dark on everything.

/// The MR weighting a site acquires its sagittal series with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Contrast {
    /// Proton density.
    Pd,
    /// Proton density with fat saturation.
    PdFs,
    /// T2 with fat saturation.
    T2Fs,
    T1,
}

impl Contrast {
    pub const ALL: [Contrast; 4] = [Contrast::Pd, Contrast::PdFs, Contrast::T2Fs, Contrast::T1];

    pub fn fat_saturated(self) -> bool {
        matches!(self, Contrast::PdFs | Contrast::T2Fs)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub(crate) enum Tissue {
    Air,
    Fat,
    Marrow,
    Cortex,
    Cartilage,
    Meniscus,
    Acl,
    Pcl,
    Tendon,
    Muscle,
    Fluid,
    /// Soft-tissue oedema and haemorrhage around a fresh tear.
    Oedema,
    /// Marrow oedema of a bone bruise.
    BoneOedema,
    /// Mucoid-degenerated ligament: thick and bright but continuous.
    Mucoid,
    /// Disrupted, oedematous ligament fibres.
    Torn,
    Skin,
    /// Arterial flow void.
    Vessel,
}

pub(crate) const TISSUES: usize = 17;

/// Which grain pattern modulates a tissue: none, isotropic (marrow, fat), or fibres
/// running superior-inferior (muscle, ligament striation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Grain {
    None,
    Iso,
    Fibre,
}

impl Tissue {
    pub const ALL: [Tissue; TISSUES] = [
        Tissue::Air,
        Tissue::Fat,
        Tissue::Marrow,
        Tissue::Cortex,
        Tissue::Cartilage,
        Tissue::Meniscus,
        Tissue::Acl,
        Tissue::Pcl,
        Tissue::Tendon,
        Tissue::Muscle,
        Tissue::Fluid,
        Tissue::Oedema,
        Tissue::BoneOedema,
        Tissue::Mucoid,
        Tissue::Torn,
        Tissue::Skin,
        Tissue::Vessel,
    ];

    /// Signal on PD, PD-FS, T2-FS, T1 (fat before saturation is applied separately).
    fn table(self) -> [f32; 4] {
        match self {
            Tissue::Air => [0.0, 0.0, 0.0, 0.0],
            Tissue::Fat => [0.9, 0.9, 0.75, 1.0],
            Tissue::Marrow => [0.78, 0.78, 0.62, 0.92],
            Tissue::Cortex => [0.03, 0.03, 0.02, 0.03],
            Tissue::Cartilage => [0.55, 0.5, 0.32, 0.42],
            Tissue::Meniscus => [0.06, 0.05, 0.03, 0.07],
            Tissue::Acl => [0.22, 0.26, 0.16, 0.26],
            Tissue::Pcl => [0.08, 0.1, 0.06, 0.1],
            Tissue::Tendon => [0.06, 0.05, 0.03, 0.07],
            Tissue::Muscle => [0.45, 0.36, 0.22, 0.42],
            Tissue::Fluid => [0.72, 0.95, 1.0, 0.12],
            Tissue::Oedema => [0.6, 0.78, 0.8, 0.28],
            Tissue::BoneOedema => [0.55, 0.62, 0.7, 0.35],
            Tissue::Mucoid => [0.48, 0.52, 0.48, 0.3],
            Tissue::Torn => [0.45, 0.6, 0.58, 0.3],
            Tissue::Skin => [0.5, 0.42, 0.3, 0.5],
            Tissue::Vessel => [0.03, 0.03, 0.03, 0.04],
        }
    }

    /// Share of the signal that comes from fat protons (what saturation removes).
    fn fat_share(self) -> f32 {
        match self {
            Tissue::Fat => 1.0,
            Tissue::Marrow => 0.95,
            Tissue::BoneOedema => 0.3,
            _ => 0.0,
        }
    }

    pub fn grain(self) -> (Grain, f32) {
        match self {
            Tissue::Marrow | Tissue::BoneOedema => (Grain::Iso, 0.22),
            Tissue::Fat => (Grain::Iso, 0.08),
            Tissue::Muscle => (Grain::Fibre, 0.16),
            Tissue::Acl | Tissue::Mucoid | Tissue::Torn => (Grain::Fibre, 0.3),
            Tissue::Cartilage => (Grain::Iso, 0.06),
            Tissue::Oedema => (Grain::Iso, 0.25),
            _ => (Grain::None, 0.0),
        }
    }
}

/// Per-exam tissue signal table for one contrast.
#[derive(Debug, Clone)]
pub(crate) struct SignalTable {
    pub base: [f32; TISSUES],
    pub grain: [(Grain, f32); TISSUES],
}

impl SignalTable {
    /// `fat_sat` is the fraction of fat signal suppressed (ignored without saturation);
    /// `jitter` scales each tissue (per-exam relaxation differences).
    pub fn new(contrast: Contrast, fat_sat: f32, jitter: &[f32; TISSUES]) -> Self {
        let col = Contrast::ALL
            .iter()
            .position(|c| *c == contrast)
            .unwrap_or(0);
        let mut base = [0.0; TISSUES];
        let mut grain = [(Grain::None, 0.0); TISSUES];
        for (i, t) in Tissue::ALL.iter().enumerate() {
            let mut s = t.table()[col];
            if contrast.fat_saturated() {
                s *= 1.0 - t.fat_share() * fat_sat;
            }
            base[i] = s * jitter[i];
            grain[i] = t.grain();
        }
        Self { base, grain }
    }

    pub fn of(&self, t: Tissue) -> f32 {
        self.base[t as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contrasts_order_fluid_and_fat_as_radiologists_expect() {
        let one = [1.0; TISSUES];
        let t = |c| SignalTable::new(c, 0.95, &one);
        let (pd, pdfs, t2fs, t1) = (
            t(Contrast::Pd),
            t(Contrast::PdFs),
            t(Contrast::T2Fs),
            t(Contrast::T1),
        );
        assert!(t2fs.of(Tissue::Fluid) > 5.0 * t2fs.of(Tissue::Fat));
        assert!(pdfs.of(Tissue::Fluid) > 5.0 * pdfs.of(Tissue::Fat));
        assert!(t1.of(Tissue::Fluid) < 0.2 * t1.of(Tissue::Fat));
        assert!(pd.of(Tissue::Fat) > pd.of(Tissue::Muscle));
        for c in [&pd, &pdfs, &t2fs, &t1] {
            assert!(
                c.of(Tissue::Acl) < c.of(Tissue::Muscle),
                "the ACL is dark on every contrast"
            );
            assert!(c.of(Tissue::Meniscus) < c.of(Tissue::Cartilage));
        }
    }
}
