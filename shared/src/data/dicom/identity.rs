//! Header identifiers that must never reach a log line, a report or an update.
//!
//! The readers need StudyInstanceUID, SeriesInstanceUID and PatientID to group
//! files, but DESIGN.md §3 forbids anything derived from them leaving the site.
//! Wrapping them in a type whose `Debug` and `Display` print a placeholder makes
//! an accidental `{:?}` of a whole struct safe; reading the value takes an
//! explicit, greppable call to [`Identifier::reveal`].

use std::fmt;

/// A patient or study identifier read from a header.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Identifier(String);

impl Identifier {
    pub(crate) fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The raw value, for local-only use (grouping, a verbose listing the
    /// operator explicitly asked for). Never log or transmit it.
    pub fn reveal(&self) -> &str {
        &self.0
    }

    /// Whether the header had no value for this identifier.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Identifier(<redacted>)")
    }
}

impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A stable, non-reversible name for a series, safe to print in logs and
/// reports: the first 12 hex digits of a SHA-256 over its study and series UIDs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey(String);

impl SeriesKey {
    pub(crate) fn digest(study: &Identifier, series: &Identifier) -> Self {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(b"fedslice-series-v1\0");
        h.update(study.reveal().as_bytes());
        h.update([0u8]);
        h.update(series.reveal().as_bytes());
        let out = h.finalize();
        let hex: String = out.iter().take(6).map(|b| format!("{b:02x}")).collect();
        Self(hex)
    }

    /// The key a scan gives the series with these (trimmed) UIDs: for a
    /// receiver that files instances as they arrive, before any scan.
    pub fn of_uids(study_instance_uid: &str, series_instance_uid: &str) -> Self {
        Self::digest(
            &Identifier::new(study_instance_uid),
            &Identifier::new(series_instance_uid),
        )
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SeriesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_redact() {
        let id = Identifier::new("1.2.840.99999.12345");
        assert!(!format!("{id:?}").contains("12345"));
        assert!(!format!("{id}").contains("12345"));
        assert_eq!(id.reveal(), "1.2.840.99999.12345");
    }

    #[test]
    fn series_key_is_stable_and_short() {
        let a = SeriesKey::digest(&Identifier::new("1.2"), &Identifier::new("3.4"));
        let b = SeriesKey::digest(&Identifier::new("1.2"), &Identifier::new("3.4"));
        let c = SeriesKey::digest(&Identifier::new("1.2"), &Identifier::new("3.5"));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.as_str().len(), 12);
    }
}
