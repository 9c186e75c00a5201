//! Timestamps in the one RFC 3339 shape inventories hold, read and written
//! without the general parser.
//!
//! jiff reads and writes every RFC 3339 form. An inventory of a million
//! snapshots holds a million timestamps of one shape (`2024-01-31T02:00:00Z`,
//! or with milliseconds as EC2 gives them, `2024-01-31T02:00:00.123Z`), and
//! jiff's general parser and formatter showed in `snap plan`'s profile.
//! These functions handle that shape themselves and hand anything else to
//! jiff, so every value and every error is jiff's.
//!
//! For `#[serde(with = "ec2kit::rfc3339")]` on a [`jiff::Timestamp`].

use jiff::Timestamp;
use serde::{Deserializer, Serializer};

/// Writes `t` as jiff does (`2024-01-31T02:00:00Z`).
pub fn serialize<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
    let mut buf = [0u8; 20];
    match format_whole_seconds(*t, &mut buf) {
        Some(text) => s.serialize_str(text),
        None => s.collect_str(t),
    }
}

/// Reads a timestamp as jiff does, its errors included.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
    d.deserialize_str(Visitor)
}

struct Visitor;

impl serde::de::Visitor<'_> for Visitor {
    type Value = Timestamp;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a timestamp string")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Timestamp, E> {
        match parse_utc(v.as_bytes()) {
            Some(t) => Ok(t),
            None => v.parse().map_err(E::custom),
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` or `YYYY-MM-DDTHH:MM:SS.mmmZ`, each field in its
/// range; `None` for anything else (jiff decides those).
fn parse_utc(b: &[u8]) -> Option<Timestamp> {
    let millis = match b.len() {
        20 => 0,
        24 if b[19] == b'.' => digits(&b[20..23])?,
        _ => return None,
    };
    let shape = b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[b.len() - 1] == b'Z';
    if !shape {
        return None;
    }
    let (year, month, day) = (digits(&b[0..4])?, digits(&b[5..7])?, digits(&b[8..10])?);
    let (hour, minute, second) = (
        digits(&b[11..13])?,
        digits(&b[14..16])?,
        digits(&b[17..19])?,
    );
    if !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second;
    Timestamp::new(seconds, i32::try_from(millis * 1_000_000).ok()?).ok()
}

/// The value of ASCII digits; `None` if any byte is not one.
fn digits(b: &[u8]) -> Option<i64> {
    b.iter().try_fold(0i64, |n, &c| {
        c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0'))
    })
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day since 1970-01-01 (Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `t` as `YYYY-MM-DDTHH:MM:SSZ` in `buf`, when it has no fraction of a
/// second and a four-digit year; `None` otherwise (jiff writes those).
fn format_whole_seconds(t: Timestamp, buf: &mut [u8; 20]) -> Option<&str> {
    if t.subsec_nanosecond() != 0 {
        return None;
    }
    let seconds = t.as_second();
    let (year, month, day) = civil_from_days(seconds.div_euclid(86_400));
    if !(0..=9999).contains(&year) {
        return None;
    }
    let of_day = seconds.rem_euclid(86_400);
    let fields = [
        (0, 4, year),
        (5, 2, month),
        (8, 2, day),
        (11, 2, of_day / 3_600),
        (14, 2, of_day / 60 % 60),
        (17, 2, of_day % 60),
    ];
    buf.copy_from_slice(b"0000-00-00T00:00:00Z");
    for (at, width, mut value) in fields {
        for i in (at..at + width).rev() {
            buf[i] = b'0' + u8::try_from(value % 10).ok()?;
            value /= 10;
        }
    }
    std::str::from_utf8(buf).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Fast(#[serde(with = "super")] Timestamp);

    fn jiff_read(text: &str) -> Result<Timestamp, String> {
        serde_json::from_str::<Timestamp>(text).map_err(|e| e.to_string())
    }

    fn fast_read(text: &str) -> Result<Timestamp, String> {
        serde_json::from_str::<Fast>(text)
            .map(|f| f.0)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn edge_dates_read_and_write_as_jiff_does() {
        for text in [
            "0000-01-01T00:00:00Z",
            "0000-02-29T00:00:00Z",
            "1900-02-29T00:00:00Z",
            "2000-02-29T23:59:59Z",
            "2024-02-30T00:00:00Z",
            "2024-12-31T23:59:60Z",
            "2024-13-01T00:00:00Z",
            "2024-01-01T24:00:00Z",
            "2024-01-01t02:00:00z",
            "2024-01-01T02:00:00.123Z",
            "2024-01-01T02:00:00.12Z",
            "2024-01-01T02:00:00+00:00",
            "9999-12-31T23:59:59Z",
            "1969-12-31T23:59:59Z",
            "1969-12-31T23:59:59.500Z",
            "2024-01-01T02:00:00.1x3Z",
        ] {
            let json = format!("\"{text}\"");
            assert_eq!(fast_read(&json), jiff_read(&json), "{text}");
            if let Ok(t) = jiff_read(&json) {
                assert_eq!(
                    serde_json::to_string(&Fast(t)).unwrap(),
                    serde_json::to_string(&t).unwrap()
                );
            }
        }
    }

    proptest! {
        /// Any instant jiff can hold is written as jiff writes it and read
        /// back as jiff reads it.
        #[test]
        fn any_instant_round_trips_as_jiffs(
            seconds in Timestamp::MIN.as_second()..=Timestamp::MAX.as_second(),
            nanos in prop_oneof![Just(0i32), Just(123_000_000), 0i32..1_000_000_000],
        ) {
            let Ok(t) = Timestamp::new(seconds, nanos) else { return Ok(()) };
            let fast = serde_json::to_string(&Fast(t)).unwrap();
            prop_assert_eq!(&fast, &serde_json::to_string(&t).unwrap());
            prop_assert_eq!(fast_read(&fast), jiff_read(&fast));
        }

        /// Any text of the fast path's length and alphabet reads as jiff
        /// reads it, errors included.
        #[test]
        fn any_text_reads_as_jiff_reads_it(text in "[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{3})?[Zz]?") {
            let json = format!("\"{text}\"");
            prop_assert_eq!(fast_read(&json), jiff_read(&json));
        }
    }
}
