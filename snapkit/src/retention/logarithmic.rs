//! The seed's trim: a logarithmic thinning of each lineage.
//!
//! Targets are instants going back from `now` (all in UTC): `hourly` hour
//! starts, `daily` midnights, `weekly` Sundays, `monthly` calendar months
//! before "a month ago", `quarterly` four-month steps before "a year ago",
//! `yearly` years before "two years ago", and the 1st of every month back
//! to 2000-02-01. Sorted, they cut the timeline into intervals
//! `[t(i-1), t(i))`; in each interval only the **oldest** snapshot
//! survives. The newest snapshot, and anything within the current hour,
//! are always kept.
//!
//! This is the algorithm as its authors intended (boto 2.0 sorts the
//! targets). The seed *reversed* its target list instead, which made the
//! monthly, quarterly and yearly counts dead settings and collapsed
//! everything before the current month to one snapshot per calendar
//! month. On the reference data set (a daily snapshot since 2011 and 48
//! hourly ones, run on 2013-03-20 14:30) the seed keeps 59 snapshots and
//! this policy 75: it also keeps the first snapshot after each quarterly
//! and monthly mark and after the third weekly one. Calendar-month steps
//! clamp to the month's last day (March 31 minus one month is February
//! 28/29).

use ec2kit::Snapshot;
use jiff::civil::Date;
use jiff::{Timestamp, ToSpan, Zoned, tz::TimeZone};
use serde::{Deserialize, Serialize};

use std::sync::Arc;

use super::{Reason, RetentionPolicy, Verdict, ts};

/// Counts per tier (the seed's `[purge_backups]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Logarithmic {
    /// Hour starts (default 24).
    pub hourly: u32,
    /// Midnights (default 7).
    pub daily: u32,
    /// Sundays (default 4).
    pub weekly: u32,
    /// Months before a month ago (default 12).
    pub monthly: u32,
    /// Four-month steps before a year ago (default 4).
    pub quarterly: u32,
    /// Years before two years ago (default 10).
    pub yearly: u32,
}

impl Default for Logarithmic {
    fn default() -> Self {
        Self {
            hourly: 24,
            daily: 7,
            weekly: 4,
            monthly: 12,
            quarterly: 4,
            yearly: 10,
        }
    }
}

/// The earliest month start among the targets (the seed's fixed floor).
const FLOOR: (i16, i8) = (2000, 2);

impl Logarithmic {
    /// The sorted, de-duplicated targets for `now`.
    pub fn targets(&self, now: Timestamp) -> Vec<Timestamp> {
        let now = now.to_zoned(TimeZone::UTC);
        let mut t: Vec<Timestamp> = Vec::new();
        let at = |d: Date| d.to_zoned(TimeZone::UTC).map(|z| z.timestamp()).ok();
        let minus = |z: &Zoned, span: jiff::Span| z.checked_sub(span).ok().map(|z| z.timestamp());

        let last_hour = now
            .with()
            .minute(0)
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .ok();
        let midnight = now.date();
        let last_sunday = midnight
            .checked_sub(
                jiff::Span::new().days(i64::from(midnight.weekday().to_sunday_zero_offset())),
            )
            .ok();
        if let Some(h) = &last_hour {
            t.extend((0..self.hourly).filter_map(|i| minus(h, i64::from(i).hours())));
        }
        t.extend(
            (0..self.daily)
                .filter_map(|i| midnight.checked_sub(i64::from(i).days()).ok().and_then(at)),
        );
        if let Some(sun) = last_sunday {
            t.extend(
                (0..self.weekly)
                    .filter_map(|i| sun.checked_sub(i64::from(i).weeks()).ok().and_then(at)),
            );
        }
        // Calendar steps from an anchor keep its time of day; jiff clamps
        // the day to the month's end.
        if let Ok(last_month) = now.checked_sub(1.month()) {
            t.extend((0..self.monthly).filter_map(|i| minus(&last_month, i64::from(i).months())));
        }
        if let Ok(last_year) = now.checked_sub(1.year()) {
            t.extend(
                (0..self.quarterly).filter_map(|i| minus(&last_year, (4 * i64::from(i)).months())),
            );
        }
        if let Ok(two_years) = now.checked_sub(2.years()) {
            t.extend((0..self.yearly).filter_map(|i| minus(&two_years, i64::from(i).years())));
        }
        let mut month = midnight.first_of_month();
        let floor = Date::new(FLOOR.0, FLOOR.1, 1).unwrap_or(month);
        while month >= floor {
            if let Some(ts) = at(month) {
                t.push(ts);
            }
            match month.checked_sub(1.month()) {
                Ok(m) => month = m,
                Err(_) => break,
            }
        }
        t.sort();
        t.dedup();
        t
    }
}

impl RetentionPolicy for Logarithmic {
    fn name(&self) -> String {
        if *self == Self::default() {
            "logarithmic".to_owned()
        } else {
            format!(
                "logarithmic(hourly={},daily={},weekly={},monthly={},quarterly={},yearly={})",
                self.hourly, self.daily, self.weekly, self.monthly, self.quarterly, self.yearly
            )
        }
    }

    fn decide(&self, snapshots: &[&Snapshot], now: Timestamp) -> Vec<(Verdict, Reason)> {
        // A plan asks once per lineage with the same `now`: compute the
        // ~400 calendar targets once, not ten thousand times.
        // The interval labels are formatted once too: reasons share them.
        type Cached = std::rc::Rc<(Vec<Timestamp>, Vec<Arc<str>>)>;
        thread_local! {
            static CACHE: std::cell::RefCell<Option<(Logarithmic, Timestamp, Cached)>> =
                const { std::cell::RefCell::new(None) };
        }
        let cached = CACHE.with(|c| {
            let mut c = c.borrow_mut();
            match &*c {
                Some((p, t, v)) if p == self && *t == now => v.clone(),
                _ => {
                    let targets = self.targets(now);
                    let labels = (0..targets.len())
                        .map(|p| {
                            let from = p
                                .checked_sub(1)
                                .map_or("start".to_owned(), |i| ts(&targets[i]));
                            Arc::from(format!("[{from}, {})", ts(&targets[p])))
                        })
                        .collect();
                    let v: Cached = std::rc::Rc::new((targets, labels));
                    *c = Some((*self, now, v.clone()));
                    v
                }
            }
        });
        let (targets, labels) = (&cached.0, &cached.1);
        let mut out = Vec::with_capacity(snapshots.len());
        let Some((_, older)) = snapshots.split_last() else {
            return out;
        };
        let mut p = 0;
        let mut found = false;
        for s in older {
            // Advance to the first target after this snapshot; a new
            // interval has no representative yet.
            while p < targets.len() && s.start_time >= targets[p] {
                p += 1;
                found = false;
            }
            if p == targets.len() {
                out.push((Verdict::Keep, Reason::AfterLastTarget));
                continue;
            }
            if found {
                out.push((Verdict::Delete, Reason::IntervalTaken(labels[p].clone())));
            } else {
                found = true;
                out.push((Verdict::Keep, Reason::OldestInInterval(labels[p].clone())));
            }
        }
        out.push((Verdict::Keep, Reason::Newest));
        out
    }
}
