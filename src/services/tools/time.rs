//! The `current_time` tool: the server's clock in UTC or at a fixed offset from it.
//!
//! There is no time-zone database here, so only `UTC` (also `Z`, `GMT`) and fixed offsets
//! are understood: `+02:00`, `-0530`, `+2`, `UTC+2`, `GMT-03:30`. A named zone such as
//! `Europe/Paris` is refused with an error that says what to write instead, so the model can
//! retry with an offset it knows.

use chrono::{DateTime, FixedOffset, Utc};

use super::ToolError;

/// The largest offset from UTC in use anywhere (Kiribati, UTC+14); anything beyond is a
/// mistake, not a place.
const MAX_OFFSET_MINUTES: i32 = 14 * 60;

/// `now` in `timezone` (UTC when `None` or blank), as the tool message: RFC 3339 to the
/// second, then the weekday and the zone, e.g.
/// `2026-11-26T21:16:47+02:00 (Thursday, UTC+02:00)`.
pub fn current_time(now: DateTime<Utc>, timezone: Option<&str>) -> Result<String, ToolError> {
    let offset = parse_timezone(timezone.unwrap_or(""))?;
    let local = now.with_timezone(&offset);
    Ok(format!(
        "{} ({}, {})",
        local.format("%Y-%m-%dT%H:%M:%S%:z"),
        local.format("%A"),
        zone_label(offset)
    ))
}

/// `UTC`, or `UTC±HH:MM` for any other offset.
fn zone_label(offset: FixedOffset) -> String {
    let seconds = offset.local_minus_utc();
    if seconds == 0 {
        return "UTC".to_owned();
    }
    let sign = if seconds < 0 { '-' } else { '+' };
    let minutes = seconds.unsigned_abs() / 60;
    format!("UTC{sign}{:02}:{:02}", minutes / 60, minutes % 60)
}

/// Reads a time zone the tool understands: blank, `UTC`/`Z`/`GMT`, or a signed offset, bare
/// or after `UTC`/`GMT`.
pub fn parse_timezone(text: &str) -> Result<FixedOffset, ToolError> {
    let unknown = || ToolError::UnknownTimezone {
        given: text.to_owned(),
    };
    let trimmed = text.trim();
    let upper = trimmed.to_ascii_uppercase();
    if upper.is_empty() || matches!(upper.as_str(), "UTC" | "Z" | "GMT" | "UT") {
        return Ok(utc());
    }
    let offset = upper
        .strip_prefix("UTC")
        .or_else(|| upper.strip_prefix("GMT"))
        .unwrap_or(&upper)
        .trim_start();
    let minutes = parse_offset(offset).ok_or_else(unknown)?;
    if minutes.abs() > MAX_OFFSET_MINUTES {
        return Err(ToolError::OffsetOutOfRange {
            given: text.to_owned(),
        });
    }
    FixedOffset::east_opt(minutes * 60).ok_or_else(unknown)
}

fn utc() -> FixedOffset {
    FixedOffset::east_opt(0).unwrap_or_else(|| unreachable!("a zero offset is valid"))
}

/// `±H`, `±HH`, `±HH:MM`, `±HHMM` (also with `−`) as signed minutes.
fn parse_offset(text: &str) -> Option<i32> {
    let (sign, rest) = if let Some(rest) = text.strip_prefix('+') {
        (1, rest)
    } else if let Some(rest) = text.strip_prefix('-').or_else(|| text.strip_prefix('−')) {
        (-1, rest)
    } else {
        return None;
    };
    let all_digits =
        |s: &str| !s.is_empty() && s.len() <= 2 && s.bytes().all(|b| b.is_ascii_digit());
    let (hours, minutes) = match rest.split_once(':') {
        Some((h, m)) if all_digits(h) && m.len() == 2 && all_digits(m) => (h, m),
        Some(_) => return None,
        None if rest.len() == 4 && rest.bytes().all(|b| b.is_ascii_digit()) => rest.split_at(2),
        None if all_digits(rest) => (rest, "0"),
        None => return None,
    };
    let hours: i32 = hours.parse().ok()?;
    let minutes: i32 = minutes.parse().ok()?;
    if minutes >= 60 {
        return None;
    }
    Some(sign * (hours * 60 + minutes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn fixed_now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 26, 23, 16, 47)
            .single()
            .expect("valid time")
    }

    #[test]
    fn utc_by_default_and_by_name() {
        for zone in [
            None,
            Some(""),
            Some("UTC"),
            Some("utc"),
            Some(" Z "),
            Some("GMT"),
        ] {
            assert_eq!(
                current_time(fixed_now(), zone).expect("time"),
                "2026-11-26T23:16:47+00:00 (Thursday, UTC)",
                "{zone:?}"
            );
        }
    }

    #[test]
    fn fixed_offsets_move_the_clock_and_the_day() {
        for (zone, expected) in [
            ("+02:00", "2026-11-27T01:16:47+02:00 (Friday, UTC+02:00)"),
            ("UTC+2", "2026-11-27T01:16:47+02:00 (Friday, UTC+02:00)"),
            ("utc+02", "2026-11-27T01:16:47+02:00 (Friday, UTC+02:00)"),
            (
                "GMT-0530",
                "2026-11-26T17:46:47-05:30 (Thursday, UTC-05:30)",
            ),
            ("-5:30", "2026-11-26T17:46:47-05:30 (Thursday, UTC-05:30)"),
            ("UTC −3", "2026-11-26T20:16:47-03:00 (Thursday, UTC-03:00)"),
            ("+14:00", "2026-11-27T13:16:47+14:00 (Friday, UTC+14:00)"),
            ("+00:00", "2026-11-26T23:16:47+00:00 (Thursday, UTC)"),
        ] {
            assert_eq!(
                current_time(fixed_now(), Some(zone)).expect(zone),
                expected,
                "{zone}"
            );
        }
    }

    #[test]
    fn named_zones_and_bad_offsets_are_refused_clearly() {
        for zone in [
            "Europe/Paris",
            "CET",
            "+2:5",
            "+123",
            "UTC+",
            "2",
            "+02:60",
            "+ab",
        ] {
            let err = current_time(fixed_now(), Some(zone)).expect_err(zone);
            assert!(
                matches!(&err, ToolError::UnknownTimezone { given } if given == zone),
                "{zone}: {err}"
            );
            let message = err.to_string();
            assert!(message.contains("no time-zone database"), "{message}");
            assert!(message.contains("+02:00"), "{message}");
        }
        for zone in ["+15", "UTC-14:30"] {
            let err = current_time(fixed_now(), Some(zone)).expect_err(zone);
            assert!(
                matches!(err, ToolError::OffsetOutOfRange { .. }),
                "{zone}: {err}"
            );
        }
    }
}
