//! GFS with `restic forget` semantics.
//!
//! Per lineage, newest first, each count rule (`last`, `hourly`, `daily`,
//! `weekly`, `monthly`, `yearly`) keeps the **newest snapshot of each
//! calendar period** until its count runs out; rules are ORed, so one
//! snapshot can use a slot of several rules. A rule that still has slots
//! when the oldest snapshot is reached keeps that one too. `within`
//! keeps everything taken after the newest snapshot minus the duration.
//! Periods are calendar hours, days, ISO weeks (Monday first), months and
//! years in the policy's time zone (UTC unless set). A count of -1 means
//! unlimited, as in restic.

use std::fmt;
use std::str::FromStr;

use ec2kit::Snapshot;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Reason, RetentionPolicy, Verdict};

/// restic's duration: years, months, days and hours, e.g. `1y6m3d`, `36h`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GfsDuration {
    /// Years.
    pub years: i32,
    /// Months.
    pub months: i32,
    /// Days.
    pub days: i32,
    /// Hours.
    pub hours: i32,
}

impl GfsDuration {
    /// The duration as a fixed length, when it has no calendar units
    /// (years, months) and is positive: `1d12h` is 36 hours, `1m` is none.
    pub fn fixed(&self) -> Option<SignedDuration> {
        let hours = i64::from(self.days) * 24 + i64::from(self.hours);
        (self.years == 0 && self.months == 0 && hours > 0)
            .then(|| SignedDuration::from_hours(hours))
    }

    /// `t` minus this duration, normalised as Go's `time.AddDate` (which
    /// restic uses): months and days overflow into the next unit instead
    /// of clamping (March 31 minus one month is March 3, not February 28).
    pub fn before(&self, t: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let z = t.to_zoned(tz.clone());
        let d = z.date();
        let total_months = i64::from(d.year()) * 12 + i64::from(d.month() - 1)
            - i64::from(self.years) * 12
            - i64::from(self.months);
        let (y, m) = (total_months.div_euclid(12), total_months.rem_euclid(12) + 1);
        let first = Date::new(i16::try_from(y).ok()?, i8::try_from(m).ok()?, 1).ok()?;
        // `try_*`: a duration built in code can be out of any range; that
        // is `None` here, never a panic.
        let days = jiff::Span::new()
            .try_days(i64::from(d.day()) - 1 - i64::from(self.days))
            .ok()?;
        let day = first.checked_add(days).ok()?;
        let shifted = day.to_datetime(z.time()).to_zoned(tz.clone()).ok()?;
        let hours = jiff::Span::new().try_hours(i64::from(self.hours)).ok()?;
        shifted.checked_sub(hours).ok().map(|z| z.timestamp())
    }
}

/// A duration that could not be read: the text (shortened) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration {0:?}: expected numbers with units y, m, d, h, e.g. 1y6m3d or 36h, at most {MAX_YEARS} years in all"
)]
pub struct InvalidDuration(pub String);

/// The longest duration a [`GfsDuration`] may be, in years: far beyond any
/// retention, and small enough that `now` minus it is always a date.
pub const MAX_YEARS: i32 = 1000;

impl GfsDuration {
    /// The duration in (approximate) hours, for the range check: a year is
    /// 8,766 hours, a month 730.5.
    fn approx_hours(&self) -> i64 {
        i64::from(self.years) * 8766
            + i64::from(self.months) * 7305 / 10
            + i64::from(self.days) * 24
            + i64::from(self.hours)
    }

    /// Whether the duration is within `0..=MAX_YEARS` years in every unit
    /// and in all (a duration built in code rather than parsed may not be).
    pub fn is_in_range(&self) -> bool {
        let parts = [self.years, self.months, self.days, self.hours];
        parts.iter().all(|p| *p >= 0) && self.approx_hours() <= i64::from(MAX_YEARS) * 8766
    }
}

impl FromStr for GfsDuration {
    type Err = InvalidDuration;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Errors quote the input, never megabytes of it.
        let bad = || {
            let t = s.trim();
            let mut shown: String = t.chars().take(40).collect();
            if t.chars().nth(40).is_some() {
                shown.push('…');
            }
            InvalidDuration(shown)
        };
        let mut d = GfsDuration::default();
        let mut num = String::new();
        let mut any = false;
        for c in s.trim().chars() {
            if c.is_ascii_digit() {
                if num.len() >= 9 {
                    return Err(bad());
                }
                num.push(c);
                continue;
            }
            let n: i32 = num.parse().map_err(|_| bad())?;
            num.clear();
            let unit = match c {
                'y' => &mut d.years,
                'm' => &mut d.months,
                'd' => &mut d.days,
                'h' => &mut d.hours,
                _ => return Err(bad()),
            };
            *unit = unit.checked_add(n).ok_or_else(bad)?;
            any = true;
        }
        if !num.is_empty() || !any || !d.is_in_range() {
            return Err(bad());
        }
        Ok(d)
    }
}

impl fmt::Display for GfsDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, u) in [
            (self.years, 'y'),
            (self.months, 'm'),
            (self.days, 'd'),
            (self.hours, 'h'),
        ] {
            if n != 0 {
                write!(f, "{n}{u}")?;
            }
        }
        Ok(())
    }
}

impl Serialize for GfsDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GfsDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

const RULE_NAMES: [&str; 6] = [
    "last snapshot",
    "hourly snapshot",
    "daily snapshot",
    "weekly snapshot",
    "monthly snapshot",
    "yearly snapshot",
];

/// The GFS rules that keep a snapshot: a bit set, shown restic-style
/// (`within 3d, daily snapshot, oldest monthly snapshot`). No allocation
/// per snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GfsRules {
    /// Bit i: rule i kept it; bit 8+i: rule i kept it as the oldest.
    bits: u16,
    within: Option<GfsDuration>,
}

impl GfsRules {
    fn is_empty(&self) -> bool {
        self.bits == 0 && self.within.is_none()
    }
}

impl fmt::Display for GfsRules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut sep = |f: &mut fmt::Formatter<'_>| {
            if first {
                first = false;
                Ok(())
            } else {
                f.write_str(", ")
            }
        };
        if let Some(w) = self.within {
            sep(f)?;
            write!(f, "within {w}")?;
        }
        for (i, name) in RULE_NAMES.iter().enumerate() {
            if self.bits & (1 << i) != 0 {
                sep(f)?;
                f.write_str(name)?;
            }
            if self.bits & (1 << (8 + i)) != 0 {
                sep(f)?;
                write!(f, "oldest {name}")?;
            }
        }
        Ok(())
    }
}

/// The smallest keep count: -1, restic's "unlimited".
pub const MIN_COUNT: i64 = -1;

fn count<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let n = Option::<i64>::deserialize(d)?;
    match n {
        Some(n) if n < MIN_COUNT => Err(serde::de::Error::custom(format!(
            "keep count {n} is below -1 (restic's \"unlimited\")"
        ))),
        n => Ok(n),
    }
}

/// restic-compatible keep rules. `None` (or 0) means the rule is off; -1
/// means unlimited; anything below -1 is refused.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Gfs {
    /// `--keep-last`.
    #[serde(deserialize_with = "count")]
    pub keep_last: Option<i64>,
    /// `--keep-hourly`.
    #[serde(deserialize_with = "count")]
    pub keep_hourly: Option<i64>,
    /// `--keep-daily`.
    #[serde(deserialize_with = "count")]
    pub keep_daily: Option<i64>,
    /// `--keep-weekly`.
    #[serde(deserialize_with = "count")]
    pub keep_weekly: Option<i64>,
    /// `--keep-monthly`.
    #[serde(deserialize_with = "count")]
    pub keep_monthly: Option<i64>,
    /// `--keep-yearly`.
    #[serde(deserialize_with = "count")]
    pub keep_yearly: Option<i64>,
    /// `--keep-within`.
    pub keep_within: Option<GfsDuration>,
    /// Time zone for calendar periods (IANA name); UTC when absent.
    pub time_zone: Option<String>,
}

type Bucketer = fn(&jiff::Zoned, usize) -> i64;

fn last(_: &jiff::Zoned, nr: usize) -> i64 {
    nr as i64
}
fn hour(z: &jiff::Zoned) -> i64 {
    day(z) * 100 + i64::from(z.hour())
}
fn day(z: &jiff::Zoned) -> i64 {
    i64::from(z.year()) * 10_000 + i64::from(z.month()) * 100 + i64::from(z.day())
}
fn week(z: &jiff::Zoned) -> i64 {
    let w = z.date().iso_week_date();
    i64::from(w.year()) * 100 + i64::from(w.week())
}
fn month(z: &jiff::Zoned) -> i64 {
    i64::from(z.year()) * 100 + i64::from(z.month())
}
fn year(z: &jiff::Zoned) -> i64 {
    i64::from(z.year())
}

impl Gfs {
    /// Whether no rule is set (restic refuses such a policy).
    pub fn is_empty(&self) -> bool {
        let off = |c: Option<i64>| c.is_none_or(|c| c == 0);
        off(self.keep_last)
            && off(self.keep_hourly)
            && off(self.keep_daily)
            && off(self.keep_weekly)
            && off(self.keep_monthly)
            && off(self.keep_yearly)
            && self.keep_within.is_none()
    }

    /// Checks the rules: counts of at least -1, a `within` in range.
    pub fn validate(&self) -> Result<(), super::PolicyError> {
        for (flag, v) in [
            ("keep-last", self.keep_last),
            ("keep-hourly", self.keep_hourly),
            ("keep-daily", self.keep_daily),
            ("keep-weekly", self.keep_weekly),
            ("keep-monthly", self.keep_monthly),
            ("keep-yearly", self.keep_yearly),
        ] {
            if let Some(n) = v.filter(|n| *n < MIN_COUNT) {
                return Err(super::PolicyError::Count {
                    rule: flag,
                    count: n,
                });
            }
        }
        if let Some(w) = self.keep_within.filter(|w| !w.is_in_range()) {
            return Err(super::PolicyError::Within(w.to_string()));
        }
        Ok(())
    }

    fn tz(&self) -> TimeZone {
        self.time_zone
            .as_deref()
            .and_then(|n| TimeZone::get(n).ok())
            .unwrap_or(TimeZone::UTC)
    }
}

impl RetentionPolicy for Gfs {
    fn name(&self) -> String {
        let mut parts = Vec::new();
        for (name, v) in [
            ("last", self.keep_last),
            ("hourly", self.keep_hourly),
            ("daily", self.keep_daily),
            ("weekly", self.keep_weekly),
            ("monthly", self.keep_monthly),
            ("yearly", self.keep_yearly),
        ] {
            if let Some(n) = v.filter(|n| *n != 0) {
                parts.push(format!(
                    "{name}={}",
                    if n < 0 {
                        "unlimited".to_owned()
                    } else {
                        n.to_string()
                    }
                ));
            }
        }
        if let Some(w) = self.keep_within {
            parts.push(format!("within={w}"));
        }
        if let Some(tz) = &self.time_zone {
            parts.push(format!("tz={tz}"));
        }
        format!("gfs({})", parts.join(","))
    }

    fn decide(&self, snapshots: &[&Snapshot], _now: Timestamp) -> Vec<(Verdict, Reason)> {
        let n = snapshots.len();
        let mut out = vec![(Verdict::Delete, Reason::NoRule); n];
        if n == 0 {
            return out;
        }
        let tz = self.tz();
        struct Rule {
            index: usize,
            count: i64,
            bucket: Bucketer,
            last: Option<i64>,
        }
        let mut rules: Vec<Rule> = [
            (self.keep_last, last as Bucketer),
            (self.keep_hourly, |z, _| hour(z)),
            (self.keep_daily, |z, _| day(z)),
            (self.keep_weekly, |z, _| week(z)),
            (self.keep_monthly, |z, _| month(z)),
            (self.keep_yearly, |z, _| year(z)),
        ]
        .into_iter()
        .enumerate()
        .filter_map(|(index, (c, bucket))| {
            c.filter(|c| *c != 0).map(|count| Rule {
                index,
                count,
                bucket,
                last: None,
            })
        })
        .collect();

        // `snapshots` is oldest first; restic walks newest first.
        let newest = snapshots[n - 1].start_time;
        // A `within` reaching before any representable time keeps
        // everything (never nothing).
        let within_from = self
            .keep_within
            .map(|w| w.before(newest, &tz).unwrap_or(Timestamp::MIN));
        for (nr, idx) in (0..n).rev().enumerate() {
            let s = snapshots[idx];
            let z = s.start_time.to_zoned(tz.clone());
            let mut kept = GfsRules::default();
            if let Some(from) = within_from
                && (s.start_time > from || from == Timestamp::MIN)
            {
                kept.within = self.keep_within;
            }
            for rule in rules.iter_mut() {
                if rule.count == 0 {
                    continue;
                }
                let val = (rule.bucket)(&z, nr);
                let oldest = nr == n - 1;
                if rule.last != Some(val) || oldest {
                    let bit = if rule.last == Some(val) {
                        8 + rule.index
                    } else {
                        rule.index
                    };
                    kept.bits |= 1 << bit;
                    rule.last = Some(val);
                    if rule.count > 0 {
                        rule.count -= 1;
                    }
                }
            }
            if !kept.is_empty() {
                out[idx] = (Verdict::Keep, Reason::Rules(kept));
            }
        }
        out
    }
}
