//! The example, built and run as a team runs it, over an inventory file in
//! the format `ektool snap list --output json` writes: every snapshot gets
//! the keep/delete decision of "48 hours, then weekly", snapkit's guards on
//! top, and bad input is exit 2.

// A test fails loudly at the first broken step.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use ec2kit::{Snapshot, SnapshotId, SnapshotState, Tags, VolumeId};
use jiff::{SignedDuration, Timestamp, ToSpan, tz::TimeZone};
use snapkit::lineage::tags::{OWNER, OWNER_VALUE, PRESERVE};

fn run(args: &[&Path]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_custom-retention"))
        .args(args)
        .output()
        .unwrap()
}

/// A completed snapshot of `vol-0123abcd` taken at `at`, made by ektool
/// unless `foreign`.
fn snapshot(n: u32, at: Timestamp, tags: &[(&str, &str)], foreign: bool) -> Snapshot {
    let mut s = Snapshot::new(
        SnapshotId::parse(&format!("snap-{n:017x}")).unwrap(),
        Some(VolumeId::parse("vol-0123abcd").unwrap()),
        at,
        SnapshotState::Completed,
    );
    let mut t = Tags::new();
    if !foreign {
        t = t.with(OWNER, OWNER_VALUE);
    }
    for (k, v) in tags {
        t = t.with(*k, *v);
    }
    s.tags = t;
    s
}

#[test]
fn keeps_48_hours_then_the_newest_of_each_week_under_the_guards() {
    let now = Timestamp::now();
    let hours = |h: i64| now - SignedDuration::from_hours(h);
    // The Wednesday of the ISO week three weeks ago, at noon: all of that
    // day's snapshots fall in one week, long before the last 48 hours.
    let day = (now - SignedDuration::from_hours(21 * 24))
        .to_zoned(TimeZone::UTC)
        .date();
    let wednesday = day
        .checked_sub(i64::from(day.weekday().to_monday_zero_offset()).days())
        .unwrap()
        .checked_add(2.days())
        .unwrap();
    let at = |hour: i8| {
        wednesday
            .at(hour, 0, 0, 0)
            .to_zoned(TimeZone::UTC)
            .unwrap()
            .timestamp()
    };
    let week = wednesday.iso_week_date();
    let inventory = vec![
        snapshot(1, hours(1), &[], false),
        snapshot(2, hours(30), &[], false),
        snapshot(3, at(12), &[], false),
        snapshot(4, at(10), &[], false),
        snapshot(5, at(8), &[(PRESERVE, "yes")], false),
        snapshot(6, at(6), &[], true),
    ];
    let dir = ektool_tests::tempdir();
    let file = dir.path().join("inventory.json");
    std::fs::write(&file, serde_json::to_string(&inventory).unwrap()).unwrap();

    let out = run(&[&file]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let decisions: BTreeMap<String, (String, String, String)> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 4, "{l}");
            (f[0].into(), (f[1].into(), f[2].into(), f[3].into()))
        })
        .collect();
    let expect = |n: u32, action: &str, reason: &str| {
        let id = format!("snap-{n:017x}");
        let (lineage, a, r) = &decisions[&id];
        assert_eq!(lineage, "vol-0123abcd");
        assert_eq!((a.as_str(), r.as_str()), (action, reason), "{id}");
    };
    let newest_of_week = format!("newest of week {}-W{:02}", week.year(), week.week());
    expect(1, "Keep", "within 48 hours");
    expect(2, "Keep", "within 48 hours");
    expect(3, "Keep", &newest_of_week);
    expect(4, "Delete", "older than 48h, not the newest of its week");
    expect(5, "Keep", "guard: tagged preserve_snapshot");
    expect(6, "Keep", "guard: not made by ektool");
    assert_eq!(decisions.len(), 6);
    assert_eq!(stderr.trim(), "keep 5, delete 1");
}

#[test]
fn no_or_unreadable_inventory_is_exit_2() {
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("usage: custom-retention"));
    let dir = ektool_tests::tempdir();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "[{\"id\": 3}]").unwrap();
    for file in [dir.path().join("missing.json"), bad] {
        let out = run(&[&file]);
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.starts_with("error: "), "{stderr}");
        assert!(stderr.contains(&*file.to_string_lossy()), "{stderr}");
    }
}
