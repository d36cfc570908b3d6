//! `aggregator`: the consortium's hosted service (see the library crate).

fn main() -> std::process::ExitCode {
    aggregator::cli::main()
}
