//! Preview montages, one per variation axis, so a person can judge in seconds whether
//! the phantom varies the way real cohorts do and still looks like a knee.
//!
//! Each PNG holds one knee (or a few) with everything fixed but one axis: contrast,
//! field of view and matrix, slice thickness, pose, flexion, tear type, mimic,
//! artefacts, and the sites a configuration actually draws. Frames are red for torn,
//! green for intact and grey for slices off the ligament.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::{
    Contrast, ExamDetails, ExamOverrides, MimicKind, PhantomConfig, PhantomError, PhantomExam,
    PhaseAxis, ScannerProfile, TearKind, generate_exam_detailed, site_profile,
};
use crate::data::preview::{INTACT, NEUTRAL, TORN, Tile, write_grid};

/// Pixels per side of every preview tile.
const TILE: usize = 192;

/// A clean, middle-of-the-road protocol that previews vary one axis of at a time.
fn base_profile(cfg: &PhantomConfig) -> ScannerProfile {
    let mut p = site_profile(cfg, 0);
    p.contrast = Contrast::Pd;
    p.fov_mm = 160.0;
    p.matrix = if cfg.image_size > 0 {
        cfg.image_size
    } else {
        256
    };
    p.slice_thickness_mm = 3.0;
    p.slice_spacing_mm = 3.3;
    p.slices = 24;
    p.full_scale = 255;
    p.gain = 0.85;
    p.gamma = 1.0;
    p.bias_field_strength = 0.12;
    p.noise_sigma = 0.02;
    p.blur_mm = 0.3;
    p.ghosting_rate = 0.0;
    p.wrap_rate = 0.0;
    p
}

/// One generated exam and what the generator decided for it.
type Shot = (PhantomExam, ExamDetails);

/// The slice through the middle of the ligament.
fn acl_mid((e, _): &Shot) -> usize {
    let r = &e.truth.acl_slices;
    r.start + r.len().saturating_sub(1) / 2
}

fn frame((e, _): &Shot) -> [u8; 3] {
    if e.truth.torn { TORN } else { INTACT }
}

/// Slice `z` (clamped into the volume) of `e`.
fn tile((e, _): &Shot, z: isize, colour: [u8; 3]) -> Tile {
    let v = &e.exam.volume;
    let z = z.clamp(0, v.depth as isize - 1) as usize;
    Tile::from_volume(v, z, colour).unwrap_or(Tile {
        pixels: vec![0.0],
        height: 1,
        width: 1,
        window: (0.0, 1.0),
        frame: colour,
    })
}

fn mid_tile(e: &Shot) -> Tile {
    tile(e, acl_mid(e) as isize, frame(e))
}

/// Generates every `(profile, torn, overrides)` in parallel, in order.
fn exams(seed: u64, jobs: Vec<(ScannerProfile, bool, ExamOverrides)>) -> Vec<Shot> {
    jobs.into_par_iter()
        .map(|(p, torn, ov)| generate_exam_detailed(&p, seed, torn, &ov))
        .collect()
}

/// A textbook tear (complete, strong, bruised) so axes other than the lesion can be
/// compared on a torn knee too.
fn textbook() -> ExamOverrides {
    ExamOverrides {
        tear: Some(TearKind::Complete),
        tear_strength: Some(0.9),
        bone_bruise: Some(true),
        mimic: Some(None),
        ghosting: Some(false),
        wrap: Some(false),
        ..ExamOverrides::default()
    }
}

/// Writes the preview PNGs into `dir` (created if needed) and returns their paths.
pub fn write_previews(dir: &Path, cfg: &PhantomConfig) -> Result<Vec<PathBuf>, PhantomError> {
    std::fs::create_dir_all(dir).map_err(|source| PhantomError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let seed = cfg.seed.wrapping_mul(1_000_003).wrapping_add(17);
    let base = base_profile(cfg);
    let mut written = Vec::new();
    let mut save = |name: &str, rows: Vec<Vec<Tile>>| -> Result<(), PhantomError> {
        let path = dir.join(name);
        write_grid(&path, &rows, TILE)?;
        written.push(path);
        Ok(())
    };

    // Contrast: per row one contrast; intact and torn ACL slice, then the lateral
    // condyle (where a bruise shows) of each.
    let jobs = Contrast::ALL
        .iter()
        .flat_map(|&c| {
            let p = ScannerProfile {
                contrast: c,
                ..base.clone()
            };
            [(p.clone(), false, textbook()), (p, true, textbook())]
        })
        .collect();
    let es = exams(seed, jobs);
    let rows = es
        .chunks(2)
        .map(|pair| {
            let lateral = |e: &Shot| {
                let z = e.1.notch_slices.end as isize + 3;
                tile(e, z, frame(e))
            };
            vec![
                mid_tile(&pair[0]),
                mid_tile(&pair[1]),
                lateral(&pair[0]),
                lateral(&pair[1]),
            ]
        })
        .collect();
    save("contrast.png", rows)?;

    // Field of view (rows) by matrix (columns), same knee, ACL slice.
    let mut jobs = Vec::new();
    for fov in [120.0, 150.0, 180.0] {
        for matrix in [160, 256, 512] {
            let p = ScannerProfile {
                fov_mm: fov,
                matrix,
                ..base.clone()
            };
            jobs.push((p, true, textbook()));
        }
    }
    let es = exams(seed, jobs);
    save(
        "fov_matrix.png",
        es.chunks(3)
            .map(|r| r.iter().map(mid_tile).collect())
            .collect(),
    )?;

    // Slice thickness: per row one thickness, consecutive slices across the notch;
    // red frames mark the torn ACL's slices.
    let jobs = [2.5, 3.5, 4.5]
        .iter()
        .map(|&t| {
            let p = ScannerProfile {
                slice_thickness_mm: t,
                slice_spacing_mm: t * 1.05,
                slices: (80.0 / t) as usize,
                ..base.clone()
            };
            (p, true, textbook())
        })
        .collect();
    let es = exams(seed, jobs);
    let rows = es
        .iter()
        .map(|e| {
            let start = e.0.truth.acl_slices.start as isize - 3;
            (start..start + 8)
                .map(|z| {
                    let on = z >= 0 && e.0.truth.acl_slices.contains(&(z as usize));
                    tile(e, z, if on { TORN } else { NEUTRAL })
                })
                .collect()
        })
        .collect();
    save("thickness.png", rows)?;

    // Pose: in-plane offset and rotation, and the slab missing the knee's centre.
    let poses = [
        ((-26.0, -18.0), -10.0, -16.0),
        ((-6.0, 0.0), 0.0, 0.0),
        ((12.0, 18.0), 10.0, 16.0),
        ((12.0, -18.0), -6.0, 8.0),
        ((-26.0, 18.0), 6.0, -8.0),
    ];
    let jobs = poses
        .iter()
        .flat_map(|&(offset, rotation, shift)| {
            let ov = ExamOverrides {
                offset_mm: Some(offset),
                rotation_deg: Some(rotation),
                ml_shift_mm: Some(shift),
                ..textbook()
            };
            [(base.clone(), false, ov.clone()), (base.clone(), true, ov)]
        })
        .collect();
    let es = exams(seed, jobs);
    let rows = vec![
        es.iter().step_by(2).map(mid_tile).collect(),
        es.iter().skip(1).step_by(2).map(mid_tile).collect(),
        // The first slice of each: how far the slab reaches medially.
        es.iter().step_by(2).map(|e| tile(e, 0, NEUTRAL)).collect(),
    ];
    save("pose.png", rows)?;

    // Flexion 0–30°, intact and torn.
    let jobs = [false, true]
        .iter()
        .flat_map(|&torn| {
            [0.0, 10.0, 20.0, 30.0].map(|f| {
                let ov = ExamOverrides {
                    flexion_deg: Some(f),
                    ..textbook()
                };
                (base.clone(), torn, ov)
            })
        })
        .collect();
    let es = exams(seed, jobs);
    save(
        "flexion.png",
        es.chunks(4)
            .map(|r| r.iter().map(mid_tile).collect())
            .collect(),
    )?;

    // Tears: per row one tear type (the last row a faint complete tear): the intact
    // knee's ACL slice, then the torn knee's ACL slices and the lateral condyle.
    let mut kinds: Vec<(TearKind, f64)> = TearKind::ALL.iter().map(|&k| (k, 0.85)).collect();
    kinds.push((TearKind::Complete, 0.15));
    let mut jobs = vec![(base.clone(), false, textbook())];
    for &(kind, strength) in &kinds {
        let ov = ExamOverrides {
            tear: Some(kind),
            tear_strength: Some(strength),
            ..textbook()
        };
        jobs.push((base.clone(), true, ov));
    }
    let es = exams(seed, jobs);
    let intact = &es[0];
    let rows = es[1..]
        .iter()
        .map(|e| {
            let z = acl_mid(e) as isize;
            vec![
                mid_tile(intact),
                tile(e, z - 1, TORN),
                tile(e, z, TORN),
                tile(e, z + 1, TORN),
                tile(e, e.1.notch_slices.end as isize + 3, TORN),
            ]
        })
        .collect();
    save("tears.png", rows)?;

    // Mimics: per row one mimic on an intact knee, ACL slices and the one medial to
    // them (where the PCL sits), beside the plain intact knee.
    let mut jobs = vec![(base.clone(), false, textbook())];
    for kind in MimicKind::ALL {
        let ov = ExamOverrides {
            mimic: Some(Some(kind)),
            ..textbook()
        };
        jobs.push((base.clone(), false, ov));
    }
    let es = exams(seed, jobs);
    let plain = &es[0];
    let rows = es[1..]
        .iter()
        .map(|e| {
            let z = acl_mid(e) as isize;
            let first = e.0.truth.acl_slices.start as isize;
            vec![
                mid_tile(plain),
                tile(e, first - 1, INTACT),
                tile(e, z, INTACT),
                tile(e, z + 1, INTACT),
                tile(e, e.1.notch_slices.start as isize - 4, INTACT),
            ]
        })
        .collect();
    save("mimics.png", rows)?;

    // Artefacts: clean, ghosting, wrap along rows and columns, strong coil shading,
    // heavy noise, blur, small field of view with wrap.
    let clean = base.clone();
    let variants: Vec<(ScannerProfile, ExamOverrides)> = vec![
        (clean.clone(), textbook()),
        (
            clean.clone(),
            ExamOverrides {
                ghosting: Some(true),
                ..textbook()
            },
        ),
        (
            ScannerProfile {
                phase_axis: PhaseAxis::Rows,
                ..clean.clone()
            },
            ExamOverrides {
                wrap: Some(true),
                ..textbook()
            },
        ),
        (
            ScannerProfile {
                phase_axis: PhaseAxis::Cols,
                fov_mm: 120.0,
                ..clean.clone()
            },
            ExamOverrides {
                wrap: Some(true),
                ..textbook()
            },
        ),
        (
            ScannerProfile {
                bias_field_strength: 0.45,
                ..clean.clone()
            },
            textbook(),
        ),
        (
            ScannerProfile {
                noise_sigma: 0.06,
                ..clean.clone()
            },
            textbook(),
        ),
        (
            ScannerProfile {
                blur_mm: 0.9,
                ..clean.clone()
            },
            textbook(),
        ),
    ];
    let jobs = variants.into_iter().map(|(p, ov)| (p, true, ov)).collect();
    let es = exams(seed, jobs);
    save("artefacts.png", vec![es.iter().map(mid_tile).collect()])?;

    // The sites this configuration draws: per row one site's protocol, an intact and
    // a torn exam of it, and that torn exam's neighbouring slices.
    let jobs = (0..cfg.sites.clamp(1, 6))
        .flat_map(|s| {
            let p = site_profile(cfg, s);
            let p = ScannerProfile {
                // Keep the preview quick: at most 256 px, the look is the same.
                matrix: p.matrix.min(256),
                ..p
            };
            [
                (p.clone(), false, ExamOverrides::default()),
                (p, true, ExamOverrides::default()),
            ]
        })
        .collect();
    let es = exams(seed ^ 0x5173, jobs);
    let rows = es
        .chunks(2)
        .map(|pair| {
            let z = acl_mid(&pair[1]) as isize;
            vec![
                mid_tile(&pair[0]),
                tile(&pair[1], z - 1, TORN),
                tile(&pair[1], z, TORN),
                tile(&pair[1], z + 1, TORN),
            ]
        })
        .collect();
    save("sites.png", rows)?;
    Ok(written)
}
