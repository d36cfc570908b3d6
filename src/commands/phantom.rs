use std::path::Path;

use anyhow::Context;
use fedslice::data::phantom::{self, PhantomConfig, PhantomFormat};
use fedslice::data::{phantom_b, preview};
use fedslice::study::Style;

use crate::cli::{CohortArgs, PhantomArgs};

pub fn config(args: &CohortArgs) -> PhantomConfig {
    PhantomConfig {
        sites: args.sites,
        exams_per_site: args.exams_per_site,
        seed: args.seed,
        image_size: args.image_size,
        valid_fraction: args.valid_fraction,
        textbook: args.textbook,
        label_skew: args.label_skew,
        scanner_skew: args.scanner_skew,
        size_jitter: args.size_jitter,
    }
}

/// Writes a style A cohort for `train` and the demo, as NIfTI exam folders:
/// unlike MRNet `.npy`, NIfTI keeps the voxel spacing the knee recipe frames
/// by, and the phantom's 12-bit sites need no 8-bit rescale.
pub fn write(out: &Path, args: &CohortArgs) -> anyhow::Result<()> {
    write_as(out, args, PhantomFormat::Nifti, Style::A)
}

fn write_as(
    out: &Path,
    args: &CohortArgs,
    format: PhantomFormat,
    style: Style,
) -> anyhow::Result<()> {
    anyhow::ensure!(args.sites > 0, "--sites must be at least 1");
    anyhow::ensure!(
        args.exams_per_site >= 2,
        "--exams-per-site must be at least 2"
    );
    anyhow::ensure!(
        args.image_size == 0 || args.image_size >= 32,
        "--image-size must be 0 (each site's protocol draws its matrix) or at least 32"
    );
    let started = std::time::Instant::now();
    let context = || format!("writing phantom cohort to {}", out.display());
    let sites: Vec<(String, usize, usize, usize, usize)> = match style {
        Style::A => phantom::write_cohort_as(out, &config(args), format)
            .with_context(context)?
            .sites
            .into_iter()
            .map(|s| (s.name, s.train, s.valid, s.train_positive, s.valid_positive))
            .collect(),
        Style::B => phantom::write_style_b_cohort_as(out, &config(args), format)
            .with_context(context)?
            .sites
            .into_iter()
            .map(|s| (s.name, s.train, s.valid, s.train_positive, s.valid_positive))
            .collect(),
    };
    for (site, train, valid, train_torn, valid_torn) in &sites {
        tracing::info!(
            site = %site,
            train,
            valid,
            train_torn,
            valid_torn,
            %style,
            "site written"
        );
    }
    tracing::info!(
        out = %out.display(),
        seconds = format!("{:.1}", started.elapsed().as_secs_f64()),
        "cohort written (ground truth per exam in cohort.json)"
    );
    Ok(())
}

pub fn run(args: PhantomArgs) -> anyhow::Result<()> {
    let format: PhantomFormat = args.format.parse()?;
    let style: Style = args.style.parse().map_err(anyhow::Error::msg)?;
    write_as(&args.out, &args.cohort, format, style)?;
    if args.preview && style == Style::B {
        let cfg = config(&args.cohort);
        let protocol = phantom_b::site_protocol(&cfg, 0);
        let seed = args.cohort.seed.wrapping_mul(1_000_003).wrapping_add(17);
        let torn = phantom_b::generate_exam(&protocol, seed, true);
        let intact = phantom_b::generate_exam(&protocol, seed, false);
        let path = args.out.join("preview.png");
        preview::write_montage(&path, &torn.exam.volume, &intact.exam.volume, 6)
            .with_context(|| format!("writing {}", path.display()))?;
        println!(
            "preview: {} (style B; top: torn ACL, bottom: same knee intact)",
            path.display()
        );
    } else if args.preview {
        let dir = args.out.join("preview");
        let written = phantom::write_previews(&dir, &config(&args.cohort))
            .with_context(|| format!("writing previews to {}", dir.display()))?;
        for path in written {
            println!("preview: {}", path.display());
        }
        println!(
            "previews: one PNG per variation axis (red frame: torn ACL, green: intact, grey: slice off the ligament)"
        );
    }
    println!("cohort: {}", args.out.display());
    Ok(())
}
