//! django-ec2tools' rolling strategies: delete what is older than a limit.

use ec2kit::Snapshot;
use jiff::{SignedDuration, Timestamp};

use super::{Reason, RetentionPolicy, Verdict};

/// Keep snapshots younger than `max_age` (measured from `now`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxAge {
    /// The age limit.
    pub max_age: SignedDuration,
    /// The name it was chosen by (`oneday_rolling`, or the duration).
    pub label: &'static str,
}

impl MaxAge {
    /// `oneday_rolling`: one day.
    pub const ONEDAY_ROLLING: Self = Self {
        max_age: SignedDuration::from_hours(24),
        label: "oneday_rolling",
    };
    /// `twoday_rolling`: two days (django-ec2tools' default).
    pub const TWODAY_ROLLING: Self = Self {
        max_age: SignedDuration::from_hours(48),
        label: "twoday_rolling",
    };
    /// `oneweek_rolling`: seven days.
    pub const ONEWEEK_ROLLING: Self = Self {
        max_age: SignedDuration::from_hours(168),
        label: "oneweek_rolling",
    };

    /// Any age limit.
    pub fn new(max_age: SignedDuration) -> Self {
        Self { max_age, label: "" }
    }

    fn describe(&self) -> String {
        format!("{:#}", self.max_age)
    }
}

impl RetentionPolicy for MaxAge {
    fn name(&self) -> String {
        if self.label.is_empty() {
            format!("max-age({})", self.describe())
        } else {
            self.label.to_owned()
        }
    }

    fn decide(&self, snapshots: &[&Snapshot], now: Timestamp) -> Vec<(Verdict, Reason)> {
        snapshots
            .iter()
            .map(|s| {
                if now.duration_since(s.start_time) > self.max_age {
                    (Verdict::Delete, Reason::OlderThan(self.describe()))
                } else {
                    (Verdict::Keep, Reason::YoungerThan(self.describe()))
                }
            })
            .collect()
    }
}
