//! Phantom style B: a second, structurally independent synthetic knee MRI generator.
//!
//! **What it owns.** A 3-D scene of the knee in millimetres, built from signed distance
//! fields (ellipsoid condyles fused to a tapered shaft with the notch carved under a
//! Blumensaat roof, a rounded tibial plateau, cartilage as offset shells, wedge-ring
//! menisci, cruciates as swept Bézier tubes between their real attachments, tendons,
//! muscles, vessels, skin), a per-exam draw of every size and of knee flexion, tear
//! and tear-mimic lesions in 3-D, and an acquisition model: sagittal slices sampled
//! through their thickness (partial volume), a per-site protocol and contrast, coil
//! bias, wrap-around, motion ghosts, Rician noise and 12-bit integer values.
//!
//! **What it deliberately does not do.** It shares no code with style A
//! (`data::phantom`): no shapes, texture, noise or random streams; only the plain
//! result types (`PhantomConfig`, `PhantomExam`, `ExamTruth`, `Exam`, `Volume`).
//! It writes no files; the CLI and cohort writers do that.
//!
//! **Why it exists.** A training recipe tuned on one generator may only have learnt
//! that generator. Style B builds the anatomy a different way (3-D fields sampled per
//! voxel instead of slices painted in 2-D) and draws a wider spread of protocols, so a
//! recipe that still finds tears here is finding tears, not style-A artefacts.

mod acquire;
mod contrast;
mod geom;
mod grain;
mod knee;
mod lesions;
mod ligament;
mod protocol;
mod render;
mod rng;
mod scene;
mod sdf;
#[cfg(test)]
mod tests;
mod truth;

use rayon::prelude::*;

pub use contrast::Contrast;
pub use protocol::{PhaseAxis, SiteProtocol, site_protocol};

use crate::data::phantom::{ExamTruth, PhantomConfig, PhantomExam};
use crate::data::{Exam, Spacing, Volume};
use acquire::Acquisition;
use grain::GrainField;
use rng::{Rng, derive, key};
use scene::Scene;

/// One site's generated cohort.
#[derive(Debug, Clone)]
pub struct SiteCohort {
    /// `site-NN`.
    pub name: String,
    pub protocol: SiteProtocol,
    pub train: Vec<PhantomExam>,
    pub valid: Vec<PhantomExam>,
}

/// Everything one exam's generation produces before it is packaged.
// Only the tests read the fields beyond `exam`; they check the lesion against them.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) struct Generated {
    pub exam: PhantomExam,
    /// Ideal-image tissue labels (see `render::Rendered`), only when asked for.
    pub labels: Option<Vec<u8>>,
    /// The lesion reaches beyond the ACL territory (effusion, bone bruise).
    pub far_lesion: bool,
}

/// One exam. A pure function of its inputs: anatomy, acquisition and noise come from
/// streams keyed by `exam_seed` alone, so `torn = false` and `torn = true` give the
/// same knee in the same pose with the same noise, differing only by the lesion.
pub fn generate_exam(protocol: &SiteProtocol, exam_seed: u64, torn: bool) -> PhantomExam {
    generate(protocol, exam_seed, torn, false).exam
}

pub(crate) fn generate(
    protocol: &SiteProtocol,
    exam_seed: u64,
    torn: bool,
    want_labels: bool,
) -> Generated {
    let knee = knee::draw(&mut Rng::stream(exam_seed, key::ANATOMY, 0));
    let les = lesions::draw(
        &mut Rng::stream(exam_seed, key::LESION, 0),
        &knee,
        torn,
        protocol.mimic_rate,
    );
    let scene = Scene::build(&knee, &les);
    let acq = Acquisition::draw(protocol, exam_seed);
    let grid = acq.grid(protocol);
    let grain = GrainField::new(acquire::grain_seed(exam_seed));
    let rendered = render::render(&scene, &grid, &acq.table(protocol), &grain, want_labels);
    let voxels = acq.acquire(rendered.signal, &grid, protocol, exam_seed);
    let (acl_slices, acl_box) = truth::acl_territory(&knee.acl, &grid);
    let volume = Volume {
        depth: grid.depth,
        height: grid.rows,
        width: grid.image_cols,
        voxels,
    };
    let exam = Exam {
        id: format!("exam-{exam_seed:016x}"),
        volume,
        label: Some(torn),
        spacing: Some(Spacing {
            slice: protocol.slice_spacing_mm,
            row: protocol.fov_mm / protocol.matrix as f64,
            col: protocol.fov_mm / protocol.matrix as f64,
        }),
    };
    let truth = ExamTruth {
        torn,
        mimic: les.mimic.is_some(),
        bone_bruise: les.bruise,
        acl_slices,
        acl_box,
    };
    let labels = rendered.labels.map(|l| {
        // Labels of the rendered grid, cropped to the image columns (wrap margin dropped).
        let m = (-grid.col0) as usize;
        let n = grid.rows * grid.image_cols;
        let mut out = Vec::with_capacity(grid.depth * n);
        for row in l.chunks(grid.cols) {
            out.extend_from_slice(&row[m..m + grid.image_cols]);
        }
        out
    });
    Generated {
        exam: PhantomExam { exam, truth },
        labels,
        far_lesion: les.bruise || les.effusion > 1.0,
    }
}

/// Seed of exam `index` at a site.
pub(crate) fn exam_seed(protocol: &SiteProtocol, index: usize) -> u64 {
    derive(protocol.seed, key::EXAM, index as u64)
}

/// Labels (Bernoulli(prevalence)) and the stratified validation flags of a site's exams.
pub(crate) fn case_mix(protocol: &SiteProtocol, valid_fraction: f64) -> Vec<(bool, bool)> {
    let mut r = Rng::stream(protocol.seed, key::COHORT, 0);
    let n = protocol.exams;
    let labels: Vec<bool> = (0..n).map(|_| r.chance(protocol.prevalence)).collect();
    let frac = if valid_fraction.is_finite() {
        valid_fraction.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let mut valid = vec![false; n];
    for label in [false, true] {
        let mut idx: Vec<usize> = (0..n).filter(|&i| labels[i] == label).collect();
        for i in (1..idx.len()).rev() {
            idx.swap(i, r.int(0, i));
        }
        let k = ((idx.len() as f64 * frac).round() as usize).min(idx.len());
        for &i in &idx[..k] {
            valid[i] = true;
        }
    }
    labels.into_iter().zip(valid).collect()
}

/// Site `site`'s cohort: `train/NNNN` then `valid/NNNN` (numbered after the training
/// exams), each label split by `cfg.valid_fraction`. Exams are generated in parallel;
/// the result does not depend on the thread count.
pub fn generate_site(cfg: &PhantomConfig, site: usize) -> SiteCohort {
    let protocol = site_protocol(cfg, site);
    let mix = case_mix(&protocol, cfg.valid_fraction);
    let exams: Vec<PhantomExam> = mix
        .par_iter()
        .enumerate()
        .map(|(i, (torn, _))| generate_exam(&protocol, exam_seed(&protocol, i), *torn))
        .collect();
    let (mut train, mut valid) = (Vec::new(), Vec::new());
    for (mut e, (_, is_valid)) in exams.into_iter().zip(&mix) {
        if *is_valid {
            valid.push(e);
        } else {
            e.exam.id = format!("train/{:04}", train.len());
            train.push(e);
        }
    }
    for (j, e) in valid.iter_mut().enumerate() {
        e.exam.id = format!("valid/{:04}", train.len() + j);
    }
    SiteCohort {
        name: format!("site-{site:02}"),
        protocol,
        train,
        valid,
    }
}
