use fedslice::bench::{self, BenchRow};
use fedslice::device::{self, BackendKind};
use fedslice::wire::Dtype;

use crate::cli::BenchArgs;

fn run_aggregation(args: &BenchArgs) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for preset in &args.presets {
        for dtype in [Dtype::F32, Dtype::F16, Dtype::Bf16] {
            let sites: &[usize] = if dtype == Dtype::F32 {
                &args.aggregation_sites
            } else {
                &[1]
            };
            for &n in sites {
                tracing::info!(%preset, sites = n, %dtype, "timing aggregation");
                rows.push(bench::aggregation(preset, n, dtype).map_err(anyhow::Error::msg)?);
            }
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "aggregation": rows }))?
        );
        return Ok(());
    }
    println!(
        "{:<10} {:>6} {:>6} {:>10} {:>14} {:>10} {:>10} {:>12}",
        "preset", "dtype", "sites", "model MB", "bytes/update", "seconds", "MB/s", "peak RSS MB"
    );
    for r in &rows {
        println!(
            "{:<10} {:>6} {:>6} {:>10.1} {:>14} {:>10.2} {:>10.1} {:>12}",
            r.preset,
            r.dtype,
            r.sites,
            r.model_mb,
            r.bytes_per_update,
            r.seconds,
            r.mb_per_second,
            r.peak_rss_mb.map_or("-".into(), |m| format!("{m:.0}"))
        );
    }
    Ok(())
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.predict {
        return super::predict_bench::run(&args.presets, &args.device, args.steps, args.json);
    }
    if args.ingest {
        return super::ingest_bench::run(args.ingest_exams, args.ingest_side, args.json);
    }
    if !args.aggregation_sites.is_empty() {
        return run_aggregation(&args);
    }
    if let Some(sites) = args.round_overhead_sites {
        let preset = args.presets.first().map_or("test", String::as_str);
        let work =
            std::env::temp_dir().join(format!("fedslice-round-bench-{}", std::process::id()));
        let result = super::round_bench::run(sites, preset, 3, &work);
        let _ = std::fs::remove_dir_all(&work);
        let result = result?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&result)?);
        } else {
            println!(
                "{} sites, preset {}, {} bytes per update: round overhead {} s; updates counted per round {:?}",
                result.sites,
                result.preset,
                result.update_bytes,
                result
                    .round_seconds
                    .iter()
                    .map(|s| format!("{s:.2}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                result.updates_counted
            );
            println!(
                "{:<8} {:>9} {:>10} {:>10} {:>10}",
                "request", "count", "p50 ms", "p99 ms", "max ms"
            );
            for (kind, l) in &result.latency_ms {
                println!(
                    "{:<8} {:>9} {:>10.1} {:>10.1} {:>10.1}",
                    kind, l.requests, l.p50, l.p99, l.max
                );
            }
        }
        return Ok(());
    }
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
