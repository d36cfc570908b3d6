//! Seedable synthetic knee MRI cohorts: the project's own data (DESIGN §3).
//!
//! No knee MRI can be downloaded by the project's machines or CI, so cohorts are drawn
//! here and written through the same formats the sites read. Generation is a pure
//! function of the configuration: the same seed gives the same voxels on any machine
//! and thread count, which is what makes experiments and regression tests repeatable.

mod anatomy;
mod lesions;
mod palette;
mod previews;
mod random;
mod scanner;
mod shapes;
mod texture;

use std::ops::Range;
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::mrnet::{self, MrnetError};
use crate::data::{Exam, Spacing, Volume};

use anatomy::{Grid, Knee, Pose};
use lesions::{Acl, AclCondition, LesionDraws};
use random::{mix, salt, std_rng, unit};
use shapes::V2;

pub use lesions::{MimicKind, TearKind};
pub use palette::Contrast;
pub use previews::write_previews;
pub use scanner::{
    FOV_MM, MATRIX_RANGE, PhaseAxis, SLICE_RANGE, ScannerProfile, THICKNESS_MM, site_profile,
};

/// What to generate. Sites differ in scanner, protocol and case mix, exams in anatomy,
/// pose, lesion and artefacts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhantomConfig {
    pub sites: usize,
    pub exams_per_site: usize,
    pub seed: u64,
    /// In-plane matrix (pixels per side) of every site; 0 lets each site's protocol
    /// draw its own from [`MATRIX_RANGE`], as real cohorts do.
    pub image_size: usize,
    /// Share of each label held out for validation at every site.
    pub valid_fraction: f64,
    /// Relative per-site cohort size variation (quantity skew); 0 gives
    /// exactly `exams_per_site` each.
    pub size_jitter: f64,
    /// Label skew in [0, 1]: 0 lets each site draw its tear prevalence from
    /// 0.25–0.5; above 0 the sites spread over 0.375 ± 0.35·`label_skew`
    /// ([`scanner::skewed_prevalence`]).
    #[serde(default)]
    pub label_skew: f64,
    /// Scanner skew in [0, 2]: 1 as drawn, 0 the same scanner and protocol at
    /// every site, above 1 sites further apart than drawn.
    #[serde(default = "one")]
    pub scanner_skew: f64,
    /// Textbook tears (full strength) and no ghosting or wrap-around, while
    /// protocols, contrasts, anatomy and pose still vary: for tests of the
    /// training and federation plumbing, which should not hinge on how hard
    /// the full phantom is (`fedslice study` measures that).
    #[serde(default)]
    pub textbook: bool,
}

impl Default for PhantomConfig {
    fn default() -> Self {
        Self {
            sites: 3,
            exams_per_site: 60,
            seed: 0,
            image_size: 0,
            valid_fraction: 0.2,
            size_jitter: 0.0,
            label_skew: 0.0,
            scanner_skew: 1.0,
            textbook: false,
        }
    }
}

fn one() -> f64 {
    1.0
}

impl PhantomConfig {
    /// What every exam of this cohort overrides ([`PhantomConfig::textbook`]).
    pub fn overrides(&self) -> ExamOverrides {
        if self.textbook {
            ExamOverrides {
                tear_strength: Some(1.0),
                ghosting: Some(false),
                wrap: Some(false),
                ..ExamOverrides::default()
            }
        } else {
            ExamOverrides::default()
        }
    }
}

impl PhantomConfig {
    /// Rejects configurations that would generate nothing useful or nonsense.
    pub fn validate(&self) -> Result<(), PhantomError> {
        let bad = |m: &str| Err(PhantomError::Config(m.to_string()));
        if self.sites == 0 {
            return bad("sites must be at least 1");
        }
        if self.exams_per_site == 0 {
            return bad("exams_per_site must be at least 1");
        }
        if self.image_size != 0 && !(32..=1024).contains(&self.image_size) {
            return bad(
                "image_size must be 0 (drawn per site) or 32..=1024 pixels for the anatomy to be drawable",
            );
        }
        if !(0.0..1.0).contains(&self.valid_fraction) {
            return bad("valid_fraction must be in [0, 1)");
        }
        if !(0.0..1.0).contains(&self.size_jitter) {
            return bad("size_jitter must be in [0, 1)");
        }
        if !(0.0..=1.0).contains(&self.label_skew) {
            return bad("label_skew must be in [0, 1]");
        }
        if !(0.0..=2.0).contains(&self.scanner_skew) {
            return bad("scanner_skew must be in [0, 2]");
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PhantomError {
    #[error("invalid phantom configuration: {0}")]
    Config(String),
    #[cfg(feature = "readers")]
    #[error(transparent)]
    Folder(#[from] crate::data::folder::FolderWriteError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Mrnet(#[from] MrnetError),
    #[error("cohort summary: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Preview(#[from] crate::data::preview::PreviewError),
}

/// Ground truth the label alone does not carry, for evaluation and sanity tests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExamTruth {
    pub torn: bool,
    /// Intact knee with a mimic (see `mimic_kind`).
    pub mimic: bool,
    pub bone_bruise: bool,
    /// Slices on which the ACL, averaged over the slice's thickness, is at least about
    /// a third of its full thickness.
    pub acl_slices: Range<usize>,
    /// `[y0, x0, y1, x1]` pixels (end-exclusive) of the ACL territory on `acl_slices`;
    /// the same for the torn and intact versions of a knee.
    pub acl_box: [usize; 4],
}

/// What else the generator decided for an exam: which lesion, which mimic, the pose
/// and artefacts. Kept apart from [`ExamTruth`], whose shape other generators share.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExamDetails {
    pub tear: Option<TearKind>,
    pub mimic_kind: Option<MimicKind>,
    /// A large joint effusion (a mimic, or a torn knee's haemarthrosis).
    pub effusion: bool,
    /// Slices whose centre lies in the intercondylar notch.
    pub notch_slices: Range<usize>,
    pub flexion_deg: f64,
    pub ghosting: bool,
    pub wrap: bool,
}

#[derive(Debug, Clone)]
pub struct PhantomExam {
    pub exam: Exam,
    pub truth: ExamTruth,
}

/// Choices [`generate_exam_with`] should make instead of drawing them, for previews
/// that hold everything but one variation axis fixed. `None` draws as usual.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExamOverrides {
    /// The tear's appearance (used only when the exam is torn).
    pub tear: Option<TearKind>,
    /// The intact knee's mimic, `Some(None)` for none (used only when intact).
    pub mimic: Option<Option<MimicKind>>,
    pub bone_bruise: Option<bool>,
    /// 0 barely visible … 1 textbook.
    pub tear_strength: Option<f64>,
    pub haemarthrosis: Option<bool>,
    pub flexion_deg: Option<f64>,
    pub rotation_deg: Option<f64>,
    /// Joint centre relative to the image centre, mm (`x` posterior, `y` inferior).
    pub offset_mm: Option<(f64, f64)>,
    /// How far the slab's centre misses the knee's bony centre, mm (lateral positive).
    pub ml_shift_mm: Option<f64>,
    pub ghosting: Option<bool>,
    pub wrap: Option<bool>,
}

/// Draws one exam. The anatomy, pose, scanner jitter and noise depend on `exam_seed`
/// only, so `torn = false` and `torn = true` give the same knee, differing in the ACL
/// region (and any bone bruise or haemarthrosis) alone.
pub fn generate_exam(profile: &ScannerProfile, exam_seed: u64, torn: bool) -> PhantomExam {
    generate_exam_with(profile, exam_seed, torn, &ExamOverrides::default())
}

/// Sub-plane offsets through a slice, as fractions of its thickness: three planes
/// whose average is a box slice profile, so a thick slice mixes neighbouring tissue.
const SUBPLANES: [f32; 3] = [-1.0 / 3.0, 0.0, 1.0 / 3.0];

/// Mean relative thickness of the ACL over a slice that makes it an ACL slice.
const ACL_PRESENCE: f32 = 0.35;

/// [`generate_exam`] with some choices fixed by `ov`.
pub fn generate_exam_with(
    profile: &ScannerProfile,
    exam_seed: u64,
    torn: bool,
    ov: &ExamOverrides,
) -> PhantomExam {
    generate_exam_detailed(profile, exam_seed, torn, ov).0
}

/// [`generate_exam_with`], also returning what the generator decided beyond the truth.
pub fn generate_exam_detailed(
    profile: &ScannerProfile,
    exam_seed: u64,
    torn: bool,
    ov: &ExamOverrides,
) -> (PhantomExam, ExamDetails) {
    let size = profile.matrix.max(1);
    let mut draws = LesionDraws::sample(&mut std_rng(exam_seed, salt::LESION), profile.mimic_rate);
    if let Some(t) = ov.tear {
        draws.tear = t;
    }
    if let Some(m) = ov.mimic {
        draws.mimic = m;
    }
    if let Some(b) = ov.bone_bruise {
        draws.bruise = b;
    }
    if let Some(s) = ov.tear_strength {
        draws.strength = s.clamp(0.0, 1.0) as f32;
    }
    if let Some(h) = ov.haemarthrosis {
        draws.haemarthrosis = h;
    }
    let condition = if torn {
        AclCondition::Torn(draws.tear)
    } else if let Some(kind) = draws.mimic {
        AclCondition::Mimic(kind)
    } else {
        AclCondition::Intact
    };
    let mut pose = Pose::sample(&mut std_rng(exam_seed, salt::POSE));
    if let Some(f) = ov.flexion_deg {
        pose.flexion = (f as f32).to_radians();
    }
    if let Some(r) = ov.rotation_deg {
        pose.rotation = (r as f32).to_radians();
    }
    if let Some((x, y)) = ov.offset_mm {
        pose.offset_mm = V2::new(x as f32, y as f32);
    }
    if let Some(m) = ov.ml_shift_mm {
        pose.ml_shift_mm = m as f32;
    }
    let mut scan = scanner::ExamScan::sample(profile, exam_seed);
    if let Some(g) = ov.ghosting {
        scan.set_ghosting(g, exam_seed);
    }
    if let Some(w) = ov.wrap {
        scan.set_wrap(w, profile);
    }
    let depth = scan.slices;
    let spacing_mm = profile.slice_spacing_mm as f32;
    let thickness = profile.slice_thickness_mm as f32;
    let slice_centre = |z: usize| (z as f32 - (depth as f32 - 1.0) / 2.0) * spacing_mm;
    let pal = palette::Palette::jittered(profile.contrast, &mut std_rng(exam_seed, salt::PALETTE));
    let knee = Knee::sample(
        &mut std_rng(exam_seed, salt::ANATOMY),
        pal,
        pose,
        slice_centre(depth - 1),
        mix(exam_seed, salt::TEXTURE),
        |p| Acl::new(p, condition, draws),
    );

    let fov = profile.fov_mm as f32;
    let mut grid = Grid::square(fov, size);
    let extra = scan.wrap as i64;
    match profile.phase_axis {
        PhaseAxis::Rows => grid.rows = -extra..size as i64 + extra,
        PhaseAxis::Cols => grid.cols = -extra..size as i64 + extra,
    }
    let mut volume = Volume::zeros(depth, size, size);
    volume
        .voxels
        .par_chunks_mut(size * size)
        .enumerate()
        .for_each(|(z, slice)| {
            let n = grid.height() * grid.width();
            let (mut canvas, mut plane) = (vec![0.0f32; n], vec![0.0f32; n]);
            for off in SUBPLANES {
                knee.render_plane(slice_centre(z) + off * thickness, &grid, &mut plane);
                for (c, p) in canvas.iter_mut().zip(&plane) {
                    *c += p / SUBPLANES.len() as f32;
                }
            }
            if extra > 0 {
                canvas = scanner::fold(&canvas, size, extra as usize, profile.phase_axis);
            }
            slice.copy_from_slice(&canvas);
            scanner::acquire_slice(profile, &scan, slice, size, z, depth);
        });

    // A slice is an ACL slice when, averaged over its thickness, the ligament is at
    // least ACL_PRESENCE of its full thickness: what a reader would call seeing it.
    let presence: Vec<f32> = (0..depth)
        .map(|z| {
            SUBPLANES
                .iter()
                .map(|off| knee.acl_presence(slice_centre(z) + off * thickness))
                .sum::<f32>()
                / SUBPLANES.len() as f32
        })
        .collect();
    let acl_slices = match (
        presence.iter().position(|&p| p >= ACL_PRESENCE),
        presence.iter().rposition(|&p| p >= ACL_PRESENCE),
    ) {
        (Some(a), Some(b)) => a..b + 1,
        _ => {
            let z = (0..depth)
                .max_by(|&a, &b| presence[a].total_cmp(&presence[b]))
                .unwrap_or(0);
            z..z + 1
        }
    };
    let (notch_lo, notch_hi) = knee.notch_in_slab();
    let notch: Vec<usize> = (0..depth)
        .filter(|&z| (notch_lo..=notch_hi).contains(&slice_centre(z)))
        .collect();
    let notch_slices = match (notch.first(), notch.last()) {
        (Some(&a), Some(&b)) => a..b + 1,
        _ => acl_slices.clone(),
    };
    let acl = knee.acl();
    let truth = ExamTruth {
        torn,
        mimic: acl.mimic().is_some(),
        bone_bruise: acl.has_bruise(),
        acl_slices,
        acl_box: knee.acl_box(fov, size),
    };
    let details = ExamDetails {
        tear: acl.tear(),
        mimic_kind: acl.mimic(),
        effusion: acl.effusion(),
        notch_slices,
        // Two decimals survive a JSON round trip exactly.
        flexion_deg: (f64::from(pose.flexion.to_degrees()) * 100.0).round() / 100.0,
        ghosting: scan.ghosting.is_some(),
        wrap: extra > 0,
    };
    let exam = PhantomExam {
        exam: Exam {
            id: format!("phantom-{exam_seed:016x}"),
            volume,
            label: Some(torn),
            spacing: Some(spacing(profile)),
        },
        truth,
    };
    (exam, details)
}

/// One site's generated data, split as it will be written.
#[derive(Debug, Clone)]
pub struct SiteCohort {
    pub name: String,
    pub profile: ScannerProfile,
    pub train: Vec<PhantomExam>,
    pub valid: Vec<PhantomExam>,
}

pub fn site_name(site: usize) -> String {
    format!("site-{site:02}")
}

/// Generates a site's cohort. Labels are Bernoulli(prevalence) draws keyed by exam index;
/// the validation split takes `valid_fraction` of each label so every site can report
/// AUC. Exam ids match what `mrnet::write_site` then `read_site` would give back.
pub fn generate_site(cfg: &PhantomConfig, site: usize) -> SiteCohort {
    generate_site_detailed(cfg, site).0
}

/// [`generate_site`], with each exam's [`ExamDetails`] (train exams, then valid).
fn generate_site_detailed(cfg: &PhantomConfig, site: usize) -> (SiteCohort, Vec<ExamDetails>) {
    let profile = site_profile(cfg, site);
    let site_seed = mix(mix(cfg.seed, site as u64), salt::SITE);
    let seeds: Vec<(u64, bool)> = (0..profile.exams)
        .map(|i| {
            let exam_seed = mix(site_seed, mix(i as u64, salt::EXAM));
            (
                exam_seed,
                unit(mix(exam_seed, salt::LABEL)) < profile.prevalence,
            )
        })
        .collect();
    let overrides = cfg.overrides();
    let exams: Vec<(PhantomExam, ExamDetails)> = seeds
        .par_iter()
        .map(|&(exam_seed, torn)| generate_exam_detailed(&profile, exam_seed, torn, &overrides))
        .collect();

    let mut rng = std_rng(site_seed, salt::SPLIT);
    let mut in_valid = vec![false; exams.len()];
    for label in [true, false] {
        let mut idx: Vec<usize> = (0..seeds.len()).filter(|&i| seeds[i].1 == label).collect();
        idx.shuffle(&mut rng);
        let k = ((idx.len() as f64) * cfg.valid_fraction.clamp(0.0, 1.0)).round() as usize;
        for &i in idx.iter().take(k) {
            in_valid[i] = true;
        }
    }
    let (mut train, mut valid) = (Vec::new(), Vec::new());
    let (mut train_details, mut valid_details) = (Vec::new(), Vec::new());
    for ((e, d), valid_exam) in exams.into_iter().zip(in_valid) {
        if valid_exam {
            valid.push(e);
            valid_details.push(d);
        } else {
            train.push(e);
            train_details.push(d);
        }
    }
    for (i, e) in train.iter_mut().enumerate() {
        e.exam.id = format!("train/{i:04}");
    }
    let offset = train.len();
    for (i, e) in valid.iter_mut().enumerate() {
        e.exam.id = format!("valid/{:04}", offset + i);
    }
    train_details.extend(valid_details);
    let cohort = SiteCohort {
        name: site_name(site),
        profile,
        train,
        valid,
    };
    (cohort, train_details)
}

/// Per-exam truth as recorded in `cohort.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExamRecord {
    pub id: String,
    pub slices: usize,
    #[serde(flatten)]
    pub truth: ExamTruth,
    #[serde(default)]
    pub details: ExamDetails,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteSummary {
    pub name: String,
    pub profile: ScannerProfile,
    pub train: usize,
    pub valid: usize,
    pub train_positive: usize,
    pub valid_positive: usize,
    pub mimics: usize,
    pub bone_bruises: usize,
    pub exams: Vec<ExamRecord>,
}

/// What `write_cohort` wrote; also saved as `cohort.json` next to the sites.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CohortSummary {
    pub config: PhantomConfig,
    pub sites: Vec<SiteSummary>,
}

/// How `write_cohort` stores each site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PhantomFormat {
    /// `{train,valid}/sagittal/NNNN.npy` plus `{train,valid}-acl.csv`.
    #[default]
    Mrnet,
    /// Exam-folder layout: `{train,valid}/NNNN/IM00001.dcm …` plus `labels.csv`.
    Dicom,
    /// Exam-folder layout: `{train,valid}/NNNN.nii.gz` plus `labels.csv`.
    Nifti,
}

impl std::str::FromStr for PhantomFormat {
    type Err = PhantomError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "mrnet" => Ok(Self::Mrnet),
            "dicom" => Ok(Self::Dicom),
            "nifti" => Ok(Self::Nifti),
            other => Err(PhantomError::Config(format!(
                "unknown format {other:?} (mrnet, dicom or nifti)"
            ))),
        }
    }
}

/// The voxel geometry of every exam of a site: the protocol's slice spacing and
/// in-plane pixel size, which is exactly what the phantom renders.
pub fn spacing(profile: &ScannerProfile) -> Spacing {
    let pixel = profile.pixel_mm();
    Spacing {
        slice: profile.slice_spacing_mm,
        row: pixel,
        col: pixel,
    }
}

/// A volume as MRNet stores it: MRNet's `.npy` files are uint8, so a volume whose
/// scanner wrote more than 8 bits is rescaled so its maximum becomes 255 (as the MRNet
/// release itself was); one already within 0..=255 is returned unchanged.
pub fn mrnet_8bit(volume: &Volume) -> Volume {
    let max = volume.voxels.iter().copied().fold(0.0f32, f32::max);
    let mut v = volume.clone();
    if max > 255.0 {
        let k = 255.0 / max;
        for x in &mut v.voxels {
            *x = (*x * k).round().clamp(0.0, 255.0);
        }
    }
    v
}

fn write_site_as(
    dir: &Path,
    format: PhantomFormat,
    cohort: &SiteCohort,
) -> Result<(), PhantomError> {
    write_exams_as(
        dir,
        format,
        &cohort.train,
        &cohort.valid,
        spacing(&cohort.profile),
    )
}

/// Writes a site's exams in `format`; each exam with its own spacing (or
/// `fallback`) where the format records one.
fn write_exams_as(
    dir: &Path,
    format: PhantomFormat,
    train: &[PhantomExam],
    valid: &[PhantomExam],
    fallback: crate::data::Spacing,
) -> Result<(), PhantomError> {
    let exams = |v: &[PhantomExam]| -> Vec<Exam> {
        v.iter()
            .map(|e| {
                let mut exam = e.exam.clone();
                if format == PhantomFormat::Mrnet {
                    exam.volume = mrnet_8bit(&exam.volume);
                }
                exam
            })
            .collect()
    };
    let (train, valid) = (exams(train), exams(valid));
    match format {
        PhantomFormat::Mrnet => Ok(mrnet::write_site(dir, &train, &valid)?),
        #[cfg(feature = "readers")]
        PhantomFormat::Dicom | PhantomFormat::Nifti => {
            let folder_format = if format == PhantomFormat::Dicom {
                crate::data::folder::FolderFormat::Dicom
            } else {
                crate::data::folder::FolderFormat::Nifti
            };
            let all: Vec<Exam> = train.into_iter().chain(valid).collect();
            Ok(crate::data::folder::write_site(
                dir,
                folder_format,
                &all,
                fallback,
            )?)
        }
        #[cfg(not(feature = "readers"))]
        PhantomFormat::Dicom | PhantomFormat::Nifti => {
            let _ = fallback;
            Err(PhantomError::Config(
                "DICOM and NIfTI output need the `readers` feature".into(),
            ))
        }
    }
}

/// Validates `cfg` and creates the cohort folder.
fn prepare_out(out: &Path, cfg: &PhantomConfig) -> Result<(), PhantomError> {
    cfg.validate()?;
    std::fs::create_dir_all(out).map_err(|source| PhantomError::Io {
        path: out.to_path_buf(),
        source,
    })
}

/// Writes a cohort's ground truth as `out/cohort.json`.
fn write_summary(out: &Path, summary: &impl Serialize) -> Result<(), PhantomError> {
    let path = out.join("cohort.json");
    let json = serde_json::to_vec_pretty(summary)?;
    std::fs::write(&path, json).map_err(|source| PhantomError::Io { path, source })
}

/// One style-B site as `cohort.json` records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StyleBSiteSummary {
    pub name: String,
    pub protocol: crate::data::phantom_b::SiteProtocol,
    pub train: usize,
    pub valid: usize,
    pub train_positive: usize,
    pub valid_positive: usize,
    pub exams: Vec<ExamRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StyleBSummary {
    pub style: String,
    pub config: PhantomConfig,
    pub sites: Vec<StyleBSiteSummary>,
}

/// Writes a cohort of the independent style B (`data::phantom_b`), used only
/// to test that a recipe transfers, in the same layouts as [`write_cohort_as`],
/// with its ground truth in `cohort.json`.
pub fn write_style_b_cohort_as(
    out: &Path,
    cfg: &PhantomConfig,
    format: PhantomFormat,
) -> Result<StyleBSummary, PhantomError> {
    prepare_out(out, cfg)?;
    let mut sites = Vec::with_capacity(cfg.sites);
    for site in 0..cfg.sites {
        let cohort = crate::data::phantom_b::generate_site(cfg, site);
        let fallback = crate::data::Spacing {
            slice: cohort.protocol.slice_spacing_mm,
            row: cohort.protocol.fov_mm / cohort.protocol.matrix.max(1) as f64,
            col: cohort.protocol.fov_mm / cohort.protocol.matrix.max(1) as f64,
        };
        write_exams_as(
            &out.join(&cohort.name),
            format,
            &cohort.train,
            &cohort.valid,
            fallback,
        )?;
        let positives = |v: &[PhantomExam]| v.iter().filter(|e| e.truth.torn).count();
        sites.push(StyleBSiteSummary {
            name: cohort.name.clone(),
            protocol: cohort.protocol.clone(),
            train: cohort.train.len(),
            valid: cohort.valid.len(),
            train_positive: positives(&cohort.train),
            valid_positive: positives(&cohort.valid),
            exams: cohort
                .train
                .iter()
                .chain(&cohort.valid)
                .map(|e| ExamRecord {
                    id: e.exam.id.clone(),
                    slices: e.exam.volume.depth,
                    truth: e.truth.clone(),
                    details: ExamDetails::default(),
                })
                .collect(),
        });
    }
    let summary = StyleBSummary {
        style: "b".into(),
        config: cfg.clone(),
        sites,
    };
    write_summary(out, &summary)?;
    Ok(summary)
}

/// Writes every site as `out/site-NN/` in MRNet layout plus `out/cohort.json`. Sites are
/// generated one at a time so memory holds one site's volumes, not the cohort's.
pub fn write_cohort(out: &Path, cfg: &PhantomConfig) -> Result<CohortSummary, PhantomError> {
    write_cohort_as(out, cfg, PhantomFormat::Mrnet)
}

/// [`write_cohort`] in any [`PhantomFormat`]. DICOM and NIfTI read back to the same
/// volumes and labels bit for bit (voxels are integers in `0..=full_scale`); MRNet
/// reads back to [`mrnet_8bit`] of them.
pub fn write_cohort_as(
    out: &Path,
    cfg: &PhantomConfig,
    format: PhantomFormat,
) -> Result<CohortSummary, PhantomError> {
    prepare_out(out, cfg)?;
    let mut sites = Vec::with_capacity(cfg.sites);
    for site in 0..cfg.sites {
        let (cohort, details) = generate_site_detailed(cfg, site);
        write_site_as(&out.join(&cohort.name), format, &cohort)?;
        let all = || cohort.train.iter().chain(&cohort.valid);
        let positives = |v: &[PhantomExam]| v.iter().filter(|e| e.truth.torn).count();
        sites.push(SiteSummary {
            name: cohort.name.clone(),
            profile: cohort.profile.clone(),
            train: cohort.train.len(),
            valid: cohort.valid.len(),
            train_positive: positives(&cohort.train),
            valid_positive: positives(&cohort.valid),
            mimics: all().filter(|e| e.truth.mimic).count(),
            bone_bruises: all().filter(|e| e.truth.bone_bruise).count(),
            exams: all()
                .zip(&details)
                .map(|(e, d)| ExamRecord {
                    id: e.exam.id.clone(),
                    slices: e.exam.volume.depth,
                    truth: e.truth.clone(),
                    details: d.clone(),
                })
                .collect(),
        });
    }
    let summary = CohortSummary {
        config: cfg.clone(),
        sites,
    };
    write_summary(out, &summary)?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(seed: u64) -> PhantomConfig {
        PhantomConfig {
            sites: 2,
            exams_per_site: 6,
            seed,
            image_size: 64,
            ..PhantomConfig::default()
        }
    }

    /// A clean PD protocol (no ghosting or wrap) at `matrix` pixels.
    fn clean(matrix: usize, contrast: Contrast) -> ScannerProfile {
        ScannerProfile {
            contrast,
            matrix,
            fov_mm: 150.0,
            slice_thickness_mm: 3.0,
            slice_spacing_mm: 3.3,
            slices: 20,
            full_scale: 1000,
            gain: 0.8,
            gamma: 1.0,
            noise_sigma: 0.02,
            ghosting_rate: 0.0,
            wrap_rate: 0.0,
            ..site_profile(&PhantomConfig::default(), 0)
        }
    }

    /// Mean absolute difference of two volumes inside a box over slices `zs`.
    fn box_diff(a: &Volume, b: &Volume, zs: Range<usize>, bx: [usize; 4]) -> f64 {
        let (mut sum, mut n) = (0.0, 0usize);
        for z in zs {
            for y in bx[0]..bx[2] {
                for x in bx[1]..bx[3] {
                    sum += f64::from((a.at(z, y, x) - b.at(z, y, x)).abs());
                    n += 1;
                }
            }
        }
        sum / n.max(1) as f64
    }

    #[test]
    fn same_seed_same_voxels_other_seed_other_voxels() {
        let a = generate_site(&small(7), 1);
        let b = generate_site(&small(7), 1);
        let c = generate_site(&small(8), 1);
        let vox = |s: &SiteCohort| -> Vec<Vec<f32>> {
            s.train
                .iter()
                .chain(&s.valid)
                .map(|e| e.exam.volume.voxels.clone())
                .collect()
        };
        assert_eq!(vox(&a), vox(&b));
        assert_eq!(
            a.train
                .iter()
                .map(|e| (&e.exam.id, e.exam.label))
                .collect::<Vec<_>>(),
            b.train
                .iter()
                .map(|e| (&e.exam.id, e.exam.label))
                .collect::<Vec<_>>()
        );
        assert_ne!(vox(&a), vox(&c));
        assert_eq!(a.profile, b.profile);
        assert_ne!(a.profile, c.profile);
        // One thread or many: the same voxels.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .expect("pool");
        let single = pool.install(|| generate_site(&small(7), 1));
        assert_eq!(vox(&single), vox(&a));
    }

    #[test]
    fn every_tear_type_changes_the_acl_box_and_leaves_far_tissue_alone() {
        let profile = clean(96, Contrast::Pd);
        let full = profile.gain * f64::from(profile.full_scale);
        let mut diffs = Vec::new();
        for kind in TearKind::ALL {
            for seed in 0..4u64 {
                let ov = ExamOverrides {
                    tear: Some(kind),
                    bone_bruise: Some(false),
                    haemarthrosis: Some(false),
                    ..ExamOverrides::default()
                };
                let (torn, details) = generate_exam_detailed(&profile, seed, true, &ov);
                let (intact, intact_details) = generate_exam_detailed(&profile, seed, false, &ov);
                assert_eq!(torn.truth.acl_box, intact.truth.acl_box);
                assert_eq!(torn.truth.acl_slices, intact.truth.acl_slices);
                assert_eq!(details.tear, Some(kind));
                assert_eq!(torn.exam.volume.depth, intact.exam.volume.depth);
                let zs = torn.truth.acl_slices.clone();
                let b = torn.truth.acl_box;
                let (t, i) = (&torn.exam.volume, &intact.exam.volume);
                let diff = box_diff(t, i, zs.clone(), b) / full;
                diffs.push((kind, seed, diff, intact_details.mimic_kind));
                // Outside the box (plus the blur's reach) nothing changes at all.
                let m = 3;
                let (y0, x0) = (b[0].saturating_sub(m), b[1].saturating_sub(m));
                let (y1, x1) = (b[2] + m, b[3] + m);
                let mut changed = 0;
                for z in 0..t.depth {
                    for y in 0..t.height {
                        for x in 0..t.width {
                            let inside = (y0..y1).contains(&y) && (x0..x1).contains(&x);
                            if !inside && t.at(z, y, x) != i.at(z, y, x) {
                                changed += 1;
                            }
                        }
                    }
                }
                assert_eq!(changed, 0, "{kind:?} seed {seed}: far voxels changed");
            }
        }
        // Mean |torn - intact| over the ACL box on the ACL slices, as a share of full
        // scale: the box is several times the ligament's area, so a few percent is a
        // ligament-wide change.
        let low = diffs.iter().map(|d| d.2).fold(f64::INFINITY, f64::min);
        assert!(low > 0.02, "{diffs:?}");
    }

    #[test]
    fn tear_shows_on_every_contrast_and_strength_varies() {
        for contrast in Contrast::ALL {
            let profile = clean(80, contrast);
            let full = profile.gain * f64::from(profile.full_scale);
            let mut diffs = Vec::new();
            for seed in 10..16u64 {
                let torn = generate_exam(&profile, seed, true);
                let intact = generate_exam(&profile, seed, false);
                let zs = torn.truth.acl_slices.clone();
                let b = torn.truth.acl_box;
                diffs.push(box_diff(&torn.exam.volume, &intact.exam.volume, zs, b) / full);
            }
            let lo = diffs.iter().cloned().fold(f64::INFINITY, f64::min);
            let hi = diffs.iter().cloned().fold(0.0, f64::max);
            assert!(lo > 0.003, "{contrast:?}: {diffs:?}");
            // Faint and loud tears both occur.
            assert!(hi > 1.8 * lo, "{contrast:?}: {diffs:?}");
        }
    }

    #[test]
    fn tear_survives_downsampling_to_64_px() {
        let profile = clean(256, Contrast::Pd);
        let down = |v: &Volume, z: usize| -> Vec<f32> {
            let f = v.height / 64;
            (0..64 * 64)
                .map(|i| {
                    let (y, x) = (i / 64, i % 64);
                    let mut acc = 0.0;
                    for dy in 0..f {
                        for dx in 0..f {
                            acc += v.at(z, y * f + dy, x * f + dx);
                        }
                    }
                    acc / (f * f) as f32
                })
                .collect()
        };
        let ov = ExamOverrides {
            tear: Some(TearKind::Complete),
            tear_strength: Some(0.7),
            ..ExamOverrides::default()
        };
        let full = (profile.gain * f64::from(profile.full_scale)) as f32;
        for seed in 20..23u64 {
            let torn = generate_exam_with(&profile, seed, true, &ov);
            let intact = generate_exam_with(&profile, seed, false, &ov);
            let z = torn.truth.acl_slices.start + (torn.truth.acl_slices.len() - 1) / 2;
            let (t, i) = (down(&torn.exam.volume, z), down(&intact.exam.volume, z));
            let b = torn.truth.acl_box.map(|c| c / 4);
            // Pixels at 64 px that the tear changed by more than a sixth of full scale.
            let changed = (b[0]..b[2].min(64))
                .flat_map(|y| (b[1]..b[3].min(64)).map(move |x| y * 64 + x))
                .filter(|&k| (t[k] - i[k]).abs() > full / 6.0)
                .count();
            assert!(
                changed >= 6,
                "seed {seed}: only {changed} pixels changed visibly at 64 px"
            );
        }
    }

    #[test]
    fn voxels_are_scanner_integers_and_truth_fits_the_volume() {
        let cfg = PhantomConfig {
            sites: 6,
            exams_per_site: 3,
            ..small(3)
        };
        for site in 0..cfg.sites {
            let (cohort, details) = generate_site_detailed(&cfg, site);
            let p = &cohort.profile;
            let top = p.full_scale as f32;
            for (e, d) in cohort.train.iter().chain(&cohort.valid).zip(&details) {
                let v = &e.exam.volume;
                assert!(SLICE_RANGE.contains(&v.depth), "{} slices", v.depth);
                assert!(v.depth.abs_diff(p.slices) <= 2);
                assert_eq!((v.height, v.width), (64, 64));
                assert_eq!(v.voxels.len(), v.depth * 64 * 64);
                assert!(
                    v.voxels
                        .iter()
                        .all(|x| x.fract() == 0.0 && (0.0..=top).contains(x))
                );
                assert_eq!(e.exam.spacing, Some(spacing(p)));
                let s = spacing(p);
                assert!((s.row * 64.0 - p.fov_mm).abs() < 1e-9 && s.row == s.col);
                assert!(s.slice >= p.slice_thickness_mm);
                let r = &e.truth.acl_slices;
                assert!(!r.is_empty() && r.end <= v.depth && r.len() <= 5, "{r:?}");
                let n = &d.notch_slices;
                assert!(!n.is_empty() && n.end <= v.depth);
                let b = e.truth.acl_box;
                assert!(
                    b[0] < b[2] && b[1] < b[3] && b[2] <= 64 && b[3] <= 64,
                    "{b:?}"
                );
                assert_eq!(e.exam.label, Some(e.truth.torn));
                assert_eq!(d.tear.is_some(), e.truth.torn);
                assert_eq!(d.mimic_kind.is_some(), e.truth.mimic);
                assert!(!(e.truth.torn && e.truth.mimic));
                assert!(!e.truth.bone_bruise || e.truth.torn);
                // Not a blank image: background and bright tissue both present.
                let p99 = {
                    let mut s = v.voxels.clone();
                    s.sort_unstable_by(f32::total_cmp);
                    s[s.len() * 99 / 100]
                };
                assert!(p99 > 0.1 * top, "p99 {p99} of {top}");
                assert!(v.voxels.iter().any(|&x| x > 0.3 * top));
                assert!(v.voxels.iter().any(|&x| x < 0.1 * p99));
            }
        }
    }

    #[test]
    fn protocols_vary_across_sites_within_their_ranges() {
        let cfg = PhantomConfig::default();
        let profiles: Vec<ScannerProfile> = (0..60).map(|s| site_profile(&cfg, s)).collect();
        let distinct = |f: &dyn Fn(&ScannerProfile) -> String| {
            profiles
                .iter()
                .map(f)
                .collect::<std::collections::BTreeSet<_>>()
                .len()
        };
        for p in &profiles {
            assert!(FOV_MM.contains(&p.fov_mm));
            assert!(MATRIX_RANGE.contains(&p.matrix));
            assert!(THICKNESS_MM.contains(&p.slice_thickness_mm));
            assert!(p.slice_spacing_mm >= p.slice_thickness_mm);
            assert!(p.slice_spacing_mm <= p.slice_thickness_mm * 1.13);
            assert!(SLICE_RANGE.contains(&p.slices));
            assert!((255..=4095).contains(&p.full_scale));
        }
        assert_eq!(distinct(&|p| format!("{:?}", p.contrast)), 4);
        assert_eq!(distinct(&|p| format!("{:?}", p.phase_axis)), 2);
        assert!(distinct(&|p| p.matrix.to_string()) >= 6);
        assert!(distinct(&|p| p.slices.to_string()) >= 10);
        assert!(profiles.iter().any(|p| p.full_scale == 255));
        assert!(profiles.iter().any(|p| p.full_scale > 1000));
        assert!(profiles.iter().any(|p| p.wrap_rate == 0.0));
        assert!(profiles.iter().any(|p| p.wrap_rate > 0.3));
        let fovs: Vec<f64> = profiles.iter().map(|p| p.fov_mm).collect();
        assert!(fovs.iter().any(|&f| f < 130.0) && fovs.iter().any(|&f| f > 170.0));
        // A fixed image size fixes the matrix and nothing else.
        let fixed = PhantomConfig {
            image_size: 96,
            ..cfg.clone()
        };
        for s in 0..8 {
            let (a, b) = (site_profile(&cfg, s), site_profile(&fixed, s));
            assert_eq!(b.matrix, 96);
            assert_eq!(ScannerProfile { matrix: 96, ..a }, b);
        }
    }

    #[test]
    fn thin_slices_cut_the_acl_more_often_than_thick_ones() {
        let count = |t: f64| -> Vec<usize> {
            let p = ScannerProfile {
                slice_thickness_mm: t,
                slice_spacing_mm: t,
                slices: (90.0 / t) as usize,
                ..clean(48, Contrast::Pd)
            };
            (0..12u64)
                .map(|s| generate_exam(&p, s, false).truth.acl_slices.len())
                .collect()
        };
        let (thin, thick) = (count(2.5), count(4.5));
        assert!(thin.iter().all(|n| (2..=5).contains(n)), "{thin:?}");
        assert!(thick.iter().all(|n| (1..=2).contains(n)), "{thick:?}");
        let mean = |v: &[usize]| v.iter().sum::<usize>() as f64 / v.len() as f64;
        assert!(mean(&thin) > mean(&thick) + 0.8, "{thin:?} vs {thick:?}");
    }

    #[test]
    fn anatomy_and_pose_vary_across_exams() {
        let p = clean(64, Contrast::Pd);
        let none = ExamOverrides::default();
        let exams: Vec<(PhantomExam, ExamDetails)> = (0..16u64)
            .map(|s| generate_exam_detailed(&p, s, false, &none))
            .collect();
        let spread = |f: &dyn Fn(&(PhantomExam, ExamDetails)) -> f64| {
            let v: Vec<f64> = exams.iter().map(f).collect();
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
        };
        // Where the ligament is in-plane (pose, size), in mm at 150/64 mm per pixel.
        let px = p.pixel_mm();
        let cy = spread(&|e| (e.0.truth.acl_box[0] + e.0.truth.acl_box[2]) as f64 / 2.0 * px);
        let cx = spread(&|e| (e.0.truth.acl_box[1] + e.0.truth.acl_box[3]) as f64 / 2.0 * px);
        assert!(cy > 5.0 && cx > 5.0, "box centre spread {cy:.1} {cx:.1} mm");
        // Where the notch is along the slab.
        let notch = spread(&|e| e.1.notch_slices.start as f64 / e.0.exam.volume.depth as f64);
        assert!(notch > 0.04, "notch position spread {notch}");
        let flex = spread(&|e| e.1.flexion_deg);
        assert!(flex > 4.0, "flexion spread {flex}");
        assert!(
            exams
                .iter()
                .all(|e| (0.0..=30.0).contains(&e.1.flexion_deg))
        );
        // The ligament is somewhere in the middle of the image, never at its edge.
        for (e, _) in &exams {
            let b = e.truth.acl_box;
            assert!(b[0] > 2 && b[1] > 2 && b[2] < 62 && b[3] < 62, "{b:?}");
        }
    }

    #[test]
    fn contrasts_differ_in_the_expected_direction() {
        // Share of the knee's voxels brighter than half the volume's 99.5th
        // percentile: fat and marrow make it large without fat suppression.
        let bright_share = |c: Contrast| -> f64 {
            let e = generate_exam(&clean(64, c), 5, false);
            let mut v = e.exam.volume.voxels.clone();
            v.sort_unstable_by(f32::total_cmp);
            let top = v[v.len() * 995 / 1000];
            let body: Vec<f32> = v.into_iter().filter(|&x| x > 0.05 * top).collect();
            body.iter().filter(|&&x| x > 0.5 * top).count() as f64 / body.len() as f64
        };
        let [pd, pdfs, t2fs, t1] = Contrast::ALL.map(bright_share);
        assert!(pd > 2.0 * pdfs && pd > 2.0 * t2fs, "{pd} {pdfs} {t2fs}");
        assert!(t1 > 2.0 * pdfs && t1 > 2.0 * t2fs, "{t1} {pdfs} {t2fs}");
    }

    #[test]
    fn artefacts_do_what_they_say() {
        let p = ScannerProfile {
            phase_axis: PhaseAxis::Rows,
            ..clean(64, Contrast::Pd)
        };
        let off = ExamOverrides {
            ghosting: Some(false),
            wrap: Some(false),
            ..ExamOverrides::default()
        };
        let (base, base_d) = generate_exam_detailed(&p, 2, false, &off);
        let (ghosted, ghosted_d) = generate_exam_detailed(
            &p,
            2,
            false,
            &ExamOverrides {
                ghosting: Some(true),
                ..off.clone()
            },
        );
        assert!(ghosted_d.ghosting && !base_d.ghosting);
        // Ghosts put signal into the air around the knee.
        let air = |v: &Volume, reference: &Volume| -> f64 {
            let (mut s, mut n) = (0.0, 0);
            for (x, r) in v.voxels.iter().zip(&reference.voxels) {
                if *r < 0.06 * 800.0 {
                    s += f64::from(*x);
                    n += 1;
                }
            }
            s / n.max(1) as f64
        };
        let (b, g) = (
            air(&base.exam.volume, &base.exam.volume),
            air(&ghosted.exam.volume, &base.exam.volume),
        );
        assert!(g > b + 3.0, "air {b:.1} -> {g:.1} with ghosting");
        // Wrap-around changes the rows near the top and bottom edges only.
        let (wrapped, wrapped_d) = generate_exam_detailed(
            &p,
            2,
            false,
            &ExamOverrides {
                wrap: Some(true),
                ..off
            },
        );
        assert!(wrapped_d.wrap);
        let (v, w) = (&base.exam.volume, &wrapped.exam.volume);
        let row_diff = |y: usize| -> f32 {
            (0..v.depth)
                .flat_map(|z| (0..64).map(move |x| (z, x)))
                .map(|(z, x)| (v.at(z, y, x) - w.at(z, y, x)).abs())
                .sum()
        };
        let edges: f32 = (0..4).map(row_diff).sum::<f32>() + (60..64).map(row_diff).sum::<f32>();
        assert!(edges > 0.0);
        assert_eq!((24..40).map(row_diff).sum::<f32>(), 0.0);
    }

    #[test]
    fn sites_differ_and_prevalence_split_and_mimics_are_respected() {
        let cfg = PhantomConfig {
            sites: 4,
            exams_per_site: 400,
            image_size: 32,
            ..PhantomConfig::default()
        };
        let profiles: Vec<ScannerProfile> = (0..4).map(|s| site_profile(&cfg, s)).collect();
        for a in 0..4 {
            for b in a + 1..4 {
                assert_ne!(profiles[a], profiles[b]);
                assert!((profiles[a].gain - profiles[b].gain).abs() > 1e-6);
            }
        }
        let (cohort, details) = generate_site_detailed(&cfg, 2);
        let all: Vec<&PhantomExam> = cohort.train.iter().chain(&cohort.valid).collect();
        assert_eq!(all.len(), 400);
        let pos = all.iter().filter(|e| e.truth.torn).count();
        let rate = pos as f64 / 400.0;
        assert!(
            (rate - cohort.profile.prevalence).abs() < 0.1,
            "{rate} vs {}",
            cohort.profile.prevalence
        );
        let valid_pos = cohort.valid.iter().filter(|e| e.truth.torn).count();
        assert_eq!(valid_pos, (pos as f64 * 0.2).round() as usize);
        assert_eq!(
            cohort.valid.len() - valid_pos,
            ((400 - pos) as f64 * 0.2).round() as usize
        );
        let intact = all.iter().filter(|e| !e.truth.torn).count();
        let mimic = all.iter().filter(|e| e.truth.mimic).count() as f64 / intact as f64;
        assert!((0.12..0.45).contains(&mimic), "mimic share {mimic}");
        let bruised = all.iter().filter(|e| e.truth.bone_bruise).count() as f64 / pos as f64;
        assert!((0.28..0.62).contains(&bruised), "bruise share {bruised}");
        // Every tear type and every mimic occurs.
        for kind in TearKind::ALL {
            assert!(details.iter().any(|d| d.tear == Some(kind)), "{kind:?}");
        }
        for kind in MimicKind::ALL {
            assert!(
                details.iter().any(|d| d.mimic_kind == Some(kind)),
                "{kind:?}"
            );
        }
        assert_eq!(cohort.train[0].exam.id, "train/0000");
        assert_eq!(
            cohort.valid[0].exam.id,
            format!("valid/{:04}", cohort.train.len())
        );
    }

    #[test]
    fn cohort_size_jitter_only_when_asked() {
        let fixed = PhantomConfig::default();
        assert!((0..6).all(|s| site_profile(&fixed, s).exams == 60));
        let jittered = PhantomConfig {
            size_jitter: 0.5,
            ..fixed
        };
        let sizes: Vec<usize> = (0..6).map(|s| site_profile(&jittered, s).exams).collect();
        assert!(sizes.iter().all(|&n| (30..=90).contains(&n)), "{sizes:?}");
        assert!(sizes.iter().any(|&n| n != 60), "{sizes:?}");
    }

    #[test]
    fn label_skew_spreads_prevalence_and_keeps_earlier_sites() {
        let drawn = PhantomConfig::default();
        let skewed = PhantomConfig {
            label_skew: 1.0,
            ..drawn.clone()
        };
        let prevalence = |cfg: &PhantomConfig, s| site_profile(cfg, s).prevalence;
        assert!((prevalence(&skewed, 0) - 0.025).abs() < 1e-9);
        assert!((prevalence(&skewed, 1) - 0.725).abs() < 1e-9);
        assert!((prevalence(&skewed, 2) - 0.375).abs() < 1e-9);
        // Only the case mix moves: the scanner is the one drawn without skew.
        let (a, b) = (site_profile(&drawn, 2), site_profile(&skewed, 2));
        assert_eq!(
            (a.contrast, a.matrix, a.gain),
            (b.contrast, b.matrix, b.gain)
        );
        // Half the skew, half the spread; generated labels follow.
        let half = PhantomConfig {
            label_skew: 0.5,
            exams_per_site: 400,
            ..drawn
        };
        assert!((prevalence(&half, 0) - 0.2).abs() < 1e-9);
        let cohort = generate_site(&half, 1);
        let torn = cohort
            .train
            .iter()
            .chain(&cohort.valid)
            .filter(|e| e.exam.label == Some(true))
            .count();
        let rate = torn as f64 / 400.0;
        assert!((rate - 0.55).abs() < 0.07, "site 1 tear rate {rate}");
    }

    #[test]
    fn scanner_skew_zero_gives_every_site_one_scanner() {
        let same = PhantomConfig {
            scanner_skew: 0.0,
            ..PhantomConfig::default()
        };
        let reference = site_profile(&same, 0);
        for s in 1..5 {
            let p = site_profile(&same, s);
            assert_eq!(
                (p.contrast, p.matrix, p.full_scale, p.slices),
                (
                    reference.contrast,
                    reference.matrix,
                    reference.full_scale,
                    reference.slices
                )
            );
            assert_eq!(
                (p.gain, p.noise_sigma, p.blur_mm),
                (reference.gain, reference.noise_sigma, reference.blur_mm)
            );
        }
        // As drawn at 1; further apart at 2 (the spread of gain across sites grows).
        let spread = |skew: f64| {
            let cfg = PhantomConfig {
                scanner_skew: skew,
                ..PhantomConfig::default()
            };
            let gains: Vec<f64> = (0..8).map(|s| site_profile(&cfg, s).gain).collect();
            let mean = gains.iter().sum::<f64>() / 8.0;
            gains.iter().map(|g| (g - mean).powi(2)).sum::<f64>()
        };
        assert_eq!(site_profile(&PhantomConfig::default(), 3), {
            let cfg = PhantomConfig {
                scanner_skew: 1.0,
                ..PhantomConfig::default()
            };
            site_profile(&cfg, 3)
        });
        assert!(spread(2.0) > spread(1.0) && spread(1.0) > spread(0.5));
        assert!(
            PhantomConfig {
                scanner_skew: 2.5,
                ..PhantomConfig::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            PhantomConfig {
                label_skew: 1.5,
                ..PhantomConfig::default()
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn mrnet_8bit_rescales_only_wide_volumes() {
        let mut v = Volume::zeros(1, 2, 2);
        v.voxels = vec![0.0, 100.0, 255.0, 17.0];
        assert_eq!(mrnet_8bit(&v), v);
        v.voxels = vec![0.0, 1000.0, 4095.0, 2048.0];
        assert_eq!(mrnet_8bit(&v).voxels, vec![0.0, 62.0, 255.0, 128.0]);
    }

    #[test]
    fn written_cohort_reads_back_identically() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = small(11);
        let summary = write_cohort(dir.path(), &cfg).expect("write");
        assert_eq!(summary.sites.len(), 2);
        let json = std::fs::read_to_string(dir.path().join("cohort.json")).expect("json");
        let back: CohortSummary = serde_json::from_str(&json).expect("parse");
        assert_eq!(back.config, summary.config);
        for (b, s) in back.sites.iter().zip(&summary.sites) {
            assert_eq!(
                (&b.name, b.train, b.valid, &b.exams),
                (&s.name, s.train, s.valid, &s.exams)
            );
            assert!((b.profile.prevalence - s.profile.prevalence).abs() < 1e-12);
        }
        for site in 0..2 {
            let generated = generate_site(&cfg, site);
            let read = mrnet::read_site(&dir.path().join(site_name(site))).expect("read");
            let pairs = generated
                .train
                .iter()
                .zip(&read.train)
                .chain(generated.valid.iter().zip(&read.valid));
            assert_eq!(read.train.len() + read.valid.len(), 6);
            for (g, r) in pairs {
                assert_eq!(g.exam.id, r.id);
                assert_eq!(g.exam.label, r.label);
                assert_eq!(mrnet_8bit(&g.exam.volume), r.volume);
            }
            let s = &summary.sites[site];
            assert_eq!(s.train + s.valid, 6);
            assert_eq!(
                s.train_positive + s.valid_positive,
                s.exams.iter().filter(|e| e.truth.torn).count()
            );
        }
        assert!(matches!(
            write_cohort(
                dir.path(),
                &PhantomConfig {
                    image_size: 8,
                    ..cfg
                }
            ),
            Err(PhantomError::Config(_))
        ));
    }

    #[test]
    fn previews_are_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = PhantomConfig {
            sites: 2,
            image_size: 48,
            ..PhantomConfig::default()
        };
        let written = write_previews(dir.path(), &cfg).expect("previews");
        assert!(written.len() >= 8);
        for p in &written {
            assert!(
                std::fs::metadata(p).expect("png").len() > 1000,
                "{}",
                p.display()
            );
        }
    }

    /// Seconds per exam on one thread at several matrices and over drawn protocols:
    /// `cargo test --release -p fedslice-shared --lib phantom::tests::generation_time
    /// -- --ignored --nocapture`.
    #[test]
    #[ignore = "timing, run by hand"]
    fn generation_time() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .expect("pool");
        pool.install(|| {
            for matrix in [128, 256, 512] {
                let p = ScannerProfile {
                    slices: 28,
                    ..clean(matrix, Contrast::Pd)
                };
                let t = std::time::Instant::now();
                for s in 0..3u64 {
                    generate_exam(&p, s, s % 2 == 0);
                }
                let per = t.elapsed().as_secs_f64() / 3.0;
                println!("matrix {matrix}, 28 slices: {per:.2} s per exam");
            }
            let cfg = PhantomConfig::default();
            let t = std::time::Instant::now();
            let mut slices = 0;
            let n = 24;
            for site in 0..n {
                let p = site_profile(&cfg, site);
                let e = generate_exam(&p, site as u64, site % 2 == 0);
                slices += e.exam.volume.depth;
            }
            println!(
                "drawn protocols: {:.2} s per exam ({:.1} slices on average)",
                t.elapsed().as_secs_f64() / n as f64,
                slices as f64 / n as f64
            );
        });
    }
}
