//! RFC 3339 times in UTC, as stores write them in listings and metadata: parsed
//! strictly (a field out of range is no time at all) and formatted without a crate
//! for dates, since only UTC and whole fields are ever needed.

/// Days from 1970-01-01 to a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Days in month `m` of year `y`.
fn days_in_month(y: i64, m: i64) -> i64 {
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    match m {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Parses `2024-01-02T03:04:05.678Z` (Drive's `modifiedTime`, S3's `LastModified`,
/// Dropbox's `server_modified`) into seconds and nanoseconds. It is RFC 3339 in UTC,
/// each field its number of digits and within its range (a year of four digits, a day
/// its month has, no leap second), or None: a time the store cannot have meant is not
/// taken as some other one.
pub(crate) fn parse(s: &str) -> Option<(i64, u32)> {
    let field = |part: Option<&str>, digits: usize, range: std::ops::RangeInclusive<i64>| -> Option<i64> {
        let part = part.filter(|p| p.len() == digits && p.bytes().all(|b| b.is_ascii_digit()))?;
        let value: i64 = part.parse().ok()?;
        range.contains(&value).then_some(value)
    };
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-');
    let y = field(d.next(), 4, 0..=9999)?;
    let mo = field(d.next(), 2, 1..=12)?;
    let da = field(d.next(), 2, 1..=days_in_month(y, mo))?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.split(':');
    let (h, mi, se) = (field(t.next(), 2, 0..=23)?, field(t.next(), 2, 0..=59)?, field(t.next(), 2, 0..=59)?);
    if d.next().is_some() || t.next().is_some() || frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let nanos = if frac.is_empty() { 0 } else { format!("{frac:0<9}").parse().ok()? };
    // The fields' ranges keep this far from overflow; checked all the same.
    let secs = days_from_civil(y, mo, da).checked_mul(86_400)?.checked_add(h * 3600 + mi * 60 + se)?;
    Some((secs, nanos))
}

/// Formats seconds and nanoseconds to the millisecond, the way Drive takes `modifiedTime`.
pub(crate) fn format_millis((secs, nanos): (i64, u32)) -> String {
    let ((y, m, d), rem) = civil(secs);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem % 3600 / 60, rem % 60, nanos / 1_000_000)
}

/// Formats whole seconds, the way Dropbox writes its times (`2024-05-06T07:08:09Z`).
pub(crate) fn format_secs(secs: i64) -> String {
    let ((y, m, d), rem) = civil(secs);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// The civil date of a time, and the seconds into its day (Hinnant's algorithm).
fn civil(secs: i64) -> ((i64, i64, i64), i64) {
    let z = secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    ((yoe + era * 400 + i64::from(m <= 2), m, d), secs.rem_euclid(86_400))
}

/// Unix milliseconds of an RFC 3339 time.
pub(crate) fn parse_unix_ms(s: &str) -> Option<i64> {
    let (secs, nanos) = parse(s)?;
    secs.checked_mul(1000)?.checked_add(i64::from(nanos / 1_000_000))
}
