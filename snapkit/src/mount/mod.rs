//! Mounting a snapshot read-only on an instance, and cleaning up after.
//!
//! A [`Mounter`] carries the EC2 client, the host-side commands, the waits
//! and the event callback; its verbs are the whole job:
//!
//! - [`Mounter::plan`] looks at the snapshot, the instance and the volumes
//!   already on it (only reads); [`Mounter::check`] asks EC2 whether the
//!   `CreateVolume` would be allowed (a `DryRun` call);
//! - [`Mounter::mount`] creates a volume from the snapshot in the
//!   instance's zone (tagged at creation, so a crashed run is found
//!   again), attaches it on a free device, and over [`Remote`](ec2kit::Remote) resolves the
//!   local device and mounts it **read-only without replaying a journal**
//!   (`norecovery` for XFS, `noload` for ext*): a snapshot of a live
//!   filesystem has a dirty journal, and replaying it would write to the
//!   volume. Anything that fails after the volume exists is rolled back
//!   (detached and deleted), so a failed mount leaves nothing behind;
//! - [`Mounter::unmount_plan`] and [`Mounter::sweep_plan`] find mount
//!   volumes (those of a snapshot or a volume; or every one older than some
//!   age, across regions) and the host each must be unmounted on;
//!   [`Mounter::unmount`] carries them out, each step idempotent (unmount,
//!   detach, delete), so a second run, or one after a crash, finishes the
//!   job.
//!
//! The host-side commands are [`MountCommands`] templates, so a site with
//! unusual device naming can adapt them, and tests replace them with
//! recording scripts.
//!
//! ```no_run
//! # async fn demo(ec2: &dyn ec2kit::Ec2, host: &dyn ec2kit::Remote)
//! # -> Result<(), Box<dyn std::error::Error>> {
//! use ec2kit::{InstanceId, Region, SnapshotId};
//! use snapkit::mount::{MountRequest, Mounter};
//!
//! let mounter = Mounter::new(ec2).on_event(|e| eprintln!("{e:?}"));
//! let request = MountRequest::new(
//!     SnapshotId::parse("snap-0123456789abcdef0")?,
//!     InstanceId::parse("i-0123456789abcdef0")?,
//! );
//! let plan = mounter.plan(&Region::new("eu-west-1"), &request).await?;
//! let mounted = mounter.mount(host, &plan).await?;
//! println!("{} is at {}", mounted.snapshot, mounted.mountpoint);
//! # Ok(()) }
//! ```

mod attach;
mod device;
mod error;
mod host;
mod plan;
mod sweep;
mod undo;
mod volume;

use std::sync::Arc;

use ec2kit::{Ec2, InstanceId, SnapshotId, Tags, VolumeId};
use jiff::Timestamp;
use serde::Serialize;

use crate::connect::{Address, Connect};

pub use attach::Mounted;
pub use device::{DEVICES, MountEntry, REQUIRED_OPTIONS};
pub use error::{MountError, Rollback};
pub use host::{
    HostMount, MountCommands, MountTarget, mount_on_host, mount_table, unmount_on_host,
};
pub(crate) use plan::running_instance;
pub use plan::{MountPlan, MountRequest, check_mountpoint, check_mountpoint_under};
pub use sweep::{RegionFailure, SweepItem, SweepPlan, Unmounted};
pub use undo::{MountVolume, Selector, UnmountPlan, UnmountReport, UnmountStep};
pub use volume::Waits;

/// What a mount calls: [`Mounter::plan`] and [`Mounter::mount`] (a failed
/// mount detaches and deletes the volume it made).
pub const PERMISSIONS: ec2kit::iam::Permissions = ec2kit::iam::Permissions::calls(&[
    ec2kit::Action::DescribeSnapshots,
    ec2kit::Action::DescribeInstances,
    ec2kit::Action::DescribeVolumes,
    ec2kit::Action::CreateVolume,
    ec2kit::Action::AttachVolume,
])
.sometimes(&[ec2kit::iam::Sometimes {
    when: ec2kit::iam::When::Case("on-failure"),
    actions: &[ec2kit::Action::DetachVolume, ec2kit::Action::DeleteVolume],
}])
.implied(&[ec2kit::iam::TAG_ON_CREATE]);

/// What [`Mounter::find`] calls.
pub const FIND_PERMISSIONS: ec2kit::iam::Permissions =
    ec2kit::iam::Permissions::calls(&[ec2kit::Action::DescribeVolumes]);

/// What [`Mounter::unmount_volume`] and [`Mounter::unmount`] call.
pub const UNMOUNT_PERMISSIONS: ec2kit::iam::Permissions = ec2kit::iam::Permissions::calls(&[
    ec2kit::Action::DescribeVolumes,
    ec2kit::Action::DetachVolume,
    ec2kit::Action::DeleteVolume,
]);

/// The tags on every volume a mount creates (besides
/// [`lineage::OWNER`](crate::lineage::tags::OWNER) and
/// [`lineage::CREATED`](crate::lineage::tags::CREATED)).
pub mod tags {
    /// The snapshot the volume was made from: marks a mount volume.
    pub const MOUNT_OF: &str = "ektool:mount-of";
    /// The instance it is (to be) attached to.
    pub const MOUNTED_ON: &str = "ektool:mounted-on";
    /// Where it is (to be) mounted on that instance.
    pub const MOUNTPOINT: &str = "ektool:mountpoint";
}

/// The default mount root: mounts go to `<root>/<snapshot id>`, and every
/// mountpoint (asked for, or found in a tag) must lie under the root. The
/// root is made `0700`, so other local users of the instance cannot read
/// another host's files (uids do not map between hosts).
pub const DEFAULT_ROOT: &str = "/mnt/ektool";

/// What a mount or an unmount is doing, as it goes (for progress output).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "event")]
#[non_exhaustive]
pub enum MountEvent {
    /// A volume is being created from the snapshot.
    Creating {
        /// The snapshot.
        snapshot: SnapshotId,
        /// Where.
        availability_zone: String,
    },
    /// A volume is not yet in the state a step waits for.
    Waiting {
        /// The volume.
        volume: VolumeId,
        /// Its state now.
        state: String,
        /// What it should become (`available`, `attached`, `detached`).
        waiting_for: &'static str,
    },
    /// The volume is being attached.
    Attaching {
        /// The volume.
        volume: VolumeId,
        /// The instance.
        instance: InstanceId,
        /// The device name asked for.
        device: String,
    },
    /// The volume is being mounted on the host.
    Mounting {
        /// The volume.
        volume: VolumeId,
        /// The host.
        host: String,
    },
    /// The mount failed after the volume was made: removing it again.
    RollingBack {
        /// The volume.
        volume: VolumeId,
    },
    /// The volume's filesystems are being unmounted on the host.
    Unmounting {
        /// The volume.
        volume: VolumeId,
        /// The host.
        host: String,
    },
    /// The volume is being detached.
    Detaching {
        /// The volume.
        volume: VolumeId,
        /// The instance.
        instance: InstanceId,
    },
    /// The volume is being deleted.
    Deleting {
        /// The volume.
        volume: VolumeId,
    },
}

/// The callback [`MountEvent`]s are delivered to.
pub type MountEventSink = Arc<dyn Fn(&MountEvent) + Send + Sync>;

/// Mounts snapshots on instances and undoes mounts: the EC2 client, the
/// host-side commands, how long to wait, and who hears about progress.
#[derive(Clone)]
pub struct Mounter<'a> {
    ec2: &'a dyn Ec2,
    commands: MountCommands,
    waits: Waits,
    events: MountEventSink,
    now: Option<Timestamp>,
    address: Address,
    host: Option<String>,
    connect: Option<Connect>,
    extra_tags: Tags,
}

impl std::fmt::Debug for Mounter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mounter")
            .field("commands", &self.commands)
            .field("waits", &self.waits)
            .field("address", &self.address)
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

impl<'a> Mounter<'a> {
    /// A mounter with the default commands and waits, reaching instances at
    /// their private IP, reporting to nobody.
    pub fn new(ec2: &'a dyn Ec2) -> Self {
        Self {
            ec2,
            commands: MountCommands::default(),
            waits: Waits::default(),
            events: Arc::new(|_| {}),
            now: None,
            address: Address::default(),
            host: None,
            connect: None,
            extra_tags: Tags::new(),
        }
    }

    /// The host-side command templates (checked by every operation that
    /// runs them: [`MountCommands::validate`]).
    #[must_use]
    pub fn commands(mut self, commands: MountCommands) -> Self {
        self.commands = commands;
        self
    }

    /// How long to wait for EC2, and how often to look.
    #[must_use]
    pub fn waits(mut self, waits: Waits) -> Self {
        self.waits = waits;
        self
    }

    /// Where progress goes.
    #[must_use]
    pub fn on_event(mut self, f: impl Fn(&MountEvent) + Send + Sync + 'static) -> Self {
        self.events = Arc::new(f);
        self
    }

    /// The time recorded on the volumes it creates (default: the moment
    /// of the call).
    #[must_use]
    pub fn at(mut self, now: Timestamp) -> Self {
        self.now = Some(now);
        self
    }

    /// Which address of an instance unmount plans reach its host at
    /// (default: the private IP).
    #[must_use]
    pub fn address(mut self, address: Address) -> Self {
        self.address = address;
        self
    }

    /// Unmount on this host, whatever the instance: no instance lookup
    /// (for a host reached another way, e.g. through a tunnel).
    #[must_use]
    pub fn on_host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// How [`Mounter::unmount`] reaches the hosts of its plan.
    #[must_use]
    pub fn connect(mut self, connect: Connect) -> Self {
        self.connect = Some(connect);
        self
    }

    /// More tags on the volumes it creates, besides its own (which win):
    /// e.g. the run that made them, so a later run finds what a killed one
    /// left.
    #[must_use]
    pub fn volume_tags(mut self, tags: Tags) -> Self {
        self.extra_tags = tags;
        self
    }

    fn emit(&self, event: MountEvent) {
        (self.events)(&event);
    }

    fn now(&self) -> Timestamp {
        self.now.unwrap_or_else(Timestamp::now)
    }
}

#[cfg(test)]
mod tests;
