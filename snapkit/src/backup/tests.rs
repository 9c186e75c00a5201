use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ec2kit::{Action, BlockDevice, MockEc2, SnapshotState, VolumeAttachment};

use super::hold::with_hold;
use super::*;
use crate::consistency::HoldReport;
use ec2kit::requests::CreateSnapshots;
use ec2kit::{Filter, Tags, Volume};

fn instance(n: usize, region: &Region) -> Instance {
    let id = InstanceId::from_api(format!("i-{n:017x}"));
    Instance {
        instance_type: Some("t3.micro".into()),
        architecture: Some("x86_64".into()),
        root_device_name: Some("/dev/xvda".into()),
        virtualization_type: Some("hvm".into()),
        ena_support: Some(true),
        block_devices: (0..3)
            .map(|d| BlockDevice {
                device_name: ["/dev/xvda", "/dev/sdf", "/dev/sdg"][d].into(),
                volume_id: VolumeId::from_api(format!("vol-{:017x}", n * 10 + d)),
                delete_on_termination: None,
            })
            .collect(),
        tags: Tags::new()
            .with("Name", format!("web{n}"))
            .with("aws:cloudformation:stack-name", "x")
            .with("team", "ops"),
        ..Instance::new(id, region.clone())
    }
}

fn volume_of(i: &Instance, d: usize, tags: Tags) -> Volume {
    Volume {
        id: i.block_devices[d].volume_id.clone(),
        region: i.region.clone(),
        availability_zone: None,
        state: "in-use".into(),
        size_gib: Some(8),
        volume_type: None,
        encrypted: false,
        kms_key_id: None,
        snapshot_id: None,
        create_time: None,
        attachments: vec![VolumeAttachment {
            instance_id: i.id.clone(),
            device: Some(i.block_devices[d].device_name.clone()),
            state: None,
        }],
        tags,
    }
}

fn created(request: &CreateSnapshots) -> Vec<Snapshot> {
    vec![Snapshot::new(
        SnapshotId::from_api(format!(
            "snap-{}",
            &request.instance_id.as_ref().unwrap().as_str()[2..]
        )),
        None,
        Timestamp::UNIX_EPOCH,
        SnapshotState::Pending,
    )]
}

fn options() -> BackupOptions {
    BackupOptions {
        now: "2026-11-22T03:17:00Z".parse().unwrap(),
        ..BackupOptions::default()
    }
}

#[test]
fn window_key_is_the_start_of_the_window() {
    let mut o = options();
    assert_eq!(o.window_key(), "2026-11-22T03:00:00Z");
    o.window = SignedDuration::from_hours(24);
    assert_eq!(o.window_key(), "2026-11-22T00:00:00Z");
}

#[tokio::test]
async fn tags_are_applied_at_creation_with_lineage_and_instance_tags() {
    let region = Region::new("eu-west-1");
    let inst = instance(1, &region);
    let vols = vec![
        volume_of(&inst, 0, Tags::new().with("backup-class", "gold")),
        volume_of(&inst, 1, Tags::new()),
    ];
    let mut ec2 = MockEc2::new();
    // Once before creating, once after (a racing run's set).
    ec2.expect_describe_snapshots().times(2).returning(|_, f| {
        assert!(f.contains(&Filter::new("tag:ektool:window", ["2026-11-22T03:00:00Z"])));
        Ok(vec![])
    });
    ec2.expect_describe_volumes()
        .times(1)
        .returning(move |_, _| Ok(vols.clone()));
    ec2.expect_create_tags().never();
    ec2.expect_create_snapshots().times(1).returning(|_, r| {
        let t = &r.tags;
        assert_eq!(t.get(tags::OWNER), Some(tags::OWNER_VALUE));
        assert_eq!(t.get(tags::INSTANCE), Some("i-00000000000000001"));
        assert_eq!(t.get(tags::ORIGIN_REGION), Some("eu-west-1"));
        assert_eq!(t.get(tags::CREATED), Some("2026-11-22T03:17:00Z"));
        assert_eq!(t.get(tags::ROOT_DEVICE), Some("/dev/xvda"));
        assert!(t.get(tags::SET).is_some_and(|s| s.len() == 32));
        assert_eq!(t.get(DEVICES_TAG), Some("vol-0000000000000000a=/dev/xvda vol-0000000000000000b=/dev/sdf vol-0000000000000000c=/dev/sdg"));
        assert_eq!(t.get("Name"), Some("web1"));
        assert_eq!(t.get("team"), Some("ops"));
        assert!(t.iter().all(|(k, _)| !k.starts_with("aws:")));
        assert!(r.copy_tags_from_volume, "no collision: volume tags are copied");
        assert!(r.description.as_deref().unwrap().contains("(web1)"));
        Ok(created(r))
    });
    let out = backup_instances(&ec2, &region, &[inst], &options()).await;
    assert!(
        matches!(&out[0].status, BackupStatus::Created { snapshots, .. } if snapshots.len() == 1),
        "{out:?}"
    );
}

#[tokio::test]
async fn colliding_volume_tags_are_not_copied_and_the_instance_wins() {
    let region = Region::new("eu-west-1");
    let inst = instance(2, &region);
    let vols = vec![volume_of(&inst, 0, Tags::new().with("Name", "root-volume"))];
    let mut ec2 = MockEc2::new();
    ec2.expect_describe_snapshots().returning(|_, _| Ok(vec![]));
    ec2.expect_describe_volumes()
        .returning(move |_, _| Ok(vols.clone()));
    ec2.expect_create_snapshots().returning(|_, r| {
        assert!(!r.copy_tags_from_volume);
        assert_eq!(r.tags.get("Name"), Some("web2"));
        Ok(created(r))
    });
    let out = backup_instances(&ec2, &region, &[inst], &options()).await;
    assert_eq!(
        out[0].notes,
        ["volume tags not copied: keys also on the instance (Name)"]
    );
}

#[tokio::test]
async fn one_failing_instance_does_not_stop_the_others() {
    let region = Region::new("us-east-1");
    let instances: Vec<Instance> = (0..5).map(|n| instance(n, &region)).collect();
    let mut ec2 = MockEc2::new();
    ec2.expect_describe_snapshots().returning(|_, _| Ok(vec![]));
    ec2.expect_describe_volumes().returning(|_, _| Ok(vec![]));
    ec2.expect_create_snapshots()
        .times(5)
        .returning(|region, r| {
            if r.instance_id.as_ref().unwrap().as_str().ends_with('2') {
                Err(ec2kit::Ec2Error::from_code(
                    Action::CreateSnapshots,
                    region.as_str(),
                    "IncorrectState",
                    Some("hibernated".into()),
                ))
            } else {
                Ok(created(r))
            }
        });
    let out = backup_instances(&ec2, &region, &instances, &options()).await;
    assert_eq!(out.iter().filter(|r| r.failed()).count(), 1);
    assert!(out[2].failed());
    assert!(
        matches!(&out[2].status, BackupStatus::Failed { code: Some(c), .. } if c == "IncorrectState")
    );
}

/// A window snapshot of `volume`, in set `set`, started at `minute`.
fn in_window(id: u64, volume: &VolumeId, set: &str, minute: i64, instance: &str) -> Snapshot {
    let mut s = Snapshot::new(
        SnapshotId::from_api(format!("snap-{id:017x}")),
        Some(volume.clone()),
        Timestamp::from_second(1_795_835_000 + minute * 60).unwrap(),
        SnapshotState::Completed,
    );
    s.tags.insert(tags::OWNER, tags::OWNER_VALUE);
    s.tags.insert(tags::SET, set);
    s.tags.insert(tags::INSTANCE, instance);
    s.tags.insert(WINDOW_TAG, "2026-11-22T03:00:00Z");
    s
}

/// A stateful cloud: the window's snapshots, and `CreateSnapshots` /
/// `CreateSnapshot` adding to them (volumes from `instances`).
struct Cloud {
    snapshots: Vec<Snapshot>,
    next: u64,
    created: Vec<String>,
    deleted: Vec<SnapshotId>,
    /// Snapshots appearing right after our create (a racing run).
    racer: Vec<Snapshot>,
}

fn cloud(instances: Vec<Instance>, state: Arc<std::sync::Mutex<Cloud>>) -> MockEc2 {
    let mut ec2 = MockEc2::new();
    let s = state.clone();
    ec2.expect_describe_snapshots()
        .returning(move |_, _| Ok(s.lock().unwrap().snapshots.clone()));
    let volumes: Vec<Volume> = instances
        .iter()
        .flat_map(|i| (0..i.block_devices.len()).map(move |d| volume_of(i, d, Tags::new())))
        .collect();
    ec2.expect_describe_volumes()
        .returning(move |_, _| Ok(volumes.clone()));
    let s = state.clone();
    ec2.expect_create_snapshots().returning(move |_, r| {
        let mut c = s.lock().unwrap();
        let inst = instances
            .iter()
            .find(|i| Some(&i.id) == r.instance_id.as_ref())
            .unwrap();
        let set = r.tags.get(tags::SET).unwrap().to_owned();
        c.created.push(inst.id.to_string());
        let mut made = Vec::new();
        for b in &inst.block_devices {
            if (r.exclude_boot_volume && Some(&b.device_name) == inst.root_device_name.as_ref())
                || r.exclude_data_volume_ids.contains(&b.volume_id)
            {
                continue;
            }
            c.next += 1;
            let snap = in_window(0x100 + c.next, &b.volume_id, &set, 30, inst.id.as_str());
            made.push(snap);
        }
        c.snapshots.extend(made.iter().cloned());
        let racer = std::mem::take(&mut c.racer);
        c.snapshots.extend(racer);
        Ok(made)
    });
    let s = state.clone();
    ec2.expect_create_snapshot().returning(move |_, r| {
        let mut c = s.lock().unwrap();
        c.next += 1;
        let snap = in_window(
            0x100 + c.next,
            r.volume_id.as_ref().unwrap(),
            r.tags.get(tags::SET).unwrap(),
            30,
            "",
        );
        c.created.push(snap.volume_id.as_ref().unwrap().to_string());
        c.snapshots.push(snap.clone());
        let racer = std::mem::take(&mut c.racer);
        c.snapshots.extend(racer);
        Ok(snap)
    });
    let s = state;
    ec2.expect_delete_snapshot().returning(move |_, id, _| {
        let mut c = s.lock().unwrap();
        c.snapshots.retain(|x| &x.id != id);
        c.deleted.push(id.clone());
        Ok(())
    });
    ec2
}

fn state(snapshots: Vec<Snapshot>) -> Arc<std::sync::Mutex<Cloud>> {
    Arc::new(std::sync::Mutex::new(Cloud {
        snapshots,
        next: 0,
        created: Vec::new(),
        deleted: Vec::new(),
        racer: Vec::new(),
    }))
}

#[tokio::test]
async fn a_rerun_in_the_same_window_skips_instances_already_done() {
    let region = Region::new("us-east-1");
    let instances: Vec<Instance> = (0..3).map(|n| instance(n, &region)).collect();
    let done: Vec<Snapshot> = instances[1]
        .block_devices
        .iter()
        .enumerate()
        .map(|(k, b)| {
            in_window(
                k as u64 + 1,
                &b.volume_id,
                "earlier",
                5,
                "i-00000000000000001",
            )
        })
        .collect();
    let st = state(done);
    let ec2 = cloud(instances.clone(), st.clone());
    let out = backup_instances(&ec2, &region, &instances, &options()).await;
    assert!(
        matches!(&out[1].status, BackupStatus::AlreadyDone { snapshots } if snapshots.len() == 3),
        "{out:?}"
    );
    let created = st.lock().unwrap().created.clone();
    assert_eq!(created, ["i-00000000000000000", "i-00000000000000002"]);
}

/// H3: an earlier `--volume`, `--exclude-boot` or `--exclude-volume` run
/// in the window (or a forged snapshot carrying the instance tag) never
/// makes the full backup skip; it does make the same partial run skip.
#[tokio::test]
async fn only_a_set_covering_the_requested_volumes_counts_as_done() {
    let region = Region::new("us-east-1");
    let inst = instance(1, &region);
    let vol = |d: usize| inst.block_devices[d].volume_id.clone();
    let id = "i-00000000000000001";
    let earlier: Vec<(&str, Vec<Snapshot>)> = vec![
        ("a --volume run", vec![in_window(1, &vol(1), "v", 5, id)]),
        (
            "an --exclude-boot run",
            vec![
                in_window(1, &vol(1), "eb", 5, id),
                in_window(2, &vol(2), "eb", 5, id),
            ],
        ),
        (
            "an --exclude-volume run",
            vec![
                in_window(1, &vol(0), "ev", 5, id),
                in_window(2, &vol(1), "ev", 5, id),
            ],
        ),
        ("a forged snapshot of another volume", {
            let mut s = in_window(1, &VolumeId::from_api("vol-0000000000000beef"), "f", 5, id);
            s.tags.insert(tags::VOLUME, vol(0).as_str());
            vec![s]
        }),
        (
            "two sets that only together cover it",
            vec![
                in_window(1, &vol(0), "x", 5, id),
                in_window(2, &vol(1), "y", 5, id),
                in_window(3, &vol(2), "y", 5, id),
            ],
        ),
    ];
    for (what, snaps) in earlier {
        let st = state(snaps);
        let ec2 = cloud(vec![inst.clone()], st.clone());
        let out = backup_instances(&ec2, &region, std::slice::from_ref(&inst), &options()).await;
        assert!(
            matches!(&out[0].status, BackupStatus::Created { snapshots, .. } if snapshots.len() == 3),
            "after {what}: {out:?}"
        );
    }

    // The same partial run again is done.
    let st = state(vec![
        in_window(1, &vol(1), "eb", 5, id),
        in_window(2, &vol(2), "eb", 5, id),
    ]);
    let ec2 = cloud(vec![inst.clone()], st.clone());
    let partial = BackupOptions {
        exclude_boot: true,
        ..options()
    };
    let out = backup_instances(&ec2, &region, std::slice::from_ref(&inst), &partial).await;
    assert!(
        matches!(out[0].status, BackupStatus::AlreadyDone { .. }),
        "{out:?}"
    );
    assert!(st.lock().unwrap().created.is_empty());

    // A volume run counts a volume done by any set of the window.
    let st = state(vec![
        in_window(1, &vol(0), "full", 5, id),
        in_window(2, &vol(1), "full", 5, id),
    ]);
    let ec2 = cloud(vec![inst.clone()], st.clone());
    let out = backup_volumes(&ec2, &region, &[vol(1)], &options()).await;
    assert!(
        matches!(out[0].status, BackupStatus::AlreadyDone { .. }),
        "{out:?}"
    );
}

/// L16: two runs in one window create at the same time; the one whose
/// set came second sees the first when it looks again, deletes its own
/// set and reports the other's. The first keeps its own.
#[tokio::test]
async fn the_later_of_two_racing_sets_is_deleted_again() {
    let region = Region::new("us-east-1");
    let inst = instance(1, &region);
    let id = "i-00000000000000001";
    let racer: Vec<Snapshot> = inst
        .block_devices
        .iter()
        .enumerate()
        .map(|(k, b)| in_window(k as u64 + 1, &b.volume_id, "racer", 10, id))
        .collect();

    // The racer's set started before ours (minute 10 < 30): we lose.
    let st = state(vec![]);
    st.lock().unwrap().racer = racer.clone();
    let ec2 = cloud(vec![inst.clone()], st.clone());
    let out = backup_instances(&ec2, &region, std::slice::from_ref(&inst), &options()).await;
    let winner: Vec<SnapshotId> = racer.iter().map(|s| s.id.clone()).collect();
    assert!(
        matches!(&out[0].status, BackupStatus::AlreadyDone { snapshots } if *snapshots == winner),
        "{out:?}"
    );
    {
        let c = st.lock().unwrap();
        assert_eq!(c.deleted.len(), 3);
        assert_eq!(c.snapshots.len(), 3, "one set is left");
        assert!(
            c.snapshots
                .iter()
                .all(|s| s.tags.get(tags::SET) == Some("racer"))
        );
    }

    // The racer started after ours: we keep ours (it deletes its own).
    let late: Vec<Snapshot> = racer
        .iter()
        .map(|s| {
            let mut s = s.clone();
            s.start_time = Timestamp::from_second(1_795_835_000 + 50 * 60).unwrap();
            s
        })
        .collect();
    let st = state(vec![]);
    st.lock().unwrap().racer = late;
    let ec2 = cloud(vec![inst.clone()], st.clone());
    let out = backup_instances(&ec2, &region, std::slice::from_ref(&inst), &options()).await;
    assert!(
        matches!(out[0].status, BackupStatus::Created { .. }),
        "{out:?}"
    );
    assert!(st.lock().unwrap().deleted.is_empty());

    // Volume backups race the same way.
    let v = inst.block_devices[1].volume_id.clone();
    let st = state(vec![]);
    st.lock().unwrap().racer = vec![in_window(9, &v, "racer-v", 10, "")];
    let ec2 = cloud(vec![inst.clone()], st.clone());
    let out = backup_volumes(&ec2, &region, std::slice::from_ref(&v), &options()).await;
    assert!(
        matches!(out[0].status, BackupStatus::AlreadyDone { .. }),
        "{out:?}"
    );
    assert_eq!(st.lock().unwrap().deleted.len(), 1);
}

/// L14: what a hold report does to the results of the snapshot call.
#[test]
fn a_bad_hold_fails_the_item_and_keeps_the_snapshots_made() {
    let region = Region::new("r");
    let made = vec![SnapshotId::from_api("snap-00000001")];
    let created = BackupResult {
        region: region.clone(),
        instance: Some(InstanceId::from_api("i-1")),
        volume: None,
        name: None,
        status: BackupStatus::Created {
            set: "s".into(),
            snapshots: made.clone(),
        },
        notes: Vec::new(),
    };
    let clean = HoldReport {
        frozen_secs: Some(0.5),
        ..HoldReport::default()
    };
    let out = with_hold(vec![created.clone()], "h", &clean);
    assert!(!out[0].failed());
    assert!(out[0].notes[0].starts_with("held on h: frozen 0.50s"));

    let thaw_failed = HoldReport {
        release_errors: vec!["thaw: h: connection failed".into()],
        ..HoldReport::default()
    };
    let out = with_hold(vec![created.clone()], "h", &thaw_failed);
    let BackupStatus::Failed {
        error, snapshots, ..
    } = &out[0].status
    else {
        panic!("{out:?}")
    };
    assert_eq!(*snapshots, made, "the snapshots made are reported");
    assert!(error.contains("could not release on h"), "{error}");

    let early = HoldReport {
        released_before_snapshot: true,
        released_by_watchdog: true,
        ..HoldReport::default()
    };
    let out = with_hold(vec![created], "h", &early);
    let BackupStatus::Failed {
        error, snapshots, ..
    } = &out[0].status
    else {
        panic!("{out:?}")
    };
    assert_eq!(*snapshots, made);
    assert!(error.contains("may not be consistent"), "{error}");
}

#[tokio::test]
async fn dry_run_reports_would_succeed() {
    let region = Region::new("us-east-1");
    let mut ec2 = MockEc2::new();
    ec2.expect_describe_snapshots().returning(|_, _| Ok(vec![]));
    ec2.expect_describe_volumes().returning(|_, _| Ok(vec![]));
    ec2.expect_create_snapshots().returning(|region, r| {
        assert!(r.dry_run);
        Err(ec2kit::Ec2Error::from_code(
            Action::CreateSnapshots,
            region.as_str(),
            "DryRunOperation",
            None,
        ))
    });
    let opts = BackupOptions {
        dry_run: true,
        ..options()
    };
    let out = backup_instances(&ec2, &region, &[instance(1, &region)], &opts).await;
    assert_eq!(out[0].status, BackupStatus::DryRunOk);
}

/// The call budget: one `CreateSnapshots` per instance plus a constant
/// per region (figure printed; target <= 1.05 x N at N = 1,000).
#[tokio::test]
async fn api_calls_for_a_thousand_instances() {
    let region = Region::new("us-east-1");
    let instances: Vec<Instance> = (0..1000).map(|n| instance(n, &region)).collect();
    let calls = Arc::new(AtomicUsize::new(0));
    let mut ec2 = MockEc2::new();
    let c = calls.clone();
    ec2.expect_describe_snapshots().returning(move |_, _| {
        c.fetch_add(1, Ordering::SeqCst);
        Ok(vec![])
    });
    let c = calls.clone();
    ec2.expect_describe_volumes().returning(move |_, _| {
        // 3,000 volumes in pages of 500.
        c.fetch_add(6, Ordering::SeqCst);
        Ok(vec![])
    });
    let c = calls.clone();
    ec2.expect_create_snapshots().returning(move |_, r| {
        c.fetch_add(1, Ordering::SeqCst);
        Ok(created(r))
    });
    let out = backup_instances(&ec2, &region, &instances, &options()).await;
    assert_eq!(out.len(), 1000);
    // The CLI adds one DescribeRegions and one DescribeInstances page.
    let total = calls.load(Ordering::SeqCst) + 2;
    println!(
        "EC2 calls to back up 1000 instances x 3 volumes: {total} ({:.3} x N)",
        total as f64 / 1000.0
    );
    assert!(total as f64 <= 1.05 * 1000.0, "{total}");
}

#[test]
fn device_from_the_set_map() {
    let mut s = Snapshot::new(
        SnapshotId::from_api("snap-00000001"),
        Some(VolumeId::from_api("vol-b")),
        Timestamp::UNIX_EPOCH,
        SnapshotState::Completed,
    );
    s.tags.insert(DEVICES_TAG, "vol-a=/dev/xvda vol-b=/dev/sdf");
    assert_eq!(device_of(&s).as_deref(), Some("/dev/sdf"));
}

// ---- the job ---------------------------------------------------------------

/// A cloud of `instances` per region (`fail` refuses to list), recording
/// each create; every create succeeds.
fn fleet_cloud(
    instances: Vec<Instance>,
    fail: &'static str,
    made: Arc<std::sync::Mutex<Vec<String>>>,
) -> MockEc2 {
    let mut ec2 = MockEc2::new();
    ec2.expect_describe_instances().returning(move |region, f| {
        if region.as_str() == fail {
            return Err(ec2kit::Ec2Error::from_code(
                Action::DescribeInstances,
                region.as_str(),
                "UnauthorizedOperation",
                None,
            ));
        }
        let ids: Option<&Vec<String>> = f
            .iter()
            .find(|f| f.name == "instance-id")
            .map(|f| &f.values);
        Ok(instances
            .iter()
            .filter(|i| &i.region == region)
            .filter(|i| ids.is_none_or(|ids| ids.contains(&i.id.to_string())))
            .cloned()
            .collect())
    });
    ec2.expect_describe_snapshots().returning(|_, _| Ok(vec![]));
    ec2.expect_describe_volumes().returning(|_, _| Ok(vec![]));
    let c = made.clone();
    ec2.expect_create_snapshots().returning(move |_, r| {
        if r.dry_run {
            return Err(ec2kit::Ec2Error::from_code(
                Action::CreateSnapshots,
                "r",
                "DryRunOperation",
                None,
            ));
        }
        c.lock()
            .unwrap()
            .push(r.instance_id.as_ref().unwrap().to_string());
        Ok(created(r))
    });
    ec2.expect_create_snapshot().returning(move |_, r| {
        made.lock()
            .unwrap()
            .push(r.volume_id.as_ref().unwrap().to_string());
        Ok(Snapshot::new(
            SnapshotId::from_api("snap-0000000000000abcd"),
            r.volume_id.clone(),
            Timestamp::UNIX_EPOCH,
            SnapshotState::Pending,
        ))
    });
    ec2
}

/// By tag in two regions, one of which cannot be listed: the other is
/// backed up in one pass, the failed region is one failed result, and the
/// events say what happened.
#[tokio::test]
async fn a_backup_job_goes_on_past_a_region_it_cannot_list() {
    let (a, b) = (Region::new("eu-west-1"), Region::new("us-east-1"));
    let instances = vec![instance(1, &a), instance(2, &a), instance(3, &b)];
    let created = Arc::default();
    let ec2 = fleet_cloud(instances, "us-east-1", Arc::clone(&created));
    let events = Arc::new(std::sync::Mutex::new(Vec::new()));
    let e = events.clone();
    let report = Backup::new(&ec2, options())
        .instances(
            vec![a.clone(), b.clone()],
            Instances::Tagged(ec2kit::Tag::new("team", "ops")),
        )
        .on_event(move |ev| e.lock().unwrap().push(ev.clone()))
        .run()
        .await;
    assert_eq!(report.results.len(), 3, "{report:?}");
    assert_eq!(report.failed(), 1);
    let failed = report.results.iter().find(|r| r.failed()).unwrap();
    assert_eq!((&failed.region, &failed.instance), (&b, &None));
    assert!(
        matches!(&failed.status, BackupStatus::Failed { code: Some(c), .. } if c == "UnauthorizedOperation")
    );
    assert_eq!(created.lock().unwrap().len(), 2);
    assert_eq!(report.created()[&a].len(), 2);
    let events = events.lock().unwrap();
    assert!(events.contains(&BackupEvent::Listed {
        region: a,
        instances: 2
    }));
    let done = events
        .iter()
        .filter(|e| matches!(e, BackupEvent::Done { .. }))
        .count();
    assert_eq!(done, 3);
}

/// Held instances: each host reached at the address asked for through
/// the caller's `connect`; an instance without that address fails alone;
/// once cancelled, nothing more starts. Ids not found are reported.
#[tokio::test]
async fn a_held_backup_reaches_each_host_through_connect() {
    let region = Region::new("eu-west-1");
    let mut with_ip = instance(1, &region);
    with_ip.public_ip = Some("203.0.113.1".into());
    let without = instance(2, &region);
    let created = Arc::default();
    let ec2 = fleet_cloud(
        vec![with_ip.clone(), without.clone()],
        "",
        Arc::clone(&created),
    );
    let reached = Arc::new(std::sync::Mutex::new(Vec::new()));
    let r = reached.clone();
    let connect: crate::connect::Connect = Arc::new(move |addr: &str| {
        r.lock().unwrap().push(addr.to_owned());
        let mut remote = ec2kit::MockRemote::new();
        remote.expect_host().return_const(format!("root@{addr}:22"));
        Ok(Arc::new(remote) as Arc<dyn ec2kit::Remote>)
    });
    let missing = InstanceId::from_api("i-0000000000000beef");
    let job = Backup::new(&ec2, options())
        .instances(
            vec![region.clone()],
            Instances::Ids(vec![
                with_ip.id.clone(),
                without.id.clone(),
                missing.clone(),
            ]),
        )
        .consistent(InstanceHold {
            // Nothing to freeze or lock: the hold is only the host reached.
            consistency: crate::consistency::Consistency::default(),
            address: crate::connect::Address::PublicIp,
        })
        .connect(connect);
    let report = job.run().await;
    assert_eq!(report.not_found, [missing]);
    assert_eq!(*reached.lock().unwrap(), ["203.0.113.1"]);
    assert!(matches!(
        report.results[0].status,
        BackupStatus::Created { .. }
    ));
    assert!(
        report.results[0].notes[0].starts_with("held on root@203.0.113.1:22"),
        "{:?}",
        report.results[0].notes
    );
    let BackupStatus::Failed { error, .. } = &report.results[1].status else {
        panic!("{report:?}")
    };
    assert_eq!(error, "no public_ip to reach it over SSH");
    assert_eq!(*created.lock().unwrap(), [with_ip.id.to_string()]);

    let cancel = ec2kit::CancellationToken::new();
    cancel.cancel();
    let report = job.clone().cancel_on(cancel).run().await;
    assert!(report.results.iter().all(|r| matches!(
        &r.status,
        BackupStatus::Failed { error, .. } if error == "not started: interrupted"
    )));
    assert_eq!(created.lock().unwrap().len(), 1, "nothing more started");
}

/// The plan is the dry run: EC2's DryRun for each create, held hosts
/// reached (a `true` run), nothing frozen, locked or created.
#[tokio::test]
async fn the_plan_of_a_held_volume_backup_changes_nothing() {
    let region = Region::new("eu-west-1");
    let mut ec2 = MockEc2::new();
    ec2.expect_describe_snapshots().returning(|_, _| Ok(vec![]));
    ec2.expect_describe_volumes().returning(|_, _| Ok(vec![]));
    ec2.expect_create_snapshot().never();
    let mut remote = ec2kit::MockRemote::new();
    remote.expect_host().return_const("root@db:22".to_owned());
    remote.expect_run().times(1).returning(|c| {
        assert_eq!(c.program, ec2kit::Program::Argv(vec!["true".into()]));
        Ok(ec2kit::Output {
            status: ec2kit::ExitStatus::Code(0),
            stdout: vec![],
            stderr: vec![],
        })
    });
    let remote: Arc<dyn ec2kit::Remote> = Arc::new(remote);
    let volume = VolumeId::from_api("vol-0000000000000000a");
    let job = Backup::new(&ec2, options())
        .volumes([VolumeBackup {
            region: region.clone(),
            volume: volume.clone(),
            hold: Some(VolumeHold {
                host: "db".into(),
                consistency: crate::consistency::Consistency {
                    mountpoints: vec!["/var/lib/mysql".into()],
                    ..Default::default()
                },
            }),
        }])
        .connect(Arc::new(move |_| Ok(remote.clone())));
    let report = job.plan().await;
    // Not in the window's listing (empty here): the volume is not found,
    // and the note says what would have been held.
    assert_eq!(report.results.len(), 1, "{report:?}");
    assert_eq!(report.results[0].volume.as_ref(), Some(&volume));
    let notes = report.results[0].notes.join(" ");
    assert!(
        notes.contains("would hold on root@db:22: freeze /var/lib/mysql"),
        "{notes}"
    );
}
