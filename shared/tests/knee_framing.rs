//! The knee recipe's framing keeps the ACL in view on knees it was not
//! designed around: on both phantom styles (B written independently of A and
//! of this locator), the located window must contain the ligament.

use fedslice::data::phantom::{self, PhantomConfig, PhantomExam};
use fedslice::data::phantom_b;
use fedslice::data::preprocess::{PreprocessConfig, framing};

/// Share of exams whose ACL box centre lies in the central 80% of the
/// located window and whose ACL slices meet the located slab.
fn hit_rate(exams: &[PhantomExam]) -> (f64, f64) {
    let config = PreprocessConfig::knee(64);
    let (mut in_plane, mut through_plane) = (0usize, 0usize);
    for e in exams {
        let f = framing(&e.exam.volume, e.exam.spacing, &config);
        let b = e.truth.acl_box;
        let (cy, cx) = ((b[0] + b[2]) as f64 / 2.0, (b[1] + b[3]) as f64 / 2.0);
        let w = f.window;
        let inside =
            |c: f64, start: f64, len: f64| c >= start + 0.1 * len && c <= start + 0.9 * len;
        if inside(cy, w.y0, w.h) && inside(cx, w.x0, w.w) {
            in_plane += 1;
        }
        let acl = &e.truth.acl_slices;
        if acl.start < f.slices.end && f.slices.start < acl.end {
            through_plane += 1;
        }
    }
    let n = exams.len().max(1) as f64;
    (in_plane as f64 / n, through_plane as f64 / n)
}

fn cohort(seed: u64) -> PhantomConfig {
    PhantomConfig {
        sites: 4,
        exams_per_site: 10,
        seed,
        image_size: 96,
        ..PhantomConfig::default()
    }
}

#[test]
fn the_located_window_holds_the_acl_on_both_styles() {
    let cfg = cohort(3);
    let a: Vec<PhantomExam> = (0..cfg.sites)
        .flat_map(|s| {
            let c = phantom::generate_site(&cfg, s);
            c.train.into_iter().chain(c.valid)
        })
        .collect();
    let b: Vec<PhantomExam> = (0..cfg.sites)
        .flat_map(|s| {
            let c = phantom_b::generate_site(&cfg, s);
            c.train.into_iter().chain(c.valid)
        })
        .collect();
    let (a_plane, a_slab) = hit_rate(&a);
    let (b_plane, b_slab) = hit_rate(&b);
    eprintln!(
        "ACL in window: style A {a_plane:.2} in-plane, {a_slab:.2} slab; style B {b_plane:.2}, {b_slab:.2}"
    );
    for (name, rate) in [
        ("A in-plane", a_plane),
        ("A slab", a_slab),
        ("B in-plane", b_plane),
        ("B slab", b_slab),
    ] {
        assert!(
            rate >= 0.9,
            "{name}: the ACL was in view on only {rate:.2} of exams"
        );
    }
}
