//! Text from outside (a site, a DICOM peer, an upload) on its way into the
//! audit log, the service log or a terminal (security review M4c and L3):
//! control characters are escaped, so a job name cannot forge a second log
//! line or drive the operator's terminal, and [`bounded`] also cuts the
//! length, so one refused request cannot write 64 KiB.

use std::borrow::Cow;

/// Longest audit detail kept, in characters.
pub const MAX_DETAIL_CHARS: usize = 1024;

/// Characters shown escaped: C0 and C1 controls and DEL (line breaks,
/// terminal escapes), the Unicode line and paragraph separators, and the
/// bidirectional overrides and isolates, which reorder what a reader sees.
fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
        )
}

fn push_escaped(out: &mut String, c: char) {
    if hidden(c) {
        out.extend(c.escape_default());
    } else {
        out.push(c);
    }
}

/// `text` with the characters that could forge a line or drive a terminal
/// escaped (`\n`, `\u{1b}`); borrowed when there are none.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(hidden) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        push_escaped(&mut out, c);
    }
    Cow::Owned(out)
}

/// `text` escaped as [`escape_controls`] does and cut to `max_chars`
/// characters, the cut marked with how much was dropped.
pub fn bounded(text: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_chars + 64));
    for (kept, (i, c)) in text.char_indices().enumerate() {
        if kept >= max_chars {
            out.push_str(&format!("… [truncated: {} more bytes]", text.len() - i));
            break;
        }
        push_escaped(&mut out, c);
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

    #[test]
    fn line_breaks_terminal_escapes_and_reordering_marks_are_shown_escaped() {
        for (raw, shown) in [
            ("a\r\nb", "a\\r\\nb"),
            ("bell\u{7}", "bell\\u{7}"),
            ("csi\u{9b}31m", "csi\\u{9b}31m"),
            ("del\u{7f}", "del\\u{7f}"),
            ("line\u{2028}sep", "line\\u{2028}sep"),
            ("rtl\u{202e}txt.exe", "rtl\\u{202e}txt.exe"),
            ("iso\u{2066}late", "iso\\u{2066}late"),
        ] {
            assert_eq!(escape_controls(raw), shown, "{raw:?}");
        }
        // Ordinary text and accented or non-Latin names pass untouched, uncopied.
        for plain in ["site-a", "Müller^Anna", "山田", "job-12 round 3"] {
            assert!(matches!(escape_controls(plain), Cow::Borrowed(p) if p == plain));
        }
    }
}
