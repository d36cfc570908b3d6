//! Whether a text value may be written under its value representation
//! (PS3.5 6.2): length, one value only, allowed characters, and for dates,
//! times and UIDs their syntax. Values read from outside headers pass
//! through here before fedslice writes them into a DICOM object of its own,
//! so a hostile or broken input cannot make fedslice's output invalid.
//!
//! Lengths count characters, as PS3.5 does for the text VRs; fedslice
//! writes UTF-8 (ISO_IR 192) whenever a value is not ASCII.

use dicom_core::VR;

/// Why a value cannot be written under its VR. The value itself is never
/// part of the message: header values are patient data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidValue {
    #[error("{chars} characters, more than the {max} {vr:?} allows")]
    TooLong { vr: VR, chars: usize, max: usize },
    #[error("several values (separated by `\\`) where one is allowed")]
    SeveralValues,
    #[error("control character U+{0:04X}")]
    Control(u32),
    #[error("character U+{code:04X} is not allowed in {vr:?}")]
    Character { vr: VR, code: u32 },
    #[error("not a date of the form YYYYMMDD")]
    Date,
    #[error("not a time of the form HH[MM[SS[.FFFFFF]]]")]
    Time,
    #[error("not a UID (digits in dot-separated components, no leading zeros, at most 64)")]
    Uid,
    #[error("a person name holds at most 3 component groups of 5 components")]
    NameStructure,
    #[error("{0:?} is not one of the values the attribute allows")]
    NotEnumerated(String),
    #[error("fedslice does not check {0:?} values")]
    Unchecked(VR),
}

/// Checks `value` (trailing padding already removed) as one value of `vr`.
/// Handles the VRs fedslice copies from input headers: PN, LO, SH, CS, DA,
/// TM and UI; any other VR is refused as [`InvalidValue::Unchecked`] rather
/// than passed unexamined.
pub fn check(vr: VR, value: &str) -> Result<(), InvalidValue> {
    match vr {
        VR::SH => text(vr, value, 16),
        VR::LO => text(vr, value, 64),
        VR::PN => person_name(value),
        VR::CS => code_string(value),
        VR::DA => date(value),
        VR::TM => time_of_day(value),
        VR::UI => uid(value),
        other => Err(InvalidValue::Unchecked(other)),
    }
}

/// `value` when it is one of `allowed` (a Code String with enumerated values).
pub fn check_enumerated(value: &str, allowed: &[&str]) -> Result<(), InvalidValue> {
    code_string(value)?;
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(InvalidValue::NotEnumerated(value.to_owned()))
    }
}

fn max_chars(vr: VR, value: &str, max: usize) -> Result<(), InvalidValue> {
    let chars = value.chars().count();
    if chars > max {
        return Err(InvalidValue::TooLong { vr, chars, max });
    }
    Ok(())
}

/// SH, LO and one PN group: any character of the repertoire but controls.
/// ESC is refused too: it only switches ISO 2022 character sets, and
/// fedslice writes UTF-8, where it would be a bare terminal escape.
fn text(vr: VR, value: &str, max: usize) -> Result<(), InvalidValue> {
    max_chars(vr, value, max)?;
    for c in value.chars() {
        if c == '\\' {
            return Err(InvalidValue::SeveralValues);
        }
        if c.is_control() {
            return Err(InvalidValue::Control(u32::from(c)));
        }
    }
    Ok(())
}

fn person_name(value: &str) -> Result<(), InvalidValue> {
    let groups: Vec<&str> = value.split('=').collect();
    if groups.len() > 3 || groups.iter().any(|g| g.split('^').count() > 5) {
        return Err(InvalidValue::NameStructure);
    }
    for group in groups {
        text(VR::PN, group, 64)?;
    }
    Ok(())
}

fn code_string(value: &str) -> Result<(), InvalidValue> {
    max_chars(VR::CS, value, 16)?;
    for c in value.chars() {
        if c == '\\' {
            return Err(InvalidValue::SeveralValues);
        }
        if !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == ' ' || c == '_') {
            return Err(InvalidValue::Character {
                vr: VR::CS,
                code: u32::from(c),
            });
        }
    }
    Ok(())
}

fn digits(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// YYYYMMDD naming a day that exists.
fn date(value: &str) -> Result<(), InvalidValue> {
    if value.len() != 8 || !value.is_ascii() {
        return Err(InvalidValue::Date);
    }
    let (y, m, d) = (
        digits(&value[..4]),
        digits(&value[4..6]),
        digits(&value[6..]),
    );
    let (Some(y), Some(m), Some(d)) = (y, m, d) else {
        return Err(InvalidValue::Date);
    };
    let month = u8::try_from(m)
        .ok()
        .and_then(|m| time::Month::try_from(m).ok());
    let real = month.is_some_and(|month| {
        y >= 1
            && u8::try_from(d)
                .is_ok_and(|d| time::Date::from_calendar_date(y as i32, month, d).is_ok())
    });
    if real {
        Ok(())
    } else {
        Err(InvalidValue::Date)
    }
}

/// HH, HHMM, HHMMSS or HHMMSS.F to HHMMSS.FFFFFF (seconds up to 60: a leap second).
fn time_of_day(value: &str) -> Result<(), InvalidValue> {
    if !value.is_ascii() {
        return Err(InvalidValue::Time);
    }
    let (whole, fraction) = match value.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (value, None),
    };
    let field = |i: usize, max: u32| digits(&whole[i..i + 2]).is_some_and(|v| v <= max);
    let ok = match whole.len() {
        2 => field(0, 23),
        4 => field(0, 23) && field(2, 59),
        6 => field(0, 23) && field(2, 59) && field(4, 60),
        _ => false,
    };
    let fraction_ok = match fraction {
        None => true,
        Some(f) => whole.len() == 6 && (1..=6).contains(&f.len()) && digits(f).is_some(),
    };
    if ok && fraction_ok {
        Ok(())
    } else {
        Err(InvalidValue::Time)
    }
}

/// PS3.5 9.1: components of digits, none empty, none with a leading zero
/// unless it is `0` itself, 64 characters at most.
pub fn uid(value: &str) -> Result<(), InvalidValue> {
    let valid = !value.is_empty()
        && value.len() <= 64
        && value.split('.').all(|c| {
            !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_digit())
                && (c == "0" || !c.starts_with('0'))
        });
    if valid {
        Ok(())
    } else {
        Err(InvalidValue::Uid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_strings_refuse_over_long_several_values_and_controls() {
        assert_eq!(check(VR::SH, "ACC-0001"), Ok(()));
        assert_eq!(check(VR::SH, &"A".repeat(16)), Ok(()));
        assert_eq!(
            check(VR::SH, &"A".repeat(17)),
            Err(InvalidValue::TooLong {
                vr: VR::SH,
                chars: 17,
                max: 16
            })
        );
        assert_eq!(
            check(VR::LO, &"é".repeat(64)),
            Ok(()),
            "characters, not bytes"
        );
        assert!(matches!(
            check(VR::LO, &"x".repeat(65)),
            Err(InvalidValue::TooLong { max: 64, .. })
        ));
        assert_eq!(
            check(VR::LO, "ID-1\\SECOND-ID"),
            Err(InvalidValue::SeveralValues)
        );
        assert_eq!(check(VR::LO, "knee\nMRI"), Err(InvalidValue::Control(0x0A)));
        assert_eq!(check(VR::SH, "a\rb"), Err(InvalidValue::Control(0x0D)));
        assert_eq!(
            check(VR::LO, "\u{1b}[31m"),
            Err(InvalidValue::Control(0x1B))
        );
        assert_eq!(check(VR::LO, "a\u{85}b"), Err(InvalidValue::Control(0x85)));
        assert_eq!(check(VR::LO, ""), Ok(()));
    }

    #[test]
    fn person_names_are_checked_per_group_and_structure() {
        assert_eq!(check(VR::PN, "Müller^Anna^^Dr"), Ok(()));
        assert_eq!(
            check(VR::PN, "Yamada^Tarou=山田^太郎=やまだ^たろう"),
            Ok(())
        );
        let group = "N".repeat(64);
        assert_eq!(check(VR::PN, &format!("{group}={group}")), Ok(()));
        assert!(matches!(
            check(VR::PN, &"N".repeat(65)),
            Err(InvalidValue::TooLong { vr: VR::PN, .. })
        ));
        assert_eq!(check(VR::PN, "a=b=c=d"), Err(InvalidValue::NameStructure));
        assert_eq!(
            check(VR::PN, "a^b^c^d^e^f"),
            Err(InvalidValue::NameStructure)
        );
        assert_eq!(
            check(VR::PN, "Evil^Name\u{1b}[31m\r\nFAKE: injected line"),
            Err(InvalidValue::Control(0x1B))
        );
        assert_eq!(check(VR::PN, "A^B\\C^D"), Err(InvalidValue::SeveralValues));
    }

    #[test]
    fn code_strings_take_upper_case_digits_space_and_underscore() {
        assert_eq!(check(VR::CS, "ISO_IR 192"), Ok(()));
        assert_eq!(
            check(VR::CS, "m"),
            Err(InvalidValue::Character {
                vr: VR::CS,
                code: u32::from('m')
            })
        );
        assert!(matches!(
            check(VR::CS, "not-a-code-string-at-all"),
            Err(InvalidValue::TooLong { .. })
        ));
        assert_eq!(check_enumerated("F", &["M", "F", "O"]), Ok(()));
        assert_eq!(
            check_enumerated("X", &["M", "F", "O"]),
            Err(InvalidValue::NotEnumerated("X".into()))
        );
        assert!(check_enumerated("f", &["M", "F", "O"]).is_err());
    }

    #[test]
    fn dates_must_name_a_real_day() {
        assert_eq!(check(VR::DA, "20240229"), Ok(()));
        for bad in [
            "yesterday",
            "20230229",
            "20241301",
            "20240100",
            "2024-01-01",
            "2024010",
            "00000101",
            "+2024010",
            "２０２４０１０１",
        ] {
            assert_eq!(check(VR::DA, bad), Err(InvalidValue::Date), "{bad}");
        }
    }

    #[test]
    fn times_allow_partial_forms_and_a_leap_second() {
        for good in [
            "07",
            "0730",
            "073015",
            "235960",
            "073015.5",
            "073015.123456",
        ] {
            assert_eq!(check(VR::TM, good), Ok(()), "{good}");
        }
        for bad in [
            "25:61:99.xyz",
            "24",
            "0760",
            "073061",
            "073",
            "073015.",
            "073015.1234567",
            "0730.5",
            "07:30:15",
            "０７",
        ] {
            assert_eq!(check(VR::TM, bad), Err(InvalidValue::Time), "{bad}");
        }
    }

    #[test]
    fn uids_are_dotted_digits_without_leading_zeros_up_to_64() {
        assert_eq!(check(VR::UI, "1.2.840.10008.5.1.4.1.1.4"), Ok(()));
        assert_eq!(check(VR::UI, "1.0.3"), Ok(()));
        let max = format!("1.{}", "2".repeat(62));
        assert_eq!(check(VR::UI, &max), Ok(()));
        for bad in [
            "1.2.3.abc/../../x",
            "1.02.3",
            "1..2",
            ".1.2",
            "1.2.",
            "",
            "1.2.3 ",
        ] {
            assert_eq!(check(VR::UI, bad), Err(InvalidValue::Uid), "{bad:?}");
        }
        assert_eq!(
            check(VR::UI, &format!("{max}3")),
            Err(InvalidValue::Uid),
            "65 characters"
        );
    }

    #[test]
    fn other_value_representations_are_not_passed_unexamined() {
        assert_eq!(check(VR::UT, "x"), Err(InvalidValue::Unchecked(VR::UT)));
    }
}
