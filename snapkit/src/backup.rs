//! Backups: one crash-consistent `CreateSnapshots` per instance, tagged at
//! creation.
//!
//! Every snapshot carries the ownership tag and its lineage
//! ([`crate::lineage::tags`]): instance, snapshot-set id, origin region,
//! creation time, policy, the backup window, and the device map of its
//! set; plus the instance's own tags (never `aws:*`), and the volume's own
//! tags when they do not collide with those (the instance wins).
//!
//! Idempotent within a window: each snapshot is tagged with the start of
//! the backup window it was taken in (`ektool:window`, default one hour).
//! A rerun in the same window first lists that window's snapshots (one
//! filtered call per region) and skips the instances already done, so an
//! interrupted nightly run can simply be started again.

use std::collections::{BTreeMap, HashSet};

use ec2kit::requests::{CreateSnapshot, CreateSnapshots};
use ec2kit::{
    Ec2, Ec2Error, Filter, Instance, InstanceId, Region, Snapshot, SnapshotId, Tags, Volume,
    VolumeId,
};
use futures::stream::{self, StreamExt};
use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use crate::lineage::tags;

/// The backup window tag: the start of the window a snapshot was taken in.
pub const WINDOW_TAG: &str = "ektool:window";
/// The device map of a snapshot set: `vol-a=/dev/xvda vol-b=/dev/sdf`.
pub const DEVICES_TAG: &str = "ektool:devices";

/// How to back up.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// Leave the root volume out.
    pub exclude_boot: bool,
    /// Data volumes to leave out.
    pub exclude_volumes: Vec<VolumeId>,
    /// The policy name recorded on the snapshots.
    pub policy: String,
    /// Idempotency window (a rerun inside it skips finished instances).
    pub window: SignedDuration,
    /// Instances snapshotted at once.
    pub concurrency: usize,
    /// Ask EC2 to check permissions only.
    pub dry_run: bool,
    /// The time of the run.
    pub now: Timestamp,
}

impl Default for BackupOptions {
    fn default() -> Self {
        Self {
            exclude_boot: false,
            exclude_volumes: Vec::new(),
            policy: "logarithmic".into(),
            window: SignedDuration::from_hours(1),
            concurrency: 8,
            dry_run: false,
            now: Timestamp::now(),
        }
    }
}

impl BackupOptions {
    /// The start of the window `now` falls in, as the tag value.
    pub fn window_key(&self) -> String {
        let secs = self.window.as_secs().max(1);
        let start = self.now.as_second().div_euclid(secs) * secs;
        Timestamp::from_second(start)
            .unwrap_or(self.now)
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    }
}

/// What happened to one instance or volume.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum BackupStatus {
    /// Snapshots were created.
    Created {
        /// The set id.
        set: String,
        /// The snapshots, one per volume.
        snapshots: Vec<SnapshotId>,
    },
    /// EC2 said a real call would have succeeded (`--dry-run`).
    DryRunOk,
    /// Already backed up in this window.
    AlreadyDone {
        /// The snapshots from the earlier run.
        snapshots: Vec<SnapshotId>,
    },
    /// The call failed; the other instances went on.
    Failed {
        /// The error.
        error: String,
        /// EC2's error code.
        code: Option<String>,
    },
}

/// One line of a backup report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackupResult {
    /// The region.
    pub region: Region,
    /// The instance, for instance backups.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<InstanceId>,
    /// The volume, for volume backups.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume: Option<VolumeId>,
    /// The instance's `Name` tag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The outcome.
    #[serde(flatten)]
    pub status: BackupStatus,
    /// Anything worth knowing (e.g. volume tags not copied).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl BackupResult {
    /// Whether this item failed.
    pub fn failed(&self) -> bool {
        matches!(self.status, BackupStatus::Failed { .. })
    }
}

/// The tags every snapshot of one run shares.
fn base_tags(region: &Region, options: &BackupOptions, set: &str) -> Tags {
    Tags::new()
        .with(tags::OWNER, tags::OWNER_VALUE)
        .with(tags::SET, set)
        .with(tags::ORIGIN_REGION, region.as_str())
        .with(
            tags::CREATED,
            options.now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        )
        .with(tags::POLICY, options.policy.clone())
        .with(WINDOW_TAG, options.window_key())
}

/// The description: human-readable, and (like the seed's JSON) enough to
/// know where a snapshot came from without the tags.
fn description(what: &str, name: Option<&str>, options: &BackupOptions) -> String {
    match name {
        Some(n) => format!(
            "ektool backup of {what} ({n}) at {}",
            options.now.strftime("%Y-%m-%d %H:%M UTC")
        ),
        None => format!(
            "ektool backup of {what} at {}",
            options.now.strftime("%Y-%m-%d %H:%M UTC")
        ),
    }
}

/// Snapshots already taken in this run's window in `region`, by instance
/// and by volume (one filtered, paginated call).
pub async fn done_in_window(
    ec2: &dyn Ec2,
    region: &Region,
    options: &BackupOptions,
) -> Result<BTreeMap<String, Vec<SnapshotId>>, Ec2Error> {
    let filters = [
        Filter::new(format!("tag:{}", tags::OWNER), [tags::OWNER_VALUE]),
        Filter::new(format!("tag:{WINDOW_TAG}"), [options.window_key()]),
    ];
    let mut done: BTreeMap<String, Vec<SnapshotId>> = BTreeMap::new();
    for s in ec2.describe_snapshots(region, &filters).await? {
        // Snapshots in error do not count as a backup.
        if s.state == ec2kit::SnapshotState::Error {
            continue;
        }
        if let Some(i) = s.tags.get(tags::INSTANCE) {
            done.entry(i.to_owned()).or_default().push(s.id.clone());
        }
        if let Some(v) = s
            .tags
            .get(tags::VOLUME)
            .map(str::to_owned)
            .or_else(|| s.volume_id.as_ref().map(|v| v.to_string()))
        {
            done.entry(v).or_default().push(s.id.clone());
        }
    }
    Ok(done)
}

/// The tags and notes for one instance's set.
fn instance_tags(
    instance: &Instance,
    volumes: &[&Volume],
    options: &BackupOptions,
    set: &str,
) -> (Tags, bool, Vec<String>) {
    let mut t = base_tags(&instance.region, options, set);
    t.insert(tags::INSTANCE, instance.id.as_str());
    if let Some(root) = &instance.root_device_name {
        t.insert(tags::ROOT_DEVICE, root.clone());
    }
    if let Some(arch) = &instance.architecture {
        t.insert(tags::ARCHITECTURE, arch.clone());
    }
    let devices: Vec<String> = instance
        .block_devices
        .iter()
        .map(|b| format!("{}={}", b.volume_id, b.device_name))
        .collect();
    if !devices.is_empty() {
        t.insert(DEVICES_TAG, devices.join(" "));
    }
    t.merge_user_tags(&instance.tags);
    // Volume tags come through CopyTagsFromSource, per snapshot; only when
    // no key collides with the set's tags, so the instance always wins.
    let mut notes = Vec::new();
    let colliding: HashSet<&str> = volumes
        .iter()
        .flat_map(|v| v.tags.iter().map(|(k, _)| k))
        .filter(|k| !ec2kit::is_reserved_key(k) && t.contains_key(k))
        .collect();
    let copy_volume_tags = colliding.is_empty() && volumes.iter().any(|v| !v.tags.is_empty());
    if !colliding.is_empty() {
        let mut keys: Vec<&str> = colliding.into_iter().collect();
        keys.sort();
        notes.push(format!(
            "volume tags not copied: keys also on the instance ({})",
            keys.join(", ")
        ));
    }
    (t, copy_volume_tags, notes)
}

/// Backs up every instance in `instances` (all in `region`): one
/// `CreateSnapshots` each, at most `concurrency` at a time; one failure
/// does not stop the others.
pub async fn backup_instances(
    ec2: &dyn Ec2,
    region: &Region,
    instances: &[Instance],
    options: &BackupOptions,
) -> Vec<BackupResult> {
    if instances.is_empty() {
        return Vec::new();
    }
    let done = match done_in_window(ec2, region, options).await {
        Ok(d) => d,
        Err(e) => return instances.iter().map(|i| failed(i, &e)).collect(),
    };
    // One DescribeVolumes for the whole region (filtered by instance),
    // for the volumes' own tags.
    let ids: Vec<String> = instances.iter().map(|i| i.id.to_string()).collect();
    let volumes = if ids.len() <= 199 {
        ec2.describe_volumes(region, &[Filter::new("attachment.instance-id", ids)])
            .await
    } else {
        ec2.describe_volumes(
            region,
            &[Filter::new("attachment.status", ["attached", "attaching"])],
        )
        .await
    };
    let volumes = match volumes {
        Ok(v) => v,
        Err(e) => return instances.iter().map(|i| failed(i, &e)).collect(),
    };
    stream::iter(instances)
        .map(|instance| {
            let done = &done;
            let volumes = &volumes;
            async move {
                let mut result = BackupResult {
                    region: region.clone(),
                    instance: Some(instance.id.clone()),
                    volume: None,
                    name: instance.name().map(str::to_owned),
                    status: BackupStatus::DryRunOk,
                    notes: Vec::new(),
                };
                if let Some(prev) = done.get(instance.id.as_str()) {
                    result.status = BackupStatus::AlreadyDone {
                        snapshots: prev.clone(),
                    };
                    return result;
                }
                let mine: Vec<&Volume> = volumes
                    .iter()
                    .filter(|v| v.attachments.iter().any(|a| a.instance_id == instance.id))
                    .collect();
                let set = uuid::Uuid::new_v4().simple().to_string();
                let (tags, copy, notes) = instance_tags(instance, &mine, options, &set);
                result.notes = notes;
                let request = CreateSnapshots {
                    instance_id: Some(instance.id.clone()),
                    exclude_boot_volume: options.exclude_boot,
                    exclude_data_volume_ids: options
                        .exclude_volumes
                        .iter()
                        .filter(|v| instance.block_devices.iter().any(|b| &b.volume_id == *v))
                        .cloned()
                        .collect(),
                    description: Some(description(instance.id.as_str(), instance.name(), options)),
                    tags,
                    copy_tags_from_volume: copy,
                    dry_run: options.dry_run,
                };
                result.status = match ec2.create_snapshots(region, &request).await {
                    Ok(snaps) => BackupStatus::Created {
                        set,
                        snapshots: snaps.into_iter().map(|s| s.id).collect(),
                    },
                    Err(e) if e.is_dry_run_ok() => BackupStatus::DryRunOk,
                    Err(e) => BackupStatus::Failed {
                        error: e.to_string(),
                        code: e.code.clone(),
                    },
                };
                result
            }
        })
        .buffered(options.concurrency.max(1))
        .collect()
        .await
}

fn failed(instance: &Instance, e: &Ec2Error) -> BackupResult {
    BackupResult {
        region: instance.region.clone(),
        instance: Some(instance.id.clone()),
        volume: None,
        name: instance.name().map(str::to_owned),
        status: BackupStatus::Failed {
            error: e.to_string(),
            code: e.code.clone(),
        },
        notes: Vec::new(),
    }
}

/// Backs up single volumes (by id or config alias) with `CreateSnapshot`.
pub async fn backup_volumes(
    ec2: &dyn Ec2,
    region: &Region,
    volume_ids: &[VolumeId],
    options: &BackupOptions,
) -> Vec<BackupResult> {
    let fail = |v: &VolumeId, e: &Ec2Error| BackupResult {
        region: region.clone(),
        instance: None,
        volume: Some(v.clone()),
        name: None,
        status: BackupStatus::Failed {
            error: e.to_string(),
            code: e.code.clone(),
        },
        notes: Vec::new(),
    };
    let done = match done_in_window(ec2, region, options).await {
        Ok(d) => d,
        Err(e) => return volume_ids.iter().map(|v| fail(v, &e)).collect(),
    };
    let ids: Vec<String> = volume_ids.iter().map(|v| v.to_string()).collect();
    let volumes = match ec2
        .describe_volumes(region, &[Filter::new("volume-id", ids)])
        .await
    {
        Ok(v) => v,
        Err(e) => return volume_ids.iter().map(|v| fail(v, &e)).collect(),
    };
    let mut out = Vec::new();
    for id in volume_ids {
        let mut result = BackupResult {
            region: region.clone(),
            instance: None,
            volume: Some(id.clone()),
            name: None,
            status: BackupStatus::DryRunOk,
            notes: Vec::new(),
        };
        if let Some(prev) = done.get(id.as_str()) {
            result.status = BackupStatus::AlreadyDone {
                snapshots: prev.clone(),
            };
            out.push(result);
            continue;
        }
        let Some(volume) = volumes.iter().find(|v| &v.id == id) else {
            result.status = BackupStatus::Failed {
                error: format!("volume {id} not found in {region}"),
                code: None,
            };
            out.push(result);
            continue;
        };
        let set = uuid::Uuid::new_v4().simple().to_string();
        let mut t = base_tags(region, options, &set);
        t.insert(tags::VOLUME, id.as_str());
        if let Some(a) = volume.attachments.first() {
            t.insert(tags::INSTANCE, a.instance_id.as_str());
            if let Some(d) = &a.device {
                t.insert(tags::DEVICE, d.clone());
            }
        }
        t.merge_user_tags(&volume.tags);
        result.name = volume.tags.get("Name").map(str::to_owned);
        let request = CreateSnapshot {
            volume_id: Some(id.clone()),
            description: Some(description(id.as_str(), result.name.as_deref(), options)),
            tags: t,
            dry_run: options.dry_run,
        };
        result.status = match ec2.create_snapshot(region, &request).await {
            Ok(s) => BackupStatus::Created {
                set,
                snapshots: vec![s.id],
            },
            Err(e) if e.is_dry_run_ok() => BackupStatus::DryRunOk,
            Err(e) => BackupStatus::Failed {
                error: e.to_string(),
                code: e.code.clone(),
            },
        };
        out.push(result);
    }
    out
}

/// The device a snapshot's volume was attached as, from its set's map.
pub fn device_of(snapshot: &Snapshot) -> Option<String> {
    if let Some(d) = snapshot.tags.get(tags::DEVICE) {
        return Some(d.to_owned());
    }
    let vol = snapshot.volume_id.as_ref()?;
    snapshot
        .tags
        .get(DEVICES_TAG)?
        .split_whitespace()
        .find_map(|pair| {
            let (v, d) = pair.split_once('=')?;
            (v == vol.as_str()).then(|| d.to_owned())
        })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use ec2kit::{Action, BlockDevice, MockEc2, SnapshotState, VolumeAttachment};

    use super::*;

    fn instance(n: usize, region: &Region) -> Instance {
        let id = InstanceId::from_api(format!("i-{n:017x}"));
        Instance {
            id,
            region: region.clone(),
            availability_zone: None,
            state: "running".into(),
            instance_type: Some("t3.micro".into()),
            architecture: Some("x86_64".into()),
            root_device_name: Some("/dev/xvda".into()),
            virtualization_type: Some("hvm".into()),
            ena_support: Some(true),
            image_id: None,
            key_name: None,
            private_ip: None,
            public_ip: None,
            public_dns: None,
            launch_time: None,
            reservation_id: None,
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
        ec2.expect_describe_snapshots().times(1).returning(|_, f| {
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

    #[tokio::test]
    async fn a_rerun_in_the_same_window_skips_instances_already_done() {
        let region = Region::new("us-east-1");
        let instances: Vec<Instance> = (0..3).map(|n| instance(n, &region)).collect();
        let mut ec2 = MockEc2::new();
        ec2.expect_describe_snapshots().returning(|_, _| {
            let mut s = Snapshot::new(
                SnapshotId::from_api("snap-0000000000000000a"),
                None,
                Timestamp::UNIX_EPOCH,
                SnapshotState::Completed,
            );
            s.tags.insert(tags::INSTANCE, "i-00000000000000001");
            Ok(vec![s])
        });
        ec2.expect_describe_volumes().returning(|_, _| Ok(vec![]));
        ec2.expect_create_snapshots().times(2).returning(|_, r| {
            assert_ne!(
                r.instance_id.as_ref().unwrap().as_str(),
                "i-00000000000000001"
            );
            Ok(created(r))
        });
        let out = backup_instances(&ec2, &region, &instances, &options()).await;
        assert!(
            matches!(&out[1].status, BackupStatus::AlreadyDone { snapshots } if snapshots.len() == 1)
        );
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
}
