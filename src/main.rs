//! `fedslice`: the researcher's command line. Argument parsing and wiring only;
//! everything a test would want to reach lives in the `fedslice` library crate.

mod cli;
mod commands;

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
    fedslice::process::init_tracing(cli.verbose, cli.log_format);
    fedslice::process::exit_code(commands::run(cli.command))
}
