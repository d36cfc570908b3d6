//! `site-agent`: the program a hospital installs. It will read the site's knee
//! MRI, train locally and exchange only model updates with the aggregator
//! (federation: issue 4; ingestion: issue 3). It must never send pixels,
//! headers or identifiers off the site.
//!
//! Today it reports what this build can do, so an installer can check a
//! workstation (`site-agent info`).

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "site-agent",
    version,
    about = "fedslice site agent (runs inside the hospital)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show the compute backends and model presets this build supports, and check the device.
    Info {
        /// Device to check: flex (CPU) or wgpu (GPU).
        #[arg(long, default_value = "flex")]
        device: String,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Info { device } => {
            println!("site-agent {}", env!("CARGO_PKG_VERSION"));
            println!(
                "backends built: flex{}",
                if fedslice::device::WGPU_BUILT {
                    ", wgpu"
                } else {
                    ""
                }
            );
            println!(
                "model presets:  {}",
                fedslice::model::VitConfig::PRESETS.join(", ")
            );
            let kind: fedslice::device::BackendKind = device.parse()?;
            fedslice::device::open(kind)?;
            println!("device {kind}: ok");
        }
    }
    Ok(())
}
