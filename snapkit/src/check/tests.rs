use ec2kit::{Action, BlockDevice, Instance, Latency, MockEc2, Tags};

use super::*;
use crate::lineage::tags;

const NOW: i64 = 1_800_000_000;
const HOUR: i64 = 3600;

fn at(seconds_ago: i64) -> Timestamp {
    Timestamp::from_second(NOW - seconds_ago).unwrap()
}

fn snap(id: &str, volume: &str, seconds_ago: i64, state: SnapshotState) -> Snapshot {
    let mut s = Snapshot::new(
        SnapshotId::from_api(id),
        Some(VolumeId::from_api(volume)),
        at(seconds_ago),
        state,
    );
    s.tags.insert(tags::OWNER, tags::OWNER_VALUE);
    s.tags.insert(tags::VOLUME, volume);
    s.volume_size_gib = Some(8);
    s
}

/// A copy in another region: placeholder volume, lineage from its tag,
/// data time from its source-time tag.
fn copy(id: &str, volume: &str, data_seconds_ago: i64) -> Snapshot {
    let mut s = snap(id, lineage::PLACEHOLDER_VOLUME, 0, SnapshotState::Completed);
    s.tags.insert(tags::VOLUME, volume);
    s.tags.insert(tags::SOURCE_SNAPSHOT, "snap-source");
    s.tags
        .insert(tags::SOURCE_TIME, at(data_seconds_ago).to_string());
    s
}

fn instance(id: &str, region: &Region, volumes: &[(&str, &str)]) -> Instance {
    Instance {
        root_device_name: Some("/dev/xvda".into()),
        block_devices: volumes
            .iter()
            .map(|(device, volume)| BlockDevice {
                device_name: (*device).into(),
                volume_id: VolumeId::from_api(*volume),
                delete_on_termination: None,
            })
            .collect(),
        tags: Tags::new().with("Earmarking", "production"),
        ..Instance::new(InstanceId::from_api(id), region.clone())
    }
}

fn spec(regions: &[&str]) -> CheckSpec {
    CheckSpec {
        regions: regions.iter().map(|r| Region::new(*r)).collect(),
        tag: Some(Tag::new("Earmarking", "production")),
        max_age: Duration::from_secs(26 * 3600),
        ..CheckSpec::default()
    }
}

fn lines(report: &CheckReport) -> Vec<String> {
    report.failures().iter().map(ToString::to_string).collect()
}

/// One instance with a fresh root, a stale data volume and a volume never
/// backed up; an `error` snapshot; a pending newer one never counts.
#[tokio::test]
async fn fresh_stale_missing_and_error_lineages() {
    let mut ec2 = MockEc2::new();
    ec2.expect_describe_instances()
        .times(1)
        .returning(|region, f| {
            assert!(f.contains(&Filter::new("tag:Earmarking", ["production"])));
            Ok(vec![instance(
                "i-00000001",
                region,
                &[
                    ("/dev/xvda", "vol-0000000a"),
                    ("/dev/sdf", "vol-0000000b"),
                    ("/dev/sdg", "vol-0000000c"),
                ],
            )])
        });
    ec2.expect_describe_snapshots().times(1).returning(|_, f| {
        assert!(f.contains(&Filter::new("tag:ektool:owner", ["ektool"])));
        Ok(vec![
            snap(
                "snap-a1",
                "vol-0000000a",
                30 * HOUR,
                SnapshotState::Completed,
            ),
            snap(
                "snap-a2",
                "vol-0000000a",
                2 * HOUR,
                SnapshotState::Completed,
            ),
            snap("snap-a3", "vol-0000000a", 60, SnapshotState::Pending),
            snap(
                "snap-b1",
                "vol-0000000b",
                50 * HOUR,
                SnapshotState::Completed,
            ),
            snap("snap-b2", "vol-0000000b", HOUR, SnapshotState::Error),
            // Another volume's lineage is not checked.
            snap(
                "snap-z1",
                "vol-000000ff",
                900 * HOUR,
                SnapshotState::Completed,
            ),
        ])
    });
    let report = check(&ec2, &spec(&["eu-west-1"]), at(0)).await;
    let by = |v: &str| report.lineages.iter().find(|l| l.lineage == v).unwrap();
    assert_eq!(report.lineages.len(), 3);
    let a = by("vol-0000000a");
    assert_eq!(a.status, Freshness::Fresh);
    assert_eq!(a.newest.as_ref().unwrap().as_str(), "snap-a2");
    assert_eq!((a.age_seconds, a.completed), (Some(2 * HOUR), 2));
    assert_eq!(by("vol-0000000b").status, Freshness::Stale);
    assert_eq!(by("vol-0000000c").status, Freshness::Missing);
    assert_eq!(
        lines(&report),
        [
            "stale: eu-west-1 vol-0000000b (i-00000001 /dev/sdf): newest snap-b1 is 2d2h old, more than 1d2h",
            "error: eu-west-1 vol-0000000b (i-00000001 /dev/sdf): snapshot snap-b2 is in error state",
            "missing: eu-west-1 vol-0000000c (i-00000001 /dev/sdg): no completed snapshot",
        ]
    );
    let text = report.metrics().render();
    let newest = format!(
        "ektool_snapshot_newest_completed_timestamp_seconds{{region=\"eu-west-1\",lineage=\"vol-0000000a\",place=\"source\",instance=\"i-00000001\",device=\"/dev/xvda\",alias=\"\"}} {}\n",
        NOW - 2 * HOUR
    );
    assert!(text.contains(&newest), "{text}");
    // A missing lineage has no timestamp, only its threshold.
    assert!(!text.contains("timestamp_seconds{region=\"eu-west-1\",lineage=\"vol-0000000c\""));
    assert!(
        text.contains(
            "ektool_snapshot_max_age_seconds{region=\"eu-west-1\",lineage=\"vol-0000000c\""
        )
    );
    assert!(
        text.contains("ektool_snapshots{region=\"eu-west-1\"} 6\n"),
        "{text}"
    );
    assert!(
        text.contains("ektool_snapshots_volume_size_bytes{region=\"eu-west-1\"} 51539607552\n"),
        "{text}"
    );
    assert!(text.contains("ektool_check_failures 3\n"), "{text}");
    assert_eq!(report.regions[0].snapshots, 6);
    assert_eq!(report.regions[0].volume_bytes, (6 * 8) << 30);
    assert!(!report.ok());
}

/// Aliases and tags carry their own thresholds; excluded volumes and the
/// root (with exclude_boot) are not checked; a failing region is one
/// failure and does not hide the other.
#[tokio::test]
async fn thresholds_exclusions_and_a_failing_region() {
    let mut ec2 = MockEc2::new();
    ec2.expect_describe_instances()
        .times(2)
        .returning(|region, _| {
            let mut i = instance(
                "i-00000002",
                region,
                &[
                    ("/dev/xvda", "vol-0000001a"),
                    ("/dev/sdf", "vol-0000001b"),
                    ("/dev/sdg", "vol-0000001c"),
                ],
            );
            i.tags.insert("Tier", "db");
            Ok(vec![i])
        });
    ec2.expect_describe_snapshots()
        .times(2)
        .returning(|region, _| match region.as_str() {
            "us-east-1" => Err(Ec2Error::from_code(
                Action::DescribeSnapshots,
                "us-east-1",
                "UnauthorizedOperation",
                None,
            )),
            _ => Ok(vec![
                snap(
                    "snap-1b",
                    "vol-0000001b",
                    3 * HOUR,
                    SnapshotState::Completed,
                ),
                snap(
                    "snap-2a",
                    "vol-0000002a",
                    3 * HOUR,
                    SnapshotState::Completed,
                ),
            ]),
        });
    let spec = CheckSpec {
        exclude_boot: true,
        exclude_volumes: vec![VolumeId::from_api("vol-0000001c")],
        tag_max_age: vec![(Tag::new("Tier", "db"), Duration::from_secs(2 * 3600))],
        volumes: vec![
            VolumeTarget {
                alias: "logs".into(),
                region: Region::new("eu-west-1"),
                volume: VolumeId::from_api("vol-0000002a"),
                max_age: Some(Duration::from_secs(4 * 3600)),
            },
            // Not in a selected region: not checked.
            VolumeTarget {
                alias: "far".into(),
                region: Region::new("ap-south-1"),
                volume: VolumeId::from_api("vol-0000003a"),
                max_age: None,
            },
        ],
        ..spec(&["eu-west-1", "us-east-1"])
    };
    let report = check(&ec2, &spec, at(0)).await;
    let checked: Vec<(&str, Freshness, u64)> = report
        .lineages
        .iter()
        .map(|l| (l.lineage.as_str(), l.status, l.max_age_seconds))
        .collect();
    assert_eq!(
        checked,
        [
            ("vol-0000002a", Freshness::Fresh, 4 * 3600),
            ("vol-0000001b", Freshness::Stale, 2 * 3600),
        ]
    );
    assert_eq!(report.lineages[0].alias.as_deref(), Some("logs"));
    let l = lines(&report);
    assert_eq!(l.len(), 2, "{l:?}");
    assert!(
        l[0].starts_with("region: us-east-1: could not be listed"),
        "{l:?}"
    );
    assert!(l[1].starts_with("stale: eu-west-1 vol-0000001b"), "{l:?}");
}

/// Copies in the destination: by lineage and data time (not the copy's
/// own start time); a lineage without a copy is missing there; snapshots
/// taken in the destination are not replicas.
#[tokio::test]
async fn replicas_in_the_destination() {
    let mut ec2 = MockEc2::new();
    ec2.expect_describe_instances()
        .times(1)
        .returning(|region, _| {
            Ok(vec![instance(
                "i-00000003",
                region,
                &[
                    ("/dev/xvda", "vol-0000004a"),
                    ("/dev/sdf", "vol-0000004b"),
                    ("/dev/sdg", "vol-0000004c"),
                ],
            )])
        });
    ec2.expect_describe_snapshots()
        .times(2)
        .returning(|region, _| match region.as_str() {
            "eu-west-1" => Ok(vec![
                snap("snap-4a", "vol-0000004a", HOUR, SnapshotState::Completed),
                snap("snap-4b", "vol-0000004b", HOUR, SnapshotState::Completed),
                snap("snap-4c", "vol-0000004c", HOUR, SnapshotState::Completed),
            ]),
            "eu-central-1" => Ok(vec![
                copy("snap-c4a", "vol-0000004a", 5 * HOUR),
                // Copied a minute ago, but of data three days old.
                copy("snap-c4b", "vol-0000004b", 72 * HOUR),
                // Not a copy: a snapshot of a volume that lives there.
                snap("snap-n4c", "vol-0000004c", HOUR, SnapshotState::Completed),
            ]),
            r => panic!("unexpected region {r}"),
        });
    let spec = CheckSpec {
        replica: Some(ReplicaCheck {
            region: Region::new("eu-central-1"),
            max_age: Duration::from_secs(48 * 3600),
        }),
        ..spec(&["eu-west-1"])
    };
    let report = check(&ec2, &spec, at(0)).await;
    let replicas: Vec<(&str, Freshness, Option<i64>)> = report
        .lineages
        .iter()
        .filter(|l| l.place == Place::Replica)
        .map(|l| (l.lineage.as_str(), l.status, l.age_seconds))
        .collect();
    assert_eq!(
        replicas,
        [
            ("vol-0000004a", Freshness::Fresh, Some(5 * HOUR)),
            ("vol-0000004b", Freshness::Stale, Some(72 * HOUR)),
            ("vol-0000004c", Freshness::Missing, None),
        ]
    );
    assert_eq!(
        lines(&report),
        [
            "stale: eu-central-1 vol-0000004b (i-00000003 /dev/sdf) replica: newest snap-c4b is 3d old, more than 2d",
            "missing: eu-central-1 vol-0000004c (i-00000003 /dev/sdg) replica: no completed snapshot",
        ]
    );
    assert_eq!(
        report
            .regions
            .iter()
            .map(|r| (r.region.as_str(), r.snapshots))
            .collect::<Vec<_>>(),
        [("eu-west-1", 3), ("eu-central-1", 3)]
    );
}

/// Without a tag only the aliases are checked, and no instance is listed.
#[tokio::test]
async fn aliases_only() {
    let mut ec2 = MockEc2::new();
    ec2.expect_describe_instances().never();
    ec2.expect_describe_snapshots().times(1).returning(|_, _| {
        Ok(vec![snap(
            "snap-5a",
            "vol-0000005a",
            HOUR,
            SnapshotState::Completed,
        )])
    });
    let spec = CheckSpec {
        tag: None,
        volumes: vec![VolumeTarget {
            alias: "data".into(),
            region: Region::new("eu-west-1"),
            volume: VolumeId::from_api("vol-0000005a"),
            max_age: None,
        }],
        ..spec(&["eu-west-1"])
    };
    let report = check(&ec2, &spec, at(0)).await;
    assert!(report.ok(), "{:?}", lines(&report));
    assert_eq!(report.lineages.len(), 1);
}

fn slow(latency_ms: u64) -> Latency<MockEc2> {
    let mut inner = MockEc2::new();
    inner.expect_describe_instances().returning(|region, _| {
        Ok(vec![instance(
            "i-00000009",
            region,
            &[("/dev/xvda", "vol-00000009")],
        )])
    });
    inner.expect_describe_snapshots().returning(|_, _| {
        Ok(vec![snap(
            "snap-9",
            "vol-00000009",
            HOUR,
            SnapshotState::Completed,
        )])
    });
    Latency::new(inner, std::time::Duration::from_millis(latency_ms))
}

/// 17 regions at 50 ms a call take about as long as one: regions are
/// listed at once, and in each the instances and snapshots at once, the
/// replica destination alongside.
#[tokio::test(start_paused = true)]
async fn seventeen_regions_take_about_as_long_as_one() {
    let ec2 = slow(50);
    let names: Vec<String> = (0..17).map(|i| format!("r-{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let replica = Some(ReplicaCheck {
        region: Region::new("r-dest"),
        max_age: Duration::from_secs(86_400),
    });
    let one = CheckSpec {
        replica: replica.clone(),
        ..spec(&refs[..1])
    };
    let start = tokio::time::Instant::now();
    let report = check(&ec2, &one, at(0)).await;
    let single = start.elapsed();
    assert_eq!(report.lineages.len(), 1 + 1);
    let all = CheckSpec {
        replica,
        concurrency: 17,
        ..spec(&refs)
    };
    let start = tokio::time::Instant::now();
    let report = check(&ec2, &all, at(0)).await;
    let fleet = start.elapsed();
    assert_eq!(
        report
            .lineages
            .iter()
            .filter(|l| l.place == Place::Source)
            .count(),
        17
    );
    println!("snap check, 50 ms a call: 1 region {single:?}, 17 regions {fleet:?}");
    assert!(single >= std::time::Duration::from_millis(50), "{single:?}");
    assert!(
        fleet.as_secs_f64() <= 1.5 * single.as_secs_f64(),
        "{fleet:?} vs {single:?}"
    );
}

/// `max_unverified`: a lineage needs a snapshot whose restore test passed
/// recently enough; a failed or old test does not count, and without the
/// setting nothing about restore tests is checked.
#[tokio::test]
async fn lineages_without_a_recent_successful_restore_test_fail() {
    use crate::verify::tags as v;
    let tested = |id: &str, volume: &str, result: &str, seconds_ago: i64| {
        let mut s = snap(id, volume, 3 * HOUR, SnapshotState::Completed);
        s.tags.insert(v::VERIFY_RESULT, result);
        s.tags.insert(v::VERIFIED_AT, at(seconds_ago).to_string());
        s
    };
    let mut ec2 = MockEc2::new();
    ec2.expect_describe_instances().returning(|region, _| {
        Ok(vec![instance(
            "i-00000001",
            region,
            &[
                ("/dev/xvda", "vol-0000000a"),
                ("/dev/sdf", "vol-0000000b"),
                ("/dev/sdg", "vol-0000000c"),
                ("/dev/sdh", "vol-0000000d"),
            ],
        )])
    });
    ec2.expect_describe_snapshots().returning(move |_, _| {
        Ok(vec![
            // Passed a day ago: fine.
            tested("snap-a1", "vol-0000000a", v::OK, 24 * HOUR),
            // Passed 8 days ago, failed since: the pass is too old.
            tested("snap-b1", "vol-0000000b", v::OK, 8 * 24 * HOUR),
            tested("snap-b2", "vol-0000000b", v::FAILED, HOUR),
            // Never tested.
            snap("snap-c1", "vol-0000000c", HOUR, SnapshotState::Completed),
            // An older snapshot's recent pass counts for the lineage.
            tested("snap-d1", "vol-0000000d", v::OK, 2 * HOUR),
            snap("snap-d2", "vol-0000000d", HOUR, SnapshotState::Completed),
        ])
    });
    let mut s = spec(&["eu-west-1"]);
    assert!(check(&ec2, &s, at(0)).await.ok(), "not asked: not checked");
    s.max_unverified = Some(Duration::from_secs(7 * 24 * 3600));
    let report = check(&ec2, &s, at(0)).await;
    let by = |v: &str| report.lineages.iter().find(|l| l.lineage == v).unwrap();
    let a = by("vol-0000000a").verified.clone().unwrap();
    assert!(a.ok);
    assert_eq!(a.snapshot.unwrap().as_str(), "snap-a1");
    assert_eq!(a.age_seconds, Some(24 * HOUR));
    assert!(by("vol-0000000d").verified.as_ref().unwrap().ok);
    assert_eq!(
        lines(&report),
        [
            "unverified: eu-west-1 vol-0000000b (i-00000001 /dev/sdf): last successful restore test (snap-b1) 8d ago, more than 7d",
            "unverified: eu-west-1 vol-0000000c (i-00000001 /dev/sdg): no successful restore test (within 7d)",
        ]
    );
    let text = report.metrics().render();
    let line = |name: &str, volume: &str| {
        text.lines()
            .find(|l| l.starts_with(name) && l.contains(&format!("lineage=\"{volume}\"")))
            .map(|l| l.rsplit(' ').next().unwrap().to_owned())
    };
    let last = "ektool_snapshot_last_verified_timestamp_seconds{";
    assert_eq!(
        line(last, "vol-0000000a"),
        Some(at(24 * HOUR).as_second().to_string())
    );
    assert_eq!(line(last, "vol-0000000c"), None, "never tested");
    assert_eq!(
        line("ektool_snapshot_max_unverified_seconds{", "vol-0000000c"),
        Some((7 * 24 * 3600).to_string())
    );
    // Not asked: no restore-test metrics.
    s.max_unverified = None;
    let plain = check(&ec2, &s, at(0)).await.metrics().render();
    assert!(!plain.contains("verified"), "{plain}");
}

/// A vault copy of `account`'s `volume`, its data `data_seconds_ago` old.
fn vault_copy(id: &str, account: &str, volume: &str, data_seconds_ago: i64) -> Snapshot {
    let mut s = copy(id, volume, data_seconds_ago);
    s.tags.insert(tags::SOURCE_ACCOUNT, account);
    s
}

/// Issue 16: in the vault account, each source account's lineage is
/// judged apart by its data time: a fresh copy of account A's `db` never
/// covers account B's stale one.
#[tokio::test]
async fn the_vault_is_checked_per_source_account_lineage() {
    let mut ec2 = MockEc2::new();
    ec2.expect_describe_snapshots().times(1).returning(|_, _| {
        Ok(vec![
            vault_copy("snap-a1", "111111111111", "db", 2 * HOUR),
            vault_copy("snap-a0", "111111111111", "db", 50 * HOUR),
            vault_copy("snap-b1", "222222222222", "db", 72 * HOUR),
            // Not a vault copy: the vault's own backup is not checked.
            snap(
                "snap-own",
                "vol-0000000f",
                900 * HOUR,
                SnapshotState::Completed,
            ),
        ])
    });
    let report = check_vault(
        &ec2,
        &[Region::new("eu-west-1")],
        Duration::from_secs(26 * 3600),
        1,
        at(0),
    )
    .await;
    let got: Vec<(&str, Option<&str>, Freshness, Option<&str>)> = report
        .lineages
        .iter()
        .map(|l| {
            (
                l.lineage.as_str(),
                l.source_account.as_deref(),
                l.status,
                l.newest.as_ref().map(|s| s.as_str()),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                "111111111111/db",
                Some("111111111111"),
                Freshness::Fresh,
                Some("snap-a1")
            ),
            (
                "222222222222/db",
                Some("222222222222"),
                Freshness::Stale,
                Some("snap-b1")
            ),
        ]
    );
    assert_eq!(
        lines(&report),
        ["stale: eu-west-1 222222222222/db vault: newest snap-b1 is 3d old, more than 1d2h"]
    );
    assert!(report.lineages.iter().all(|l| l.place == Place::Vault));
}

/// From the source side: every source lineage needs a recent copy of its
/// own account in the vault region; another account's copy of the same
/// lineage does not count.
#[tokio::test]
async fn the_source_check_covers_the_vault() {
    let mut vault = MockEc2::new();
    vault
        .expect_describe_snapshots()
        .times(1)
        .returning(|region, _| {
            assert_eq!(region.as_str(), "eu-central-1");
            Ok(vec![
                vault_copy("snap-v1", "111111111111", "vol-0000000a", HOUR),
                vault_copy("snap-v2", "111111111111", "vol-0000000b", 80 * HOUR),
                // Another account's copy of the same volume id.
                vault_copy("snap-v3", "222222222222", "vol-0000000c", HOUR),
            ])
        });
    let source = |lineage: &str| LineageCheck {
        region: Region::new("eu-west-1"),
        place: Place::Source,
        lineage: lineage.into(),
        source_account: None,
        instance: None,
        device: None,
        alias: Some(format!("alias-{lineage}")),
        newest: None,
        newest_time: None,
        age_seconds: None,
        max_age_seconds: 0,
        status: Freshness::Fresh,
        completed: 1,
        errors: Vec::new(),
        verified: None,
    };
    let mut report = CheckReport {
        now: at(0),
        lineages: vec![
            source("vol-0000000a"),
            source("vol-0000000b"),
            source("vol-0000000c"),
        ],
        regions: Vec::new(),
        region_errors: Vec::new(),
    };
    let spec = VaultCheck {
        source_account: "111111111111".into(),
        region: Some(Region::new("eu-central-1")),
        max_age: Duration::from_secs(48 * 3600),
    };
    check_vault_copies(&vault, &spec, &mut report, at(0)).await;
    let got: Vec<(&str, Freshness)> = report
        .lineages
        .iter()
        .filter(|l| l.place == Place::Vault)
        .map(|l| (l.lineage.as_str(), l.status))
        .collect();
    assert_eq!(
        got,
        [
            ("111111111111/vol-0000000a", Freshness::Fresh),
            ("111111111111/vol-0000000b", Freshness::Stale),
            ("111111111111/vol-0000000c", Freshness::Missing),
        ]
    );
    assert_eq!(
        lines(&report),
        [
            "stale: eu-central-1 111111111111/vol-0000000b (alias-vol-0000000b) vault: newest snap-v2 is 3d8h old, more than 2d",
            "missing: eu-central-1 111111111111/vol-0000000c (alias-vol-0000000c) vault: no completed snapshot",
        ]
    );
    assert!(
        report.regions.is_empty(),
        "the vault's regions are another account's"
    );
}
