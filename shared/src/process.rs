//! What every fedslice program does at start and at exit: log to stderr at
//! the chosen verbosity (`RUST_LOG` overrides), colours only on a terminal,
//! and turn an error into one `error: …` line and a failing exit status.

use std::io::IsTerminal;
use std::process::ExitCode;

pub fn init_tracing(verbose: u8) {
    // The JPEG 2000 decoder narrates every header it reads at info level:
    // thousands of lines per exam, none of them about this program.
    let default = match verbose {
        0 => "info,jpeg2k=warn",
        1 => "debug,jpeg2k=warn",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // A second call (a CLI embedded in another) keeps the first subscriber.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

/// `{:#}` prints an error with its chain of causes (anyhow's context).
pub fn exit_code<E: std::fmt::Display>(result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
