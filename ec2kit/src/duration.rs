//! Durations as people write them: `90s`, `15m`, `2h`, `7d`, `1h30m`.
//!
//! One parser and one convention for every duration ektool takes, on the
//! command line and in the config file, so `--wait-timeout 10` can never mean
//! minutes on one command and seconds on another: a bare number is refused
//! with a hint to add a unit. Units are `ms`, `s`, `m` (minutes), `h`, `d`
//! (24 hours) and `w`; calendar units (months, years) are refused because
//! their length depends on the date. The grammar is jiff's "friendly"
//! format, so `1h 30m`, `90 seconds` and ISO 8601 `PT1H30M` are read too.
//!
//! Restic's `--keep-within` keeps its own meaning (`m` = months there); that
//! flag is parsed by snapkit's `GfsDuration`, not here.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest duration any ektool setting accepts: 100 years of 365.25
/// days. Longer values are almost certainly typos, and bounding them keeps
/// every `Instant + duration` and timestamp subtraction representable.
pub const MAX: Duration = Duration::from_secs(100 * 36_525 * 864);

/// Why a duration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidDuration {
    /// The text was empty.
    #[error("empty duration: write it with a unit, e.g. 90s, 15m, 2h or 7d")]
    Empty,
    /// A number without a unit.
    #[error("`{0}` has no unit: write {0}s, {0}m, {0}h or {0}d")]
    NoUnit(String),
    /// Below zero.
    #[error("`{0}` is negative")]
    Negative(String),
    /// Months or years, whose length depends on the date.
    #[error("`{0}` uses months or years, whose length varies: use days (d) or weeks (w)")]
    Calendar(String),
    /// Longer than [`MAX`] or outside the range a setting allows.
    #[error("`{text}` is out of range: {range}")]
    OutOfRange {
        /// What was given.
        text: String,
        /// The allowed range, for people.
        range: String,
    },
    /// Not a duration at all.
    #[error("`{0}` is not a duration: write e.g. 90s, 15m, 2h, 7d or 1h30m")]
    Syntax(String),
}

/// Parses a duration (see the module docs). At most [`MAX`].
///
/// ```
/// use std::time::Duration;
/// assert_eq!(ec2kit::duration::parse("1h30m")?, Duration::from_secs(5400));
/// assert_eq!(ec2kit::duration::parse("7d")?, Duration::from_secs(7 * 86_400));
/// assert!(ec2kit::duration::parse("90").is_err()); // no unit
/// # Ok::<(), ec2kit::duration::InvalidDuration>(())
/// ```
pub fn parse(text: &str) -> Result<Duration, InvalidDuration> {
    let s = text.trim();
    // Errors quote the input; never echo megabytes of it back.
    let shown = || shorten(s);
    if s.is_empty() {
        return Err(InvalidDuration::Empty);
    }
    if s.len() > 64 {
        return Err(InvalidDuration::Syntax(shown()));
    }
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        if s.starts_with('-') {
            return Err(InvalidDuration::Negative(shown()));
        }
        return Err(InvalidDuration::NoUnit(digits.to_owned()));
    }
    let span: jiff::Span = s.parse().map_err(|_| InvalidDuration::Syntax(shown()))?;
    if span.is_negative() {
        return Err(InvalidDuration::Negative(shown()));
    }
    if span.get_years() != 0 || span.get_months() != 0 {
        return Err(InvalidDuration::Calendar(shown()));
    }
    let signed = span
        .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .map_err(|_| out_of_range(&shown(), None, MAX))?;
    let d = Duration::try_from(signed).map_err(|_| InvalidDuration::Negative(shown()))?;
    if d > MAX {
        return Err(out_of_range(&shown(), None, MAX));
    }
    Ok(d)
}

/// Parses a duration and checks it lies in `min..=max`.
pub fn parse_in(text: &str, min: Duration, max: Duration) -> Result<Duration, InvalidDuration> {
    let d = parse(text)?;
    if d < min || d > max {
        return Err(out_of_range(&shorten(text.trim()), Some(min), max));
    }
    Ok(d)
}

fn out_of_range(text: &str, min: Option<Duration>, max: Duration) -> InvalidDuration {
    let range = match min {
        Some(min) => format!("between {} and {}", format(min), format(max)),
        None => format!("at most {}", format(max)),
    };
    InvalidDuration::OutOfRange {
        text: text.to_owned(),
        range,
    }
}

fn shorten(s: &str) -> String {
    const LIMIT: usize = 40;
    match s.char_indices().nth(LIMIT) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_owned(),
    }
}

/// Formats a duration the way [`parse`] reads it, largest units first:
/// `1h30m`, `7d`, `250ms`, `0s`.
pub fn format(d: Duration) -> String {
    let mut out = String::new();
    let mut secs = d.as_secs();
    for (unit, len) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if secs >= len {
            out.push_str(&format!("{}{unit}", secs / len));
            secs %= len;
        }
    }
    let ms = d.subsec_millis();
    if secs > 0 || (out.is_empty() && ms == 0) {
        out.push_str(&format!("{secs}s"));
    }
    if ms > 0 {
        out.push_str(&format!("{ms}ms"));
    }
    out
}

/// A [`Duration`] that reads and writes itself as text (`"15m"`): for
/// config files and serialised plans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// From whole seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }

    /// The duration.
    pub const fn get(self) -> Duration {
        self.0
    }
}

impl From<Duration> for HumanDuration {
    fn from(d: Duration) -> Self {
        Self(d)
    }
}

impl From<HumanDuration> for Duration {
    fn from(d: HumanDuration) -> Self {
        d.0
    }
}

impl FromStr for HumanDuration {
    type Err = InvalidDuration;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s).map(Self)
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format(self.0))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A string only: a bare TOML integer has no unit either.
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration with a unit, as a string: \"90s\", \"15m\", \"2h\", \"7d\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<HumanDuration, E> {
                Err(E::custom(InvalidDuration::NoUnit(v.to_string())))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<HumanDuration, E> {
                Err(E::custom(InvalidDuration::NoUnit(v.to_string())))
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn units() {
        let s = Duration::from_secs;
        assert_eq!(parse("90s").unwrap(), s(90));
        assert_eq!(parse("15m").unwrap(), s(900));
        assert_eq!(parse("2h").unwrap(), s(7200));
        assert_eq!(parse("7d").unwrap(), s(7 * 86_400));
        assert_eq!(parse("2w").unwrap(), s(14 * 86_400));
        assert_eq!(parse("1h30m").unwrap(), s(5400));
        assert_eq!(parse(" 1h 30m ").unwrap(), s(5400));
        assert_eq!(parse("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse("0s").unwrap(), Duration::ZERO);
        assert_eq!(parse("PT1H").unwrap(), s(3600));
    }

    #[test]
    fn refusals_say_why() {
        assert_eq!(parse("90"), Err(InvalidDuration::NoUnit("90".into())));
        assert_eq!(parse(""), Err(InvalidDuration::Empty));
        assert!(matches!(parse("-5m"), Err(InvalidDuration::Negative(_))));
        assert!(matches!(parse("-5"), Err(InvalidDuration::Negative(_))));
        assert!(matches!(parse("5m ago"), Err(InvalidDuration::Negative(_))));
        assert!(matches!(parse("1mo"), Err(InvalidDuration::Calendar(_))));
        assert!(matches!(parse("2y"), Err(InvalidDuration::Calendar(_))));
        assert!(matches!(
            parse("20000w"),
            Err(InvalidDuration::OutOfRange { .. })
        ));
        assert!(matches!(parse("soon"), Err(InvalidDuration::Syntax(_))));
        let e = parse("90").unwrap_err().to_string();
        assert!(e.contains("90s"), "{e}");
    }

    #[test]
    fn ranges() {
        let min = Duration::from_secs(1);
        let max = Duration::from_secs(3600);
        assert!(parse_in("30m", min, max).is_ok());
        let e = parse_in("2h", min, max).unwrap_err().to_string();
        assert!(e.contains("between 1s and 1h"), "{e}");
        assert!(parse_in("0s", min, max).is_err());
    }

    #[test]
    fn huge_input_is_not_echoed() {
        let huge = "9".repeat(1_000_000) + "x";
        let e = parse(&huge).unwrap_err().to_string();
        assert!(e.len() < 200, "{}", e.len());
    }

    #[test]
    fn serde_reads_strings_only() {
        #[derive(Deserialize, Serialize)]
        struct C {
            t: HumanDuration,
        }
        let c: C = toml::from_str("t = \"15m\"").unwrap();
        assert_eq!(c.t.get(), Duration::from_secs(900));
        let e = toml::from_str::<C>("t = 15").err().unwrap().to_string();
        assert!(e.contains("no unit"), "{e}");
        assert_eq!(toml::to_string(&c).unwrap().trim(), "t = \"15m\"");
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,80}") {
            let _ = parse(&s);
        }

        #[test]
        fn format_round_trips(ms in 0u64..(100 * 365 * 86_400_000)) {
            let d = Duration::from_millis(ms);
            prop_assert_eq!(parse(&format(d)).unwrap(), d);
        }
    }
}
