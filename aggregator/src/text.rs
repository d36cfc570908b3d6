//! Site-controlled text on its way into the audit log and the service log
//! (security review M4c and L3): control characters are escaped, so a job
//! name cannot forge a second log line or drive the operator's terminal, and
//! the length is bounded, so one refused request cannot write 64 KiB.

/// Longest audit detail kept, in characters.
pub const MAX_DETAIL_CHARS: usize = 1024;

/// `text` with control characters escaped (`\n`, `\u{1b}`) and cut to
/// `max_chars` characters, the cut marked with how much was dropped.
pub fn bounded(text: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_chars + 64));
    for (kept, (i, c)) in text.char_indices().enumerate() {
        if kept >= max_chars {
            out.push_str(&format!("… [truncated: {} more bytes]", text.len() - i));
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_long_text_is_cut_with_a_marker() {
        let forged = "job-1\u{1b}[31mRED\u{1b}[0m\n2026 FAKE site_revoked site-b";
        let shown = bounded(forged, 200);
        assert!(!shown.chars().any(char::is_control), "{shown}");
        assert!(
            shown.contains("\\u{1b}[31m") && shown.contains("\\n2026"),
            "{shown}"
        );

        let long = "J".repeat(65_000);
        let shown = bounded(&long, MAX_DETAIL_CHARS);
        assert!(shown.len() < MAX_DETAIL_CHARS + 64, "{}", shown.len());
        assert!(shown.ends_with("[truncated: 63976 more bytes]"), "{shown}");
        assert_eq!(bounded("short", 10), "short");
    }
}
