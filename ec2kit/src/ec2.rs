//! The `Ec2` seam: the EC2 calls the toolkit needs, in domain types.

use async_trait::async_trait;

use crate::requests::{
    CopyImage, CopySnapshot, CreateImage, CreateSnapshot, CreateSnapshots, CreateVolume,
    RegisterImage, RunInstances, TierRestore,
};
use crate::{
    AccountId, Ec2Error, Filter, Image, ImageId, Instance, InstanceId, KmsKey, LaunchTemplateImage,
    Region, RegionInfo, Snapshot, SnapshotId, Tags, Volume, VolumeId,
};

/// The EC2 API, as the toolkit uses it.
///
/// Every call names its region explicitly: one value serves a whole fleet.
/// `Describe*` calls take server-side filters and return *all* pages.
/// Snapshots and images are always listed with `OwnerIds=self` (otherwise
/// EC2 returns every public snapshot in the region).
///
/// Implementations: [`AwsEc2`](crate::AwsEc2) (feature `aws`), and
/// `MockEc2` (feature `mock`) for tests of logic.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait Ec2: Send + Sync {
    /// Every region, enabled or not (`DescribeRegions` with `AllRegions`).
    async fn describe_regions(&self) -> Result<Vec<RegionInfo>, Ec2Error>;

    /// Instances matching all `filters`.
    async fn describe_instances(
        &self,
        region: &Region,
        filters: &[Filter],
    ) -> Result<Vec<Instance>, Ec2Error>;

    /// Whether termination protection (`disableApiTermination`) is on.
    async fn termination_protection(
        &self,
        region: &Region,
        instance: &InstanceId,
    ) -> Result<bool, Ec2Error>;

    /// Volumes matching all `filters`.
    async fn describe_volumes(
        &self,
        region: &Region,
        filters: &[Filter],
    ) -> Result<Vec<Volume>, Ec2Error>;

    /// The account's own snapshots matching all `filters`.
    async fn describe_snapshots(
        &self,
        region: &Region,
        filters: &[Filter],
    ) -> Result<Vec<Snapshot>, Ec2Error>;

    /// The account's own AMIs matching all `filters`.
    async fn describe_images(
        &self,
        region: &Region,
        filters: &[Filter],
    ) -> Result<Vec<Image>, Ec2Error>;

    /// Snapshots one volume; tags are applied at creation.
    async fn create_snapshot(
        &self,
        region: &Region,
        request: &CreateSnapshot,
    ) -> Result<Snapshot, Ec2Error>;

    /// Snapshots an instance's volumes at one point in time; tags at creation.
    async fn create_snapshots(
        &self,
        region: &Region,
        request: &CreateSnapshots,
    ) -> Result<Vec<Snapshot>, Ec2Error>;

    /// Adds or overwrites tags on resources.
    async fn create_tags(
        &self,
        region: &Region,
        resources: &[String],
        tags: &Tags,
        dry_run: bool,
    ) -> Result<(), Ec2Error>;

    /// Removes the tags with these keys (whatever their values) from
    /// resources (`DeleteTags`); a key a resource does not carry is no
    /// error.
    async fn delete_tags(
        &self,
        region: &Region,
        resources: &[String],
        keys: &[String],
        dry_run: bool,
    ) -> Result<(), Ec2Error>;

    /// Deletes a snapshot.
    async fn delete_snapshot(
        &self,
        region: &Region,
        snapshot: &SnapshotId,
        dry_run: bool,
    ) -> Result<(), Ec2Error>;

    /// Copies a snapshot into `region` (the destination); returns the new id.
    async fn copy_snapshot(
        &self,
        region: &Region,
        request: &CopySnapshot,
    ) -> Result<SnapshotId, Ec2Error>;

    /// Registers an AMI from snapshots.
    async fn register_image(
        &self,
        region: &Region,
        request: &RegisterImage,
    ) -> Result<ImageId, Ec2Error>;

    /// Deregisters an AMI (its snapshots stay).
    async fn deregister_image(
        &self,
        region: &Region,
        image: &ImageId,
        dry_run: bool,
    ) -> Result<(), Ec2Error>;

    /// Copies an AMI into `region` (the destination); returns the new id.
    async fn copy_image(&self, region: &Region, request: &CopyImage) -> Result<ImageId, Ec2Error>;

    /// Creates a volume.
    async fn create_volume(
        &self,
        region: &Region,
        request: &CreateVolume,
    ) -> Result<Volume, Ec2Error>;

    /// Attaches a volume to an instance as `device`.
    async fn attach_volume(
        &self,
        region: &Region,
        volume: &VolumeId,
        instance: &InstanceId,
        device: &str,
        dry_run: bool,
    ) -> Result<(), Ec2Error>;

    /// Detaches a volume.
    async fn detach_volume(
        &self,
        region: &Region,
        volume: &VolumeId,
        force: bool,
        dry_run: bool,
    ) -> Result<(), Ec2Error>;

    /// Detaches a volume from one named instance. Prefer this over
    /// [`Ec2::detach_volume`] when the instance is known: EC2 then refuses
    /// to detach the volume from any other instance (and some EC2 emulators
    /// need the instance). The default forwards to `detach_volume`.
    async fn detach_volume_from(
        &self,
        region: &Region,
        volume: &VolumeId,
        instance: &InstanceId,
        force: bool,
        dry_run: bool,
    ) -> Result<(), Ec2Error> {
        let _ = instance;
        self.detach_volume(region, volume, force, dry_run).await
    }

    /// Deletes a volume.
    async fn delete_volume(
        &self,
        region: &Region,
        volume: &VolumeId,
        dry_run: bool,
    ) -> Result<(), Ec2Error>;

    /// Reboots instances.
    async fn reboot_instances(
        &self,
        region: &Region,
        instances: &[InstanceId],
        dry_run: bool,
    ) -> Result<(), Ec2Error>;

    /// Turns termination protection on or off.
    async fn set_termination_protection(
        &self,
        region: &Region,
        instance: &InstanceId,
        enabled: bool,
        dry_run: bool,
    ) -> Result<(), Ec2Error>;

    /// Launches instances.
    async fn run_instances(
        &self,
        region: &Region,
        request: &RunInstances,
    ) -> Result<Vec<Instance>, Ec2Error>;

    /// Looks up a KMS key in `region` (KMS `DescribeKey`): the pre-flight
    /// check before snapshot copies are encrypted with it, since a copy with
    /// an unusable key fails only later, asynchronously, as an `error`
    /// snapshot.
    async fn describe_kms_key(&self, region: &Region, key_id: &str) -> Result<KmsKey, Ec2Error>;

    /// Terminates instances.
    async fn terminate_instances(
        &self,
        region: &Region,
        instances: &[InstanceId],
        dry_run: bool,
    ) -> Result<(), Ec2Error>;

    /// Moves a snapshot to the archive tier (`ModifySnapshotTier`).
    async fn modify_snapshot_tier(
        &self,
        region: &Region,
        snapshot: &SnapshotId,
        dry_run: bool,
    ) -> Result<(), Ec2Error>;

    /// Brings an archived snapshot back (`RestoreSnapshotTier`), for a
    /// number of days or for good.
    async fn restore_snapshot_tier(
        &self,
        region: &Region,
        snapshot: &SnapshotId,
        restore: &TierRestore,
        dry_run: bool,
    ) -> Result<(), Ec2Error>;

    /// Shares a snapshot with another account, or takes the share back
    /// (`ModifySnapshotAttribute`, `createVolumePermission` add or remove
    /// of one user id). Sharing lets that account copy the snapshot;
    /// removing a share that is not there is no error.
    async fn share_snapshot(
        &self,
        region: &Region,
        snapshot: &SnapshotId,
        account: &AccountId,
        share: bool,
    ) -> Result<(), Ec2Error>;

    /// The accounts a snapshot is shared with (`DescribeSnapshotAttribute`,
    /// the user ids of `createVolumePermission`; a public share, group
    /// `all`, is not an account and is left out).
    async fn snapshot_shared_with(
        &self,
        region: &Region,
        snapshot: &SnapshotId,
    ) -> Result<Vec<AccountId>, Ec2Error>;

    /// Creates an AMI of an instance (`CreateImage`); tags at creation.
    async fn create_image(
        &self,
        region: &Region,
        request: &CreateImage,
    ) -> Result<ImageId, Ec2Error>;

    /// The image of every version of every launch template in `region`
    /// (`DescribeLaunchTemplates`, then `DescribeLaunchTemplateVersions`
    /// per template).
    async fn launch_template_images(
        &self,
        region: &Region,
    ) -> Result<Vec<LaunchTemplateImage>, Ec2Error>;
}
