//! RFC 3339 timestamps as Drive writes them (`2026-11-02T10:00:00.000Z`, UTC, milliseconds),
//! without a date-time dependency: the civil-from-days conversion is a dozen lines.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::time::{civil_from_days, days_from_civil};

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> i64 {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).expect("the clock is after 1970");
    i64::try_from(d.as_millis()).expect("before the year 292 million")
}

/// `ms` since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub(crate) fn format_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let milli = ms.rem_euclid(1000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{milli:03}Z", sod / 3600, sod / 60 % 60, sod % 60)
}

/// Parses an RFC 3339 date-time (`Z` or a `±HH:MM` offset, any fraction digits, of
/// which milliseconds are kept). None when it is not one.
pub(crate) fn parse(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        if t.bytes().all(|c| c.is_ascii_digit()) {
            t.parse().ok()
        } else {
            None
        }
    };
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut milli = 0i64;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
        let frac = &s[start..i.min(start + 3)];
        milli = frac.parse::<i64>().ok()? * 10i64.pow(3 - u32::try_from(frac.len()).expect("at most 3"));
    }
    let offset_s = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if i + 6 == b.len() && b[i + 3] == b':' => {
            let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            let v = oh * 3600 + om * 60;
            if *sign == b'+' {
                v
            } else {
                -v
            }
        }
        _ => return None,
    };
    let days = days_from_civil(y, u32::try_from(mo).ok()?, u32::try_from(d).ok()?);
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_s;
    Some(secs * 1000 + milli)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_offsets() {
        assert_eq!(format_ms(0), "1970-01-01T00:00:00.000Z");
        let t = parse("2026-11-02T10:11:12.345Z").unwrap();
        assert_eq!(format_ms(t), "2026-11-02T10:11:12.345Z");
        assert_eq!(parse("2026-11-02T12:11:12.345+02:00"), Some(t));
        assert_eq!(parse("2026-11-02T10:11:12.3456789Z"), Some(t));
        assert_eq!(parse("2000-02-29T00:00:00Z").map(format_ms).as_deref(), Some("2000-02-29T00:00:00.000Z"));
        for bad in ["", "2026-11-02", "2026-13-02T00:00:00Z", "2026-11-02T00:00:00", "2026-11-02T00:00:00.Z"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
