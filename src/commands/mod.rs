//! One file per subcommand.

mod bench;
mod demo;
mod evaluate;
mod export;
mod ingest_bench;
mod phantom;
mod predict_bench;
mod recipe;
mod round_bench;
mod study;
mod train;

use crate::cli::Command;

pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Phantom(args) => phantom::run(args),
        Command::Train(args) => train::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Evaluate(args) => evaluate::run(args),
        Command::Export(args) => export::run(args),
        Command::Study(args) => study::run(args),
    }
}
