//! `fedslice`: the researcher's command line. Argument parsing and wiring only;
//! everything a test would want to reach lives in the `fedslice` library crate.

mod cli;
mod commands;

use std::io::IsTerminal;

use clap::Parser;

fn main() -> std::process::ExitCode {
    // The demo starts the aggregator and the site agents as separate
    // processes of this same executable, so `cargo run` needs no other binary.
    let mut args = std::env::args_os();
    match args.nth(1).as_ref().and_then(|a| a.to_str()) {
        Some("aggregator") => return aggregator::cli::main_from(std::env::args_os().skip(1)),
        Some("site-agent") => return site_agent::cli::main_from(std::env::args_os().skip(1)),
        _ => {}
    }
    let cli = cli::Cli::parse();
    init_tracing(cli.verbose);
    match commands::run(cli.command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}
