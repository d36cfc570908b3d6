use super::contrast::Tissue;
use super::*;

fn cfg(image_size: usize) -> PhantomConfig {
    PhantomConfig {
        sites: 3,
        exams_per_site: 20,
        seed: 11,
        image_size,
        valid_fraction: 0.2,
        size_jitter: 0.0,
        textbook: false,
        ..PhantomConfig::default()
    }
}

/// A protocol with the given contrast and matrix, slices trimmed for speed.
fn proto(contrast: Contrast, matrix: usize) -> SiteProtocol {
    SiteProtocol {
        contrast,
        matrix,
        slices: 24,
        slice_thickness_mm: 3.5,
        slice_spacing_mm: 3.5,
        fov_mm: 150.0,
        ..site_protocol(&cfg(matrix), 0)
    }
}

fn mean_abs(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() as f64)
        .sum::<f64>()
        / a.len().max(1) as f64
}

#[test]
fn same_seed_gives_identical_voxels_and_another_seed_differs() {
    let p = proto(Contrast::PdFs, 64);
    let a = generate_exam(&p, 5, true);
    let b = generate_exam(&p, 5, true);
    let c = generate_exam(&p, 6, true);
    assert_eq!(a.exam.volume, b.exam.volume);
    assert_eq!(a.truth, b.truth);
    assert!(mean_abs(&a.exam.volume.voxels, &c.exam.volume.voxels) > 10.0);
}

#[test]
fn torn_and_intact_differ_in_the_acl_box_and_hardly_anywhere_far_from_it() {
    let p = proto(Contrast::PdFs, 80);
    for seed in 0..6u64 {
        let g = generate(&p, seed, true, false);
        let h = generate(&p, seed, false, false);
        let far_lesion = g.far_lesion || h.far_lesion;
        let (torn, intact) = (g.exam, h.exam);
        assert_eq!(torn.truth.acl_slices, intact.truth.acl_slices);
        assert_eq!(torn.truth.acl_box, intact.truth.acl_box);
        let v = &torn.exam.volume;
        let [y0, x0, y1, x1] = torn.truth.acl_box;
        let ks = torn.truth.acl_slices.clone();
        let (mut inside, mut n_in, mut far_changed, mut n_far) = (0.0, 0usize, 0usize, 0usize);
        let pad = 12;
        for k in 0..v.depth {
            for y in 0..v.height {
                for x in 0..v.width {
                    let d = (v.at(k, y, x) - intact.exam.volume.at(k, y, x)).abs();
                    if ks.contains(&k) && (y0..y1).contains(&y) && (x0..x1).contains(&x) {
                        inside += d as f64;
                        n_in += 1;
                    }
                    let near = k + 3 >= ks.start
                        && k < ks.end + 3
                        && y + pad >= y0
                        && y < y1 + pad
                        && x + pad >= x0
                        && x < x1 + pad;
                    if !near {
                        n_far += 1;
                        far_changed += usize::from(d > 200.0);
                    }
                }
            }
        }
        let inside = inside / n_in as f64;
        assert!(
            inside > 40.0,
            "seed {seed}: mean |torn − intact| in the ACL box only {inside}"
        );
        let far = far_changed as f64 / n_far as f64;
        // Effusion and bone bruises belong to the tear but lie away from the ACL.
        let limit = if far_lesion { 0.1 } else { 0.005 };
        assert!(
            far < limit,
            "seed {seed}: {:.2}% of far voxels changed",
            100.0 * far
        );
    }
}

#[test]
fn geometry_follows_the_protocol_and_values_are_12_bit() {
    let config = cfg(72);
    for site in 0..4 {
        let p = site_protocol(&config, site);
        assert!((16..=50).contains(&p.slices), "{p:?}");
        assert!((120.0..=180.0).contains(&p.fov_mm));
        assert!((2.5..=4.5).contains(&p.slice_thickness_mm));
        assert_eq!(p.matrix, 72);
        let e = generate_exam(&p, 3, site % 2 == 0);
        let v = &e.exam.volume;
        assert_eq!((v.depth, v.height, v.width), (p.slices, 72, 72));
        let s = e.exam.spacing.expect("spacing is reported");
        assert!(s.is_valid());
        assert_eq!(s.slice, p.slice_spacing_mm);
        assert!((s.row - p.fov_mm / 72.0).abs() < 1e-12 && s.row == s.col);
        assert!(
            v.voxels
                .iter()
                .all(|x| x.is_finite() && *x >= 0.0 && *x <= 4095.0 && x.fract() == 0.0)
        );
        assert!(!e.truth.acl_slices.is_empty(), "{:?}", e.truth);
        let [y0, x0, y1, x1] = e.truth.acl_box;
        assert!(y0 < y1 && x0 < x1 && y1 <= 72 && x1 <= 72);
    }
    let drawn = site_protocol(&cfg(0), 1);
    assert!((160..=512).contains(&drawn.matrix));
}

#[test]
fn contrasts_show_fluid_and_fat_the_right_way_round() {
    let mut means = Vec::new();
    for c in Contrast::ALL {
        let p = SiteProtocol {
            ghost_probability: 0.0,
            wrap_probability: 0.0,
            ..proto(c, 96)
        };
        let (mut fluid, mut fat) = ((0.0, 0usize), (0.0, 0usize));
        for seed in 0..3 {
            let g = generate(&p, seed, true, true);
            let labels = g.labels.expect("labels requested");
            for (v, l) in g.exam.exam.volume.voxels.iter().zip(&labels) {
                if *l == Tissue::Fluid as u8 {
                    fluid = (fluid.0 + *v as f64, fluid.1 + 1);
                } else if *l == Tissue::Fat as u8 {
                    fat = (fat.0 + *v as f64, fat.1 + 1);
                }
            }
        }
        assert!(
            fluid.1 > 20 && fat.1 > 1000,
            "{c:?}: {} fluid, {} fat voxels",
            fluid.1,
            fat.1
        );
        means.push((c, fluid.0 / fluid.1 as f64, fat.0 / fat.1 as f64));
    }
    for &(c, fluid, fat) in &means {
        match c {
            Contrast::T2Fs | Contrast::PdFs => {
                assert!(fluid > 2.0 * fat, "{c:?}: {fluid} vs {fat}")
            }
            Contrast::T1 => assert!(fluid < 0.5 * fat, "{c:?}: {fluid} vs {fat}"),
            Contrast::Pd => assert!(
                fat > 0.9 * fluid && fluid > 300.0,
                "{c:?}: {fluid} vs {fat}"
            ),
        }
    }
}

#[test]
fn sites_draw_different_protocols() {
    let config = cfg(0);
    let ps: Vec<SiteProtocol> = (0..6).map(|s| site_protocol(&config, s)).collect();
    for i in 0..ps.len() {
        for j in i + 1..ps.len() {
            assert_ne!(ps[i], ps[j]);
            assert_ne!(ps[i].seed, ps[j].seed);
        }
    }
    let contrasts: std::collections::HashSet<_> = ps.iter().map(|p| p.contrast).collect();
    assert!(contrasts.len() >= 2);
    assert!(ps.iter().all(|p| (0.25..=0.5).contains(&p.prevalence)));
    assert_eq!(
        site_protocol(&config, 2),
        ps[2],
        "deterministic in (seed, site)"
    );
    let json = serde_json::to_string(&ps[0]).expect("serialises");
    let back: SiteProtocol = serde_json::from_str(&json).expect("deserialises");
    assert_eq!(back, ps[0]);
}

#[test]
fn prevalence_and_stratified_split_are_respected() {
    let config = PhantomConfig {
        exams_per_site: 300,
        image_size: 16,
        valid_fraction: 0.25,
        ..cfg(16)
    };
    let cohort = generate_site(&config, 1);
    let p = &cohort.protocol;
    assert_eq!(cohort.name, "site-01");
    assert_eq!(cohort.train.len() + cohort.valid.len(), 300);
    let torn = |v: &[PhantomExam]| v.iter().filter(|e| e.truth.torn).count();
    let all_torn = torn(&cohort.train) + torn(&cohort.valid);
    let rate = all_torn as f64 / 300.0;
    assert!(
        (rate - p.prevalence).abs() < 0.09,
        "{rate} vs {}",
        p.prevalence
    );
    let want = |n: usize| (n as f64 * 0.25).round() as usize;
    assert_eq!(torn(&cohort.valid), want(all_torn));
    assert_eq!(
        cohort.valid.len() - torn(&cohort.valid),
        want(300 - all_torn)
    );
    for (i, e) in cohort.train.iter().enumerate() {
        assert_eq!(e.exam.id, format!("train/{i:04}"));
        assert_eq!(e.exam.label, Some(e.truth.torn));
    }
    let n = cohort.train.len();
    for (j, e) in cohort.valid.iter().enumerate() {
        assert_eq!(e.exam.id, format!("valid/{:04}", n + j));
    }
    let mimics = cohort
        .train
        .iter()
        .chain(&cohort.valid)
        .filter(|e| e.truth.mimic)
        .count();
    let intact = 300 - all_torn;
    let mimic_rate = mimics as f64 / intact as f64;
    assert!(
        (mimic_rate - p.mimic_rate).abs() < 0.12,
        "{mimic_rate} vs {}",
        p.mimic_rate
    );
}

/// Not a check: writes torn/intact montages per contrast and prints seconds per exam at
/// drawn matrices. `cargo test ... phantom_b::tests::preview -- --ignored --nocapture`
#[test]
#[ignore]
fn preview() {
    let dir = std::env::var("PHANTOM_B_PREVIEW").unwrap_or_else(|_| "/tmp".into());
    let seed: u64 = std::env::var("PHANTOM_B_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    for c in Contrast::ALL {
        let p = SiteProtocol {
            contrast: c,
            ghost_probability: 0.0,
            wrap_probability: 0.0,
            ..site_protocol(&cfg(256), 0)
        };
        let torn = generate_exam(&p, seed, true);
        let intact = generate_exam(&p, seed, false);
        let ks: Vec<usize> = torn.truth.acl_slices.clone().collect();
        let all: Vec<usize> = (0..torn.exam.volume.depth).step_by(2).collect();
        let pick = |v: &crate::data::Volume, ks: &[usize]| {
            let mut out = crate::data::Volume::zeros(ks.len(), v.height, v.width);
            for (o, k) in ks.iter().enumerate() {
                out.slice_mut(o).copy_from_slice(v.slice(*k));
            }
            out
        };
        for (name, ks) in [("acl", &ks), ("all", &all)] {
            let path = std::path::Path::new(&dir).join(format!("phantom_b_{c:?}_{name}.png"));
            let (t, i) = (pick(&torn.exam.volume, ks), pick(&intact.exam.volume, ks));
            crate::data::preview::write_montage(&path, &t, &i, ks.len()).expect("montage");
        }
        println!("{c:?}: {p:?}\n  truth {:?}", torn.truth);
    }
    let config = cfg(0);
    let start = std::time::Instant::now();
    let mut voxels = 0;
    let n = 12;
    for i in 0..n {
        let p = site_protocol(&config, i);
        let e = generate_exam(&p, i as u64, i % 2 == 0);
        voxels += e.exam.volume.voxels.len();
    }
    let s = start.elapsed().as_secs_f64() / n as f64;
    println!(
        "{s:.3} s/exam at drawn matrices ({} voxels/exam on average)",
        voxels / n
    );
}
