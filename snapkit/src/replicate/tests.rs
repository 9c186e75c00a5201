use std::sync::Mutex;

use ec2kit::{MockEc2, SnapshotState};

use super::sim::{Sim, mock};
use super::*;

fn snap(id: &str, volume: &str, day: i64, state: SnapshotState, tags: &[(&str, &str)]) -> Snapshot {
    let mut s = Snapshot::new(
        SnapshotId::from_api(id),
        Some(ec2kit::VolumeId::from_api(volume)),
        Timestamp::from_second(1_700_000_000 + day * 86_400).unwrap(),
        state,
    );
    s.tags = Tags::new().with(tags::OWNER, tags::OWNER_VALUE);
    for (k, v) in tags {
        s.tags.insert(*k, *v);
    }
    s
}

fn items(n: usize) -> ReplicationPlan {
    ReplicationPlan {
        from: Region::new("eu-west-1"),
        to: Region::new("us-east-1"),
        items: (0..n)
            .map(|i| CopyItem {
                lineage: format!("vol-{i:08x}"),
                source: SnapshotId::from_api(format!("snap-{i:08x}")),
                taken: Timestamp::UNIX_EPOCH,
                encrypted: false,
                action: CopyAction::Copy,
                request: Some(CopySnapshot::default()),
            })
            .collect(),
    }
}

#[tokio::test]
async fn plan_finds_copies_by_lineage_tags_and_skips_replicas() {
    let from = Region::new("eu-west-1");
    let to = Region::new("us-east-1");
    let mut ec2 = MockEc2::new();
    ec2.expect_describe_snapshots()
        .returning(|region, filters| {
            if region.as_str() == "eu-west-1" {
                assert!(filters.contains(&Filter::new("status", ["completed"])));
                assert!(filters.contains(&Filter::new("tag:Earmarking", ["production"])));
                let prod = ("Earmarking", "production");
                let mut unowned = snap(
                    "snap-0000000f",
                    "vol-0000000f",
                    9,
                    SnapshotState::Completed,
                    &[prod],
                );
                unowned.tags.remove(tags::OWNER);
                Ok(vec![
                    snap(
                        "snap-000000a1",
                        "vol-0000000a",
                        1,
                        SnapshotState::Completed,
                        &[prod],
                    ),
                    snap(
                        "snap-000000a2",
                        "vol-0000000a",
                        2,
                        SnapshotState::Completed,
                        &[prod, ("team", "web")],
                    ),
                    snap(
                        "snap-000000b1",
                        "vol-0000000b",
                        1,
                        SnapshotState::Completed,
                        &[prod],
                    ),
                    snap(
                        "snap-000000d1",
                        "vol-0000000d",
                        1,
                        SnapshotState::Completed,
                        &[prod],
                    ),
                    snap(
                        "snap-000000e1",
                        "vol-0000000e",
                        1,
                        SnapshotState::Completed,
                        &[prod],
                    ),
                    // A replica that arrived from elsewhere: not native.
                    snap(
                        "snap-000000c1",
                        "vol-ffffffff",
                        3,
                        SnapshotState::Completed,
                        &[
                            prod,
                            (tags::SOURCE_SNAPSHOT, "snap-00000099"),
                            (tags::VOLUME, "vol-0000000c"),
                        ],
                    ),
                    unowned,
                ])
            } else {
                let copy = |id, src: &str, vol: &str, state| {
                    snap(
                        id,
                        "vol-ffffffff",
                        5,
                        state,
                        &[
                            (tags::SOURCE_SNAPSHOT, src),
                            (tags::SOURCE_REGION, "eu-west-1"),
                            (tags::VOLUME, vol),
                        ],
                    )
                };
                let mut wrong_region = copy(
                    "snap-0000e0e0",
                    "snap-000000e1",
                    "vol-0000000e",
                    SnapshotState::Completed,
                );
                wrong_region.tags.insert(tags::SOURCE_REGION, "ap-south-1");
                Ok(vec![
                    copy(
                        "snap-0000a0a2",
                        "snap-000000a2",
                        "vol-0000000a",
                        SnapshotState::Completed,
                    ),
                    copy(
                        "snap-0000b0b1",
                        "snap-000000b1",
                        "vol-0000000b",
                        SnapshotState::Pending,
                    ),
                    copy(
                        "snap-0000d0d1",
                        "snap-000000d1",
                        "vol-0000000d",
                        SnapshotState::Error,
                    ),
                    wrong_region,
                ])
            }
        });
    let selection = Selection {
        tag: Some(Tag::new("Earmarking", "production")),
        ..Selection::default()
    };
    let plan = plan(&ec2, &from, &to, &selection, None).await.unwrap();
    let actions: Vec<(&str, &CopyAction)> = plan
        .items
        .iter()
        .map(|i| (i.source.as_str(), &i.action))
        .collect();
    assert_eq!(
        actions,
        [
            (
                "snap-000000a2",
                &CopyAction::Present {
                    copy: SnapshotId::from_api("snap-0000a0a2")
                }
            ),
            (
                "snap-000000b1",
                &CopyAction::InProgress {
                    copy: SnapshotId::from_api("snap-0000b0b1")
                }
            ),
            (
                "snap-000000d1",
                &CopyAction::Recopy {
                    failed: SnapshotId::from_api("snap-0000d0d1")
                }
            ),
            ("snap-000000e1", &CopyAction::Copy),
        ]
    );
    let req = plan.items[3].request.as_ref().unwrap();
    assert_eq!(req.source_region.as_ref(), Some(&from));
    assert_eq!(req.tags.get(tags::SOURCE_SNAPSHOT), Some("snap-000000e1"));
    assert_eq!(req.tags.get(tags::SOURCE_REGION), Some("eu-west-1"));
    assert_eq!(req.tags.get(tags::VOLUME), Some("vol-0000000e"));
    assert_eq!(req.tags.get(tags::OWNER), Some(tags::OWNER_VALUE));
    assert_eq!(req.tags.get("Earmarking"), Some("production"));
    assert!(!req.encrypted);
    assert!(plan.items[0].request.is_none());
}

#[tokio::test]
async fn replicas_replicate_when_native_only_is_off() {
    let mut ec2 = MockEc2::new();
    ec2.expect_describe_snapshots().returning(|region, _| {
        Ok(if region.as_str() == "eu-west-1" {
            vec![snap(
                "snap-000000c1",
                "vol-ffffffff",
                3,
                SnapshotState::Completed,
                &[
                    (tags::SOURCE_SNAPSHOT, "snap-00000099"),
                    (tags::VOLUME, "vol-0000000c"),
                ],
            )]
        } else {
            vec![]
        })
    });
    let selection = Selection {
        native_only: false,
        ..Selection::default()
    };
    let (from, to) = (Region::new("eu-west-1"), Region::new("us-east-1"));
    let plan = plan(&ec2, &from, &to, &selection, Some("alias/backup"))
        .await
        .unwrap();
    assert_eq!(plan.items.len(), 1);
    let req = plan.items[0].request.as_ref().unwrap();
    // Lineage survives the second hop; the source is the replica itself.
    assert_eq!(req.tags.get(tags::VOLUME), Some("vol-0000000c"));
    assert_eq!(req.tags.get(tags::SOURCE_SNAPSHOT), Some("snap-000000c1"));
    assert!(req.encrypted && req.kms_key_id.as_deref() == Some("alias/backup"));
}

#[tokio::test(start_paused = true)]
async fn scheduler_fills_every_slot_and_never_surfaces_the_limit() {
    let sim = Sim::new(20, Duration::from_secs(300), Duration::from_secs(3600), 7);
    let ec2 = mock(&sim);
    let options = CopyOptions {
        wait: true,
        ..CopyOptions::default()
    };
    let t0 = Instant::now();
    let report = apply(&ec2, &[items(300)], &options, &|_| {}).await;
    let sim = sim.lock().unwrap();
    assert_eq!(report.failed(), 0, "{report:?}");
    assert!(
        report
            .results
            .iter()
            .all(|r| matches!(r.outcome, CopyOutcome::Completed { .. }))
    );
    assert_eq!(report.started, 300);
    assert_eq!(sim.limit_errors, 0);
    assert!(sim.peak <= 20);
    let (busy, end) = sim.busy_and_end();
    let utilisation = busy.as_secs_f64() / (20.0 * (end.unwrap() - t0).as_secs_f64());
    assert!(utilisation > 0.9, "utilisation {utilisation}");
}

#[tokio::test(start_paused = true)]
async fn foreign_copies_holding_the_slots_mean_waiting_not_failing() {
    let sim = Sim::new(20, Duration::from_secs(60), Duration::from_secs(600), 3);
    {
        let mut s = sim.lock().unwrap();
        let until = Instant::now() + Duration::from_secs(1800);
        s.foreign_until = vec![until; 20];
    }
    let ec2 = mock(&sim);
    let options = CopyOptions {
        wait: true,
        ..CopyOptions::default()
    };
    let report = apply(&ec2, &[items(30)], &options, &|_| {}).await;
    assert_eq!(report.failed(), 0, "{report:?}");
    assert!(report.slot_waits > 0);
    assert!(sim.lock().unwrap().peak <= 20);
}

#[tokio::test(start_paused = true)]
async fn a_slot_that_never_frees_fails_the_rest_after_the_timeout() {
    let sim = Sim::new(20, Duration::from_secs(60), Duration::from_secs(600), 3);
    sim.lock().unwrap().foreign_until = vec![Instant::now() + Duration::from_secs(86_400); 20];
    let ec2 = mock(&sim);
    let options = CopyOptions {
        slot_timeout: Duration::from_secs(1800),
        ..CopyOptions::default()
    };
    let t0 = Instant::now();
    let report = apply(&ec2, &[items(3)], &options, &|_| {}).await;
    assert_eq!(report.failed(), 3);
    assert!(t0.elapsed() >= Duration::from_secs(1800));
    assert!(t0.elapsed() < Duration::from_secs(1900));
}

#[tokio::test(start_paused = true)]
async fn max_in_flight_bounds_our_copies_and_no_wait_returns_once_started() {
    let sim = Sim::new(20, Duration::from_secs(600), Duration::from_secs(601), 5);
    let ec2 = mock(&sim);
    let options = CopyOptions {
        max_in_flight: 4,
        ..CopyOptions::default()
    };
    let report = apply(&ec2, &[items(10)], &options, &|_| {}).await;
    assert_eq!(report.peak_in_flight.get("us-east-1"), Some(&4));
    assert_eq!(report.started, 10);
    assert_eq!(report.failed(), 0);
    // The last copies are still in flight: a later run finds them.
    assert!(
        report
            .results
            .iter()
            .any(|r| matches!(r.outcome, CopyOutcome::InFlight { .. }))
    );
    assert!(sim.lock().unwrap().peak <= 4);
}

#[tokio::test(start_paused = true)]
async fn a_copy_that_ends_in_error_is_reported_with_ec2s_message() {
    let mut ec2 = MockEc2::new();
    ec2.expect_copy_snapshot()
        .times(1)
        .returning(|_, _| Ok(SnapshotId::from_api("snap-0000c0c0")));
    ec2.expect_describe_snapshots().returning(|_, _| {
        let mut s = Snapshot::new(
            SnapshotId::from_api("snap-0000c0c0"),
            None,
            Timestamp::UNIX_EPOCH,
            SnapshotState::Error,
        );
        s.state_message = Some("Given key ID is not accessible".into());
        Ok(vec![s])
    });
    let options = CopyOptions {
        wait: true,
        ..CopyOptions::default()
    };
    let events = Mutex::new(Vec::new());
    let report = apply(&ec2, &[items(1)], &options, &|e| {
        if let CopyEvent::Failed { error, .. } = e {
            events.lock().unwrap().push(error.to_owned());
        }
    })
    .await;
    assert_eq!(report.failed(), 1);
    assert!(events.lock().unwrap()[0].contains("Given key ID is not accessible"));
}

#[tokio::test]
async fn unusable_kms_keys_are_refused_before_any_copy() {
    let mut ec2 = MockEc2::new();
    ec2.expect_describe_kms_key().returning(|_, key| {
        Ok(ec2kit::KmsKey::new(
            key,
            if key == "good" { "Enabled" } else { "Disabled" },
        ))
    });
    ec2.expect_copy_snapshot().never();
    let r = Region::new("us-east-1");
    assert!(check_kms_key(&ec2, &r, "good").await.is_ok());
    let err = check_kms_key(&ec2, &r, "old").await.unwrap_err();
    assert!(err.to_string().contains("Disabled"), "{err}");
}

#[tokio::test]
async fn lag_compares_the_newest_source_with_the_newest_copys_data() {
    let mut ec2 = MockEc2::new();
    ec2.expect_describe_snapshots().returning(|region, _| {
        Ok(if region.as_str() == "eu-west-1" {
            vec![
                snap(
                    "snap-000000a2",
                    "vol-0000000a",
                    4,
                    SnapshotState::Completed,
                    &[],
                ),
                snap(
                    "snap-000000b1",
                    "vol-0000000b",
                    4,
                    SnapshotState::Completed,
                    &[],
                ),
                snap(
                    "snap-000000c1",
                    "vol-0000000c",
                    4,
                    SnapshotState::Completed,
                    &[],
                ),
            ]
        } else {
            let copy = |id, src: &str, vol: &str, day: i64, state| {
                let t = Timestamp::from_second(1_700_000_000 + day * 86_400)
                    .unwrap()
                    .to_string();
                snap(
                    id,
                    "vol-ffffffff",
                    9,
                    state,
                    &[
                        (tags::SOURCE_SNAPSHOT, src),
                        (tags::SOURCE_REGION, "eu-west-1"),
                        (tags::VOLUME, vol),
                        (tags::SOURCE_TIME, &t),
                    ],
                )
            };
            vec![
                copy(
                    "snap-0000a0a2",
                    "snap-000000a2",
                    "vol-0000000a",
                    4,
                    SnapshotState::Completed,
                ),
                copy(
                    "snap-0000b0b0",
                    "snap-000000b0",
                    "vol-0000000b",
                    2,
                    SnapshotState::Completed,
                ),
                copy(
                    "snap-0000b0b1",
                    "snap-000000b1",
                    "vol-0000000b",
                    4,
                    SnapshotState::Pending,
                ),
            ]
        })
    });
    let rows = lag(
        &ec2,
        &Region::new("eu-west-1"),
        &Region::new("us-east-1"),
        &Selection::default(),
    )
    .await
    .unwrap();
    let got: Vec<(&str, Option<i64>, bool)> = rows
        .iter()
        .map(|r| {
            (
                r.lineage.as_str(),
                r.behind_seconds,
                r.in_progress.is_some(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("vol-0000000a", Some(0), false),
            ("vol-0000000b", Some(2 * 86_400), true),
            ("vol-0000000c", None, false),
        ]
    );
    let day = Duration::from_secs(86_400);
    assert!(!rows[0].is_behind(day));
    assert!(rows[1].is_behind(day));
    assert!(!rows[1].is_behind(3 * day));
    assert!(rows[2].is_behind(100 * day));
}

/// L16: two runs start a copy of the same source at once. The one whose
/// copy started later finds the other when it looks right after starting,
/// deletes its own and follows the earlier copy; the earlier run keeps its
/// own.
#[tokio::test]
async fn a_copy_racing_an_earlier_one_of_the_same_source_is_deleted_again() {
    for (ours_day, earlier_wins) in [(7, true), (3, false)] {
        let from = Region::new("eu-west-1");
        let to = Region::new("us-east-1");
        let source = snap(
            "snap-000000a1",
            "vol-0000000a",
            1,
            SnapshotState::Completed,
            &[],
        );
        let request = copy_request(&source, &from, "vol-0000000a", None);
        let plan = ReplicationPlan {
            from: from.clone(),
            to: to.clone(),
            items: vec![CopyItem {
                lineage: "vol-0000000a".into(),
                source: source.id.clone(),
                taken: source.start_time,
                encrypted: false,
                action: CopyAction::Copy,
                request: Some(request),
            }],
        };
        let copy = |id: &str, day: i64| {
            snap(
                id,
                "vol-ffffffff",
                day,
                SnapshotState::Pending,
                &[
                    (tags::SOURCE_SNAPSHOT, "snap-000000a1"),
                    (tags::SOURCE_REGION, "eu-west-1"),
                    (tags::VOLUME, "vol-0000000a"),
                ],
            )
        };
        let other = copy("snap-000000b0", 5);
        let ours = copy("snap-000000c0", ours_day);
        let deleted = std::sync::Arc::new(Mutex::new(Vec::new()));
        let mut ec2 = MockEc2::new();
        ec2.expect_copy_snapshot()
            .times(1)
            .returning(|_, _| Ok(SnapshotId::from_api("snap-000000c0")));
        ec2.expect_describe_snapshots().returning(move |_, f| {
            assert!(f.contains(&Filter::new(
                format!("tag:{}", tags::SOURCE_SNAPSHOT),
                ["snap-000000a1"]
            )));
            Ok(vec![other.clone(), ours.clone()])
        });
        let d = deleted.clone();
        ec2.expect_delete_snapshot().returning(move |_, id, _| {
            d.lock().unwrap().push(id.to_string());
            Ok(())
        });
        let report = apply(&ec2, &[plan], &CopyOptions::default(), &|_| {}).await;
        if earlier_wins {
            assert_eq!(*deleted.lock().unwrap(), ["snap-000000c0"]);
            assert_eq!(report.duplicates_removed, 1);
            assert_eq!(
                report.results[0].outcome,
                CopyOutcome::InFlight {
                    copy: SnapshotId::from_api("snap-000000b0")
                }
            );
        } else {
            assert!(deleted.lock().unwrap().is_empty());
            assert_eq!(report.duplicates_removed, 0);
            assert_eq!(
                report.results[0].outcome,
                CopyOutcome::InFlight {
                    copy: SnapshotId::from_api("snap-000000c0")
                }
            );
        }
    }
}

/// A copy's data is as old as its tags say, but never newer than the copy
/// itself: a forged future source time (a compromised source account
/// writes the tags of its vault copies) cannot make a lineage look fresh.
#[test]
fn a_copys_data_time_is_its_tag_but_never_after_the_copy_began() {
    let began = Timestamp::from_second(1_700_000_000 + 10 * 86_400).unwrap();
    let older = Timestamp::from_second(1_700_000_000 + 9 * 86_400).unwrap();
    let future = Timestamp::from_second(1_700_000_000 + 400 * 86_400).unwrap();
    let honest = snap(
        "snap-00000001",
        lineage::PLACEHOLDER_VOLUME,
        10,
        SnapshotState::Completed,
        &[(tags::SOURCE_TIME, &older.to_string())],
    );
    assert_eq!(data_time(&honest), older);
    let forged = snap(
        "snap-00000002",
        lineage::PLACEHOLDER_VOLUME,
        10,
        SnapshotState::Completed,
        &[(tags::SOURCE_TIME, &future.to_string())],
    );
    assert_eq!(data_time(&forged), began);
    let untagged = snap(
        "snap-00000003",
        lineage::PLACEHOLDER_VOLUME,
        10,
        SnapshotState::Completed,
        &[],
    );
    assert_eq!(data_time(&untagged), began);
}
