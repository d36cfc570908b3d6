//! `aggregator`: the consortium's hosted service. It will enrol sites, run
//! federated rounds over mutually authenticated TLS and keep every round durable
//! (issue 4). It must never need or receive pixels, headers or identifiers: it
//! works on model tensors only.
//!
//! Today it only reports its version.

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "aggregator",
    version,
    about = "fedslice aggregator (hosted federation service; federation lands with issue 4)"
)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let _ = Cli::parse();
    println!(
        "aggregator {}: no subcommands yet (federation is issue 4)",
        env!("CARGO_PKG_VERSION")
    );
    Ok(())
}
