//! What can go wrong mounting and unmounting, and what a failed mount did
//! with the volume it had made.

use std::time::Duration;

use ec2kit::{Ec2Error, InstanceId, Region, RemoteError, SnapshotId, VolumeId};
use serde::Serialize;

/// Errors of mounting and unmounting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MountError {
    /// An EC2 call failed.
    #[error(transparent)]
    Ec2(#[from] Ec2Error),
    /// The host failed.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// The caller's [`Connect`](crate::connect::Connect) could not reach
    /// the host.
    #[error(transparent)]
    Connect(#[from] crate::connect::ConnectError),
    /// No such snapshot among the account's own.
    #[error("snapshot {snapshot} not found in {region}")]
    SnapshotNotFound {
        /// The snapshot.
        snapshot: SnapshotId,
        /// The region.
        region: Region,
    },
    /// The snapshot is not completed.
    #[error("snapshot {snapshot} is {state}, not completed")]
    SnapshotNotReady {
        /// The snapshot.
        snapshot: SnapshotId,
        /// Its state.
        state: String,
    },
    /// No such instance.
    #[error("instance {instance} not found in {region}")]
    InstanceNotFound {
        /// The instance.
        instance: InstanceId,
        /// The region.
        region: Region,
    },
    /// The instance is not running.
    #[error("instance {instance} is {state}, not running")]
    InstanceNotRunning {
        /// The instance.
        instance: InstanceId,
        /// Its state.
        state: String,
    },
    /// Every device of /dev/sdf../dev/sdp is taken.
    #[error("instance {instance} has no free device in /dev/sdf../dev/sdp")]
    NoFreeDevice {
        /// The instance.
        instance: InstanceId,
    },
    /// A volume did not reach a state in time.
    #[error("volume {volume} still {state} after {after:?} waiting to be {waiting_for}")]
    Timeout {
        /// The volume.
        volume: VolumeId,
        /// What it should have become.
        waiting_for: &'static str,
        /// Where it was.
        state: String,
        /// How long we waited.
        after: Duration,
    },
    /// A volume went to `error`.
    #[error("volume {volume} is in state {state}")]
    VolumeFailed {
        /// The volume.
        volume: VolumeId,
        /// Its state.
        state: String,
    },
    /// A volume disappeared while we waited for it.
    #[error("volume {volume} disappeared")]
    VolumeGone {
        /// The volume.
        volume: VolumeId,
    },
    /// The attached volume has no block device on the host.
    #[error("{host}: no block device for {volume} attached as {device}: {detail}")]
    DeviceNotFound {
        /// The host.
        host: String,
        /// The volume.
        volume: VolumeId,
        /// Its attach name.
        device: String,
        /// What the resolve command said.
        detail: String,
    },
    /// Nothing mountable on the device.
    #[error("{host}: no mountable filesystem on {device} (found: {found})")]
    NoFilesystem {
        /// The host.
        host: String,
        /// The device.
        device: String,
        /// What the probe listed.
        found: String,
    },
    /// `--partition N` does not exist.
    #[error("{host}: {device} has no partition {partition} (found: {found})")]
    NoSuchPartition {
        /// The host.
        host: String,
        /// The device.
        device: String,
        /// The partition asked for.
        partition: u32,
        /// What the probe listed.
        found: String,
    },
    /// The mountpoint directory has files in it (mounting would hide them,
    /// and it is not a directory an earlier mount made).
    #[error("{host}: {mountpoint} is not an empty directory; not mounting over it")]
    MountpointNotEmpty {
        /// The host.
        host: String,
        /// The mountpoint.
        mountpoint: String,
    },
    /// Something else is mounted where the snapshot should go.
    #[error("{host}: {mountpoint} already has {mounted} mounted")]
    MountpointBusy {
        /// The host.
        host: String,
        /// The mountpoint.
        mountpoint: String,
        /// What is mounted there.
        mounted: String,
    },
    /// The mount command succeeded but nothing is mounted (or an unmount
    /// succeeded and it still is).
    #[error("{host}: {mountpoint}: {detail}")]
    NotMounted {
        /// The host.
        host: String,
        /// The mountpoint.
        mountpoint: String,
        /// What went wrong.
        detail: String,
    },
    /// The volume is not a mount volume: it lacks the ownership and
    /// mount-of tags, or EC2 does not record it as made from the snapshot
    /// its tag names.
    #[error("volume {volume} is not a mount volume made by ektool; not touching it")]
    NotOurs {
        /// The volume.
        volume: VolumeId,
    },
    /// A mount volume is attached, and no host was given to unmount it on.
    #[error(
        "volume {volume} is attached to {instance}: unmounting needs the host (or force, to detach without unmounting)"
    )]
    NoHost {
        /// The volume.
        volume: VolumeId,
        /// The instance.
        instance: InstanceId,
    },
    /// A command template lacks a placeholder.
    #[error("invalid {what} command template: {reason}")]
    InvalidTemplate {
        /// Which template.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A mountpoint that cannot be used.
    #[error("invalid mountpoint {mountpoint:?}: {reason}")]
    InvalidMountpoint {
        /// The mountpoint.
        mountpoint: String,
        /// What is wrong.
        reason: String,
    },
    /// A mount failed after the volume was created; what happened to it.
    #[error("mount failed; {rollback}")]
    Aborted {
        /// Why the mount failed.
        #[source]
        cause: Box<MountError>,
        /// What became of the volume.
        rollback: Rollback,
    },
}

/// What a failed mount did with the volume it had created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "result")]
pub enum Rollback {
    /// Detached (if needed) and deleted: nothing left behind.
    Deleted {
        /// The volume.
        volume: VolumeId,
    },
    /// Could not be removed; a sweep ([`Mounter::sweep_plan`](super::Mounter::sweep_plan))
    /// finds it again by its tags.
    LeftBehind {
        /// The volume.
        volume: VolumeId,
        /// Why it could not be removed.
        reason: String,
    },
}

impl std::fmt::Display for Rollback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Deleted { volume } => write!(f, "volume {volume} deleted again"),
            Self::LeftBehind { volume, reason } => {
                write!(f, "volume {volume} left behind ({reason})")
            }
        }
    }
}
