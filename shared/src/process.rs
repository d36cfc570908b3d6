//! What every fedslice program does at start and at exit: log to stderr at
//! the chosen verbosity (`RUST_LOG` overrides) and format (text for people,
//! one JSON object per line for log shippers), colours only on a terminal,
//! and turn an error into one `error: …` line and a failing exit status.

use std::io::IsTerminal;

use std::process::ExitCode;
use tracing_subscriber::util::SubscriberInitExt;

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// `time level message key=value`, escaped (see [`EscapedFields`]).
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `fields`, spans), for
    /// journald/Loki/Elastic pipelines; JSON string escaping covers control
    /// characters.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("unknown log format {other:?} (text or json)")),
        }
    }
}

pub fn init_tracing(verbose: u8, format: LogFormat) {
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
    let _ = match format {
        LogFormat::Text => {
            subscriber(filter, std::io::stderr, std::io::stderr().is_terminal()).try_init()
        }
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_target(false)
            .with_current_span(true)
            .finish()
            .try_init(),
    };
}

fn subscriber<W>(
    filter: tracing_subscriber::EnvFilter,
    writer: W,
    ansi: bool,
) -> impl tracing::Subscriber + Send + Sync + 'static
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi)
        .with_target(false)
        .fmt_fields(EscapedFields)
        .finish()
}

/// Event fields as the default formatter writes them (`name=value`, the
/// message bare, `log.*` metadata of bridged `log` records left out), with
/// line breaks and terminal controls escaped in every value and in the
/// message. Logs carry text from outside (a job name, an AE title, an error
/// from a peer); the default escapes only some terminal controls, and only
/// in the message, so a `%` field with a newline could forge a whole log
/// line (security review L3). Escaping here covers every call site,
/// present and future.
struct EscapedFields;

impl<'w> tracing_subscriber::fmt::FormatFields<'w> for EscapedFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        writer: tracing_subscriber::fmt::format::Writer<'w>,
        fields: R,
    ) -> std::fmt::Result {
        let mut visitor = EscapedVisitor {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct EscapedVisitor<'w> {
    writer: tracing_subscriber::fmt::format::Writer<'w>,
    first: bool,
    result: std::fmt::Result,
}

impl tracing::field::Visit for EscapedVisitor<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let name = field.name();
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        let shown = format!("{value:?}");
        let shown = crate::text::escape_controls(&shown);
        let gap = if std::mem::take(&mut self.first) {
            ""
        } else {
            " "
        };
        self.result = match name {
            "message" => write!(self.writer, "{gap}{shown}"),
            name => write!(
                self.writer,
                "{gap}{}={shown}",
                name.strip_prefix("r#").unwrap_or(name)
            ),
        };
    }
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

    /// What a log writer received.
    #[derive(Clone, Default)]
    struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn outside_text_in_a_log_event_cannot_forge_a_line_or_reach_the_terminal() {
        let capture = Capture::default();
        let writer = capture.clone();
        let logs = subscriber(
            tracing_subscriber::EnvFilter::new("info"),
            move || writer.clone(),
            false,
        );
        let forged = "job-1\u{1b}[31mRED\u{1b}[0m\n2026-01-01T00:00:00Z  WARN site_revoked site-b";
        tracing::subscriber::with_default(logs, || {
            tracing::warn!(job = %forged, site = "site-a", "refused: {forged}");
            tracing::info!(ae = ?forged, "association");
            tracing::info!(log.target = "a_dependency", "bridged from the log crate");
        });
        let bytes = capture.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let text = String::from_utf8(bytes).expect("UTF-8 log");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        assert!(
            lines[0].contains("refused: job-1\\u{1b}[31mRED")
                && lines[0].contains("job=job-1\\u{1b}[31m")
                && lines[0].contains("\\n2026-01-01")
                && lines[0].contains("site=\"site-a\""),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].contains("ae=\"job-1\\u{1b}[31mRED"),
            "{}",
            lines[1]
        );
    }
}
