//! Backups: one crash-consistent `CreateSnapshots` per instance, tagged at
//! creation; or one `CreateSnapshot` per volume.
//!
//! [`Backup`] is the whole nightly job: instances by tag or id in each
//! region, and volumes, each optionally **held consistent** (database
//! locked, filesystems frozen on its host around its snapshot call, with a
//! host-side watchdog: [`crate::consistency`]), cancellable, reporting
//! typed [`BackupEvent`]s; [`Backup::plan`] is its dry run. The bricks it
//! is made of — [`backup_instances`], [`backup_volumes`] — are public for
//! a job of another shape.
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
//! run of single volumes, or one excluding the root or data volumes,
//! therefore never makes a full backup skip.
//!
//! Two runs at once in one window (L16): after creating, a run lists the
//! window once more (one call per region); a set it made that another set
//! covering the same volumes predates (earlier start time, then smaller set
//! id) is deleted again and reported as already done. The run that looked
//! first keeps its set, so racing runs end with one set.
//!
//! ```no_run
//! # async fn demo(ec2: &dyn ec2kit::Ec2) -> Result<(), Box<dyn std::error::Error>> {
//! use ec2kit::Region;
//! use snapkit::backup::{Backup, BackupEvent, BackupOptions, Instances};
//!
//! let regions = vec![Region::new("eu-west-1"), Region::new("us-east-1")];
//! let job = Backup::new(ec2, BackupOptions::default())
//!     .instances(regions, Instances::Tagged("Earmarking=production".parse()?))
//!     .on_event(|e| {
//!         if let BackupEvent::Done { result } = e {
//!             eprintln!("{:?} {:?}", result.instance, result.status);
//!         }
//!     });
//! let report = job.run().await;
//! for (region, wait) in job.wait(&report, std::time::Duration::from_secs(7200)).await? {
//!     println!("{region}: {} of {} completed", wait.report.completed.len(), wait.awaited);
//! }
//! if report.failed() > 0 {
//!     return Err(format!("{} backups failed", report.failed()).into());
//! }
//! # Ok(()) }
//! ```

mod create;
mod hold;
mod job;
mod window;

use ec2kit::{Instance, InstanceId, Region, Snapshot, SnapshotId, VolumeId};
use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use crate::lineage::tags;

pub use create::{backup_instances, backup_volumes, requested_volumes};
pub use job::{
    Backup, BackupEvent, BackupEventSink, BackupReport, InstanceHold, Instances, RegionWait,
    VolumeBackup, VolumeHold,
};
pub use window::{WindowSnapshots, done_in_window};

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
    /// Ask EC2 to check permissions only ([`Backup::plan`] sets it).
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

    /// A whole region (for a region whose instances could not be listed).
    pub fn region(region: &Region) -> Self {
        Self {
            region: region.clone(),
            instance: None,
            volume: None,
            name: None,
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
mod tests;
