use std::path::Path;

use anyhow::Context;
use fedslice::data::phantom::{self, PhantomConfig, PhantomFormat};

use crate::cli::{CohortArgs, PhantomArgs};

pub fn config(args: &CohortArgs) -> PhantomConfig {
    PhantomConfig {
        sites: args.sites,
        exams_per_site: args.exams_per_site,
        seed: args.seed,
        image_size: args.image_size,
        valid_fraction: args.valid_fraction,
        ..PhantomConfig::default()
    }
}

/// Writes the cohort in MRNet layout and logs a one-line summary per site.
pub fn write(out: &Path, args: &CohortArgs) -> anyhow::Result<()> {
    write_as(out, args, PhantomFormat::Mrnet)
}

fn write_as(out: &Path, args: &CohortArgs, format: PhantomFormat) -> anyhow::Result<()> {
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
    let summary = phantom::write_cohort_as(out, &config(args), format)
        .with_context(|| format!("writing phantom cohort to {}", out.display()))?;
    for site in &summary.sites {
        tracing::info!(
            site = %site.name,
            train = site.train,
            valid = site.valid,
            train_torn = site.train_positive,
            valid_torn = site.valid_positive,
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
    write_as(&args.out, &args.cohort, format)?;
    if args.preview {
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
