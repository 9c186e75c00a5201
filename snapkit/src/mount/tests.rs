//! Mount logic against mocks: the pure parts, and the faults real EC2 and
//! sshd cannot be made to produce on demand (an attach refused, a device
//! taken in between, a volume that never becomes available).

use std::sync::{Arc, Mutex};

use ec2kit::{
    Action, BlockDevice, ExitStatus, MockEc2, MockRemote, Output, Program, Snapshot,
    VolumeAttachment,
};

use super::device::*;
use super::host::fill;
use super::undo::created_before;
use super::*;
use ec2kit::{
    Ec2Error, Instance, InstanceId, Region, SnapshotId, SnapshotState, Tags, Volume, VolumeId,
};
use jiff::Timestamp;
use std::time::Duration;

use crate::lineage::tags as lineage;

// ---- pure ------------------------------------------------------------------

#[test]
fn local_names_for_nitro_and_xen() {
    let v = VolumeId::from_api("vol-0123456789abcdef0");
    let (nvme, xen) = local_names(&v, "/dev/sdf");
    assert_eq!(
        nvme,
        "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0123456789abcdef0"
    );
    assert_eq!(xen, "/dev/xvdf");
    assert_eq!(local_names(&v, "/dev/xvdg").1, "/dev/xvdg");
}

#[test]
fn options_are_read_only_untrusting_and_never_replay_a_journal() {
    assert_eq!(
        mount_options("xfs"),
        "ro,nosuid,nodev,noexec,norecovery,nouuid"
    );
    assert_eq!(mount_options("ext4"), "ro,nosuid,nodev,noexec,noload");
    assert_eq!(mount_options("ext3"), "ro,nosuid,nodev,noexec,noload");
    assert_eq!(mount_options("btrfs"), "ro,nosuid,nodev,noexec,nologreplay");
    for t in ["vfat", "ntfs", "", "xfs", "ext4"] {
        assert!(missing_options(&mount_options(t)).is_empty(), "{t}");
    }
    assert_eq!(
        missing_options("ro,relatime"),
        ["nosuid", "nodev", "noexec"]
    );
    assert_eq!(missing_options("rw,nosuid,nodev,noexec"), ["ro"]);
}

#[test]
fn mountpoints_must_lie_under_the_mount_root() {
    let root = "/mnt/ektool";
    for good in ["/mnt/ektool/snap-1", "/mnt/ektool/a/b/", "/mnt/ektool/x y"] {
        assert!(check_mountpoint_under(good, root).is_ok(), "{good}");
    }
    for bad in [
        "/etc",
        "/mnt/ektool",
        "/mnt/ektool/",
        "/mnt/ektoolx/snap",
        "/mnt/ektool/../etc",
        "/mnt/ektool/./x",
        "/mnt/ektool//x",
        "/mnt/ektool/a\nb",
        "mnt/ektool/x",
    ] {
        assert!(check_mountpoint_under(bad, root).is_err(), "{bad:?}");
    }
    // The root itself cannot be `/` (everything would lie under it).
    assert!(check_mountpoint_under("/etc", "/").is_err());
}

#[test]
fn mount_table_unescapes_spaces() {
    let t = parse_mounts(
        "/dev/root / ext4 rw,relatime 0 0\n/dev/nvme1n1p1 /mnt/my\\040snap xfs ro,norecovery 0 0\n",
    );
    assert_eq!(t.len(), 2);
    assert_eq!(t[1].target, "/mnt/my snap");
    assert_eq!(t[1].options, "ro,norecovery");
}

#[test]
fn the_source_is_the_disk_or_the_largest_mountable_partition() {
    let ubuntu = parse_probe(
        "/dev/nvme1n1 8589934592\n/dev/nvme1n1p1 8469347840 ext4\n/dev/nvme1n1p14 4194304\n/dev/nvme1n1p15 111149056 vfat\n",
    );
    let s = choose_source("h", "/dev/nvme1n1", &ubuntu, None).unwrap();
    assert_eq!(
        (s.name.as_str(), s.fstype.as_deref()),
        ("/dev/nvme1n1p1", Some("ext4"))
    );
    let s = choose_source("h", "/dev/nvme1n1", &ubuntu, Some(15)).unwrap();
    assert_eq!(s.name, "/dev/nvme1n1p15");
    assert!(matches!(
        choose_source("h", "/dev/nvme1n1", &ubuntu, Some(14)),
        Err(MountError::NoFilesystem { .. })
    ));
    assert!(matches!(
        choose_source("h", "/dev/nvme1n1", &ubuntu, Some(3)),
        Err(MountError::NoSuchPartition { partition: 3, .. })
    ));

    let whole = parse_probe("/dev/xvdf 1073741824 xfs\n");
    assert_eq!(
        choose_source("h", "/dev/xvdf", &whole, None).unwrap().name,
        "/dev/xvdf"
    );
    let xen_part = parse_probe("/dev/xvdf 1073741824\n/dev/xvdf1 1072693248 ext4\n");
    assert_eq!(
        choose_source("h", "/dev/xvdf", &xen_part, Some(1))
            .unwrap()
            .name,
        "/dev/xvdf1"
    );

    let lvm = parse_probe("/dev/xvdf 1073741824 LVM2_member\n");
    let err = choose_source("h", "/dev/xvdf", &lvm, None).unwrap_err();
    assert!(err.to_string().contains("LVM2_member"), "{err}");
}

#[test]
fn free_devices_skip_every_name_of_a_taken_slot() {
    let free = free_devices(["/dev/xvda", "/dev/sdf", "xvdg", "/dev/xvdh1"]);
    assert_eq!(free.first(), Some(&"/dev/sdi"));
    assert_eq!(free.len(), 8);
    assert!(free_devices(DEVICES).is_empty());
}

#[test]
fn mountpoints_must_be_absolute_and_not_root() {
    assert!(check_mountpoint("/mnt/ektool/snap-1").is_ok());
    for bad in ["mnt/x", "/", "//", "/mnt/../etc", "/a\nb"] {
        assert!(check_mountpoint(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn templates_must_keep_their_placeholders() {
    assert!(MountCommands::default().validate().is_ok());
    let no_options = MountCommands {
        mount: "mount {source} {mountpoint}".into(),
        ..MountCommands::default()
    };
    let err = no_options.validate().unwrap_err();
    assert!(err.to_string().contains("{options}"), "{err}");
    let no_target = MountCommands {
        unmount: "umount -a".into(),
        ..MountCommands::default()
    };
    assert!(no_target.validate().is_err());
}

#[test]
fn filled_templates_quote_values() {
    let s = fill(
        "mount -o {options} {source} {mountpoint}",
        &[
            ("options", "ro,noload"),
            ("source", "/dev/x"),
            ("mountpoint", "/mnt/a b;rm -rf /"),
        ],
    );
    assert_eq!(s, "mount -o ro,noload /dev/x '/mnt/a b;rm -rf /'");
}

fn mount_volume(state: &str, attached: bool) -> MountVolume {
    MountVolume {
        region: Region::new("r"),
        volume: VolumeId::from_api("vol-1"),
        state: state.into(),
        snapshot: Some("snap-1".into()),
        instance: Some(InstanceId::from_api("i-1")),
        attached,
        device: attached.then(|| "/dev/sdf".into()),
        mountpoint: Some("/mnt/ektool/snap-1".into()),
        created: None,
    }
}

#[test]
fn unmount_plans_follow_the_volume_state() {
    let steps = |v| {
        UnmountPlan::of(&v)
            .steps
            .iter()
            .map(|s| match s {
                UnmountStep::Unmount { .. } => "unmount",
                UnmountStep::Detach { .. } => "detach",
                UnmountStep::WaitAvailable => "wait",
                UnmountStep::Delete => "delete",
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        steps(mount_volume("in-use", true)),
        ["unmount", "detach", "delete"]
    );
    assert_eq!(steps(mount_volume("available", false)), ["delete"]);
    assert_eq!(steps(mount_volume("creating", false)), ["wait", "delete"]);
}

#[test]
fn cleanup_age_filter() {
    let now = Timestamp::from_second(1_000_000).unwrap();
    let mut young = mount_volume("available", false);
    young.created = Some(now);
    let mut old = mount_volume("available", false);
    old.created = Some(Timestamp::from_second(1).unwrap());
    old.volume = VolumeId::from_api("vol-2");
    let unknown = mount_volume("available", false);
    let kept = created_before(vec![young, old, unknown], now);
    assert_eq!(kept.len(), 2);
    assert!(kept.iter().all(|v| v.created != Some(now)));
}

// ---- a stateful fake cloud on MockEc2 --------------------------------------

#[derive(Default)]
struct Cloud {
    volumes: Vec<Volume>,
    calls: Vec<String>,
    /// Devices AttachVolume reports as taken.
    taken: Vec<String>,
    /// AttachVolume fails with this code.
    attach_error: Option<&'static str>,
    /// Volumes never leave `creating`.
    stuck_creating: bool,
    next: u32,
}

type Shared = Arc<Mutex<Cloud>>;

fn err(action: Action, code: &str, message: &str) -> Ec2Error {
    Ec2Error::from_code(action, "r", code, Some(message.to_owned()))
}

fn instance() -> Instance {
    Instance {
        id: InstanceId::from_api("i-1"),
        region: Region::new("r"),
        availability_zone: Some("r-1a".into()),
        state: "running".into(),
        instance_type: None,
        architecture: None,
        root_device_name: Some("/dev/xvda".into()),
        virtualization_type: None,
        ena_support: None,
        image_id: None,
        key_name: None,
        private_ip: Some("10.0.0.1".into()),
        public_ip: None,
        public_dns: None,
        private_dns: None,
        launch_time: None,
        reservation_id: None,
        block_devices: vec![BlockDevice {
            device_name: "/dev/xvda".into(),
            volume_id: VolumeId::from_api("vol-root"),
            delete_on_termination: Some(true),
        }],
        tags: Tags::new(),
    }
}

fn cloud(shared: &Shared) -> MockEc2 {
    let mut ec2 = MockEc2::new();
    ec2.expect_describe_snapshots().returning(|_, f| {
        let mut s = Snapshot::new(
            SnapshotId::from_api(&f[0].values[0]),
            None,
            Timestamp::UNIX_EPOCH,
            SnapshotState::Completed,
        );
        s.encrypted = true;
        Ok(vec![s])
    });
    ec2.expect_describe_instances()
        .returning(|_, _| Ok(vec![instance()]));
    let c = shared.clone();
    ec2.expect_describe_volumes().returning(move |_, filters| {
        let c = c.lock().unwrap();
        Ok(c.volumes
            .iter()
            .filter(|v| {
                filters.iter().all(|f| match f.name.as_str() {
                    "volume-id" => f.values.contains(&v.id.to_string()),
                    "attachment.instance-id" => v
                        .attachments
                        .iter()
                        .any(|a| f.values.contains(&a.instance_id.to_string())),
                    "tag-key" => f.values.iter().any(|k| v.tags.contains_key(k)),
                    name => {
                        let key = name.strip_prefix("tag:").unwrap_or(name);
                        v.tags
                            .get(key)
                            .is_some_and(|x| f.values.iter().any(|w| w == x))
                    }
                })
            })
            .cloned()
            .collect())
    });
    let c = shared.clone();
    ec2.expect_create_volume().returning(move |region, r| {
        let mut c = c.lock().unwrap();
        c.next += 1;
        let v = Volume {
            id: VolumeId::from_api(format!("vol-{:08x}", c.next)),
            region: region.clone(),
            availability_zone: Some(r.availability_zone.clone()),
            state: "creating".into(),
            size_gib: Some(8),
            volume_type: None,
            encrypted: r.encrypted,
            kms_key_id: None,
            snapshot_id: r.snapshot_id.clone(),
            create_time: None,
            attachments: vec![],
            tags: r.tags.clone(),
        };
        c.calls.push(format!("create {}", v.id));
        let mut stored = v.clone();
        if !c.stuck_creating {
            stored.state = "available".into();
        }
        c.volumes.push(stored);
        Ok(v)
    });
    let c = shared.clone();
    ec2.expect_attach_volume()
        .returning(move |_, vol, inst, device, _| {
            let mut c = c.lock().unwrap();
            c.calls.push(format!("attach {vol} {device}"));
            if let Some(code) = c.attach_error {
                return Err(err(Action::AttachVolume, code, "no"));
            }
            if c.taken.iter().any(|t| t == device) {
                return Err(err(
                    Action::AttachVolume,
                    "InvalidParameterValue",
                    &format!("Invalid value '{device}' for unixDevice. Attachment point {device} is already in use"),
                ));
            }
            let v = c.volumes.iter_mut().find(|v| &v.id == vol).unwrap();
            v.state = "in-use".into();
            v.attachments = vec![VolumeAttachment {
                instance_id: inst.clone(),
                device: Some(device.to_owned()),
                state: Some("attached".into()),
            }];
            Ok(())
        });
    let c = shared.clone();
    ec2.expect_detach_volume_from()
        .returning(move |_, vol, _, force, _| {
            let mut c = c.lock().unwrap();
            c.calls.push(format!("detach {vol} force={force}"));
            match c.volumes.iter_mut().find(|v| &v.id == vol) {
                Some(v) if !v.attachments.is_empty() => {
                    v.state = "available".into();
                    v.attachments.clear();
                    Ok(())
                }
                _ => Err(err(Action::DetachVolume, "InvalidAttachment.NotFound", "")),
            }
        });
    let c = shared.clone();
    ec2.expect_delete_volume().returning(move |_, vol, _| {
        let mut c = c.lock().unwrap();
        c.calls.push(format!("delete {vol}"));
        let before = c.volumes.len();
        c.volumes.retain(|v| &v.id != vol);
        if c.volumes.len() == before {
            Err(err(Action::DeleteVolume, "InvalidVolume.NotFound", ""))
        } else {
            Ok(())
        }
    });
    ec2
}

/// A host whose commands are recognised by what the default templates
/// run; `fail` makes the command containing it fail.
fn host(mounted: Arc<Mutex<Vec<String>>>, fail: &'static str) -> MockRemote {
    let mut r = MockRemote::new();
    r.expect_host().return_const("root@10.0.0.1:22".to_owned());
    let m = mounted.clone();
    r.expect_read_file().returning(move |_| {
        let m = m.lock().unwrap();
        Ok(m.iter()
            .map(|t| format!("/dev/nvme1n1 {t} xfs ro,nosuid,nodev,noexec,norecovery 0 0\n"))
            .collect::<String>()
            .into_bytes())
    });
    r.expect_run().returning(move |c| {
        let text = match &c.program {
            Program::Shell(s) => s.clone(),
            Program::Argv(a) => a.join(" "),
        };
        let ok = |stdout: &str| {
            Ok(Output {
                status: ExitStatus::Code(0),
                stdout: stdout.as_bytes().to_vec(),
                stderr: vec![],
            })
        };
        if !fail.is_empty() && text.contains(fail) {
            return Ok(Output {
                status: ExitStatus::Code(1),
                stdout: vec![],
                stderr: b"it failed".to_vec(),
            });
        }
        if text.contains("readlink") {
            ok("/dev/nvme1n1\n")
        } else if text.contains("lsblk") {
            ok("/dev/nvme1n1 8589934592 xfs\n")
        } else if text.starts_with("mount ") {
            mounted
                .lock()
                .unwrap()
                .push(text.rsplit(' ').next().unwrap().to_owned());
            ok("")
        } else if text.starts_with("umount ") {
            let target = text.rsplit(' ').next().unwrap().to_owned();
            mounted.lock().unwrap().retain(|t| *t != target);
            ok("")
        } else {
            ok("")
        }
    });
    r
}

fn request() -> MountRequest {
    MountRequest {
        snapshot: SnapshotId::from_api("snap-1"),
        instance: InstanceId::from_api("i-1"),
        mountpoint: None,
        root: DEFAULT_ROOT.into(),
        partition: None,
    }
}

const WAITS: Waits = Waits {
    poll: Duration::from_secs(1),
    timeout: Duration::from_secs(30),
};

fn now() -> Timestamp {
    Timestamp::from_second(1_700_000_000).unwrap()
}

fn mounter(ec2: &MockEc2) -> Mounter<'_> {
    Mounter::new(ec2).waits(WAITS).at(now())
}

#[tokio::test]
async fn mount_then_unmount_round_trip() {
    let shared = Shared::default();
    let ec2 = cloud(&shared);
    let mounted = Arc::new(Mutex::new(Vec::new()));
    let remote = host(mounted.clone(), "");
    let region = Region::new("r");

    let plan = mounter(&ec2).plan(&region, &request()).await.unwrap();
    assert_eq!(plan.device, "/dev/sdf");
    assert_eq!(plan.mountpoint, "/mnt/ektool/snap-1");
    assert!(plan.encrypted);
    let m = mounter(&ec2).mount(&remote, &plan).await.unwrap();
    assert_eq!(m.options, "ro,nosuid,nodev,noexec,norecovery,nouuid");
    assert_eq!(m.source, "/dev/nvme1n1");
    assert!(m.encrypted && !m.resumed && !m.already_mounted);
    {
        let c = shared.lock().unwrap();
        let v = &c.volumes[1 - 1];
        assert_eq!(v.tags.get(tags::MOUNT_OF), Some("snap-1"));
        assert_eq!(v.tags.get(tags::MOUNTED_ON), Some("i-1"));
        assert_eq!(v.tags.get(lineage::OWNER), Some("ektool"));
        assert_eq!(v.tags.get(lineage::CREATED), Some("2023-11-14T22:13:20Z"));
        assert!(v.encrypted);
    }
    assert_eq!(*mounted.lock().unwrap(), ["/mnt/ektool/snap-1"]);

    // A second mount finds the volume and the mount: nothing new.
    let again = mounter(&ec2).plan(&region, &request()).await.unwrap();
    assert!(again.resume.is_some());
    let m2 = mounter(&ec2).mount(&remote, &again).await.unwrap();
    assert!(m2.resumed && m2.already_mounted);
    assert_eq!(m2.volume, m.volume);

    let found = mounter(&ec2)
        .find(
            &region,
            &Selector::Snapshot(SnapshotId::from_api("snap-1")),
            None,
        )
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    let plan = UnmountPlan::of(&found[0]);
    let r = mounter(&ec2)
        .unmount_volume(Some(&remote), &plan, false)
        .await
        .unwrap();
    assert_eq!(r.unmounted, ["/mnt/ektool/snap-1"]);
    assert!(r.detached && r.deleted);
    assert!(mounted.lock().unwrap().is_empty());
    assert!(shared.lock().unwrap().volumes.is_empty());

    // Running the same plan again (a rerun after a crash) still succeeds.
    let r = mounter(&ec2)
        .unmount_volume(Some(&remote), &plan, false)
        .await
        .unwrap();
    assert!(!r.detached && !r.deleted);
}

async fn failed_mount(shared: &Shared, fail: &'static str) -> MountError {
    let ec2 = cloud(shared);
    let remote = host(Arc::default(), fail);
    let plan = mounter(&ec2)
        .plan(&Region::new("r"), &request())
        .await
        .unwrap();
    mounter(&ec2).mount(&remote, &plan).await.unwrap_err()
}

#[tokio::test]
async fn a_refused_attach_deletes_the_new_volume() {
    let shared = Shared::default();
    shared.lock().unwrap().attach_error = Some("UnauthorizedOperation");
    let e = failed_mount(&shared, "").await;
    let MountError::Aborted { cause, rollback } = &e else {
        panic!("{e}")
    };
    assert!(matches!(**cause, MountError::Ec2(_)), "{cause}");
    assert!(matches!(rollback, Rollback::Deleted { .. }), "{rollback}");
    let c = shared.lock().unwrap();
    assert!(c.volumes.is_empty(), "nothing left behind");
    assert_eq!(
        c.calls,
        [
            "create vol-00000001",
            "attach vol-00000001 /dev/sdf",
            "delete vol-00000001"
        ]
    );
}

#[tokio::test]
async fn a_device_taken_in_between_moves_on_to_the_next() {
    let shared = Shared::default();
    shared.lock().unwrap().taken = vec!["/dev/sdf".into(), "/dev/sdg".into()];
    let ec2 = cloud(&shared);
    let remote = host(Arc::default(), "");
    let plan = mounter(&ec2)
        .plan(&Region::new("r"), &request())
        .await
        .unwrap();
    let m = mounter(&ec2).mount(&remote, &plan).await.unwrap();
    assert_eq!(m.attach_device, "/dev/sdh");
}

#[tokio::test]
async fn a_failure_on_the_host_detaches_and_deletes() {
    let shared = Shared::default();
    let e = failed_mount(&shared, "readlink").await;
    assert!(
        e.to_string()
            .starts_with("mount failed; volume vol-00000001 deleted again"),
        "{e}"
    );
    let source = std::error::Error::source(&e).unwrap().to_string();
    assert!(source.contains("no block device"), "{source}");
    let c = shared.lock().unwrap();
    assert!(c.volumes.is_empty());
    assert_eq!(
        c.calls[2..],
        ["detach vol-00000001 force=false", "delete vol-00000001"]
    );
}

#[tokio::test]
async fn a_failed_mount_command_leaves_nothing_behind() {
    let shared = Shared::default();
    let e = failed_mount(&shared, "mount -t").await;
    assert!(matches!(e, MountError::Aborted { .. }), "{e}");
    assert!(shared.lock().unwrap().volumes.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_volume_stuck_creating_times_out_and_is_left_for_cleanup() {
    let shared = Shared::default();
    shared.lock().unwrap().stuck_creating = true;
    let e = failed_mount(&shared, "").await;
    let MountError::Aborted { cause, rollback } = &e else {
        panic!("{e}")
    };
    assert!(
        matches!(
            **cause,
            MountError::Timeout {
                waiting_for: "available",
                ..
            }
        ),
        "{cause}"
    );
    // Still `creating`: it cannot be deleted yet; cleanup will find it.
    assert!(
        matches!(rollback, Rollback::LeftBehind { .. }),
        "{rollback}"
    );
    assert!(e.to_string().contains("left behind"), "{e}");
}

#[tokio::test]
async fn unmount_refuses_volumes_it_did_not_make() {
    let shared = Shared::default();
    shared.lock().unwrap().volumes.push(Volume {
        id: VolumeId::from_api("vol-foreign"),
        region: Region::new("r"),
        availability_zone: None,
        state: "available".into(),
        size_gib: None,
        volume_type: None,
        encrypted: false,
        kms_key_id: None,
        snapshot_id: None,
        create_time: None,
        attachments: vec![],
        // The mount tag alone (without ownership) is not enough.
        tags: Tags::new().with(tags::MOUNT_OF, "snap-1"),
    });
    // Nor are both tags on a volume EC2 says was not made from that
    // snapshot: anyone with ec2:CreateTags could write them, and cleanup
    // would then delete a volume it never made.
    for (id, snapshot) in [("vol-forged", None), ("vol-other", Some("snap-2"))] {
        shared.lock().unwrap().volumes.push(Volume {
            id: VolumeId::from_api(id),
            region: Region::new("r"),
            availability_zone: None,
            state: "available".into(),
            size_gib: None,
            volume_type: None,
            encrypted: false,
            kms_key_id: None,
            snapshot_id: snapshot.map(SnapshotId::from_api),
            create_time: None,
            attachments: vec![],
            tags: Tags::new()
                .with(lineage::OWNER, lineage::OWNER_VALUE)
                .with(tags::MOUNT_OF, "snap-1")
                .with(tags::MOUNTED_ON, "i-1"),
        });
    }
    let ec2 = cloud(&shared);
    for id in ["vol-foreign", "vol-forged", "vol-other"] {
        let e = mounter(&ec2)
            .find(
                &Region::new("r"),
                &Selector::Volume(VolumeId::from_api(id)),
                None,
            )
            .await
            .unwrap_err();
        assert!(matches!(e, MountError::NotOurs { .. }), "{id}: {e}");
    }
    let all = mounter(&ec2)
        .find(&Region::new("r"), &Selector::All, None)
        .await
        .unwrap();
    assert!(all.is_empty(), "{all:?}");
}

/// A volume in the instance's zone tagged as an earlier run's mount of the
/// snapshot, but made from another snapshot, with its mountpoint tag on
/// `/etc` (M2): never resumed, and no tag chooses a path outside the root.
#[tokio::test]
async fn a_forged_mount_volume_is_not_resumed_and_its_mountpoint_is_ignored() {
    let shared = Shared::default();
    let forged = |id: &str, snapshot: &str| Volume {
        id: VolumeId::from_api(id),
        region: Region::new("r"),
        availability_zone: Some("r-1a".into()),
        state: "available".into(),
        size_gib: Some(8),
        volume_type: None,
        encrypted: false,
        kms_key_id: None,
        snapshot_id: Some(SnapshotId::from_api(snapshot)),
        create_time: None,
        attachments: vec![],
        tags: Tags::new()
            .with(lineage::OWNER, lineage::OWNER_VALUE)
            .with(tags::MOUNT_OF, "snap-1")
            .with(tags::MOUNTED_ON, "i-1")
            .with(tags::MOUNTPOINT, "/etc"),
    };
    shared
        .lock()
        .unwrap()
        .volumes
        .push(forged("vol-evil", "snap-attacker"));
    let ec2 = cloud(&shared);
    let plan = mounter(&ec2)
        .plan(&Region::new("r"), &request())
        .await
        .unwrap();
    assert!(plan.resume.is_none(), "{:?}", plan.resume);
    assert_eq!(plan.mountpoint, "/mnt/ektool/snap-1");

    // Made from the right snapshot, but the mountpoint tag says /etc: the
    // volume is picked up, the tag is not obeyed.
    shared.lock().unwrap().volumes = vec![forged("vol-mine", "snap-1")];
    let plan = mounter(&ec2)
        .plan(&Region::new("r"), &request())
        .await
        .unwrap();
    assert_eq!(
        plan.resume.as_ref().map(|v| v.id.as_str()),
        Some("vol-mine")
    );
    assert_eq!(plan.mountpoint, "/mnt/ektool/snap-1");

    // Asking for a mountpoint outside the root is refused.
    let outside = MountRequest {
        mountpoint: Some("/etc".into()),
        ..request()
    };
    let e = mounter(&ec2)
        .plan(&Region::new("r"), &outside)
        .await
        .unwrap_err();
    assert!(matches!(e, MountError::InvalidMountpoint { .. }), "{e}");
}

#[tokio::test]
async fn an_unreachable_host_stops_unmount_unless_forced() {
    let shared = Shared::default();
    let ec2 = cloud(&shared);
    let mounted = Arc::new(Mutex::new(Vec::new()));
    let plan = mounter(&ec2)
        .plan(&Region::new("r"), &request())
        .await
        .unwrap();
    mounter(&ec2)
        .mount(&host(mounted.clone(), ""), &plan)
        .await
        .unwrap();
    let found = mounter(&ec2)
        .find(&Region::new("r"), &Selector::All, None)
        .await
        .unwrap();
    let plan = UnmountPlan::of(&found[0]);
    let e = mounter(&ec2)
        .unmount_volume(None, &plan, false)
        .await
        .unwrap_err();
    assert!(matches!(e, MountError::NoHost { .. }), "{e}");
    assert_eq!(shared.lock().unwrap().volumes.len(), 1, "nothing done");

    let r = mounter(&ec2)
        .unmount_volume(None, &plan, true)
        .await
        .unwrap();
    assert!(r.detached && r.deleted);
    assert!(r.notes[0].contains("detached by force"), "{:?}", r.notes);
    assert!(
        shared
            .lock()
            .unwrap()
            .calls
            .contains(&"detach vol-00000001 force=true".to_owned())
    );
}

/// A sweep finds the mount volumes older than the cut, resolves each
/// host's address from its instance (or takes the one host given),
/// reaches it through the caller's `connect`, and reports each item.
#[tokio::test]
async fn a_sweep_unmounts_old_volumes_through_the_callers_connect() {
    let shared = Shared::default();
    let ec2 = cloud(&shared);
    let mounted = Arc::new(Mutex::new(Vec::new()));
    let plan = mounter(&ec2)
        .plan(&Region::new("r"), &request())
        .await
        .unwrap();
    mounter(&ec2)
        .mount(&host(mounted.clone(), ""), &plan)
        .await
        .unwrap();
    let regions = [Region::new("r")];

    // Made at `now()`: younger than an hour, so not swept.
    let young = mounter(&ec2)
        .sweep_plan(&regions, Duration::from_secs(3600), None)
        .await;
    assert!(young.items.is_empty() && young.failed_regions.is_empty());

    let reached = Arc::new(Mutex::new(Vec::new()));
    let events = Arc::new(Mutex::new(Vec::new()));
    let (r, e, m) = (reached.clone(), events.clone(), mounted.clone());
    let sweeper = mounter(&ec2)
        .connect(Arc::new(move |addr: &str| {
            r.lock().unwrap().push(addr.to_owned());
            Ok(Arc::new(host(m.clone(), "")) as Arc<dyn ec2kit::Remote>)
        }))
        .on_event(move |ev| e.lock().unwrap().push(ev.clone()));
    let plan = sweeper.sweep_plan(&regions, Duration::ZERO, None).await;
    assert_eq!(plan.items.len(), 1);
    assert_eq!(plan.items[0].host.as_deref(), Some("10.0.0.1"));
    assert_eq!(plan.instances(), [&InstanceId::from_api("i-1")]);
    let done = sweeper.unmount(&plan, false).await;
    let report = done[0].result.as_ref().unwrap();
    assert!(report.detached && report.deleted, "{report:?}");
    assert_eq!(*reached.lock().unwrap(), ["10.0.0.1"]);
    assert!(mounted.lock().unwrap().is_empty());
    assert!(shared.lock().unwrap().volumes.is_empty());
    let kinds: Vec<&str> = events
        .lock()
        .unwrap()
        .iter()
        .map(|e| match e {
            MountEvent::Unmounting { .. } => "unmounting",
            MountEvent::Detaching { .. } => "detaching",
            MountEvent::Deleting { .. } => "deleting",
            _ => "other",
        })
        .filter(|k| *k != "other")
        .collect();
    assert_eq!(kinds, ["unmounting", "detaching", "deleting"]);

    // One host for every item: no instance lookup decides it; without a
    // `connect`, a mounted volume is refused unless forced.
    let plan = mounter(&ec2)
        .plan(&Region::new("r"), &request())
        .await
        .unwrap();
    mounter(&ec2)
        .mount(&host(mounted.clone(), ""), &plan)
        .await
        .unwrap();
    let pinned = mounter(&ec2).on_host("root@127.0.0.1:2222");
    let plan = pinned
        .unmount_plan(&regions[0], &Selector::All, None)
        .await
        .unwrap();
    assert_eq!(plan.items[0].host.as_deref(), Some("root@127.0.0.1:2222"));
    let done = pinned.unmount(&plan, false).await;
    assert!(
        matches!(done[0].result, Err(MountError::NoHost { .. })),
        "{:?}",
        done[0].result
    );
    assert_eq!(shared.lock().unwrap().volumes.len(), 1, "nothing done");
}
