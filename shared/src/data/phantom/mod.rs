//! Seedable synthetic knee MRI cohorts: the project's own data (DESIGN §3).
//!
//! No knee MRI can be downloaded by the project's machines or CI, so cohorts are drawn
//! here and written through the same formats the sites read. Generation is a pure
//! function of the configuration: the same seed gives the same voxels on any machine
//! and thread count, which is what makes experiments and regression tests repeatable.

mod anatomy;
mod lesions;
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
use crate::data::{Exam, Volume};

use anatomy::Knee;
use lesions::{Acl, AclCondition, LesionDraws};
use random::{mix, salt, std_rng, unit};

pub use scanner::{SLICE_RANGE, ScannerProfile, site_profile};

/// What to generate. Sites differ in scanner and case mix, exams in anatomy and label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhantomConfig {
    pub sites: usize,
    pub exams_per_site: usize,
    pub seed: u64,
    /// Slice width and height in pixels (MRNet uses 256).
    pub image_size: usize,
    /// Share of each label held out for validation at every site.
    pub valid_fraction: f64,
    /// Relative per-site cohort size variation; 0 gives exactly `exams_per_site` each.
    pub size_jitter: f64,
}

impl Default for PhantomConfig {
    fn default() -> Self {
        Self {
            sites: 3,
            exams_per_site: 60,
            seed: 0,
            image_size: 256,
            valid_fraction: 0.2,
            size_jitter: 0.0,
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
        if self.image_size < 32 {
            return bad("image_size must be at least 32 pixels for the anatomy to be drawable");
        }
        if !(0.0..1.0).contains(&self.valid_fraction) {
            return bad("valid_fraction must be in [0, 1)");
        }
        if !(0.0..1.0).contains(&self.size_jitter) {
            return bad("size_jitter must be in [0, 1)");
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
}

/// Ground truth the label alone does not carry, for evaluation and sanity tests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExamTruth {
    pub torn: bool,
    /// Intact but degenerated ACL (thick, mildly bright, continuous).
    pub mimic: bool,
    pub bone_bruise: bool,
    /// Slices on which the ACL is drawn (the lateral part of the notch).
    pub acl_slices: Range<usize>,
    /// `[y0, x0, y1, x1]` pixels (end-exclusive) of the ACL territory on `acl_slices`;
    /// the same for the torn and intact versions of a knee.
    pub acl_box: [usize; 4],
}

#[derive(Debug, Clone)]
pub struct PhantomExam {
    pub exam: Exam,
    pub truth: ExamTruth,
}

/// Draws one exam. The anatomy, scanner jitter and noise depend on `exam_seed` only, so
/// `torn = false` and `torn = true` give the same knee, differing in the ACL region (and
/// any bone bruise) alone.
pub fn generate_exam(
    profile: &ScannerProfile,
    image_size: usize,
    exam_seed: u64,
    torn: bool,
) -> PhantomExam {
    let size = image_size.max(1);
    let draws = LesionDraws::sample(&mut std_rng(exam_seed, salt::LESION), profile.mimic_rate);
    let condition = if torn {
        AclCondition::Torn
    } else if draws.mimic {
        AclCondition::Mimic
    } else {
        AclCondition::Intact
    };
    let knee = Knee::sample(
        &mut std_rng(exam_seed, salt::ANATOMY),
        profile,
        size,
        mix(exam_seed, salt::TEXTURE),
        |p| Acl::new(p.femoral, p.tibial, p.thickness, p.signal, condition, draws),
    );
    let scan = scanner::ExamScan::sample(profile, exam_seed);
    let depth = knee.depth();
    let mut volume = Volume::zeros(depth, size, size);
    for z in 0..depth {
        let slice = volume.slice_mut(z);
        knee.render_slice(z, slice);
        scanner::acquire_slice(profile, &scan, slice, size, z, depth);
    }
    let truth = ExamTruth {
        torn,
        mimic: knee.acl().condition() == AclCondition::Mimic,
        bone_bruise: knee.acl().has_bruise(),
        acl_slices: knee.acl_slices(),
        acl_box: knee.acl_box(),
    };
    PhantomExam {
        exam: Exam {
            id: format!("phantom-{exam_seed:016x}"),
            volume,
            label: Some(torn),
            spacing: Some(spacing(profile, size)),
        },
        truth,
    }
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
    let exams: Vec<PhantomExam> = seeds
        .par_iter()
        .map(|&(exam_seed, torn)| generate_exam(&profile, cfg.image_size, exam_seed, torn))
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
    for (e, valid_exam) in exams.into_iter().zip(in_valid) {
        if valid_exam {
            valid.push(e);
        } else {
            train.push(e);
        }
    }
    for (i, e) in train.iter_mut().enumerate() {
        e.exam.id = format!("train/{i:04}");
    }
    let offset = train.len();
    for (i, e) in valid.iter_mut().enumerate() {
        e.exam.id = format!("valid/{:04}", offset + i);
    }
    SiteCohort {
        name: site_name(site),
        profile,
        train,
        valid,
    }
}

/// Per-exam truth as recorded in `cohort.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExamRecord {
    pub id: String,
    pub slices: usize,
    #[serde(flatten)]
    pub truth: ExamTruth,
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

/// The geometry written into DICOM and NIfTI headers: 3 mm sagittal slices
/// and a 160 mm field of view scaled by the site's scanner profile, close to
/// a clinical knee PD series.
pub fn spacing(profile: &ScannerProfile, image_size: usize) -> crate::data::Spacing {
    let pixel = 160.0 / profile.fov_scale / image_size.max(1) as f64;
    crate::data::Spacing {
        slice: 3.0,
        row: pixel,
        col: pixel,
    }
}

fn write_site_as(
    dir: &Path,
    format: PhantomFormat,
    cohort: &SiteCohort,
    image_size: usize,
) -> Result<(), PhantomError> {
    let train: Vec<Exam> = cohort.train.iter().map(|e| e.exam.clone()).collect();
    let valid: Vec<Exam> = cohort.valid.iter().map(|e| e.exam.clone()).collect();
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
                spacing(&cohort.profile, image_size),
            )?)
        }
        #[cfg(not(feature = "readers"))]
        PhantomFormat::Dicom | PhantomFormat::Nifti => {
            let _ = image_size;
            Err(PhantomError::Config(
                "DICOM and NIfTI output need the `readers` feature".into(),
            ))
        }
    }
}

/// Writes every site as `out/site-NN/` in MRNet layout plus `out/cohort.json`. Sites are
/// generated one at a time so memory holds one site's volumes, not the cohort's.
pub fn write_cohort(out: &Path, cfg: &PhantomConfig) -> Result<CohortSummary, PhantomError> {
    write_cohort_as(out, cfg, PhantomFormat::Mrnet)
}

/// [`write_cohort`] in any [`PhantomFormat`]. Every format reads back to the
/// same volumes and labels (bit-exact: voxels are integers in 0..=255).
pub fn write_cohort_as(
    out: &Path,
    cfg: &PhantomConfig,
    format: PhantomFormat,
) -> Result<CohortSummary, PhantomError> {
    cfg.validate()?;
    std::fs::create_dir_all(out).map_err(|source| PhantomError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    let mut sites = Vec::with_capacity(cfg.sites);
    for site in 0..cfg.sites {
        let cohort = generate_site(cfg, site);
        write_site_as(&out.join(&cohort.name), format, &cohort, cfg.image_size)?;
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
                .map(|e| ExamRecord {
                    id: e.exam.id.clone(),
                    slices: e.exam.volume.depth,
                    truth: e.truth.clone(),
                })
                .collect(),
        });
    }
    let summary = CohortSummary {
        config: cfg.clone(),
        sites,
    };
    let path = out.join("cohort.json");
    let json = serde_json::to_vec_pretty(&summary)?;
    std::fs::write(&path, json).map_err(|source| PhantomError::Io { path, source })?;
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

    /// Mean voxel inside `[y0, x0, y1, x1]` over slices `zs`.
    fn box_mean(v: &Volume, zs: Range<usize>, b: [usize; 4]) -> f64 {
        let (mut sum, mut n) = (0.0, 0usize);
        for z in zs {
            for y in b[0]..b[2] {
                for x in b[1]..b[3] {
                    sum += f64::from(v.at(z, y, x));
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
    }

    #[test]
    fn tear_brightens_the_acl_box_and_leaves_far_tissue_alone() {
        let profile = site_profile(&PhantomConfig::default(), 0);
        let size = 128;
        for seed in 0..8u64 {
            let torn = generate_exam(&profile, size, seed, true);
            let intact = generate_exam(&profile, size, seed, false);
            assert_eq!(torn.truth.acl_box, intact.truth.acl_box);
            assert_eq!(torn.truth.acl_slices, intact.truth.acl_slices);
            assert_eq!(torn.exam.volume.depth, intact.exam.volume.depth);
            let zs = torn.truth.acl_slices.clone();
            let b = torn.truth.acl_box;
            let (t, i) = (
                box_mean(&torn.exam.volume, zs.clone(), b),
                box_mean(&intact.exam.volume, zs.clone(), b),
            );
            assert!(
                t > i + 10.0 && t > i * 1.08,
                "seed {seed}: torn {t:.1} vs intact {i:.1} (mimic {})",
                intact.truth.mimic
            );
            // Anterior soft tissue and background, far from the notch.
            let far = [size / 2, 0, size * 3 / 4, size / 5];
            let (tf, inf) = (
                box_mean(&torn.exam.volume, zs.clone(), far),
                box_mean(&intact.exam.volume, zs, far),
            );
            assert!(
                (tf - inf).abs() < 0.5,
                "seed {seed}: far region {tf:.2} vs {inf:.2}"
            );
        }
    }

    #[test]
    fn tear_survives_downsampling_to_64_px() {
        let profile = site_profile(&PhantomConfig::default(), 1);
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
        for seed in 20..24u64 {
            let torn = generate_exam(&profile, 256, seed, true);
            let intact = generate_exam(&profile, 256, seed, false);
            let z = torn.truth.acl_slices.start + torn.truth.acl_slices.len() / 2;
            let (t, i) = (down(&torn.exam.volume, z), down(&intact.exam.volume, z));
            let b = torn.truth.acl_box.map(|c| c / 4);
            // Pixels at 64 px that the tear brightened by more than a third of fat signal.
            let changed = (b[0]..b[2].min(64))
                .flat_map(|y| (b[1]..b[3].min(64)).map(move |x| y * 64 + x))
                .filter(|&k| t[k] - i[k] > 40.0)
                .count();
            assert!(
                changed >= 12,
                "seed {seed}: only {changed} pixels changed visibly at 64 px"
            );
        }
    }

    #[test]
    fn voxels_are_scanner_integers_and_truth_fits_the_volume() {
        let cohort = generate_site(&small(3), 0);
        for e in cohort.train.iter().chain(&cohort.valid) {
            let v = &e.exam.volume;
            assert!(SLICE_RANGE.contains(&v.depth), "{} slices", v.depth);
            assert_eq!((v.height, v.width), (64, 64));
            assert_eq!(v.voxels.len(), v.depth * 64 * 64);
            assert!(
                v.voxels
                    .iter()
                    .all(|x| x.fract() == 0.0 && (0.0..=255.0).contains(x))
            );
            let r = &e.truth.acl_slices;
            assert!(!r.is_empty() && r.end <= v.depth && r.len() <= 3);
            let b = e.truth.acl_box;
            assert!(
                b[0] < b[2] && b[1] < b[3] && b[2] <= 64 && b[3] <= 64,
                "{b:?}"
            );
            assert_eq!(e.exam.label, Some(e.truth.torn));
            assert!(!(e.truth.torn && e.truth.mimic));
            assert!(!e.truth.bone_bruise || e.truth.torn);
            // Not a blank image: background and bright tissue both present.
            assert!(v.voxels.iter().any(|&x| x < 20.0) && v.voxels.iter().any(|&x| x > 100.0));
        }
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
        let cohort = generate_site(&cfg, 2);
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
        assert!((0.1..0.45).contains(&mimic), "mimic share {mimic}");
        let bruised = all.iter().filter(|e| e.truth.bone_bruise).count() as f64 / pos as f64;
        assert!((0.25..0.55).contains(&bruised), "bruise share {bruised}");
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
                assert_eq!(g.exam.volume, r.volume);
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
}
