//! RFC 3339 timestamps in UTC for the payload log (`2026-12-02T13:14:00.123456Z`), from the
//! system clock, without a date-time dependency: the civil date comes from the day count by
//! Howard Hinnant's `civil_from_days` (proleptic Gregorian calendar).

use std::time::{SystemTime, UNIX_EPOCH};

/// `t` as RFC 3339 UTC with microseconds. Times before 1970 print as the epoch.
pub fn rfc3339_utc(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        d.subsec_micros()
    )
}

/// Year, month (1-12) and day (1-31) of the day `z` days after 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn formats_known_instants() {
        let at = |s: u64, us: u32| {
            rfc3339_utc(UNIX_EPOCH + Duration::from_secs(s) + Duration::from_micros(us.into()))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        // `date -u -d @951782400`: 2000-02-29 00:00:00 (a leap day of a century leap year).
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.000005Z");
        // `date -u -d @1796217283`: 2026-12-02 13:14:43.
        assert_eq!(at(1_796_217_283, 999_999), "2026-12-02T13:14:43.999999Z");
        // The last second of a non-leap year: `date -u -d @4133980799` is 2100-12-31 23:59:59.
        assert_eq!(at(4_133_980_799, 0), "2100-12-31T23:59:59.000000Z");
        assert_eq!(
            rfc3339_utc(UNIX_EPOCH - Duration::from_secs(1)),
            "1970-01-01T00:00:00.000000Z"
        );
    }
}
