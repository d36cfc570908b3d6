//! How far the knee locator's window centre lands from the ACL, per phantom
//! style and contrast: `cargo run --release --features wgpu -p fedslice-shared
//! --example locator_offsets -- [SEEDS] [EXAMS_PER_SITE]` (defaults 4 and 12;
//! cohorts of 3 sites with seeds 1000, 1001, …, random matrices).

use std::collections::BTreeMap;

use fedslice::data::phantom::{self, PhantomConfig, PhantomExam};
use fedslice::data::phantom_b;
use fedslice::data::preprocess::{PreprocessConfig, framing};

/// |row offset|, |column offset| in mm, and whether the slab meets the ACL.
type Offset = (f64, f64, bool);

fn offset(e: &PhantomExam, config: &PreprocessConfig) -> Option<Offset> {
    let spacing = e.exam.spacing?;
    let f = framing(&e.exam.volume, e.exam.spacing, config);
    let b = e.truth.acl_box;
    let (cy, cx) = ((b[0] + b[2]) as f64 / 2.0, (b[1] + b[3]) as f64 / 2.0);
    let w = f.window;
    let acl = &e.truth.acl_slices;
    Some((
        ((cy - (w.y0 + w.h / 2.0)) * spacing.row).abs(),
        ((cx - (w.x0 + w.w / 2.0)) * spacing.col).abs(),
        acl.start < f.slices.end && f.slices.start < acl.end,
    ))
}

fn quantile(values: impl Iterator<Item = f64>, q: f64) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_unstable_by(f64::total_cmp);
    v.get(((v.len().saturating_sub(1)) as f64 * q) as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let seeds: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(4);
    let exams: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(12);
    let config = PreprocessConfig::knee(64);
    println!(
        "style contrast  n    |row| p50 p90   |col| p50 p90   max(|row|,|col|) p90 max  slab hit"
    );
    for style in ["a", "b"] {
        let mut by_contrast: BTreeMap<String, Vec<Offset>> = BTreeMap::new();
        for seed in 0..seeds {
            let cfg = PhantomConfig {
                sites: 3,
                exams_per_site: exams,
                seed: 1000 + seed,
                image_size: 0,
                ..PhantomConfig::default()
            };
            for s in 0..cfg.sites {
                let (cohort, contrast) = if style == "a" {
                    let c = phantom::generate_site(&cfg, s);
                    let name = format!("{:?}", phantom::site_profile(&cfg, s).contrast);
                    (c.train.into_iter().chain(c.valid).collect::<Vec<_>>(), name)
                } else {
                    let c = phantom_b::generate_site(&cfg, s);
                    let name = format!("{:?}", phantom_b::site_protocol(&cfg, s).contrast);
                    (c.train.into_iter().chain(c.valid).collect(), name)
                };
                let found = cohort.iter().filter_map(|e| offset(e, &config));
                by_contrast.entry(contrast).or_default().extend(found);
            }
        }
        for (contrast, v) in by_contrast {
            let rows = || v.iter().map(|o| o.0);
            let cols = || v.iter().map(|o| o.1);
            let worst = || v.iter().map(|o| o.0.max(o.1));
            let slab = v.iter().filter(|o| o.2).count() as f64 / v.len().max(1) as f64;
            println!(
                "{style}     {contrast:<8} {:>3}  {:>9.1} {:>4.1}  {:>9.1} {:>4.1}  {:>20.1} {:>4.1}  {slab:.2}",
                v.len(),
                quantile(rows(), 0.5),
                quantile(rows(), 0.9),
                quantile(cols(), 0.5),
                quantile(cols(), 0.9),
                quantile(worst(), 0.9),
                quantile(worst(), 1.0),
            );
        }
    }
}
