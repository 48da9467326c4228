//! Apple's "absolute time": the epoch of every date in chat.db.
//!
//! chat.db dates count from 2001-01-01 00:00:00 UTC, in nanoseconds since
//! macOS 10.13 and in whole seconds on rows written before it. The unit is told
//! apart per value by magnitude, as a row carried over from an old release may
//! sit beside new ones.

/// Seconds between the Unix epoch and 2001-01-01 00:00:00 UTC.
pub const APPLE_EPOCH_UNIX_SECS: i64 = 978_307_200;

/// Above this a date is in nanoseconds; below, in seconds. Any date after 2001
/// is below 1e10 as seconds and above 1e16 as nanoseconds (after 2001-04-26).
const NANOS_THRESHOLD: i64 = 100_000_000_000;

/// Unix milliseconds of a chat.db date, or `None` for 0/negative ("not set").
pub fn apple_to_unix_ms(value: i64) -> Option<i64> {
    if value <= 0 {
        return None;
    }
    let apple_ms = if value >= NANOS_THRESHOLD {
        value / 1_000_000
    } else {
        value.saturating_mul(1000)
    };
    Some(apple_ms + APPLE_EPOCH_UNIX_SECS * 1000)
}

/// The nanosecond chat.db date for a Unix time in nanoseconds.
pub fn unix_nanos_to_apple(unix_nanos: i128) -> i64 {
    let apple = unix_nanos - i128::from(APPLE_EPOCH_UNIX_SECS) * 1_000_000_000;
    i64::try_from(apple).unwrap_or(i64::MAX)
}

/// The current time as a nanosecond chat.db date.
pub fn now_apple_nanos() -> i64 {
    unix_nanos_to_apple(jiff::Timestamp::now().as_nanosecond())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_nanosecond_example_converts_to_its_utc_time() {
        // 674526582885055488 is 2022-05-18 00:29:42.885 UTC.
        let ms = apple_to_unix_ms(674_526_582_885_055_488).expect("set");
        let ts = jiff::Timestamp::from_millisecond(ms).expect("in range");
        assert_eq!(ts.to_string(), "2022-05-18T00:29:42.885Z");
    }

    #[test]
    fn second_valued_dates_from_old_releases_are_not_read_as_nanoseconds() {
        // 500000000 s after 2001 is 2016-11-05, not 2001-01-01.
        let ms = apple_to_unix_ms(500_000_000).expect("set");
        let ts = jiff::Timestamp::from_millisecond(ms).expect("in range");
        assert_eq!(ts.to_string(), "2016-11-05T00:53:20Z");
    }

    #[test]
    fn zero_means_not_set() {
        assert_eq!(apple_to_unix_ms(0), None);
    }

    #[test]
    fn now_round_trips_through_apple_time() {
        let now = jiff::Timestamp::now();
        let apple = unix_nanos_to_apple(now.as_nanosecond());
        let back = apple_to_unix_ms(apple).expect("set");
        assert_eq!(back, now.as_millisecond());
    }
}
