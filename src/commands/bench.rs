use fedslice::bench::{self, BenchRow};
use fedslice::device::{self, BackendKind};

use crate::cli::BenchArgs;

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let mut rows: Vec<BenchRow> = Vec::new();
    for name in &args.device {
        let backend: BackendKind = name.parse()?;
        let device = device::open(backend)?;
        for preset in &args.presets {
            tracing::info!(%preset, %backend, "timing GMML training step");
            rows.push(bench::gmml_step(
                preset,
                backend,
                &device,
                args.batch,
                args.warmup,
                args.steps,
            )?);
        }
    }
    let masks = [
        bench::mask_throughput(64, 8, 2000),
        bench::mask_throughput(224, 16, 500),
    ];
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "train_step": rows,
                "mask_generation": masks,
                "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            }))?
        );
        return Ok(());
    }
    println!(
        "{:<10} {:<6} {:>6} {:>12} {:>12} {:>12}",
        "preset", "device", "batch", "step ms", "min ms", "images/s"
    );
    for r in &rows {
        println!(
            "{:<10} {:<6} {:>6} {:>12.1} {:>12.1} {:>12.1}",
            r.preset, r.device, r.batch, r.step_ms_mean, r.step_ms_min, r.images_per_second
        );
    }
    println!();
    println!("{:<12} {:>14}", "mask side", "masks/s");
    for m in &masks {
        println!("{:<12} {:>14.0}", m.side, m.masks_per_second);
    }
    Ok(())
}
