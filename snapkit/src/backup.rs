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
//! filtered call per region) and skips what is already done, so an
//! interrupted nightly run can simply be started again. "Done" is decided
//! per requested volume set, from the snapshots' `VolumeId`s (set by EC2,
//! not by whoever can tag): an instance is done when one set of the window
//! covers every volume this run would snapshot (its volumes minus this
//! run's exclusions), a volume when a snapshot of it exists. An earlier
//! `--volume`, `--exclude-boot` or `--exclude-volume` run therefore never
//! makes a full backup skip.
//!
//! Two runs at once in one window (L16): after creating, a run lists the
//! window once more (one call per region); a set it made that another set
//! covering the same volumes predates (earlier start time, then smaller set
//! id) is deleted again and reported as already done. The run that looked
//! first keeps its set, so racing runs end with one set.

use std::collections::{BTreeMap, HashSet};

use ec2kit::requests::{CreateSnapshot, CreateSnapshots};
use ec2kit::{
    CancellationToken, Ec2, Ec2Error, ErrorKind, Filter, Instance, InstanceId, Region, Remote,
    Snapshot, SnapshotId, SnapshotState, Tags, Volume, VolumeId,
};
use futures::stream::{self, StreamExt};
use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use crate::consistency::{self, Consistency, ConsistencyError, HoldReport};
use crate::lineage::tags;

/// What [`backup_instances`] calls (the instances' volumes, the window's
/// snapshots, one `CreateSnapshots` each); a set a concurrent run made
/// first is deleted again.
pub const INSTANCES_PERMISSIONS: ec2kit::iam::Permissions = ec2kit::iam::Permissions::calls(&[
    ec2kit::Action::DescribeVolumes,
    ec2kit::Action::DescribeSnapshots,
    ec2kit::Action::CreateSnapshots,
])
.sometimes(&[ec2kit::iam::Sometimes {
    when: ec2kit::iam::When::Case("a concurrent run"),
    actions: &[ec2kit::Action::DeleteSnapshot],
}])
.implied(&[ec2kit::iam::TAG_ON_CREATE]);

/// What [`backup_volumes`] calls (one `CreateSnapshot` per volume); a
/// snapshot a concurrent run made first is deleted again.
pub const VOLUMES_PERMISSIONS: ec2kit::iam::Permissions = ec2kit::iam::Permissions::calls(&[
    ec2kit::Action::DescribeVolumes,
    ec2kit::Action::DescribeSnapshots,
    ec2kit::Action::CreateSnapshot,
])
.sometimes(&[ec2kit::iam::Sometimes {
    when: ec2kit::iam::When::Case("a concurrent run"),
    actions: &[ec2kit::Action::DeleteSnapshot],
}])
.implied(&[ec2kit::iam::TAG_ON_CREATE]);

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
        /// Snapshots that were made nevertheless (e.g. the thaw failed
        /// after the snapshot call): they exist, and are reported.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        snapshots: Vec<SnapshotId>,
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

/// What one backup item is about (for results made outside the EC2 call,
/// e.g. a host that could not be frozen).
#[derive(Debug, Clone, PartialEq)]
pub struct BackupItem {
    /// The region.
    pub region: Region,
    /// The instance, for instance backups.
    pub instance: Option<InstanceId>,
    /// The volume, for volume backups.
    pub volume: Option<VolumeId>,
    /// The instance's `Name` tag.
    pub name: Option<String>,
}

impl BackupItem {
    /// An instance backup.
    pub fn instance(instance: &Instance) -> Self {
        Self {
            region: instance.region.clone(),
            instance: Some(instance.id.clone()),
            volume: None,
            name: instance.name().map(str::to_owned),
        }
    }

    /// A volume backup.
    pub fn volume(region: &Region, volume: &VolumeId) -> Self {
        Self {
            region: region.clone(),
            instance: None,
            volume: Some(volume.clone()),
            name: None,
        }
    }

    /// A failed result for this item.
    pub fn failed(&self, error: impl Into<String>) -> BackupResult {
        BackupResult {
            region: self.region.clone(),
            instance: self.instance.clone(),
            volume: self.volume.clone(),
            name: self.name.clone(),
            status: BackupStatus::Failed {
                error: error.into(),
                code: None,
                snapshots: Vec::new(),
            },
            notes: Vec::new(),
        }
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

/// The snapshots of one region's window: what is already done.
#[derive(Debug, Clone, Default)]
pub struct WindowSnapshots {
    snapshots: Vec<Snapshot>,
}

/// One set of a window: its id, when it started, its snapshots.
struct SetView<'a> {
    id: &'a str,
    started: jiff::Timestamp,
    members: Vec<&'a Snapshot>,
}

impl WindowSnapshots {
    /// From the window's snapshots (any order); `error` snapshots are
    /// left out (they are not a backup).
    pub fn new(snapshots: Vec<Snapshot>) -> Self {
        Self {
            snapshots: snapshots
                .into_iter()
                .filter(|s| s.state != SnapshotState::Error)
                .collect(),
        }
    }

    /// The window's sets: snapshots grouped by `ektool:set` (a snapshot
    /// without one is a set of its own).
    fn sets(&self) -> Vec<SetView<'_>> {
        let mut by_set: BTreeMap<&str, Vec<&Snapshot>> = BTreeMap::new();
        for s in &self.snapshots {
            let key = s.tags.get(tags::SET).unwrap_or(s.id.as_str());
            by_set.entry(key).or_default().push(s);
        }
        by_set
            .into_iter()
            .filter_map(|(id, members)| {
                let started = members.iter().map(|s| s.start_time).min()?;
                Some(SetView {
                    id,
                    started,
                    members,
                })
            })
            .collect()
    }

    /// The first set (oldest, then smallest id) whose snapshots' volume ids
    /// include every one of `volumes`, other than `except`.
    fn first_covering(&self, volumes: &[VolumeId], except: Option<&str>) -> Option<SetView<'_>> {
        if volumes.is_empty() {
            return None;
        }
        self.sets()
            .into_iter()
            .filter(|set| Some(set.id) != except)
            .filter(|set| {
                volumes
                    .iter()
                    .all(|v| set.members.iter().any(|s| s.volume_id.as_ref() == Some(v)))
            })
            .min_by(|a, b| a.started.cmp(&b.started).then_with(|| a.id.cmp(b.id)))
    }

    /// The snapshots of the first set covering all of `volumes` (an
    /// instance's requested volume set), if any: the instance is done.
    pub fn covering(&self, volumes: &[VolumeId]) -> Option<Vec<SnapshotId>> {
        self.first_covering(volumes, None)
            .map(|set| set.members.iter().map(|s| s.id.clone()).collect())
    }

    /// The snapshots of `volume` in the window, if any: the volume is done.
    pub fn of_volume(&self, volume: &VolumeId) -> Option<Vec<SnapshotId>> {
        let ids: Vec<SnapshotId> = self
            .snapshots
            .iter()
            .filter(|s| s.volume_id.as_ref() == Some(volume))
            .map(|s| s.id.clone())
            .collect();
        (!ids.is_empty()).then_some(ids)
    }

    /// Whether the set `ours` lost a race: another set covering `volumes`
    /// started earlier (or at the same time with a smaller id). Returns the
    /// winner's snapshots.
    pub fn predecessor(&self, ours: &str, volumes: &[VolumeId]) -> Option<Vec<SnapshotId>> {
        let mine = self.sets().into_iter().find(|s| s.id == ours)?;
        let other = self.first_covering(volumes, Some(ours))?;
        let earlier = (other.started, other.id) < (mine.started, mine.id);
        earlier.then(|| other.members.iter().map(|s| s.id.clone()).collect())
    }
}

/// Snapshots already taken in this run's window in `region` (one
/// filtered, paginated call).
pub async fn done_in_window(
    ec2: &dyn Ec2,
    region: &Region,
    options: &BackupOptions,
) -> Result<WindowSnapshots, Ec2Error> {
    let filters = [
        Filter::new(format!("tag:{}", tags::OWNER), [tags::OWNER_VALUE]),
        Filter::new(format!("tag:{WINDOW_TAG}"), [options.window_key()]),
    ];
    Ok(WindowSnapshots::new(
        ec2.describe_snapshots(region, &filters).await?,
    ))
}

/// The volumes a backup of `instance` with `options` snapshots: its
/// attached volumes minus the root (with `exclude_boot`) and minus the
/// excluded data volumes.
pub fn requested_volumes(instance: &Instance, options: &BackupOptions) -> Vec<VolumeId> {
    instance
        .block_devices
        .iter()
        .filter(|b| {
            !(options.exclude_boot
                && instance.root_device_name.as_deref() == Some(b.device_name.as_str()))
        })
        .filter(|b| !options.exclude_volumes.contains(&b.volume_id))
        .map(|b| b.volume_id.clone())
        .collect()
}

/// After creating: lists the window again and deletes each set this run
/// made that an earlier covering set makes redundant (a run racing this
/// one). `made` is `(index into results, set id, requested volumes)`.
async fn settle_races(
    ec2: &dyn Ec2,
    region: &Region,
    options: &BackupOptions,
    results: &mut [BackupResult],
    made: &[(usize, String, Vec<VolumeId>)],
) {
    if made.is_empty() || options.dry_run {
        return;
    }
    let window = match done_in_window(ec2, region, options).await {
        Ok(w) => w,
        Err(e) => {
            for (i, _, _) in made {
                results[*i].notes.push(format!(
                    "could not check for a concurrent run in this window: {e}"
                ));
            }
            return;
        }
    };
    for (i, set, volumes) in made {
        let Some(winner) = window.predecessor(set, volumes) else {
            continue;
        };
        let BackupStatus::Created { snapshots, .. } = &results[*i].status else {
            continue;
        };
        let mut left = Vec::new();
        for id in snapshots {
            match ec2.delete_snapshot(region, id, false).await {
                Ok(()) => {}
                Err(e) if e.kind == ErrorKind::NotFound => {}
                Err(e) => left.push(format!("{id} ({e})")),
            }
        }
        let r = &mut results[*i];
        if left.is_empty() {
            r.notes.push(format!(
                "another run made the same set first; this run's set {set} was deleted again"
            ));
            r.status = BackupStatus::AlreadyDone { snapshots: winner };
        } else {
            r.notes.push(format!(
                "another run made the same set first; could not delete this run's duplicates: {}",
                left.join(", ")
            ));
        }
    }
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
    let mut results: Vec<BackupResult> = stream::iter(instances)
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
                let wanted = requested_volumes(instance, options);
                if let Some(prev) = done.covering(&wanted) {
                    result.status = BackupStatus::AlreadyDone { snapshots: prev };
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
                        snapshots: Vec::new(),
                    },
                };
                result
            }
        })
        .buffered(options.concurrency.max(1))
        .collect()
        .await;
    let made: Vec<(usize, String, Vec<VolumeId>)> = results
        .iter()
        .zip(instances)
        .enumerate()
        .filter_map(|(i, (r, instance))| match &r.status {
            BackupStatus::Created { set, .. } => {
                Some((i, set.clone(), requested_volumes(instance, options)))
            }
            _ => None,
        })
        .collect();
    settle_races(ec2, region, options, &mut results, &made).await;
    results
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
            snapshots: Vec::new(),
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
            snapshots: Vec::new(),
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
        if let Some(prev) = done.of_volume(id) {
            result.status = BackupStatus::AlreadyDone { snapshots: prev };
            out.push(result);
            continue;
        }
        let Some(volume) = volumes.iter().find(|v| &v.id == id) else {
            result.status = BackupStatus::Failed {
                error: format!("volume {id} not found in {region}"),
                code: None,
                snapshots: Vec::new(),
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
                snapshots: Vec::new(),
            },
        };
        out.push(result);
    }
    let made: Vec<(usize, String, Vec<VolumeId>)> = out
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match (&r.status, &r.volume) {
            (BackupStatus::Created { set, .. }, Some(v)) => Some((i, set.clone(), vec![v.clone()])),
            _ => None,
        })
        .collect();
    settle_races(ec2, region, options, &mut out, &made).await;
    out
}

/// Runs one backup item (`run`: [`backup_instances`] or [`backup_volumes`]
/// for it) with the host's database locked and filesystems frozen
/// ([`consistency::around_until`]), and turns the hold into the item's
/// result:
///
/// - a lock or freeze that could not be taken fails the item (nothing was
///   snapshotted);
/// - `cancel` fired before the snapshot call: the item fails as
///   interrupted, everything taken released;
/// - a hold that ended before the snapshot call returned, or a thaw/unlock
///   that failed afterwards, fails the item **and reports the snapshots
///   that were made**;
/// - with `dry_run`, nothing is frozen or locked: the host is only reached
///   (strict host key) and what would be held is noted.
pub async fn consistently<F, Fut>(
    remote: &dyn Remote,
    c: &Consistency,
    cancel: &CancellationToken,
    dry_run: bool,
    item: &BackupItem,
    run: F,
) -> Vec<BackupResult>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Vec<BackupResult>>,
{
    if dry_run {
        return match consistency::plan(remote, c).await {
            Ok(plan) => {
                let mut results = run().await;
                let note = format!(
                    "dry run: would hold on {}: freeze {}, lock {}",
                    plan.host,
                    if plan.would_freeze.is_empty() {
                        "-".to_owned()
                    } else {
                        plan.would_freeze.join(" ")
                    },
                    plan.would_lock.unwrap_or("-"),
                );
                for r in &mut results {
                    r.notes.push(note.clone());
                }
                results
            }
            Err(e) => vec![item.failed(format!("host not reachable for --consistent: {e}"))],
        };
    }
    let held = consistency::around_until(remote, c, cancel, || async {
        Ok::<_, std::convert::Infallible>(run().await)
    })
    .await;
    match held {
        Ok((Ok(results), hold)) => with_hold(results, &remote.host(), &hold),
        Ok((Err(never), _)) => match never {},
        Err(ConsistencyError::Interrupted { .. }) => vec![item.failed(
            "interrupted before the snapshot call: everything held was released, nothing snapshotted",
        )],
        Err(e) => vec![item.failed(format!("not consistent, not snapshotted: {e}"))],
    }
}

/// The results of a snapshot call made under a hold, with what the hold
/// report says: a note of how long it was held; a failure (keeping the
/// snapshot ids) when the hold ended before the snapshot call returned or
/// could not be released.
pub fn with_hold(
    mut results: Vec<BackupResult>,
    host: &str,
    hold: &HoldReport,
) -> Vec<BackupResult> {
    let secs = |s: Option<f64>| s.map_or("-".to_owned(), |s| format!("{s:.2}s"));
    let note = format!(
        "held on {host}: frozen {}, locked {}{}",
        secs(hold.frozen_secs),
        secs(hold.locked_secs),
        if hold.released_by_watchdog {
            " (released by the host's watchdog)"
        } else {
            ""
        }
    );
    let early = format!(
        "the hold on {host} ended before the snapshot call returned (max_hold too short?): the snapshots may not be consistent"
    );
    let release: Vec<String> = hold
        .release_errors
        .iter()
        .map(|e| {
            format!(
                "could not release on {host} after the snapshot ({e}); the host's watchdog releases it after max_hold"
            )
        })
        .collect();
    for r in &mut results {
        r.notes.push(note.clone());
        let (made, error, code) = match &r.status {
            BackupStatus::Created { snapshots, .. } => (snapshots.clone(), None, None),
            BackupStatus::Failed {
                error,
                code,
                snapshots,
            } => (snapshots.clone(), Some(error.clone()), code.clone()),
            _ => (Vec::new(), None, None),
        };
        let mut problems = Vec::new();
        // Only snapshots that exist can be inconsistent.
        if hold.released_before_snapshot && !made.is_empty() {
            problems.push(early.clone());
        }
        problems.extend(release.iter().cloned());
        if problems.is_empty() {
            continue;
        }
        r.status = BackupStatus::Failed {
            error: error
                .into_iter()
                .chain(problems)
                .collect::<Vec<_>>()
                .join("; "),
            code,
            snapshots: made,
        };
    }
    results
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
            private_dns: None,
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
            let out =
                backup_instances(&ec2, &region, std::slice::from_ref(&inst), &options()).await;
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
}
