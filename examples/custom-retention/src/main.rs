//! A starting "fabfile" for a team with its own retention rule.
//!
//! "Keep every snapshot of the last 48 hours, then one per calendar week":
//! the policy is the ~20 lines of `WeekendKeeper` below. snapkit's guards
//! still apply on top of it (never the newest, pending, preserved,
//! AMI-backing or foreign snapshots).
//!
//! Run with an inventory written by `ektool snap list --output json`:
//!
//! ```text
//! cargo run -p custom-retention -- inventory.json
//! ```

use std::collections::HashSet;
use std::process::ExitCode;

use ec2kit::Snapshot;
use jiff::{SignedDuration, Timestamp, tz::TimeZone};
use snapkit::retention::{Reason, RetentionPolicy, Verdict};

/// Everything from the last 48 hours, then the newest of each ISO week.
struct WeekendKeeper;

impl RetentionPolicy for WeekendKeeper {
    fn name(&self) -> String {
        "48h-then-weekly".into()
    }

    fn decide(&self, snapshots: &[&Snapshot], now: Timestamp) -> Vec<(Verdict, Reason)> {
        let mut weeks_seen = HashSet::new();
        let mut out = vec![
            (
                Verdict::Delete,
                Reason::Custom("older than 48h, not the newest of its week".into())
            );
            snapshots.len()
        ];
        // Newest first, so the first snapshot of each week seen is its newest.
        for (i, s) in snapshots.iter().enumerate().rev() {
            let week = s.start_time.to_zoned(TimeZone::UTC).date().iso_week_date();
            if now.duration_since(s.start_time) <= SignedDuration::from_hours(48) {
                out[i] = (Verdict::Keep, Reason::Custom("within 48 hours".into()));
            } else if weeks_seen.insert((week.year(), week.week())) {
                out[i] = (
                    Verdict::Keep,
                    Reason::Custom(format!(
                        "newest of week {}-W{:02}",
                        week.year(),
                        week.week()
                    )),
                );
            }
        }
        out
    }
}

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: custom-retention INVENTORY.json");
        return ExitCode::from(2);
    };
    let inventory: Vec<Snapshot> = match std::fs::read_to_string(&path)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
    {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {path}: {e}");
            return ExitCode::from(2);
        }
    };
    let plan = WeekendKeeper.plan(&inventory, Timestamp::now());
    for d in &plan.decisions {
        println!("{}\t{}\t{:?}\t{}", d.id, d.lineage, d.action, d.reason);
    }
    let (keep, delete) = plan.counts();
    eprintln!("keep {keep}, delete {delete}");
    ExitCode::SUCCESS
}
