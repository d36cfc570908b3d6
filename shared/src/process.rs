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

/// Errors that no restart can cure. Each has its own exit status so a
/// service manager can stop restarting (systemd's `RestartPreventExitStatus=`,
/// listed in deploy/) instead of looping every few seconds, re-reading the
/// site's data each time, until somebody notices. Attach one as context:
/// `result.context(Permanent::Config)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permanent {
    /// A key, certificate or CA file is missing, unreadable, malformed,
    /// expired, or the key is not the certificate's (66, sysexits' NOINPUT).
    Credentials,
    /// The TLS handshake failed on trust: the other side's certificate is not
    /// from this consortium's CA or does not name the host (76, PROTOCOL).
    TlsTrust,
    /// The aggregator refuses this site: revoked, or not enrolled (77, NOPERM).
    Revoked,
    /// The configuration is wrong: unreadable, unparsable, a placeholder or
    /// an invalid value left in it (78, CONFIG).
    Config,
}

impl Permanent {
    pub const ALL: [Permanent; 4] = [
        Permanent::Credentials,
        Permanent::TlsTrust,
        Permanent::Revoked,
        Permanent::Config,
    ];

    pub const fn code(self) -> u8 {
        match self {
            Permanent::Credentials => 66,
            Permanent::TlsTrust => 76,
            Permanent::Revoked => 77,
            Permanent::Config => 78,
        }
    }
}

impl std::fmt::Display for Permanent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Permanent::Credentials => "key or certificate unusable",
            Permanent::TlsTrust => "TLS trust failure",
            Permanent::Revoked => "refused by the aggregator",
            Permanent::Config => "configuration error",
        })
    }
}

/// The exit status for `error`: a [`Permanent`] one anywhere in its context
/// chain, else the ordinary failure (1).
pub fn permanent_kind(error: &anyhow::Error) -> Option<Permanent> {
    error.downcast_ref::<Permanent>().copied()
}

/// `{:#}` prints an error with its chain of causes (anyhow's context). A
/// permanent error says so, because the operator must act before a restart.
pub fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            match permanent_kind(&e) {
                Some(kind) => {
                    eprintln!(
                        "this will not go away by retrying: fix it, then start again (exit status {})",
                        kind.code()
                    );
                    ExitCode::from(kind.code())
                }
                None => ExitCode::FAILURE,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn a_permanent_context_is_found_under_later_context() {
        let inner: anyhow::Result<()> = Err(anyhow::anyhow!("no such file"));
        let e = inner
            .context(Permanent::Revoked)
            .context("polling https://x")
            .unwrap_err();
        assert_eq!(permanent_kind(&e), Some(Permanent::Revoked));
        assert_eq!(permanent_kind(&anyhow::anyhow!("timeout")), None);
    }

    #[test]
    fn exit_statuses_are_distinct_and_not_the_ordinary_ones() {
        let mut codes: Vec<u8> = Permanent::ALL.iter().map(|k| k.code()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), Permanent::ALL.len());
        // 1 is any failure, 2 clap's usage error; systemd must still restart those.
        assert!(codes.iter().all(|&c| c > 2 && c < 126));
    }
}
