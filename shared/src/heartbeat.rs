//! A site's heartbeat: what its agent is doing, sent with every request in the
//! [`HEARTBEAT_HEADER`] header (poll, download, upload, and a health probe
//! while training keeps it from polling). The header is optional: an agent
//! from before issue 15 sends none and is still served; an aggregator from
//! before it ignores the unknown header.
//!
//! The aggregator keeps the last one per site for `aggregator status`, the
//! status page and `/metrics`. It comes from a site, so it is bounded and
//! validated before it is stored or shown: printable ASCII only, short
//! strings, counts that add up.

use serde::{Deserialize, Serialize};

/// Request header carrying the agent's [`Heartbeat`] as JSON.
pub const HEARTBEAT_HEADER: &str = "x-fedslice-heartbeat";
/// The longest heartbeat header the aggregator reads.
pub const MAX_HEARTBEAT_BYTES: usize = 1024;
/// Longest agent version or device name.
pub const MAX_LABEL_LEN: usize = 64;
/// Longest error reason (the agent cuts longer ones).
pub const MAX_REASON_LEN: usize = 300;
/// An ETA beyond this (a week) is nonsense, not a plan.
const MAX_ETA_S: u64 = 7 * 86_400;

/// What a site agent is doing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Activity {
    /// No work for this site (no job, or its update for the round is in).
    Idle,
    /// Decoding and preprocessing exams for a round: `done` of `total`.
    Preparing { done: u32, total: u32 },
    /// Local training for a round.
    Training {
        job: String,
        round: u32,
        /// 1-based, the epoch under way.
        epoch: u32,
        epochs: u32,
        /// Steps done of `steps` in this run of the round's training.
        step: u64,
        steps: u64,
        /// Seconds left at the pace so far.
        eta_s: Option<u64>,
    },
    /// Sending the round's update.
    Uploading { job: String, round: u32, bytes: u64 },
    /// The last attempt failed; the agent retries.
    Error { reason: String },
}

impl Activity {
    /// The state's one-word name (a metrics label, a CSS class).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Preparing { .. } => "preparing",
            Self::Training { .. } => "training",
            Self::Uploading { .. } => "uploading",
            Self::Error { .. } => "error",
        }
    }

    pub const NAMES: [&'static str; 5] = ["idle", "preparing", "training", "uploading", "error"];

    /// The state in words, for status listings.
    pub fn describe(&self) -> String {
        match self {
            Self::Idle => "idle".into(),
            Self::Preparing { done, total } => format!("preparing data {done}/{total} exams"),
            Self::Training {
                job,
                round,
                epoch,
                epochs,
                step,
                steps,
                eta_s,
            } => format!(
                "training {job} round {round}: epoch {epoch}/{epochs}, step {step}/{steps}{}",
                eta_s.map_or(String::new(), |s| format!(", ETA {}", duration(s)))
            ),
            Self::Uploading { job, round, bytes } => {
                format!("uploading {job} round {round}: {bytes} bytes")
            }
            Self::Error { reason } => format!("error: {reason}"),
        }
    }
}

/// Seconds as people say them: "45 s", "3 min", "2 h 5 min", "3 days".
pub fn duration(seconds: u64) -> String {
    match seconds {
        s if s < 90 => format!("{s} s"),
        s if s < 90 * 60 => format!("{} min", (s + 30) / 60),
        s if s < 48 * 3600 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        s => format!("{} days", s / 86_400),
    }
}

/// The agent's state plus who is reporting it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    #[serde(flatten)]
    pub activity: Activity,
    pub agent_version: String,
    /// The compute backend the agent trains on (`wgpu`, `ndarray`).
    pub device: String,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum HeartbeatError {
    #[error("heartbeat is {0} bytes (at most {MAX_HEARTBEAT_BYTES})")]
    TooLong(usize),
    #[error("heartbeat is not valid JSON: {0}")]
    Json(String),
    #[error("heartbeat field `{0}` is too long or not printable ASCII")]
    Text(&'static str),
    #[error("heartbeat job id is not a job id")]
    JobId,
    #[error("heartbeat counts do not add up: {0}")]
    Counts(&'static str),
}

/// `s` cut to `max` characters of printable ASCII (others become `?`), so
/// it fits a header and shows as it is anywhere.
pub fn printable(s: &str, max: usize) -> String {
    s.chars()
        .take(max)
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .collect()
}

fn check_text(s: &str, max: usize, field: &'static str) -> Result<(), HeartbeatError> {
    if s.len() <= max && s.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(HeartbeatError::Text(field))
    }
}

impl Heartbeat {
    /// A heartbeat whose strings are made to pass [`Heartbeat::check`].
    pub fn new(activity: Activity, agent_version: &str, device: &str) -> Self {
        let activity = match activity {
            Activity::Error { reason } => Activity::Error {
                reason: printable(&reason, MAX_REASON_LEN),
            },
            other => other,
        };
        Self {
            activity,
            agent_version: printable(agent_version, MAX_LABEL_LEN),
            device: printable(device, MAX_LABEL_LEN),
        }
    }

    /// The header value (JSON, printable ASCII by construction).
    pub fn to_header(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads and checks a header value from a site.
    pub fn parse(header: &str) -> Result<Self, HeartbeatError> {
        if header.len() > MAX_HEARTBEAT_BYTES {
            return Err(HeartbeatError::TooLong(header.len()));
        }
        let beat: Self =
            serde_json::from_str(header).map_err(|e| HeartbeatError::Json(e.to_string()))?;
        beat.check()?;
        Ok(beat)
    }

    /// Strings short and printable, ids well-formed, counts consistent.
    pub fn check(&self) -> Result<(), HeartbeatError> {
        check_text(&self.agent_version, MAX_LABEL_LEN, "agent_version")?;
        check_text(&self.device, MAX_LABEL_LEN, "device")?;
        match &self.activity {
            Activity::Idle => {}
            Activity::Preparing { done, total } => {
                if done > total {
                    return Err(HeartbeatError::Counts("more exams prepared than listed"));
                }
            }
            Activity::Training {
                job,
                round,
                epoch,
                epochs,
                step,
                steps,
                eta_s,
            } => {
                if !crate::protocol::is_job_id(job) {
                    return Err(HeartbeatError::JobId);
                }
                if *round == 0 || *epoch == 0 || epoch > epochs || step > steps {
                    return Err(HeartbeatError::Counts("round, epoch or step out of range"));
                }
                if eta_s.is_some_and(|s| s > MAX_ETA_S) {
                    return Err(HeartbeatError::Counts("ETA beyond a week"));
                }
            }
            Activity::Uploading { job, round, .. } => {
                if !crate::protocol::is_job_id(job) {
                    return Err(HeartbeatError::JobId);
                }
                if *round == 0 {
                    return Err(HeartbeatError::Counts("round 0"));
                }
            }
            Activity::Error { reason } => check_text(reason, MAX_REASON_LEN, "reason")?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn training() -> Activity {
        Activity::Training {
            job: "job-1".into(),
            round: 2,
            epoch: 1,
            epochs: 3,
            step: 10,
            steps: 40,
            eta_s: Some(45),
        }
    }

    #[test]
    fn a_heartbeat_survives_the_header_and_reads_as_sent() {
        for activity in [
            Activity::Idle,
            Activity::Preparing { done: 3, total: 12 },
            training(),
            Activity::Uploading {
                job: "job-1".into(),
                round: 2,
                bytes: 563_412,
            },
            Activity::Error {
                reason: "local training: out of memory → retry".into(),
            },
        ] {
            let beat = Heartbeat::new(activity, "0.1.0", "wgpu");
            let header = beat.to_header();
            assert!(axum_safe(&header), "not a valid header value: {header:?}");
            assert_eq!(Heartbeat::parse(&header), Ok(beat));
        }
        assert!(
            Heartbeat::new(training(), "0.1.0", "wgpu")
                .activity
                .describe()
                .contains("epoch 1/3, step 10/40, ETA 45 s")
        );
    }

    /// What an HTTP header value may hold without escaping.
    fn axum_safe(s: &str) -> bool {
        s.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
    }

    #[test]
    fn a_hostile_or_broken_heartbeat_is_refused() {
        let ok = Heartbeat::new(training(), "0.1.0", "wgpu");
        let with = |activity: Activity| {
            Heartbeat {
                activity,
                ..ok.clone()
            }
            .to_header()
        };
        let cases = [
            ("x".repeat(MAX_HEARTBEAT_BYTES + 1), "too long"),
            ("{\"state\":\"idle\"".to_string(), "truncated"),
            (
                "{\"state\":\"asleep\",\"agent_version\":\"1\",\"device\":\"x\"}".into(),
                "unknown state",
            ),
            (
                Heartbeat {
                    agent_version: "\u{1b}[2J".into(),
                    ..ok.clone()
                }
                .to_header(),
                "terminal escape",
            ),
            (
                Heartbeat {
                    device: "d".repeat(MAX_LABEL_LEN + 1),
                    ..ok.clone()
                }
                .to_header(),
                "long device",
            ),
            (
                with(Activity::Training {
                    job: "../../etc".into(),
                    round: 1,
                    epoch: 1,
                    epochs: 1,
                    step: 0,
                    steps: 1,
                    eta_s: None,
                }),
                "path as job id",
            ),
            (
                with(Activity::Training {
                    job: "job-1".into(),
                    round: 1,
                    epoch: 4,
                    epochs: 3,
                    step: 0,
                    steps: 1,
                    eta_s: None,
                }),
                "epoch past the last",
            ),
            (
                with(Activity::Training {
                    job: "job-1".into(),
                    round: 1,
                    epoch: 1,
                    epochs: 1,
                    step: 0,
                    steps: 1,
                    eta_s: Some(MAX_ETA_S + 1),
                }),
                "absurd ETA",
            ),
            (
                with(Activity::Preparing { done: 5, total: 4 }),
                "5 of 4 exams",
            ),
            (
                with(Activity::Error {
                    reason: "bad\nline".into(),
                }),
                "newline in reason",
            ),
        ];
        for (header, what) in cases {
            assert!(Heartbeat::parse(&header).is_err(), "{what}: {header}");
        }
        // The agent's constructor makes any reason pass.
        let cut = Heartbeat::new(
            Activity::Error {
                reason: "é\n".repeat(MAX_REASON_LEN),
            },
            "0.1.0",
            "wgpu",
        );
        assert!(Heartbeat::parse(&cut.to_header()).is_ok());
    }

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(duration(45), "45 s");
        assert_eq!(duration(180), "3 min");
        assert_eq!(duration(2 * 3600 + 5 * 60), "2 h 5 min");
        assert_eq!(duration(3 * 86_400), "3 days");
    }
}
