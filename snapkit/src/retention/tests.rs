//! Worked examples from the references, guards, and property tests.

use std::collections::HashSet;

use ec2kit::{Snapshot, SnapshotId, SnapshotState, VolumeId};
use jiff::{SignedDuration, Timestamp, ToSpan};
use proptest::prelude::*;

use super::testutil::{kept_times, snap};
use super::*;
use crate::lineage::tags;

fn at(s: &str) -> Timestamp {
    s.parse().unwrap()
}

// ---- Logarithmic ----------------------------------------------------------

#[test]
fn logarithmic_worked_example_1_gives_the_intended_column() {
    let times = [
        ("2013-01-05T02:00:00Z", true),
        ("2013-01-20T02:00:00Z", false),
        ("2013-02-10T02:00:00Z", true),
        ("2013-02-27T02:00:00Z", true), // the seed (reversed targets) deleted this one
        ("2013-03-02T02:00:00Z", true),
        ("2013-03-05T02:00:00Z", true),
        ("2013-03-12T02:00:00Z", true),
        ("2013-03-15T02:00:00Z", true),
        ("2013-03-15T14:00:00Z", false),
        ("2013-03-19T02:00:00Z", true),
        ("2013-03-19T20:00:00Z", true),
        ("2013-03-20T09:00:00Z", true),
        ("2013-03-20T13:10:00Z", true),
        ("2013-03-20T14:10:00Z", true),
    ];
    let snaps: Vec<Snapshot> = times
        .iter()
        .enumerate()
        .map(|(i, (t, _))| snap(i as u64, "vol-00000001", t))
        .collect();
    let plan = Logarithmic::default().plan(&snaps, at("2013-03-20T14:30:00Z"));
    let got: Vec<(String, Verdict)> = plan
        .decisions
        .iter()
        .map(|d| (d.start_time.to_string(), d.action))
        .collect();
    let want: Vec<(String, Verdict)> = times
        .iter()
        .map(|(t, keep)| {
            (
                at(t).to_string(),
                if *keep {
                    Verdict::Keep
                } else {
                    Verdict::Delete
                },
            )
        })
        .collect();
    assert_eq!(got, want);
    // Reasons name the interval.
    let jan20 = &plan.decisions[1];
    assert_eq!(
        jan20.reason.to_string(),
        "[2013-01-01 00:00, 2013-01-20 14:30) already has an older snapshot"
    );
}

#[test]
fn logarithmic_worked_example_2_keeps_75() {
    let now = at("2013-03-20T14:30:00Z");
    let mut snaps = Vec::new();
    let mut day: jiff::civil::Date = "2011-01-01".parse().unwrap();
    let last: jiff::civil::Date = "2013-03-20".parse().unwrap();
    let mut id = 0;
    while day <= last {
        snaps.push(snap(id, "vol-00000002", &format!("{day}T02:00:00Z")));
        id += 1;
        day = day.tomorrow().unwrap();
    }
    let mut hour = at("2013-03-18T14:05:00Z");
    while hour <= at("2013-03-20T14:05:00Z") {
        snaps.push(snap(id, "vol-00000002", &hour.to_string()));
        id += 1;
        hour = hour.checked_add(1.hour()).unwrap();
    }
    assert_eq!(snaps.len(), 859);
    let plan = Logarithmic::default().plan(&snaps, now);
    let kept = kept_times(&plan);
    assert_eq!(kept.len(), 75, "{kept:#?}");
    // What the intended algorithm keeps beyond the seed: the first
    // snapshot after each quarterly and monthly mark, and after W3.
    for t in [
        "2011-03-21 02:00",
        "2011-07-21 02:00",
        "2011-11-21 02:00",
        "2012-03-21 02:00",
        "2013-02-21 02:00",
        "2013-02-24 02:00",
    ] {
        assert!(kept.contains(&t.to_owned()), "{t} not kept");
    }
    // And what both keep: month starts, the last days, every recent hour.
    for t in [
        "2011-01-01 02:00",
        "2012-06-01 02:00",
        "2013-03-03 02:00",
        "2013-03-18 02:00",
        "2013-03-19 15:05",
        "2013-03-20 14:05",
    ] {
        assert!(kept.contains(&t.to_owned()), "{t} not kept");
    }
}

#[test]
fn logarithmic_targets_clamp_calendar_months() {
    let policy = Logarithmic {
        hourly: 0,
        daily: 0,
        weekly: 0,
        monthly: 2,
        quarterly: 0,
        yearly: 0,
    };
    let targets = policy.targets(at("2024-03-31T12:00:00Z"));
    assert!(
        targets.contains(&at("2024-02-29T12:00:00Z")),
        "March 31 minus a month is Feb 29"
    );
    assert!(targets.contains(&at("2024-01-29T12:00:00Z")));
    assert_eq!(targets.first(), Some(&at("2000-02-01T00:00:00Z")));
    assert!(targets.windows(2).all(|w| w[0] < w[1]), "sorted and unique");
}

// ---- GFS (restic) ---------------------------------------------------------

fn daily_2025_q1() -> Vec<Snapshot> {
    let mut out = Vec::new();
    let mut day: jiff::civil::Date = "2025-01-01".parse().unwrap();
    let mut id = 0;
    while day <= "2025-03-31".parse().unwrap() {
        if !(day.month() == 3 && (20..=22).contains(&day.day())) {
            out.push(snap(id, "vol-00000003", &format!("{day}T23:00:00Z")));
            id += 1;
        }
        day = day.tomorrow().unwrap();
    }
    out
}

#[test]
fn gfs_matches_restic_on_the_worked_contrast() {
    let policy = Gfs {
        keep_daily: Some(7),
        keep_weekly: Some(4),
        keep_monthly: Some(3),
        ..Default::default()
    };
    let plan = policy.plan(&daily_2025_q1(), at("2025-04-01T06:00:00Z"));
    let kept: Vec<String> = kept_times(&plan)
        .iter()
        .map(|t| t[5..10].to_owned())
        .collect();
    assert_eq!(
        kept,
        [
            "01-31", "02-28", "03-16", "03-23", "03-25", "03-26", "03-27", "03-28", "03-29",
            "03-30", "03-31"
        ]
    );
    let newest = plan.decisions.last().unwrap();
    assert_eq!(
        newest.reason.to_string(),
        "daily snapshot, weekly snapshot, monthly snapshot"
    );
    let mar30 = &plan.decisions[plan.decisions.len() - 2];
    assert_eq!(mar30.reason.to_string(), "daily snapshot, weekly snapshot");
}

#[test]
fn gfs_rule_with_slots_left_keeps_the_oldest() {
    let snaps = vec![
        snap(1, "vol-1", "2025-01-01T01:00:00Z"),
        snap(2, "vol-1", "2025-01-01T05:00:00Z"),
        snap(3, "vol-1", "2025-01-02T05:00:00Z"),
    ];
    let policy = Gfs {
        keep_daily: Some(5),
        ..Default::default()
    };
    let plan = policy.plan(&snaps, at("2025-01-03T00:00:00Z"));
    let reasons: Vec<String> = plan
        .decisions
        .iter()
        .map(|d| format!("{:?} {}", d.action, d.reason))
        .collect();
    assert_eq!(reasons[0], "Keep oldest daily snapshot");
    assert_eq!(reasons[1], "Keep daily snapshot");
    // With no slots left the same oldest snapshot goes.
    let plan = Gfs {
        keep_daily: Some(2),
        ..Default::default()
    }
    .plan(&snaps, at("2025-01-03T00:00:00Z"));
    assert_eq!(plan.decisions[0].action, Verdict::Delete);
    assert_eq!(plan.decisions[0].reason, Reason::NoRule);
}

#[test]
fn gfs_last_and_within_and_unlimited() {
    let snaps: Vec<Snapshot> = (0..10)
        .map(|i| snap(i, "vol-1", &format!("2025-01-{:02}T00:00:00Z", i + 1)))
        .collect();
    let keep = |g: Gfs| kept_times(&g.plan(&snaps, at("2026-01-01T00:00:00Z"))).len();
    assert_eq!(
        keep(Gfs {
            keep_last: Some(3),
            ..Default::default()
        }),
        3
    );
    // Within is measured from the newest snapshot (2025-01-10), not now.
    assert_eq!(
        keep(Gfs {
            keep_within: Some("3d".parse().unwrap()),
            ..Default::default()
        }),
        3
    );
    assert_eq!(
        keep(Gfs {
            keep_daily: Some(-1),
            ..Default::default()
        }),
        10
    );
}

#[test]
fn gfs_time_zone_moves_day_boundaries() {
    // 23:30 UTC is already the next day in Berlin.
    let snaps = vec![
        snap(1, "vol-1", "2025-06-01T22:30:00Z"),
        snap(2, "vol-1", "2025-06-01T23:30:00Z"),
    ];
    let utc = Gfs {
        keep_daily: Some(1),
        keep_last: Some(1),
        ..Default::default()
    };
    let berlin = Gfs {
        time_zone: Some("Europe/Berlin".into()),
        keep_daily: Some(2),
        ..Default::default()
    };
    assert_eq!(
        kept_times(&utc.plan(&snaps, at("2025-06-02T00:00:00Z"))).len(),
        1
    );
    assert_eq!(
        kept_times(&berlin.plan(&snaps, at("2025-06-02T00:00:00Z"))).len(),
        2
    );
}

#[test]
fn gfs_durations_parse_and_normalise_like_go() {
    let d: GfsDuration = "1y6m3d4h".parse().unwrap();
    assert_eq!((d.years, d.months, d.days, d.hours), (1, 6, 3, 4));
    assert_eq!(d.to_string(), "1y6m3d4h");
    for bad in ["", "3", "1w", "d", "1.5d"] {
        assert!(bad.parse::<GfsDuration>().is_err(), "{bad}");
    }
    let m: GfsDuration = "1m".parse().unwrap();
    // Go's AddDate: 2024-03-31 minus a month is "February 31" = March 2.
    assert_eq!(
        m.before(at("2024-03-31T10:00:00Z"), &jiff::tz::TimeZone::UTC),
        Some(at("2024-03-02T10:00:00Z"))
    );
}

// ---- MaxAge and policy choice --------------------------------------------

#[test]
fn max_age_rolling_strategies() {
    let snaps = vec![
        snap(1, "vol-1", "2025-01-01T00:00:00Z"),
        snap(2, "vol-1", "2025-01-02T12:00:00Z"),
        snap(3, "vol-1", "2025-01-03T00:00:00Z"),
    ];
    let plan = MaxAge::ONEDAY_ROLLING.plan(&snaps, at("2025-01-03T06:00:00Z"));
    let actions: Vec<Verdict> = plan.decisions.iter().map(|d| d.action).collect();
    assert_eq!(actions, [Verdict::Delete, Verdict::Keep, Verdict::Keep]);
    assert_eq!(plan.decisions[0].reason.to_string(), "older than 24h");
    assert_eq!(&*plan.decisions[0].policy, "oneday_rolling");
}

#[test]
fn policies_by_name() {
    let (log, gfs) = (Logarithmic::default(), Gfs::default());
    assert_eq!(
        PolicySpec::from_name("twoday_rolling", &log, &gfs).unwrap(),
        PolicySpec::MaxAge(MaxAge::TWODAY_ROLLING)
    );
    assert_eq!(
        PolicySpec::from_name("max-age:36h", &log, &gfs).unwrap(),
        PolicySpec::MaxAge(MaxAge::new(SignedDuration::from_hours(36)))
    );
    assert_eq!(
        PolicySpec::from_name("gfs", &log, &gfs),
        Err(PolicyError::EmptyGfs)
    );
    let err = PolicySpec::from_name("alternating_weekends", &log, &gfs)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unknown retention policy \"alternating_weekends\"")
            && err.contains("oneweek_rolling"),
        "{err}"
    );
    assert!(PolicySpec::from_name("max-age:1m", &log, &gfs).is_err());
}

// ---- Guards ---------------------------------------------------------------

struct DeleteAll;

impl RetentionPolicy for DeleteAll {
    fn name(&self) -> String {
        "delete-all".into()
    }
    fn decide(&self, snapshots: &[&Snapshot], _: Timestamp) -> Vec<(Verdict, Reason)> {
        vec![(Verdict::Delete, Reason::Custom("asked to".into())); snapshots.len()]
    }
}

#[test]
fn guards_override_a_policy_that_deletes_everything() {
    let mut snaps: Vec<Snapshot> = (0..8)
        .map(|i| snap(i, "vol-1", &format!("2025-01-0{}T00:00:00Z", i + 1)))
        .collect();
    snaps[0].tags.remove(tags::OWNER); // not ours
    snaps[1].state = SnapshotState::Pending;
    snaps[2].state = SnapshotState::Error;
    snaps[3].tags.insert(tags::PRESERVE, "legal hold");
    // snaps[4] backs an AMI; 5 and 6 are plain; 7 is the newest.
    let guards = Guards {
        min_keep: 1,
        adopt_unowned: false,
        ami_backed: Some(HashSet::from([snaps[4].id.clone()])),
    };
    let plan = Planner::new(&DeleteAll)
        .with_guards(guards)
        .plan(&snaps, at("2030-01-01T00:00:00Z"));
    let got: Vec<(Verdict, String)> = plan
        .decisions
        .iter()
        .map(|d| (d.action, d.reason.to_string()))
        .collect();
    assert_eq!(
        got,
        [
            (Verdict::Keep, "guard: not made by ektool".into()),
            (Verdict::Keep, "guard: pending".into()),
            (
                Verdict::Keep,
                "guard: state error (delete-broken handles error snapshots)".into()
            ),
            (Verdict::Keep, "guard: tagged preserve_snapshot".into()),
            (Verdict::Keep, "guard: backs an AMI".into()),
            (Verdict::Delete, "asked to".into()),
            (Verdict::Delete, "asked to".into()),
            (
                Verdict::Keep,
                "guard: newest completed snapshot of its lineage".into()
            ),
        ]
    );
    assert!(plan.notes.is_empty(), "AMIs were checked");
}

#[test]
fn min_keep_keeps_the_newest_extra_snapshots() {
    let snaps: Vec<Snapshot> = (0..5)
        .map(|i| snap(i, "vol-1", &format!("2025-01-0{}T00:00:00Z", i + 1)))
        .collect();
    let guards = Guards {
        min_keep: 3,
        ..Guards::default()
    };
    let plan = Planner::new(&DeleteAll)
        .with_guards(guards)
        .plan(&snaps, at("2030-01-01T00:00:00Z"));
    let actions: Vec<Verdict> = plan.decisions.iter().map(|d| d.action).collect();
    assert_eq!(
        actions,
        [
            Verdict::Delete,
            Verdict::Delete,
            Verdict::Keep,
            Verdict::Keep,
            Verdict::Keep
        ]
    );
    assert_eq!(plan.decisions[2].reason, Reason::MinKeep(3));
    assert_eq!(
        plan.notes.len(),
        1,
        "offline plans say AMIs were not checked"
    );
}

#[test]
fn replicas_group_with_their_source_by_the_volume_tag() {
    let mut copy = snap(9, "vol-ffffffff", "2025-01-05T00:00:00Z");
    copy.tags.insert(tags::VOLUME, "vol-1");
    let snaps = vec![snap(1, "vol-1", "2025-01-01T00:00:00Z"), copy];
    let plan = MaxAge::ONEDAY_ROLLING.plan(&snaps, at("2025-02-01T00:00:00Z"));
    assert!(plan.decisions.iter().all(|d| &*d.lineage == "vol-1"));
    assert_eq!(
        plan.decisions[0].action,
        Verdict::Delete,
        "the copy is the lineage's newest, so the source may go"
    );
}

#[test]
fn per_lineage_policy_overrides_the_default() {
    let snaps = vec![
        snap(1, "vol-1", "2025-01-01T00:00:00Z"),
        snap(2, "vol-1", "2025-01-02T00:00:00Z"),
        snap(3, "vol-2", "2025-01-01T00:00:00Z"),
        snap(4, "vol-2", "2025-01-02T00:00:00Z"),
    ];
    let keep_all = MaxAge::new(SignedDuration::from_hours(24 * 365));
    let plan = Planner::new(&MaxAge::ONEDAY_ROLLING)
        .with_lineage_policy("vol-2", &keep_all)
        .plan(&snaps, at("2025-02-01T00:00:00Z"));
    let deleted: Vec<&str> = plan.deletions().map(|d| &*d.lineage).collect();
    assert_eq!(deleted, ["vol-1"]);
}

// ---- Property tests: the guards hold whatever the policy and inventory ----

fn arb_inventory() -> impl Strategy<Value = (Vec<Snapshot>, HashSet<SnapshotId>)> {
    let one = (
        0u8..4,
        0i64..(3 * 365 * 24),
        0u8..10,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    );
    prop::collection::vec(one, 0..60).prop_map(|rows| {
        let base = at("2022-01-01T00:00:00Z");
        let mut ami = HashSet::new();
        let snaps = rows
            .into_iter()
            .enumerate()
            .map(|(i, (vol, hours, state, owned, preserved, backs_ami))| {
                let mut s = Snapshot::new(
                    SnapshotId::from_api(format!("snap-{i:017x}")),
                    Some(VolumeId::from_api(format!("vol-{vol:08x}"))),
                    base.checked_add(SignedDuration::from_hours(hours)).unwrap(),
                    match state {
                        0 => SnapshotState::Pending,
                        1 => SnapshotState::Error,
                        _ => SnapshotState::Completed,
                    },
                );
                if owned {
                    s.tags.insert(tags::OWNER, tags::OWNER_VALUE);
                }
                if preserved && i % 3 == 0 {
                    s.tags.insert(tags::PRESERVE, "1");
                }
                if backs_ami && i % 4 == 0 {
                    ami.insert(s.id.clone());
                }
                s
            })
            .collect();
        (snaps, ami)
    })
}

fn arb_policy() -> impl Strategy<Value = PolicySpec> {
    prop_oneof![
        (0u32..30, 0u32..10, 0u32..6, 0u32..15, 0u32..5, 0u32..12).prop_map(
            |(h, d, w, m, q, y)| PolicySpec::Logarithmic(Logarithmic {
                hourly: h,
                daily: d,
                weekly: w,
                monthly: m,
                quarterly: q,
                yearly: y
            })
        ),
        (0i64..5, 0i64..10, 0i64..6, 0i64..12, 0i64..4, 0i32..40).prop_map(
            |(l, d, w, m, y, within)| PolicySpec::Gfs(Gfs {
                keep_last: Some(l),
                keep_hourly: None,
                keep_daily: Some(d),
                keep_weekly: Some(w),
                keep_monthly: Some(m),
                keep_yearly: Some(y),
                keep_within: (within > 0).then_some(GfsDuration {
                    days: within,
                    ..Default::default()
                }),
                time_zone: None,
            })
        ),
        (1i64..2000).prop_map(|h| PolicySpec::MaxAge(MaxAge::new(SignedDuration::from_hours(h)))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn guards_hold_for_any_policy_and_inventory(
        (snaps, ami) in arb_inventory(),
        spec in arb_policy(),
        min_keep in 1usize..4,
        now_hours in 0i64..(4 * 365 * 24),
    ) {
        let now = at("2022-01-01T00:00:00Z").checked_add(SignedDuration::from_hours(now_hours)).unwrap();
        let guards = Guards { min_keep, adopt_unowned: false, ami_backed: Some(ami.clone()) };
        let plan = Planner::new(spec.policy()).with_guards(guards).plan(&snaps, now);

        // One decision per snapshot, none invented.
        prop_assert_eq!(plan.decisions.len(), snaps.len());
        let ids: HashSet<_> = plan.decisions.iter().map(|d| d.id.clone()).collect();
        prop_assert_eq!(ids.len(), snaps.len());

        let by_id: std::collections::HashMap<_, _> = snaps.iter().map(|s| (s.id.clone(), s)).collect();
        for d in plan.deletions() {
            let s = by_id[&d.id];
            prop_assert!(crate::lineage::is_owned(s), "deleted a snapshot ektool does not own");
            prop_assert_eq!(&s.state, &SnapshotState::Completed, "deleted a non-completed snapshot");
            prop_assert!(!crate::lineage::is_preserved(s), "deleted a preserved snapshot");
            prop_assert!(!ami.contains(&s.id), "deleted an AMI-backing snapshot");
        }
        // Per lineage: the newest completed owned snapshot stays, and at
        // least min(min_keep, completed) stay.
        let mut lineages: std::collections::HashMap<String, Vec<&Snapshot>> = Default::default();
        for s in snaps.iter().filter(|s| s.state == SnapshotState::Completed && crate::lineage::is_owned(s)) {
            lineages.entry(crate::lineage::lineage_of(s)).or_default().push(s);
        }
        let deleted: HashSet<_> = plan.deletions().map(|d| d.id.clone()).collect();
        for group in lineages.values() {
            let newest = group.iter().max_by(|a, b| a.start_time.cmp(&b.start_time).then_with(|| a.id.cmp(&b.id))).unwrap();
            prop_assert!(!deleted.contains(&newest.id), "deleted the newest completed snapshot");
            let kept = group.iter().filter(|s| !deleted.contains(&s.id)).count();
            prop_assert!(kept >= min_keep.min(group.len()));
        }
    }

    #[test]
    fn plans_are_deterministic_and_order_independent((snaps, _ami) in arb_inventory(), spec in arb_policy()) {
        let now = at("2025-01-01T00:00:00Z");
        let a = spec.policy().plan_dyn(&snaps, now);
        let mut reversed = snaps.clone();
        reversed.reverse();
        let b = spec.policy().plan_dyn(&reversed, now);
        prop_assert_eq!(a, b);
    }
}

/// `plan` for trait objects (the trait's own `plan` needs `Sized`).
trait PlanDyn {
    fn plan_dyn(&self, snapshots: &[Snapshot], now: Timestamp) -> Plan;
}

impl PlanDyn for dyn RetentionPolicy + '_ {
    fn plan_dyn(&self, snapshots: &[Snapshot], now: Timestamp) -> Plan {
        Planner::new(self).plan(snapshots, now)
    }
}

proptest! {
    /// M4: copies made outside ektool all carry the placeholder volume id
    /// `vol-ffffffff`. Adopted, each is its own lineage (or that of the
    /// source its tag names), so even `--keep-last 1` deletes none of the
    /// only copies of different sources.
    #[test]
    fn adopted_copies_of_different_sources_all_survive(
        copies in proptest::collection::vec((any::<bool>(), 0i64..100_000), 2..24),
        keep_last in 1i64..3,
    ) {
        let base = at("2025-01-01T00:00:00Z");
        let snaps: Vec<Snapshot> = copies
            .iter()
            .enumerate()
            .map(|(i, (tagged, minutes))| {
                let mut s = Snapshot::new(
                    SnapshotId::from_api(format!("snap-{:017x}", 0x1000 + i)),
                    Some(VolumeId::from_api(crate::lineage::PLACEHOLDER_VOLUME)),
                    base.checked_add(SignedDuration::from_mins(*minutes)).unwrap(),
                    SnapshotState::Completed,
                );
                if *tagged {
                    // A different source for every copy.
                    s.tags.insert(tags::SOURCE_SNAPSHOT, format!("snap-{:017x}", 0x9000 + i));
                }
                s
            })
            .collect();
        let policy = Gfs { keep_last: Some(keep_last), ..Gfs::default() };
        let guards = Guards {
            adopt_unowned: true,
            ami_backed: Some(HashSet::new()),
            ..Guards::default()
        };
        let plan = Planner::new(&policy).with_guards(guards).plan(&snaps, at("2026-01-01T00:00:00Z"));
        prop_assert_eq!(plan.deletions().count(), 0, "{:?}", plan.deletions().collect::<Vec<_>>());
        let lineages: HashSet<&str> = plan.decisions.iter().map(|d| &*d.lineage).collect();
        prop_assert_eq!(lineages.len(), snaps.len());
    }
}

/// A `within` that reaches before any representable date (only possible
/// for a duration built in code: parsing refuses it) keeps everything; it
/// used to keep nothing, and trim then deleted all but the newest.
#[test]
fn a_within_beyond_any_date_keeps_everything_and_never_panics() {
    let snaps: Vec<Snapshot> = (0..5)
        .map(|i| snap(i, "vol-00000001", &format!("2025-01-0{}T00:00:00Z", i + 1)))
        .collect();
    for huge in [
        GfsDuration {
            years: 20_000,
            ..GfsDuration::default()
        },
        GfsDuration {
            days: i32::MAX,
            hours: i32::MAX,
            ..GfsDuration::default()
        },
        GfsDuration {
            years: i32::MAX,
            months: i32::MAX,
            days: i32::MAX,
            hours: i32::MAX,
        },
    ] {
        let policy = Gfs {
            keep_within: Some(huge),
            ..Gfs::default()
        };
        let plan = policy.plan(&snaps, at("2025-02-01T00:00:00Z"));
        assert_eq!(plan.deletions().count(), 0, "{huge:?}");
    }
    assert!("20000y".parse::<GfsDuration>().is_err());
}

// ---- Archive tier ------------------------------------------------------------

fn ninety_days() -> ArchiveAfter {
    "90d".parse().unwrap()
}

/// Daily snapshots for 200 days, kept by a gfs of 7 daily and 12 monthly:
/// the kept ones older than 90 days go to the archive tier, except the
/// one that backs an AMI and the one already archived; deletions are the
/// same as without `archive_after`.
#[test]
fn archive_after_archives_old_kept_snapshots_only() {
    let start = at("2024-01-01T03:00:00Z");
    let mut snaps: Vec<Snapshot> = (0..200)
        .map(|d| {
            let t = start
                .checked_add(SignedDuration::from_hours(24 * d))
                .unwrap();
            let mut s = snap(d as u64, "vol-0000000000000000a", &t.to_string());
            s.volume_size_gib = Some(8);
            s
        })
        .collect();
    let now = start
        .checked_add(SignedDuration::from_hours(24 * 200))
        .unwrap();
    let gfs = Gfs {
        keep_daily: Some(7),
        keep_monthly: Some(12),
        ..Gfs::default()
    };
    // The first of February backs an AMI; the first of March is archived.
    let ami_backed = snaps[31].id.clone();
    snaps[60].storage_tier = ec2kit::StorageTier::Archive;
    let guards = || Guards {
        ami_backed: Some(HashSet::from([ami_backed.clone()])),
        ..Guards::default()
    };
    let without = Planner::new(&gfs).with_guards(guards()).plan(&snaps, now);
    let with = Planner::new(&gfs)
        .with_guards(guards())
        .with_archive_after(Some(ninety_days()))
        .plan(&snaps, now);
    let ids = |p: &Plan, v: Verdict| -> Vec<SnapshotId> {
        p.decisions
            .iter()
            .filter(|d| d.action == v)
            .map(|d| d.id.clone())
            .collect()
    };
    assert_eq!(ids(&with, Verdict::Delete), ids(&without, Verdict::Delete));
    let archived: Vec<String> = with.archives().map(|d| ts(&d.start_time)).collect();
    // Kept monthlies older than 90 days: January (the oldest monthly, the
    // 1st's monthly is the last of the month), minus the AMI and the
    // archived one.
    assert!(!archived.is_empty());
    for d in with.archives() {
        assert!(now.duration_since(d.start_time) >= SignedDuration::from_hours(90 * 24));
        assert_ne!(d.id, ami_backed);
        assert_ne!(d.id, snaps[60].id);
        let why = d.reason.to_string();
        assert!(
            why.ends_with("; older than 90d: to the archive tier"),
            "{why}"
        );
        assert!(why.contains("monthly"), "{why}");
    }
    // Every kept standard snapshot older than 90 days, not backing the AMI,
    // is archived.
    let old_kept: Vec<String> = without
        .decisions
        .iter()
        .filter(|d| d.action == Verdict::Keep)
        .filter(|d| now.duration_since(d.start_time) >= SignedDuration::from_hours(90 * 24))
        .filter(|d| d.id != ami_backed && d.id != snaps[60].id)
        .map(|d| ts(&d.start_time))
        .collect();
    assert_eq!(archived, old_kept);
    let cost = with.archive_cost(Some(TierPrices::US_EAST_1));
    assert_eq!(cost.snapshots, archived.len());
    assert_eq!(cost.bytes, archived.len() as u64 * 8 * (1 << 30));
    let diff = cost.monthly_difference.unwrap();
    assert!(
        (diff - archived.len() as f64 * 8.0 * (0.0125 - 0.05)).abs() < 1e-9,
        "{diff}"
    );
    assert_eq!(with.archive_cost(None).monthly_difference, None);
}

#[test]
fn the_newest_is_never_archived_and_a_lineage_can_opt_out() {
    let snaps = vec![
        snap(1, "vol-0000000000000000a", "2020-01-01T00:00:00Z"),
        snap(2, "vol-0000000000000000a", "2020-02-01T00:00:00Z"),
        snap(3, "vol-0000000000000000b", "2020-01-01T00:00:00Z"),
        snap(4, "vol-0000000000000000b", "2020-02-01T00:00:00Z"),
    ];
    let keep_all = MaxAge::new(SignedDuration::from_hours(24 * 365 * 100));
    let now = at("2025-01-01T00:00:00Z");
    let plan = Planner::new(&keep_all)
        .with_archive_after(Some(ninety_days()))
        .with_lineage_archive_after("vol-0000000000000000b", None)
        .plan(&snaps, now);
    let archived: Vec<&str> = plan.archives().map(|d| d.id.as_str()).collect();
    assert_eq!(archived, ["snap-00000000000000001"]);
    assert_eq!(plan.counts(), (4, 0), "archived snapshots count as kept");
    for bad in ["-3d", "soon", ""] {
        assert!(bad.parse::<ArchiveAfter>().is_err(), "{bad}");
    }
}

/// Some of an inventory's completed snapshots already archived (by id).
fn with_some_archived(snaps: &[Snapshot], every: u64) -> Vec<Snapshot> {
    snaps
        .iter()
        .cloned()
        .map(|mut s| {
            let n = u64::from_str_radix(s.id.as_str().trim_start_matches("snap-"), 16).unwrap_or(1);
            if n % every == 0 {
                s.storage_tier = ec2kit::StorageTier::Archive;
            }
            s
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// `archive_after` never changes what is deleted; archived snapshots
    /// count like standard ones; the newest completed snapshot of a
    /// lineage, an AMI's snapshot and an archived one are never archived,
    /// and nothing younger than `archive_after` is.
    #[test]
    fn archiving_never_touches_the_newest_or_an_ami_nor_changes_deletions(
        (snaps, ami) in arb_inventory(),
        spec in arb_policy(),
        min_keep in 1usize..4,
        now_hours in 0i64..(4 * 365 * 24),
        after_days in 0i64..400,
        every in 2u64..6,
    ) {
        let now = at("2022-01-01T00:00:00Z").checked_add(SignedDuration::from_hours(now_hours)).unwrap();
        let guards = || Guards { min_keep, adopt_unowned: false, ami_backed: Some(ami.clone()) };
        let tiered = with_some_archived(&snaps, every);
        let after: ArchiveAfter = format!("{after_days}d").parse().unwrap();
        let plain = Planner::new(spec.policy()).with_guards(guards()).plan(&snaps, now);
        let plain_tiered = Planner::new(spec.policy()).with_guards(guards()).plan(&tiered, now);
        let plan = Planner::new(spec.policy())
            .with_guards(guards())
            .with_archive_after(Some(after.clone()))
            .plan(&tiered, now);
        let deleted = |p: &Plan| p.deletions().map(|d| d.id.clone()).collect::<Vec<_>>();
        // Archived snapshots count for the policy like standard ones.
        prop_assert_eq!(deleted(&plain_tiered), deleted(&plain));
        // Archiving deletes neither more nor less.
        prop_assert_eq!(deleted(&plan), deleted(&plain));
        prop_assert_eq!(plan.decisions.len(), snaps.len());

        let by_id: std::collections::HashMap<_, _> = tiered.iter().map(|s| (s.id.clone(), s)).collect();
        let mut newest: std::collections::HashMap<String, &Snapshot> = Default::default();
        for s in tiered.iter().filter(|s| s.state == SnapshotState::Completed && crate::lineage::is_owned(s)) {
            let e = newest.entry(crate::lineage::lineage_of(s)).or_insert(s);
            if (s.start_time, &s.id) > (e.start_time, &e.id) {
                *e = s;
            }
        }
        let newest: HashSet<SnapshotId> = newest.values().map(|s| s.id.clone()).collect();
        for d in plan.archives() {
            let s = by_id[&d.id];
            prop_assert!(!newest.contains(&s.id), "archived the newest of a lineage");
            prop_assert!(!ami.contains(&s.id), "archived an AMI's snapshot");
            prop_assert_eq!(&s.storage_tier, &ec2kit::StorageTier::Standard, "archived an archived snapshot");
            prop_assert_eq!(&s.state, &SnapshotState::Completed);
            prop_assert!(crate::lineage::is_owned(s));
            prop_assert!(now.duration_since(s.start_time) >= after.age, "archived a young snapshot");
            prop_assert!(matches!(d.reason, Reason::Archive { .. }), "reason {}", d.reason);
        }
        // Every kept, standard, old enough, non-newest, non-AMI snapshot
        // that the plain plan keeps is archived.
        let plain_tiered_keep: HashSet<SnapshotId> = plain_tiered.decisions.iter()
            .filter(|d| d.action == Verdict::Keep).map(|d| d.id.clone()).collect();
        let archived: HashSet<SnapshotId> = plan.archives().map(|d| d.id.clone()).collect();
        for s in &tiered {
            let want = plain_tiered_keep.contains(&s.id)
                && s.state == SnapshotState::Completed
                && crate::lineage::is_owned(s)
                && !newest.contains(&s.id)
                && !ami.contains(&s.id)
                && !crate::lineage::description_names_ami(s)
                && s.storage_tier == ec2kit::StorageTier::Standard
                && now.duration_since(s.start_time) >= after.age;
            prop_assert_eq!(archived.contains(&s.id), want, "{}", s.id);
        }
    }
}

#[test]
fn zero_archive_after_is_accepted() {
    for zero in ["0", "0d", "0h"] {
        let a: ArchiveAfter = zero.parse().unwrap();
        assert_eq!(a.age, SignedDuration::ZERO);
    }
    assert_eq!(
        "90d".parse::<ArchiveAfter>().unwrap().age,
        SignedDuration::from_hours(90 * 24)
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Issue 16: in a vault account, copies of several source accounts
    /// share lineage names (the same alias, the same volume id); whatever
    /// the policy, the plan never leaves a source account's lineage
    /// without a kept copy, and keeps each one's newest.
    #[test]
    fn the_vault_plan_keeps_every_source_accounts_lineage(
        copies in proptest::collection::vec((0usize..3, 0usize..2, 0i64..20_000), 1..40),
        spec in arb_policy(),
        now_hours in 0i64..(2 * 365 * 24),
    ) {
        const ACCOUNTS: [&str; 3] = ["111111111111", "222222222222", "333333333333"];
        const LINEAGES: [&str; 2] = ["db", "vol-0000000000000000a"];
        let base = at("2024-01-01T00:00:00Z");
        let snaps: Vec<Snapshot> = copies
            .iter()
            .enumerate()
            .map(|(i, (account, lineage, hours))| {
                let mut s = Snapshot::new(
                    SnapshotId::from_api(format!("snap-{:017x}", 0x1000 + i)),
                    Some(VolumeId::from_api(crate::lineage::PLACEHOLDER_VOLUME)),
                    base.checked_add(SignedDuration::from_hours(*hours)).unwrap(),
                    SnapshotState::Completed,
                );
                s.tags.insert(tags::OWNER, tags::OWNER_VALUE);
                s.tags.insert(tags::VOLUME, LINEAGES[*lineage]);
                s.tags.insert(tags::SOURCE_ACCOUNT, ACCOUNTS[*account]);
                s.tags.insert(tags::SOURCE_SNAPSHOT, format!("snap-{:017x}", 0x9000 + i));
                s
            })
            .collect();
        let now = base.checked_add(SignedDuration::from_hours(20_000 + now_hours)).unwrap();
        let plan = Planner::new(spec.policy()).plan(&snaps, now);
        let deleted: HashSet<_> = plan.deletions().map(|d| d.id.clone()).collect();
        let mut groups: std::collections::HashMap<(&str, &str), Vec<&Snapshot>> = Default::default();
        for s in &snaps {
            let key = (s.tags.get(tags::SOURCE_ACCOUNT).unwrap(), s.tags.get(tags::VOLUME).unwrap());
            groups.entry(key).or_default().push(s);
        }
        for ((account, lineage), group) in &groups {
            let kept = group.iter().filter(|s| !deleted.contains(&s.id)).count();
            prop_assert!(kept >= 1, "{account}/{lineage}: every copy deleted");
            let newest = group.iter().max_by(|a, b| a.start_time.cmp(&b.start_time).then_with(|| a.id.cmp(&b.id))).unwrap();
            prop_assert!(!deleted.contains(&newest.id), "{account}/{lineage}: its newest deleted");
        }
        for d in &plan.decisions {
            prop_assert!(ACCOUNTS.iter().any(|a| d.lineage.starts_with(&format!("{a}/"))), "lineage {} names no account", d.lineage);
        }
    }
}
