//! Device times: the range the server accepts from a pen, and arithmetic on
//! times a device controls that saturates instead of panicking.

use chrono::{DateTime, TimeDelta, Utc};

/// Earliest device time the server takes as given: 2000-01-01T00:00:00Z.
///
/// A pen's clock is only trusted inside `DEVICE_TIME_MIN..=DEVICE_TIME_MAX`.
/// No pen of this fleet ran before 2000, so an earlier time is garbage or an
/// unset clock, not a real reading; and keeping device times (and the
/// skew-corrected times derived from them, which move by at most the
/// distance to the receive time) within a few centuries of now keeps every
/// later step in range: chrono arithmetic, PostgreSQL `timestamptz`, SQLite's
/// `i64` microseconds, four-digit RFC 3339 years. A time outside the range
/// is replaced and flagged (`CLOCK_SKEW`), never refused.
pub const DEVICE_TIME_MIN: DateTime<Utc> = from_seconds(946_684_800);

/// Latest device time the server takes as given: 2200-01-01T00:00:00Z
/// (inclusive). See [`DEVICE_TIME_MIN`] for why there is a range at all.
pub const DEVICE_TIME_MAX: DateTime<Utc> = from_seconds(7_258_118_400);

const fn from_seconds(seconds: i64) -> DateTime<Utc> {
    match DateTime::from_timestamp(seconds, 0) {
        Some(t) => t,
        // Evaluated at compile time: a wrong constant does not build.
        None => panic!("device time bound out of chrono's range"),
    }
}

/// A wire time (`google.protobuf.Timestamp` seconds and nanos) as a device
/// time, or `None` when it is outside the accepted range or its nanos are
/// not in `0..1_000_000_000`.
pub fn device_time(seconds: i64, nanos: i32) -> Option<DateTime<Utc>> {
    let nanos = u32::try_from(nanos).ok().filter(|n| *n < 1_000_000_000)?;
    DateTime::from_timestamp(seconds, nanos).filter(|t| in_device_range(*t))
}

/// Whether `t` is inside `DEVICE_TIME_MIN..=DEVICE_TIME_MAX`.
pub fn in_device_range(t: DateTime<Utc>) -> bool {
    (DEVICE_TIME_MIN..=DEVICE_TIME_MAX).contains(&t)
}

/// `t + d`, held at chrono's limits instead of panicking.
pub fn shift(t: DateTime<Utc>, d: TimeDelta) -> DateTime<Utc> {
    t.checked_add_signed(d).unwrap_or(if d < TimeDelta::zero() {
        DateTime::<Utc>::MIN_UTC
    } else {
        DateTime::<Utc>::MAX_UTC
    })
}

/// `t` plus `ms` milliseconds (a sample offset), held at chrono's limits.
pub fn add_ms(t: DateTime<Utc>, ms: u32) -> DateTime<Utc> {
    // Any u32 of milliseconds is a valid TimeDelta (at most ~50 days).
    match TimeDelta::try_milliseconds(i64::from(ms)) {
        Some(d) => shift(t, d),
        None => DateTime::<Utc>::MAX_UTC,
    }
}

/// `later − earlier`; never overflows (chrono's whole range fits a TimeDelta).
pub fn since(later: DateTime<Utc>, earlier: DateTime<Utc>) -> TimeDelta {
    later.signed_duration_since(earlier)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use chrono::TimeZone;

    use super::*;

    #[test]
    fn bounds_are_the_documented_dates() {
        assert_eq!(
            DEVICE_TIME_MIN,
            Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).unwrap()
        );
        assert_eq!(
            DEVICE_TIME_MAX,
            Utc.with_ymd_and_hms(2200, 1, 1, 0, 0, 0).unwrap()
        );
    }

    #[test]
    fn wire_times_outside_the_range_or_with_bad_nanos_are_none() {
        let min = DEVICE_TIME_MIN.timestamp();
        let max = DEVICE_TIME_MAX.timestamp();
        assert_eq!(device_time(min, 0), Some(DEVICE_TIME_MIN));
        assert_eq!(device_time(max, 0), Some(DEVICE_TIME_MAX));
        assert_eq!(device_time(min - 1, 999_999_999), None);
        assert_eq!(device_time(max, 1), None);
        assert_eq!(device_time(1_800_000_000, -1), None);
        assert_eq!(device_time(1_800_000_000, 1_000_000_000), None);
        assert_eq!(device_time(-8_330_000_000_000, 0), None);
        assert_eq!(device_time(i64::MIN, i32::MIN), None);
        assert_eq!(device_time(i64::MAX, i32::MAX), None);
        assert!(device_time(1_800_000_000, 999_999_999).is_some());
    }

    #[test]
    fn arithmetic_saturates_at_chronos_limits() {
        let max = DateTime::<Utc>::MAX_UTC;
        let min = DateTime::<Utc>::MIN_UTC;
        assert_eq!(add_ms(max, u32::MAX), max);
        assert_eq!(shift(min, TimeDelta::MIN), min);
        assert_eq!(shift(max, TimeDelta::MAX), max);
        assert_eq!(shift(max, since(min, max)), min);
        assert_eq!(
            add_ms(DEVICE_TIME_MIN, 1500),
            DEVICE_TIME_MIN + TimeDelta::milliseconds(1500)
        );
    }
}
