//! `site-agent inspect`: the ingestion report an operator reads before joining
//! a consortium. It never fails on a bad file and never prints identifiers.

use std::path::Path;

use anyhow::Context;
use fedslice::data::inventory;
use fedslice::data::plane::Plane;

pub fn run(data: &Path, plane: Plane, json: Option<&Path>) -> anyhow::Result<()> {
    let report = inventory::inspect_in(data, plane)
        .with_context(|| format!("inspecting {}", data.display()))?;
    println!(
        "{:<7} {:<44} {:<22} {:<14} {:<6} note",
        "format", "exam", "planes", "shape", "label"
    );
    for e in &report.exams {
        println!(
            "{:<7} {:<44} {:<22} {:<14} {:<6} {}",
            e.format,
            e.source,
            e.planes.join(","),
            e.shape
                .map_or("-".into(), |[d, h, w]| format!("{d}×{h}×{w}")),
            e.label.map_or("-", |l| if l { "tear" } else { "intact" }),
            e.note
                .as_deref()
                .unwrap_or(if e.usable { "" } else { "not usable" })
        );
    }
    let usable = report.exams.iter().filter(|e| e.usable).count();
    println!(
        "{} exams ({usable} usable), {} skipped",
        report.exams.len(),
        report.skipped.len()
    );
    for s in &report.skipped {
        println!("skipped {}: {}", s.path, s.reason);
    }
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("report: {}", path.display());
    }
    Ok(())
}
